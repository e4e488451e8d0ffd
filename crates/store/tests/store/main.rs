//! One test binary for gathering-store's integration tests: each former `tests/*.rs` file is a module here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agents_repo;
mod auth_repos;
mod contracts;
mod listener;
mod notifications_repo;
mod pipeline_repo;
mod projects_repo;
mod quotas_repo;
mod scheduler_repo;
