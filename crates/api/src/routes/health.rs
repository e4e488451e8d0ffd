//! Liveness and readiness.

use crate::state::AppState;
use actix_web::{HttpResponse, get, web};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Checks a dependency the service cannot work without (the database).
#[async_trait]
pub trait ReadinessProbe: Send + Sync {
    async fn check(&self) -> Result<(), String>;
}

/// Ready unless draining (SIGTERM received) or the probe fails.
pub struct Readiness {
    draining: AtomicBool,
    probe: Arc<dyn ReadinessProbe>,
}

impl Readiness {
    pub fn new(probe: Arc<dyn ReadinessProbe>) -> Self {
        Self {
            draining: AtomicBool::new(false),
            probe,
        }
    }
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "the process runs")))]
#[get("/health/live")]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, description = "ready"), (status = 503, description = "draining or database unreachable")))]
#[get("/health/ready")]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    if state.readiness.is_draining() {
        return unavailable("draining");
    }
    match tokio::time::timeout(Duration::from_secs(2), state.readiness.probe.check()).await {
        Ok(Ok(())) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            unavailable("database unavailable")
        }
        Err(_) => unavailable("database check timed out"),
    }
}

fn unavailable(reason: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", "1"))
        .json(serde_json::json!({"status": "unavailable", "reason": reason}))
}
