//! SCIM filters (RFC 7644 §3.4.2.2) and attribute paths (§3.5.2), evaluated on JSON resources.
//!
//! Attribute names compare case-insensitively, as do string values except `id` and
//! `externalId` (the only case-exact attributes Portcullis serves).

use serde_json::Value;

/// A parse error, worded for the SCIM client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
    Pr,
}

/// An attribute path: `name`, `name.sub`, optionally prefixed by a schema URN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    /// The extension schema URN when the path named one (the core schemas are dropped).
    pub schema: Option<String>,
    pub name: String,
    pub sub: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare(AttrPath, Op, Value),
    /// `emails[type eq "work"]`: some element of the multi-valued attribute matches.
    ValuePath(AttrPath, Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
}

/// Extension schemas Portcullis serves.
pub const EXTENSION_SCHEMAS: [&str; 1] = ["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"];

pub const CORE_SCHEMAS: [&str; 2] =
    ["urn:ietf:params:scim:schemas:core:2.0:User", "urn:ietf:params:scim:schemas:core:2.0:Group"];

impl AttrPath {
    /// Parse `urn:…:name.sub` or `name.sub`.
    pub fn parse(text: &str) -> Result<AttrPath, FilterError> {
        let text = text.trim();
        // An extension's URN alone names its whole object, a top-level attribute.
        if let Some(extension) = EXTENSION_SCHEMAS.iter().find(|extension| extension.eq_ignore_ascii_case(text)) {
            return Ok(AttrPath { schema: None, name: (*extension).to_owned(), sub: None });
        }
        let (schema, rest) = if text.to_ascii_lowercase().starts_with("urn:") {
            // The attribute follows the last ':' of the URN.
            let colon = text.rfind(':').ok_or_else(|| FilterError(format!("bad attribute path {text:?}")))?;
            let schema = &text[..colon];
            let schema = CORE_SCHEMAS.iter().all(|core| !core.eq_ignore_ascii_case(schema)).then(|| schema.to_owned());
            (schema, &text[colon + 1..])
        } else {
            (None, text)
        };
        let (name, sub) = match rest.split_once('.') {
            Some((name, sub)) => (name, Some(sub.to_owned())),
            None => (rest, None),
        };
        let valid = |part: &str| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
        };
        if !valid(name) || sub.as_deref().is_some_and(|sub| !valid(sub)) {
            return Err(FilterError(format!("bad attribute path {text:?}")));
        }
        Ok(AttrPath { schema, name: name.to_owned(), sub })
    }

    /// The object the path starts in: the resource or its extension object.
    pub fn container<'a>(&self, resource: &'a Value) -> Option<&'a Value> {
        match &self.schema {
            None => Some(resource),
            Some(schema) => get_ci(resource, schema),
        }
    }

    fn case_exact(&self) -> bool {
        self.sub.is_none() && (self.name == "id" || self.name.eq_ignore_ascii_case("externalId"))
    }
}

/// A key of a JSON object, looked up case-insensitively.
pub fn get_ci<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    object.get(key).or_else(|| object.iter().find(|(name, _)| name.eq_ignore_ascii_case(key)).map(|(_, value)| value))
}

/// The actual key in `object` that matches `key` case-insensitively.
pub fn key_ci(object: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    object.keys().find(|name| name.eq_ignore_ascii_case(key)).cloned()
}

struct Parser<'a> {
    text: &'a str,
    position: usize,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let mut parser = Parser { text, position: 0 };
        let filter = parser.or()?;
        parser.skip_space();
        if parser.position < text.len() {
            return Err(FilterError(format!("unexpected {:?} in the filter", &text[parser.position..])));
        }
        Ok(filter)
    }

    /// Does `resource` (or, inside a value path, one element) match?
    pub fn matches(&self, resource: &Value) -> bool {
        match self {
            Filter::And(left, right) => left.matches(resource) && right.matches(resource),
            Filter::Or(left, right) => left.matches(resource) || right.matches(resource),
            Filter::Not(inner) => !inner.matches(resource),
            Filter::ValuePath(path, inner) => {
                let Some(value) = path.container(resource).and_then(|container| get_ci(container, &path.name)) else {
                    return false;
                };
                match value {
                    Value::Array(items) => items.iter().any(|item| inner.matches(item)),
                    other => inner.matches(other),
                }
            }
            Filter::Compare(path, op, expected) => {
                let Some(value) = path.container(resource).and_then(|container| get_ci(container, &path.name)) else {
                    return false;
                };
                let candidates: Vec<&Value> = match (value, &path.sub) {
                    (Value::Array(items), Some(sub)) => items.iter().filter_map(|item| get_ci(item, sub)).collect(),
                    (Value::Array(items), None) => items
                        .iter()
                        .map(|item| if item.is_object() { get_ci(item, "value").unwrap_or(item) } else { item })
                        .collect(),
                    (object, Some(sub)) => get_ci(object, sub).into_iter().collect(),
                    (scalar, None) => vec![scalar],
                };
                if *op == Op::Pr {
                    return candidates.iter().any(|value| !value.is_null() && *value != &Value::String(String::new()));
                }
                candidates.iter().any(|value| compare(value, *op, expected, path.case_exact()))
            }
        }
    }
}

