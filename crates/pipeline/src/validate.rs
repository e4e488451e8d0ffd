//! Validation of a definition before anything is stored or run. Every problem is reported at
//! once with a JSON pointer; a cycle is `cycle_detected` naming the node ids on it.

use crate::condition;
use crate::error::PipelineError;
use crate::limits::{Limits, json_size_within};
use crate::template::{self, TemplateRef};
use gathering_domain::FieldProblem;
use gathering_domain::pipeline::{NodeType, PipelineDefinition};
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use uuid::Uuid;

/// Default node/edge caps; the effective ones are [`Limits::max_nodes`] / `max_edges`.
pub const MAX_NODES: usize = 200;
pub const MAX_EDGES: usize = 1000;
pub const MAX_ID_LEN: usize = 64;
/// Longest node or run timeout and delay: one day.
pub const MAX_DURATION_MS: u64 = 24 * 60 * 60 * 1000;
pub const MAX_ATTEMPTS: u32 = 10;
pub const MAX_BACKOFF_MS: u64 = 60 * 60 * 1000;

/// The result of the static (synchronous, linear) part of validation.
#[derive(Debug, Default)]
pub struct StaticCheck {
    pub problems: Vec<FieldProblem>,
    /// The node ids on a cycle, if there is one.
    pub cycle: Option<Vec<String>>,
    /// Condition expressions that passed the scanner and still need a compile check
    /// ([`compile_conditions`], on a big stack): (node index, expression).
    pub conditions: Vec<(usize, String)>,
}

impl StaticCheck {
    /// Adds the compile problems and answers the verdict.
    pub fn finish(mut self, compile_problems: Vec<FieldProblem>) -> Result<(), PipelineError> {
        self.problems.extend(compile_problems);
        match self.cycle {
            Some(nodes) => Err(PipelineError::Cycle {
                nodes,
                problems: self.problems,
            }),
            None if self.problems.is_empty() => Ok(()),
            None => Err(PipelineError::Invalid(self.problems)),
        }
    }
}

/// Compiles the conditions [`check_static`] let through. Recursive inside cel-interpreter:
/// run it on a big stack ([`crate::pool`]).
pub fn compile_conditions(conditions: &[(usize, String)]) -> Vec<FieldProblem> {
    conditions
        .iter()
        .filter_map(|(i, expr)| {
            condition::compile_check(expr)
                .err()
                .map(|e| FieldProblem::new(format!("/nodes/{i}/config/expression"), e))
        })
        .collect()
}

/// Validates the whole definition with the default limits (the compile check runs on a fresh
/// big-stack thread; for synchronous callers off the async runtime).
pub fn validate(def: &PipelineDefinition) -> Result<(), PipelineError> {
    validate_with_tools(def, None)
}

