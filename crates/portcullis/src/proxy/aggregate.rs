//! The aggregate endpoint `/mcp`: every server the caller may use, behind one session.
//!
//! `initialize` opens a session on each permitted server (in parallel) and seals them all
//! into one `Mcp-Session-Id`, so aggregate sessions are as replica-independent as single
//! ones. Names are namespaced so they cannot collide: tools and prompts become
//! `{server}__{name}` (server names never contain `_`), resource URIs become
//! `portcullis+{server}+{uri}`. Lists fan out and merge; calls are routed to their server
//! and go through exactly the per-server path (`request` in the parent module): same authorization,
//! same audit. Requests a server sends to the client get ids that name the server, so the
//! client's answers find their way back.

use super::session::{Member, SessionState};
use super::{
    Answer, Identified, SESSION_HEADER, header_version, identify, initialize, into_response, json_response, request,
    revocable, sse_body, sse_response,
};
use crate::access::{self, Ask};
use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::store::now_ms;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::join_all;
use mcp::envelope::EnvelopeError;
use mcp::error::error_response;
use mcp::{ErrorCode, Message, MessageKind, ProtocolVersion};
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use tokio::sync::mpsc;

/// The `server` of an aggregate session.
pub const AGGREGATE: &str = "*";
const NAME_SEPARATOR: &str = "__";
const URI_PREFIX: &str = "portcullis+";

/// `tool` of `server` → `server__tool`.
pub fn namespaced(server: &str, name: &str) -> String {
    format!("{server}{NAME_SEPARATOR}{name}")
}

/// `server__tool` → (`server`, `tool`). Server names cannot contain `_`, so the first `__`
/// is the separator.
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    name.split_once(NAME_SEPARATOR).filter(|(server, rest)| !server.is_empty() && !rest.is_empty())
}

pub fn namespaced_uri(server: &str, uri: &str) -> String {
    format!("{URI_PREFIX}{server}+{uri}")
}

pub fn split_uri(uri: &str) -> Option<(&str, &str)> {
    uri.strip_prefix(URI_PREFIX)?.split_once('+')
}

/// A server-to-client request id, made to name the server it came from.
fn namespaced_id(server: &str, id: &Value) -> Value {
    Value::String(format!("{server}{NAME_SEPARATOR}{id}"))
}

fn split_id(id: &Value) -> Option<(String, Value)> {
    let (server, raw) = id.as_str()?.split_once(NAME_SEPARATOR)?;
    Some((server.to_owned(), serde_json::from_str(raw).ok()?))
}

fn aggregate_event(
    identified: &Identified,
    method: &str,
    decision: &'static str,
    reason: &str,
    outcome: &str,
) -> AuditEvent {
    AuditEvent {
        id: crate::crypto::unique_id(),
        ts: now_ms(),
        user_id: identified.caller.user_id().map(str::to_owned),
        principal: identified.caller.label().to_owned(),
        server: None,
        method: method.to_owned(),
        target: None,
        sealed_arguments: None,
        arguments_digest: None,
        decision,
        reason: reason.to_owned(),
        outcome: outcome.to_owned(),
        error: None,
        latency_us: Some(identified.started.elapsed().as_micros() as i64),
        client_name: None,
        client_version: None,
        ip: Some(identified.ip.clone()),
        correlation_id: identified.correlation_id.clone(),
        replica: identified.state.replica.to_string(),
        rules: Vec::new(),
        detail: None,
    }
}

fn refuse(
    identified: &Identified,
    method: &str,
    status: StatusCode,
    id: Option<&Value>,
    code: ErrorCode,
    text: &str,
) -> Response {
    identified.state.audit.record(aggregate_event(identified, method, "none", text, "invalid"));
    json_response(status, &error_response(id, code, text), None)
}

/// The servers the caller may connect to, by name.
fn permitted(identified: &Identified, client: Option<&(String, String)>) -> Vec<String> {
    let origin = identified.owned_origin(client);
    let mut names: Vec<String> = identified
        .snapshot
        .servers
        .keys()
        .filter(|server| {
            access::decide(&identified.snapshot, &identified.caller, &origin.borrow(), &Ask::connect(server))
                .is_allowed()
        })
        .cloned()
        .collect();
    names.sort();
    names
}

