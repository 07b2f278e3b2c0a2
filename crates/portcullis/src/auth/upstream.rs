//! Per-user OAuth to upstream MCP servers (GitHub, Atlassian …): Portcullis is the OAuth
//! client. A person connects their account once from the console; the gateway then sends
//! *their* token upstream on their calls — never a client's own credential, never someone
//! else's.
//!
//! Connecting follows MCP authorization discovery: the server's `401` names its protected
//! resource metadata (or the well-known URLs are tried) → its authorization server → that
//! server's metadata (RFC 8414 / OpenID discovery; PKCE S256 required) → a client: the one an
//! admin registered in advance, or one the gateway registers itself (RFC 7591, kept per server
//! and authorization server) → authorization code with PKCE and the resource indicator
//! (RFC 8707) → tokens. Every discovery fetch is SSRF-safe: https only, every resolved address
//! public unless the server is registered as `internal`, the connection pinned to the checked
//! address, no redirects, short time limits and small bodies.
//!
//! Tokens are sealed per person and server. [`UpstreamTokens`] hands the data plane a valid
//! access token: from memory, else from the store, refreshed shortly before it expires (one
//! refresh at a time per person and server; a rotated refresh token replaces the old one in
//! the same write). A refresh the authorization server refuses, or a token the upstream
//! refuses twice, marks the connection "needs reconnect", which the console shows.

use crate::crypto::Keys;
use crate::registry::OAuthUpstream;
use crate::snapshot::ServerEntry;
use crate::store::{self, Store, StoreError};
use crate::upstream::UpstreamError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest any one discovery or token request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest metadata or token answer read.
const MAX_BYTES: usize = 256 * 1024;
/// Refresh this long before the access token expires.
const EARLY_MS: i64 = 60_000;

/// Why connecting or refreshing failed, for the person (never a token or secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct OAuthError(pub String);

fn fail(text: impl Into<String>) -> OAuthError {
    OAuthError(text.into())
}

/// A fetch that cannot be pointed at the gateway's own network (unless `internal`).
async fn safe_client(
    url: &reqwest::Url,
    internal: bool,
    roots: &[reqwest::Certificate],
) -> Result<reqwest::Client, OAuthError> {
    let host = url.host_str().ok_or_else(|| fail(format!("{url} has no host")))?.to_owned();
    if url.scheme() != "https" && !(internal && url.scheme() == "http") {
        return Err(fail(format!(
            "{url}: OAuth endpoints must use https (http only for servers registered as internal)"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(fail(format!("{}: URLs with credentials are refused", crate::store::redact_url(url.as_str()))));
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let addresses: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((bare.as_str(), port)))
            .await
            .map_err(|_| fail(format!("{host} did not resolve in time")))?
            .map_err(|error| fail(format!("{host} does not resolve ({error})")))?
            .collect(),
    };
    let Some(first) = addresses.first().copied() else { return Err(fail(format!("{host} does not resolve"))) };
    if !internal && let Some(refused) = addresses.iter().find(|address| !crate::auth::cimd::is_public(address.ip())) {
        return Err(fail(format!(
            "{host} resolves to {}, a private address; register the server as internal (oauth.internal) if its \
             authorization server is inside the company network",
            refused.ip()
        )));
    }
    crate::config::trusting(reqwest::Client::builder(), roots)
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&bare, first)
        .no_proxy()
        .build()
        .map_err(|error| fail(format!("cannot make an HTTP client ({error})")))
}

async fn read_json(response: reqwest::Response, what: &str) -> Result<(reqwest::StatusCode, Value), OAuthError> {
    let status = response.status();
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| fail(format!("reading {what} failed ({error})")))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BYTES {
            return Err(fail(format!("{what} is larger than {MAX_BYTES} bytes")));
        }
    }
    let value = serde_json::from_slice(&body).map_err(|_| fail(format!("{what} is not JSON (HTTP {status})")))?;
    Ok((status, value))
}

