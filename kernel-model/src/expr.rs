//! Integer expressions: buffer sizes in manifests (`f64[n*n]`, `u64[bins]`, `halo k`) and
//! counts in programs (`items = "n - 2"`, `repeat = "steps / 2"`).
//!
//! The grammar is the usual one: `expr := term (("+" | "-") term)*`, `term := factor
//! (("*" | "/" | "%") factor)*`, `factor := NUMBER | NAME | "(" expr ")"`. Evaluation is
//! in 128-bit signed integers with every operation checked, so an overflow, a division by
//! zero or an unknown name is an error that names the expression, never a wrapped value.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An integer expression over named values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Expr {
    /// A literal.
    Num(u64),
    /// A named value (a kernel's scalar argument, a program's scalar or loop counter).
    Var(String),
    /// `a + b`.
    Add(Box<Expr>, Box<Expr>),
    /// `a - b`.
    Sub(Box<Expr>, Box<Expr>),
    /// `a * b`.
    Mul(Box<Expr>, Box<Expr>),
    /// `a / b`, rounded toward zero.
    Div(Box<Expr>, Box<Expr>),
    /// `a % b`.
    Rem(Box<Expr>, Box<Expr>),
}

/// Why an expression has no value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// A name that is not defined where the expression is used.
    #[error("`{0}` is not defined here")]
    Unknown(String),
    /// A name whose value is not an integer.
    #[error("`{0}` is not an integer")]
    NotInteger(String),
    /// An operation overflowed.
    #[error("`{0}` overflows")]
    Overflow(String),
    /// A division or remainder by zero.
    #[error("`{0}` divides by zero")]
    DivideByZero(String),
    /// A negative value where a size or count is needed.
    #[error("`{expr}` is {value}, not a size or count (they cannot be negative)")]
    Negative {
        /// The expression.
        expr: String,
        /// Its value.
        value: i128,
    },
}

/// What a name stands for during evaluation.
pub enum Value {
    /// An integer.
    Int(i128),
    /// Something that is not an integer (a float scalar): using it is an error.
    NotInteger,
}

impl From<u64> for Expr {
    fn from(n: u64) -> Expr {
        Expr::Num(n)
    }
}

impl From<&str> for Expr {
    /// An expression's text (`"n"`, `"n*n - 2"`). Text that does not parse becomes a
    /// name that nothing defines, so the program's check names it; [`Expr::parse`]
    /// reports the parse error itself.
    fn from(text: &str) -> Expr {
        Expr::parse(text).unwrap_or_else(|_| Expr::Var(text.to_string()))
    }
}

impl Expr {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Expr, String> {
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Err("an empty expression".into());
        }
        let mut parser = Parser { tokens, at: 0 };
        let expr = parser.expr()?;
        match parser.tokens.get(parser.at) {
            None => Ok(expr),
            Some(token) => Err(format!("unexpected `{token}` in `{text}`")),
        }
    }

    /// The literal value, if this is a literal.
    pub fn constant(&self) -> Option<u64> {
        match self {
            Expr::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// The names it uses, in order of first use.
    pub fn names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        self.collect_names(&mut names);
        names
    }

    fn collect_names<'a>(&'a self, names: &mut Vec<&'a str>) {
        match self {
            Expr::Num(_) => {}
            Expr::Var(name) => {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
            Expr::Add(a, b)
            | Expr::Sub(a, b)
            | Expr::Mul(a, b)
            | Expr::Div(a, b)
            | Expr::Rem(a, b) => {
                a.collect_names(names);
                b.collect_names(names);
            }
        }
    }

    /// The value, with names looked up by `lookup`.
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<Value>) -> Result<i128, EvalError> {
        let whole = || self.to_string();
        let checked = |value: Option<i128>| value.ok_or_else(|| EvalError::Overflow(whole()));
        Ok(match self {
            Expr::Num(n) => i128::from(*n),
            Expr::Var(name) => match lookup(name) {
                Some(Value::Int(v)) => v,
                Some(Value::NotInteger) => return Err(EvalError::NotInteger(name.clone())),
                None => return Err(EvalError::Unknown(name.clone())),
            },
            Expr::Add(a, b) => checked(a.eval(lookup)?.checked_add(b.eval(lookup)?))?,
            Expr::Sub(a, b) => checked(a.eval(lookup)?.checked_sub(b.eval(lookup)?))?,
            Expr::Mul(a, b) => checked(a.eval(lookup)?.checked_mul(b.eval(lookup)?))?,
            Expr::Div(a, b) | Expr::Rem(a, b) => {
                let (x, y) = (a.eval(lookup)?, b.eval(lookup)?);
                if y == 0 {
                    return Err(EvalError::DivideByZero(whole()));
                }
                checked(if matches!(self, Expr::Div(..)) {
                    x.checked_div(y)
                } else {
                    x.checked_rem(y)
                })?
            }
        })
    }

    /// The value as a size or count: not negative, at most `u64::MAX`.
    pub fn eval_count(&self, lookup: &dyn Fn(&str) -> Option<Value>) -> Result<u64, EvalError> {
        let value = self.eval(lookup)?;
        if value < 0 {
            return Err(EvalError::Negative {
                expr: self.to_string(),
                value,
            });
        }
        u64::try_from(value).map_err(|_| EvalError::Overflow(self.to_string()))
    }

    fn precedence(&self) -> u8 {
        match self {
            Expr::Num(_) | Expr::Var(_) => 3,
            Expr::Mul(..) | Expr::Div(..) | Expr::Rem(..) => 2,
            Expr::Add(..) | Expr::Sub(..) => 1,
        }
    }
}

