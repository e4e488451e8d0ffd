//! Per-user provider settings: keys encrypted at rest, shown only as a hint, used over the
//! server's environment keys. The server's key is only ever sent to the server's endpoint
//! (see [`SettingsService::resolve`]).

use crate::config::LlmConfig;
use crate::crypto::{SecretKey, key_hint};
use crate::error::LlmError;
use gathering_domain::agents::{Provider, ProviderSettingChange, ProviderSettingsRepository};
use gathering_tools::net::{AllowList, ip_is_forbidden};
use serde::Serialize;
use std::sync::Arc;
use uuid::Uuid;

pub const MAX_KEY_LEN: usize = 1000;
pub const MAX_URL_LEN: usize = 2000;

/// Endpoint and key to call a provider with.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub provider: Provider,
    pub base_url: String,
    pub api_key: Option<String>,
    /// `base_url` is the user's own (untrusted: SSRF-guarded when called), not the server's.
    pub user_base_url: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("user_base_url", &self.user_base_url)
            .finish()
    }
}

/// What `GET /settings/providers` shows: never the key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderView {
    pub provider: Provider,
    /// The base URL in effect for this user (theirs, else the server's).
    pub base_url: String,
    /// Whether the user stored their own key.
    pub key_set: bool,
    pub key_hint: Option<String>,
    /// Whether the server has a key for this provider (used when the user has none, and only
    /// with the server's endpoint: never sent to the user's own `base_url`).
    pub server_key_set: bool,
}

pub struct SettingsService {
    repo: Arc<dyn ProviderSettingsRepository>,
    key: SecretKey,
    config: LlmConfig,
    allow: AllowList,
}

/// The address of an IP-literal host that a user's endpoint must not name (loopback, private,
/// link-local/metadata, CGNAT, ...), unless the host is allow-listed; `None` for host names
/// (those are checked when resolved, see [`crate::http::build_guarded_client`]).
pub fn forbidden_literal(url: &url::Url, allow: &AllowList) -> Option<std::net::IpAddr> {
    if allow.allows(url) {
        return None;
    }
    let ip = match url.host()? {
        url::Host::Ipv4(v4) => std::net::IpAddr::V4(v4),
        url::Host::Ipv6(v6) => std::net::IpAddr::V6(v6),
        url::Host::Domain(_) => return None,
    };
    ip_is_forbidden(ip).then_some(ip)
}

/// The message for a refused user endpoint. It is generic: what the endpoint named or resolved
/// to (`what`) is logged for the operator, never told to the caller.
pub fn refused_message(what: impl std::fmt::Display) -> String {
    tracing::warn!(target_address = %what, "a user's provider endpoint was refused: not a public address");
    format!(
        "{}; an administrator can allow the host with GATHERING__TOOLS__HTTP_ALLOWED_HOSTS",
        gathering_tools::net::REFUSED_MESSAGE
    )
}

fn check_url(url: &str, allow: &AllowList) -> Result<(), LlmError> {
    let bad = || LlmError::validation("/base_url", "must be an absolute http(s) URL");
    if url.len() > MAX_URL_LEN {
        return Err(bad());
    }
    let parsed = url::Url::parse(url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(LlmError::validation(
            "/base_url",
            "must not carry credentials; set api_key instead",
        ));
    }
    if let Some(ip) = forbidden_literal(&parsed, allow) {
        return Err(LlmError::validation(
            "/base_url",
            &refused_message(format_args!("{ip}")),
        ));
    }
    Ok(())
}

impl SettingsService {
    pub fn new(
        repo: Arc<dyn ProviderSettingsRepository>,
        key: SecretKey,
        config: LlmConfig,
    ) -> Self {
        let allow = AllowList::new(&config.http_allowed_hosts);
        Self {
            repo,
            key,
            config,
            allow,
        }
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// `PUT /settings/providers/{provider}`: a field left out keeps its value; an empty string
    /// clears it.
    pub async fn put(
        &self,
        owner: Uuid,
        provider: Provider,
        api_key: Option<String>,
        base_url: Option<String>,
    ) -> Result<(), LlmError> {
        let mut change = ProviderSettingChange::default();
        if let Some(url) = base_url {
            let url = url.trim().to_owned();
            if url.is_empty() {
                change.base_url = Some(None);
            } else {
                check_url(&url, &self.allow)?;
                change.base_url = Some(Some(url));
            }
        }
        if let Some(key) = api_key {
            let key = key.trim().to_owned();
            if key.is_empty() {
                change.api_key = Some(None);
            } else {
                if key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
                    return Err(LlmError::validation(
                        "/api_key",
                        "must be at most 1000 printable characters",
                    ));
                }
                change.api_key = Some(Some((self.key.encrypt(&key)?, key_hint(&key))));
            }
        }
        self.repo
            .upsert_provider_setting(owner, provider, change)
            .await?;
        Ok(())
    }

