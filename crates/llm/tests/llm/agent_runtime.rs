//! The agent runtime and circles on the real PostgreSQL, talking to a fake provider over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use gathering_domain::agents::{
    AgentRequest, AgentRunner, Provider, ProviderSettingChange, ProviderSettingsRepository,
    TaskStatus,
};
use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::tools::{ToolContext, ToolError, ToolInvoker};
use gathering_domain::{ErrorCode, ErrorKind};
use gathering_llm::service::{AgentInput, AgentService};
use gathering_llm::test_support::{FakeProvider, Recorded, Reply};
use gathering_llm::{
    CircleService, HttpModelFactory, LlmConfig, LlmError, SecretKey, SettingsService, ToolCatalog,
    ToolSchema,
};
use gathering_store::agents::PgAgentStore;
use gathering_store::pool::conn;
use gathering_store::test_support::TestDb;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);

struct Env {
    db: TestDb,
    store: PgAgentStore,
    agents: Arc<AgentService>,
    settings: Arc<SettingsService>,
    owner: Uuid,
}

struct Echo {
    calls: Mutex<Vec<(Uuid, String, Value)>>,
}

#[async_trait]
impl ToolInvoker for Echo {
    async fn invoke(
        &self,
        ctx: &ToolContext,
        name: &str,
        params: Value,
    ) -> Result<Value, ToolError> {
        self.calls
            .lock()
            .push((ctx.user_id, name.to_owned(), params.clone()));
        match name {
            "echo" => Ok(json!({"echoed": params})),
            other => Err(ToolError::UnknownTool(other.to_owned())),
        }
    }
}

impl ToolCatalog for Echo {
    fn tool_schemas(&self) -> Vec<ToolSchema> {
        ["echo", "secret"]
            .into_iter()
            .map(|n| ToolSchema {
                name: n.into(),
                description: format!("{n} tool"),
                parameters: json!({"type": "object"}),
            })
            .collect()
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl EventPublisher for Recorder {
    fn publish(&self, event: Event) {
        self.0.lock().push(event);
    }
}

async fn env(config: LlmConfig, tools: Option<Arc<Echo>>) -> Env {
    let db = TestDb::new().await.unwrap();
    let store = PgAgentStore::new(db.pool.clone());
    let mut config = config;
    config.max_attempts = 1;
    let settings = Arc::new(SettingsService::new(
        Arc::new(store.clone()),
        SecretKey::generate(),
        config.clone(),
    ));
    let mut svc = AgentService::new(
        Arc::new(store.clone()),
        settings.clone(),
        Arc::new(HttpModelFactory::new(&config).unwrap()),
    );
    if let Some(t) = tools {
        svc = svc.with_tools(t.clone(), t);
    }
    let owner = db.user().await;
    Env {
        db,
        store,
        agents: Arc::new(svc),
        settings,
        owner,
    }
}

fn oa(text: &str) -> Reply {
    Reply::json(
        200,
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
               "finish_reason": "stop"}], "usage": {"prompt_tokens": 10, "completion_tokens": 2}}),
    )
}

/// `127.0.0.1:PORT` of a fake provider's `http://127.0.0.1:PORT`.
fn host_port(base_url: &str) -> String {
    base_url.trim_start_matches("http://").to_owned()
}

fn config_for(provider_url: &str) -> LlmConfig {
    let mut c = LlmConfig::default();
    c.openai.base_url = provider_url.to_owned();
    c.openai.api_key = Some("env-key-000000".into());
    c
}

fn agent_input(name: &str, tools: Vec<String>) -> AgentInput {
    AgentInput {
        name: name.into(),
        persona: format!("You are {name}, a careful assistant."),
        provider: "openai".into(),
        model: "gpt-test".into(),
        temperature: Some(0.4),
        tools,
    }
}

