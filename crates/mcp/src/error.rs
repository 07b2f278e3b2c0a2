//! The JSON-RPC error codes the gateway answers with. The numbers are part of the public
//! interface: clients and scripts match on them, so a code never changes meaning.

use serde_json::{Value, json};

/// A stable JSON-RPC error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body is not JSON, or has a duplicate key.
    ParseError,
    /// The JSON is not a valid JSON-RPC message (wrong types, missing fields, a batch where the
    /// protocol version does not allow one).
    InvalidRequest,
    /// The method does not exist (for this server or this protocol version).
    MethodNotFound,
    /// The parameters are wrong.
    InvalidParams,
    /// Something failed inside the gateway; details are in its log, not in the answer.
    Internal,
    /// An `Mcp-Method` / `Mcp-Name` header disagrees with the body.
    HeaderMismatch,
    /// The caller is not allowed to do this. The message says which rule decided.
    AccessDenied,
    /// The upstream server could not be reached or failed.
    UpstreamUnavailable,
    /// The upstream server did not answer in time.
    UpstreamTimeout,
    /// The upstream server answered with something that is not MCP.
    UpstreamInvalid,
    /// The session is unknown, expired or belongs to someone else.
    SessionNotFound,
    /// The protocol version is not one the gateway speaks.
    UnsupportedVersion,
    /// The server acts with the caller's own account there, which is not connected (or must
    /// be connected again); the message says where to connect it.
    UpstreamAuthorizationRequired,
}

impl ErrorCode {
    /// The number sent on the wire.
    pub fn code(self) -> i64 {
        match self {
            ErrorCode::ParseError => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::Internal => -32603,
            ErrorCode::HeaderMismatch => -32020,
            ErrorCode::AccessDenied => -32030,
            ErrorCode::UpstreamUnavailable => -32031,
            ErrorCode::UpstreamTimeout => -32032,
            ErrorCode::UpstreamInvalid => -32033,
            ErrorCode::SessionNotFound => -32035,
            ErrorCode::UnsupportedVersion => -32036,
            ErrorCode::UpstreamAuthorizationRequired => -32037,
        }
    }

    /// A short machine-readable name, put in `error.data.reason_code`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::ParseError => "parse_error",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::MethodNotFound => "method_not_found",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::Internal => "internal_error",
            ErrorCode::HeaderMismatch => "header_mismatch",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamInvalid => "upstream_invalid",
            ErrorCode::SessionNotFound => "session_not_found",
            ErrorCode::UnsupportedVersion => "unsupported_protocol_version",
            ErrorCode::UpstreamAuthorizationRequired => "upstream_authorization_required",
        }
    }
}

/// A complete JSON-RPC error response. `id` is `null` when the request's id could not be read.
pub fn error_response(id: Option<&Value>, code: ErrorCode, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": {
            "code": code.code(),
            "message": message,
            "data": { "reason_code": code.name() },
        }
    })
}
