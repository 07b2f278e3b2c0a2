//! The audit log: every request produces an [`AuditEvent`].
//!
//! One writer (a thread with its own connection on SQLite, a task on PostgreSQL) owns the
//! store connection for audit writes and commits whatever has queued up since its last commit
//! in one transaction (group commit). [`AuditLog::record_durable`] returns only once the event
//! is durable, and a `tools/call` is forwarded only after that: on PostgreSQL when its
//! transaction committed, on SQLite when it is in the audit [`journal`] (one `write`; the
//! writer thread moves it into the database within [`DEFER`], merging the call's outcome when
//! it arrived by then). When the store or the journal cannot write, callers get
//! [`AuditUnavailable`] and fail closed.

pub mod journal;

use crate::config::StoreLocation;
use crate::crypto::Keys;
use crate::store::{self, Store};
use std::sync::Arc;
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
    /// The names of the rules that decided (the denying ones, or the allowing ones).
    pub rules: Vec<String>,
    /// For admin actions, what an auditor needs beyond the reason (JSON text: a rule change
    /// carries the rule before and after).
    pub detail: Option<String>,
}

/// The audit events for admin roles given to and taken from the user `email` by `actor`
/// (an admin's email, or `apply` for the CLI).
pub fn role_changes(
    actor: &str,
    email: &str,
    added: &[crate::registry::AdminRole],
    removed: &[crate::registry::AdminRole],
    replica: &str,
) -> Vec<AuditEvent> {
    let event = |method: &str, role: &crate::registry::AdminRole, reason: String| {
        let target = format!("{email}: {}", role.as_str());
        AuditEvent::action(actor, None, method, Some(&target), true, &reason, replica)
    };
    let given =
        added.iter().map(|role| event("admin-role/assign", role, format!("{actor} gave {email} {}", role.as_str())));
    let taken = removed
        .iter()
        .map(|role| event("admin-role/remove", role, format!("{actor} took {} from {email}", role.as_str())));
    given.chain(taken).collect()
}

impl AuditEvent {
    /// The event of an action that is not an MCP request (a sign-in, a setting, a SCIM
    /// change): who (`principal`, and their user id when they are a user) did `method` to
    /// `target`, allowed or not, and why.
    pub fn action(
        principal: &str,
        user_id: Option<&str>,
        method: &str,
        target: Option<&str>,
        allowed: bool,
        reason: &str,
        replica: &str,
    ) -> AuditEvent {
        AuditEvent {
            id: crate::crypto::new_id(),
            ts: crate::store::now_ms(),
            user_id: user_id.map(str::to_owned),
            principal: principal.to_owned(),
            server: None,
            method: method.to_owned(),
            target: target.map(str::to_owned),
            sealed_arguments: None,
            arguments_digest: None,
            decision: if allowed { "allow" } else { "deny" },
            reason: reason.to_owned(),
            outcome: if allowed { "ok" } else { "denied" }.to_owned(),
            error: None,
            latency_us: None,
            client_name: None,
            client_version: None,
            ip: None,
            correlation_id: crate::crypto::random_token(12),
            replica: replica.to_owned(),
            rules: Vec::new(),
            detail: None,
        }
    }
}

/// How a call that was recorded as `pending` ended.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The event, as [`AuditLog::record_durable`] named it (its `seq` on PostgreSQL, its
    /// journal ticket on SQLite).
    pub event: i64,
    pub outcome: String,
    pub error: Option<String>,
    pub latency_us: Option<i64>,
}

/// Told the event's `seq` once its commit is done.
type Waiter = oneshot::Sender<Result<i64, AuditUnavailable>>;

/// The audit store could not write; the request must not go ahead.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit log cannot be written")]
pub struct AuditUnavailable;

enum Op {
    Insert(Box<AuditEvent>, Option<Waiter>),
    /// An event already durable in the journal: its ticket and the journal position after it.
    Journaled(Box<AuditEvent>, i64, (u64, u64)),
    Complete(Completion),
}

/// Handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    sender: Sender,
    /// Held by every handle; background helpers stop when it is gone.
    _alive: Arc<()>,
    keys: Keys,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("AuditLog")
    }
}

/// The way to the writer: a tokio channel to the PostgreSQL task, or the shared SQLite
/// queue (see [`SqliteShared`]).
#[derive(Clone)]
enum Sender {
    Task(mpsc::Sender<Op>),
    Sqlite(Arc<SqliteShared>),
}

