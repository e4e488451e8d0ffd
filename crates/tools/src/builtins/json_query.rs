//! `json_query`: a JMESPath expression evaluated over `data`.

use crate::registry::{ToolSpec, parse_params};
use gathering_domain::FieldProblem;
use gathering_domain::tools::{ToolContext, ToolError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

pub const NAME: &str = "json_query";
pub const MAX_QUERY_LEN: usize = 10_000;

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

pub fn run(_ctx: &ToolContext, params: Value) -> Result<Value, ToolError> {
    let p: Params = parse_params(params)?;
    let expr = jmespath::compile(&p.query).map_err(|e| {
        ToolError::InvalidParams(vec![FieldProblem::new(
            "/query",
            format!("not a valid JMESPath expression: {e}"),
        )])
    })?;
    let result = expr
        .search(&p.data)
        .map_err(|e| ToolError::failed(format!("query failed: {e}")))?;
    serde_json::to_value(&*result).map_err(|e| ToolError::failed(format!("query result: {e}")))
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

    #[test]
    fn queries_select_project_and_filter() {
        let data = json!({"items": [{"n": "a", "v": 1}, {"n": "b", "v": 5}]});
        let q = |query: &str| run(&ctx(), json!({"data": data, "query": query})).unwrap();
        assert_eq!(q("items[0].n"), json!("a"));
        assert_eq!(q("items[?v > `2`].n"), json!(["b"]));
        assert_eq!(q("length(items)"), json!(2));
        assert_eq!(q("missing"), Value::Null);
    }

    #[test]
    fn invalid_expression_is_an_invalid_query_parameter() {
        let err = run(&ctx(), json!({"data": {}, "query": "items[?"})).unwrap_err();
        assert!(matches!(err, ToolError::InvalidParams(p) if p[0].field == "/query"));
    }
}
