//! `json_query`: a JMESPath expression evaluated over `data`.
//!
//! The `jmespath` crate parses and evaluates recursively, and its AST is as deep as the query
//! nests (`!!!…@`, `((…))`, `[[…]]`, and `a.b.c…`/`a|b|…` chains, which build left-deep
//! trees). So before anything is compiled, [`nesting_depth`] bounds that nesting with one
//! linear scan of the query; the parse, the evaluation and the conversion of the result all
//! run on a thread of our own with a known, large stack (never on a runtime worker).
//!
//! A JMESPath result is a tree of `Rc`-shared nodes: `[@,@]|[@,@]|…` is tiny in memory and
//! enormous once expanded. The result is walked with a byte/depth budget ([`check_result`])
//! that stops as soon as the bound is passed, before it is converted to JSON.

use crate::builtins::jmes_eval::{EvalError, Evaluator};
use crate::limits::{Budget, Exceeded, OutputLimits, display_len, json_string_len};
use crate::registry::{ToolSpec, parse_params};
use gathering_domain::FieldProblem;
use gathering_domain::tools::{ToolContext, ToolError};
use jmespath::{Rcvar, ToJmespath, Variable};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

pub const NAME: &str = "json_query";
pub const MAX_QUERY_LEN: usize = 10_000;
/// Default bound of [`nesting_depth`] (`GATHERING__TOOLS__JSON_QUERY_MAX_DEPTH`).
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Default work budget of one evaluation (`GATHERING__TOOLS__JSON_QUERY_MAX_WORK_BYTES`).
pub const DEFAULT_MAX_WORK_BYTES: usize = 64 * 1024 * 1024;
/// Stack of the evaluation thread: ample for the default depth (a level costs well under
/// 4 KiB of parser + interpreter frames), growing with a configured larger depth.
const MIN_STACK_BYTES: usize = 16 * 1024 * 1024;
const STACK_BYTES_PER_LEVEL: usize = 64 * 1024;

pub fn spec() -> ToolSpec {
    ToolSpec::new(
        NAME,
        "Evaluates a JMESPath query over `data` and returns the result.",
        json!({
            "type": "object",
            "properties": {
                "data": {"description": "any JSON value"},
                "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_LEN}
            },
            "required": ["data", "query"],
            "additionalProperties": false
        }),
        Duration::from_secs(10),
    )
}

#[derive(Deserialize)]
struct Params {
    data: Value,
    query: String,
}

/// The tool, with its bounds.
#[derive(Debug, Clone, Copy)]
pub struct JsonQuery {
    pub max_depth: usize,
    /// Most memory one evaluation may materialize ([`Evaluator`]).
    pub max_work: usize,
    pub output: OutputLimits,
}

impl Default for JsonQuery {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
            max_work: DEFAULT_MAX_WORK_BYTES,
            output: OutputLimits::default(),
        }
    }
}

/// One open `(`, `[` or `{` of the scan.
struct Frame {
    /// Depth at the start of each element (after the bracket, after each `,`).
    start: usize,
    /// Depth reached by the current element so far.
    cur: usize,
    /// Deepest element closed by a `,`.
    max: usize,
}