/// Most operations queued for SQLite before new ones are refused (the writer is far behind).
const QUEUE_LIMIT: usize = 16 * 1024;

impl Sender {
    /// Queue without waiting; false when the queue is full or the writer is gone.
    fn try_send(&self, op: Op) -> bool {
        match self {
            Sender::Task(sender) => sender.try_send(op).is_ok(),
            Sender::Sqlite(shared) => shared.push(op, false),
        }
    }

    async fn send(&self, op: Op) -> bool {
        match self {
            Sender::Task(sender) => sender.send(op).await.is_ok(),
            Sender::Sqlite(shared) => shared.push(op, true),
        }
    }
}

/// SQLite group commit on one writer thread. A call's event is durable once it is in the
/// journal (one `write` on the caller's thread); the writer thread moves queued events into
/// the database, at once when someone waits (a flush), otherwise within [`DEFER`] so that
/// many share a commit. Nothing commits on an async worker: one blocked on the database lock
/// could hold up the very task that owns the lock (a registry write in the same process).
struct SqliteShared {
    queue: std::sync::Mutex<Vec<Op>>,
    wake: std::sync::Condvar,
    connection: std::sync::Mutex<WriterState>,
    path: std::path::PathBuf,
    /// The journal file appended to; `None` when it could not be opened (durable records
    /// then fail closed).
    /// An async lock: a call that finds another's `write` under way yields its worker thread
    /// to other requests instead of putting the thread to sleep (a futex wait and wake each
    /// time two calls meet, one in six calls at concurrency 32).
    journal: tokio::sync::Mutex<Option<journal::Appender>>,
    next_ticket: std::sync::atomic::AtomicI64,
    /// The last commit succeeded. While it is false a batch waits to be retried and new calls
    /// fail closed: the journal alone must not run ahead of a store that cannot write.
    healthy: std::sync::atomic::AtomicBool,
    /// Held while this process serves the store.
    _lock: Option<std::fs::File>,
}

/// What the writer keeps between commits.
#[derive(Default)]
struct WriterState {
    writer: Option<store::audit::sqlite_writer::Writer>,
    /// Journal tickets of events written while their call was still running, with their `seq`
    /// (for the outcome that comes later).
    running: std::collections::BTreeMap<i64, i64>,
    /// Journal files below this generation are gone.
    deleted_below: u64,
    /// A batch whose commit failed, tried again before anything newer (so the journal position
    /// recorded never passes an event the database does not hold).
    retry: Option<JournaledBatch>,
    /// The last batch's queue, emptied, put back as the queue at the next take.
    spare: Vec<Op>,
}

/// Most running calls remembered; beyond it the oldest are forgotten (their outcome, should it
/// ever come, is then dropped with a warning; the event stays `pending`).
const RUNNING_LIMIT: usize = 100_000;

impl SqliteShared {
    /// Queue `op`; `waits` when someone waits for its commit (the writer thread is woken at
    /// once). Nothing is committed on the caller's thread: a caller blocked on the database
    /// lock would hold an async worker the lock's owner may need to finish its transaction.
    fn push(&self, op: Op, waits: bool) -> bool {
        // While the store cannot write, the failed batch waits to be retried and nothing that
        // nobody waits for is queued behind it (it would only pile up in memory).
        if !waits && !self.healthy.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let Ok(mut queue) = self.queue.lock() else { return false };
        if queue.len() >= QUEUE_LIMIT {
            return false;
        }
        let was_empty = queue.is_empty();
        queue.push(op);
        drop(queue);
        // The writer thread already has a deadline for a non-empty queue; waking it for every
        // deferred outcome would cost a thread switch per request for nothing.
        if waits || was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Make `event` durable in the journal and queue it for the database; its ticket.
    async fn journal(&self, event: AuditEvent) -> Result<i64, AuditUnavailable> {
        if !self.healthy.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(AuditUnavailable);
        }
        let bytes = journal::encode(&event);
        if self.queue.lock().map_err(|_| AuditUnavailable)?.len() >= QUEUE_LIMIT {
            tracing::error!("the audit writer is far behind; failing the call closed");
            return Err(AuditUnavailable);
        }
        // Appended and queued under the journal's lock, so the queue holds journaled events in
        // journal order and the position the writer records never skips one still on its way.
        // The queue's own lock is taken only to push: outcomes and the writer thread do not
        // wait out the `write`.
        let mut appender = self.journal.lock().await;
        let appender = appender.as_mut().ok_or(AuditUnavailable)?;
        let mark = appender.append(&bytes).map_err(|error| {
            tracing::error!(%error, "cannot append to the audit journal; failing the call closed");
            AuditUnavailable
        })?;
        let ticket = self.next_ticket.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut queue = self.queue.lock().map_err(|_| AuditUnavailable)?;
        let was_empty = queue.is_empty();
        queue.push(Op::Journaled(Box::new(event), ticket, mark));
        drop(queue);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(ticket)
    }

