//! Providers against a real HTTP server on 127.0.0.1 answering in each provider's format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_domain::agents::Provider;
use gathering_llm::http::RetryPolicy;
use gathering_llm::model::collect_stream;
use gathering_llm::settings::Credentials;
use gathering_llm::test_support::{FakeProvider, Recorded, Reply};
use gathering_llm::{
    ChatModel, ChatRequest, HttpModelFactory, LlmError, Message, ModelFactory, Retries, ToolSchema,
};
use gathering_resilience::{BreakerConfig, Breakers};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn factory_with(
    attempts: u32,
    breaker_failures: u32,
    request_timeout: Duration,
) -> HttpModelFactory {
    HttpModelFactory::with_client(
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
        gathering_llm::http::build_guarded_client(Duration::from_secs(2), Duration::from_secs(10))
            .unwrap(),
        &[],
        RetryPolicy {
            max_attempts: attempts,
            base_backoff: Duration::from_millis(10),
            max_wait: Duration::from_secs(5),
            request_timeout,
        },
        Breakers::new(
            BreakerConfig {
                failures: breaker_failures,
                cooldown: Duration::from_secs(60),
                max_keys: 16,
            },
            Arc::new(gathering_domain::SystemClock),
        ),
    )
}

fn factory() -> HttpModelFactory {
    factory_with(3, 10, Duration::from_secs(10))
}

fn model(f: &HttpModelFactory, p: Provider, base: &str, key: Option<&str>) -> Arc<dyn ChatModel> {
    f.model(&Credentials {
        provider: p,
        base_url: base.to_owned(),
        api_key: key.map(str::to_owned),
        user_base_url: false,
    })
    .unwrap()
}

fn request() -> ChatRequest {
    let mut r = ChatRequest::new(
        "model-x",
        vec![
            Message::System("You are terse.".into()),
            Message::User("Hello?".into()),
        ],
    );
    r.temperature = Some(0.2);
    r
}

fn oa_reply(text: &str) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "model-x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    })
}

fn an_reply(text: &str) -> Value {
    json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "model-x",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 21, "output_tokens": 5}
    })
}

async fn chat(
    m: &Arc<dyn ChatModel>,
    r: &ChatRequest,
) -> Result<gathering_llm::ChatResponse, LlmError> {
    tokio::time::timeout(T, m.chat(r)).await.expect("timely")
}

#[tokio::test]
async fn openai_plain_reply_returns_text_and_usage() {
    let srv = FakeProvider::script(vec![Reply::json(200, oa_reply("Hi."))])
        .await
        .unwrap();
    let f = factory();
    let m = model(
        &f,
        Provider::OpenAi,
        &format!("{}/v1", srv.base_url),
        Some("sk-test"),
    );
    let r = chat(&m, &request()).await.unwrap();
    assert_eq!(r.text, "Hi.");
    assert_eq!(r.usage.prompt_tokens, 11);
    assert_eq!(r.usage.completion_tokens, 3);
    let rec = &srv.recorded()[0];
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(rec.headers["authorization"], "Bearer sk-test");
    assert_eq!(rec.body["model"], "model-x");
    assert_eq!(rec.body["messages"][0]["role"], "system");
    assert_eq!(rec.body["temperature"], 0.2);
}

#[tokio::test]
async fn openai_tool_call_is_parsed_and_tools_are_sent() {
    let srv = FakeProvider::script(vec![Reply::json(
        200,
        json!({
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 9}
        }),
    )])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::DeepSeek, &srv.base_url, Some("sk-ds"));
    let mut req = request();
    req.tools = vec![ToolSchema {
        name: "get_weather".into(),
        description: "Weather of a city".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    }];
    let r = chat(&m, &req).await.unwrap();
    assert_eq!(r.text, "");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "call_1");
    assert_eq!(r.tool_calls[0].arguments, json!({"city": "Paris"}));
    assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
    let rec = &srv.recorded()[0];
    assert_eq!(
        rec.path, "/chat/completions",
        "DeepSeek base URL has no /v1"
    );
    assert_eq!(rec.body["tools"][0]["type"], "function");
    assert_eq!(rec.body["tools"][0]["function"]["name"], "get_weather");
}

