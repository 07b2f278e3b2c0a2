//! Audit events: inserted in batches (group commit), completed with their outcome, queried
//! newest first with a cursor.

use super::StoreError;
use crate::audit::{AuditEvent, Completion};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

/// Insert events in the caller's transaction; returns their `seq`, in order.
pub async fn insert(connection: &mut AnyConnection, events: &[AuditEvent]) -> Result<Vec<i64>, StoreError> {
    let mut sequence = Vec::with_capacity(events.len());
    for event in events {
        let row = sqlx::query(
            "INSERT INTO audit_events (id, ts, user_id, principal, server, method, target, sealed_arguments, \
             arguments_digest, decision, reason, outcome, error, latency_us, client_name, client_version, ip, \
             correlation_id, replica, rules, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
             RETURNING seq",
        )
        .bind(&event.id)
        .bind(event.ts)
        .bind(&event.user_id)
        .bind(&event.principal)
        .bind(&event.server)
        .bind(&event.method)
        .bind(&event.target)
        .bind(&event.sealed_arguments)
        .bind(&event.arguments_digest)
        .bind(event.decision)
        .bind(&event.reason)
        .bind(&event.outcome)
        .bind(&event.error)
        .bind(event.latency_us)
        .bind(&event.client_name)
        .bind(&event.client_version)
        .bind(&event.ip)
        .bind(&event.correlation_id)
        .bind(&event.replica)
        .bind(rules_text(&event.rules))
        .bind(&event.detail)
        .fetch_one(&mut *connection)
        .await?;
        sequence.push(row.try_get::<i64, _>(0)?);
    }
    Ok(sequence)
}

/// The rule names of an event as stored: a JSON list, or nothing when no rule decided.
fn rules_text(rules: &[String]) -> Option<String> {
    (!rules.is_empty()).then(|| serde_json::to_string(rules).unwrap_or_default())
}

/// Record how calls ended.
pub async fn complete(connection: &mut AnyConnection, completions: &[Completion]) -> Result<(), StoreError> {
    for completion in completions {
        sqlx::query("UPDATE audit_events SET outcome = $1, error = $2, latency_us = $3 WHERE seq = $4")
            .bind(&completion.outcome)
            .bind(&completion.error)
            .bind(completion.latency_us)
            .bind(completion.event)
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// Which events to return.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub user_id: Option<String>,
    pub server: Option<String>,
    pub method: Option<String>,
    pub decision: Option<String>,
    pub outcome: Option<String>,
    pub target: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only events older than this cursor (the `seq` of the last event of the previous page).
    pub before: Option<i64>,
    pub limit: i64,
}

/// An audit event as the API shows it. Arguments stay sealed; only their digest is shown.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub id: String,
    pub time_ms: i64,
    pub user_id: Option<String>,
    pub principal: String,
    pub server: Option<String>,
    pub method: String,
    pub target: Option<String>,
    pub arguments_digest: Option<String>,
    pub decision: String,
    pub reason: String,
    pub outcome: String,
    pub error: Option<String>,
    pub latency_us: Option<i64>,
    pub client_name: Option<String>,
    pub client_version: Option<String>,
    pub ip: Option<String>,
    pub correlation_id: String,
    /// The rules that decided.
    pub rules: Vec<String>,
    /// For admin actions: details such as a rule before and after a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    #[serde(skip)]
    pub sealed_arguments: Option<Vec<u8>>,
}

