//! Black-box: `GET /api/v1/ws` — authentication before the upgrade, per-user delivery, first
//! message authentication, replay and the close frame on shutdown.
//!
//! The WebSocket client is a minimal RFC 6455 client over a plain `TcpStream` (text, ping/pong
//! and close frames), enough to observe what the server sends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::{TestApp, assert_error, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(15);

struct Ws {
    io: BufReader<TcpStream>,
}

/// What the server sent.
#[derive(Debug)]
enum Frame {
    Text(Value),
    Close(Option<u16>),
}

/// A non-101 answer to the upgrade request.
#[derive(Debug)]
struct Refused {
    status: u16,
    body: Value,
}

impl Ws {
    async fn connect(app: &TestApp, query: &str) -> Result<Ws, Refused> {
        let stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
        let mut io = BufReader::new(stream);
        let request = format!(
            "GET /api/v1/ws{query} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            app.port
        );
        io.get_mut().write_all(request.as_bytes()).await.unwrap();
        // Response head, byte by byte up to the blank line (the body follows unbuffered).
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(timeout(WAIT, io.read_u8()).await.unwrap().unwrap());
            assert!(head.len() < 16 * 1024, "response head too long");
        }
        let head = String::from_utf8(head).unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        if status == 101 {
            return Ok(Ws { io });
        }
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        timeout(WAIT, io.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
        Err(Refused {
            status,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        })
    }

    async fn write_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.io.get_mut().write_all(&frame).await.unwrap();
    }

    async fn send_text(&mut self, text: &str) {
        self.write_frame(0x1, text.as_bytes()).await;
    }

    async fn read_raw(&mut self) -> (u8, Vec<u8>) {
        let b0 = self.io.read_u8().await.unwrap();
        let b1 = self.io.read_u8().await.unwrap();
        let mut len = (b1 & 0x7F) as u64;
        if len == 126 {
            len = self.io.read_u16().await.unwrap() as u64;
        } else if len == 127 {
            len = self.io.read_u64().await.unwrap();
        }
        let mask = if b1 & 0x80 != 0 {
            let mut m = [0u8; 4];
            self.io.read_exact(&mut m).await.unwrap();
            Some(m)
        } else {
            None
        };
        let mut payload = vec![0u8; len as usize];
        self.io.read_exact(&mut payload).await.unwrap();
        if let Some(m) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        (b0 & 0x0F, payload)
    }

    /// The next text or close frame; answers pings on the way.
    async fn next(&mut self) -> Frame {
        timeout(WAIT, async {
            loop {
                let (opcode, payload) = self.read_raw().await;
                match opcode {
                    0x1 => return Frame::Text(serde_json::from_slice(&payload).unwrap()),
                    0x8 => {
                        let code = (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                        return Frame::Close(code);
                    }
                    0x9 => self.write_frame(0xA, &payload).await,
                    _ => {}
                }
            }
        })
        .await
        .expect("a frame from the server in time")
    }

    async fn next_json(&mut self) -> Value {
        match self.next().await {
            Frame::Text(v) => v,
            Frame::Close(code) => panic!("closed ({code:?}) while waiting for a message"),
        }
    }

    async fn close(mut self) {
        self.write_frame(0x8, &1000u16.to_be_bytes()).await;
    }
}

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
