//! The core's listeners: accept loops that hand each socket to its own task, where the TLS
//! handshake (bounded in time), the ALPN check, the WebSocket upgrade with SigV4 or a custom
//! authorizer, and then the MQTT connection run. Stopping a listener closes its connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsAcceptor;

use crate::local::authorizer_request::{self, AuthProtocol};
use crate::local::connection::{self, Admission};
use crate::local::events::{CoreEvent, EventKind};
use crate::local::lifecycle::DisconnectReason;
use crate::local::registry::CertificateRole;
use crate::local::shared::{stopped, CoreShared, Principal};
use crate::local::sigv4_verify;
use crate::local::tls_server::peer_certificate_id;
use crate::local::wss;

/// ALPN AWS requires for X.509 on port 443.
pub const ALPN_MQTT_CA: &[u8] = b"x-amzn-mqtt-ca";
/// ALPN AWS requires for custom authentication over MQTT on port 443.
pub const ALPN_MQTT: &[u8] = b"mqtt";

/// Which kind of AWS endpoint a listener plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// mTLS (AWS's 8883).
    Mtls,
    /// mTLS that requires ALPN `x-amzn-mqtt-ca` (AWS's 443 for X.509).
    MtlsAlpn,
    /// TLS with ALPN `mqtt`, a custom authorizer in CONNECT (AWS's 443 for custom auth).
    CustomAuth,
    /// WebSocket over TLS, SigV4 or a custom authorizer (AWS's 443 `/mqtt`).
    Wss,
}

/// How long the listener waits for its connections to close on stop before aborting them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and starts accepting. The task ends (with every connection it accepted) once
/// the core signals stop.
///
/// # Errors
/// The bind error.
pub async fn start(
    kind: ListenerKind,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<CoreShared>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(kind, listener, TlsAcceptor::from(tls), shared));
    Ok((local, task))
}

async fn accept_loop(
    kind: ListenerKind,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<CoreShared>,
) {
    let mut stop = shared.shutdown_signal();
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(handle(kind, tcp, peer, acceptor.clone(), Arc::clone(&shared)));
                }
                Err(e) => {
                    // Out of descriptors, say: back off instead of spinning.
                    log::warn!("local core: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let drained = timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

fn refused(shared: &CoreShared, reason: DisconnectReason, what: String) {
    log::debug!("local core: {what}");
    let mut e = CoreEvent::new(EventKind::Refused, "");
    e.reason = reason.as_str().to_owned();
    e.topic = what;
    shared.events.push(e);
}

async fn handle(
    kind: ListenerKind,
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<CoreShared>,
) {
    let mut stop = shared.shutdown_signal();
    let handshake_timeout = shared.config.handshake_timeout;
    let tls = tokio::select! {
        r = timeout(handshake_timeout, acceptor.accept(tcp)) => r,
        () = stopped(&mut stop) => return,
    };
    let tls = match tls {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            refused(
                &shared,
                DisconnectReason::AuthError,
                format!("TLS handshake from {peer} failed: {e}"),
            );
            return;
        }
        Err(_) => {
            refused(
                &shared,
                DisconnectReason::ClientError,
                format!("TLS handshake from {peer} timed out"),
            );
            return;
        }
    };
    let (alpn, cert_id) = {
        let (_, conn) = tls.get_ref();
        (
            conn.alpn_protocol().map(<[u8]>::to_vec),
            peer_certificate_id(conn),
        )
    };
    let required_alpn = match kind {
        ListenerKind::MtlsAlpn => Some(ALPN_MQTT_CA),
        ListenerKind::CustomAuth => Some(ALPN_MQTT),
        ListenerKind::Mtls | ListenerKind::Wss => None,
    };
    if let Some(required) = required_alpn {
        if alpn.as_deref() != Some(required) {
            refused(
                &shared,
                DisconnectReason::ClientError,
                format!(
                    "connection from {peer} without ALPN {:?}",
                    String::from_utf8_lossy(required)
                ),
            );
            return;
        }
    }
    match kind {
        ListenerKind::Mtls | ListenerKind::MtlsAlpn => {
            let Some(certificate_id) = cert_id else {
                refused(
                    &shared,
                    DisconnectReason::AuthError,
                    format!("no client certificate from {peer}"),
                );
                return;
            };
            let role = shared
                .registry
                .role(&certificate_id)
                .unwrap_or(CertificateRole::Device);
            let admission = Admission::Admitted {
                principal: Principal::Certificate {
                    certificate_id,
                    role,
                },
                expires: None,
            };
            connection::serve(tls, peer, admission, shared).await;
        }
        ListenerKind::CustomAuth => {
            let admission = Admission::AtConnect {
                protocol: AuthProtocol::Mqtt,
                headers: Vec::new(),
                query: Vec::new(),
            };
            connection::serve(tls, peer, admission, shared).await;
        }
        ListenerKind::Wss => serve_websocket(tls, peer, shared).await,
    }
}

fn is_sigv4(query: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv.starts_with("X-Amz-Signature=") || kv.starts_with("X-Amz-Credential="))
}

