//! Inbound routing: which subscription queues receive each PUBLISH, and which filters the broker
//! must hold, at which QoS. A filter shared by several subscriptions is held at the highest QoS
//! any of them asked for, lowered only when that subscription goes, and unsubscribed only when
//! the last one goes.
//!
//! The registry outlives connections: it belongs to the client, not to one driver, so
//! subscriptions and `messages()` streams survive `disconnect()` + `connect()` (re-subscribed),
//! and a catch-all stream opened before `connect()` takes a persistent session's stored
//! messages.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::config::QoS;
use crate::core::error::Error;
use crate::core::message::Message;
use crate::core::protocol::queue::{PushOutcome, SubscriptionQueue};
use crate::core::protocol::topic::{self, Limits};

/// One subscription: its filters (with the QoS it asked for) and its queue. No filters = every
/// message (`messages()`).
#[derive(Debug)]
struct Route {
    id: u64,
    filters: Vec<(String, QoS)>,
    queue: Arc<SubscriptionQueue>,
}

/// The result of routing one message.
#[derive(Debug, Default)]
pub struct Routed {
    /// How many subscriptions matched (whatever happened next).
    pub matched: usize,
    /// How many queues accepted it.
    pub delivered: usize,
    /// How many queues dropped it (QoS 0 into a full queue).
    pub dropped: usize,
    /// Queues that took it over capacity (the acknowledgement must wait for them).
    pub over: Vec<Arc<SubscriptionQueue>>,
}

/// What the broker must be told after subscriptions went away.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Filters no subscription uses any more: UNSUBSCRIBE them.
    pub unsubscribe: Vec<String>,
    /// Filters still used, whose highest requested QoS went down: SUBSCRIBE again at this QoS.
    pub downgrade: Vec<(String, QoS)>,
}

impl Released {
    /// Whether nothing has to be sent.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.unsubscribe.is_empty() && self.downgrade.is_empty()
    }
}

/// The subscription registry.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    /// filter → (QoS held at the broker, number of routes using it)
    broker_filters: HashMap<String, (QoS, usize)>,
    /// How topics match (AWS's `Sensor/#` rule with [`Limits::Aws`]).
    limits: Limits,
    /// Filters released while no connection was up: a persistent session still holds them.
    released_offline: Vec<String>,
}

impl Router {
    /// An empty registry matching topics under `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// How many distinct filters the broker would hold after adding `filters`.
    #[must_use]
    pub fn filters_after_adding(&self, filters: &[(String, QoS)]) -> usize {
        let mut new: Vec<&str> = filters
            .iter()
            .map(|(f, _)| f.as_str())
            .filter(|f| !self.broker_filters.contains_key(*f))
            .collect();
        new.sort_unstable();
        new.dedup();
        self.broker_filters.len() + new.len()
    }

    /// Registers a subscription. Returns the SUBSCRIBE to send: each filter at the highest QoS
    /// any subscription asked for (a lower second request never downgrades the first).
    pub fn add(
        &mut self,
        id: u64,
        filters: &[(String, QoS)],
        queue: Arc<SubscriptionQueue>,
    ) -> Vec<(String, QoS)> {
        let mut to_send = Vec::with_capacity(filters.len());
        for (f, qos) in filters {
            let entry = self.broker_filters.entry(f.clone()).or_insert((*qos, 0));
            entry.0 = entry.0.max(*qos);
            entry.1 += 1;
            to_send.push((f.clone(), entry.0));
            self.released_offline.retain(|r| r != f);
        }
        self.routes.push(Route {
            id,
            filters: filters.to_vec(),
            queue,
        });
        // SUBSCRIBE is idempotent at the broker: always send, so the caller gets its SUBACK.
        to_send
    }

    /// Registers a catch-all queue (every message, whatever the filter).
    pub fn add_catch_all(&mut self, id: u64, queue: Arc<SubscriptionQueue>) {
        self.routes.push(Route {
            id,
            filters: Vec::new(),
            queue,
        });
    }

    /// The highest QoS the remaining routes ask for `filter`.
    fn wanted_qos(&self, filter: &str) -> Option<QoS> {
        self.routes
            .iter()
            .flat_map(|r| r.filters.iter())
            .filter(|(f, _)| f == filter)
            .map(|(_, q)| *q)
            .max()
    }