/// The caller's aggregate session named by the `Mcp-Session-Id` header, if it is one.
fn aggregate_session(identified: &Identified, headers: &HeaderMap) -> Option<SessionState> {
    let header = headers.get(SESSION_HEADER)?.to_str().ok()?;
    let state = &identified.state;
    state
        .sessions
        .open(&state.keys.session, header)
        .filter(|session| session.server == AGGREGATE && session.user_id.as_deref() == identified.caller.user_id())
        .map(std::sync::Arc::unwrap_or_clone)
}

/// `POST /mcp`.
pub async fn post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(owner) = super::forward::foreign_owner(&state, &headers) {
        return super::forward::forward(&state, &owner, axum::http::Method::POST, "/mcp", &headers, body).await;
    }
    let identified = match identify(&state, "(aggregate)", peer, &headers) {
        Ok(identified) => identified,
        Err(response) => return response,
    };
    if let Err(response) = header_version(&headers) {
        return response;
    }
    let message = match Message::parse(&body) {
        Ok(message) => message,
        Err(EnvelopeError { code, message, id }) => {
            return refuse(&identified, "(unparsed)", StatusCode::BAD_REQUEST, id.as_ref(), code, &message);
        }
    };
    let id = message.id.as_ref().map(mcp::Id::to_value);
    if message.kind == MessageKind::Request && message.method() == "initialize" {
        return initialize_all(&identified, message).await;
    }
    let Some(session) = aggregate_session(&identified, &headers) else {
        let text = "the session is unknown or has ended; initialize a new session";
        return refuse(
            &identified,
            message.method(),
            StatusCode::NOT_FOUND,
            id.as_ref(),
            ErrorCode::SessionNotFound,
            text,
        );
    };
    match message.kind {
        MessageKind::Request => into_response(&state, route_request(&identified, &session, message).await),
        MessageKind::Notification => {
            for member in &session.members {
                if let Some(entry) = identified.snapshot.servers.get(&member.server) {
                    let version = ProtocolVersion::parse(&member.version).unwrap_or(ProtocolVersion::LATEST_SESSION);
                    let _ = state.upstreams.send(entry, &member.attachment, version, &message).await;
                }
            }
            identified.state.audit.record(aggregate_event(
                &identified,
                message.method(),
                "allow",
                "relayed to every server of the session",
                "ok",
            ));
            StatusCode::ACCEPTED.into_response()
        }
        MessageKind::Response => {
            // An answer to a request a server sent: its id names the server.
            let Some((server, original)) = message.id.as_ref().map(mcp::Id::to_value).as_ref().and_then(split_id)
            else {
                let text = "the response's id does not belong to any request of this session";
                return refuse(
                    &identified,
                    "(response)",
                    StatusCode::BAD_REQUEST,
                    None,
                    ErrorCode::InvalidRequest,
                    text,
                );
            };
            let mut value = message.value.clone();
            value["id"] = original;
            let Ok(message) = Message::from_value(value) else { return StatusCode::BAD_REQUEST.into_response() };
            match member_exchange(&identified, &session, &server) {
                Some((exchange, member_session)) => into_response(
                    &state,
                    super::handle(&exchange, super::SessionSource::Known(Some(member_session)), message, None).await,
                ),
                None => {
                    let text = format!("server {server:?} is not part of this session");
                    refuse(&identified, "(response)", StatusCode::BAD_REQUEST, None, ErrorCode::InvalidRequest, &text)
                }
            }
        }
    }
}

