-- Scheduler: schedules, their executions (one row per occurrence), instance heartbeats.
CREATE SCHEMA IF NOT EXISTS scheduler;

CREATE TABLE scheduler.schedules (
    id              UUID PRIMARY KEY,
    owner_id        UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    cron            TEXT,
    interval_secs   BIGINT CHECK (interval_secs IS NULL OR interval_secs >= 1),
    timezone        TEXT,
    action_type     TEXT NOT NULL CHECK (action_type IN
                        ('run_task', 'execute_pipeline', 'send_notification', 'call_api')),
    action_config   JSONB NOT NULL DEFAULT '{}'::jsonb,
    enabled         BOOLEAN NOT NULL DEFAULT true,
    missed_runs     TEXT NOT NULL DEFAULT 'skip' CHECK (missed_runs IN ('skip', 'run_once')),
    overlap         TEXT NOT NULL DEFAULT 'skip' CHECK (overlap IN ('skip', 'allow')),
    max_executions  BIGINT CHECK (max_executions IS NULL OR max_executions >= 1),
    execution_count BIGINT NOT NULL DEFAULT 0,
    next_run_at     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    CHECK ((cron IS NULL) <> (interval_secs IS NULL))
);
CREATE INDEX schedules_owner_idx ON scheduler.schedules (owner_id, id DESC);
-- The claim and the wake-up query: enabled schedules by due time.
CREATE INDEX schedules_due_idx ON scheduler.schedules (next_run_at) WHERE enabled;

CREATE TABLE scheduler.executions (
    id            UUID PRIMARY KEY,
    schedule_id   UUID NOT NULL REFERENCES scheduler.schedules (id) ON DELETE CASCADE,
    scheduled_for TIMESTAMPTZ NOT NULL,
    status        TEXT NOT NULL CHECK (status IN
                      ('running', 'succeeded', 'failed', 'skipped', 'interrupted')),
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ,
    result        JSONB,
    error         TEXT,
    instance_id   UUID NOT NULL,
    run_id        UUID,
    -- One execution per occurrence, whichever instance claims it.
    CONSTRAINT executions_occurrence_key UNIQUE (schedule_id, scheduled_for)
);
CREATE INDEX executions_schedule_idx ON scheduler.executions (schedule_id, id DESC);
CREATE INDEX executions_running_idx ON scheduler.executions (instance_id) WHERE status = 'running';

CREATE TABLE scheduler.instances (
    instance_id UUID PRIMARY KEY,
    beat_at     TIMESTAMPTZ NOT NULL
);
