//! Talking to upstream MCP servers. The proxy sees one interface, [`Upstreams`], whatever the
//! transport:
//!
//! - [`http`]: Streamable HTTP, over a pooled `reqwest` client. Stateless in the gateway: the
//!   upstream session id travels inside the sealed client session.
//! - [`channel`]: links whose state lives in this process — [`stdio`] child processes and
//!   legacy [`sse`] streams — one per client session, with id remapping and message routing.
//!   The sealed session names the owning replica.
//!
//! Every request returns [`Replies`]: the messages the upstream sends while answering (progress,
//! logs, sampling requests …) ending with the response itself.

pub mod channel;
pub mod http;
pub mod sse;
pub mod stdio;

use crate::registry::Transport;
use crate::snapshot::ServerEntry;
use mcp::{Message, ProtocolVersion};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

/// Where a client session is attached upstream. Sealed into the `Mcp-Session-Id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "k")]
pub enum Attachment {
    /// A Streamable HTTP upstream, with its session id if it issued one.
    #[serde(rename = "h")]
    Http {
        #[serde(rename = "s", skip_serializing_if = "Option::is_none")]
        session: Option<String>,
    },
    /// An in-process link (stdio child or SSE stream) owned by replica `replica`, known there
    /// as `local`.
    #[serde(rename = "p")]
    Local {
        #[serde(rename = "r")]
        replica: String,
        #[serde(rename = "l")]
        local: String,
    },
}

/// Why an upstream could not answer. Messages are for people; they never include credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream server is unavailable: {0}")]
    Unavailable(String),
    #[error("the upstream server did not answer in time")]
    Timeout,
    #[error("the upstream server sent something that is not MCP: {0}")]
    Invalid(String),
    /// The upstream no longer knows the session: the client must initialize again.
    #[error("the upstream session has ended; initialize a new session")]
    SessionGone,
    /// The session's process lives on another replica.
    #[error("the session lives on replica {0}")]
    OtherReplica(String),
    /// The upstream does not offer this (for example no GET stream).
    #[error("the upstream server does not support this: {0}")]
    NotSupported(String),
    /// The server acts with each person's own account, and this caller has not connected it
    /// (or must connect again). The message says where.
    #[error("{0}")]
    NeedsConnection(String),
    /// The upstream refused the gateway's credentials (HTTP 401 or 403).
    #[error("the upstream server refused the gateway's credentials: {0}")]
    Refused(String),
}

/// One item of an upstream's answer.
pub type Reply = Result<Value, UpstreamError>;

/// The messages answering one request; the stream ends after the response. An answer that is
/// one message (the common case over Streamable HTTP) is carried as it is, without a channel.
#[derive(Debug)]
pub struct Replies {
    first: Option<Reply>,
    raw: Option<RawResponse>,
    rest: Option<mpsc::Receiver<Reply>>,
}

/// A JSON-RPC response exactly as the upstream sent it, looked into only as far as a proxy
/// needs: which request it answers and whether it is an error.
#[derive(Debug)]
pub struct RawResponse {
    pub bytes: bytes::Bytes,
    pub id: Value,
    /// The `error` member, for error responses.
    pub error: Option<Value>,
}

impl RawResponse {
    /// `bytes` when they are one JSON-RPC response with an id, a result or an error and no
    /// method; `None` otherwise (the caller then reads them in full).
    pub fn read(bytes: bytes::Bytes) -> Option<RawResponse> {
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow, default)]
            id: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow, default)]
            method: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow, default)]
            result: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow, default)]
            error: Option<&'a serde_json::value::RawValue>,
        }
        let envelope: Envelope = serde_json::from_slice(&bytes).ok()?;
        if envelope.method.is_some() || (envelope.result.is_none() && envelope.error.is_none()) {
            return None;
        }
        let id = serde_json::from_str(envelope.id?.get()).ok()?;
        let error = match envelope.error {
            Some(error) => Some(serde_json::from_str(error.get()).ok()?),
            None => None,
        };
        Some(RawResponse { bytes, id, error })
    }

    /// The response as a JSON value.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
}

impl Replies {
    /// An answer of one message.
    pub fn one(reply: Reply) -> Replies {
        Replies { first: Some(reply), raw: None, rest: None }
    }

    /// An answer of one response, kept as the upstream sent it.
    pub fn raw(response: RawResponse) -> Replies {
        Replies { first: None, raw: Some(response), rest: None }
    }

    /// An answer that arrives over `receiver`.
    pub fn stream(receiver: mpsc::Receiver<Reply>) -> Replies {
        Replies { first: None, raw: None, rest: Some(receiver) }
    }

    /// The whole answer, as the upstream sent it, when it is one response to `id`.
    pub fn take_raw(&mut self, id: &Value) -> Option<RawResponse> {
        if self.raw.as_ref().is_some_and(|raw| raw.id == *id) { self.raw.take() } else { None }
    }

    /// The next message; `None` once the answer is complete.
    pub async fn recv(&mut self) -> Option<Reply> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if let Some(raw) = self.raw.take() {
            return Some(Ok(raw.value()));
        }
        self.rest.as_mut()?.recv().await
    }
}

