//! Property tests: the workspace path resolver never leaves the root, and the three parsers
//! of user text (JMESPath depth check + compile + evaluation, calculator, text template)
//! never panic and never overflow the stack on arbitrary or deeply nested input, and answer
//! within their bounds. Parsers run on threads with a deliberately modest stack: an overflow
//! there aborts this test binary at once instead of passing by luck on a large main stack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tools::builtins::calculator;
use gathering_tools::builtins::jmes_eval::Evaluator;
use gathering_tools::builtins::json_query::{self, JsonQuery};
use gathering_tools::builtins::template;
use gathering_tools::workspace::{self, PathError};
use jmespath::ToJmespath;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// Runs `f` on a thread with `stack` bytes of stack.
fn on_stack<T: Send + 'static>(stack: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(f)
        .unwrap()
        .join()
        .expect("no panic")
}

// ---------------------------------------------------------------- workspace resolver

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    croot: PathBuf,
}

/// `root/` with files, inside and escaping symlinks, a loop and a FIFO; `outside/secret`.
static TREE: LazyLock<Tree> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(root.join("a/file"), "inside").unwrap();
    fs::write(root.join("a/b/deep"), "inside").unwrap();
    fs::write(outside.join("secret"), "SECRET").unwrap();
    symlink(&outside, root.join("out")).unwrap();
    symlink("../../outside/secret", root.join("a/up")).unwrap();
    symlink("a", root.join("in")).unwrap();
    symlink("b/../../..", root.join("a/sneak")).unwrap();
    symlink("loop2", root.join("loop1")).unwrap();
    symlink("loop1", root.join("loop2")).unwrap();
    let ok = std::process::Command::new("mkfifo")
        .arg(root.join("a/fifo"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let croot = fs::canonicalize(&root).unwrap();
    Tree {
        _dir: dir,
        root,
        croot,
    }
});

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just(String::new()),
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("file".to_owned()),
        Just("deep".to_owned()),
        Just("out".to_owned()),
        Just("up".to_owned()),
        Just("in".to_owned()),
        Just("sneak".to_owned()),
        Just("loop1".to_owned()),
        Just("fifo".to_owned()),
        Just("secret".to_owned()),
        Just("outside".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("%2f".to_owned()),
        Just("%252e%252e".to_owned()),
        Just("%u002e".to_owned()),
        Just("..%5c".to_owned()),
        Just("a\0b".to_owned()),
        Just("C:".to_owned()),
        Just("\\..".to_owned()),
        "[a-z.%/\\\\]{1,6}",
        any::<String>().prop_map(|s| s.chars().take(8).collect()),
    ]
}

fn user_path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(segment(), 0..8)).prop_map(|(abs, segs)| {
        let p = segs.join("/");
        if abs { format!("/{p}") } else { p }
    })
}

fn inside(p: &Path) -> bool {
    p.starts_with(&TREE.croot)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn resolved_paths_never_leave_the_root(p in user_path()) {
        let t = &*TREE;
        let has_parent = p.split('/').any(|s| s == "..");
        match workspace::resolve(&t.root, &p) {
            Ok(resolved) => {
                prop_assert!(inside(&resolved), "{p:?} -> {resolved:?}");
                prop_assert!(!has_parent, "{p:?} has `..` but resolved");
                prop_assert!(!p.contains('\0') && !p.contains('\\') && !p.starts_with('/'));
            }
            Err(PathError::Forbidden(_) | PathError::NotFound | PathError::Invalid(_)) => {}
            Err(e) => prop_assert!(false, "{p:?}: unexpected {e:?}"),
        }
        if has_parent || p.contains('\0') || p.starts_with('/') {
            prop_assert!(
                matches!(workspace::resolve(&t.root, &p), Err(PathError::Forbidden(_))),
                "{p:?} must be forbidden"
            );
        }
    }

    #[test]
    fn reads_never_return_anything_from_outside_nor_block(p in user_path()) {
        let t = &*TREE;
        // A FIFO would block `open` forever: the read must answer (it runs inline here).
        if let Ok(c) = workspace::read_text_blocking(&t.root, &p, 4096) {
            prop_assert_eq!(c.content, "inside");
        }
        if let Ok(target) = workspace::resolve_for_write(&t.root, &p, false) {
            prop_assert!(inside(&target), "{p:?} -> {target:?}");
        }
        if let Ok(tree) = workspace::list_tree_blocking(&t.root, &p, 3, 100) {
            prop_assert!(tree.entries.iter().all(|e| !e.path.contains("secret")));
        }
    }
}

// ---------------------------------------------------------------- json_query

const JMES_ATOMS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "!",
    ".",
    "|",
    "||",
    "&",
    "&&",
    "@",
    "a",
    "b",
    ",",
    ":",
    "*",
    "[]",
    "[?",
    "[*]",
    "==",
    "!=",
    "<",
    ">=",
    "'x'",
    "'\\''",
    "\"q\"",
    "`1`",
    "`[1]`",
    "0",
    "-1",
    "length(",
    "map(&",
    "sort_by(",
    "to_string(",
    "join(',', ",
    " ",
    "'",
    "\"",
    "`",
    "\\",
];

