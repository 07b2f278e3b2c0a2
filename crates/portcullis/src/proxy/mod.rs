//! The data plane: the endpoints MCP clients talk to.
//!
//! Every message takes the same path, whatever the front: edge checks (in the router) →
//! authenticate → find the server → parse strictly → resolve the session → authorise
//! ([`methods::intent`] + the one policy function) → audit (durably before a `tools/call`
//! goes anywhere) → forward what was checked → relay the answer, filtering lists → record the
//! outcome. That path is `handle` → `request` → `relay` in this file.
//!
//! - this file: the Streamable HTTP front `/mcp/{server}` (POST, GET, DELETE) and the path.
//! - [`aggregate`]: `/mcp`, every permitted server behind one session.
//! - [`legacy`]: `/sse/{server}`, the HTTP+SSE front of protocol 2024-11-05.
//! - [`stateless`]: protocol 2026-07-28 (`server/discover`, no session).
//! - [`forward`]: requests for sessions whose state lives in another replica.
//! - [`session`]: the sealed `Mcp-Session-Id`.
//! - [`methods`]: per-method authorization intent and list filtering.

// Handlers return finished `Response`s as their error value: that is the answer to send.
#![allow(clippy::result_large_err)]

pub mod aggregate;
pub mod forward;
pub mod legacy;
pub mod methods;
pub mod session;
pub mod stateless;

use crate::access::{self, Ask, Origin, OwnedOrigin};
use crate::app::AppState;
use crate::audit::{AuditEvent, Completion};
use crate::auth::{self, Caller};
use crate::edge;
use crate::snapshot::{ServerEntry, Snapshot};
use crate::store::now_ms;
use crate::upstream::{Attachment, Replies, UpstreamError, response_id};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use mcp::envelope::{Body as RpcBody, EnvelopeError};
use mcp::error::error_response;
use mcp::{ErrorCode, Message, MessageKind, ProtocolVersion, sse};
use serde_json::{Value, json};
use session::SessionState;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::time::timeout_at;

const SESSION_HEADER: &str = "mcp-session-id";

/// Everything known about one HTTP exchange once the caller and server are known.
struct Exchange {
    state: AppState,
    snapshot: Arc<Snapshot>,
    caller: Caller,
    entry: Arc<ServerEntry>,
    ip: String,
    user_agent: Option<HeaderValue>,
    correlation_id: String,
    started: Instant,
    accepts_sse: bool,
    /// The session the request's header names, opened once when the request arrived.
    opened: Option<Arc<SessionState>>,
}

/// What to send back for one message.
enum Answer {
    /// 202: a notification or a response was passed on.
    Accepted,
    /// One JSON-RPC message, with an HTTP status and, after `initialize`, the new session.
    Json(StatusCode, Value, Option<Box<SessionState>>),
    /// The upstream's messages, relayed as they come; the last one is the response.
    Stream(mpsc::Receiver<Value>),
    /// The upstream's response, relayed byte for byte (answers that nothing filters).
    Raw(Bytes),
}

impl Answer {
    /// This answer with a response relayed byte for byte read into a value, for callers that
    /// change or collect it.
    fn json(self) -> Answer {
        match self {
            Answer::Raw(bytes) => {
                let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                Answer::Json(StatusCode::OK, value, None)
            }
            other => other,
        }
    }
}

impl Exchange {
    fn server(&self) -> &str {
        &self.entry.server.name
    }

    /// Where the request comes from, for rule conditions; `client` is the MCP client's name
    /// and version (from the session, or from `initialize` itself).
    fn origin<'a>(&'a self, client: Option<&'a (String, String)>) -> Origin<'a> {
        Origin {
            ip: Some(&self.ip),
            user_agent: self.user_agent.as_ref().and_then(|value| value.to_str().ok()),
            client: client.map(|(name, version)| (name.as_str(), version.as_str())),
        }
    }

    /// Decide `ask` for this request's caller.
    fn decide(&self, client: Option<&(String, String)>, ask: &Ask<'_>) -> policy::Decision {
        let decision = access::decide(&self.snapshot, &self.caller, &self.origin(client), ask);
        self.state.metrics.decision(decision.is_allowed());
        decision
    }

    /// May the caller use this server at all (open a session, list, stream)?
    fn connect_decision(&self, client: Option<&(String, String)>) -> policy::Decision {
        self.decide(client, &Ask::connect(self.server()))
    }

    /// The audit event of a decided request.
    fn decided_event(&self, method: &str, decision: &policy::Decision, outcome: &str) -> AuditEvent {
        self.decided_event_from(method, decision.clone(), outcome)
    }

    /// [`Exchange::decided_event`], keeping the decision's reason and rules rather than copying them.
    fn decided_event_from(&self, method: &str, decision: policy::Decision, outcome: &str) -> AuditEvent {
        let mut event =
            self.event(method, if decision.is_allowed() { "allow" } else { "deny" }, decision.reason, outcome);
        event.rules = decision.matched_rules;
        event
    }

    fn event(&self, method: &str, decision: &'static str, reason: String, outcome: &str) -> AuditEvent {
        AuditEvent {
            id: crate::crypto::unique_id(),
            ts: now_ms(),
            user_id: self.caller.user_id().map(str::to_owned),
            principal: self.caller.label().to_owned(),
            server: Some(self.server().to_owned()),
            method: method.to_owned(),
            target: None,
            sealed_arguments: None,
            arguments_digest: None,
            decision,
            reason,
            outcome: outcome.to_owned(),
            error: None,
            latency_us: None,
            client_name: None,
            client_version: None,
            ip: Some(self.ip.clone()),
            correlation_id: self.correlation_id.clone(),
            replica: self.state.replica.to_string(),
            rules: Vec::new(),
            detail: None,
        }
    }

    fn latency_us(&self) -> i64 {
        self.started.elapsed().as_micros() as i64
    }
}

