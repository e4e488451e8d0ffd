//! What the schemathesis fuzzer (`.ci/fuzz`) found, pinned through the real server: the
//! OpenAPI document lists the answers the shared extractors give, and a run input that is not
//! the documented JSON object is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn document(app: &TestApp) -> Value {
    let r = app.get("/openapi.json", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_document_lists_the_shared_error_answers_the_server_gives() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let create_agent = &doc["paths"]["/api/v1/agents"]["post"]["responses"];
    for status in ["400", "401", "422", "429"] {
        assert!(
            create_agent.get(status).is_some(),
            "POST /agents lacks {status}"
        );
    }
    let list_agents = &doc["paths"]["/api/v1/agents"]["get"]["responses"];
    assert!(list_agents.get("400").is_some(), "GET /agents lacks 400");

    // The server does give them: a missing token and a malformed limit.
    let r = app.get("/agents", None).await;
    assert_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let token = app.user_token().await;
    let r = app.get("/agents?limit=-1", Some(&token)).await;
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_query").await;
    // And each error answer is described by the error body.
    let unauthorized = &create_agent["401"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(*unauthorized, "#/components/schemas/ErrorResponse");
}

#[tokio::test]
async fn a_pipeline_run_input_that_is_not_an_object_is_refused_with_422() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let r = app
        .post(
            "/pipelines",
            &json!({"name": "p", "nodes": [{"id": "start", "type": "trigger"}]}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let pipeline: Value = r.json().await.unwrap();
    let runs = format!("/pipelines/{}/runs", pipeline["id"].as_str().unwrap());

    for input in [json!([null, null]), json!(5), json!("text"), json!(true)] {
        let r = app
            .post(&runs, &json!({ "input": input }), Some(&token))
            .await;
        let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(body["error"]["details"][0]["field"], "/input", "{body}");
    }
    let listed: Value = app.get(&runs, Some(&token)).await.json().await.unwrap();
    assert_eq!(listed["items"], json!([]), "a refused input queued a run");

    // An object, null and no body at all are accepted (null and no body mean `{}`).
    for body in [
        json!({"input": {"n": 1}}),
        json!({"input": null}),
        json!({}),
    ] {
        let r = app.post(&runs, &body, Some(&token)).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{body}");
        let run: Value = r.json().await.unwrap();
        assert!(run["input"].is_object(), "{run}");
    }
}
