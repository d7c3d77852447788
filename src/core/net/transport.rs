//! Opening the byte stream to the broker: TCP, then TLS (SNI and verified name = endpoint),
//! then the WebSocket upgrade when configured. What runs over it (MQTT) is not known here.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::core::error::{Error, Result};
use crate::core::net::proxy::{self, Proxy};
use crate::core::net::stream::{classify_io, Connector, Stream};
use crate::core::net::websocket;

/// How bytes reach the broker.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP (local or non-AWS brokers only).
    Tcp,
    /// TLS over TCP with this rustls configuration (server name = endpoint).
    Tls(Arc<rustls::ClientConfig>),
    /// MQTT over WebSocket (`wss://` with this TLS configuration, `ws://` without).
    WebSocket {
        /// TLS settings (`None`: plain `ws://`, local brokers only).
        tls: Option<Arc<rustls::ClientConfig>>,
        /// Upgrade request settings (SigV4 or custom-authorizer fields).
        ws: crate::core::net::websocket::WebSocket,
    },
    /// A stream from the application's own connector; MQTT runs over it as is.
    Custom(Arc<dyn Connector>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => f.write_str("Tcp"),
            Self::Tls(c) => write!(f, "Tls(alpn={:?})", c.alpn_protocols),
            Self::WebSocket { tls, ws } => write!(f, "WebSocket(tls={}, {ws:?})", tls.is_some()),
            Self::Custom(_) => f.write_str("Custom"),
        }
    }
}

async fn tcp(endpoint: &str, port: u16) -> Result<TcpStream> {
    let tcp = TcpStream::connect((endpoint, port))
        .await
        .map_err(|e| Error::Connect(format!("TCP connect to {endpoint}:{port} failed: {e}")))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Opens the byte stream to `endpoint:port` the way `transport` says (TCP — directly or
/// through an HTTP CONNECT `proxy` —, TLS with the endpoint as server name, WebSocket
/// upgrade). Nothing MQTT is sent. TLS runs end to end through the proxy.
///
/// # Errors
/// [`Error::Connect`], [`Error::Tls`], [`Error::Auth`] (WebSocket 401/403), [`Error::Config`].
pub async fn open_stream(
    endpoint: &str,
    port: u16,
    transport: &Transport,
    proxy: Option<&Proxy>,
    timeout: Duration,
) -> Result<Stream> {
    if let Transport::Custom(connector) = transport {
        return connector
            .connect()
            .await
            .map_err(|e| Error::Connect(format!("connecting to {endpoint}:{port} failed: {e}")));
    }
    // A WebSocket URL (and its SigV4 credentials) is prepared before any byte is sent.
    let ws_url = match transport {
        Transport::WebSocket { tls, ws } => {
            Some(websocket::url(endpoint, port, tls.is_some(), ws).await?)
        }
        _ => None,
    };
    let tcp = match proxy {
        Some(proxy) => proxy::tunnel(proxy, endpoint, port, timeout).await?,
        None => tcp(endpoint, port).await?,
    };
    match transport {
        Transport::Tcp | Transport::Custom(_) => Ok(Box::new(tcp)),
        Transport::Tls(tls) => tls_handshake(endpoint, port, tls, tcp).await,
        Transport::WebSocket { tls, ws } => {
            let stream = match tls {
                Some(tls) => tls_handshake(endpoint, port, tls, tcp).await?,
                None => Box::new(tcp),
            };
            let url = ws_url.unwrap_or_default();
            websocket::upgrade(stream, &url, ws, endpoint, port).await
        }
    }
}

async fn tls_handshake(
    endpoint: &str,
    port: u16,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> Result<Stream> {
    let name = rustls_pki_types::ServerName::try_from(endpoint.to_string()).map_err(|_| {
        Error::Config(format!(
            "endpoint {endpoint:?} is not a valid TLS server name"
        ))
    })?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| classify_io(endpoint, port, &e, "TLS handshake with"))?;
    Ok(Box::new(stream))
}
