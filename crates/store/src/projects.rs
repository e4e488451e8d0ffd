//! [`ProjectRepository`] on PostgreSQL (`workspace.projects`, `workspace.project_members`).

use crate::error::{db_err, fk_conflict};
use crate::page::query_page;
use crate::pool::{PgPool, conn};
use async_trait::async_trait;
use gathering_domain::auth::UserId;
use gathering_domain::projects::{NewProject, Project, ProjectRepository};
use gathering_domain::{Page, PageRequest, RepoError};
use tokio_postgres::Row;
use uuid::Uuid;

/// Project columns plus its members, aggregated in the same query (no query per row).
const PROJECT_SELECT: &str = "SELECT p.id, p.name, p.root_path, p.owner_id, p.created_at, \
         COALESCE((SELECT array_agg(m.user_id ORDER BY m.user_id) \
                   FROM workspace.project_members m WHERE m.project_id = p.id), \
                  '{}'::uuid[]) AS members \
     FROM workspace.projects p";

fn project_from_row(row: &Row) -> Result<Project, RepoError> {
    Ok(Project {
        id: row.try_get("id").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        root_path: row.try_get("root_path").map_err(db_err)?,
        owner_id: row.try_get("owner_id").map_err(db_err)?,
        members: row.try_get("members").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
    })
}

#[derive(Clone)]
pub struct PgProjectRepository {
    pool: PgPool,
}

impl PgProjectRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl ProjectRepository for PgProjectRepository {
    /// Creates the project and its members in one transaction. Duplicate member ids are
    /// stored once; a member or owner id that names no user fails with `Conflict("user")`.
    async fn create(&self, new: NewProject) -> Result<Project, RepoError> {
        let mut members: Vec<UserId> = new.members.clone();
        members.sort_unstable();
        members.dedup();
        let mut c = conn(&self.pool).await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO workspace.projects (id, name, root_path, owner_id) \
                 VALUES ($1, $2, $3, $4) RETURNING created_at",
            )
            .await
            .map_err(db_err)?;
        let id = Uuid::now_v7();
        let row = tx
            .query_one(&insert, &[&id, &new.name, &new.root_path, &new.owner_id])
            .await
            .map_err(fk_conflict("user"))?;
        let created_at = row.try_get("created_at").map_err(db_err)?;
        if !members.is_empty() {
            let add = tx
                .prepare_cached(
                    "INSERT INTO workspace.project_members (project_id, user_id) \
                     SELECT $1, u FROM unnest($2::uuid[]) AS u",
                )
                .await
                .map_err(db_err)?;
            tx.execute(&add, &[&id, &members])
                .await
                .map_err(fk_conflict("user"))?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Project {
            id,
            name: new.name,
            root_path: new.root_path,
            owner_id: new.owner_id,
            members,
            created_at,
        })
    }

    async fn get(&self, id: Uuid) -> Result<Option<Project>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!("{PROJECT_SELECT} WHERE p.id = $1"))
            .await
            .map_err(db_err)?;
        let row = c.query_opt(&stmt, &[&id]).await.map_err(db_err)?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn list_for(
        &self,
        user: UserId,
        is_admin: bool,
        page: PageRequest,
    ) -> Result<Page<Project>, RepoError> {
        let c = conn(&self.pool).await?;
        query_page(
            &c,
            &format!(
                "{PROJECT_SELECT} \
                 WHERE ($1 OR p.owner_id = $2 OR EXISTS ( \
                           SELECT 1 FROM workspace.project_members m \
                           WHERE m.project_id = p.id AND m.user_id = $2)) \
                   AND ($3::uuid IS NULL OR p.id < $3) \
                 ORDER BY p.id DESC LIMIT $4"
            ),
            &[&is_admin, &user, &page.cursor, &page.fetch_limit()],
            page,
            project_from_row,
            |p| p.id,
        )
        .await
    }
}
