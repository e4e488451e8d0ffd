//! OpenAI chat completions, also spoken by DeepSeek and Ollama (`/v1/chat/completions`).

use crate::error::LlmError;
use crate::http::Transport;
use crate::model::{
    ChatModel, ChatRequest, ChatResponse, DeltaStream, Message, StreamDelta, ToolCall,
    parse_arguments,
};
use crate::sse::{Decoded, SseEvent, decode_stream};
use async_trait::async_trait;
use gathering_domain::agents::{Provider, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

pub struct OpenAiCompatible {
    provider: Provider,
    endpoint: String,
    api_key: Option<String>,
    transport: Transport,
}

impl OpenAiCompatible {
    /// `base_url` like `https://api.openai.com/v1`; for Ollama a URL without `/v1` gets it added.
    pub fn new(
        provider: Provider,
        base_url: &str,
        api_key: Option<String>,
        transport: Transport,
    ) -> Self {
        let mut base = base_url.trim_end_matches('/').to_owned();
        if provider == Provider::Ollama && !base.ends_with("/v1") {
            base.push_str("/v1");
        }
        Self {
            provider,
            endpoint: format!("{base}/chat/completions"),
            api_key,
            transport,
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        match &self.api_key {
            Some(k) => vec![("authorization", format!("Bearer {k}"))],
            None => Vec::new(),
        }
    }

    fn name(&self) -> String {
        self.provider.as_str().to_owned()
    }
}

pub fn request_body(req: &ChatRequest, stream: bool) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| match m {
            Message::System(t) => json!({"role": "system", "content": t}),
            Message::User(t) => json!({"role": "user", "content": t}),
            Message::Assistant { text, tool_calls } if tool_calls.is_empty() => {
                json!({"role": "assistant", "content": text})
            }
            Message::Assistant { text, tool_calls } => json!({
                "role": "assistant",
                "content": if text.is_empty() { Value::Null } else { Value::String(text.clone()) },
                "tool_calls": tool_calls.iter().map(|c| json!({
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": c.name,
                        "arguments": match &c.arguments {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        },
                    },
                })).collect::<Vec<_>>(),
            }),
            Message::Tool {
                call_id, content, ..
            } => json!({"role": "tool", "tool_call_id": call_id, "content": content}),
        })
        .collect();
    let mut body = json!({"model": req.model, "messages": messages});
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(n) = req.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect();
    }
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[derive(Deserialize)]
struct OaResponse {
    #[serde(default)]
    choices: Vec<OaChoice>,
    usage: Option<OaUsage>,
}

#[derive(Deserialize)]
struct OaChoice {
    message: OaMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct OaMessage {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<OaToolCall>,
}

#[derive(Deserialize)]
struct OaToolCall {
    id: String,
    function: OaFunction,
}

#[derive(Deserialize)]
struct OaFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize, Default)]
struct OaUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct OaChunk {
    #[serde(default)]
    choices: Vec<OaChunkChoice>,
    usage: Option<OaUsage>,
}

#[derive(Deserialize)]
struct OaChunkChoice {
    #[serde(default)]
    delta: OaDelta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct OaDelta {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<OaDeltaCall>,
}

#[derive(Deserialize)]
struct OaDeltaCall {
    #[serde(default)]
    index: usize,
    id: Option<String>,
    function: Option<OaDeltaFunction>,
}

#[derive(Deserialize)]
struct OaDeltaFunction {
    name: Option<String>,
    arguments: Option<String>,
}

fn parse_response(provider: &str, v: OaResponse) -> Result<ChatResponse, LlmError> {
    let choice = v
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| LlmError::malformed(provider, "the response has no choices"))?;
    let usage = v.usage.unwrap_or_default();
    Ok(ChatResponse {
        text: choice.message.content.unwrap_or_default(),
        tool_calls: choice
            .message
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.function.name,
                arguments: parse_arguments(&c.function.arguments),
            })
            .collect(),
        usage: Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        },
        finish_reason: choice.finish_reason,
    })
}

