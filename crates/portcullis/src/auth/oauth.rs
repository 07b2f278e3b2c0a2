//! The OAuth 2.1 authorization server MCP clients use instead of copied API keys.
//!
//! Discovery: RFC 9728 protected-resource metadata for every MCP endpoint (and the
//! `resource_metadata` of every 401), RFC 8414 metadata (and the OpenID discovery alias).
//! Clients register themselves (RFC 7591; redirect URIs: https, loopback http, or a native
//! app's private-use scheme — never `javascript:`, `data:` or `file:`) or identify by the URL
//! of their metadata document ([`cimd`]), then run the
//! authorization-code flow with PKCE S256 only: the person signs in to the console, sees which
//! client asks for which server, and approves. Codes are single use and live one minute; the
//! response carries `iss` (RFC 9207). Access tokens are bound to the one endpoint they were
//! requested for (RFC 8707 `resource`) and live 15 minutes; refresh tokens rotate, and a
//! reused refresh token (or code) revokes every token of its family. Revocation: RFC 7009.

use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::auth::{ACCESS_TOKEN_PREFIX, REFRESH_TOKEN_PREFIX, cimd};
use crate::config::Config;
use crate::console::{self, html};
use crate::crypto::{new_id, random_token, sha256_hex};
use crate::registry::Status;
use crate::store::{self, StoreError, now_ms};
use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;

const ACCESS_LIFETIME_MS: i64 = 15 * 60 * 1000;
const REFRESH_LIFETIME_MS: i64 = 30 * 24 * 60 * 60 * 1000;
const CODE_LIFETIME_MS: i64 = 60 * 1000;
/// Schemes that never receive an authorization response.
const FORBIDDEN_SCHEMES: [&str; 8] = ["javascript", "data", "file", "vbscript", "about", "blob", "ws", "wss"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/oauth-protected-resource", get(root_resource_metadata))
        .route("/.well-known/oauth-protected-resource/mcp", get(root_resource_metadata))
        .route("/.well-known/oauth-protected-resource/mcp/{server}", get(resource_metadata))
        .route("/.well-known/oauth-authorization-server", get(server_metadata))
        .route("/.well-known/openid-configuration", get(server_metadata))
        .route("/oauth/register", post(register))
        .route("/oauth/authorize", get(authorize_page).post(authorize))
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        // The default endpoints a 2025-03-26 client falls back to without metadata.
        .route("/register", post(register))
        .route("/authorize", get(authorize_page))
        .route("/token", post(token))
}

/// The gateway's external base URL: `public_url`, or the address the request came to (the
/// edge has already checked the Host).
pub fn base_url(config: &Config, headers: &HeaderMap) -> String {
    match &config.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("localhost");
            format!("http://{host}")
        }
    }
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn resource_document(state: &AppState, headers: &HeaderMap, path: &str, name: &str) -> Response {
    let base = base_url(&state.config, headers);
    axum::Json(json!({
        "resource": format!("{base}{path}"),
        "resource_name": name,
        "authorization_servers": [base],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp"],
    }))
    .into_response()
}

async fn root_resource_metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    resource_document(&state, &headers, "/mcp", "Portcullis: every server you may use")
}

async fn resource_metadata(State(state): State<AppState>, headers: HeaderMap, Path(server): Path<String>) -> Response {
    let exists = state.snapshot.current().is_ok_and(|snapshot| snapshot.servers.contains_key(&server));
    if !exists {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"error": "not_found", "message": "no such server"})))
            .into_response();
    }
    resource_document(&state, &headers, &format!("/mcp/{server}"), &format!("Portcullis: {server}"))
}

async fn server_metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = base_url(&state.config, &headers);
    axum::Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "registration_endpoint": format!("{base}/oauth/register"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": ["mcp"],
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": state.config.oauth_client_metadata_documents,
    }))
    .into_response()
}

/// An OAuth error body (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    no_store((status, axum::Json(json!({"error": error, "error_description": description}))).into_response())
}

