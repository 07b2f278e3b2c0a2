//! Rule conditions: `{field, operator, value}` checks over the request context, compiled once
//! (CIDRs parsed, globs split, value types checked) and evaluated on every decision.
//!
//! The context is one JSON object built per call (`payload.*` — the tool arguments —,
//! `meta.request.ip`, `meta.client.name`, `meta.subject.groups`, …); a field is a dotted path
//! into it. Evaluation has three outcomes, because **a missing field never grants access**:
//! an allow rule needs every condition [`Outcome::Holds`]; a deny rule applies unless some
//! condition [`Outcome::Fails`] — a field that is missing, or of a type the operator cannot
//! judge, leaves a deny in force and an allow out of reach. Only `exists` and `not_exists`
//! look at presence itself.

use serde_json::Value;
use std::fmt;
use std::net::IpAddr;

/// The operators, with the names rules use in files and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Eq,
    Ne,
    In,
    NotIn,
    StartsWith,
    NotStartsWith,
    EndsWith,
    NotEndsWith,
    Contains,
    NotContains,
    Glob,
    Lt,
    Le,
    Gt,
    Ge,
    InCidr,
    NotInCidr,
    Exists,
    NotExists,
}

impl Operator {
    pub const ALL: [Operator; 19] = [
        Operator::Eq,
        Operator::Ne,
        Operator::In,
        Operator::NotIn,
        Operator::StartsWith,
        Operator::NotStartsWith,
        Operator::EndsWith,
        Operator::NotEndsWith,
        Operator::Contains,
        Operator::NotContains,
        Operator::Glob,
        Operator::Lt,
        Operator::Le,
        Operator::Gt,
        Operator::Ge,
        Operator::InCidr,
        Operator::NotInCidr,
        Operator::Exists,
        Operator::NotExists,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Eq => "eq",
            Operator::Ne => "ne",
            Operator::In => "in",
            Operator::NotIn => "not_in",
            Operator::StartsWith => "starts_with",
            Operator::NotStartsWith => "not_starts_with",
            Operator::EndsWith => "ends_with",
            Operator::NotEndsWith => "not_ends_with",
            Operator::Contains => "contains",
            Operator::NotContains => "not_contains",
            Operator::Glob => "glob",
            Operator::Lt => "lt",
            Operator::Le => "le",
            Operator::Gt => "gt",
            Operator::Ge => "ge",
            Operator::InCidr => "in_cidr",
            Operator::NotInCidr => "not_in_cidr",
            Operator::Exists => "exists",
            Operator::NotExists => "not_exists",
        }
    }

    pub fn parse(text: &str) -> Result<Operator, ConditionError> {
        Operator::ALL.into_iter().find(|op| op.as_str() == text).ok_or_else(|| {
            let known: Vec<&str> = Operator::ALL.iter().map(|op| op.as_str()).collect();
            ConditionError(format!("unknown operator {text:?}; the operators are {}", known.join(", ")))
        })
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A condition that cannot be compiled, with what is wrong in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError(pub String);

impl fmt::Display for ConditionError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for ConditionError {}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    address: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address.parse::<IpAddr>().ok()?, prefix.parse::<u8>().ok()?),
            None => {
                let address = text.trim().parse::<IpAddr>().ok()?;
                (address, if address.is_ipv4() { 32 } else { 128 })
            }
        };
        let width = if address.is_ipv4() { 32 } else { 128 };
        (prefix <= width).then_some(Cidr { address, prefix })
    }

    /// The network in Cedar's `ip("…")` form: the address with the host bits cleared.
    pub fn network(&self) -> String {
        match self.address {
            IpAddr::V4(address) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                format!("{}/{}", std::net::Ipv4Addr::from(u32::from(address) & mask), self.prefix)
            }
            IpAddr::V6(address) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                format!("{}/{}", std::net::Ipv6Addr::from(u128::from(address) & mask), self.prefix)
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.address, self.prefix)
    }
}

/// A `*` pattern (`write_*`, `db://orders/*`): `*` matches any run of characters, including
/// none; every other character matches itself (as in Cedar's `like`, which rules compile to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<char>);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.chars().collect())
    }

    /// The pattern as written.
    pub fn pattern(&self) -> String {
        self.0.iter().collect()
    }

    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let pattern = &self.0;
        // Iterative matching with one backtrack point (the last `*`): linear in practice and
        // never exponential.
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match pattern.get(p) {
                Some('*') => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(c) if *c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((star_p, star_t)) => {
                        p = star_p + 1;
                        t = star_t + 1;
                        star = Some((star_p, star_t + 1));
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|c| *c == '*')
    }
}

