//! gathering-llm: chat-model providers over real HTTP (OpenAI-compatible: OpenAI, DeepSeek,
//! Ollama; Anthropic), provider settings with keys encrypted at rest, and the agent runtime
//! (persona, memory, sessions, tool calls) and circles built on them.

pub mod anthropic;
pub mod circles;
pub mod config;
pub mod crypto;
pub mod error;
pub mod http;
pub mod model;
pub mod openai;
pub mod server_settings;
pub mod service;
pub mod settings;
pub mod sse;
/// Only with the `test-support` feature (tests), never in the server.
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod wiring;

pub use circles::CircleService;
pub use config::{LlmConfig, ProviderConfig};
pub use crypto::SecretKey;
pub use error::LlmError;
pub use model::{
    ChatModel, ChatRequest, ChatResponse, DeltaStream, Message, StreamDelta, ToolCall, ToolSchema,
};
pub use service::{
    AgentService, ChatOutcome, HttpModelFactory, ModelFactory, Retries, ToolCatalog,
};
pub use settings::{Credentials, ProviderView, SettingsService};
pub use wiring::LlmServices;
