//! The server catalog's entries (see [`crate::catalog`]).

use super::{StoreError, now_ms};
use crate::catalog::Entry;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

/// A stored entry and its bookkeeping.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEntry {
    #[serde(flatten)]
    pub entry: Entry,
    /// `starter` (shipped with Portcullis), `admin` or `import`.
    pub source: String,
    pub retired_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn from_row(row: &AnyRow) -> Result<StoredEntry, StoreError> {
    let text: String = row.try_get("entry")?;
    let entry = serde_json::from_str(&text)
        .map_err(|error| StoreError::Conflict(format!("a stored catalog entry cannot be read: {error}")))?;
    Ok(StoredEntry {
        entry,
        source: row.try_get("source")?,
        retired_at: row.try_get("retired_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Every entry, by name; retired ones only with `retired`.
pub async fn list(connection: &mut AnyConnection, retired: bool) -> Result<Vec<StoredEntry>, StoreError> {
    let sql = if retired {
        "SELECT * FROM catalog_entries ORDER BY name"
    } else {
        "SELECT * FROM catalog_entries WHERE retired_at IS NULL ORDER BY name"
    };
    let rows = sqlx::query(sql).fetch_all(connection).await?;
    rows.iter().map(from_row).collect()
}

pub async fn get(connection: &mut AnyConnection, name: &str) -> Result<Option<StoredEntry>, StoreError> {
    let row =
        sqlx::query("SELECT * FROM catalog_entries WHERE name = $1").bind(name).fetch_optional(connection).await?;
    row.as_ref().map(from_row).transpose()
}

/// Create or replace an entry (`entry` already checked); a replaced entry is in offer again.
pub async fn put(connection: &mut AnyConnection, entry: &Entry, source: &str) -> Result<(), StoreError> {
    let now = now_ms();
    let text = serde_json::to_string(entry).unwrap_or_default();
    let updated = sqlx::query(
        "UPDATE catalog_entries SET entry = $1, source = $2, retired_at = NULL, updated_at = $3 WHERE name = $4",
    )
    .bind(&text)
    .bind(source)
    .bind(now)
    .bind(&entry.name)
    .execute(&mut *connection)
    .await?;
    if updated.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO catalog_entries (name, entry, source, retired_at, created_at, updated_at) \
             VALUES ($1, $2, $3, NULL, $4, $5)",
        )
        .bind(&entry.name)
        .bind(&text)
        .bind(source)
        .bind(now)
        .bind(now)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Take an entry out of offer (it stays, for what was made from it).
pub async fn retire(connection: &mut AnyConnection, name: &str) -> Result<(), StoreError> {
    let retired = sqlx::query("UPDATE catalog_entries SET retired_at = $1, updated_at = $1 WHERE name = $2")
        .bind(now_ms())
        .bind(name)
        .execute(&mut *connection)
        .await?;
    if retired.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("there is no catalog entry named {name:?}")));
    }
    Ok(())
}

/// Add the starter entries that are not there yet (never changing what admins edited or
/// retired; replicas starting together add each once); returns how many were added.
pub async fn seed(connection: &mut AnyConnection, entries: &[Entry]) -> Result<usize, StoreError> {
    let mut added = 0;
    let now = now_ms();
    for entry in entries {
        let inserted = sqlx::query(
            "INSERT INTO catalog_entries (name, entry, source, retired_at, created_at, updated_at) \
             VALUES ($1, $2, 'starter', NULL, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&entry.name)
        .bind(serde_json::to_string(entry).unwrap_or_default())
        .bind(now)
        .bind(now)
        .execute(&mut *connection)
        .await?;
        added += inserted.rows_affected() as usize;
    }
    Ok(added)
}
