//! The `[pipeline]` configuration section (`GATHERING__PIPELINE__*`), mapped onto
//! [`ExecutorConfig`].

use crate::executor::ExecutorConfig;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PipelineSettings {
    /// `GATHERING__PIPELINE__BREAKER_FAILURES`: consecutive failures that open a target's circuit.
    pub breaker_failures: u32,
    /// `GATHERING__PIPELINE__BREAKER_COOLDOWN_SECS`: how long an open circuit stays open.
    pub breaker_cooldown_secs: u64,
    /// `GATHERING__PIPELINE__MAX_CONCURRENT_NODES`: node executions at once per instance.
    pub max_concurrent_nodes: usize,
    /// `GATHERING__PIPELINE__MAX_CONCURRENT_RUNS`: runs driven at once per instance.
    pub max_concurrent_runs: usize,
    /// `GATHERING__PIPELINE__LEASE_SECS`: a run whose executor stops beating is rescued after this.
    pub lease_secs: u64,
    /// `GATHERING__PIPELINE__HEARTBEAT_SECS`
    pub heartbeat_secs: u64,
    /// `GATHERING__PIPELINE__RESCUE_INTERVAL_SECS`
    pub rescue_interval_secs: u64,
    /// `GATHERING__PIPELINE__POLL_INTERVAL_MS`: look for due timers / missed NOTIFYs this often.
    pub poll_interval_ms: u64,
    /// `GATHERING__PIPELINE__MAX_RESCUES`: rescues before a run is failed as `abandoned`.
    pub max_rescues: u32,
    /// `GATHERING__PIPELINE__NODE_TIMEOUT_SECS`: default timeout of a node attempt.
    pub node_timeout_secs: u64,
    /// `GATHERING__PIPELINE__ASYNC_NODE_COMMITS`: commit intermediate node transitions without
    /// waiting for the WAL flush (faster; a database crash may re-run the last few finished
    /// nodes, with their idempotency keys). Off by default.
    pub async_node_commits: bool,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        let d = ExecutorConfig::default();
        Self {
            breaker_failures: d.breaker_failures,
            breaker_cooldown_secs: d.breaker_cooldown.as_secs(),
            max_concurrent_nodes: d.max_concurrent_nodes,
            max_concurrent_runs: d.max_concurrent_runs,
            lease_secs: d.lease_ttl.as_secs(),
            heartbeat_secs: d.heartbeat_interval.as_secs(),
            rescue_interval_secs: d.rescue_interval.as_secs(),
            poll_interval_ms: d.poll_interval.as_millis() as u64,
            max_rescues: d.max_rescues,
            node_timeout_secs: d.default_node_timeout.as_secs(),
            async_node_commits: false,
        }
    }
}

impl PipelineSettings {
    /// The executor configuration; `drain_timeout` is the server's shutdown timeout.
    pub fn executor_config(&self, drain_timeout: Duration) -> ExecutorConfig {
        let lease = self.lease_secs.max(1);
        ExecutorConfig {
            breaker_failures: self.breaker_failures.max(1),
            breaker_cooldown: Duration::from_secs(self.breaker_cooldown_secs),
            max_concurrent_nodes: self.max_concurrent_nodes.max(1),
            max_concurrent_runs: self.max_concurrent_runs.max(1),
            lease_ttl: Duration::from_secs(lease),
            // A heartbeat must land well inside the lease.
            heartbeat_interval: Duration::from_secs(self.heartbeat_secs.max(1))
                .min(Duration::from_millis(lease * 1000 / 3))
                .max(Duration::from_millis(300)),
            rescue_interval: Duration::from_secs(self.rescue_interval_secs.max(1)),
            poll_interval: Duration::from_millis(self.poll_interval_ms.max(10)),
            max_rescues: self.max_rescues,
            default_node_timeout: Duration::from_secs(self.node_timeout_secs.max(1)),
            drain_timeout,
            ..ExecutorConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_configuration() {
        let s = PipelineSettings::default();
        assert_eq!((s.breaker_failures, s.breaker_cooldown_secs), (5, 30));
        let c = s.executor_config(Duration::from_secs(10));
        assert_eq!(c.breaker_cooldown, Duration::from_secs(30));
        assert_eq!(c.drain_timeout, Duration::from_secs(10));
        assert!(c.heartbeat_interval < c.lease_ttl);
    }

    #[test]
    fn heartbeats_stay_inside_short_leases() {
        let s = PipelineSettings {
            lease_secs: 2,
            heartbeat_secs: 10,
            ..PipelineSettings::default()
        };
        let c = s.executor_config(Duration::from_secs(1));
        assert!(c.heartbeat_interval < c.lease_ttl, "{c:?}");
    }
}
