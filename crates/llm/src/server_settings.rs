//! The `[llm]` configuration section (`GATHERING__LLM__*`): the operator's provider endpoints
//! and keys. Every field is optional (unset: the provider's built-in endpoint, no key), so its
//! defaults are all "unset" and live here.

use secrecy::SecretString;
use serde::Deserialize;

/// `GATHERING__LLM__<PROVIDER>__{BASE_URL,API_KEY}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProviderSettings {
    pub base_url: Option<String>,
    pub api_key: Option<SecretString>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LlmSettings {
    pub openai: ProviderSettings,
    pub anthropic: ProviderSettings,
    pub deepseek: ProviderSettings,
    pub ollama: ProviderSettings,
    /// `GATHERING__LLM__SETTINGS_KEY`: 64 hex characters for encrypting per-user provider
    /// keys; generated into the data dir when unset.
    pub settings_key: Option<SecretString>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_missing_section_or_key_is_unset() {
        let empty: LlmSettings = serde_json::from_str("{}").unwrap();
        assert!(empty.openai.base_url.is_none() && empty.settings_key.is_none());
        let one: LlmSettings = serde_json::from_str(r#"{"openai": {"api_key": "sk-x"}}"#).unwrap();
        assert_eq!(
            one.openai
                .api_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned()),
            Some("sk-x".to_owned())
        );
        assert!(one.openai.base_url.is_none() && one.anthropic.api_key.is_none());
    }
}
