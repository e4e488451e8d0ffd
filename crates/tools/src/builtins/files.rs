//! `read_file`, `write_file`, `list_files`: project-scoped workspace files through the
//! traversal-safe resolver. Projects the caller may not use are "not found".

use crate::registry::{AsyncTool, ToolSpec, parse_params};
use crate::workspace::{self, PathError};
use async_trait::async_trait;
use gathering_domain::projects::{Project, ProjectRepository};
use gathering_domain::quotas::WorkspaceQuota;
use gathering_domain::tools::{ToolContext, ToolError};
use gathering_domain::{FieldProblem, RepoError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub const READ: &str = "read_file";
pub const WRITE: &str = "write_file";
pub const LIST: &str = "list_files";
pub const LIST_MAX_DEPTH: usize = 4;
pub const LIST_MAX_ENTRIES: usize = 1000;

fn schema(with_content: bool, path_required: bool) -> Value {
    let mut props = json!({
        "project_id": {"type": "string", "minLength": 36, "maxLength": 36},
        "path": {"type": "string", "maxLength": workspace::MAX_PATH_BYTES}
    });
    let mut required = vec!["project_id"];
    if path_required {
        required.push("path");
    }
    if with_content {
        props["content"] = json!({"type": "string"});
        required.push("content");
    }
    json!({
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false
    })
}

pub fn read_spec() -> ToolSpec {
    ToolSpec::new(
        READ,
        "Reads a UTF-8 text file under a project's root: {path, size, content}.",
        schema(false, true),
        Duration::from_secs(30),
    )
}

pub fn write_spec() -> ToolSpec {
    ToolSpec::new(
        WRITE,
        "Writes a UTF-8 text file under a project's root (atomically; missing directories are \
         created): {path, size, created}.",
        schema(true, true),
        Duration::from_secs(30),
    )
}

pub fn list_spec() -> ToolSpec {
    ToolSpec::new(
        LIST,
        "Lists a directory under a project's root (bounded depth and entries; symlinks are \
         shown, never followed).",
        schema(false, false),
        Duration::from_secs(30),
    )
}

#[derive(Deserialize)]
struct Params {
    project_id: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    content: Option<String>,
}

/// The per-user workspace-bytes quota `write_file` charges (a `ToolsConfig` field; equal when
/// it is the same port).
#[derive(Clone)]
pub struct QuotaPort(pub Arc<dyn WorkspaceQuota>);

impl std::fmt::Debug for QuotaPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuotaPort")
    }
}

impl PartialEq for QuotaPort {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for QuotaPort {}

/// Shared by the three tools.
#[derive(Clone)]
pub struct FileTools {
    projects: Arc<dyn ProjectRepository>,
    max_file_bytes: u64,
    quota: Option<QuotaPort>,
}

impl FileTools {
    pub fn new(projects: Arc<dyn ProjectRepository>, max_file_bytes: u64) -> Self {
        Self {
            projects,
            max_file_bytes,
            quota: None,
        }
    }

    /// Charges every write's size delta to the caller's workspace quota, before writing.
    pub fn with_quota(mut self, quota: Option<QuotaPort>) -> Self {
        self.quota = quota;
        self
    }

    async fn charge(&self, ctx: &ToolContext, delta: i64) -> Result<(), ToolError> {
        let Some(q) = &self.quota else {
            return Ok(());
        };
        match q.0.charge_workspace_bytes(ctx.user_id, delta).await {
            Ok(()) => Ok(()),
            Err(RepoError::QuotaExceeded(m)) => {
                Err(ToolError::InvalidParams(vec![FieldProblem::new(
                    "/content", m,
                )]))
            }
            Err(RepoError::Unavailable(_)) => Err(ToolError::Failed {
                message: "storage unavailable".to_owned(),
                retryable: true,
                status: None,
            }),
            Err(e) => {
                tracing::error!(error = %e, "workspace quota update failed");
                Err(ToolError::failed("workspace quota update failed"))
            }
        }
    }