/// An upper bound on how deep the parser recurses and how deep the AST grows for `query`,
/// computed by one linear scan without parsing. Each bracket opens a level; within a level
/// every operator that nests the tree (`.`, `|`, `||`, `&&`, `!`, `&`, comparisons, `[]`,
/// `*`) adds one; a `,` starts a new sibling at the bracket's level; a closed bracket counts
/// as deep as its deepest element. Quoted identifiers (`"…"`), raw strings (`'…'`) and JSON
/// literals (`` `…` ``) are skipped with their backslash escapes, as the lexer does. Returns
/// `Err(position)` as soon as the depth passes `max`.
pub fn nesting_depth(query: &str, max: usize) -> Result<usize, usize> {
    let b = query.as_bytes();
    let mut stack = vec![Frame {
        start: 0,
        cur: 0,
        max: 0,
    }];
    let mut deepest = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let mut step = 1;
        let mut chain = false;
        match c {
            b'"' | b'\'' | b'`' => {
                // Skip to the closing delimiter; a backslash escapes the next byte.
                let mut j = i + 1;
                while j < b.len() && b[j] != c {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                step = j.saturating_sub(i) + 1;
            }
            b'(' | b'{' | b'[' => {
                if c == b'[' && b.get(i + 1) == Some(&b']') {
                    // `[]` flatten: a projection, one more level.
                    step = 2;
                    chain = true;
                } else {
                    let top = stack.last().map_or(0, |f| f.cur);
                    let start = top + 1;
                    stack.push(Frame {
                        start,
                        cur: start,
                        max: start,
                    });
                    deepest = deepest.max(start);
                }
            }
            b')' | b'}' | b']' => {
                if stack.len() > 1
                    && let Some(child) = stack.pop()
                    && let Some(parent) = stack.last_mut()
                {
                    parent.cur = child.max.max(child.cur);
                }
            }
            b',' => {
                if let Some(f) = stack.last_mut() {
                    f.max = f.max.max(f.cur);
                    f.cur = f.start;
                }
            }
            b'|' | b'&' => {
                // `||`, `&&` are one operator.
                if b.get(i + 1) == Some(&c) {
                    step = 2;
                }
                chain = true;
            }
            b'!' | b'<' | b'>' | b'=' => {
                if b.get(i + 1) == Some(&b'=') {
                    step = 2;
                }
                chain = true;
            }
            b'.' | b'*' => chain = true,
            _ => {}
        }
        if chain && let Some(f) = stack.last_mut() {
            f.cur += 1;
            deepest = deepest.max(f.cur);
        }
        if deepest > max {
            return Err(i);
        }
        i = i.saturating_add(step);
    }
    Ok(deepest)
}

/// Walks a JMESPath result with the output budget, iteratively, visiting shared nodes as
/// often as they would be serialized; stops as soon as a bound is passed.
pub fn check_result(v: &Rcvar, limits: OutputLimits) -> Result<usize, Exceeded> {
    let mut budget = Budget::new(limits);
    let mut stack: Vec<(&Variable, usize)> = vec![(v.as_ref(), 0)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Variable::Null => budget.charge(4)?,
            Variable::Bool(b) => budget.charge(if *b { 4 } else { 5 })?,
            Variable::Number(n) => budget.charge(display_len(n))?,
            Variable::String(s) => budget.charge(json_string_len(s))?,
            Variable::Array(a) => {
                budget.enter(depth + 1)?;
                budget.charge(2 + a.len().saturating_sub(1))?;
                stack.extend(a.iter().map(|x| (x.as_ref(), depth + 1)));
            }
            Variable::Object(m) => {
                budget.enter(depth + 1)?;
                budget.charge(2 + m.len().saturating_sub(1))?;
                for (k, x) in m {
                    budget.charge(json_string_len(k) + 1)?;
                    stack.push((x.as_ref(), depth + 1));
                }
            }
            // Serialized as the string `<expression: {ast:?}>`; escapes at most double it.
            Variable::Expref(ast) => {
                budget.charge(2 * (display_len(&format_args!("<expression: {ast:?}>")) + 1))?
            }
        }
    }
    Ok(budget.used())
}

fn invalid_query(problem: impl Into<String>) -> ToolError {
    ToolError::InvalidParams(vec![FieldProblem::new("/query", problem)])
}

