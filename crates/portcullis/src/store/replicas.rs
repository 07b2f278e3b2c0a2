//! Replicas announce where other replicas can reach them, so a request for a session that
//! lives in another process (a stdio child) can be forwarded to its owner.

use super::{StoreError, now_ms};
use sqlx::{AnyConnection, Row};

/// Record (or refresh) this replica's address.
pub async fn heartbeat(connection: &mut AnyConnection, id: &str, url: &str) -> Result<(), StoreError> {
    let updated = sqlx::query("UPDATE replicas SET url = $1, seen_at = $2 WHERE id = $3")
        .bind(url)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *connection)
        .await?;
    if updated.rows_affected() == 0 {
        sqlx::query("INSERT INTO replicas (id, url, seen_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(url)
            .bind(now_ms())
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// Where a replica can be reached, if it has been seen recently.
pub async fn address(connection: &mut AnyConnection, id: &str, max_age_ms: i64) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT url FROM replicas WHERE id = $1 AND seen_at >= $2")
        .bind(id)
        .bind(now_ms() - max_age_ms)
        .fetch_optional(connection)
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Every replica seen within `max_age_ms`: (id, url).
pub async fn all(connection: &mut AnyConnection, max_age_ms: i64) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query("SELECT id, url FROM replicas WHERE seen_at >= $1")
        .bind(now_ms() - max_age_ms)
        .fetch_all(connection)
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}
