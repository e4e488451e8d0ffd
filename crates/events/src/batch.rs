//! One flush window's events, de-duplicated by (user, `dedup_key`).

use gathering_domain::events::Event;
use std::collections::HashMap;
use uuid::Uuid;

/// Events gathered during one window. A keyed event replaces the earlier event with the same
/// user and key: the earlier one is removed and the new one takes its own (later) place, so the
/// flushed sequence is always a subsequence of the published one — order is kept for every
/// event, keyed or not. Unkeyed events are never merged.
pub(crate) struct Batch {
    slots: Vec<Option<Event>>,
    index: HashMap<(Uuid, String), usize>,
    capacity: usize,
}

impl Batch {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            slots: Vec::with_capacity(capacity.min(1024)),
            index: HashMap::new(),
            capacity,
        }
    }

    /// Adds an event; returns true when it replaced an earlier one.
    pub(crate) fn push(&mut self, event: Event) -> bool {
        let mut replaced = false;
        if let Some(key) = &event.dedup_key
            && let Some(old) = self
                .index
                .insert((event.user_id, key.clone()), self.slots.len())
            && let Some(slot) = self.slots.get_mut(old)
        {
            replaced = slot.take().is_some();
        }
        self.slots.push(Some(event));
        replaced
    }

    /// Memory is bounded by slots, replaced or not.
    pub(crate) fn is_full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The surviving events in order; the batch is empty afterwards.
    pub(crate) fn take(&mut self) -> Vec<Event> {
        self.index.clear();
        self.slots.drain(..).flatten().collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(user: Uuid, n: u32, key: Option<&str>) -> Event {
        let e = Event::new(user, "t", json!({ "n": n }));
        match key {
            Some(k) => e.with_dedup_key(k),
            None => e,
        }
    }

    fn ns(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .map(|e| e.data["n"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn same_key_keeps_only_the_last_at_its_own_position() {
        let u = Uuid::now_v7();
        let mut b = Batch::new(100);
        assert!(!b.push(ev(u, 1, Some("a"))));
        b.push(ev(u, 2, None));
        assert!(b.push(ev(u, 3, Some("a"))));
        b.push(ev(u, 4, Some("b")));
        assert!(b.push(ev(u, 5, Some("a"))));
        assert_eq!(ns(&b.take()), vec![2, 4, 5]);
        assert!(b.is_empty());
    }

    #[test]
    fn unkeyed_events_are_never_merged() {
        let u = Uuid::now_v7();
        let mut b = Batch::new(100);
        for n in 0..5 {
            assert!(!b.push(ev(u, n, None)));
        }
        assert_eq!(ns(&b.take()), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn keys_are_scoped_per_user() {
        let (u1, u2) = (Uuid::now_v7(), Uuid::now_v7());
        let mut b = Batch::new(100);
        b.push(ev(u1, 1, Some("k")));
        assert!(!b.push(ev(u2, 2, Some("k"))));
        assert_eq!(ns(&b.take()), vec![1, 2]);
    }

    #[test]
    fn a_new_window_starts_without_keys() {
        let u = Uuid::now_v7();
        let mut b = Batch::new(100);
        b.push(ev(u, 1, Some("k")));
        assert_eq!(ns(&b.take()), vec![1]);
        assert!(!b.push(ev(u, 2, Some("k"))));
        assert_eq!(ns(&b.take()), vec![2]);
    }

    #[test]
    fn fullness_counts_replaced_slots_too() {
        let u = Uuid::now_v7();
        let mut b = Batch::new(3);
        b.push(ev(u, 1, Some("k")));
        b.push(ev(u, 2, Some("k")));
        assert!(!b.is_full());
        b.push(ev(u, 3, Some("k")));
        assert!(b.is_full());
        assert_eq!(ns(&b.take()), vec![3]);
    }
}
