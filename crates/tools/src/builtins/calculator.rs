//! `calculator`: a small arithmetic parser — numbers, `+ - * / % ^`, parentheses and unary
//! minus. No names, no functions, nothing else is evaluated.

use crate::registry::{ToolSpec, parse_params};
use gathering_domain::FieldProblem;
use gathering_domain::tools::{ToolContext, ToolError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

pub const NAME: &str = "calculator";
pub const MAX_EXPRESSION_LEN: usize = 1000;
pub const MAX_DEPTH: usize = 64;

pub fn spec() -> ToolSpec {
    ToolSpec::new(
        NAME,
        "Evaluates an arithmetic expression: numbers, + - * / % ^ (power), parentheses and \
         unary minus. Returns a number.",
        json!({
            "type": "object",
            "properties": {
                "expression": {"type": "string", "minLength": 1, "maxLength": MAX_EXPRESSION_LEN}
            },
            "required": ["expression"],
            "additionalProperties": false
        }),
        Duration::from_secs(5),
    )
}

#[derive(Deserialize)]
struct Params {
    expression: String,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CalcError {
    #[error("syntax error at position {pos}: {what}")]
    Syntax { pos: usize, what: String },
    #[error("expression nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("expression is longer than {MAX_EXPRESSION_LEN} characters")]
    TooLong,
    #[error("division by zero")]
    DivisionByZero,
    #[error("result is not a finite number")]
    NotFinite,
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.src.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.src.get(self.pos).copied()
    }

    fn syntax(&self, what: impl Into<String>) -> CalcError {
        CalcError::Syntax {
            pos: self.pos,
            what: what.into(),
        }
    }

    fn enter(&mut self) -> Result<(), CalcError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(CalcError::TooDeep);
        }
        Ok(())
    }

    // expr := term (('+' | '-') term)*
    fn expr(&mut self) -> Result<f64, CalcError> {
        self.enter()?;
        let mut v = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.pos += 1;
            let r = self.term()?;
            v = if op == b'+' { v + r } else { v - r };
        }
        self.depth -= 1;
        Ok(v)
    }

    // term := unary (('*' | '/' | '%') unary)*
    fn term(&mut self) -> Result<f64, CalcError> {
        let mut v = self.unary()?;
        while let Some(op @ (b'*' | b'/' | b'%')) = self.peek() {
            self.pos += 1;
            let r = self.unary()?;
            v = match op {
                b'*' => v * r,
                _ if r == 0.0 => return Err(CalcError::DivisionByZero),
                b'/' => v / r,
                _ => v % r,
            };
        }
        Ok(v)
    }

    // unary := ('-' | '+') unary | power
    fn unary(&mut self) -> Result<f64, CalcError> {
        match self.peek() {
            Some(op @ (b'-' | b'+')) => {
                self.pos += 1;
                self.enter()?;
                let v = self.unary()?;
                self.depth -= 1;
                Ok(if op == b'-' { -v } else { v })
            }
            _ => self.power(),
        }
    }

    // power := atom ('^' unary)?   (right-associative; -2^2 = -(2^2))
    fn power(&mut self) -> Result<f64, CalcError> {
        let base = self.atom()?;
        if self.peek() == Some(b'^') {
            self.pos += 1;
            self.enter()?;
            let exp = self.unary()?;
            self.depth -= 1;
            return Ok(base.powf(exp));
        }
        Ok(base)
    }

    // atom := number | '(' expr ')'
    fn atom(&mut self) -> Result<f64, CalcError> {
        match self.peek() {
            Some(b'(') => {
                self.pos += 1;
                let v = self.expr()?;
                if self.peek() != Some(b')') {
                    return Err(self.syntax("expected `)`"));
                }
                self.pos += 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            Some(c) => Err(self.syntax(format!("unexpected `{}`", c as char))),
            None => Err(self.syntax("unexpected end of expression")),
        }
    }

    fn number(&mut self) -> Result<f64, CalcError> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            while p.src.get(p.pos).is_some_and(u8::is_ascii_digit) {
                p.pos += 1;
            }
        };
        digits(self);
        if self.src.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            digits(self);
        }
        if matches!(self.src.get(self.pos), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.src.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.src.get(self.pos).is_some_and(u8::is_ascii_digit) {
                digits(self);
            } else {
                self.pos = save;
            }
        }
        let text = std::str::from_utf8(&self.src[start..self.pos]).unwrap_or("");
        text.parse::<f64>().map_err(|_| CalcError::Syntax {
            pos: start,
            what: format!("bad number `{text}`"),
        })
    }
}

