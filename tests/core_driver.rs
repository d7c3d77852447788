//! Driver tests on paused tokio time with an in-memory scripted broker: keep-alive, backoff,
//! acknowledgement correlation and session recovery. No sockets, no Python.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::{ConnAck, ConnectReturnCode, Packet, PubAck, SubAck, SubscribeReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use _native::core::net::stream::{ConnectFuture, Stream};
use _native::core::{
    Client, ClientConfig, ClientEvent, Connector, DisconnectReason, EventSink, Limits, QoS,
    ReconnectConfig, Reply, State, SubscriptionQueue, Transport, Wake,
};

/// Hands the server half of each new in-memory connection to the test; refuses when asked.
struct Pipe {
    buffer: usize,
    accepted: mpsc::UnboundedSender<DuplexStream>,
    refuse: Arc<Mutex<bool>>,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl Connector for Pipe {
    fn connect(&self) -> ConnectFuture {
        self.attempts.lock().unwrap().push(Instant::now());
        let refuse = *self.refuse.lock().unwrap();
        let (client, server) = tokio::io::duplex(self.buffer);
        let sent = if refuse {
            Ok(())
        } else {
            self.accepted.send(server)
        };
        Box::pin(async move {
            if refuse || sent.is_err() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "refused",
                ));
            }
            Ok(Box::new(client) as Stream)
        })
    }
}

/// Records each event, and the client's state as a handler of that event would see it.
#[derive(Default)]
struct Events(
    Mutex<Vec<(Instant, ClientEvent)>>,
    OnceLock<Weak<Client>>,
    Mutex<Vec<Option<State>>>,
);
impl EventSink for Events {
    fn event(&self, event: ClientEvent) {
        let state = self.1.get().and_then(Weak::upgrade).map(|c| c.state());
        self.2.lock().unwrap().push(state);
        self.0.lock().unwrap().push((Instant::now(), event));
    }
}

struct NoWake;
impl Wake for NoWake {
    fn wake(&self, _: u64) {}
}

/// One broker-side connection.
struct Peer {
    io: DuplexStream,
    buf: BytesMut,
}

impl Peer {
    async fn read(&mut self) -> Option<Packet> {
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttc::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("broker decode: {e}"),
            }
            if self.io.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        self.io.write_all(&b).await.unwrap();
    }

    async fn accept(rx: &mut mpsc::UnboundedReceiver<DuplexStream>, session_present: bool) -> Peer {
        let io = rx.recv().await.unwrap();
        let mut peer = Peer {
            io,
            buf: BytesMut::new(),
        };
        assert!(matches!(peer.read().await, Some(Packet::Connect(_))));
        peer.send(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            session_present,
        )))
        .await;
        peer
    }
}

struct Harness {
    client: Arc<Client>,
    events: Arc<Events>,
    accepted: mpsc::UnboundedReceiver<DuplexStream>,
    refuse: Arc<Mutex<bool>>,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

fn harness(configure: impl FnOnce(&mut ClientConfig)) -> Harness {
    harness_with_buffer(1 << 20, configure)
}

/// A harness whose in-memory link holds at most `buffer` bytes per direction (a slow link
/// when the broker side reads slowly).
fn harness_with_buffer(buffer: usize, configure: impl FnOnce(&mut ClientConfig)) -> Harness {
    let (tx, rx) = mpsc::unbounded_channel();
    let refuse = Arc::new(Mutex::new(false));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let pipe = Pipe {
        buffer,
        accepted: tx,
        refuse: refuse.clone(),
        attempts: attempts.clone(),
    };
    let mut cfg = ClientConfig::new("broker.test", 1883, Transport::Custom(Arc::new(pipe)));
    cfg.limits = Limits::Mqtt;
    cfg.client_id = "driver-test".into();
    cfg.client_id_given = true;
    cfg.keep_alive = Duration::from_secs(60);
    cfg.reconnect = Some(ReconnectConfig {
        min_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(8),
        jitter: false,
        max_attempts: 0,
        reset_after: Duration::from_secs(30),
    });
    configure(&mut cfg);
    let events = Arc::new(Events::default());
    let client =
        Arc::new(Client::new(cfg, tokio::runtime::Handle::current(), events.clone()).unwrap());
    events.1.set(Arc::downgrade(&client)).unwrap();
    Harness {
        client,
        events,
        accepted: rx,
        refuse,
        attempts,
    }
}

fn reply<T: Send + 'static>() -> (Reply<T>, oneshot::Receiver<_native::core::Result<T>>) {
    let (tx, rx) = oneshot::channel();
    (
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
        rx,
    )
}