fn roles(r: &Recorded) -> Vec<String> {
    r.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn chat_sends_persona_and_history_and_persists_every_message_with_usage() {
    let srv = FakeProvider::script(vec![oa("Hello Ada."), oa("You said hi.")])
        .await
        .unwrap();
    let e = env(config_for(&srv.base_url), None).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    let first = tokio::time::timeout(T, e.agents.chat(e.owner, agent.id, "hi".into(), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.reply, "Hello Ada.");
    assert_eq!(first.usage.prompt_tokens, 10);
    let second = e
        .agents
        .chat(
            e.owner,
            agent.id,
            "what did I say?".into(),
            Some(first.session_id),
        )
        .await
        .unwrap();
    assert_eq!(second.session_id, first.session_id);
    let reqs = srv.recorded();
    assert_eq!(roles(&reqs[0]), vec!["system", "user"]);
    assert_eq!(
        reqs[0].body["messages"][0]["content"],
        "You are ada, a careful assistant."
    );
    assert_eq!(roles(&reqs[1]), vec!["system", "user", "assistant", "user"]);
    assert_eq!(reqs[1].body["messages"][2]["content"], "Hello Ada.");
    assert_eq!(reqs[1].body["temperature"], 0.4);
    assert_eq!(reqs[1].headers["authorization"], "Bearer env-key-000000");

    let c = conn(&e.db.pool).await.unwrap();
    let rows = c
        .query(
            "SELECT role, content, completion_tokens FROM agents.chat_messages \
             WHERE session_id = $1 ORDER BY id",
            &[&first.session_id],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got.len(), 4);
    assert_eq!(got[1], ("assistant".into(), "Hello Ada.".into(), 2));
    assert_eq!(got[3].1, "You said hi.");
}

#[tokio::test]
async fn history_is_bounded_by_the_message_budget() {
    let srv = FakeProvider::script(vec![oa("ok")]).await.unwrap();
    let mut cfg = config_for(&srv.base_url);
    cfg.history_messages = 2;
    let e = env(cfg, None).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    let s = e
        .agents
        .chat(e.owner, agent.id, "one".into(), None)
        .await
        .unwrap();
    for m in ["two", "three"] {
        e.agents
            .chat(e.owner, agent.id, m.into(), Some(s.session_id))
            .await
            .unwrap();
    }
    let last = srv.recorded().pop().unwrap();
    // system + the last two stored messages (user "two", assistant "ok") + the new message
    assert_eq!(roles(&last), vec!["system", "user", "assistant", "user"]);
    assert_eq!(last.body["messages"][1]["content"], "two");
}

#[tokio::test]
async fn relevant_memories_are_recalled_into_the_system_prompt() {
    let srv = FakeProvider::script(vec![oa("Miso!")]).await.unwrap();
    let e = env(config_for(&srv.base_url), None).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    e.agents
        .add_memory(e.owner, agent.id, "The user's cat is named Miso".into())
        .await
        .unwrap();
    e.agents
        .add_memory(e.owner, agent.id, "The user lives in Lyon".into())
        .await
        .unwrap();
    e.agents
        .chat(e.owner, agent.id, "What is my cat called?".into(), None)
        .await
        .unwrap();
    let system = srv.recorded()[0].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(system.contains("cat is named Miso"), "{system}");
    assert!(!system.contains("Lyon"), "{system}");
}

#[tokio::test]
async fn no_key_anywhere_is_not_configured_and_calls_nothing() {
    let srv = FakeProvider::script(vec![oa("never")]).await.unwrap();
    let mut cfg = config_for(&srv.base_url);
    cfg.openai.api_key = None;
    let e = env(cfg, None).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    let err = e
        .agents
        .chat(e.owner, agent.id, "hi".into(), None)
        .await
        .unwrap_err();
    match &err {
        LlmError::NotConfigured(m) => assert!(m.contains("no API key for openai"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(srv.recorded().is_empty());
    let runner: Arc<dyn AgentRunner> = e.agents.clone();
    let err = runner
        .run(AgentRequest {
            owner_id: e.owner,
            agent_id: agent.id,
            prompt: "hi".into(),
            session_id: None,
            idempotency_key: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        gathering_domain::agents::AgentError::NotConfigured(_)
    ));
}

#[tokio::test]
async fn the_users_own_key_and_url_win_over_the_environment() {
    let env_srv = FakeProvider::script(vec![oa("from env")]).await.unwrap();
    let user_srv = FakeProvider::script(vec![oa("from user")]).await.unwrap();
    // The user's endpoint is on loopback: allowed only because the operator allow-listed it.
    let mut cfg = config_for(&env_srv.base_url);
    cfg.http_allowed_hosts = vec![host_port(&user_srv.base_url)];
    let e = env(cfg, None).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    e.settings
        .put(
            e.owner,
            gathering_domain::agents::Provider::OpenAi,
            Some("sk-user-abcdef3456".into()),
            Some(user_srv.base_url.clone()),
        )
        .await
        .unwrap();
    let out = e
        .agents
        .chat(e.owner, agent.id, "hi".into(), None)
        .await
        .unwrap();
    assert_eq!(out.reply, "from user");
    assert!(env_srv.recorded().is_empty());
    assert_eq!(
        user_srv.recorded()[0].headers["authorization"],
        "Bearer sk-user-abcdef3456"
    );
    // Stored encrypted; listed only as a hint.
    let c = conn(&e.db.pool).await.unwrap();
    let blob: Vec<u8> = c
        .query_one(
            "SELECT api_key_encrypted FROM agents.provider_settings",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!blob.windows(6).any(|w| w == b"abcdef"));
    let views = e.settings.list(e.owner).await.unwrap();
    let openai = views
        .iter()
        .find(|v| v.provider.as_str() == "openai")
        .unwrap();
    assert!(openai.key_set);
    assert_eq!(openai.key_hint.as_deref(), Some("…3456"));
    assert_eq!(openai.base_url, user_srv.base_url);
}

#[tokio::test]
async fn the_operators_key_is_never_sent_to_a_users_base_url() {
    let op_srv = FakeProvider::script(vec![oa("from operator")])
        .await
        .unwrap();
    let user_srv = FakeProvider::script(vec![oa("from user")]).await.unwrap();
    // The user's endpoint is on loopback: allowed only because the operator allow-listed it.
    let mut cfg = config_for(&op_srv.base_url);
    cfg.ollama.base_url = op_srv.base_url.clone();
    cfg.ollama.api_key = Some("env-ollama-key-111111".into());
    cfg.http_allowed_hosts = vec![host_port(&user_srv.base_url)];
    let e = env(cfg, None).await;
    let openai = e
        .agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    let ollama = e
        .agents
        .create(
            e.owner,
            AgentInput {
                provider: "ollama".into(),
                ..agent_input("olla", vec![])
            },
        )
        .await
        .unwrap();
    let no_operator_key = |what: &str| {
        for r in user_srv.recorded() {
            for (name, value) in &r.headers {
                assert!(
                    !value.contains("env-key-000000") && !value.contains("env-ollama-key"),
                    "{what}: the operator's key reached the user's URL in `{name}: {value}`"
                );
            }
        }
    };

    // OpenAI needs a key: the user's own URL with no key of theirs fails, nothing is sent.
    for p in [Provider::OpenAi, Provider::Ollama] {
        e.settings
            .put(e.owner, p, None, Some(user_srv.base_url.clone()))
            .await
            .unwrap();
    }
    let err = e
        .agents
        .chat(e.owner, openai.id, "hi".into(), None)
        .await
        .unwrap_err();
    match &err {
        LlmError::NotConfigured(m) => {
            assert!(m.contains("no API key for openai"), "{m}");
            assert!(!m.contains("env-key"), "{m}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(user_srv.recorded().is_empty());
    assert!(op_srv.recorded().is_empty());

    // Ollama needs none: the user's URL is called with no key at all, not the operator's.
    let out = tokio::time::timeout(T, e.agents.chat(e.owner, ollama.id, "hi".into(), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.reply, "from user");
    let reqs = user_srv.recorded();
    assert_eq!(reqs.len(), 1);
    assert!(
        !reqs[0].headers.contains_key("authorization"),
        "{:?}",
        reqs[0].headers
    );
    assert!(!reqs[0].headers.contains_key("x-api-key"));
    no_operator_key("ollama");

    // The user's own key goes to the user's URL.
    e.settings
        .put(
            e.owner,
            Provider::OpenAi,
            Some("sk-user-abcdef3456".into()),
            None,
        )
        .await
        .unwrap();
    let out = e
        .agents
        .chat(e.owner, openai.id, "hi".into(), None)
        .await
        .unwrap();
    assert_eq!(out.reply, "from user");
    let reqs = user_srv.recorded();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].headers["authorization"],
        "Bearer sk-user-abcdef3456"
    );
    no_operator_key("openai with the user's key");
    assert!(op_srv.recorded().is_empty());

    // Back on the operator's URL with no user key: the operator's key goes to the operator.
    e.settings
        .put(
            e.owner,
            Provider::OpenAi,
            Some(String::new()),
            Some(String::new()),
        )
        .await
        .unwrap();
    let out = e
        .agents
        .chat(e.owner, openai.id, "hi".into(), None)
        .await
        .unwrap();
    assert_eq!(out.reply, "from operator");
    let reqs = op_srv.recorded();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].headers["authorization"], "Bearer env-key-000000");
    assert_eq!(user_srv.recorded().len(), 2);
}

#[tokio::test]
async fn agent_runner_port_runs_a_chat() {
    let srv = FakeProvider::script(vec![oa("done")]).await.unwrap();
    let e = env(config_for(&srv.base_url), None).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    let runner: Arc<dyn AgentRunner> = e.agents.clone();
    let out = runner
        .run(AgentRequest {
            owner_id: e.owner,
            agent_id: agent.id,
            prompt: "summarise".into(),
            session_id: None,
            idempotency_key: None,
        })
        .await
        .unwrap();
    assert_eq!(out.text, "done");
    assert!(out.session_id.is_some());
    let other = e.db.user().await;
    let err = runner
        .run(AgentRequest {
            owner_id: other,
            agent_id: agent.id,
            prompt: "x".into(),
            session_id: None,
            idempotency_key: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        gathering_domain::agents::AgentError::NotFound
    ));
}

#[tokio::test]
async fn tool_calls_are_executed_and_fed_back_then_the_answer_is_returned() {
    let srv = FakeProvider::start(|req, n| {
        if n == 0 {
            Reply::json(200, json!({"choices": [{"index": 0, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "echo", "arguments": "{\"v\":7}"}},
                    {"id": "c2", "type": "function", "function": {"name": "secret", "arguments": "{}"}}
                ]}}], "usage": {"prompt_tokens": 5, "completion_tokens": 5}}))
        } else {
            let msgs = req.body["messages"].as_array().unwrap();
            let tool_msgs: Vec<&Value> = msgs.iter().filter(|m| m["role"] == "tool").collect();
            Reply::json(200, json!({"choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": format!("saw {} results", tool_msgs.len())}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3}}))
        }
    })
    .await
    .unwrap();
    let echo = Arc::new(Echo {
        calls: Mutex::new(Vec::new()),
    });
    let e = env(config_for(&srv.base_url), Some(echo.clone())).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec!["echo".into()]))
        .await
        .unwrap();
    let out = e
        .agents
        .chat(e.owner, agent.id, "use the tool".into(), None)
        .await
        .unwrap();
    assert_eq!(out.reply, "saw 2 results");
    assert_eq!(out.usage.prompt_tokens, 12);
    assert_eq!(out.usage.completion_tokens, 8);
    // Only the allowed tool ran, for the owner.
    let calls = echo.calls.lock().clone();
    assert_eq!(calls, vec![(e.owner, "echo".to_owned(), json!({"v": 7}))]);
    let reqs = srv.recorded();
    assert_eq!(
        reqs[0].body["tools"].as_array().unwrap().len(),
        1,
        "only allowed tools offered"
    );
    let msgs = reqs[1].body["messages"].as_array().unwrap();
    let results: Vec<&Value> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(results[0]["tool_call_id"], "c1");
    assert!(
        results[0]["content"]
            .as_str()
            .unwrap()
            .contains("\"echoed\"")
    );
    assert!(
        results[1]["content"]
            .as_str()
            .unwrap()
            .contains("not allowed")
    );
    let c = conn(&e.db.pool).await.unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM agents.chat_messages WHERE session_id = $1",
            &[&out.session_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 5,
        "user, assistant(tool calls), 2 tool results, final answer"
    );
}

