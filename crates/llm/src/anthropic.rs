//! Anthropic messages API (`/v1/messages`): `x-api-key`, `anthropic-version`, top-level
//! `system`, content blocks, `tool_use` / `tool_result`.

use crate::error::LlmError;
use crate::http::Transport;
use crate::model::{
    ChatModel, ChatRequest, ChatResponse, DeltaStream, Message, StreamDelta, ToolCall,
};
use crate::sse::{Decoded, SseEvent, decode_stream};
use async_trait::async_trait;
use gathering_domain::agents::{Provider, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

pub struct Anthropic {
    endpoint: String,
    api_key: String,
    transport: Transport,
}

impl Anthropic {
    /// `base_url` like `https://api.anthropic.com`.
    pub fn new(base_url: &str, api_key: String, transport: Transport) -> Self {
        let base = base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        Self {
            endpoint: format!("{base}/v1/messages"),
            api_key,
            transport,
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("x-api-key", self.api_key.clone()),
            ("anthropic-version", ANTHROPIC_VERSION.to_owned()),
        ]
    }
}

fn push_blocks(messages: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    // The API wants alternating roles: consecutive turns of one role are merged.
    if let Some(last) = messages.last_mut()
        && last["role"] == role
        && let Some(content) = last["content"].as_array_mut()
    {
        content.extend(blocks);
        return;
    }
    messages.push(json!({"role": role, "content": blocks}));
}

pub fn request_body(req: &ChatRequest, stream: bool) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in &req.messages {
        match m {
            Message::System(t) => system.push(t.clone()),
            Message::User(t) => push_blocks(
                &mut messages,
                "user",
                vec![json!({"type": "text", "text": t})],
            ),
            Message::Assistant { text, tool_calls } => {
                let mut blocks = Vec::new();
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for c in tool_calls {
                    let input = if c.arguments.is_object() {
                        c.arguments.clone()
                    } else {
                        json!({"_raw": c.arguments})
                    };
                    blocks.push(
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}),
                    );
                }
                push_blocks(&mut messages, "assistant", blocks);
            }
            Message::Tool {
                call_id, content, ..
            } => push_blocks(
                &mut messages,
                "user",
                vec![json!({"type": "tool_result", "tool_use_id": call_id, "content": content})],
            ),
        }
    }
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if let Some(t) = req.temperature {
        // Anthropic accepts 0..=1.
        body["temperature"] = json!(t.clamp(0.0, 1.0));
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
    }
    if stream {
        body["stream"] = json!(true);
    }
    body
}

#[derive(Deserialize)]
struct AnResponse {
    content: Vec<AnBlock>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AnUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
struct AnUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

fn parse_response(v: AnResponse) -> ChatResponse {
    let mut out = ChatResponse {
        usage: Usage {
            prompt_tokens: v.usage.input_tokens,
            completion_tokens: v.usage.output_tokens,
        },
        finish_reason: v.stop_reason,
        ..Default::default()
    };
    for b in v.content {
        match b {
            AnBlock::Text { text } => out.text.push_str(&text),
            AnBlock::ToolUse { id, name, input } => out.tool_calls.push(ToolCall {
                id,
                name,
                arguments: input,
            }),
            AnBlock::Other => {}
        }
    }
    out
}

fn field<'a>(v: &'a Value, ptr: &str) -> Option<&'a Value> {
    v.pointer(ptr)
}

