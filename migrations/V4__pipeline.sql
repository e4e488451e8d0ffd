-- Pipelines: versioned definitions, durable runs and node states, claimed under leases.
CREATE SCHEMA IF NOT EXISTS pipeline;

CREATE TABLE pipeline.pipelines (
    id          UUID PRIMARY KEY,
    owner_id    UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    description TEXT,
    version     INTEGER NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX pipelines_owner_idx ON pipeline.pipelines (owner_id, id DESC);

-- Every version's definition; a run points at the version it executes.
CREATE TABLE pipeline.pipeline_versions (
    pipeline_id UUID NOT NULL REFERENCES pipeline.pipelines (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    definition  JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (pipeline_id, version)
);

CREATE TABLE pipeline.runs (
    id               UUID PRIMARY KEY,
    pipeline_id      UUID NOT NULL,
    pipeline_version INTEGER NOT NULL,
    owner_id         UUID NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
                         ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    input            JSONB NOT NULL DEFAULT '{}'::jsonb,
    output           JSONB,
    error            JSONB,
    timeout_ms       BIGINT,
    created_at       TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    deadline_at      TIMESTAMPTZ,
    -- Claimable (when not leased and not finished) from this time on; NULL = now.
    due_at           TIMESTAMPTZ,
    lease_owner      UUID,
    lease_expires_at TIMESTAMPTZ,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    rescue_count     INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (pipeline_id, pipeline_version)
        REFERENCES pipeline.pipeline_versions (pipeline_id, version) ON DELETE CASCADE
);
CREATE INDEX runs_pipeline_idx ON pipeline.runs (pipeline_id, id DESC);
-- The claim query's index: only unleased, unfinished runs.
CREATE INDEX runs_claimable_idx ON pipeline.runs (due_at NULLS FIRST, id)
    WHERE lease_owner IS NULL AND status IN ('queued', 'running');
-- The rescuer's index.
CREATE INDEX runs_leased_idx ON pipeline.runs (lease_expires_at)
    WHERE lease_owner IS NOT NULL;

CREATE TABLE pipeline.node_runs (
    run_id      UUID NOT NULL REFERENCES pipeline.runs (id) ON DELETE CASCADE,
    node_id     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN
                    ('pending', 'running', 'succeeded', 'failed', 'skipped', 'cancelled')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    output      JSONB,
    error       JSONB,
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    wake_at     TIMESTAMPTZ,
    PRIMARY KEY (run_id, node_id)
);