    /// Commit what is queued now, in one transaction (the writer thread's work). What arrives
    /// meanwhile waits for the next round: going straight on would commit a few events at a
    /// time under load, each commit rewriting the same index pages (and an outcome that comes a
    /// moment after its event would cost an update instead of riding along with the insert).
    fn commit_queued(&self, state: &mut WriterState) {
        let Some(mut batch) = self.take(std::mem::take(&mut state.spare)) else { return };
        if batch.is_empty() && state.retry.is_none() {
            state.spare = batch;
            return;
        }
        let mut split = split_journaled(&mut batch, state);
        state.spare = batch;
        if state.writer.is_none() {
            state.writer = store::audit::sqlite_writer::Writer::open(&self.path)
                .map_err(|error| tracing::error!(%error, "cannot open the audit store"))
                .ok();
        }
        let outcome = match state.writer.as_mut() {
            Some(writer) => writer.commit(&split.inserts, &split.completions, split.mark),
            None => Err(store::StoreError::Open("no audit connection".into())),
        };
        let waiters = std::mem::take(&mut split.waiters);
        let result = match outcome {
            Ok(sequence) => {
                self.healthy.store(true, std::sync::atomic::Ordering::Relaxed);
                for (position, ticket) in &split.running {
                    if let Some(seq) = sequence.get(*position) {
                        state.running.insert(*ticket, *seq);
                    }
                }
                while state.running.len() > RUNNING_LIMIT {
                    state.running.pop_first();
                }
                if let Some((generation, _)) = split.mark {
                    self.delete_journals_below(state, generation);
                }
                Ok(sequence)
            }
            Err(error) => {
                // Kept (and journaled) for the next attempt; calls fail closed meanwhile.
                tracing::error!(%error, events = split.inserts.len(), "audit commit failed; failing calls closed until it succeeds");
                self.healthy.store(false, std::sync::atomic::Ordering::Relaxed);
                state.writer = None;
                state.retry = Some(split);
                Err(AuditUnavailable)
            }
        };
        answer(waiters, &result);
    }

    /// Delete the journal files every event of which is in the database.
    fn delete_journals_below(&self, state: &mut WriterState, generation: u64) {
        while state.deleted_below < generation {
            let path = journal::file_of(&self.path, state.deleted_below);
            if let Err(error) = std::fs::remove_file(&path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%error, path = %path.display(), "cannot delete an applied audit journal");
            }
            state.deleted_below += 1;
        }
    }

    /// Take everything queued, in order (a flush then follows what was queued before it),
    /// leaving `spare` (empty, with the room of an earlier batch) for what comes next: callers
    /// then push without growing the queue under its lock.
    fn take(&self, spare: Vec<Op>) -> Option<Vec<Op>> {
        let mut queue = self.queue.lock().ok()?;
        Some(std::mem::replace(&mut *queue, spare))
    }
}