/// `POST /mcp/{server}`: one JSON-RPC message (or a batch, where the version allows).
pub async fn post(
    State(state): State<AppState>,
    Path(server): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let opened = forward::opened_session(&state, &headers);
    if let Some(owner) = opened.as_ref().and_then(|session| forward::owner_elsewhere(&state, &headers, session)) {
        let path = format!("/mcp/{server}");
        return forward::forward(&state, &owner, axum::http::Method::POST, &path, &headers, body).await;
    }
    let mut exchange = match begin(&state, &server, peer, &headers) {
        Ok(exchange) => exchange,
        Err(response) => return response,
    };
    exchange.opened = opened;
    let header_version = match header_version(&headers) {
        Ok(version) => version,
        Err(response) => return response,
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/json") {
        let message = "the body must be a JSON-RPC message sent with Content-Type: application/json";
        return invalid(
            &exchange,
            "(unparsed)",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            ErrorCode::InvalidRequest,
            message,
        );
    }
    let parsed = match RpcBody::parse(&body) {
        Ok(parsed) => parsed,
        Err(EnvelopeError { code, message, id }) => {
            return invalid(&exchange, "(unparsed)", StatusCode::BAD_REQUEST, id.as_ref(), code, &message);
        }
    };
    match parsed {
        RpcBody::Single(message) => {
            if let Err(response) = check_stateless_headers(&exchange, &headers, &message, header_version) {
                return response;
            }
            into_response(&state, handle(&exchange, SessionSource::Header(&headers), message, header_version).await)
        }
        RpcBody::Batch(messages) => {
            let version = header_version.unwrap_or(ProtocolVersion::ASSUMED_WITHOUT_HEADER);
            if !version.allows_batch() {
                let message = format!(
                    "JSON-RPC batches were removed in protocol version 2025-06-18 and this request uses {version}; \
                     send one message per request"
                );
                return invalid(
                    &exchange,
                    "(batch)",
                    StatusCode::BAD_REQUEST,
                    None,
                    ErrorCode::InvalidRequest,
                    &message,
                );
            }
            let mut exchange = exchange;
            exchange.accepts_sse = false;
            let mut answers = Vec::new();
            let mut new_session = None;
            for message in messages {
                match handle(&exchange, SessionSource::Header(&headers), message, header_version).await.json() {
                    Answer::Json(_, value, session) => {
                        answers.push(value);
                        new_session = new_session.or(session);
                    }
                    Answer::Accepted | Answer::Stream(_) | Answer::Raw(_) => {}
                }
            }
            if answers.is_empty() {
                return StatusCode::ACCEPTED.into_response();
            }
            let header = new_session.map(|session| session.seal(&state.keys.session));
            json_response(StatusCode::OK, &Value::Array(answers), header.as_deref())
        }
    }
}

/// Authenticate and find the server; the error is the finished response.
fn begin(state: &AppState, server: &str, peer: SocketAddr, headers: &HeaderMap) -> Result<Exchange, Response> {
    let identified = identify(state, server, peer, headers)?;
    let entry = match identified.snapshot.servers.get(server) {
        Some(entry) => entry.clone(),
        // Without credentials, do not reveal which servers exist.
        None if matches!(identified.caller, Caller::Anonymous) => {
            let text = "this endpoint needs an API key: send \"Authorization: Bearer <key>\"";
            return Err(unauthorized(state, headers, server, text));
        }
        None => {
            let value = error_response(
                None,
                ErrorCode::InvalidRequest,
                &format!("there is no server named {server:?}; GET /api/v1/servers lists the servers you can use"),
            );
            return Err(json_response(StatusCode::NOT_FOUND, &value, None));
        }
    };
    if matches!(identified.caller, Caller::Anonymous) && !entry.server.public {
        let text = "this server needs an API key: send \"Authorization: Bearer <key>\"";
        return Err(unauthorized(state, headers, server, text));
    }
    Ok(identified.exchange(entry))
}

/// The caller of a request, before a server is chosen.
struct Identified {
    state: AppState,
    snapshot: Arc<Snapshot>,
    caller: Caller,
    ip: String,
    user_agent: Option<HeaderValue>,
    correlation_id: String,
    started: Instant,
    accepts_sse: bool,
}

impl Identified {
    /// Where the request comes from, for rules that outlive it.
    fn owned_origin(&self, client: Option<&(String, String)>) -> OwnedOrigin {
        OwnedOrigin {
            ip: Some(self.ip.clone()),
            user_agent: self.user_agent.as_ref().and_then(|value| value.to_str().ok()).map(str::to_owned),
            client: client.cloned(),
        }
    }

    fn exchange(&self, entry: Arc<ServerEntry>) -> Exchange {
        // A server with per-user OAuth acts as the caller: their token goes upstream.
        let entry = match (&entry.server.oauth, self.caller.user()) {
            (Some(_), Some(user)) => Arc::new(entry.for_user(&user.id)),
            _ => entry,
        };
        Exchange {
            state: self.state.clone(),
            snapshot: self.snapshot.clone(),
            caller: self.caller.clone(),
            entry,
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
            correlation_id: self.correlation_id.clone(),
            started: self.started,
            accepts_sse: self.accepts_sse,
            opened: None,
        }
    }
}

