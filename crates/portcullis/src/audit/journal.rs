//! The audit journal of a SQLite deployment: an append-only file next to the database that
//! makes a `tools/call`'s audit event durable before the call is forwarded, at the cost of one
//! `write` — the same guarantee as a SQLite WAL commit with `synchronous=NORMAL` (the bytes
//! are in the kernel once `write` returns, so they survive the process crashing), without a
//! transaction, its locks and two page writes on the call's path. The writer thread moves
//! journaled events into the database in batches; the database row `audit_journal` records, in
//! the same transaction, how far the journal has been applied. On start the rest is replayed.
//!
//! Files are `{database}-audit.{generation}`; a new generation starts when a file passes
//! [`ROTATE_BYTES`], and older files are deleted once the database holds their last event.
//! A record is a little-endian `u32` length and that many bytes of JSON; a torn last record
//! (the process died inside `write`) is one whose call was never forwarded, and is dropped.
//! `{database}-audit.lock` is held (advisory lock) while a gateway serves the store, so no
//! second process replays a journal that is still being written.

use super::AuditEvent;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Size after which appends go to a new file.
pub const ROTATE_BYTES: u64 = 8 * 1024 * 1024;

/// An event as the journal stores it.
#[derive(Deserialize)]
struct Record {
    id: String,
    ts: i64,
    user_id: Option<String>,
    principal: String,
    server: Option<String>,
    method: String,
    target: Option<String>,
    /// Base64 (sealed bytes).
    sealed_arguments: Option<String>,
    arguments_digest: Option<String>,
    decision: String,
    reason: String,
    outcome: String,
    error: Option<String>,
    latency_us: Option<i64>,
    client_name: Option<String>,
    client_version: Option<String>,
    ip: Option<String>,
    correlation_id: String,
    replica: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rules: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// [`Record`], borrowed from the event: what `encode` writes (the same JSON, no copies).
#[derive(Serialize)]
struct RecordRef<'a> {
    id: &'a str,
    ts: i64,
    user_id: Option<&'a str>,
    principal: &'a str,
    server: Option<&'a str>,
    method: &'a str,
    target: Option<&'a str>,
    sealed_arguments: Option<String>,
    arguments_digest: Option<&'a str>,
    decision: &'a str,
    reason: &'a str,
    outcome: &'a str,
    error: Option<&'a str>,
    latency_us: Option<i64>,
    client_name: Option<&'a str>,
    client_version: Option<&'a str>,
    ip: Option<&'a str>,
    correlation_id: &'a str,
    replica: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    rules: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// The bytes appended for `event`.
pub fn encode(event: &AuditEvent) -> Vec<u8> {
    let record = RecordRef {
        id: &event.id,
        ts: event.ts,
        user_id: event.user_id.as_deref(),
        principal: &event.principal,
        server: event.server.as_deref(),
        method: &event.method,
        target: event.target.as_deref(),
        sealed_arguments: event.sealed_arguments.as_ref().map(|bytes| STANDARD_NO_PAD.encode(bytes)),
        arguments_digest: event.arguments_digest.as_deref(),
        decision: event.decision,
        reason: &event.reason,
        outcome: &event.outcome,
        error: event.error.as_deref(),
        latency_us: event.latency_us,
        client_name: event.client_name.as_deref(),
        client_version: event.client_version.as_deref(),
        ip: event.ip.as_deref(),
        correlation_id: &event.correlation_id,
        replica: &event.replica,
        rules: &event.rules,
        detail: event.detail.as_deref(),
    };
    // Room for the length in front, so the record is written once; and for a typical record,
    // so it is not grown piece by piece.
    let mut bytes = Vec::with_capacity(1024);
    bytes.extend_from_slice(&[0; 4]);
    if serde_json::to_writer(&mut bytes, &record).is_err() {
        bytes.truncate(4);
    }
    let length = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&length.to_le_bytes());
    bytes
}

fn decode(json: &[u8]) -> Option<AuditEvent> {
    let record: Record = serde_json::from_slice(json).ok()?;
    let decision = match record.decision.as_str() {
        "allow" => "allow",
        "deny" => "deny",
        _ => "none",
    };
    Some(AuditEvent {
        id: record.id,
        ts: record.ts,
        user_id: record.user_id,
        principal: record.principal,
        server: record.server,
        method: record.method,
        target: record.target,
        sealed_arguments: record.sealed_arguments.and_then(|text| STANDARD_NO_PAD.decode(text).ok()),
        arguments_digest: record.arguments_digest,
        decision,
        reason: record.reason,
        outcome: record.outcome,
        error: record.error,
        latency_us: record.latency_us,
        client_name: record.client_name,
        client_version: record.client_version,
        ip: record.ip,
        correlation_id: record.correlation_id,
        replica: record.replica,
        rules: record.rules,
        detail: record.detail,
    })
}

