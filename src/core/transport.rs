//! Opening a connection: TCP, then TLS (SNI and verified name = endpoint), then MQTT CONNECT
//! and the CONNACK. Errors are classified (network, TLS, auth, refused, protocol).

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{ConnectReturnCode, LastWill, Login, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::core::config::{ClientConfig, Transport};
use crate::core::error::{Error, Result};
use crate::core::websocket;

/// A byte stream to the broker.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A boxed byte stream to the broker.
pub type Stream = Box<dyn Io>;

/// What a [`crate::core::config::Connector`] returns.
pub type ConnectFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Stream>> + Send>>;

/// What a successful connection attempt returns.
pub struct Opened {
    /// The stream, after CONNACK.
    pub stream: Stream,
    /// Bytes read past the CONNACK (packets that followed it immediately).
    pub leftover: BytesMut,
    /// CONNACK session-present flag.
    pub session_present: bool,
    /// Size of the CONNECT packet we sent.
    pub connect_size: usize,
}

/// Describes an I/O error, naming the TLS problem when rustls reported one.
pub fn classify_io(endpoint: &str, port: u16, e: &std::io::Error, during: &str) -> Error {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Error::Tls {
            endpoint: format!("{endpoint}:{port}"),
            message: describe_tls(tls),
        };
    }
    Error::Connect(format!("{during} {endpoint}:{port} failed: {e}"))
}

fn describe_tls(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "the server certificate is not signed by a trusted CA (UnknownIssuer)".into()
        }
        E::InvalidCertificate(C::BadSignature) => {
            "the server certificate's signature does not verify against the trusted CA of that name (BadSignature: an impostor CA?)".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the server certificate is not valid for this host name (NotValidForName)".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server certificate has expired (Expired)".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the server certificate is not valid yet (NotValidYet)".into()
        }
        E::AlertReceived(A::CertificateRequired) => {
            "the server requires a client certificate (alert CertificateRequired)".into()
        }
        E::AlertReceived(
            A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::DecryptError,
        ) => format!("the server rejected our client certificate (alert {e:?})"),
        E::AlertReceived(A::HandshakeFailure) => {
            "the server ended the handshake (alert HandshakeFailure: no client certificate, or no common cipher/protocol)".into()
        }
        E::AlertReceived(A::NoApplicationProtocol) => {
            "the server accepts none of the offered ALPN protocols (alert NoApplicationProtocol)".into()
        }
        other => other.to_string(),
    }
}

