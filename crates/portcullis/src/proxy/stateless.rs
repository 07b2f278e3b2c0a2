//! Protocol 2026-07-28, the stateless era: no `initialize` and no session; a client sends
//! `server/discover`, then every request carries its own context (`_meta`) and the
//! `Mcp-Method` / `Mcp-Name` headers (checked against the body in [`super::post`]).
//!
//! Upstreams mostly still speak the session versions, so the gateway holds, per replica, one
//! upstream session for each (caller, server), opened on first use with the client's own
//! `clientInfo` and capabilities, and reopened when the registry changes or the upstream
//! forgets it. Every request is still authorised and audited on its own, against the
//! current snapshot, exactly like a request in a session.

use super::session::SessionState;
use super::{Answer, Exchange, initialize};
use crate::upstream::response_id;
use mcp::{Message, ProtocolVersion};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Mutex;

/// The `_meta` keys of the stateless era.
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CLIENT: &str = "io.modelcontextprotocol/clientInfo";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// Whose upstream session: (the caller's user id, or none for anonymous; the server).
type PoolKey = (Option<String>, String);

struct Pooled {
    revision: i64,
    session: SessionState,
    /// The upstream's initialize result (capabilities, instructions, serverInfo).
    result: Value,
}

/// The upstream sessions held for stateless clients on this replica.
#[derive(Clone, Default)]
pub struct StatelessSessions {
    pooled: Arc<Mutex<HashMap<PoolKey, Pooled>>>,
}

impl std::fmt::Debug for StatelessSessions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("StatelessSessions")
    }
}

/// Whether a message belongs to the stateless era (by header, or by its own `_meta`).
pub fn is_stateless(message: &Message, header_version: Option<ProtocolVersion>) -> bool {
    if header_version.is_some_and(ProtocolVersion::is_stateless) {
        return true;
    }
    let declared = message.params().and_then(|params| params.get("_meta")).and_then(|meta| meta.get(META_VERSION));
    declared.and_then(Value::as_str).and_then(ProtocolVersion::parse).is_some_and(ProtocolVersion::is_stateless)
}

impl StatelessSessions {
    /// The upstream session for this caller and server, opening one when needed.
    pub(super) async fn session_for(
        &self,
        exchange: &Exchange,
        message: &Message,
    ) -> Result<(SessionState, Value), Answer> {
        let key = (exchange.caller.user_id().map(str::to_owned), exchange.server().to_owned());
        let mut pooled = self.pooled.lock().await;
        if let Some(entry) = pooled.get(&key)
            && entry.revision == exchange.snapshot.revision
        {
            return Ok((entry.session.clone(), entry.result.clone()));
        }
        let meta = message.params().and_then(|params| params.get("_meta"));
        let client_info = meta
            .and_then(|meta| meta.get(META_CLIENT))
            .cloned()
            .unwrap_or_else(|| json!({"name": "stateless-client", "version": "0"}));
        let capabilities = meta.and_then(|meta| meta.get(META_CAPABILITIES)).cloned().unwrap_or_else(|| json!({}));
        let initialize_message = Message::from_value(json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": ProtocolVersion::LATEST_SESSION.as_str(), "capabilities": capabilities, "clientInfo": client_info}
        }))
        .map_err(|_| Answer::Accepted)?;
        let answer = initialize(exchange, initialize_message).await;
        let Answer::Json(_, value, Some(session)) = answer else {
            return Err(answer);
        };
        let initialized = Message::from_value(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .map_err(|_| Answer::Accepted)?;
        let version = session.protocol_version();
        let _ = exchange.state.upstreams.send(&exchange.entry, &session.attachment, version, &initialized).await;
        let result = value.get("result").cloned().unwrap_or_default();
        pooled.insert(
            key,
            Pooled { revision: exchange.snapshot.revision, session: (*session).clone(), result: result.clone() },
        );
        Ok((*session, result))
    }

    /// Forget the session (the upstream no longer knows it).
    pub(super) async fn forget(&self, exchange: &Exchange) {
        let key = (exchange.caller.user_id().map(str::to_owned), exchange.server().to_owned());
        self.pooled.lock().await.remove(&key);
    }
}

/// The answer to `server/discover`, from the upstream's own initialize result.
pub fn discover_result(id: Option<&Value>, upstream: &Value) -> Value {
    let mut result = json!({
        "supportedVersions": ProtocolVersion::ALL.map(ProtocolVersion::as_str),
        "capabilities": upstream.get("capabilities").cloned().unwrap_or_else(|| json!({})),
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
    });
    if let Some(instructions) = upstream.get("instructions") {
        result["instructions"] = instructions.clone();
    }
    if let Some(server_info) = upstream.get("serverInfo") {
        result["serverInfo"] = server_info.clone();
    }
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Stateless results say they are complete, and cacheable ones (lists, resource reads) how
/// they may be cached: privately, since what a list holds depends on the caller's rights, and
/// not for long, since those rights can change at any time.
pub fn mark_complete(value: &mut Value, method: &str) {
    if response_id(value).is_none() {
        return;
    }
    let Some(result) = value.get_mut("result").and_then(Value::as_object_mut) else { return };
    result.entry("resultType").or_insert_with(|| Value::String("complete".into()));
    let cacheable = matches!(
        method,
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" | "resources/read"
    );
    if cacheable {
        result.insert("cacheScope".into(), Value::String("private".into()));
        result.entry("ttlMs").or_insert(Value::from(0));
    }
}