/// What a condition says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Holds,
    Fails,
    /// The field is missing, or of a type the operator cannot judge.
    Unknown,
}

/// What separates the texts of a list in its Cedar view (so no needle may hold it).
pub(crate) const TEXT_SEPARATOR: char = '\u{1f}';

/// The `meta.*` fields of the request context (the gateway builds exactly these).
pub const META_FIELDS: [&str; 18] = [
    "meta.request.ip",
    "meta.request.user_agent",
    "meta.client.name",
    "meta.client.version",
    "meta.subject.type",
    "meta.subject.email",
    "meta.subject.name",
    "meta.subject.groups",
    "meta.subject.roles",
    "meta.oauth.user_verified",
    "meta.oauth.client_id",
    "meta.server.name",
    "meta.server.transport",
    "meta.server.public",
    "meta.tool.name",
    "meta.tool.title",
    "meta.resource.uri",
    "meta.prompt.name",
];

/// `meta.*` objects whose members are open-ended: a person's attributes, a tool's hints.
pub const META_OPEN: [&str; 2] = ["meta.subject.attributes", "meta.tool.annotations"];

fn known_meta(field: &str) -> bool {
    META_FIELDS.contains(&field)
        || META_OPEN
            .iter()
            .any(|open| field.strip_prefix(open).is_some_and(|rest| rest.len() > 1 && rest.starts_with('.')))
}

/// Edit distance, for suggesting the field someone meant.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb)).min(row[j] + 1).min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// The compiled form of an operator's value.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Value(Value),
    List(Vec<Value>),
    Text(String),
    Number(f64),
    Cidrs(Vec<Cidr>),
    Glob(Glob),
    Nothing,
}

/// A condition ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: String,
    pub op: Operator,
    /// The value as written (for reasons and for showing the rule).
    pub value: Value,
    path: Vec<String>,
    operand: Operand,
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{text:?}"),
        other => other.to_string(),
    }
}

impl Condition {
    /// Check the field, the operator and the value's type, and prepare the value.
    pub fn compile(field: &str, op: &str, value: Value) -> Result<Condition, ConditionError> {
        let op = Operator::parse(op)?;
        let field = field.trim();
        let path: Vec<String> = field.split('.').map(str::to_owned).collect();
        let known_root = matches!(path.first().map(String::as_str), Some("payload" | "meta"));
        if field.is_empty() || path.iter().any(String::is_empty) || !known_root {
            return Err(ConditionError(format!(
                "field {field:?} is not a context path: use payload.<argument>… or meta.request.ip, meta.client.name, meta.subject.groups, …"
            )));
        }
        if path[0] == "meta" && !known_meta(field) {
            let nearest = META_FIELDS
                .iter()
                .map(|known| (distance(field, known), known))
                .min()
                .filter(|(distance, _)| *distance <= 3)
                .map(|(_, known)| format!("did you mean {known:?}? "))
                .unwrap_or_default();
            return Err(ConditionError(format!(
                "field {field:?} is not in the request context; {nearest}meta fields are {}, {}.<name> and {}.<hint>",
                META_FIELDS.join(", "),
                META_OPEN[0],
                META_OPEN[1]
            )));
        }
        let wrong = |needs: &str| {
            Err(ConditionError(format!("operator {op} on {field} needs {needs}, not {}", describe(&value))))
        };
        let operand = match op {
            Operator::Eq | Operator::Ne | Operator::Contains | Operator::NotContains => {
                if matches!(value, Value::Null) {
                    return wrong("a value");
                }
                if value.as_str().is_some_and(|text| text.contains(TEXT_SEPARATOR)) {
                    return wrong("a text without the control character U+001F");
                }
                Operand::Value(value.clone())
            }
            Operator::In | Operator::NotIn => match &value {
                Value::Array(items) if !items.is_empty() => Operand::List(items.clone()),
                _ => return wrong("a non-empty list such as [\"orders\", \"invoices\"]"),
            },
            Operator::StartsWith | Operator::NotStartsWith | Operator::EndsWith | Operator::NotEndsWith => match &value
            {
                Value::String(text) => Operand::Text(text.clone()),
                _ => return wrong("a string"),
            },
            Operator::Glob => match &value {
                Value::String(pattern) => Operand::Glob(Glob::new(pattern)),
                _ => return wrong("a pattern string such as \"write_*\""),
            },
            Operator::Lt | Operator::Le | Operator::Gt | Operator::Ge => match value.as_f64() {
                Some(number) => Operand::Number(number),
                None => return wrong("a number"),
            },
            Operator::InCidr | Operator::NotInCidr => {
                let texts: Vec<&Value> = match &value {
                    Value::Array(items) if !items.is_empty() => items.iter().collect(),
                    Value::String(_) => vec![&value],
                    _ => return wrong("a CIDR such as \"10.0.0.0/8\" or a list of them"),
                };
                let mut cidrs = Vec::with_capacity(texts.len());
                for text in texts {
                    match text.as_str().and_then(Cidr::parse) {
                        Some(cidr) => cidrs.push(cidr),
                        None => {
                            return Err(ConditionError(format!(
                                "operator {op} on {field}: {} is not a CIDR such as \"10.0.0.0/8\"",
                                describe(text)
                            )));
                        }
                    }
                }
                Operand::Cidrs(cidrs)
            }
            Operator::Exists | Operator::NotExists => match value {
                Value::Null | Value::Bool(true) => Operand::Nothing,
                _ => return wrong("no value"),
            },
        };
        Ok(Condition { field: field.to_owned(), op, value, path, operand })
    }