/// The events of one file from byte `from`, with the position after each; stops at a torn or
/// unreadable record. The second value says whether every byte was read (false: something
/// other than a torn last record follows, and the file must be kept for a person to look at).
pub fn read(path: &Path, from: u64) -> std::io::Result<(Vec<(AuditEvent, u64)>, bool)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut events = Vec::new();
    let mut position = from as usize;
    while position + 4 <= bytes.len() {
        let length =
            u32::from_le_bytes([bytes[position], bytes[position + 1], bytes[position + 2], bytes[position + 3]])
                as usize;
        let end = position + 4 + length;
        let Some(event) = bytes.get(position + 4..end).and_then(decode) else { break };
        events.push((event, end as u64));
        position = end;
    }
    // A torn last record is shorter than its length says; anything else left over is damage.
    let rest = bytes.len().saturating_sub(position);
    let torn_tail = rest < 4
        || u32::from_le_bytes([bytes[position], bytes[position + 1], bytes[position + 2], bytes[position + 3]])
            as usize
            > rest - 4;
    Ok((events, rest == 0 || torn_tail))
}

/// The journal file of `generation`.
pub fn file_of(database: &Path, generation: u64) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(format!("-audit.{generation:010}"));
    PathBuf::from(name)
}

/// The journal files that exist, by generation.
pub fn files(database: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let directory = database.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = format!("{}-audit.", database.file_name().and_then(|name| name.to_str()).unwrap_or_default());
    let mut found = Vec::new();
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(generation) =
            name.to_str().and_then(|name| name.strip_prefix(&prefix)).and_then(|rest| rest.parse().ok())
        else {
            continue;
        };
        found.push((generation, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Hold the journal's lock for as long as the returned file lives; an error when another
/// process holds it.
pub fn lock(database: &Path) -> Result<File, String> {
    let mut name = database.as_os_str().to_owned();
    name.push("-audit.lock");
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(PathBuf::from(&name)).map_err(
            |error| format!("cannot open the audit journal lock {}: {error}", PathBuf::from(&name).display()),
        )?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "another Portcullis process serves the store {} (its audit journal is locked); stop it first, or use PostgreSQL for several replicas",
            database.display()
        )),
        Err(std::fs::TryLockError::Error(error)) => Err(format!("cannot lock the audit journal: {error}")),
    }
}

/// The file being appended to.
#[derive(Debug)]
pub struct Appender {
    database: PathBuf,
    file: File,
    pub generation: u64,
    pub length: u64,
}

impl Appender {
    /// Start generation `generation` (a new, empty file).
    pub fn create(database: &Path, generation: u64) -> std::io::Result<Appender> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(file_of(database, generation))?;
        let length = file.metadata()?.len();
        Ok(Appender { database: database.to_path_buf(), file, generation, length })
    }

    /// Append one record; the position after it. Moves to a new file first when this one is full.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<(u64, u64)> {
        if self.length >= ROTATE_BYTES {
            *self = Appender::create(&self.database, self.generation + 1)?;
        }
        if let Err(error) = self.file.write_all(bytes) {
            // Part of the record may be in the file (a full disk): cut it off, so the next
            // record starts where the recorded positions say; failing that, start a new file.
            if self.file.set_len(self.length).is_err() {
                *self = Appender::create(&self.database, self.generation + 1)?;
            }
            return Err(error);
        }
        self.length += bytes.len() as u64;
        Ok((self.generation, self.length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> AuditEvent {
        let mut event = AuditEvent::action("ann@example.com", Some("u1"), "tools/call", Some("echo"), true, "ok", "r1");
        event.id = id.to_owned();
        event.sealed_arguments = Some(vec![0, 1, 2, 250]);
        event.rules = vec!["engineers use github".into()];
        event
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let directory = std::env::temp_dir().join(format!("portcullis-journal-{}", crate::crypto::new_id()));
        std::fs::create_dir_all(&directory).unwrap();
        let database = directory.join("portcullis.db");
        let mut appender = Appender::create(&database, 7).unwrap();
        let (_, first_end) = appender.append(&encode(&event("a"))).unwrap();
        let (generation, second_end) = appender.append(&encode(&event("b"))).unwrap();
        assert_eq!(generation, 7);
        // The process died inside the third write.
        let third = encode(&event("c"));
        appender.append(&third[..third.len() / 2]).unwrap();
        let (events, whole) = read(&file_of(&database, 7), 0).unwrap();
        assert!(whole, "a torn last record is not damage");
        let ids: Vec<&str> = events.iter().map(|(event, _)| event.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(events[1].1, second_end);
        assert_eq!(events[0].0.sealed_arguments, Some(vec![0, 1, 2, 250]));
        assert_eq!(events[0].0.decision, "allow");
        let (rest, _) = read(&file_of(&database, 7), first_end).unwrap();
        assert_eq!(rest.len(), 1);
        // Garbage between records is damage, not a torn tail.
        std::fs::write(
            file_of(&database, 8),
            [&encode(&event("d"))[..], b"\x02\0\0\0zz", &encode(&event("e"))[..]].concat(),
        )
        .unwrap();
        let (events, whole) = read(&file_of(&database, 8), 0).unwrap();
        assert_eq!((events.len(), whole), (1, false));
        assert_eq!(files(&database).unwrap().iter().map(|(generation, _)| *generation).collect::<Vec<_>>(), [7, 8]);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn one_process_at_a_time_holds_the_journal() {
        let directory = std::env::temp_dir().join(format!("portcullis-journal-{}", crate::crypto::new_id()));
        std::fs::create_dir_all(&directory).unwrap();
        let database = directory.join("portcullis.db");
        let held = lock(&database).unwrap();
        assert!(lock(&database).unwrap_err().contains("another Portcullis process"));
        drop(held);
        assert!(lock(&database).is_ok());
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