/// Take the journal's lock, move into the database what an earlier process journaled but did
/// not apply, and start a new journal file. Returns the lock, the appender and the generation
/// below which no journal file is left.
fn recover(path: &std::path::Path) -> Result<(std::fs::File, journal::Appender, u64), String> {
    let lock = journal::lock(path)?;
    let mut writer = store::audit::sqlite_writer::Writer::open(path).map_err(|error| error.to_string())?;
    let (applied_generation, applied_position) = writer.journal_mark().map_err(|error| error.to_string())?;
    let files = journal::files(path).map_err(|error| format!("cannot list the audit journals: {error}"))?;
    let mut replayed = 0;
    let mut damaged = Vec::new();
    for (generation, file) in files.iter().filter(|(generation, _)| *generation >= applied_generation) {
        let from = if *generation == applied_generation { applied_position } else { 0 };
        let (events, whole) = journal::read(file, from)
            .map_err(|error| format!("cannot read the audit journal {}: {error}", file.display()))?;
        if !whole {
            damaged.push(file.clone());
        }
        for chunk in events.chunks(BATCH) {
            let inserts: Vec<AuditEvent> = chunk.iter().map(|(event, _)| event.clone()).collect();
            let end = chunk.last().map_or(from, |(_, end)| *end);
            writer.commit(&inserts, &[], Some((*generation, end))).map_err(|error| error.to_string())?;
        }
        replayed += events.len();
    }
    if replayed > 0 {
        tracing::warn!(replayed, "audit events journaled before the last stop are now in the store");
    }
    let next = files.last().map_or(0, |(generation, _)| *generation).max(applied_generation) + 1;
    writer.commit(&[], &[], Some((next, 0))).map_err(|error| error.to_string())?;
    for (_, file) in &files {
        if damaged.contains(file) {
            // Kept for a person to look at: what follows the damage could not be read.
            let mut kept = file.as_os_str().to_owned();
            kept.push(".damaged");
            tracing::error!(path = %file.display(), "an audit journal is damaged past its last readable event; kept as .damaged");
            let _ = std::fs::rename(file, std::path::PathBuf::from(kept));
        } else if let Err(error) = std::fs::remove_file(file) {
            tracing::warn!(%error, path = %file.display(), "cannot delete an applied audit journal");
        }
    }
    let appender = journal::Appender::create(path, next).map_err(|error| {
        format!("cannot create the audit journal {}: {error}", journal::file_of(path, next).display())
    })?;
    Ok((lock, appender, next))
}

/// A SQLite batch: events to insert (outcomes that arrived in time merged in), outcomes of
/// events inserted earlier (by `seq`), the journal position reached, and who waits.
struct JournaledBatch {
    inserts: Vec<AuditEvent>,
    completions: Vec<Completion>,
    /// (position in `inserts`, ticket) of journaled events whose call is still running.
    running: Vec<(usize, i64)>,
    mark: Option<(u64, u64)>,
    waiters: Vec<(Option<usize>, Waiter)>,
}

fn split_journaled(batch: &mut Vec<Op>, state: &mut WriterState) -> JournaledBatch {
    // A batch that failed before goes first, with its running calls still open to outcomes.
    let mut split = state.retry.take().unwrap_or_else(|| JournaledBatch {
        inserts: Vec::with_capacity(batch.len()),
        completions: Vec::new(),
        running: Vec::new(),
        mark: None,
        waiters: Vec::new(),
    });
    let mut by_ticket: std::collections::HashMap<i64, usize> =
        std::collections::HashMap::with_capacity(split.running.len() + batch.len());
    by_ticket.extend(split.running.drain(..).map(|(position, ticket)| (ticket, position)));
    let mut completions = Vec::new();
    for op in batch.drain(..) {
        match op {
            Op::Insert(event, waiter) => queue_insert(&mut split.inserts, &mut split.waiters, event, waiter),
            Op::Journaled(event, ticket, mark) => {
                split.inserts.push(*event);
                by_ticket.insert(ticket, split.inserts.len() - 1);
                split.mark = Some(mark);
            }
            Op::Complete(completion) => completions.push(completion),
        }
    }
    for completion in completions {
        if let Some(&position) = by_ticket.get(&completion.event) {
            let event = &mut split.inserts[position];
            event.outcome = completion.outcome;
            event.error = completion.error;
            event.latency_us = completion.latency_us;
        } else if let Some(seq) = state.running.remove(&completion.event) {
            split.completions.push(Completion { event: seq, ..completion });
        } else {
            tracing::warn!(ticket = completion.event, "an audit outcome for an event no longer known was dropped");
        }
    }
    split.running = by_ticket
        .into_iter()
        .filter(|(_, position)| split.inserts[*position].outcome == "pending")
        .map(|(ticket, position)| (position, ticket))
        .collect();
    split
}

/// How long work nobody waits for (outcomes, events of requests without effect) may wait
/// for company before it is committed on its own.
const DEFER: Duration = Duration::from_millis(5);

/// How often a failed audit commit is tried again.
const RETRY: Duration = Duration::from_millis(200);

/// Most operations committed in one transaction.
const BATCH: usize = 512;