    /// The field's value in `context`, if present (`null` counts as missing).
    fn lookup<'a>(&self, context: &'a Value) -> Option<&'a Value> {
        let mut value = context;
        for part in &self.path {
            value = value.get(part.as_str())?;
        }
        (!value.is_null()).then_some(value)
    }

    /// Does this condition let its rule apply? It must hold for an allow rule; it must not
    /// fail for a deny rule (a missing field keeps a deny in force).
    pub fn lets_apply(&self, context: &Value, deny: bool) -> bool {
        match self.evaluate(context) {
            Outcome::Holds => true,
            Outcome::Fails => false,
            Outcome::Unknown => deny,
        }
    }

    pub fn evaluate(&self, context: &Value) -> Outcome {
        let found = self.lookup(context);
        let outcome = |holds: bool| if holds { Outcome::Holds } else { Outcome::Fails };
        let negate = |result: Outcome| match result {
            Outcome::Holds => Outcome::Fails,
            Outcome::Fails => Outcome::Holds,
            Outcome::Unknown => Outcome::Unknown,
        };
        match self.op {
            Operator::Exists => return outcome(found.is_some()),
            Operator::NotExists => return outcome(found.is_none()),
            _ => {}
        }
        let Some(field) = found else { return Outcome::Unknown };
        match (&self.operand, self.op) {
            (Operand::Value(expected), Operator::Eq) => equals(field, expected),
            (Operand::Value(expected), Operator::Ne) => negate(equals(field, expected)),
            (Operand::List(items), Operator::In) => any(items.iter().map(|item| equals(field, item))),
            (Operand::List(items), Operator::NotIn) => negate(any(items.iter().map(|item| equals(field, item)))),
            (Operand::Text(prefix), Operator::StartsWith) => text_test(field, |text| text.starts_with(prefix.as_str())),
            (Operand::Text(prefix), Operator::NotStartsWith) => {
                negate(text_test(field, |text| text.starts_with(prefix.as_str())))
            }
            (Operand::Text(suffix), Operator::EndsWith) => text_test(field, |text| text.ends_with(suffix.as_str())),
            (Operand::Text(suffix), Operator::NotEndsWith) => {
                negate(text_test(field, |text| text.ends_with(suffix.as_str())))
            }
            (Operand::Value(needle), Operator::Contains) => contains(field, needle),
            (Operand::Value(needle), Operator::NotContains) => negate(contains(field, needle)),
            (Operand::Glob(glob), Operator::Glob) => text_test(field, |text| glob.matches(text)),
            // Whole numbers are ordered (as in Cedar, which rules compile to); a fraction, or a
            // number too large to be exact, is not judged.
            (Operand::Number(limit), op) => match field.as_f64().and_then(integral).map(|whole| whole as f64) {
                Some(number) => outcome(match op {
                    Operator::Lt => number < *limit,
                    Operator::Le => number <= *limit,
                    Operator::Gt => number > *limit,
                    _ => number >= *limit,
                }),
                None => Outcome::Unknown,
            },
            (Operand::Cidrs(cidrs), op) => match field.as_str().and_then(|text| text.trim().parse::<IpAddr>().ok()) {
                Some(ip) => {
                    let inside = cidrs.iter().any(|cidr| cidr.contains(ip));
                    outcome(if op == Operator::InCidr { inside } else { !inside })
                }
                None => Outcome::Unknown,
            },
            _ => Outcome::Unknown,
        }
    }

    /// Why the condition holds or fails for `context`, for a person:
    /// `203.0.113.7 not in 10.0.0.0/8`.
    ///
    /// Tool arguments are never repeated: reasons are stored in the clear on audit events,
    /// where arguments are kept sealed, so a `payload.*` value is not shown.
    pub fn explain(&self, context: &Value) -> String {
        match self.lookup(context) {
            None => format!("{} is missing", self.field),
            Some(_) if self.path[0] == "payload" => {
                format!("the argument matches the rule: {} {} {}", self.field, self.op, describe(&self.value))
            }
            Some(found) => format!(
                "{} is {}; rule: {} {} {}",
                self.field,
                describe(found),
                self.field,
                self.op,
                describe(&self.value)
            ),
        }
    }
}

