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
    pub outputs: &'a dyn Outputs,
}

/// Finished nodes' outputs by node id (borrowed by the executor: rendering copies only what a
/// template references, after measuring it).
pub trait Outputs {
    fn output(&self, id: &str) -> Option<&Value>;
}

impl Outputs for HashMap<String, Value> {
    fn output(&self, id: &str) -> Option<&Value> {
        self.get(id)
    }
}

impl Outputs for HashMap<&str, &Value> {
    fn output(&self, id: &str) -> Option<&Value> {
        self.get(id).copied()
    }
}

impl TemplateContext<'_> {
    fn lookup(&self, r: &TemplateRef) -> Option<&Value> {
        let (root, path) = match r {
            TemplateRef::Input(path) => (Some(self.input), path),
            TemplateRef::Node { id, path } => (self.outputs.output(id), path),
        };
        let mut cur = root?;
        for seg in path {
            cur = match cur {
                Value::Object(m) => m.get(seg)?,
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i))?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

/// Why rendering failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// A malformed template.
    Malformed(String),
    /// The rendered result would exceed this many bytes; rendering stopped there.
    TooLarge(usize),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Malformed(e) => f.write_str(e),
            RenderError::TooLarge(max) => {
                write!(f, "the rendered parameters exceed {max} bytes")
            }
        }
    }
}

/// Bytes rendered so far against the bound; every piece is measured before it is copied.
struct Meter {
    used: usize,
    max: usize,
}

impl Meter {
    fn add(&mut self, n: usize) -> Result<(), RenderError> {
        self.used = self.used.saturating_add(n);
        if self.used > self.max {
            return Err(RenderError::TooLarge(self.max));
        }
        Ok(())
    }
    /// Measures `v` against what is left (stopping early) and counts it.
    fn add_value(&mut self, v: &Value) -> Result<(), RenderError> {
        let left = self.max.saturating_sub(self.used);
        match crate::limits::json_size_within(v, left) {
            Some(n) => self.add(n),
            None => Err(RenderError::TooLarge(self.max)),
        }
    }
}

/// Renders every string in `value`; `Err` names a malformed template.
pub fn render(value: &Value, ctx: &TemplateContext<'_>) -> Result<Value, String> {
    render_bounded(value, ctx, usize::MAX).map_err(|e| e.to_string())
}

/// [`render`] with the rendered result bounded to `max_bytes` (about its JSON size): rendering
/// stops as soon as the bound is passed.
pub fn render_bounded(
    value: &Value,
    ctx: &TemplateContext<'_>,
    max_bytes: usize,
) -> Result<Value, RenderError> {
    let mut meter = Meter {
        used: 0,
        max: max_bytes,
    };
    render_value(value, ctx, &mut meter)
}

fn render_value(
    value: &Value,
    ctx: &TemplateContext<'_>,
    meter: &mut Meter,
) -> Result<Value, RenderError> {
    Ok(match value {
        Value::String(s) => render_str_value(s, ctx, meter)?,
        Value::Array(items) => {
            meter.add(2 + items.len())?;
            Value::Array(
                items
                    .iter()
                    .map(|v| render_value(v, ctx, meter))
                    .collect::<Result<_, _>>()?,
            )
        }
        Value::Object(map) => {
            meter.add(2)?;
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                meter.add(k.len() + 4)?;
                out.insert(k.clone(), render_value(v, ctx, meter)?);
            }
            Value::Object(out)
        }
        other => {
            meter.add_value(other)?;
            other.clone()
        }
    })
}

fn render_str_value(
    s: &str,
    ctx: &TemplateContext<'_>,
    meter: &mut Meter,
) -> Result<Value, RenderError> {
    if !s.contains("{{") {
        meter.add(s.len() + 2)?;
        return Ok(Value::String(s.to_owned()));
    }
    let segs = segments(s).map_err(RenderError::Malformed)?;
    if let [Segment::Ref(r)] = segs.as_slice() {
        let r = parse_ref(r).map_err(RenderError::Malformed)?;
        return Ok(match ctx.lookup(&r) {
            Some(v) => {
                meter.add_value(v)?;
                v.clone()
            }
            None => Value::Null,
        });
    }
    meter.add(2)?;
    Ok(Value::String(render_text_segments(&segs, ctx, meter)?))
}

/// Renders a string as text (used for agent prompts).
pub fn render_text(s: &str, ctx: &TemplateContext<'_>) -> Result<String, String> {
    render_text_bounded(s, ctx, usize::MAX).map_err(|e| e.to_string())
}

/// [`render_text`] bounded to `max_bytes`; stops as soon as the bound is passed.
pub fn render_text_bounded(
    s: &str,
    ctx: &TemplateContext<'_>,
    max_bytes: usize,
) -> Result<String, RenderError> {
    let mut meter = Meter {
        used: 0,
        max: max_bytes,
    };
    let segs = segments(s).map_err(RenderError::Malformed)?;
    render_text_segments(&segs, ctx, &mut meter)
}

fn render_text_segments(
    segs: &[Segment<'_>],
    ctx: &TemplateContext<'_>,
    meter: &mut Meter,
) -> Result<String, RenderError> {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Segment::Text(t) => {
                meter.add(t.len())?;
                out.push_str(t);
            }
            Segment::Ref(r) => match ctx.lookup(&parse_ref(r).map_err(RenderError::Malformed)?) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => {
                    meter.add(s.len())?;
                    out.push_str(s);
                }
                Some(other) => {
                    meter.add_value(other)?;
                    out.push_str(&other.to_string());
                }
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

    #[test]
    fn fan_out_rendering_stops_at_the_bound() {
        let input = json!({"x": "y".repeat(250 * 1024)});
        let outputs: HashMap<String, Value> = HashMap::new();
        let ctx = TemplateContext {
            input: &input,
            outputs: &outputs,
        };
        let params: Value = Value::Array(vec![json!("{{input.x}}"); 2000]);
        let e = render_bounded(&params, &ctx, 1024 * 1024).unwrap_err();
        assert_eq!(e, RenderError::TooLarge(1024 * 1024));
        let prompt = "{{input.x}} ".repeat(2000);
        assert!(matches!(
            render_text_bounded(&prompt, &ctx, 1024 * 1024),
            Err(RenderError::TooLarge(_))
        ));
        // Under the bound it renders as before.
        let ok = render_bounded(&json!({"a": "{{input.x}}"}), &ctx, 1024 * 1024).unwrap();
        assert_eq!(ok["a"].as_str().unwrap().len(), 250 * 1024);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn arbitrary_template_strings_never_panic(s in "(\\{\\{|\\}\\}|[a-z.0-9 ]|input|nodes|output|\\PC){0,300}") {
                let (input, outputs) = ctx_fixture();
                let ctx = TemplateContext { input: &input, outputs: &outputs };
                let _ = references(&Value::String(s.clone()));
                let _ = render_bounded(&Value::String(s.clone()), &ctx, 4096);
                let _ = render_text_bounded(&s, &ctx, 4096);
            }

            #[test]
            fn deeply_nested_params_render_within_the_bound(depth in 1usize..120) {
                let (input, outputs) = ctx_fixture();
                let ctx = TemplateContext { input: &input, outputs: &outputs };
                let mut v = json!("{{input.user}}");
                for _ in 0..depth {
                    v = json!([v]);
                }
                let _ = render_bounded(&v, &ctx, 1 << 20);
            }
        }
    }
}
