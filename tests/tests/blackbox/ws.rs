//! Black-box: `GET /api/v1/ws` — authentication before the upgrade, per-user delivery, first
//! message authentication, replay and the close frame on shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::ws::{Frame, WAIT, Ws};
use gathering_tests::{TestApp, assert_error, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;
use tokio::time::timeout;

async fn notify(app: &TestApp, token: &str, title: &str) {
    let r = app
        .post(
            "/tools/send_notification/invoke",
            &json!({"params": {"title": title, "message": "m"}}),
            Some(token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_bad_query_token_is_a_401_json_error_before_the_upgrade() {
    let app = spawn_app().await;
    let refused = Ws::connect(&app, "?access_token=not-a-token")
        .await
        .err()
        .expect("no upgrade");
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.body["error"]["code"], "invalid_token",
        "{:?}",
        refused.body
    );

    // Without a token and without an upgrade: 401 as well.
    assert_error(
        app.get("/ws", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn a_user_receives_their_own_events_and_never_another_users() {
    let app = spawn_app().await;
    let ada = app.user_token().await;
    let bob = app.user_token().await;
    let mut ada_ws = Ws::connect(&app, &format!("?access_token={ada}"))
        .await
        .unwrap();
    let mut bob_ws = Ws::connect(&app, &format!("?access_token={bob}"))
        .await
        .unwrap();

    notify(&app, &ada, "for ada").await;
    let m = ada_ws.next_json().await;
    assert_eq!(m["type"], "notification.created");
    assert_eq!(m["data"]["title"], "for ada");
    assert!(m["at"].is_string());

    // Bob's first message is his own event, not Ada's (published earlier).
    notify(&app, &bob, "for bob").await;
    let m = bob_ws.next_json().await;
    assert_eq!(m["type"], "notification.created");
    assert_eq!(m["data"]["title"], "for bob");

    ada_ws.close().await;
    bob_ws.close().await;
}

#[tokio::test]
async fn the_token_may_come_as_the_first_message_and_a_bad_one_closes_with_1008() {
    let app = spawn_app().await;
    let ada = app.user_token().await;
    let mut ws = Ws::connect(&app, "").await.unwrap();
    ws.send_text(&json!({ "access_token": ada }).to_string())
        .await;
    let m = ws.next_json().await;
    assert_eq!(m["type"], "authenticated");
    notify(&app, &ada, "hello").await;
    let m = ws.next_json().await;
    assert_eq!(m["data"]["title"], "hello");
    ws.close().await;

    let mut bad = Ws::connect(&app, "").await.unwrap();
    bad.send_text(r#"{"access_token": "forged"}"#).await;
    match bad.next().await {
        Frame::Close(code) => assert_eq!(code, Some(1008)),
        Frame::Text(v) => panic!("expected a close frame, got {v}"),
    }
}

#[tokio::test]
async fn replay_sends_recent_events_on_connect() {
    let app = spawn_app().await;
    let ada = app.user_token().await;
    let mut live = Ws::connect(&app, &format!("?access_token={ada}"))
        .await
        .unwrap();
    notify(&app, &ada, "earlier").await;
    // Seen live, so it is in the history now.
    assert_eq!(live.next_json().await["data"]["title"], "earlier");

    let mut late = Ws::connect(&app, &format!("?access_token={ada}&replay=true"))
        .await
        .unwrap();
    assert_eq!(late.next_json().await["data"]["title"], "earlier");
    live.close().await;
    late.close().await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_a_going_away_close_frame() {
    let app = spawn_app().await;
    let ada = app.user_token().await;
    let mut ws = Ws::connect(&app, &format!("?access_token={ada}"))
        .await
        .unwrap();
    let stopping = tokio::spawn(app.stop());
    match ws.next().await {
        Frame::Close(code) => assert_eq!(code, Some(1001)),
        Frame::Text(v) => panic!("expected a close frame, got {v}"),
    }
    timeout(WAIT, stopping).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_and_closes_a_client_that_stays_silent() {
    let app = spawn_app_with(&[
        ("GATHERING__EVENTS__WS_HEARTBEAT_SECS", "1"),
        ("GATHERING__EVENTS__WS_CLIENT_TIMEOUT_SECS", "2"),
    ])
    .await;
    let token = app.user_token().await;

    // A client that answers pings stays connected past the timeout.
    let mut polite = Ws::connect(&app, &format!("?access_token={token}"))
        .await
        .unwrap();
    let mut silent = Ws::connect(&app, &format!("?access_token={token}"))
        .await
        .unwrap();
    // `next_json` answers pings while it waits for the message sent below.
    let polite = tokio::spawn(async move {
        let m = polite.next_json().await;
        polite.close().await;
        m
    });
    // The silent one reads frames but never answers: pings arrive, then a 1008 close.
    let (pings, close) = timeout(WAIT, async {
        let mut pings = 0;
        loop {
            let (opcode, payload) = silent.read_raw().await;
            match opcode {
                0x9 => pings += 1,
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return (pings, code);
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the silent client is closed in time");
    assert!(pings >= 1, "the server pinged before giving up");
    assert_eq!(close, Some(1008));

    // Meanwhile the client answering pings is still served.
    notify(&app, &token, "still here").await;
    let m = polite.await.unwrap();
    assert_eq!(m["data"]["title"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_closed_when_its_access_token_expires() {
    let app = spawn_app_with(&[("GATHERING__AUTH__ACCESS_TTL_SECS", "2")]).await;
    let token = app.user_token().await;
    let mut ws = Ws::connect(&app, &format!("?access_token={token}"))
        .await
        .unwrap();
    match ws.next().await {
        Frame::Close(code) => assert_eq!(code, Some(1008)),
        Frame::Text(v) => panic!("expected a close frame, got {v}"),
    }
}