async fn get_json(
    url: &str,
    internal: bool,
    roots: &[reqwest::Certificate],
    what: &str,
) -> Result<Option<Value>, OAuthError> {
    let url = reqwest::Url::parse(url).map_err(|_| fail(format!("{what}: {url:?} is not a URL")))?;
    let client = safe_client(&url, internal, roots).await?;
    let response = client
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|error| fail(format!("cannot fetch {what} ({})", error.without_url())))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(fail(format!("{what} answered HTTP {}", response.status())));
    }
    Ok(Some(read_json(response, what).await?.1))
}

/// What discovery found about a server's authorization.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovered {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    /// The resource indicator to ask tokens for (RFC 8707).
    pub resource: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// The `resource_metadata` parameter of a `WWW-Authenticate: Bearer …` challenge.
fn resource_metadata_of(challenge: &str) -> Option<String> {
    let start = challenge.find("resource_metadata=\"")? + "resource_metadata=\"".len();
    let rest = &challenge[start..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// Discover how `server_url` is authorized.
pub async fn discover(
    server_url: &str,
    settings: &OAuthUpstream,
    roots: &[reqwest::Certificate],
) -> Result<Discovered, OAuthError> {
    let internal = settings.internal;
    let url = reqwest::Url::parse(server_url).map_err(|_| fail("the server URL is not valid"))?;
    // 1. The server's challenge names its protected resource metadata.
    let client = safe_client(&url, internal, roots).await?;
    let probe = client
        .post(url.clone())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"portcullis","version":"1"}}}"#)
        .send()
        .await
        .map_err(|error| fail(format!("cannot reach the server ({})", error.without_url())))?;
    let mut candidates = Vec::new();
    if let Some(challenge) = probe.headers().get("www-authenticate").and_then(|value| value.to_str().ok())
        && let Some(metadata) = resource_metadata_of(challenge)
    {
        candidates.push(metadata);
    }
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    if !path.is_empty() {
        candidates.push(format!("{origin}/.well-known/oauth-protected-resource{path}"));
    }
    candidates.push(format!("{origin}/.well-known/oauth-protected-resource"));
    let mut resource_metadata = None;
    for candidate in &candidates {
        if let Some(found) = get_json(candidate, internal, roots, "the protected resource metadata").await? {
            resource_metadata = Some(found);
            break;
        }
    }
    let metadata = resource_metadata.ok_or_else(|| {
        fail("the server publishes no OAuth protected resource metadata; it may not use OAuth (use static credentials)")
    })?;
    let issuer = metadata
        .get("authorization_servers")
        .and_then(Value::as_array)
        .and_then(|servers| servers.first())
        .and_then(Value::as_str)
        .ok_or_else(|| fail("the protected resource metadata names no authorization server"))?
        .to_owned();
    let resource = metadata.get("resource").and_then(Value::as_str).unwrap_or(server_url).to_owned();
    let list = |value: &Value, key: &str| -> Vec<String> {
        value
            .get(key)
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let mut scopes =
        if settings.scopes.is_empty() { list(&metadata, "scopes_supported") } else { settings.scopes.clone() };
    // 2. The authorization server's metadata (RFC 8414 path insertion, then OpenID discovery).
    let issuer_url =
        reqwest::Url::parse(&issuer).map_err(|_| fail(format!("the authorization server {issuer:?} is not a URL")))?;
    let issuer_origin = issuer_url.origin().ascii_serialization();
    let issuer_path = issuer_url.path().trim_end_matches('/');
    let candidates = if issuer_path.is_empty() {
        vec![
            format!("{issuer_origin}/.well-known/oauth-authorization-server"),
            format!("{issuer_origin}/.well-known/openid-configuration"),
        ]
    } else {
        vec![
            format!("{issuer_origin}/.well-known/oauth-authorization-server{issuer_path}"),
            format!("{issuer_origin}/.well-known/openid-configuration{issuer_path}"),
            format!("{issuer_origin}{issuer_path}/.well-known/openid-configuration"),
        ]
    };
    let mut server_metadata = None;
    for candidate in &candidates {
        if let Some(found) = get_json(candidate, internal, roots, "the authorization server metadata").await? {
            server_metadata = Some(found);
            break;
        }
    }
    let server =
        server_metadata.ok_or_else(|| fail(format!("the authorization server {issuer} publishes no metadata")))?;
    let text = |key: &str| server.get(key).and_then(Value::as_str).map(str::to_owned);
    if text("issuer").map(|found| found.trim_end_matches('/').to_owned())
        != Some(issuer.trim_end_matches('/').to_owned())
    {
        return Err(fail(format!("the metadata of {issuer} names another issuer; refusing it")));
    }
    if !list(&server, "code_challenge_methods_supported").iter().any(|method| method == "S256") {
        return Err(fail(format!("{issuer} does not offer PKCE with S256, which MCP requires")));
    }
    if scopes.is_empty() {
        scopes = Vec::new();
    }
    Ok(Discovered {
        issuer,
        authorization_endpoint: text("authorization_endpoint")
            .ok_or_else(|| fail("the metadata has no authorization_endpoint"))?,
        token_endpoint: text("token_endpoint").ok_or_else(|| fail("the metadata has no token_endpoint"))?,
        registration_endpoint: text("registration_endpoint"),
        resource,
        scopes,
    })
}

