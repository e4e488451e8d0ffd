//! `condition` nodes: CEL expressions over `input` and `nodes` (cel-interpreter).
//!
//! User expressions are first checked by [`scan`], a linear, non-recursive scanner over the
//! text that bounds everything the (recursive) parser and evaluator could be made to do:
//! length, bracket nesting, operands and operators (`a + b + c …` nests one level per operand),
//! comprehension macros (how many, and how deeply nested inside each other) and the size of
//! list/map literals. Only an expression that passes is compiled, and compiling and evaluating
//! happen on the big-stack threads of [`crate::pool::CelPool`], never on the async runtime.

use cel_interpreter::objects::{Key, Map};
use cel_interpreter::{Context, Program, Value as Cel};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Largest expression accepted by default (bytes).
pub const MAX_EXPRESSION_LEN: usize = 4096;

/// Static limits of a condition expression (`GATHERING__PIPELINE__CEL_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CelLimits {
    /// Longest expression in bytes.
    pub max_len: usize,
    /// Deepest nesting of `()`, `[]` and `{}`.
    pub max_nesting: usize,
    /// Most operands (identifiers and literals).
    pub max_operands: usize,
    /// Most operators (`+ - * / % == != < <= > >= && || ! ? : . in` and indexing).
    pub max_operators: usize,
    /// How deeply comprehension macros (`all`, `exists`, `exists_one`, `map`, `filter`) may
    /// nest inside each other; 1 = a comprehension may not contain another one.
    pub max_comprehension_depth: usize,
    /// Most comprehension macros in one expression.
    pub max_macros: usize,
    /// Most elements of one list literal or entries of one map literal (and arguments of a call).
    pub max_literal_items: usize,
}

impl Default for CelLimits {
    fn default() -> Self {
        Self {
            max_len: MAX_EXPRESSION_LEN,
            max_nesting: 32,
            max_operands: 256,
            max_operators: 256,
            max_comprehension_depth: 1,
            max_macros: 8,
            max_literal_items: 256,
        }
    }
}

const MACROS: [&str; 5] = ["all", "exists", "exists_one", "map", "filter"];

struct Frame {
    close: u8,
    is_macro: bool,
    items: usize,
}

/// The static check of an expression: linear in its length, no recursion, no allocation beyond
/// a bracket stack bounded by `max_nesting`. Answers the problem found first.
pub fn scan(expr: &str, limits: &CelLimits) -> Result<(), String> {
    scan_inner(expr, limits).map(|_| ())
}

