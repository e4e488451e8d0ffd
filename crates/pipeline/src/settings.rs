//! The `[pipeline]` configuration section (`GATHERING__PIPELINE__*`), mapped onto
//! [`ExecutorConfig`].

use crate::condition::CelLimits;
use crate::executor::ExecutorConfig;
use crate::limits::Limits;
use crate::pool::CelPool;
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
    /// `GATHERING__PIPELINE__MAX_RESCUES`: interrupted executions (expired lease, or a graceful
    /// stop with nodes in flight) before a run is failed as `crash_loop`.
    pub max_rescues: u32,
    /// `GATHERING__PIPELINE__NODE_TIMEOUT_SECS`: default timeout of a node attempt.
    pub node_timeout_secs: u64,
    /// `GATHERING__PIPELINE__ASYNC_NODE_COMMITS`: commit intermediate node transitions without
    /// waiting for the WAL flush (faster; a database crash may re-run the last few finished
    /// nodes, with their idempotency keys). Off by default.
    pub async_node_commits: bool,
    /// `GATHERING__PIPELINE__MAX_NODES`: nodes per definition.
    pub max_nodes: usize,
    /// `GATHERING__PIPELINE__MAX_EDGES`: edges per definition.
    pub max_edges: usize,
    /// `GATHERING__PIPELINE__MAX_NODE_CONFIG_BYTES`: serialized bytes of one node's config.
    pub max_node_config_bytes: usize,
    /// `GATHERING__PIPELINE__MAX_DEFINITION_BYTES`: bytes of a POST/PATCH /pipelines body.
    pub max_definition_bytes: usize,
    /// `GATHERING__PIPELINE__CEL_MAX_LENGTH`: bytes of a condition expression.
    pub cel_max_length: usize,
    /// `GATHERING__PIPELINE__CEL_MAX_NESTING`: bracket nesting of a condition.
    pub cel_max_nesting: usize,
    /// `GATHERING__PIPELINE__CEL_MAX_OPERANDS`
    pub cel_max_operands: usize,
    /// `GATHERING__PIPELINE__CEL_MAX_OPERATORS`
    pub cel_max_operators: usize,
    /// `GATHERING__PIPELINE__CEL_MAX_COMPREHENSION_DEPTH`: 1 = no comprehension inside another.
    pub cel_max_comprehension_depth: usize,
    /// `GATHERING__PIPELINE__CEL_MAX_MACROS`: comprehension macros per condition.
    pub cel_max_macros: usize,
    /// `GATHERING__PIPELINE__CEL_MAX_LITERAL_ITEMS`: items of one list/map literal.
    pub cel_max_literal_items: usize,
    /// `GATHERING__PIPELINE__CONDITION_BUDGET_MS`: longest a condition may evaluate.
    pub condition_budget_ms: u64,
    /// `GATHERING__PIPELINE__COMPILE_BUDGET_MS`: longest the compile check of a definition's
    /// conditions may take (waiting for a CEL thread included) when it is stored.
    pub compile_budget_ms: u64,
    /// `GATHERING__PIPELINE__CEL_THREADS`: CEL compiles/evaluations at once (abandoned included).
    pub cel_threads: usize,
    /// `GATHERING__PIPELINE__MAX_TEMPLATE_REFS`: `{{…}}` references per node.
    pub max_template_refs: usize,
    /// `GATHERING__PIPELINE__MAX_RENDERED_BYTES`: rendered params/prompt of one node.
    pub max_rendered_bytes: usize,
    /// `GATHERING__PIPELINE__MAX_OUTPUT_DEPTH`: nesting of a node output.
    pub max_output_depth: usize,
    /// `GATHERING__PIPELINE__MAX_OUTPUT_BYTES`: serialized bytes of a node output.
    pub max_output_bytes: usize,
    /// `GATHERING__PIPELINE__MAX_RUN_OUTPUT_BYTES`: serialized bytes of a run output.
    pub max_run_output_bytes: usize,
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
            max_nodes: d.limits.max_nodes,
            max_edges: d.limits.max_edges,
            max_node_config_bytes: d.limits.max_node_config_bytes,
            max_definition_bytes: d.limits.max_definition_bytes,
            cel_max_length: d.limits.cel.max_len,
            cel_max_nesting: d.limits.cel.max_nesting,
            cel_max_operands: d.limits.cel.max_operands,
            cel_max_operators: d.limits.cel.max_operators,
            cel_max_comprehension_depth: d.limits.cel.max_comprehension_depth,
            cel_max_macros: d.limits.cel.max_macros,
            cel_max_literal_items: d.limits.cel.max_literal_items,
            condition_budget_ms: d.limits.condition_budget.as_millis() as u64,
            compile_budget_ms: d.limits.compile_budget.as_millis() as u64,
            cel_threads: d.cel_pool.threads(),
            max_template_refs: d.limits.max_template_refs,
            max_rendered_bytes: d.limits.max_rendered_bytes,
            max_output_depth: d.limits.max_output_depth,
            max_output_bytes: d.limits.max_output_bytes,
            max_run_output_bytes: d.limits.max_run_output_bytes,
        }
    }
}

impl PipelineSettings {
    /// The limits on definitions, conditions, templates and outputs.
    pub fn limits(&self) -> Limits {
        Limits {
            max_nodes: self.max_nodes.max(1),
            max_edges: self.max_edges,
            max_node_config_bytes: self.max_node_config_bytes.max(2),
            max_definition_bytes: self.max_definition_bytes.max(1024),
            cel: CelLimits {
                max_len: self.cel_max_length.max(1),
                max_nesting: self.cel_max_nesting.max(1),
                max_operands: self.cel_max_operands.max(1),
                max_operators: self.cel_max_operators,
                max_comprehension_depth: self.cel_max_comprehension_depth,
                max_macros: self.cel_max_macros,
                max_literal_items: self.cel_max_literal_items.max(1),
            },
            condition_budget: Duration::from_millis(self.condition_budget_ms.max(1)),
            compile_budget: Duration::from_millis(self.compile_budget_ms.max(1)),
            max_template_refs: self.max_template_refs,
            max_rendered_bytes: self.max_rendered_bytes.max(2),
            max_output_depth: self.max_output_depth.max(1),
            max_output_bytes: self.max_output_bytes.max(4),
            max_run_output_bytes: self.max_run_output_bytes.max(4),
        }
    }

    /// The bounded pool CEL compiles and evaluations run on; share one per process.
    pub fn cel_pool(&self) -> CelPool {
        CelPool::new(self.cel_threads)
    }

    /// The settings of the process-wide breaker registry (`gathering_resilience::Breakers`),
    /// shared by the pipeline executor, the LLM transport and the scheduler.
    pub fn breaker_config(&self) -> gathering_resilience::BreakerConfig {
        gathering_resilience::BreakerConfig {
            failures: self.breaker_failures.max(1),
            cooldown: Duration::from_secs(self.breaker_cooldown_secs),
            ..Default::default()
        }
    }

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
            limits: self.limits(),
            cel_pool: self.cel_pool(),
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
