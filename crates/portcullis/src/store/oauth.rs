//! OAuth clients, authorization codes and tokens (all secrets stored as SHA-256).

use super::registry::{bump_revision, json_list};
use super::{StoreError, now_ms};
use sqlx::{AnyConnection, Row};

#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
}

/// Insert a client (registered, or described by its metadata document), or refresh the name
/// and redirect URIs of one known already.
pub async fn save_client(connection: &mut AnyConnection, client: &Client) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO oauth_clients (id, name, redirect_uris, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, redirect_uris = excluded.redirect_uris",
    )
    .bind(&client.id)
    .bind(&client.name)
    .bind(serde_json::to_string(&client.redirect_uris).unwrap_or_default())
    .bind(now_ms())
    .execute(&mut *connection)
    .await?;
    Ok(())
}

pub async fn client(connection: &mut AnyConnection, id: &str) -> Result<Option<Client>, StoreError> {
    let row = sqlx::query("SELECT id, name, redirect_uris FROM oauth_clients WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?;
    Ok(row.map(|row| Client { id: row.get(0), name: row.get(1), redirect_uris: json_list(&row.get::<String, _>(2)) }))
}

/// An authorization code as issued.
#[derive(Debug, Clone)]
pub struct Code {
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub resource: String,
    pub family: String,
    pub expires_at: i64,
    pub used: bool,
}

pub async fn insert_code(connection: &mut AnyConnection, hash: &str, code: &Code) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO oauth_codes (code_hash, client_id, user_id, redirect_uri, code_challenge, resource, family, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(hash)
    .bind(&code.client_id)
    .bind(&code.user_id)
    .bind(&code.redirect_uri)
    .bind(&code.code_challenge)
    .bind(&code.resource)
    .bind(&code.family)
    .bind(code.expires_at)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Take the code: returns it as it was, and marks it used (a second exchange finds it used).
pub async fn take_code(connection: &mut AnyConnection, hash: &str) -> Result<Option<Code>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT client_id, user_id, redirect_uri, code_challenge, resource, family, expires_at, used_at \
         FROM oauth_codes WHERE code_hash = $1",
    )
    .bind(hash)
    .fetch_optional(&mut *connection)
    .await?
    else {
        return Ok(None);
    };
    let code = Code {
        client_id: row.try_get("client_id")?,
        user_id: row.try_get("user_id")?,
        redirect_uri: row.try_get("redirect_uri")?,
        code_challenge: row.try_get("code_challenge")?,
        resource: row.try_get("resource")?,
        family: row.try_get("family")?,
        expires_at: row.try_get("expires_at")?,
        used: row.try_get::<Option<i64>, _>("used_at")?.is_some(),
    };
    let taken = sqlx::query("UPDATE oauth_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL")
        .bind(now_ms())
        .bind(hash)
        .execute(&mut *connection)
        .await?;
    // Two exchanges racing for one code: only the one whose update took it may use it.
    Ok(Some(Code { used: code.used || taken.rows_affected() == 0, ..code }))
}

/// A token as stored.
#[derive(Debug, Clone)]
pub struct Token {
    /// `access` or `refresh`.
    pub kind: String,
    pub family: String,
    pub client_id: String,
    pub user_id: String,
    pub resource: String,
    pub expires_at: i64,
    pub used: bool,
    pub revoked: bool,
}

pub async fn insert_token(connection: &mut AnyConnection, hash: &str, token: &Token) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO oauth_tokens (token_hash, kind, family, client_id, user_id, resource, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(hash)
    .bind(&token.kind)
    .bind(&token.family)
    .bind(&token.client_id)
    .bind(&token.user_id)
    .bind(&token.resource)
    .bind(token.expires_at)
    .execute(&mut *connection)
    .await?;
    if token.kind == "access" {
        // The data plane learns of access tokens through its snapshot.
        bump_revision(connection).await?;
    }
    Ok(())
}

pub async fn token(connection: &mut AnyConnection, hash: &str) -> Result<Option<Token>, StoreError> {
    let row = sqlx::query(
        "SELECT kind, family, client_id, user_id, resource, expires_at, used_at, revoked_at FROM oauth_tokens \
         WHERE token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(&mut *connection)
    .await?;
    row.map(|row| {
        Ok(Token {
            kind: row.try_get("kind")?,
            family: row.try_get("family")?,
            client_id: row.try_get("client_id")?,
            user_id: row.try_get("user_id")?,
            resource: row.try_get("resource")?,
            expires_at: row.try_get("expires_at")?,
            used: row.try_get::<Option<i64>, _>("used_at")?.is_some(),
            revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
        })
    })
    .transpose()
}

/// Mark a refresh token used; false when it was used already (a replay).
pub async fn use_token(connection: &mut AnyConnection, hash: &str) -> Result<bool, StoreError> {
    let result = sqlx::query("UPDATE oauth_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL")
        .bind(now_ms())
        .bind(hash)
        .execute(&mut *connection)
        .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn revoke_token(connection: &mut AnyConnection, hash: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE oauth_tokens SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL")
        .bind(now_ms())
        .bind(hash)
        .execute(&mut *connection)
        .await?;
    bump_revision(connection).await
}

/// Revoke every token of a family (refresh-token reuse, a replayed code).
pub async fn revoke_family(connection: &mut AnyConnection, family: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE oauth_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL")
        .bind(now_ms())
        .bind(family)
        .execute(&mut *connection)
        .await?;
    bump_revision(connection).await
}

/// Live access tokens for the snapshot: (hash, user id, resource, expires at).
pub async fn live_access_tokens(
    connection: &mut AnyConnection,
) -> Result<Vec<(String, String, String, String, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT token_hash, user_id, client_id, resource, expires_at FROM oauth_tokens \
         WHERE kind = 'access' AND revoked_at IS NULL AND expires_at > $1",
    )
    .bind(now_ms())
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))).collect())
}