/// Authenticate the caller against the current snapshot; `label` names the endpoint in the
/// audit event of a failed authentication.
fn identify(state: &AppState, label: &str, peer: SocketAddr, headers: &HeaderMap) -> Result<Identified, Response> {
    let started = Instant::now();
    let ip = edge::client_ip(peer, headers, &state.config.trusted_proxies).to_string();
    let correlation_id = crate::crypto::unique_id();
    let snapshot = state.snapshot.current().map_err(|stale| {
        tracing::error!(%stale, "refusing data-plane traffic");
        plain_error(StatusCode::SERVICE_UNAVAILABLE, "the gateway cannot reach its policy store; try again shortly")
    })?;
    let caller = match auth::authenticate(&snapshot, headers, Some(&resource_path(label)), &state.key_use) {
        Ok(caller) => caller,
        Err(error) => {
            state.metrics.request("auth", "unauthenticated");
            state.audit.record(AuditEvent {
                id: crate::crypto::unique_id(),
                ts: now_ms(),
                user_id: None,
                principal: "unauthenticated".into(),
                server: Some(label.to_owned()),
                method: "(authentication)".into(),
                target: None,
                sealed_arguments: None,
                arguments_digest: None,
                decision: "deny",
                reason: error.to_string(),
                outcome: "unauthenticated".into(),
                error: None,
                latency_us: Some(started.elapsed().as_micros() as i64),
                client_name: None,
                client_version: None,
                ip: Some(ip),
                correlation_id,
                replica: state.replica.to_string(),
                rules: Vec::new(),
                detail: None,
            });
            return Err(unauthorized(state, headers, label, &error.to_string()));
        }
    };
    let accepts_sse = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("text/event-stream") || value.contains("*/*"));
    let user_agent = headers.get(header::USER_AGENT).cloned();
    Ok(Identified { state: state.clone(), snapshot, caller, ip, user_agent, correlation_id, started, accepts_sse })
}

fn header_version(headers: &HeaderMap) -> Result<Option<ProtocolVersion>, Response> {
    let Some(value) = headers.get("mcp-protocol-version") else { return Ok(None) };
    let text = value.to_str().unwrap_or("");
    match ProtocolVersion::parse(text) {
        Some(version) => Ok(Some(version)),
        None => {
            let message = format!(
                "MCP-Protocol-Version {text:?} is not supported; this gateway speaks {}",
                ProtocolVersion::list()
            );
            let value = error_response(None, ErrorCode::UnsupportedVersion, &message);
            Err(json_response(StatusCode::BAD_REQUEST, &value, None))
        }
    }
}

/// In the stateless era, `Mcp-Method` and `Mcp-Name` headers must agree with the body; a
/// gateway that let them differ could be made to route on one name and call another.
fn check_stateless_headers(
    exchange: &Exchange,
    headers: &HeaderMap,
    message: &Message,
    version: Option<ProtocolVersion>,
) -> Result<(), Response> {
    let method_header = headers.get("mcp-method").map(|value| value.to_str().unwrap_or("\u{0}"));
    let name_header = headers.get("mcp-name").map(|value| value.to_str().unwrap_or("\u{0}"));
    let id = message.id.as_ref().map(mcp::Id::to_value);
    let mismatch = |text: String| {
        invalid(exchange, message.method(), StatusCode::BAD_REQUEST, id.as_ref(), ErrorCode::HeaderMismatch, &text)
    };
    if version.is_some_and(ProtocolVersion::is_stateless)
        && method_header.is_none()
        && message.kind != MessageKind::Response
    {
        return Err(mismatch("protocol version 2026-07-28 requires an Mcp-Method header naming the method".into()));
    }
    if let Some(method_header) = method_header
        && message.kind != MessageKind::Response
        && method_header != message.method()
    {
        return Err(mismatch(format!(
            "the Mcp-Method header ({method_header:?}) does not match the body's method ({:?})",
            message.method()
        )));
    }
    if let Some(name_header) = name_header {
        let body_name = message.param_str("name").or_else(|| message.param_str("uri"));
        if body_name != Some(name_header) {
            return Err(mismatch(format!(
                "the Mcp-Name header ({name_header:?}) does not match the body's name ({:?})",
                body_name.unwrap_or("")
            )));
        }
    }
    Ok(())
}

/// Where the session of a message comes from.
enum SessionSource<'a> {
    /// The sealed `Mcp-Session-Id` header (Streamable HTTP).
    Header(&'a HeaderMap),
    /// Already known (legacy SSE sessions live in this process).
    Known(Option<SessionState>),
}

/// Handle one message of a POST.
async fn handle(
    exchange: &Exchange,
    source: SessionSource<'_>,
    message: Message,
    header_version: Option<ProtocolVersion>,
) -> Answer {
    let method = message.method().to_owned();
    if message.kind == MessageKind::Request && method == "initialize" {
        return initialize(exchange, message).await;
    }
    let stateless = stateless::is_stateless(&message, header_version);
    if message.kind == MessageKind::Request && method == "server/discover" {
        let id = message.id.as_ref().map(mcp::Id::to_value);
        if !stateless {
            let value = error_response(
                id.as_ref(),
                ErrorCode::MethodNotFound,
                "server/discover belongs to protocol 2026-07-28; send it with MCP-Protocol-Version: 2026-07-28, or initialize",
            );
            record_simple(exchange, &method, "none", "discovery outside the stateless era", "invalid", None);
            return Answer::Json(StatusCode::BAD_REQUEST, value, None);
        }
        let decision = exchange.connect_decision(None);
        if !decision.is_allowed() {
            record_decided(exchange, &method, &decision, "denied", None);
            let text = format!("access denied: {}", decision.reason);
            return Answer::Json(StatusCode::OK, error_response(id.as_ref(), ErrorCode::AccessDenied, &text), None);
        }
        return match exchange.state.stateless.session_for(exchange, &message).await {
            Ok((_, upstream)) => {
                record_decided(exchange, &method, &decision, "ok", None);
                Answer::Json(StatusCode::OK, stateless::discover_result(id.as_ref(), &upstream), None)
            }
            Err(answer) => answer,
        };
    }
    let id = message.id.as_ref().map(mcp::Id::to_value);
    let resolved = match source {
        SessionSource::Header(headers) if stateless && !headers.contains_key(SESSION_HEADER) => {
            match exchange.state.stateless.session_for(exchange, &message).await {
                Ok((session, _)) => Ok(Arc::new(session)),
                Err(answer) => return answer,
            }
        }
        SessionSource::Header(headers) => resolve_session(exchange, headers),
        SessionSource::Known(Some(session)) => Ok(Arc::new(session)),
        SessionSource::Known(None) => {
            Err((StatusCode::BAD_REQUEST, "the session is not initialized: send initialize first".to_owned()))
        }
    };
    let session = match resolved {
        Ok(session) => session,
        Err((status, text)) => {
            record_simple(exchange, &method, "none", &text, "invalid", None);
            return Answer::Json(status, error_response(id.as_ref(), ErrorCode::SessionNotFound, &text), None);
        }
    };
    // A stateless client talks to an upstream session of the gateway's, in that session's version.
    let version = if stateless {
        session.protocol_version()
    } else {
        header_version.unwrap_or_else(|| session.protocol_version())
    };
    match message.kind {
        MessageKind::Request if stateless => match request(exchange, &session, version, message).await.json() {
            Answer::Json(status, mut value, opened) => {
                if status == StatusCode::NOT_FOUND {
                    exchange.state.stateless.forget(exchange).await;
                }
                stateless::mark_complete(&mut value, &method);
                Answer::Json(status, value, opened)
            }
            Answer::Stream(mut receiver) => {
                let (sender, marked) = mpsc::channel(32);
                tokio::spawn(async move {
                    while let Some(mut value) = receiver.recv().await {
                        stateless::mark_complete(&mut value, &method);
                        if sender.send(value).await.is_err() {
                            return;
                        }
                    }
                });
                Answer::Stream(marked)
            }
            other => other,
        },
        MessageKind::Request => request(exchange, &session, version, message).await,
        MessageKind::Notification | MessageKind::Response => {
            // Notifications and answers to the server's own requests carry no new intent
            // beyond the session, which was authorised when it was opened and is re-checked here.
            let decision = exchange.connect_decision(session.client.as_ref());
            if !decision.is_allowed() {
                record_decided(exchange, &method_label(&message), &decision, "denied", Some(&session));
                return Answer::Accepted;
            }
            let result = exchange.state.upstreams.send(&exchange.entry, &session.attachment, version, &message).await;
            let (outcome, error) = match &result {
                Ok(()) => ("ok", None),
                Err(error) => (outcome_of_error(error), Some(error.to_string())),
            };
            let mut event = exchange.decided_event(&method_label(&message), &decision, outcome);
            event.error = error;
            fill_client(&mut event, Some(&session));
            event.latency_us = Some(exchange.latency_us());
            exchange.state.audit.record(event);
            match result {
                Err(UpstreamError::SessionGone) => Answer::Json(
                    StatusCode::NOT_FOUND,
                    error_response(None, ErrorCode::SessionNotFound, "the session has ended; initialize a new one"),
                    None,
                ),
                _ => Answer::Accepted,
            }
        }
    }
}