fn jmes_query() -> impl Strategy<Value = String> {
    prop_oneof![
        // Token soup.
        prop::collection::vec(prop::sample::select(JMES_ATOMS), 0..200).prop_map(|v| v.concat()),
        // A deep nest of one shape around a small core, with a matching tail or none.
        (
            prop::sample::select(
                &[
                    "(", "[", "{a:", "!", "&", "a.", "a|", "a||", "[*].", "f(", "@[]|", "[@,@]|"
                ][..]
            ),
            1usize..5000,
            prop::sample::select(&["@", "a", "`1`", "'s'"][..]),
            any::<bool>(),
        )
            .prop_map(|(open, n, core, close)| {
                let n = n.min(json_query::MAX_QUERY_LEN / open.len().max(1) / 2);
                let mut q = open.repeat(n);
                q.push_str(core);
                if close {
                    let closer = match open {
                        "(" | "f(" => ")",
                        "[" => "]",
                        "{a:" => "}",
                        _ => "",
                    };
                    q.push_str(&closer.repeat(n));
                }
                q
            }),
        // Arbitrary text.
        any::<String>().prop_map(|s| s.chars().take(300).collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Whatever the query, the depth check answers; a query it accepts compiles, evaluates
    /// (budgeted) and is dropped on a 4 MiB stack — a quarter of the 16 MiB the tool gives its
    /// evaluation thread — so the check is a sound bound on the recursion of the parser, the
    /// interpreter and drop, with margin. (At 1 MiB, an unoptimised build's frames for a query
    /// just under the limit came close enough that a rare generated case overflowed.)
    #[test]
    fn accepted_queries_never_overflow_a_modest_stack(q in jmes_query()) {
        let depth = json_query::nesting_depth(&q, json_query::DEFAULT_MAX_DEPTH);
        if depth.is_ok() {
            let data = json!({"a": {"a": [1, 2, {"b": "x"}]}, "b": [[1], [2, [3]]]});
            on_stack(4 * 1024 * 1024, move || {
                if let Ok(expr) = jmespath::compile(&q) {
                    let root = (&data).to_jmespath().unwrap();
                    let _ = Evaluator::new(&q, 1 << 20).eval(&root, expr.as_ast());
                }
            });
        }
    }

    /// The tool itself never panics and refuses deep queries with a `/query` detail.
    #[test]
    fn json_query_tool_answers_every_query(q in jmes_query()) {
        let deep = json_query::nesting_depth(&q, json_query::DEFAULT_MAX_DEPTH).is_err();
        let out = on_stack(512 * 1024, move || {
            JsonQuery::default().run(json!({"data": {"a": [1, 2]}, "query": q}))
        });
        if deep {
            let Err(gathering_domain::tools::ToolError::InvalidParams(p)) = out else {
                return Err(TestCaseError::fail("a deep query must be refused"));
            };
            prop_assert_eq!(p[0].field.as_str(), "/query");
        }
    }
}

// ---------------------------------------------------------------- calculator

fn calc_expression() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9.eE+\\-*/%^() ]{0,300}",
        (
            prop::sample::select(&["(", "-", "+", "2^", "-(", "1+(", "2*-"][..]),
            1usize..2000
        )
            .prop_map(|(open, n)| format!("{}1{}", open.repeat(n), ")".repeat(n))),
        any::<String>().prop_map(|s| s.chars().take(200).collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn calculator_never_panics_nor_overflows(e in calc_expression()) {
        let out = on_stack(256 * 1024, move || calculator::evaluate(&e));
        if let Ok(v) = out {
            prop_assert!(v.is_finite());
        }
    }
}

// ---------------------------------------------------------------- text_template

fn template_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[{}a-c. \\-_0-9]{0,400}",
        (1usize..20_000).prop_map(|n| "{{big}}".repeat(n)),
        (1usize..5000).prop_map(|n| format!("{}a{}", "{{".repeat(n), "}}".repeat(n))),
        any::<String>().prop_map(|s| s.chars().take(200).collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn templates_never_panic_and_never_pass_the_output_bound(t in template_text()) {
        const MAX: usize = 64 * 1024;
        let mut values = Map::new();
        values.insert("a".into(), json!("A"));
        values.insert("b".into(), json!({"c": [1, {"d": "e"}]}));
        values.insert("big".into(), Value::String("x".repeat(1000)));
        values.insert("nested".into(), json!([[[[[[1]]]]]]));
        let out = on_stack(256 * 1024, move || template::render_bounded(&t, &values, MAX));
        if let Ok(text) = out {
            prop_assert!(text.len() <= MAX);
        }
    }
}