impl JsonQuery {
    /// Checks, compiles and evaluates; the caller runs this on a thread with a large stack.
    fn evaluate(&self, data: Value, query: &str) -> Result<Value, ToolError> {
        if let Err(pos) = nesting_depth(query, self.max_depth) {
            return Err(invalid_query(format!(
                "query nests deeper than {} levels (at character {pos})",
                self.max_depth
            )));
        }
        let expr = jmespath::compile(query)
            .map_err(|e| invalid_query(format!("not a valid JMESPath expression: {e}")))?;
        let root = (&data)
            .to_jmespath()
            .map_err(|e| ToolError::failed(format!("query data: {e}")))?;
        drop(data);
        let result = Evaluator::new(query, self.max_work)
            .eval(&root, expr.as_ast())
            .map_err(|e| match e {
                EvalError::Budget(max) => ToolError::OutputTooLarge(format!(
                    "{NAME}: the query would build more than {max} bytes of intermediate results"
                )),
                EvalError::Jmespath(e) => ToolError::failed(format!("query failed: {e}")),
                EvalError::Runtime(m) => ToolError::failed(format!("query failed: {m}")),
            })?;
        drop(root);
        check_result(&result, self.output)
            .map_err(|e| ToolError::OutputTooLarge(format!("{NAME}: query result: {e}")))?;
        serde_json::to_value(&*result).map_err(|e| ToolError::failed(format!("query result: {e}")))
    }

    pub fn run(&self, params: Value) -> Result<Value, ToolError> {
        let p: Params = parse_params(params)?;
        // Refused before a thread is even started.
        if let Err(pos) = nesting_depth(&p.query, self.max_depth) {
            return Err(invalid_query(format!(
                "query nests deeper than {} levels (at character {pos})",
                self.max_depth
            )));
        }
        let this = *self;
        let stack = MIN_STACK_BYTES.max(self.max_depth.saturating_mul(STACK_BYTES_PER_LEVEL));
        let worker = std::thread::Builder::new()
            .name("json-query".to_owned())
            .stack_size(stack)
            .spawn(move || this.evaluate(p.data, &p.query))
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start the json_query thread");
                ToolError::Failed {
                    message: "the query could not be started".to_owned(),
                    retryable: true,
                    status: None,
                }
            })?;
        worker.join().unwrap_or_else(|_| {
            tracing::error!("json_query thread panicked");
            Err(ToolError::failed("the query crashed"))
        })
    }
}