fn method_label(message: &Message) -> String {
    match message.kind {
        MessageKind::Response => "(response)".to_owned(),
        _ => message.method().to_owned(),
    }
}

/// Open the sealed session, and check it belongs to this caller and server.
fn resolve_session(exchange: &Exchange, headers: &HeaderMap) -> Result<Arc<SessionState>, (StatusCode, String)> {
    let Some(header) = headers.get(SESSION_HEADER).and_then(|value| value.to_str().ok()) else {
        return Err((StatusCode::BAD_REQUEST, "the Mcp-Session-Id header is missing: send initialize first".into()));
    };
    let not_found =
        || (StatusCode::NOT_FOUND, "the session is unknown or has ended; initialize a new session".to_owned());
    let session = match &exchange.opened {
        Some(opened) => opened.clone(),
        None => exchange.state.sessions.open(&exchange.state.keys.session, header).ok_or_else(not_found)?,
    };
    if session.server != exchange.server() || session.user_id.as_deref() != exchange.caller.user_id() {
        return Err(not_found());
    }
    Ok(session)
}

fn fill_client(event: &mut AuditEvent, session: Option<&SessionState>) {
    if let Some((name, version)) = session.and_then(|session| session.client.clone()) {
        event.client_name = Some(name);
        event.client_version = Some(version);
    }
}

/// Record a request answered by its decision alone.
fn record_decided(
    exchange: &Exchange,
    method: &str,
    decision: &policy::Decision,
    outcome: &str,
    session: Option<&SessionState>,
) {
    let mut event = exchange.decided_event(method, decision, outcome);
    fill_client(&mut event, session);
    event.latency_us = Some(exchange.latency_us());
    exchange.state.metrics.request(method, outcome);
    exchange.state.audit.record(event);
}

fn record_simple(
    exchange: &Exchange,
    method: &str,
    decision: &'static str,
    reason: &str,
    outcome: &str,
    session: Option<&SessionState>,
) {
    let mut event = exchange.event(method, decision, reason.to_owned(), outcome);
    fill_client(&mut event, session);
    event.latency_us = Some(exchange.latency_us());
    exchange.state.metrics.request(method, outcome);
    exchange.state.audit.record(event);
}

/// The client's name and version from an `initialize` (at most 128 characters each).
fn client_info(message: &Message) -> Option<(String, String)> {
    let info = message.params().and_then(|params| params.get("clientInfo"))?;
    let text = |key: &str| info.get(key).and_then(Value::as_str).unwrap_or("").chars().take(128).collect::<String>();
    Some((text("name"), text("version")))
}

