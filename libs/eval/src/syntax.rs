//! What the generated body is, read by syn: a degenerate answer that compiles for almost any
//! prompt (reported apart and counted as a failure, or reward from the compiler would teach the
//! model to write `todo!()`), and the size and complexity of real ones.

use syn::visit::{self, Visit};
use syn::{BinOp, Block, Expr, Lit, Stmt, UnOp};

/// Parses a function body (the text between its braces) as a block.
fn parse_body(body: &str) -> Option<Block> {
    syn::parse_str::<Block>(&format!("{{\n{body}\n}}")).ok()
}

/// Why a body is trivial, `None` for a real attempt (including one that does not parse: the
/// compiler judges that).
///
/// Trivial: empty; ending in `todo!()` / `unimplemented!()`; or a single expression that is a
/// `panic!`/`unreachable!`, an empty `loop {}`, a literal (also `-1`, `()`, `"".to_string()`,
/// `Some(0)`), or a default value (`Default::default()`, `T::new()`, `None`, `vec![]`).
pub fn trivial_reason(body: &str) -> Option<&'static str> {
    let block = parse_body(body)?;
    let Some(last) = block.stmts.last() else {
        return Some("empty");
    };
    if let Some(name) = stmt_macro_name(last) {
        if name == "todo" || name == "unimplemented" {
            return Some("todo");
        }
    }
    match block.stmts.as_slice() {
        [only] => single_statement(only),
        _ => None,
    }
}

fn stmt_macro_name(stmt: &Stmt) -> Option<String> {
    let path = match stmt {
        Stmt::Macro(m) => &m.mac.path,
        Stmt::Expr(Expr::Macro(m), _) => &m.mac.path,
        _ => return None,
    };
    path.segments.last().map(|s| s.ident.to_string())
}

fn single_statement(stmt: &Stmt) -> Option<&'static str> {
    match stmt {
        Stmt::Macro(m) => macro_reason(&m.mac),
        Stmt::Expr(expr, _) => trivial_expr(expr),
        _ => None,
    }
}

fn macro_reason(mac: &syn::Macro) -> Option<&'static str> {
    let name = mac.path.segments.last()?.ident.to_string();
    match name.as_str() {
        "todo" | "unimplemented" => Some("todo"),
        "panic" | "unreachable" => Some("panic"),
        "vec" if mac.tokens.is_empty() => Some("default"),
        _ => None,
    }
}

fn path_ends_with(expr: &Expr, names: &[&str]) -> bool {
    match expr {
        Expr::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| names.contains(&s.ident.to_string().as_str())),
        _ => false,
    }
}

fn trivial_expr(expr: &Expr) -> Option<&'static str> {
    match expr {
        Expr::Return(r) => r.expr.as_deref().map_or(Some("empty"), trivial_expr),
        Expr::Paren(p) => trivial_expr(&p.expr),
        Expr::Block(b) => match b.block.stmts.as_slice() {
            [] => Some("empty"),
            [only] => single_statement(only),
            _ => None,
        },
        Expr::Macro(m) => macro_reason(&m.mac),
        Expr::Loop(l) if l.body.stmts.is_empty() => Some("loop"),
        Expr::Lit(_) => Some("literal"),
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => {
            matches!(*u.expr, Expr::Lit(_)).then_some("literal")
        }
        Expr::Tuple(t) if t.elems.is_empty() => Some("literal"),
        Expr::Path(_) if path_ends_with(expr, &["None"]) => Some("default"),
        Expr::Call(call)
            if call.args.is_empty() && path_ends_with(&call.func, &["default", "new"]) =>
        {
            Some("default")
        }
        // `Some(0)`, `Ok(())`, `String::from("")`: a constant in a wrapper.
        Expr::Call(call)
            if call.args.len() == 1
                && path_ends_with(&call.func, &["Some", "Ok", "Err", "from"]) =>
        {
            trivial_expr(&call.args[0])
        }
        Expr::MethodCall(m)
            if m.args.is_empty()
                && ["to_string", "to_owned", "into"].contains(&m.method.to_string().as_str()) =>
        {
            matches!(&*m.receiver, Expr::Lit(l) if matches!(l.lit, Lit::Str(_)))
                .then_some("literal")
        }
        _ => None,
    }
}

