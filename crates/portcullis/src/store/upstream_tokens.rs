//! Per-user OAuth to upstream servers (see [`crate::auth::upstream`]): the gateway's client
//! registrations and each person's tokens, both sealed by the caller.

use super::{StoreError, now_ms};
use sqlx::{AnyConnection, Row};

/// The gateway's registration at an authorization server, for one upstream server.
#[derive(Debug, Clone)]
pub struct Registration {
    pub client_id: String,
    pub sealed_secret: Option<String>,
    pub redirect_uri: String,
}

pub async fn client(
    connection: &mut AnyConnection,
    server: &str,
    issuer: &str,
) -> Result<Option<Registration>, StoreError> {
    let row = sqlx::query(
        "SELECT client_id, sealed_secret, redirect_uri FROM upstream_clients WHERE server = $1 AND issuer = $2",
    )
    .bind(server)
    .bind(issuer)
    .fetch_optional(connection)
    .await?;
    row.map(|row| {
        Ok(Registration { client_id: row.try_get(0)?, sealed_secret: row.try_get(1)?, redirect_uri: row.try_get(2)? })
    })
    .transpose()
}

pub async fn put_client(
    connection: &mut AnyConnection,
    server: &str,
    issuer: &str,
    registration: &Registration,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM upstream_clients WHERE server = $1 AND issuer = $2")
        .bind(server)
        .bind(issuer)
        .execute(&mut *connection)
        .await?;
    sqlx::query(
        "INSERT INTO upstream_clients (server, issuer, client_id, sealed_secret, redirect_uri, registered_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(server)
    .bind(issuer)
    .bind(&registration.client_id)
    .bind(&registration.sealed_secret)
    .bind(&registration.redirect_uri)
    .bind(now_ms())
    .execute(connection)
    .await?;
    Ok(())
}

/// A person's tokens for a server, as stored.
#[derive(Debug, Clone)]
pub struct StoredTokens {
    pub sealed: String,
    pub expires_at: Option<i64>,
    /// `connected` or `needs-reconnect`.
    pub status: String,
    pub updated_at: i64,
}

pub async fn tokens(
    connection: &mut AnyConnection,
    user_id: &str,
    server: &str,
) -> Result<Option<StoredTokens>, StoreError> {
    let row = sqlx::query(
        "SELECT sealed, expires_at, status, updated_at FROM upstream_tokens WHERE user_id = $1 AND server = $2",
    )
    .bind(user_id)
    .bind(server)
    .fetch_optional(connection)
    .await?;
    row.map(|row| {
        Ok(StoredTokens {
            sealed: row.try_get(0)?,
            expires_at: row.try_get(1)?,
            status: row.try_get(2)?,
            updated_at: row.try_get(3)?,
        })
    })
    .transpose()
}

/// Every server a person has tokens for: (server, status, expires at).
pub async fn of_user(
    connection: &mut AnyConnection,
    user_id: &str,
) -> Result<Vec<(String, String, Option<i64>)>, StoreError> {
    let rows = sqlx::query("SELECT server, status, expires_at FROM upstream_tokens WHERE user_id = $1")
        .bind(user_id)
        .fetch_all(connection)
        .await?;
    rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))).collect()
}

pub async fn put_tokens(
    connection: &mut AnyConnection,
    user_id: &str,
    server: &str,
    sealed: &str,
    expires_at: Option<i64>,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM upstream_tokens WHERE user_id = $1 AND server = $2")
        .bind(user_id)
        .bind(server)
        .execute(&mut *connection)
        .await?;
    sqlx::query(
        "INSERT INTO upstream_tokens (user_id, server, sealed, expires_at, status, updated_at) \
         VALUES ($1, $2, $3, $4, 'connected', $5)",
    )
    .bind(user_id)
    .bind(server)
    .bind(sealed)
    .bind(expires_at)
    .bind(now_ms())
    .execute(connection)
    .await?;
    Ok(())
}

/// Mark a person's connection as needing a new sign-in (the refresh failed or the upstream
/// refused the token). True when it was connected until now.
pub async fn needs_reconnect(connection: &mut AnyConnection, user_id: &str, server: &str) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE upstream_tokens SET status = 'needs-reconnect', updated_at = $1 \
         WHERE user_id = $2 AND server = $3 AND status = 'connected'",
    )
    .bind(now_ms())
    .bind(user_id)
    .bind(server)
    .execute(connection)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Make the stored access token count as expired (the upstream refused it), so the next use
/// refreshes it.
pub async fn expire_now(connection: &mut AnyConnection, user_id: &str, server: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE upstream_tokens SET expires_at = 0 WHERE user_id = $1 AND server = $2")
        .bind(user_id)
        .bind(server)
        .execute(connection)
        .await?;
    Ok(())
}

pub async fn delete_tokens(connection: &mut AnyConnection, user_id: &str, server: &str) -> Result<bool, StoreError> {
    let deleted = sqlx::query("DELETE FROM upstream_tokens WHERE user_id = $1 AND server = $2")
        .bind(user_id)
        .bind(server)
        .execute(connection)
        .await?;
    Ok(deleted.rows_affected() > 0)
}
