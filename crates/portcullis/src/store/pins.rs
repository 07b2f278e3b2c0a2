//! Pinned tool, prompt and resource-template definitions (see [`crate::pinning`]). Every
//! change bumps the registry revision, so every replica's snapshot follows.

use super::{StoreError, now_ms};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

/// One pinned item: its approved definition and, when the server now offers something
/// else under that name, the pending one.
#[derive(Debug, Clone, Serialize)]
pub struct Pin {
    pub server: String,
    /// `tool`, `prompt` or `resource-template`.
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_definition: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_definition: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<i64>,
}

fn definition(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|text| serde_json::from_str(&text).ok())
}

/// Every pin (of one server, or all).
pub async fn list(connection: &mut AnyConnection, server: Option<&str>) -> Result<Vec<Pin>, StoreError> {
    let rows = match server {
        Some(server) => {
            sqlx::query("SELECT * FROM pins WHERE server = $1 ORDER BY kind, name")
                .bind(server)
                .fetch_all(connection)
                .await?
        }
        None => sqlx::query("SELECT * FROM pins ORDER BY server, kind, name").fetch_all(connection).await?,
    };
    rows.iter()
        .map(|row| {
            Ok(Pin {
                server: row.try_get("server")?,
                kind: row.try_get("kind")?,
                name: row.try_get("name")?,
                approved_hash: row.try_get("approved_hash")?,
                approved_definition: definition(row.try_get("approved_definition")?),
                approved_at: row.try_get("approved_at")?,
                approved_by: row.try_get("approved_by")?,
                pending_hash: row.try_get("pending_hash")?,
                pending_definition: definition(row.try_get("pending_definition")?),
                pending_since: row.try_get("pending_since")?,
            })
        })
        .collect()
}

/// The servers whose definitions are pinned: (server, pinned at, by).
pub async fn pinned_servers(connection: &mut AnyConnection) -> Result<Vec<(String, i64, String)>, StoreError> {
    let rows = sqlx::query("SELECT server, pinned_at, pinned_by FROM pinned_servers").fetch_all(connection).await?;
    rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))).collect()
}

/// Start pinning `server` (false when it was pinned already).
pub async fn mark_pinned(connection: &mut AnyConnection, server: &str, by: &str) -> Result<bool, StoreError> {
    let exists = sqlx::query("SELECT 1 FROM pinned_servers WHERE server = $1")
        .bind(server)
        .fetch_optional(&mut *connection)
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    sqlx::query("INSERT INTO pinned_servers (server, pinned_at, pinned_by) VALUES ($1, $2, $3)")
        .bind(server)
        .bind(now_ms())
        .bind(by)
        .execute(&mut *connection)
        .await?;
    super::registry::bump_revision(connection).await?;
    Ok(true)
}

/// Approve `definition` for an item (whatever was pending for it is settled).
pub async fn approve(
    connection: &mut AnyConnection,
    server: &str,
    kind: &str,
    name: &str,
    hash: &str,
    definition: &str,
    by: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    let updated = sqlx::query(
        "UPDATE pins SET approved_hash = $1, approved_definition = $2, approved_at = $3, approved_by = $4, \
         pending_hash = NULL, pending_definition = NULL, pending_since = NULL \
         WHERE server = $5 AND kind = $6 AND name = $7",
    )
    .bind(hash)
    .bind(definition)
    .bind(now)
    .bind(by)
    .bind(server)
    .bind(kind)
    .bind(name)
    .execute(&mut *connection)
    .await?;
    if updated.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO pins (server, kind, name, approved_hash, approved_definition, approved_at, approved_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(server)
        .bind(kind)
        .bind(name)
        .bind(hash)
        .bind(definition)
        .bind(now)
        .bind(by)
        .execute(&mut *connection)
        .await?;
    }
    super::registry::bump_revision(connection).await?;
    Ok(())
}

/// Hold a definition that differs from the approved one (or is new). False when exactly this
/// definition is held already.
pub async fn hold(
    connection: &mut AnyConnection,
    server: &str,
    kind: &str,
    name: &str,
    hash: &str,
    definition: &str,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let updated = sqlx::query(
        "UPDATE pins SET pending_hash = $1, pending_definition = $2, pending_since = $3 \
         WHERE server = $4 AND kind = $5 AND name = $6 AND (pending_hash IS NULL OR pending_hash <> $1)",
    )
    .bind(hash)
    .bind(definition)
    .bind(now)
    .bind(server)
    .bind(kind)
    .bind(name)
    .execute(&mut *connection)
    .await?;
    if updated.rows_affected() == 0 {
        let exists = sqlx::query("SELECT 1 FROM pins WHERE server = $1 AND kind = $2 AND name = $3")
            .bind(server)
            .bind(kind)
            .bind(name)
            .fetch_optional(&mut *connection)
            .await?
            .is_some();
        if exists {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO pins (server, kind, name, pending_hash, pending_definition, pending_since) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(server)
        .bind(kind)
        .bind(name)
        .bind(hash)
        .bind(definition)
        .bind(now)
        .execute(&mut *connection)
        .await?;
    }
    super::registry::bump_revision(connection).await?;
    Ok(true)
}

/// Forget a server's pins (the server was deleted).
pub async fn forget(connection: &mut AnyConnection, server: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM pins WHERE server = $1").bind(server).execute(&mut *connection).await?;
    sqlx::query("DELETE FROM pinned_servers WHERE server = $1").bind(server).execute(connection).await?;
    Ok(())
}
