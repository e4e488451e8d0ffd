//! `PgAgentStore` against the real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_domain::agents::{
    AgentPatch, AgentRepository, ChatRole, CircleRepository, CircleRole, NewAgent, NewCircle,
    NewMessage, NewTaskTurn, Provider, ProviderSettingChange, ProviderSettingsRepository,
    TaskStatus, Usage,
};
use gathering_domain::{PageRequest, RepoError};
use gathering_store::agents::PgAgentStore;
use gathering_store::pool::{PoolSettings, conn, connect};
use gathering_store::test_support::{CountingProxy, TestDb, with_database};
use uuid::Uuid;

fn new_agent(owner: Uuid, name: &str, provider: Provider) -> NewAgent {
    NewAgent {
        owner_id: owner,
        name: name.to_owned(),
        persona: format!("You are {name}."),
        provider,
        model: "m-1".to_owned(),
        temperature: 0.5,
        tools: vec!["echo".to_owned()],
    }
}

#[tokio::test]
async fn agents_are_scoped_to_their_owner() {
    let db = TestDb::new().await.unwrap();
    let store = PgAgentStore::new(db.pool.clone());
    let alice = db.user().await;
    let bob = db.user().await;
    let a = store
        .create_agent(new_agent(alice, "ada", Provider::OpenAi))
        .await
        .unwrap();
    assert_eq!(a.tools, vec!["echo".to_owned()]);
    assert!(store.get_agent(alice, a.id).await.unwrap().is_some());
    assert!(store.get_agent(bob, a.id).await.unwrap().is_none());
    assert!(
        store
            .update_agent(bob, a.id, AgentPatch::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(!store.delete_agent(bob, a.id).await.unwrap());
    assert!(
        store
            .list_agents(bob, PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let patched = store
        .update_agent(
            alice,
            a.id,
            AgentPatch {
                model: Some("m-2".into()),
                provider: Some(Provider::Anthropic),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(patched.model, "m-2");
    assert_eq!(patched.provider, Provider::Anthropic);
    assert_eq!(patched.name, "ada");
    assert!(store.delete_agent(alice, a.id).await.unwrap());
    assert!(store.get_agent(alice, a.id).await.unwrap().is_none());
}

#[tokio::test]
async fn agent_list_pages_newest_first() {
    let db = TestDb::new().await.unwrap();
    let store = PgAgentStore::new(db.pool.clone());
    let owner = db.user().await;
    for i in 0..3 {
        store
            .create_agent(new_agent(owner, &format!("a{i}"), Provider::Ollama))
            .await
            .unwrap();
    }
    let p1 = store
        .list_agents(owner, PageRequest::new(Some(2), None))
        .await
        .unwrap();
    assert_eq!(p1.items.len(), 2);
    assert_eq!(p1.items[0].name, "a2");
    let cursor = p1.next_cursor.unwrap().parse().unwrap();
    let p2 = store
        .list_agents(owner, PageRequest::new(Some(2), Some(cursor)))
        .await
        .unwrap();
    assert_eq!(p2.items.len(), 1);
    assert_eq!(p2.items[0].name, "a0");
    assert!(p2.next_cursor.is_none());
}

#[tokio::test]
async fn chat_messages_persist_in_order_with_usage() {
    let db = TestDb::new().await.unwrap();
    let store = PgAgentStore::new(db.pool.clone());
    let owner = db.user().await;
    let other = db.user().await;
    let a = store
        .create_agent(new_agent(owner, "ada", Provider::OpenAi))
        .await
        .unwrap();
    let sid = store
        .open_session(owner, a.id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.open_session(owner, a.id, Some(sid)).await.unwrap(),
        Some(sid)
    );
    assert_eq!(
        store.open_session(other, a.id, Some(sid)).await.unwrap(),
        None
    );
    let mut reply = NewMessage::text(ChatRole::Assistant, "hello");
    reply.usage = Usage {
        prompt_tokens: 12,
        completion_tokens: 3,
    };
    store
        .append_messages(sid, vec![NewMessage::text(ChatRole::User, "hi"), reply])
        .await
        .unwrap();
    store
        .append_messages(sid, vec![NewMessage::text(ChatRole::User, "again")])
        .await
        .unwrap();
    let last_two = store.recent_messages(sid, 2).await.unwrap();
    assert_eq!(
        last_two
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        vec!["hello", "again"]
    );
    assert_eq!(last_two[0].usage.prompt_tokens, 12);
    assert_eq!(last_two[0].role, ChatRole::Assistant);
}

#[tokio::test]
async fn memories_are_recalled_by_relevance_and_owner() {
    let db = TestDb::new().await.unwrap();
    let store = PgAgentStore::new(db.pool.clone());
    let owner = db.user().await;
    let other = db.user().await;
    let a = store
        .create_agent(new_agent(owner, "ada", Provider::OpenAi))
        .await
        .unwrap();
    store
        .add_memory(owner, a.id, "The user's cat is called Miso".into())
        .await
        .unwrap();
    store
        .add_memory(owner, a.id, "The user prefers tea over coffee".into())
        .await
        .unwrap();
    store
        .add_memory(owner, a.id, "Cats and dogs: the user owns two cats".into())
        .await
        .unwrap();
    assert!(matches!(
        store.add_memory(other, a.id, "intrusion".into()).await,
        Err(RepoError::NotFound)
    ));

    let hits = store
        .recall_memories(owner, a.id, "what is my cat's name?", 5)
        .await
        .unwrap();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert!(
        hits.iter()
            .all(|m| m.content.to_lowercase().contains("cat"))
    );
    let coffee = store
        .recall_memories(owner, a.id, "coffee", 5)
        .await
        .unwrap();
    assert_eq!(coffee.len(), 1);
    assert!(
        store
            .recall_memories(owner, a.id, "the", 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .recall_memories(other, a.id, "cat", 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .recall_memories(owner, a.id, "cat", 1)
            .await
            .unwrap()
            .len(),
        1
    );
    let page = store
        .list_memories(owner, a.id, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);
}

#[tokio::test]
async fn get_circle_loads_members_agents_and_providers_in_one_query() {
    let db = TestDb::new().await.unwrap();
    let store = PgAgentStore::new(db.pool.clone());
    let owner = db.user().await;
    let mut members = Vec::new();
    for (i, p) in [Provider::OpenAi, Provider::Anthropic, Provider::Ollama]
        .into_iter()
        .enumerate()
    {
        let a = store
            .create_agent(new_agent(owner, &format!("a{i}"), p))
            .await
            .unwrap();
        members.push((
            a.id,
            if i == 0 {
                CircleRole::Lead
            } else {
                CircleRole::Member
            },
        ));
    }
    store
        .upsert_provider_setting(
            owner,
            Provider::Anthropic,
            ProviderSettingChange {
                base_url: Some(Some("http://127.0.0.1:9".into())),
                api_key: Some(Some((vec![1, 2, 3], "…2345".into()))),
            },
        )
        .await
        .unwrap();
    let circle = store
        .create_circle(NewCircle {
            owner_id: owner,
            name: "council".into(),
            members: members.clone(),
        })
        .await
        .unwrap();

    // Count on the wire, through a proxy, what get_circle really sends (PERF-02).
    let proxy = CountingProxy::start().await.unwrap();
    let counted = PgAgentStore::new(
        connect(
            &with_database(&proxy.url, &db.name),
            &PoolSettings::default(),
        )
        .unwrap(),
    );
    let before = proxy.executed();
    let detail = counted.get_circle(owner, circle.id).await.unwrap().unwrap();
    assert_eq!(proxy.executed() - before, 1, "get_circle must be one query");
    // The proxy does count: a second call is a second statement.
    counted.get_circle(owner, circle.id).await.unwrap().unwrap();
    assert_eq!(proxy.executed() - before, 2);
    assert_eq!(detail.members.len(), 3);
    assert_eq!(detail.members[0].role, CircleRole::Lead);
    assert_eq!(detail.members[0].agent.id, members[0].0);
    assert_eq!(detail.members[1].provider.provider, Provider::Anthropic);
    assert!(detail.members[1].provider.key_set);
    assert_eq!(
        detail.members[1].provider.base_url.as_deref(),
        Some("http://127.0.0.1:9")
    );
    assert!(!detail.members[2].provider.key_set);

    // Another user sees nothing.
    let other = db.user().await;
    assert!(store.get_circle(other, circle.id).await.unwrap().is_none());
}

#[tokio::test]
async fn circle_with_a_foreign_agent_is_refused_and_not_created() {
    let db = TestDb::new().await.unwrap();
    let store = PgAgentStore::new(db.pool.clone());
    let owner = db.user().await;
    let other = db.user().await;
    let mine = store
        .create_agent(new_agent(owner, "mine", Provider::OpenAi))
        .await
        .unwrap();
    let theirs = store
        .create_agent(new_agent(other, "theirs", Provider::OpenAi))
        .await
        .unwrap();
    let err = store
        .create_circle(NewCircle {
            owner_id: owner,
            name: "c".into(),
            members: vec![(mine.id, CircleRole::Lead), (theirs.id, CircleRole::Member)],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, RepoError::Conflict(ref w) if w == "agent"),
        "{err:?}"
    );
    let c = conn(&db.pool).await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM agents.circles", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn circle_task_transcript_and_result_persist() {
    let db = TestDb::new().await.unwrap();
    let store = PgAgentStore::new(db.pool.clone());
    let owner = db.user().await;
    let a = store
        .create_agent(new_agent(owner, "lead", Provider::OpenAi))
        .await
        .unwrap();
    let circle = store
        .create_circle(NewCircle {
            owner_id: owner,
            name: "c".into(),
            members: vec![(a.id, CircleRole::Lead)],
        })
        .await
        .unwrap();
    let task = store
        .create_task(owner, circle.id, "t".into(), "d".into())
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Running);
    for round in 0..2 {
        store
            .append_turn(
                task.id,
                NewTaskTurn {
                    round,
                    agent_id: Some(a.id),
                    speaker: "lead".into(),
                    content: format!("turn {round}"),
                    usage: Usage {
                        prompt_tokens: 1,
                        completion_tokens: 2,
                    },
                },
            )
            .await
            .unwrap();
    }
    store
        .finish_task(task.id, TaskStatus::Succeeded, Some("done".into()), None)
        .await
        .unwrap();
    let detail = store.get_task(owner, task.id).await.unwrap().unwrap();
    assert_eq!(detail.task.status, TaskStatus::Succeeded);
    assert_eq!(detail.task.result.as_deref(), Some("done"));
    assert!(detail.task.finished_at.is_some());
    assert_eq!(detail.transcript.len(), 2);
    assert_eq!(detail.transcript[1].content, "turn 1");
    let other = db.user().await;
    assert!(store.get_task(other, task.id).await.unwrap().is_none());
    assert!(matches!(
        store
            .create_task(other, circle.id, "t".into(), "d".into())
            .await,
        Err(RepoError::NotFound)
    ));
}

#[tokio::test]
async fn provider_settings_keep_unchanged_fields_and_clear_on_request() {
    let db = TestDb::new().await.unwrap();
    let store = PgAgentStore::new(db.pool.clone());
    let owner = db.user().await;
    store
        .upsert_provider_setting(
            owner,
            Provider::OpenAi,
            ProviderSettingChange {
                base_url: None,
                api_key: Some(Some((vec![9; 40], "…abcd".into()))),
            },
        )
        .await
        .unwrap();
    let s = store
        .upsert_provider_setting(
            owner,
            Provider::OpenAi,
            ProviderSettingChange {
                base_url: Some(Some("http://x".into())),
                api_key: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(s.api_key_encrypted, Some(vec![9; 40]));
    assert_eq!(s.key_hint.as_deref(), Some("…abcd"));
    assert_eq!(s.base_url.as_deref(), Some("http://x"));
    let s = store
        .upsert_provider_setting(
            owner,
            Provider::OpenAi,
            ProviderSettingChange {
                base_url: None,
                api_key: Some(None),
            },
        )
        .await
        .unwrap();
    assert!(s.api_key_encrypted.is_none());
    assert_eq!(s.base_url.as_deref(), Some("http://x"));
    assert_eq!(store.list_provider_settings(owner).await.unwrap().len(), 1);
    assert!(
        store
            .get_provider_setting(owner, Provider::Anthropic)
            .await
            .unwrap()
            .is_none()
    );
}
