//! HTTP CONNECT proxies, the way corporate and factory networks reach the internet: the client
//! asks the proxy for a tunnel to `endpoint:port` and then speaks TLS (or WebSocket over TLS)
//! end to end through it; the proxy sees only the CONNECT line. Credentials go in a
//! `Proxy-Authorization: Basic` header and never appear in logs, errors or `Debug` output.

use std::time::Duration;

use base64ct::{Base64, Encoding};
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::core::error::{Error, Result};
use crate::core::secret::Secret;

/// The longest proxy answer header accepted.
const MAX_RESPONSE: usize = 8 * 1024;

/// An HTTP proxy that tunnels with CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Proxy host name or address.
    pub host: String,
    /// Proxy port.
    pub port: u16,
    /// `user` and `password` for `Proxy-Authorization: Basic`.
    pub credentials: Option<(String, Secret<String>)>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

fn bad_url(url: &str, why: &str) -> Error {
    // The URL may hold a password: show only its scheme and what follows the last '@'.
    let shown = match url.rsplit_once('@') {
        Some((_, rest)) => format!("http://***@{rest}"),
        None => url.to_string(),
    };
    Error::Config(format!(
        "proxy {shown:?} is not valid ({why}); use \"http://[user:password@]host:port\" or \"env\""
    ))
}

impl Proxy {
    /// Parses `http://[user:password@]host:port` (user and password may be percent-encoded).
    ///
    /// # Errors
    /// [`Error::Config`] naming what is wrong (never repeating the password).
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad_url(url, "only http:// proxies are supported"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(bad_url(url, "no path, query or fragment"));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) =
            split_host_port(hostport).ok_or_else(|| bad_url(url, "needs host:port"))?;
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, password) = u.split_once(':').unwrap_or((u, ""));
                let decode = |s: &str| {
                    percent_decode_str(s)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| bad_url(url, "user and password must be UTF-8"))
                };
                Some((decode(user)?, Secret::new(decode(password)?)))
            }
        };
        Ok(Self {
            host,
            port,
            credentials,
        })
    }

    /// The proxy from the environment for `endpoint`: `HTTPS_PROXY` (or `https_proxy`), unless
    /// `NO_PROXY` (or `no_proxy`) names the endpoint. `NO_PROXY` is a comma-separated list of
    /// host names (a name also matches its subdomains; a leading `.` or `*.` is allowed) or `*`.
    ///
    /// # Errors
    /// [`Error::Config`] when the variable holds an invalid proxy URL.
    pub fn from_env(endpoint: &str, var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let get = |name: &str| {
            var(name)
                .or_else(|| var(&name.to_ascii_lowercase()))
                .filter(|v| !v.trim().is_empty())
        };
        let Some(url) = get("HTTPS_PROXY") else {
            return Ok(None);
        };
        if let Some(no_proxy) = get("NO_PROXY") {
            if bypassed(endpoint, &no_proxy) {
                return Ok(None);
            }
        }
        Self::parse(url.trim()).map(Some)
    }

    /// `http://host:port`, for messages (never the credentials).
    #[must_use]
    pub fn describe(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        s.rsplit_once(':')?
    };
    if host.is_empty() {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((host.to_string(), port))
}

/// Whether `NO_PROXY` sends `endpoint` direct.
fn bypassed(endpoint: &str, no_proxy: &str) -> bool {
    let host = endpoint.to_ascii_lowercase();
    no_proxy.split(',').map(str::trim).any(|entry| {
        let entry = entry.to_ascii_lowercase();
        let entry = entry.split(':').next().unwrap_or("");
        let entry = entry.trim_start_matches("*.").trim_start_matches('.');
        if entry == "*" {
            return true;
        }
        !entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}")))
    })
}

/// Opens a tunnel to `endpoint:port` through `proxy`: TCP to the proxy, CONNECT, and the
/// proxy's `200`. The returned stream then carries the client's own bytes end to end.
///
/// # Errors
/// [`Error::Connect`] naming the proxy: unreachable, refusal (407, 403, 5xx, ...), a malformed
/// answer, or no answer within `timeout`.
pub async fn tunnel(
    proxy: &Proxy,
    endpoint: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream> {
    let name = proxy.describe();
    match tokio::time::timeout(timeout, tunnel_inner(proxy, endpoint, port)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Connect(format!(
            "the proxy {name} did not open a tunnel to {endpoint}:{port} within {timeout:?}"
        ))),
    }
}

