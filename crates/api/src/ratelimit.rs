//! Per-key rate limits with bounded, evicting key tables (governor cells in sharded LRUs).
//!
//! Tiers: `auth` (per client address, on `/auth/*`), `write` and `read` (per user when
//! authenticated — applied by the [`crate::extract::AuthUser`] extractor). A key that is evicted
//! from a full table starts with a fresh allowance; the table bound is configuration.

use crate::error::ApiError;
use actix_web::HttpMessage;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use lru::LruCache;
use parking_lot::Mutex;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

const SHARDS: usize = 16;

pub struct KeyedLimiter {
    quota: Quota,
    hasher: RandomState,
    shards: Vec<Mutex<LruCache<String, DefaultDirectRateLimiter>>>,
}

impl KeyedLimiter {
    /// `per_minute` requests per key per minute (burst of the same size); at most
    /// `max_keys` keys remembered.
    pub fn new(per_minute: u32, max_keys: usize) -> Self {
        let per_minute = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let per_shard = NonZeroUsize::new((max_keys / SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            quota: Quota::per_minute(per_minute),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
        }
    }

    /// `Err(wait)` when the key is over its allowance.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let shard = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut table = self.shards[shard].lock();
        let limiter = table.get_or_insert_ref(key, || RateLimiter::direct(self.quota));
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `[rate_limit]` configuration section (`GATHERING__RATE_LIMIT__*`): the one place its
/// defaults live; the binary composes it into its settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
    pub auth_per_minute: u32,
    pub write_per_minute: u32,
    pub read_per_minute: u32,
    pub max_keys: usize,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            auth_per_minute: 20,
            write_per_minute: 300,
            read_per_minute: 1200,
            max_keys: 100_000,
        }
    }
}

pub struct RateLimits {
    pub auth: KeyedLimiter,
    pub write: KeyedLimiter,
    pub read: KeyedLimiter,
}

impl RateLimits {
    pub fn new(s: &RateLimitSettings) -> Self {
        Self {
            auth: KeyedLimiter::new(s.auth_per_minute, s.max_keys),
            write: KeyedLimiter::new(s.write_per_minute, s.max_keys),
            read: KeyedLimiter::new(s.read_per_minute, s.max_keys),
        }
    }
}

/// Proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<IpAddr>);

/// The client's address: the peer, or — when the peer is a trusted proxy — the right-most
/// address of `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(req: &actix_web::HttpRequest, proxies: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip())?;
    let trusted = &proxies.0;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
}

/// Middleware for the `/auth` scope: limits per client address.
pub async fn auth_tier(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = match crate::extract::app_state(req.request()) {
        Ok(state) => state,
        Err(e) => return Ok(req.error_response(e)),
    };
    let key = client_ip(req.request(), &state.proxies)
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".to_owned());
    if let Err(wait) = state.limits.auth.check(&key) {
        req.extensions_mut().insert(RateLimited);
        // A response carrying the error (not an `Err`), so the edge middleware completes it.
        return Ok(req.error_response(ApiError::rate_limited(wait)));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Marker left in request extensions when a limit was hit (for tests and logs).
#[derive(Debug, Clone, Copy)]
pub struct RateLimited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_refuses_over_allowance_with_a_wait() {
        let l = KeyedLimiter::new(3, 100);
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        let wait = l.check("a").err();
        assert!(wait.is_some_and(|w| w > Duration::ZERO));
        assert!(l.check("b").is_ok(), "keys are independent");
    }

    #[test]
    fn key_table_is_bounded() {
        let l = KeyedLimiter::new(10, 32);
        for i in 0..10_000 {
            let _ = l.check(&format!("k{i}"));
        }
        assert!(l.len() <= 32, "{}", l.len());
    }
}
