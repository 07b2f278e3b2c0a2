//! The web console: server-rendered pages that work without JavaScript, under a strict
//! Content-Security-Policy, with a CSRF token on every form.
//!
//! Sign-in is local accounts for now: an argon2id password, then a TOTP code for everyone who
//! enrolled and for every admin (admins must enrol before they can do anything else). A
//! session is a cookie sealed with the deployment key; it lapses after 30 idle minutes and 12
//! hours in all, and ends everywhere when the person's session epoch is raised ("sign out
//! everywhere") or they are suspended. First run prints a one-time setup link that creates the
//! first super admin.

mod activity;
mod catalog;
mod charts;
mod connect;
pub mod html;
mod mail;
mod policies;
mod requests;
mod servers;
mod sso;
mod tools;

use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::auth::{password, totp};
use crate::crypto::{random_token, sha256_hex};
use crate::registry::{AdminRole, Email, Status};
use crate::store::{self, StoreError, accounts::Account, now_ms};
use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use html::{Field, Html, Viewer, cell, esc, facts, link, note, page, rich_table, table, text};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

const SESSION_COOKIE: &str = "portcullis_session";
const CSRF_COOKIE: &str = "portcullis_csrf";
const ENROL_COOKIE: &str = "portcullis_enrol";
/// A session lapses after this long without a request…
const IDLE: u64 = 30 * 60;
/// …and after this long in all.
const ABSOLUTE: u64 = 12 * 60 * 60;
/// How long a first-run setup link works.
const SETUP_LIFETIME_MS: i64 = 24 * 60 * 60 * 1000;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { redirect("/console") }))
        .route("/console/style.css", get(style))
        .route("/login", get(login_page).post(login))
        .route("/login/mfa", get(second_factor_page).post(second_factor))
        .route("/auth/oidc/login", get(sso::start))
        .route("/auth/oidc/callback", get(sso::callback))
        .route("/logout", post(logout))
        .route("/logout/everywhere", post(logout_everywhere))
        .route("/setup", get(setup_page).post(setup))
        .route("/console", get(home))
        .route("/console/api-keys", post(create_key))
        .route("/console/api-keys/{id}/revoke", post(revoke_key))
        .route("/console/mfa", get(enrol_page).post(enrol))
        .route("/console/users", get(users))
        .route("/console/users/{email}", get(user_detail))
        .route("/console/users/{email}/status", post(set_user_status))
        .route("/console/groups", get(groups))
        .route("/console/audit", get(activity::page))
        .route("/console/catalog", get(catalog::page))
        .route("/console/requests", get(requests::list).post(requests::create))
        .route("/console/requests/new", get(requests::new))
        .route("/console/requests/metrics", get(requests::metrics))
        .route("/console/request-targets", post(requests::save_targets))
        .route("/console/requests/{id}", get(requests::detail))
        .route("/console/requests/{id}/{action}", post(requests::act))
        .route("/console/connect/{server}", get(connect::start))
        .route("/console/connect/{server}/disconnect", post(connect::disconnect))
        .route("/oauth/upstream/callback", get(connect::callback))
        .route("/console/inbox", get(requests::inbox))
        .route("/console/inbox/read", post(requests::read_all))
        .route("/console/servers", get(servers::page))
        .route("/console/servers/{name}/permissions", get(policies::permissions))
        .route("/console/servers/{name}/tools", get(tools::page))
        .route("/console/high-risk", post(servers::high_risk))
        .route("/console/high-risk/{server}/{action}", post(servers::high_risk))
        .route("/console/servers/{name}/credentials", get(servers::credentials_page).post(servers::rotate))
        .route("/console/servers/{name}/tools/{action}", post(tools::act))
        .route("/console/policies", get(policies::policies))
        .route("/console/rules", post(policies::save))
        .route("/console/rules/{id}", get(policies::edit))
        .route("/console/rules/{id}/delete", post(policies::delete))
        .route("/console/access", get(policies::access))
        .route("/console/access.csv", get(policies::access_csv))
        .route("/console/access/stale", get(policies::stale))
        .route("/console/settings", get(settings_page).post(change_settings))
        .route("/console/settings/email", post(mail::save))
        .route("/console/settings/email/test", post(mail::test))
        .route("/console/inbox/preferences", post(mail::preferences))
        .layer(middleware::from_fn_with_state(state, security_headers))
}

/// Headers on every console response: the CSP, no framing, no sniffing, no caching of pages
/// that may show secrets.
async fn security_headers(request: Request, next: Next) -> Response {
    secure_page(next.run(request).await)
}

/// Give a page the console's security headers.
pub fn secure_page(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it, browsers send `Origin: null` on the console's own form posts,
    // which the DNS-rebinding check rightly refuses.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The CSRF token for forms on a page, and a cookie to set when the browser has none.
pub fn csrf_for(state: &AppState, headers: &HeaderMap) -> (String, Option<String>) {
    csrf(state, headers)
}

/// Does a posted form carry the browser's CSRF token?
pub fn csrf_valid(state: &AppState, headers: &HeaderMap, token: &str) -> bool {
    csrf_ok(state, headers, token)
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")],
        include_str!("style.css"),
    )
        .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn html_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn with_cookies(mut response: Response, cookies: Vec<String>) -> Response {
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Is the console served over HTTPS (so cookies are `Secure` and carry a name prefix)?
fn https(state: &AppState) -> bool {
    state.config.public_url.as_deref().is_some_and(|url| url.starts_with("https://"))
}

/// A cookie's name on the wire. Over HTTPS, `__Host-` (for `Path=/`: the browser then accepts
/// it only from this exact host, over a secure connection) or `__Secure-` for narrower paths,
/// so neither a sibling domain nor a plain-http page can plant or overwrite it.
fn cookie_name(state: &AppState, name: &str, path: &str) -> String {
    match (https(state), path) {
        (false, _) => name.to_owned(),
        (true, "/") => format!("__Host-{name}"),
        (true, _) => format!("__Secure-{name}"),
    }
}

/// The value of cookie `name` (set at `path`) in the request.
fn cookie<'a>(state: &AppState, headers: &'a HeaderMap, name: &str, path: &str) -> Option<&'a str> {
    let name = cookie_name(state, name, path);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value; `Secure` (and a name prefix) when the console is served over HTTPS.
fn set_cookie(state: &AppState, name: &str, value: &str, path: &str, same_site: &str, max_age: u64) -> String {
    format!(
        "{}={value}; Path={path}; HttpOnly; SameSite={same_site}; Max-Age={max_age}{}",
        cookie_name(state, name, path),
        if https(state) { "; Secure" } else { "" }
    )
}

fn clear_cookie(state: &AppState, name: &str, path: &str) -> String {
    set_cookie(state, name, "", path, "Lax", 0)
}

/// The browser's CSRF token: (token for forms, a cookie to set when the browser has none).
fn csrf(state: &AppState, headers: &HeaderMap) -> (String, Option<String>) {
    match cookie(state, headers, CSRF_COOKIE, "/") {
        Some(nonce) => (state.keys.csrf_token(&csrf_binding(state, headers, nonce)), None),
        None => {
            let nonce = random_token(16);
            let token = state.keys.csrf_token(&csrf_binding(state, headers, &nonce));
            (token, Some(set_cookie(state, CSRF_COOKIE, &nonce, "/", "Strict", ABSOLUTE)))
        }
    }
}

fn csrf_ok(state: &AppState, headers: &HeaderMap, token: &str) -> bool {
    cookie(state, headers, CSRF_COOKIE, "/")
        .is_some_and(|nonce| state.keys.csrf_valid(&csrf_binding(state, headers, nonce), token))
}

/// What a CSRF token signs: the browser's nonce and, once signed in, the session (so a nonce
/// planted in the browser by someone else does not make a valid token for the person's forms).
fn csrf_binding(state: &AppState, headers: &HeaderMap, nonce: &str) -> String {
    let session = cookie(state, headers, SESSION_COOKIE, "/")
        .and_then(|value| state.keys.console.open_text(value, b"console-session").ok())
        .and_then(|bytes| serde_json::from_slice::<Session>(&bytes).ok());
    match session {
        Some(session) => format!("{nonce}|{}|{}", session.u, session.i),
        None => nonce.to_owned(),
    }
}

fn csrf_refusal() -> Response {
    let body = page(
        "This form expired",
        None,
        note("error", "The page was open too long or came from elsewhere. Go back, reload it and try again."),
    );
    html_response(StatusCode::FORBIDDEN, body)
}

/// What the session cookie holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    /// User id.
    u: String,
    /// The user's session epoch when it was issued.
    e: i64,
    /// Issued at (Unix seconds).
    i: u64,
    /// Last seen (Unix seconds).
    s: u64,
    /// The second factor is done (or not needed).
    m: bool,
    /// The identity provider proved a second factor at sign-in (single sign-on).
    #[serde(default)]
    p: bool,
}

