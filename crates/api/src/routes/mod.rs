//! Route modules; each exposes `configure`, mounted under `/api/v1` by [`crate::configure`].

pub mod agents;
pub mod auth;
pub mod circles;
pub mod health;
pub mod notifications;
pub mod pipelines;
pub mod projects;
pub mod schedules;
pub mod settings;
pub mod tools;
pub mod ws;