/// [`scan`]; answers the variables the comprehension macros bind (`x` in `l.all(x, …)`).
fn scan_inner<'e>(expr: &'e str, limits: &CelLimits) -> Result<Vec<&'e str>, String> {
    let mut bound: Vec<&'e str> = Vec::new();
    // Set right after a macro's `(`: the next identifier is the variable it binds.
    let mut binds_next = false;
    if expr.trim().is_empty() {
        return Err("must be a non-empty CEL expression".to_owned());
    }
    if expr.len() > limits.max_len {
        return Err(format!("must be at most {} characters", limits.max_len));
    }
    let b = expr.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let (mut operands, mut operators, mut macros, mut comprehension) = (0usize, 0usize, 0, 0);
    // The last token: an identifier after `.` that names a macro, and whether it was an operand
    // (so `[` indexes rather than opens a list).
    let mut macro_ident = false;
    let mut after_operand = false;
    let mut i = 0;
    let n = b.len();
    while i < n {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => {
                i += 1;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < n && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        // String and bytes literals, with an optional r/b prefix.
        let quote_at = {
            let mut j = i;
            while j < n && j < i + 2 && matches!(b[j], b'r' | b'R' | b'b' | b'B') {
                j += 1;
            }
            (j < n && (b[j] == b'"' || b[j] == b'\'')).then_some(j)
        };
        if let Some(q) = quote_at {
            let raw = b[i..q].iter().any(|p| matches!(p, b'r' | b'R'));
            i = skip_string(b, q, raw)?;
            binds_next = false;
            operands += 1;
            macro_ident = false;
            after_operand = true;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &expr[start..i];
            if binds_next && !bound.contains(&word) {
                bound.push(word);
            }
            binds_next = false;
            if word == "in" {
                operators += 1;
                macro_ident = false;
                after_operand = false;
            } else {
                let after_dot = expr[..start].trim_end().ends_with('.');
                macro_ident = after_dot && MACROS.contains(&word);
                operands += 1;
                after_operand = true;
            }
        } else if c.is_ascii_digit() {
            while i < n {
                let d = b[i];
                let exponent_sign = (d == b'+' || d == b'-') && matches!(b[i - 1], b'e' | b'E');
                if d.is_ascii_alphanumeric() || d == b'.' || exponent_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            operands += 1;
            binds_next = false;
            macro_ident = false;
            after_operand = true;
        } else {
            match c {
                b'(' | b'[' | b'{' => {
                    let is_macro = c == b'(' && macro_ident;
                    if c == b'[' && after_operand {
                        operators += 1; // indexing
                    }
                    if is_macro {
                        macros += 1;
                        comprehension += 1;
                        if macros > limits.max_macros {
                            return Err(format!(
                                "uses more than {} comprehension macros (all, exists, exists_one, map, filter)",
                                limits.max_macros
                            ));
                        }
                        if comprehension > limits.max_comprehension_depth {
                            return Err(format!(
                                "nests comprehension macros more than {} deep",
                                limits.max_comprehension_depth
                            ));
                        }
                    }
                    binds_next = is_macro;
                    stack.push(Frame {
                        close: match c {
                            b'(' => b')',
                            b'[' => b']',
                            _ => b'}',
                        },
                        is_macro,
                        items: 0,
                    });
                    if stack.len() > limits.max_nesting {
                        return Err(format!(
                            "nests brackets more than {} deep",
                            limits.max_nesting
                        ));
                    }
                    after_operand = false;
                }
                b')' | b']' | b'}' => {
                    match stack.pop() {
                        Some(f) if f.close == c => {
                            if f.is_macro {
                                comprehension -= 1;
                            }
                        }
                        _ => return Err(format!("unbalanced `{}`", c as char)),
                    }
                    after_operand = true;
                }
                b',' => {
                    if let Some(f) = stack.last_mut() {
                        f.items += 1;
                        if f.items >= limits.max_literal_items {
                            return Err(format!(
                                "has a list, map or argument list of more than {} items",
                                limits.max_literal_items
                            ));
                        }
                    }
                    after_operand = false;
                }
                b'&' | b'|' | b'=' | b'!' | b'<' | b'>' => {
                    // Two-character operators count once.
                    if matches!(
                        (c, b.get(i + 1)),
                        (b'&', Some(b'&'))
                            | (b'|', Some(b'|'))
                            | (b'=', Some(b'='))
                            | (b'!', Some(b'='))
                            | (b'<', Some(b'='))
                            | (b'>', Some(b'='))
                    ) {
                        i += 1;
                    }
                    operators += 1;
                    after_operand = false;
                }
                b'+' | b'-' | b'*' | b'/' | b'%' | b'?' | b':' | b'.' => {
                    operators += 1;
                    after_operand = false;
                }
                _ => {
                    return Err(format!(
                        "unexpected character at byte {i}: expressions are ASCII CEL"
                    ));
                }
            }
            macro_ident = false;
            i += 1;
        }
        if operands > limits.max_operands {
            return Err(format!("has more than {} operands", limits.max_operands));
        }
        if operators > limits.max_operators {
            return Err(format!("has more than {} operators", limits.max_operators));
        }
    }
    if !stack.is_empty() {
        return Err("has unclosed brackets".to_owned());
    }
    Ok(bound)
}

/// Skips a string literal whose opening quote is at `q`; answers the index after it.
fn skip_string(b: &[u8], q: usize, raw: bool) -> Result<usize, String> {
    let quote = b[q];
    let triple = b.get(q + 1) == Some(&quote) && b.get(q + 2) == Some(&quote);
    let mut i = if triple { q + 3 } else { q + 1 };
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && !raw {
            i += 2;
            continue;
        }
        if c == quote {
            if !triple {
                return Ok(i + 1);
            }
            if b.get(i + 1) == Some(&quote) && b.get(i + 2) == Some(&quote) {
                return Ok(i + 3);
            }
        }
        i += 1;
    }
    Err("has an unterminated string literal".to_owned())
}