/// Open a session on every permitted server.
async fn initialize_all(identified: &Identified, message: Message) -> Response {
    let id = message.id.as_ref().map(mcp::Id::to_value);
    let servers = permitted(identified, super::client_info(&message).as_ref());
    if servers.is_empty() {
        let text = "access denied: you may use no server yet; ask an administrator for access";
        identified.state.audit.record(aggregate_event(identified, "initialize", "deny", text, "denied"));
        return json_response(StatusCode::OK, &error_response(id.as_ref(), ErrorCode::AccessDenied, text), None);
    }
    let opened = join_all(servers.iter().map(|server| {
        let exchange = identified.exchange(identified.snapshot.servers[server].clone());
        let message = message.clone();
        async move { (server.clone(), initialize(&exchange, message).await) }
    }))
    .await;
    let mut members = Vec::new();
    let mut capabilities = Map::new();
    let mut instructions = Vec::new();
    let mut client = None;
    for (server, answer) in opened {
        let Answer::Json(_, value, Some(session)) = answer else {
            tracing::warn!(server, "left out of an aggregate session: it could not be initialized");
            continue;
        };
        let result = &value["result"];
        if let Some(offered) = result.get("capabilities").and_then(Value::as_object) {
            for (name, detail) in offered {
                let merged = capabilities.entry(name.clone()).or_insert_with(|| json!({}));
                if let (Some(merged), Some(detail)) = (merged.as_object_mut(), detail.as_object()) {
                    for (key, flag) in detail {
                        if flag == &Value::Bool(true) {
                            merged.insert(key.clone(), Value::Bool(true));
                        }
                    }
                }
            }
        }
        if let Some(text) = result.get("instructions").and_then(Value::as_str) {
            instructions.push(format!("{server}: {text}"));
        }
        client = client.or(session.client.clone());
        members.push(Member { server, version: session.version, attachment: session.attachment });
    }
    if members.is_empty() {
        let text = "none of your servers could be reached; try again shortly";
        return json_response(StatusCode::OK, &error_response(id.as_ref(), ErrorCode::UpstreamUnavailable, text), None);
    }
    for listed in ["tools", "prompts", "resources"] {
        if let Some(Value::Object(detail)) = capabilities.get_mut(listed) {
            detail.insert("listChanged".into(), Value::Bool(true));
        }
    }
    let requested = message.param_str("protocolVersion").unwrap_or("");
    let version = ProtocolVersion::negotiate(requested);
    let mut result = json!({
        "protocolVersion": version.as_str(),
        "capabilities": capabilities,
        "serverInfo": {"name": "portcullis", "title": "Portcullis (all your servers)", "version": env!("CARGO_PKG_VERSION")},
    });
    if !instructions.is_empty() {
        result["instructions"] = Value::String(instructions.join("\n"));
    }
    let session = SessionState {
        server: AGGREGATE.to_owned(),
        user_id: identified.caller.user_id().map(str::to_owned),
        version: version.as_str().to_owned(),
        attachment: crate::upstream::Attachment::Http { session: None },
        client,
        created_ms: now_ms(),
        members,
    };
    let header = session.seal(&identified.state.keys.session);
    identified.state.audit.record(aggregate_event(identified, "initialize", "allow", "aggregate session opened", "ok"));
    json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": result}), Some(&header))
}

/// The per-server exchange and session for one member.
fn member_exchange(
    identified: &Identified,
    session: &SessionState,
    server: &str,
) -> Option<(super::Exchange, SessionState)> {
    let member = session.members.iter().find(|member| member.server == server)?;
    let entry = identified.snapshot.servers.get(server)?.clone();
    let member_session = SessionState {
        server: server.to_owned(),
        user_id: session.user_id.clone(),
        version: member.version.clone(),
        attachment: member.attachment.clone(),
        client: session.client.clone(),
        created_ms: session.created_ms,
        members: Vec::new(),
    };
    Some((identified.exchange(entry), member_session))
}

fn list_shape(method: &str) -> Option<(&'static str, &'static str)> {
    match method {
        "tools/list" => Some(("tools", "name")),
        "prompts/list" => Some(("prompts", "name")),
        "resources/list" => Some(("resources", "uri")),
        "resources/templates/list" => Some(("resourceTemplates", "uriTemplate")),
        _ => None,
    }
}

