//! The embedded AWS IoT Core (`_native::local`) over real loopback sockets, driven by a minimal
//! hand-written MQTT 3.1.1 client on tokio-rustls (independent of the project's client), so the
//! byte-level cases (malformed packets, oversize lengths, stalled handshakes, QoS 2, limit
//! violations) can be sent exactly. No Python.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    Connect, Packet, PubAck, Publish, Subscribe, SubscribeFilter, SubscribeReasonCode,
};
use rumqttc::mqttbytes::QoS;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use _native::core::net::tls::{parse_certificates, parse_private_key, provider};
use _native::core::Limits;
use _native::local::pki::IssuedCertificate;
use _native::local::{EventKind, LocalConfig, LocalCore};

const WAIT: Duration = Duration::from_secs(5);

async fn core_with(config: LocalConfig) -> LocalCore {
    LocalCore::start(config).await.unwrap()
}

async fn core() -> LocalCore {
    core_with(LocalConfig::default()).await
}

fn tls_config(
    core: &LocalCore,
    identity: Option<&IssuedCertificate>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in parse_certificates(core.ca_pem().as_bytes(), "CA").unwrap() {
        roots.add(c).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => {
            let chain: Vec<CertificateDer<'static>> =
                parse_certificates(id.certificate_pem.as_bytes(), "cert").unwrap();
            let key: PrivateKeyDer<'static> =
                parse_private_key(id.private_key_pem.as_ref().unwrap().as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls(
    core: &LocalCore,
    port: u16,
    identity: Option<&IssuedCertificate>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = TlsConnector::from(tls_config(core, identity, alpn));
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A raw MQTT peer.
struct Peer {
    io: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Peer {
    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, usize::MAX).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.io.write_all(bytes).await;
        let _ = self.io.flush().await;
    }

    /// The next packet, or None when the connection closed.
    async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                match Packet::read(&mut self.buf, 1 << 20) {
                    Ok(p) => return Some(p),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("bad packet from the core: {e}"),
                }
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the core answered nothing within 5 s")
    }

    /// Reads until the connection closes; the packets seen on the way.
    async fn closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(p) = self.recv().await {
            seen.push(p);
        }
        seen
    }
}

async fn connect(
    core: &LocalCore,
    id: &IssuedCertificate,
    client_id: &str,
    clean: bool,
) -> (Peer, bool) {
    let io = tls(core, core.ports().mqtt, Some(id), &[]).await.unwrap();
    let mut peer = Peer {
        io,
        buf: BytesMut::new(),
    };
    let mut c = Connect::new(client_id);
    c.clean_session = clean;
    c.keep_alive = 60;
    peer.send(Packet::Connect(c)).await;
    match peer.recv().await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
            (peer, ack.session_present)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn subscribe(peer: &mut Peer, filters: &[(&str, QoS)]) -> Vec<SubscribeReasonCode> {
    let filters = filters
        .iter()
        .map(|(f, q)| SubscribeFilter::new((*f).to_owned(), *q))
        .collect();
    peer.send(Packet::Subscribe(Subscribe { pkid: 7, filters }))
        .await;
    loop {
        match peer.recv().await {
            Some(Packet::SubAck(ack)) => return ack.return_codes,
            Some(_) => {}
            None => panic!("closed instead of SUBACK"),
        }
    }
}

async fn publish(peer: &mut Peer, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
    let mut p = Publish::new(topic, qos, payload.to_vec());
    p.retain = retain;
    if qos != QoS::AtMostOnce {
        p.pkid = 1;
    }
    peer.send(Packet::Publish(p)).await;
}

async fn next_publish(peer: &mut Peer) -> Publish {
    loop {
        match peer.recv().await {
            Some(Packet::Publish(p)) => {
                if p.qos == QoS::AtLeastOnce {
                    peer.send(Packet::PubAck(PubAck::new(p.pkid))).await;
                }
                return p;
            }
            Some(_) => {}
            None => panic!("closed while waiting for a PUBLISH"),
        }
    }
}

fn reasons(core: &LocalCore, client_id: &str) -> Vec<String> {
    let batch = core.events().read(0, 100_000, Duration::ZERO);
    batch
        .events
        .iter()
        .filter(|e| {
            e.client_id == client_id && matches!(e.kind, EventKind::Disconnect | EventKind::Refused)
        })
        .map(|e| e.reason.clone())
        .collect()
}

async fn wait_reason(core: &LocalCore, client_id: &str, reason: &str) {
    for _ in 0..200 {
        if reasons(core, client_id).iter().any(|r| r == reason) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no {reason} for {client_id:?}: {:?}",
        reasons(core, client_id)
    );
}

#[tokio::test]
async fn a_device_publishes_and_another_receives_with_lifecycle_events() {
    let core = core().await;
    let a = core.register_thing("a", serde_json::Map::new()).unwrap();
    let b = core.register_thing("b", serde_json::Map::new()).unwrap();
    let (mut observer, _) = connect(&core, &b, "b", true).await;
    let codes = subscribe(
        &mut observer,
        &[
            ("$aws/events/presence/+/a", QoS::AtLeastOnce),
            ("Sensor/#", QoS::AtLeastOnce),
        ],
    )
    .await;
    assert_eq!(codes, [SubscribeReasonCode::Success(QoS::AtLeastOnce); 2]);
    let (mut device, present) = connect(&core, &a, "a", true).await;
    assert!(!present);
    let connected = next_publish(&mut observer).await;
    assert_eq!(connected.topic, "$aws/events/presence/connected/a");
    let ev: serde_json::Value = serde_json::from_slice(&connected.payload).unwrap();
    assert_eq!(ev["clientId"], "a");
    assert_eq!(ev["principalIdentifier"], a.certificate_id.as_str());
    assert_eq!(ev["eventType"], "connected");
    publish(
        &mut device,
        "Sensor/t/room1",
        b"{\"temp\":10}",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    assert!(matches!(
        device.recv().await,
        Some(Packet::PubAck(PubAck { pkid: 1 }))
    ));
    let got = next_publish(&mut observer).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("Sensor/t/room1", &b"{\"temp\":10}"[..])
    );
    device.send(Packet::Disconnect).await;
    let gone = next_publish(&mut observer).await;
    let ev: serde_json::Value = serde_json::from_slice(&gone.payload).unwrap();
    assert_eq!(ev["disconnectReason"], "CLIENT_INITIATED_DISCONNECT");
    assert_eq!(ev["clientInitiatedDisconnect"], true);
    core.stop().await;
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    let core = core().await;
    let a = core.register_thing("dup", serde_json::Map::new()).unwrap();
    let (mut first, _) = connect(&core, &a, "dup", true).await;
    let (mut second, _) = connect(&core, &a, "dup", true).await;
    assert!(first.closed().await.is_empty());
    wait_reason(&core, "dup", "DUPLICATE_CLIENTID").await;
    second.send(Packet::PingReq).await;
    assert_eq!(second.recv().await, Some(Packet::PingResp));
    assert_eq!(core.connected_clients(), ["dup"]);
    core.stop().await;
}

#[tokio::test]
async fn bad_input_closes_only_the_offending_connection() {
    let core = core().await;
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    let (mut good, _) = connect(&core, &id, "good", true).await;
    // A malformed packet (reserved packet type 0).
    let (mut bad, _) = connect(&core, &id, "malformed", true).await;
    bad.send_raw(&[0x00, 0x00]).await;
    bad.closed().await;
    wait_reason(&core, "malformed", "CLIENT_ERROR").await;
    // An oversize remaining length, refused before the bytes come.
    let (mut big, _) = connect(&core, &id, "big", true).await;
    big.send_raw(&[0x30, 0xff, 0xff, 0xff, 0x7f]).await;
    big.closed().await;
    wait_reason(&core, "big", "CLIENT_ERROR").await;
    // A payload over 128 KiB.
    let (mut fat, _) = connect(&core, &id, "fat", true).await;
    publish(
        &mut fat,
        "a/b",
        &vec![0u8; 128 * 1024 + 1],
        QoS::AtMostOnce,
        false,
    )
    .await;
    fat.closed().await;
    wait_reason(&core, "fat", "CLIENT_ERROR").await;
    // QoS 2 publish.
    let (mut q2, _) = connect(&core, &id, "q2", true).await;
    publish(&mut q2, "a/b", b"x", QoS::ExactlyOnce, false).await;
    assert!(q2.closed().await.is_empty(), "AWS sends no PUBREC");
    wait_reason(&core, "q2", "CLIENT_ERROR").await;
    // Nine filters in one SUBSCRIBE.
    let (mut nine, _) = connect(&core, &id, "nine", true).await;
    let filters: Vec<SubscribeFilter> = (0..9)
        .map(|i| SubscribeFilter::new(format!("f/{i}"), QoS::AtMostOnce))
        .collect();
    nine.send(Packet::Subscribe(Subscribe { pkid: 1, filters }))
        .await;
    assert!(nine.closed().await.is_empty());
    wait_reason(&core, "nine", "CLIENT_ERROR").await;
    // A topic with 8 slashes.
    let (mut deep, _) = connect(&core, &id, "deep", true).await;
    publish(&mut deep, "a/b/c/d/e/f/g/h/i", b"x", QoS::AtMostOnce, false).await;
    deep.closed().await;
    wait_reason(&core, "deep", "CLIENT_ERROR").await;
    // A reserved topic.
    let (mut reserved, _) = connect(&core, &id, "reserved", true).await;
    publish(
        &mut reserved,
        "$aws/events/presence/connected/x",
        b"{}",
        QoS::AtMostOnce,
        false,
    )
    .await;
    reserved.closed().await;
    wait_reason(&core, "reserved", "FORBIDDEN_ACCESS").await;
    // The good connection carried on.
    good.send(Packet::PingReq).await;
    assert_eq!(good.recv().await, Some(Packet::PingResp));
    core.stop().await;
}

#[tokio::test]
async fn qos2_subscriptions_are_granted_qos1_and_rules_topics_are_refused() {
    let core = core().await;
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    let (mut p, _) = connect(&core, &id, "s", true).await;
    let codes = subscribe(
        &mut p,
        &[
            ("a/b", QoS::ExactlyOnce),
            ("$aws/rules/r/#", QoS::AtMostOnce),
            ("$SYS/#", QoS::AtMostOnce),
        ],
    )
    .await;
    assert_eq!(
        codes,
        [
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure
        ]
    );
    // Basic ingest is acknowledged and reaches nobody, not even '#'.
    subscribe(&mut p, &[("#", QoS::AtMostOnce)]).await;
    publish(&mut p, "$aws/rules/r1/x", b"1", QoS::AtLeastOnce, false).await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    publish(&mut p, "after", b"2", QoS::AtMostOnce, false).await;
    assert_eq!(next_publish(&mut p).await.topic, "after");
    let rules = core
        .events()
        .read(0, 1000, Duration::ZERO)
        .events
        .into_iter()
        .filter(|e| e.kind == EventKind::Rule)
        .count();
    assert_eq!(rules, 1);
    core.stop().await;
}

#[tokio::test]
async fn handshakes_that_stall_or_lack_credentials_are_refused_and_timed_out() {
    let core = core_with(LocalConfig {
        handshake_timeout: Duration::from_millis(300),
        ..LocalConfig::default()
    })
    .await;
    // TCP only, no TLS ClientHello: closed after the handshake timeout.
    let mut raw = TcpStream::connect(("127.0.0.1", core.ports().mqtt))
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(WAIT, raw.read(&mut byte))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    // TLS done, no CONNECT.
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    let io = tls(&core, core.ports().mqtt, Some(&id), &[]).await.unwrap();
    let mut silent = Peer {
        io,
        buf: BytesMut::new(),
    };
    assert!(silent.closed().await.is_empty());
    // No client certificate on the mTLS port.
    let refused = match tls(&core, core.ports().mqtt, None, &[]).await {
        Err(_) => true,
        Ok(io) => Peer {
            io,
            buf: BytesMut::new(),
        }
        .closed()
        .await
        .is_empty(),
    };
    assert!(refused);
    // The ALPN port without ALPN: closed; with x-amzn-mqtt-ca: served.
    let io = tls(&core, core.ports().alpn, Some(&id), &[]).await.unwrap();
    let mut no_alpn = Peer {
        io,
        buf: BytesMut::new(),
    };
    no_alpn.send(Packet::Connect(Connect::new("x"))).await;
    assert!(no_alpn.closed().await.is_empty());
    let io = tls(&core, core.ports().alpn, Some(&id), &[b"x-amzn-mqtt-ca"])
        .await
        .unwrap();
    let mut alpn = Peer {
        io,
        buf: BytesMut::new(),
    };
    alpn.send(Packet::Connect(Connect::new("x"))).await;
    assert!(matches!(alpn.recv().await, Some(Packet::ConnAck(_))));
    core.stop().await;
}

#[tokio::test]
async fn a_certificate_set_inactive_or_revoked_is_refused_at_the_next_handshake() {
    let core = core().await;
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    let _ = connect(&core, &id, "t", true).await;
    for status in ["INACTIVE", "REVOKED"] {
        core.certificate_status(&id.certificate_id, status).unwrap();
        let r = tls(&core, core.ports().mqtt, Some(&id), &[]).await;
        let refused = match r {
            Err(_) => true,
            Ok(io) => {
                let mut p = Peer {
                    io,
                    buf: BytesMut::new(),
                };
                p.send_raw(&[0xc0, 0x00]).await;
                p.closed().await.is_empty()
            }
        };
        assert!(refused, "{status} certificate was served");
    }
    core.certificate_status(&id.certificate_id, "ACTIVE")
        .unwrap();
    let _ = connect(&core, &id, "t", true).await;
    assert!(core
        .certificate_status(&id.certificate_id, "BROKEN")
        .is_err());
    core.stop().await;
}

#[tokio::test]
async fn mqtt5_and_bad_client_ids_are_refused_in_connack() {
    let core = core().await;
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    for (client_id, level, expected) in [("v5", 5u8, 1u8), ("", 4, 2), (&*"x".repeat(129), 4, 2)] {
        let io = tls(&core, core.ports().mqtt, Some(&id), &[]).await.unwrap();
        let mut p = Peer {
            io,
            buf: BytesMut::new(),
        };
        let mut out = BytesMut::new();
        Packet::Connect(Connect::new(client_id))
            .write(&mut out, usize::MAX)
            .unwrap();
        if level != 4 {
            // Short packet: the level is the 9th byte.
            out[8] = level;
        }
        p.send_raw(&out).await;
        let seen = p.closed().await;
        match seen.first() {
            Some(Packet::ConnAck(a)) => assert_eq!(a.code as u8, expected, "{client_id:?}"),
            other => panic!(
                "expected CONNACK {expected}, got {other:?}; events {:?}",
                core.events().read(0, 100, Duration::ZERO).events
            ),
        }
    }
    core.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_one_and_a_half_keep_alives() {
    let core = core_with(LocalConfig {
        limits: Limits::Mqtt,
        ..LocalConfig::default()
    })
    .await;
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    let io = tls(&core, core.ports().mqtt, Some(&id), &[]).await.unwrap();
    let mut p = Peer {
        io,
        buf: BytesMut::new(),
    };
    let mut c = Connect::new("sleepy");
    c.keep_alive = 1;
    p.send(Packet::Connect(c)).await;
    let started = std::time::Instant::now();
    assert!(matches!(p.recv().await, Some(Packet::ConnAck(_))));
    assert!(p.closed().await.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "dropped after {waited:?}"
    );
    wait_reason(&core, "sleepy", "MQTT_KEEP_ALIVE_TIMEOUT").await;
    core.stop().await;
}

#[tokio::test]
async fn a_persistent_session_keeps_subscriptions_and_qos1_messages() {
    let core = core().await;
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    let (mut p, present) = connect(&core, &id, "persistent", false).await;
    assert!(!present);
    subscribe(&mut p, &[("cmd/persistent", QoS::AtLeastOnce)]).await;
    p.send(Packet::Disconnect).await;
    p.closed().await;
    let (mut sender, _) = connect(&core, &id, "sender", true).await;
    publish(
        &mut sender,
        "cmd/persistent",
        b"while-away",
        QoS::AtLeastOnce,
        false,
    )
    .await;
    assert!(matches!(sender.recv().await, Some(Packet::PubAck(_))));
    let (mut back, present) = connect(&core, &id, "persistent", false).await;
    assert!(present);
    let m = next_publish(&mut back).await;
    assert_eq!(&m.payload[..], b"while-away");
    core.stop().await;
}

#[tokio::test]
async fn retained_messages_go_to_exact_filters_only() {
    let core = core().await;
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    let (mut p, _) = connect(&core, &id, "r", true).await;
    publish(&mut p, "state/lamp", b"on", QoS::AtLeastOnce, true).await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    let (mut q, _) = connect(&core, &id, "q", true).await;
    subscribe(&mut q, &[("state/+", QoS::AtLeastOnce)]).await;
    subscribe(&mut q, &[("state/lamp", QoS::AtLeastOnce)]).await;
    let m = next_publish(&mut q).await;
    assert!(m.retain);
    assert_eq!(&m.payload[..], b"on");
    // Nothing came through the wildcard subscription: the next message is a live one.
    publish(&mut p, "state/fan", b"live", QoS::AtMostOnce, false).await;
    let live = next_publish(&mut q).await;
    assert_eq!((live.topic.as_str(), live.retain), ("state/fan", false));
    core.stop().await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

#[tokio::test]
async fn starting_and_stopping_200_times_leaks_no_port_or_descriptor() {
    let first = core().await;
    let port = first.ports().mqtt;
    first.stop().await;
    let before = open_fds();
    for _ in 0..200 {
        let c = core_with(LocalConfig {
            mqtt_port: port,
            ..LocalConfig::default()
        })
        .await;
        c.stop().await;
    }
    // Tests running beside this one open and close sockets too: give their counts time to
    // settle before calling the difference a leak.
    let mut after = open_fds();
    for _ in 0..100 {
        if after <= before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = open_fds();
    }
    assert!(
        after <= before + 2,
        "descriptors: {before} before, {after} after"
    );
}

#[tokio::test]
async fn a_slow_subscriber_loses_no_qos1_message_behind_a_fast_publisher() {
    let core = core_with(LocalConfig {
        connection_queue: 16,
        ..LocalConfig::default()
    })
    .await;
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    let (mut sub, _) = connect(&core, &id, "slow", true).await;
    subscribe(&mut sub, &[("load/#", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = connect(&core, &id, "fast", true).await;
    // 100 in flight × 64 KiB fill the subscriber's socket buffers while it does not read, so
    // the connection blocks in a write and its queue (16 here) overflows into the backlog.
    let n = 600u32;
    let payload = vec![7u8; 64 * 1024];
    let mut out = BytesMut::new();
    for i in 0..n {
        let mut p = Publish::new(format!("load/{i}"), QoS::AtLeastOnce, payload.clone());
        p.pkid = u16::try_from(i % 60_000 + 1).unwrap();
        Packet::Publish(p).write(&mut out, usize::MAX).unwrap();
    }
    let writer = tokio::spawn(async move {
        publisher.send_raw(&out).await;
        let mut acks = 0;
        while acks < n {
            match publisher.recv().await {
                Some(Packet::PubAck(_)) => acks += 1,
                Some(_) => {}
                None => panic!("publisher closed after {acks} PUBACKs"),
            }
        }
        publisher
    });
    let _publisher = writer.await.unwrap();
    // Only now does the subscriber read: every message arrives, in order.
    for i in 0..n {
        let m = next_publish(&mut sub).await;
        assert_eq!(m.topic, format!("load/{i}"));
    }
    assert_eq!(core.counters().1, 0, "the core dropped deliveries");
    core.stop().await;
}

/// A connection subscribed to `flood/<client_id>/#` that never reads, flooded until the core's
/// writer for it is stalled in a write and its queue is full.
async fn stalled_subscriber(core: &LocalCore, id: &IssuedCertificate, client_id: &str) -> Peer {
    let (mut stuck, _) = connect(core, id, client_id, true).await;
    subscribe(
        &mut stuck,
        &[(&format!("flood/{client_id}/#"), QoS::AtMostOnce)],
    )
    .await;
    let (mut publisher, _) = connect(core, id, &format!("{client_id}-flooder"), true).await;
    let payload = vec![1u8; 64 * 1024];
    let mut out = BytesMut::new();
    for i in 0..400 {
        Packet::Publish(Publish::new(
            format!("flood/{client_id}/{i}"),
            QoS::AtMostOnce,
            payload.clone(),
        ))
        .write(&mut out, usize::MAX)
        .unwrap();
    }
    publisher.send_raw(&out).await;
    // A QoS 1 publish behind the flood: once acknowledged, the whole flood was routed.
    publish(&mut publisher, "done", b"", QoS::AtLeastOnce, false).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    stuck
}

#[tokio::test]
async fn a_client_that_never_reads_is_still_taken_over_and_disconnected_at_once() {
    let core = core_with(LocalConfig {
        connection_queue: 4,
        ..LocalConfig::default()
    })
    .await;
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    let _stuck = stalled_subscriber(&core, &id, "stuck").await;
    // Its queue is full and its writer blocked: the takeover must still close it.
    let (mut second, _) = connect(&core, &id, "stuck", true).await;
    wait_reason(&core, "stuck", "DUPLICATE_CLIENTID").await;
    second.send(Packet::PingReq).await;
    assert_eq!(second.recv().await, Some(Packet::PingResp));
    // So must the disconnect API.
    let _other = stalled_subscriber(&core, &id, "other").await;
    assert!(core
        .disconnect("other", "API_INITIATED_DISCONNECT")
        .unwrap());
    wait_reason(&core, "other", "API_INITIATED_DISCONNECT").await;
    core.stop().await;
}

#[derive(Debug)]
struct NeverAnswers;

impl _native::local::authorizers::AuthorizerHook for NeverAnswers {
    fn authorize(
        &self,
        _request: _native::local::authorizer_request::AuthorizerRequest,
    ) -> _native::local::authorizers::VerdictFuture {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn stop_is_prompt_with_a_stalled_writer_a_stalled_upgrade_and_a_pending_authorizer() {
    let core = core_with(LocalConfig {
        connection_queue: 4,
        ..LocalConfig::default()
    })
    .await;
    core.add_authorizer(
        _native::local::authorizer_request::AuthorizerSpec {
            name: "never".into(),
            token_key_name: None,
            signing: false,
        },
        Arc::new(NeverAnswers),
    )
    .unwrap();
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    let _stuck = stalled_subscriber(&core, &id, "stuck").await;
    // TLS up on the WSS port, no upgrade request.
    let _upgrade = tls(&core, core.ports().wss, None, &[b"http/1.1"])
        .await
        .unwrap();
    // CONNECT on the custom-auth port, waiting for an authorizer that never answers.
    let io = tls(&core, core.ports().custom_auth, None, &[b"mqtt"])
        .await
        .unwrap();
    let mut waiting = Peer {
        io,
        buf: BytesMut::new(),
    };
    let mut c = Connect::new("waiting");
    c.set_login("u?x-amz-customauthorizer-name=never", "p");
    waiting.send(Packet::Connect(c)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    core.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "stop took {took:?}");
}
fn provisioning_template() -> serde_json::Value {
    serde_json::json!({
        "Parameters": {
            "SerialNumber": {"Type": "String"},
            "AWS::IoT::Certificate::Id": {"Type": "String"}
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {"ThingName": {"Ref": "SerialNumber"}}
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {
                    "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                    "Status": "Active"
                }
            }
        }
    })
}

#[tokio::test]
async fn provisioning_responses_go_only_to_the_requesting_connection() {
    let core = core().await;
    let claim = core
        .add_provisioning_template("fleet", provisioning_template(), None)
        .unwrap();
    let accepted = "$aws/certificates/create/json/accepted";
    let (mut a, _) = connect(&core, &claim, "claim-a", true).await;
    let (mut b, _) = connect(&core, &claim, "claim-b", true).await;
    subscribe(&mut a, &[(accepted, QoS::AtLeastOnce)]).await;
    subscribe(&mut b, &[(accepted, QoS::AtLeastOnce)]).await;
    publish(
        &mut a,
        "$aws/certificates/create/json",
        b"",
        QoS::AtMostOnce,
        false,
    )
    .await;
    let mine = next_publish(&mut a).await;
    assert_eq!(mine.topic, accepted);
    let mine: serde_json::Value = serde_json::from_slice(&mine.payload).unwrap();
    // AWS answers on the requester's connection only: b never sees a's private key.
    publish(
        &mut b,
        "$aws/certificates/create/json",
        b"",
        QoS::AtMostOnce,
        false,
    )
    .await;
    let theirs = next_publish(&mut b).await;
    let theirs: serde_json::Value = serde_json::from_slice(&theirs.payload).unwrap();
    assert_ne!(theirs["certificateId"], mine["certificateId"]);
    core.stop().await;
}

#[tokio::test]
async fn a_will_is_held_to_the_rules_of_a_publish() {
    let core = core().await;
    let claim = core
        .add_provisioning_template("fleet", provisioning_template(), None)
        .unwrap();
    let device = core.register_thing("t", serde_json::Map::new()).unwrap();
    let attempt = |identity: IssuedCertificate, will: rumqttc::mqttbytes::v4::LastWill| {
        let core = &core;
        async move {
            let io = tls(core, core.ports().mqtt, Some(&identity), &[])
                .await
                .unwrap();
            let mut p = Peer {
                io,
                buf: BytesMut::new(),
            };
            let mut c = Connect::new("willing");
            c.last_will = Some(will);
            p.send(Packet::Connect(c)).await;
            match p.recv().await {
                Some(Packet::ConnAck(a)) => a.code as u8,
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
    };
    use rumqttc::mqttbytes::v4::LastWill;
    // A claim certificate may publish nothing outside fleet provisioning, wills included.
    let code = attempt(
        claim.clone(),
        LastWill::new("Sensor/x", "gone", QoS::AtMostOnce, false),
    )
    .await;
    assert_eq!(code, 5, "a claim's will on Sensor/x was accepted");
    // No retained message on a reserved topic, as for a PUBLISH.
    let code = attempt(
        device.clone(),
        LastWill::new("$aws/things/t/shadow/update", "{}", QoS::AtMostOnce, true),
    )
    .await;
    assert_eq!(code, 5, "a retained will on a reserved topic was accepted");
    // An ordinary will is fine.
    let code = attempt(
        device,
        LastWill::new("Sensor/x", "gone", QoS::AtLeastOnce, false),
    )
    .await;
    assert_eq!(code, 0);
    core.stop().await;
}

#[tokio::test]
async fn a_retained_message_queued_behind_a_full_in_flight_window_keeps_its_retain_flag() {
    let core = core().await;
    let id = core.register_thing("t", serde_json::Map::new()).unwrap();
    let (mut publisher, _) = connect(&core, &id, "pub", true).await;
    publish(&mut publisher, "state/lamp", b"on", QoS::AtLeastOnce, true).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    let (mut sub, _) = connect(&core, &id, "sub", true).await;
    subscribe(&mut sub, &[("load/#", QoS::AtLeastOnce)]).await;
    // 100 QoS 1 messages the subscriber does not acknowledge: AWS's in-flight window is full.
    for i in 0..100 {
        publish(
            &mut publisher,
            &format!("load/{i}"),
            b"x",
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    let mut unacked = Vec::new();
    while unacked.len() < 100 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => unacked.push(p.pkid),
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    // Now the retained message for a new exact subscription has to wait for room.
    let filters = vec![SubscribeFilter::new(
        "state/lamp".to_owned(),
        QoS::AtLeastOnce,
    )];
    sub.send(Packet::Subscribe(Subscribe { pkid: 9, filters }))
        .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    sub.send(Packet::PubAck(PubAck::new(unacked[0]))).await;
    let retained = next_publish(&mut sub).await;
    assert_eq!(retained.topic, "state/lamp");
    assert!(
        retained.retain,
        "the retained message lost its RETAIN flag while it waited"
    );
    core.stop().await;
}
