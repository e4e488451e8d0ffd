//! Templates in node configs: `{{nodes.<id>.output.<path>}}` and `{{input.<path>}}`.
//!
//! A string that is exactly one reference takes the referenced JSON value as it is; references
//! inside a longer string are rendered as text (strings verbatim, other values as compact JSON,
//! null/missing as the empty string). A reference to a missing value renders `null`.

use serde_json::Value;
use std::collections::HashMap;

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateRef {
    Input(Vec<String>),
    Node { id: String, path: Vec<String> },
}

/// One piece of a template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<'a> {
    Text(&'a str),
    Ref(&'a str),
}

/// Splits a string into text and `{{ … }}` references; `Err` on an unterminated `{{`.
pub fn segments(s: &str) -> Result<Vec<Segment<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Segment::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("unterminated template reference `{{`".to_owned());
        };
        out.push(Segment::Ref(after[..end].trim()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest));
    }
    Ok(out)
}

/// Parses the inside of `{{ … }}`.
pub fn parse_ref(inner: &str) -> Result<TemplateRef, String> {
    let parts: Vec<&str> = inner.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("malformed reference `{inner}`"));
    }
    match parts.as_slice() {
        ["input", path @ ..] => Ok(TemplateRef::Input(
            path.iter().map(|p| (*p).to_owned()).collect(),
        )),
        ["nodes", id, "output", path @ ..] => Ok(TemplateRef::Node {
            id: (*id).to_owned(),
            path: path.iter().map(|p| (*p).to_owned()).collect(),
        }),
        ["nodes", ..] => Err(format!(
            "reference `{inner}` must have the form nodes.<id>.output[.<path>]"
        )),
        _ => Err(format!(
            "reference `{inner}` must start with `input` or `nodes.<id>.output`"
        )),
    }
}

/// Every reference in `value` (recursively through arrays and object values), with the JSON
/// pointer (relative to `value`) of the string holding it. Parse problems are returned as `Err`.
pub fn references(value: &Value) -> Vec<(String, Result<TemplateRef, String>)> {
    let mut out = Vec::new();
    collect(value, String::new(), &mut out);
    out
}

fn collect(value: &Value, ptr: String, out: &mut Vec<(String, Result<TemplateRef, String>)>) {
    match value {
        Value::String(s) => match segments(s) {
            Err(e) => out.push((ptr, Err(e))),
            Ok(segs) => {
                for seg in segs {
                    if let Segment::Ref(r) = seg {
                        out.push((ptr.clone(), parse_ref(r)));
                    }
                }
            }
        },
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect(v, format!("{ptr}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                collect(v, format!("{ptr}/{}", escape_pointer(k)), out);
            }
        }
        _ => {}
    }
}

/// JSON-pointer escaping of one key.
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// What templates can see: the run input and the outputs of finished nodes.
pub struct TemplateContext<'a> {
    pub input: &'a Value,
    pub outputs: &'a HashMap<String, Value>,
}

impl TemplateContext<'_> {
    fn lookup(&self, r: &TemplateRef) -> Value {
        let (root, path) = match r {
            TemplateRef::Input(path) => (Some(self.input), path),
            TemplateRef::Node { id, path } => (self.outputs.get(id), path),
        };
        let mut cur = match root {
            Some(v) => v,
            None => return Value::Null,
        };
        for seg in path {
            let next = match cur {
                Value::Object(m) => m.get(seg),
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
            match next {
                Some(v) => cur = v,
                None => return Value::Null,
            }
        }
        cur.clone()
    }
}

/// Renders every string in `value`; `Err` names a malformed template.
pub fn render(value: &Value, ctx: &TemplateContext<'_>) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => render_str_value(s, ctx)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), render(v, ctx)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

fn render_str_value(s: &str, ctx: &TemplateContext<'_>) -> Result<Value, String> {
    if !s.contains("{{") {
        return Ok(Value::String(s.to_owned()));
    }
    let segs = segments(s)?;
    if let [Segment::Ref(r)] = segs.as_slice() {
        return Ok(ctx.lookup(&parse_ref(r)?));
    }
    Ok(Value::String(render_text_segments(&segs, ctx)?))
}

/// Renders a string as text (used for agent prompts).
pub fn render_text(s: &str, ctx: &TemplateContext<'_>) -> Result<String, String> {
    render_text_segments(&segments(s)?, ctx)
}

fn render_text_segments(segs: &[Segment<'_>], ctx: &TemplateContext<'_>) -> Result<String, String> {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Segment::Text(t) => out.push_str(t),
            Segment::Ref(r) => match ctx.lookup(&parse_ref(r)?) {
                Value::Null => {}
                Value::String(s) => out.push_str(&s),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn ctx_fixture() -> (Value, HashMap<String, Value>) {
        let input = json!({"n": 7, "user": {"name": "ada"}});
        let mut outputs = HashMap::new();
        outputs.insert(
            "fetch".to_owned(),
            json!({"status": 200, "body": {"items": [{"id": 1}, {"id": 2}]}}),
        );
        (input, outputs)
    }

    #[test]
    fn exact_reference_keeps_the_json_value() {
        let (input, outputs) = ctx_fixture();
        let ctx = TemplateContext {
            input: &input,
            outputs: &outputs,
        };
        let v = render(
            &json!({"a": "{{nodes.fetch.output.body}}", "b": "{{ input.n }}", "c": "{{nodes.fetch.output.body.items.1.id}}"}),
            &ctx,
        )
        .unwrap();
        assert_eq!(v["a"], json!({"items": [{"id": 1}, {"id": 2}]}));
        assert_eq!(v["b"], json!(7));
        assert_eq!(v["c"], json!(2));
    }

    #[test]
    fn embedded_references_render_as_text() {
        let (input, outputs) = ctx_fixture();
        let ctx = TemplateContext {
            input: &input,
            outputs: &outputs,
        };
        let v = render(
            &json!([
                "hi {{input.user.name}}, status={{nodes.fetch.output.status}} {{input.missing}}!"
            ]),
            &ctx,
        )
        .unwrap();
        assert_eq!(v[0], json!("hi ada, status=200 !"));
    }

    #[test]
    fn missing_values_render_null() {
        let (input, outputs) = ctx_fixture();
        let ctx = TemplateContext {
            input: &input,
            outputs: &outputs,
        };
        assert_eq!(
            render(&json!("{{nodes.other.output.x}}"), &ctx).unwrap(),
            Value::Null
        );
    }

    #[test]
    fn references_are_found_with_pointers_and_malformed_ones_reported() {
        let refs = references(
            &json!({"url": "http://x/{{nodes.a.output.id}}", "list": ["{{input}}", "{{nodes.b}}"], "bad": "{{oops"}),
        );
        let ptrs: Vec<&str> = refs.iter().map(|(p, _)| p.as_str()).collect();
        assert!(ptrs.contains(&"/url"));
        assert!(ptrs.contains(&"/list/0"));
        let list1 = refs.iter().find(|(p, _)| p == "/list/1").unwrap();
        assert!(list1.1.is_err());
        let bad = refs.iter().find(|(p, _)| p == "/bad").unwrap();
        assert!(bad.1.is_err());
        let url = refs.iter().find(|(p, _)| p == "/url").unwrap();
        assert_eq!(
            url.1.as_ref().unwrap(),
            &TemplateRef::Node {
                id: "a".into(),
                path: vec!["id".into()]
            }
        );
    }
}