/// Why a redirect URI cannot be registered, if it cannot. `schemes` narrows the private-use
/// schemes allowed (empty: any).
pub fn check_redirect_uri(text: &str, schemes: &[String]) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|error| format!("{text:?} is not an absolute URI ({error})"))?;
    if url.fragment().is_some() {
        return Err(format!("{text:?} has a fragment; redirect URIs must not"));
    }
    let scheme = url.scheme();
    match scheme {
        "https" if url.host().is_some() => Ok(()),
        "http" => match url.host_str() {
            Some("127.0.0.1" | "[::1]" | "localhost") => Ok(()),
            _ => Err(format!("{text:?}: plain http is allowed only for loopback addresses (RFC 8252)")),
        },
        _ if FORBIDDEN_SCHEMES.contains(&scheme) || scheme == "https" => {
            Err(format!("{text:?}: the {scheme}: scheme cannot receive an authorization response"))
        }
        // A native application's private-use scheme (RFC 8252 §7.1), e.g. cursor:// or vscode://.
        _ if schemes.is_empty() || schemes.iter().any(|allowed| allowed == scheme) => Ok(()),
        _ => Err(format!(
            "{text:?}: the {scheme}: scheme is not among the schemes this gateway allows ({})",
            schemes.join(", ")
        )),
    }
}

