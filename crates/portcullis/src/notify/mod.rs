//! Telling people what happened: the in-app inbox (every notification) and email over SMTP
//! (when a super admin has set a mail server up): decisions and their reasons for requesters
//! always, new requests and held tool changes for admins who turned email alerts on.
//!
//! Mail is never sent on the request path: [`tell`] writes the notification and, for mail, an
//! outbox row in the caller's transaction; the [`Mailer`] sends from the outbox in the
//! background, retrying with backoff, so a mail server that is down loses nothing. Replicas
//! claim rows before sending, so each message goes out once.

pub mod smtp;

use crate::app::AppState;
use crate::crypto::Keys;
use crate::store::{self, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};
use std::time::Duration;

/// The setting holding the mail server (JSON; the password sealed).
pub const SMTP_SETTING: &str = "smtp";
/// How many times a message is tried before it is given up (and logged).
const MAX_ATTEMPTS: i64 = 6;

/// How the connection to the mail server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Security {
    /// Plain, then upgraded with STARTTLS (port 587).
    #[default]
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption (a relay on the local network or loopback).
    None,
}

impl Security {
    pub fn parse(text: &str) -> Option<Security> {
        match text {
            "starttls" | "start-tls" => Some(Security::StartTls),
            "tls" => Some(Security::Tls),
            "none" => Some(Security::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Security::StartTls => "starttls",
            Security::Tls => "tls",
            Security::None => "none",
        }
    }
}

/// The mail server, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MailSettings {
    pub host: String,
    pub port: u16,
    pub security: Security,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Sealed with the deployment key; never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_password: Option<String>,
    /// The sender address.
    pub from: String,
}

impl MailSettings {
    pub fn check(&self) -> Result<(), String> {
        let host = self.host.trim();
        if host.is_empty() || host.contains(['/', ' ', ':']) && host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("{host:?} is not a mail server host name (for example smtp.example.com)"));
        }
        if self.port == 0 {
            return Err("the port must be 1-65535 (587 for STARTTLS, 465 for TLS, 25 without)".into());
        }
        let from = self.from.trim();
        if !from.contains('@') || from.contains(char::is_whitespace) || from.contains(['<', '>']) {
            return Err(format!("{from:?} is not a sender address such as portcullis@example.com"));
        }
        Ok(())
    }

    /// What the API and the console show: everything but the password.
    pub fn shown(&self) -> serde_json::Value {
        serde_json::json!({"host": self.host, "port": self.port, "security": self.security.as_str(),
                           "username": self.username, "from": self.from,
                           "password_set": self.sealed_password.is_some()})
    }
}

/// The mail server configured, if any.
pub async fn settings(connection: &mut AnyConnection) -> Result<Option<MailSettings>, StoreError> {
    Ok(store::settings::get(connection, SMTP_SETTING).await?.and_then(|text| serde_json::from_str(&text).ok()))
}

pub async fn save_settings(connection: &mut AnyConnection, settings: &MailSettings) -> Result<(), StoreError> {
    store::settings::set(connection, SMTP_SETTING, &serde_json::to_string(settings).unwrap_or_default()).await
}

fn password_context() -> &'static [u8] {
    b"smtp-password"
}

pub fn seal_password(keys: &Keys, password: &str) -> String {
    keys.secrets.seal_text(password.as_bytes(), password_context())
}

fn open_password(keys: &Keys, settings: &MailSettings) -> Option<String> {
    let sealed = settings.sealed_password.as_deref()?;
    keys.secrets.open_text(sealed, password_context()).ok().and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The setting that turns email alerts (new requests, held changes) on for an admin.
pub fn alerts_key(user_id: &str) -> String {
    format!("email_alerts:{user_id}")
}

pub async fn alerts_on(connection: &mut AnyConnection, user_id: &str) -> Result<bool, StoreError> {
    Ok(store::settings::get(connection, &alerts_key(user_id)).await?.as_deref() == Some("true"))
}

/// Who is told.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    pub user_id: &'a str,
    pub email: &'a str,
}