impl AuditLog {
    /// Start the writer: on SQLite a dedicated thread with its own connection, on
    /// PostgreSQL a task on the pool.
    /// On SQLite this first recovers the audit journal; it fails when another process serves
    /// the same store or the journal cannot be read or created.
    pub fn start(store: Store, location: &StoreLocation, keys: Keys) -> Result<AuditLog, String> {
        let alive = Arc::new(());
        let sender = match location {
            StoreLocation::Sqlite(path) => {
                let (lock, appender, deleted_below) = recover(path)?;
                let (lock, appender) = (Some(lock), Some(appender));
                let shared = Arc::new(SqliteShared {
                    queue: std::sync::Mutex::new(Vec::new()),
                    wake: std::sync::Condvar::new(),
                    connection: std::sync::Mutex::new(WriterState { deleted_below, ..WriterState::default() }),
                    path: path.clone(),
                    journal: tokio::sync::Mutex::new(appender),
                    next_ticket: std::sync::atomic::AtomicI64::new(1),
                    healthy: std::sync::atomic::AtomicBool::new(true),
                    _lock: lock,
                });
                let thread_shared = shared.clone();
                let watched_by_writer = Arc::downgrade(&alive);
                let spawned = std::thread::Builder::new()
                    .name("audit-writer".into())
                    .spawn(move || sqlite_writer(&thread_shared, watched_by_writer));
                if let Err(error) = spawned {
                    // Without a writer nothing reaches the store: calls fail closed.
                    tracing::error!(%error, "cannot start the audit writer thread");
                    shared.healthy.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                let checkpointed = shared.clone();
                let watched = Arc::downgrade(&alive);
                let _ = std::thread::Builder::new()
                    .name("audit-checkpoint".into())
                    .spawn(move || checkpointer(&checkpointed, watched));
                Sender::Sqlite(shared)
            }
            StoreLocation::Postgres(_) => {
                let (sender, receiver) = mpsc::channel(16 * 1024);
                tokio::spawn(writer(store, receiver));
                Sender::Task(sender)
            }
        };
        Ok(AuditLog { sender, keys, _alive: alive })
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

    /// Write the event and wait until it is committed; returns its `seq`, which names it in
    /// the [`Completion`].
    pub async fn record_durable(&self, event: AuditEvent) -> Result<i64, AuditUnavailable> {
        if let Sender::Sqlite(shared) = &self.sender {
            return shared.journal(event).await;
        }
        let (done, wait) = oneshot::channel();
        if !self.sender.send(Op::Insert(Box::new(event), Some(done))).await {
            return Err(AuditUnavailable);
        }
        wait.await.map_err(|_| AuditUnavailable)?
    }

    /// Queue the event without waiting (for requests with no effect to protect).
    pub fn record(&self, event: AuditEvent) {
        if !self.sender.try_send(Op::Insert(Box::new(event), None)) {
            tracing::error!("audit queue full or closed: an audit event was dropped");
        }
    }

    /// Queue the outcome of an event recorded earlier.
    pub fn complete(&self, completion: Completion) {
        if !self.sender.try_send(Op::Complete(completion)) {
            tracing::error!("audit queue full or closed: an audit outcome was dropped");
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
            rules: Vec::new(),
            detail: None,
        };
        let (done, wait) = oneshot::channel();
        if self.sender.send(Op::Insert(Box::new(marker), Some(done))).await {
            let _ = wait.await;
        }
    }
}

/// A batch of operations, split for the store.
struct Batch {
    inserts: Vec<AuditEvent>,
    completions: Vec<Completion>,
    /// Each waiter with the position of its event in `inserts` (none for a flush marker).
    waiters: Vec<(Option<usize>, Waiter)>,
}

/// Tell every waiter how the commit went, with its event's `seq`.
fn answer(waiters: Vec<(Option<usize>, Waiter)>, result: &Result<Vec<i64>, AuditUnavailable>) {
    for (position, waiter) in waiters {
        let reply = match result {
            Ok(sequence) => Ok(position.and_then(|position| sequence.get(position).copied()).unwrap_or(0)),
            Err(error) => Err(error.clone()),
        };
        let _ = waiter.send(reply);
    }
}

/// Add an insert (and who waits for it) to a batch. An empty id is a flush marker: it only
/// waits for the commit.
fn queue_insert(
    inserts: &mut Vec<AuditEvent>,
    waiters: &mut Vec<(Option<usize>, Waiter)>,
    event: Box<AuditEvent>,
    waiter: Option<Waiter>,
) {
    let position = (!event.id.is_empty()).then(|| {
        inserts.push(*event);
        inserts.len() - 1
    });
    waiters.extend(waiter.map(|waiter| (position, waiter)));
}

fn split(batch: &mut Vec<Op>) -> Batch {
    let mut split = Batch { inserts: Vec::new(), completions: Vec::new(), waiters: Vec::new() };
    for op in batch.drain(..) {
        match op {
            Op::Insert(event, waiter) => queue_insert(&mut split.inserts, &mut split.waiters, event, waiter),
            // Only SQLite journals; its batches go through `split_journaled`.
            Op::Journaled(event, _, _) => split.inserts.push(*event),
            Op::Complete(completion) => split.completions.push(completion),
        }
    }
    split
}

/// Frames (pages) in the WAL above which a checkpoint makes sure the WAL starts over.
const RESTART_FRAMES: i64 = 4096;

/// Checkpoint the WAL every half second; the writer itself never does, so its commits stay
/// short. A checkpoint that runs beside a busy writer never catches up with it (the writer
/// appends while it copies), and the WAL only starts over from its beginning once everything in
/// it was copied: left alone it would grow without bound under steady load. So when the WAL is
/// long, a second pass holds the writer back for the moment it takes to copy the few frames
/// written since the first pass; the next commit then starts the WAL over. Stops when the last
/// handle to the audit log is gone.
fn checkpointer(shared: &SqliteShared, alive: std::sync::Weak<()>) {
    let mut checkpointer = None;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if alive.upgrade().is_none() {
            return;
        }
        if checkpointer.is_none() {
            checkpointer = store::audit::sqlite_writer::Writer::checkpointer(&shared.path)
                .map_err(|error| tracing::warn!(%error, "cannot open the audit checkpoint connection; will retry"))
                .ok();
        }
        let Some(connection) = &checkpointer else { continue };
        match connection.checkpoint() {
            Ok((frames, _)) if frames >= RESTART_FRAMES => {
                let Ok(_writer) = shared.connection.lock() else { return };
                if let Err(error) = connection.checkpoint() {
                    tracing::warn!(%error, "audit WAL checkpoint failed; will retry");
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "audit WAL checkpoint failed; will retry");
                checkpointer = None;
            }
        }
    }
}

/// The SQLite writer thread: commits what callers queued without leading (outcomes, events
/// of requests without effect) after at most [`DEFER`], and at once what someone waits for (a flush).
/// Stops when the last handle to the audit log is gone, after a final commit.
fn sqlite_writer(shared: &SqliteShared, alive: std::sync::Weak<()>) {
    let mut last_attempt = std::time::Instant::now();
    loop {
        let Ok(mut queue) = shared.queue.lock() else { return };
        // When the oldest operation nobody waits for arrived (roughly: when first seen).
        let mut pending_since: Option<std::time::Instant> = None;
        loop {
            let someone_waits = queue.iter().any(|op| matches!(op, Op::Insert(_, Some(_))));
            if !queue.is_empty() {
                pending_since.get_or_insert_with(std::time::Instant::now);
            }
            let due = pending_since.is_some_and(|since| since.elapsed() >= DEFER);
            // A failed batch is tried again every RETRY even when nothing new arrives.
            let retry = !shared.healthy.load(std::sync::atomic::Ordering::Relaxed) && last_attempt.elapsed() >= RETRY;
            if someone_waits || due || retry || queue.len() >= BATCH {
                break;
            }
            let step = match pending_since {
                Some(since) => DEFER.saturating_sub(since.elapsed()),
                None => Duration::from_millis(250),
            };
            let Ok((guard, _)) = shared.wake.wait_timeout(queue, step) else { return };
            queue = guard;
            if queue.is_empty() && alive.strong_count() == 0 {
                return;
            }
        }
        drop(queue);
        let Ok(mut state) = shared.connection.lock() else { return };
        shared.commit_queued(&mut state);
        last_attempt = std::time::Instant::now();
    }
}

async fn writer(store: Store, mut receiver: mpsc::Receiver<Op>) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        let Batch { inserts, completions, waiters } = split(&mut batch);
        let mut attempt = 0;
        let result = loop {
            match commit(&store, &inserts, &completions).await {
                Ok(sequence) => break Ok(sequence),
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
        answer(waiters, &result);
    }
}

async fn commit(
    store: &Store,
    inserts: &[AuditEvent],
    completions: &[Completion],
) -> Result<Vec<i64>, store::StoreError> {
    if inserts.is_empty() && completions.is_empty() {
        return Ok(Vec::new());
    }
    let mut transaction = store.begin_write().await?;
    let sequence = store::audit::insert(&mut transaction, inserts).await?;
    store::audit::complete(&mut transaction, completions).await?;
    transaction.commit().await?;
    Ok(sequence)
}
