-- Agents, chat sessions and messages, memories, circles and their tasks, provider settings.
CREATE SCHEMA IF NOT EXISTS agents;

CREATE TABLE agents.agents (
    id          UUID PRIMARY KEY,
    owner_id    UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    persona     TEXT NOT NULL,
    provider    TEXT NOT NULL CHECK (provider IN ('openai', 'anthropic', 'deepseek', 'ollama')),
    model       TEXT NOT NULL,
    temperature DOUBLE PRECISION NOT NULL CHECK (temperature >= 0 AND temperature <= 2),
    tools       TEXT[] NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX agents_owner_idx ON agents.agents (owner_id, id DESC);

CREATE TABLE agents.chat_sessions (
    id         UUID PRIMARY KEY,
    agent_id   UUID NOT NULL REFERENCES agents.agents (id) ON DELETE CASCADE,
    owner_id   UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    -- Set by callers that retry (pipeline node runs, schedules): one session per key.
    idempotency_key TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (owner_id, agent_id, idempotency_key)
);
CREATE INDEX chat_sessions_agent_idx ON agents.chat_sessions (agent_id, owner_id);

CREATE TABLE agents.chat_messages (
    id                UUID PRIMARY KEY,
    session_id        UUID NOT NULL REFERENCES agents.chat_sessions (id) ON DELETE CASCADE,
    role              TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content           TEXT NOT NULL,
    tool_calls        JSONB,
    tool_call_id      TEXT,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX chat_messages_session_idx ON agents.chat_messages (session_id, id DESC);

CREATE TABLE agents.memories (
    id         UUID PRIMARY KEY,
    agent_id   UUID NOT NULL REFERENCES agents.agents (id) ON DELETE CASCADE,
    owner_id   UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    content    TEXT NOT NULL,
    search     TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX memories_agent_idx ON agents.memories (agent_id, owner_id, id DESC);
CREATE INDEX memories_search_idx ON agents.memories USING GIN (search);

CREATE TABLE agents.circles (
    id         UUID PRIMARY KEY,
    owner_id   UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX circles_owner_idx ON agents.circles (owner_id, id DESC);

CREATE TABLE agents.circle_members (
    circle_id UUID NOT NULL REFERENCES agents.circles (id) ON DELETE CASCADE,
    agent_id  UUID NOT NULL REFERENCES agents.agents (id) ON DELETE CASCADE,
    role      TEXT NOT NULL CHECK (role IN ('lead', 'member', 'reviewer')),
    position  INT NOT NULL,
    PRIMARY KEY (circle_id, agent_id)
);
CREATE INDEX circle_members_agent_idx ON agents.circle_members (agent_id);

CREATE TABLE agents.circle_tasks (
    id          UUID PRIMARY KEY,
    circle_id   UUID NOT NULL REFERENCES agents.circles (id) ON DELETE CASCADE,
    owner_id    UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    result      TEXT,
    error       TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ
);
CREATE INDEX circle_tasks_circle_idx ON agents.circle_tasks (circle_id, id DESC);

CREATE TABLE agents.circle_task_turns (
    id                UUID PRIMARY KEY,
    task_id           UUID NOT NULL REFERENCES agents.circle_tasks (id) ON DELETE CASCADE,
    round             INT NOT NULL,
    agent_id          UUID REFERENCES agents.agents (id) ON DELETE SET NULL,
    speaker           TEXT NOT NULL,
    content           TEXT NOT NULL,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX circle_task_turns_task_idx ON agents.circle_task_turns (task_id, id);

-- Per-user provider settings; the key is AEAD-encrypted (nonce || ciphertext), never plain.
CREATE TABLE agents.provider_settings (
    owner_id          UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    provider          TEXT NOT NULL CHECK (provider IN ('openai', 'anthropic', 'deepseek', 'ollama')),
    base_url          TEXT,
    api_key_encrypted BYTEA,
    key_hint          TEXT,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, provider)
);