/// Whether mail goes out too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mail {
    /// In the inbox only.
    No,
    /// Always (decisions for requesters).
    Always,
    /// When the person turned email alerts on (admins' alerts).
    IfAlertsOn,
}

/// A notification for `to`, in the caller's transaction; with mail as `mail` says (when a mail
/// server is set up). `link` is a console path.
pub async fn tell(
    connection: &mut AnyConnection,
    to: Recipient<'_>,
    kind: &str,
    title: &str,
    body: &str,
    link: &str,
    mail: Mail,
) -> Result<(), StoreError> {
    store::notifications::add(&mut *connection, to.user_id, kind, title, body, link).await?;
    let wanted = match mail {
        Mail::No => false,
        Mail::Always => true,
        Mail::IfAlertsOn => alerts_on(&mut *connection, to.user_id).await?,
    };
    if !wanted || settings(&mut *connection).await?.is_none() {
        return Ok(());
    }
    let text = format!("{body}\n\nOpen in Portcullis: {{base}}{link}\n");
    sqlx::query(
        "INSERT INTO outbox (id, recipient, subject, body, created_at, attempts, next_attempt_at, sent_at, last_error) \
         VALUES ($1, $2, $3, $4, $5, 0, $6, NULL, NULL)",
    )
    .bind(crate::crypto::new_id())
    .bind(to.email)
    .bind(title)
    .bind(text)
    .bind(store::now_ms())
    .bind(store::now_ms())
    .execute(connection)
    .await?;
    Ok(())
}

/// A message in the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct Queued {
    pub id: String,
    pub recipient: String,
    pub subject: String,
    pub attempts: i64,
    pub sent_at: Option<i64>,
    pub last_error: Option<String>,
}

/// The newest outbox messages (for the settings page).
pub async fn outbox(connection: &mut AnyConnection, limit: i64) -> Result<Vec<Queued>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, recipient, subject, attempts, sent_at, last_error FROM outbox ORDER BY created_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Queued {
                id: row.try_get("id")?,
                recipient: row.try_get("recipient")?,
                subject: row.try_get("subject")?,
                attempts: row.try_get("attempts")?,
                sent_at: row.try_get("sent_at")?,
                last_error: row.try_get("last_error")?,
            })
        })
        .collect()
}

/// Send one message now with the configured server (the settings page's test button).
pub async fn send_now(state: &AppState, to: &str, subject: &str, body: &str) -> Result<(), smtp::MailError> {
    let settings = {
        let mut connection =
            state.store.pool.acquire().await.map_err(|_| smtp::MailError("the store did not answer".into()))?;
        settings(&mut connection).await.map_err(|_| smtp::MailError("the store did not answer".into()))?
    };
    let settings = settings.ok_or_else(|| smtp::MailError("no mail server is set up yet".into()))?;
    let password = open_password(&state.keys, &settings);
    let mail = smtp::Mail { to: to.to_owned(), subject: subject.to_owned(), body: body.to_owned() };
    smtp::send(&settings, password.as_deref(), &state.config.extra_roots_pem, &mail).await
}

/// Sends the outbox in the background.
#[derive(Debug, Default)]
pub struct Mailer {
    wake: tokio::sync::Notify,
}

impl Mailer {
    /// Look at the outbox now (after a transaction that queued mail committed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Start sending for `state`; ends when the gateway is dropped.
    pub fn start(state: &AppState) {
        let weak = state.downgrade();
        tokio::spawn(async move {
            loop {
                let Some(state) = AppState::upgrade(&weak) else { return };
                if let Err(error) = drain(&state).await {
                    tracing::warn!(%error, "the mail outbox could not be read");
                }
                let wake = async { state.mailer.wake.notified().await };
                let _ = tokio::time::timeout(Duration::from_secs(5), wake).await;
            }
        });
    }
}

