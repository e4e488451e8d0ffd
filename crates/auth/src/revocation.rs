//! The bounded in-memory set of revoked, unexpired jtis in front of the revocation table.
//!
//! Safety rule: the cache only ever holds "revoked" facts. A hit is final. A miss is trusted
//! only while the cache is *synced* (warmed from the table after the listener connected, kept
//! current by notifications since) and has *not overflowed* (no fact was ever dropped for lack
//! of room); otherwise the caller must ask the table. So the cache can never make a revoked
//! token valid, whatever its size.

use chrono::{DateTime, TimeDelta, Utc};
use gathering_domain::auth::RevokedToken;
use parking_lot::RwLock;
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

/// What the cache can say about a jti.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLookup {
    /// Revoked: reject.
    Revoked,
    /// Not revoked, and the cache is complete: no need to ask the table.
    NotRevoked,
    /// The cache cannot tell: ask the table.
    Unknown,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Uuid, DateTime<Utc>>,
    by_expiry: BTreeSet<(DateTime<Utc>, Uuid)>,
    synced: bool,
    overflowed: bool,
    /// Bumped on every Connected/Disconnected, so a warm-up that raced a disconnect is ignored.
    epoch: u64,
}

impl Inner {
    fn evict_expired(&mut self, now: DateTime<Utc>) -> usize {
        let mut n = 0;
        while let Some(&(exp, jti)) = self.by_expiry.first() {
            if exp > now {
                break;
            }
            self.by_expiry.pop_first();
            self.entries.remove(&jti);
            n += 1;
        }
        n
    }

    fn insert(
        &mut self,
        capacity: usize,
        jti: Uuid,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        if expires_at <= now {
            return; // the token is dead anyway
        }
        if let Some(old) = self.entries.get(&jti).copied() {
            if old >= expires_at {
                return;
            }
            self.by_expiry.remove(&(old, jti));
            self.entries.insert(jti, expires_at);
            self.by_expiry.insert((expires_at, jti));
            return;
        }
        if self.entries.len() >= capacity {
            self.evict_expired(now);
        }
        if self.entries.len() >= capacity {
            // No room: drop the fact closest to expiry and stop trusting misses until a
            // complete resync.
            self.overflowed = true;
            match self.by_expiry.pop_first() {
                Some((_, victim)) => {
                    self.entries.remove(&victim);
                }
                None => return, // capacity 0: hold nothing
            }
        }
        self.entries.insert(jti, expires_at);
        self.by_expiry.insert((expires_at, jti));
    }
}

#[derive(Debug)]
pub struct RevocationCache {
    capacity: usize,
    /// How long a revocation learnt from a notification (payload: the jti only) is kept:
    /// the longest lifetime a token may have (access ttl) plus clock skew.
    notification_ttl: TimeDelta,
    inner: RwLock<Inner>,
}