impl fmt::Display for Expr {
    /// Prints the expression so that [`Expr::parse`] reads it back unchanged, with the
    /// parentheses the structure needs and no more.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, op, b) = match self {
            Expr::Num(n) => return write!(f, "{n}"),
            Expr::Var(name) => return f.write_str(name),
            Expr::Add(a, b) => (a, "+", b),
            Expr::Sub(a, b) => (a, "-", b),
            Expr::Mul(a, b) => (a, "*", b),
            Expr::Div(a, b) => (a, "/", b),
            Expr::Rem(a, b) => (a, "%", b),
        };
        let mine = self.precedence();
        // Left-associative: the left side may share our level, the right side may not.
        let left = a.precedence() < mine;
        let right = b.precedence() <= mine;
        let side = |f: &mut fmt::Formatter<'_>, e: &Expr, paren: bool| {
            if paren {
                write!(f, "({e})")
            } else {
                write!(f, "{e}")
            }
        };
        side(f, a, left)?;
        write!(f, "{op}")?;
        side(f, b, right)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Num(u64),
    Name(String),
    Op(char),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Num(n) => write!(f, "{n}"),
            Token::Name(n) => f.write_str(n),
            Token::Op(c) => write!(f, "{c}"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_digit() {
            let mut end = at;
            while let Some(&(i, d)) = chars.peek() {
                if !(d.is_ascii_digit() || d == '_') {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
            let digits: String = text[at..end].chars().filter(|d| *d != '_').collect();
            let n = digits
                .parse::<u64>()
                .map_err(|_| format!("`{}` is not a whole number below 2^64", &text[at..end]))?;
            tokens.push(Token::Num(n));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut end = at;
            while let Some(&(i, d)) = chars.peek() {
                if !(d.is_ascii_alphanumeric() || d == '_') {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
            tokens.push(Token::Name(text[at..end].to_string()));
        } else if "+-*/%()".contains(c) {
            tokens.push(Token::Op(c));
            chars.next();
        } else {
            return Err(format!("`{c}` cannot appear in an expression (`{text}`)"));
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_op(&self) -> Option<char> {
        match self.tokens.get(self.at) {
            Some(Token::Op(c)) => Some(*c),
            _ => None,
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut left = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek_op() {
            self.at += 1;
            let right = Box::new(self.term()?);
            let left_box = Box::new(left);
            left = if op == '+' {
                Expr::Add(left_box, right)
            } else {
                Expr::Sub(left_box, right)
            };
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut left = self.factor()?;
        while let Some(op @ ('*' | '/' | '%')) = self.peek_op() {
            self.at += 1;
            let right = Box::new(self.factor()?);
            let left_box = Box::new(left);
            left = match op {
                '*' => Expr::Mul(left_box, right),
                '/' => Expr::Div(left_box, right),
                _ => Expr::Rem(left_box, right),
            };
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Expr, String> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        match token {
            Some(Token::Num(n)) => Ok(Expr::Num(n)),
            Some(Token::Name(name)) => Ok(Expr::Var(name)),
            Some(Token::Op('(')) => {
                let inner = self.expr()?;
                match self.tokens.get(self.at) {
                    Some(Token::Op(')')) => {
                        self.at += 1;
                        Ok(inner)
                    }
                    _ => Err("a `(` without its `)`".into()),
                }
            }
            Some(other) => Err(format!("expected a number, a name or `(`, found `{other}`")),
            None => Err("the expression ends too early".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(name: &str) -> Option<Value> {
        match name {
            "n" => Some(Value::Int(1300)),
            "k" => Some(Value::Int(7)),
            "big" => Some(Value::Int(i128::from(u64::MAX))),
            "neg" => Some(Value::Int(-3)),
            "x" => Some(Value::NotInteger),
            _ => None,
        }
    }

    fn eval(text: &str) -> Result<i128, EvalError> {
        Expr::parse(text).expect("parses").eval(&values)
    }

    #[test]
    fn evaluates_with_the_usual_precedence() {
        assert_eq!(eval("n*n"), Ok(1_690_000));
        assert_eq!(eval("n - 2*k + 1"), Ok(1287));
        assert_eq!(eval("(n - 2) * k"), Ok(9086));
        assert_eq!(eval("n / k % 5"), Ok(185 % 5));
        assert_eq!(eval("1_000"), Ok(1000));
    }

    #[test]
    fn mistakes_are_errors_that_name_them() {
        assert_eq!(eval("m + 1"), Err(EvalError::Unknown("m".into())));
        assert_eq!(eval("x*2"), Err(EvalError::NotInteger("x".into())));
        assert!(matches!(
            eval("n / (k - 7)"),
            Err(EvalError::DivideByZero(_))
        ));
        assert!(matches!(
            eval("big * big * big"),
            Err(EvalError::Overflow(_))
        ));
        let count = Expr::parse("neg * 2").expect("parses").eval_count(&values);
        assert!(matches!(count, Err(EvalError::Negative { value: -6, .. })));
        for bad in ["", "n +", "(n", "n $ 2", "2 3", "99999999999999999999999"] {
            assert!(Expr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn printing_round_trips_with_only_the_parentheses_needed() {
        for text in [
            "n*n", "n-2*k", "(n-2)*k", "n-(k-1)", "n/(k*2)", "n*k/2", "a%b+1",
        ] {
            let expr = Expr::parse(text).expect("parses");
            assert_eq!(expr.to_string(), text);
            assert_eq!(Expr::parse(&expr.to_string()), Ok(expr));
        }
        assert_eq!(Expr::parse("( n )").expect("parses").to_string(), "n");
    }
}
