//! The in-app inbox: one row per person per thing they should know.

use super::{StoreError, now_ms};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub id: String,
    pub kind: String,
    pub title: String,
    pub body: String,
    /// Where to look (a console path).
    pub link: String,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_at: Option<i64>,
}

/// Something for `user_id` to know.
pub async fn add(
    connection: &mut AnyConnection,
    user_id: &str,
    kind: &str,
    title: &str,
    body: &str,
    link: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO notifications (id, user_id, kind, title, body, link, created_at, read_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
    )
    .bind(crate::crypto::new_id())
    .bind(user_id)
    .bind(kind)
    .bind(title)
    .bind(body)
    .bind(link)
    .bind(now_ms())
    .execute(connection)
    .await?;
    Ok(())
}

/// A person's notifications, newest first.
pub async fn list(connection: &mut AnyConnection, user_id: &str, limit: i64) -> Result<Vec<Notification>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, kind, title, body, link, created_at, read_at FROM notifications WHERE user_id = $1 \
         ORDER BY created_at DESC LIMIT $2",
    )
    .bind(user_id)
    .bind(limit.clamp(1, 1000))
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Notification {
                id: row.try_get("id")?,
                kind: row.try_get("kind")?,
                title: row.try_get("title")?,
                body: row.try_get("body")?,
                link: row.try_get("link")?,
                created_at: row.try_get("created_at")?,
                read_at: row.try_get("read_at")?,
            })
        })
        .collect()
}

pub async fn unread(connection: &mut AnyConnection, user_id: &str) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL")
        .bind(user_id)
        .fetch_one(connection)
        .await?;
    Ok(row.try_get(0)?)
}

/// Mark one (`Some(id)`) or all of a person's notifications read.
pub async fn mark_read(connection: &mut AnyConnection, user_id: &str, id: Option<&str>) -> Result<u64, StoreError> {
    let result = match id {
        Some(id) => {
            sqlx::query("UPDATE notifications SET read_at = $1 WHERE user_id = $2 AND id = $3 AND read_at IS NULL")
                .bind(now_ms())
                .bind(user_id)
                .bind(id)
                .execute(connection)
                .await?
        }
        None => {
            sqlx::query("UPDATE notifications SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL")
                .bind(now_ms())
                .bind(user_id)
                .execute(connection)
                .await?
        }
    };
    Ok(result.rows_affected())
}