impl RevocationCache {
    pub fn new(capacity: usize, notification_ttl: TimeDelta) -> Self {
        Self {
            capacity,
            notification_ttl,
            inner: RwLock::new(Inner::default()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn lookup(&self, jti: Uuid) -> CacheLookup {
        let inner = self.inner.read();
        if inner.entries.contains_key(&jti) {
            CacheLookup::Revoked
        } else if inner.synced && !inner.overflowed {
            CacheLookup::NotRevoked
        } else {
            CacheLookup::Unknown
        }
    }

    /// Records a revoked token until `expires_at`.
    pub fn insert(&self, jti: Uuid, expires_at: DateTime<Utc>, now: DateTime<Utc>) {
        self.inner
            .write()
            .insert(self.capacity, jti, expires_at, now);
    }

    /// A revocation announced by another instance (or this one): expiry unknown, so it is kept
    /// for the longest lifetime a token may have.
    pub fn on_notification(&self, jti: Uuid, now: DateTime<Utc>) {
        self.insert(jti, now + self.notification_ttl, now);
    }

    /// Listener connected: misses are untrusted until [`Self::complete_sync`] with the returned
    /// epoch.
    pub fn begin_sync(&self) -> u64 {
        let mut inner = self.inner.write();
        inner.synced = false;
        inner.epoch += 1;
        inner.epoch
    }

    /// Merges the table's active revocations. `complete` says the list held every active
    /// revocation (it was not cut by the limit). Returns whether the cache is now synced (false
    /// when a disconnect or reconnect happened meanwhile).
    pub fn complete_sync(
        &self,
        epoch: u64,
        active: &[RevokedToken],
        complete: bool,
        now: DateTime<Utc>,
    ) -> bool {
        let mut inner = self.inner.write();
        if inner.epoch != epoch {
            return false;
        }
        inner.evict_expired(now);
        inner.overflowed = false;
        for r in active {
            inner.insert(self.capacity, r.jti, r.expires_at, now);
        }
        if !complete {
            inner.overflowed = true;
        }
        inner.synced = true;
        true
    }

    /// Listener lost: notifications may be missed from now on.
    pub fn mark_unsynced(&self) {
        let mut inner = self.inner.write();
        inner.synced = false;
        inner.epoch += 1;
    }

    /// Drops revocations of tokens that expired; returns how many.
    pub fn evict_expired(&self, now: DateTime<Utc>) -> usize {
        self.inner.write().evict_expired(now)
    }

    pub fn is_synced(&self) -> bool {
        self.inner.read().synced
    }

    pub fn is_overflowed(&self) -> bool {
        self.inner.read().overflowed
    }

    /// Whether misses are trusted right now.
    pub fn is_authoritative(&self) -> bool {
        let inner = self.inner.read();
        inner.synced && !inner.overflowed
    }

    pub fn len(&self) -> usize {
        self.inner.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn cache(cap: usize) -> RevocationCache {
        RevocationCache::new(cap, TimeDelta::seconds(960))
    }

    fn synced(cap: usize) -> RevocationCache {
        let c = cache(cap);
        let e = c.begin_sync();
        assert!(c.complete_sync(e, &[], true, t0()));
        c
    }

    #[test]
    fn a_fresh_cache_trusts_no_miss() {
        let c = cache(10);
        assert_eq!(c.lookup(Uuid::new_v4()), CacheLookup::Unknown);
        let jti = Uuid::new_v4();
        c.insert(jti, t0() + TimeDelta::seconds(60), t0());
        assert_eq!(c.lookup(jti), CacheLookup::Revoked);
    }

    #[test]
    fn synced_cache_answers_misses_and_hits() {
        let c = cache(10);
        let e = c.begin_sync();
        let known = Uuid::new_v4();
        let warm = [RevokedToken {
            jti: known,
            expires_at: t0() + TimeDelta::seconds(60),
        }];
        assert!(c.complete_sync(e, &warm, true, t0()));
        assert_eq!(c.lookup(known), CacheLookup::Revoked);
        assert_eq!(c.lookup(Uuid::new_v4()), CacheLookup::NotRevoked);
    }

    #[test]
    fn disconnect_makes_misses_untrusted_and_stale_warmups_are_ignored() {
        let c = synced(10);
        c.mark_unsynced();
        assert_eq!(c.lookup(Uuid::new_v4()), CacheLookup::Unknown);
        // A warm-up that started before a disconnect must not mark the cache synced.
        let e = c.begin_sync();
        c.mark_unsynced();
        assert!(!c.complete_sync(e, &[], true, t0()));
        assert!(!c.is_synced());
    }

    #[test]
    fn notification_marks_revoked_until_the_longest_token_lifetime() {
        let c = synced(10);
        let jti = Uuid::new_v4();
        c.on_notification(jti, t0());
        assert_eq!(c.lookup(jti), CacheLookup::Revoked);
        c.evict_expired(t0() + TimeDelta::seconds(959));
        assert_eq!(c.lookup(jti), CacheLookup::Revoked);
        c.evict_expired(t0() + TimeDelta::seconds(960));
        assert_eq!(c.lookup(jti), CacheLookup::NotRevoked);
    }

    #[test]
    fn overflow_stops_trusting_misses_but_keeps_the_newest_fact() {
        let c = synced(2);
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let n = Uuid::new_v4();
        c.insert(a, t0() + TimeDelta::seconds(10), t0());
        c.insert(b, t0() + TimeDelta::seconds(20), t0());
        assert!(c.is_authoritative());
        c.insert(n, t0() + TimeDelta::seconds(30), t0());
        assert_eq!(c.len(), 2);
        assert!(c.is_overflowed());
        // `a` was dropped: the cache must not claim it is valid.
        assert_eq!(c.lookup(a), CacheLookup::Unknown);
        assert_eq!(c.lookup(n), CacheLookup::Revoked);
        // A complete resync that fits restores trust.
        let e = c.begin_sync();
        assert!(c.complete_sync(e, &[], true, t0()));
        assert!(c.is_authoritative());
        // An incomplete one does not.
        let e = c.begin_sync();
        assert!(c.complete_sync(e, &[], false, t0()));
        assert!(!c.is_authoritative());
    }

    #[test]
    fn expired_entries_make_room_without_overflow() {
        let c = synced(1);
        c.insert(Uuid::new_v4(), t0() + TimeDelta::seconds(10), t0());
        let later = t0() + TimeDelta::seconds(11);
        let j = Uuid::new_v4();
        c.insert(j, later + TimeDelta::seconds(10), later);
        assert!(!c.is_overflowed());
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup(j), CacheLookup::Revoked);
    }

    #[test]
    fn zero_capacity_never_claims_anything_is_valid() {
        let c = synced(0);
        let j = Uuid::new_v4();
        c.insert(j, t0() + TimeDelta::seconds(10), t0());
        assert_eq!(c.lookup(j), CacheLookup::Unknown);
        assert_eq!(c.lookup(Uuid::new_v4()), CacheLookup::Unknown);
    }
}