async fn serve_websocket<S>(stream: S, peer: SocketAddr, shared: Arc<CoreShared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    // A stop does not wait for a client that stalls its upgrade request, nor for a slow
    // authorizer.
    let mut stop = shared.shutdown_signal();
    let request = tokio::select! {
        r = timeout(shared.config.handshake_timeout, wss::read_request(stream)) => r,
        () = stopped(&mut stop) => return,
    };
    let pending = match request {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            refused(
                &shared,
                DisconnectReason::ClientError,
                format!("WebSocket upgrade from {peer}: {e}"),
            );
            return;
        }
        Err(_) => {
            refused(
                &shared,
                DisconnectReason::ClientError,
                format!("WebSocket upgrade from {peer} timed out"),
            );
            return;
        }
    };
    let head = pending.head().clone();
    let admission = if is_sigv4(&head.query) {
        let lookup = |key: &str| shared.registry.signing_secret(key);
        match sigv4_verify::verify_presigned(&head, &lookup, SystemTime::now()) {
            Ok(access_key) => Admission::Admitted {
                principal: Principal::AccessKey(access_key),
                expires: None,
            },
            Err(e) => {
                refused(
                    &shared,
                    DisconnectReason::AuthError,
                    format!("SigV4 from {peer} refused: {e}"),
                );
                pending.reject(403).await;
                return;
            }
        }
    } else {
        let find = |name: Option<&str>| shared.authorizers.find(name);
        match authorizer_request::from_http(&head, &find) {
            Ok(Some(request)) => match tokio::select! {
                v = shared.decide(request) => v,
                () = stopped(&mut stop) => return,
            } {
                Some(v) => Admission::Admitted {
                    principal: Principal::Authorizer(v.principal_id),
                    expires: v.disconnect_after.map(|d| Instant::now() + d),
                },
                None => {
                    refused(
                        &shared,
                        DisconnectReason::AuthError,
                        format!("custom authorizer refused {peer}"),
                    );
                    pending.reject(403).await;
                    return;
                }
            },
            Ok(None) if !shared.authorizers.is_empty() => Admission::AtConnect {
                protocol: AuthProtocol::Wss,
                headers: head.headers.clone(),
                query: head.query_pairs(),
            },
            Ok(None) | Err(_) => {
                refused(
                    &shared,
                    DisconnectReason::AuthError,
                    format!("WebSocket from {peer} has no credentials"),
                );
                pending.reject(403).await;
                return;
            }
        }
    };
    match pending.accept().await {
        Ok(ws) => connection::serve(ws, peer, admission, shared).await,
        Err(e) => refused(
            &shared,
            DisconnectReason::ClientError,
            format!("WebSocket upgrade from {peer}: {e}"),
        ),
    }
}
