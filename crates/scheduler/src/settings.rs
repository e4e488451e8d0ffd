//! The `[scheduler]` configuration section (`GATHERING__SCHEDULER__*`): the one place its
//! defaults live. The binary composes this struct into its settings;
//! [`SchedulerConfig`](crate::SchedulerConfig)'s and [`ScheduleLimits`](crate::ScheduleLimits)'s
//! defaults are taken from here too, so a default is written once.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SchedulerSettings {
    /// `GATHERING__SCHEDULER__BATCH_SIZE`: due schedules claimed per transaction.
    pub batch_size: u32,
    /// `GATHERING__SCHEDULER__MAX_CONCURRENT`: actions running at once on this instance.
    pub max_concurrent: usize,
    /// `GATHERING__SCHEDULER__HEARTBEAT_SECS`: how often an instance beats; recovery runs at
    /// the same pace.
    pub heartbeat_secs: u64,
    /// `GATHERING__SCHEDULER__STALE_AFTER_SECS`: an instance silent this long is dead; its
    /// running executions become `interrupted`.
    pub stale_after_secs: u64,
    /// `GATHERING__SCHEDULER__MISFIRE_GRACE_SECS`: how late an occurrence may start and still
    /// count as on time rather than missed.
    pub misfire_grace_secs: u64,
    /// `GATHERING__SCHEDULER__MIN_INTERVAL_SECS`: shortest schedule interval (and shortest gap
    /// between two cron firings); at least 1.
    pub min_interval_secs: u64,
    /// `GATHERING__SCHEDULER__MAX_CRON_CHARS`: longest cron pattern accepted, in characters.
    pub max_cron_chars: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            max_concurrent: 64,
            heartbeat_secs: 5,
            stale_after_secs: 30,
            misfire_grace_secs: 60,
            min_interval_secs: 10,
            max_cron_chars: 128,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{ScheduleLimits, SchedulerConfig};
    use std::time::Duration;

    #[test]
    fn defaults_are_the_ones_the_server_has_always_run_with() {
        let s = SchedulerSettings::default();
        assert_eq!((s.batch_size, s.max_concurrent), (500, 64));
        assert_eq!(
            (s.heartbeat_secs, s.stale_after_secs, s.misfire_grace_secs),
            (5, 30, 60)
        );
        assert_eq!((s.min_interval_secs, s.max_cron_chars), (10, 128));
    }

    #[test]
    fn worker_and_limit_defaults_come_from_the_settings() {
        let s = SchedulerSettings::default();
        let c = SchedulerConfig::default();
        assert_eq!(c.batch_size, s.batch_size);
        assert_eq!(c.max_concurrency, s.max_concurrent);
        assert_eq!(c.heartbeat_every, Duration::from_secs(s.heartbeat_secs));
        assert_eq!(c.stale_after, Duration::from_secs(s.stale_after_secs));
        assert_eq!(c.misfire_grace, Duration::from_secs(s.misfire_grace_secs));
        let l = ScheduleLimits::default();
        assert_eq!(l.min_interval_secs, s.min_interval_secs);
        assert_eq!(l.max_cron_chars, s.max_cron_chars);
    }

    #[test]
    fn a_missing_section_or_key_takes_its_default() {
        let empty: SchedulerSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, SchedulerSettings::default());
        let one: SchedulerSettings = serde_json::from_str(r#"{"batch_size": 7}"#).unwrap();
        assert_eq!(one.batch_size, 7);
        assert_eq!(
            one.max_concurrent,
            SchedulerSettings::default().max_concurrent
        );
    }
}