/// `POST /oauth/register` (RFC 7591): public clients only.
async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let ip = crate::edge::client_ip(peer, &headers, &state.config.trusted_proxies);
    if !state.registrations.hit(&ip.to_string()) {
        return oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "invalid_client_metadata",
            "too many client registrations from this address; try again in an hour",
        );
    }
    let Ok(metadata) = serde_json::from_slice::<Value>(&body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", "the body must be a JSON object");
    };
    let redirect_uris: Vec<String> = metadata["redirect_uris"]
        .as_array()
        .map(|uris| uris.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    if redirect_uris.is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "redirect_uris must list at least one URI",
        );
    }
    for uri in &redirect_uris {
        if let Err(reason) = check_redirect_uri(uri, &state.config.oauth_redirect_schemes) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_redirect_uri", &reason);
        }
    }
    if let Some(method) = metadata["token_endpoint_auth_method"].as_str().filter(|method| *method != "none") {
        let text =
            format!("token_endpoint_auth_method {method:?} is not supported; register a public client (\"none\")");
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", &text);
    }
    let name: String = metadata["client_name"].as_str().unwrap_or("an unnamed application").chars().take(100).collect();
    let client = store::oauth::Client { id: format!("pcl_{}", random_token(16)), name, redirect_uris };
    let stored = async {
        let mut connection = state.store.pool.acquire().await?;
        store::oauth::save_client(&mut connection, &client).await
    }
    .await;
    if let Err(error) = stored {
        tracing::error!(%error, "cannot store an OAuth client");
        return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the store failed; try again");
    }
    let body = json!({
        "client_id": client.id, "client_name": client.name, "redirect_uris": client.redirect_uris,
        "token_endpoint_auth_method": "none", "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"], "client_id_issued_at": now_ms() / 1000,
    });
    no_store((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// The parameters of an authorization request (query on GET, hidden fields on POST).
#[derive(Debug, Clone, Default, Deserialize)]
struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    state: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
    #[serde(default)]
    csrf: String,
    decision: Option<String>,
}

/// A request that passed every check.
struct Checked {
    client: store::oauth::Client,
    redirect_uri: String,
    code_challenge: String,
    /// The endpoint path (`/mcp/{server}` or `/mcp`).
    resource: String,
}

/// Where a failed check sends the browser.
enum Refusal {
    /// The client or its redirect URI cannot be trusted: show an error, never redirect.
    Page(String),
    /// Tell the client, at its registered redirect URI.
    Redirect(String),
}

fn with_params(uri: &str, params: &[(&str, &str)]) -> String {
    let query: Vec<String> =
        params.iter().map(|(name, value)| format!("{name}={}", console::url_encode(value))).collect();
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{}", query.join("&"))
}

/// The registered client and the redirect URI the request may use; anything wrong here is
/// shown as a page (never a redirect to an address that is not the client's).
async fn client_and_redirect(
    state: &AppState,
    params: &AuthorizeParams,
) -> Result<(store::oauth::Client, String), Refusal> {
    let client_id = params.client_id.as_deref().unwrap_or_default();
    let client = find_client(state, client_id).await?;
    let redirect_uri = match params.redirect_uri.as_deref() {
        Some(uri) if client.redirect_uris.iter().any(|registered| registered == uri) => uri.to_owned(),
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        Some(uri) => {
            return Err(Refusal::Page(format!("{uri:?} is not a redirect URI registered by this application")));
        }
        None => return Err(Refusal::Page("the request names no redirect_uri".into())),
    };
    Ok((client, redirect_uri))
}

/// A client registered here, or one described by the metadata document at its `client_id` URL.
async fn find_client(state: &AppState, client_id: &str) -> Result<store::oauth::Client, Refusal> {
    if cimd::is_document_url(client_id) {
        if !state.config.oauth_client_metadata_documents {
            return Err(Refusal::Page(
                "this gateway does not accept client metadata documents; the application must register (dynamic client registration)".into(),
            ));
        }
        return state.client_documents.client(client_id).await.map_err(|problem| {
            tracing::info!(client_id, %problem, "a client metadata document was refused");
            Refusal::Page(format!("the application's client metadata document ({client_id}) cannot be used: {problem}"))
        });
    }
    let found = async {
        let mut connection = state.store.pool.acquire().await?;
        store::oauth::client(&mut connection, client_id).await
    }
    .await
    .map_err(|error: StoreError| {
        tracing::error!(%error, "cannot read an OAuth client");
        Refusal::Page("the store failed; try again".into())
    })?;
    found.ok_or_else(|| Refusal::Page(format!("no application is registered as {client_id:?}")))
}

async fn check(state: &AppState, headers: &HeaderMap, params: &AuthorizeParams) -> Result<Checked, Refusal> {
    let base = base_url(&state.config, headers);
    let (client, redirect_uri) = client_and_redirect(state, params).await?;
    let refuse = |error: &str, description: &str| {
        let mut query = vec![("error", error), ("error_description", description), ("iss", base.as_str())];
        if let Some(state) = params.state.as_deref() {
            query.push(("state", state));
        }
        Refusal::Redirect(with_params(&redirect_uri, &query))
    };
    if params.response_type.as_deref() != Some("code") {
        return Err(refuse("unsupported_response_type", "only response_type=code is supported"));
    }
    let Some(code_challenge) = params.code_challenge.clone().filter(|challenge| !challenge.is_empty()) else {
        return Err(refuse("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256"));
    };
    if params.code_challenge_method.as_deref() != Some("S256") {
        return Err(refuse("invalid_request", "only code_challenge_method=S256 is supported"));
    }
    let Some(resource) = params.resource.as_deref() else {
        return Err(refuse("invalid_target", "send resource (RFC 8707): the MCP endpoint the token is for"));
    };
    let path = resource.trim_end_matches('/').strip_prefix(&base).unwrap_or_default().to_owned();
    let known = path == "/mcp"
        || path
            .strip_prefix("/mcp/")
            .is_some_and(|server| state.snapshot.current().is_ok_and(|snapshot| snapshot.servers.contains_key(server)));
    if !known {
        return Err(refuse("invalid_target", &format!("{resource:?} is not an MCP endpoint of this gateway")));
    }
    Ok(Checked { client, redirect_uri, code_challenge, resource: path })
}

fn refusal_response(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Page(message) => {
            let body = html::page("This request cannot go ahead", None, html::note("error", &message));
            let page = (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body);
            console::secure_page(page.into_response())
        }
        Refusal::Redirect(location) => redirect_to(&location),
    }
}

