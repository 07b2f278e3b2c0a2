//! Authentication: who is calling. On the data plane, personal API keys sent as
//! `Authorization: Bearer <key>`; a missing key is the anonymous principal (served only by
//! public servers). [`password`] and [`totp`] are the primitives of local accounts.

pub mod cimd;
pub mod jws;
pub mod oauth;
pub mod oidc;
pub mod password;
pub mod totp;
pub mod upstream;

use crate::crypto::{random_token, sha256_hex};
use crate::snapshot::{OAuthAccess, Snapshot, UserEntry};
use axum::http::HeaderMap;
use std::sync::Arc;

/// The prefix of every Portcullis API key, so leaked keys are easy to recognise and scan for.
pub const API_KEY_PREFIX: &str = "pcs_";

/// The authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A person (or agent) with an API key, or with an OAuth access token (`oauth`).
    User {
        user: Arc<UserEntry>,
        oauth: Option<Arc<OAuthAccess>>,
    },
    Anonymous,
}

/// The subject of anonymous callers (public servers only).
static ANONYMOUS: policy::Subject = policy::Subject {
    anonymous: true,
    agent: None,
    email: String::new(),
    groups: Vec::new(),
    roles: Vec::new(),
    attributes: std::collections::BTreeMap::new(),
};

impl Caller {
    /// Who the caller is, as rules see them.
    pub fn subject(&self) -> &policy::Subject {
        match self {
            Caller::User { user, .. } => &user.subject,
            Caller::Anonymous => &ANONYMOUS,
        }
    }

    pub fn user(&self) -> Option<&Arc<UserEntry>> {
        match self {
            Caller::User { user, .. } => Some(user),
            Caller::Anonymous => None,
        }
    }

    /// The OAuth grant the caller came with, if they did.
    pub fn oauth(&self) -> Option<&OAuthAccess> {
        match self {
            Caller::User { oauth, .. } => oauth.as_deref(),
            Caller::Anonymous => None,
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        self.user().map(|user| user.id.as_str())
    }

    pub fn label(&self) -> &str {
        self.user().map_or("anonymous", |user| user.email.as_str())
    }
}

/// Why credentials were refused. The text goes to the client; it never repeats the key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("the Authorization header must be \"Bearer <api key>\"")]
    Malformed,
    #[error("the API key is not valid (unknown, revoked, or its user was removed)")]
    InvalidKey,
    #[error("the account is {0}; ask an administrator to reactivate it")]
    NotActive(&'static str),
    #[error("the access token is not valid (unknown, expired or revoked); get a new one")]
    InvalidToken,
    #[error("the access token was issued for {0}, not for this endpoint; get one for this server")]
    WrongResource(String),
}

/// The prefix of OAuth access tokens (refresh tokens: [`REFRESH_TOKEN_PREFIX`]).
pub const ACCESS_TOKEN_PREFIX: &str = "pco_";
pub const REFRESH_TOKEN_PREFIX: &str = "pcr_";

/// Resolve the caller from the request headers against the snapshot.
///
/// `resource` is the MCP endpoint path being called (`/mcp/{server}` or `/mcp`); OAuth access
/// tokens are accepted only there, for the resource they were issued for, and never by the
/// REST API (`None`).
pub fn authenticate(
    snapshot: &Snapshot,
    headers: &HeaderMap,
    resource: Option<&str>,
    uses: &KeyUse,
) -> Result<Caller, AuthError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(Caller::Anonymous);
    };
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    let hash = sha256_hex(token.as_bytes());
    let (user_id, oauth) = if token.starts_with(ACCESS_TOKEN_PREFIX) {
        let access = snapshot.oauth_tokens.get(&hash).ok_or(AuthError::InvalidToken)?;
        if access.expires_at <= crate::store::now_ms() {
            return Err(AuthError::InvalidToken);
        }
        if resource != Some(access.resource.as_str()) {
            return Err(AuthError::WrongResource(access.resource.clone()));
        }
        (&access.user_id, Some(access.clone()))
    } else {
        let user_id = snapshot.api_keys.get(&hash).ok_or(AuthError::InvalidKey)?;
        uses.note(hash);
        (user_id, None)
    };
    let user = snapshot.users.get(user_id).ok_or(AuthError::InvalidKey)?;
    if user.status != crate::registry::Status::Active {
        return Err(AuthError::NotActive(user.status.as_str()));
    }
    Ok(Caller::User { user: user.clone(), oauth })
}

/// When API keys were used: noted on the request path without touching the store, written
/// in batches every few seconds by [`KeyUse::start`] (and once more at shutdown).
#[derive(Debug, Default)]
pub struct KeyUse {
    used: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl KeyUse {
    fn note(&self, hash: String) {
        if let Ok(mut used) = self.used.lock() {
            used.insert(hash, crate::store::now_ms());
        }
    }

    /// Write what was noted since the last write.
    pub async fn flush(&self, store: &crate::store::Store) {
        let uses: Vec<(String, i64)> = match self.used.lock() {
            Ok(mut used) => used.drain().collect(),
            Err(_) => return,
        };
        if uses.is_empty() {
            return;
        }
        let written = async {
            let mut transaction = store.begin_write().await?;
            crate::store::registry::record_key_use(&mut transaction, &uses).await?;
            transaction.commit().await?;
            Ok::<_, crate::store::StoreError>(())
        }
        .await;
        if let Err(error) = written {
            // Only the "last used" column is behind; nothing that grants or denies.
            tracing::warn!(%error, keys = uses.len(), "cannot record when API keys were last used");
        }
    }

    /// Flush every five seconds until the last other handle is gone.
    pub fn start(self: &std::sync::Arc<KeyUse>, store: crate::store::Store) {
        let uses = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                let Some(uses) = uses.upgrade() else { return };
                uses.flush(&store).await;
            }
        });
    }
}

/// The hash of the bearer credential of a request, if it carries one (for long-lived streams,
/// which must end when that very key or token is revoked).
pub fn credential_hash(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| sha256_hex(token.trim().as_bytes()))
}

/// Is the credential with this hash still good in `snapshot`?
pub fn credential_live(snapshot: &Snapshot, hash: &str) -> bool {
    snapshot.api_keys.contains_key(hash)
        || snapshot.oauth_tokens.get(hash).is_some_and(|access| access.expires_at > crate::store::now_ms())
}

/// A new API key: (the key to show once, its hash to store, a short prefix to recognise it).
pub fn new_api_key() -> (String, String, String) {
    let key = format!("{API_KEY_PREFIX}{}", random_token(32));
    let hash = sha256_hex(key.as_bytes());
    let prefix = key[..API_KEY_PREFIX.len() + 6].to_owned();
    (key, hash, prefix)
}