#[tokio::test]
async fn openai_stream_yields_text_tool_call_and_usage() {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "c", "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let srv = FakeProvider::script(vec![Reply::sse(&[
        (None, chunk(json!({"role": "assistant", "content": ""}), Value::Null)),
        (None, chunk(json!({"content": "Hel"}), Value::Null)),
        (None, chunk(json!({"content": "lo"}), Value::Null)),
        (None, chunk(json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
            "function": {"name": "echo", "arguments": ""}}]}), Value::Null)),
        (None, chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":"}}]}), Value::Null)),
        (None, chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "42}"}}]}), Value::Null)),
        (None, chunk(json!({}), json!("tool_calls"))),
        (None, json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 4}}).to_string()),
        (None, "[DONE]".to_owned()),
    ])])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::OpenAi, &srv.base_url, Some("k"));
    let stream = tokio::time::timeout(T, m.chat_stream(&request()))
        .await
        .unwrap()
        .unwrap();
    let r = tokio::time::timeout(T, collect_stream(stream))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.text, "Hello");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].name, "echo");
    assert_eq!(r.tool_calls[0].arguments, json!({"x": 42}));
    assert_eq!(r.usage.prompt_tokens, 8);
    assert_eq!(r.usage.completion_tokens, 4);
    let rec = &srv.recorded()[0];
    assert_eq!(rec.body["stream"], true);
    assert_eq!(rec.body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn stream_cut_before_done_is_an_error() {
    let srv = FakeProvider::script(vec![Reply::sse(&[(
        None,
        json!({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}).to_string(),
    )])])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::OpenAi, &srv.base_url, Some("k"));
    let stream = m.chat_stream(&request()).await.unwrap();
    let err = tokio::time::timeout(T, collect_stream(stream))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, LlmError::Malformed { .. }), "{err:?}");
}

#[tokio::test]
async fn openai_401_is_unauthorized_with_the_providers_message_and_not_retried() {
    let srv = FakeProvider::script(vec![Reply::json(
        401,
        json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                         "code": "invalid_api_key"}}),
    )])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::OpenAi, &srv.base_url, Some("bad"));
    let err = chat(&m, &request()).await.unwrap_err();
    match &err {
        LlmError::Unauthorized { provider, message } => {
            assert_eq!(provider, "openai");
            assert_eq!(message, "Incorrect API key provided");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(srv.recorded().len(), 1);
    assert!(!err.retryable());
}

#[tokio::test]
async fn openai_429_with_retry_after_waits_then_succeeds() {
    let srv = FakeProvider::script(vec![
        Reply::json(429, json!({"error": {"message": "Rate limit reached"}}))
            .header("retry-after", "1"),
        Reply::json(200, oa_reply("after the wait")),
    ])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::OpenAi, &srv.base_url, Some("k"));
    let started = Instant::now();
    let r = chat(&m, &request()).await.unwrap();
    assert_eq!(r.text, "after the wait");
    assert_eq!(srv.recorded().len(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After honoured"
    );
}

#[tokio::test]
async fn retry_after_beyond_the_bound_fails_fast_with_rate_limited() {
    let srv = FakeProvider::script(vec![
        Reply::json(429, json!({"error": {"message": "slow down"}})).header("retry-after", "3600"),
    ])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::OpenAi, &srv.base_url, Some("k"));
    let err = chat(&m, &request()).await.unwrap_err();
    match err {
        LlmError::RateLimited { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(3600)))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(srv.recorded().len(), 1);
}

#[tokio::test]
async fn openai_500_then_success_is_retried() {
    let srv = FakeProvider::script(vec![
        Reply::json(500, json!({"error": {"message": "server had an error"}})),
        Reply::json(502, json!({"error": {"message": "bad gateway"}})),
        Reply::json(200, oa_reply("third time")),
    ])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::OpenAi, &srv.base_url, Some("k"));
    let r = chat(&m, &request()).await.unwrap();
    assert_eq!(r.text, "third time");
    assert_eq!(srv.recorded().len(), 3);
}