/// JSON equality, with numbers compared by value (1 and 1.0 are the same).
fn same(left: &Value, right: &Value) -> bool {
    match (left.as_f64(), right.as_f64()) {
        (Some(left), Some(right)) => left == right,
        _ => left == right,
    }
}

fn text_test(field: &Value, test: impl Fn(&str) -> bool) -> Outcome {
    match field.as_str() {
        Some(text) => {
            if test(text) {
                Outcome::Holds
            } else {
                Outcome::Fails
            }
        }
        None => Outcome::Unknown,
    }
}

/// The JSON kind of a scalar; `None` for arrays and objects (compared as whole JSON).
pub(crate) fn scalar_kind(value: &Value) -> Option<u8> {
    match value {
        Value::String(_) => Some(0),
        Value::Number(_) => Some(1),
        Value::Bool(_) => Some(2),
        _ => None,
    }
}

/// `field` equals `expected`: judged only when both are of one kind (a string is never "not
/// equal" to a list holding it: a deny on `"users"` must not be lifted by sending
/// `["users"]`); arrays and objects are compared as JSON with anything.
fn equals(field: &Value, expected: &Value) -> Outcome {
    match scalar_kind(expected) {
        Some(kind) if scalar_kind(field) != Some(kind) => Outcome::Unknown,
        _ => {
            if same(field, expected) {
                Outcome::Holds
            } else {
                Outcome::Fails
            }
        }
    }
}

/// Three-valued OR: holds if one holds, fails if all fail, unknown otherwise.
fn any(outcomes: impl Iterator<Item = Outcome>) -> Outcome {
    let mut result = Outcome::Fails;
    for outcome in outcomes {
        match outcome {
            Outcome::Holds => return Outcome::Holds,
            Outcome::Unknown => result = Outcome::Unknown,
            Outcome::Fails => {}
        }
    }
    result
}

/// A string containing a substring, or a list containing an element. A list fails only when
/// it plainly lacks the element: for a text, when every element is a text and none contains
/// it (`["DROP TABLE t"]` is not a list "without DROP"); for a number or boolean, when every
/// element is of that kind and none equals it.
fn contains(field: &Value, needle: &Value) -> Outcome {
    match (field, needle) {
        (Value::String(text), Value::String(part)) => {
            if text.contains(part.as_str()) {
                Outcome::Holds
            } else {
                Outcome::Fails
            }
        }
        (Value::Array(items), needle) => {
            if items.iter().any(|item| same(item, needle)) {
                return Outcome::Holds;
            }
            let plainly_without = match (needle, scalar_kind(needle)) {
                (Value::String(part), _) => {
                    items.iter().all(|item| item.as_str().is_some_and(|text| !text.contains(part.as_str())))
                }
                (_, Some(kind)) => items.iter().all(|item| scalar_kind(item) == Some(kind)),
                (_, None) => true,
            };
            if plainly_without { Outcome::Fails } else { Outcome::Unknown }
        }
        _ => Outcome::Unknown,
    }
}