    async fn project(&self, ctx: &ToolContext, id: &str) -> Result<Project, ToolError> {
        let id: Uuid = id.parse().map_err(|_| {
            ToolError::InvalidParams(vec![FieldProblem::new("/project_id", "not a UUID")])
        })?;
        match self.projects.get(id).await {
            Ok(Some(p)) if p.may_use(ctx.user_id, ctx.is_admin) => Ok(p),
            Ok(_) => Err(ToolError::failed("project not found")),
            Err(RepoError::Unavailable(_)) => Err(ToolError::Failed {
                message: "storage unavailable".to_owned(),
                retryable: true,
                status: None,
            }),
            Err(e) => {
                tracing::error!(error = %e, "project lookup failed");
                Err(ToolError::failed("project lookup failed"))
            }
        }
    }
}

fn path_error(e: PathError) -> ToolError {
    match e {
        PathError::Forbidden(m) => ToolError::PathForbidden(format!("path not allowed: {m}")),
        PathError::Invalid(m) => {
            ToolError::InvalidParams(vec![FieldProblem::new("/path", m.to_owned())])
        }
        PathError::Io(io) => {
            tracing::error!(error = %io, "workspace file operation failed");
            ToolError::failed("filesystem error")
        }
        other => ToolError::failed(other.to_string()),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, ToolError> {
    serde_json::to_value(v).map_err(|e| ToolError::failed(e.to_string()))
}

/// Size of the regular file a write to `user_path` would replace; 0 when there is none.
async fn existing_size(root: &str, user_path: &str) -> u64 {
    let root = std::path::PathBuf::from(root);
    let user_path = user_path.to_owned();
    tokio::task::spawn_blocking(move || {
        workspace::resolve_for_write(&root, &user_path, false)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .filter(std::fs::Metadata::is_file)
            .map_or(0, |m| m.len())
    })
    .await
    .unwrap_or(0)
}

pub struct ReadFile(pub FileTools);
pub struct WriteFile(pub FileTools);
pub struct ListFiles(pub FileTools);

#[async_trait]
impl AsyncTool for ReadFile {
    async fn call(&self, ctx: &ToolContext, params: Value) -> Result<Value, ToolError> {
        let p: Params = parse_params(params)?;
        let project = self.0.project(ctx, &p.project_id).await?;
        let file = workspace::read_text(project.root_path, &p.path, self.0.max_file_bytes)
            .await
            .map_err(path_error)?;
        to_json(&file)
    }
}

#[async_trait]
impl AsyncTool for WriteFile {
    async fn call(&self, ctx: &ToolContext, params: Value) -> Result<Value, ToolError> {
        let p: Params = parse_params(params)?;
        let project = self.0.project(ctx, &p.project_id).await?;
        let content = p.content.unwrap_or_default();
        // The quota is charged with the size delta before writing and refunded if the write
        // fails. Oversized content is left to the writer's own, clearer refusal.
        let new_size = content.len() as u64;
        let delta = if self.0.quota.is_some() && new_size <= self.0.max_file_bytes {
            let old = existing_size(&project.root_path, &p.path).await;
            i64::try_from(new_size).unwrap_or(i64::MAX) - i64::try_from(old).unwrap_or(0)
        } else {
            0
        };
        self.0.charge(ctx, delta).await?;
        let written = workspace::write_text(
            project.root_path,
            &p.path,
            content,
            self.0.max_file_bytes,
            true,
        )
        .await;
        match written {
            Ok(out) => to_json(&out),
            Err(e) => {
                if delta != 0
                    && let Err(refund) = self.0.charge(ctx, -delta).await
                {
                    tracing::warn!(error = %refund, "workspace quota refund failed");
                }
                Err(path_error(e))
            }
        }
    }
}

#[async_trait]
impl AsyncTool for ListFiles {
    async fn call(&self, ctx: &ToolContext, params: Value) -> Result<Value, ToolError> {
        let p: Params = parse_params(params)?;
        let project = self.0.project(ctx, &p.project_id).await?;
        let tree =
            workspace::list_tree(project.root_path, &p.path, LIST_MAX_DEPTH, LIST_MAX_ENTRIES)
                .await
                .map_err(path_error)?;
        to_json(&tree)
    }
}
