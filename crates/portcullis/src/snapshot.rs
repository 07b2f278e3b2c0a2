//! The in-memory snapshot of the registry that the data plane reads. The data plane never
//! queries the database on the request path; it asks [`SnapshotHandle::current`].
//!
//! A refresher task reloads the whole registry when its revision changes. On PostgreSQL every
//! revision bump also sends a `NOTIFY` that wakes the refresher of every replica at once; the
//! refresher also polls the revision (a single-row read) every 250 ms, which is how SQLite and
//! a replica whose notification connection dropped learn of changes. So a change made by
//! `portcullis apply`, the API, SCIM or another replica is in force everywhere well within a
//! second. Each published snapshot is announced on a watch channel, so long-lived streams can
//! end when their caller loses access. If the store cannot be read for longer than
//! `snapshot_max_age`, [`SnapshotHandle::current`] fails and the data plane denies everything
//! (fail closed) until it can read again.

use crate::crypto::Keys;
use crate::registry::{Grantee, Server, ServerSecrets};
use crate::store::{self, Store, StoreError};
use policy::{Grant, PolicySet};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// The PostgreSQL notification channel that announces registry changes.
pub const CHANGES_CHANNEL: &str = "portcullis_registry";

/// A server with its decrypted credentials, ready for the upstream layer.
#[derive(Debug)]
pub struct ServerEntry {
    pub server: Server,
    pub secrets: ServerSecrets,
    /// The server's URL, parsed once here rather than on every request.
    pub url: Option<reqwest::Url>,
    /// The credential headers, as HTTP headers (invalid ones are left out, as before).
    pub headers: reqwest::header::HeaderMap,
    /// The URL as the plain-HTTP client takes it, parsed once: for `http://` URLs without user
    /// info (see [`crate::upstream::http::HttpUpstream`]).
    pub plain_uri: Option<axum::http::Uri>,
    /// For servers with per-user OAuth: the person whose token goes upstream.
    pub user: Option<String>,
}

impl ServerEntry {
    pub fn new(server: Server, secrets: ServerSecrets) -> ServerEntry {
        let url = server.url.as_deref().and_then(|url| reqwest::Url::parse(url).ok());
        let mut headers = reqwest::header::HeaderMap::with_capacity(secrets.headers.len());
        for (name, value) in &secrets.headers {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let plain_uri = url
            .as_ref()
            .filter(|url| crate::upstream::http::is_plain(url))
            .and_then(|url| url.as_str().parse::<axum::http::Uri>().ok());
        ServerEntry { server, secrets, url, headers, plain_uri, user: None }
    }

    /// This server as used by `user_id` (whose OAuth token the upstream calls carry).
    pub fn for_user(&self, user_id: &str) -> ServerEntry {
        ServerEntry {
            server: self.server.clone(),
            secrets: self.secrets.clone(),
            url: self.url.clone(),
            headers: self.headers.clone(),
            plain_uri: self.plain_uri.clone(),
            user: Some(user_id.to_owned()),
        }
    }
}

/// A user as the data plane needs it.
#[derive(Debug, Clone)]
pub struct UserEntry {
    pub id: String,
    pub email: String,
    pub name: String,
    pub admin: bool,
    pub admin_roles: Vec<crate::registry::AdminRole>,
    pub status: crate::registry::Status,
    pub groups: Vec<String>,
    /// Who the user is as rules see them: email, groups, job-function roles, attributes
    /// (department, title, team and the rest of the directory's attributes).
    pub subject: policy::Subject,
}

impl UserEntry {
    /// Does one of the user's admin roles allow `power`?
    pub fn can(&self, power: crate::registry::Power) -> bool {
        self.admin_roles.iter().any(|role| role.can(power))
    }
}

/// Everything the data plane reads, immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub servers: HashMap<String, Arc<ServerEntry>>,
    pub users: HashMap<String, Arc<UserEntry>>,
    /// Active API keys: SHA-256 of the key → user id.
    pub api_keys: HashMap<String, String>,
    /// Live OAuth access tokens: SHA-256 of the token → what it grants.
    pub oauth_tokens: HashMap<String, Arc<OAuthAccess>>,
    pub policy: PolicySet,
    /// When the next rule expires (milliseconds since the epoch): the refresher republishes
    /// then, so streams of callers who lose access end.
    pub next_expiry: Option<i64>,
    /// Each server's last known tools (see [`crate::known_tools`]).
    pub tools: HashMap<String, crate::known_tools::ServerTools>,
    /// The pins of every pinned server (see [`crate::pinning`]).
    pub pins: HashMap<String, crate::pinning::ServerPins>,
    /// Definitions this process saw differ from their pins, before the store has them held:
    /// shared by every snapshot of the process, so a call right after the list is refused too.
    pub sightings: Arc<crate::pinning::Sightings>,
}

/// What an OAuth access token grants: one user, on one resource, until a time.
#[derive(Debug, Clone)]
pub struct OAuthAccess {
    pub user_id: String,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// The endpoint path the token is bound to: `/mcp/{server}` or `/mcp`.
    pub resource: String,
    pub expires_at: i64,
}

