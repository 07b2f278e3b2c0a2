//! Server requests, their review, notifications and the high-risk list in the REST API. The
//! flows themselves are [`crate::lifecycle`]'s; this is their HTTP shape.
//!
//! - `GET|POST /requests`, `GET|PUT /requests/{id}`, `POST /requests/{id}/{submit|withdraw|resubmit}`
//! - `POST /requests/{id}/test`, `POST /requests/{id}/{approve|reject}`
//! - `GET|PUT /request-targets`
//! - `GET /notifications`, `POST /notifications/read`, `GET|PUT /notifications/preferences`
//! - mail: `GET|PUT /settings/email`, `POST /settings/email/test`
//! - `GET /high-risk`, `PUT|DELETE /high-risk/{server}`, `POST /high-risk/{server}/review`
//! - tool pinning: `GET /servers/{name}/pins`, `POST /servers/{name}/pins/{check|approve}`
//! - credential rotation: `POST /servers/{name}/credentials`

use super::{Admin, ApiError, ApiUser};
use crate::app::AppState;
use crate::lifecycle::{self, Approval, NewRequest, Rejection};
use crate::registry::Power;
use crate::requests::{Kind, State as RequestState, Targets, Tier};
use crate::store::requests::{Filter, Request};
use crate::store::{self, StoreError};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/requests", get(list).post(create))
        .route("/requests/metrics", get(metrics))
        .route("/requests/{id}", get(detail).put(edit))
        .route("/requests/{id}/submit", post(submit))
        .route("/requests/{id}/withdraw", post(withdraw))
        .route("/requests/{id}/resubmit", post(resubmit))
        .route("/requests/{id}/test", post(test))
        .route("/requests/{id}/approve", post(approve))
        .route("/requests/{id}/reject", post(reject))
        .route("/request-targets", get(get_targets).put(put_targets))
        .route("/notifications", get(notifications))
        .route("/notifications/read", post(read_notifications))
        .route("/notifications/preferences", get(get_preferences).put(put_preferences))
        .route("/settings/email", get(get_email).put(put_email))
        .route("/settings/email/test", post(test_email))
        .route("/high-risk", get(high_risk))
        .route("/high-risk/{server}", put(mark_high_risk).delete(unmark_high_risk))
        .route("/high-risk/{server}/review", post(review_high_risk))
        .route("/servers/{name}/pins", get(pins))
        .route("/servers/{name}/credentials", post(credentials))
        .route("/servers/{name}/pins/check", post(check_pins))
        .route("/servers/{name}/pins/approve", post(approve_pins))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    kind: Option<String>,
    tier: Option<String>,
    /// A requester's email (reviewers only).
    requester: Option<String>,
    /// Only the caller's own requests, even for a reviewer.
    mine: Option<bool>,
}

fn parsed<T>(
    value: Option<&str>,
    parse: fn(&str) -> Option<T>,
    what: &str,
    known: &[&str],
) -> Result<Option<T>, ApiError> {
    match value.map(str::trim).filter(|text| !text.is_empty()) {
        None => Ok(None),
        Some(text) => parse(text)
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown {what} {text:?}; use one of {}", known.join(", ")))),
    }
}

/// A request with its target time, as lists show it.
fn with_due(targets: &Targets, request: &Request, now: i64) -> Value {
    let mut value = json!(request);
    if let Some((due, overdue)) = lifecycle::due(targets, request, now) {
        value["due_at"] = json!(due);
        value["overdue"] = json!(overdue);
    }
    value["target"] = json!(lifecycle::target_text(targets, request.tier));
    value
}

