//! Agents, chat sessions, memories, circles and provider settings on PostgreSQL (schema `agents`).
//!
//! [`PgAgentStore`] implements [`AgentRepository`], [`CircleRepository`] and
//! [`ProviderSettingsRepository`].

use crate::error::invalid;
use crate::error::{db_err, fk_conflict};
use crate::page::query_page;
use crate::pool::{PgPool, conn};
use async_trait::async_trait;
use gathering_domain::agents::{
    Agent, AgentPatch, AgentRepository, ChatRole, Circle, CircleDetail, CircleMember,
    CircleRepository, CircleRole, CircleTask, CircleTaskDetail, Memory, NewAgent, NewCircle,
    NewMessage, NewTaskTurn, Provider, ProviderInfo, ProviderSetting, ProviderSettingChange,
    ProviderSettingsRepository, StoredMessage, TaskStatus, TaskTurn, Usage,
};
use gathering_domain::{Page, PageRequest, RepoError};
use tokio_postgres::Row;
use uuid::Uuid;

/// Longest transcript `get_task` returns.
pub const MAX_TRANSCRIPT_TURNS: i64 = 1000;

const AGENT_COLUMNS: &str = "a.id, a.owner_id, a.name, a.persona, a.provider, a.model, \
     a.temperature, a.tools, a.created_at, a.updated_at";

const MESSAGE_COLUMNS: &str = "id, session_id, role, content, tool_calls, tool_call_id, \
     prompt_tokens, completion_tokens, created_at";

const TASK_COLUMNS: &str = "id, circle_id, owner_id, title, description, status, result, error, \
     created_at, finished_at";

const TURN_COLUMNS: &str =
    "id, task_id, round, agent_id, speaker, content, prompt_tokens, completion_tokens, created_at";