impl Snapshot {
    /// Read the whole registry.
    pub async fn load(store: &Store, keys: &Keys) -> Result<Snapshot, StoreError> {
        let mut connection = store.pool.acquire().await?;
        let revision = store::registry::revision(&mut connection).await?;
        let servers = store::registry::list_servers(&mut connection).await?;
        let users = store::registry::list_users(&mut connection).await?;
        let grants = store::registry::list_grants(&mut connection).await?;
        let rules = store::rules::list_rules(&mut connection).await?;
        let known_tools = store::known_tools::list_tools(&mut connection).await?;
        let api_keys = store::registry::list_api_keys(&mut connection).await?;
        let oauth_tokens = store::oauth::live_access_tokens(&mut connection).await?;
        let pins = crate::pinning::load(&mut connection).await?;
        drop(connection);

        let mut server_map = HashMap::new();
        let mut public = HashSet::new();
        for server in servers {
            let secrets = match keys.secrets.open(&server.sealed_secrets, server.id.as_bytes()) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                Err(_) => {
                    // Fail closed for this server: without its credentials it is left out.
                    tracing::error!(server = %server.name, "cannot decrypt the server's credentials (was the secret key changed?); the server is unavailable");
                    continue;
                }
            };
            if server.public {
                public.insert(server.name.clone());
            }
            server_map.insert(server.name.clone(), Arc::new(ServerEntry::new(server, secrets)));
        }
        let user_map: HashMap<String, Arc<UserEntry>> = users
            .into_iter()
            .map(|user| {
                let subject = policy::Subject {
                    anonymous: false,
                    agent: None,
                    email: user.email.clone(),
                    groups: user.groups.clone(),
                    roles: user.roles,
                    attributes: user.attributes,
                };
                let entry = UserEntry {
                    id: user.id.clone(),
                    email: user.email,
                    name: user.name,
                    admin: user.admin,
                    admin_roles: user.admin_roles,
                    status: user.status,
                    groups: user.groups,
                    subject,
                };
                (user.id, Arc::new(entry))
            })
            .collect();
        let policy_grants: Vec<Grant> = grants
            .iter()
            .map(|grant| {
                let (users, groups) = match grant.grantee {
                    Grantee::User => (vec![grant.principal.clone()], Vec::new()),
                    Grantee::Group => (Vec::new(), vec![grant.principal.clone()]),
                };
                Grant { server: grant.server.clone(), users, groups }
            })
            .collect();
        // A stored rule that no longer compiles (written by an older version, or edited in the
        // database) stops the snapshot: the last good one stays until it is stale, then the
        // data plane denies. Rules are checked on save, so this is not expected.
        let mut compiled = Vec::with_capacity(rules.len());
        let now = store::now_ms();
        let mut next_expiry: Option<i64> = None;
        for stored in &rules {
            let rule = stored
                .spec
                .compile(None)
                .map_err(|error| StoreError::Conflict(format!("stored rule cannot be used: {error}")))?;
            if let Some(expires) = rule.expires_at.filter(|expires| *expires > now && rule.enabled) {
                next_expiry = Some(next_expiry.map_or(expires, |next| next.min(expires)));
            }
            compiled.push(rule);
        }
        let policy = PolicySet::new(compiled, &policy_grants, public)
            .map_err(|error| StoreError::Conflict(format!("stored rules cannot be used: {error}")))?;
        let api_key_map = api_keys
            .into_iter()
            .filter(|key| key.revoked_at.is_none())
            .map(|key| (key.key_hash, key.user_id))
            .collect();
        Ok(Snapshot {
            revision,
            servers: server_map,
            users: user_map,
            api_keys: api_key_map,
            oauth_tokens: oauth_tokens
                .into_iter()
                .map(|(hash, user_id, client_id, resource, expires_at)| {
                    (hash, Arc::new(OAuthAccess { user_id, client_id, resource, expires_at }))
                })
                .collect(),
            policy,
            next_expiry,
            tools: {
                let mut by_server: HashMap<String, Vec<crate::known_tools::Tool>> = HashMap::new();
                for (server, tool) in known_tools {
                    by_server.entry(server).or_default().push(tool);
                }
                by_server
                    .into_iter()
                    .map(|(server, tools)| (server, crate::known_tools::ServerTools::from_list(tools)))
                    .collect()
            },
            pins,
            sightings: Arc::default(),
        })
    }
}

/// The snapshot could not be refreshed for too long.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the policy snapshot is stale (the store has not answered for {0:?}); denying until it does")]
pub struct Stale(pub Duration);

/// Shared handle to the current snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotHandle {
    current: Arc<RwLock<Arc<Snapshot>>>,
    last_checked: Arc<Mutex<Instant>>,
    max_age: Duration,
    /// The revision of each snapshot published.
    changes: Arc<watch::Sender<i64>>,
    /// Wakes the refresher before its next poll (a PostgreSQL notification arrived).
    wake: Arc<Notify>,
    /// Carried from snapshot to snapshot (see [`Snapshot::sightings`]).
    sightings: Arc<crate::pinning::Sightings>,
}