/// The client the gateway uses at an authorization server.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub secret: Option<String>,
}

fn client_secret_context(server: &str, issuer: &str) -> Vec<u8> {
    format!("upstream-client:{server}:{issuer}").into_bytes()
}

/// The pre-registered client, the one registered before, or a new registration.
pub async fn client_for(
    store: &Store,
    keys: &Keys,
    entry: &ServerEntry,
    discovered: &Discovered,
    redirect_uri: &str,
    roots: &[reqwest::Certificate],
) -> Result<Client, OAuthError> {
    let settings = entry.server.oauth.clone().unwrap_or_default();
    if let Some(id) = &settings.client_id {
        return Ok(Client { id: id.clone(), secret: entry.secrets.oauth_client_secret.clone() });
    }
    let server = &entry.server.name;
    let stored = {
        let mut connection = store.pool.acquire().await.map_err(|_| fail("the store did not answer"))?;
        store::upstream_tokens::client(&mut connection, server, &discovered.issuer)
            .await
            .map_err(|_| fail("the store did not answer"))?
    };
    if let Some(stored) = stored.filter(|stored| stored.redirect_uri == redirect_uri) {
        let secret = stored.sealed_secret.as_deref().and_then(|sealed| {
            keys.secrets
                .open_text(sealed, &client_secret_context(server, &discovered.issuer))
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
        });
        return Ok(Client { id: stored.client_id, secret });
    }
    let endpoint = discovered.registration_endpoint.as_deref().ok_or_else(|| {
        fail(format!(
            "{} does not allow dynamic client registration; register a client there and set oauth.client_id for this server",
            discovered.issuer
        ))
    })?;
    let url = reqwest::Url::parse(endpoint).map_err(|_| fail("the registration endpoint is not a URL"))?;
    let http = safe_client(&url, settings.internal, roots).await?;
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(
            serde_json::json!({
                "client_name": "Portcullis MCP gateway",
                "redirect_uris": [redirect_uri],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            })
            .to_string(),
        )
        .send()
        .await
        .map_err(|error| fail(format!("cannot register with {} ({})", discovered.issuer, error.without_url())))?;
    let (status, registered) = read_json(response, "the registration answer").await?;
    if !status.is_success() {
        let reason =
            registered.get("error_description").or(registered.get("error")).and_then(Value::as_str).unwrap_or("");
        return Err(fail(format!("{} refused the registration: HTTP {status} {reason}", discovered.issuer)));
    }
    let id = registered
        .get("client_id")
        .and_then(Value::as_str)
        .ok_or_else(|| fail("the registration answer has no client_id"))?
        .to_owned();
    let secret = registered.get("client_secret").and_then(Value::as_str).map(str::to_owned);
    let registration = store::upstream_tokens::Registration {
        client_id: id.clone(),
        sealed_secret: secret.as_deref().map(|secret| {
            keys.secrets.seal_text(secret.as_bytes(), &client_secret_context(server, &discovered.issuer))
        }),
        redirect_uri: redirect_uri.to_owned(),
    };
    let mut connection = store.pool.acquire().await.map_err(|_| fail("the store did not answer"))?;
    store::upstream_tokens::put_client(&mut connection, server, &discovered.issuer, &registration)
        .await
        .map_err(|_| fail("the store did not answer"))?;
    Ok(Client { id, secret })
}