async fn connect(h: &mut Harness, session_present: bool) -> Peer {
    let (r, done) = reply();
    h.client.connect(r);
    let peer = Peer::accept(&mut h.accepted, session_present).await;
    done.await.unwrap().unwrap();
    peer
}

fn publish(h: &Harness, payload: &'static str) -> oneshot::Receiver<_native::core::Result<()>> {
    let (r, done) = reply();
    h.client
        .publish(
            "t".into(),
            Bytes::from_static(payload.as_bytes()),
            QoS::AtLeastOnce,
            false,
            Some(r),
        )
        .unwrap();
    done
}

/// Submits `count` QoS 0 publishes of 4 KiB each (nobody awaits them).
fn queue_qos0_4k(h: &Harness, count: usize) {
    for _ in 0..count {
        h.client
            .publish(
                "t".into(),
                Bytes::from(vec![0u8; 4096]),
                QoS::AtMostOnce,
                false,
                None,
            )
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn pings_go_out_at_keep_alive_and_a_silent_broker_is_detected_within_one_and_a_half() {
    let mut h = harness(|c| {
        c.keep_alive = Duration::from_secs(10);
        c.reconnect = None;
    });
    let start = Instant::now();
    let mut peer = connect(&mut h, false).await;
    assert!(matches!(peer.read().await, Some(Packet::PingReq)));
    assert_eq!(
        start.elapsed().as_secs(),
        10,
        "first PINGREQ after one keep-alive"
    );
    peer.send(Packet::PingResp).await;
    assert!(matches!(peer.read().await, Some(Packet::PingReq)));
    assert_eq!(start.elapsed().as_secs(), 20);
    // Now the broker goes silent (half-open): no PINGRESP.
    let silent_from = Instant::now();
    assert!(
        peer.read().await.is_none(),
        "the client drops the connection"
    );
    let waited = silent_from.elapsed();
    assert_eq!(
        waited,
        Duration::from_secs(5),
        "detected at 1.5 × keep-alive after the last activity"
    );
    let events = h.events.0.lock().unwrap();
    assert!(matches!(
        events.last(),
        Some((
            _,
            ClientEvent::Disconnected {
                reason: DisconnectReason::KeepAlive,
                ..
            }
        ))
    ));
}

#[tokio::test(start_paused = true)]
async fn reconnect_attempts_back_off_exponentially_up_to_the_cap() {
    let mut h = harness(|_| {});
    let peer = connect(&mut h, false).await;
    *h.refuse.lock().unwrap() = true;
    let lost = Instant::now();
    drop(peer); // the broker goes away
    tokio::time::sleep(Duration::from_secs(40)).await;
    let mut attempts = h.attempts.lock().unwrap().clone();
    attempts[0] = lost;
    let gaps: Vec<u64> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    assert_eq!(
        &gaps[..6],
        &[1, 2, 4, 8, 8, 8],
        "min 1 s doubling to the 8 s cap; got {gaps:?}"
    );
    let failures = h
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, e)| matches!(e, ClientEvent::Disconnected { .. }))
        .count();
    assert!(failures >= 6, "every failed attempt is reported");
}

#[tokio::test(start_paused = true)]
async fn each_publish_completes_at_its_own_puback_whatever_the_order() {
    let mut h = harness(|_| {});
    let mut peer = connect(&mut h, false).await;
    let mut waiting: Vec<_> = (0..32)
        .map(|i| (i, publish(&h, Box::leak(format!("m{i}").into_boxed_str()))))
        .collect();
    let mut pkid_of = std::collections::HashMap::new();
    for _ in 0..32 {
        let Some(Packet::Publish(p)) = peer.read().await else {
            panic!("expected PUBLISH")
        };
        let n: usize = std::str::from_utf8(&p.payload).unwrap()[1..]
            .parse()
            .unwrap();
        pkid_of.insert(n, p.pkid);
    }
    let order = [7usize, 3, 31, 0, 15, 8, 22, 1];
    for &n in &order {
        peer.send(Packet::PubAck(PubAck::new(pkid_of[&n]))).await;
        let pos = waiting.iter().position(|(i, _)| *i == n).unwrap();
        let (_, rx) = waiting.remove(pos);
        rx.await.unwrap().unwrap();
        tokio::task::yield_now().await;
        for (_, rx) in &mut waiting {
            assert!(rx.try_recv().is_err(), "another publish completed early");
        }
    }
    assert_eq!(h.client.stats().inflight, 24);
}

