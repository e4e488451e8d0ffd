//! Provider endpoints and keys from the server's configuration, plus the runtime's bounds.
//!
//! The server builds it from its configuration (`GATHERING__LLM__OPENAI__API_KEY` sets
//! `llm.openai.api_key`).

use gathering_domain::agents::Provider;
use serde::Deserialize;
use std::time::Duration;

#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProviderConfig {
    pub base_url: String,
    pub api_key: Option<String>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ProviderConfig {
    fn with_url(url: &str) -> Self {
        Self {
            base_url: url.to_owned(),
            api_key: None,
        }
    }
}

pub fn default_base_url(p: Provider) -> &'static str {
    match p {
        Provider::OpenAi => "https://api.openai.com/v1",
        Provider::Anthropic => "https://api.anthropic.com",
        Provider::DeepSeek => "https://api.deepseek.com",
        Provider::Ollama => "http://127.0.0.1:11434/v1",
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct LlmConfig {
    pub openai: ProviderConfig,
    pub anthropic: ProviderConfig,
    pub deepseek: ProviderConfig,
    pub ollama: ProviderConfig,
    /// Whole-request bound of a non-streaming call.
    pub request_timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// Longest silence inside a streamed answer.
    pub read_timeout_secs: u64,
    /// Attempts per interactive call (chat, circles), the first included (429 and 5xx are
    /// retried). Calls through the agent-runner port (pipeline nodes, schedules) make one
    /// attempt: their caller retries. The circuit breaker is the process-wide registry
    /// (`GATHERING__PIPELINE__BREAKER_*`), handed to [`crate::LlmServices::with_breakers`].
    pub max_attempts: u32,
    /// A `Retry-After` longer than this is not waited for: the call fails with 429 instead.
    pub max_retry_wait_secs: u64,
    /// Session history sent with a chat: at most this many messages ...
    pub history_messages: u32,
    /// ... and at most this many characters (about 4 per token).
    pub history_chars: usize,
    /// Memories recalled into the prompt.
    pub memory_recall: u32,
    /// Model calls per chat turn when tools are used (the last one offers no tools).
    pub max_tool_turns: u32,
    pub max_tokens: u32,
    /// Rounds in which circle members contribute after the lead's first answer.
    pub circle_rounds: u32,
    /// Hosts (`host`, `host:port`, `[v6]:port`) a user's own `base_url` may point at although
    /// they are loopback or private: the tools' `GATHERING__TOOLS__HTTP_ALLOWED_HOSTS`. Every
    /// other user endpoint is refused on such addresses (SSRF guard); the server's own
    /// endpoints (`GATHERING__LLM__<P>__BASE_URL`) are trusted and never checked.
    pub http_allowed_hosts: Vec<String>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            openai: ProviderConfig::with_url(default_base_url(Provider::OpenAi)),
            anthropic: ProviderConfig::with_url(default_base_url(Provider::Anthropic)),
            deepseek: ProviderConfig::with_url(default_base_url(Provider::DeepSeek)),
            ollama: ProviderConfig::with_url(default_base_url(Provider::Ollama)),
            request_timeout_secs: 120,
            connect_timeout_secs: 10,
            read_timeout_secs: 60,
            max_attempts: 3,
            max_retry_wait_secs: 30,
            history_messages: 40,
            history_chars: 24_000,
            memory_recall: 5,
            max_tool_turns: 5,
            max_tokens: 1024,
            circle_rounds: 2,
            http_allowed_hosts: Vec::new(),
        }
    }
}

impl LlmConfig {
    pub fn provider(&self, p: Provider) -> &ProviderConfig {
        match p {
            Provider::OpenAi => &self.openai,
            Provider::Anthropic => &self.anthropic,
            Provider::DeepSeek => &self.deepseek,
            Provider::Ollama => &self.ollama,
        }
    }

    pub fn provider_mut(&mut self, p: Provider) -> &mut ProviderConfig {
        match p {
            Provider::OpenAi => &mut self.openai,
            Provider::Anthropic => &mut self.anthropic,
            Provider::DeepSeek => &mut self.deepseek,
            Provider::Ollama => &mut self.ollama,
        }
    }

    /// Overrides one provider's endpoint and/or server key (blank values are ignored).
    pub fn set_provider(&mut self, p: Provider, base_url: Option<String>, api_key: Option<String>) {
        if let Some(u) = base_url
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
        {
            self.provider_mut(p).base_url = u;
        }
        if let Some(k) = api_key
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
        {
            self.provider_mut(p).api_key = Some(k);
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_keys() {
        let mut c = LlmConfig::default();
        c.openai.api_key = Some("sk-secret".into());
        assert!(!format!("{c:?}").contains("sk-secret"));
    }
}