fn session_cookie(state: &AppState, session: &Session) -> String {
    let sealed = state.keys.console.seal_text(&serde_json::to_vec(session).unwrap_or_default(), b"console-session");
    set_cookie(state, SESSION_COOKIE, &sealed, "/", "Lax", ABSOLUTE)
}

/// A signed-in person.
struct Signed {
    session: Session,
    account: Account,
    /// A refreshed session cookie to send back (sliding idle expiry).
    refreshed: Option<String>,
}

impl Signed {
    fn admin(&self) -> bool {
        !self.account.admin_roles.is_empty()
    }
}

/// The session of the request, if it is valid now: sealed by us, within its idle and absolute
/// lifetimes, its person active and its epoch current.
async fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<Option<Signed>, StoreError> {
    let Some(value) = cookie(state, headers, SESSION_COOKIE, "/") else { return Ok(None) };
    let Ok(bytes) = state.keys.console.open_text(value, b"console-session") else { return Ok(None) };
    let Ok(mut session) = serde_json::from_slice::<Session>(&bytes) else { return Ok(None) };
    let now = unix_now();
    if now.saturating_sub(session.s) > IDLE || now.saturating_sub(session.i) > ABSOLUTE {
        return Ok(None);
    }
    let mut connection = state.store.pool.acquire().await?;
    let Some(account) = store::accounts::by_id(&mut connection, &session.u).await? else { return Ok(None) };
    if account.status != Status::Active || account.session_epoch != session.e {
        return Ok(None);
    }
    let refreshed = (now.saturating_sub(session.s) > 60).then(|| {
        session.s = now;
        session_cookie(state, &session)
    });
    Ok(Some(Signed { session, account, refreshed }))
}

/// The account of a person fully signed in to the console (both steps), if any.
pub async fn signed_in_account(state: &AppState, headers: &HeaderMap) -> Result<Option<Account>, StoreError> {
    Ok(signed_in(state, headers).await?.filter(|signed| signed.session.m).map(|signed| signed.account))
}

/// Where to go after signing in: only an OAuth authorization request of this gateway (a
/// relative path), never anywhere else.
fn safe_next(next: Option<&str>) -> Option<&str> {
    next.filter(|next| {
        next.starts_with("/oauth/authorize?") && !next.contains('\\') && !next.chars().any(char::is_control)
    })
}

/// The signed-in person who completed sign-in, or the response that sends them where they
/// must go first (sign in, the second factor, or enrolment for admins).
async fn require(state: &AppState, headers: &HeaderMap) -> Result<Signed, Response> {
    let signed = signed_in(state, headers).await.map_err(|error| failure(&error))?;
    let Some(signed) = signed else { return Err(redirect("/login")) };
    if !signed.session.m {
        let to = if signed.account.totp_secret.is_some() { "/login/mfa" } else { "/console/mfa" };
        return Err(redirect(to));
    }
    // Made an admin (or the requirement turned on) after signing in with a password alone.
    if signed.account.totp_secret.is_none() && !signed.session.p && signed.admin() && admin_mfa_required(state).await {
        return Err(redirect("/console/mfa"));
    }
    Ok(signed)
}

fn failure(error: &StoreError) -> Response {
    tracing::error!(%error, "console request failed in the store");
    html_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        page("Something went wrong", None, note("error", "The store did not answer. Try again in a moment.")),
    )
}

/// Does this account need a second factor at sign-in? Everyone who enrolled does, and every
/// admin while the super admin requires it (the default).
fn needs_second_factor(account: &Account, required_for_admins: bool) -> bool {
    (required_for_admins && !account.admin_roles.is_empty()) || account.totp_secret.is_some()
}

/// A page for the signed-in person, with the cookies it must carry (a new CSRF cookie, a
/// refreshed session).
fn respond(signed: Signed, csrf_token: &str, set: Option<String>, title: &str, content: Html) -> Response {
    let viewer = viewer(&signed.account, csrf_token);
    let mut cookies: Vec<String> = set.into_iter().collect();
    cookies.extend(signed.refreshed);
    with_cookies(html_response(StatusCode::OK, page(title, Some(&viewer), content)), cookies)
}

/// The navigation's view of who is signed in.
pub fn viewer<'a>(account: &'a Account, csrf: &'a str) -> Viewer<'a> {
    Viewer {
        email: &account.email,
        admin: !account.admin_roles.is_empty(),
        auditor: account.admin_roles.iter().any(|role| role.can(crate::registry::Power::ReadAudit)),
        super_admin: account.admin_roles.contains(&AdminRole::SuperAdmin),
        csrf,
    }
}

/// Whether admins must use a second step; when the store cannot say, they must.
async fn admin_mfa_required(state: &AppState) -> bool {
    let required = async {
        let mut connection = state.store.pool.acquire().await?;
        store::settings::admin_mfa_required(&mut connection).await
    }
    .await;
    required.unwrap_or(true)
}

fn audit(state: &AppState, account: Option<&Account>, principal: &str, method: &str, allowed: bool, reason: &str) {
    let user_id = account.map(|account| account.user_id.as_str());
    state.audit.record(AuditEvent::action(principal, user_id, method, None, allowed, reason, &state.replica));
}

/// The failure counter of the second step, apart from the password's.
fn second_step_key(email: &str) -> String {
    format!("second-step:{email}")
}

/// Minutes to wait before `key` may try again, if it must.
fn locked_out(state: &AppState, key: &str) -> Option<u64> {
    state.sign_in_failures.blocked(key).map(|left| left.as_secs().div_ceil(60).max(1))
}

/// The network an address counts as for sign-in limits: the address itself for IPv4, its /64
/// for IPv6 (one machine easily holds a whole /64, so single IPv6 addresses would be free).
fn network_of(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let segments = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", segments[0], segments[1], segments[2], segments[3])
            }
        },
        v4 => v4.to_string(),
    }
}

/// The password failures of one email from one address. Five lock that pair only, so a
/// stranger's guesses cannot lock a person out from their own network; the email as a whole
/// takes fifty (`sign_in_accounts`), which stops guessing spread over many addresses.
fn password_key(email: &str, address: &str) -> String {
    format!("{email} from {address}")
}

