//! Connecting one's own account to a server with per-user OAuth (see
//! [`crate::auth::upstream`]): "Connect" on My servers leads to `/console/connect/{server}`,
//! which discovers the server's authorization server and sends the browser there; the
//! authorization server sends it back to `/oauth/upstream/callback`, which stores the
//! person's tokens. The pending connection travels sealed in a 10-minute cookie bound to the
//! person, so any replica can finish it and it is good once.

use super::html::{Html, esc, link, note};
use super::{AppState, clear_cookie, cookie, csrf, failure, redirect, require, respond, set_cookie, with_cookies};
use crate::auth::upstream::{self, Pending};
use crate::store::{self, StoreError};
use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

const PENDING_COOKIE: &str = "portcullis_upstream";
const PENDING_PATH: &str = "/";
const PENDING_CONTEXT: &[u8] = b"upstream-oauth-pending";

/// Where authorization servers send people back.
fn callback_uri(state: &AppState, headers: &HeaderMap) -> String {
    format!("{}/oauth/upstream/callback", super::base_url(state, headers))
}

/// The account column of My servers for servers with per-user OAuth: server → cell.
pub async fn account_cells(state: &AppState, user_id: &str, csrf: &str) -> Result<HashMap<String, Html>, StoreError> {
    let Ok(snapshot) = state.snapshot.current() else { return Ok(HashMap::new()) };
    let mut connection = state.store.pool.acquire().await?;
    let connected: HashMap<String, (String, Option<i64>)> = store::upstream_tokens::of_user(&mut connection, user_id)
        .await?
        .into_iter()
        .map(|(server, status, expires)| (server, (status, expires)))
        .collect();
    let mut cells = HashMap::new();
    for (name, entry) in &snapshot.servers {
        if entry.server.oauth.is_none() {
            continue;
        }
        let connect = |label: &str| {
            format!("<a class=\"button\" href=\"/console/connect/{}\">{label}</a>", esc(&super::url_encode(name)))
        };
        let html = match connected.get(name) {
            Some((status, _)) if status == "connected" => format!(
                "<span class=\"ok\">Connected</span> <form method=\"post\" action=\"/console/connect/{}/disconnect\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" class=\"secondary\">Disconnect</button></form>",
                esc(&super::url_encode(name)),
                esc(csrf)
            ),
            Some(_) => format!("<span class=\"error\">Needs reconnect</span> {}", connect("Reconnect")),
            None => format!("<span class=\"hint\">Not connected</span> {}", connect("Connect")),
        };
        cells.insert(name.clone(), Html::trusted(html));
    }
    Ok(cells)
}

/// `GET /console/connect/{server}`: start connecting the signed-in person's account.
pub async fn start(State(state): State<AppState>, headers: HeaderMap, Path(server): Path<String>) -> Response {
    let signed = match require(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let problem = |text: String| {
        let mut content = Html::new();
        content.push(note("error", &text));
        content.push(link("/console", "Back to my servers"));
        content
    };
    let usable = super::servers_of(&state, &signed.account.user_id).iter().any(|(name, _)| *name == server);
    let entry = state.snapshot.current().ok().and_then(|snapshot| snapshot.servers.get(&server).cloned());
    let Some(entry) = entry.filter(|_| usable) else {
        let content = problem(format!("You cannot use a server named {server:?}."));
        return respond(signed, &csrf_token, set, "Cannot connect", content);
    };
    let redirect_uri = callback_uri(&state, &headers);
    let started = upstream::start(
        &state.store,
        &state.keys,
        &entry,
        &signed.account.user_id,
        &redirect_uri,
        state.upstream_tokens.roots(),
    )
    .await;
    match started {
        Ok((target, pending)) => {
            let sealed =
                state.keys.console.seal_text(&serde_json::to_vec(&pending).unwrap_or_default(), PENDING_CONTEXT);
            let cookie =
                set_cookie(&state, PENDING_COOKIE, &sealed, PENDING_PATH, "Lax", upstream::PENDING_LIFETIME_SECS);
            with_cookies(redirect(&target), vec![cookie])
        }
        Err(error) => {
            tracing::warn!(%server, %error, "connecting to an upstream's OAuth failed");
            let content = problem(format!("Connecting to {server} failed: {error}"));
            respond(signed, &csrf_token, set, "Cannot connect", content)
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `GET /oauth/upstream/callback`: the authorization server sends the person back here.
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let signed = match require(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let clear = clear_cookie(&state, PENDING_COOKIE, PENDING_PATH);
    let pending: Option<Pending> = cookie(&state, &headers, PENDING_COOKIE, PENDING_PATH)
        .and_then(|value| state.keys.console.open_text(value, PENDING_CONTEXT).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let outcome: Result<String, String> = async {
        let pending = pending.ok_or(
            "this sign-in is not one Portcullis started here (or it took longer than ten minutes); connect again",
        )?;
        if pending.user_id != signed.account.user_id || pending.expires_at < store::now_ms() {
            return Err("this sign-in was started by someone else or has expired; connect again".to_owned());
        }
        if query.state.as_deref() != Some(pending.state.as_str()) {
            return Err("the answer does not match the sign-in Portcullis started; connect again".to_owned());
        }
        if let Some(error) = &query.error {
            let description = query.error_description.as_deref().unwrap_or("");
            return Err(format!("the authorization server said: {error} {description}"));
        }
        let code = query.code.as_deref().ok_or("the authorization server sent no code")?;
        let entry = state
            .snapshot
            .current()
            .ok()
            .and_then(|snapshot| snapshot.servers.get(&pending.server).cloned())
            .ok_or("the server no longer exists")?;
        let secret = state.upstream_tokens.secret_for(&entry, &pending.issuer, &pending.client_id).await;
        upstream::finish(
            &state.store,
            &state.keys,
            &state.upstream_tokens,
            &pending,
            code,
            secret.as_deref(),
            state.upstream_tokens.roots(),
        )
        .await
        .map_err(|error| error.to_string())?;
        Ok(pending.server)
    }
    .await;
    let mut content = Html::new();
    let title = match outcome {
        Ok(server) => {
            super::audit(
                &state,
                Some(&signed.account),
                &signed.account.email,
                "upstream-oauth/connect",
                true,
                &format!("{} connected their account to {server}", signed.account.email),
            );
            content.push(note("ok", &format!("Your account is connected: calls to {server} now act as you there.")));
            "Connected"
        }
        Err(problem) => {
            content.push(note("error", &problem));
            "Not connected"
        }
    };
    content.push(link("/console", "Back to my servers"));
    with_cookies(respond(signed, &csrf_token, set, title, content), vec![clear])
}

/// `POST /console/connect/{server}/disconnect`.
pub async fn disconnect(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(server): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let signed = match super::require_form(&state, &headers, &form).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    match state.upstream_tokens.disconnect(&signed.account.user_id, &server).await {
        Ok(_) => {
            super::audit(
                &state,
                Some(&signed.account),
                &signed.account.email,
                "upstream-oauth/disconnect",
                true,
                &format!("{} disconnected their account from {server}", signed.account.email),
            );
            redirect("/console")
        }
        Err(error) => failure(&error),
    }
}
