//! The server as a real OS process (crash, restart and signal tests): the one copy of "spawn
//! `gathering-test-server` with the test environment and read its port off the `listening`
//! log line".
//!
//! `CARGO_BIN_EXE_*` is only set when compiling integration tests, so start it with
//! [`spawn_server_process!`](crate::spawn_server_process), which reads the path in the caller.

use crate::{TestDatabase, base_env};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// `spawn_server_process!(&db, data_dir, &[("GATHERING__X", "v")])` → [`ServerProcess`].
#[macro_export]
macro_rules! spawn_server_process {
    ($db:expr, $data:expr, $env:expr) => {
        $crate::process::ServerProcess::spawn(
            env!("CARGO_BIN_EXE_gathering-test-server"),
            $db,
            $data,
            $env,
        )
    };
}

/// Killed (SIGKILL) when dropped unless [`ServerProcess::wait`] already reaped it, so a failing
/// test leaves no server behind.
pub struct ServerProcess {
    child: Option<Child>,
    pub port: u16,
}

impl ServerProcess {
    /// Starts `exe` on `db` with [`base_env`] plus `env` (later entries win) and waits (up to
    /// 60 s) for it to log the port it listens on. Its stdout is drained for its whole life so
    /// it never blocks on a full pipe.
    pub fn spawn(
        exe: &str,
        db: &TestDatabase,
        data: &std::path::Path,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let mut cmd = Command::new(exe);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in base_env(db, data) {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && line.contains("\"msg\":\"listening\"") {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let port = u16::try_from(v["port"].as_u64().unwrap()).unwrap();
                    port_tx.send(port).unwrap();
                    sent = true;
                }
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server process logs `listening` within 60 s");
        ServerProcess {
            child: Some(child),
            port,
        }
    }

    /// `http://127.0.0.1:<port>` (health endpoints live here).
    pub fn root(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>/api/v1`.
    pub fn api(&self) -> String {
        format!("{}/api/v1", self.root())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Sends `signal` (`"TERM"`, `"KILL"`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit.
    pub async fn wait(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap()
    }

    /// `kill -9`, then waits until it is gone.
    pub async fn kill_9(self) {
        self.signal("KILL");
        self.wait().await;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