/// `GET /requests`: the caller's requests; reviewers see everyone's (the inbox: pending first,
/// oldest first, with due times).
async fn list(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let states: Vec<&str> = RequestState::ALL.iter().map(|state| state.as_str()).collect();
    let tiers: Vec<&str> = Tier::ALL.iter().map(|tier| tier.as_str()).collect();
    let mut filter = Filter {
        state: parsed(query.state.as_deref(), RequestState::parse, "state", &states)?,
        kind: parsed(query.kind.as_deref(), Kind::parse, "kind", &["catalog", "custom", "access"])?,
        tier: parsed(query.tier.as_deref(), Tier::parse, "tier", &tiers)?,
        ..Filter::default()
    };
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    if query.mine.unwrap_or(false) || !lifecycle::may_review(&user) {
        if query.requester.is_some() && !lifecycle::may_review(&user) {
            return Err(ApiError::Forbidden("only reviewers filter by requester; you see your own requests".into()));
        }
        filter.requester_id = Some(user.id.clone());
    } else if let Some(email) = query.requester.as_deref().filter(|email| !email.trim().is_empty()) {
        let person = store::directory::person_by_email(&mut connection, email.trim()).await?;
        filter.requester_id = Some(person.map(|person| person.id).unwrap_or_else(|| "-".into()));
    }
    let requests = store::requests::list(&mut connection, &filter, 1000).await?;
    let targets = lifecycle::targets(&mut connection).await?;
    let now = store::now_ms();
    let requests: Vec<Value> = requests.iter().map(|request| with_due(&targets, request, now)).collect();
    Ok(Json(json!({ "requests": requests, "targets": targets.to_json() })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsQuery {
    days: Option<i64>,
}

/// `GET /requests/metrics?days=30`: the monthly review's numbers (reviewers).
async fn metrics(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Query(query): Query<MetricsQuery>,
) -> Result<Json<Value>, ApiError> {
    if !lifecycle::may_review(&user) {
        return Err(ApiError::Forbidden("request metrics are for admins".into()));
    }
    Ok(Json(json!(lifecycle::metrics(&state, query.days.unwrap_or(30)).await?)))
}

fn saved(saved: lifecycle::Saved) -> Json<Value> {
    Json(json!({ "request": saved.request, "warnings": saved.warnings }))
}

/// `POST /requests`: ask for a catalog server, a custom server or access to an active one.
async fn create(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Json(form): Json<NewRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    Ok((StatusCode::CREATED, saved(lifecycle::create(&state, &user, form).await?)))
}

/// `GET /requests/{id}`: the request; for reviewers also the requester, the automated checks
/// and the due time.
async fn detail(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let request = lifecycle::visible(&state, &user, &id).await?;
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let targets = lifecycle::targets(&mut connection).await?;
    drop(connection);
    let mut body = json!({ "request": with_due(&targets, &request, store::now_ms()) });
    if lifecycle::may_review(&user) {
        body["requester"] = json!(lifecycle::requester(&state, &request).await?);
        body["checks"] = json!(lifecycle::findings(&state, &request).await?);
    }
    Ok(Json(body))
}

async fn edit(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
    Json(form): Json<NewRequest>,
) -> Result<Json<Value>, ApiError> {
    Ok(saved(lifecycle::edit(&state, &user, &id, form).await?))
}

async fn submit(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "request": lifecycle::submit(&state, &user, &id).await? })))
}

async fn withdraw(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "request": lifecycle::withdraw(&state, &user, &id).await? })))
}

/// `POST /requests/{id}/resubmit`: a rejected request, changed, as a new linked request.
async fn resubmit(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
    Json(form): Json<NewRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    Ok((StatusCode::CREATED, saved(lifecycle::resubmit(&state, &user, &id, form).await?)))
}

/// `POST /requests/{id}/test`: start the connection test (202); poll the request for
/// `test_step` and then `test`.
async fn test(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    lifecycle::start_test(&state, &user, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "started": true, "poll": format!("/api/v1/requests/{id}") }))))
}

async fn approve(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
    Json(approval): Json<Approval>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "request": lifecycle::approve(&state, &user, &id, approval).await? })))
}