/// `initialize`: authorise the connection, open the upstream session, seal it.
async fn initialize(exchange: &Exchange, message: Message) -> Answer {
    let id = message.id.as_ref().map(mcp::Id::to_value);
    let client = client_info(&message);
    let requested = message.param_str("protocolVersion").unwrap_or("").to_owned();
    let decision = exchange.connect_decision(client.as_ref());
    let mut event = exchange.decided_event("initialize", &decision, "pending");
    if let Some((name, version)) = &client {
        event.client_name = Some(name.clone());
        event.client_version = Some(version.clone());
    }
    if !decision.is_allowed() {
        event.outcome = "denied".into();
        event.latency_us = Some(exchange.latency_us());
        exchange.state.metrics.request("initialize", "denied");
        exchange.state.audit.record(event);
        let value =
            error_response(id.as_ref(), ErrorCode::AccessDenied, &format!("access denied: {}", decision.reason));
        return Answer::Json(StatusCode::OK, value, None);
    }
    let deadline = tokio::time::Instant::now() + exchange.state.config.upstream_timeout;
    let opened = match timeout_at(deadline, exchange.state.upstreams.open(&exchange.entry, &message)).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::Timeout),
    };
    let (attachment, mut replies) = match opened {
        Ok(opened) => opened,
        Err(error) => return upstream_failure(exchange, event, id.as_ref(), &error),
    };
    // The initialize answer is small and needed whole (to learn the negotiated version).
    let answer = loop {
        match timeout_at(deadline, replies.recv()).await {
            Ok(Some(Ok(value))) if response_id(&value).is_some() => break Ok(value),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(error))) => break Err(error),
            Ok(None) => break Err(UpstreamError::Invalid("no answer to initialize".into())),
            Err(_) => break Err(UpstreamError::Timeout),
        }
    };
    let value = match answer {
        Ok(value) => value,
        Err(error) => {
            exchange.state.upstreams.close(&exchange.entry, &attachment, ProtocolVersion::LATEST_SESSION).await;
            return upstream_failure(exchange, event, id.as_ref(), &error);
        }
    };
    let negotiated = value
        .get("result")
        .and_then(|result| result.get("protocolVersion"))
        .and_then(Value::as_str)
        .and_then(ProtocolVersion::parse)
        .unwrap_or_else(|| ProtocolVersion::negotiate(&requested));
    let session = SessionState {
        server: exchange.server().to_owned(),
        user_id: exchange.caller.user_id().map(str::to_owned),
        version: negotiated.as_str().to_owned(),
        attachment,
        client,
        created_ms: now_ms(),
        members: Vec::new(),
    };
    let opened = value.get("result").is_some().then(|| Box::new(session));
    exchange.state.metrics.upstream_answered(exchange.server());
    let outcome = if value.get("error").is_some() { "error" } else { "ok" };
    event.outcome = outcome.into();
    event.latency_us = Some(exchange.latency_us());
    exchange.state.metrics.request("initialize", outcome);
    exchange.state.audit.record(event);
    Answer::Json(StatusCode::OK, value, opened)
}

fn outcome_of_error(error: &UpstreamError) -> &'static str {
    match error {
        UpstreamError::Timeout => "upstream_timeout",
        UpstreamError::Invalid(_) => "upstream_invalid",
        UpstreamError::SessionGone => "session_gone",
        UpstreamError::NeedsConnection(_) => "upstream_authorization_required",
        _ => "upstream_unavailable",
    }
}

fn error_code_of(error: &UpstreamError) -> ErrorCode {
    match error {
        UpstreamError::Timeout => ErrorCode::UpstreamTimeout,
        UpstreamError::Invalid(_) => ErrorCode::UpstreamInvalid,
        UpstreamError::SessionGone => ErrorCode::SessionNotFound,
        UpstreamError::NotSupported(_) => ErrorCode::MethodNotFound,
        UpstreamError::NeedsConnection(_) => ErrorCode::UpstreamAuthorizationRequired,
        _ => ErrorCode::UpstreamUnavailable,
    }
}

/// The upstream failed before answering: a JSON-RPC error for the client, the outcome for audit.
fn upstream_failure(exchange: &Exchange, mut event: AuditEvent, id: Option<&Value>, error: &UpstreamError) -> Answer {
    tracing::warn!(server = %exchange.server(), correlation_id = %exchange.correlation_id, %error, "upstream failure");
    let outcome = outcome_of_error(error);
    event.outcome = outcome.into();
    event.error = Some(error.to_string());
    event.latency_us = Some(exchange.latency_us());
    exchange.state.metrics.request(&event.method, outcome);
    exchange.state.metrics.upstream_error(exchange.server());
    exchange.state.audit.record(event);
    let status = if matches!(error, UpstreamError::SessionGone) { StatusCode::NOT_FOUND } else { StatusCode::OK };
    let text = format!("server {:?}: {error}", exchange.server());
    Answer::Json(status, error_response(id, error_code_of(error), &text), None)
}