fn tokens(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn agent_from_row(row: &Row) -> Result<Agent, RepoError> {
    let provider: String = row.try_get("provider").map_err(db_err)?;
    Ok(Agent {
        id: row.try_get("id").map_err(db_err)?,
        owner_id: row.try_get("owner_id").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        persona: row.try_get("persona").map_err(db_err)?,
        provider: Provider::parse(&provider)
            .ok_or_else(|| invalid("agents.agents.provider", &provider))?,
        model: row.try_get("model").map_err(db_err)?,
        temperature: row.try_get("temperature").map_err(db_err)?,
        tools: row.try_get("tools").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        updated_at: row.try_get("updated_at").map_err(db_err)?,
    })
}

fn message_from_row(row: &Row) -> Result<StoredMessage, RepoError> {
    let role: String = row.try_get("role").map_err(db_err)?;
    let tool_calls: Option<serde_json::Value> = row.try_get("tool_calls").map_err(db_err)?;
    Ok(StoredMessage {
        id: row.try_get("id").map_err(db_err)?,
        session_id: row.try_get("session_id").map_err(db_err)?,
        role: ChatRole::parse(&role).ok_or_else(|| invalid("agents.chat_messages.role", &role))?,
        content: row.try_get("content").map_err(db_err)?,
        tool_calls: tool_calls.unwrap_or(serde_json::Value::Null),
        tool_call_id: row.try_get("tool_call_id").map_err(db_err)?,
        usage: Usage {
            prompt_tokens: tokens(row.try_get("prompt_tokens").map_err(db_err)?),
            completion_tokens: tokens(row.try_get("completion_tokens").map_err(db_err)?),
        },
        created_at: row.try_get("created_at").map_err(db_err)?,
    })
}

fn memory_from_row(row: &Row) -> Result<Memory, RepoError> {
    Ok(Memory {
        id: row.try_get("id").map_err(db_err)?,
        agent_id: row.try_get("agent_id").map_err(db_err)?,
        owner_id: row.try_get("owner_id").map_err(db_err)?,
        content: row.try_get("content").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
    })
}

fn task_from_row(row: &Row) -> Result<CircleTask, RepoError> {
    let status: String = row.try_get("status").map_err(db_err)?;
    Ok(CircleTask {
        id: row.try_get("id").map_err(db_err)?,
        circle_id: row.try_get("circle_id").map_err(db_err)?,
        owner_id: row.try_get("owner_id").map_err(db_err)?,
        title: row.try_get("title").map_err(db_err)?,
        description: row.try_get("description").map_err(db_err)?,
        status: TaskStatus::parse(&status)
            .ok_or_else(|| invalid("agents.circle_tasks.status", &status))?,
        result: row.try_get("result").map_err(db_err)?,
        error: row.try_get("error").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        finished_at: row.try_get("finished_at").map_err(db_err)?,
    })
}

fn turn_from_row(row: &Row) -> Result<TaskTurn, RepoError> {
    Ok(TaskTurn {
        id: row.try_get("id").map_err(db_err)?,
        task_id: row.try_get("task_id").map_err(db_err)?,
        round: row.try_get("round").map_err(db_err)?,
        agent_id: row.try_get("agent_id").map_err(db_err)?,
        speaker: row.try_get("speaker").map_err(db_err)?,
        content: row.try_get("content").map_err(db_err)?,
        usage: Usage {
            prompt_tokens: tokens(row.try_get("prompt_tokens").map_err(db_err)?),
            completion_tokens: tokens(row.try_get("completion_tokens").map_err(db_err)?),
        },
        created_at: row.try_get("created_at").map_err(db_err)?,
    })
}

fn setting_from_row(row: &Row) -> Result<ProviderSetting, RepoError> {
    let provider: String = row.try_get("provider").map_err(db_err)?;
    Ok(ProviderSetting {
        owner_id: row.try_get("owner_id").map_err(db_err)?,
        provider: Provider::parse(&provider)
            .ok_or_else(|| invalid("agents.provider_settings.provider", &provider))?,
        base_url: row.try_get("base_url").map_err(db_err)?,
        api_key_encrypted: row.try_get("api_key_encrypted").map_err(db_err)?,
        key_hint: row.try_get("key_hint").map_err(db_err)?,
        updated_at: row.try_get("updated_at").map_err(db_err)?,
    })
}

#[derive(Clone)]
pub struct PgAgentStore {
    pool: PgPool,
}

impl PgAgentStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl AgentRepository for PgAgentStore {
    async fn create_agent(&self, new: NewAgent) -> Result<Agent, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "INSERT INTO agents.agents AS a \
                   (id, owner_id, name, persona, provider, model, temperature, tools) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {AGENT_COLUMNS}"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_one(
                &stmt,
                &[
                    &Uuid::now_v7(),
                    &new.owner_id,
                    &new.name,
                    &new.persona,
                    &new.provider.as_str(),
                    &new.model,
                    &new.temperature,
                    &new.tools,
                ],
            )
            .await
            .map_err(fk_conflict("user"))?;
        agent_from_row(&row)
    }

    async fn get_agent(&self, owner: Uuid, id: Uuid) -> Result<Option<Agent>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {AGENT_COLUMNS} FROM agents.agents a WHERE a.id = $1 AND a.owner_id = $2"
            ))
            .await
            .map_err(db_err)?;
        let row = c.query_opt(&stmt, &[&id, &owner]).await.map_err(db_err)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn list_agents(&self, owner: Uuid, page: PageRequest) -> Result<Page<Agent>, RepoError> {
        let c = conn(&self.pool).await?;
        query_page(
            &c,
            &format!(
                "SELECT {AGENT_COLUMNS} FROM agents.agents a \
                 WHERE a.owner_id = $1 AND ($2::uuid IS NULL OR a.id < $2) \
                 ORDER BY a.id DESC LIMIT $3"
            ),
            &[&owner, &page.cursor, &page.fetch_limit()],
            page,
            agent_from_row,
            |a| a.id,
        )
        .await
    }

    async fn update_agent(
        &self,
        owner: Uuid,
        id: Uuid,
        patch: AgentPatch,
    ) -> Result<Option<Agent>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "UPDATE agents.agents AS a SET \
                   name = COALESCE($3, a.name), \
                   persona = COALESCE($4, a.persona), \
                   provider = COALESCE($5, a.provider), \
                   model = COALESCE($6, a.model), \
                   temperature = COALESCE($7, a.temperature), \
                   tools = COALESCE($8, a.tools), \
                   updated_at = now() \
                 WHERE a.id = $1 AND a.owner_id = $2 RETURNING {AGENT_COLUMNS}"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_opt(
                &stmt,
                &[
                    &id,
                    &owner,
                    &patch.name,
                    &patch.persona,
                    &patch.provider.map(Provider::as_str),
                    &patch.model,
                    &patch.temperature,
                    &patch.tools,
                ],
            )
            .await
            .map_err(db_err)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn delete_agent(&self, owner: Uuid, id: Uuid) -> Result<bool, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached("DELETE FROM agents.agents WHERE id = $1 AND owner_id = $2")
            .await
            .map_err(db_err)?;
        let n = c.execute(&stmt, &[&id, &owner]).await.map_err(db_err)?;
        Ok(n > 0)
    }

    async fn open_session(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        session: Option<Uuid>,
    ) -> Result<Option<Uuid>, RepoError> {
        let c = conn(&self.pool).await?;
        match session {
            Some(sid) => {
                let stmt = c
                    .prepare_cached(
                        "SELECT id FROM agents.chat_sessions \
                         WHERE id = $1 AND agent_id = $2 AND owner_id = $3",
                    )
                    .await
                    .map_err(db_err)?;
                let row = c
                    .query_opt(&stmt, &[&sid, &agent_id, &owner])
                    .await
                    .map_err(db_err)?;
                Ok(row.map(|_| sid))
            }
            None => {
                let stmt = c
                    .prepare_cached(
                        "INSERT INTO agents.chat_sessions (id, agent_id, owner_id) \
                         VALUES ($1, $2, $3)",
                    )
                    .await
                    .map_err(db_err)?;
                let sid = Uuid::now_v7();
                c.execute(&stmt, &[&sid, &agent_id, &owner])
                    .await
                    .map_err(fk_conflict("agent"))?;
                Ok(Some(sid))
            }
        }
    }

    async fn open_keyed_session(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        key: &str,
    ) -> Result<(Uuid, bool), RepoError> {
        let c = conn(&self.pool).await?;
        // Insert, or find the existing row, in one statement.
        let stmt = c
            .prepare_cached(
                "WITH ins AS ( \
                   INSERT INTO agents.chat_sessions (id, agent_id, owner_id, idempotency_key) \
                   VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (owner_id, agent_id, idempotency_key) DO NOTHING RETURNING id) \
                 SELECT id, false AS existed FROM ins \
                 UNION ALL \
                 SELECT id, true FROM agents.chat_sessions \
                 WHERE owner_id = $3 AND agent_id = $2 AND idempotency_key = $4 \
                 LIMIT 1",
            )
            .await
            .map_err(db_err)?;
        let row = c
            .query_opt(&stmt, &[&Uuid::now_v7(), &agent_id, &owner, &key])
            .await
            .map_err(fk_conflict("agent"))?;
        match row {
            Some(r) => Ok((
                r.try_get("id").map_err(db_err)?,
                r.try_get("existed").map_err(db_err)?,
            )),
            // Lost a race with a concurrent insert of the same key: it is committed now.
            None => {
                let again = c
                    .prepare_cached(
                        "SELECT id FROM agents.chat_sessions \
                         WHERE owner_id = $1 AND agent_id = $2 AND idempotency_key = $3",
                    )
                    .await
                    .map_err(db_err)?;
                let r = c
                    .query_one(&again, &[&owner, &agent_id, &key])
                    .await
                    .map_err(db_err)?;
                Ok((r.try_get("id").map_err(db_err)?, true))
            }
        }
    }

    async fn append_messages(
        &self,
        session_id: Uuid,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<StoredMessage>, RepoError> {
        let mut c = conn(&self.pool).await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let stmt = tx
            .prepare_cached(&format!(
                "INSERT INTO agents.chat_messages \
                   (id, session_id, role, content, tool_calls, tool_call_id, \
                    prompt_tokens, completion_tokens) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {MESSAGE_COLUMNS}"
            ))
            .await
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let tool_calls = (!m.tool_calls.is_null()).then_some(&m.tool_calls);
            let row = tx
                .query_one(
                    &stmt,
                    &[
                        &Uuid::now_v7(),
                        &session_id,
                        &m.role.as_str(),
                        &m.content,
                        &tool_calls,
                        &m.tool_call_id,
                        &to_i64(m.usage.prompt_tokens),
                        &to_i64(m.usage.completion_tokens),
                    ],
                )
                .await
                .map_err(fk_conflict("session"))?;
            out.push(message_from_row(&row)?);
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn recent_messages(
        &self,
        session_id: Uuid,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM agents.chat_messages \
                 WHERE session_id = $1 ORDER BY id DESC LIMIT $2"
            ))
            .await
            .map_err(db_err)?;
        let rows = c
            .query(&stmt, &[&session_id, &i64::from(limit)])
            .await
            .map_err(db_err)?;
        let mut msgs = rows
            .iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        msgs.reverse();
        Ok(msgs)
    }

    async fn add_memory(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        content: String,
    ) -> Result<Memory, RepoError> {
        let c = conn(&self.pool).await?;
        // Inserts only when the agent belongs to the owner.
        let stmt = c
            .prepare_cached(
                "INSERT INTO agents.memories (id, agent_id, owner_id, content) \
                 SELECT $1, a.id, a.owner_id, $4 FROM agents.agents a \
                 WHERE a.id = $2 AND a.owner_id = $3 \
                 RETURNING id, agent_id, owner_id, content, created_at",
            )
            .await
            .map_err(db_err)?;
        let row = c
            .query_opt(&stmt, &[&Uuid::now_v7(), &agent_id, &owner, &content])
            .await
            .map_err(db_err)?;
        match row {
            Some(r) => memory_from_row(&r),
            None => Err(RepoError::NotFound),
        }
    }

    async fn list_memories(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        page: PageRequest,
    ) -> Result<Page<Memory>, RepoError> {
        let c = conn(&self.pool).await?;
        query_page(
            &c,
            "SELECT id, agent_id, owner_id, content, created_at FROM agents.memories \
                 WHERE agent_id = $1 AND owner_id = $2 AND ($3::uuid IS NULL OR id < $3) \
                 ORDER BY id DESC LIMIT $4",
            &[&agent_id, &owner, &page.cursor, &page.fetch_limit()],
            page,
            memory_from_row,
            |m| m.id,
        )
        .await
    }

    async fn recall_memories(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        query: &str,
        limit: u32,
    ) -> Result<Vec<Memory>, RepoError> {
        let c = conn(&self.pool).await?;
        // Words of the query are OR-ed: a memory sharing any stemmed word is a candidate,
        // ranked by ts_rank.
        let stmt = c
            .prepare_cached(
                "WITH q AS ( \
                   SELECT (SELECT string_agg(quote_literal(l), ' | ') \
                           FROM unnest(tsvector_to_array(to_tsvector('english', $3))) AS l \
                          )::tsquery AS query) \
                 SELECT m.id, m.agent_id, m.owner_id, m.content, m.created_at \
                 FROM agents.memories m, q \
                 WHERE m.agent_id = $1 AND m.owner_id = $2 AND m.search @@ q.query \
                 ORDER BY ts_rank(m.search, q.query) DESC, m.id DESC LIMIT $4",
            )
            .await
            .map_err(db_err)?;
        let rows = c
            .query(&stmt, &[&agent_id, &owner, &query, &i64::from(limit)])
            .await
            .map_err(db_err)?;
        rows.iter().map(memory_from_row).collect()
    }
}