fn login_form(state: &AppState, csrf: &str, email: &str, next: Option<&str>, message: Option<&str>) -> String {
    let mut content = Html::new();
    if let Some(message) = message {
        content.push(note("error", message));
    }
    if next.is_some() {
        content.push(note("hint", "An application asks to use Portcullis for you. Sign in to review its request."));
    }
    if let Some(sso) = &state.sso {
        let href = match next {
            Some(next) => format!("/auth/oidc/login?next={}", url_encode(next)),
            None => "/auth/oidc/login".to_owned(),
        };
        content.push(html::button_link(&href, &format!("Sign in with {}", sso.config.label)));
        content.push(note("hint", "Or, with a Portcullis password:"));
    }
    let hidden: Vec<(&str, &str)> = next.map(|next| ("next", next)).into_iter().collect();
    content.push(html::form_with(
        "/login",
        csrf,
        &hidden,
        &[
            Field { name: "email", label: "Email", kind: "email", value: email, autocomplete: "username" },
            Field {
                name: "password",
                label: "Password",
                kind: "password",
                value: "",
                autocomplete: "current-password",
            },
        ],
        "Sign in",
    ));
    page("Sign in", None, content)
}

#[derive(Deserialize, Default)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<NextQuery>) -> Response {
    let (token, set) = csrf(&state, &headers);
    let next = safe_next(query.next.as_deref());
    with_cookies(html_response(StatusCode::OK, login_form(&state, &token, "", next, None)), set.into_iter().collect())
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    email: String,
    password: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !csrf_ok(&state, &headers, &form.csrf) {
        return csrf_refusal();
    }
    let (token, _) = csrf(&state, &headers);
    let email = form.email.trim().to_lowercase();
    let next = safe_next(form.next.as_deref());
    // One address trying many emails is limited too (one email from one address allows only
    // five failures; the email from everywhere, fifty).
    let address = network_of(crate::edge::client_ip(peer, &headers, &state.config.trusted_proxies));
    let pair = password_key(&email, &address);
    if state.sign_in_addresses.blocked(&address).is_some() {
        audit(&state, None, &email, "console/login", false, "too many failed attempts from this address");
        let message = "Too many failed attempts from your network. Wait 15 minutes and try again.";
        return html_response(StatusCode::TOO_MANY_REQUESTS, login_form(&state, &token, &email, next, Some(message)));
    }
    // The per-email ceiling stops guessing spread over many addresses; it does not lock the
    // person out of a network they signed in from before.
    let account_minutes = state
        .sign_in_accounts
        .blocked(&email)
        .filter(|_| !state.sign_in_known.knows(&email, &address))
        .map(|left| left.as_secs().div_ceil(60).max(1));
    if let Some(minutes) = locked_out(&state, &pair).or(account_minutes) {
        audit(&state, None, &email, "console/login", false, "too many failed attempts");
        let message = format!("Too many failed attempts. Wait {minutes} minutes and try again.");
        return html_response(StatusCode::TOO_MANY_REQUESTS, login_form(&state, &token, &email, next, Some(&message)));
    }
    let account = match async {
        let mut connection = state.store.pool.acquire().await?;
        store::accounts::by_email(&mut connection, &email).await
    }
    .await
    {
        Ok(account) => account,
        Err(error) => return failure(&error),
    };
    // Verify against a decoy when there is no password, so timing says nothing.
    let stored = account.as_ref().and_then(|account| account.password_hash.clone());
    // Hashing is deliberately slow: off the async workers, so sign-ins never stall the data plane.
    let typed = form.password.clone();
    let against = stored.clone().unwrap_or_else(|| password::decoy().to_owned());
    let verified = tokio::task::spawn_blocking(move || password::verify(&typed, &against)).await.unwrap_or(false);
    let matches = verified && stored.is_some();
    let account = match account {
        Some(account) if matches && account.status == Status::Active => account,
        found => {
            state.sign_in_failures.hit(&pair);
            state.sign_in_accounts.hit(&email);
            state.sign_in_addresses.hit(&address);
            let reason = match &found {
                Some(account) if matches => format!("the account is {}", account.status.as_str()),
                _ => "wrong email or password".to_owned(),
            };
            audit(&state, found.as_ref(), &email, "console/login", false, &reason);
            let message = "The email or password is not right, or the account cannot sign in.";
            return html_response(StatusCode::UNAUTHORIZED, login_form(&state, &token, &email, next, Some(message)));
        }
    };

    let (complete, response) = begin_session(&state, &account, false, next).await;
    // Failures are forgiven only when sign-in is complete: a right password must not reset
    // the count of wrong codes that follow it.
    if complete {
        state.sign_in_failures.clear(&pair);
        state.sign_in_accounts.clear(&email);
        state.sign_in_known.remember(&email, &address);
    }
    response
}

/// Start a console session for `account` after its first step (a password, or the identity
/// provider). `second_done` when the provider proved a second factor. Returns whether sign-in
/// is complete, and the redirect: onwards, or to the second step or enrolment.
async fn begin_session(state: &AppState, account: &Account, second_done: bool, next: Option<&str>) -> (bool, Response) {
    let now = unix_now();
    let second = !second_done && needs_second_factor(account, admin_mfa_required(state).await);
    let session =
        Session { u: account.user_id.clone(), e: account.session_epoch, i: now, s: now, m: !second, p: second_done };
    if !second {
        finish_sign_in(state, account).await;
    }
    let to = match (second, account.totp_secret.is_some()) {
        (false, _) => next.unwrap_or("/console").to_owned(),
        (true, true) => match next {
            Some(next) => format!("/login/mfa?next={}", url_encode(next)),
            None => "/login/mfa".to_owned(),
        },
        (true, false) => "/console/mfa".to_owned(),
    };
    (!second, with_cookies(redirect(&to), vec![session_cookie(state, &session)]))
}

async fn finish_sign_in(state: &AppState, account: &Account) {
    if let Ok(mut connection) = state.store.pool.acquire().await
        && let Err(error) = store::accounts::record_login(&mut connection, &account.user_id).await
    {
        tracing::warn!(%error, "cannot record the sign-in time");
    }
    audit(state, Some(account), &account.email, "console/login", true, "signed in");
}

/// Percent-encode for a query value.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

async fn second_factor_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<NextQuery>,
) -> Response {
    let signed = match signed_in(&state, &headers).await {
        Ok(Some(signed)) if signed.account.totp_secret.is_some() => signed,
        Ok(_) => return redirect("/login"),
        Err(error) => return failure(&error),
    };
    let (token, set) = csrf(&state, &headers);
    let body = second_factor_form(&token, &signed.account.email, safe_next(query.next.as_deref()), None);
    with_cookies(html_response(StatusCode::OK, body), set.into_iter().collect())
}

fn second_factor_form(csrf: &str, email: &str, next: Option<&str>, message: Option<&str>) -> String {
    let mut content = Html::new();
    content.push(note("hint", &format!("Signing in as {email}.")));
    if let Some(message) = message {
        content.push(note("error", message));
    }
    content.push(note("hint", "Type the 6-digit code from your authenticator app, or one of your recovery codes."));
    let hidden: Vec<(&str, &str)> = next.map(|next| ("next", next)).into_iter().collect();
    content.push(html::form_with(
        "/login/mfa",
        csrf,
        &hidden,
        &[Field { name: "code", label: "Code", kind: "text", value: "", autocomplete: "one-time-code" }],
        "Continue",
    ));
    page("Two-step sign-in", None, content)
}

#[derive(Deserialize)]
struct CodeForm {
    #[serde(default)]
    csrf: String,
    code: String,
    next: Option<String>,
}