async fn reject(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
    Json(rejection): Json<Rejection>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "request": lifecycle::reject(&state, &user, &id, rejection).await? })))
}

async fn get_targets(State(state): State<AppState>, ApiUser(_user): ApiUser) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    Ok(Json(json!({ "targets": lifecycle::targets(&mut connection).await?.to_json() })))
}

/// `PUT /request-targets`: `{"catalog": "6h", "internal": "2d"}` (IT admins).
async fn put_targets(
    State(state): State<AppState>,
    admin: Admin,
    Json(changes): Json<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let actor = admin.require(Power::ManageServers)?.email.clone();
    let targets = set_targets(&state, &actor, &changes).await?;
    Ok(Json(json!({ "targets": targets.to_json() })))
}

/// Change review targets (`{"catalog": "6h"}`), audited with before and after.
pub async fn set_targets(
    state: &AppState,
    actor: &str,
    changes: &BTreeMap<String, String>,
) -> Result<Targets, ApiError> {
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    let mut targets = lifecycle::targets(&mut transaction).await?;
    let before = targets.to_json();
    targets.update(changes).map_err(|error| ApiError::BadRequest(error.0))?;
    store::settings::set(&mut transaction, Targets::SETTING, &targets.to_json().to_string()).await?;
    let reason = format!("{actor} changed the request review targets");
    let mut event =
        crate::audit::AuditEvent::action(actor, None, "settings/request-targets", None, true, &reason, &state.replica);
    event.detail = Some(json!({ "before": before, "after": targets.to_json() }).to_string());
    store::audit::insert(&mut transaction, &[event]).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    Ok(targets)
}

async fn notifications(State(state): State<AppState>, ApiUser(user): ApiUser) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let items = store::notifications::list(&mut connection, &user.id, 200).await?;
    let unread = store::notifications::unread(&mut connection, &user.id).await?;
    Ok(Json(json!({ "notifications": items, "unread": unread })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    /// One notification; absent: all.
    id: Option<String>,
}

async fn read_notifications(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Json(body): Json<ReadBody>,
) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let marked = store::notifications::mark_read(&mut connection, &user.id, body.id.as_deref()).await?;
    Ok(Json(json!({ "marked": marked })))
}

/// A quarterly review is due 91 days after the last one.
pub const REVIEW_EVERY_MS: i64 = 91 * 24 * 3_600_000;

