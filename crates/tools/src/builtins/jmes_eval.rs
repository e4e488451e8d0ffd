//! A JMESPath interpreter over the `jmespath` crate's AST that charges a work budget for
//! everything it materializes, so a query cannot make the process allocate without bound.
//!
//! The crate's own interpreter is semantically the same but unbounded: `[@,@]` only shares
//! (cheap), yet a flatten (`[]`), a projection or a function then materializes the shared
//! tree (`[@,@,@,@,@,@,@,@,@,@][]|…` nine times is 10⁹ array slots), and `to_string`/`join`
//! build strings as large as their (shared) arguments expand to. Here each new array slot,
//! object entry, node and string byte is charged before (or as) it is built; past the budget
//! evaluation stops with [`EvalError::Budget`]. Built-in functions run through the crate's
//! runtime after their output is bounded; the ones taking an expression (`map`, `sort_by`,
//! `max_by`, `min_by`) are implemented here so their expressions are charged as well.

use crate::limits::OutputLimits;
use jmespath::ast::Ast;
use jmespath::{Context, DEFAULT_RUNTIME, JmespathError, Rcvar, Variable};
use std::collections::BTreeMap;

/// Charged per array slot or object entry created.
const SLOT: usize = 16;
/// Charged per new value node (`Rc<Variable>`).
const NODE: usize = 64;
/// Charged per AST node copied into an expression reference.
const AST_NODE: usize = 128;
/// Upper bound of a value's size in memory per byte of its JSON form, for functions that
/// rebuild their argument (`sort`, `keys`, `merge`, …).
const REBUILD_FACTOR: usize = 8;

#[derive(Debug)]
pub enum EvalError {
    /// The query would materialize more than the work budget.
    Budget(usize),
    Jmespath(JmespathError),
    Runtime(String),
}

impl From<JmespathError> for EvalError {
    fn from(e: JmespathError) -> Self {
        EvalError::Jmespath(e)
    }
}

pub struct Evaluator<'a> {
    query: &'a str,
    max_work: usize,
    used: usize,
}

fn null() -> Rcvar {
    Rcvar::new(Variable::Null)
}

fn ast_nodes(ast: &Ast) -> usize {
    1 + match ast {
        Ast::Comparison { lhs, rhs, .. }
        | Ast::Projection { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. }
        | Ast::Subexpr { lhs, rhs, .. } => ast_nodes(lhs) + ast_nodes(rhs),
        Ast::Condition {
            predicate, then, ..
        } => ast_nodes(predicate) + ast_nodes(then),
        Ast::Expref { ast: node, .. }
        | Ast::Flatten { node, .. }
        | Ast::Not { node, .. }
        | Ast::ObjectValues { node, .. } => ast_nodes(node),
        Ast::Function { args, .. } | Ast::MultiList { elements: args, .. } => {
            args.iter().map(ast_nodes).sum()
        }
        Ast::MultiHash { elements, .. } => elements.iter().map(|kv| ast_nodes(&kv.value)).sum(),
        Ast::Identity { .. }
        | Ast::Field { .. }
        | Ast::Index { .. }
        | Ast::Literal { .. }
        | Ast::Slice { .. } => 0,
    }
}

impl<'a> Evaluator<'a> {
    pub fn new(query: &'a str, max_work: usize) -> Self {
        Self {
            query,
            max_work,
            used: 0,
        }
    }

    fn charge(&mut self, n: usize) -> Result<(), EvalError> {
        self.used = self.used.saturating_add(n);
        if self.used > self.max_work {
            return Err(EvalError::Budget(self.max_work));
        }
        Ok(())
    }

    /// The JSON size of `v` as expanded, or `Budget` when it passes what is left.
    fn charge_expanded(&mut self, v: &Rcvar, factor: usize) -> Result<(), EvalError> {
        let room = self.max_work.saturating_sub(self.used) / factor.max(1);
        let limits = OutputLimits {
            max_bytes: room,
            max_depth: usize::MAX,
        };
        let size = super::json_query::check_result(v, limits)
            .map_err(|_| EvalError::Budget(self.max_work))?;
        self.charge(size.saturating_mul(factor))
    }

