//! The filter language: comparisons of a field with literals, joined by
//! `and` / `or` / `not` and parentheses.
//!
//! ```text
//!   expr       := or
//!   or         := and ("or" and)*
//!   and        := unary ("and" unary)*
//!   unary      := "not" unary | "(" expr ")" | comparison
//!   comparison := field op literal | field ["not"] "in" "[" literal ("," literal)* "]"
//!   op         := == | != | < | <= | > | >=
//!   literal    := number | 'text' | "text"
//! ```
//!
//! Written by hand: the grammar is a dozen lines, and its errors must point
//! at a column of the job file with a hint, which a generated parser's
//! messages would not. Fields are resolved while parsing, by the caller
//! (a reading's fields for filters; a window's measures for alert rules), so
//! an unknown field or a text compared with `<` is refused before the job runs.
//!
//! Evaluation is three-valued, as in SQL: a comparison with a field the
//! reading lacks is unknown, `not unknown` is unknown, and a filter keeps a
//! reading only when it is true.

use std::fmt;

/// What a field holds: text (names, dimension values) or numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Number,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Op::Eq => ord == Equal,
            Op::Ne => ord != Equal,
            Op::Lt => ord == Less,
            Op::Le => ord != Greater,
            Op::Gt => ord == Greater,
            Op::Ge => ord != Less,
        }
    }
}

/// A literal of the language.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Number(f64),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Text(t) if t.contains('\'') => write!(f, "\"{t}\""),
            Literal::Text(t) => write!(f, "'{t}'"),
            Literal::Number(n) => write!(f, "{n}"),
        }
    }
}

/// A parsed expression over fields of type `F`.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr<F> {
    Compare {
        field: F,
        name: String,
        op: Op,
        value: Literal,
    },
    In {
        field: F,
        name: String,
        negated: bool,
        values: Vec<Literal>,
    },
    Not(Box<Expr<F>>),
    And(Box<Expr<F>>, Box<Expr<F>>),
    Or(Box<Expr<F>>, Box<Expr<F>>),
}

/// A field's value in what an expression is evaluated on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Text(&'a str),
    Number(f64),
}

impl<F: Copy> Expr<F> {
    /// Whether the expression holds; `None` when it is unknown (a field is missing).
    pub fn eval<'a>(&self, field: &impl Fn(F) -> Option<Value<'a>>) -> Option<bool> {
        match self {
            Expr::Compare {
                field: f,
                op,
                value,
                ..
            } => Some(op.holds(compare(field(*f)?, value)?)),
            Expr::In {
                field: f,
                negated,
                values,
                ..
            } => {
                let v = field(*f)?;
                let found = values
                    .iter()
                    .any(|l| compare(v, l) == Some(std::cmp::Ordering::Equal));
                Some(found != *negated)
            }
            Expr::Not(e) => e.eval(field).map(|b| !b),
            // Kleene logic: false and unknown is false; true or unknown is true.
            Expr::And(a, b) => match (a.eval(field), b.eval(field)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Expr::Or(a, b) => match (a.eval(field), b.eval(field)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
        }
    }

    /// Whether the expression holds for sure (unknown counts as not).
    pub fn holds<'a>(&self, field: &impl Fn(F) -> Option<Value<'a>>) -> bool {
        self.eval(field) == Some(true)
    }

    /// The first comparison of a field with a literal, in reading order:
    /// what an alert reports as its value and threshold.
    pub fn first_comparison(&self) -> Option<(F, &Literal)> {
        match self {
            Expr::Compare { field, value, .. } => Some((*field, value)),
            Expr::In { .. } => None,
            Expr::Not(e) => e.first_comparison(),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.first_comparison().or_else(|| b.first_comparison())
            }
        }
    }

    /// The fields the expression reads, in order of appearance.
    pub fn fields(&self) -> Vec<F> {
        let mut out = Vec::new();
        self.visit(&mut |e| {
            if let Expr::Compare { field, .. } | Expr::In { field, .. } = e {
                out.push(*field);
            }
        });
        out
    }

    fn visit(&self, f: &mut impl FnMut(&Expr<F>)) {
        f(self);
        match self {
            Expr::Not(e) => e.visit(f),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Expr::Compare { .. } | Expr::In { .. } => {}
        }
    }
}

fn compare(v: Value<'_>, l: &Literal) -> Option<std::cmp::Ordering> {
    match (v, l) {
        (Value::Text(a), Literal::Text(b)) => Some(a.cmp(b.as_str())),
        (Value::Number(a), Literal::Number(b)) => a.partial_cmp(b),
        _ => None,
    }
}