/// The Cedar rendering of a condition, in terms of the field's typed view `slot` (see
/// [`crate::cedar`]): an expression that is true exactly when the condition holds, and one
/// that is true exactly when it fails. Neither can raise an error (every optional part of the
/// view is guarded with `has`), so "missing or of the wrong type" is neither — Unknown.
impl Condition {
    pub(crate) fn cedar(&self, slot: &str) -> (String, String) {
        use crate::cedar::{literal, pattern_literal};
        let both = |guard: String, test: String| (format!("({guard} && {test})"), format!("({guard} && !({test}))"));
        // Equality, judged only between values of one kind (see `equals`): (holds, fails).
        let equals = |value: &Value| -> (String, String) {
            match value {
                Value::String(text) => both(format!("{slot} has s"), format!("{slot}.s == {}", literal(text))),
                Value::Bool(flag) => both(format!("{slot} has b"), format!("{slot}.b == {flag}")),
                Value::Number(number) => {
                    let test = match integral(number.as_f64().unwrap_or(f64::NAN)) {
                        Some(whole) => format!("({slot} has n && {slot}.n == {whole})"),
                        None => format!("({slot} has json && {slot}.json == {})", literal(&canonical(value))),
                    };
                    both(format!("({slot} has kind && {slot}.kind == \"number\")"), test)
                }
                other => both(format!("{slot} has json"), format!("{slot}.json == {}", literal(&canonical(other)))),
            }
        };
        // Three-valued OR over items: holds if one holds, fails if all fail.
        let any = |pairs: Vec<(String, String)>| -> (String, String) {
            let holds: Vec<&str> = pairs.iter().map(|(holds, _)| holds.as_str()).collect();
            let fails: Vec<&str> = pairs.iter().map(|(_, fails)| fails.as_str()).collect();
            (format!("({})", holds.join(" || ")), format!("({})", fails.join(" && ")))
        };
        let text = |pattern: String| both(format!("{slot} has s"), format!("{slot}.s like {pattern}"));
        let swap = |(holds, fails): (String, String)| (fails, holds);
        match (&self.operand, self.op) {
            (_, Operator::Exists) => (format!("{slot}.present"), format!("!{slot}.present")),
            (_, Operator::NotExists) => (format!("!{slot}.present"), format!("{slot}.present")),
            (Operand::Value(value), Operator::Eq) => equals(value),
            (Operand::Value(value), Operator::Ne) => swap(equals(value)),
            (Operand::List(items), op) => {
                let pair = any(items.iter().map(equals).collect());
                if op == Operator::In { pair } else { swap(pair) }
            }
            (Operand::Text(prefix), Operator::StartsWith) => text(pattern_literal(prefix, false, true)),
            (Operand::Text(prefix), Operator::NotStartsWith) => swap(text(pattern_literal(prefix, false, true))),
            (Operand::Text(suffix), Operator::EndsWith) => text(pattern_literal(suffix, true, false)),
            (Operand::Text(suffix), Operator::NotEndsWith) => swap(text(pattern_literal(suffix, true, false))),
            (Operand::Glob(glob), _) => text(literal(&glob.pattern())),
            (Operand::Value(needle), op) => {
                let member = format!("{slot}.items.contains({})", literal(&canonical(needle)));
                let (holds, fails) = match needle {
                    Value::String(part) => {
                        let like = format!("{slot}.s like {}", pattern_literal(part, true, true));
                        let within = format!("{slot}.texts like {}", pattern_literal(part, true, true));
                        (
                            format!("(({slot} has s && {like}) || ({slot} has items && {member}))"),
                            format!(
                                "(({slot} has s && !({like})) || ({slot} has all_s && {slot}.all_s && {slot} has texts && !({within})))"
                            ),
                        )
                    }
                    Value::Number(_) => (
                        format!("({slot} has items && {member})"),
                        format!("({slot} has items && {slot} has all_n && {slot}.all_n && !{member})"),
                    ),
                    Value::Bool(_) => (
                        format!("({slot} has items && {member})"),
                        format!("({slot} has items && {slot} has all_b && {slot}.all_b && !{member})"),
                    ),
                    _ => both(format!("{slot} has items"), member),
                };
                if op == Operator::Contains { (holds, fails) } else { (fails, holds) }
            }
            (Operand::Number(limit), op) => {
                // Cedar compares whole numbers (Long); for a whole field, x < 5.5 is x < 6.
                let test = match op {
                    Operator::Lt => format!("{slot}.n < {}", limit.ceil() as i64),
                    Operator::Le => format!("{slot}.n <= {}", limit.floor() as i64),
                    Operator::Gt => format!("{slot}.n > {}", limit.floor() as i64),
                    _ => format!("{slot}.n >= {}", limit.ceil() as i64),
                };
                both(format!("{slot} has n"), test)
            }
            (Operand::Cidrs(cidrs), op) => {
                let any = cidrs
                    .iter()
                    .map(|cidr| format!("{slot}.ip.isInRange(ip({}))", literal(&cidr.network())))
                    .collect::<Vec<_>>()
                    .join(" || ");
                let pair = both(format!("{slot} has ip"), format!("({any})"));
                if op == Operator::InCidr { pair } else { swap(pair) }
            }
            // Operands are built to fit their operators; nothing else is reachable.
            _ => ("false".into(), "false".into()),
        }
    }

