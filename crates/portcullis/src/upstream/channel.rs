//! Upstream connections whose state lives in this process: a stdio child or a legacy SSE
//! stream. Both carry JSON-RPC messages in both directions over one long-lived link, so they
//! share everything here; [`super::stdio`] and [`super::sse`] only start the link.
//!
//! Each client session gets its own link by default, so capabilities, subscriptions, roots
//! and per-session state never mix between users. Request ids are remapped: the gateway
//! numbers the requests it writes and maps the answers back, so two requests with the same
//! client id can never receive each other's answers. Messages the server sends on its own
//! (progress, logs, sampling and elicitation requests) go to the client request they belong
//! to (by progress token, else the newest request in flight), or to the session's GET stream
//! when no request is in flight. Links are closed when the session is deleted, when idle too
//! long, and when the gateway stops.

use super::{Attachment, Listener, Replies, Reply, UpstreamError, response_id};
use crate::crypto::random_token;
use crate::registry::Transport;
use crate::snapshot::ServerEntry;
use mcp::Message;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long an unused session's link lives.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Marks the local id of a session on a shared link.
const SHARED_PREFIX: &str = "shared:";

/// Stops a link (kills the child, aborts the stream tasks).
pub type Stop = Box<dyn FnOnce() + Send>;

struct Pending {
    client_id: Value,
    progress_token: Option<Value>,
    sender: mpsc::Sender<Reply>,
    started: i64,
}

struct Channel {
    server: String,
    writer: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<i64, Pending>>,
    listener: Mutex<Option<mpsc::Sender<Value>>>,
    next_id: AtomicI64,
    last_used: Mutex<Instant>,
    stop: Mutex<Option<Stop>>,
}

impl Channel {
    fn touch(&self) {
        if let Ok(mut last_used) = self.last_used.lock() {
            *last_used = Instant::now();
        }
    }

    fn stop(&self) {
        if let Some(stop) = self.stop.lock().ok().and_then(|mut stop| stop.take()) {
            stop();
        }
    }

    /// Route a message the server sent.
    async fn deliver(&self, mut value: Value) {
        if let Some(id) = response_id(&value).and_then(Value::as_i64) {
            let pending = self.pending.lock().ok().and_then(|mut pending| pending.remove(&id));
            if let Some(pending) = pending {
                value["id"] = pending.client_id;
                let _ = pending.sender.send(Ok(value)).await;
            }
            return;
        }
        let token = value.get("params").and_then(|params| params.get("progressToken")).cloned();
        let target = self.pending.lock().ok().and_then(|pending| {
            let by_token = token.as_ref().and_then(|token| {
                pending
                    .values()
                    .find(|entry| entry.progress_token.as_ref() == Some(token))
                    .map(|entry| entry.sender.clone())
            });
            by_token.or_else(|| pending.values().max_by_key(|entry| entry.started).map(|entry| entry.sender.clone()))
        });
        match target {
            Some(sender) => {
                let _ = sender.send(Ok(value)).await;
            }
            None => {
                let listener = self.listener.lock().ok().and_then(|listener| listener.clone());
                if let Some(listener) = listener {
                    let _ = listener.send(value).await;
                }
            }
        }
    }

    /// The link is gone: every waiting request fails.
    async fn fail_all(&self, reason: &str) {
        let pending: Vec<Pending> = self
            .pending
            .lock()
            .map(|mut pending| pending.drain().map(|(_, entry)| entry).collect())
            .unwrap_or_default();
        for entry in pending {
            let _ = entry.sender.send(Err(UpstreamError::Unavailable(reason.to_owned()))).await;
        }
    }
}

/// What a transport uses to hand over what the server sends, and to report the link's end.
#[derive(Clone)]
pub struct Inbox {
    channel: Weak<Channel>,
    channels: Weak<Mutex<HashMap<String, Arc<Channel>>>>,
}