async fn second_factor(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<CodeForm>) -> Response {
    if !csrf_ok(&state, &headers, &form.csrf) {
        return csrf_refusal();
    }
    let signed = match signed_in(&state, &headers).await {
        Ok(Some(signed)) if signed.account.totp_secret.is_some() => signed,
        Ok(_) => return redirect("/login"),
        Err(error) => return failure(&error),
    };
    let account = &signed.account;
    if let Some(minutes) = locked_out(&state, &second_step_key(&account.email)) {
        let (token, _) = csrf(&state, &headers);
        let message = format!("Too many failed attempts. Wait {minutes} minutes and try again.");
        let body = second_factor_form(&token, &account.email, safe_next(form.next.as_deref()), Some(&message));
        return html_response(StatusCode::TOO_MANY_REQUESTS, body);
    }
    let accepted = match check_second_factor(&state, account, &form.code).await {
        Ok(accepted) => accepted,
        Err(error) => return failure(&error),
    };
    if !accepted {
        state.sign_in_failures.hit(&second_step_key(&account.email));
        audit(&state, Some(account), &account.email, "console/login.second-factor", false, "wrong or reused code");
        let (token, _) = csrf(&state, &headers);
        let message = "That code is not right (or was used already). Try the next one.";
        let body = second_factor_form(&token, &account.email, safe_next(form.next.as_deref()), Some(message));
        return html_response(StatusCode::UNAUTHORIZED, body);
    }
    state.sign_in_accounts.clear(&account.email.to_lowercase());
    state.sign_in_failures.clear(&second_step_key(&account.email));
    finish_sign_in(&state, account).await;
    let session = Session { m: true, s: unix_now(), ..signed.session };
    let to = safe_next(form.next.as_deref()).unwrap_or("/console");
    with_cookies(redirect(to), vec![session_cookie(&state, &session)])
}

/// A TOTP code (each good once) or an unused recovery code.
async fn check_second_factor(state: &AppState, account: &Account, typed: &str) -> Result<bool, StoreError> {
    let mut connection = state.store.pool.acquire().await?;
    let digits = typed.chars().filter(|character| !character.is_whitespace()).count() == totp::DIGITS as usize
        && typed.chars().filter(|character| !character.is_whitespace()).all(|character| character.is_ascii_digit());
    if !digits {
        return store::accounts::use_recovery_code(&mut connection, &account.user_id, &totp::recovery_hash(typed))
            .await;
    }
    let Some(secret) = account.totp_secret.as_deref().and_then(|sealed| open_secret(state, &account.user_id, sealed))
    else {
        return Ok(false);
    };
    let last = store::accounts::totp_last_step(&mut connection, &account.user_id).await?;
    match totp::verify(&secret, typed, unix_now(), last) {
        Some(step) => store::accounts::advance_totp_step(&mut connection, &account.user_id, step).await,
        None => Ok(false),
    }
}

fn open_secret(state: &AppState, user_id: &str, sealed: &str) -> Option<totp::Secret> {
    let context = format!("totp:{user_id}");
    state.keys.secrets.open_text(sealed, context.as_bytes()).ok().map(|bytes| totp::Secret::from_bytes(&bytes))
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if !csrf_ok(&state, &headers, &form.csrf) {
        return csrf_refusal();
    }
    if let Ok(Some(signed)) = signed_in(&state, &headers).await {
        audit(&state, Some(&signed.account), &signed.account.email, "console/logout", true, "signed out");
    }
    with_cookies(redirect("/login"), vec![clear_cookie(&state, SESSION_COOKIE, "/")])
}