/// The static check ([`scan`]); answers the node ids the expression references through
/// `nodes.<id>` / `nodes["<id>"]`. Does not compile: see [`compile_check`].
pub fn check_static(expr: &str, limits: &CelLimits) -> Result<Vec<String>, String> {
    scan(expr, limits)?;
    Ok(node_references(expr))
}

/// Compiles `expr` (which passed [`scan`]) and checks it only uses the variables `input` and
/// `nodes`. Must run on a big stack ([`crate::pool`]).
pub fn compile_check(expr: &str) -> Result<(), String> {
    // The variables comprehension macros bind are in scope inside them.
    let unlimited = CelLimits {
        max_len: usize::MAX,
        max_nesting: usize::MAX,
        max_operands: usize::MAX,
        max_operators: usize::MAX,
        max_comprehension_depth: usize::MAX,
        max_macros: usize::MAX,
        max_literal_items: usize::MAX,
    };
    let bound = scan_inner(expr, &unlimited).unwrap_or_default();
    let program = compile(expr)?;
    let refs = program.references();
    let unknown: Vec<&str> = refs
        .variables()
        .into_iter()
        .filter(|v| *v != "input" && *v != "nodes" && !bound.contains(v))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown variable(s) {}; only `input` and `nodes` are available",
            unknown.join(", ")
        ));
    }
    Ok(())
}

/// [`check_static`] then [`compile_check`] on a fresh big-stack thread; for synchronous callers
/// off the async runtime (tests, tools).
pub fn check(expr: &str) -> Result<Vec<String>, String> {
    let refs = check_static(expr, &CelLimits::default())?;
    crate::pool::on_big_stack(|| compile_check(expr)).map_err(|e| format!("{e:?}"))??;
    Ok(refs)
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

/// The node ids an expression can read, when it only ever names nodes one by one
/// (`nodes.<id>`, `nodes["<id>"]`); `None` when it may use the `nodes` map as a whole (iterates
/// it, passes it to a function, indexes it with a computed key). Lets an evaluation copy only
/// the outputs it can read.
pub fn nodes_read(expr: &str) -> Option<Vec<String>> {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("nodes") {
        let start = i + pos;
        let end = start + "nodes".len();
        i = end;
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let bounded_before = start == 0 || !(word(bytes[start - 1]) || bytes[start - 1] == b'.');
        let bounded_after = bytes.get(end).is_none_or(|b| !word(*b));
        if !bounded_before || !bounded_after {
            continue;
        }
        let rest = &expr[end..];
        if let Some(r) = rest.strip_prefix('.') {
            let id_len = r.bytes().take_while(|b| word(*b)).count();
            let after = r[id_len..].trim_start();
            if id_len == 0 || after.starts_with('(') {
                return None; // a method or macro on the map itself
            }
        } else if rest.starts_with("[\"") || rest.starts_with("['") {
            // A literal key; a computed one falls through to `None`.
        } else {
            return None;
        }
    }
    Some(node_references(expr))
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
        Value::Object(m) => map_to_cel(m),
    }
}

/// Evaluates `expr`; `nodes` maps node ids to `{output, status}` objects. Compiles and
/// recurses over the expression and the data: call it on a big stack ([`evaluate_on`]).
pub fn evaluate(
    expr: &str,
    input: &Value,
    nodes: &serde_json::Map<String, Value>,
) -> Result<bool, String> {
    let program = compile(expr)?;
    let mut ctx = Context::default();
    ctx.add_variable_from_value("input", to_cel(input));
    ctx.add_variable_from_value("nodes", map_to_cel(nodes));
    match program.execute(&ctx) {
        Ok(Cel::Bool(b)) => Ok(b),
        Ok(other) => Err(format!(
            "condition must evaluate to a bool, got {:?}",
            other.type_of()
        )),
        Err(e) => Err(format!("condition failed to evaluate: {e}")),
    }
}

fn map_to_cel(m: &serde_json::Map<String, Value>) -> Cel {
    let map: HashMap<Key, Cel> = m
        .iter()
        .map(|(k, v)| (Key::from(k.clone()), to_cel(v)))
        .collect();
    Cel::Map(Map { map: Arc::new(map) })
}