/// Send what is due.
async fn drain(state: &AppState) -> Result<(), StoreError> {
    let mut connection = state.store.pool.acquire().await?;
    let Some(settings) = settings(&mut connection).await? else { return Ok(()) };
    let now = store::now_ms();
    let rows = sqlx::query(
        "SELECT id, recipient, subject, body, attempts, next_attempt_at FROM outbox \
         WHERE sent_at IS NULL AND attempts < $1 AND next_attempt_at <= $2 ORDER BY created_at LIMIT 20",
    )
    .bind(MAX_ATTEMPTS)
    .bind(now)
    .fetch_all(&mut *connection)
    .await?;
    let password = open_password(&state.keys, &settings);
    let base = state.config.public_url.clone().unwrap_or_default();
    for row in rows {
        let id: String = row.try_get("id")?;
        let attempts: i64 = row.try_get("attempts")?;
        let due: i64 = row.try_get("next_attempt_at")?;
        // Claim it: another replica that read the same row loses here.
        let claimed = sqlx::query(
            "UPDATE outbox SET next_attempt_at = $1 WHERE id = $2 AND next_attempt_at = $3 AND sent_at IS NULL",
        )
        .bind(now + 120_000)
        .bind(&id)
        .bind(due)
        .execute(&mut *connection)
        .await?;
        if claimed.rows_affected() != 1 {
            continue;
        }
        let body: String = row.try_get("body")?;
        let mail = smtp::Mail {
            to: row.try_get("recipient")?,
            subject: row.try_get("subject")?,
            body: body.replace("{base}", base.trim_end_matches('/')),
        };
        match smtp::send(&settings, password.as_deref(), &state.config.extra_roots_pem, &mail).await {
            Ok(()) => {
                sqlx::query("UPDATE outbox SET sent_at = $1, attempts = $2, last_error = NULL WHERE id = $3")
                    .bind(store::now_ms())
                    .bind(attempts + 1)
                    .bind(&id)
                    .execute(&mut *connection)
                    .await?;
                tracing::info!(to = %mail.to, subject = %mail.subject, "notification mail sent");
            }
            Err(error) => {
                let backoff = 30_000_i64 << attempts.clamp(0, 6);
                sqlx::query("UPDATE outbox SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE id = $4")
                    .bind(attempts + 1)
                    .bind(store::now_ms() + backoff)
                    .bind(error.to_string())
                    .bind(&id)
                    .execute(&mut *connection)
                    .await?;
                if attempts + 1 >= MAX_ATTEMPTS {
                    tracing::error!(to = %mail.to, %error, "notification mail given up after {MAX_ATTEMPTS} attempts");
                } else {
                    tracing::warn!(to = %mail.to, %error, "notification mail not sent; will retry");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_encode_headers_and_body() {
        let mail = smtp::Mail {
            to: "ann@example.com".into(),
            subject: "Approved: notes — ünïcode\r\nBcc: evil@example.com".into(),
            body: "line one\n.starts with a dot".into(),
        };
        let text = smtp::message("portcullis@example.com", &mail, 1_795_660_000_000);
        assert!(text.contains("Subject: =?utf-8?B?"), "{text}");
        assert!(!text.contains("\r\nBcc:"), "no header injection: {text}");
        let plain = smtp::Mail { subject: "Hello\r\nBcc: evil@example.com".into(), ..mail.clone() };
        assert!(!smtp::message("p@example.com", &plain, 0).contains("\r\nBcc:"));
        assert!(text.contains("Date: "), "{text}");
        assert!(text.contains("Content-Transfer-Encoding: base64"));
    }

    #[test]
    fn settings_are_checked() {
        let good = MailSettings {
            host: "smtp.example.com".into(),
            port: 587,
            security: Security::StartTls,
            username: None,
            sealed_password: None,
            from: "portcullis@example.com".into(),
        };
        assert!(good.check().is_ok());
        assert!(MailSettings { host: "smtp example".into(), ..good.clone() }.check().is_err());
        assert!(MailSettings { port: 0, ..good.clone() }.check().is_err());
        assert!(MailSettings { from: "nobody".into(), ..good.clone() }.check().is_err());
        assert!(!good.shown().to_string().contains("sealed"));
    }
}