/// One event of a streamed message.
pub fn decode_event(ev: SseEvent) -> Decoded {
    let bad = |m: String| LlmError::malformed("anthropic", m);
    if ev.data.trim().is_empty() {
        return Ok((Vec::new(), false));
    }
    let v: Value =
        serde_json::from_str(&ev.data).map_err(|e| bad(format!("invalid stream event: {e}")))?;
    let kind = ev
        .event
        .clone()
        .or_else(|| v.get("type").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let u64_at = |p: &str| field(&v, p).and_then(Value::as_u64).unwrap_or(0);
    let index = || {
        field(&v, "/index")
            .and_then(Value::as_u64)
            .map(|i| i as usize)
            .ok_or_else(|| bad(format!("{kind} without an index")))
    };
    let mut out = Vec::new();
    match kind.as_str() {
        "message_start" => out.push(StreamDelta::Usage(Usage {
            prompt_tokens: u64_at("/message/usage/input_tokens"),
            completion_tokens: u64_at("/message/usage/output_tokens"),
        })),
        "content_block_start" => {
            let block =
                field(&v, "/content_block").ok_or_else(|| bad("no content_block".into()))?;
            match block.get("type").and_then(Value::as_str) {
                Some("tool_use") => out.push(StreamDelta::ToolCallStart {
                    index: index()?,
                    id: block
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    name: block
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                }),
                Some("text") => {
                    if let Some(t) = block.get("text").and_then(Value::as_str)
                        && !t.is_empty()
                    {
                        out.push(StreamDelta::Text(t.to_owned()));
                    }
                }
                _ => {}
            }
        }
        "content_block_delta" => {
            let delta = field(&v, "/delta").ok_or_else(|| bad("no delta".into()))?;
            match delta.get("type").and_then(Value::as_str) {
                Some("text_delta") => out.push(StreamDelta::Text(
                    delta
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                )),
                Some("input_json_delta") => out.push(StreamDelta::ToolCallArguments {
                    index: index()?,
                    fragment: delta
                        .get("partial_json")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                }),
                _ => {}
            }
        }
        "message_delta" => {
            if let Some(r) = field(&v, "/delta/stop_reason").and_then(Value::as_str) {
                out.push(StreamDelta::Finish(r.to_owned()));
            }
            out.push(StreamDelta::Usage(Usage {
                prompt_tokens: u64_at("/usage/input_tokens"),
                completion_tokens: u64_at("/usage/output_tokens"),
            }));
        }
        "message_stop" => return Ok((out, true)),
        "error" => {
            let message = field(&v, "/error/message")
                .and_then(Value::as_str)
                .unwrap_or("stream error")
                .to_owned();
            let etype = field(&v, "/error/type")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(match etype {
                "rate_limit_error" => LlmError::RateLimited {
                    provider: "anthropic".into(),
                    retry_after: None,
                },
                "authentication_error" | "permission_error" => LlmError::Unauthorized {
                    provider: "anthropic".into(),
                    message,
                },
                _ => LlmError::Status {
                    provider: "anthropic".into(),
                    status: if etype == "overloaded_error" {
                        529
                    } else {
                        500
                    },
                    message,
                },
            });
        }
        // ping, content_block_stop, unknown future events
        _ => {}
    }
    Ok((out, false))
}

#[async_trait]
impl ChatModel for Anthropic {
    fn provider(&self) -> Provider {
        Provider::Anthropic
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let resp = self
            .transport
            .post_json(
                &self.endpoint,
                &self.headers(),
                &request_body(request, false),
                false,
            )
            .await?;
        let v: AnResponse = self.transport.json_body(resp).await?;
        Ok(parse_response(v))
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<DeltaStream, LlmError> {
        let resp = self
            .transport
            .post_json(
                &self.endpoint,
                &self.headers(),
                &request_body(request, true),
                true,
            )
            .await?;
        Ok(decode_stream(
            Box::pin(resp.bytes_stream()),
            "anthropic".to_owned(),
            decode_event,
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn system_is_top_level_and_tool_results_merge_into_one_user_turn() {
        let mut req = ChatRequest::new(
            "claude-x",
            vec![
                Message::System("persona".into()),
                Message::System("memories".into()),
                Message::User("hi".into()),
                Message::Assistant {
                    text: "let me".into(),
                    tool_calls: vec![
                        ToolCall {
                            id: "t1".into(),
                            name: "a".into(),
                            arguments: json!({}),
                        },
                        ToolCall {
                            id: "t2".into(),
                            name: "b".into(),
                            arguments: json!("oops"),
                        },
                    ],
                },
                Message::Tool {
                    call_id: "t1".into(),
                    name: "a".into(),
                    content: "1".into(),
                },
                Message::Tool {
                    call_id: "t2".into(),
                    name: "b".into(),
                    content: "2".into(),
                },
            ],
        );
        req.temperature = Some(1.7);
        let b = request_body(&req, false);
        assert_eq!(b["system"], "persona\n\nmemories");
        assert_eq!(b["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(b["temperature"], 1.0);
        let msgs = b["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[1]["content"][1]["type"], "tool_use");
        assert_eq!(msgs[1]["content"][2]["input"], json!({"_raw": "oops"}));
        assert_eq!(msgs[2]["role"], "user");
        assert_eq!(msgs[2]["content"].as_array().unwrap().len(), 2);
        assert_eq!(msgs[2]["content"][1]["tool_use_id"], "t2");
    }

    #[test]
    fn endpoint_tolerates_a_v1_suffix() {
        let t = Transport {
            client: reqwest::Client::new(),
            policy: Default::default(),
            breakers: gathering_resilience::Breakers::new(
                Default::default(),
                std::sync::Arc::new(gathering_domain::SystemClock),
            ),
            breaker_key: "test".into(),
            provider: "anthropic".into(),
        };
        let m = Anthropic::new("https://api.anthropic.com/v1/", "k".into(), t);
        assert_eq!(m.endpoint, "https://api.anthropic.com/v1/messages");
    }
}