impl Inbox {
    /// Pass on one message; `false` once the session is gone (the transport should stop).
    pub async fn deliver(&self, value: Value) -> bool {
        match self.channel.upgrade() {
            Some(channel) => {
                channel.deliver(value).await;
                true
            }
            None => false,
        }
    }

    /// The server went away: fail what waits and forget the session, so the client's next
    /// request gets "session not found" and it initializes again.
    pub async fn closed(&self, reason: &str) {
        let Some(channel) = self.channel.upgrade() else { return };
        channel.fail_all(reason).await;
        channel.stop();
        if let Some(channels) = self.channels.upgrade()
            && let Ok(mut channels) = channels.lock()
        {
            channels.retain(|_, candidate| !Arc::ptr_eq(candidate, &channel));
        }
    }

    /// The server's name, for logs.
    pub fn server(&self) -> String {
        self.channel.upgrade().map(|channel| channel.server.clone()).unwrap_or_default()
    }
}

/// Every in-process link of this replica. Cheap to clone.
#[derive(Clone)]
pub struct ChannelPool {
    replica: String,
    home: String,
    http: reqwest::Client,
    channels: Arc<Mutex<HashMap<String, Arc<Channel>>>>,
    /// Servers that opted into one shared link: server name → (local id, its initialize result).
    shared: Arc<tokio::sync::Mutex<HashMap<String, (String, Value)>>>,
    /// Consecutive failed starts per server, for backoff.
    failures: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
    counter: Arc<AtomicI64>,
}

impl std::fmt::Debug for ChannelPool {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("ChannelPool").field("replica", &self.replica).finish()
    }
}

impl ChannelPool {
    pub fn new(replica: String, home: String, http: reqwest::Client) -> ChannelPool {
        let pool = ChannelPool {
            replica,
            home,
            http,
            channels: Arc::default(),
            shared: Arc::default(),
            failures: Arc::default(),
            counter: Arc::new(AtomicI64::new(0)),
        };
        let reaper = pool.clone();
        tokio::spawn(async move { reaper.reap_idle().await });
        pool
    }

    /// How many links are open.
    pub fn len(&self) -> usize {
        self.channels.lock().map(|channels| channels.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn check_owner(&self, replica: &str) -> Result<(), UpstreamError> {
        if replica == self.replica { Ok(()) } else { Err(UpstreamError::OtherReplica(replica.to_owned())) }
    }

    fn get(&self, local: &str) -> Result<Arc<Channel>, UpstreamError> {
        let local = local.strip_prefix(SHARED_PREFIX).unwrap_or(local);
        let channel = self.channels.lock().ok().and_then(|channels| channels.get(local).cloned());
        let channel = channel.ok_or(UpstreamError::SessionGone)?;
        channel.touch();
        Ok(channel)
    }

    /// Open a link for a new session and send it the client's `initialize`. A server with
    /// `shared_process` gets one link for all sessions, initialized by the first of them;
    /// later sessions get that initialize result (the ids of their requests are remapped, so
    /// they never see each other's answers).
    pub async fn open(
        &self,
        entry: &ServerEntry,
        initialize: &Message,
    ) -> Result<(Attachment, Replies), UpstreamError> {
        if !entry.server.shared_process {
            return self.open_link(entry, initialize).await;
        }
        let mut shared = self.shared.lock().await;
        let existing = shared.get(&entry.server.name).filter(|(local, _)| self.get(local).is_ok()).cloned();
        let (local, result) = match existing {
            Some(existing) => existing,
            None => {
                let (attachment, mut replies) = self.open_link(entry, initialize).await?;
                let Attachment::Local { local, .. } = attachment else {
                    return Err(UpstreamError::Unavailable("unexpected attachment".into()));
                };
                let answer = loop {
                    match tokio::time::timeout(Duration::from_secs(60), replies.recv()).await {
                        Ok(Some(Ok(value))) if response_id(&value).is_some() => break value,
                        Ok(Some(Ok(_))) => continue,
                        Ok(Some(Err(error))) => return Err(error),
                        Ok(None) => return Err(UpstreamError::Invalid("no answer to initialize".into())),
                        Err(_) => return Err(UpstreamError::Timeout),
                    }
                };
                let result = answer
                    .get("result")
                    .cloned()
                    .ok_or_else(|| UpstreamError::Invalid("the shared server refused initialize".into()))?;
                // The link itself needs its initialized notification once.
                let initialized = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
                if let Ok(channel) = self.get(&local) {
                    let _ = channel.writer.send(serde_json::to_vec(&initialized).unwrap_or_default()).await;
                }
                shared.insert(entry.server.name.clone(), (local.clone(), result.clone()));
                (local, result)
            }
        };
        let id = initialize.id.as_ref().map(mcp::Id::to_value).unwrap_or(Value::Null);
        let answer = Replies::one(Ok(serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result})));
        Ok((Attachment::Local { replica: self.replica.clone(), local: format!("{SHARED_PREFIX}{local}") }, answer))
    }

