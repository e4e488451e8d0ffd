//! Circles: agents with roles working a task together. A facilitator assigns the task to the
//! lead; the other members contribute in turns (bounded rounds); the lead writes the result.
//! The transcript and result persist; progress is published as events.

use crate::error::LlmError;
use crate::service::AgentService;
use gathering_domain::agents::{
    Circle, CircleDetail, CircleMember, CircleRepository, CircleRole, CircleTaskDetail, NewCircle,
    NewTaskTurn, TaskStatus, Usage,
};
use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::{ErrorCode, FieldProblem, RepoError};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

pub const MAX_MEMBERS: usize = 16;
pub const MAX_ROUNDS: u32 = 5;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 20_000;
/// The transcript shown to a member is cut to its most recent characters.
pub const TRANSCRIPT_CHARS: usize = 16_000;
/// Turn content carried in a `circle.task.turn` event.
pub const EVENT_CONTENT_CHARS: usize = 2_000;

/// Which task a turn belongs to.
#[derive(Debug, Clone, Copy)]
struct TaskRef {
    owner: Uuid,
    circle_id: Uuid,
    task_id: Uuid,
}

pub struct CircleService {
    circles: Arc<dyn CircleRepository>,
    agents: Arc<AgentService>,
    events: Arc<dyn EventPublisher>,
    rounds: u32,
}

fn tail(s: &str, max: usize) -> &str {
    let n = s.chars().count();
    if n <= max {
        return s;
    }
    let skip = n - max;
    match s.char_indices().nth(skip) {
        Some((i, _)) => &s[i..],
        None => s,
    }
}