async fn route_request(identified: &Identified, session: &SessionState, message: Message) -> Answer {
    let id = message.id.as_ref().map(mcp::Id::to_value);
    let method = message.method().to_owned();
    let reply =
        |result: Value| Answer::Json(StatusCode::OK, json!({"jsonrpc": "2.0", "id": id, "result": result}), None);
    if method == "ping" {
        return reply(json!({}));
    }
    if let Some((list_key, name_key)) = list_shape(&method) {
        return reply(merged_list(identified, session, &message, list_key, name_key).await);
    }
    if method == "logging/setLevel" {
        for member in &session.members {
            if let Some((exchange, member_session)) = member_exchange(identified, session, &member.server) {
                let version = member_session.protocol_version();
                let _ = request(&exchange, &member_session, version, message.clone()).await;
            }
        }
        return reply(json!({}));
    }
    // Everything else names one server's tool, prompt or resource.
    let mut value = message.value.clone();
    let target = match method.as_str() {
        "tools/call" | "prompts/get" => rename(&mut value["params"]["name"], split_name),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            rename(&mut value["params"]["uri"], split_uri)
        }
        "completion/complete" => {
            let reference = &mut value["params"]["ref"];
            if reference.get("name").is_some() {
                rename(&mut reference["name"], split_name)
            } else {
                rename(&mut reference["uri"], split_uri)
            }
        }
        _ => {
            let text = format!("method {method:?} is not available on the aggregate endpoint; use /mcp/{{server}}");
            return Answer::Json(StatusCode::OK, error_response(id.as_ref(), ErrorCode::MethodNotFound, &text), None);
        }
    };
    let Some(server) = target else {
        let text = "name a tool as server__tool, a prompt as server__prompt, a resource by the URI the list gave";
        return Answer::Json(StatusCode::OK, error_response(id.as_ref(), ErrorCode::InvalidParams, text), None);
    };
    let Some((exchange, member_session)) = member_exchange(identified, session, &server) else {
        let text = format!("server {server:?} is not part of this session (it may be new: initialize again)");
        return Answer::Json(StatusCode::OK, error_response(id.as_ref(), ErrorCode::InvalidParams, &text), None);
    };
    let Ok(routed) = Message::from_value(value) else {
        return Answer::Json(
            StatusCode::OK,
            error_response(id.as_ref(), ErrorCode::InvalidParams, "bad parameters"),
            None,
        );
    };
    let version = member_session.protocol_version();
    match request(&exchange, &member_session, version, routed).await {
        Answer::Stream(receiver) => Answer::Stream(namespace_stream(server, receiver)),
        other => other,
    }
}

/// Replace a namespaced name in place by the server's own; returns the server.
fn rename(slot: &mut Value, split: fn(&str) -> Option<(&str, &str)>) -> Option<String> {
    let text = slot.as_str()?.to_owned();
    let (server, name) = split(&text)?;
    *slot = Value::String(name.to_owned());
    Some(server.to_owned())
}

/// Rewrite what a server sends during a call so the client can tell servers apart.
fn namespace_stream(server: String, mut receiver: mpsc::Receiver<Value>) -> mpsc::Receiver<Value> {
    let (sender, out) = mpsc::channel(32);
    tokio::spawn(async move {
        while let Some(mut value) = receiver.recv().await {
            namespace_message(&server, &mut value);
            if sender.send(value).await.is_err() {
                return;
            }
        }
    });
    out
}

fn namespace_message(server: &str, value: &mut Value) {
    let is_request = value.get("method").is_some() && value.get("id").is_some();
    if is_request {
        let id = value["id"].clone();
        value["id"] = namespaced_id(server, &id);
    }
    if value.get("method").and_then(Value::as_str) == Some("notifications/resources/updated")
        && let Some(uri) = value["params"]["uri"].as_str().map(str::to_owned)
    {
        value["params"]["uri"] = Value::String(namespaced_uri(server, &uri));
    }
}

/// Fan a list request out to every member and merge the namespaced answers.
async fn merged_list(
    identified: &Identified,
    session: &SessionState,
    message: &Message,
    list_key: &str,
    name_key: &str,
) -> Value {
    let pages = join_all(session.members.iter().map(|member| async move {
        let Some((mut exchange, member_session)) = member_exchange(identified, session, &member.server) else {
            return (member.server.clone(), Vec::new());
        };
        exchange.accepts_sse = false;
        let version = member_session.protocol_version();
        let mut entries = Vec::new();
        let mut cursor: Option<Value> = None;
        // Follow the server's pagination, within reason.
        for _ in 0..20 {
            let mut value = message.value.clone();
            value["params"] = json!({});
            if let Some(cursor) = &cursor {
                value["params"]["cursor"] = cursor.clone();
            }
            let Ok(page_request) = Message::from_value(value) else { break };
            let Answer::Json(_, page, _) = request(&exchange, &member_session, version, page_request).await else {
                break;
            };
            if let Some(items) = page["result"][list_key].as_array() {
                entries.extend(items.iter().cloned());
            }
            cursor = page["result"].get("nextCursor").filter(|next| !next.is_null()).cloned();
            if cursor.is_none() {
                break;
            }
        }
        (member.server.clone(), entries)
    }))
    .await;
    let mut merged = Vec::new();
    for (server, entries) in pages {
        for mut entry in entries {
            let Some(name) = entry.get(name_key).and_then(Value::as_str).map(str::to_owned) else { continue };
            entry[name_key] = Value::String(if name_key == "name" {
                namespaced(&server, &name)
            } else {
                namespaced_uri(&server, &name)
            });
            merged.push(entry);
        }
    }
    let mut result = Map::new();
    result.insert(list_key.to_owned(), Value::Array(merged));
    Value::Object(result)
}