#[tokio::test]
async fn tool_turns_are_bounded() {
    let srv = FakeProvider::start(|req, _| {
        if req.body.get("tools").is_some() {
            Reply::json(200, json!({"choices": [{"index": 0, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "echo", "arguments": "{}"}}]}}]}))
        } else {
            Reply::json(200, json!({"choices": [{"index": 0, "message": {"role": "assistant",
                "content": "giving up on tools"}}]}))
        }
    })
    .await
    .unwrap();
    let mut cfg = config_for(&srv.base_url);
    cfg.max_tool_turns = 3;
    let echo = Arc::new(Echo {
        calls: Mutex::new(Vec::new()),
    });
    let e = env(cfg, Some(echo.clone())).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec!["echo".into()]))
        .await
        .unwrap();
    let out = tokio::time::timeout(T, e.agents.chat(e.owner, agent.id, "loop".into(), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.reply, "giving up on tools");
    assert_eq!(srv.recorded().len(), 3);
    assert_eq!(echo.calls.lock().len(), 2);
}

#[tokio::test]
async fn agent_validation_names_the_fields() {
    let e = env(LlmConfig::default(), None).await;
    let err = e
        .agents
        .create(
            e.owner,
            AgentInput {
                name: " ".into(),
                persona: String::new(),
                provider: "gpt".into(),
                model: "m".into(),
                temperature: Some(2.5),
                tools: vec!["echo".into()],
            },
        )
        .await
        .unwrap_err();
    let LlmError::Validation(problems) = err else {
        panic!("{err:?}")
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        vec!["/name", "/temperature", "/provider", "/tools/0"]
    );
}

