//! `condition` nodes: CEL expressions over `input` and `nodes` (cel-interpreter).

use cel_interpreter::objects::{Key, Map};
use cel_interpreter::{Context, Program, Value as Cel};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Largest expression accepted (characters).
pub const MAX_EXPRESSION_LEN: usize = 4096;

/// Compiles `expr` and checks it only uses the variables `input` and `nodes`.
/// Answers the node ids it references through `nodes.<id>` / `nodes["<id>"]`.
pub fn check(expr: &str) -> Result<Vec<String>, String> {
    if expr.trim().is_empty() {
        return Err("must be a non-empty CEL expression".to_owned());
    }
    if expr.len() > MAX_EXPRESSION_LEN {
        return Err(format!("must be at most {MAX_EXPRESSION_LEN} characters"));
    }
    let program = compile(expr)?;
    let refs = program.references();
    let unknown: Vec<&str> = refs
        .variables()
        .into_iter()
        .filter(|v| *v != "input" && *v != "nodes")
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown variable(s) {}; only `input` and `nodes` are available",
            unknown.join(", ")
        ));
    }
    Ok(node_references(expr))
}

fn compile(expr: &str) -> Result<Program, String> {
    // The parser can panic on some malformed inputs in older releases; keep it contained.
    match std::panic::catch_unwind(|| Program::compile(expr)) {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(format!("does not compile: {e}")),
        Err(_) => Err("does not compile".to_owned()),
    }
}

/// Node ids named as `nodes.<id>` or `nodes["<id>"]` / `nodes['<id>']` in the source.
pub fn node_references(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("nodes") {
        let start = i + pos;
        let end = start + "nodes".len();
        i = end;
        let boundary_before = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b'.');
        if !boundary_before {
            continue;
        }
        let rest = &expr[end..];
        let id = if let Some(r) = rest.strip_prefix('.') {
            r.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("")
                .to_owned()
        } else if let Some(r) = rest.strip_prefix("[\"").or_else(|| rest.strip_prefix("['")) {
            r.split(['"', '\'']).next().unwrap_or("").to_owned()
        } else {
            continue;
        };
        if !id.is_empty() && !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Converts JSON to a CEL value (integers that fit stay `int`).
pub fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Cel::Int(i)
            } else if let Some(u) = n.as_u64() {
                Cel::UInt(u)
            } else {
                Cel::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(a) => Cel::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<Key, Cel> = m
                .iter()
                .map(|(k, v)| (Key::from(k.clone()), to_cel(v)))
                .collect();
            Cel::Map(Map { map: Arc::new(map) })
        }
    }
}

/// Evaluates `expr`; `nodes` maps node ids to `{output, status}` objects.
pub fn evaluate(
    expr: &str,
    input: &Value,
    nodes: &serde_json::Map<String, Value>,
) -> Result<bool, String> {
    let program = compile(expr)?;
    let mut ctx = Context::default();
    ctx.add_variable_from_value("input", to_cel(input));
    ctx.add_variable_from_value("nodes", to_cel(&Value::Object(nodes.clone())));
    match program.execute(&ctx) {
        Ok(Cel::Bool(b)) => Ok(b),
        Ok(other) => Err(format!(
            "condition must evaluate to a bool, got {:?}",
            other.type_of()
        )),
        Err(e) => Err(format!("condition failed to evaluate: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn expression_over_input_and_node_outputs_evaluates() {
        let nodes = json!({"fetch": {"output": {"status": 200}, "status": "succeeded"}});
        let nodes = nodes.as_object().unwrap();
        let input = json!({"n": 7});
        assert!(
            evaluate(
                "nodes.fetch.output.status == 200 && input.n > 5",
                &input,
                nodes
            )
            .unwrap()
        );
        assert!(!evaluate("input.n > 10", &input, nodes).unwrap());
    }

    #[test]
    fn non_bool_result_is_an_error() {
        let err = evaluate("input.n + 1", &json!({"n": 1}), &serde_json::Map::new()).unwrap_err();
        assert!(err.contains("bool"), "{err}");
    }

    #[test]
    fn check_rejects_syntax_errors_and_unknown_variables() {
        assert!(check("input.n >").is_err());
        assert!(check("foo == 1").unwrap_err().contains("foo"));
        assert!(check("").is_err());
        assert_eq!(
            check("nodes.a.output.x == 1 || nodes[\"b\"].output == true").unwrap(),
            vec!["a".to_owned(), "b".to_owned()]
        );
    }
}
