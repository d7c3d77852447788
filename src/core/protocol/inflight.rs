//! Packet-id ownership: the driver allocates every packet id itself, so each QoS 1 PUBLISH,
//! SUBSCRIBE and UNSUBSCRIBE is bound to its own acknowledgement, whatever order the broker
//! acknowledges in. A packet id is free again only when its acknowledgement arrives (or the
//! entry is taken out), so an id is never reused while in flight.

/// A table of in-flight entries keyed by packet id (1..=capacity), remembering submission order.
#[derive(Debug)]
pub struct Inflight<T> {
    /// Grows on demand up to `capacity` (idle connections stay small).
    slots: Vec<Option<(u64, T)>>,
    capacity: usize,
    next: usize,
    len: usize,
    seq: u64,
}

impl<T> Inflight<T> {
    /// A table for packet ids `1..=capacity` (capacity ≥ 1).
    #[must_use]
    pub fn new(capacity: u16) -> Self {
        Self {
            slots: Vec::new(),
            capacity: usize::from(capacity.max(1)),
            next: 0,
            len: 0,
            seq: 0,
        }
    }

    /// Number of entries in flight.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is in flight.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every packet id is taken.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    /// Stores `value` under a free packet id and returns it; `None` when full.
    pub fn insert(&mut self, value: T) -> Option<u16> {
        let pkid = self.free_pkid()?;
        self.insert_at(pkid, value).then_some(pkid)
    }

    /// The packet id the next [`Inflight::insert`] would use; `None` when full.
    #[must_use]
    pub fn free_pkid(&self) -> Option<u16> {
        if self.is_full() {
            return None;
        }
        let n = self.capacity;
        // Slots not allocated yet count as free.
        (0..n)
            .map(|step| (self.next + step) % n)
            .find(|&i| self.slots.get(i).is_none_or(Option::is_none))
            .and_then(|i| u16::try_from(i + 1).ok())
    }

    /// Stores `value` under a specific free `pkid` (from [`Inflight::free_pkid`], or one just
    /// removed). Returns `false` (and stores nothing) when the id is out of range or taken.
    pub fn insert_at(&mut self, pkid: u16, value: T) -> bool {
        let Some(i) = usize::from(pkid).checked_sub(1) else {
            return false;
        };
        let n = self.capacity;
        if i >= n {
            return false;
        }
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        let Some(slot) = self.slots.get_mut(i) else {
            return false;
        };
        if slot.is_some() {
            return false;
        }
        self.seq += 1;
        *slot = Some((self.seq, value));
        self.len += 1;
        self.next = (i + 1) % n;
        true
    }

    /// The entry for `pkid`, if any.
    #[must_use]
    pub fn get(&self, pkid: u16) -> Option<&T> {
        let i = usize::from(pkid).checked_sub(1)?;
        self.slots.get(i)?.as_ref().map(|(_, v)| v)
    }

    /// Takes the entry for `pkid` out (its id becomes free); `None` for an unknown id.
    pub fn remove(&mut self, pkid: u16) -> Option<T> {
        let i = usize::from(pkid).checked_sub(1)?;
        let taken = self.slots.get_mut(i)?.take().map(|(_, v)| v);
        if taken.is_some() {
            self.len -= 1;
        }
        taken
    }

    /// Packet ids in submission order (oldest first): the order to resend in.
    #[must_use]
    pub fn in_order(&self) -> Vec<u16> {
        let mut v: Vec<(u64, u16)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .and_then(|(seq, _)| u16::try_from(i + 1).ok().map(|p| (*seq, p)))
            })
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, p)| p).collect()
    }

    /// Takes every entry out, in submission order.
    pub fn drain_in_order(&mut self) -> Vec<(u16, T)> {
        let order = self.in_order();
        order
            .into_iter()
            .filter_map(|p| self.remove(p).map(|v| (p, v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    #[test]
    fn shuffled_acks_resolve_their_own_entries() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut table = Inflight::new(64);
        let mut live: Vec<(u16, u32)> = Vec::new();
        let mut next_payload = 0u32;
        let mut resolved = Vec::new();
        // 10 000 operations through a 64-slot window with acks in random order.
        while next_payload < 10_000 || !live.is_empty() {
            while next_payload < 10_000 && !table.is_full() {
                let pkid = table.insert(next_payload).unwrap();
                assert!(
                    live.iter().all(|(p, _)| *p != pkid),
                    "pkid {pkid} reused while in flight"
                );
                live.push((pkid, next_payload));
                next_payload += 1;
            }
            live.shuffle(&mut rng);
            let k = (live.len() / 3).max(1);
            for (pkid, payload) in live.drain(..k) {
                assert_eq!(
                    table.remove(pkid),
                    Some(payload),
                    "ack {pkid} resolved the wrong entry"
                );
                resolved.push(payload);
            }
        }
        resolved.sort_unstable();
        assert_eq!(resolved, (0..10_000).collect::<Vec<_>>());
        assert!(table.is_empty());
    }

    #[test]
    fn unknown_and_duplicate_acks_resolve_nothing() {
        let mut table = Inflight::new(4);
        let p = table.insert("a").unwrap();
        assert_eq!(table.remove(0), None);
        assert_eq!(table.remove(5), None);
        assert_eq!(table.remove(p + 1), None);
        assert_eq!(table.remove(p), Some("a"));
        assert_eq!(table.remove(p), None, "duplicate ack");
    }

    #[test]
    fn full_table_refuses_until_an_ack_frees_an_id() {
        let mut table = Inflight::new(2);
        let a = table.insert(1).unwrap();
        let _b = table.insert(2).unwrap();
        assert!(table.insert(3).is_none());
        table.remove(a);
        assert_eq!(table.insert(3), Some(a));
    }

    #[test]
    fn resend_order_is_submission_order_not_pkid_order() {
        let mut table = Inflight::new(3);
        let a = table.insert("a").unwrap();
        let b = table.insert("b").unwrap();
        let c = table.insert("c").unwrap();
        table.remove(a);
        let d = table.insert("d").unwrap();
        assert_eq!(d, a, "id reused after its ack");
        assert_eq!(table.in_order(), vec![b, c, d]);
        let drained: Vec<&str> = table.drain_in_order().into_iter().map(|(_, v)| v).collect();
        assert_eq!(drained, vec!["b", "c", "d"]);
    }
}
