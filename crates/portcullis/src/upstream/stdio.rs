//! stdio upstreams: a child process that speaks newline-delimited JSON-RPC.
//!
//! The child starts with a clean environment: the server's configured `env` plus a minimal
//! `PATH` and `HOME`, never the gateway's own variables or secrets. Its stderr goes to the
//! gateway log. Routing, id remapping and lifetime are [`super::channel`]'s.

use super::UpstreamError;
use super::channel::{Inbox, Stop};
use crate::snapshot::ServerEntry;
use serde_json::Value;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// The largest line accepted from a child.
const MAX_LINE_BYTES: usize = 32 * 1024 * 1024;
/// The `PATH` a child gets unless its server sets one.
const MINIMAL_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Start the server's process; write `outgoing` to its stdin, deliver its stdout to `inbox`.
pub fn start(
    entry: &ServerEntry,
    home: &str,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    inbox: Inbox,
) -> Result<Stop, UpstreamError> {
    let server = &entry.server;
    let program =
        server.command.as_deref().ok_or_else(|| UpstreamError::Unavailable("no command configured".into()))?;
    let mut child = Command::new(program)
        .args(&server.args)
        .env_clear()
        .env("PATH", MINIMAL_PATH)
        .env("HOME", home)
        .envs(&entry.secrets.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| UpstreamError::Unavailable(format!("cannot start {program:?}: {error}")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| UpstreamError::Unavailable("no stdin".into()))?;
    let stdout = child.stdout.take().ok_or_else(|| UpstreamError::Unavailable("no stdout".into()))?;
    let stderr = child.stderr.take().ok_or_else(|| UpstreamError::Unavailable("no stderr".into()))?;
    tokio::spawn(async move {
        while let Some(mut line) = outgoing.recv().await {
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
    tokio::spawn(async move {
        let mut stdout = BufReader::with_capacity(64 * 1024, stdout);
        let mut line = Vec::with_capacity(4096);
        loop {
            line.clear();
            let read = (&mut stdout).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut line).await;
            match read {
                Ok(0) | Err(_) => {
                    inbox.closed("the server process exited").await;
                    return;
                }
                Ok(_) if line.len() > MAX_LINE_BYTES => {
                    tracing::warn!(server = %inbox.server(), "the server process wrote a line over 32 MiB; stopping it");
                    inbox.closed("the server process sent an oversized message").await;
                    return;
                }
                Ok(_) => {}
            }
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Value>(text) {
                Ok(value) if value.is_object() => {
                    if !inbox.deliver(value).await {
                        return;
                    }
                }
                _ => {
                    tracing::warn!(server = %inbox.server(), "the server process wrote a line that is not JSON-RPC; ignored")
                }
            }
        }
    });
    Ok(Box::new(move || {
        let _ = child.start_kill();
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
    }))
}