pub async fn query(connection: &mut AnyConnection, filter: &Filter) -> Result<Vec<AuditRecord>, StoreError> {
    let mut conditions = String::new();
    let mut texts: Vec<String> = Vec::new();
    let mut numbers: Vec<i64> = Vec::new();
    let mut placeholders = 0;
    let mut next = || {
        placeholders += 1;
        format!("${placeholders}")
    };
    // Text conditions first, numeric ones after, so binds can be added in the same order.
    for (column, value) in [
        ("user_id", &filter.user_id),
        ("server", &filter.server),
        ("method", &filter.method),
        ("decision", &filter.decision),
        ("outcome", &filter.outcome),
        ("target", &filter.target),
    ] {
        if let Some(value) = value {
            conditions.push_str(&format!(" AND {column} = {}", next()));
            texts.push(value.clone());
        }
    }
    for (condition, value) in [("ts >= ", filter.since_ms), ("ts < ", filter.until_ms), ("seq < ", filter.before)] {
        if let Some(value) = value {
            conditions.push_str(&format!(" AND {condition}{}", next()));
            numbers.push(value);
        }
    }
    // Finished and pending events are read apart: on SQLite the query indexes hold only
    // finished events (see migration 0002) and pending ones have their own index.
    let columns = "seq, id, ts, user_id, principal, server, method, target, sealed_arguments, arguments_digest, \
                   decision, reason, outcome, error, latency_us, client_name, client_version, ip, correlation_id, \
                   rules, detail";
    let sql = format!(
        "SELECT {columns} FROM audit_events WHERE outcome <> 'pending'{conditions} \
         UNION ALL SELECT {columns} FROM audit_events WHERE outcome = 'pending'{conditions} \
         ORDER BY seq DESC LIMIT {}",
        next()
    );
    numbers.push(filter.limit);
    let mut query = sqlx::query(&sql);
    for text in texts {
        query = query.bind(text);
    }
    for number in numbers {
        query = query.bind(number);
    }
    let rows = query.fetch_all(connection).await?;
    rows.iter()
        .map(|row| {
            Ok(AuditRecord {
                seq: row.try_get("seq")?,
                id: row.try_get("id")?,
                time_ms: row.try_get("ts")?,
                user_id: row.try_get("user_id")?,
                principal: row.try_get("principal")?,
                server: row.try_get("server")?,
                method: row.try_get("method")?,
                target: row.try_get("target")?,
                arguments_digest: row.try_get("arguments_digest")?,
                decision: row.try_get("decision")?,
                reason: row.try_get("reason")?,
                outcome: row.try_get("outcome")?,
                error: row.try_get("error")?,
                latency_us: row.try_get("latency_us")?,
                client_name: row.try_get("client_name")?,
                client_version: row.try_get("client_version")?,
                ip: row.try_get("ip")?,
                correlation_id: row.try_get("correlation_id")?,
                rules: row
                    .try_get::<Option<String>, _>("rules")?
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .unwrap_or_default(),
                detail: row.try_get::<Option<String>, _>("detail")?.and_then(|text| serde_json::from_str(&text).ok()),
                sealed_arguments: row.try_get("sealed_arguments")?,
            })
        })
        .collect()
}

/// Who used which allow rules since `since_ms`: (principal, the rules that allowed a call,
/// when last), from the calls (tools, resources, prompts) the rules allowed.
pub async fn rule_use(
    connection: &mut AnyConnection,
    since_ms: i64,
) -> Result<Vec<(String, Vec<String>, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT principal, rules, MAX(ts) AS last FROM audit_events \
         WHERE ts >= $1 AND decision = 'allow' AND rules IS NOT NULL \
         AND method IN ('tools/call', 'resources/read', 'prompts/get') GROUP BY principal, rules",
    )
    .bind(since_ms)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            let rules: String = row.try_get("rules")?;
            Ok((row.try_get("principal")?, serde_json::from_str(&rules).unwrap_or_default(), row.try_get("last")?))
        })
        .collect()
}

/// The SQLite audit writer's own connection: a plain synchronous connection on a dedicated
/// thread, because a `tools/call` waits for its event's commit and every hop between threads
/// is on its path. (sqlx's SQLite driver runs each statement on a worker thread and answers
/// through a channel: three round trips for begin, insert and commit.)
pub mod sqlite_writer {
    use super::super::StoreError;
    use crate::audit::{AuditEvent, Completion};
    use std::path::Path;

    pub struct Writer {
        connection: rusqlite::Connection,
    }

    fn failed(error: rusqlite::Error) -> StoreError {
        StoreError::Open(format!("audit writer: {error}"))
    }

    /// A second connection that copies the WAL into the database.
    pub struct Checkpointer {
        connection: rusqlite::Connection,
    }

