-- Workspace: projects (directories an admin registers) and their members.
CREATE SCHEMA IF NOT EXISTS workspace;

CREATE TABLE workspace.projects (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL,
    root_path  TEXT NOT NULL,
    owner_id   UUID NOT NULL REFERENCES auth.users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX projects_owner_idx ON workspace.projects (owner_id, id DESC);

CREATE TABLE workspace.project_members (
    project_id UUID NOT NULL REFERENCES workspace.projects (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user_idx ON workspace.project_members (user_id, project_id);