/// Any request other than `initialize`.
async fn request(exchange: &Exchange, session: &SessionState, version: ProtocolVersion, message: Message) -> Answer {
    let method = message.method().to_owned();
    let id = message.id.as_ref().map(mcp::Id::to_value);
    let intent = match methods::intent(&message) {
        Ok(intent) => intent,
        Err((code, text)) => {
            record_simple(exchange, &method, "none", &text, "invalid", Some(session));
            return Answer::Json(StatusCode::OK, error_response(id.as_ref(), code, &text), None);
        }
    };
    let ask = Ask {
        server: exchange.server(),
        action: intent.action,
        name: intent.target.unwrap_or(""),
        payload: intent.arguments,
    };
    let decision = exchange.decide(session.client.as_ref(), &ask);
    let denial = (!decision.is_allowed()).then(|| format!("access denied: {}", decision.reason));
    let mut event = exchange.decided_event_from(&method, decision, "pending");
    event.target = intent.target.map(str::to_owned);
    fill_client(&mut event, Some(session));
    if let Some(arguments) = intent.arguments {
        let (sealed, digest) = exchange.state.audit.seal_arguments(arguments);
        event.sealed_arguments = Some(sealed);
        event.arguments_digest = Some(digest);
    }
    if let Some(text) = denial {
        event.outcome = "denied".into();
        event.latency_us = Some(exchange.latency_us());
        exchange.state.metrics.request(&method, "denied");
        exchange.state.audit.record(event);
        if method == "tools/call"
            && crate::pinning::never_offered(&exchange.snapshot, exchange.server(), ask.action, ask.name)
        {
            // A name the server never offered is answered as servers answer unknown tools:
            // a tool error, not an access problem the client should sign in again for.
            let text = format!("tool {:?} is not offered by server {}", ask.name, exchange.server());
            let value = json!({"jsonrpc": "2.0", "id": id, "result": {
                "content": [{"type": "text", "text": text}], "isError": true}});
            return Answer::Json(StatusCode::OK, value, None);
        }
        return Answer::Json(StatusCode::OK, error_response(id.as_ref(), ErrorCode::AccessDenied, &text), None);
    }
    // A call with an effect is on the record before it happens; if the record cannot be
    // written, the call does not happen.
    let durable = method == "tools/call";
    let mut event_seq = 0;
    // A durable event is handed over whole (its outcome follows as a completion); any other
    // is kept to be recorded with its outcome at the end.
    let event = if durable {
        match exchange.state.audit.record_durable(event).await {
            Ok(seq) => event_seq = seq,
            Err(_) => {
                exchange.state.metrics.request(&method, "audit_unavailable");
                let text = "the audit log cannot be written, so the call was not made; try again shortly";
                return Answer::Json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error_response(id.as_ref(), ErrorCode::Internal, text),
                    None,
                );
            }
        }
        None
    } else {
        Some(event)
    };
    let deadline = tokio::time::Instant::now() + exchange.state.config.upstream_timeout;
    let sent = match timeout_at(
        deadline,
        exchange.state.upstreams.request(&exchange.entry, &session.attachment, version, &message),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::Timeout),
    };
    let replies = match sent {
        Ok(replies) => replies,
        Err(error) => {
            let Some(event) = event else {
                exchange.state.audit.complete(Completion {
                    event: event_seq,
                    outcome: outcome_of_error(&error).into(),
                    error: Some(error.to_string()),
                    latency_us: Some(exchange.latency_us()),
                });
                exchange.state.metrics.request(&method, outcome_of_error(&error));
                exchange.state.metrics.upstream_error(exchange.server());
                let status =
                    if matches!(error, UpstreamError::SessionGone) { StatusCode::NOT_FOUND } else { StatusCode::OK };
                let text = format!("server {:?}: {error}", exchange.server());
                return Answer::Json(status, error_response(id.as_ref(), error_code_of(&error), &text), None);
            };
            return upstream_failure(exchange, event, id.as_ref(), &error);
        }
    };
    let finish = Finish {
        state: exchange.state.clone(),
        snapshot: exchange.snapshot.clone(),
        filter: methods::is_list(&method)
            .then(|| (exchange.caller.clone(), OwnedOrigin::of(&exchange.origin(session.client.as_ref())))),
        whole_tool_list: method == "tools/list" && message.params().is_none_or(|params| params.get("cursor").is_none()),
        entry: exchange.entry.clone(),
        attachment: session.attachment.clone(),
        version,
        method,
        started: exchange.started,
        event,
        event_seq,
    };
    relay(finish, replies, id.unwrap_or(Value::Null), deadline, exchange.accepts_sse).await
}

/// What is needed to finish a request once its answer is complete.
struct Finish {
    state: AppState,
    snapshot: Arc<Snapshot>,
    /// For list answers: whose list it is and where they call from, to hide what they may not use.
    filter: Option<(Caller, OwnedOrigin)>,
    /// A `tools/list` from its first page: a complete answer is the server's tool list.
    whole_tool_list: bool,
    entry: Arc<ServerEntry>,
    attachment: Attachment,
    version: ProtocolVersion,
    method: String,
    started: Instant,
    /// The event to insert at the end (requests without an effect), or `None` when it was
    /// inserted durably already and only needs its outcome.
    event: Option<AuditEvent>,
    event_seq: i64,
}

impl Finish {
    /// Filter the final answer and record the outcome.
    fn response(&self, mut value: Value) -> Value {
        if self.whole_tool_list
            && let Some(tools) = crate::known_tools::from_answer(&value)
        {
            let server = &self.entry.server.name;
            self.state.known_tools.seen(server, self.snapshot.tools.get(server), tools);
        }
        let held = crate::pinning::filter_answer(&self.state, &self.snapshot, &self.entry, &self.method, &mut value);
        let hidden = held
            + self.filter.as_ref().map_or(0, |(caller, origin)| {
                let server = self.entry.server.name.as_str();
                methods::filter_list(&self.method, &mut value, |action, name| {
                    let ask = Ask { server, action, name, payload: None };
                    access::listed(&self.snapshot, caller, &origin.borrow(), &ask)
                })
            });
        if hidden > 0 {
            tracing::debug!(server = %self.entry.server.name, hidden, "list entries hidden by policy");
        }
        self.answered(value.get("error"));
        value
    }

    /// Count the upstream's answer and record the call's outcome: an error when the response
    /// carries `error`.
    fn answered(&self, error: Option<&Value>) {
        self.state.metrics.upstream_answered(&self.entry.server.name);
        let outcome = if error.is_some() { "error" } else { "ok" };
        let message = error
            .and_then(|error| error.get("message"))
            .and_then(Value::as_str)
            .map(|text| text.chars().take(500).collect::<String>());
        self.record(outcome, message);
    }

    fn record(&self, outcome: &str, error: Option<String>) {
        let latency_us = self.started.elapsed().as_micros() as i64;
        self.state.metrics.request(&self.method, outcome);
        self.state.metrics.latency(&self.method, self.started.elapsed());
        match &self.event {
            Some(event) => {
                let mut event = event.clone();
                event.outcome = outcome.to_owned();
                event.error = error;
                event.latency_us = Some(latency_us);
                self.state.audit.record(event);
            }
            None => self.state.audit.complete(Completion {
                event: self.event_seq,
                outcome: outcome.to_owned(),
                error,
                latency_us: Some(latency_us),
            }),
        }
    }

    /// The request failed mid-way: tell the upstream to stop, record it, and build the error.
    fn failure(&self, id: &Value, error: &UpstreamError) -> Value {
        if matches!(error, UpstreamError::Timeout) {
            self.cancel_upstream(id, "the gateway's upstream timeout expired");
        }
        self.state.metrics.upstream_error(&self.entry.server.name);
        self.record(outcome_of_error(error), Some(error.to_string()));
        let text = format!("server {:?}: {error}", self.entry.server.name);
        error_response(Some(id), error_code_of(error), &text)
    }

