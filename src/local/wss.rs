//! The server side of MQTT over WebSocket: read the HTTP upgrade request head (bounded), let the
//! caller authenticate it (SigV4 or a custom authorizer, from [`PendingUpgrade::head`]), then
//! either refuse it with an HTTP status or accept it: check the upgrade (`GET /mqtt`,
//! `Upgrade: websocket`, version 13, a valid key, subprotocol `mqtt`), answer
//! `101 Switching Protocols` and hand back a byte stream ([`WsStream`]) carrying MQTT in binary
//! WebSocket messages, readable and writable like the TLS stream underneath.
//!
//! Bytes a client sends right after the head (pipelined frames) are kept and fed to the
//! WebSocket, never lost. Time limits are the caller's (`tokio::time::timeout` around
//! [`read_request`] and [`PendingUpgrade::accept`]).

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use base64ct::{Base64, Encoding};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::local::sigv4_verify::HttpRequestHead;

/// The path AWS IoT serves MQTT over WebSocket on.
pub const PATH: &str = "/mqtt";
/// The WebSocket subprotocol MQTT clients ask for.
pub const SUBPROTOCOL: &str = "mqtt";
/// The largest upgrade request head read (request line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most header fields an upgrade request may have.
pub const MAX_HEADERS: usize = 100;
/// The largest WebSocket message (and frame) accepted from a client: well above the largest
/// MQTT packet AWS IoT takes (128 KiB payload), small enough to bound memory.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// MQTT bytes over an accepted WebSocket: tokio `AsyncRead` + `AsyncWrite`, each write sent as
/// a binary message. Text messages from the client close the connection.
pub type WsStream<S> = ws_stream_tungstenite::WsStream<TokioAdapter<S>>;

/// Why an upgrade could not be read or was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum WssError {
    /// Reading or writing the socket failed.
    #[error("WebSocket upgrade I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection before the end of the request head.
    #[error("the connection closed before the end of the WebSocket upgrade request")]
    Closed,
    /// The request head exceeds [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`] (answered 431).
    #[error("the WebSocket upgrade request head is too large")]
    HeadTooLarge,
    /// The request head is not valid HTTP/1.1 (answered 400).
    #[error("malformed WebSocket upgrade request: {0}")]
    Malformed(&'static str),
    /// The request is not an acceptable MQTT WebSocket upgrade; it was answered with `status`.
    #[error("WebSocket upgrade refused with HTTP {status}: {reason}")]
    Refused {
        /// The HTTP status sent.
        status: u16,
        /// What was wrong.
        reason: &'static str,
    },
}

/// An upgrade request whose head has been read, waiting for the caller's verdict.
pub struct PendingUpgrade<S> {
    stream: S,
    head: HttpRequestHead,
    /// Bytes read past the head (the start of the WebSocket stream).
    leftover: Vec<u8>,
}

impl<S> std::fmt::Debug for PendingUpgrade<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingUpgrade")
            .field("head", &self.head)
            .field("leftover_bytes", &self.leftover.len())
            .finish_non_exhaustive()
    }
}