    impl Checkpointer {
        /// Copy what the WAL holds into the database without blocking writers; returns the
        /// frames in the WAL and how many of them are now in the database.
        pub fn checkpoint(&self) -> Result<(i64, i64), StoreError> {
            self.connection
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get(1)?, row.get(2)?)))
                .map_err(failed)
        }
    }

    /// How long the writer thread works before it lets other runnable threads have its CPU.
    const SLICE: std::time::Duration = std::time::Duration::from_micros(20);

    /// Hands the CPU to whatever else is runnable on it every [`SLICE`] of a batch. A batch of
    /// a few dozen events takes a few hundred microseconds; on a small host the scheduler
    /// otherwise lets it run out before the thread it just woke (the upstream, the client, a
    /// runtime worker with the next message), and that one call waits the whole batch out —
    /// measured on 2 cores at concurrency 1: p99 +300 µs every fifth millisecond. A yield with
    /// nothing else to run returns at once. Only a batch of at most [`POLITE_BATCH`] yields:
    /// a larger one means the writer is falling behind, and a writer that gave way to a busy
    /// CPU all the time would fall further behind until calls fail closed (seen at concurrency
    /// 32 with a busy-polling worker on the other CPU).
    struct Pace {
        since: std::time::Instant,
        polite: bool,
    }

    /// The largest batch that yields its CPU (what queues in [`crate::audit`]'s deferral
    /// window at a few thousand calls a second).
    const POLITE_BATCH: usize = 128;

    impl Pace {
        fn new(polite: bool) -> Pace {
            Pace { since: std::time::Instant::now(), polite }
        }

        fn step(&mut self) {
            if self.polite && self.since.elapsed() >= SLICE {
                std::thread::yield_now();
                self.since = std::time::Instant::now();
            }
        }
    }

    impl Writer {
        pub fn open(path: &Path) -> Result<Writer, StoreError> {
            let connection = rusqlite::Connection::open(path).map_err(failed)?;
            // Checkpoints (copying the WAL into the database, with an fsync) are left to
            // `checkpoint`, on another thread, so no call waits behind one.
            connection
                .execute_batch(
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000; \
                     PRAGMA wal_autocheckpoint=0;",
                )
                .map_err(failed)?;
            Ok(Writer { connection })
        }

        /// A connection for [`Checkpointer::checkpoint`].
        pub fn checkpointer(path: &Path) -> Result<Checkpointer, StoreError> {
            let connection = rusqlite::Connection::open(path).map_err(failed)?;
            // A WAL that grew under load is cut back to this size once it restarts.
            connection
                .execute_batch("PRAGMA busy_timeout=10000; PRAGMA journal_size_limit=67108864;")
                .map_err(failed)?;
            Ok(Checkpointer { connection })
        }

        /// How far the audit journal is applied: (generation, position).
        pub fn journal_mark(&self) -> Result<(u64, u64), StoreError> {
            self.connection
                .query_row("SELECT generation, position FROM audit_journal WHERE id = 1", [], |row| {
                    Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64))
                })
                .map_err(failed)
        }

        /// Insert and complete in one transaction, recording how far the journal is applied
        /// when `mark` is given; returns the inserted events' `seq`.
        pub fn commit(
            &mut self,
            inserts: &[AuditEvent],
            completions: &[Completion],
            mark: Option<(u64, u64)>,
        ) -> Result<Vec<i64>, StoreError> {
            // Cached statements rather than `Connection::transaction`, which parses BEGIN and
            // COMMIT again on every call; IMMEDIATE takes the write lock at once.
            self.connection
                .prepare_cached("BEGIN IMMEDIATE")
                .and_then(|mut begin| begin.execute([]))
                .map_err(failed)?;
            let written = self.write(inserts, completions).and_then(|sequence| {
                if let Some((generation, position)) = mark {
                    self.connection
                        .prepare_cached("UPDATE audit_journal SET generation = ?1, position = ?2 WHERE id = 1")?
                        .execute(rusqlite::params![generation as i64, position as i64])?;
                }
                self.connection.prepare_cached("COMMIT")?.execute([])?;
                Ok(sequence)
            });
            if written.is_err() && !self.connection.is_autocommit() {
                let _ = self.connection.execute_batch("ROLLBACK");
            }
            written.map_err(failed)
        }

        fn write(&self, inserts: &[AuditEvent], completions: &[Completion]) -> Result<Vec<i64>, rusqlite::Error> {
            let mut sequence = Vec::with_capacity(inserts.len());
            let mut insert = self.connection.prepare_cached(
                "INSERT INTO audit_events (id, ts, user_id, principal, server, method, target, sealed_arguments, \
                 arguments_digest, decision, reason, outcome, error, latency_us, client_name, client_version, ip, \
                 correlation_id, replica, rules, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
                 ?21)",
            )?;
            let mut pace = Pace::new(inserts.len() + completions.len() <= POLITE_BATCH);
            for event in inserts {
                pace.step();
                sequence.push(insert.insert(rusqlite::params![
                    event.id,
                    event.ts,
                    event.user_id,
                    event.principal,
                    event.server,
                    event.method,
                    event.target,
                    event.sealed_arguments,
                    event.arguments_digest,
                    event.decision,
                    event.reason,
                    event.outcome,
                    event.error,
                    event.latency_us,
                    event.client_name,
                    event.client_version,
                    event.ip,
                    event.correlation_id,
                    event.replica,
                    super::rules_text(&event.rules),
                    event.detail,
                ])?);
            }
            let mut complete = self
                .connection
                .prepare_cached("UPDATE audit_events SET outcome = ?1, error = ?2, latency_us = ?3 WHERE seq = ?4")?;
            for completion in completions {
                pace.step();
                complete.execute(rusqlite::params![
                    completion.outcome,
                    completion.error,
                    completion.latency_us,
                    completion.event
                ])?;
            }
            Ok(sequence)
        }
    }
}