/// A connection in progress, carried sealed in a cookie between the redirect and the callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub user_id: String,
    pub server: String,
    pub state: String,
    pub verifier: String,
    pub token_endpoint: String,
    pub issuer: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub resource: String,
    pub internal: bool,
    /// Unix ms after which it is refused.
    pub expires_at: i64,
}

/// How long a connection may take between the redirect and the callback.
pub const PENDING_LIFETIME_SECS: u64 = 600;

/// Start connecting `user_id` to `entry`: the authorization URL to send the browser to, and
/// what the callback needs.
pub async fn start(
    store: &Store,
    keys: &Keys,
    entry: &ServerEntry,
    user_id: &str,
    redirect_uri: &str,
    roots: &[reqwest::Certificate],
) -> Result<(String, Pending), OAuthError> {
    let settings =
        entry.server.oauth.clone().ok_or_else(|| fail(format!("{} does not use OAuth", entry.server.name)))?;
    let url = entry.server.url.as_deref().ok_or_else(|| fail("the server has no URL"))?;
    let discovered = discover(url, &settings, roots).await?;
    let authorize = reqwest::Url::parse(&discovered.authorization_endpoint)
        .map_err(|_| fail("the authorization endpoint is not a URL"))?;
    if authorize.scheme() != "https" && !settings.internal {
        return Err(fail("the authorization endpoint must use https"));
    }
    let client = client_for(store, keys, entry, &discovered, redirect_uri, roots).await?;
    let verifier = crate::crypto::random_token(32);
    let state = crate::crypto::random_token(16);
    let challenge = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()))
    };
    let mut target = authorize;
    {
        let mut query = target.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", &state)
            .append_pair("resource", &discovered.resource);
        if !discovered.scopes.is_empty() {
            query.append_pair("scope", &discovered.scopes.join(" "));
        }
    }
    let pending = Pending {
        user_id: user_id.to_owned(),
        server: entry.server.name.clone(),
        state,
        verifier,
        token_endpoint: discovered.token_endpoint,
        issuer: discovered.issuer,
        client_id: client.id,
        redirect_uri: redirect_uri.to_owned(),
        resource: discovered.resource,
        internal: settings.internal,
        expires_at: store::now_ms() + PENDING_LIFETIME_SECS as i64 * 1000,
    };
    Ok((target.to_string(), pending))
}

/// What is sealed in the store for a person and a server.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tokens {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    token_endpoint: String,
    issuer: String,
    client_id: String,
    resource: String,
    internal: bool,
}

fn token_context(user_id: &str, server: &str) -> Vec<u8> {
    format!("upstream-token:{user_id}:{server}").into_bytes()
}

/// Ask the token endpoint; the answer's tokens and expiry.
async fn token_request(
    endpoint: &str,
    internal: bool,
    form: &[(&str, &str)],
    roots: &[reqwest::Certificate],
) -> Result<(String, Option<String>, Option<i64>), TokenFailure> {
    let url =
        reqwest::Url::parse(endpoint).map_err(|_| TokenFailure::Other(fail("the token endpoint is not a URL")))?;
    let http = safe_client(&url, internal, roots).await.map_err(TokenFailure::Other)?;
    let response = http.post(url).header("accept", "application/json").form(form).send().await.map_err(|error| {
        TokenFailure::Other(fail(format!("cannot reach the token endpoint ({})", error.without_url())))
    })?;
    let (status, answer) = read_json(response, "the token answer").await.map_err(TokenFailure::Other)?;
    if !status.is_success() {
        let error = answer.get("error").and_then(Value::as_str).unwrap_or("error");
        let description = answer.get("error_description").and_then(Value::as_str).unwrap_or("");
        let problem = fail(format!("the authorization server refused: {error} {description}"));
        return Err(if matches!(error, "invalid_grant" | "invalid_client" | "unauthorized_client") {
            TokenFailure::Refused(problem)
        } else {
            TokenFailure::Other(problem)
        });
    }
    let access = answer
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| TokenFailure::Other(fail("the token answer has no access_token")))?
        .to_owned();
    let refresh = answer.get("refresh_token").and_then(Value::as_str).map(str::to_owned);
    let expires_at = answer.get("expires_in").and_then(Value::as_i64).map(|seconds| store::now_ms() + seconds * 1000);
    Ok((access, refresh, expires_at))
}

