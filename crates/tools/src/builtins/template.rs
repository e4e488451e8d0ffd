//! `text_template`: `{{name}}` placeholders filled from `values`. Plain substitution only —
//! no expressions, no code. `{{a.b}}` looks up nested objects (and array indexes).

use crate::limits::{OutputLimits, check_value};
use crate::registry::{ToolSpec, parse_params};
use gathering_domain::FieldProblem;
use gathering_domain::tools::{ToolContext, ToolError};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::time::Duration;

pub const NAME: &str = "text_template";
pub const MAX_TEMPLATE_LEN: usize = 100_000;
/// Largest rendered text, in bytes, by default (the registry passes
/// `GATHERING__TOOLS__MAX_OUTPUT_BYTES`).
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

pub fn spec() -> ToolSpec {
    ToolSpec::new(
        NAME,
        "Renders a text template: each {{name}} (or {{a.b}} for nested values) is replaced by \
         the value of that key in `values`. A placeholder without a value is an error.",
        json!({
            "type": "object",
            "properties": {
                "template": {"type": "string", "maxLength": MAX_TEMPLATE_LEN},
                "values": {"type": "object"}
            },
            "required": ["template", "values"],
            "additionalProperties": false
        }),
        Duration::from_secs(5),
    )
}

#[derive(Deserialize)]
struct Params {
    template: String,
    values: Map<String, Value>,
}

fn lookup<'a>(values: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut cur = values.get(parts.next()?)?;
    for part in parts {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        })
}

/// Renders `template`; every problem (missing values, malformed placeholders) is reported.
pub fn render(template: &str, values: &Map<String, Value>) -> Result<String, Vec<FieldProblem>> {
    render_bounded(template, values, MAX_OUTPUT_BYTES)
}

fn too_large(max: usize) -> FieldProblem {
    FieldProblem::new("/template", format!("rendered text exceeds {max} bytes"))
}

/// [`render`] that stops as soon as the text would pass `max_output` bytes: nothing larger is
/// ever built (a value repeated many times cannot grow it past the bound). Non-string values
/// are measured before they are formatted.
pub fn render_bounded(
    template: &str,
    values: &Map<String, Value>,
    max_output: usize,
) -> Result<String, Vec<FieldProblem>> {
    let mut out = String::with_capacity(template.len().min(max_output));
    let mut problems = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if out.len() + start > max_output {
            problems.push(too_large(max_output));
            break;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            problems.push(FieldProblem::new("/template", "unclosed `{{`"));
            break;
        };
        let name = after[..end].trim();
        if !valid_name(name) {
            problems.push(FieldProblem::new(
                "/template",
                format!("invalid placeholder `{{{{{name}}}}}`"),
            ));
        } else {
            match lookup(values, name) {
                Some(Value::String(s)) => {
                    if out.len() + s.len() > max_output {
                        problems.push(too_large(max_output));
                        break;
                    }
                    out.push_str(s);
                }
                Some(other) => {
                    let room = max_output.saturating_sub(out.len());
                    let limits = OutputLimits {
                        max_bytes: room,
                        max_depth: usize::MAX,
                    };
                    if check_value(other, limits).is_err() {
                        problems.push(too_large(max_output));
                        break;
                    }
                    out.push_str(&other.to_string());
                }
                None => problems.push(FieldProblem::new(
                    format!("/values/{}", name.replace('~', "~0").replace('/', "~1")),
                    format!("no value for placeholder `{{{{{name}}}}}`"),
                )),
            }
        }
        rest = &after[end + 2..];
    }
    if problems.is_empty() {
        if out.len() + rest.len() > max_output {
            return Err(vec![too_large(max_output)]);
        }
        out.push_str(rest);
        Ok(out)
    } else {
        Err(problems)
    }
}

pub fn run(_ctx: &ToolContext, params: Value) -> Result<Value, ToolError> {
    run_bounded(params, MAX_OUTPUT_BYTES)
}

/// The tool with a bound on the rendered text; too much text is `output_too_large`.
pub fn run_bounded(params: Value, max_output: usize) -> Result<Value, ToolError> {
    let p: Params = parse_params(params)?;
    render_bounded(&p.template, &p.values, max_output)
        .map(Value::String)
        .map_err(|problems| {
            if problems
                .iter()
                .any(|p| p.problem.starts_with("rendered text exceeds"))
            {
                ToolError::OutputTooLarge(format!(
                    "{NAME}: rendered text exceeds {max_output} bytes"
                ))
            } else {
                ToolError::InvalidParams(problems)
            }
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn values(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn placeholders_are_replaced_including_nested_and_non_string_values() {
        let v = values(json!({"name": "Ada", "n": 3, "user": {"langs": ["rust", "c"]}}));
        assert_eq!(
            render("Hi {{name}}, {{ n }} items, first {{user.langs.0}}.", &v).unwrap(),
            "Hi Ada, 3 items, first rust."
        );
        assert_eq!(render("no placeholders", &v).unwrap(), "no placeholders");
    }

    #[test]
    fn every_missing_key_is_reported() {
        let v = values(json!({"a": 1}));
        let err = render("{{a}} {{b}} {{c.d}}", &v).unwrap_err();
        let fields: Vec<_> = err.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["/values/b", "/values/c.d"]);
        assert!(err[0].problem.contains("{{b}}"));
    }

    #[test]
    fn values_are_not_re_expanded_and_malformed_placeholders_fail() {
        let v = values(json!({"a": "{{b}}", "b": "x"}));
        assert_eq!(render("{{a}}", &v).unwrap(), "{{b}}");
        assert!(render("{{a", &v).is_err());
        assert!(render("{{a + b}}", &v).is_err());
        assert!(render("{{}}", &v).is_err());
    }
}
