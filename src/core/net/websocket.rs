//! MQTT over WebSocket: the HTTP upgrade (subprotocol `mqtt`), with a SigV4-presigned URL or
//! custom-authorizer headers/query, built afresh for every connection attempt.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use async_tungstenite::tungstenite::Error as WsError;
use ws_stream_tungstenite::WsStream;

use crate::core::auth::credentials::Cached;
use crate::core::auth::custom_auth::query_string;
use crate::core::auth::sigv4;
use crate::core::error::{Error, Result};
use crate::core::net::stream::{classify_io, Stream};
use crate::core::secret::Secret;

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
        WsError::Io(io) => classify_io(endpoint, port, &io, "WebSocket handshake with"),
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
/// [`Error::Auth`] for HTTP 401/403 (SigV4 credentials are then dropped from the cache),
/// [`Error::Connect`] for other refusals.
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
        .map_err(|e| {
            let e = classify(e, endpoint, port);
            if let (Error::Auth(_), Some(s)) = (&e, &ws.sigv4) {
                // Refused (401/403): the next attempt must not present the same credentials.
                log::debug!("{endpoint}:{port}: SigV4 credentials refused, asking the provider again next attempt");
                s.credentials.invalidate();
            }
            e
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::auth::credentials::{CredentialsFuture, CredentialsProvider};
    use crate::core::auth::sigv4::AwsCredentials;
    use crate::core::secret::Secret;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Hands out credentials valid for hours, counting the calls.
    struct LongLived(AtomicUsize);

    impl CredentialsProvider for LongLived {
        fn credentials(&self) -> CredentialsFuture {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                Ok(AwsCredentials {
                    access_key_id: format!("AKID{n}"),
                    secret_access_key: Secret::new("s".into()),
                    session_token: None,
                    expiry: Some(SystemTime::now() + Duration::from_secs(6 * 3600)),
                })
            })
        }
    }

    /// Answers every upgrade request with `status` and closes.
    async fn refusing_server(status: &'static str) -> std::io::Result<u16> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(buf.get(..n).unwrap_or_default()),
                    }
                }
                let reply =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        Ok(port)
    }

    async fn attempt(port: u16, ws: &WebSocket) -> Result<Stream> {
        let url = url("127.0.0.1", port, false, ws).await?;
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        upgrade(Box::new(tcp), &url, ws, "127.0.0.1", port).await
    }

    fn sigv4_ws(provider: &Arc<LongLived>) -> WebSocket {
        WebSocket {
            sigv4: Some(SigV4 {
                region: "us-east-1".into(),
                credentials: Arc::new(Cached::new(provider.clone(), Duration::from_secs(300))),
            }),
            ..WebSocket::default()
        }
    }

    #[tokio::test]
    async fn credentials_refused_with_401_or_403_are_fetched_again_next_attempt() {
        for status in ["403 Forbidden", "401 Unauthorized"] {
            let port = refusing_server(status).await.unwrap();
            let provider = Arc::new(LongLived(AtomicUsize::new(0)));
            let ws = sigv4_ws(&provider);
            for n in 1..=3 {
                let err = attempt(port, &ws).await.err().unwrap();
                assert!(matches!(err, Error::Auth(_)), "{err}");
                assert_eq!(
                    provider.0.load(Ordering::SeqCst),
                    n,
                    "{status}: the provider is asked again after every refusal"
                );
            }
        }
    }

    #[tokio::test]
    async fn other_refusals_keep_the_cached_credentials() {
        let port = refusing_server("503 Service Unavailable").await.unwrap();
        let provider = Arc::new(LongLived(AtomicUsize::new(0)));
        let ws = sigv4_ws(&provider);
        for _ in 0..2 {
            let err = attempt(port, &ws).await.err().unwrap();
            assert!(matches!(err, Error::Connect(_)), "{err}");
        }
        assert_eq!(provider.0.load(Ordering::SeqCst), 1);
    }
}
