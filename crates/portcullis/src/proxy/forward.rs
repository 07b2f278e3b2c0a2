//! Forwarding between replicas. A session whose upstream link lives in one process (a stdio
//! child, a legacy SSE stream) names its owning replica in the sealed session; a request for
//! it that reaches another replica is passed, as it is, to the owner, which authenticates,
//! authorises and audits it as usual. Replicas find each other through the store: each
//! announces its `replica_url` every few seconds, and a background task keeps a directory in
//! memory, so the request path never queries the database.

use crate::app::AppState;
use crate::proxy::session::SessionState;
use crate::store::{self, Store};
use crate::upstream::Attachment;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Marks a request already forwarded once, so two replicas can never bounce it forever.
pub const FORWARDED_HEADER: &str = "x-portcullis-forwarded";

/// How often a replica announces itself, and how old an announcement may be.
const HEARTBEAT: Duration = Duration::from_secs(3);
const STALE_AFTER_MS: i64 = 15_000;

/// Where the other replicas are.
#[derive(Clone, Debug, Default)]
pub struct ReplicaDirectory {
    addresses: Arc<RwLock<HashMap<String, String>>>,
}

impl ReplicaDirectory {
    pub fn address(&self, replica: &str) -> Option<String> {
        self.addresses.read().ok().and_then(|addresses| addresses.get(replica).cloned())
    }

    /// Announce `url` for `replica` and keep the directory fresh, until the app stops.
    pub fn start(&self, store: Store, replica: String, url: String) {
        let directory = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(HEARTBEAT);
            loop {
                interval.tick().await;
                if Arc::strong_count(&directory.addresses) == 1 {
                    return;
                }
                let refreshed = async {
                    let mut connection = store.pool.acquire().await?;
                    store::replicas::heartbeat(&mut connection, &replica, &url).await?;
                    store::replicas::all(&mut connection, STALE_AFTER_MS).await
                };
                match refreshed.await {
                    Ok(all) => {
                        if let Ok(mut addresses) = directory.addresses.write() {
                            *addresses = all.into_iter().collect();
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot refresh the replica directory"),
                }
            }
        });
    }
}

/// The replica that owns the session named by these headers, if it is another one.
pub fn foreign_owner(state: &AppState, headers: &HeaderMap) -> Option<String> {
    owner_elsewhere(state, headers, &*opened_session(state, headers)?)
}

/// The session named by the request's `Mcp-Session-Id`, opened (once per request: callers
/// keep it for the rest of the request).
pub fn opened_session(state: &AppState, headers: &HeaderMap) -> Option<Arc<SessionState>> {
    let header = headers.get("mcp-session-id")?.to_str().ok()?;
    state.sessions.open(&state.keys.session, header)
}

/// The replica that owns `session`, if it is another one (and the request was not forwarded
/// here already).
pub fn owner_elsewhere(state: &AppState, headers: &HeaderMap, session: &SessionState) -> Option<String> {
    if headers.contains_key(FORWARDED_HEADER) {
        return None;
    }
    let owners = std::iter::once(&session.attachment).chain(session.members.iter().map(|member| &member.attachment));
    owners
        .filter_map(|attachment| match attachment {
            Attachment::Local { replica, .. } if replica.as_str() != &*state.replica => Some(replica.clone()),
            _ => None,
        })
        .next()
}

/// Pass the request to the owning replica and relay its answer (streamed).
pub async fn forward(
    state: &AppState,
    owner: &str,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let Some(base) = state.replicas.address(owner) else {
        let value = mcp::error::error_response(
            None,
            mcp::ErrorCode::SessionNotFound,
            "the replica that held this session is gone; initialize a new session",
        );
        return (StatusCode::NOT_FOUND, [(axum::http::header::CONTENT_TYPE, "application/json")], value.to_string())
            .into_response();
    };
    let mut outgoing = headers.clone();
    outgoing.remove(axum::http::header::HOST);
    outgoing.remove(axum::http::header::CONTENT_LENGTH);
    outgoing.insert(FORWARDED_HEADER, HeaderValue::from_static("1"));
    let sent = state
        .upstreams
        .http
        .client()
        .request(method, format!("{base}{path}"))
        .headers(outgoing)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(owner, %error, "cannot forward to the owning replica");
            return (StatusCode::BAD_GATEWAY, "the replica that holds this session cannot be reached").into_response();
        }
    };
    let mut relayed = Response::builder().status(response.status().as_u16());
    for (name, value) in response.headers() {
        if name != axum::http::header::TRANSFER_ENCODING && name != axum::http::header::CONNECTION {
            relayed = relayed.header(name.as_str(), value.as_bytes());
        }
    }
    relayed.body(Body::from_stream(response.bytes_stream())).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}