/// Messages an upstream sends outside any request (the GET stream).
pub type Listener = mpsc::Receiver<Value>;

/// The upstream connectors. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Upstreams {
    pub http: http::HttpUpstream,
    pub local: channel::ChannelPool,
}

impl Upstreams {
    pub fn new(
        replica: String,
        home: String,
        roots: &[reqwest::Certificate],
        proxied: bool,
        tokens: Option<std::sync::Arc<crate::auth::upstream::UpstreamTokens>>,
    ) -> Upstreams {
        let mut http = http::HttpUpstream::new(roots, proxied);
        if let Some(tokens) = tokens {
            http = http.with_tokens(tokens);
        }
        let local = channel::ChannelPool::new(replica, home, http.client());
        Upstreams { http, local }
    }

    /// Open an upstream session with the client's `initialize`.
    pub async fn open(
        &self,
        entry: &ServerEntry,
        initialize: &Message,
    ) -> Result<(Attachment, Replies), UpstreamError> {
        match entry.server.transport {
            Transport::StreamableHttp => self.http.open(entry, initialize).await,
            Transport::Stdio | Transport::Sse => self.local.open(entry, initialize).await,
        }
    }

    /// Send a request; the replies end with its response.
    pub async fn request(
        &self,
        entry: &ServerEntry,
        attachment: &Attachment,
        version: ProtocolVersion,
        message: &Message,
    ) -> Result<Replies, UpstreamError> {
        match attachment {
            Attachment::Http { session } => self.http.request(entry, session.as_deref(), version, message).await,
            Attachment::Local { replica, local } => {
                self.local.check_owner(replica)?;
                self.local.request(local, message).await
            }
        }
    }

    /// Send a notification or a response to a server-to-client request.
    pub async fn send(
        &self,
        entry: &ServerEntry,
        attachment: &Attachment,
        version: ProtocolVersion,
        message: &Message,
    ) -> Result<(), UpstreamError> {
        match attachment {
            Attachment::Http { session } => self.http.send(entry, session.as_deref(), version, message).await,
            Attachment::Local { replica, local } => {
                self.local.check_owner(replica)?;
                self.local.send(local, message).await
            }
        }
    }

    /// Messages the upstream sends outside requests.
    pub async fn listen(
        &self,
        entry: &ServerEntry,
        attachment: &Attachment,
        version: ProtocolVersion,
    ) -> Result<Listener, UpstreamError> {
        match attachment {
            Attachment::Http { session } => self.http.listen(entry, session.as_deref(), version).await,
            Attachment::Local { replica, local } => {
                self.local.check_owner(replica)?;
                self.local.listen(local)
            }
        }
    }

    /// End the upstream session.
    pub async fn close(&self, entry: &ServerEntry, attachment: &Attachment, version: ProtocolVersion) {
        match attachment {
            Attachment::Http { session: Some(session) } => self.http.close(entry, session, version).await,
            Attachment::Http { session: None } => {}
            Attachment::Local { local, .. } => self.local.close(local),
        }
    }

    /// Stop every child process.
    pub async fn shutdown(&self) {
        self.local.shutdown().await;
    }
}

/// The `id` of a response message, if `value` is one.
pub fn response_id(value: &Value) -> Option<&Value> {
    let object = value.as_object()?;
    if object.contains_key("method") {
        return None;
    }
    if object.contains_key("result") || object.contains_key("error") { object.get("id") } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(text: &str) -> Option<(Value, Option<Value>)> {
        RawResponse::read(bytes::Bytes::from(text.to_owned())).map(|raw| (raw.id, raw.error))
    }

    #[test]
    fn only_plain_responses_are_relayed_as_they_came() {
        assert_eq!(read(r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#), Some((json!(7), None)));
        assert_eq!(read(r#"{"result":{},"jsonrpc":"2.0","id":"a-1"}"#), Some((json!("a-1"), None)));
        let error = json!({"code": -32602, "message": "no such tool"});
        assert_eq!(
            read(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"no such tool"}}"#),
            Some((json!(1), Some(error)))
        );
        // Everything else is read in full by the caller, as before.
        for other in [
            r#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage","params":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"result":{}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}"#,
            "not json",
        ] {
            assert_eq!(read(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn a_response_to_another_request_is_read_as_a_message() {
        let text = r#"{"jsonrpc":"2.0","id":2,"result":{"ok":true}}"#;
        let raw = RawResponse::read(bytes::Bytes::from(text)).expect("a response");
        let mut replies = Replies::raw(raw);
        assert!(replies.take_raw(&json!(1)).is_none(), "it does not answer request 1");
        assert_eq!(
            replies.recv().await.map(|reply| reply.ok()),
            Some(Some(json!({"jsonrpc": "2.0", "id": 2, "result": {"ok": true}})))
        );
        assert!(replies.recv().await.is_none());
        let mut replies = Replies::raw(RawResponse::read(bytes::Bytes::from(text)).expect("a response"));
        let taken = replies.take_raw(&json!(2)).expect("it answers request 2");
        assert_eq!(taken.bytes, text.as_bytes());
        assert!(replies.recv().await.is_none(), "nothing is left once taken");
    }
}