#[tokio::test]
async fn persistent_500_fails_after_bounded_attempts() {
    let srv = FakeProvider::script(vec![Reply::json(
        503,
        json!({"error": {"message": "down"}}),
    )])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::OpenAi, &srv.base_url, Some("k"));
    let err = chat(&m, &request()).await.unwrap_err();
    assert!(
        matches!(err, LlmError::Status { status: 503, .. }),
        "{err:?}"
    );
    assert!(err.retryable());
    assert_eq!(srv.recorded().len(), 3);
}

#[tokio::test]
async fn malformed_json_is_a_clear_error_not_a_panic() {
    let srv = FakeProvider::script(vec![
        Reply::raw(200, "application/json", "{\"choices\": [ {\"message\": "),
        Reply::json(200, json!({"choices": []})),
        Reply::raw(200, "application/json", "not json at all"),
    ])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::OpenAi, &srv.base_url, Some("k"));
    for _ in 0..2 {
        let err = chat(&m, &request()).await.unwrap_err();
        assert!(matches!(err, LlmError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("openai sent a malformed response"));
    }
    let a = model(&f, Provider::Anthropic, &srv.base_url, Some("k"));
    let err = chat(&a, &request()).await.unwrap_err();
    assert!(matches!(err, LlmError::Malformed { .. }), "{err:?}");
}

#[tokio::test]
async fn ollama_needs_no_key_and_gets_the_v1_path() {
    let srv = FakeProvider::script(vec![Reply::json(200, oa_reply("local"))])
        .await
        .unwrap();
    let f = factory();
    let m = model(&f, Provider::Ollama, &srv.base_url, None);
    assert_eq!(chat(&m, &request()).await.unwrap().text, "local");
    let rec = &srv.recorded()[0];
    assert_eq!(rec.path, "/v1/chat/completions");
    assert!(!rec.headers.contains_key("authorization"));
}

#[tokio::test]
async fn breaker_opens_after_consecutive_failures_and_stops_calling() {
    let srv = FakeProvider::script(vec![Reply::json(
        500,
        json!({"error": {"message": "boom"}}),
    )])
    .await
    .unwrap();
    let f = factory_with(1, 2, Duration::from_secs(10));
    let m = model(&f, Provider::OpenAi, &srv.base_url, Some("k"));
    for _ in 0..2 {
        assert!(matches!(
            chat(&m, &request()).await.unwrap_err(),
            LlmError::Status { .. }
        ));
    }
    let err = chat(&m, &request()).await.unwrap_err();
    assert!(matches!(err, LlmError::CircuitOpen { .. }), "{err:?}");
    assert_eq!(srv.recorded().len(), 2, "no call while the circuit is open");
    // Another endpoint of the same provider has its own breaker.
    let other = FakeProvider::script(vec![Reply::json(200, oa_reply("fine"))])
        .await
        .unwrap();
    let m2 = model(&f, Provider::OpenAi, &other.base_url, Some("k"));
    assert_eq!(chat(&m2, &request()).await.unwrap().text, "fine");
}

#[tokio::test]
async fn a_silent_provider_times_out() {
    // Takes the request and never answers.
    let silent = gathering_store::test_support::loopback::Loopback::held(|_| unreachable!()).await;
    let f = factory_with(1, 10, Duration::from_millis(300));
    let m = model(&f, Provider::OpenAi, &silent.url(""), Some("k"));
    let err = chat(&m, &request()).await.unwrap_err();
    assert!(matches!(err, LlmError::Timeout { .. }), "{err:?}");
    assert_eq!(
        silent.requests(),
        1,
        "the request reached the silent provider"
    );
}