impl<F> fmt::Display for Expr<F> {
    /// Canonical form: fully parenthesised where precedence would otherwise decide.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Compare {
                name, op, value, ..
            } => write!(f, "{name} {} {value}", op.symbol()),
            Expr::In {
                name,
                negated,
                values,
                ..
            } => {
                let values: Vec<String> = values.iter().map(Literal::to_string).collect();
                let not = if *negated { "not " } else { "" };
                write!(f, "{name} {not}in [{}]", values.join(", "))
            }
            Expr::Not(e) => write!(f, "not ({e})"),
            Expr::And(a, b) => write!(f, "({a}) and ({b})"),
            Expr::Or(a, b) => write!(f, "({a}) or ({b})"),
        }
    }
}

/// Why an expression was refused: at which byte of it, what, and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub at: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl ExprError {
    fn new(at: usize, message: impl Into<String>) -> Self {
        Self {
            at,
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// How the caller's fields are named: `Ok((field, type))`, or `Err(hint)`
/// listing what the name could have been.
pub trait Fields {
    type Field: Copy;
    fn resolve(&self, name: &str) -> Result<(Self::Field, FieldType), String>;
}

/// Parses `text` with names resolved by `fields`.
pub fn parse<R: Fields>(text: &str, fields: &R) -> Result<Expr<R::Field>, ExprError> {
    let tokens = lex(text)?;
    let mut p = Parser {
        tokens,
        at: 0,
        end: text.len(),
        fields,
    };
    let e = p.or()?;
    match p.peek() {
        None => Ok(e),
        Some((at, t)) => Err(ExprError::new(
            at,
            format!("unexpected {t} after a complete condition"),
        )
        .hint("join conditions with `and` / `or`")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Number(f64),
    Op(Op),
    Open,
    Close,
    OpenList,
    CloseList,
    Comma,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(w) => write!(f, "`{w}`"),
            Token::Text(t) => write!(f, "text '{t}'"),
            Token::Number(n) => write!(f, "number {n}"),
            Token::Op(op) => write!(f, "`{}`", op.symbol()),
            Token::Open => f.write_str("`(`"),
            Token::Close => f.write_str("`)`"),
            Token::OpenList => f.write_str("`[`"),
            Token::CloseList => f.write_str("`]`"),
            Token::Comma => f.write_str("`,`"),
        }
    }
}

fn lex(text: &str) -> Result<Vec<(usize, Token)>, ExprError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let c = bytes[i];
        let token = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => Token::Open,
            b')' => Token::Close,
            b'[' => Token::OpenList,
            b']' => Token::CloseList,
            b',' => Token::Comma,
            b'\'' | b'"' => {
                let close = text[i + 1..].find(c as char).ok_or_else(|| {
                    ExprError::new(i, "a text without its closing quote")
                        .hint(format!("end it with {}", c as char))
                })?;
                out.push((start, Token::Text(text[i + 1..i + 1 + close].to_owned())));
                i += close + 2;
                continue;
            }
            b'=' | b'!' | b'<' | b'>' => {
                let two = bytes.get(i + 1) == Some(&b'=');
                let op = match (c, two) {
                    (b'=', true) => Op::Eq,
                    (b'!', true) => Op::Ne,
                    (b'<', true) => Op::Le,
                    (b'<', false) => Op::Lt,
                    (b'>', true) => Op::Ge,
                    (b'>', false) => Op::Gt,
                    _ => {
                        return Err(ExprError::new(
                            i,
                            format!("`{}` is not an operator", c as char),
                        )
                        .hint("compare with ==, !=, <, <=, >, >="));
                    }
                };
                i += if two { 2 } else { 1 };
                out.push((start, Token::Op(op)));
                continue;
            }
            b'-' | b'+' | b'.' | b'0'..=b'9' => {
                let end = text[i..]
                    .find(|ch: char| {
                        !(ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '+' | '_'))
                    })
                    .map_or(text.len(), |n| i + n);
                let word = &text[i..end];
                let n: f64 = word
                    .parse()
                    .ok()
                    .filter(|n: &f64| n.is_finite())
                    .ok_or_else(|| ExprError::new(i, format!("`{word}` is not a number")))?;
                out.push((start, Token::Number(n)));
                i = end;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = text[i..]
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '.'))
                    .map_or(text.len(), |n| i + n);
                out.push((start, Token::Word(text[i..end].to_owned())));
                i = end;
                continue;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or(' ');
                return Err(ExprError::new(i, format!("unexpected `{ch}`")));
            }
        };
        out.push((start, token));
        i += 1;
    }
    Ok(out)
}

struct Parser<'r, R> {
    tokens: Vec<(usize, Token)>,
    at: usize,
    end: usize,
    fields: &'r R,
}

