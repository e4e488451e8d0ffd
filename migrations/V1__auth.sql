-- Auth: users, refresh tokens, access-token revocations, the audit trail.
CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    password_hash TEXT NOT NULL,
    disabled      BOOLEAN NOT NULL DEFAULT false,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Emails are unique case-insensitively.
CREATE UNIQUE INDEX users_email_lower_key ON auth.users (lower(email));

-- Refresh tokens: only a SHA-256 of the secret is stored.
CREATE TABLE auth.refresh_tokens (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    family_id  UUID NOT NULL,
    token_hash BYTEA NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family_idx ON auth.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON auth.refresh_tokens (user_id);
CREATE INDEX refresh_tokens_expires_idx ON auth.refresh_tokens (expires_at);

-- Revoked access tokens, by jti, kept until the token would have expired anyway.
CREATE TABLE auth.revoked_tokens (
    jti        UUID PRIMARY KEY,
    user_id    UUID NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX revoked_tokens_expires_idx ON auth.revoked_tokens (expires_at);

-- Audit trail of auth events. Ids are UUIDv7 (time-ordered): lists are newest first by id.
CREATE TABLE auth.audit_events (
    id         UUID PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL,
    event      TEXT NOT NULL,
    user_id    UUID,
    email      TEXT,
    ip         TEXT,
    user_agent TEXT,
    success    BOOLEAN NOT NULL,
    reason     TEXT,
    request_id TEXT
);
CREATE INDEX audit_events_event_idx ON auth.audit_events (event, id DESC);
CREATE INDEX audit_events_user_idx ON auth.audit_events (user_id, id DESC);
-- The per-account failed-login counter.
CREATE INDEX audit_events_login_failure_idx ON auth.audit_events (email, at)
    WHERE event = 'login_failure';
