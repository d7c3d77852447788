//! Inbound routing: which subscription queues receive each PUBLISH, and which filters the broker
//! must hold (a filter shared by several subscriptions is unsubscribed only when the last one
//! goes).

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::config::QoS;
use crate::core::message::Message;
use crate::core::queue::{PushOutcome, SubscriptionQueue};
use crate::core::topic;

/// One subscription: its filters and its queue. No filters = every message (`messages()`).
#[derive(Debug)]
struct Route {
    id: u64,
    filters: Vec<String>,
    queue: Arc<SubscriptionQueue>,
}

/// The result of routing one message.
#[derive(Debug, Default)]
pub struct Routed {
    /// How many queues accepted it.
    pub delivered: usize,
    /// How many queues dropped it (QoS 0 into a full queue).
    pub dropped: usize,
    /// Queues that took it over capacity (the acknowledgement must wait for them).
    pub over: Vec<Arc<SubscriptionQueue>>,
}

/// The subscription registry.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    /// filter → (highest QoS requested, number of routes using it)
    broker_filters: HashMap<String, (QoS, usize)>,
}

impl Router {
    /// Registers a subscription. Returns the filters that must be sent to the broker.
    pub fn add(
        &mut self,
        id: u64,
        filters: &[(String, QoS)],
        queue: Arc<SubscriptionQueue>,
    ) -> Vec<(String, QoS)> {
        for (f, qos) in filters {
            let entry = self.broker_filters.entry(f.clone()).or_insert((*qos, 0));
            entry.0 = entry.0.max(*qos);
            entry.1 += 1;
        }
        self.routes.push(Route {
            id,
            filters: filters.iter().map(|(f, _)| f.clone()).collect(),
            queue,
        });
        // SUBSCRIBE is idempotent at the broker: always (re)send, so a new QoS takes effect.
        filters.to_vec()
    }

    /// Registers a catch-all queue (every message, whatever the filter).
    pub fn add_catch_all(&mut self, id: u64, queue: Arc<SubscriptionQueue>) {
        self.routes.push(Route {
            id,
            filters: Vec::new(),
            queue,
        });
    }

    fn release(&mut self, filters: &[String]) -> Vec<String> {
        let mut unused = Vec::new();
        for f in filters {
            if let Some(entry) = self.broker_filters.get_mut(f) {
                entry.1 = entry.1.saturating_sub(1);
                if entry.1 == 0 {
                    self.broker_filters.remove(f);
                    unused.push(f.clone());
                }
            }
        }
        unused
    }

    /// Removes a subscription (its queue is closed). Returns the filters no longer used by any
    /// subscription: those must be unsubscribed at the broker.
    pub fn remove(&mut self, id: u64) -> Vec<String> {
        let Some(pos) = self.routes.iter().position(|r| r.id == id) else {
            return Vec::new();
        };
        let route = self.routes.swap_remove(pos);
        route.queue.close();
        if route.filters.is_empty() {
            return Vec::new();
        }
        self.release(&route.filters)
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
            route.filters.retain(|f| !filters.contains(f));
            if before != route.filters.len() && route.filters.is_empty() {
                closed.push(route.id);
            }
        }
        for id in closed {
            if let Some(pos) = self.routes.iter().position(|r| r.id == id) {
                self.routes.swap_remove(pos).queue.close();
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
                    .any(|f| topic::subscription_matches(f, &message.topic));
            if !hit {
                continue;
            }
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

    /// Closes every queue and forgets every subscription.
    pub fn close_all(&mut self) {
        for route in self.routes.drain(..) {
            route.queue.close();
        }
        self.broker_filters.clear();
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
    use crate::core::queue::Wake;
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
        let mut r = Router::default();
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
        assert!(r.remove(1).is_empty());
        assert_eq!(r.remove(2), vec!["a".to_string()]);
        assert!(r.broker_filters().is_empty());
        assert!(r.remove(99).is_empty());
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