    fn release(&mut self, filters: &[(String, QoS)]) -> Released {
        let mut out = Released::default();
        for (f, _) in filters {
            let Some(entry) = self.broker_filters.get_mut(f) else {
                continue;
            };
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                self.broker_filters.remove(f);
                if !out.unsubscribe.contains(f) {
                    out.unsubscribe.push(f.clone());
                }
                out.downgrade.retain(|(d, _)| d != f);
                continue;
            }
            let held = entry.0;
            if let Some(wanted) = self.wanted_qos(f) {
                if wanted < held {
                    if let Some(entry) = self.broker_filters.get_mut(f) {
                        entry.0 = wanted;
                    }
                    out.downgrade.retain(|(d, _)| d != f);
                    out.downgrade.push((f.clone(), wanted));
                }
            }
        }
        out
    }

    fn take_route(&mut self, id: u64) -> Option<Route> {
        let pos = self.routes.iter().position(|r| r.id == id)?;
        Some(self.routes.swap_remove(pos))
    }

    /// Removes a subscription (its queue is closed). Returns what the broker must be told.
    pub fn remove(&mut self, id: u64) -> Released {
        let Some(route) = self.take_route(id) else {
            return Released::default();
        };
        route.queue.close();
        self.release(&route.filters)
    }

    /// Removes a subscription while no connection is up: nothing can be sent, so a persistent
    /// session still holds the released filters; they are unsubscribed after the next CONNACK
    /// if the broker kept the session.
    pub fn remove_offline(&mut self, id: u64) {
        let released = self.remove(id);
        for f in released.unsubscribe {
            if !self.released_offline.contains(&f) {
                self.released_offline.push(f);
            }
        }
    }

    /// Filters released while disconnected (see [`Router::remove_offline`]), forgotten here.
    pub fn take_released_offline(&mut self) -> Vec<String> {
        std::mem::take(&mut self.released_offline)
    }

    /// Closes, with `error`, every subscription holding one of `filters` (the broker refused
    /// or rejected them). Returns what the broker must be told about their other filters.
    pub fn fail_filters(&mut self, filters: &[String], error: &Error) -> Released {
        let ids: Vec<u64> = self
            .routes
            .iter()
            .filter(|r| r.filters.iter().any(|(f, _)| filters.contains(f)))
            .map(|r| r.id)
            .collect();
        let mut out = Released::default();
        for id in ids {
            if let Some(route) = self.take_route(id) {
                route.queue.close_with(error.clone());
                let r = self.release(&route.filters);
                out.unsubscribe.extend(r.unsubscribe);
                out.downgrade.extend(r.downgrade);
            }
        }
        // The broker does not hold the refused filters: nothing to unsubscribe for them.
        out.unsubscribe.retain(|f| !filters.contains(f));
        out
    }

    /// Removes filters from every subscription; subscriptions left without filters are closed.
    /// Returns the filters that were known.
    pub fn remove_filters(&mut self, filters: &[String]) -> Vec<String> {
        let mut closed = Vec::new();
        for route in &mut self.routes {
            if route.filters.is_empty() {
                continue;
            }
            let before = route.filters.len();
            route.filters.retain(|(f, _)| !filters.contains(f));
            if before != route.filters.len() && route.filters.is_empty() {
                closed.push(route.id);
            }
        }
        for id in closed {
            if let Some(route) = self.take_route(id) {
                route.queue.close();
            }
        }
        let mut known = Vec::new();
        for f in filters {
            if self.broker_filters.remove(f).is_some() {
                known.push(f.clone());
            }
        }
        known
    }

    /// Delivers a message to every matching queue (once per subscription).
    pub fn route(&self, message: &Message) -> Routed {
        let mut routed = Routed::default();
        for route in &self.routes {
            let hit = route.filters.is_empty()
                || route
                    .filters
                    .iter()
                    .any(|(f, _)| topic::delivered(f, &message.topic, self.limits));
            if !hit {
                continue;
            }
            routed.matched += 1;
            match route.queue.push(message.clone()) {
                PushOutcome::Queued => routed.delivered += 1,
                PushOutcome::Over => {
                    routed.delivered += 1;
                    routed.over.push(Arc::clone(&route.queue));
                }
                PushOutcome::Dropped => routed.dropped += 1,
            }
        }
        routed
    }

    /// Every filter the broker must hold, for re-subscribing after a lost session.
    #[must_use]
    pub fn broker_filters(&self) -> Vec<(String, QoS)> {
        let mut v: Vec<(String, QoS)> = self
            .broker_filters
            .iter()
            .map(|(f, (q, _))| (f.clone(), *q))
            .collect();
        v.sort();
        v
    }

    /// Pauses every queue (the application disconnected): iterations end once drained, the
    /// subscriptions stay.
    pub fn pause_all(&self) {
        for route in &self.routes {
            route.queue.pause();
        }
    }

    /// Resumes every queue (a new connection starts).
    pub fn resume_all(&self) {
        for route in &self.routes {
            route.queue.resume();
        }
    }

    /// Closes every queue and forgets every subscription.
    pub fn close_all(&mut self) {
        for route in self.routes.drain(..) {
            route.queue.close();
        }
        self.broker_filters.clear();
        self.released_offline.clear();
    }

    /// Number of subscriptions (including catch-alls).
    #[must_use]
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there is no subscription.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::queue::Wake;
    use tokio::sync::Notify;

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self, _: u64) {}
    }

    fn queue(id: u64, cap: usize) -> Arc<SubscriptionQueue> {
        SubscriptionQueue::new(id, cap, Arc::new(NoWake), Arc::new(Notify::new()))
    }

    fn msg(topic: &str, qos: u8) -> Message {
        Message {
            topic: Arc::from(topic),
            payload: bytes::Bytes::from_static(b"x"),
            qos,
            retain: false,
            dup: false,
        }
    }

    #[test]
    fn a_message_reaches_every_matching_subscription_once() {
        let mut r = Router::new(Limits::Mqtt);
        let a = queue(1, 10);
        let b = queue(2, 10);
        let all = queue(3, 10);
        r.add(
            1,
            &[
                ("s/+/r1".into(), QoS::AtLeastOnce),
                ("s/#".into(), QoS::AtMostOnce),
            ],
            a.clone(),
        );
        r.add(2, &[("other".into(), QoS::AtMostOnce)], b.clone());
        r.add_catch_all(3, all.clone());
        let routed = r.route(&msg("s/t/r1", 0));
        assert_eq!(routed.delivered, 2);
        assert_eq!(a.len(), 1, "two matching filters, one delivery");
        assert_eq!(b.len(), 0);
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn shared_filters_are_released_by_the_last_subscription() {
        let mut r = Router::default();
        r.add(1, &[("a".into(), QoS::AtMostOnce)], queue(1, 1));
        r.add(2, &[("a".into(), QoS::AtLeastOnce)], queue(2, 1));
        assert_eq!(
            r.broker_filters(),
            vec![("a".to_string(), QoS::AtLeastOnce)]
        );
        assert_eq!(
            r.remove(1),
            Released::default(),
            "the QoS 1 subscription still holds the filter"
        );
        assert_eq!(r.remove(2).unsubscribe, vec!["a".to_string()]);
        assert!(r.broker_filters().is_empty());
        assert!(r.remove(99).is_empty());
    }

    #[test]
    fn a_lower_qos_second_subscription_never_downgrades_the_first() {
        let mut r = Router::default();
        let sent = r.add(1, &[("t/x".into(), QoS::AtLeastOnce)], queue(1, 1));
        assert_eq!(sent, vec![("t/x".to_string(), QoS::AtLeastOnce)]);
        let sent = r.add(2, &[("t/x".into(), QoS::AtMostOnce)], queue(2, 1));
        assert_eq!(
            sent,
            vec![("t/x".to_string(), QoS::AtLeastOnce)],
            "the second SUBSCRIBE goes out at the held QoS 1"
        );
        // The QoS 1 subscription goes: the broker subscription is lowered to QoS 0.
        let released = r.remove(1);
        assert_eq!(
            released.downgrade,
            vec![("t/x".to_string(), QoS::AtMostOnce)]
        );
        assert!(released.unsubscribe.is_empty());
        assert_eq!(
            r.broker_filters(),
            vec![("t/x".to_string(), QoS::AtMostOnce)]
        );
        assert_eq!(r.remove(2).unsubscribe, vec!["t/x".to_string()]);
    }

    #[test]
    fn failing_filters_closes_their_subscriptions_with_the_error() {
        let mut r = Router::default();
        let a = queue(1, 1);
        let b = queue(2, 1);
        r.add(
            1,
            &[
                ("a".into(), QoS::AtLeastOnce),
                ("b".into(), QoS::AtLeastOnce),
            ],
            a.clone(),
        );
        r.add(2, &[("c".into(), QoS::AtLeastOnce)], b.clone());
        let err = Error::SubscribeRefused {
            filters: vec!["a".into()],
        };
        let released = r.fail_filters(&["a".to_string()], &err);
        assert!(a.is_closed() && a.error() == Some(err));
        assert!(!b.is_closed());
        assert_eq!(
            released.unsubscribe,
            vec!["b".to_string()],
            "the granted sibling goes"
        );
    }

    #[test]
    fn paused_queues_resume_and_survive() {
        let mut r = Router::default();
        let q = queue(1, 4);
        r.add(1, &[("t".into(), QoS::AtLeastOnce)], q.clone());
        r.pause_all();
        assert!(q.pop_batch(1).paused);
        r.resume_all();
        assert_eq!(r.route(&msg("t", 1)).delivered, 1);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn aws_matching_keeps_the_parent_level_out_of_a_trailing_hash() {
        let mut r = Router::new(Limits::Aws);
        let q = queue(1, 4);
        r.add(1, &[("Sensor/#".into(), QoS::AtLeastOnce)], q.clone());
        assert_eq!(r.route(&msg("Sensor", 1)).matched, 0);
        assert_eq!(r.route(&msg("Sensor/a", 1)).matched, 1);
        let mut m = Router::new(Limits::Mqtt);
        m.add(1, &[("Sensor/#".into(), QoS::AtLeastOnce)], queue(2, 4));
        assert_eq!(m.route(&msg("Sensor", 1)).matched, 1);
    }

    #[test]
    fn filters_released_offline_are_remembered_for_the_next_session() {
        let mut r = Router::default();
        r.add(1, &[("t".into(), QoS::AtLeastOnce)], queue(1, 1));
        r.remove_offline(1);
        assert_eq!(r.take_released_offline(), vec!["t".to_string()]);
        assert!(r.take_released_offline().is_empty());
    }

    #[test]
    fn the_filter_count_after_adding_counts_new_distinct_filters() {
        let mut r = Router::default();
        r.add(1, &[("a".into(), QoS::AtLeastOnce)], queue(1, 1));
        assert_eq!(
            r.filters_after_adding(&[
                ("a".into(), QoS::AtMostOnce),
                ("b".into(), QoS::AtMostOnce),
                ("b".into(), QoS::AtLeastOnce)
            ]),
            2
        );
    }

    #[test]
    fn removing_filters_closes_subscriptions_left_empty() {
        let mut r = Router::default();
        let q = queue(1, 1);
        r.add(
            1,
            &[("a".into(), QoS::AtMostOnce), ("b".into(), QoS::AtMostOnce)],
            q.clone(),
        );
        assert_eq!(r.remove_filters(&["a".into()]), vec!["a".to_string()]);
        assert!(!q.is_closed());
        r.remove_filters(&["b".into()]);
        assert!(q.is_closed());
        assert!(r.is_empty());
    }

    #[test]
    fn full_queues_report_over_capacity_for_qos1_and_drop_qos0() {
        let mut r = Router::default();
        let q = queue(1, 1);
        r.add(1, &[("t".into(), QoS::AtLeastOnce)], q.clone());
        assert_eq!(r.route(&msg("t", 1)).over.len(), 0);
        assert_eq!(r.route(&msg("t", 0)).dropped, 1);
        assert_eq!(r.route(&msg("t", 1)).over.len(), 1);
    }
}