#[tokio::test]
async fn circle_task_lead_then_members_in_rounds_with_transcript_and_events() {
    let srv = FakeProvider::start(|req, n| {
        let user = req.body["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_owned();
        let text = if user.contains("Write the final result") {
            "FINAL: ship it".to_owned()
        } else {
            format!("contribution {n}")
        };
        Reply::json(
            200,
            json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}),
        )
    })
    .await
    .unwrap();
    let mut cfg = config_for(&srv.base_url);
    cfg.circle_rounds = 2;
    let e = env(cfg, None).await;
    let lead = e
        .agents
        .create(e.owner, agent_input("lead", vec![]))
        .await
        .unwrap();
    let critic = e
        .agents
        .create(e.owner, agent_input("critic", vec![]))
        .await
        .unwrap();
    let events = Arc::new(Recorder::default());
    let circles = CircleService::new(
        Arc::new(e.store.clone()),
        e.agents.clone(),
        events.clone(),
        2,
    );
    let circle = circles
        .create(
            e.owner,
            "council".into(),
            vec![(critic.id, "member".into()), (lead.id, "lead".into())],
        )
        .await
        .unwrap();
    let done = tokio::time::timeout(
        T,
        circles.run_task(e.owner, circle.id, "Plan".into(), "Plan the launch".into()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(done.task.status, TaskStatus::Succeeded);
    assert_eq!(done.task.result.as_deref(), Some("FINAL: ship it"));
    // facilitator, lead, critic x2 rounds, lead's synthesis
    let speakers: Vec<&str> = done.transcript.iter().map(|t| t.speaker.as_str()).collect();
    assert_eq!(
        speakers,
        vec![
            "facilitator",
            "lead (lead)",
            "critic (member)",
            "critic (member)",
            "lead (lead)"
        ]
    );
    assert_eq!(done.transcript[2].round, 1);
    assert_eq!(done.transcript[3].round, 2);
    assert_eq!(srv.recorded().len(), 4);
    let kinds: Vec<String> = events.0.lock().iter().map(|e| e.kind.clone()).collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("circle.task.started")
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("circle.task.finished")
    );
    assert_eq!(kinds.iter().filter(|k| *k == "circle.task.turn").count(), 5);
    assert!(events.0.lock().iter().all(|ev| ev.user_id == e.owner));
    // Persisted: readable again.
    let again = circles.get_task(e.owner, done.task.id).await.unwrap();
    assert_eq!(again.transcript.len(), 5);
}

