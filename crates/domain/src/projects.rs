//! Projects: directories an admin registers; workspace files resolve under their root only.

use crate::auth::UserId;
use crate::error::RepoError;
use crate::page::{Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub root_path: String,
    pub owner_id: UserId,
    /// Users (besides the owner and admins) who may use this project's files.
    pub members: Vec<UserId>,
    pub created_at: DateTime<Utc>,
}

impl Project {
    pub fn may_use(&self, user: UserId, is_admin: bool) -> bool {
        is_admin || self.owner_id == user || self.members.contains(&user)
    }
}

#[derive(Debug, Clone)]
pub struct NewProject {
    pub name: String,
    pub root_path: String,
    pub owner_id: UserId,
    pub members: Vec<UserId>,
}

#[async_trait]
pub trait ProjectRepository: Send + Sync {
    async fn create(&self, new: NewProject) -> Result<Project, RepoError>;
    async fn get(&self, id: Uuid) -> Result<Option<Project>, RepoError>;
    /// Projects `user` may use (all of them for admins), newest first.
    async fn list_for(
        &self,
        user: UserId,
        is_admin: bool,
        page: PageRequest,
    ) -> Result<Page<Project>, RepoError>;
}