    fn runtime_error(&self, offset: usize, message: String) -> EvalError {
        EvalError::Runtime(format!("{message} (at character {offset})"))
    }

    pub fn eval(&mut self, data: &Rcvar, node: &Ast) -> Result<Rcvar, EvalError> {
        match node {
            Ast::Field { name, .. } => Ok(data.get_field(name)),
            Ast::Subexpr { lhs, rhs, .. } => {
                let left = self.eval(data, lhs)?;
                self.eval(&left, rhs)
            }
            Ast::Identity { .. } => Ok(data.clone()),
            Ast::Literal { value, .. } => Ok(value.clone()),
            Ast::Index { idx, .. } => Ok(if *idx >= 0 {
                data.get_index(*idx as usize)
            } else {
                data.get_negative_index(idx.unsigned_abs() as usize)
            }),
            Ast::Or { lhs, rhs, .. } => {
                let left = self.eval(data, lhs)?;
                if left.is_truthy() {
                    Ok(left)
                } else {
                    self.eval(data, rhs)
                }
            }
            Ast::And { lhs, rhs, .. } => {
                let left = self.eval(data, lhs)?;
                if !left.is_truthy() {
                    Ok(left)
                } else {
                    self.eval(data, rhs)
                }
            }
            Ast::Not { node, .. } => {
                let v = self.eval(data, node)?;
                self.charge(NODE)?;
                Ok(Rcvar::new(Variable::Bool(!v.is_truthy())))
            }
            Ast::Condition {
                predicate, then, ..
            } => {
                let cond = self.eval(data, predicate)?;
                if cond.is_truthy() {
                    self.eval(data, then)
                } else {
                    Ok(null())
                }
            }
            Ast::Comparison {
                comparator,
                lhs,
                rhs,
                ..
            } => {
                let left = self.eval(data, lhs)?;
                let right = self.eval(data, rhs)?;
                self.charge(NODE)?;
                Ok(left
                    .compare(comparator, &right)
                    .map_or_else(null, |b| Rcvar::new(Variable::Bool(b))))
            }
            Ast::ObjectValues { node, .. } => {
                let subject = self.eval(data, node)?;
                match &*subject {
                    Variable::Object(m) => {
                        self.charge(NODE + SLOT.saturating_mul(m.len()))?;
                        Ok(Rcvar::new(Variable::Array(m.values().cloned().collect())))
                    }
                    _ => Ok(null()),
                }
            }
            Ast::Projection { lhs, rhs, .. } => {
                let left = self.eval(data, lhs)?;
                let Some(items) = left.as_array() else {
                    return Ok(null());
                };
                self.charge(NODE)?;
                let mut collected = Vec::new();
                for item in items {
                    let v = self.eval(item, rhs)?;
                    if !v.is_null() {
                        self.charge(SLOT)?;
                        collected.push(v);
                    }
                }
                Ok(Rcvar::new(Variable::Array(collected)))
            }
            Ast::Flatten { node, .. } => {
                let v = self.eval(data, node)?;
                let Some(items) = v.as_array() else {
                    return Ok(null());
                };
                // The slots are charged before the vector is built.
                let slots = items
                    .iter()
                    .map(|e| e.as_array().map_or(1, Vec::len))
                    .fold(0usize, usize::saturating_add);
                self.charge(NODE.saturating_add(SLOT.saturating_mul(slots)))?;
                let mut collected = Vec::with_capacity(slots);
                for e in items {
                    match e.as_array() {
                        Some(inner) => collected.extend(inner.iter().cloned()),
                        None => collected.push(e.clone()),
                    }
                }
                Ok(Rcvar::new(Variable::Array(collected)))
            }
            Ast::MultiList { elements, .. } => {
                if data.is_null() {
                    return Ok(null());
                }
                self.charge(NODE.saturating_add(SLOT.saturating_mul(elements.len())))?;
                let mut collected = Vec::with_capacity(elements.len());
                for e in elements {
                    collected.push(self.eval(data, e)?);
                }
                Ok(Rcvar::new(Variable::Array(collected)))
            }
            Ast::MultiHash { elements, .. } => {
                if data.is_null() {
                    return Ok(null());
                }
                self.charge(NODE)?;
                let mut collected = BTreeMap::new();
                for kv in elements {
                    self.charge(NODE + kv.key.len())?;
                    let v = self.eval(data, &kv.value)?;
                    collected.insert(kv.key.clone(), v);
                }
                Ok(Rcvar::new(Variable::Object(collected)))
            }
            Ast::Expref { ast, .. } => {
                self.charge(AST_NODE.saturating_mul(ast_nodes(ast)))?;
                Ok(Rcvar::new(Variable::Expref((**ast).clone())))
            }
            Ast::Slice {
                start,
                stop,
                step,
                offset,
            } => {
                if *step == 0 {
                    return Err(self.runtime_error(*offset, "slice step cannot be 0".into()));
                }
                let len = data.as_array().map_or(0, Vec::len);
                self.charge(NODE.saturating_add(SLOT.saturating_mul(len)))?;
                Ok(data
                    .slice(*start, *stop, *step)
                    .map_or_else(null, |a| Rcvar::new(Variable::Array(a))))
            }
            Ast::Function { name, args, offset } => self.function(data, name, args, *offset),
        }
    }