/// `json_query` with the default bounds.
pub fn run(_ctx: &ToolContext, params: Value) -> Result<Value, ToolError> {
    JsonQuery::default().run(params)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ctx() -> ToolContext {
        ToolContext {
            user_id: uuid::Uuid::nil(),
            is_admin: false,
            idempotency_key: None,
            request_id: None,
        }
    }

    /// Runs `f` on a thread with a small stack, so a stack overflow fails this test quickly
    /// (the whole test binary would abort) instead of passing by luck on a big main stack.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn field_is_query(e: &ToolError) -> bool {
        matches!(e, ToolError::InvalidParams(p) if p[0].field == "/query")
    }

    #[test]
    fn queries_select_project_and_filter() {
        let data = json!({"items": [{"n": "a", "v": 1}, {"n": "b", "v": 5}]});
        let q = |query: &str| run(&ctx(), json!({"data": data, "query": query})).unwrap();
        assert_eq!(q("items[0].n"), json!("a"));
        assert_eq!(q("items[?v > `2`].n"), json!(["b"]));
        assert_eq!(q("length(items)"), json!(2));
        assert_eq!(q("missing"), Value::Null);
        assert_eq!(
            q("items[*].{name: n, big: v >= `5`} | sort_by(@, &name)[].name"),
            json!(["a", "b"])
        );
        assert_eq!(q("'a)]}\\'' | `\"[[[\"`"), json!("[[["));
    }

    #[test]
    fn invalid_expression_is_an_invalid_query_parameter() {
        let err = run(&ctx(), json!({"data": {}, "query": "items[?"})).unwrap_err();
        assert!(field_is_query(&err));
    }

    #[test]
    fn nesting_depth_counts_brackets_prefixes_and_chains() {
        let d = |q: &str| nesting_depth(q, 1000).unwrap();
        assert_eq!(d("a"), 0);
        assert_eq!(d("a.b"), 1);
        assert_eq!(d("a.b.c.d"), 3);
        assert_eq!(d("a | b | c"), 2);
        assert_eq!(d("!!!a"), 3);
        assert_eq!(d("((a))"), 2);
        assert_eq!(d("[[a]]"), 2);
        assert_eq!(d("{a: {b: c}}"), 2);
        // Siblings do not add up; a closed bracket counts as deep as its deepest element.
        assert_eq!(d("[a.b.c, d, e]"), 3);
        assert_eq!(d("[a.b.c, d].x"), 4);
        assert_eq!(d("f(g(h(x)))"), 3);
        // Quoted text is skipped, escapes included.
        assert_eq!(d("'(((\\'((('"), 0);
        assert_eq!(d("\"[[[\\\"[[[\""), 0);
        assert_eq!(d("`[[[[\\`[[`"), 0);
        assert_eq!(d("a != b && c || d"), 3);
    }

    #[test]
    fn deep_queries_of_every_shape_are_refused_before_compiling_on_a_small_stack() {
        let shapes = [
            format!("{}@", "!".repeat(9990)),
            format!("{}@{}", "(".repeat(4990), ")".repeat(4990)),
            format!("{}@{}", "[".repeat(4990), "]".repeat(4990)),
            ["a"; 4900].join("."),
            ["a"; 4900].join("|"),
            ["a"; 3000].join("||"),
            format!("{}a", "&".repeat(5000)),
            "{a:".repeat(2000),
            "[*]".repeat(3000),
            "a[0]".repeat(2000),
            "f(".repeat(4000),
            format!("@{}", "[]".repeat(4000)),
        ];
        for q in shapes {
            let head: String = q.chars().take(12).collect();
            let err = on_small_stack(move || {
                run(&ctx(), json!({"data": {"a": 1}, "query": q})).unwrap_err()
            });
            assert!(field_is_query(&err), "{head}…: {err:?}");
            let ToolError::InvalidParams(p) = err else {
                unreachable!()
            };
            assert!(p[0].problem.contains("deeper than 64"), "{head}…: {p:?}");
        }
    }

    #[test]
    fn queries_at_the_depth_limit_still_run() {
        let q = format!("{}@{}", "(".repeat(64), ")".repeat(64));
        assert_eq!(
            run(&ctx(), json!({"data": 7, "query": q})).unwrap(),
            json!(7)
        );
        let q = ["a"; 65].join(".");
        assert_eq!(
            run(&ctx(), json!({"data": {}, "query": q})).unwrap(),
            Value::Null
        );
        let q = ["a"; 66].join(".");
        assert!(field_is_query(
            &run(&ctx(), json!({"data": {}, "query": q})).unwrap_err()
        ));
    }

    #[test]
    fn a_larger_configured_depth_runs_on_the_query_thread_not_the_callers_stack() {
        let tool = JsonQuery {
            max_depth: 3000,
            ..JsonQuery::default()
        };
        let q = format!("{}@", "!".repeat(2999));
        let out = on_small_stack(move || tool.run(json!({"data": 1, "query": q})).unwrap());
        assert_eq!(out, json!(false));
    }

    #[test]
    fn doubling_amplification_is_refused_before_the_result_is_expanded() {
        let q = ["[@,@]"; 18].join("|");
        let data = "x".repeat(1000);
        let err = run(&ctx(), json!({"data": data, "query": q})).unwrap_err();
        assert!(matches!(&err, ToolError::OutputTooLarge(m) if m.contains("larger than")));
        // 30 stages would be 2^30 copies: still refused at once (the walk stops at the bound).
        let q = ["[@,@]"; 30].join("|");
        let err = run(&ctx(), json!({"data": "x", "query": q})).unwrap_err();
        assert!(matches!(err, ToolError::OutputTooLarge(_)));
    }

    #[test]
    fn result_walk_matches_serialized_size_and_bounds_depth() {
        let data = json!({"a": [1, 2.5, "q\"\n", null, true, {"b": []}]});
        let expr = jmespath::compile("[a, a, @]").unwrap();
        let r = expr.search(&data).unwrap();
        let want = serde_json::to_string(&*r).unwrap().len();
        assert_eq!(check_result(&r, OutputLimits::default()).unwrap(), want);
        let tight = OutputLimits {
            max_bytes: 1 << 20,
            max_depth: 3,
        };
        assert_eq!(check_result(&r, tight), Err(Exceeded::Depth(3)));
    }
}