/// Size and complexity of a body that parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CodeMetrics {
    /// Non-blank lines of the body.
    pub lines: usize,
    /// The function itself plus the functions it defines inside.
    pub functions: usize,
    /// McCabe: 1 + branches (`if`, `while`, `for`, each match arm after the first, `&&`, `||`,
    /// `?`).
    pub cyclomatic: usize,
}

#[derive(Default)]
struct Counter {
    functions: usize,
    branches: usize,
}

impl<'ast> Visit<'ast> for Counter {
    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.functions += 1;
        visit::visit_item_fn(self, item);
    }
    fn visit_expr(&mut self, expr: &'ast Expr) {
        match expr {
            Expr::If(_) | Expr::While(_) | Expr::ForLoop(_) | Expr::Try(_) => self.branches += 1,
            Expr::Match(m) => self.branches += m.arms.len().saturating_sub(1),
            Expr::Binary(b) if matches!(b.op, BinOp::And(_) | BinOp::Or(_)) => self.branches += 1,
            _ => {}
        }
        visit::visit_expr(self, expr);
    }
}

/// `None` when the body does not parse as Rust.
pub fn code_metrics(body: &str) -> Option<CodeMetrics> {
    let block = parse_body(body)?;
    let mut counter = Counter::default();
    counter.visit_block(&block);
    Some(CodeMetrics {
        lines: body.lines().filter(|l| !l.trim().is_empty()).count(),
        functions: 1 + counter.functions,
        cyclomatic: 1 + counter.branches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_bodies_are_trivial() {
        for (body, reason) in [
            ("", "empty"),
            ("    // nothing yet\n", "empty"),
            ("    todo!()\n", "todo"),
            ("    let _ = x;\n    unimplemented!(\"later\");\n", "todo"),
            ("    panic!(\"no\")", "panic"),
            ("    unreachable!()", "panic"),
            ("    loop {}", "loop"),
            ("    0", "literal"),
            ("    return -1;", "literal"),
            ("    \"\".to_string()", "literal"),
            ("    Ok(())", "literal"),
            ("    Some(false)", "literal"),
            ("    Default::default()", "default"),
            ("    Vec::new()", "default"),
            ("    String::from(\"\")", "literal"),
            ("    None", "default"),
            ("    vec![]", "default"),
            ("    { 0 }", "literal"),
        ] {
            assert_eq!(trivial_reason(body), Some(reason), "{body:?}");
        }
    }

    #[test]
    fn real_attempts_are_not_trivial() {
        for body in [
            "    x + 1",
            "    a.max(b)",
            "    Some(x)",
            "    loop { if x > 3 { break x; } }",
            "    vec![x; n]",
            "    let y = 2;\n    y * x",
            "    s.chars().rev().collect()",
            "    this does not parse {",
        ] {
            assert_eq!(trivial_reason(body), None, "{body:?}");
        }
    }

    #[test]
    fn metrics_count_lines_functions_and_branches() {
        let body = "    fn helper(c: char) -> bool { c == 'a' || c == 'b' }\n\n    let mut n = 0;\n    for c in s.chars() {\n        if helper(c) && n < 9 { n += 1; }\n    }\n    match n { 0 => None, 1 => Some(1), _ => Some(n) }\n";
        let m = code_metrics(body).unwrap();
        assert_eq!(m.lines, 6);
        assert_eq!(m.functions, 2);
        // for, if, ||, &&, two extra match arms.
        assert_eq!(m.cyclomatic, 1 + 1 + 1 + 1 + 1 + 2);
        assert_eq!(code_metrics("    let x = ;"), None);
    }
}
