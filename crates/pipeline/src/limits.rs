//! Bounds on what a user's pipeline may make the service do (docs/security.md "Limits").

use crate::condition::CelLimits;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Nodes of one definition (checked before any graph work).
    pub max_nodes: usize,
    /// Edges of one definition (checked before any graph work).
    pub max_edges: usize,
    /// Serialized bytes of one node's `config`.
    pub max_node_config_bytes: usize,
    /// Bytes of a `POST/PATCH /pipelines` body.
    pub max_definition_bytes: usize,
    /// Static limits of condition expressions.
    pub cel: CelLimits,
    /// Longest a condition may take to evaluate (the node's own timeout applies if shorter).
    pub condition_budget: Duration,
    /// Longest the compile check of a definition's conditions may take when it is stored.
    pub compile_budget: Duration,
    /// Template references (`{{…}}`) in one node's params or prompt.
    pub max_template_refs: usize,
    /// Rendered bytes of one node's params (or agent prompt).
    pub max_rendered_bytes: usize,
    /// Nesting depth of a node output (and of the run output, plus one).
    pub max_output_depth: usize,
    /// Serialized bytes of one node output.
    pub max_output_bytes: usize,
    /// Serialized bytes of a run's output.
    pub max_run_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_nodes: 200,
            max_edges: 1000,
            max_node_config_bytes: 64 * 1024,
            max_definition_bytes: 1024 * 1024,
            cel: CelLimits::default(),
            condition_budget: Duration::from_millis(2000),
            compile_budget: Duration::from_secs(5),
            max_template_refs: 64,
            max_rendered_bytes: 1024 * 1024,
            max_output_depth: 64,
            max_output_bytes: 2 * 1024 * 1024,
            max_run_output_bytes: 8 * 1024 * 1024,
        }
    }
}

/// An `io::Write` that counts bytes and fails once more than `max` were written, so measuring a
/// value stops as soon as it is too large.
pub(crate) struct Budget {
    pub used: usize,
    pub max: usize,
}

impl std::io::Write for Budget {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.used += buf.len();
        if self.used > self.max {
            return Err(std::io::Error::other("over budget"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The serialized size of `v` if it is at most `max` bytes (stops early otherwise). `v` must be
/// shallow enough to serialize recursively (see [`depth_within`]).
pub(crate) fn json_size_within(v: &serde_json::Value, max: usize) -> Option<usize> {
    let mut b = Budget { used: 0, max };
    serde_json::to_writer(&mut b, v).ok().map(|_| b.used)
}

/// True when `v` nests at most `max` arrays/objects deep; iterative (no recursion), stops early.
pub(crate) fn depth_within(v: &serde_json::Value, max: usize) -> bool {
    use serde_json::Value;
    let mut stack: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                if d + 1 > max {
                    return false;
                }
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(m) => {
                if d + 1 > max {
                    return false;
                }
                stack.extend(m.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn measuring_stops_at_the_bound() {
        assert_eq!(json_size_within(&json!({"a": 1}), 100), Some(7));
        assert_eq!(json_size_within(&json!("x".repeat(1000)), 100), None);
        assert!(depth_within(&json!([[1]]), 2));
        assert!(!depth_within(&json!([[[1]]]), 2));
        assert!(depth_within(&json!(1), 0));
    }
}
