//! A minimal RFC 6455 WebSocket client over a plain `TcpStream` (text, ping/pong and close
//! frames), enough to observe what `GET /api/v1/ws` sends.

use crate::TestApp;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long a test waits for the server's next frame.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Ws {
    io: BufReader<TcpStream>,
}

/// What the server sent.
#[derive(Debug)]
pub enum Frame {
    Text(Value),
    Close(Option<u16>),
}

/// A non-101 answer to the upgrade request.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

impl Ws {
    /// Upgrades `GET /api/v1/ws{query}` on `app`; the answer when it is not 101.
    pub async fn connect(app: &TestApp, query: &str) -> Result<Ws, Refused> {
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

    pub async fn write_frame(&mut self, opcode: u8, payload: &[u8]) {
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

    pub async fn send_text(&mut self, text: &str) {
        self.write_frame(0x1, text.as_bytes()).await;
    }

    pub async fn read_raw(&mut self) -> (u8, Vec<u8>) {
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
    pub async fn next(&mut self) -> Frame {
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

    pub async fn next_json(&mut self) -> Value {
        match self.next().await {
            Frame::Text(v) => v,
            Frame::Close(code) => panic!("closed ({code:?}) while waiting for a message"),
        }
    }

    pub async fn close(mut self) {
        self.write_frame(0x8, &1000u16.to_be_bytes()).await;
    }
}