fn head(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl CircleService {
    /// `rounds`: member rounds after the lead's first answer (capped at [`MAX_ROUNDS`]).
    pub fn new(
        circles: Arc<dyn CircleRepository>,
        agents: Arc<AgentService>,
        events: Arc<dyn EventPublisher>,
        rounds: u32,
    ) -> Self {
        Self {
            circles,
            agents,
            events,
            rounds: rounds.min(MAX_ROUNDS),
        }
    }

    pub async fn create(
        &self,
        owner: Uuid,
        name: String,
        members: Vec<(Uuid, String)>,
    ) -> Result<Circle, LlmError> {
        let mut problems = Vec::new();
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > MAX_TITLE_CHARS {
            problems.push(FieldProblem::new("/name", "must be 1 to 200 characters"));
        }
        if members.is_empty() || members.len() > MAX_MEMBERS {
            problems.push(FieldProblem::new("/members", "must list 1 to 16 agents"));
        }
        let mut parsed = Vec::with_capacity(members.len());
        for (i, (agent, role)) in members.iter().enumerate() {
            match CircleRole::parse(role) {
                Some(r) => parsed.push((*agent, r)),
                None => problems.push(FieldProblem::new(
                    format!("/members/{i}/role"),
                    "must be lead, member or reviewer",
                )),
            }
            if members[..i].iter().any(|(a, _)| a == agent) {
                problems.push(FieldProblem::new(
                    format!("/members/{i}/agent_id"),
                    "duplicate agent",
                ));
            }
        }
        let leads = parsed.iter().filter(|m| m.1 == CircleRole::Lead).count();
        if !members.is_empty() && leads != 1 {
            problems.push(FieldProblem::new(
                "/members",
                "exactly one member must have the role lead",
            ));
        }
        if !problems.is_empty() {
            return Err(LlmError::Validation(problems));
        }
        match self
            .circles
            .create_circle(NewCircle {
                owner_id: owner,
                name,
                members: parsed,
            })
            .await
        {
            Err(RepoError::Conflict(w)) if w == "agent" => Err(LlmError::validation(
                "/members",
                "every member must be one of your agents",
            )),
            other => Ok(other?),
        }
    }

    pub async fn get(&self, owner: Uuid, id: Uuid) -> Result<CircleDetail, LlmError> {
        self.circles
            .get_circle(owner, id)
            .await?
            .ok_or(LlmError::NotFound)
    }

    pub async fn get_task(&self, owner: Uuid, task_id: Uuid) -> Result<CircleTaskDetail, LlmError> {
        self.circles
            .get_task(owner, task_id)
            .await?
            .ok_or(LlmError::NotFound)
    }

    fn publish(&self, owner: Uuid, kind: &str, data: serde_json::Value) {
        self.events.publish(Event::new(owner, kind, data));
    }

    async fn turn(
        &self,
        at: TaskRef,
        round: i32,
        member: Option<&CircleMember>,
        content: String,
        usage: Usage,
        transcript: &mut String,
    ) -> Result<(), LlmError> {
        let speaker = match member {
            Some(m) => format!("{} ({})", m.agent.name, m.role.as_str()),
            None => "facilitator".to_owned(),
        };
        transcript.push_str(&format!("[{speaker}]\n{content}\n\n"));
        let TaskRef {
            owner,
            circle_id,
            task_id,
        } = at;
        let t = self
            .circles
            .append_turn(
                task_id,
                NewTaskTurn {
                    round,
                    agent_id: member.map(|m| m.agent.id),
                    speaker: speaker.clone(),
                    content: content.clone(),
                    usage,
                },
            )
            .await?;
        self.publish(
            owner,
            "circle.task.turn",
            json!({
                "circle_id": circle_id,
                "task_id": task_id,
                "turn_id": t.id,
                "round": round,
                "speaker": speaker,
                "agent_id": t.agent_id,
                "content": head(&content, EVENT_CONTENT_CHARS),
            }),
        );
        Ok(())
    }

    /// Works a task to the end and returns it with its transcript. A provider failure ends the
    /// task as `failed` (with the reason) rather than failing the call.
    pub async fn run_task(
        &self,
        owner: Uuid,
        circle_id: Uuid,
        title: String,
        description: String,
    ) -> Result<CircleTaskDetail, LlmError> {
        let title = title.trim().to_owned();
        let mut problems = Vec::new();
        if title.is_empty() || title.chars().count() > MAX_TITLE_CHARS {
            problems.push(FieldProblem::new("/title", "must be 1 to 200 characters"));
        }
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            problems.push(FieldProblem::new(
                "/description",
                "must be at most 20000 characters",
            ));
        }
        if !problems.is_empty() {
            return Err(LlmError::Validation(problems));
        }
        let circle = self.get(owner, circle_id).await?;
        let task = match self
            .circles
            .create_task(owner, circle_id, title.clone(), description.clone())
            .await
        {
            Err(RepoError::NotFound) => return Err(LlmError::NotFound),
            other => other?,
        };
        self.publish(
            owner,
            "circle.task.started",
            json!({"circle_id": circle_id, "task_id": task.id, "title": title}),
        );
        let outcome = self
            .work(owner, &circle, task.id, &title, &description)
            .await;
        let (status, result, error) = match outcome {
            Ok(result) => (TaskStatus::Succeeded, Some(result), None),
            Err(e) => {
                tracing::warn!(task_id = %task.id, error = %e, "circle task failed");
                (TaskStatus::Failed, None, Some(e.public_message()))
            }
        };
        self.circles
            .finish_task(task.id, status, result, error.clone())
            .await?;
        self.publish(
            owner,
            "circle.task.finished",
            json!({"circle_id": circle_id, "task_id": task.id, "status": status.as_str(),
                   "error": error}),
        );
        self.get_task(owner, task.id).await
    }

    async fn work(
        &self,
        owner: Uuid,
        circle: &CircleDetail,
        task_id: Uuid,
        title: &str,
        description: &str,
    ) -> Result<String, LlmError> {
        let at = TaskRef {
            owner,
            circle_id: circle.circle.id,
            task_id,
        };
        let lead = circle
            .members
            .iter()
            .find(|m| m.role == CircleRole::Lead)
            .or_else(|| circle.members.first())
            .ok_or_else(|| LlmError::validation("/members", "the circle has no members"))?;
        let others: Vec<&CircleMember> = circle
            .members
            .iter()
            .filter(|m| m.agent.id != lead.agent.id)
            .collect();
        let mut transcript = String::new();
        let task_text = format!("Task: {title}\n\n{description}");
        self.turn(
            at,
            0,
            None,
            format!("{} leads this task.\n{task_text}", lead.agent.name),
            Usage::default(),
            &mut transcript,
        )
        .await?;

        let (first, usage) = self
            .agents
            .respond(
                &lead.agent,
                &format!(
                    "You lead the circle \"{}\". {task_text}\n\nGive your answer; the other \
                     members will review it.",
                    circle.circle.name
                ),
            )
            .await?;
        self.turn(at, 0, Some(lead), first.clone(), usage, &mut transcript)
            .await?;
        if others.is_empty() {
            return Ok(first);
        }
        for round in 1..=self.rounds {
            for m in &others {
                let prompt = format!(
                    "You are a {} of the circle \"{}\". {task_text}\n\nThe discussion so far:\n\n{}\
                     Add your contribution: improve, correct or complete it. Be concise.",
                    m.role.as_str(),
                    circle.circle.name,
                    tail(&transcript, TRANSCRIPT_CHARS)
                );
                let (text, usage) = self.agents.respond(&m.agent, &prompt).await?;
                self.turn(at, round as i32, Some(m), text, usage, &mut transcript)
                    .await?;
            }
        }
        let prompt = format!(
            "You lead the circle \"{}\". {task_text}\n\nThe discussion:\n\n{}Write the final \
             result, taking the contributions into account.",
            circle.circle.name,
            tail(&transcript, TRANSCRIPT_CHARS)
        );
        let (result, usage) = self.agents.respond(&lead.agent, &prompt).await?;
        self.turn(
            at,
            self.rounds as i32 + 1,
            Some(lead),
            result.clone(),
            usage,
            &mut transcript,
        )
        .await?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_characters_on_char_boundaries() {
        assert_eq!(tail("héllo", 3), "llo");
        assert_eq!(tail("hé", 5), "hé");
        assert_eq!(tail("éé", 1), "é");
    }
}
