//! Agents, chat, memories, circles and provider settings over HTTP, against a fake provider
//! server on 127.0.0.1 that answers in OpenAI's format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_llm::test_support::{FakeProvider, Recorded, Reply};
use gathering_tests::{assert_error, spawn_app_on, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn oa(text: &str) -> Reply {
    Reply::json(
        200,
        json!({"id": "c", "object": "chat.completion",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
    )
}

/// Replies "echo: <last user message>".
async fn echo_provider() -> FakeProvider {
    FakeProvider::start(|req: &Recorded, _| {
        let last = req.body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_owned();
        oa(&format!("echo: {last}"))
    })
    .await
    .unwrap()
}

fn agent_body(name: &str) -> Value {
    json!({"name": name, "persona": format!("You are {name}."), "provider": "openai",
           "model": "gpt-test", "temperature": 0.3})
}

async fn create_agent(app: &gathering_tests::TestApp, token: &str, name: &str) -> Value {
    let r = app.post("/agents", &agent_body(name), Some(token)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

#[tokio::test]
async fn agents_crud_is_scoped_to_the_owner() {
    let app = spawn_app_with(&[]).await;
    let alice = app.user_token().await;
    let bob = app.user_token().await;
    let a = create_agent(&app, &alice, "ada").await;
    let id = a["id"].as_str().unwrap();
    assert_eq!(a["provider"], "openai");
    assert_eq!(a["temperature"], 0.3);

    let r = app.get(&format!("/agents/{id}"), Some(&alice)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_error(
        app.get(&format!("/agents/{id}"), Some(&bob)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.patch(&format!("/agents/{id}"), &json!({"name": "x"}), Some(&bob))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let r = app
        .patch(
            &format!("/agents/{id}"),
            &json!({"model": "gpt-2", "temperature": 1.5}),
            Some(&alice),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["model"], "gpt-2");
    assert_eq!(patched["name"], "ada");

    let list: Value = app.get("/agents", Some(&alice)).await.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let list: Value = app.get("/agents", Some(&bob)).await.json().await.unwrap();
    assert!(list["items"].as_array().unwrap().is_empty());

    let body = assert_error(
        app.post(
            "/agents",
            &json!({"name": "", "provider": "gpt", "model": "m", "temperature": 3}),
            Some(&alice),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"/provider") && fields.contains(&"/temperature"),
        "{body}"
    );

    assert_eq!(
        app.delete(&format!("/agents/{id}"), Some(&bob))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("/agents/{id}"), Some(&alice))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/agents/{id}"), Some(&alice))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/agents", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn chat_history_persists_across_a_restart() {
    let provider = echo_provider().await;
    let env = [
        (
            "GATHERING__LLM__OPENAI__BASE_URL",
            provider.base_url.as_str(),
        ),
        ("GATHERING__LLM__OPENAI__API_KEY", "sk-env-000000"),
    ];
    let app = spawn_app_with(&env).await;
    let token = app.user_token().await;
    let agent = create_agent(&app, &token, "ada").await;
    let id = agent["id"].as_str().unwrap().to_owned();
    let r = app
        .post(
            &format!("/agents/{id}/chat"),
            &json!({"message": "remember blue"}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["reply"], "echo: remember blue");
    assert_eq!(first["usage"]["prompt_tokens"], 9);
    assert_eq!(first["usage"]["completion_tokens"], 4);
    let session = first["session_id"].as_str().unwrap().to_owned();

    let db = app.db.clone();
    app.stop().await.unwrap();
    let app = spawn_app_on(&db, &env).await;
    let r = app
        .post(
            &format!("/agents/{id}/chat"),
            &json!({"message": "what colour?", "session_id": session}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let second: Value = r.json().await.unwrap();
    assert_eq!(second["session_id"], session.as_str());
    let last = provider.recorded().pop().unwrap();
    let contents: Vec<&str> = last.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        vec![
            "You are ada.",
            "remember blue",
            "echo: remember blue",
            "what colour?"
        ]
    );
    assert_eq!(last.headers["authorization"], "Bearer sk-env-000000");

    // Someone else's session or agent: 404.
    let other = app.user_token().await;
    assert_error(
        app.post(
            &format!("/agents/{id}/chat"),
            &json!({"message": "hi"}),
            Some(&other),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn chat_without_any_provider_key_fails_clearly() {
    let provider = echo_provider().await;
    let app = spawn_app_with(&[(
        "GATHERING__LLM__OPENAI__BASE_URL",
        provider.base_url.as_str(),
    )])
    .await;
    let token = app.user_token().await;
    let agent = create_agent(&app, &token, "ada").await;
    let body = assert_error(
        app.post(
            &format!("/agents/{}/chat", agent["id"].as_str().unwrap()),
            &json!({"message": "hi"}),
            Some(&token),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "provider_not_configured",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("openai")
    );
    assert!(provider.recorded().is_empty());
}

#[tokio::test]
async fn provider_settings_store_keys_encrypted_show_hints_and_win_over_env() {
    let env_provider = echo_provider().await;
    let user_provider = echo_provider().await;
    // A user's endpoint on loopback must be allow-listed by the operator (SSRF guard).
    let user_host = user_provider.base_url.trim_start_matches("http://");
    let app = spawn_app_with(&[
        (
            "GATHERING__LLM__OPENAI__BASE_URL",
            env_provider.base_url.as_str(),
        ),
        ("GATHERING__LLM__OPENAI__API_KEY", "sk-env-000000"),
        ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", user_host),
    ])
    .await;
    let token = app.user_token().await;
    let r = app
        .put(
            "/settings/providers/openai",
            &json!({"api_key": "sk-user-secret-3456", "base_url": user_provider.base_url}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.put("/settings/providers/nope", &json!({}), Some(&token))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_error(
        app.put(
            "/settings/providers/anthropic",
            &json!({"base_url": "ftp://x"}),
            Some(&token),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    let r = app.get("/settings/providers", Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains("secret"), "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let openai = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "openai")
        .unwrap()
        .clone();
    assert_eq!(openai["key_set"], true);
    assert_eq!(openai["key_hint"], "…3456");
    assert_eq!(openai["base_url"], user_provider.base_url.as_str());
    let anthropic = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "anthropic")
        .unwrap()
        .clone();
    assert_eq!(anthropic["key_set"], false);

    let db = app.db_client().await;
    let row = db
        .query_one(
            "SELECT api_key_encrypted FROM agents.provider_settings",
            &[],
        )
        .await
        .unwrap();
    let blob: Vec<u8> = row.get(0);
    assert!(!blob.windows(6).any(|w| w == b"secret"));

    let agent = create_agent(&app, &token, "ada").await;
    let r = app
        .post(
            &format!("/agents/{}/chat", agent["id"].as_str().unwrap()),
            &json!({"message": "hi"}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(env_provider.recorded().is_empty());
    assert_eq!(
        user_provider.recorded()[0].headers["authorization"],
        "Bearer sk-user-secret-3456"
    );
}

#[tokio::test]
async fn memories_are_kept_per_owner_and_recalled_into_the_prompt() {
    let provider = echo_provider().await;
    let app = spawn_app_with(&[
        (
            "GATHERING__LLM__OPENAI__BASE_URL",
            provider.base_url.as_str(),
        ),
        ("GATHERING__LLM__OPENAI__API_KEY", "sk-env-000000"),
    ])
    .await;
    let token = app.user_token().await;
    let agent = create_agent(&app, &token, "ada").await;
    let id = agent["id"].as_str().unwrap();
    for fact in ["The user's dog is named Rex", "The user works nights"] {
        let r = app
            .post(
                &format!("/agents/{id}/memories"),
                &json!({"content": fact}),
                Some(&token),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let list: Value = app
        .get(&format!("/agents/{id}/memories"), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let other = app.user_token().await;
    assert_eq!(
        app.get(&format!("/agents/{id}/memories"), Some(&other))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(
            &format!("/agents/{id}/memories"),
            &json!({"content": "x"}),
            Some(&other)
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );

    let r = app
        .post(
            &format!("/agents/{id}/chat"),
            &json!({"message": "what is my dog's name?"}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let system = provider.recorded()[0].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(system.contains("Rex"), "{system}");
    assert!(!system.contains("nights"), "{system}");
}

#[tokio::test]
async fn circles_show_members_and_work_tasks_to_a_persisted_result() {
    let provider = echo_provider().await;
    let app = spawn_app_with(&[
        (
            "GATHERING__LLM__OPENAI__BASE_URL",
            provider.base_url.as_str(),
        ),
        ("GATHERING__LLM__OPENAI__API_KEY", "sk-env-000000"),
    ])
    .await;
    let token = app.user_token().await;
    let lead = create_agent(&app, &token, "lead").await;
    let critic = create_agent(&app, &token, "critic").await;
    let r = app
        .post(
            "/circles",
            &json!({"name": "council", "members": [
                {"agent_id": lead["id"], "role": "lead"},
                {"agent_id": critic["id"], "role": "reviewer"}]}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let circle: Value = r.json().await.unwrap();
    let cid = circle["id"].as_str().unwrap().to_owned();

    let got: Value = app
        .get(&format!("/circles/{cid}"), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let members = got["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["role"], "lead");
    assert_eq!(members[0]["agent"]["name"], "lead");
    assert_eq!(members[1]["provider"]["provider"], "openai");
    assert_eq!(members[1]["provider"]["key_set"], false);

    let other = app.user_token().await;
    assert_eq!(
        app.get(&format!("/circles/{cid}"), Some(&other))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let r = app
        .post(
            "/circles",
            &json!({"name": "steal", "members": [{"agent_id": lead["id"], "role": "lead"}]}),
            Some(&other),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let r = app
        .post(
            &format!("/circles/{cid}/tasks"),
            &json!({"title": "Name the product", "description": "Three options."}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let task: Value = r.json().await.unwrap();
    assert_eq!(task["status"], "succeeded", "{task}");
    assert!(task["result"].as_str().unwrap().starts_with("echo: "));
    let speakers: Vec<&str> = task["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["speaker"].as_str().unwrap())
        .collect();
    assert_eq!(speakers.first(), Some(&"facilitator"));
    assert_eq!(speakers[1], "lead (lead)");
    assert!(speakers.contains(&"critic (reviewer)"));
    assert_eq!(speakers.last(), Some(&"lead (lead)"));

    let tid = task["id"].as_str().unwrap();
    let again: Value = app
        .get(&format!("/circles/{cid}/tasks/{tid}"), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["transcript"], task["transcript"]);
    assert_eq!(
        app.get(&format!("/circles/{cid}/tasks/{tid}"), Some(&other))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(
            &format!("/circles/{cid}/tasks"),
            &json!({"title": "x"}),
            Some(&other)
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circle_task_is_finished_even_when_its_client_disconnects() {
    // Every provider call takes a while, so the client gives up long before the task ends.
    let provider = FakeProvider::start(|_: &Recorded, _| {
        oa("a considered answer").after(std::time::Duration::from_millis(400))
    })
    .await
    .unwrap();
    let app = spawn_app_with(&[
        (
            "GATHERING__LLM__OPENAI__BASE_URL",
            provider.base_url.as_str(),
        ),
        ("GATHERING__LLM__OPENAI__API_KEY", "sk-env-000000"),
    ])
    .await;
    let token = app.user_token().await;
    let lead = create_agent(&app, &token, "lead").await;
    let r = app
        .post(
            "/circles",
            &json!({"name": "solo", "members": [{"agent_id": lead["id"], "role": "lead"}]}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let cid: String = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let impatient = app
        .client
        .post(app.url(&format!("/circles/{cid}/tasks")))
        .bearer_auth(&token)
        .json(&json!({"title": "Think slowly", "description": ""}))
        .timeout(std::time::Duration::from_millis(150))
        .send()
        .await;
    assert!(impatient.is_err(), "the client gave up before the answer");

    let db = app.db_client().await;
    let circle_id = uuid::Uuid::parse_str(&cid).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let rows = db
            .query(
                "SELECT status, result FROM agents.circle_tasks WHERE circle_id = $1",
                &[&circle_id],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "the task was created");
        let status: String = rows[0].get(0);
        if status != "running" {
            assert_eq!(status, "succeeded");
            let result: Option<String> = rows[0].get(1);
            assert!(result.unwrap().contains("a considered answer"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task was left running after its client disconnected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_tool_calls_run_through_the_real_registry_and_invalid_arguments_come_back_to_the_model()
 {
    // Turn 1: the model calls the calculator twice, once with arguments the schema refuses.
    // Turn 2: it answers. The second request carries both tool results.
    let provider = FakeProvider::start(|_: &Recorded, n| {
        if n == 0 {
            Reply::json(
                200,
                json!({"choices": [{"index": 0, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "good", "type": "function",
                     "function": {"name": "calculator", "arguments": "{\"expression\":\"6*7\"}"}},
                    {"id": "bad", "type": "function",
                     "function": {"name": "calculator", "arguments": "{\"expression\":42}"}}
                ]}}], "usage": {"prompt_tokens": 5, "completion_tokens": 5}}),
            )
        } else {
            oa("the answer is 42")
        }
    })
    .await
    .unwrap();
    let app = spawn_app_with(&[
        (
            "GATHERING__LLM__OPENAI__BASE_URL",
            provider.base_url.as_str(),
        ),
        ("GATHERING__LLM__OPENAI__API_KEY", "sk-env-000000"),
    ])
    .await;
    let token = app.user_token().await;
    let mut body = agent_body("calc");
    body["tools"] = json!(["calculator"]);
    let r = app.post("/agents", &body, Some(&token)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .post(
            &format!("/agents/{id}/chat"),
            &json!({"message": "what is six times seven?"}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["reply"],
        "the answer is 42"
    );

    let reqs = provider.recorded();
    assert_eq!(reqs.len(), 2);
    let offered: Vec<&str> = reqs[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["calculator"]);
    // The registry's JSON Schema is what the model is shown.
    assert_eq!(
        reqs[0].body["tools"][0]["function"]["parameters"]["required"],
        json!(["expression"])
    );
    let results: Vec<&Value> = reqs[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["tool_call_id"], "good");
    assert_eq!(results[0]["content"], "42");
    assert_eq!(results[1]["tool_call_id"], "bad");
    let refused: Value = serde_json::from_str(results[1]["content"].as_str().unwrap()).unwrap();
    assert_eq!(refused["details"][0]["field"], "/expression", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_an_in_flight_circle_task_whose_client_left() {
    // The provider answers in 3 s; the client gives up, then the server is stopped while the
    // task is running. The HTTP drain gives up after the 2 s shutdown timeout (dropping the
    // request), so only the tracked task set keeps the stop waiting until the task is done.
    let provider = FakeProvider::start(|_: &Recorded, _| {
        oa("an answer worth waiting for").after(std::time::Duration::from_millis(3000))
    })
    .await
    .unwrap();
    let app = spawn_app_with(&[
        (
            "GATHERING__LLM__OPENAI__BASE_URL",
            provider.base_url.as_str(),
        ),
        ("GATHERING__LLM__OPENAI__API_KEY", "sk-env-000000"),
        ("GATHERING__SERVER__SHUTDOWN_TIMEOUT_SECS", "2"),
    ])
    .await;
    let token = app.user_token().await;
    let lead = create_agent(&app, &token, "lead").await;
    let r = app
        .post(
            "/circles",
            &json!({"name": "solo", "members": [{"agent_id": lead["id"], "role": "lead"}]}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let cid: String = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let impatient = app
        .client
        .post(app.url(&format!("/circles/{cid}/tasks")))
        .bearer_auth(&token)
        .json(&json!({"title": "Think slowly", "description": ""}))
        .timeout(std::time::Duration::from_millis(150))
        .send()
        .await;
    assert!(impatient.is_err(), "the client gave up before the answer");

    let db = app.db_client().await;
    let circle_id = uuid::Uuid::parse_str(&cid).unwrap();
    let status = async || -> Option<String> {
        db.query(
            "SELECT status FROM agents.circle_tasks WHERE circle_id = $1",
            &[&circle_id],
        )
        .await
        .unwrap()
        .first()
        .map(|row| row.get(0))
    };
    // Wait until the task exists and is being worked on.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while status().await.as_deref() != Some("running") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    app.stop().await.unwrap();
    assert_eq!(
        status().await.as_deref(),
        Some("succeeded"),
        "the stop returned before the circle task finished"
    );
}
