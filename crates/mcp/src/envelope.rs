//! One JSON-RPC message, classified. The parsed [`Value`] is kept whole so the gateway can
//! forward exactly what it checked.

use crate::error::ErrorCode;
use crate::json::{JsonError, parse_strict};
use serde_json::Value;
use std::fmt;

/// A JSON-RPC request id: a string or an integer (MCP forbids `null`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    Number(i64),
    String(String),
}

impl Id {
    fn from_value(value: &Value) -> Option<Id> {
        match value {
            Value::String(text) => Some(Id::String(text.clone())),
            Value::Number(number) => number.as_i64().map(Id::Number),
            _ => None,
        }
    }

    pub fn to_value(&self) -> Value {
        match self {
            Id::Number(number) => Value::from(*number),
            Id::String(text) => Value::String(text.clone()),
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Number(number) => write!(formatter, "{number}"),
            Id::String(text) => write!(formatter, "{text:?}"),
        }
    }
}

/// What kind of JSON-RPC message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Notification,
    /// A `result` or an `error` answering an earlier request.
    Response,
}

/// A parsed, validated JSON-RPC 2.0 message.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: MessageKind,
    /// Set for requests and responses.
    pub id: Option<Id>,
    /// Set for requests and notifications.
    pub method: Option<String>,
    /// The whole message as parsed.
    pub value: Value,
}

/// Why a message was rejected, with the JSON-RPC code to answer with.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EnvelopeError {
    pub code: ErrorCode,
    pub message: String,
    /// The id of the offending request, when it could be read, so the error can answer it.
    pub id: Option<Value>,
}

impl EnvelopeError {
    fn new(code: ErrorCode, message: impl Into<String>, id: Option<Value>) -> EnvelopeError {
        EnvelopeError { code, message: message.into(), id }
    }
}

/// The body of an HTTP POST: one message or, where the version allows, a batch.
#[derive(Debug)]
pub enum Body {
    Single(Message),
    Batch(Vec<Message>),
}

impl Body {
    /// Parse a POST body strictly.
    pub fn parse(bytes: &[u8]) -> Result<Body, EnvelopeError> {
        let value = parse_strict(bytes).map_err(|error| {
            let message = match error {
                JsonError::Syntax(_) => format!("{error}; send one JSON-RPC 2.0 message"),
                JsonError::DuplicateKey(_) => error.to_string(),
            };
            EnvelopeError::new(ErrorCode::ParseError, message, None)
        })?;
        match value {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(EnvelopeError::new(
                        ErrorCode::InvalidRequest,
                        "an empty JSON array is not a JSON-RPC batch; send at least one message",
                        None,
                    ));
                }
                items.into_iter().map(Message::from_value).collect::<Result<_, _>>().map(Body::Batch)
            }
            value => Message::from_value(value).map(Body::Single),
        }
    }
}

impl Message {
    /// Parse exactly one message (a batch is an error here).
    pub fn parse(bytes: &[u8]) -> Result<Message, EnvelopeError> {
        match Body::parse(bytes)? {
            Body::Single(message) => Ok(message),
            Body::Batch(_) => Err(EnvelopeError::new(
                ErrorCode::InvalidRequest,
                "JSON-RPC batches are not accepted here; send one message per request",
                None,
            )),
        }
    }

