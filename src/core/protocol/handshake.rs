//! The MQTT handshake on an open stream: the CONNECT packet built from the configuration, and
//! the CONNACK answer classified (accepted with session-present, refused with a reason).

use bytes::BytesMut;
use rumqttc::{ConnectReturnCode, LastWill, Login, Packet, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::core::config::ClientConfig;
use crate::core::error::{Error, Result};
use crate::core::net::stream::{classify_io, Stream};
use crate::core::net::transport::open_stream;
use crate::core::protocol::codec::packet_name;

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
    let mut stream = open_stream(
        &cfg.endpoint,
        cfg.port,
        &cfg.transport,
        cfg.proxy.as_ref(),
        cfg.connect_timeout,
    )
    .await?;
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