#[tokio::test]
async fn anthropic_reply_uses_messages_api_headers_and_top_level_system() {
    let srv = FakeProvider::script(vec![Reply::json(200, an_reply("Bonjour."))])
        .await
        .unwrap();
    let f = factory();
    let m = model(&f, Provider::Anthropic, &srv.base_url, Some("sk-ant-1"));
    let r = chat(&m, &request()).await.unwrap();
    assert_eq!(r.text, "Bonjour.");
    assert_eq!(r.usage.prompt_tokens, 21);
    assert_eq!(r.usage.completion_tokens, 5);
    assert_eq!(r.finish_reason.as_deref(), Some("end_turn"));
    let rec = &srv.recorded()[0];
    assert_eq!(rec.path, "/v1/messages");
    assert_eq!(rec.headers["x-api-key"], "sk-ant-1");
    assert_eq!(rec.headers["anthropic-version"], "2023-06-01");
    assert!(!rec.headers.contains_key("authorization"));
    assert_eq!(rec.body["system"], "You are terse.");
    assert_eq!(rec.body["messages"][0]["role"], "user");
    assert_eq!(rec.body["messages"][0]["content"][0]["text"], "Hello?");
    assert!(rec.body["max_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn anthropic_tool_use_is_parsed() {
    let srv = FakeProvider::script(vec![Reply::json(
        200,
        json!({
            "id": "msg_2", "type": "message", "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                 "input": {"city": "Lyon"}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 40, "output_tokens": 12}
        }),
    )])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::Anthropic, &srv.base_url, Some("k"));
    let mut req = request();
    req.tools = vec![ToolSchema {
        name: "get_weather".into(),
        description: "Weather".into(),
        parameters: json!({"type": "object"}),
    }];
    let r = chat(&m, &req).await.unwrap();
    assert_eq!(r.text, "Let me check.");
    assert_eq!(r.tool_calls[0].id, "toolu_01");
    assert_eq!(r.tool_calls[0].arguments, json!({"city": "Lyon"}));
    assert_eq!(
        srv.recorded()[0].body["tools"][0]["input_schema"],
        json!({"type": "object"})
    );
}

#[tokio::test]
async fn anthropic_stream_yields_text_tool_use_and_usage() {
    fn ev(e: &'static str, d: Value) -> (Option<&'static str>, String) {
        (Some(e), d.to_string())
    }
    let events = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "m", "type": "message",
            "role": "assistant", "content": [], "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Hi"}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": " there"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_9", "name": "echo", "input": {}}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{\"v\": "}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "true}"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 15}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ];
    let srv = FakeProvider::script(vec![Reply::sse(&events)])
        .await
        .unwrap();
    let f = factory();
    let m = model(&f, Provider::Anthropic, &srv.base_url, Some("k"));
    let stream = m.chat_stream(&request()).await.unwrap();
    let r = tokio::time::timeout(T, collect_stream(stream))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.text, "Hi there");
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "toolu_9");
    assert_eq!(r.tool_calls[0].arguments, json!({"v": true}));
    assert_eq!(r.usage.prompt_tokens, 25);
    assert_eq!(r.usage.completion_tokens, 15);
    assert_eq!(r.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(srv.recorded()[0].body["stream"], true);
}

#[tokio::test]
async fn anthropic_stream_error_event_is_reported() {
    let srv = FakeProvider::script(vec![Reply::sse(&[
        (Some("message_start"), json!({"type": "message_start", "message": {"usage": {"input_tokens": 1}}}).to_string()),
        (Some("error"), json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).to_string()),
    ])])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::Anthropic, &srv.base_url, Some("k"));
    let stream = m.chat_stream(&request()).await.unwrap();
    let err = tokio::time::timeout(T, collect_stream(stream))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, LlmError::Status { status: 529, ref message, .. } if message == "Overloaded"),
        "{err:?}"
    );
}