#[async_trait]
impl CircleRepository for PgAgentStore {
    async fn create_circle(&self, new: NewCircle) -> Result<Circle, RepoError> {
        let mut c = conn(&self.pool).await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO agents.circles (id, owner_id, name) VALUES ($1, $2, $3) \
                 RETURNING id, owner_id, name, created_at",
            )
            .await
            .map_err(db_err)?;
        let row = tx
            .query_one(&stmt, &[&Uuid::now_v7(), &new.owner_id, &new.name])
            .await
            .map_err(fk_conflict("user"))?;
        let circle = Circle {
            id: row.try_get("id").map_err(db_err)?,
            owner_id: row.try_get("owner_id").map_err(db_err)?,
            name: row.try_get("name").map_err(db_err)?,
            created_at: row.try_get("created_at").map_err(db_err)?,
        };
        let agent_ids: Vec<Uuid> = new.members.iter().map(|m| m.0).collect();
        let roles: Vec<&str> = new.members.iter().map(|m| m.1.as_str()).collect();
        // Only the owner's agents join; the count tells whether every member was accepted.
        let add = tx
            .prepare_cached(
                "INSERT INTO agents.circle_members (circle_id, agent_id, role, position) \
                 SELECT $1, m.agent_id, m.role, m.pos::int \
                 FROM unnest($2::uuid[], $3::text[]) WITH ORDINALITY AS m(agent_id, role, pos) \
                 JOIN agents.agents a ON a.id = m.agent_id AND a.owner_id = $4",
            )
            .await
            .map_err(db_err)?;
        let n = tx
            .execute(&add, &[&circle.id, &agent_ids, &roles, &new.owner_id])
            .await
            .map_err(db_err)?;
        if n != agent_ids.len() as u64 {
            // Dropping the transaction rolls it back.
            return Err(RepoError::Conflict("agent".to_owned()));
        }
        tx.commit().await.map_err(db_err)?;
        Ok(circle)
    }

    /// One statement: the circle, its members, their agents and the owner's provider settings.
    async fn get_circle(&self, owner: Uuid, id: Uuid) -> Result<Option<CircleDetail>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT c.id AS circle_id, c.owner_id AS circle_owner, c.name AS circle_name, \
                        c.created_at AS circle_created_at, m.role, \
                        ps.base_url, (ps.api_key_encrypted IS NOT NULL) AS key_set, \
                        {AGENT_COLUMNS} \
                 FROM agents.circles c \
                 LEFT JOIN agents.circle_members m ON m.circle_id = c.id \
                 LEFT JOIN agents.agents a ON a.id = m.agent_id \
                 LEFT JOIN agents.provider_settings ps \
                        ON ps.owner_id = c.owner_id AND ps.provider = a.provider \
                 WHERE c.id = $1 AND c.owner_id = $2 \
                 ORDER BY m.position"
            ))
            .await
            .map_err(db_err)?;
        let rows = c.query(&stmt, &[&id, &owner]).await.map_err(db_err)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let circle = Circle {
            id: first.try_get("circle_id").map_err(db_err)?,
            owner_id: first.try_get("circle_owner").map_err(db_err)?,
            name: first.try_get("circle_name").map_err(db_err)?,
            created_at: first.try_get("circle_created_at").map_err(db_err)?,
        };
        let mut members = Vec::with_capacity(rows.len());
        for row in &rows {
            let role: Option<String> = row.try_get("role").map_err(db_err)?;
            let Some(role) = role else { continue };
            let agent = agent_from_row(row)?;
            let key_set: Option<bool> = row.try_get("key_set").map_err(db_err)?;
            members.push(CircleMember {
                role: CircleRole::parse(&role)
                    .ok_or_else(|| invalid("agents.circle_members.role", &role))?,
                provider: ProviderInfo {
                    provider: agent.provider,
                    base_url: row.try_get("base_url").map_err(db_err)?,
                    key_set: key_set.unwrap_or(false),
                },
                agent,
            });
        }
        Ok(Some(CircleDetail { circle, members }))
    }

    async fn create_task(
        &self,
        owner: Uuid,
        circle_id: Uuid,
        title: String,
        description: String,
    ) -> Result<CircleTask, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "INSERT INTO agents.circle_tasks (id, circle_id, owner_id, title, description, status) \
                 SELECT $1, c.id, c.owner_id, $4, $5, 'running' FROM agents.circles c \
                 WHERE c.id = $2 AND c.owner_id = $3 RETURNING {TASK_COLUMNS}"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_opt(
                &stmt,
                &[&Uuid::now_v7(), &circle_id, &owner, &title, &description],
            )
            .await
            .map_err(db_err)?;
        match row {
            Some(r) => task_from_row(&r),
            None => Err(RepoError::NotFound),
        }
    }

    async fn append_turn(&self, task_id: Uuid, turn: NewTaskTurn) -> Result<TaskTurn, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "INSERT INTO agents.circle_task_turns \
                   (id, task_id, round, agent_id, speaker, content, prompt_tokens, completion_tokens) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {TURN_COLUMNS}"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_one(
                &stmt,
                &[
                    &Uuid::now_v7(),
                    &task_id,
                    &turn.round,
                    &turn.agent_id,
                    &turn.speaker,
                    &turn.content,
                    &to_i64(turn.usage.prompt_tokens),
                    &to_i64(turn.usage.completion_tokens),
                ],
            )
            .await
            .map_err(fk_conflict("task"))?;
        turn_from_row(&row)
    }

    async fn finish_task(
        &self,
        task_id: Uuid,
        status: TaskStatus,
        result: Option<String>,
        error: Option<String>,
    ) -> Result<CircleTask, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "UPDATE agents.circle_tasks SET status = $2, result = $3, error = $4, \
                   finished_at = now() \
                 WHERE id = $1 RETURNING {TASK_COLUMNS}"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_opt(&stmt, &[&task_id, &status.as_str(), &result, &error])
            .await
            .map_err(db_err)?;
        match row {
            Some(r) => task_from_row(&r),
            None => Err(RepoError::NotFound),
        }
    }

    async fn get_task(
        &self,
        owner: Uuid,
        task_id: Uuid,
    ) -> Result<Option<CircleTaskDetail>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM agents.circle_tasks WHERE id = $1 AND owner_id = $2"
            ))
            .await
            .map_err(db_err)?;
        let Some(row) = c
            .query_opt(&stmt, &[&task_id, &owner])
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let task = task_from_row(&row)?;
        let turns = c
            .prepare_cached(&format!(
                "SELECT {TURN_COLUMNS} FROM agents.circle_task_turns \
                 WHERE task_id = $1 ORDER BY id LIMIT $2"
            ))
            .await
            .map_err(db_err)?;
        let rows = c
            .query(&turns, &[&task_id, &MAX_TRANSCRIPT_TURNS])
            .await
            .map_err(db_err)?;
        let transcript = rows
            .iter()
            .map(turn_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(CircleTaskDetail { task, transcript }))
    }
}