fn redirect_to(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `GET /oauth/authorize`: check the request, make sure the person is signed in, and ask.
async fn authorize_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<AuthorizeParams>,
    uri: axum::http::Uri,
) -> Response {
    // Anyone may register a client, so errors go back to its redirect URI only once a person
    // signed in: before that, a link to this endpoint must not bounce a browser elsewhere. A
    // client metadata document is fetched only for a signed-in person (no anonymous fetches).
    let client_id = params.client_id.as_deref().unwrap_or_default();
    let early = if cimd::is_document_url(client_id) {
        cimd::check_document_url(client_id).map(|_| ()).map_err(Refusal::Page)
    } else {
        client_and_redirect(&state, &params).await.map(|_| ())
    };
    if let Err(refusal) = early {
        return refusal_response(refusal);
    }
    let account = match console::signed_in_account(&state, &headers).await {
        Ok(Some(account)) => account,
        Ok(None) => {
            // Back to the canonical endpoint after signing in (also for the fallback path).
            let next = format!("/oauth/authorize?{}", uri.query().unwrap_or_default());
            return redirect_to(&format!("/login?next={}", console::url_encode(&next)));
        }
        Err(error) => {
            tracing::error!(%error, "cannot read the console session");
            return refusal_response(Refusal::Page("the store failed; try again".into()));
        }
    };
    let checked = match check(&state, &headers, &params).await {
        Ok(checked) => checked,
        Err(refusal) => return refusal_response(refusal),
    };
    let (csrf, cookie) = console::csrf_for(&state, &headers);
    let target = if checked.resource == "/mcp" {
        "every server you may use".to_owned()
    } else {
        format!("the server {}", checked.resource.trim_start_matches("/mcp/"))
    };
    let redirect_host = reqwest::Url::parse(&checked.redirect_uri)
        .ok()
        .map(|url| format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default()))
        .unwrap_or_default();
    // A metadata document's name is the client's own claim; its address is what is proven.
    let who = match reqwest::Url::parse(&checked.client.id).ok().filter(|_| cimd::is_document_url(&checked.client.id)) {
        Some(url) => format!("{} (from {})", checked.client.name, url.host_str().unwrap_or_default()),
        None => checked.client.name.clone(),
    };
    let mut content = html::Html::new();
    content.push(html::note("hint", &format!("{who} asks to use {target} on your behalf, as {}.", account.email)));
    content.push(html::note("hint", &format!("If you allow it, you go back to {redirect_host}.")));
    let hidden_values = [
        ("response_type", "code".to_owned()),
        ("client_id", checked.client.id.clone()),
        ("redirect_uri", checked.redirect_uri.clone()),
        ("code_challenge", checked.code_challenge.clone()),
        ("code_challenge_method", "S256".to_owned()),
        ("state", params.state.clone().unwrap_or_default()),
        ("resource", params.resource.clone().unwrap_or_default()),
        ("scope", params.scope.clone().unwrap_or_default()),
    ];
    for (decision, label) in [("approve", "Allow"), ("deny", "Deny")] {
        let mut hidden: Vec<(&'static str, &str)> =
            hidden_values.iter().map(|(name, value)| (*name, value.as_str())).collect();
        hidden.push(("decision", decision));
        content.push(html::form_with("/oauth/authorize", &csrf, &hidden, &[], label));
    }
    let viewer = console::viewer(&account, &csrf);
    let body = html::page("Allow access?", Some(&viewer), content);
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    if let Some(cookie) = cookie.and_then(|cookie| HeaderValue::from_str(&cookie).ok()) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    console::secure_page(response)
}