/// Forward to the owning replica, or authenticate and open the aggregate session of a GET or
/// DELETE; the error is the finished response (and an unknown session is audited).
async fn session_request(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    method: axum::http::Method,
    label: &str,
) -> Result<(Identified, SessionState), Response> {
    if let Some(owner) = super::forward::foreign_owner(state, headers) {
        return Err(super::forward::forward(state, &owner, method, "/mcp", headers, Bytes::new()).await);
    }
    let identified = identify(state, "(aggregate)", peer, headers)?;
    match aggregate_session(&identified, headers) {
        Some(session) => Ok((identified, session)),
        None => {
            let text = "the session is unknown or has ended; initialize a new session";
            Err(refuse(&identified, label, StatusCode::NOT_FOUND, None, ErrorCode::SessionNotFound, text))
        }
    }
}

/// `GET /mcp`: every member's stream, merged.
pub async fn get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (identified, session) = match session_request(&state, peer, &headers, axum::http::Method::GET, "(stream)").await
    {
        Ok(found) => found,
        Err(response) => return response,
    };
    let (sender, receiver) = mpsc::channel(64);
    // Only members the caller may still use are listened to, and the stream ends when one of
    // them is taken away.
    let origin = identified.owned_origin(session.client.as_ref());
    let members: Vec<&Member> = session
        .members
        .iter()
        .filter(|member| {
            access::decide(&identified.snapshot, &identified.caller, &origin.borrow(), &Ask::connect(&member.server))
                .is_allowed()
        })
        .collect();
    if members.is_empty() {
        let text = "access denied: you may use none of this session's servers any more; initialize a new session";
        identified.state.audit.record(aggregate_event(&identified, "(stream)", "deny", text, "denied"));
        return json_response(StatusCode::FORBIDDEN, &error_response(None, ErrorCode::AccessDenied, text), None);
    }
    let servers: Vec<String> = members.iter().map(|member| member.server.clone()).collect();
    for member in members {
        let Some(entry) = identified.snapshot.servers.get(&member.server) else { continue };
        let version = ProtocolVersion::parse(&member.version).unwrap_or(ProtocolVersion::LATEST_SESSION);
        let Ok(mut listener) = state.upstreams.listen(entry, &member.attachment, version).await else { continue };
        let sender = sender.clone();
        let server = member.server.clone();
        tokio::spawn(async move {
            while let Some(mut value) = listener.recv().await {
                namespace_message(&server, &mut value);
                if sender.send(value).await.is_err() {
                    return;
                }
            }
        });
    }
    sse_response(sse_body(None, revocable(&state, &headers, &identified.caller, origin, servers, receiver)))
}

/// `DELETE /mcp`: end every member session.
pub async fn delete(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (identified, session) =
        match session_request(&state, peer, &headers, axum::http::Method::DELETE, "(delete session)").await {
            Ok(found) => found,
            Err(response) => return response,
        };
    for member in &session.members {
        if let Some(entry) = identified.snapshot.servers.get(&member.server) {
            let version = ProtocolVersion::parse(&member.version).unwrap_or(ProtocolVersion::LATEST_SESSION);
            state.upstreams.close(entry, &member.attachment, version).await;
        }
    }
    identified.state.audit.record(aggregate_event(
        &identified,
        "(delete session)",
        "allow",
        "the session's owner ended it",
        "ok",
    ));
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespacing_round_trips() {
        assert_eq!(split_name(&namespaced("github", "create_issue")), Some(("github", "create_issue")));
        assert_eq!(split_name("github__a__b"), Some(("github", "a__b")));
        assert_eq!(split_name("plain"), None);
        assert_eq!(split_name("__x"), None);
        let uri = namespaced_uri("docs", "demo://resource/a+b");
        assert_eq!(uri, "portcullis+docs+demo://resource/a+b");
        assert_eq!(split_uri(&uri), Some(("docs", "demo://resource/a+b")));
        assert_eq!(split_id(&namespaced_id("docs", &json!(7))), Some(("docs".to_owned(), json!(7))));
        assert_eq!(split_id(&namespaced_id("docs", &json!("x"))), Some(("docs".to_owned(), json!("x"))));
    }
}