#[tokio::test(start_paused = true)]
async fn a_resumed_session_resends_unacked_publishes_first_in_order_with_dup() {
    let mut h = harness(|c| {
        c.clean_session = false;
    });
    let mut peer = connect(&mut h, false).await;
    let replies: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|p| publish(&h, p))
        .collect();
    let mut first = Vec::new();
    for _ in 0..3 {
        let Some(Packet::Publish(p)) = peer.read().await else {
            panic!()
        };
        assert!(!p.dup);
        first.push((p.pkid, p.payload.clone()));
    }
    drop(peer); // connection lost before any PUBACK
    let mut peer = Peer::accept(&mut h.accepted, true).await;
    let mut again = Vec::new();
    for _ in 0..3 {
        let Some(Packet::Publish(p)) = peer.read().await else {
            panic!()
        };
        assert!(p.dup, "a resend carries DUP");
        again.push((p.pkid, p.payload.clone()));
    }
    assert_eq!(first, again, "same packet ids and payloads, same order");
    for (pkid, _) in &again {
        peer.send(Packet::PubAck(PubAck::new(*pkid))).await;
    }
    for r in replies {
        r.await.unwrap().unwrap();
    }
    assert_eq!(h.client.stats().reconnects, 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_session_resubscribes_before_resending_in_flight_publishes() {
    let mut h = harness(|_| {});
    let mut peer = connect(&mut h, false).await;
    let queue = SubscriptionQueue::new(
        h.client.new_id(),
        10,
        Arc::new(NoWake),
        h.client.space_notifier(),
    );
    let (r, sub_done) = reply();
    h.client
        .subscribe(vec!["a/#".into()], QoS::AtLeastOnce, queue, r)
        .unwrap();
    let Some(Packet::Subscribe(s)) = peer.read().await else {
        panic!()
    };
    peer.send(Packet::SubAck(SubAck::new(
        s.pkid,
        vec![SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)],
    )))
    .await;
    assert_eq!(sub_done.await.unwrap().unwrap(), vec![1]);
    let pending = [publish(&h, "x"), publish(&h, "y")];
    for _ in 0..2 {
        assert!(matches!(peer.read().await, Some(Packet::Publish(_))));
    }
    drop(peer);
    let mut peer = Peer::accept(&mut h.accepted, false).await;
    let Some(Packet::Subscribe(s)) = peer.read().await else {
        panic!("SUBSCRIBE must come first")
    };
    assert_eq!(s.filters[0].path, "a/#");
    let mut payloads = Vec::new();
    for _ in 0..2 {
        let Some(Packet::Publish(p)) = peer.read().await else {
            panic!()
        };
        assert!(!p.dup, "a new session gets new packets");
        payloads.push(p.payload.clone());
        peer.send(Packet::PubAck(PubAck::new(p.pkid))).await;
    }
    assert_eq!(
        payloads,
        vec![Bytes::from_static(b"x"), Bytes::from_static(b"y")]
    );
    for r in pending {
        r.await.unwrap().unwrap();
    }
    let events = h.events.0.lock().unwrap();
    assert!(events.iter().any(|(_, e)| matches!(
        e,
        ClientEvent::Connected {
            session_present: false,
            reconnect: true
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn operations_queued_offline_are_sent_in_order_or_time_out() {
    let mut h = harness(|c| {
        c.operation_timeout = Duration::from_secs(5);
    });
    let peer = connect(&mut h, false).await;
    *h.refuse.lock().unwrap() = true;
    drop(peer);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let early = publish(&h, "early");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let err = early.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("not acknowledged within"), "{err}");
    let late = [publish(&h, "1"), publish(&h, "2")];
    *h.refuse.lock().unwrap() = false;
    let mut peer = Peer::accept(&mut h.accepted, false).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let Some(Packet::Publish(p)) = peer.read().await else {
            panic!()
        };
        got.push(p.payload.clone());
        peer.send(Packet::PubAck(PubAck::new(p.pkid))).await;
    }
    assert_eq!(
        got,
        vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")],
        "the timed-out one is not sent late"
    );
    for r in late {
        r.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_ping_queued_behind_slow_writes_is_timed_from_when_it_is_written() {
    let mut h = harness_with_buffer(4096, |c| {
        c.keep_alive = Duration::from_secs(2);
        c.reconnect = None;
    });
    let mut peer = connect(&mut h, false).await;
    // 200 KiB of QoS 0 publishes through a link that takes 4 KiB per 100 ms: 5 s of writing,
    // so the PINGREQ due after 2 s waits behind ~120 KiB for ~3 s.
    queue_qos0_4k(&h, 50);
    let (mut publishes, mut pinged) = (0, false);
    let mut chunk = vec![0u8; 4096];
    while publishes < 50 || !pinged {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = peer.io.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client dropped a slow but healthy link");
        peer.buf.extend_from_slice(&chunk[..n]);
        while let Ok(p) = Packet::read(&mut peer.buf, 1 << 20) {
            match p {
                Packet::Publish(_) => publishes += 1,
                Packet::PingReq => {
                    pinged = true;
                    peer.send(Packet::PingResp).await;
                }
                _ => {}
            }
        }
    }
    let events = h.events.0.lock().unwrap();
    assert!(
        !events
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::Disconnected { .. })),
        "no disconnect: {events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn inbound_bytes_count_as_liveness_while_a_pingresp_is_awaited() {
    let mut h = harness(|c| {
        c.keep_alive = Duration::from_secs(2);
        c.reconnect = None;
    });
    let mut peer = connect(&mut h, false).await;
    assert!(matches!(peer.read().await, Some(Packet::PingReq)));
    // The PINGRESP is slow (queued behind a stream of messages): keep sending PUBLISHes
    // every 300 ms for 3 s, then answer the ping.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        peer.send(Packet::Publish(rumqttc::Publish::new(
            "in",
            rumqttc::QoS::AtMostOnce,
            vec![1u8],
        )))
        .await;
    }
    peer.send(Packet::PingResp).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.client.state(), _native::core::State::Connected);
    let events = h.events.0.lock().unwrap();
    assert!(!events
        .iter()
        .any(|(_, e)| matches!(e, ClientEvent::Disconnected { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_is_no_longer_connected_when_its_disconnected_event_is_reported() {
    for reconnect in [false, true] {
        let mut h = harness(|c| {
            if !reconnect {
                c.reconnect = None;
            }
        });
        let peer = connect(&mut h, false).await;
        drop(peer);
        while !h
            .events
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(_, e)| matches!(e, ClientEvent::Disconnected { .. }))
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let events = h.events.0.lock().unwrap();
        let states = h.events.2.lock().unwrap();
        let at = events
            .iter()
            .position(|(_, e)| matches!(e, ClientEvent::Disconnected { .. }))
            .unwrap();
        let expected = if reconnect {
            State::Reconnecting
        } else {
            State::Closing
        };
        assert_eq!(
            states[at],
            Some(expected),
            "reconnect={reconnect}: an on_disconnect handler must not see the client connected"
        );
    }
}

/// A QoS 0 publish submitted before `disconnect()` goes out before DISCONNECT even when the
/// driver takes both commands in one wake-up (here: both wait while the write buffer is above
/// its high-water mark). It used to be accepted into the outbox and then dropped unsent by the
/// graceful disconnect: `awsiot-rs pub --qos 0` reported "sent" for a message the broker never
/// received (the CLI test's `sub --count 4` then waited forever for it).
#[tokio::test(start_paused = true)]
async fn a_publish_taken_in_the_same_burst_as_disconnect_is_written_before_it() {
    let mut h = harness_with_buffer(4096, |c| c.reconnect = None);
    let mut peer = connect(&mut h, false).await;
    // 1.2 MiB of QoS 0 publishes: more than the write buffer's high-water mark, so the driver
    // stops taking commands until the broker reads.
    let filler = 300;
    queue_qos0_4k(&h, filler);
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Both wait in the channel now, so the driver will take them in one burst.
    h.client
        .publish(
            "last".into(),
            Bytes::from_static(b"last"),
            QoS::AtMostOnce,
            false,
            None,
        )
        .unwrap();
    let (r, disconnected) = reply();
    h.client.disconnect(r);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut topics = Vec::new();
    let mut saw_disconnect = false;
    while let Some(p) = peer.read().await {
        match p {
            Packet::Publish(p) => {
                assert!(!saw_disconnect, "a PUBLISH after DISCONNECT");
                topics.push(p.topic);
            }
            Packet::Disconnect => saw_disconnect = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    disconnected.await.unwrap().unwrap();
    assert!(saw_disconnect, "the graceful DISCONNECT was written");
    assert_eq!(topics.len(), filler + 1, "every publish was written");
    assert_eq!(topics.last().map(String::as_str), Some("last"));
}
