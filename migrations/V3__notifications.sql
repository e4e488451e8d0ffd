-- Notifications: per-user messages sent by the send_notification tool and schedules.
CREATE SCHEMA IF NOT EXISTS notify;

CREATE TABLE notify.notifications (
    id              UUID PRIMARY KEY,
    user_id         UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    channel         TEXT NOT NULL,
    title           TEXT NOT NULL,
    message         TEXT NOT NULL,
    -- Retries of one logical send (same key, same user) store one notification.
    idempotency_key TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    read_at         TIMESTAMPTZ
);
CREATE INDEX notifications_user_idx ON notify.notifications (user_id, id DESC);
CREATE UNIQUE INDEX notifications_idempotency_key
    ON notify.notifications (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
