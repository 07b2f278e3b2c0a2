//! The audit log: every request produces an [`AuditEvent`].
//!
//! One writer task owns the store connection for audit writes and commits whatever has queued
//! up since its last commit in one transaction (group commit): under load many calls share one
//! commit, at concurrency 1 a call pays one commit. [`AuditLog::record_durable`] returns only
//! after the event's transaction committed; a `tools/call` is forwarded only after that. When
//! the store cannot write, callers get [`AuditUnavailable`] and fail closed.

use crate::crypto::Keys;
use crate::store::{self, Store};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// One audit event, as written.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub id: String,
    pub ts: i64,
    pub user_id: Option<String>,
    /// Email, or `anonymous`, or `unauthenticated` for requests that failed authentication.
    pub principal: String,
    pub server: Option<String>,
    pub method: String,
    /// Tool name, resource URI or prompt name.
    pub target: Option<String>,
    pub sealed_arguments: Option<Vec<u8>>,
    pub arguments_digest: Option<String>,
    /// `allow`, `deny`, or `none` when no decision was reached (bad input).
    pub decision: &'static str,
    pub reason: String,
    /// `pending` until the call ends, then `ok`, `error` (the upstream answered with an error),
    /// `denied`, `invalid`, `upstream_unavailable`, `upstream_timeout`, `upstream_invalid`,
    /// `cancelled`.
    pub outcome: String,
    pub error: Option<String>,
    pub latency_us: Option<i64>,
    pub client_name: Option<String>,
    pub client_version: Option<String>,
    pub ip: Option<String>,
    pub correlation_id: String,
    pub replica: String,
}

/// How a call that was recorded as `pending` ended.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    pub outcome: String,
    pub error: Option<String>,
    pub latency_us: Option<i64>,
}

/// The audit store could not write; the request must not go ahead.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit log cannot be written")]
pub struct AuditUnavailable;

enum Op {
    Insert(Box<AuditEvent>, Option<oneshot::Sender<Result<(), AuditUnavailable>>>),
    Complete(Completion),
}

/// Handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<Op>,
    keys: Keys,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("AuditLog")
    }
}

/// Most operations committed in one transaction.
const BATCH: usize = 512;

impl AuditLog {
    /// Start the writer task.
    pub fn start(store: Store, keys: Keys) -> AuditLog {
        let (sender, receiver) = mpsc::channel(16 * 1024);
        tokio::spawn(writer(store, receiver));
        AuditLog { sender, keys }
    }

    /// Seal the arguments for storage and compute their keyed digest.
    pub fn seal_arguments(&self, arguments: &serde_json::Value) -> (Vec<u8>, String) {
        let bytes = serde_json::to_vec(arguments).unwrap_or_default();
        let digest = self.keys.audit_digest(&bytes);
        (self.keys.audit_arguments.seal(&bytes, b"audit-arguments"), digest)
    }

    /// Open arguments sealed by [`AuditLog::seal_arguments`] (for the policy simulator).
    pub fn open_arguments(&self, sealed: &[u8]) -> Option<serde_json::Value> {
        let bytes = self.keys.audit_arguments.open(sealed, b"audit-arguments").ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Write the event and wait until it is committed.
    pub async fn record_durable(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        let (done, wait) = oneshot::channel();
        self.sender.send(Op::Insert(Box::new(event), Some(done))).await.map_err(|_| AuditUnavailable)?;
        wait.await.map_err(|_| AuditUnavailable)?
    }

    /// Queue the event without waiting (for requests with no effect to protect).
    pub fn record(&self, event: AuditEvent) {
        if let Err(error) = self.sender.try_send(Op::Insert(Box::new(event), None)) {
            tracing::error!(%error, "audit queue full or closed: an audit event was dropped");
        }
    }

    /// Queue the outcome of an event recorded earlier.
    pub fn complete(&self, completion: Completion) {
        if let Err(error) = self.sender.try_send(Op::Complete(completion)) {
            tracing::error!(%error, "audit queue full or closed: an audit outcome was dropped");
        }
    }

    /// Wait until everything queued so far is committed.
    pub async fn flush(&self) {
        let marker = AuditEvent {
            id: String::new(),
            ts: 0,
            user_id: None,
            principal: String::new(),
            server: None,
            method: String::new(),
            target: None,
            sealed_arguments: None,
            arguments_digest: None,
            decision: "none",
            reason: String::new(),
            outcome: String::new(),
            error: None,
            latency_us: None,
            client_name: None,
            client_version: None,
            ip: None,
            correlation_id: String::new(),
            replica: String::new(),
        };
        let (done, wait) = oneshot::channel();
        if self.sender.send(Op::Insert(Box::new(marker), Some(done))).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn writer(store: Store, mut receiver: mpsc::Receiver<Op>) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        let mut inserts = Vec::new();
        let mut waiters = Vec::new();
        let mut completions = Vec::new();
        for op in batch.drain(..) {
            match op {
                // An empty id is a flush marker: it only waits for the commit.
                Op::Insert(event, waiter) => {
                    if !event.id.is_empty() {
                        inserts.push(*event);
                    }
                    waiters.extend(waiter);
                }
                Op::Complete(completion) => completions.push(completion),
            }
        }
        let mut attempt = 0;
        let result = loop {
            match commit(&store, &inserts, &completions).await {
                Ok(()) => break Ok(()),
                Err(error) if attempt < 2 => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "audit commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Err(error) => {
                    tracing::error!(%error, events = inserts.len(), "audit commit failed; failing the calls closed");
                    break Err(AuditUnavailable);
                }
            }
        };
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

async fn commit(store: &Store, inserts: &[AuditEvent], completions: &[Completion]) -> Result<(), store::StoreError> {
    if inserts.is_empty() && completions.is_empty() {
        return Ok(());
    }
    let mut transaction = store.pool.begin().await?;
    store::audit::insert(&mut transaction, inserts).await?;
    store::audit::complete(&mut transaction, completions).await?;
    transaction.commit().await?;
    Ok(())
}