async fn logout_everywhere(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if !csrf_ok(&state, &headers, &form.csrf) {
        return csrf_refusal();
    }
    let signed = match require(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let ended = async {
        let mut connection = state.store.pool.acquire().await?;
        store::accounts::bump_session_epoch(&mut connection, &signed.account.user_id).await
    }
    .await;
    if let Err(error) = ended {
        return failure(&error);
    }
    audit(
        &state,
        Some(&signed.account),
        &signed.account.email,
        "console/logout-everywhere",
        true,
        "every session ended",
    );
    with_cookies(redirect("/login"), vec![clear_cookie(&state, SESSION_COOKIE, "/")])
}

/// Create a one-time link that makes the first super admin, when no super admin can sign in
/// yet; `None` otherwise. The link works once, for 24 hours.
pub async fn first_run_link(store: &store::Store, base_url: &str) -> Result<Option<String>, StoreError> {
    let mut connection = store.pool.acquire().await?;
    if store::accounts::has_signing_in_super_admin(&mut connection).await? {
        return Ok(None);
    }
    let token = random_token(24);
    store::accounts::insert_setup_token(&mut connection, &sha256_hex(token.as_bytes()), now_ms() + SETUP_LIFETIME_MS)
        .await?;
    Ok(Some(format!("{}/setup?token={token}", base_url.trim_end_matches('/'))))
}

#[derive(Deserialize)]
struct SetupQuery {
    token: Option<String>,
}

fn setup_form(csrf: &str, token: &str, email: &str, name: &str, message: Option<&str>) -> String {
    let mut content = Html::new();
    content.push(note("hint", "Create the first super admin. You will set up two-step sign-in next."));
    if let Some(message) = message {
        content.push(note("error", message));
    }
    let action = format!("/setup?token={}", token);
    content.push(html::form(
        &action,
        csrf,
        &[
            Field { name: "email", label: "Email", kind: "email", value: email, autocomplete: "username" },
            Field { name: "name", label: "Name", kind: "text", value: name, autocomplete: "name" },
            Field {
                name: "password",
                label: "Password (12 characters or more)",
                kind: "password",
                value: "",
                autocomplete: "new-password",
            },
            Field {
                name: "confirm",
                label: "Password again",
                kind: "password",
                value: "",
                autocomplete: "new-password",
            },
        ],
        "Create the super admin",
    ));
    page("Set up Portcullis", None, content)
}

fn setup_refusal() -> Response {
    let message = "This setup link was used already or has expired. Restart `portcullis serve` for a new one \
                   (it prints one while no super admin can sign in).";
    html_response(StatusCode::FORBIDDEN, page("Set up Portcullis", None, note("error", message)))
}

async fn setup_page(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<SetupQuery>) -> Response {
    let token = query.token.unwrap_or_default();
    let valid = async {
        let mut connection = state.store.pool.acquire().await?;
        store::accounts::setup_token_valid(&mut connection, &sha256_hex(token.as_bytes())).await
    }
    .await;
    match valid {
        Ok(true) => {}
        Ok(false) => return setup_refusal(),
        Err(error) => return failure(&error),
    }
    let (csrf_token, set) = csrf(&state, &headers);
    with_cookies(
        html_response(StatusCode::OK, setup_form(&csrf_token, &token, "", "", None)),
        set.into_iter().collect(),
    )
}

#[derive(Deserialize)]
struct SetupForm {
    #[serde(default)]
    csrf: String,
    email: String,
    #[serde(default)]
    name: String,
    password: String,
    confirm: String,
}

async fn setup(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<SetupQuery>,
    Form(form): Form<SetupForm>,
) -> Response {
    if !csrf_ok(&state, &headers, &form.csrf) {
        return csrf_refusal();
    }
    let token = query.token.unwrap_or_default();
    let (csrf_token, _) = csrf(&state, &headers);
    let again = |message: &str| {
        html_response(StatusCode::BAD_REQUEST, setup_form(&csrf_token, &token, &form.email, &form.name, Some(message)))
    };
    let email = match Email::parse(&form.email) {
        Ok(email) => email,
        Err(error) => return again(&error.0),
    };
    if form.password != form.confirm {
        return again("The two passwords differ.");
    }
    if let Err(error) = password::check(&form.password, email.as_str()) {
        return again(&error.0);
    }
    // Check the link before spending a password hash on the request.
    let link_valid = async {
        let mut connection = state.store.pool.acquire().await?;
        store::accounts::setup_token_valid(&mut connection, &sha256_hex(token.as_bytes())).await
    }
    .await;
    match link_valid {
        Ok(true) => {}
        Ok(false) => return setup_refusal(),
        Err(error) => return failure(&error),
    }
    let typed = form.password.clone();
    let Ok(hash) = tokio::task::spawn_blocking(move || password::hash(&typed)).await else {
        return failure(&StoreError::Open("password hashing failed".into()));
    };
    let created = async {
        let mut transaction = state.store.begin_write().await?;
        if !store::accounts::use_setup_token(&mut transaction, &sha256_hex(token.as_bytes())).await? {
            return Ok(None);
        }
        let id = store::registry::upsert_user(&mut transaction, email.as_str(), form.name.trim(), false).await?;
        let (added, removed) =
            store::directory::set_admin_roles(&mut transaction, &id, &[AdminRole::SuperAdmin]).await?;
        let events = crate::audit::role_changes("setup", email.as_str(), &added, &removed, &state.replica);
        store::audit::insert(&mut transaction, &events).await?;
        store::accounts::set_password(&mut transaction, &id, &hash).await?;
        let account = store::accounts::by_id(&mut transaction, &id).await?;
        transaction.commit().await?;
        Ok::<_, StoreError>(account)
    }
    .await;
    let account = match created {
        Ok(Some(account)) => account,
        Ok(None) => return setup_refusal(),
        Err(error) => return failure(&error),
    };
    if let Err(error) = state.snapshot.reload(&state.store, &state.keys).await {
        tracing::warn!(%error, "snapshot reload after setup failed; the refresher will retry");
    }
    let now = unix_now();
    let session = Session { u: account.user_id.clone(), e: account.session_epoch, i: now, s: now, m: false, p: false };
    with_cookies(redirect("/console/mfa"), vec![session_cookie(&state, &session)])
}

/// An enrolment in progress: the secret waits in a sealed cookie until a code confirms it.
#[derive(Serialize, Deserialize)]
struct Enrolment {
    u: String,
    k: String,
}

async fn enrol_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = match signed_in(&state, &headers).await {
        Ok(Some(signed)) => signed,
        Ok(None) => return redirect("/login"),
        Err(error) => return failure(&error),
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let viewer = viewer(&signed.account, &csrf_token);
    if signed.account.totp_secret.is_some() {
        if !signed.session.m {
            return redirect("/login/mfa");
        }
        let left = async {
            let mut connection = state.store.pool.acquire().await?;
            store::accounts::recovery_codes_left(&mut connection, &signed.account.user_id).await
        }
        .await
        .unwrap_or(0);
        let content = note("ok", &format!("Two-step sign-in is on. {left} recovery codes are left."));
        return respond(signed, &csrf_token, set, "Two-step sign-in", content);
    }
    let secret = totp::Secret::generate();
    let enrolment = Enrolment { u: signed.account.user_id.clone(), k: secret.to_base32() };
    let sealed = state.keys.console.seal_text(&serde_json::to_vec(&enrolment).unwrap_or_default(), b"console-enrol");
    let mut cookies: Vec<String> = set.into_iter().collect();
    cookies.push(set_cookie(&state, ENROL_COOKIE, &sealed, "/console/mfa", "Strict", 600));
    let body = enrol_form(&state, &viewer, &secret, &signed.account.email, !signed.session.m, None);
    with_cookies(html_response(StatusCode::OK, body), cookies)
}

fn enrol_form(
    state: &AppState,
    viewer: &Viewer<'_>,
    secret: &totp::Secret,
    email: &str,
    required: bool,
    message: Option<&str>,
) -> String {
    let issuer = state.config.public_url.as_deref().map_or("Portcullis".to_owned(), |url| format!("Portcullis {url}"));
    let uri = secret.uri(&issuer, email);
    let mut content = Html::new();
    if required {
        content.push(note("hint", "Administrators sign in with a second step. Set it up now to continue."));
    }
    if let Some(message) = message {
        content.push(note("error", message));
    }
    content.push(note(
        "hint",
        "Scan this code with an authenticator app (or type the key below), then type the 6-digit code it shows.",
    ));
    if let Ok(code) = qrcode::QrCode::new(uri.as_bytes()) {
        let svg = code.render::<qrcode::render::svg::Color<'_>>().min_dimensions(200, 200).build();
        let svg = svg.split_once("?>").map_or(svg.as_str(), |(_, rest)| rest).to_owned();
        content.push(Html::raw("<figure class=\"qr\" aria-label=\"QR code for the authenticator app\">"));
        content.push(Html::trusted(svg));
        content.push(Html::raw("</figure>"));
    }
    content.push(Html::trusted(format!("<p>Key: <code>{}</code></p>", esc(&secret.to_base32()))));
    content.push(html::form(
        "/console/mfa",
        viewer.csrf,
        &[Field { name: "code", label: "Code from the app", kind: "text", value: "", autocomplete: "one-time-code" }],
        "Turn on two-step sign-in",
    ));
    page("Set up two-step sign-in", Some(viewer), content)
}

async fn enrol(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<CodeForm>) -> Response {
    if !csrf_ok(&state, &headers, &form.csrf) {
        return csrf_refusal();
    }
    let signed = match signed_in(&state, &headers).await {
        Ok(Some(signed)) if signed.account.totp_secret.is_none() => signed,
        Ok(Some(_)) => return redirect("/console/mfa"),
        Ok(None) => return redirect("/login"),
        Err(error) => return failure(&error),
    };
    let enrolment = cookie(&state, &headers, ENROL_COOKIE, "/console/mfa")
        .and_then(|value| state.keys.console.open_text(value, b"console-enrol").ok())
        .and_then(|bytes| serde_json::from_slice::<Enrolment>(&bytes).ok())
        .filter(|enrolment| enrolment.u == signed.account.user_id);
    let Some(secret) = enrolment.and_then(|enrolment| totp::Secret::from_base32(&enrolment.k)) else {
        return redirect("/console/mfa");
    };
    let (csrf_token, _) = csrf(&state, &headers);
    let viewer = viewer(&signed.account, &csrf_token);
    let Some(step) = totp::verify(&secret, &form.code, unix_now(), None) else {
        let body = enrol_form(
            &state,
            &viewer,
            &secret,
            &signed.account.email,
            !signed.session.m,
            Some("That code is not right. Check the app's clock and type the newest code."),
        );
        return html_response(StatusCode::BAD_REQUEST, body);
    };
    let codes = totp::recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|(_, hash)| hash.clone()).collect();
    let context = format!("totp:{}", signed.account.user_id);
    let sealed = state.keys.secrets.seal_text(secret.as_bytes(), context.as_bytes());
    let stored = async {
        let mut transaction = state.store.begin_write().await?;
        store::accounts::set_totp(&mut transaction, &signed.account.user_id, &sealed, step, &hashes).await?;
        let account = store::accounts::by_id(&mut transaction, &signed.account.user_id).await?;
        transaction.commit().await?;
        Ok::<_, StoreError>(account)
    }
    .await;
    // Every other session ended; this one continues under the new epoch.
    let epoch = match stored {
        Ok(Some(account)) => account.session_epoch,
        Ok(None) => return redirect("/login"),
        Err(error) => return failure(&error),
    };
    audit(
        &state,
        Some(&signed.account),
        &signed.account.email,
        "console/mfa.enrol",
        true,
        "two-step sign-in turned on",
    );
    if !signed.session.m {
        finish_sign_in(&state, &signed.account).await;
    }
    let mut content = Html::new();
    content.push(note("ok", "Two-step sign-in is on."));
    content.push(note(
        "hint",
        "These recovery codes let you in if you lose the app. Each works once. Keep them somewhere safe: they are shown only now.",
    ));
    let mut list = String::from("<ul class=\"codes\">");
    for (code, _) in &codes {
        list.push_str(&format!("<li><code>{}</code></li>", esc(code)));
    }
    list.push_str("</ul><p><a href=\"/console\">Continue to the console</a></p>");
    content.push(Html::trusted(list));
    let session = Session { m: true, s: unix_now(), e: epoch, ..signed.session };
    let body = page("Recovery codes", Some(&viewer), content);
    with_cookies(
        html_response(StatusCode::OK, body),
        vec![session_cookie(&state, &session), clear_cookie(&state, ENROL_COOKIE, "/console/mfa")],
    )
}

fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    crate::auth::oauth::base_url(&state.config, headers)
}

fn when(ms: Option<i64>) -> String {
    ms.map_or_else(|| "—".to_owned(), crate::scim::iso_time)
}

async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = match require(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let base = base_url(&state, &headers);
    let loaded = async {
        let mut connection = state.store.pool.acquire().await?;
        let keys = store::registry::list_api_keys(&mut connection).await?;
        let filter =
            store::audit::Filter { user_id: Some(signed.account.user_id.clone()), limit: 20, ..Default::default() };
        let events = store::audit::query(&mut connection, &filter).await?;
        Ok::<_, StoreError>((keys, events))
    }
    .await;
    let (keys, events) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return failure(&error),
    };
    let accounts = match connect::account_cells(&state, &signed.account.user_id, &csrf_token).await {
        Ok(accounts) => accounts,
        Err(error) => return failure(&error),
    };
    let mut content = Html::new();
    content.push(text("h2", "Your servers"));
    let servers = servers_of(&state, &signed.account.user_id);
    if servers.is_empty() {
        content.push(note("hint", "You cannot use any server yet. Ask an administrator for access."));
    } else {
        let rows: Vec<Vec<Html>> = servers
            .iter()
            .map(|(name, description)| {
                vec![
                    cell(name),
                    cell(description),
                    cell(&format!("{base}/mcp/{name}")),
                    accounts.get(name).cloned().unwrap_or_else(|| cell("shared credentials")),
                ]
            })
            .collect();
        content
            .push(rich_table(&["Server", "Description", "Address for your MCP client", "Your account there"], &rows));
        content.push(note("hint", &format!("Or use every server you may use through one address: {base}/mcp")));
        let config = serde_json::json!({"mcpServers": {"portcullis": {"type": "http", "url": format!("{base}/mcp"),
            "headers": {"Authorization": "Bearer <your API key>"}}}});
        content.push(text("h3", "Client configuration"));
        content.push(text("pre", &serde_json::to_string_pretty(&config).unwrap_or_default()));
    }
    content.push(text("h2", "Your API keys"));
    let mine: Vec<_> = keys.iter().filter(|key| key.user_id == signed.account.user_id).collect();
    if mine.is_empty() {
        content.push(note("hint", "You have no API keys."));
    } else {
        let mut rows = String::from(
            "<table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Starts with</th><th scope=\"col\">Created</th><th scope=\"col\">Last used</th><th scope=\"col\">State</th><th scope=\"col\"></th></tr></thead><tbody>",
        );
        for key in mine {
            let action = if key.revoked_at.is_none() {
                format!(
                    "<form method=\"post\" action=\"/console/api-keys/{}/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Revoke</button></form>",
                    esc(&key.id),
                    esc(&csrf_token)
                )
            } else {
                String::new()
            };
            rows.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
                esc(&key.name),
                esc(&key.prefix),
                esc(&when(Some(key.created_at))),
                esc(&when(key.last_used_at)),
                if key.revoked_at.is_some() { "revoked" } else { "active" },
            ));
        }
        rows.push_str("</tbody></table>");
        content.push(Html::trusted(rows));
    }
    content.push(html::form(
        "/console/api-keys",
        &csrf_token,
        &[Field { name: "name", label: "New key's name (e.g. laptop)", kind: "text", value: "", autocomplete: "off" }],
        "Create an API key",
    ));
    content.push(text("h2", "Your recent activity"));
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|event| {
            vec![
                when(Some(event.time_ms)),
                event.server.clone().unwrap_or_default(),
                event.method.clone(),
                event.target.clone().unwrap_or_default(),
                event.outcome.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        content.push(note("hint", "Nothing yet."));
    } else {
        content.push(table(&["Time (UTC)", "Server", "Request", "Tool or resource", "Outcome"], &rows));
    }
    content.push(Html::trusted(format!(
        "<form method=\"post\" action=\"/logout/everywhere\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out on every device</button></form>",
        esc(&csrf_token)
    )));
    respond(signed, &csrf_token, set, "My servers", content)
}

/// The servers the user may connect to now, with their descriptions, by name.
fn servers_of(state: &AppState, user_id: &str) -> Vec<(String, String)> {
    let Ok(snapshot) = state.snapshot.current() else { return Vec::new() };
    let Some(user) = snapshot.users.get(user_id) else { return Vec::new() };
    crate::access::servers_of(&snapshot, user)
        .into_iter()
        .filter_map(|name| snapshot.servers.get(name))
        .map(|entry| (entry.server.name.clone(), entry.server.description.clone()))
        .collect()
}

#[derive(Deserialize)]
struct KeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

async fn create_key(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<KeyForm>) -> Response {
    if !csrf_ok(&state, &headers, &form.csrf) {
        return csrf_refusal();
    }
    let signed = match require(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let (key, hash, prefix) = crate::auth::new_api_key();
    let created = async {
        let mut transaction = state.store.begin_write().await?;
        store::registry::insert_api_key(&mut transaction, &signed.account.user_id, form.name.trim(), &prefix, &hash)
            .await?;
        transaction.commit().await?;
        Ok::<_, StoreError>(())
    }
    .await;
    if let Err(error) = created {
        return failure(&error);
    }
    if let Err(error) = state.snapshot.reload(&state.store, &state.keys).await {
        tracing::warn!(%error, "snapshot reload after a new API key failed; the refresher will retry");
    }
    audit(&state, Some(&signed.account), &signed.account.email, "console/api-key.create", true, form.name.trim());
    let (csrf_token, _) = csrf(&state, &headers);
    let viewer = viewer(&signed.account, &csrf_token);
    let mut content = Html::new();
    content.push(note("hint", "Copy the key now: it is shown only once. Send it as \"Authorization: Bearer <key>\"."));
    content.push(Html::trusted(format!("<p><code class=\"secret\">{}</code></p>", esc(&key))));
    content.push(Html::raw("<p><a href=\"/console\">Back to my servers</a></p>"));
    html_response(StatusCode::OK, page("Your new API key", Some(&viewer), content))
}

async fn revoke_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&state, &headers, &form.csrf) {
        return csrf_refusal();
    }
    let signed = match require(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let revoked = async {
        let mut connection = state.store.pool.acquire().await?;
        let keys = store::registry::list_api_keys(&mut connection).await?;
        // Only one's own keys, here; admins use the API for others'.
        if !keys.iter().any(|key| key.id == id && key.user_id == signed.account.user_id && key.revoked_at.is_none()) {
            return Ok(false);
        }
        store::registry::revoke_api_key(&mut connection, &id).await?;
        Ok::<_, StoreError>(true)
    }
    .await;
    match revoked {
        Ok(true) => {
            if let Err(error) = state.snapshot.reload(&state.store, &state.keys).await {
                tracing::warn!(%error, "snapshot reload after a revocation failed; the refresher will retry");
            }
            audit(&state, Some(&signed.account), &signed.account.email, "console/api-key.revoke", true, &id);
            redirect("/console")
        }
        Ok(false) => html_response(
            StatusCode::NOT_FOUND,
            page("No such key", None, note("error", "You have no active API key with that id.")),
        ),
        Err(error) => failure(&error),
    }
}

#[derive(Deserialize, Default)]
struct UsersQuery {
    status: Option<String>,
    role: Option<String>,
    group: Option<String>,
}