#[async_trait]
impl ProviderSettingsRepository for PgAgentStore {
    async fn upsert_provider_setting(
        &self,
        owner: Uuid,
        provider: Provider,
        change: ProviderSettingChange,
    ) -> Result<ProviderSetting, RepoError> {
        let c = conn(&self.pool).await?;
        let set_url = change.base_url.is_some();
        let url = change.base_url.flatten();
        let set_key = change.api_key.is_some();
        let (key, hint) = match change.api_key.flatten() {
            Some((k, h)) => (Some(k), Some(h)),
            None => (None, None),
        };
        let stmt = c
            .prepare_cached(
                "INSERT INTO agents.provider_settings \
                   (owner_id, provider, base_url, api_key_encrypted, key_hint) \
                 VALUES ($1, $2, $4, $6, $7) \
                 ON CONFLICT (owner_id, provider) DO UPDATE SET \
                   base_url = CASE WHEN $3 THEN EXCLUDED.base_url \
                                   ELSE agents.provider_settings.base_url END, \
                   api_key_encrypted = CASE WHEN $5 THEN EXCLUDED.api_key_encrypted \
                                   ELSE agents.provider_settings.api_key_encrypted END, \
                   key_hint = CASE WHEN $5 THEN EXCLUDED.key_hint \
                                   ELSE agents.provider_settings.key_hint END, \
                   updated_at = now() \
                 RETURNING owner_id, provider, base_url, api_key_encrypted, key_hint, updated_at",
            )
            .await
            .map_err(db_err)?;
        let row = c
            .query_one(
                &stmt,
                &[
                    &owner,
                    &provider.as_str(),
                    &set_url,
                    &url,
                    &set_key,
                    &key,
                    &hint,
                ],
            )
            .await
            .map_err(fk_conflict("user"))?;
        setting_from_row(&row)
    }

    async fn get_provider_setting(
        &self,
        owner: Uuid,
        provider: Provider,
    ) -> Result<Option<ProviderSetting>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "SELECT owner_id, provider, base_url, api_key_encrypted, key_hint, updated_at \
                 FROM agents.provider_settings WHERE owner_id = $1 AND provider = $2",
            )
            .await
            .map_err(db_err)?;
        let row = c
            .query_opt(&stmt, &[&owner, &provider.as_str()])
            .await
            .map_err(db_err)?;
        row.as_ref().map(setting_from_row).transpose()
    }

    async fn list_provider_settings(&self, owner: Uuid) -> Result<Vec<ProviderSetting>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "SELECT owner_id, provider, base_url, api_key_encrypted, key_hint, updated_at \
                 FROM agents.provider_settings WHERE owner_id = $1 ORDER BY provider LIMIT 16",
            )
            .await
            .map_err(db_err)?;
        let rows = c.query(&stmt, &[&owner]).await.map_err(db_err)?;
        rows.iter().map(setting_from_row).collect()
    }
}