async fn tunnel_inner(proxy: &Proxy, endpoint: &str, port: u16) -> Result<TcpStream> {
    let name = proxy.describe();
    let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| Error::Connect(format!("connecting to the proxy {name} failed: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let target = if endpoint.contains(':') {
        format!("[{endpoint}]:{port}") // an IPv6 address
    } else {
        format!("{endpoint}:{port}")
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, password)) = &proxy.credentials {
        let token = Base64::encode_string(format!("{user}:{}", password.expose()).as_bytes());
        request.push_str("Proxy-Authorization: Basic ");
        request.push_str(&token);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let io = |e: std::io::Error| Error::Connect(format!("talking to the proxy {name} failed: {e}"));
    tcp.write_all(request.as_bytes()).await.map_err(io)?;
    drop(request); // it held the credentials
    let mut answer = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Read byte by byte up to the blank line: nothing past the header may be consumed, since
    // the next bytes belong to the tunnel.
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_RESPONSE {
            return Err(Error::Connect(format!(
                "the proxy {name} sent an answer header longer than {MAX_RESPONSE} bytes"
            )));
        }
        let n = tcp.read(&mut byte).await.map_err(io)?;
        if n == 0 {
            return Err(Error::Connect(format!(
                "the proxy {name} closed the connection instead of opening a tunnel to {endpoint}:{port}"
            )));
        }
        answer.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code: Option<u16> = parts.next().and_then(|c| c.parse().ok());
    let reason = parts.next().unwrap_or("").trim();
    match code {
        Some(200..=299) if version.starts_with("HTTP/1.") => Ok(tcp),
        // 407 is the standard answer; some proxies (tinyproxy) answer 401.
        Some(code @ (401 | 407)) => Err(Error::Connect(format!(
            "the proxy {name} requires authentication (HTTP {code} {reason}){}",
            if proxy.credentials.is_some() {
                ": the proxy user name or password was refused"
            } else {
                ": give them as proxy=\"http://user:password@host:port\""
            }
        ))),
        Some(code) => Err(Error::Connect(format!(
            "the proxy {name} refused the tunnel to {endpoint}:{port} (HTTP {code} {reason})"
        ))),
        None => Err(Error::Connect(format!(
            "the proxy {name} did not answer CONNECT with HTTP (got {:?})",
            status_line.chars().take(60).collect::<String>()
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn urls_parse_with_and_without_credentials() {
        let p = Proxy::parse("http://proxy.corp:3128").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.credentials.is_none()),
            ("proxy.corp", 3128, true)
        );
        let p = Proxy::parse("http://me%40corp:p%3Ass@10.0.0.1:8080/").unwrap();
        let (user, pw) = p.credentials.clone().unwrap();
        assert_eq!((user.as_str(), pw.expose().as_str()), ("me@corp", "p:ss"));
        assert!(!format!("{p:?}").contains("p:ss"));
        assert_eq!(Proxy::parse("http://[::1]:3128").unwrap().host, "::1");
        for bad in [
            "https://p:1",
            "http://p",
            "http://p:0",
            "http://p:1/x",
            "socks5://p:1",
        ] {
            assert!(Proxy::parse(bad).is_err(), "{bad}");
        }
        let err = Proxy::parse("http://u:S3CRET@host")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("S3CRET"), "{err}");
    }

    #[test]
    fn the_environment_is_read_and_no_proxy_honoured() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_string())
            }
        };
        let vars: &[(&str, &str)] = &[
            ("HTTPS_PROXY", "http://p:3128"),
            ("NO_PROXY", "localhost,.internal.corp"),
        ];
        assert!(Proxy::from_env("a.iot.us-east-1.amazonaws.com", env(vars))
            .unwrap()
            .is_some());
        assert!(Proxy::from_env("localhost", env(vars)).unwrap().is_none());
        assert!(Proxy::from_env("x.internal.corp", env(vars))
            .unwrap()
            .is_none());
        let lower: &[(&str, &str)] = &[("https_proxy", "http://p:3128"), ("no_proxy", "*")];
        assert!(Proxy::from_env("anything", env(lower)).unwrap().is_none());
        assert!(Proxy::from_env("anything", env(&[])).unwrap().is_none());
    }

    /// A one-shot proxy answering `status`, recording the request head.
    async fn scripted(status: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).await.unwrap() == 0 {
                    break;
                }
                head.push(b[0]);
            }
            s.write_all(status.as_bytes()).await.unwrap();
            if status.starts_with("HTTP/1.1 200") {
                // Echo one message through the tunnel.
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
            }
            String::from_utf8(head).unwrap()
        });
        (port, task)
    }

    #[tokio::test]
    async fn a_tunnel_carries_bytes_and_sends_basic_credentials() {
        let (port, seen) = scripted("HTTP/1.1 200 Connection established\r\n\r\n").await;
        let proxy = Proxy::parse(&format!("http://user:pw@127.0.0.1:{port}")).unwrap();
        let mut s = tunnel(
            &proxy,
            "example-ats.iot.eu-west-1.amazonaws.com",
            443,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        let head = seen.await.unwrap();
        assert!(
            head.starts_with("CONNECT example-ats.iot.eu-west-1.amazonaws.com:443 HTTP/1.1\r\n")
        );
        assert!(
            head.contains("Proxy-Authorization: Basic dXNlcjpwdw==\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn refusals_name_the_proxy_never_the_password() {
        for (status, expect) in [
            (
                "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                "requires authentication",
            ),
            ("HTTP/1.1 403 Forbidden\r\n\r\n", "HTTP 403"),
            ("HTTP/1.1 502 Bad Gateway\r\n\r\n", "HTTP 502"),
            ("SSH-2.0-nope\r\n\r\n", "did not answer CONNECT with HTTP"),
        ] {
            let (port, _seen) = scripted(status).await;
            let proxy = Proxy::parse(&format!("http://u:S3CRET-PW@127.0.0.1:{port}")).unwrap();
            let err = tunnel(&proxy, "h", 8883, Duration::from_secs(5))
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(expect) && text.contains(&format!("127.0.0.1:{port}")),
                "{text}"
            );
            assert!(!text.contains("S3CRET-PW"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_silent_proxy_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _keep = tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let proxy = Proxy::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = tunnel(&proxy, "h", 8883, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("within"), "{err}");
    }
}
