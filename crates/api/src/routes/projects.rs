//! Projects (admin-registered directories) and their workspace files.

use crate::error::ApiError;
use crate::extract::{AdminUser, AuthUser, PageQuery};
use crate::json::Json;
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use gathering_domain::FieldProblem;
use gathering_domain::projects::{NewProject, Project, ProjectRepository};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

/// Largest file `GET /projects/{id}/files` returns.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
pub const TREE_MAX_DEPTH: usize = 4;
pub const TREE_MAX_ENTRIES: usize = 1000;

pub type Projects = Arc<dyn ProjectRepository>;

/// The server's data directory (keys, the local cluster...), canonicalized ([`AppState::data_dir`]):
/// a project whose root contains it, equals it or lies inside it is refused, so no project (and no agent tool working in one) can read
/// `keys/token.key` and forge tokens.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

/// Whether a project rooted at `root` would reach into `data_dir` (or live inside it). Both
/// must be canonical paths.
pub fn overlaps_data_dir(root: &Path, data_dir: &Path) -> bool {
    data_dir.starts_with(root) || root.starts_with(data_dir)
}

#[derive(Deserialize, ToSchema)]
pub struct CreateProjectBody {
    pub name: String,
    /// An existing directory on the server; stored canonicalized.
    pub root_path: String,
    /// Users (besides admins) who may use the project.
    #[serde(default)]
    pub members: Vec<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectResponse {
    pub id: Uuid,
    pub name: String,
    pub root_path: String,
    pub members: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl From<Project> for ProjectResponse {
    fn from(p: Project) -> Self {
        Self {
            id: p.id,
            name: p.name,
            root_path: p.root_path,
            members: p.members,
            created_at: p.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProjectPage {
    pub items: Vec<ProjectResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct PathQuery {
    /// Path relative to the project root.
    #[serde(default)]
    pub path: String,
}

#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = CreateProjectBody,
    responses((status = 201, body = ProjectResponse), (status = 403), (status = 422)),
    security(("bearer" = [])))]
pub async fn create(
    admin: AdminUser,
    state: web::Data<AppState>,
    body: Json<CreateProjectBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let mut problems = Vec::new();
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        problems.push(FieldProblem::new("/name", "must be 1 to 200 characters"));
    }
    let raw = PathBuf::from(&body.root_path);
    let root = if !raw.is_absolute() || body.root_path.contains('\0') {
        problems.push(FieldProblem::new("/root_path", "must be an absolute path"));
        None
    } else {
        let canonical = tokio::task::spawn_blocking(move || {
            std::fs::canonicalize(&raw).ok().filter(|p| p.is_dir())
        })
        .await
        .map_err(ApiError::internal)?;
        match &canonical {
            None => problems.push(FieldProblem::new(
                "/root_path",
                "must be an existing directory on the server",
            )),
            Some(root) if overlaps_data_dir(root, &state.data_dir.0) => {
                problems.push(FieldProblem::new(
                    "/root_path",
                    "must not contain, equal or lie inside the server's data directory",
                ));
            }
            _ => {}
        }
        canonical
    };
    if body.members.len() > 1000 {
        problems.push(FieldProblem::new("/members", "at most 1000 members"));
    }
    let (Some(root), true) = (root, problems.is_empty()) else {
        return Err(ApiError::validation(problems));
    };
    let project = state
        .projects
        .create(NewProject {
            name,
            root_path: root.to_string_lossy().into_owned(),
            owner_id: admin.0.id,
            members: body.members,
        })
        .await?;
    Ok(HttpResponse::Created().json(ProjectResponse::from(project)))
}

#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", params(PageQuery),
    responses((status = 200, body = ProjectPage)), security(("bearer" = [])))]
pub async fn list(
    user: AuthUser,
    state: web::Data<AppState>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state
        .projects
        .list_for(user.id, user.is_admin(), q.to_page_request()?)
        .await?
        .map(ProjectResponse::from);
    Ok(HttpResponse::Ok().json(ProjectPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// The project if the caller may use it; anyone else's answers 404.
async fn usable(projects: &Projects, user: &AuthUser, id: Uuid) -> Result<Project, ApiError> {
    match projects.get(id).await? {
        Some(p) if p.may_use(user.id, user.is_admin()) => Ok(p),
        _ => Err(ApiError::not_found()),
    }
}

#[utoipa::path(get, path = "/api/v1/projects/{id}", tag = "projects",
    responses((status = 200, body = ProjectResponse), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let p = usable(&state.projects, &user, *id).await?;
    Ok(HttpResponse::Ok().json(ProjectResponse::from(p)))
}

#[utoipa::path(get, path = "/api/v1/projects/{id}/files", tag = "projects", params(PathQuery),
    responses((status = 200, description = "{path, size, content}"), (status = 403, description = "path_forbidden"),
              (status = 404),
              (status = 422, description = "not_a_file, file_too_large, not_text or invalid_path")),
    security(("bearer" = [])))]
pub async fn file(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    q: web::Query<PathQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = usable(&state.projects, &user, *id).await?;
    let content =
        gathering_tools::workspace::read_text(PathBuf::from(p.root_path), &q.path, MAX_FILE_BYTES)
            .await?;
    Ok(HttpResponse::Ok().json(content))
}

#[utoipa::path(get, path = "/api/v1/projects/{id}/tree", tag = "projects", params(PathQuery),
    responses((status = 200, description = "bounded directory listing"), (status = 403), (status = 404),
              (status = 422, description = "not_a_directory or invalid_path")),
    security(("bearer" = [])))]
pub async fn tree(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    q: web::Query<PathQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = usable(&state.projects, &user, *id).await?;
    let listing = gathering_tools::workspace::list_tree(
        PathBuf::from(p.root_path),
        &q.path,
        TREE_MAX_DEPTH,
        TREE_MAX_ENTRIES,
    )
    .await?;
    Ok(HttpResponse::Ok().json(listing))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/projects", web::post().to(create))
        .route("/projects", web::get().to(list))
        .route("/projects/{id}", web::get().to(get))
        .route("/projects/{id}/files", web::get().to(file))
        .route("/projects/{id}/tree", web::get().to(tree));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_containing_equal_to_or_inside_the_data_dir_overlaps_it() {
        let data = Path::new("/srv/gathering/data");
        assert!(overlaps_data_dir(Path::new("/"), data));
        assert!(overlaps_data_dir(Path::new("/srv"), data));
        assert!(overlaps_data_dir(Path::new("/srv/gathering/data"), data));
        assert!(overlaps_data_dir(
            Path::new("/srv/gathering/data/keys"),
            data
        ));
        assert!(!overlaps_data_dir(Path::new("/srv/gathering/data2"), data));
        assert!(!overlaps_data_dir(Path::new("/srv/projects"), data));
    }
}