    fn cancel_upstream(&self, id: &Value, reason: &str) {
        let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": id, "reason": reason}});
        let Ok(message) = Message::from_value(cancel) else { return };
        let upstreams = self.state.upstreams.clone();
        let entry = self.entry.clone();
        let attachment = self.attachment.clone();
        let version = self.version;
        tokio::spawn(async move {
            let _ = upstreams.send(&entry, &attachment, version, &message).await;
        });
    }
}

/// Relay the upstream's answer: one JSON message when the response is all there is, otherwise
/// an event stream carrying everything the upstream sends until the response.
async fn relay(
    finish: Finish,
    mut replies: Replies,
    id: Value,
    deadline: tokio::time::Instant,
    accepts_sse: bool,
) -> Answer {
    // An answer nothing filters (not a list) that is one response goes back as it came.
    if finish.filter.is_none()
        && !methods::is_list(&finish.method)
        && let Some(raw) = replies.take_raw(&id)
    {
        finish.answered(raw.error.as_ref());
        return Answer::Raw(raw.bytes);
    }
    let first = match timeout_at(deadline, replies.recv()).await {
        Ok(Some(Ok(value))) => value,
        Ok(Some(Err(error))) => return Answer::Json(StatusCode::OK, finish.failure(&id, &error), None),
        Ok(None) => {
            let error = UpstreamError::Invalid("the answer ended without a response".into());
            return Answer::Json(StatusCode::OK, finish.failure(&id, &error), None);
        }
        Err(_) => return Answer::Json(StatusCode::OK, finish.failure(&id, &UpstreamError::Timeout), None),
    };
    if response_id(&first) == Some(&id) {
        return Answer::Json(StatusCode::OK, finish.response(first), None);
    }
    if !accepts_sse {
        // The client takes only JSON: drop what comes before the response.
        loop {
            match timeout_at(deadline, replies.recv()).await {
                Ok(Some(Ok(value))) if response_id(&value) == Some(&id) => {
                    return Answer::Json(StatusCode::OK, finish.response(value), None);
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(error))) => return Answer::Json(StatusCode::OK, finish.failure(&id, &error), None),
                Ok(None) => {
                    let error = UpstreamError::Invalid("the answer ended without a response".into());
                    return Answer::Json(StatusCode::OK, finish.failure(&id, &error), None);
                }
                Err(_) => return Answer::Json(StatusCode::OK, finish.failure(&id, &UpstreamError::Timeout), None),
            }
        }
    }
    let (sender, receiver) = mpsc::channel::<Value>(32);
    tokio::spawn(async move {
        if sender.send(first).await.is_err() {
            finish.cancel_upstream(&id, "the client went away");
            finish.record("cancelled", Some("the client closed the stream".into()));
            return;
        }
        loop {
            let item = timeout_at(deadline, replies.recv()).await;
            let (value, last) = match item {
                Ok(Some(Ok(value))) => {
                    let last = response_id(&value) == Some(&id);
                    (if last { finish.response(value) } else { value }, last)
                }
                Ok(Some(Err(error))) => (finish.failure(&id, &error), true),
                Ok(None) => {
                    (finish.failure(&id, &UpstreamError::Invalid("the answer ended without a response".into())), true)
                }
                Err(_) => (finish.failure(&id, &UpstreamError::Timeout), true),
            };
            if sender.send(value).await.is_err() {
                if !last {
                    finish.cancel_upstream(&id, "the client went away");
                    finish.record("cancelled", Some("the client closed the stream".into()));
                }
                return;
            }
            if last {
                return;
            }
        }
    });
    Answer::Stream(receiver)
}

/// Relay `receiver` while the caller may still use every one of `servers` (the one server of
/// the stream, or the members of an aggregate stream). A published snapshot that suspends, deactivates or
/// deletes the user, or takes their access to the server away, ends the stream: revocation
/// reaches live streams on every replica, not only the next call; so does revoking the very
/// API key or OAuth token the stream was opened with.
fn revocable(
    state: &AppState,
    headers: &HeaderMap,
    caller: &Caller,
    origin: OwnedOrigin,
    servers: Vec<String>,
    mut receiver: mpsc::Receiver<Value>,
) -> mpsc::Receiver<Value> {
    let (sender, relayed) = mpsc::channel(32);
    let mut changes = state.snapshot.subscribe();
    let snapshot = state.snapshot.clone();
    let caller = caller.clone();
    let credential = auth::credential_hash(headers);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                item = receiver.recv() => {
                    let Some(value) = item else { return };
                    if sender.send(value).await.is_err() {
                        return;
                    }
                }
                () = sender.closed() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let allowed = snapshot
                        .current()
                        .is_ok_and(|current| {
                            still_allowed(&current, &caller, &origin.borrow(), &servers)
                                && credential.as_deref().is_none_or(|hash| auth::credential_live(&current, hash))
                        });
                    if !allowed {
                        tracing::info!(caller = caller.label(), ?servers, "access revoked: ending the stream");
                        return;
                    }
                }
            }
        }
    });
    relayed
}

/// May `caller` still use every one of `servers` under `snapshot` (and be a caller at all)?
fn still_allowed(snapshot: &Snapshot, caller: &Caller, origin: &Origin<'_>, servers: &[String]) -> bool {
    let current = match caller {
        Caller::User { user, oauth } => match snapshot.users.get(&user.id) {
            Some(entry) if entry.status == crate::registry::Status::Active => {
                Caller::User { user: entry.clone(), oauth: oauth.clone() }
            }
            _ => return false,
        },
        Caller::Anonymous if servers.is_empty() => return false,
        Caller::Anonymous => Caller::Anonymous,
    };
    servers.iter().all(|server| access::decide(snapshot, &current, origin, &Ask::connect(server)).is_allowed())
}

/// An event stream of JSON-RPC messages, optionally preceded by one fixed event.
pub(crate) fn sse_body(first: Option<sse::Event>, receiver: mpsc::Receiver<Value>) -> Body {
    let first = stream::iter(first.map(|event| Ok::<Bytes, Infallible>(Bytes::from(event.to_wire()))));
    let rest = stream::unfold(receiver, |mut receiver| async move {
        let value = receiver.recv().await?;
        let bytes = Bytes::from(sse::Event::message(value.to_string()).to_wire());
        Some((Ok::<Bytes, Infallible>(bytes), receiver))
    });
    Body::from_stream(first.chain(rest))
}

fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn into_response(state: &AppState, answer: Answer) -> Response {
    match answer {
        Answer::Accepted => StatusCode::ACCEPTED.into_response(),
        Answer::Json(status, value, session) => {
            let header = session.map(|session| session.seal(&state.keys.session));
            json_response(status, &value, header.as_deref())
        }
        Answer::Stream(receiver) => sse_response(sse_body(None, receiver)),
        Answer::Raw(bytes) => {
            ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
        }
    }
}

fn json_response(status: StatusCode, value: &Value, session: Option<&str>) -> Response {
    // Room for a typical answer up front, rather than growing the text piece by piece.
    let mut body = Vec::with_capacity(512);
    if serde_json::to_writer(&mut body, value).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(session) = session.and_then(|session| HeaderValue::from_str(session).ok()) {
        response.headers_mut().insert(SESSION_HEADER, session);
    }
    response
}

fn plain_error(status: StatusCode, text: &str) -> Response {
    let value = error_response(None, ErrorCode::Internal, text);
    json_response(status, &value, None)
}

/// 401 with the `WWW-Authenticate` header clients use to find out how to sign in.
/// The MCP endpoint path of `label` (a server's name, or the aggregate's label).
pub(crate) fn resource_path(label: &str) -> String {
    if label == "(aggregate)" { "/mcp".to_owned() } else { format!("/mcp/{label}") }
}

/// 401 with the challenge that tells an OAuth client where to start (RFC 9728): the
/// protected-resource metadata of the endpoint.
fn unauthorized(state: &AppState, headers: &HeaderMap, label: &str, text: &str) -> Response {
    let value = error_response(None, ErrorCode::InvalidRequest, text);
    let mut response = json_response(StatusCode::UNAUTHORIZED, &value, None);
    let metadata = format!(
        "{}/.well-known/oauth-protected-resource{}",
        crate::auth::oauth::base_url(&state.config, headers),
        resource_path(label)
    );
    let challenge = format!("Bearer error=\"invalid_token\", resource_metadata=\"{metadata}\"");
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Bad input: a JSON-RPC error with the status, and an audit event.
fn invalid(
    exchange: &Exchange,
    method: &str,
    status: StatusCode,
    id: Option<&Value>,
    code: ErrorCode,
    text: &str,
) -> Response {
    record_simple(exchange, method, "none", text, "invalid", None);
    json_response(status, &error_response(id, code, text), None)
}

/// Forward to the owning replica, or authenticate, find the server and open the session of a
/// GET or DELETE; the error is the finished response.
async fn session_request(
    state: &AppState,
    server: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    method: axum::http::Method,
    label: &str,
) -> Result<(Exchange, SessionState), Response> {
    if let Some(owner) = forward::foreign_owner(state, headers) {
        let path = format!("/mcp/{server}");
        return Err(forward::forward(state, &owner, method, &path, headers, Bytes::new()).await);
    }
    let exchange = begin(state, server, peer, headers)?;
    match resolve_session(&exchange, headers) {
        Ok(session) => Ok((exchange, Arc::unwrap_or_clone(session))),
        Err((status, text)) => {
            record_simple(&exchange, label, "none", &text, "invalid", None);
            Err(json_response(status, &error_response(None, ErrorCode::SessionNotFound, &text), None))
        }
    }
}

/// `GET /mcp/{server}`: the stream of messages the upstream sends outside requests.
pub async fn get(
    State(state): State<AppState>,
    Path(server): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (exchange, session) =
        match session_request(&state, &server, peer, &headers, axum::http::Method::GET, "(stream)").await {
            Ok(found) => found,
            Err(response) => return response,
        };
    if !exchange.accepts_sse {
        return plain_error(StatusCode::NOT_ACCEPTABLE, "GET opens an event stream: send Accept: text/event-stream");
    }
    let decision = exchange.connect_decision(session.client.as_ref());
    if !decision.is_allowed() {
        record_decided(&exchange, "(stream)", &decision, "denied", Some(&session));
        return json_response(
            StatusCode::FORBIDDEN,
            &error_response(None, ErrorCode::AccessDenied, &format!("access denied: {}", decision.reason)),
            None,
        );
    }
    let version = session.protocol_version();
    let listener = match state.upstreams.listen(&exchange.entry, &session.attachment, version).await {
        Ok(listener) => listener,
        Err(UpstreamError::NotSupported(_)) => {
            return (StatusCode::METHOD_NOT_ALLOWED, "this server offers no event stream").into_response();
        }
        Err(UpstreamError::SessionGone) => {
            let value = error_response(None, ErrorCode::SessionNotFound, "the session has ended; initialize a new one");
            return json_response(StatusCode::NOT_FOUND, &value, None);
        }
        Err(error) => {
            let text = format!("server {server:?}: {error}");
            return json_response(StatusCode::BAD_GATEWAY, &error_response(None, error_code_of(&error), &text), None);
        }
    };
    record_simple(&exchange, "(stream)", "allow", &decision.reason, "ok", Some(&session));
    sse_response(sse_body(
        None,
        revocable(
            &state,
            &headers,
            &exchange.caller,
            OwnedOrigin::of(&exchange.origin(session.client.as_ref())),
            vec![server.clone()],
            listener,
        ),
    ))
}

/// `DELETE /mcp/{server}`: end the session.
pub async fn delete(
    State(state): State<AppState>,
    Path(server): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let label = "(delete session)";
    let (exchange, session) =
        match session_request(&state, &server, peer, &headers, axum::http::Method::DELETE, label).await {
            Ok(found) => found,
            Err(response) => return response,
        };
    state.upstreams.close(&exchange.entry, &session.attachment, session.protocol_version()).await;
    record_simple(&exchange, "(delete session)", "allow", "the session's owner ended it", "ok", Some(&session));
    StatusCode::OK.into_response()
}