/// [`validate`], and action nodes must name one of `known_tools` when given.
pub fn validate_with_tools(
    def: &PipelineDefinition,
    known_tools: Option<&HashSet<String>>,
) -> Result<(), PipelineError> {
    let checked = check_static(def, known_tools, &Limits::default());
    let compile = crate::pool::on_big_stack(|| compile_conditions(&checked.conditions))
        .unwrap_or_else(|e| vec![FieldProblem::new("/nodes", format!("{e:?}"))]);
    checked.finish(compile)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Every check that needs no compiler, in O(nodes + edges + config bytes) (the upstream check
/// uses ancestor bitsets, O((nodes + edges) · nodes / 64) with nodes bounded). Counts are
/// checked first: over them, nothing else is looked at.
pub fn check_static(
    def: &PipelineDefinition,
    known_tools: Option<&HashSet<String>>,
    limits: &Limits,
) -> StaticCheck {
    let mut out = StaticCheck::default();
    let problems = &mut out.problems;
    if def.nodes.is_empty() {
        problems.push(FieldProblem::new(
            "/nodes",
            "must contain at least one node",
        ));
    }
    if def.nodes.len() > limits.max_nodes {
        problems.push(FieldProblem::new(
            "/nodes",
            format!("at most {} nodes", limits.max_nodes),
        ));
    }
    if def.edges.len() > limits.max_edges {
        problems.push(FieldProblem::new(
            "/edges",
            format!("at most {} edges", limits.max_edges),
        ));
    }
    if def.nodes.len() > limits.max_nodes || def.edges.len() > limits.max_edges {
        return out;
    }
    if let Some(t) = def.timeout_ms
        && (t == 0 || t > MAX_DURATION_MS)
    {
        problems.push(FieldProblem::new(
            "/timeout_ms",
            format!("must be between 1 and {MAX_DURATION_MS}"),
        ));
    }

    // Nodes: ids, types, configs, retry, timeouts.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut config_ok = vec![true; def.nodes.len()];
    for (i, node) in def.nodes.iter().enumerate() {
        let at = |f: &str| format!("/nodes/{i}/{f}");
        if !valid_id(&node.id) {
            problems.push(FieldProblem::new(
                at("id"),
                format!("must be 1 to {MAX_ID_LEN} characters of letters, digits, `_` or `-`"),
            ));
        } else if index.insert(node.id.as_str(), i).is_some() {
            problems.push(FieldProblem::new(
                at("id"),
                format!("duplicate node id `{}`", node.id),
            ));
        }
        if let Some(name) = &node.name
            && name.chars().count() > 200
        {
            problems.push(FieldProblem::new(at("name"), "at most 200 characters"));
        }
        if json_size_within(&node.config, limits.max_node_config_bytes).is_none() {
            problems.push(FieldProblem::new(
                at("config"),
                format!("at most {} bytes", limits.max_node_config_bytes),
            ));
            config_ok[i] = false;
        } else {
            match node.kind() {
                None => problems.push(FieldProblem::new(
                    at("type"),
                    format!(
                        "unknown node type `{}`; expected one of trigger, agent, condition, action, parallel, delay",
                        node.node_type
                    ),
                )),
                Some(kind) => {
                    check_config(kind, &node.config, i, known_tools, limits, &mut out.conditions, problems)
                }
            }
        }
        if let Some(t) = node.timeout_ms
            && (t == 0 || t > MAX_DURATION_MS)
        {
            problems.push(FieldProblem::new(
                at("timeout_ms"),
                format!("must be between 1 and {MAX_DURATION_MS}"),
            ));
        }
        if let Some(r) = &node.retry {
            if r.max_attempts == 0 || r.max_attempts > MAX_ATTEMPTS {
                problems.push(FieldProblem::new(
                    at("retry/max_attempts"),
                    format!("must be between 1 and {MAX_ATTEMPTS}"),
                ));
            }
            if !(r.multiplier.is_finite() && (1.0..=10.0).contains(&r.multiplier)) {
                problems.push(FieldProblem::new(
                    at("retry/multiplier"),
                    "must be between 1.0 and 10.0",
                ));
            }
            if r.max_backoff_ms > MAX_BACKOFF_MS {
                problems.push(FieldProblem::new(
                    at("retry/max_backoff_ms"),
                    format!("must be at most {MAX_BACKOFF_MS}"),
                ));
            }
            if r.initial_backoff_ms > r.max_backoff_ms {
                problems.push(FieldProblem::new(
                    at("retry/initial_backoff_ms"),
                    "must not exceed max_backoff_ms",
                ));
            }
        }
    }

    // Edges.
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let gidx: Vec<NodeIndex> = (0..def.nodes.len()).map(|i| graph.add_node(i)).collect();
    let mut seen_edges = HashSet::new();
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); def.nodes.len()];
    let mut self_loop = vec![false; def.nodes.len()];
    for (e, edge) in def.edges.iter().enumerate() {
        let from = index.get(edge.from.as_str()).copied();
        let to = index.get(edge.to.as_str()).copied();
        if from.is_none() {
            problems.push(FieldProblem::new(
                format!("/edges/{e}/from"),
                format!("unknown node `{}`", edge.from),
            ));
        }
        if to.is_none() {
            problems.push(FieldProblem::new(
                format!("/edges/{e}/to"),
                format!("unknown node `{}`", edge.to),
            ));
        }
        if let Some(f) = from
            && edge.when.is_some()
            && def.nodes[f].kind() != Some(NodeType::Condition)
        {
            problems.push(FieldProblem::new(
                format!("/edges/{e}/when"),
                "`when` is only allowed on edges leaving a condition node",
            ));
        }
        if let (Some(f), Some(t)) = (from, to) {
            if !seen_edges.insert((f, t)) {
                problems.push(FieldProblem::new(
                    format!("/edges/{e}"),
                    format!("duplicate edge `{}` -> `{}`", edge.from, edge.to),
                ));
                continue;
            }
            graph.add_edge(gidx[f], gidx[t], ());
            preds[t].push(f);
            if f == t {
                self_loop[f] = true;
            }
        }
    }

    // Cycles: every strongly connected component with more than one node, or a self-loop.
    for scc in tarjan_scc(&graph) {
        let is_cycle = scc.len() > 1 || scc.iter().any(|n| self_loop[graph[*n]]);
        if is_cycle {
            let mut members: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
            members.sort_unstable();
            let ids: Vec<String> = members.iter().map(|i| def.nodes[*i].id.clone()).collect();
            problems.push(FieldProblem::new(
                "/edges",
                format!("cycle through nodes {}", ids.join(", ")),
            ));
            if out.cycle.is_none() {
                out.cycle = Some(ids);
            }
        }
    }

    // Templates and conditions may only reference upstream nodes (checked on an acyclic graph).
    let ancestors = if out.cycle.is_none() {
        Some(Ancestors::of(&preds))
    } else {
        None
    };
    for (i, node) in def.nodes.iter().enumerate() {
        if !config_ok[i] {
            continue;
        }
        let is_upstream = |id: &str| {
            match (&ancestors, index.get(id)) {
                (Some(a), Some(&j)) => a.contains(i, j),
                (None, Some(_)) => true, // unknown on a cyclic graph: the cycle is reported
                (_, None) => false,
            }
        };
        let mut check_refs = |base: String, value: &Value| {
            let refs = template::references(value);
            if refs.len() > limits.max_template_refs {
                problems.push(FieldProblem::new(
                    base,
                    format!(
                        "at most {} template references per node",
                        limits.max_template_refs
                    ),
                ));
                return;
            }
            for (ptr, r) in refs {
                match r {
                    Err(e) => problems.push(FieldProblem::new(format!("{base}{ptr}"), e)),
                    Ok(TemplateRef::Node { id, .. }) if !is_upstream(&id) => {
                        problems.push(FieldProblem::new(
                            format!("{base}{ptr}"),
                            if index.contains_key(id.as_str()) {
                                format!(
                                    "references node `{id}`, which is not upstream of this node"
                                )
                            } else {
                                format!("references unknown node `{id}`")
                            },
                        ))
                    }
                    Ok(_) => {}
                }
            }
        };
        match node.kind() {
            Some(NodeType::Action) => {
                if let Some(params) = node.config.get("params") {
                    check_refs(format!("/nodes/{i}/config/params"), params);
                }
            }
            Some(NodeType::Agent) => {
                if let Some(prompt @ Value::String(_)) = node.config.get("prompt") {
                    check_refs(format!("/nodes/{i}/config/prompt"), prompt);
                }
            }
            Some(NodeType::Condition) => {
                if let Some(Value::String(expr)) = node.config.get("expression")
                    && let Ok(ids) = condition::check_static(expr, &limits.cel)
                {
                    for id in ids {
                        if !is_upstream(&id) {
                            problems.push(FieldProblem::new(
                                format!("/nodes/{i}/config/expression"),
                                format!(
                                    "references node `{id}`, which is not upstream of this node"
                                ),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Ancestor sets of every node of an acyclic graph as bitsets, built in topological order.
struct Ancestors {
    words: usize,
    bits: Vec<u64>,
}

impl Ancestors {
    fn of(preds: &[Vec<usize>]) -> Self {
        let n = preds.len();
        let words = n.div_ceil(64).max(1);
        let mut bits = vec![0u64; n * words];
        // Kahn's algorithm over the predecessor lists.
        let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut indeg = vec![0usize; n];
        for (t, ps) in preds.iter().enumerate() {
            for &p in ps {
                succs[p].push(t);
                indeg[t] += 1;
            }
        }
        let mut queue: VecDeque<usize> = (0..n).filter(|&v| indeg[v] == 0).collect();
        while let Some(v) = queue.pop_front() {
            for &p in &preds[v] {
                for w in 0..words {
                    bits[v * words + w] |= bits[p * words + w];
                }
                bits[v * words + p / 64] |= 1 << (p % 64);
            }
            for &s in &succs[v] {
                indeg[s] -= 1;
                if indeg[s] == 0 {
                    queue.push_back(s);
                }
            }
        }
        Self { words, bits }
    }

    /// True when `j` is an ancestor of `i`.
    fn contains(&self, i: usize, j: usize) -> bool {
        self.bits
            .get(i * self.words + j / 64)
            .is_some_and(|w| w & (1 << (j % 64)) != 0)
    }
}

fn check_config(
    kind: NodeType,
    config: &Value,
    i: usize,
    known_tools: Option<&HashSet<String>>,
    limits: &Limits,
    conditions: &mut Vec<(usize, String)>,
    problems: &mut Vec<FieldProblem>,
) {
    let base = format!("/nodes/{i}/config");
    let obj = match config {
        Value::Object(m) => m,
        Value::Null if matches!(kind, NodeType::Trigger | NodeType::Parallel) => return,
        _ => {
            problems.push(FieldProblem::new(base, "must be an object"));
            return;
        }
    };
    let allowed: &[&str] = match kind {
        NodeType::Trigger | NodeType::Parallel => &[],
        NodeType::Action => &["tool", "params"],
        NodeType::Agent => &["agent_id", "prompt"],
        NodeType::Condition => &["expression"],
        NodeType::Delay => &["ms"],
    };
    for key in obj.keys() {
        if !allowed.contains(&key.as_str()) {
            problems.push(FieldProblem::new(
                format!("{base}/{}", template::escape_pointer(key)),
                format!("unknown field for a {} node", kind.as_str()),
            ));
        }
    }
    match kind {
        NodeType::Trigger | NodeType::Parallel => {}
        NodeType::Action => {
            match obj.get("tool") {
                Some(Value::String(t)) if !t.trim().is_empty() && t.len() <= 100 => {
                    if known_tools.is_some_and(|k| !k.contains(t)) {
                        problems.push(FieldProblem::new(
                            format!("{base}/tool"),
                            "unknown tool (GET /tools lists them)",
                        ));
                    }
                }
                _ => problems.push(FieldProblem::new(
                    format!("{base}/tool"),
                    "must be the name of a tool",
                )),
            }
            match obj.get("params") {
                None | Some(Value::Object(_)) => {}
                Some(_) => problems.push(FieldProblem::new(
                    format!("{base}/params"),
                    "must be an object",
                )),
            }
        }
        NodeType::Agent => {
            match obj.get("agent_id") {
                Some(Value::String(s)) if Uuid::parse_str(s).is_ok() => {}
                _ => problems.push(FieldProblem::new(
                    format!("{base}/agent_id"),
                    "must be an agent id (UUID)",
                )),
            }
            match obj.get("prompt") {
                Some(Value::String(s)) if !s.trim().is_empty() => {}
                _ => problems.push(FieldProblem::new(
                    format!("{base}/prompt"),
                    "must be a non-empty string",
                )),
            }
        }
        NodeType::Condition => match obj.get("expression") {
            Some(Value::String(expr)) => match condition::scan(expr, &limits.cel) {
                Ok(()) => conditions.push((i, expr.clone())),
                Err(e) => problems.push(FieldProblem::new(format!("{base}/expression"), e)),
            },
            _ => problems.push(FieldProblem::new(
                format!("{base}/expression"),
                "must be a CEL expression (string)",
            )),
        },
        NodeType::Delay => match obj.get("ms").and_then(Value::as_u64) {
            Some(ms) if ms <= MAX_DURATION_MS => {}
            _ => problems.push(FieldProblem::new(
                format!("{base}/ms"),
                format!("must be an integer between 0 and {MAX_DURATION_MS}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use gathering_domain::ErrorCode;
    use serde_json::json;

    fn def(v: Value) -> PipelineDefinition {
        serde_json::from_value(v).unwrap()
    }

    fn fields(e: &PipelineError) -> Vec<String> {
        e.details().into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn a_valid_linear_pipeline_passes() {
        let d = def(json!({
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "fetch", "type": "action", "config": {"tool": "http_request", "params": {"method": "GET", "url": "{{input.url}}"}}},
                {"id": "check", "type": "condition", "config": {"expression": "nodes.fetch.output.status == 200"}},
                {"id": "wait", "type": "delay", "config": {"ms": 10}},
                {"id": "summarize", "type": "agent", "config": {"agent_id": Uuid::nil().to_string(), "prompt": "Summarize {{nodes.fetch.output.body}}"}}
            ],
            "edges": [
                {"from": "start", "to": "fetch"}, {"from": "fetch", "to": "check"},
                {"from": "check", "to": "wait", "when": true}, {"from": "wait", "to": "summarize"}
            ]
        }));
        validate(&d).unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once_with_pointers() {
        let d = def(json!({
            "nodes": [
                {"id": "a", "type": "trigger", "config": {}},
                {"id": "a", "type": "action", "config": {"tool": "", "params": 3}},
                {"id": "c", "type": "teleport", "config": {}},
                {"id": "d", "type": "delay", "config": {"ms": -1}, "timeout_ms": 0},
                {"id": "e", "type": "agent", "config": {"agent_id": "nope", "prompt": ""}}
            ],
            "edges": [{"from": "a", "to": "zzz"}, {"from": "a", "to": "c", "when": true}]
        }));
        let err = validate(&d).unwrap_err();
        assert_eq!(err.code(), "validation_failed");
        let f = fields(&err);
        for expected in [
            "/nodes/1/id",
            "/nodes/1/config/tool",
            "/nodes/1/config/params",
            "/nodes/2/type",
            "/nodes/3/config/ms",
            "/nodes/3/timeout_ms",
            "/nodes/4/config/agent_id",
            "/nodes/4/config/prompt",
            "/edges/0/to",
            "/edges/1/when",
        ] {
            assert!(
                f.contains(&expected.to_owned()),
                "missing {expected} in {f:?}"
            );
        }
    }

    #[test]
    fn cycle_is_reported_with_the_node_ids_on_it() {
        let d = def(json!({
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "x", "type": "parallel"},
                {"id": "y", "type": "parallel"},
                {"id": "z", "type": "parallel"}
            ],
            "edges": [{"from": "start", "to": "x"}, {"from": "x", "to": "y"}, {"from": "y", "to": "z"}, {"from": "z", "to": "x"}]
        }));
        let err = validate(&d).unwrap_err();
        assert_eq!(err.code(), "cycle_detected");
        match err {
            PipelineError::Cycle { nodes, .. } => assert_eq!(nodes, vec!["x", "y", "z"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let d = def(
            json!({"nodes": [{"id": "a", "type": "trigger"}], "edges": [{"from": "a", "to": "a"}]}),
        );
        assert_eq!(validate(&d).unwrap_err().code(), "cycle_detected");
    }

    #[test]
    fn templates_must_reference_upstream_nodes() {
        let d = def(json!({
            "nodes": [
                {"id": "a", "type": "trigger"},
                {"id": "b", "type": "action", "config": {"tool": "calculator", "params": {"expression": "{{nodes.c.output.x}}", "other": ["{{nodes.ghost.output}}"]}}},
                {"id": "c", "type": "action", "config": {"tool": "calculator", "params": {"expression": "{{nodes.a.output.n}}"}}},
                {"id": "d", "type": "condition", "config": {"expression": "nodes.b.output == 1"}}
            ],
            "edges": [{"from": "a", "to": "b"}, {"from": "a", "to": "c"}, {"from": "c", "to": "d"}]
        }));
        let err = validate(&d).unwrap_err();
        let f = fields(&err);
        assert!(
            f.contains(&"/nodes/1/config/params/expression".to_owned()),
            "{f:?}"
        );
        assert!(
            f.contains(&"/nodes/1/config/params/other/0".to_owned()),
            "{f:?}"
        );
        assert!(
            f.contains(&"/nodes/3/config/expression".to_owned()),
            "{f:?}"
        );
        assert!(!f.iter().any(|p| p.starts_with("/nodes/2")), "{f:?}");
    }

    #[test]
    fn conditions_must_compile() {
        let d = def(json!({
            "nodes": [{"id": "a", "type": "trigger"}, {"id": "b", "type": "condition", "config": {"expression": "input.n >"}}],
            "edges": [{"from": "a", "to": "b"}]
        }));
        assert_eq!(
            fields(&validate(&d).unwrap_err()),
            vec!["/nodes/1/config/expression"]
        );
    }

    #[test]
    fn retry_policy_bounds_are_checked() {
        let d = def(json!({
            "nodes": [{"id": "a", "type": "action", "config": {"tool": "t"},
                       "retry": {"max_attempts": 0, "multiplier": 0.5, "initial_backoff_ms": 10, "max_backoff_ms": 5}}],
            "edges": []
        }));
        let f = fields(&validate(&d).unwrap_err());
        assert!(f.contains(&"/nodes/0/retry/max_attempts".to_owned()));
        assert!(f.contains(&"/nodes/0/retry/multiplier".to_owned()));
        assert!(f.contains(&"/nodes/0/retry/initial_backoff_ms".to_owned()));
    }
}