    /// Every provider, with what is in effect for `owner`.
    pub async fn list(&self, owner: Uuid) -> Result<Vec<ProviderView>, LlmError> {
        let stored = self.repo.list_provider_settings(owner).await?;
        Ok(Provider::ALL
            .into_iter()
            .map(|p| {
                let s = stored.iter().find(|s| s.provider == p);
                let env = self.config.provider(p);
                ProviderView {
                    provider: p,
                    base_url: s
                        .and_then(|s| s.base_url.clone())
                        .unwrap_or_else(|| env.base_url.clone()),
                    key_set: s.is_some_and(|s| s.api_key_encrypted.is_some()),
                    key_hint: s
                        .filter(|s| s.api_key_encrypted.is_some())
                        .and_then(|s| s.key_hint.clone()),
                    server_key_set: env.api_key.is_some(),
                }
            })
            .collect())
    }

    /// The endpoint and key to call `provider` with for `owner`.
    ///
    /// The operator's key (`GATHERING__LLM__<P>__API_KEY`) is only ever sent to the operator's
    /// endpoint (`GATHERING__LLM__<P>__BASE_URL` or the default), never to a user's own
    /// `base_url`, which the user controls and could point at a host that records headers:
    ///
    /// | user `base_url` | user key | endpoint   | key sent           |
    /// |-----------------|----------|------------|--------------------|
    /// | set             | set      | user's     | user's             |
    /// | set             | none     | user's     | none               |
    /// | none            | set      | operator's | user's             |
    /// | none            | none     | operator's | operator's, if any |
    ///
    /// A stored user `base_url` counts as the user's own even when it spells the operator's
    /// URL. No key for a provider that needs one is `NotConfigured` and nothing is sent.
    pub async fn resolve(&self, owner: Uuid, provider: Provider) -> Result<Credentials, LlmError> {
        let stored = self.repo.get_provider_setting(owner, provider).await?;
        let env = self.config.provider(provider);
        let user_url = stored.as_ref().and_then(|s| s.base_url.clone());
        let user_key = stored
            .as_ref()
            .and_then(|s| s.api_key_encrypted.as_deref())
            .map(|blob| self.key.decrypt(blob))
            .transpose()?;
        let (base_url, api_key, user_base_url) = match user_url {
            // The user's endpoint: only the user's own key, never the operator's.
            Some(url) => (url, user_key, true),
            None => (
                env.base_url.clone(),
                user_key.or_else(|| env.api_key.clone()),
                false,
            ),
        };
        if provider.needs_api_key() && api_key.is_none() {
            let upper = provider.as_str().to_ascii_uppercase();
            return Err(LlmError::NotConfigured(if user_base_url {
                format!(
                    "no API key for {provider} at your own base_url: the server's key is only \
                     sent to the server's endpoint; set api_key, or clear base_url, with \
                     PUT /api/v1/settings/providers/{provider}"
                )
            } else {
                format!(
                    "no API key for {provider}: set one with PUT \
                     /api/v1/settings/providers/{provider} or GATHERING__LLM__{upper}__API_KEY"
                )
            }));
        }
        Ok(Credentials {
            provider,
            base_url,
            api_key,
            user_base_url,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn literal(url: &str, allow: &[&str]) -> Option<std::net::IpAddr> {
        let allow: Vec<String> = allow.iter().map(|s| (*s).to_owned()).collect();
        forbidden_literal(&url::Url::parse(url).unwrap(), &AllowList::new(&allow))
    }

    #[test]
    fn forbidden_ip_literals_are_found_unless_allow_listed() {
        assert!(literal("http://127.0.0.1:1/v1", &[]).is_some());
        assert!(literal("http://169.254.169.254/", &[]).is_some());
        assert!(literal("http://10.0.0.1/", &[]).is_some());
        assert!(literal("http://[fd00::1]/", &[]).is_some());
        assert!(literal("http://127.0.0.1:1/v1", &["127.0.0.1:1"]).is_none());
        assert!(literal("http://127.0.0.1:2/v1", &["127.0.0.1:1"]).is_some());
        assert!(literal("https://8.8.8.8/", &[]).is_none());
        // Names are checked when resolved, not here.
        assert!(literal("http://localhost/", &[]).is_none());
    }

    #[test]
    fn check_url_refuses_forbidden_literals_on_the_base_url_field() {
        let none = AllowList::default();
        let err = check_url("http://169.254.169.254/latest", &none).unwrap_err();
        assert_eq!(
            gathering_domain::ErrorCode::details(&err)[0].field,
            "/base_url"
        );
        assert!(check_url("https://api.example.com/v1", &none).is_ok());
        assert!(check_url("ftp://x", &none).is_err());
    }

    /// One user's settings in memory.
    #[derive(Default)]
    struct MemRepo(parking_lot::Mutex<Vec<gathering_domain::agents::ProviderSetting>>);

    #[async_trait::async_trait]
    impl ProviderSettingsRepository for MemRepo {
        async fn upsert_provider_setting(
            &self,
            owner: Uuid,
            provider: Provider,
            change: ProviderSettingChange,
        ) -> Result<gathering_domain::agents::ProviderSetting, gathering_domain::RepoError>
        {
            let mut rows = self.0.lock();
            let i = match rows.iter().position(|r| r.provider == provider) {
                Some(i) => i,
                None => {
                    rows.push(gathering_domain::agents::ProviderSetting {
                        owner_id: owner,
                        provider,
                        base_url: None,
                        api_key_encrypted: None,
                        key_hint: None,
                        updated_at: chrono::Utc::now(),
                    });
                    rows.len() - 1
                }
            };
            if let Some(u) = change.base_url {
                rows[i].base_url = u;
            }
            if let Some(k) = change.api_key {
                rows[i].key_hint = k.as_ref().map(|(_, h)| h.clone());
                rows[i].api_key_encrypted = k.map(|(b, _)| b);
            }
            Ok(rows[i].clone())
        }
        async fn get_provider_setting(
            &self,
            _owner: Uuid,
            provider: Provider,
        ) -> Result<Option<gathering_domain::agents::ProviderSetting>, gathering_domain::RepoError>
        {
            Ok(self
                .0
                .lock()
                .iter()
                .find(|r| r.provider == provider)
                .cloned())
        }
        async fn list_provider_settings(
            &self,
            _owner: Uuid,
        ) -> Result<Vec<gathering_domain::agents::ProviderSetting>, gathering_domain::RepoError>
        {
            Ok(self.0.lock().clone())
        }
    }

    const OP_URL: &str = "https://operator.example/v1";
    const OP_KEY: &str = "sk-operator-000000";
    const USER_URL: &str = "https://user-controlled.example/v1";
    const USER_KEY: &str = "sk-user-abcdef3456";

    /// A fresh service whose operator configured `OP_URL`/`OP_KEY` for every provider, with
    /// the user's `url` and `key` stored for `p`.
    async fn resolved(
        p: Provider,
        url: Option<&str>,
        key: Option<&str>,
    ) -> Result<Credentials, LlmError> {
        let mut config = LlmConfig::default();
        for q in Provider::ALL {
            config.set_provider(q, Some(OP_URL.into()), Some(OP_KEY.into()));
        }
        let svc = SettingsService::new(Arc::new(MemRepo::default()), SecretKey::generate(), config);
        let owner = Uuid::now_v7();
        svc.put(owner, p, key.map(str::to_owned), url.map(str::to_owned))
            .await
            .unwrap();
        svc.resolve(owner, p).await
    }

    #[tokio::test]
    async fn the_operators_key_is_only_ever_resolved_for_the_operators_url() {
        for p in Provider::ALL {
            // User URL + user key: the user's key to the user's URL.
            let c = resolved(p, Some(USER_URL), Some(USER_KEY)).await.unwrap();
            assert_eq!(
                (c.base_url.as_str(), c.api_key.as_deref()),
                (USER_URL, Some(USER_KEY))
            );
            assert!(c.user_base_url, "{p}");

            // User URL, no user key: never the operator's key.
            match resolved(p, Some(USER_URL), None).await {
                Ok(c) => {
                    assert!(!p.needs_api_key(), "{p} resolved without a key");
                    assert_eq!(c.base_url, USER_URL);
                    assert_eq!(
                        c.api_key, None,
                        "{p}: the operator's key went to the user's URL"
                    );
                    assert!(c.user_base_url);
                }
                Err(LlmError::NotConfigured(m)) => {
                    assert!(p.needs_api_key(), "{p}: {m}");
                    assert!(m.contains(&format!("no API key for {p}")), "{m}");
                    assert!(m.contains("base_url"), "{m}");
                    assert!(!m.contains(OP_KEY), "{m}");
                }
                Err(other) => panic!("{p}: unexpected {other:?}"),
            }

            // No user URL + user key: the user's key to the operator's URL.
            let c = resolved(p, None, Some(USER_KEY)).await.unwrap();
            assert_eq!(
                (c.base_url.as_str(), c.api_key.as_deref()),
                (OP_URL, Some(USER_KEY))
            );
            assert!(!c.user_base_url, "{p}");

            // Neither: the operator's key to the operator's URL.
            let c = resolved(p, None, None).await.unwrap();
            assert_eq!(
                (c.base_url.as_str(), c.api_key.as_deref()),
                (OP_URL, Some(OP_KEY))
            );
            assert!(!c.user_base_url, "{p}");

            // A user URL spelling the operator's URL is still the user's: no operator key.
            let r = resolved(p, Some(OP_URL), None).await;
            if p.needs_api_key() {
                assert!(matches!(r, Err(LlmError::NotConfigured(_))), "{p}: {r:?}");
            } else {
                assert_eq!(r.unwrap().api_key, None, "{p}");
            }
        }
    }
}