fn compare(actual: &Value, op: Op, expected: &Value, case_exact: bool) -> bool {
    match (actual, expected) {
        (Value::String(actual), Value::String(expected)) => {
            let (actual, expected) = if case_exact {
                (actual.clone(), expected.clone())
            } else {
                (actual.to_lowercase(), expected.to_lowercase())
            };
            match op {
                Op::Eq => actual == expected,
                Op::Ne => actual != expected,
                Op::Co => actual.contains(&expected),
                Op::Sw => actual.starts_with(&expected),
                Op::Ew => actual.ends_with(&expected),
                Op::Gt => actual > expected,
                Op::Ge => actual >= expected,
                Op::Lt => actual < expected,
                Op::Le => actual <= expected,
                Op::Pr => true,
            }
        }
        (Value::Bool(actual), expected) => {
            let expected = match expected {
                Value::Bool(value) => Some(*value),
                Value::String(text) => text.parse::<bool>().ok(),
                _ => None,
            };
            match op {
                Op::Eq => Some(*actual) == expected,
                Op::Ne => Some(*actual) != expected,
                _ => false,
            }
        }
        (Value::Number(actual), Value::Number(expected)) => {
            let (Some(actual), Some(expected)) = (actual.as_f64(), expected.as_f64()) else { return false };
            match op {
                Op::Eq => actual == expected,
                Op::Ne => actual != expected,
                Op::Gt => actual > expected,
                Op::Ge => actual >= expected,
                Op::Lt => actual < expected,
                Op::Le => actual <= expected,
                _ => false,
            }
        }
        (actual, Value::Null) => match op {
            Op::Eq => actual.is_null(),
            Op::Ne => !actual.is_null(),
            _ => false,
        },
        _ => matches!(op, Op::Ne),
    }
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.text[self.position..].starts_with(' ') {
            self.position += 1;
        }
    }

    /// The next word (up to a space, bracket or parenthesis).
    fn word(&mut self) -> &str {
        self.skip_space();
        let rest = &self.text[self.position..];
        let end = rest.find([' ', '(', ')', '[', ']']).unwrap_or(rest.len());
        self.position += end;
        &rest[..end]
    }

    fn peek_keyword(&mut self, keyword: &str) -> bool {
        self.skip_space();
        let rest = &self.text[self.position..];
        let matches = rest.len() >= keyword.len()
            && rest[..keyword.len()].eq_ignore_ascii_case(keyword)
            && rest[keyword.len()..].starts_with([' ', '(']);
        if matches {
            self.position += keyword.len();
        }
        matches
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while self.peek_keyword("or") {
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.factor()?;
        while self.peek_keyword("and") {
            left = Filter::And(Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }

    fn expect(&mut self, symbol: char) -> Result<(), FilterError> {
        self.skip_space();
        if self.text[self.position..].starts_with(symbol) {
            self.position += 1;
            Ok(())
        } else {
            Err(FilterError(format!("expected {symbol:?} in the filter at position {}", self.position)))
        }
    }

    fn factor(&mut self) -> Result<Filter, FilterError> {
        self.skip_space();
        if self.peek_keyword("not") {
            self.expect('(')?;
            let inner = self.or()?;
            self.expect(')')?;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if self.text[self.position..].starts_with('(') {
            self.position += 1;
            let inner = self.or()?;
            self.expect(')')?;
            return Ok(inner);
        }
        let path_text = self.word().to_owned();
        if path_text.is_empty() {
            return Err(FilterError("the filter ends where an attribute was expected".into()));
        }
        let path = AttrPath::parse(&path_text)?;
        if self.text[self.position..].starts_with('[') {
            self.position += 1;
            let inner = self.or()?;
            self.expect(']')?;
            return Ok(Filter::ValuePath(path, Box::new(inner)));
        }
        let operator = self.word().to_ascii_lowercase();
        let op = match operator.as_str() {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "co" => Op::Co,
            "sw" => Op::Sw,
            "ew" => Op::Ew,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            "pr" => return Ok(Filter::Compare(path, Op::Pr, Value::Null)),
            other => return Err(FilterError(format!("unknown operator {other:?} in the filter"))),
        };
        Ok(Filter::Compare(path, op, self.value()?))
    }

    fn value(&mut self) -> Result<Value, FilterError> {
        self.skip_space();
        let rest = &self.text[self.position..];
        if rest.starts_with('"') {
            // A JSON string: find its end, honouring escapes.
            let mut escaped = false;
            for (index, character) in rest.char_indices().skip(1) {
                match character {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        let literal = &rest[..=index];
                        self.position += index + 1;
                        return serde_json::from_str(literal)
                            .map_err(|_| FilterError(format!("bad string {literal} in the filter")));
                    }
                    _ => escaped = false,
                }
            }
            return Err(FilterError("a string in the filter is not closed".into()));
        }
        let word = self.word();
        match word.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            "null" => Ok(Value::Null),
            _ => serde_json::from_str::<serde_json::Number>(word)
                .map(Value::Number)
                .map_err(|_| FilterError(format!("bad value {word:?} in the filter (strings need double quotes)"))),
        }
    }
}

/// A PATCH path: an attribute, optionally narrowed to matching elements, optionally a
/// sub-attribute of them (`members[value eq "id"]`, `emails[type eq "work"].value`).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    pub attribute: AttrPath,
    pub filter: Option<Filter>,
    /// The sub-attribute after a filter (`.value`).
    pub sub: Option<String>,
}

