//! gathering-auth: argon2id password hashing on a bounded blocking pool, PASETO v4.local access
//! tokens with a rotating key ring, rotating refresh tokens with reuse detection, a bounded
//! revocation cache that never makes a revoked token valid, per-account lockout and the audit
//! trail. Depends only on the `gathering-domain` ports.

pub mod cache;
pub mod config;
#[cfg(any(test, feature = "fakes"))]
pub mod contract;
pub mod email;
pub mod error;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
pub mod maintenance;
pub mod password;
pub mod revocation;
pub mod service;
pub mod settings;
pub mod tokens;

pub use cache::{UserCache, VerifiedTokens};
pub use config::AuthConfig;
pub use email::normalize_email;
pub use error::AuthError;
pub use maintenance::spawn_purge;
pub use password::{PasswordHasher, PasswordParams};
pub use revocation::{CacheLookup, RevocationCache};
pub use service::{AuthRepos, AuthService, PurgeReport, TokenPair};
pub use settings::AuthSettings;
pub use tokens::{AccessClaims, AccessTokens, IssuedToken, KeyRing, RefreshSecret, TokenError};

#[cfg(test)]
mod service_tests;