    /// The field's value in `context`, for building the typed views Cedar sees.
    pub(crate) fn found<'a>(&self, context: &'a Value) -> Option<&'a Value> {
        self.lookup(context)
    }
}

/// A number that is whole (and small enough to be exact), as an integer.
pub(crate) fn integral(number: f64) -> Option<i64> {
    (number.fract() == 0.0 && number.abs() < 9.0e15).then_some(number as i64)
}

/// A value as text such that two values are [`same`] exactly when their texts are equal:
/// numbers by value at the top (1 and 1.0 alike), everything else as JSON with sorted keys.
pub(crate) fn canonical(value: &Value) -> String {
    fn nested(value: &Value, out: &mut String) {
        match value {
            Value::Array(items) => {
                out.push('[');
                for (at, item) in items.iter().enumerate() {
                    if at > 0 {
                        out.push(',');
                    }
                    nested(item, out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (at, key) in keys.into_iter().enumerate() {
                    if at > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    nested(&map[key], out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    match value {
        Value::Number(number) => {
            let float = number.as_f64().unwrap_or(f64::NAN);
            integral(float).map_or_else(|| float.to_string(), |whole| whole.to_string())
        }
        other => {
            let mut out = String::new();
            nested(other, &mut out);
            out
        }
    }
}

/// Does a rule with these conditions apply? An allow rule needs every condition to hold; a
/// deny rule applies unless one of them fails (a missing field keeps a deny in force).
pub fn rule_applies(conditions: &[Condition], context: &Value, deny: bool) -> bool {
    conditions.iter().all(|condition| condition.lets_apply(context, deny))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> Value {
        json!({
            "payload": {"table": "orders", "limit": 50, "ratio": 0.5, "tags": ["eu", "pii"], "path": "/srv/data/report.csv", "nested": {"deep": true}},
            "meta": {
                "request": {"ip": "10.1.2.3", "user_agent": "Cursor/1.2"},
                "client": {"name": "cursor", "version": "1.2.0"},
                "subject": {"type": "user", "email": "ann@example.com", "groups": ["Finance", "Engineering"], "attributes": {"department": "Finance"}},
                "oauth": {"user_verified": true},
                "tool": {"read_only": false},
            },
        })
    }

    /// (field, operator, value, expected outcome) — every operator, holding, failing and unknown.
    #[test]
    fn every_operator_holds_fails_or_cannot_tell() {
        use Outcome::{Fails, Holds, Unknown};
        let cases: Vec<(&str, &str, Value, Outcome)> = vec![
            ("payload.table", "eq", json!("orders"), Holds),
            ("payload.table", "eq", json!("Orders"), Fails),
            ("payload.limit", "eq", json!(50.0), Holds),
            ("payload.missing", "eq", json!("x"), Unknown),
            ("payload.table", "ne", json!("invoices"), Holds),
            ("payload.table", "ne", json!("orders"), Fails),
            ("payload.table", "in", json!(["orders", "invoices"]), Holds),
            ("payload.table", "in", json!(["users"]), Fails),
            ("payload.table", "not_in", json!(["users"]), Holds),
            ("payload.table", "not_in", json!(["orders"]), Fails),
            // A value of another kind is not judged: a deny on "pii" stays in force for ["pii"].
            ("payload.tags", "eq", json!("pii"), Unknown),
            ("payload.tags", "ne", json!("pii"), Unknown),
            ("payload.limit", "in", json!(["50"]), Unknown),
            ("payload.limit", "in", json!(["50", 50]), Holds),
            ("payload.tags", "eq", json!(["eu", "pii"]), Holds),
            ("payload.tags", "contains", json!("pi"), Unknown),
            ("payload.tags", "contains", json!("us"), Fails),
            ("payload.tags", "contains", json!(3), Unknown),
            ("payload.path", "starts_with", json!("/srv/"), Holds),
            ("payload.path", "starts_with", json!("/etc/"), Fails),
            ("payload.limit", "starts_with", json!("5"), Unknown),
            ("payload.path", "not_starts_with", json!("/etc/"), Holds),
            ("payload.path", "not_starts_with", json!("/srv/"), Fails),
            ("payload.path", "ends_with", json!(".csv"), Holds),
            ("payload.path", "ends_with", json!(".exe"), Fails),
            ("payload.path", "not_ends_with", json!(".exe"), Holds),
            ("payload.path", "not_ends_with", json!(".csv"), Fails),
            ("payload.path", "contains", json!("data"), Holds),
            ("payload.tags", "contains", json!("pii"), Holds),
            ("meta.subject.groups", "contains", json!("Finance"), Holds),
            ("meta.subject.groups", "contains", json!("Sales"), Fails),
            ("payload.limit", "contains", json!("5"), Unknown),
            ("payload.tags", "not_contains", json!("pii"), Fails),
            ("payload.path", "not_contains", json!("secret"), Holds),
            ("payload.path", "glob", json!("/srv/*/*.csv"), Holds),
            ("payload.path", "glob", json!("/srv/*.exe"), Fails),
            ("meta.client.version", "glob", json!("1.*.0"), Holds),
            ("payload.limit", "lt", json!(100), Holds),
            ("payload.limit", "lt", json!(50), Fails),
            ("payload.limit", "le", json!(50), Holds),
            ("payload.limit", "gt", json!(50), Fails),
            ("payload.limit", "ge", json!(50), Holds),
            ("payload.table", "gt", json!(1), Unknown),
            ("payload.limit", "lt", json!(50.5), Holds),
            ("payload.ratio", "lt", json!(1), Unknown),
            ("meta.request.ip", "in_cidr", json!("10.0.0.0/8"), Holds),
            ("meta.request.ip", "in_cidr", json!(["192.168.0.0/16", "10.1.0.0/16"]), Holds),
            ("meta.request.ip", "in_cidr", json!("192.168.0.0/16"), Fails),
            ("meta.request.ip", "not_in_cidr", json!("10.0.0.0/8"), Fails),
            ("meta.request.ip", "not_in_cidr", json!("172.16.0.0/12"), Holds),
            ("meta.request.user_agent", "in_cidr", json!("10.0.0.0/8"), Unknown),
            ("payload.nested.deep", "exists", Value::Null, Holds),
            ("payload.nested.shallow", "exists", Value::Null, Fails),
            ("payload.nested.shallow", "not_exists", Value::Null, Holds),
            ("meta.oauth.user_verified", "not_exists", Value::Null, Fails),
            ("meta.oauth.user_verified", "eq", json!(true), Holds),
            ("meta.subject.attributes.department", "eq", json!("Finance"), Holds),
        ];
        let context = context();
        for (field, op, value, expected) in cases {
            let condition = Condition::compile(field, op, value.clone()).unwrap_or_else(|error| panic!("{error}"));
            assert_eq!(condition.evaluate(&context), expected, "{field} {op} {value}");
        }
        let covered: std::collections::HashSet<&str> = [
            "eq",
            "ne",
            "in",
            "not_in",
            "starts_with",
            "not_starts_with",
            "ends_with",
            "not_ends_with",
            "contains",
            "not_contains",
            "glob",
            "lt",
            "le",
            "gt",
            "ge",
            "in_cidr",
            "not_in_cidr",
            "exists",
            "not_exists",
        ]
        .into();
        assert!(Operator::ALL.iter().all(|op| covered.contains(op.as_str())));
    }

    #[test]
    fn a_missing_field_never_grants() {
        let context = json!({"meta": {"request": {}}});
        let corporate = [Condition::compile("meta.request.ip", "in_cidr", json!("10.0.0.0/8")).unwrap()];
        assert!(!rule_applies(&corporate, &context, false), "an allow needs the IP to be there");
        let outside = [Condition::compile("meta.request.ip", "not_in_cidr", json!("10.0.0.0/8")).unwrap()];
        assert!(rule_applies(&outside, &context, true), "a deny stays in force without the IP");
        let tables = [Condition::compile("payload.table", "not_in", json!(["orders"])).unwrap()];
        assert!(rule_applies(&tables, &json!({"payload": {"table": 7}}), true), "a number where a name was expected");
        assert!(rule_applies(&[], &context, false) && rule_applies(&[], &context, true), "no conditions: applies");
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        let error = |field: &str, op: &str, value: Value| Condition::compile(field, op, value).unwrap_err().0;
        assert!(
            error("payload.table", "equals", json!("x"))
                .starts_with("unknown operator \"equals\"; the operators are eq, ne")
        );
        assert_eq!(
            error("payload.limit", "lt", json!("ten")),
            "operator lt on payload.limit needs a number, not \"ten\""
        );
        assert_eq!(
            error("meta.request.ip", "in_cidr", json!(["10.0.0.0/8", "10.0.0.0/33"])),
            "operator in_cidr on meta.request.ip: \"10.0.0.0/33\" is not a CIDR such as \"10.0.0.0/8\""
        );
        assert!(error("payload.table", "in", json!("orders")).contains("needs a non-empty list"));
        assert!(error("table", "eq", json!("x")).contains("is not a context path"));
        assert!(
            error("meta.requst.ip", "eq", json!("x")).starts_with(
                "field \"meta.requst.ip\" is not in the request context; did you mean \"meta.request.ip\"?"
            ),
            "{}",
            error("meta.requst.ip", "eq", json!("x"))
        );
        assert!(error("meta.tool.annotations", "exists", Value::Null).contains("is not in the request context"));
        assert!(Condition::compile("meta.tool.annotations.readOnlyHint", "eq", json!(true)).is_ok());
        assert!(Condition::compile("meta.subject.attributes.cost_center", "eq", json!("42")).is_ok());
        assert!(error("payload..x", "eq", json!("x")).contains("is not a context path"));
        assert!(error("payload.x", "exists", json!("yes")).contains("needs no value"));
    }

    #[test]
    fn cidrs_and_globs() {
        let cidr = Cidr::parse("2001:db8::/32").unwrap();
        assert!(cidr.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!cidr.contains("2001:db9::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/8").unwrap().contains("::ffff:10.9.9.9".parse().unwrap()), "IPv4-mapped");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("203.0.113.7".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none() && Cidr::parse("ten").is_none());
        assert_eq!(Cidr::parse("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        for (pattern, text, expected) in [
            ("write_*", "write_file", true),
            ("write_*", "read_file", false),
            ("*", "", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("db://orders/*", "db://orders/2024", true),
            ("?", "a", false),
            ("a?", "a?", true),
            ("*a", "baaa", true),
        ] {
            assert_eq!(Glob::new(pattern).matches(text), expected, "{pattern} ~ {text}");
        }
        // Many stars against a long near-miss (exponential for naive backtracking).
        assert!(!Glob::new(&"*a".repeat(30)).matches(&"a".repeat(29)));
    }

    #[test]
    fn reasons_name_the_value_and_the_rule() {
        let condition = Condition::compile("meta.request.ip", "in_cidr", json!("10.0.0.0/8")).unwrap();
        let context = json!({"meta": {"request": {"ip": "203.0.113.7"}}});
        assert_eq!(condition.evaluate(&context), Outcome::Fails);
        assert_eq!(
            condition.explain(&context),
            "meta.request.ip is \"203.0.113.7\"; rule: meta.request.ip in_cidr \"10.0.0.0/8\""
        );
        assert_eq!(condition.explain(&json!({})), "meta.request.ip is missing");
        let tables = Condition::compile("payload.table", "not_in", json!(["orders"])).unwrap();
        assert_eq!(
            tables.explain(&json!({"payload": {"table": "salaries"}})),
            "the argument matches the rule: payload.table not_in [\"orders\"]",
            "arguments stay out of reasons"
        );
    }
}
