//! [`UserRepository`] on PostgreSQL (`auth.users`).

use crate::error::{db_err, invalid};
use crate::pool::{PgPool, conn};
use async_trait::async_trait;
use gathering_domain::RepoError;
use gathering_domain::auth::{Email, NewUser, Role, User, UserCredentials, UserId, UserRepository};
use tokio_postgres::Row;
use uuid::Uuid;

/// Maps a unique violation on the email index to `Conflict("email")`.
fn email_conflict(e: tokio_postgres::Error) -> RepoError {
    match db_err(e) {
        RepoError::Conflict(_) => RepoError::Conflict("email".to_owned()),
        other => other,
    }
}

const USER_COLUMNS: &str = "id, email, name, role, created_at, disabled";

fn user_from_row(row: &Row) -> Result<User, RepoError> {
    let role: &str = row.try_get("role").map_err(db_err)?;
    Ok(User {
        id: row.try_get("id").map_err(db_err)?,
        email: Email::from_trusted(row.try_get("email").map_err(db_err)?),
        name: row.try_get("name").map_err(db_err)?,
        role: Role::parse(role).ok_or_else(|| invalid("auth.users.role", role))?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        disabled: row.try_get("disabled").map_err(db_err)?,
    })
}

#[derive(Clone)]
pub struct PgUserRepository {
    pool: PgPool,
}

impl PgUserRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl UserRepository for PgUserRepository {
    async fn create(&self, new: NewUser) -> Result<User, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "INSERT INTO auth.users (id, email, name, role, password_hash) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_one(
                &stmt,
                &[
                    &Uuid::now_v7(),
                    &new.email.as_str(),
                    &new.name,
                    &new.role.as_str(),
                    &new.password_hash,
                ],
            )
            .await
            .map_err(email_conflict)?;
        user_from_row(&row)
    }

    async fn find_by_email(&self, email: &Email) -> Result<Option<UserCredentials>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {USER_COLUMNS}, password_hash FROM auth.users WHERE lower(email) = lower($1)"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_opt(&stmt, &[&email.as_str()])
            .await
            .map_err(db_err)?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some(UserCredentials {
                user: user_from_row(&row)?,
                password_hash: row.try_get("password_hash").map_err(db_err)?,
            })),
        }
    }

    async fn find_by_id(&self, id: UserId) -> Result<Option<User>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM auth.users WHERE id = $1"
            ))
            .await
            .map_err(db_err)?;
        let row = c.query_opt(&stmt, &[&id]).await.map_err(db_err)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn update_password_hash(&self, id: UserId, password_hash: &str) -> Result<(), RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "UPDATE auth.users SET password_hash = $2, updated_at = now() WHERE id = $1",
            )
            .await
            .map_err(db_err)?;
        let n = c
            .execute(&stmt, &[&id, &password_hash])
            .await
            .map_err(db_err)?;
        if n == 0 {
            return Err(RepoError::NotFound);
        }
        Ok(())
    }

    async fn ensure_admin(&self, new: NewUser) -> Result<User, RepoError> {
        let c = conn(&self.pool).await?;
        // One statement: concurrent start-ups of several instances cannot race each other. An
        // existing row (admin or not) is returned unchanged: never promoted, and the caller
        // decides what a non-admin row means.
        let stmt = c
            .prepare_cached(&format!(
                "WITH ins AS ( \
                     INSERT INTO auth.users (id, email, name, role, password_hash) \
                     VALUES ($1, $2, $3, 'admin', $4) \
                     ON CONFLICT ((lower(email))) DO NOTHING \
                     RETURNING {USER_COLUMNS}) \
                 SELECT {USER_COLUMNS} FROM ins \
                 UNION ALL \
                 SELECT {USER_COLUMNS} FROM auth.users \
                 WHERE lower(email) = lower($2) AND NOT EXISTS (SELECT 1 FROM ins)"
            ))
            .await
            .map_err(db_err)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
            &Uuid::now_v7(),
            &new.email.as_str(),
            &new.name,
            &new.password_hash,
        ];
        if let Some(row) = c.query_opt(&stmt, &params).await.map_err(db_err)? {
            return user_from_row(&row);
        }
        // Another instance inserted the row concurrently (not visible to our snapshot): it is
        // committed now, so a plain read finds it.
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM auth.users WHERE lower(email) = lower($1)"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_one(&stmt, &[&new.email.as_str()])
            .await
            .map_err(db_err)?;
        user_from_row(&row)
    }
}