async fn high_risk(State(state): State<AppState>, ApiUser(_user): ApiUser) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let now = store::now_ms();
    let list: Vec<Value> = store::requests::high_risk(&mut connection)
        .await?
        .into_iter()
        .map(|entry| {
            let due = entry.reviewed_at + REVIEW_EVERY_MS;
            let mut value = json!(entry);
            value["review_due_at"] = json!(due);
            value["review_overdue"] = json!(now > due);
            value
        })
        .collect();
    Ok(Json(json!({ "servers": list })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkBody {
    #[serde(default)]
    note: String,
}

/// A change to the high-risk list.
#[derive(Debug, Clone)]
pub enum HighRiskChange {
    /// Put the server on the list (or change its note).
    Mark(String),
    Unmark,
    /// Record the quarterly review.
    Review,
}

/// Change the high-risk list, audited in the same transaction.
pub async fn change_high_risk(
    state: &AppState,
    actor: &str,
    server: &str,
    change: HighRiskChange,
) -> Result<(), ApiError> {
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    let not_listed = || ApiError::NotFound(format!("{server:?} is not on the high-risk list"));
    let (method, reason) = match &change {
        HighRiskChange::Mark(note) => {
            let note = note.trim();
            if note.chars().count() < 10 {
                return Err(ApiError::BadRequest(
                    "say why the server is high-risk (a note of at least 10 characters), for the quarterly reviewers"
                        .into(),
                ));
            }
            if store::registry::get_server(&mut transaction, server).await?.is_none() {
                return Err(ApiError::NotFound(format!("no server is named {server:?}")));
            }
            store::requests::mark_high_risk(&mut transaction, server, note, actor).await?;
            ("server/high-risk", format!("{actor} put {server} on the high-risk list: {note}"))
        }
        HighRiskChange::Unmark => {
            if !store::requests::unmark_high_risk(&mut transaction, server).await? {
                return Err(not_listed());
            }
            ("server/low-risk", format!("{actor} took {server} off the high-risk list"))
        }
        HighRiskChange::Review => {
            if !store::requests::review_high_risk(&mut transaction, server).await? {
                return Err(not_listed());
            }
            ("server/high-risk-review", format!("{actor} reviewed the high-risk server {server}"))
        }
    };
    let event = crate::audit::AuditEvent::action(actor, None, method, Some(server), true, &reason, &state.replica);
    store::audit::insert(&mut transaction, &[event]).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    Ok(())
}

async fn mark_high_risk(
    State(state): State<AppState>,
    admin: Admin,
    Path(server): Path<String>,
    Json(body): Json<MarkBody>,
) -> Result<Json<Value>, ApiError> {
    let actor = admin.require(Power::ManageServers)?.email.clone();
    change_high_risk(&state, &actor, &server, HighRiskChange::Mark(body.note)).await?;
    Ok(Json(json!({ "server": server, "high_risk": true })))
}

async fn unmark_high_risk(
    State(state): State<AppState>,
    admin: Admin,
    Path(server): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = admin.require(Power::ManageServers)?.email.clone();
    change_high_risk(&state, &actor, &server, HighRiskChange::Unmark).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn review_high_risk(
    State(state): State<AppState>,
    admin: Admin,
    Path(server): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let actor = admin.require(Power::ManageServers)?.email.clone();
    change_high_risk(&state, &actor, &server, HighRiskChange::Review).await?;
    Ok(Json(json!({ "server": server, "reviewed": true })))
}

/// `GET /servers/{name}/pins`: the server's pinned definitions and what is held for review.
async fn pins(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(server): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !lifecycle::may_review(&user) {
        return Err(ApiError::Forbidden("only admins see pinned definitions".into()));
    }
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    if store::registry::get_server(&mut connection, &server).await?.is_none() {
        return Err(ApiError::NotFound(format!("no server is named {server:?}")));
    }
    let pinned = store::pins::pinned_servers(&mut connection).await?.into_iter().find(|(name, _, _)| *name == server);
    let pins = store::pins::list(&mut connection, Some(&server)).await?;
    let held = pins.iter().filter(|pin| pin.pending_hash.is_some()).count();
    Ok(Json(json!({
        "server": server,
        "pinned": pinned.as_ref().map(|(_, at, by)| json!({"at": at, "by": by})),
        "held": held,
        "pins": pins,
    })))
}

/// `POST /servers/{name}/pins/check`: read the server now and compare with its pins (IT admins).
async fn check_pins(
    State(state): State<AppState>,
    admin: Admin,
    Path(server): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Power::ManageServers)?;
    let report = crate::pinning::check(&state, &server, "checked by an admin").await?;
    Ok(Json(json!({ "report": report })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// Only these names (default: everything held).
    names: Option<Vec<String>>,
}

/// `POST /servers/{name}/pins/approve`: approve held definitions (IT admins; audited).
async fn approve_pins(
    State(state): State<AppState>,
    admin: Admin,
    Path(server): Path<String>,
    Json(body): Json<ApproveBody>,
) -> Result<Json<Value>, ApiError> {
    let user = admin.require(Power::ManageServers)?;
    let approved = crate::pinning::approve_held(&state, &server, body.names.as_deref(), &user.email, &user.id).await?;
    Ok(Json(json!({ "approved": approved })))
}

/// `GET /settings/email`: the mail server, without its password (super admin).
async fn get_email(State(state): State<AppState>, admin: Admin) -> Result<Json<Value>, ApiError> {
    admin.require(Power::ManageAdmins)?;
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let settings = crate::notify::settings(&mut connection).await?;
    let outbox = crate::notify::outbox(&mut connection, 20).await?;
    Ok(Json(json!({ "smtp": settings.map(|settings| settings.shown()), "outbox": outbox })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailBody {
    pub host: String,
    pub port: u16,
    /// `starttls` (default), `tls` or `none`.
    #[serde(default)]
    pub security: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Write-only; absent keeps the one stored, "" removes it.
    #[serde(default)]
    pub password: Option<String>,
    pub from: String,
}

/// Check and store mail settings from a form or the API, audited; returns what is shown.
pub async fn save_email(state: &AppState, actor: &str, body: EmailBody) -> Result<Value, ApiError> {
    let security = match body.security.as_deref().map(str::trim).filter(|text| !text.is_empty()) {
        None => crate::notify::Security::StartTls,
        Some(text) => crate::notify::Security::parse(text)
            .ok_or_else(|| ApiError::BadRequest(format!("security {text:?} is not one of starttls, tls, none")))?,
    };
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    let before = crate::notify::settings(&mut transaction).await?;
    let sealed_password = match body.password.as_deref() {
        None => before.as_ref().and_then(|before| before.sealed_password.clone()),
        Some("") => None,
        Some(password) => Some(crate::notify::seal_password(&state.keys, password)),
    };
    let settings = crate::notify::MailSettings {
        host: body.host.trim().to_owned(),
        port: body.port,
        security,
        username: body.username.map(|name| name.trim().to_owned()).filter(|name| !name.is_empty()),
        sealed_password,
        from: body.from.trim().to_owned(),
    };
    settings.check().map_err(ApiError::BadRequest)?;
    crate::notify::save_settings(&mut transaction, &settings).await?;
    let reason = format!("{actor} changed the mail server to {}:{}", settings.host, settings.port);
    let mut event =
        crate::audit::AuditEvent::action(actor, None, "settings/email", None, true, &reason, &state.replica);
    event.detail = Some(json!({"before": before.map(|before| before.shown()), "after": settings.shown()}).to_string());
    store::audit::insert(&mut transaction, &[event]).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    Ok(settings.shown())
}

async fn put_email(
    State(state): State<AppState>,
    admin: Admin,
    Json(body): Json<EmailBody>,
) -> Result<Json<Value>, ApiError> {
    let actor = admin.require(Power::ManageAdmins)?.email.clone();
    Ok(Json(json!({ "smtp": save_email(&state, &actor, body).await? })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestMailBody {
    to: String,
}

/// `POST /settings/email/test`: send a test message now; the mail server's refusal is the
/// answer when it refuses.
async fn test_email(
    State(state): State<AppState>,
    admin: Admin,
    Json(body): Json<TestMailBody>,
) -> Result<Json<Value>, ApiError> {
    let actor = admin.require(Power::ManageAdmins)?.email.clone();
    let text = format!("This is a test message from Portcullis, sent by {actor}. Mail notifications work.");
    match crate::notify::send_now(&state, &body.to, "Portcullis test message", &text).await {
        Ok(()) => Ok(Json(json!({ "sent": true }))),
        Err(error) => Err(ApiError::BadRequest(format!("the test message was not sent: {error}"))),
    }
}

async fn get_preferences(State(state): State<AppState>, ApiUser(user): ApiUser) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let alerts = crate::notify::alerts_on(&mut connection, &user.id).await?;
    Ok(Json(json!({ "email_alerts": alerts })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferencesBody {
    /// Email me new requests and held tool changes (admins who review).
    email_alerts: bool,
}

async fn put_preferences(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Json(body): Json<PreferencesBody>,
) -> Result<Json<Value>, ApiError> {
    if body.email_alerts && !user.can(Power::ManageServers) {
        return Err(ApiError::Forbidden("email alerts are for the IT admins who review requests".into()));
    }
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let value = if body.email_alerts { "true" } else { "false" };
    store::settings::set(&mut connection, &crate::notify::alerts_key(&user.id), value).await?;
    Ok(Json(json!({ "email_alerts": body.email_alerts })))
}

/// A credential change: new values replace, `null` removes, names not given stay as they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsBody {
    #[serde(default)]
    pub env: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    /// The pre-registered OAuth client's secret (`null` removes it).
    #[serde(default, deserialize_with = "present")]
    pub oauth_client_secret: Option<Option<String>>,
}

/// A field that was given, even as `null` (absent stays `None`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(deserializer)?))
}

/// Rotate a server's credentials in place, audited with the names changed (never the values).
/// HTTP upstreams use the new values from the next request; stdio processes already running
/// keep theirs until they end, new sessions start with the new ones.
pub async fn rotate_credentials(
    state: &AppState,
    actor: &str,
    server: &str,
    body: CredentialsBody,
) -> Result<Vec<String>, ApiError> {
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    let existing = store::registry::get_server(&mut transaction, server)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no server is named {server:?}")))?;
    let mut secrets: crate::registry::ServerSecrets = state
        .keys
        .secrets
        .open(&existing.sealed_secrets, existing.id.as_bytes())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| ApiError::Internal(StoreError::Open("the server's credentials cannot be opened".into())))?;
    let mut changed = Vec::new();
    for (name, value) in body.env {
        changed.push(format!("env {name}"));
        match value {
            Some(value) => secrets.env.insert(name, value),
            None => secrets.env.remove(&name),
        };
    }
    for (name, value) in body.headers {
        changed.push(format!("header {name}"));
        match value {
            Some(value) => secrets.headers.insert(name, value),
            None => secrets.headers.remove(&name),
        };
    }
    if let Some(secret) = body.oauth_client_secret {
        changed.push("oauth client secret".into());
        secrets.oauth_client_secret = secret.filter(|secret| !secret.is_empty());
    }
    if changed.is_empty() {
        return Err(ApiError::BadRequest(
            "name at least one credential to change (env, headers or oauth_client_secret)".into(),
        ));
    }
    let spec = crate::registry::ServerSpec {
        name: crate::registry::ServerSlug::parse(&existing.name).map_err(|error| ApiError::BadRequest(error.0))?,
        description: existing.description.clone(),
        transport: existing.transport,
        url: existing.url.clone(),
        command: existing.command.clone(),
        args: existing.args.clone(),
        env: secrets.env,
        headers: secrets.headers,
        public: existing.public,
        shared_process: existing.shared_process,
        oauth: existing.oauth.clone(),
        oauth_client_secret: secrets.oauth_client_secret,
    };
    spec.validate().map_err(|error| ApiError::BadRequest(error.0))?;
    crate::apply::put_server(&mut transaction, &state.keys, &spec).await?;
    let reason = format!("{actor} rotated credentials of {server}: {}", changed.join(", "));
    let mut event = crate::audit::AuditEvent::action(
        actor,
        None,
        "server/credentials",
        Some(server),
        true,
        &reason,
        &state.replica,
    );
    event.server = Some(server.to_owned());
    store::audit::insert(&mut transaction, &[event]).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    if let Err(error) = state.snapshot.reload(&state.store, &state.keys).await {
        tracing::warn!(%error, "snapshot reload after a credential rotation failed; the refresher will retry");
    }
    Ok(changed)
}

/// `POST /servers/{name}/credentials` (IT admins).
async fn credentials(
    State(state): State<AppState>,
    admin: Admin,
    Path(server): Path<String>,
    Json(body): Json<CredentialsBody>,
) -> Result<Json<Value>, ApiError> {
    let actor = admin.require(Power::ManageServers)?.email.clone();
    let changed = rotate_credentials(&state, &actor, &server, body).await?;
    Ok(Json(json!({ "server": server, "changed": changed })))
}