/// `POST /oauth/authorize`: the person's answer.
async fn authorize(State(state): State<AppState>, headers: HeaderMap, Form(params): Form<AuthorizeParams>) -> Response {
    if !console::csrf_valid(&state, &headers, &params.csrf) {
        return refusal_response(Refusal::Page("the form expired; start again from the application".into()));
    }
    // Signed in first: nothing about the client (a metadata document fetch included) happens
    // for an anonymous request.
    let account = match console::signed_in_account(&state, &headers).await {
        Ok(Some(account)) => account,
        _ => return refusal_response(Refusal::Page("sign in again, then start again from the application".into())),
    };
    let checked = match check(&state, &headers, &params).await {
        Ok(checked) => checked,
        Err(refusal) => return refusal_response(refusal),
    };
    let base = base_url(&state.config, &headers);
    let client_state = params.state.clone().unwrap_or_default();
    if params.decision.as_deref() != Some("approve") {
        let mut query =
            vec![("error", "access_denied"), ("error_description", "the person said no"), ("iss", base.as_str())];
        if !client_state.is_empty() {
            query.push(("state", &client_state));
        }
        return redirect_to(&with_params(&checked.redirect_uri, &query));
    }
    let code = format!("pcc_{}", random_token(32));
    let record = store::oauth::Code {
        client_id: checked.client.id.clone(),
        user_id: account.user_id.clone(),
        redirect_uri: checked.redirect_uri.clone(),
        code_challenge: checked.code_challenge.clone(),
        resource: checked.resource.clone(),
        family: new_id(),
        expires_at: now_ms() + CODE_LIFETIME_MS,
        used: false,
    };
    let stored = async {
        let mut connection = state.store.pool.acquire().await?;
        if cimd::is_document_url(&checked.client.id) {
            // Codes and tokens refer to the client: keep the document's latest reading.
            store::oauth::save_client(&mut connection, &checked.client).await?;
        }
        store::oauth::insert_code(&mut connection, &sha256_hex(code.as_bytes()), &record).await
    }
    .await;
    if let Err(error) = stored {
        tracing::error!(%error, "cannot store an authorization code");
        return refusal_response(Refusal::Page("the store failed; try again".into()));
    }
    audit(&state, &account.user_id, &account.email, "oauth/authorize", &checked.client.name, &checked.resource);
    let mut query = vec![("code", code.as_str()), ("iss", base.as_str())];
    if !client_state.is_empty() {
        query.push(("state", &client_state));
    }
    redirect_to(&with_params(&checked.redirect_uri, &query))
}

fn audit(state: &AppState, user_id: &str, email: &str, method: &str, client: &str, resource: &str) {
    let reason = format!("approved for {client}");
    let mut event = AuditEvent::action(email, Some(user_id), method, Some(client), true, &reason, &state.replica);
    event.server = resource.strip_prefix("/mcp/").map(str::to_owned);
    state.audit.record(event);
}

#[derive(Debug, Default, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    client_id: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    resource: Option<String>,
}

