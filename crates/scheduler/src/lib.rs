//! gathering-scheduler: schedules that really run their action on time, exactly once across
//! instances and crashes.
//!
//! - [`timing`]: next-run computation (cron in a timezone, intervals, DST) and the claim policy.
//! - [`actions`]: validation of `action_config` and dispatch of each action through its port.
//! - [`worker`]: the [`Scheduler`] loop (claim, run, record; heartbeat and crash recovery).
//! - [`service`]: the owner-scoped [`ScheduleService`] behind the HTTP routes.
//! - [`settings`]: the `[scheduler]` configuration section and its defaults.

pub mod actions;
pub mod error;
pub mod service;
pub mod settings;
pub mod timing;
pub mod worker;

pub use error::SchedulerError;
pub use service::{CreateSchedule, PatchSchedule, ScheduleLimits, ScheduleService};
pub use settings::SchedulerSettings;
pub use worker::{Scheduler, SchedulerConfig, SchedulerDeps, TickReport};