    fn function(
        &mut self,
        data: &Rcvar,
        name: &str,
        args: &[Ast],
        offset: usize,
    ) -> Result<Rcvar, EvalError> {
        let mut values = Vec::with_capacity(args.len());
        for a in args {
            values.push(self.eval(data, a)?);
        }
        match name {
            "map" => return self.map(&values, offset),
            "sort_by" => return self.sort_by(&values, offset),
            "max_by" => return self.min_max_by(&values, offset, true),
            "min_by" => return self.min_max_by(&values, offset, false),
            // Build new values as large as their arguments, expanded.
            "keys" | "values" | "reverse" | "sort" | "to_array" | "merge" => {
                for v in &values {
                    self.charge_expanded(v, REBUILD_FACTOR)?;
                }
            }
            // The JSON text of the argument.
            "to_string" => {
                for v in &values {
                    self.charge_expanded(v, 1)?;
                }
            }
            // The glue is repeated between every element.
            "join" => {
                if let (Some(glue), Some(items)) = (
                    values.first().and_then(|g| g.as_string()),
                    values.get(1).and_then(|l| l.as_array()),
                ) {
                    let mut size = glue.len().saturating_mul(items.len().saturating_sub(1));
                    for s in items.iter().filter_map(|s| s.as_string()) {
                        size = size.saturating_add(s.len());
                    }
                    self.charge(size)?;
                }
            }
            _ => {}
        }
        self.charge(NODE)?;
        let runtime = &*DEFAULT_RUNTIME;
        let mut ctx = Context::new(self.query, runtime);
        ctx.offset = offset;
        match runtime.get_function(name) {
            Some(f) => Ok(f.evaluate(&values, &mut ctx)?),
            None => Err(self.runtime_error(offset, format!("unknown function `{name}`"))),
        }
    }