/// One `data:` event of a streamed completion.
pub fn decode_event(provider: &str, ev: SseEvent) -> Decoded {
    let data = ev.data.trim();
    if data == "[DONE]" {
        return Ok((Vec::new(), true));
    }
    if data.is_empty() {
        return Ok((Vec::new(), false));
    }
    let v: Value = serde_json::from_str(data)
        .map_err(|e| LlmError::malformed(provider, format!("invalid stream event: {e}")))?;
    if let Some(err) = v.get("error") {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("stream error")
            .to_owned();
        return Err(LlmError::Status {
            provider: provider.to_owned(),
            status: 500,
            message,
        });
    }
    let chunk: OaChunk = serde_json::from_value(v)
        .map_err(|e| LlmError::malformed(provider, format!("invalid stream event: {e}")))?;
    let mut out = Vec::new();
    for choice in chunk.choices {
        if let Some(t) = choice.delta.content
            && !t.is_empty()
        {
            out.push(StreamDelta::Text(t));
        }
        for call in choice.delta.tool_calls {
            let (name, args) = match call.function {
                Some(f) => (f.name, f.arguments),
                None => (None, None),
            };
            if call.id.is_some() || name.is_some() {
                out.push(StreamDelta::ToolCallStart {
                    index: call.index,
                    id: call.id.unwrap_or_default(),
                    name: name.unwrap_or_default(),
                });
            }
            if let Some(a) = args
                && !a.is_empty()
            {
                out.push(StreamDelta::ToolCallArguments {
                    index: call.index,
                    fragment: a,
                });
            }
        }
        if let Some(r) = choice.finish_reason {
            out.push(StreamDelta::Finish(r));
        }
    }
    if let Some(u) = chunk.usage {
        out.push(StreamDelta::Usage(Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }));
    }
    Ok((out, false))
}

#[async_trait]
impl ChatModel for OpenAiCompatible {
    fn provider(&self) -> Provider {
        self.provider
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
        let v: OaResponse = self.transport.json_body(resp).await?;
        parse_response(&self.name(), v)
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
        let name = self.name();
        let n2 = name.clone();
        Ok(decode_stream(
            Box::pin(resp.bytes_stream()),
            name,
            move |ev| decode_event(&n2, ev),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::model::ToolSchema;

    #[test]
    fn body_carries_tools_tool_calls_and_tool_results() {
        let mut req = ChatRequest::new(
            "gpt-x",
            vec![
                Message::System("be brief".into()),
                Message::User("hi".into()),
                Message::Assistant {
                    text: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "echo".into(),
                        arguments: json!({"a": 1}),
                    }],
                },
                Message::Tool {
                    call_id: "c1".into(),
                    name: "echo".into(),
                    content: "{\"a\":1}".into(),
                },
            ],
        );
        req.temperature = Some(0.3);
        req.tools = vec![ToolSchema {
            name: "echo".into(),
            description: "Echoes".into(),
            parameters: json!({"type": "object"}),
        }];
        let b = request_body(&req, true);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][2]["content"], Value::Null);
        assert_eq!(
            b["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(b["messages"][3]["tool_call_id"], "c1");
        assert_eq!(b["tools"][0]["function"]["name"], "echo");
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["temperature"], 0.3);
    }

    #[test]
    fn ollama_base_url_gets_v1() {
        let t = Transport {
            client: reqwest::Client::new(),
            policy: Default::default(),
            breakers: gathering_resilience::Breakers::new(
                Default::default(),
                std::sync::Arc::new(gathering_domain::SystemClock),
            ),
            breaker_key: "test".into(),
            provider: "ollama".into(),
        };
        let m = OpenAiCompatible::new(Provider::Ollama, "http://h:11434/", None, t.clone());
        assert_eq!(m.endpoint, "http://h:11434/v1/chat/completions");
        let m = OpenAiCompatible::new(Provider::DeepSeek, "https://api.deepseek.com", None, t);
        assert_eq!(m.endpoint, "https://api.deepseek.com/chat/completions");
    }
}