/// Evaluates `expression`.
pub fn evaluate(expression: &str) -> Result<f64, CalcError> {
    if expression.chars().count() > MAX_EXPRESSION_LEN {
        return Err(CalcError::TooLong);
    }
    let mut p = Parser {
        src: expression.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let v = p.expr()?;
    if p.peek().is_some() {
        return Err(p.syntax("unexpected trailing input"));
    }
    if !v.is_finite() {
        return Err(CalcError::NotFinite);
    }
    Ok(v)
}

/// Integral results within ±2^53 come back as JSON integers.
fn to_json(v: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if v.fract() == 0.0 && v.abs() <= EXACT {
        #[allow(clippy::cast_possible_truncation)]
        return json!(v as i64);
    }
    json!(v)
}

pub fn run(_ctx: &ToolContext, params: Value) -> Result<Value, ToolError> {
    let p: Params = parse_params(params)?;
    match evaluate(&p.expression) {
        Ok(v) => Ok(to_json(v)),
        Err(e @ (CalcError::DivisionByZero | CalcError::NotFinite)) => {
            Err(ToolError::failed(e.to_string()))
        }
        Err(e) => Err(ToolError::InvalidParams(vec![FieldProblem::new(
            "/expression",
            e.to_string(),
        )])),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn precedence_associativity_and_parentheses() {
        assert_eq!(evaluate("1 + 2 * 3").unwrap(), 7.0);
        assert_eq!(evaluate("(1 + 2) * 3").unwrap(), 9.0);
        assert_eq!(evaluate("10 - 4 - 3").unwrap(), 3.0);
        assert_eq!(evaluate("2 ^ 3 ^ 2").unwrap(), 512.0);
        assert_eq!(evaluate("-2 ^ 2").unwrap(), -4.0);
        assert_eq!(evaluate("2 ^ -1").unwrap(), 0.5);
        assert_eq!(evaluate("--3").unwrap(), 3.0);
        assert_eq!(evaluate("7 % 4").unwrap(), 3.0);
        assert_eq!(evaluate("1.5e2 / .5").unwrap(), 300.0);
        assert_eq!(evaluate(" ( ( 1 ) ) ").unwrap(), 1.0);
    }

    #[test]
    fn division_and_modulo_by_zero_are_errors() {
        assert_eq!(evaluate("1 / 0"), Err(CalcError::DivisionByZero));
        assert_eq!(evaluate("1 % (2 - 2)"), Err(CalcError::DivisionByZero));
    }

    #[test]
    fn syntax_errors_name_the_position() {
        assert!(matches!(
            evaluate("1 +"),
            Err(CalcError::Syntax { pos: 3, .. })
        ));
        assert!(matches!(evaluate("(1"), Err(CalcError::Syntax { .. })));
        assert!(matches!(
            evaluate("1 2"),
            Err(CalcError::Syntax { pos: 2, .. })
        ));
        assert!(matches!(
            evaluate("abs(1)"),
            Err(CalcError::Syntax { pos: 0, .. })
        ));
        assert!(matches!(evaluate(""), Err(CalcError::Syntax { .. })));
    }

    #[test]
    fn depth_length_and_overflow_are_bounded() {
        let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        assert_eq!(evaluate(&deep), Err(CalcError::TooDeep));
        let minus = format!("{}1", "-".repeat(200));
        assert_eq!(evaluate(&minus), Err(CalcError::TooDeep));
        assert_eq!(evaluate(&"1+".repeat(600)), Err(CalcError::TooLong));
        assert_eq!(evaluate("10 ^ 400"), Err(CalcError::NotFinite));
    }

    #[test]
    fn tool_returns_integers_as_integers_and_reports_errors() {
        let ctx = ToolContext {
            user_id: uuid::Uuid::nil(),
            is_admin: false,
            idempotency_key: None,
            request_id: None,
        };
        assert_eq!(run(&ctx, json!({"expression": "2+3"})).unwrap(), json!(5));
        assert_eq!(
            run(&ctx, json!({"expression": "1/4"})).unwrap(),
            json!(0.25)
        );
        assert!(matches!(
            run(&ctx, json!({"expression": "1/0"})),
            Err(ToolError::Failed {
                retryable: false,
                ..
            })
        ));
        assert!(matches!(
            run(&ctx, json!({"expression": "1+"})),
            Err(ToolError::InvalidParams(p)) if p[0].field == "/expression"
        ));
    }
}