    fn expref_and_array<'v>(
        &self,
        values: &'v [Rcvar],
        name: &str,
        expref_at: usize,
        offset: usize,
    ) -> Result<(&'v Ast, &'v Vec<Rcvar>), EvalError> {
        if values.len() != 2 {
            return Err(self.runtime_error(
                offset,
                format!("{name}() takes 2 arguments, got {}", values.len()),
            ));
        }
        let ast = values[expref_at].as_expref().ok_or_else(|| {
            self.runtime_error(
                offset,
                format!("{name}(): argument {} must be an expression", expref_at + 1),
            )
        })?;
        let array_at = 1 - expref_at;
        let items = values[array_at].as_array().ok_or_else(|| {
            self.runtime_error(
                offset,
                format!("{name}(): argument {} must be an array", array_at + 1),
            )
        })?;
        Ok((ast, items))
    }

    fn map(&mut self, values: &[Rcvar], offset: usize) -> Result<Rcvar, EvalError> {
        let (ast, items) = self.expref_and_array(values, "map", 0, offset)?;
        self.charge(NODE.saturating_add(SLOT.saturating_mul(items.len())))?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.eval(item, ast)?);
        }
        Ok(Rcvar::new(Variable::Array(out)))
    }

    /// Evaluates the key expression on every element; keys must all be strings or all numbers.
    fn keys(
        &mut self,
        name: &str,
        ast: &Ast,
        items: &[Rcvar],
        offset: usize,
    ) -> Result<Vec<Rcvar>, EvalError> {
        self.charge(SLOT.saturating_mul(items.len()).saturating_mul(2))?;
        let mut keys = Vec::with_capacity(items.len());
        let mut kind: Option<bool> = None; // Some(true) = strings, Some(false) = numbers
        for item in items {
            let k = self.eval(item, ast)?;
            let this = if k.is_string() {
                true
            } else if k.is_number() {
                false
            } else {
                return Err(self.runtime_error(
                    offset,
                    format!("{name}(): the expression must give a string or a number"),
                ));
            };
            if kind.is_some_and(|kind| kind != this) {
                return Err(self.runtime_error(
                    offset,
                    format!("{name}(): the expression gives both strings and numbers"),
                ));
            }
            kind = Some(this);
            keys.push(k);
        }
        Ok(keys)
    }

    fn sort_by(&mut self, values: &[Rcvar], offset: usize) -> Result<Rcvar, EvalError> {
        let (ast, items) = self.expref_and_array(values, "sort_by", 1, offset)?;
        let keys = self.keys("sort_by", ast, items, offset)?;
        let mut pairs: Vec<(Rcvar, Rcvar)> = items.iter().cloned().zip(keys).collect();
        pairs.sort_by(|a, b| a.1.cmp(&b.1));
        self.charge(NODE)?;
        Ok(Rcvar::new(Variable::Array(
            pairs.into_iter().map(|(v, _)| v).collect(),
        )))
    }

    fn min_max_by(
        &mut self,
        values: &[Rcvar],
        offset: usize,
        max: bool,
    ) -> Result<Rcvar, EvalError> {
        let name = if max { "max_by" } else { "min_by" };
        let (ast, items) = self.expref_and_array(values, name, 1, offset)?;
        let keys = self.keys(name, ast, items, offset)?;
        let mut best: Option<(usize, &Rcvar)> = None;
        for (i, k) in keys.iter().enumerate() {
            let better = match best {
                None => true,
                Some((_, b)) if max => **k > **b,
                Some((_, b)) => **k < **b,
            };
            if better {
                best = Some((i, k));
            }
        }
        Ok(best.map_or_else(null, |(i, _)| items[i].clone()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use jmespath::ToJmespath;
    use serde_json::{Value, json};

    fn ours(data: &Value, query: &str, max_work: usize) -> Result<Value, EvalError> {
        let expr = jmespath::compile(query).unwrap();
        let root = data.to_jmespath().unwrap();
        let r = Evaluator::new(query, max_work).eval(&root, expr.as_ast())?;
        Ok(serde_json::to_value(&*r).unwrap())
    }

    fn theirs(data: &Value, query: &str) -> Result<Value, String> {
        let expr = jmespath::compile(query).unwrap();
        expr.search(data)
            .map(|r| serde_json::to_value(&*r).unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn results_match_the_crates_interpreter() {
        let data = json!({
            "people": [
                {"name": "b", "age": 30, "tags": ["x", "y"]},
                {"name": "a", "age": 20, "tags": ["z"]},
                {"name": "c", "age": 40, "tags": []}
            ],
            "obj": {"k1": 1, "k2": 2},
            "s": "hello",
            "n": null
        });
        for q in [
            "people[*].name",
            "people[?age > `25`].name",
            "people[].tags[]",
            "people[*].tags[*]",
            "obj.*",
            "obj.k1 || n",
            "n && s",
            "!n",
            "people[0:2].name",
            "people[::-1].age",
            "people[-1].name",
            "[s, obj.k2]",
            "{first: people[0].name, count: length(people)}",
            "sort_by(people, &age)[*].name",
            "sort_by(people, &name)[*].name",
            "max_by(people, &age).name",
            "min_by(people, &age).name",
            "max_by(people, &name).name",
            "min_by(people, &name).name",
            "map(&name, people)",
            "map(&length(tags), people)",
            "join(', ', people[*].name)",
            "to_string(obj)",
            "keys(obj)",
            "values(obj)",
            "sort(people[*].age)",
            "reverse(s)",
            "merge(obj, `{\"k3\": 3}`)",
            "to_array(s)",
            "not_null(n, s)",
            "type(@)",
            "length(@)",
            "contains(people[*].name, 'a')",
            "people[?contains(tags, 'z')] | [0].name",
            "obj | values(@) | sum(@)",
            "people[*].age | avg(@)",
            "`[1, [2, [3]]]`[]",
            "people[*].[name, age][]",
            "&name",
            "people == people",
            "people[0].age < people[1].age",
        ] {
            assert_eq!(
                ours(&data, q, 1 << 20).map_err(|e| format!("{e:?}")),
                theirs(&data, q),
                "{q}"
            );
        }
        for q in [
            "sort_by(people, &tags)",
            "max_by(people, &tags)",
            "map(&name)",
            "nope(@)",
            "abs(s)",
        ] {
            assert!(ours(&data, q, 1 << 20).is_err(), "{q} must fail");
        }
    }

    fn is_budget(r: Result<Value, EvalError>) -> bool {
        matches!(r, Err(EvalError::Budget(_)))
    }

    #[test]
    fn flatten_of_a_shared_tree_is_charged_before_it_is_built() {
        // Nine stages would be 10^9 array slots with the crate's interpreter.
        let stage = "[@,@,@,@,@,@,@,@,@,@][]";
        let q = [stage; 9].join("|");
        assert!(is_budget(ours(&json!([1]), &q, 4 << 20)));
        // Small fan-out is fine.
        let q = [stage; 2].join("|");
        assert_eq!(
            ours(&json!([1]), &q, 4 << 20)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            100
        );
    }

    #[test]
    fn functions_that_expand_their_arguments_are_bounded() {
        let doubling = ["[@,@]"; 25].join("|");
        for f in ["to_string(@)", "sort(@[])", "reverse(@)", "to_array(@)"] {
            let q = format!("{doubling} | {f}");
            assert!(is_budget(ours(&json!("x"), &q, 4 << 20)), "{f}");
        }
        let data = json!({"g": "g".repeat(10_000), "l": vec!["a"; 10_000]});
        assert!(is_budget(ours(&data, "join(g, l)", 4 << 20)));
        assert!(ours(&data, "length(join('', l))", 4 << 20).is_ok());
        let amplify = ["[@,@,@,@,@,@,@,@,@,@][]"; 6].join("|");
        let q = format!("map(&({amplify}), [@,@,@,@,@,@,@,@,@,@])");
        assert!(is_budget(ours(&json!([1]), &q, 4 << 20)));
        let q = format!("sort_by([@,@,@,@,@,@,@,@,@,@], &length({amplify}))");
        assert!(is_budget(ours(&json!([1]), &q, 4 << 20)));
    }

    #[test]
    fn projections_charge_per_element() {
        let data = json!(vec![1; 1000]);
        assert!(is_budget(ours(&data, "[*].[@, @]", 1000)));
        assert!(ours(&data, "[*].[@, @]", 1 << 20).is_ok());
    }
}
