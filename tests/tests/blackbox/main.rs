//! One test binary for the black-box suite (the real server over HTTP): each former `tests/*.rs` file is a module here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agents;
mod api_fuzz;
mod auth;
mod hardening_identity;
mod hardening_limits;
mod hardening_pipelines;
mod hardening_tools;
mod notifications;
mod ops;
mod pipelines;
mod resilience;
mod schedules;
mod schedules_actions;
mod schedules_crash;
mod security;
mod tools;
mod ws;
mod ws_cross_instance;
