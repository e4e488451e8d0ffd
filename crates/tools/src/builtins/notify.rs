//! `send_notification`: stores a notification for the caller, publishes
//! `notification.created`, and POSTs a JSON webhook when the channel has one configured.
//!
//! With an idempotency key (pipelines pass `run_id:node_id`), a replay of the same logical
//! call finds the notification already stored: it neither publishes nor posts the webhook
//! again, and answers `"replayed": true`. Every webhook POST carries an `Idempotency-Key`
//! header (the invocation's key, else the notification id) so a receiver can drop duplicates.

use crate::builtins::http::{IDEMPOTENCY_KEY, status_error, tool_error};
use crate::net::{HttpClient, HttpRequest};
use crate::registry::{AsyncTool, ToolSpec, parse_params};
use async_trait::async_trait;
use bytes::Bytes;
use gathering_domain::RepoError;
use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::notifications::{
    DEFAULT_CHANNEL, NewNotification, Notification, NotificationRepository,
};
use gathering_domain::tools::{ToolContext, ToolError};
use reqwest::Method;
use reqwest::header::{self, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

pub const NAME: &str = "send_notification";
pub const EVENT_KIND: &str = "notification.created";

pub fn spec() -> ToolSpec {
    ToolSpec::new(
        NAME,
        "Sends the caller a notification (listed by GET /notifications), publishes a \
         notification.created event, and POSTs it to the channel's webhook when one is \
         configured.",
        json!({
            "type": "object",
            "properties": {
                "channel": {"type": "string", "minLength": 1, "maxLength": 64},
                "title": {"type": "string", "minLength": 1, "maxLength": 200},
                "message": {"type": "string", "minLength": 1, "maxLength": 10000}
            },
            "required": ["title", "message"],
            "additionalProperties": false
        }),
        Duration::from_secs(60),
    )
}

#[derive(Deserialize)]
struct Params {
    channel: Option<String>,
    title: String,
    message: String,
}

pub struct SendNotification {
    repo: Arc<dyn NotificationRepository>,
    publisher: Arc<dyn EventPublisher>,
    http: Arc<HttpClient>,
    webhooks: HashMap<String, Url>,
    webhook_timeout: Duration,
}

impl SendNotification {
    pub fn new(
        repo: Arc<dyn NotificationRepository>,
        publisher: Arc<dyn EventPublisher>,
        http: Arc<HttpClient>,
        webhooks: HashMap<String, Url>,
        webhook_timeout: Duration,
    ) -> Self {
        Self {
            repo,
            publisher,
            http,
            webhooks,
            webhook_timeout,
        }
    }

    async fn post_webhook(
        &self,
        url: &Url,
        n: &Notification,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ToolError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let key = idempotency_key
            .and_then(|k| HeaderValue::from_str(k).ok())
            .or_else(|| HeaderValue::from_str(&n.id.to_string()).ok());
        if let Some(key) = key {
            headers.insert(IDEMPOTENCY_KEY, key);
        }
        let body = json!({"type": EVENT_KIND, "notification": n}).to_string();
        let resp = self
            .http
            .send(HttpRequest {
                method: Method::POST,
                url: url.clone(),
                headers,
                body: Some(Bytes::from(body)),
                timeout: self.webhook_timeout,
            })
            .await
            .map_err(|e| tool_error(e, self.webhook_timeout))?;
        if !resp.status.is_success() {
            return Err(status_error(&resp));
        }
        Ok(json!({"status": resp.status.as_u16()}))
    }
}

#[async_trait]
impl AsyncTool for SendNotification {
    async fn call(&self, ctx: &ToolContext, params: Value) -> Result<Value, ToolError> {
        let p: Params = parse_params(params)?;
        let channel = p.channel.unwrap_or_else(|| DEFAULT_CHANNEL.to_owned());
        let (n, created) = self
            .repo
            .create_once(NewNotification {
                user_id: ctx.user_id,
                channel: channel.clone(),
                title: p.title,
                message: p.message,
                // Retries of the same logical call store one notification.
                idempotency_key: ctx.idempotency_key.clone(),
            })
            .await
            .map_err(|e| match e {
                RepoError::Unavailable(_) => ToolError::Failed {
                    message: "storage unavailable".to_owned(),
                    retryable: true,
                    status: None,
                },
                other => {
                    tracing::error!(error = %other, "storing a notification failed");
                    ToolError::failed("storing the notification failed")
                }
            })?;
        let data = serde_json::to_value(&n).unwrap_or(Value::Null);
        if !created {
            // A replay: the first call already published and posted.
            tracing::debug!(notification = %n.id, "send_notification replayed; webhook skipped");
            return Ok(json!({"notification": data, "webhook": Value::Null, "replayed": true}));
        }
        self.publisher.publish(
            Event::new(ctx.user_id, EVENT_KIND, data.clone())
                .with_dedup_key(format!("notification:{}", n.id)),
        );
        let webhook = match self.webhooks.get(&channel) {
            Some(url) => {
                self.post_webhook(url, &n, ctx.idempotency_key.as_deref())
                    .await?
            }
            None => Value::Null,
        };
        Ok(json!({"notification": data, "webhook": webhook, "replayed": false}))
    }
}
