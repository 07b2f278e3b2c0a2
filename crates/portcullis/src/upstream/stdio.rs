//! stdio upstreams: child processes that speak newline-delimited JSON-RPC.
//!
//! Each client session gets its own process by default, so capabilities, subscriptions, roots
//! and per-session state never mix between users. A process starts with a clean environment:
//! the server's configured `env` plus a minimal `PATH` and `HOME`, never the gateway's own
//! variables. Its stderr goes to the gateway log. It is killed when the session is deleted,
//! when it has been idle too long, and when the gateway stops.
//!
//! Request ids are remapped: the gateway numbers the requests it writes to the child and maps
//! the answers back, so two requests with the same client id can never receive each other's
//! answers. Messages the child sends on its own (progress, logs, sampling and elicitation
//! requests) go to the client request they belong to (by progress token, else the newest
//! request in flight), or to the session's GET stream when no request is in flight.

use super::{Attachment, Listener, Replies, Reply, UpstreamError, response_id};
use crate::crypto::random_token;
use crate::snapshot::ServerEntry;
use mcp::Message;
use serde_json::Value;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long an unused session's process lives.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The largest line accepted from a child.
const MAX_LINE_BYTES: usize = 32 * 1024 * 1024;
/// The `PATH` a child gets unless its server sets one.
const MINIMAL_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

struct Pending {
    client_id: Value,
    progress_token: Option<Value>,
    sender: mpsc::Sender<Reply>,
    started: u64,
}

struct Process {
    server: String,
    stdin: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<i64, Pending>>,
    listener: Mutex<Option<mpsc::Sender<Value>>>,
    next_id: AtomicI64,
    last_used: Mutex<Instant>,
    child: Mutex<Option<Child>>,
}

impl Process {
    fn touch(&self) {
        if let Ok(mut last_used) = self.last_used.lock() {
            *last_used = Instant::now();
        }
    }

    fn kill(&self) {
        if let Some(mut child) = self.child.lock().ok().and_then(|mut child| child.take()) {
            let _ = child.start_kill();
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
    }

    /// Route a message the child sent.
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

    /// The child is gone: every waiting request fails.
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

/// All stdio processes of this replica. Cheap to clone.
#[derive(Clone)]
pub struct StdioPool {
    replica: String,
    home: String,
    processes: Arc<Mutex<HashMap<String, Arc<Process>>>>,
    /// Consecutive failed starts per server, for backoff.
    failures: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
    counter: Arc<AtomicI64>,
}

impl std::fmt::Debug for StdioPool {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("StdioPool").field("replica", &self.replica).finish()
    }
}

impl StdioPool {
    pub fn new(replica: String, home: String) -> StdioPool {
        let pool = StdioPool {
            replica,
            home,
            processes: Arc::default(),
            failures: Arc::default(),
            counter: Arc::new(AtomicI64::new(0)),
        };
        let reaper = pool.clone();
        tokio::spawn(async move { reaper.reap_idle().await });
        pool
    }

    /// How many processes are running.
    pub fn len(&self) -> usize {
        self.processes.lock().map(|processes| processes.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn check_owner(&self, replica: &str) -> Result<(), UpstreamError> {
        if replica == self.replica { Ok(()) } else { Err(UpstreamError::OtherReplica(replica.to_owned())) }
    }

    fn get(&self, local: &str) -> Result<Arc<Process>, UpstreamError> {
        let process = self.processes.lock().ok().and_then(|processes| processes.get(local).cloned());
        let process = process.ok_or(UpstreamError::SessionGone)?;
        process.touch();
        Ok(process)
    }

    /// Start a process for a new session and send it the client's `initialize`.
    pub async fn open(
        &self,
        entry: &ServerEntry,
        initialize: &Message,
    ) -> Result<(Attachment, Replies), UpstreamError> {
        self.wait_for_backoff(&entry.server.name).await;
        let local = random_token(18);
        let process = match self.spawn(entry) {
            Ok(process) => {
                if let Ok(mut failures) = self.failures.lock() {
                    failures.remove(&entry.server.name);
                }
                process
            }
            Err(error) => {
                self.record_failure(&entry.server.name);
                return Err(error);
            }
        };
        self.processes
            .lock()
            .map_err(|_| UpstreamError::Unavailable("internal lock".into()))?
            .insert(local.clone(), process);
        let replies = self.request(&local, initialize).await?;
        Ok((Attachment::Stdio { replica: self.replica.clone(), local }, replies))
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
            tracing::warn!(server, ?delay, "the server's process keeps failing; waiting before starting it again");
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

    fn spawn(&self, entry: &ServerEntry) -> Result<Arc<Process>, UpstreamError> {
        let server = &entry.server;
        let program =
            server.command.as_deref().ok_or_else(|| UpstreamError::Unavailable("no command configured".into()))?;
        let mut command = Command::new(program);
        command
            .args(&server.args)
            .env_clear()
            .env("PATH", MINIMAL_PATH)
            .env("HOME", &self.home)
            .envs(&entry.secrets.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|error| UpstreamError::Unavailable(format!("cannot start {program:?}: {error}")))?;
        let stdin = child.stdin.take().ok_or_else(|| UpstreamError::Unavailable("no stdin".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| UpstreamError::Unavailable("no stdout".into()))?;
        let stderr = child.stderr.take().ok_or_else(|| UpstreamError::Unavailable("no stderr".into()))?;
        let (stdin_sender, mut stdin_receiver) = mpsc::channel::<Vec<u8>>(256);
        let process = Arc::new(Process {
            server: server.name.clone(),
            stdin: stdin_sender,
            pending: Mutex::default(),
            listener: Mutex::default(),
            next_id: AtomicI64::new(1),
            last_used: Mutex::new(Instant::now()),
            child: Mutex::new(Some(child)),
        });
        tokio::spawn(async move {
            let mut stdin = stdin;
            while let Some(mut line) = stdin_receiver.recv().await {
                line.push(b'\n');
                if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                    return;
                }
            }
        });
        let name = server.name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(server = %name, "stderr: {line}");
            }
        });
        let reader = Arc::downgrade(&process);
        let processes = self.processes.clone();
        tokio::spawn(async move {
            let mut stdout = BufReader::with_capacity(64 * 1024, stdout);
            let mut line = Vec::with_capacity(4096);
            loop {
                line.clear();
                let read = (&mut stdout).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut line).await;
                let Some(process) = reader.upgrade() else { return };
                match read {
                    Ok(0) | Err(_) => {
                        process.fail_all("the server process exited").await;
                        break;
                    }
                    Ok(_) if line.len() > MAX_LINE_BYTES => {
                        tracing::warn!(server = %process.server, "the server process wrote a line over 32 MiB; stopping it");
                        process.fail_all("the server process sent an oversized message").await;
                        process.kill();
                        break;
                    }
                    Ok(_) => {}
                }
                let text = line.trim_ascii();
                if text.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<Value>(text) {
                    Ok(value) if value.is_object() => process.deliver(value).await,
                    _ => {
                        tracing::warn!(server = %process.server, "the server process wrote a line that is not JSON-RPC; ignored")
                    }
                }
            }
            // Forget the session: later requests get "session not found" and re-initialize.
            if let Some(process) = reader.upgrade() {
                process.kill();
                if let Ok(mut processes) = processes.lock() {
                    processes.retain(|_, candidate| !Arc::ptr_eq(candidate, &process));
                }
            }
        });
        Ok(process)
    }