/// Reads the HTTP upgrade request head from `stream` (at most [`MAX_HEAD_BYTES`]). Bytes read
/// beyond the head are kept for the WebSocket.
///
/// # Errors
/// [`WssError::Closed`], [`WssError::Io`], or, after answering 431 / 400 and closing,
/// [`WssError::HeadTooLarge`] / [`WssError::Malformed`].
pub async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
) -> Result<PendingUpgrade<S>, WssError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        // Resume the search a little before the new bytes (a terminator may straddle reads).
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(WssError::Closed);
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(pos) = find_head_end(buf.get(searched_from..).unwrap_or_default()) {
            let end = searched_from + pos;
            if end > MAX_HEAD_BYTES {
                return Err(refuse_raw(stream, 431, WssError::HeadTooLarge).await);
            }
            break end;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(refuse_raw(stream, 431, WssError::HeadTooLarge).await);
        }
    };
    let leftover = buf.split_off(head_end);
    match parse_head(&buf) {
        Ok(head) => Ok(PendingUpgrade {
            stream,
            head,
            leftover,
        }),
        Err(e) => {
            let status = if matches!(e, WssError::HeadTooLarge) {
                431
            } else {
                400
            };
            Err(refuse_raw(stream, status, e).await)
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> PendingUpgrade<S> {
    /// The request head as read (method, path, raw query, headers).
    pub fn head(&self) -> &HttpRequestHead {
        &self.head
    }

    /// Refuses the upgrade: writes `HTTP/1.1 <status> <reason>` with `Content-Length: 0` and
    /// closes the connection. Write errors are ignored (the connection is going away anyway).
    pub async fn reject(self, status: u16) {
        let mut stream = self.stream;
        let _ = write_status(&mut stream, status).await;
    }

    /// Accepts the upgrade after checking it (method `GET` else 405, path [`PATH`] else 404,
    /// `Upgrade: websocket`, `Connection: upgrade`, `Sec-WebSocket-Version: 13`, a 16-byte
    /// base64 `Sec-WebSocket-Key` and the subprotocol `mqtt` offered, else 400): answers `101`
    /// with `Sec-WebSocket-Protocol: mqtt` and returns the MQTT byte stream.
    ///
    /// # Errors
    /// [`WssError::Refused`] after answering the status and closing; [`WssError::Io`].
    pub async fn accept(self) -> Result<WsStream<S>, WssError>
    where
        S: Send,
    {
        let Self {
            mut stream,
            head,
            leftover,
        } = self;
        let key = match check_upgrade(&head) {
            Ok(key) => key,
            Err((status, reason)) => {
                let _ = write_status(&mut stream, status).await;
                return Err(WssError::Refused { status, reason });
            }
        };
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let socket = WebSocketStream::from_partially_read(
            TokioAdapter::new(stream),
            leftover,
            Role::Server,
            Some(config),
        )
        .await;
        Ok(ws_stream_tungstenite::WsStream::new(socket))
    }
}

/// Checks an upgrade request; returns its `Sec-WebSocket-Key`, or the status to answer.
fn check_upgrade(head: &HttpRequestHead) -> Result<&str, (u16, &'static str)> {
    if head.method != "GET" {
        return Err((405, "the method is not GET"));
    }
    if head.path != PATH {
        return Err((404, "the path is not /mqtt"));
    }
    if !header_has_token(head, "upgrade", "websocket") {
        return Err((400, "no Upgrade: websocket header"));
    }
    if !header_has_token(head, "connection", "upgrade") {
        return Err((400, "no Connection: upgrade header"));
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Err((400, "Sec-WebSocket-Version is not 13"));
    }
    let key = head
        .header("sec-websocket-key")
        .filter(|k| Base64::decode_vec(k).is_ok_and(|raw| raw.len() == 16))
        .ok_or((400, "no valid Sec-WebSocket-Key"))?;
    let offers_mqtt = head
        .header_values("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offers_mqtt {
        return Err((400, "the subprotocol mqtt is not offered"));
    }
    Ok(key)
}

/// Whether some value of header `name` lists `token` (comma-separated, case-insensitive).
fn header_has_token(head: &HttpRequestHead, name: &str, token: &str) -> bool {
    head.header_values(name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The offset just past `\r\n\r\n` in `buf`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|pos| pos + 4)
}

/// Parses the request line and headers of `head` (which ends with `\r\n\r\n`).
fn parse_head(head: &[u8]) -> Result<HttpRequestHead, WssError> {
    let text = std::str::from_utf8(head).map_err(|_| WssError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(WssError::Malformed("bad request line"));
    };
    if version != "HTTP/1.1" {
        return Err(WssError::Malformed("not HTTP/1.1"));
    }
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(WssError::Malformed("bad method"));
    }
    if !target.starts_with('/') || target.contains('#') || !target.bytes().all(is_visible) {
        return Err(WssError::Malformed("bad request target"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if headers.len() == MAX_HEADERS {
            return Err(WssError::HeadTooLarge);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(WssError::Malformed("a header line without ':'"))?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            // Also refuses obsolete line folding (a line starting with a space).
            return Err(WssError::Malformed("bad header name"));
        }
        if !value
            .bytes()
            .all(|b| is_visible(b) || b == b' ' || b == b'\t')
        {
            return Err(WssError::Malformed("bad header value"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(HttpRequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
    })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_visible(b: u8) -> bool {
    b.is_ascii_graphic() || b >= 0x80
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes a body-less response with `status` and closes the write side.
async fn write_status<S: AsyncWrite + Unpin>(stream: &mut S, status: u16) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        status_text(status)
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// Answers `status` (best effort) and returns `error`.
async fn refuse_raw<S: AsyncWrite + Unpin>(
    mut stream: S,
    status: u16,
    error: WssError,
) -> WssError {
    let _ = write_status(&mut stream, status).await;
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::Error;
    use crate::core::net::websocket::{upgrade, url, WebSocket};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    /// Accepts one connection and runs `serve` on it.
    async fn server<F, Fut, T>(serve: F) -> (u16, JoinHandle<T>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send,
        T: Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            serve(tcp).await
        });
        (port, task)
    }

    async fn our_client(port: u16) -> crate::core::error::Result<crate::core::net::stream::Stream> {
        let ws = WebSocket::default();
        let url = url("127.0.0.1", port, false, &ws).await?;
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        upgrade(Box::new(tcp), &url, &ws, "127.0.0.1", port).await
    }

    /// Sends `request` raw and returns the whole response.
    async fn raw_exchange(port: u16, request: &[u8]) -> String {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut response = Vec::new();
        let _ = tcp.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    }

    fn request(path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[tokio::test]
    async fn our_client_upgrades_and_bytes_flow_both_ways() {
        let (port, task) = server(|tcp| async move {
            let pending = read_request(tcp).await.unwrap();
            assert_eq!(pending.head().path, "/mqtt");
            assert_eq!(
                pending.head().header("sec-websocket-protocol"),
                Some("mqtt")
            );
            let mut ws = pending.accept().await.unwrap();
            let mut buf = [0u8; 5];
            ws.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"\x10\x03abc");
            ws.write_all(b"\x20\x02\x00\x00").await.unwrap();
            ws.flush().await.unwrap();
            // Hold the connection until the client has read.
            let mut rest = Vec::new();
            let _ = ws.read_to_end(&mut rest).await;
        })
        .await;
        let mut client = our_client(port).await.unwrap();
        client.write_all(b"\x10\x03abc").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"\x20\x02\x00\x00");
        drop(client);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn pipelined_frame_after_the_head_is_not_lost() {
        let (port, task) = server(|tcp| async move {
            let pending = read_request(tcp).await.unwrap();
            assert_eq!(pending.head().query, "a=1");
            let mut ws = pending.accept().await.unwrap();
            let mut buf = [0u8; 3];
            ws.read_exact(&mut buf).await.unwrap();
            buf
        })
        .await;
        // The head and a masked binary frame carrying "MQT" in one write.
        let mut bytes =
            request("/mqtt?a=1", "Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n").into_bytes();
        let mask = [1u8, 2, 3, 4];
        bytes.extend_from_slice(&[0x82, 0x80 | 3]);
        bytes.extend_from_slice(&mask);
        bytes.extend(b"MQT".iter().zip(mask).map(|(b, m)| b ^ m));
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        assert_eq!(&task.await.unwrap(), b"MQT");
        let mut response = [0u8; 12];
        tcp.read_exact(&mut response).await.unwrap();
        assert_eq!(&response, b"HTTP/1.1 101");
    }

    #[tokio::test]
    async fn reject_403_is_seen_by_the_client() {
        let (port, task) = server(|tcp| async move {
            read_request(tcp).await.unwrap().reject(403).await;
        })
        .await;
        let err = our_client(port).await.err().unwrap();
        assert!(matches!(err, Error::Auth(_)), "{err}");
        assert!(err.to_string().contains("403"), "{err}");
        task.await.unwrap();
    }

    async fn refused(path: &str, extra: &str) -> (String, WssError) {
        let (port, task) = server(|tcp| async move {
            read_request(tcp)
                .await
                .unwrap()
                .accept()
                .await
                .err()
                .unwrap()
        })
        .await;
        let response = raw_exchange(port, request(path, extra).as_bytes()).await;
        (response, task.await.unwrap())
    }

    #[tokio::test]
    async fn missing_subprotocol_is_400() {
        let (response, err) = refused("/mqtt", "").await;
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{response}"
        );
        assert!(response.contains("Content-Length: 0"), "{response}");
        assert!(
            matches!(err, WssError::Refused { status: 400, .. }),
            "{err}"
        );
        let (response, _) = refused("/mqtt", "Sec-WebSocket-Protocol: mqttv3.1\r\n").await;
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    }

    #[tokio::test]
    async fn other_path_is_404() {
        let (response, err) = refused("/other", "Sec-WebSocket-Protocol: mqtt\r\n").await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
        assert!(
            matches!(err, WssError::Refused { status: 404, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn oversize_head_is_an_error() {
        let (port, task) =
            server(|tcp| async move { read_request(tcp).await.err().unwrap() }).await;
        let big = request(
            "/mqtt",
            &format!("X-Big: {}\r\n", "a".repeat(MAX_HEAD_BYTES)),
        );
        let response = raw_exchange(port, big.as_bytes()).await;
        assert!(matches!(task.await.unwrap(), WssError::HeadTooLarge));
        // The server closes with unread bytes pending, so the client may see a reset before the
        // status line: when it sees anything, it is the 431.
        assert!(
            response.is_empty() || response.starts_with("HTTP/1.1 431 "),
            "{response}"
        );
    }

    #[tokio::test]
    async fn early_close_and_garbage_are_errors() {
        let (port, task) =
            server(|tcp| async move { read_request(tcp).await.err().unwrap() }).await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        drop(tcp);
        assert!(matches!(task.await.unwrap(), WssError::Closed));

        let (port, task) =
            server(|tcp| async move { read_request(tcp).await.err().unwrap() }).await;
        let response = raw_exchange(port, b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\r\n\r\n").await;
        assert!(matches!(task.await.unwrap(), WssError::Malformed(_)));
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    }

    #[test]
    fn head_parsing_and_upgrade_checks() {
        let head = parse_head(
            request(
                "/mqtt?x=%20y",
                "Sec-WebSocket-Protocol: mqtt\r\nX-Empty:\r\n",
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/mqtt");
        assert_eq!(head.query, "x=%20y");
        assert_eq!(head.header("x-empty"), Some(""));
        assert_eq!(head.header("connection"), Some("keep-alive, Upgrade"));
        assert_eq!(check_upgrade(&head), Ok("dGhlIHNhbXBsZSBub25jZQ=="));

        for bad in [
            "GET /mqtt HTTP/1.0\r\n\r\n",
            "GET  /mqtt HTTP/1.1\r\n\r\n",
            "GET mqtt HTTP/1.1\r\n\r\n",
            "GET /mqtt HTTP/1.1\r\nBad Name: v\r\n\r\n",
            "GET /mqtt HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            "GET /mqtt HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET /mqtt HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        ] {
            assert!(parse_head(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET /mqtt HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse_head(many.as_bytes()),
            Err(WssError::HeadTooLarge)
        ));

        let status = |req: String| {
            check_upgrade(&parse_head(req.as_bytes()).unwrap())
                .err()
                .map(|e| e.0)
        };
        let mqtt = "Sec-WebSocket-Protocol: mqtt\r\n";
        assert_eq!(
            status(request("/mqtt", mqtt).replacen("GET", "POST", 1)),
            Some(405)
        );
        assert_eq!(
            status(request("/mqtt", mqtt).replace("Upgrade: websocket\r\n", "")),
            Some(400)
        );
        assert_eq!(
            status(request("/mqtt", mqtt).replace("keep-alive, Upgrade", "close")),
            Some(400)
        );
        assert_eq!(
            status(request("/mqtt", mqtt).replace("Version: 13", "Version: 8")),
            Some(400)
        );
        assert_eq!(
            status(request("/mqtt", mqtt).replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")),
            Some(400)
        );
    }
}
