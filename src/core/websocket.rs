//! MQTT over WebSocket: the HTTP upgrade (subprotocol `mqtt`), with a SigV4-presigned URL or
//! custom-authorizer headers/query, built afresh for every connection attempt.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use async_tungstenite::tungstenite::Error as WsError;
use ws_stream_tungstenite::WsStream;

use crate::core::credentials::Cached;
use crate::core::custom_auth::query_string;
use crate::core::error::{Error, Result};
use crate::core::secret::Secret;
use crate::core::sigv4;
use crate::core::transport::Stream;

/// The path AWS IoT serves MQTT on.
pub const PATH: &str = "/mqtt";
/// How long a presigned URL is valid (only the handshake needs it).
pub const PRESIGN_EXPIRES: Duration = Duration::from_secs(300);

/// SigV4 signing settings.
#[derive(Clone)]
pub struct SigV4 {
    /// AWS region of the endpoint.
    pub region: String,
    /// Where credentials come from (asked for each attempt).
    pub credentials: Arc<Cached>,
}

/// WebSocket settings of a connection.
#[derive(Clone, Default)]
pub struct WebSocket {
    /// Extra upgrade-request headers (values may be secrets: tokens, signatures).
    pub headers: Vec<(String, Secret<String>)>,
    /// Extra upgrade-request query parameters (values may be secrets).
    pub query: Vec<(String, Secret<String>)>,
    /// SigV4 presigning, for IAM credentials.
    pub sigv4: Option<SigV4>,
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field(
                "query",
                &self.query.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("sigv4", &self.sigv4.as_ref().map(|s| &s.region))
            .finish()
    }
}

fn classify(e: WsError, endpoint: &str, port: u16) -> Error {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            if status == 401 || status == 403 {
                Error::Auth(format!(
                    "{endpoint}:{port} refused the WebSocket upgrade with HTTP {status}: the credentials, signature or authorizer token were not accepted"
                ))
            } else {
                Error::Connect(format!(
                    "{endpoint}:{port} refused the WebSocket upgrade with HTTP {status}"
                ))
            }
        }
        WsError::Io(io) => {
            crate::core::transport::classify_io(endpoint, port, &io, "WebSocket handshake with")
        }
        WsError::Protocol(p) => Error::Connect(format!(
            "WebSocket handshake with {endpoint}:{port} failed: {p}"
        )),
        _ => Error::Connect(format!("WebSocket handshake with {endpoint}:{port} failed")),
    }
}

/// Builds the upgrade URL for this attempt (presigning it when SigV4 is configured).
///
/// # Errors
/// [`Error::Auth`] when credentials cannot be had; [`Error::Config`] for bad settings.
pub async fn url(endpoint: &str, port: u16, tls: bool, ws: &WebSocket) -> Result<String> {
    let scheme = if tls { "wss" } else { "ws" };
    let mut url = match &ws.sigv4 {
        Some(s) => {
            let now = SystemTime::now();
            let creds = s.credentials.get(now).await?;
            let signed =
                sigv4::presign_url(endpoint, port, &s.region, &creds, now, PRESIGN_EXPIRES)?;
            match signed.strip_prefix("wss://") {
                Some(rest) => format!("{scheme}://{rest}"),
                None => signed,
            }
        }
        None => {
            let default_port = if tls { 443 } else { 80 };
            if port == default_port {
                format!("{scheme}://{endpoint}{PATH}")
            } else {
                format!("{scheme}://{endpoint}:{port}{PATH}")
            }
        }
    };
    if !ws.query.is_empty() {
        let pairs: Vec<(String, String)> = ws
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().clone()))
            .collect();
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&query_string(&pairs));
    }
    Ok(url)
}

/// Performs the upgrade over `stream` and returns the MQTT byte stream inside the WebSocket.
///
/// # Errors
/// [`Error::Auth`] for HTTP 401/403, [`Error::Connect`] for other refusals.
pub async fn upgrade(
    stream: Stream,
    url: &str,
    ws: &WebSocket,
    endpoint: &str,
    port: u16,
) -> Result<Stream> {
    let mut request = url.into_client_request().map_err(|_| {
        Error::Config(format!(
            "cannot build a WebSocket request for {endpoint}:{port}"
        ))
    })?;
    let headers = request.headers_mut();
    headers.insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    for (name, value) in &ws.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::Config(format!("{name:?} is not a valid HTTP header name")))?;
        let value = HeaderValue::from_str(value.expose())
            .map_err(|_| Error::Config(format!("the value of header {name:?} is not valid")))?;
        headers.insert(name, value);
    }
    let (socket, response) = async_tungstenite::tokio::client_async(request, stream)
        .await
        .map_err(|e| classify(e, endpoint, port))?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if protocol != Some("mqtt") {
        return Err(Error::Protocol(format!(
            "{endpoint}:{port} did not accept the WebSocket subprotocol 'mqtt'"
        )));
    }
    Ok(Box::new(WsStream::new(socket)))
}