#[tokio::test]
async fn a_failing_provider_fails_the_circle_task_with_the_reason() {
    let srv = FakeProvider::script(vec![Reply::json(
        401,
        json!({"error": {"message": "bad key"}}),
    )])
    .await
    .unwrap();
    let e = env(config_for(&srv.base_url), None).await;
    let lead = e
        .agents
        .create(e.owner, agent_input("lead", vec![]))
        .await
        .unwrap();
    let events = Arc::new(Recorder::default());
    let circles = CircleService::new(
        Arc::new(e.store.clone()),
        e.agents.clone(),
        events.clone(),
        1,
    );
    let circle = circles
        .create(e.owner, "solo".into(), vec![(lead.id, "lead".into())])
        .await
        .unwrap();
    let done = circles
        .run_task(e.owner, circle.id, "t".into(), String::new())
        .await
        .unwrap();
    assert_eq!(done.task.status, TaskStatus::Failed);
    assert!(done.task.error.as_deref().unwrap().contains("bad key"));
    let last = events.0.lock().last().cloned().unwrap();
    assert_eq!(last.kind, "circle.task.finished");
    assert_eq!(last.data["status"], "failed");
}

#[tokio::test]
async fn circle_members_must_be_the_owners_agents_with_one_lead() {
    let e = env(LlmConfig::default(), None).await;
    let a = e
        .agents
        .create(e.owner, agent_input("a", vec![]))
        .await
        .unwrap();
    let circles = CircleService::new(
        Arc::new(e.store.clone()),
        e.agents.clone(),
        Arc::new(gathering_domain::events::NoopPublisher),
        1,
    );
    let err = circles
        .create(e.owner, "c".into(), vec![(a.id, "member".into())])
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Validation(_)));
    let err = circles
        .create(
            e.owner,
            "c".into(),
            vec![(a.id, "lead".into()), (Uuid::now_v7(), "member".into())],
        )
        .await
        .unwrap_err();
    let LlmError::Validation(p) = err else {
        panic!()
    };
    assert_eq!(p[0].field, "/members");
    let other = e.db.user().await;
    let c = circles
        .create(e.owner, "c".into(), vec![(a.id, "lead".into())])
        .await
        .unwrap();
    assert!(matches!(
        circles.get(other, c.id).await,
        Err(LlmError::NotFound)
    ));
}

