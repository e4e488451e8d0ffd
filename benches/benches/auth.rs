//! Auth hot paths: access-token issue and verify (PASETO v4.local), the revocation-cache
//! lookup (hit, and a miss on a synced cache), and a whole `authenticate` on a synced cache.
//!
//! `cargo bench -p gathering-benches --bench auth` (no database needed: in-memory fakes).

use chrono::{TimeDelta, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use gathering_auth::fakes::Fakes;
use gathering_auth::{
    AccessTokens, AuthConfig, AuthService, KeyRing, PasswordParams, RevocationCache,
};
use gathering_domain::auth::{RequestMeta, RevokedToken, Role};
use gathering_domain::notify::ListenerEvent;
use gathering_domain::{Clock, SystemClock};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

fn tokens(c: &mut Criterion) {
    let ring = match KeyRing::from_key(&KeyRing::generate_key()) {
        Ok(r) => r,
        Err(e) => panic!("key ring: {e}"),
    };
    let tokens = match AccessTokens::new(ring, Duration::from_secs(900)) {
        Ok(t) => t,
        Err(e) => panic!("tokens: {e}"),
    };
    let user = Uuid::now_v7();
    let now = Utc::now();
    c.bench_function("token_issue", |b| {
        b.iter(|| tokens.issue(black_box(user), Role::User, now))
    });
    let issued = match tokens.issue(user, Role::User, now) {
        Ok(t) => t,
        Err(e) => panic!("issue: {e}"),
    };
    c.bench_function("token_verify", |b| {
        b.iter(|| tokens.verify(black_box(&issued.token), now))
    });
}

fn revocation_lookup(c: &mut Criterion) {
    let now = Utc::now();
    let cache = RevocationCache::new(100_000, TimeDelta::seconds(960));
    let active: Vec<RevokedToken> = (0..50_000)
        .map(|i| RevokedToken {
            jti: Uuid::new_v4(),
            expires_at: now + TimeDelta::seconds(60 + i64::from(i % 900)),
        })
        .collect();
    let epoch = cache.begin_sync();
    assert!(cache.complete_sync(epoch, &active, true, now));
    let hit = active[25_000].jti;
    let miss = Uuid::new_v4();
    c.bench_function("revocation_lookup_hit", |b| {
        b.iter(|| cache.lookup(black_box(hit)))
    });
    c.bench_function("revocation_lookup_miss_synced", |b| {
        b.iter(|| cache.lookup(black_box(miss)))
    });
}

/// A synced service with one logged-in user; `token_cache_capacity` 0 verifies every time.
fn service(rt: &tokio::runtime::Runtime, token_cache_capacity: usize) -> (AuthService, String) {
    let fakes = Fakes::new();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let config = AuthConfig {
        password_params: PasswordParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        },
        token_cache_capacity,
        ..AuthConfig::default()
    };
    let meta = RequestMeta::default();
    rt.block_on(async {
        let ring = KeyRing::from_key(&KeyRing::generate_key()).map_err(|e| e.to_string())?;
        let svc = AuthService::new(fakes.repos(), clock, ring, config)
            .await
            .map_err(|e| e.to_string())?;
        svc.handle_listener_event(&ListenerEvent::Connected).await;
        svc.register(
            "bench@example.com",
            "bench password 123".into(),
            "B".into(),
            &meta,
        )
        .await
        .map_err(|e| e.to_string())?;
        let pair = svc
            .login("bench@example.com", "bench password 123".into(), &meta)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((svc, pair.access_token))
    })
    .unwrap_or_else(|e| panic!("setup: {e}"))
}

/// The extractor's work per request: verification (or its cached outcome) plus revocation.
fn authenticate(c: &mut Criterion) {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let meta = RequestMeta::default();
    for (name, capacity) in [
        ("authenticate_synced_token_cache", 10_000),
        ("authenticate_synced_no_token_cache", 0),
    ] {
        let (svc, token) = service(&rt, capacity);
        c.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| svc.authenticate(black_box(&token), &meta))
        });
    }
}

criterion_group!(benches, tokens, revocation_lookup, authenticate);
criterion_main!(benches);