    async fn open_link(
        &self,
        entry: &ServerEntry,
        initialize: &Message,
    ) -> Result<(Attachment, Replies), UpstreamError> {
        self.wait_for_backoff(&entry.server.name).await;
        let local = random_token(18);
        let (writer, outgoing) = mpsc::channel::<Vec<u8>>(256);
        let channel = Arc::new(Channel {
            server: entry.server.name.clone(),
            writer,
            pending: Mutex::default(),
            listener: Mutex::default(),
            next_id: AtomicI64::new(1),
            last_used: Mutex::new(Instant::now()),
            stop: Mutex::default(),
        });
        let inbox = Inbox { channel: Arc::downgrade(&channel), channels: Arc::downgrade(&self.channels) };
        let started = match entry.server.transport {
            Transport::Stdio => super::stdio::start(entry, &self.home, outgoing, inbox),
            Transport::Sse => super::sse::start(entry, &self.http, outgoing, inbox).await,
            Transport::StreamableHttp => Err(UpstreamError::Unavailable("not an in-process transport".into())),
        };
        let stop = match started {
            Ok(stop) => {
                if let Ok(mut failures) = self.failures.lock() {
                    failures.remove(&entry.server.name);
                }
                stop
            }
            Err(error) => {
                self.record_failure(&entry.server.name);
                return Err(error);
            }
        };
        if let Ok(mut slot) = channel.stop.lock() {
            *slot = Some(stop);
        }
        self.channels
            .lock()
            .map_err(|_| UpstreamError::Unavailable("internal lock".into()))?
            .insert(local.clone(), channel);
        let replies = self.request(&local, initialize).await?;
        Ok((Attachment::Local { replica: self.replica.clone(), local }, replies))
    }

    async fn wait_for_backoff(&self, server: &str) {
        let delay = self.failures.lock().ok().and_then(|failures| {
            failures.get(server).map(|(count, at)| {
                let backoff =
                    Duration::from_millis(100u64.saturating_mul(1 << (*count).min(9))).min(Duration::from_secs(30));
                backoff.saturating_sub(at.elapsed())
            })
        });
        if let Some(delay) = delay.filter(|delay| !delay.is_zero()) {
            tracing::warn!(server, ?delay, "the server keeps failing to start; waiting before trying again");
            tokio::time::sleep(delay).await;
        }
    }