#[tokio::test]
async fn a_retried_keyed_run_returns_the_stored_answer_without_calling_again() {
    let srv = FakeProvider::script(vec![oa("first answer"), oa("second answer")])
        .await
        .unwrap();
    let e = env(config_for(&srv.base_url), None).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    let runner: Arc<dyn AgentRunner> = e.agents.clone();
    let req = |key: &str| AgentRequest {
        owner_id: e.owner,
        agent_id: agent.id,
        prompt: "summarise".into(),
        session_id: None,
        idempotency_key: Some(key.to_owned()),
    };
    let a = runner.run(req("run-1:node-a")).await.unwrap();
    let b = runner.run(req("run-1:node-a")).await.unwrap();
    assert_eq!(a.text, "first answer");
    assert_eq!(b.text, "first answer");
    assert_eq!(a.session_id, b.session_id);
    assert_eq!(srv.recorded().len(), 1);
    let c = runner.run(req("run-2:node-a")).await.unwrap();
    assert_eq!(c.text, "second answer");
    assert_ne!(c.session_id, a.session_id);
}

fn port_of(base_url: &str) -> u16 {
    url::Url::parse(base_url).unwrap().port().unwrap()
}

#[tokio::test]
async fn user_base_urls_on_loopback_private_or_metadata_addresses_are_refused_on_put() {
    let e = env(config_for("https://api.openai.com/v1"), None).await;
    for url in [
        "http://127.0.0.1:1/v1",
        "http://169.254.169.254/",
        "http://10.0.0.1/",
        "http://[::1]:8080/v1",
        "http://0x7f.1/v1",
        "http://[::ffff:169.254.169.254]/",
    ] {
        let err = e
            .settings
            .put(e.owner, Provider::OpenAi, None, Some(url.into()))
            .await
            .expect_err(url);
        assert_eq!(err.code(), "validation_failed", "{url}");
        assert_eq!(err.kind(), ErrorKind::Validation, "{url}");
        let details = err.details();
        assert_eq!(details.len(), 1, "{url}");
        assert_eq!(details[0].field, "/base_url", "{url}");
        assert!(
            details[0]
                .problem
                .contains("the target address is not allowed"),
            "{url}: {}",
            details[0].problem
        );
    }
    // Nothing was stored: the server's endpoint is still in effect.
    let views = e.settings.list(e.owner).await.unwrap();
    let openai = views
        .iter()
        .find(|v| v.provider == Provider::OpenAi)
        .unwrap();
    assert_eq!(openai.base_url, "https://api.openai.com/v1");
    // A public address and a host name are accepted (names are checked when resolved).
    for url in ["https://93.184.216.34/v1", "http://localhost:9/v1"] {
        e.settings
            .put(e.owner, Provider::OpenAi, None, Some(url.into()))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_user_host_name_resolving_to_loopback_is_refused_at_call_time_and_nothing_is_sent() {
    let env_srv = FakeProvider::script(vec![oa("from env")]).await.unwrap();
    let target = FakeProvider::script(vec![oa("leaked")]).await.unwrap();
    let e = env(config_for(&env_srv.base_url), None).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    let sneaky = format!("http://localhost:{}/v1", port_of(&target.base_url));
    e.settings
        .put(
            e.owner,
            Provider::OpenAi,
            Some("sk-user-abcdef3456".into()),
            Some(sneaky),
        )
        .await
        .unwrap();
    let err = tokio::time::timeout(T, e.agents.chat(e.owner, agent.id, "hi".into(), None))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, LlmError::UrlRefused(_)), "{err:?}");
    assert_eq!(err.code(), "validation_failed");
    assert_eq!(err.details()[0].field, "/base_url");
    let msg = err.to_string();
    assert!(msg.contains("the target address is not allowed"), "{msg}");
    assert!(
        !msg.contains("127.0.0.1") && !msg.contains("resolves to"),
        "the refusal does not say what the name resolves to: {msg}"
    );
    assert!(target.recorded().is_empty(), "a request reached loopback");
    assert!(env_srv.recorded().is_empty());
    // The port used by pipelines and schedules says the same, not retryable.
    let out = e
        .agents
        .run(AgentRequest {
            owner_id: e.owner,
            agent_id: agent.id,
            prompt: "hi".into(),
            session_id: None,
            idempotency_key: None,
        })
        .await
        .unwrap_err();
    match out {
        gathering_domain::agents::AgentError::Provider { retryable, message } => {
            assert!(!retryable);
            assert!(
                message.contains("the target address is not allowed"),
                "{message}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(target.recorded().is_empty(), "a request reached loopback");

    // Clearing the user's endpoint goes back to the operator's loopback endpoint: trusted.
    e.settings
        .put(e.owner, Provider::OpenAi, None, Some(String::new()))
        .await
        .unwrap();
    let out = e
        .agents
        .chat(e.owner, agent.id, "hi".into(), None)
        .await
        .unwrap();
    assert_eq!(out.reply, "from env");
    assert_eq!(
        env_srv.recorded()[0].headers["authorization"],
        "Bearer sk-user-abcdef3456"
    );
    assert!(target.recorded().is_empty());
}

#[tokio::test]
async fn a_stored_user_url_naming_a_forbidden_address_is_refused_before_sending() {
    // E.g. stored before the check existed: the call-time check still refuses it.
    let target = FakeProvider::script(vec![oa("leaked")]).await.unwrap();
    let e = env(config_for("https://api.openai.com/v1"), None).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    // With the user's own key: the operator's is never sent to a user's URL, so without one
    // the call would stop earlier as not configured.
    e.settings
        .put(
            e.owner,
            Provider::OpenAi,
            Some("sk-user-abcdef3456".into()),
            None,
        )
        .await
        .unwrap();
    e.store
        .upsert_provider_setting(
            e.owner,
            Provider::OpenAi,
            ProviderSettingChange {
                base_url: Some(Some(target.base_url.clone())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let err = e
        .agents
        .chat(e.owner, agent.id, "hi".into(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::UrlRefused(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("the target address is not allowed"),
        "{err}"
    );
    assert!(target.recorded().is_empty(), "a request reached loopback");
}

#[tokio::test]
async fn an_allow_listed_loopback_user_host_is_called() {
    let target = FakeProvider::script(vec![oa("from allowed")])
        .await
        .unwrap();
    let port = port_of(&target.base_url);
    let mut cfg = config_for("https://api.openai.com/v1");
    cfg.http_allowed_hosts = vec![format!("localhost:{port}")];
    let e = env(cfg, None).await;
    let agent = e
        .agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    // The user's own URL gets only the user's own key (never the operator's).
    e.settings
        .put(
            e.owner,
            Provider::OpenAi,
            Some("sk-user-abcdef3456".into()),
            Some(format!("http://localhost:{port}/v1")),
        )
        .await
        .unwrap();
    let out = tokio::time::timeout(T, e.agents.chat(e.owner, agent.id, "hi".into(), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.reply, "from allowed");
    let reqs = target.recorded();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].headers["authorization"],
        "Bearer sk-user-abcdef3456"
    );
    // The allow-list names the host: the same server as an IP literal is still refused.
    let err = e
        .settings
        .put(
            e.owner,
            Provider::OpenAi,
            None,
            Some(format!("http://127.0.0.1:{port}/v1")),
        )
        .await
        .unwrap_err();
    assert_eq!(err.details()[0].field, "/base_url");
}

#[tokio::test]
async fn interactive_chat_retries_in_the_transport_but_the_runner_port_makes_one_attempt() {
    let srv = FakeProvider::script(vec![
        Reply::json(503, json!({"error": {"message": "overloaded"}})).header("retry-after", "0"),
    ])
    .await
    .unwrap();
    let e = env(config_for(&srv.base_url), None).await;
    let mut config = config_for(&srv.base_url);
    config.max_attempts = 3;
    let agents = AgentService::new(
        Arc::new(e.store.clone()),
        e.settings.clone(),
        Arc::new(HttpModelFactory::new(&config).unwrap()),
    );
    let agent = agents
        .create(e.owner, agent_input("ada", vec![]))
        .await
        .unwrap();
    let err = tokio::time::timeout(T, agents.chat(e.owner, agent.id, "hi".into(), None))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, LlmError::Status { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(srv.recorded().len(), 3, "chat: the transport retries");
    let out = tokio::time::timeout(
        T,
        agents.run(AgentRequest {
            owner_id: e.owner,
            agent_id: agent.id,
            prompt: "hi".into(),
            session_id: None,
            idempotency_key: Some("run:node".into()),
        }),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(
            out,
            gathering_domain::agents::AgentError::Provider {
                retryable: true,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(
        srv.recorded().len(),
        4,
        "the runner port: one attempt, its caller retries"
    );
}
