//! The provider-neutral chat vocabulary and the [`ChatModel`] trait.

use crate::error::LlmError;
use async_trait::async_trait;
use futures::{Stream, StreamExt};
use gathering_domain::agents::{Provider, Usage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::pin::Pin;

/// A tool call the model requested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments; a JSON string when the model produced invalid JSON (the tool's
    /// validation then rejects it and the model is told).
    pub arguments: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    System(String),
    User(String),
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        call_id: String,
        name: String,
        content: String,
    },
}

impl Message {
    pub fn assistant(text: impl Into<String>) -> Self {
        Message::Assistant {
            text: text.into(),
            tool_calls: Vec::new(),
        }
    }
}

/// A tool as offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSchema {
    pub name: String,
    pub description: String,
    /// JSON Schema of the parameters object.
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSchema>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
}

impl ChatRequest {
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            model: model.into(),
            messages,
            tools: Vec::new(),
            temperature: None,
            max_tokens: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatResponse {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub finish_reason: Option<String>,
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamDelta {
    Text(String),
    /// A tool call begins (`index` identifies it among this answer's calls).
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of a tool call's JSON arguments.
    ToolCallArguments {
        index: usize,
        fragment: String,
    },
    /// Token counts known so far; a later value for a field replaces an earlier one.
    Usage(Usage),
    Finish(String),
}

pub type DeltaStream = Pin<Box<dyn Stream<Item = Result<StreamDelta, LlmError>> + Send>>;

#[async_trait]
pub trait ChatModel: Send + Sync {
    fn provider(&self) -> Provider;
    /// One complete answer.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError>;
    /// The answer as it is generated, parsed from the provider's server-sent events.
    async fn chat_stream(&self, request: &ChatRequest) -> Result<DeltaStream, LlmError>;
}

/// Parses tool-call arguments; invalid JSON is kept as a string.
pub fn parse_arguments(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return Value::Object(Default::default());
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// Folds a delta stream into one response.
pub async fn collect_stream(mut stream: DeltaStream) -> Result<ChatResponse, LlmError> {
    let mut out = ChatResponse::default();
    // (id, name, arguments) per index, in order of appearance.
    let mut calls: Vec<(usize, String, String, String)> = Vec::new();
    while let Some(delta) = stream.next().await {
        match delta? {
            StreamDelta::Text(t) => out.text.push_str(&t),
            StreamDelta::ToolCallStart { index, id, name } => {
                match calls.iter_mut().find(|c| c.0 == index) {
                    Some(c) => {
                        if !id.is_empty() {
                            c.1 = id;
                        }
                        if !name.is_empty() {
                            c.2 = name;
                        }
                    }
                    None => calls.push((index, id, name, String::new())),
                }
            }
            StreamDelta::ToolCallArguments { index, fragment } => {
                match calls.iter_mut().find(|c| c.0 == index) {
                    Some(c) => c.3.push_str(&fragment),
                    None => calls.push((index, String::new(), String::new(), fragment)),
                }
            }
            StreamDelta::Usage(u) => {
                if u.prompt_tokens > 0 {
                    out.usage.prompt_tokens = u.prompt_tokens;
                }
                if u.completion_tokens > 0 {
                    out.usage.completion_tokens = u.completion_tokens;
                }
            }
            StreamDelta::Finish(r) => out.finish_reason = Some(r),
        }
    }
    out.tool_calls = calls
        .into_iter()
        .map(|(_, id, name, args)| ToolCall {
            id,
            name,
            arguments: parse_arguments(&args),
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn collect_stream_joins_text_tool_arguments_and_usage() {
        let deltas = vec![
            Ok(StreamDelta::Usage(Usage {
                prompt_tokens: 10,
                completion_tokens: 0,
            })),
            Ok(StreamDelta::Text("Hel".into())),
            Ok(StreamDelta::Text("lo".into())),
            Ok(StreamDelta::ToolCallStart {
                index: 0,
                id: "c1".into(),
                name: "echo".into(),
            }),
            Ok(StreamDelta::ToolCallArguments {
                index: 0,
                fragment: "{\"a\":".into(),
            }),
            Ok(StreamDelta::ToolCallArguments {
                index: 0,
                fragment: "1}".into(),
            }),
            Ok(StreamDelta::Usage(Usage {
                prompt_tokens: 0,
                completion_tokens: 7,
            })),
            Ok(StreamDelta::Finish("tool_calls".into())),
        ];
        let r = collect_stream(Box::pin(futures::stream::iter(deltas)))
            .await
            .unwrap();
        assert_eq!(r.text, "Hello");
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].arguments, serde_json::json!({"a": 1}));
        assert_eq!(r.usage.prompt_tokens, 10);
        assert_eq!(r.usage.completion_tokens, 7);
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn invalid_arguments_are_kept_as_a_string() {
        assert_eq!(parse_arguments("{oops"), Value::String("{oops".into()));
        assert_eq!(parse_arguments(""), serde_json::json!({}));
    }
}
