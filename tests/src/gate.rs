//! A loopback HTTP server whose every request hangs until [`Gate::release`]; it records each
//! request's path, so a test can hold a pipeline node (or any request) mid-flight and see what
//! reached it. Built on the shared [`Loopback`].

use crate::loopback::{Answer, Loopback};
use serde_json::json;
use std::time::Duration;

pub struct Gate(Loopback);

impl Gate {
    pub async fn start() -> Gate {
        Gate(Loopback::held(|_| Answer::json(200, json!({"released": true}))).await)
    }

    /// `http://127.0.0.1:<port>{path}`.
    pub fn url(&self, path: &str) -> String {
        self.0.url(path)
    }

    /// Paths requested so far, in arrival order.
    pub fn paths(&self) -> Vec<String> {
        self.0.paths()
    }

    /// Waits (up to `within`) until at least `n` requests arrived; panics otherwise.
    pub async fn wait_for_requests(&self, n: usize, within: Duration) {
        self.0.wait_for(None, n, within).await;
    }

    /// Answers every waiting and future request.
    pub fn release(&self) {
        self.0.release();
    }
}