fn s256(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// `POST /oauth/token`.
async fn token(State(state): State<AppState>, Form(request): Form<TokenRequest>) -> Response {
    let result = match request.grant_type.as_deref() {
        Some("authorization_code") => exchange_code(&state, &request).await,
        Some("refresh_token") => refresh(&state, &request).await,
        Some(other) => Err(("unsupported_grant_type", format!("grant_type {other:?} is not supported"))),
        None => Err(("invalid_request", "grant_type is missing".to_owned())),
    };
    match result {
        Ok(body) => no_store(axum::Json(body).into_response()),
        Err((error, description)) => oauth_error(StatusCode::BAD_REQUEST, error, &description),
    }
}

type Grant = Result<Value, (&'static str, String)>;

fn store_failed(error: StoreError) -> (&'static str, String) {
    tracing::error!(%error, "OAuth token request failed in the store");
    ("server_error", "the store failed; try again".to_owned())
}

async fn exchange_code(state: &AppState, request: &TokenRequest) -> Grant {
    let code = request.code.as_deref().ok_or(("invalid_request", "code is missing".to_owned()))?;
    let verifier =
        request.code_verifier.as_deref().ok_or(("invalid_request", "code_verifier is missing (PKCE)".to_owned()))?;
    let mut transaction = state.store.begin_write().await.map_err(|error| store_failed(error.into()))?;
    let Some(found) =
        store::oauth::take_code(&mut transaction, &sha256_hex(code.as_bytes())).await.map_err(store_failed)?
    else {
        return Err(("invalid_grant", "the code is not valid".into()));
    };
    if found.used {
        // A replayed code: whoever holds the tokens it gave may be an attacker.
        store::oauth::revoke_family(&mut transaction, &found.family).await.map_err(store_failed)?;
        transaction.commit().await.map_err(|error| store_failed(error.into()))?;
        reload(state).await;
        return Err(("invalid_grant", "the code was used already; the tokens issued for it are revoked".into()));
    }
    let problem = if found.expires_at <= now_ms() {
        Some("the code expired; start the authorization again")
    } else if request.client_id.as_deref() != Some(found.client_id.as_str()) {
        Some("the code was issued to another client")
    } else if request.redirect_uri.as_deref().is_some_and(|uri| uri != found.redirect_uri) {
        Some("redirect_uri differs from the authorization request's")
    } else if s256(verifier) != found.code_challenge {
        Some("code_verifier does not match the code_challenge")
    } else if request
        .resource
        .as_deref()
        .is_some_and(|resource| !resource.trim_end_matches('/').ends_with(&found.resource))
    {
        Some("resource differs from the authorization request's")
    } else {
        None
    };
    if let Some(problem) = problem {
        transaction.commit().await.map_err(|error| store_failed(error.into()))?;
        return Err(("invalid_grant", problem.into()));
    }
    let grant = issue(&mut transaction, &found.family, &found.client_id, &found.user_id, &found.resource).await?;
    transaction.commit().await.map_err(|error| store_failed(error.into()))?;
    reload(state).await;
    Ok(grant)
}

/// Issue an access and a refresh token of `family`, if the user may still sign in.
async fn issue(
    connection: &mut sqlx::AnyConnection,
    family: &str,
    client_id: &str,
    user_id: &str,
    resource: &str,
) -> Grant {
    let account = store::accounts::by_id(connection, user_id).await.map_err(store_failed)?;
    if account.is_none_or(|account| account.status != Status::Active) {
        return Err(("invalid_grant", "the account cannot sign in".into()));
    }
    let access = format!("{ACCESS_TOKEN_PREFIX}{}", random_token(32));
    let refresh = format!("{REFRESH_TOKEN_PREFIX}{}", random_token(32));
    let now = now_ms();
    for (secret, kind, lifetime) in
        [(&access, "access", ACCESS_LIFETIME_MS), (&refresh, "refresh", REFRESH_LIFETIME_MS)]
    {
        let token = store::oauth::Token {
            kind: kind.into(),
            family: family.into(),
            client_id: client_id.into(),
            user_id: user_id.into(),
            resource: resource.into(),
            expires_at: now + lifetime,
            used: false,
            revoked: false,
        };
        store::oauth::insert_token(connection, &sha256_hex(secret.as_bytes()), &token).await.map_err(store_failed)?;
    }
    Ok(json!({"access_token": access, "token_type": "Bearer", "expires_in": ACCESS_LIFETIME_MS / 1000,
              "refresh_token": refresh, "scope": "mcp"}))
}

async fn refresh(state: &AppState, request: &TokenRequest) -> Grant {
    let presented =
        request.refresh_token.as_deref().ok_or(("invalid_request", "refresh_token is missing".to_owned()))?;
    let hash = sha256_hex(presented.as_bytes());
    let mut transaction = state.store.begin_write().await.map_err(|error| store_failed(error.into()))?;
    let Some(found) = store::oauth::token(&mut transaction, &hash)
        .await
        .map_err(store_failed)?
        .filter(|token| token.kind == "refresh")
    else {
        return Err(("invalid_grant", "the refresh token is not valid".into()));
    };
    if found.used || found.revoked {
        // Reuse of a rotated refresh token: revoke the whole family.
        store::oauth::revoke_family(&mut transaction, &found.family).await.map_err(store_failed)?;
        transaction.commit().await.map_err(|error| store_failed(error.into()))?;
        reload(state).await;
        return Err((
            "invalid_grant",
            "the refresh token was used already; every token of this sign-in is revoked".into(),
        ));
    }
    if found.expires_at <= now_ms() {
        return Err(("invalid_grant", "the refresh token expired; sign in again".into()));
    }
    if request.client_id.as_deref() != Some(found.client_id.as_str()) {
        return Err(("invalid_grant", "the refresh token was issued to another client".into()));
    }
    if !store::oauth::use_token(&mut transaction, &hash).await.map_err(store_failed)? {
        store::oauth::revoke_family(&mut transaction, &found.family).await.map_err(store_failed)?;
        transaction.commit().await.map_err(|error| store_failed(error.into()))?;
        reload(state).await;
        return Err(("invalid_grant", "the refresh token was used already".into()));
    }
    let grant = issue(&mut transaction, &found.family, &found.client_id, &found.user_id, &found.resource).await?;
    transaction.commit().await.map_err(|error| store_failed(error.into()))?;
    reload(state).await;
    Ok(grant)
}

async fn reload(state: &AppState) {
    if let Err(error) = state.snapshot.reload(&state.store, &state.keys).await {
        tracing::warn!(%error, "snapshot reload after an OAuth change failed; the refresher will retry");
    }
}

#[derive(Debug, Default, Deserialize)]
struct RevokeRequest {
    token: Option<String>,
}

/// `POST /oauth/revoke` (RFC 7009): always 200; a refresh token takes its family with it.
async fn revoke(State(state): State<AppState>, Form(request): Form<RevokeRequest>) -> Response {
    let Some(presented) = request.token.as_deref() else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is missing");
    };
    let hash = sha256_hex(presented.as_bytes());
    let done = async {
        let mut transaction = state.store.begin_write().await?;
        if let Some(found) = store::oauth::token(&mut transaction, &hash).await? {
            if found.kind == "refresh" {
                store::oauth::revoke_family(&mut transaction, &found.family).await?;
            } else {
                store::oauth::revoke_token(&mut transaction, &hash).await?;
            }
        }
        transaction.commit().await?;
        Ok::<_, StoreError>(())
    }
    .await;
    if let Err(error) = done {
        tracing::error!(%error, "token revocation failed in the store");
        return oauth_error(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the store failed; try again");
    }
    reload(&state).await;
    no_store(StatusCode::OK.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris() {
        for good in [
            "https://app.example.com/cb",
            "http://127.0.0.1:33418/callback",
            "http://localhost:8080/cb",
            "http://[::1]:9/cb",
            "cursor://anysphere.cursor-retrieval/oauth/callback",
            "vscode://vscode.github-authentication/did-authenticate",
            "com.example.app:/oauth2redirect",
        ] {
            assert!(check_redirect_uri(good, &[]).is_ok(), "{good}");
        }
        for bad in [
            "javascript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "http://evil.example.com/cb",
            "https://app.example.com/cb#frag",
            "/relative",
            "https://",
        ] {
            assert!(check_redirect_uri(bad, &[]).is_err(), "{bad}");
        }
        // Admins can narrow the private-use schemes; https and loopback stay allowed.
        let narrowed = ["cursor".to_owned()];
        assert!(check_redirect_uri("cursor://anysphere.cursor-retrieval/cb", &narrowed).is_ok());
        assert!(check_redirect_uri("vscode://vscode.github-authentication/cb", &narrowed).is_err());
        assert!(check_redirect_uri("http://127.0.0.1:9/cb", &narrowed).is_ok());
    }

    #[test]
    fn pkce_s256_matches_rfc_7636() {
        assert_eq!(s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }
}