    fn record_failure(&self, server: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            let entry = failures.entry(server.to_owned()).or_insert((0, Instant::now()));
            entry.0 += 1;
            entry.1 = Instant::now();
        }
    }

    /// Write a request with a gateway-assigned id; the replies end with its response.
    pub async fn request(&self, local: &str, message: &Message) -> Result<Replies, UpstreamError> {
        let channel = self.get(local)?;
        let upstream_id = channel.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(32);
        let client_id = message.id.as_ref().map(mcp::Id::to_value).unwrap_or(Value::Null);
        let mut value = message.value.clone();
        value["id"] = Value::from(upstream_id);
        let pending = Pending {
            client_id,
            progress_token: message.progress_token().cloned(),
            sender,
            started: self.counter.fetch_add(1, Ordering::Relaxed),
        };
        channel
            .pending
            .lock()
            .map_err(|_| UpstreamError::Unavailable("internal lock".into()))?
            .insert(upstream_id, pending);
        if channel.writer.send(serde_json::to_vec(&value).unwrap_or_default()).await.is_err() {
            if let Ok(mut pending) = channel.pending.lock() {
                pending.remove(&upstream_id);
            }
            return Err(UpstreamError::Unavailable("the connection to the server is closed".into()));
        }
        Ok(Replies::stream(receiver))
    }

    /// Write a notification or a response as it is (a cancellation is renumbered).
    pub async fn send(&self, local: &str, message: &Message) -> Result<(), UpstreamError> {
        let channel = self.get(local)?;
        // Sessions of a shared link do not re-announce initialization to it.
        if local.starts_with(SHARED_PREFIX) && message.method() == "notifications/initialized" {
            return Ok(());
        }
        let mut value = message.value.clone();
        if message.method() == "notifications/cancelled"
            && let Some(client_id) = value.get("params").and_then(|params| params.get("requestId")).cloned()
        {
            let upstream_id =
                channel.pending.lock().ok().and_then(|pending| {
                    pending.iter().find(|(_, entry)| entry.client_id == client_id).map(|(id, _)| *id)
                });
            if let Some(upstream_id) = upstream_id {
                value["params"]["requestId"] = Value::from(upstream_id);
            }
        }
        channel
            .writer
            .send(serde_json::to_vec(&value).unwrap_or_default())
            .await
            .map_err(|_| UpstreamError::Unavailable("the connection to the server is closed".into()))
    }

    /// Messages the server sends while no request is in flight.
    pub fn listen(&self, local: &str) -> Result<Listener, UpstreamError> {
        let channel = self.get(local)?;
        let (sender, receiver) = mpsc::channel(64);
        if let Ok(mut listener) = channel.listener.lock() {
            *listener = Some(sender);
        }
        Ok(receiver)
    }

    /// Close the session's link (a shared link stays open for the other sessions).
    pub fn close(&self, local: &str) {
        if local.starts_with(SHARED_PREFIX) {
            return;
        }
        let channel = self.channels.lock().ok().and_then(|mut channels| channels.remove(local));
        if let Some(channel) = channel {
            channel.stop();
        }
    }

    async fn reap_idle(self) {
        let mut interval = tokio::time::interval(Duration::from_secs(30));
        loop {
            interval.tick().await;
            if Arc::strong_count(&self.channels) == 1 {
                return;
            }
            let idle: Vec<String> = self
                .channels
                .lock()
                .map(|channels| {
                    channels
                        .iter()
                        .filter(|(_, channel)| {
                            let busy = channel.pending.lock().map(|pending| !pending.is_empty()).unwrap_or(true);
                            let idle_for = channel.last_used.lock().map(|at| at.elapsed()).unwrap_or_default();
                            !busy && idle_for > IDLE_TIMEOUT
                        })
                        .map(|(local, _)| local.clone())
                        .collect()
                })
                .unwrap_or_default();
            for local in idle {
                tracing::info!("closing an idle upstream link");
                self.close(&local);
            }
        }
    }

    /// Close every link (gateway shutdown).
    pub async fn shutdown(&self) {
        let channels: Vec<Arc<Channel>> = self
            .channels
            .lock()
            .map(|mut channels| channels.drain().map(|(_, channel)| channel).collect())
            .unwrap_or_default();
        for channel in channels {
            channel.stop();
        }
    }
}
