//! Bounds on what a tool may return: the size of its compact JSON serialization and the nesting
//! depth of its arrays/objects. Checked by walking the value with a budget (iteratively, no
//! recursion) that stops as soon as either bound is passed, so the check costs at most the
//! budget however large (or however shared, for JMESPath results) the value is.

use gathering_domain::tools::ToolError;
use serde_json::Value;
use std::fmt::{self, Write};

/// The bounds of every tool's output (registry-wide; `GATHERING__TOOLS__MAX_OUTPUT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Largest compact JSON serialization, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of arrays/objects (`[]` is depth 1).
    pub max_depth: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// Why a value is over the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Bytes(usize),
    Depth(usize),
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exceeded::Bytes(max) => write!(f, "output is larger than {max} bytes"),
            Exceeded::Depth(max) => write!(f, "output nests deeper than {max} levels"),
        }
    }
}

impl Exceeded {
    pub fn into_tool_error(self, tool: &str) -> ToolError {
        ToolError::OutputTooLarge(format!("{tool}: {self}"))
    }
}

/// A running byte budget plus the depth bound.
#[derive(Debug)]
pub struct Budget {
    limits: OutputLimits,
    used: usize,
}

impl Budget {
    pub fn new(limits: OutputLimits) -> Self {
        Self { limits, used: 0 }
    }

    /// Charges `n` bytes; fails once the total passes the bound.
    pub fn charge(&mut self, n: usize) -> Result<(), Exceeded> {
        self.used = self.used.saturating_add(n);
        if self.used > self.limits.max_bytes {
            return Err(Exceeded::Bytes(self.limits.max_bytes));
        }
        Ok(())
    }

    /// Fails when a container at `depth` is deeper than allowed.
    pub fn enter(&self, depth: usize) -> Result<(), Exceeded> {
        if depth > self.limits.max_depth {
            return Err(Exceeded::Depth(self.limits.max_depth));
        }
        Ok(())
    }

    pub fn used(&self) -> usize {
        self.used
    }
}

/// Bytes of `s` as a JSON string literal (quotes and escapes included), as serde_json writes it.
pub fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | 0x0c | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Counts what is written into it.
struct Counter(usize);

impl Write for Counter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Length of a value's `Display` form, without allocating.
pub fn display_len(v: &impl fmt::Display) -> usize {
    let mut c = Counter(0);
    let _ = write!(c, "{v}");
    c.0
}

/// Checks a `serde_json::Value` against the limits; returns the serialized size.
pub fn check_value(value: &Value, limits: OutputLimits) -> Result<usize, Exceeded> {
    let mut budget = Budget::new(limits);
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Null => budget.charge(4)?,
            Value::Bool(b) => budget.charge(if *b { 4 } else { 5 })?,
            Value::Number(n) => budget.charge(display_len(n))?,
            Value::String(s) => budget.charge(json_string_len(s))?,
            Value::Array(a) => {
                budget.enter(depth + 1)?;
                budget.charge(2 + a.len().saturating_sub(1))?;
                stack.extend(a.iter().map(|x| (x, depth + 1)));
            }
            Value::Object(m) => {
                budget.enter(depth + 1)?;
                budget.charge(2 + m.len().saturating_sub(1))?;
                for (k, x) in m {
                    budget.charge(json_string_len(k) + 1)?;
                    stack.push((x, depth + 1));
                }
            }
        }
    }
    Ok(budget.used())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits(max_bytes: usize, max_depth: usize) -> OutputLimits {
        OutputLimits {
            max_bytes,
            max_depth,
        }
    }

    #[test]
    fn counted_size_is_the_compact_serialization_size() {
        for v in [
            json!(null),
            json!(true),
            json!(false),
            json!(12.5),
            json!(-3),
            json!("a\"b\\c\n\u{1}é"),
            json!([]),
            json!({}),
            json!([1, "x", {"k\"": [null, false]}, []]),
            json!({"a": {"b": {"c": [1, 2, 3]}}, "d": "e"}),
        ] {
            let want = serde_json::to_string(&v).unwrap().len();
            assert_eq!(check_value(&v, limits(10_000, 64)).unwrap(), want, "{v}");
        }
    }

    #[test]
    fn size_and_depth_bounds_are_enforced() {
        let v = json!({"s": "x".repeat(100)});
        assert_eq!(check_value(&v, limits(50, 64)), Err(Exceeded::Bytes(50)));
        let mut deep = json!(1);
        for _ in 0..10 {
            deep = json!([deep]);
        }
        assert!(check_value(&deep, limits(1000, 10)).is_ok());
        assert_eq!(check_value(&deep, limits(1000, 9)), Err(Exceeded::Depth(9)));
    }
}
