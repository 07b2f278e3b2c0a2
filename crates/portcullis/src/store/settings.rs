//! Settings admins change at run time, as key/value text.

use super::{StoreError, now_ms};
use sqlx::{AnyConnection, Row};

/// Whether every admin must sign in to the console with a second step (default: yes).
pub const ADMIN_MFA: &str = "admin_mfa_required";

pub async fn get(connection: &mut AnyConnection, key: &str) -> Result<Option<String>, StoreError> {
    let row =
        sqlx::query("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(&mut *connection).await?;
    Ok(row.map(|row| row.get(0)))
}

pub async fn set(connection: &mut AnyConnection, key: &str, value: &str) -> Result<(), StoreError> {
    let updated = sqlx::query("UPDATE settings SET value = $1, updated_at = $2 WHERE key = $3")
        .bind(value)
        .bind(now_ms())
        .bind(key)
        .execute(&mut *connection)
        .await?;
    if updated.rows_affected() == 0 {
        sqlx::query("INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3)")
            .bind(key)
            .bind(value)
            .bind(now_ms())
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// Is a second sign-in step required of admins? Anything but an explicit "false" says yes.
pub async fn admin_mfa_required(connection: &mut AnyConnection) -> Result<bool, StoreError> {
    Ok(get(connection, ADMIN_MFA).await?.as_deref() != Some("false"))
}