enum TokenFailure {
    /// The grant or client is no longer good: the person must connect again.
    Refused(OAuthError),
    /// Anything else (network, a server error): try again later.
    Other(OAuthError),
}

/// Finish connecting: exchange the code, store the person's tokens.
pub async fn finish(
    store: &Store,
    keys: &Keys,
    tokens: &UpstreamTokens,
    pending: &Pending,
    code: &str,
    client_secret: Option<&str>,
    roots: &[reqwest::Certificate],
) -> Result<(), OAuthError> {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", pending.redirect_uri.as_str()),
        ("client_id", pending.client_id.as_str()),
        ("code_verifier", pending.verifier.as_str()),
        ("resource", pending.resource.as_str()),
    ];
    if let Some(secret) = client_secret {
        form.push(("client_secret", secret));
    }
    let (access, refresh, expires_at) = token_request(&pending.token_endpoint, pending.internal, &form, roots)
        .await
        .map_err(|(TokenFailure::Refused(error) | TokenFailure::Other(error))| error)?;
    let sealed = Tokens {
        access_token: access.clone(),
        refresh_token: refresh,
        token_endpoint: pending.token_endpoint.clone(),
        issuer: pending.issuer.clone(),
        client_id: pending.client_id.clone(),
        resource: pending.resource.clone(),
        internal: pending.internal,
    };
    let text = keys
        .secrets
        .seal_text(&serde_json::to_vec(&sealed).unwrap_or_default(), &token_context(&pending.user_id, &pending.server));
    let mut connection = store.pool.acquire().await.map_err(|_| fail("the store did not answer"))?;
    store::upstream_tokens::put_tokens(&mut connection, &pending.user_id, &pending.server, &text, expires_at)
        .await
        .map_err(|_| fail("the store did not answer"))?;
    tokens.remember(&pending.user_id, &pending.server, access, expires_at);
    Ok(())
}

/// Held while one person's token for one server is refreshed.
type RefreshLock = Arc<tokio::sync::Mutex<()>>;

#[derive(Debug, Clone)]
struct Cached {
    access: String,
    expires_at: Option<i64>,
}

/// Hands out people's upstream access tokens (see the module documentation).
#[derive(Debug)]
pub struct UpstreamTokens {
    store: Store,
    keys: Keys,
    roots: Vec<reqwest::Certificate>,
    /// Where people connect, for the message of a call that needs it.
    public_url: Option<String>,
    cache: Mutex<HashMap<(String, String), Cached>>,
    refreshing: Mutex<HashMap<(String, String), RefreshLock>>,
}

impl UpstreamTokens {
    pub fn new(
        store: Store,
        keys: Keys,
        roots: Vec<reqwest::Certificate>,
        public_url: Option<String>,
    ) -> UpstreamTokens {
        UpstreamTokens { store, keys, roots, public_url, cache: Mutex::default(), refreshing: Mutex::default() }
    }