    /// Write a request with a gateway-assigned id; the replies end with its response.
    pub async fn request(&self, local: &str, message: &Message) -> Result<Replies, UpstreamError> {
        let process = self.get(local)?;
        let upstream_id = process.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(32);
        let client_id = message.id.as_ref().map(mcp::Id::to_value).unwrap_or(Value::Null);
        let mut value = message.value.clone();
        value["id"] = Value::from(upstream_id);
        let pending = Pending {
            client_id,
            progress_token: message.progress_token().cloned(),
            sender,
            started: self.counter.fetch_add(1, Ordering::Relaxed) as u64,
        };
        process
            .pending
            .lock()
            .map_err(|_| UpstreamError::Unavailable("internal lock".into()))?
            .insert(upstream_id, pending);
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        if process.stdin.send(bytes).await.is_err() {
            if let Ok(mut pending) = process.pending.lock() {
                pending.remove(&upstream_id);
            }
            return Err(UpstreamError::Unavailable("the server process is not running".into()));
        }
        Ok(receiver)
    }

    /// Write a notification or a response as it is.
    pub async fn send(&self, local: &str, message: &Message) -> Result<(), UpstreamError> {
        let process = self.get(local)?;
        let mut value = message.value.clone();
        // A cancellation names the request by the id the child knows.
        if message.method() == "notifications/cancelled"
            && let Some(client_id) = value.get("params").and_then(|params| params.get("requestId")).cloned()
        {
            let upstream_id =
                process.pending.lock().ok().and_then(|pending| {
                    pending.iter().find(|(_, entry)| entry.client_id == client_id).map(|(id, _)| *id)
                });
            if let Some(upstream_id) = upstream_id {
                value["params"]["requestId"] = Value::from(upstream_id);
            }
        }
        process
            .stdin
            .send(serde_json::to_vec(&value).unwrap_or_default())
            .await
            .map_err(|_| UpstreamError::Unavailable("the server process is not running".into()))
    }

    /// Messages the child sends while no request is in flight.
    pub fn listen(&self, local: &str) -> Result<Listener, UpstreamError> {
        let process = self.get(local)?;
        let (sender, receiver) = mpsc::channel(64);
        if let Ok(mut listener) = process.listener.lock() {
            *listener = Some(sender);
        }
        Ok(receiver)
    }

    /// Stop the session's process.
    pub fn close(&self, local: &str) {
        let process = self.processes.lock().ok().and_then(|mut processes| processes.remove(local));
        if let Some(process) = process {
            process.kill();
        }
    }

    async fn reap_idle(self) {
        let mut interval = tokio::time::interval(Duration::from_secs(30));
        loop {
            interval.tick().await;
            if Arc::strong_count(&self.processes) == 1 {
                return;
            }
            let idle: Vec<String> = self
                .processes
                .lock()
                .map(|processes| {
                    processes
                        .iter()
                        .filter(|(_, process)| {
                            let busy = process.pending.lock().map(|pending| !pending.is_empty()).unwrap_or(true);
                            let last_used = process.last_used.lock().map(|at| at.elapsed()).unwrap_or_default();
                            !busy && last_used > IDLE_TIMEOUT
                        })
                        .map(|(local, _)| local.clone())
                        .collect()
                })
                .unwrap_or_default();
            for local in idle {
                tracing::info!("stopping an idle stdio server process");
                self.close(&local);
            }
        }
    }

    /// Kill every process (gateway shutdown).
    pub async fn shutdown(&self) {
        let processes: Vec<Arc<Process>> = self
            .processes
            .lock()
            .map(|mut processes| processes.drain().map(|(_, process)| process).collect())
            .unwrap_or_default();
        for process in processes {
            process.kill();
        }
    }
}