/// Why an evaluation on the pool did not answer a bool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// The expression failed (compile, type, runtime error).
    Failed(String),
    /// The budget passed; the evaluation was abandoned (see [`crate::pool`]).
    TimedOut,
}

/// [`scan`]s, then [`evaluate`]s on a big-stack thread of `pool` within `budget`. Dropping the
/// future (run cancelled) abandons the evaluation.
pub async fn evaluate_on(
    pool: &crate::pool::CelPool,
    limits: &CelLimits,
    budget: std::time::Duration,
    expr: String,
    input: Value,
    nodes: serde_json::Map<String, Value>,
) -> Result<bool, EvalError> {
    // Stored definitions passed the same check, but the limits may have been lowered since.
    scan(&expr, limits).map_err(|e| EvalError::Failed(format!("expression {e}")))?;
    match pool
        .run(budget, move || evaluate(&expr, &input, &nodes))
        .await
    {
        Ok(r) => r.map_err(EvalError::Failed),
        Err(crate::pool::PoolError::TimedOut) => Err(EvalError::TimedOut),
        Err(crate::pool::PoolError::Failed(e)) => Err(EvalError::Failed(e)),
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

    /// Runs `f` on a thread with a small stack, so a stack-hungry regression fails this test
    /// (the thread overflows, the process aborts) quickly instead of hiding behind a big stack.
    fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn deep_parens(n: usize) -> String {
        format!("{}true{}", "(".repeat(n), ")".repeat(n))
    }

    #[test]
    fn deeply_nested_parentheses_are_refused_before_parsing() {
        // 300 levels overflowed an actix worker's stack in the parser; the scanner refuses them
        // on a 256 KiB stack without parsing.
        let e = on_small_stack(|| scan(&deep_parens(300), &CelLimits::default())).unwrap_err();
        assert!(e.contains("nests brackets"), "{e}");
        let e =
            on_small_stack(|| check_static(&deep_parens(300), &CelLimits::default())).unwrap_err();
        assert!(e.contains("nests brackets"), "{e}");
        // The allowed depth compiles fine on the big stack.
        check(&deep_parens(30)).unwrap();
    }

    #[test]
    fn thousand_nested_lists_and_long_operand_chains_are_refused() {
        let lists = format!("{}1{} == 1", "[".repeat(1000), "]".repeat(1000));
        assert!(scan(&lists, &CelLimits::default()).is_err());
        let chain = format!("{} == 1", vec!["1"; 600].join(" + "));
        let e = scan(&chain, &CelLimits::default()).unwrap_err();
        assert!(e.contains("operands") || e.contains("operators"), "{e}");
        let wide = format!("[{}] == []", vec!["1"; 300].join(","));
        assert!(
            scan(&wide, &CelLimits::default())
                .unwrap_err()
                .contains("items")
        );
    }

    #[test]
    fn nested_comprehensions_and_too_many_macros_are_refused() {
        let l = "[1,2,3,4,5,6,7,8,9,10]";
        let nested = format!("{l}.all(a, {l}.all(b, {l}.all(c, a + b + c > 0)))");
        let e = scan(&nested, &CelLimits::default()).unwrap_err();
        assert!(e.contains("comprehension"), "{e}");
        // One level is fine, and sequential macros count against the macro limit.
        scan(&format!("{l}.all(a, a > 0)"), &CelLimits::default()).unwrap();
        let many = vec![format!("{l}.exists(x, x == 1)"); 9].join(" && ");
        assert!(
            scan(&many, &CelLimits::default())
                .unwrap_err()
                .contains("macros")
        );
        // A macro name as a plain field or inside a string is not a macro.
        scan(
            "input.map == 1 && input.s == \".all(\" && nodes.a.output.filter == 2",
            &CelLimits::default(),
        )
        .unwrap();
        let two = CelLimits {
            max_comprehension_depth: 2,
            ..CelLimits::default()
        };
        scan(&format!("{l}.all(a, {l}.exists(b, a == b))"), &two).unwrap();
    }

    #[test]
    fn string_literals_are_skipped_correctly() {
        let lim = CelLimits::default();
        // Brackets and quotes inside strings do not count.
        scan(r#"input.s == "((((((((((((((((((((((((((((((((((((""#, &lim).unwrap();
        scan(r#"input.s == 'a\'(' && input.t == "b\"[""#, &lim).unwrap();
        scan(r#"input.s == r"\" && input.t == 'x'"#, &lim).unwrap(); // raw: \ does not escape
        scan(r#"input.s == """a "quoted" ((( ]]] """"#, &lim).unwrap();
        scan(r#"input.b == b'\x00(' "#, &lim).unwrap();
        assert!(scan(r#"input.s == "unterminated"#, &lim).is_err());
        assert!(scan("input.s == ')'", &lim).is_ok());
        assert!(scan("(input.n > 1", &lim).is_err());
        assert!(scan("input.n > 1)", &lim).is_err());
    }

    #[test]
    fn only_the_nodes_an_expression_names_are_read() {
        assert_eq!(
            nodes_read("nodes.a.output.x == 1 && nodes['b'].status == 'ok' && nodes_x == 1"),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(nodes_read("size(nodes) > 1"), None);
        assert_eq!(nodes_read("nodes.all(k, k != 'a')"), None);
        assert_eq!(nodes_read("nodes[input.k].status == 'ok'"), None);
        assert_eq!(nodes_read("input.n > 1"), Some(vec![]));
    }

    #[test]
    fn check_rejects_syntax_errors_and_unknown_variables() {
        assert!(check("input.n >").is_err());
        assert!(check("foo == 1").unwrap_err().contains("foo"));
        assert!(check("").is_err());
        // Variables bound by comprehension macros are known inside them.
        check("input.l.exists(item, item > 2) && input.m.all(k, k != 'x')").unwrap();
        assert!(
            check("input.l.exists(item, item > other)")
                .unwrap_err()
                .contains("other")
        );
        assert_eq!(
            check("nodes.a.output.x == 1 || nodes[\"b\"].output == true").unwrap(),
            vec!["a".to_owned(), "b".to_owned()]
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn limits() -> CelLimits {
            CelLimits::default()
        }

        /// Text made of CEL-ish tokens, brackets and quotes, in any order and depth.
        fn cel_text() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    Just("(".to_owned()),
                    Just(")".to_owned()),
                    Just("[".to_owned()),
                    Just("]".to_owned()),
                    Just("{".to_owned()),
                    Just("}".to_owned()),
                    Just("\"".to_owned()),
                    Just("'".to_owned()),
                    Just("\\".to_owned()),
                    Just(".all(x, ".to_owned()),
                    Just(".map(y, ".to_owned()),
                    Just(" + ".to_owned()),
                    Just(" && ".to_owned()),
                    Just(",".to_owned()),
                    Just("input.n".to_owned()),
                    Just("nodes.a.output".to_owned()),
                    Just("1".to_owned()),
                    Just("r'".to_owned()),
                    "[a-z0-9 ._<>=!?:-]{0,8}",
                ],
                0..400,
            )
            .prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn the_scanner_never_panics_on_arbitrary_text(s in "\\PC{0,600}") {
                let _ = scan(&s, &limits());
            }

            #[test]
            fn whatever_passes_the_scanner_compiles_without_overflowing_a_small_stack(s in cel_text()) {
                if scan(&s, &limits()).is_ok() {
                    // 1 MiB is far below the 64 MiB CEL threads: what the limits let through
                    // is shallow enough for any stack.
                    let s2 = s.clone();
                    std::thread::Builder::new()
                        .stack_size(1024 * 1024)
                        .spawn(move || {
                            let _ = compile_check(&s2);
                            let _ = evaluate(&s2, &serde_json::json!({"n": 1}), &serde_json::Map::new());
                        })
                        .unwrap()
                        .join()
                        .unwrap();
                }
            }

            #[test]
            fn deeply_nested_text_is_refused_by_the_scanner(depth in 33usize..3000, open in "[(\\[{]") {
                let close = match open.as_str() { "(" => ")", "[" => "]", _ => "}" };
                let s = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                prop_assert!(scan(&s, &limits()).is_err());
            }
        }
    }
}