    fn remember(&self, user_id: &str, server: &str, access: String, expires_at: Option<i64>) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert((user_id.to_owned(), server.to_owned()), Cached { access, expires_at });
        }
    }

    /// Forget the cached token (after a disconnect or a refusal).
    pub fn forget(&self, user_id: &str, server: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(&(user_id.to_owned(), server.to_owned()));
        }
    }

    fn fresh(&self, key: &(String, String)) -> Option<String> {
        let cache = self.cache.lock().ok()?;
        let cached = cache.get(key)?;
        let fresh = cached.expires_at.is_none_or(|at| at - EARLY_MS > store::now_ms());
        fresh.then(|| cached.access.clone())
    }

    fn connect_needed(&self, server: &str, again: bool) -> UpstreamError {
        let base = self.public_url.as_deref().unwrap_or("").trim_end_matches('/');
        let verb = if again { "reconnect" } else { "connect" };
        UpstreamError::NeedsConnection(format!(
            "server {server} acts with your own account there: {verb} it at {base}/console/connect/{server} (Portcullis \
             console → My servers)"
        ))
    }

    /// A valid access token of the caller of `entry` (its `user`).
    pub async fn access_token(&self, entry: &ServerEntry) -> Result<String, UpstreamError> {
        let server = entry.server.name.as_str();
        let Some(user_id) = entry.user.as_deref() else { return Err(self.connect_needed(server, false)) };
        let key = (user_id.to_owned(), server.to_owned());
        if let Some(access) = self.fresh(&key) {
            return Ok(access);
        }
        let lock = {
            let mut refreshing = self.refreshing.lock().map_err(|_| UpstreamError::Unavailable("poisoned".into()))?;
            refreshing.entry(key.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Some(access) = self.fresh(&key) {
            return Ok(access);
        }
        fn unavailable<E>(_: E) -> UpstreamError {
            UpstreamError::Unavailable("the gateway's store did not answer".into())
        }
        let mut connection = self.store.pool.acquire().await.map_err(unavailable)?;
        let stored = store::upstream_tokens::tokens(&mut connection, user_id, server).await.map_err(unavailable)?;
        let Some(stored) = stored else { return Err(self.connect_needed(server, false)) };
        if stored.status != "connected" {
            return Err(self.connect_needed(server, true));
        }
        let context = token_context(user_id, server);
        let tokens: Tokens = self
            .keys
            .secrets
            .open_text(&stored.sealed, &context)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| self.connect_needed(server, true))?;
        if stored.expires_at.is_none_or(|at| at - EARLY_MS > store::now_ms()) {
            self.remember(user_id, server, tokens.access_token.clone(), stored.expires_at);
            return Ok(tokens.access_token);
        }
        // Expired or about to: refresh (the new refresh token, if rotated, replaces the old).
        let Some(refresh) = tokens.refresh_token.clone() else {
            self.mark_reconnect(&mut connection, user_id, server).await.map_err(unavailable)?;
            return Err(self.connect_needed(server, true));
        };
        let secret = self.secret_for(entry, &tokens.issuer, &tokens.client_id).await;
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", tokens.client_id.as_str()),
            ("resource", tokens.resource.as_str()),
        ];
        if let Some(secret) = secret.as_deref() {
            form.push(("client_secret", secret));
        }
        match token_request(&tokens.token_endpoint, tokens.internal, &form, &self.roots).await {
            Ok((access, rotated, expires_at)) => {
                let renewed =
                    Tokens { access_token: access.clone(), refresh_token: rotated.or(Some(refresh)), ..tokens };
                let sealed = self.keys.secrets.seal_text(&serde_json::to_vec(&renewed).unwrap_or_default(), &context);
                store::upstream_tokens::put_tokens(&mut connection, user_id, server, &sealed, expires_at)
                    .await
                    .map_err(unavailable)?;
                tracing::info!(server, "refreshed a person's upstream OAuth token");
                self.remember(user_id, server, access.clone(), expires_at);
                Ok(access)
            }
            Err(TokenFailure::Refused(error)) => {
                tracing::warn!(server, %error, "an upstream OAuth refresh was refused; the person must reconnect");
                self.mark_reconnect(&mut connection, user_id, server).await.map_err(unavailable)?;
                Err(self.connect_needed(server, true))
            }
            Err(TokenFailure::Other(error)) => {
                Err(UpstreamError::Unavailable(format!("refreshing your token failed: {error}")))
            }
        }
    }

    /// The upstream refused the caller's token: let the next call refresh it (and, if that
    /// is refused too, ask the person to reconnect).
    pub async fn refused(&self, entry: &ServerEntry) {
        let Some(user_id) = entry.user.as_deref() else { return };
        self.forget(user_id, &entry.server.name);
        if let Ok(mut connection) = self.store.pool.acquire().await {
            let _ = store::upstream_tokens::expire_now(&mut connection, user_id, &entry.server.name).await;
        }
    }

    /// Mark a connection as needing a new sign-in and tell the person (once per loss).
    async fn mark_reconnect(
        &self,
        connection: &mut sqlx::AnyConnection,
        user_id: &str,
        server: &str,
    ) -> Result<(), StoreError> {
        if !store::upstream_tokens::needs_reconnect(&mut *connection, user_id, server).await? {
            return Ok(());
        }
        let Some(person) = store::directory::get_person(&mut *connection, user_id).await? else { return Ok(()) };
        crate::notify::tell(
            connection,
            crate::notify::Recipient { user_id, email: &person.email },
            "reconnect-needed",
            &format!("Reconnect your account: {server}"),
            &format!(
                "Your sign-in at {server} no longer works (it expired or was revoked there). Until you connect it \
                 again, calls to {server} fail."
            ),
            &format!("/console/connect/{server}"),
            crate::notify::Mail::Always,
        )
        .await
    }

    /// The upstream refused even a fresh token: the person must connect again.
    pub async fn rejected(&self, entry: &ServerEntry) -> UpstreamError {
        let server = entry.server.name.as_str();
        if let Some(user_id) = entry.user.as_deref() {
            self.forget(user_id, server);
            if let Ok(mut connection) = self.store.pool.acquire().await {
                let _ = self.mark_reconnect(&mut connection, user_id, server).await;
            }
        }
        self.connect_needed(server, true)
    }

    /// Disconnect a person from a server (the console's "Disconnect").
    pub async fn disconnect(&self, user_id: &str, server: &str) -> Result<bool, StoreError> {
        self.forget(user_id, server);
        let mut connection = self.store.pool.acquire().await?;
        store::upstream_tokens::delete_tokens(&mut connection, user_id, server).await
    }

    /// The secret of the client `client_id` at `issuer`, if it has one: the pre-registered
    /// client's, or the one a dynamic registration returned.
    pub async fn secret_for(&self, entry: &ServerEntry, issuer: &str, client_id: &str) -> Option<String> {
        if entry.server.oauth.as_ref().is_some_and(|oauth| oauth.client_id.as_deref() == Some(client_id)) {
            return entry.secrets.oauth_client_secret.clone();
        }
        let server = &entry.server.name;
        let mut connection = self.store.pool.acquire().await.ok()?;
        let stored = store::upstream_tokens::client(&mut connection, server, issuer).await.ok()??;
        let sealed = stored.sealed_secret.filter(|_| stored.client_id == client_id)?;
        self.keys
            .secrets
            .open_text(&sealed, &client_secret_context(server, issuer))
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    }

    pub fn roots(&self) -> &[reqwest::Certificate] {
        &self.roots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_names_the_metadata() {
        let challenge = r#"Bearer realm="mcp", resource_metadata="https://api.example.com/.well-known/oauth-protected-resource/mcp", error="invalid_token""#;
        assert_eq!(
            resource_metadata_of(challenge).as_deref(),
            Some("https://api.example.com/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(resource_metadata_of("Bearer"), None);
    }

    #[tokio::test]
    async fn private_addresses_are_refused_unless_internal() {
        let url = reqwest::Url::parse("https://127.0.0.1:9/metadata").unwrap();
        let refused = safe_client(&url, false, &[]).await.unwrap_err();
        assert!(refused.0.contains("private address"), "{refused}");
        assert!(safe_client(&url, true, &[]).await.is_ok());
        let plain = reqwest::Url::parse("http://203.0.113.9/metadata").unwrap();
        assert!(safe_client(&plain, false, &[]).await.unwrap_err().0.contains("https"));
        let metadata = reqwest::Url::parse("https://169.254.169.254/latest").unwrap();
        assert!(safe_client(&metadata, false, &[]).await.is_err(), "the cloud metadata service is private");
    }
}
