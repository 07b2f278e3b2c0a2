//! The legacy HTTP+SSE front for clients of protocol 2024-11-05: `GET /sse/{server}` opens
//! an event stream whose first `endpoint` event names where to POST messages
//! (`/sse/{server}/message?sessionId=…`); every answer travels back on the stream.
//!
//! The stream lives in this process, so these sessions are kept here (not sealed) and end
//! when the stream closes. Each message goes through the same `handle` as the
//! Streamable HTTP front: authentication, authorization and audit are identical.

use super::{
    Answer, SessionSource, begin, handle, json_response, plain_error, record_simple, revocable, sse_body, sse_response,
};
use crate::access::OwnedOrigin;
use crate::app::AppState;
use crate::crypto::random_token;
use crate::proxy::session::SessionState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mcp::envelope::{Body as RpcBody, EnvelopeError};
use mcp::error::error_response;
use mcp::{ErrorCode, sse};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// One open legacy stream.
struct LegacySession {
    server: String,
    user_id: Option<String>,
    stream: mpsc::Sender<Value>,
    /// Set once `initialize` succeeded.
    state: tokio::sync::Mutex<Option<SessionState>>,
}

/// The legacy sessions of this replica.
#[derive(Clone, Default, Debug)]
pub struct LegacySessions {
    inner: Arc<Mutex<HashMap<String, Arc<LegacySession>>>>,
}

impl std::fmt::Debug for LegacySession {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("LegacySession").field("server", &self.server).finish()
    }
}

impl LegacySessions {
    fn get(&self, id: &str) -> Option<Arc<LegacySession>> {
        self.inner.lock().ok().and_then(|sessions| sessions.get(id).cloned())
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|sessions| sessions.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes the session and closes its upstream when the client's stream goes away.
struct StreamGuard {
    state: AppState,
    id: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let session = self.state.legacy.inner.lock().ok().and_then(|mut sessions| sessions.remove(&self.id));
        let Some(session) = session else { return };
        let state = self.state.clone();
        tokio::spawn(async move {
            let Some(opened) = session.state.lock().await.take() else { return };
            let Ok(snapshot) = state.snapshot.current() else { return };
            if let Some(entry) = snapshot.servers.get(&opened.server) {
                state.upstreams.close(entry, &opened.attachment, opened.protocol_version()).await;
            }
        });
    }
}

/// `GET /sse/{server}`: open the stream and name the message endpoint.
pub async fn open(
    State(state): State<AppState>,
    Path(server): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let exchange = match begin(&state, &server, peer, &headers) {
        Ok(exchange) => exchange,
        Err(response) => return response,
    };
    if !exchange.accepts_sse {
        return plain_error(StatusCode::NOT_ACCEPTABLE, "GET opens an event stream: send Accept: text/event-stream");
    }
    // The id names this replica, so another replica can pass the session's POSTs here.
    let id = format!("{}.{}", state.replica, random_token(18));
    let (sender, receiver) = mpsc::channel::<Value>(64);
    let session = LegacySession {
        server: server.clone(),
        user_id: exchange.caller.user_id().map(str::to_owned),
        stream: sender,
        state: tokio::sync::Mutex::new(None),
    };
    if let Ok(mut sessions) = state.legacy.inner.lock() {
        sessions.insert(id.clone(), Arc::new(session));
    }
    record_simple(&exchange, "(stream)", "none", "legacy SSE stream opened", "ok", None);
    let endpoint = sse::Event {
        event: "endpoint".into(),
        data: format!("/sse/{server}/message?sessionId={id}"),
        ..Default::default()
    };
    let guard = StreamGuard { state: state.clone(), id };
    // The guard lives as long as the body stream: dropping the body closes the session.
    let receiver = guarded(
        revocable(
            &state,
            &headers,
            &exchange.caller,
            OwnedOrigin::of(&exchange.origin(None)),
            vec![server.clone()],
            receiver,
        ),
        guard,
    );
    sse_response(sse_body(Some(endpoint), receiver))
}

/// Forward messages from `receiver`, keeping `guard` alive until the client goes away.
fn guarded(mut receiver: mpsc::Receiver<Value>, guard: StreamGuard) -> mpsc::Receiver<Value> {
    let (sender, out) = mpsc::channel(64);
    tokio::spawn(async move {
        let _guard = guard;
        loop {
            tokio::select! {
                value = receiver.recv() => match value {
                    Some(value) => if sender.send(value).await.is_err() { return },
                    None => return,
                },
                _ = sender.closed() => return,
            }
        }
    });
    out
}

/// `POST /sse/{server}/message?sessionId=…`: one message (or a batch) for the stream.
pub async fn message(
    State(state): State<AppState>,
    Path(server): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let owner = query.get("sessionId").and_then(|id| id.split_once('.')).map(|(replica, _)| replica.to_owned());
    if let Some(owner) = owner.filter(|owner| owner.as_str() != &*state.replica)
        && !headers.contains_key(super::forward::FORWARDED_HEADER)
    {
        let path = format!("/sse/{server}/message?sessionId={}", query.get("sessionId").cloned().unwrap_or_default());
        return super::forward::forward(&state, &owner, axum::http::Method::POST, &path, &headers, body).await;
    }
    let mut exchange = match begin(&state, &server, peer, &headers) {
        Ok(exchange) => exchange,
        Err(response) => return response,
    };
    exchange.accepts_sse = true;
    let not_found = || {
        let value = error_response(
            None,
            ErrorCode::SessionNotFound,
            "the session is unknown or its stream has closed; open /sse again",
        );
        json_response(StatusCode::NOT_FOUND, &value, None)
    };
    let Some(session) = query.get("sessionId").and_then(|id| state.legacy.get(id)) else { return not_found() };
    if session.server != server || session.user_id.as_deref() != exchange.caller.user_id() {
        return not_found();
    }
    let messages = match RpcBody::parse(&body) {
        Ok(RpcBody::Single(message)) => vec![message],
        Ok(RpcBody::Batch(messages)) => messages,
        Err(EnvelopeError { code, message, id }) => {
            record_simple(&exchange, "(unparsed)", "none", &message, "invalid", None);
            return json_response(StatusCode::BAD_REQUEST, &error_response(id.as_ref(), code, &message), None);
        }
    };
    for message in messages {
        let known = session.state.lock().await.clone();
        match handle(&exchange, SessionSource::Known(known), message, None).await.json() {
            // `json` leaves no answer relayed byte for byte.
            Answer::Accepted | Answer::Raw(_) => {}
            Answer::Json(_, value, opened) => {
                if let Some(opened) = opened {
                    *session.state.lock().await = Some(*opened);
                }
                let _ = session.stream.send(value).await;
            }
            Answer::Stream(mut receiver) => {
                let stream = session.stream.clone();
                tokio::spawn(async move {
                    while let Some(value) = receiver.recv().await {
                        if stream.send(value).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }
    StatusCode::ACCEPTED.into_response()
}