impl<R: Fields> Parser<'_, R> {
    fn peek(&self) -> Option<(usize, &Token)> {
        self.tokens.get(self.at).map(|(at, t)| (*at, t))
    }

    fn next(&mut self, wanted: &str) -> Result<(usize, Token), ExprError> {
        let t = self.tokens.get(self.at).cloned().ok_or_else(|| {
            ExprError::new(
                self.end,
                format!("the condition ends where {wanted} was expected"),
            )
        })?;
        self.at += 1;
        Ok(t)
    }

    fn keyword(&mut self, word: &str) -> bool {
        let is = matches!(self.peek(), Some((_, Token::Word(w))) if w.eq_ignore_ascii_case(word));
        if is {
            self.at += 1;
        }
        is
    }

    fn or(&mut self) -> Result<Expr<R::Field>, ExprError> {
        let mut e = self.and()?;
        while self.keyword("or") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr<R::Field>, ExprError> {
        let mut e = self.unary()?;
        while self.keyword("and") {
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr<R::Field>, ExprError> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if let Some((_, Token::Open)) = self.peek() {
            self.at += 1;
            let e = self.or()?;
            return match self.next("`)`")? {
                (_, Token::Close) => Ok(e),
                (at, t) => Err(ExprError::new(at, format!("expected `)`, found {t}"))),
            };
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr<R::Field>, ExprError> {
        let (at, name) = match self.next("a field")? {
            (at, Token::Word(w)) => (at, w),
            (at, t @ (Token::Text(_) | Token::Number(_))) => {
                return Err(ExprError::new(at, format!("expected a field, found {t}"))
                    .hint("put the field first: `value > 3`, not `3 < value`"));
            }
            (at, t) => return Err(ExprError::new(at, format!("expected a field, found {t}"))),
        };
        let (field, ty) = self
            .fields
            .resolve(&name)
            .map_err(|hint| ExprError::new(at, format!("unknown field `{name}`")).hint(hint))?;
        let negated = self.keyword("not");
        if self.keyword("in") {
            return self.list(at, name, field, ty, negated);
        }
        if negated {
            let (at, _) = self.peek().unwrap_or((self.end, &Token::Comma));
            return Err(ExprError::new(at, "expected `in` after `not`"));
        }
        let op = match self.next("a comparison")? {
            (_, Token::Op(op)) => op,
            (at, t) => {
                return Err(ExprError::new(
                    at,
                    format!("expected a comparison after `{name}`, found {t}"),
                )
                .hint("==, !=, <, <=, >, >= or in [...]"));
            }
        };
        if ty == FieldType::Text && !matches!(op, Op::Eq | Op::Ne) {
            return Err(ExprError::new(
                at,
                format!(
                    "`{name}` is text: it compares with ==, != or in, not {}",
                    op.symbol()
                ),
            )
            .hint("texts have no order that means anything here (is '10' < '9'?)"));
        }
        let value = self.literal(ty, &name)?;
        Ok(Expr::Compare {
            field,
            name,
            op,
            value,
        })
    }

    fn list(
        &mut self,
        _at: usize,
        name: String,
        field: R::Field,
        ty: FieldType,
        negated: bool,
    ) -> Result<Expr<R::Field>, ExprError> {
        match self.next("`[`")? {
            (_, Token::OpenList) => {}
            (at, t) => {
                return Err(ExprError::new(
                    at,
                    format!("expected `[` after `in`, found {t}"),
                ));
            }
        }
        let mut values = vec![self.literal(ty, &name)?];
        loop {
            match self.next("`]`")? {
                (_, Token::Comma) => values.push(self.literal(ty, &name)?),
                (_, Token::CloseList) => break,
                (at, t) => {
                    return Err(ExprError::new(
                        at,
                        format!("expected `,` or `]`, found {t}"),
                    ));
                }
            }
        }
        Ok(Expr::In {
            field,
            name,
            negated,
            values,
        })
    }

    fn literal(&mut self, ty: FieldType, name: &str) -> Result<Literal, ExprError> {
        match (self.next("a value")?, ty) {
            ((_, Token::Text(t)), FieldType::Text) => Ok(Literal::Text(t)),
            ((_, Token::Number(n)), FieldType::Number) => Ok(Literal::Number(n)),
            ((at, Token::Number(n)), FieldType::Text) => Err(ExprError::new(
                at,
                format!("`{name}` is text, compared with number {n}"),
            )
            .hint(format!("quote it: '{n}'"))),
            ((at, Token::Text(t)), FieldType::Number) => Err(ExprError::new(
                at,
                format!("`{name}` is a number, compared with text '{t}'"),
            )),
            ((at, Token::Word(w)), FieldType::Text) => Err(ExprError::new(
                at,
                format!("expected a quoted text, found `{w}`"),
            )
            .hint(format!("quote it: '{w}'"))),
            ((at, t), _) => Err(ExprError::new(at, format!("expected a value, found {t}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Fields `metric`, `site` (text) and `value` (number), as ids 0, 1, 2.
    struct Sample;

    impl Fields for Sample {
        type Field = u8;
        fn resolve(&self, name: &str) -> Result<(u8, FieldType), String> {
            match name {
                "metric" => Ok((0, FieldType::Text)),
                "site" => Ok((1, FieldType::Text)),
                "value" => Ok((2, FieldType::Number)),
                _ => Err("fields: metric, site, value".into()),
            }
        }
    }

    fn eval(expr: &str, metric: &str, site: Option<&str>, value: f64) -> Option<bool> {
        let e = parse(expr, &Sample).unwrap();
        e.eval(&|f| match f {
            0 => Some(Value::Text(metric)),
            1 => site.map(Value::Text),
            _ => Some(Value::Number(value)),
        })
    }

    #[test]
    fn comparisons_lists_and_precedence() {
        assert_eq!(eval("metric == 'temp'", "temp", None, 0.0), Some(true));
        assert_eq!(eval("metric != \"temp\"", "temp", None, 0.0), Some(false));
        assert_eq!(
            eval("value >= 2.5 and value < 3", "m", None, 2.5),
            Some(true)
        );
        assert_eq!(eval("value > -1e3", "m", None, -999.0), Some(true));
        assert_eq!(eval("metric in ['a', 'b']", "b", None, 0.0), Some(true));
        assert_eq!(
            eval("metric not in ['a', 'b']", "b", None, 0.0),
            Some(false)
        );
        // `and` binds tighter than `or`.
        assert_eq!(
            eval(
                "metric == 'x' or metric == 'a' and value > 5",
                "x",
                None,
                0.0
            ),
            Some(true)
        );
        assert_eq!(
            eval(
                "(metric == 'x' or metric == 'a') and value > 5",
                "x",
                None,
                0.0
            ),
            Some(false)
        );
        assert_eq!(eval("not (value > 5)", "x", None, 1.0), Some(true));
        assert_eq!(
            eval("NOT value > 5 AND metric == 'x'", "x", None, 1.0),
            Some(true)
        );
    }

    #[test]
    fn a_missing_field_is_unknown_and_unknown_is_not_kept() {
        assert_eq!(eval("site == 'a'", "m", None, 0.0), None);
        assert_eq!(eval("not site == 'a'", "m", None, 0.0), None);
        assert_eq!(eval("site == 'a' or value > 0", "m", None, 1.0), Some(true));
        assert_eq!(
            eval("site == 'a' and value > 5", "m", None, 1.0),
            Some(false)
        );
        let e = parse("not site == 'a'", &Sample).unwrap();
        assert!(!e.holds(&|_| None));
    }

    #[test]
    fn refusals_point_at_the_column_with_a_hint() {
        let err = |text: &str| parse(text, &Sample).unwrap_err();
        let e = err("metric == 'a' and temp > 3");
        assert_eq!((e.at, e.message.as_str()), (18, "unknown field `temp`"));
        assert_eq!(e.hint.as_deref(), Some("fields: metric, site, value"));
        assert_eq!(
            err("site < 'b'").message,
            "`site` is text: it compares with ==, != or in, not <"
        );
        assert_eq!(err("site == b").hint.as_deref(), Some("quote it: 'b'"));
        assert_eq!(
            err("value == 'b'").message,
            "`value` is a number, compared with text 'b'"
        );
        assert_eq!(
            err("3 < value").hint.as_deref(),
            Some("put the field first: `value > 3`, not `3 < value`")
        );
        assert_eq!(err("metric == 'a").at, 10);
        assert_eq!(
            err("(value > 3").message,
            "the condition ends where `)` was expected"
        );
        assert_eq!(err("value = 3").message, "`=` is not an operator");
        assert_eq!(err("value > 3 value").at, 10);
        assert_eq!(
            err("metric in 'a'").message,
            "expected `[` after `in`, found text 'a'"
        );
    }

    proptest! {
        /// The canonical form parses back to the same expression.
        #[test]
        fn display_round_trips(
            picks in prop::collection::vec((0u8..3, 0usize..6, -100i32..100, any::<bool>()), 1..6),
        ) {
            let ops = ["==", "!=", "<", "<=", ">", ">="];
            let parts: Vec<String> = picks
                .iter()
                .map(|&(f, op, n, neg)| {
                    let cond = match f {
                        0 => format!("metric {} 'm{n}'", ops[op % 2]),
                        1 => format!("site in ['a', \"b{n}\"]"),
                        _ => format!("value {} {n}", ops[op]),
                    };
                    if neg { format!("not {cond}") } else { cond }
                })
                .collect();
            let text = parts.join(" and ");
            let e = parse(&text, &Sample).unwrap();
            let again = parse(&e.to_string(), &Sample).unwrap();
            prop_assert_eq!(e, again);
        }
    }
}