#[tokio::test]
async fn anthropic_401_and_overloaded_then_success() {
    let srv = FakeProvider::script(vec![Reply::json(
        401,
        json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
    )])
    .await
    .unwrap();
    let f = factory();
    let m = model(&f, Provider::Anthropic, &srv.base_url, Some("bad"));
    let err = chat(&m, &request()).await.unwrap_err();
    assert!(
        matches!(err, LlmError::Unauthorized { ref message, .. } if message == "invalid x-api-key"),
        "{err:?}"
    );

    let srv = FakeProvider::script(vec![
        Reply::json(529, json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
        Reply::json(200, an_reply("recovered")),
    ])
    .await
    .unwrap();
    let m = model(&f, Provider::Anthropic, &srv.base_url, Some("k"));
    assert_eq!(chat(&m, &request()).await.unwrap().text, "recovered");
    assert_eq!(srv.recorded().len(), 2);
}

fn bearer(r: &Recorded) -> &str {
    r.headers
        .get("authorization")
        .map(String::as_str)
        .unwrap_or("")
}

#[tokio::test]
async fn a_rate_limited_key_never_pauses_another_key_on_the_same_provider() {
    let srv = FakeProvider::start(|r, _| {
        if bearer(r) == "Bearer key-a" {
            Reply::json(429, json!({"error": {"message": "Rate limit reached"}}))
        } else {
            Reply::json(200, oa_reply("b is fine"))
        }
    })
    .await
    .unwrap();
    let f = factory_with(1, 2, Duration::from_secs(10));
    let a = model(&f, Provider::OpenAi, &srv.base_url, Some("key-a"));
    let b = model(&f, Provider::OpenAi, &srv.base_url, Some("key-b"));
    for _ in 0..2 {
        let err = chat(&a, &request()).await.unwrap_err();
        assert!(matches!(err, LlmError::RateLimited { .. }), "{err:?}");
    }
    let err = chat(&a, &request()).await.unwrap_err();
    assert!(
        matches!(err, LlmError::CircuitOpen { .. }),
        "the 429s count against key A's own breaker: {err:?}"
    );
    assert_eq!(srv.recorded().len(), 2);
    for _ in 0..3 {
        assert_eq!(chat(&b, &request()).await.unwrap().text, "b is fine");
    }
    assert_eq!(srv.recorded().len(), 5, "key B's calls all went out");
}

#[tokio::test]
async fn a_rejected_key_never_opens_a_circuit() {
    let srv = FakeProvider::start(|r, _| {
        if bearer(r) == "Bearer revoked" {
            Reply::json(
                401,
                json!({"error": {"message": "Incorrect API key provided"}}),
            )
        } else {
            Reply::json(200, oa_reply("fine"))
        }
    })
    .await
    .unwrap();
    let f = factory_with(1, 2, Duration::from_secs(10));
    let a = model(&f, Provider::OpenAi, &srv.base_url, Some("revoked"));
    for _ in 0..6 {
        let err = chat(&a, &request()).await.unwrap_err();
        assert!(matches!(err, LlmError::Unauthorized { .. }), "{err:?}");
    }
    assert_eq!(srv.recorded().len(), 6, "every call reached the provider");
    assert_eq!(f.breakers().tracked(), 0);
    let b = model(&f, Provider::OpenAi, &srv.base_url, Some("good"));
    assert_eq!(chat(&b, &request()).await.unwrap().text, "fine");
}

#[tokio::test]
async fn a_callers_own_deadline_never_counts_against_the_provider() {
    let srv = FakeProvider::start(|_, n| {
        if n < 4 {
            Reply::json(200, oa_reply("too late")).after(Duration::from_secs(30))
        } else {
            Reply::json(200, oa_reply("in time"))
        }
    })
    .await
    .unwrap();
    let f = factory_with(1, 2, Duration::from_secs(60));
    let m = model(&f, Provider::OpenAi, &srv.base_url, Some("k"));
    for n in 1..=4 {
        // The caller (e.g. a node with a tiny `timeout_ms`) gives up first.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), m.chat(&request()))
                .await
                .is_err()
        );
        let deadline = Instant::now() + T;
        while srv.recorded().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(f.breakers().tracked(), 0);
    assert_eq!(chat(&m, &request()).await.unwrap().text, "in time");
}

#[tokio::test]
async fn a_transport_for_a_retrying_caller_makes_one_attempt() {
    let srv = FakeProvider::script(vec![
        Reply::json(503, json!({"error": {"message": "down"}})),
        Reply::json(200, oa_reply("second")),
    ])
    .await
    .unwrap();
    let f = factory();
    let creds = Credentials {
        provider: Provider::OpenAi,
        base_url: srv.base_url.clone(),
        api_key: Some("k".into()),
        user_base_url: false,
    };
    let once = f.model_with(&creds, Retries::Caller).unwrap();
    let err = chat(&once, &request()).await.unwrap_err();
    assert!(
        matches!(err, LlmError::Status { status: 503, .. }),
        "{err:?}"
    );
    assert!(err.retryable(), "the caller is told to retry");
    assert_eq!(srv.recorded().len(), 1);
    let interactive = f.model(&creds).unwrap();
    assert_eq!(chat(&interactive, &request()).await.unwrap().text, "second");
}
