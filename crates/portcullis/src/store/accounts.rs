//! Local accounts: passwords, TOTP, recovery codes, console session epochs, and the one-time
//! tokens of first-run setup.

use super::registry::json_list;
use super::{StoreError, now_ms};
use crate::registry::{AdminRole, Status};
use sqlx::{AnyConnection, Row};

/// What signing in needs to know about a person.
#[derive(Debug, Clone)]
pub struct Account {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub status: Status,
    pub admin_roles: Vec<AdminRole>,
    pub password_hash: Option<String>,
    /// Sealed with the deployment key (context `totp:{user_id}`).
    pub totp_secret: Option<String>,
    pub session_epoch: i64,
}

const COLUMNS: &str =
    "id, email, name, status, admin, admin_roles, password_hash, totp_secret, session_epoch FROM users";

fn account_from_row(row: &sqlx::any::AnyRow) -> Result<Account, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Account {
        user_id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        status: Status::parse(&status).unwrap_or(Status::Inactive),
        admin_roles: AdminRole::held(
            row.try_get::<i64, _>("admin")? != 0,
            &json_list(&row.try_get::<String, _>("admin_roles")?),
        ),
        password_hash: row.try_get("password_hash")?,
        totp_secret: row.try_get("totp_secret")?,
        session_epoch: row.try_get("session_epoch")?,
    })
}

pub async fn by_email(connection: &mut AnyConnection, email: &str) -> Result<Option<Account>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} WHERE lower(email) = $1"))
        .bind(email.to_lowercase())
        .fetch_optional(&mut *connection)
        .await?;
    row.as_ref().map(account_from_row).transpose()
}

pub async fn by_id(connection: &mut AnyConnection, user_id: &str) -> Result<Option<Account>, StoreError> {
    let row =
        sqlx::query(&format!("SELECT {COLUMNS} WHERE id = $1")).bind(user_id).fetch_optional(&mut *connection).await?;
    row.as_ref().map(account_from_row).transpose()
}

pub async fn set_password(connection: &mut AnyConnection, user_id: &str, hash: &str) -> Result<(), StoreError> {
    // A new password ends every console session of the person.
    let result = sqlx::query(
        "UPDATE users SET password_hash = $1, updated_at = $2, session_epoch = session_epoch + 1 WHERE id = $3",
    )
    .bind(hash)
    .bind(now_ms())
    .bind(user_id)
    .execute(&mut *connection)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no user with id {user_id:?}")));
    }
    Ok(())
}

/// Store a confirmed TOTP enrolment (`step` is the step of the code that confirmed it) and
/// replace the recovery codes.
pub async fn set_totp(
    connection: &mut AnyConnection,
    user_id: &str,
    sealed_secret: &str,
    step: u64,
    recovery_hashes: &[String],
) -> Result<(), StoreError> {
    // A new second factor ends every other console session of the person.
    sqlx::query(
        "UPDATE users SET totp_secret = $1, totp_last_step = $2, updated_at = $3, session_epoch = session_epoch + 1 \
         WHERE id = $4",
    )
    .bind(sealed_secret)
    .bind(step as i64)
    .bind(now_ms())
    .bind(user_id)
    .execute(&mut *connection)
    .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1").bind(user_id).execute(&mut *connection).await?;
    for hash in recovery_hashes {
        sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
            .bind(user_id)
            .bind(hash)
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// Remember that the code of `step` was used; false when that step (or a later one) was used
/// already, so a code replayed, even concurrently, is refused.
pub async fn advance_totp_step(connection: &mut AnyConnection, user_id: &str, step: u64) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE users SET totp_last_step = $1 WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
    )
    .bind(step as i64)
    .bind(user_id)
    .execute(&mut *connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The last TOTP step accepted for the user.
pub async fn totp_last_step(connection: &mut AnyConnection, user_id: &str) -> Result<Option<u64>, StoreError> {
    let row = sqlx::query("SELECT totp_last_step FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&mut *connection)
        .await?;
    Ok(row.and_then(|row| row.get::<Option<i64>, _>(0)).map(|step| step as u64))
}

/// Use up a recovery code; false when it is unknown or used.
pub async fn use_recovery_code(connection: &mut AnyConnection, user_id: &str, hash: &str) -> Result<bool, StoreError> {
    let result =
        sqlx::query("UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL")
            .bind(now_ms())
            .bind(user_id)
            .bind(hash)
            .execute(&mut *connection)
            .await?;
    Ok(result.rows_affected() == 1)
}

/// Recovery codes not used yet.
pub async fn recovery_codes_left(connection: &mut AnyConnection, user_id: &str) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL")
        .bind(user_id)
        .fetch_one(&mut *connection)
        .await?;
    Ok(row.get::<i64, _>(0))
}

/// End every console session of the user.
pub async fn bump_session_epoch(connection: &mut AnyConnection, user_id: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET session_epoch = session_epoch + 1 WHERE id = $1")
        .bind(user_id)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

pub async fn record_login(connection: &mut AnyConnection, user_id: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(user_id)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Does a super admin who can sign in exist?
pub async fn has_signing_in_super_admin(connection: &mut AnyConnection) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) FROM users WHERE admin <> 0 AND password_hash IS NOT NULL")
        .fetch_one(&mut *connection)
        .await?;
    Ok(row.get::<i64, _>(0) > 0)
}

pub async fn insert_setup_token(connection: &mut AnyConnection, hash: &str, expires_at: i64) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO setup_tokens (token_hash, created_at, expires_at) VALUES ($1, $2, $3)")
        .bind(hash)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Is the setup token with this hash unused and unexpired?
pub async fn setup_token_valid(connection: &mut AnyConnection, hash: &str) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM setup_tokens WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2")
        .bind(hash)
        .bind(now_ms())
        .fetch_optional(&mut *connection)
        .await?;
    Ok(row.is_some())
}

/// Use up the setup token; false when it is unknown, used or expired.
pub async fn use_setup_token(connection: &mut AnyConnection, hash: &str) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE setup_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now_ms())
    .bind(hash)
    .execute(&mut *connection)
    .await?;
    Ok(result.rows_affected() == 1)
}