impl PatchPath {
    pub fn parse(text: &str) -> Result<PatchPath, FilterError> {
        let Some(open) = text.find('[') else {
            return Ok(PatchPath { attribute: AttrPath::parse(text)?, filter: None, sub: None });
        };
        let close = text.rfind(']').ok_or_else(|| FilterError(format!("unclosed '[' in path {text:?}")))?;
        let attribute = AttrPath::parse(&text[..open])?;
        let filter = Filter::parse(&text[open + 1..close])?;
        let sub = match text[close + 1..].strip_prefix('.') {
            Some(sub) if !sub.is_empty() => Some(sub.to_owned()),
            None if text[close + 1..].is_empty() => None,
            _ => return Err(FilterError(format!("bad path {text:?}"))),
        };
        Ok(PatchPath { attribute, filter: Some(filter), sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_match_the_way_identity_providers_use_them() {
        let user = json!({
            "userName": "Ann@Example.com", "externalId": "00u1", "active": true,
            "name": {"givenName": "Ann"}, "emails": [{"value": "ann@example.com", "type": "work", "primary": true}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Finance"}
        });
        let check = |filter: &str, expected: bool| {
            let parsed = Filter::parse(filter).unwrap_or_else(|error| panic!("{filter}: {error}"));
            assert_eq!(parsed.matches(&user), expected, "{filter}");
        };
        check(r#"userName eq "ann@example.com""#, true);
        check(r#"USERNAME Eq "ANN@EXAMPLE.COM""#, true);
        check(r#"externalId eq "00U1""#, false);
        check(r#"externalId eq "00u1""#, true);
        check(r#"name.givenName sw "A" and active eq true"#, true);
        check(r#"emails[type eq "work" and value co "example"]"#, true);
        check(r#"emails.value eq "ann@example.com""#, true);
        check(r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "finance""#, true);
        check(r#"urn:ietf:params:scim:schemas:core:2.0:User:userName pr"#, true);
        check(r#"title pr or not (active eq false)"#, true);
        check(r#"displayName eq "x""#, false);
        for bad in ["userName", r#"userName zz "a""#, r#"userName eq "a"#, "userName eq a", "(userName pr"] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patch_paths() {
        let path = PatchPath::parse(r#"members[value eq "u1"]"#).unwrap();
        assert_eq!(path.attribute.name, "members");
        assert!(path.filter.is_some() && path.sub.is_none());
        let path = PatchPath::parse(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(path.sub.as_deref(), Some("value"));
        let path = PatchPath::parse("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department").unwrap();
        assert_eq!(
            path.attribute.schema.as_deref(),
            Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
        );
        assert_eq!(path.attribute.name, "department");
        assert!(PatchPath::parse("members[value eq").is_err());
    }
}