async fn tcp(cfg: &ClientConfig) -> Result<TcpStream> {
    let tcp = TcpStream::connect((cfg.endpoint.as_str(), cfg.port))
        .await
        .map_err(|e| {
            Error::Connect(format!(
                "TCP connect to {}:{} failed: {e}",
                cfg.endpoint, cfg.port
            ))
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn open_stream(cfg: &ClientConfig) -> Result<Stream> {
    if let Transport::Custom(connector) = &cfg.transport {
        return connector.connect().await.map_err(|e| {
            Error::Connect(format!(
                "connecting to {}:{} failed: {e}",
                cfg.endpoint, cfg.port
            ))
        });
    }
    // A WebSocket URL (and its SigV4 credentials) is prepared before any byte is sent.
    let ws_url = match &cfg.transport {
        Transport::WebSocket { tls, ws } => {
            Some(websocket::url(&cfg.endpoint, cfg.port, tls.is_some(), ws).await?)
        }
        _ => None,
    };
    let tcp = tcp(cfg).await?;
    match &cfg.transport {
        Transport::Tcp | Transport::Custom(_) => Ok(Box::new(tcp)),
        Transport::Tls(tls) => tls_handshake(cfg, tls, tcp).await,
        Transport::WebSocket { tls, ws } => {
            let stream = match tls {
                Some(tls) => tls_handshake(cfg, tls, tcp).await?,
                None => Box::new(tcp),
            };
            let url = ws_url.unwrap_or_default();
            websocket::upgrade(stream, &url, ws, &cfg.endpoint, cfg.port).await
        }
    }
}

async fn tls_handshake(
    cfg: &ClientConfig,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> Result<Stream> {
    let name = rustls_pki_types::ServerName::try_from(cfg.endpoint.clone()).map_err(|_| {
        Error::Config(format!(
            "endpoint {:?} is not a valid TLS server name",
            cfg.endpoint
        ))
    })?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| classify_io(&cfg.endpoint, cfg.port, &e, "TLS handshake with"))?;
    Ok(Box::new(stream))
}

/// Builds the CONNECT packet. Its `Debug` would show the password: never log it.
fn connect_packet(cfg: &ClientConfig) -> rumqttc::Connect {
    let mut c = rumqttc::Connect::new(cfg.client_id.clone());
    c.protocol = Protocol::V4;
    c.keep_alive = u16::try_from(cfg.keep_alive.as_secs()).unwrap_or(u16::MAX);
    c.clean_session = cfg.clean_session;
    c.last_will = cfg.will.as_ref().map(|w| LastWill {
        topic: w.topic.clone(),
        message: w.payload.clone(),
        qos: w.qos.to_mqtt(),
        retain: w.retain,
    });
    if cfg.username.is_some() || cfg.password.is_some() {
        let password = cfg
            .password
            .as_ref()
            .map(|p| String::from_utf8_lossy(p.expose()).into_owned())
            .unwrap_or_default();
        c.login = Some(Login {
            username: cfg.username.clone().unwrap_or_default(),
            password,
        });
    }
    c
}

/// Opens the stream and performs the MQTT handshake, within `connect_timeout`.
///
/// # Errors
/// Classified: [`Error::Connect`], [`Error::Tls`], [`Error::Auth`], [`Error::Refused`],
/// [`Error::Protocol`].
pub async fn open(cfg: &ClientConfig) -> Result<Opened> {
    let timeout = cfg.connect_timeout;
    match tokio::time::timeout(timeout, open_inner(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Connect(format!(
            "no CONNACK from {}:{} within {:?}",
            cfg.endpoint, cfg.port, timeout
        ))),
    }
}

async fn open_inner(cfg: &ClientConfig) -> Result<Opened> {
    let mut stream = open_stream(cfg).await?;
    let connect = connect_packet(cfg);
    let mut buf = BytesMut::with_capacity(connect.size() + 8);
    let connect_size = connect
        .write(&mut buf)
        .map_err(|e| Error::Config(format!("CONNECT cannot be encoded: {e}")))?;
    let io_err = |e: std::io::Error| classify_io(&cfg.endpoint, cfg.port, &e, "sending CONNECT to");
    stream.write_all(&buf).await.map_err(io_err)?;
    stream.flush().await.map_err(io_err)?;
    let mut rbuf = BytesMut::with_capacity(512);
    loop {
        match Packet::read(&mut rbuf, cfg.max_incoming_packet()) {
            Ok(Packet::ConnAck(ack)) => {
                return match ack.code {
                    ConnectReturnCode::Success => Ok(Opened {
                        stream,
                        leftover: rbuf,
                        session_present: ack.session_present,
                        connect_size,
                    }),
                    code => Err(refusal(code)),
                };
            }
            Ok(other) => {
                return Err(Error::Protocol(format!(
                    "expected CONNACK, the broker sent {}",
                    packet_name(&other)
                )))
            }
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(Error::Protocol(format!("invalid CONNACK: {e}"))),
        }
        let n = stream
            .read_buf(&mut rbuf)
            .await
            .map_err(|e| classify_io(&cfg.endpoint, cfg.port, &e, "waiting for CONNACK from"))?;
        if n == 0 {
            return Err(Error::Connect(format!(
                "{}:{} closed the connection before CONNACK (AWS IoT does this when the certificate, policy or client id is not allowed)",
                cfg.endpoint, cfg.port
            )));
        }
    }
}

fn refusal(code: ConnectReturnCode) -> Error {
    match code {
        ConnectReturnCode::BadUserNamePassword => Error::Auth(
            "the broker refused the user name or password (CONNACK return code 4)".into(),
        ),
        ConnectReturnCode::NotAuthorized => Error::Auth(
            "the broker refused the connection: not authorized (CONNACK return code 5)".into(),
        ),
        ConnectReturnCode::RefusedProtocolVersion => Error::Refused {
            code: 1,
            message: "unacceptable protocol version".into(),
        },
        ConnectReturnCode::BadClientId => Error::Refused {
            code: 2,
            message: "client identifier rejected".into(),
        },
        ConnectReturnCode::ServiceUnavailable => Error::Refused {
            code: 3,
            message: "server unavailable".into(),
        },
        ConnectReturnCode::Success => Error::Protocol("CONNACK success treated as refusal".into()),
    }
}

/// The MQTT name of a packet type.
#[must_use]
pub fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// Default time allowed for a graceful DISCONNECT to reach the socket.
pub const DISCONNECT_FLUSH: Duration = Duration::from_secs(2);
