-- Per-user quotas.
--
-- Count quotas (schedules, pipelines, agents): a BEFORE INSERT trigger counts the owner's rows
-- and refuses the insert with SQLSTATE GQ001 when the limit is reached. Race-safe: the
-- owner's `quotas.usage` row is locked for the rest of the transaction before counting, so two
-- concurrent creations by one user are serialized and the second one counts the first. Every
-- path that inserts (API, tools, an operator's SQL) is covered. The limits in force live in
-- `quotas.limits`, written by the server at start-up from its configuration; a resource
-- without a row is not limited.
--
-- Workspace bytes: `quotas.usage.workspace_bytes` is the running total of the size deltas of
-- every workspace write by the user (charged before writing, refunded when the write fails).
CREATE SCHEMA IF NOT EXISTS quotas;

CREATE TABLE quotas.limits (
    resource     TEXT PRIMARY KEY,
    max_per_user BIGINT NOT NULL CHECK (max_per_user >= 0)
);

CREATE TABLE quotas.usage (
    user_id         UUID PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
    workspace_bytes BIGINT NOT NULL DEFAULT 0 CHECK (workspace_bytes >= 0)
);

CREATE FUNCTION quotas.enforce_count() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    what  TEXT := TG_ARGV[0];
    lim   BIGINT;
    n     BIGINT;
BEGIN
    SELECT l.max_per_user INTO lim FROM quotas.limits l WHERE l.resource = what;
    IF lim IS NULL THEN
        RETURN NEW;
    END IF;
    -- One creation at a time per user: the user's usage row is the lock.
    INSERT INTO quotas.usage (user_id) VALUES (NEW.owner_id) ON CONFLICT (user_id) DO NOTHING;
    PERFORM 1 FROM quotas.usage u WHERE u.user_id = NEW.owner_id FOR UPDATE;
    EXECUTE format('SELECT count(*) FROM %I.%I WHERE owner_id = $1',
                   TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO n USING NEW.owner_id;
    IF n >= lim THEN
        RAISE EXCEPTION 'quota exceeded: at most % % per user; delete some first', lim, what
            USING ERRCODE = 'GQ001';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER schedules_quota BEFORE INSERT ON scheduler.schedules
    FOR EACH ROW EXECUTE FUNCTION quotas.enforce_count('schedules');
CREATE TRIGGER pipelines_quota BEFORE INSERT ON pipeline.pipelines
    FOR EACH ROW EXECUTE FUNCTION quotas.enforce_count('pipelines');
CREATE TRIGGER agents_quota BEFORE INSERT ON agents.agents
    FOR EACH ROW EXECUTE FUNCTION quotas.enforce_count('agents');