    /// Validate an already parsed value as a JSON-RPC 2.0 message.
    pub fn from_value(value: Value) -> Result<Message, EnvelopeError> {
        let Value::Object(object) = &value else {
            return Err(EnvelopeError::new(
                ErrorCode::InvalidRequest,
                "a JSON-RPC message must be a JSON object",
                None,
            ));
        };
        let raw_id = object.get("id").cloned();
        let invalid = |message: String| EnvelopeError::new(ErrorCode::InvalidRequest, message, raw_id.clone());
        match object.get("jsonrpc") {
            Some(Value::String(version)) if version == "2.0" => {}
            Some(other) => return Err(invalid(format!("\"jsonrpc\" must be \"2.0\", not {other}"))),
            None => return Err(invalid("the message has no \"jsonrpc\": \"2.0\" member".into())),
        }
        let id = match object.get("id") {
            None => None,
            Some(raw) => Some(
                Id::from_value(raw)
                    .ok_or_else(|| invalid(format!("\"id\" must be a string or an integer, not {raw}")))?,
            ),
        };
        if let Some(method) = object.get("method") {
            let Value::String(method) = method else {
                return Err(invalid(format!("\"method\" must be a string, not {method}")));
            };
            if object.contains_key("result") || object.contains_key("error") {
                return Err(invalid("a request cannot also carry \"result\" or \"error\"".into()));
            }
            match object.get("params") {
                None | Some(Value::Object(_)) => {}
                Some(other) => {
                    return Err(invalid(format!("\"params\" must be a JSON object in MCP, not {}", type_name(other))));
                }
            }
            let kind = if id.is_some() { MessageKind::Request } else { MessageKind::Notification };
            let method = Some(method.clone());
            return Ok(Message { kind, id, method, value });
        }
        let has_result = object.contains_key("result");
        let has_error = object.contains_key("error");
        if has_result == has_error {
            return Err(invalid(
                "the message has neither a \"method\" (request) nor exactly one of \"result\" and \"error\" (response)"
                    .into(),
            ));
        }
        if id.is_none() {
            return Err(invalid("a response must carry the \"id\" of the request it answers".into()));
        }
        Ok(Message { kind: MessageKind::Response, id, method: None, value })
    }

    /// `params` as an object, if present.
    pub fn params(&self) -> Option<&serde_json::Map<String, Value>> {
        self.value.get("params").and_then(Value::as_object)
    }

    /// A string member of `params`, such as `name` for `tools/call` or `uri` for `resources/read`.
    pub fn param_str(&self, key: &str) -> Option<&str> {
        self.params().and_then(|params| params.get(key)).and_then(Value::as_str)
    }

    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }

    /// The `progressToken` the client put in `params._meta`, if any.
    pub fn progress_token(&self) -> Option<&Value> {
        self.params()?.get("_meta")?.get("progressToken")
    }

    /// Serialise the (possibly modified) message.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.value).unwrap_or_default()
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let actual = match Body::parse(input.as_bytes()) {
            Ok(Body::Single(message)) => {
                format!("{:?} id={:?} method={:?}", message.kind, message.id, message.method)
            }
            Ok(Body::Batch(messages)) => format!("batch of {}", messages.len()),
            Err(error) => format!("{} {}", error.code.code(), error.message),
        };
        assert_eq!(actual, expected, "input: {input}");
    }

    #[test]
    fn classification() {
        check(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"Request id=Some(Number(1)) method=Some("tools/list")"#,
        );
        check(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"Notification id=None method=Some("notifications/initialized")"#,
        );
        check(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#, r#"Response id=Some(String("a")) method=None"#);
        check(r#"[{"jsonrpc":"2.0","method":"x"},{"jsonrpc":"2.0","method":"y"}]"#, "batch of 2");
        check(r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#, r#"-32600 "jsonrpc" must be "2.0", not "1.0""#);
        check(r#"{"id":1,"method":"x"}"#, r#"-32600 the message has no "jsonrpc": "2.0" member"#);
        check(r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#, r#"-32600 "id" must be a string or an integer, not null"#);
        check(r#"{"jsonrpc":"2.0","id":1,"method":7}"#, r#"-32600 "method" must be a string, not 7"#);
        check(
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#,
            r#"-32600 "params" must be a JSON object in MCP, not an array"#,
        );
        check(
            r#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#,
            r#"-32700 the JSON object has the key "method" more than once; send each key once"#,
        );
        check("[]", "-32600 an empty JSON array is not a JSON-RPC batch; send at least one message");
        check("7", "-32600 a JSON-RPC message must be a JSON object");
        check(r#"{"jsonrpc":"2.0","result":{}}"#, r#"-32600 a response must carry the "id" of the request it answers"#);
    }
}