/// Admins: everyone, filtered by status, role and group.
async fn users(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<UsersQuery>) -> Response {
    let signed = match require(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !signed.admin() {
        return html_response(
            StatusCode::FORBIDDEN,
            page("Users", None, note("error", "Only administrators see this page.")),
        );
    }
    let people = async {
        let mut connection = state.store.pool.acquire().await?;
        store::directory::list_people(&mut connection).await
    }
    .await;
    let people = match people {
        Ok(people) => people,
        Err(error) => return failure(&error),
    };
    let wanted =
        |value: &Option<String>| value.as_deref().map(str::trim).filter(|value| !value.is_empty()).map(str::to_owned);
    let (status, role, group) = (wanted(&query.status), wanted(&query.role), wanted(&query.group));
    let status_filter = status.as_deref().and_then(Status::parse);
    if status.is_some() && status_filter.is_none() {
        return html_response(StatusCode::BAD_REQUEST, page("Users", None, note("error", "Unknown status.")));
    }
    let rows: Vec<Vec<Html>> = people
        .iter()
        .filter(|person| person.matches(status_filter, role.as_deref(), group.as_deref()))
        .map(|person| {
            let roles: Vec<&str> =
                AdminRole::held(person.admin, &person.admin_roles).iter().map(|role| role.as_str()).collect();
            vec![
                cell(&person.name),
                link(&format!("/console/users/{}", url_encode(&person.email)), &person.email),
                cell(person.status.as_str()),
                cell(&roles.join(", ")),
                cell(&person.groups.iter().map(|(_, name)| name.as_str()).collect::<Vec<_>>().join(", ")),
                cell(&when(person.last_login_at)),
            ]
        })
        .collect();
    let (csrf_token, set) = csrf(&state, &headers);
    let mut content = Html::new();
    content.push(html::filters(
        "/console/users",
        &[
            html::Filter {
                name: "status",
                label: "Status",
                value: status.as_deref().unwrap_or(""),
                options: &["active", "inactive", "suspended"],
            },
            html::Filter { name: "role", label: "Role", value: role.as_deref().unwrap_or(""), options: &[] },
            html::Filter { name: "group", label: "Group", value: group.as_deref().unwrap_or(""), options: &[] },
        ],
    ));
    content.push(note("hint", &format!("{} people", rows.len())));
    content.push(rich_table(&["Name", "Email", "Status", "Admin roles", "Groups", "Last sign-in (UTC)"], &rows));
    respond(signed, &csrf_token, set, "Users", content)
}

/// The signed-in person posting a form (`BTreeMap` of its fields) that carries a valid CSRF
/// token, or the response that refuses it.
async fn require_form(
    state: &AppState,
    headers: &HeaderMap,
    form: &std::collections::BTreeMap<String, String>,
) -> Result<Signed, Response> {
    if !csrf_ok(state, headers, form.get("csrf").map(String::as_str).unwrap_or("")) {
        return Err(csrf_refusal());
    }
    require(state, headers).await
}

/// [`require_form`] for someone whose admin roles pass `allowed`; anyone else gets a 403 page
/// saying `refusal`.
async fn require_form_allowed(
    state: &AppState,
    headers: &HeaderMap,
    form: &std::collections::BTreeMap<String, String>,
    allowed: impl Fn(&[AdminRole]) -> bool,
    refusal: &str,
) -> Result<Signed, Response> {
    let signed = require_form(state, headers, form).await?;
    if !allowed(&signed.account.admin_roles) {
        return Err(html_response(StatusCode::FORBIDDEN, page("Not allowed", None, note("error", refusal))));
    }
    Ok(signed)
}

/// [`require_form`] for super admins (deployment settings).
async fn require_super_admin_form(
    state: &AppState,
    headers: &HeaderMap,
    form: &std::collections::BTreeMap<String, String>,
) -> Result<Signed, Response> {
    let super_admin = |roles: &[AdminRole]| roles.contains(&AdminRole::SuperAdmin);
    require_form_allowed(state, headers, form, super_admin, "Only super admins change settings.").await
}

/// Admin roles with `power`.
fn with_power(power: crate::registry::Power) -> impl Fn(&[AdminRole]) -> bool {
    move |roles| roles.iter().any(|role| role.can(power))
}

/// Settings are for super admins only.
fn super_admin_only() -> Response {
    html_response(StatusCode::FORBIDDEN, page("Settings", None, note("error", "Only super admins change settings.")))
}

/// A page saying why something was not done, with the way back.
fn not_done(
    state: &AppState,
    headers: &HeaderMap,
    signed: Signed,
    title: &str,
    problem: &str,
    back: (&str, &str),
) -> Response {
    let (csrf_token, set) = csrf(state, headers);
    let mut content = Html::new();
    content.push(note("error", problem));
    content.push(link(back.0, back.1));
    respond(signed, &csrf_token, set, title, content)
}

/// The admin viewing an admin page, or the response that turns others away.
async fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<Signed, Response> {
    let signed = require(state, headers).await?;
    if !signed.admin() {
        return Err(html_response(
            StatusCode::FORBIDDEN,
            page("Administrators only", None, note("error", "Only administrators see this page.")),
        ));
    }
    Ok(signed)
}

/// Admins: one person — who they are, their groups and roles, the servers they can use now,
/// their last sign-in and recent activity; suspend or reactivate them.
async fn user_detail(State(state): State<AppState>, headers: HeaderMap, Path(email): Path<String>) -> Response {
    let signed = match require_admin(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let loaded = async {
        let mut connection = state.store.pool.acquire().await?;
        let person = store::directory::list_people(&mut connection)
            .await?
            .into_iter()
            .find(|person| person.email.eq_ignore_ascii_case(&email));
        let events = match &person {
            Some(person) => {
                let filter = store::audit::Filter { user_id: Some(person.id.clone()), limit: 20, ..Default::default() };
                store::audit::query(&mut connection, &filter).await?
            }
            None => Vec::new(),
        };
        Ok::<_, StoreError>((person, events))
    }
    .await;
    let (person, events) = match loaded {
        Ok((Some(person), events)) => (person, events),
        Ok((None, _)) => {
            return html_response(
                StatusCode::NOT_FOUND,
                page("No such person", None, note("error", "Nobody has that email.")),
            );
        }
        Err(error) => return failure(&error),
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let roles: Vec<&str> =
        AdminRole::held(person.admin, &person.admin_roles).iter().map(|role| role.as_str()).collect();
    let servers: Vec<String> = servers_of(&state, &person.id).into_iter().map(|(name, _)| name).collect();
    let mut content = Html::new();
    content.push(facts(&[
        ("Email", person.email.clone()),
        ("Status", person.status.as_str().to_owned()),
        ("Department", person.department.clone()),
        ("Title", person.title.clone()),
        ("Team", person.team.clone()),
        ("Groups", person.groups.iter().map(|(_, name)| name.as_str()).collect::<Vec<_>>().join(", ")),
        ("Admin roles", roles.join(", ")),
        ("Roles", person.roles.join(", ")),
        ("Can use", if servers.is_empty() { "no server".to_owned() } else { servers.join(", ") }),
        ("Source", person.source.clone()),
        ("Last sign-in (UTC)", when(person.last_login_at)),
    ]));
    if signed.account.admin_roles.iter().any(|role| role.can(crate::registry::Power::SuspendPeople)) {
        let (value, label) =
            if person.status == Status::Suspended { ("active", "Reactivate") } else { ("suspended", "Suspend") };
        let action = format!("/console/users/{}/status", url_encode(&person.email));
        content.push(html::form_with(&action, &csrf_token, &[("status", value)], &[], label));
    }
    content.push(text("h2", "Recent activity"));
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|event| {
            vec![
                when(Some(event.time_ms)),
                event.server.clone().unwrap_or_default(),
                event.method.clone(),
                event.target.clone().unwrap_or_default(),
                event.decision.clone(),
                event.outcome.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        content.push(note("hint", "Nothing yet."));
    } else {
        content.push(table(&["Time (UTC)", "Server", "Request", "Tool or resource", "Decision", "Outcome"], &rows));
    }
    let title = if person.name.is_empty() { person.email.clone() } else { person.name.clone() };
    respond(signed, &csrf_token, set, &title, content)
}

#[derive(Deserialize)]
struct StatusForm {
    #[serde(default)]
    csrf: String,
    status: String,
}

/// Admins who may suspend people: suspend or reactivate someone.
async fn set_user_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(email): Path<String>,
    Form(form): Form<StatusForm>,
) -> Response {
    if !csrf_ok(&state, &headers, &form.csrf) {
        return csrf_refusal();
    }
    let signed = match require_admin(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !signed.account.admin_roles.iter().any(|role| role.can(crate::registry::Power::SuspendPeople)) {
        return html_response(
            StatusCode::FORBIDDEN,
            page("Not allowed", None, note("error", "Your admin roles do not let you suspend people.")),
        );
    }
    let status = match form.status.as_str() {
        "suspended" => Status::Suspended,
        "active" => Status::Active,
        _ => {
            return html_response(
                StatusCode::BAD_REQUEST,
                page("Not understood", None, note("error", "Unknown status.")),
            );
        }
    };
    let target = async {
        let mut connection = state.store.pool.acquire().await?;
        store::accounts::by_email(&mut connection, &email).await
    }
    .await;
    let target = match target {
        Ok(Some(target)) => target,
        Ok(None) => {
            return html_response(
                StatusCode::NOT_FOUND,
                page("Not done", None, note("error", "Nobody has that email.")),
            );
        }
        Err(error) => return failure(&error),
    };
    let allowed = crate::registry::may_change_status(
        &signed.account.admin_roles,
        &signed.account.user_id,
        &target.admin_roles,
        &target.user_id,
    );
    if let Err(refusal) = allowed {
        return html_response(StatusCode::FORBIDDEN, page("Not allowed", None, note("error", &refusal.0)));
    }
    if let Err(error) = crate::cli::set_user_status(&state.store, &email, status).await {
        return html_response(StatusCode::NOT_FOUND, page("Not done", None, note("error", &error.to_string())));
    }
    if let Err(error) = state.snapshot.reload(&state.store, &state.keys).await {
        tracing::warn!(%error, "snapshot reload after a status change failed; the refresher will retry");
    }
    audit(
        &state,
        Some(&signed.account),
        &signed.account.email,
        "console/user.status",
        true,
        &format!("{email}: {}", status.as_str()),
    );
    redirect(&format!("/console/users/{}", url_encode(&email)))
}

/// Admins: every group, where it comes from, and its members.
async fn groups(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = match require_admin(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let groups = async {
        let mut connection = state.store.pool.acquire().await?;
        store::directory::list_groups(&mut connection).await
    }
    .await;
    let groups = match groups {
        Ok(groups) => groups,
        Err(error) => return failure(&error),
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let rows: Vec<Vec<Html>> = groups
        .iter()
        .map(|group| {
            let members: Vec<String> = group.members.iter().map(|(_, email)| email.clone()).collect();
            vec![
                link(&format!("/console/users?group={}", url_encode(&group.name)), &group.name),
                cell(if group.source == "scim" { "identity provider" } else { "local" }),
                cell(&members.len().to_string()),
                cell(&members.join(", ")),
            ]
        })
        .collect();
    let mut content = Html::new();
    if rows.is_empty() {
        content.push(note(
            "hint",
            "No groups yet. Add them with apply or let your identity provider push them over SCIM.",
        ));
    } else {
        content.push(rich_table(&["Group", "From", "Members", "Who"], &rows));
    }
    respond(signed, &csrf_token, set, "Groups", content)
}

/// Super admins: deployment settings.
async fn settings_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = match require_admin(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !signed.account.admin_roles.contains(&AdminRole::SuperAdmin) {
        return super_admin_only();
    }
    let required = admin_mfa_required(&state).await;
    let (csrf_token, set) = csrf(&state, &headers);
    let mut content = Html::new();
    content.push(text("h2", "Two-step sign-in for administrators"));
    if required {
        content.push(note(
            "ok",
            "Required: every administrator signs in with a password and a code from an authenticator app.",
        ));
        content.push(note("hint", "Turning this off lets administrators sign in with a password alone. Keep it on unless your identity provider already enforces it."));
        content.push(html::form_with(
            "/console/settings",
            &csrf_token,
            &[("admin_mfa", "off")],
            &[],
            "Stop requiring it",
        ));
    } else {
        content.push(note(
            "error",
            "Not required: administrators without an authenticator app sign in with a password alone.",
        ));
        content.push(html::form_with("/console/settings", &csrf_token, &[("admin_mfa", "on")], &[], "Require it"));
    }
    content.push(text("h2", "Single sign-on"));
    match &state.sso {
        None => content.push(note(
            "hint",
            "Not set up: people sign in with Portcullis passwords. Add an [oidc] table to the config file to sign in through your identity provider.",
        )),
        Some(sso) => {
            let oidc = &sso.config;
            let yes_no = |flag: bool| if flag { "yes" } else { "no" }.to_owned();
            content.push(facts(&[
                ("Provider", oidc.label.clone()),
                ("Issuer", oidc.issuer.clone()),
                ("Client", oidc.client_id.clone()),
                ("Redirect URI to register", sso::redirect_uri(&state, &headers)),
                ("Scopes", oidc.scopes.join(" ")),
                ("Create people on first sign-in", yes_no(oidc.jit)),
                (
                    "Email domains",
                    if oidc.allowed_domains.is_empty() { "any".to_owned() } else { oidc.allowed_domains.join(", ") },
                ),
                ("Provider's MFA counts as the second step", yes_no(oidc.accept_idp_mfa)),
                ("Groups claim", oidc.claims.groups.clone()),
                ("Roles claim", oidc.claims.roles.clone()),
            ]))
        }
    };
    content.push(note("hint", "Single sign-on is set in the config file, so every replica signs in the same way."));
    match mail::section(&state, &csrf_token).await {
        Ok(section) => content.push(section),
        Err(error) => return failure(&error),
    };
    respond(signed, &csrf_token, set, "Settings", content)
}

#[derive(Deserialize)]
struct SettingsForm {
    #[serde(default)]
    csrf: String,
    admin_mfa: String,
}

async fn change_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SettingsForm>,
) -> Response {
    if !csrf_ok(&state, &headers, &form.csrf) {
        return csrf_refusal();
    }
    let signed = match require_admin(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !signed.account.admin_roles.contains(&AdminRole::SuperAdmin) {
        return super_admin_only();
    }
    let value = match form.admin_mfa.as_str() {
        "on" => "true",
        "off" => "false",
        _ => return html_response(StatusCode::BAD_REQUEST, page("Settings", None, note("error", "Unknown value."))),
    };
    let saved = async {
        let mut connection = state.store.pool.acquire().await?;
        store::settings::set(&mut connection, store::settings::ADMIN_MFA, value).await
    }
    .await;
    if let Err(error) = saved {
        return failure(&error);
    }
    audit(
        &state,
        Some(&signed.account),
        &signed.account.email,
        "settings/admin-mfa",
        true,
        &format!("admin two-step sign-in required: {value}"),
    );
    redirect("/console/settings")
}

#[cfg(test)]
mod tests {
    use super::network_of;

    #[test]
    fn sign_in_limits_count_ipv6_by_the_64() {
        assert_eq!(network_of("203.0.113.7".parse().unwrap()), "203.0.113.7");
        assert_eq!(network_of("::ffff:203.0.113.7".parse().unwrap()), "203.0.113.7");
        assert_eq!(network_of("2001:db8:1:2:aaaa::1".parse().unwrap()), "2001:db8:1:2::/64");
        assert_eq!(network_of("2001:db8:1:2:bbbb::9".parse().unwrap()), network_of("2001:db8:1:2::1".parse().unwrap()));
    }
}
