//! Black-box: notifications sent through `send_notification`, listed and marked read per user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::loopback::{Answer, Loopback};
use gathering_tests::{TestApp, assert_error, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

async fn send(app: &TestApp, token: &str, params: Value) -> Value {
    let r = app
        .post(
            "/tools/send_notification/invoke",
            &json!({"params": params}),
            Some(token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["output"].clone()
}

async fn list(app: &TestApp, token: &str, query: &str) -> Value {
    let r = app
        .get(&format!("/notifications{query}"), Some(token))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn notifications_are_listed_newest_first_for_their_owner_only() {
    let app = spawn_app().await;
    let ada = app.user_token().await;
    let bob = app.user_token().await;
    for i in 0..3 {
        send(
            &app,
            &ada,
            json!({"title": format!("t{i}"), "message": "m"}),
        )
        .await;
    }
    let page = list(&app, &ada, "?limit=2").await;
    let titles: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(titles, ["t2", "t1"]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let next = list(&app, &ada, &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(next["items"][0]["title"], "t0");
    assert_eq!(next["next_cursor"], Value::Null);

    let bobs = list(&app, &bob, "").await;
    assert_eq!(bobs["items"], json!([]));
    assert_error(
        app.get("/notifications", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn marking_read_is_204_for_the_owner_and_404_for_anyone_else() {
    let app = spawn_app().await;
    let ada = app.user_token().await;
    let bob = app.user_token().await;
    let out = send(&app, &ada, json!({"title": "t", "message": "m"})).await;
    let id = out["notification"]["id"].as_str().unwrap().to_owned();

    let r = app
        .post(&format!("/notifications/{id}/read"), &json!({}), Some(&bob))
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(
        list(&app, &ada, "").await["items"][0]["read_at"],
        Value::Null
    );

    let r = app
        .post(&format!("/notifications/{id}/read"), &json!({}), Some(&ada))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(list(&app, &ada, "").await["items"][0]["read_at"].is_string());

    let r = app
        .post("/notifications/not-a-uuid/read", &json!({}), Some(&ada))
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn same_idempotency_key_stores_one_notification() {
    let app = spawn_app().await;
    let ada = app.user_token().await;
    for _ in 0..2 {
        let r = app
            .client
            .post(app.url("/tools/send_notification/invoke"))
            .bearer_auth(&ada)
            .header("Idempotency-Key", "k-1")
            .json(&json!({"params": {"title": "once", "message": "m"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(
        list(&app, &ada, "").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn configured_channel_webhook_receives_the_notification() {
    let receiver = Loopback::serve(|_| Answer::text(200, "")).await;
    let hooks = format!("ops={}", receiver.url("/hook"));
    let app = spawn_app_with(&[
        ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1"),
        ("GATHERING__TOOLS__WEBHOOKS", hooks.as_str()),
    ])
    .await;
    let ada = app.user_token().await;
    let out = send(
        &app,
        &ada,
        json!({"channel": "ops", "title": "deploy", "message": "done"}),
    )
    .await;
    assert_eq!(out["webhook"]["status"], 200);
    receiver
        .wait_for(Some("/hook"), 1, Duration::from_secs(10))
        .await;
    let posts = receiver.recorded();
    assert_eq!(posts[0].method, "POST");
    let body: Value = serde_json::from_str(&posts[0].body).unwrap();
    assert_eq!(body["type"], "notification.created");
    assert_eq!(body["notification"]["title"], "deploy");
    assert_eq!(body["notification"]["channel"], "ops");
}