impl SnapshotHandle {
    /// Load the first snapshot and start the refresher; with `notifications` (a PostgreSQL
    /// URL) also listen for change notifications.
    pub async fn start(
        store: Store,
        keys: Keys,
        max_age: Duration,
        notifications: Option<String>,
    ) -> Result<SnapshotHandle, StoreError> {
        let mut snapshot = Snapshot::load(&store, &keys).await?;
        let sightings = Arc::new(crate::pinning::Sightings::default());
        snapshot.sightings = sightings.clone();
        let (changes, _) = watch::channel(snapshot.revision);
        let handle = SnapshotHandle {
            current: Arc::new(RwLock::new(Arc::new(snapshot))),
            last_checked: Arc::new(Mutex::new(Instant::now())),
            max_age,
            changes: Arc::new(changes),
            wake: Arc::new(Notify::new()),
            sightings,
        };
        if let Some(url) = notifications {
            tokio::spawn(listen(url, Arc::downgrade(&handle.current), handle.wake.clone()));
        }
        let refresher = handle.clone();
        tokio::spawn(async move { refresher.refresh_loop(store, keys).await });
        Ok(handle)
    }

    /// Told the revision of every snapshot published from now on.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.changes.subscribe()
    }

    /// The snapshot to decide with, or [`Stale`] when it is too old to trust.
    pub fn current(&self) -> Result<Arc<Snapshot>, Stale> {
        let age = self.last_checked.lock().map(|checked| checked.elapsed()).unwrap_or(Duration::MAX);
        if age > self.max_age {
            return Err(Stale(age));
        }
        Ok(self.current.read().map(|current| current.clone()).unwrap_or_default())
    }

    /// Reload now (after a change made through this process's API).
    pub async fn reload(&self, store: &Store, keys: &Keys) -> Result<(), StoreError> {
        let snapshot = Snapshot::load(store, keys).await?;
        self.publish(snapshot);
        Ok(())
    }

    /// Replace the snapshot, unless it is older than the one in force: a reload that began
    /// before a change must never undo it (a revoked key would live again until the next poll).
    fn publish(&self, mut snapshot: Snapshot) {
        snapshot.sightings = self.sightings.clone();
        let revision = snapshot.revision;
        let replaced = match self.current.write() {
            Ok(mut current) if revision >= current.revision => {
                *current = Arc::new(snapshot);
                true
            }
            _ => false,
        };
        if let Ok(mut checked) = self.last_checked.lock() {
            *checked = Instant::now();
        }
        if replaced {
            self.changes.send_replace(revision);
        }
    }

    async fn refresh_loop(self, store: Store, keys: Keys) {
        let mut interval = tokio::time::interval(Duration::from_millis(250));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = self.wake.notified() => {}
            }
            // Stop when the app is gone (only the refresher holds the handle).
            if Arc::strong_count(&self.current) == 1 {
                return;
            }
            let (known, next_expiry) =
                self.current.read().map(|current| (current.revision, current.next_expiry)).unwrap_or((-1, None));
            // A rule expiring is a change too: republish, so streams re-check their callers.
            let expired = next_expiry.is_some_and(|at| at <= store::now_ms());
            let revision = async {
                let mut connection = store.pool.acquire().await?;
                store::registry::revision(&mut connection).await
            };
            match tokio::time::timeout(Duration::from_secs(5), revision).await {
                Ok(Ok(revision)) if revision == known && !expired => {
                    if let Ok(mut checked) = self.last_checked.lock() {
                        *checked = Instant::now();
                    }
                }
                Ok(Ok(_)) => match Snapshot::load(&store, &keys).await {
                    Ok(snapshot) => {
                        tracing::debug!(revision = snapshot.revision, "registry snapshot reloaded");
                        self.publish(snapshot);
                    }
                    Err(error) => tracing::warn!(%error, "cannot reload the registry snapshot"),
                },
                Ok(Err(error)) => tracing::warn!(%error, "cannot read the registry revision"),
                Err(_) => tracing::warn!("reading the registry revision timed out"),
            }
        }
    }
}

/// Listen for change notifications on PostgreSQL and wake the refresher for each; reconnect
/// after a second when the connection drops (polling covers the gap). Stops with the app.
async fn listen(url: String, alive: std::sync::Weak<RwLock<Arc<Snapshot>>>, wake: Arc<Notify>) {
    while alive.strong_count() > 0 {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => {
                if let Err(error) = listener.listen(CHANGES_CHANNEL).await {
                    tracing::warn!(%error, "cannot LISTEN for registry changes; polling only");
                } else {
                    loop {
                        match tokio::time::timeout(Duration::from_secs(1), listener.recv()).await {
                            Ok(Ok(_)) => wake.notify_one(),
                            Ok(Err(error)) => {
                                tracing::warn!(%error, "registry notifications interrupted; reconnecting");
                                break;
                            }
                            Err(_) if alive.strong_count() == 0 => return,
                            Err(_) => {}
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot connect for registry notifications; polling only"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
