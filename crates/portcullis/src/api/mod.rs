//! The JSON REST API under `/api/v1`, for scripts and the console.
//!
//! Authorization by construction: handlers that change the registry take an [`Admin`], which
//! only the extractor can make, after checking the caller's API key belongs to an admin.
//! Errors have one mapping, [`ApiError`] → `{"error": code, "message": text}`.
//!
//! - servers: `GET /servers`, `GET|PUT|DELETE /servers/{name}`
//! - users and groups: `GET /users`, `PUT|DELETE /users/{email}`, `GET /groups`
//! - grants: `GET|POST /grants`, `DELETE /grants/{id}`
//! - API keys: `GET|POST /api-keys`, `DELETE /api-keys/{id}`
//! - audit: `GET /audit`
//! - server requests, notifications and the high-risk list: see [`requests`]
//! - `GET /openapi.json`

mod openapi;
pub mod requests;

use crate::access;
use crate::app::AppState;
use crate::apply::put_server;
use crate::auth::{self, Caller};
use crate::registry::{
    AdminRole, Email, Grantee, Person, Power, ServerSlug, ServerSpec, Status, Transport, parse_group_name,
};
use crate::snapshot::UserEntry;
use crate::store::{self, StoreError};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/servers", get(list_servers))
        .route("/servers/{name}", get(get_server).put(put_server_handler).delete(delete_server))
        .route("/users", get(list_users))
        .route("/users/{email}", get(get_user).put(put_user).delete(delete_user))
        .route("/users/{email}/suspend", axum::routing::post(suspend_user))
        .route("/users/{email}/activate", axum::routing::post(activate_user))
        .route("/groups", get(list_groups))
        .route("/grants", get(list_grants).post(add_grant))
        .route("/grants/{id}", delete(delete_grant))
        .route("/rules", get(list_rules).post(create_rule))
        .route("/rules/simulate", axum::routing::post(simulate_rule))
        .route("/access", get(effective_access))
        .route("/catalog", get(list_catalog))
        .route("/catalog/import", axum::routing::post(import_catalog_entry))
        .route("/catalog/{name}", get(get_catalog_entry).put(put_catalog_entry))
        .route("/catalog/{name}/retire", axum::routing::post(retire_catalog_entry))
        .route("/access/stale", get(stale_access))
        .route("/rules/{id}", get(get_rule).put(update_rule).delete(delete_rule))
        .route("/api-keys", get(list_api_keys).post(create_api_key))
        .route("/api-keys/{id}", delete(revoke_api_key))
        .route("/settings", get(get_settings).put(put_settings))
        .route("/scim-tokens", get(list_scim_tokens).post(create_scim_token))
        .route("/scim-tokens/{id}", delete(revoke_scim_token))
        .route("/audit", get(audit))
        .route("/openapi.json", get(openapi::document))
        .merge(requests::router())
}

/// An API failure. Client errors explain themselves; internal ones are logged whole and
/// reported opaquely.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the store failed")]
    Internal(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Internal(StoreError::NotFound(text)) => {
                return (StatusCode::NOT_FOUND, Json(json!({"error": "not_found", "message": text}))).into_response();
            }
            ApiError::Internal(StoreError::Conflict(text)) => {
                return (StatusCode::CONFLICT, Json(json!({"error": "conflict", "message": text}))).into_response();
            }
            ApiError::Internal(error) => {
                tracing::error!(%error, "API request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let mut response = (status, Json(json!({"error": code, "message": self.to_string()}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A signed-in user of the API.
pub struct ApiUser(pub Arc<UserEntry>);

/// A signed-in holder of at least one admin role. Only the extractor constructs it; each
/// handler then asks for the power it needs with [`Admin::require`].
pub struct Admin(Arc<UserEntry>);

impl Admin {
    /// Refuse unless one of the admin's roles grants `power`.
    pub fn require(&self, power: Power) -> Result<&UserEntry, ApiError> {
        if self.0.can(power) {
            return Ok(&self.0);
        }
        let roles: Vec<&str> = AdminRole::ALL.iter().filter(|role| role.can(power)).map(|role| role.as_str()).collect();
        Err(ApiError::Forbidden(format!("{} needs one of the admin roles {} for this", self.0.email, roles.join(", "))))
    }
}

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let snapshot = state
            .snapshot
            .current()
            .map_err(|_| ApiError::Internal(StoreError::Open("the policy snapshot is stale".into())))?;
        match auth::authenticate(&snapshot, &parts.headers, None, &state.key_use) {
            Ok(Caller::User { user, .. }) => Ok(ApiUser(user)),
            Ok(Caller::Anonymous) => {
                Err(ApiError::Unauthorized("send an API key as \"Authorization: Bearer <key>\"".into()))
            }
            Err(error) => Err(ApiError::Unauthorized(error.to_string())),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let ApiUser(user) = ApiUser::from_request_parts(parts, state).await?;
        if user.admin_roles.is_empty() {
            return Err(ApiError::Forbidden(format!("{} is not an administrator", user.email)));
        }
        Ok(Admin(user))
    }
}

async fn reload(state: &AppState) {
    if let Err(error) = state.snapshot.reload(&state.store, &state.keys).await {
        tracing::warn!(%error, "snapshot reload after an API change failed; the refresher will retry");
    }
}

async fn list_servers(State(state): State<AppState>, ApiUser(user): ApiUser) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let servers = store::registry::list_servers(&mut connection).await?;
    let snapshot =
        state.snapshot.current().map_err(|_| ApiError::Internal(StoreError::Open("stale snapshot".into())))?;
    let usable = access::servers_of(&snapshot, &user);
    let visible: Vec<_> =
        servers.into_iter().filter(|server| user.admin || usable.contains(&server.name.as_str())).collect();
    Ok(Json(json!({ "servers": visible })))
}

async fn get_server(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Power::ManageServers)?;
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let server = store::registry::get_server(&mut connection, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no server named {name:?}")))?;
    Ok(Json(json!(server)))
}

/// The body of `PUT /servers/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerBody {
    #[serde(default)]
    description: String,
    transport: String,
    url: Option<String>,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    shared_process: bool,
    /// Per-user OAuth: `{"scopes": [...], "client_id", "client_secret" (write-only), "internal"}`.
    #[serde(default)]
    oauth: Option<crate::apply::OAuthDocument>,
}

async fn put_server_handler(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Json(body): Json<ServerBody>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Power::ManageServers)?;
    let spec = ServerSpec {
        name: ServerSlug::parse(&name).map_err(|error| ApiError::BadRequest(error.0))?,
        description: body.description,
        transport: Transport::parse(&body.transport).map_err(|error| ApiError::BadRequest(error.0))?,
        url: body.url,
        command: body.command,
        args: body.args,
        env: body.env,
        headers: body.headers,
        public: body.public,
        shared_process: body.shared_process,
        oauth: body.oauth.as_ref().map(|oauth| crate::registry::OAuthUpstream {
            scopes: oauth.scopes.clone(),
            client_id: oauth.client_id.clone(),
            internal: oauth.internal,
        }),
        oauth_client_secret: body.oauth.and_then(|oauth| oauth.client_secret),
    };
    spec.validate().map_err(|error| ApiError::BadRequest(error.0))?;
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    let change = put_server(&mut transaction, &state.keys, &spec).await?;
    let server = store::registry::get_server(&mut transaction, &name).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    reload(&state).await;
    Ok(Json(json!({ "changed": change.is_some(), "server": server })))
}

async fn delete_server(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin.require(Power::ManageServers)?;
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    store::registry::delete_server(&mut connection, &name).await?;
    drop(connection);
    reload(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Filters of `GET /users`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserQuery {
    /// `active`, `inactive` or `suspended`.
    status: Option<String>,
    /// An admin role (`it-admin`, …) or a job-function role from the identity provider.
    role: Option<String>,
    /// A group name (case-insensitive).
    group: Option<String>,
}

async fn list_users(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<UserQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = match query.status.as_deref() {
        Some(text) => Some(Status::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!("unknown status {text:?}; use active, inactive or suspended"))
        })?),
        None => None,
    };
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let people = store::directory::list_people(&mut connection).await?;
    let users: Vec<Value> = people
        .iter()
        .filter(|person| person.matches(status, query.role.as_deref(), query.group.as_deref()))
        .map(person_json)
        .collect();
    Ok(Json(json!({ "users": users })))
}

/// A person as the API shows them.
fn person_json(person: &Person) -> Value {
    let admin_roles: Vec<&str> =
        AdminRole::held(person.admin, &person.admin_roles).iter().map(|role| role.as_str()).collect();
    json!({
        "id": person.id, "email": person.email, "user_name": person.user_name, "name": person.name,
        "status": person.status, "department": person.department, "title": person.title, "team": person.team,
        "admin": person.admin, "admin_roles": admin_roles, "roles": person.roles, "attributes": person.attributes,
        "groups": person.groups.iter().map(|(_, name)| name).collect::<Vec<_>>(), "source": person.source,
        "external_id": person.external_id, "created_at": person.created_at, "updated_at": person.updated_at,
        "last_login_at": person.last_login_at,
    })
}

/// `GET /users/{email}`: one person with their groups, roles, the servers they can use and
/// their recent activity (any admin role).
async fn get_user(
    State(state): State<AppState>,
    _admin: Admin,
    Path(email): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let email = Email::parse(&email).map_err(|error| ApiError::BadRequest(error.0))?;
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let person = store::directory::list_people(&mut connection)
        .await?
        .into_iter()
        .find(|person| person.email == email.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("no user with email {email}")))?;
    let snapshot =
        state.snapshot.current().map_err(|_| ApiError::Internal(StoreError::Open("stale snapshot".into())))?;
    // What the data plane would decide now (a suspended person can use nothing).
    let servers: Vec<&str> =
        snapshot.users.get(&person.id).map(|entry| access::servers_of(&snapshot, entry)).unwrap_or_default();
    let filter = store::audit::Filter { user_id: Some(person.id.clone()), limit: 20, ..Default::default() };
    let recent = store::audit::query(&mut connection, &filter).await?;
    let mut body = person_json(&person);
    body["servers"] = json!(servers);
    body["recent_activity"] = json!(recent);
    Ok(Json(json!({ "user": body })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    #[serde(default)]
    name: String,
    /// Super admin; the same as listing `super-admin` in `roles`.
    #[serde(default)]
    admin: bool,
    /// Admin roles. Changing them (or `admin`) needs a super admin.
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

async fn put_user(
    State(state): State<AppState>,
    admin: Admin,
    Path(email): Path<String>,
    Json(body): Json<UserBody>,
) -> Result<Json<Value>, ApiError> {
    let actor = admin.require(Power::ManagePeople)?.email.clone();
    let email = Email::parse(&email).map_err(|error| ApiError::BadRequest(error.0))?;
    let groups: Vec<String> = body
        .groups
        .iter()
        .map(|group| parse_group_name(group))
        .collect::<Result<_, _>>()
        .map_err(|error| ApiError::BadRequest(error.0))?;
    let mut roles: Vec<AdminRole> = body
        .roles
        .iter()
        .map(|role| AdminRole::parse(role))
        .collect::<Result<_, _>>()
        .map_err(|error| ApiError::BadRequest(error.0))?;
    if body.admin {
        roles.push(AdminRole::SuperAdmin);
    }
    roles.sort();
    roles.dedup();
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    let current = store::registry::find_user(&mut transaction, email.as_str()).await?;
    let current_roles = current.as_ref().map(|user| user.admin_roles.clone()).unwrap_or_default();
    if current_roles != roles {
        admin.require(Power::ManageAdmins)?;
    }
    let super_admin = current.as_ref().is_some_and(|user| user.admin);
    let id = store::registry::upsert_user(&mut transaction, email.as_str(), &body.name, super_admin).await?;
    let mut group_ids = Vec::new();
    for group in &groups {
        group_ids.push(store::registry::ensure_group(&mut transaction, group).await?);
    }
    store::registry::set_memberships(&mut transaction, &id, &group_ids).await?;
    let (added, removed) = store::directory::set_admin_roles(&mut transaction, &id, &roles).await?;
    let events = crate::audit::role_changes(&actor, email.as_str(), &added, &removed, &state.replica);
    store::audit::insert(&mut transaction, &events).await?;
    let user = store::registry::find_user(&mut transaction, email.as_str()).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    reload(&state).await;
    Ok(Json(json!({ "user": user })))
}

async fn delete_user(
    State(state): State<AppState>,
    admin: Admin,
    Path(email): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin.require(Power::ManagePeople)?;
    let email = Email::parse(&email).map_err(|error| ApiError::BadRequest(error.0))?;
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    store::registry::delete_user(&mut connection, email.as_str()).await?;
    drop(connection);
    reload(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_status(state: &AppState, actor: &UserEntry, email: &str, status: Status) -> Result<Json<Value>, ApiError> {
    let email = Email::parse(email).map_err(|error| ApiError::BadRequest(error.0))?;
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    let target = store::accounts::by_email(&mut transaction, email.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user with email {email}")))?;
    crate::registry::may_change_status(&actor.admin_roles, &actor.id, &target.admin_roles, &target.user_id)
        .map_err(|refusal| ApiError::Forbidden(refusal.0))?;
    let before = store::directory::set_status(&mut transaction, email.as_str(), status).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    reload(state).await;
    Ok(Json(json!({"email": email.as_str(), "status": status, "previous_status": before})))
}

/// `POST /users/{email}/suspend`: the user's next call is refused on every replica.
async fn suspend_user(
    State(state): State<AppState>,
    admin: Admin,
    Path(email): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let actor = admin.require(Power::SuspendPeople)?;
    set_status(&state, actor, &email, Status::Suspended).await
}

/// `POST /users/{email}/activate`: lift a suspension or deactivation.
async fn activate_user(
    State(state): State<AppState>,
    admin: Admin,
    Path(email): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let actor = admin.require(Power::SuspendPeople)?;
    set_status(&state, actor, &email, Status::Active).await
}

async fn list_groups(State(state): State<AppState>, _admin: Admin) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    Ok(Json(json!({ "groups": store::registry::list_groups(&mut connection).await? })))
}

async fn list_grants(State(state): State<AppState>, _admin: Admin) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    Ok(Json(json!({ "grants": store::registry::list_grants(&mut connection).await? })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    server: String,
    user: Option<String>,
    group: Option<String>,
}

async fn add_grant(
    State(state): State<AppState>,
    admin: Admin,
    Json(body): Json<GrantBody>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Power::ManagePolicies)?;
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    let server = store::registry::get_server(&mut transaction, &body.server)
        .await?
        .ok_or_else(|| ApiError::BadRequest(format!("no server named {:?}", body.server)))?;
    let (grantee, principal_id) = match (&body.user, &body.group) {
        (Some(email), None) => {
            let email = Email::parse(email).map_err(|error| ApiError::BadRequest(error.0))?;
            let user = store::registry::find_user(&mut transaction, email.as_str())
                .await?
                .ok_or_else(|| ApiError::BadRequest(format!("no user with email {email}")))?;
            (Grantee::User, user.id)
        }
        (None, Some(group)) => {
            let groups = store::registry::list_groups(&mut transaction).await?;
            let group = groups
                .into_iter()
                .find(|candidate| candidate.name == *group)
                .ok_or_else(|| ApiError::BadRequest(format!("no group named {group:?}")))?;
            (Grantee::Group, group.id)
        }
        _ => {
            return Err(ApiError::BadRequest(
                "name exactly one of \"user\" (an email) or \"group\" (a group name)".into(),
            ));
        }
    };
    let id = store::registry::add_grant(&mut transaction, &server.id, grantee, &principal_id).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    reload(&state).await;
    Ok(Json(json!({ "id": id })))
}

async fn delete_grant(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin.require(Power::ManagePolicies)?;
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    store::registry::delete_grant(&mut connection, &id).await?;
    drop(connection);
    reload(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesQuery {
    /// Only rules naming this server (global rules apply to it too but are listed apart).
    server: Option<String>,
    /// Only global rules (`true`) or only server rules (`false`).
    global: Option<bool>,
}

/// `GET /rules`: access rules, by name (any admin).
async fn list_rules(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<RulesQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let rules: Vec<_> = store::rules::list_rules(&mut connection)
        .await?
        .into_iter()
        .filter(|rule| query.server.as_ref().is_none_or(|server| rule.spec.servers.contains(server)))
        .filter(|rule| query.global.is_none_or(|global| rule.spec.global == global))
        .collect();
    Ok(Json(json!({ "rules": rules })))
}

/// `GET /rules/{id}`: one rule.
async fn get_rule(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let rule = store::rules::get_rule(&mut connection, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("there is no rule with id {id:?}")))?;
    Ok(Json(json!({ "rule": rule, "cedar": rule.spec.cedar() })))
}

/// A saved rule as the API answers: the rule, its Cedar policy and any warnings.
fn saved_json(saved: &crate::rules::Saved) -> Value {
    json!({ "rule": saved.rule, "cedar": saved.rule.spec.cedar(), "warnings": saved.warnings })
}

fn save_error(error: crate::rules::SaveError) -> ApiError {
    match error {
        crate::rules::SaveError::Invalid(text) => ApiError::BadRequest(text),
        crate::rules::SaveError::Store(error) => ApiError::Internal(error),
    }
}

/// `POST /rules`: a new rule, in force on every replica within a second (policy admins).
async fn create_rule(
    State(state): State<AppState>,
    admin: Admin,
    Json(spec): Json<crate::rules::RuleSpec>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = admin.require(Power::ManagePolicies)?.email.clone();
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    let saved = crate::rules::save(&mut transaction, &spec, None, &actor, &state.replica).await.map_err(save_error)?;
    transaction.commit().await.map_err(StoreError::from)?;
    reload(&state).await;
    Ok((StatusCode::CREATED, Json(saved_json(&saved))))
}

/// `PUT /rules/{id}`: replace a rule (policy admins).
async fn update_rule(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Json(spec): Json<crate::rules::RuleSpec>,
) -> Result<Json<Value>, ApiError> {
    let actor = admin.require(Power::ManagePolicies)?.email.clone();
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    if store::rules::get_rule(&mut transaction, &id).await?.is_none() {
        return Err(ApiError::NotFound(format!("there is no rule with id {id:?}")));
    }
    let saved =
        crate::rules::save(&mut transaction, &spec, Some(&id), &actor, &state.replica).await.map_err(save_error)?;
    transaction.commit().await.map_err(StoreError::from)?;
    reload(&state).await;
    Ok(Json(saved_json(&saved)))
}

/// `DELETE /rules/{id}`: delete a rule; callers who relied on it lose access at once, live
/// streams included (policy admins).
async fn delete_rule(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = admin.require(Power::ManagePolicies)?.email.clone();
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    crate::rules::delete(&mut transaction, &id, &actor, &state.replica).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    reload(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulateBody {
    /// `{"create": rule}`, `{"update": {"id": …, "rule": rule}}` or `{"delete": id}`.
    #[serde(flatten)]
    draft: crate::review::Draft,
    /// How many days of recorded calls to replay (default 30).
    days: Option<u32>,
}

/// `POST /rules/simulate`: what a draft rule change would decide differently over the calls
/// recorded in the last days (policy admins). Nothing is saved.
async fn simulate_rule(
    State(state): State<AppState>,
    admin: Admin,
    Json(body): Json<SimulateBody>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Power::ManagePolicies)?;
    let snapshot =
        state.snapshot.current().map_err(|_| ApiError::Internal(StoreError::Open("stale snapshot".into())))?;
    let days = body.days.unwrap_or(30).clamp(1, 365);
    let simulation =
        crate::review::simulate(&state.store, &state.audit, &snapshot, &body.draft, days).await.map_err(|error| {
            match error {
                crate::review::SimulationError::Invalid(text) => ApiError::BadRequest(text),
                crate::review::SimulationError::Store(error) => ApiError::Internal(error),
            }
        })?;
    Ok(Json(json!({ "simulation": simulation })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessQuery {
    server: Option<String>,
    user: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// `GET /access`: effective access — who can use which server through which rules (admins
/// who read audit); `format=csv` for access reviews in a spreadsheet.
async fn effective_access(
    State(state): State<AppState>,
    admin: Admin,
    Query(query): Query<AccessQuery>,
) -> Result<Response, ApiError> {
    admin.require(Power::ReadAudit)?;
    let snapshot =
        state.snapshot.current().map_err(|_| ApiError::Internal(StoreError::Open("stale snapshot".into())))?;
    let rows = crate::review::effective_access(&snapshot, query.server.as_deref(), query.user.as_deref());
    match query.format.as_deref() {
        None | Some("json") => Ok(Json(json!({ "access": rows })).into_response()),
        Some("csv") => Ok((
            [
                (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"portcullis-access.csv\""),
            ],
            crate::review::access_csv(&rows),
        )
            .into_response()),
        Some(other) => Err(ApiError::BadRequest(format!("format {other:?} is not json or csv"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaleQuery {
    /// Unused for this many days (default 90).
    days: Option<u32>,
}

/// `GET /access/stale`: allow rules with people who have not used them for N days.
async fn stale_access(
    State(state): State<AppState>,
    admin: Admin,
    Query(query): Query<StaleQuery>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Power::ReadAudit)?;
    let snapshot =
        state.snapshot.current().map_err(|_| ApiError::Internal(StoreError::Open("stale snapshot".into())))?;
    let days = query.days.unwrap_or(90).clamp(1, 3650);
    let stale = crate::review::stale_access(&state.store, &snapshot, days).await?;
    Ok(Json(json!({ "days": days, "stale": stale })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogQuery {
    /// Words that must all appear in the name, title, description or publisher.
    q: Option<String>,
    /// Retired entries too (administrators).
    retired: Option<bool>,
}

/// `GET /catalog`: the catalog of pre-vetted servers, searchable (everyone).
async fn list_catalog(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Query(query): Query<CatalogQuery>,
) -> Result<Json<Value>, ApiError> {
    let retired = query.retired.unwrap_or(false) && !user.admin_roles.is_empty();
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let words: Vec<String> = query.q.as_deref().unwrap_or("").split_whitespace().map(str::to_lowercase).collect();
    let entries: Vec<_> = store::catalog::list(&mut connection, retired)
        .await?
        .into_iter()
        .filter(|stored| {
            let entry = &stored.entry;
            let text =
                format!("{} {} {} {}", entry.name, entry.title, entry.description, entry.publisher).to_lowercase();
            words.iter().all(|word| text.contains(word.as_str()))
        })
        .collect();
    Ok(Json(json!({ "entries": entries })))
}

/// `GET /catalog/{name}`: one entry (everyone; retired ones for administrators).
async fn get_catalog_entry(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let entry = store::catalog::get(&mut connection, &name)
        .await?
        .filter(|stored| stored.retired_at.is_none() || !user.admin_roles.is_empty())
        .ok_or_else(|| ApiError::NotFound(format!("there is no catalog entry named {name:?}")))?;
    Ok(Json(json!({ "entry": entry })))
}

/// Store a checked entry with its audit event, in one transaction.
async fn save_catalog_entry(
    state: &AppState,
    actor: &str,
    entry: &crate::catalog::Entry,
    source: &str,
) -> Result<bool, ApiError> {
    entry.check().map_err(|error| ApiError::BadRequest(error.0))?;
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    let existed = store::catalog::get(&mut transaction, &entry.name).await?.is_some();
    store::catalog::put(&mut transaction, entry, source).await?;
    let (method, verb) = if existed { ("catalog/update", "changed") } else { ("catalog/create", "added") };
    let reason = format!("{actor} {verb} catalog entry {:?}", entry.name);
    let mut event =
        crate::audit::AuditEvent::action(actor, None, method, Some(&entry.name), true, &reason, &state.replica);
    event.detail = Some(json!({ "after": entry }).to_string());
    store::audit::insert(&mut transaction, &[event]).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    Ok(existed)
}

/// `PUT /catalog/{name}`: add or change an entry (IT admins).
async fn put_catalog_entry(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Json(entry): Json<crate::catalog::Entry>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = admin.require(Power::ManageServers)?.email.clone();
    if entry.name != name {
        return Err(ApiError::BadRequest(format!(
            "the entry is named {:?} but the path names {name:?}; they must be the same",
            entry.name
        )));
    }
    let existed = save_catalog_entry(&state, &actor, &entry, "admin").await?;
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(json!({ "entry": entry }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// Replace an entry of the same name (otherwise that is a conflict).
    replace: Option<bool>,
}

/// `POST /catalog/import`: add an entry from an MCP Registry `server.json` document (IT
/// admins). Imported entries start as high risk.
async fn import_catalog_entry(
    State(state): State<AppState>,
    admin: Admin,
    Query(query): Query<ImportQuery>,
    Json(document): Json<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = admin.require(Power::ManageServers)?.email.clone();
    let entry = crate::catalog::from_server_json(&document).map_err(|error| ApiError::BadRequest(error.0))?;
    if !query.replace.unwrap_or(false) {
        let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
        if store::catalog::get(&mut connection, &entry.name).await?.is_some() {
            return Err(ApiError::Internal(StoreError::Conflict(format!(
                "a catalog entry named {:?} exists already; import with ?replace=true to replace it",
                entry.name
            ))));
        }
    }
    save_catalog_entry(&state, &actor, &entry, "import").await?;
    Ok((StatusCode::CREATED, Json(json!({ "entry": entry }))))
}

/// `POST /catalog/{name}/retire`: take an entry out of offer (IT admins).
async fn retire_catalog_entry(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = admin.require(Power::ManageServers)?.email.clone();
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    store::catalog::retire(&mut transaction, &name).await?;
    let reason = format!("{actor} retired catalog entry {name:?}");
    let event =
        crate::audit::AuditEvent::action(&actor, None, "catalog/retire", Some(&name), true, &reason, &state.replica);
    store::audit::insert(&mut transaction, &[event]).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_api_keys(State(state): State<AppState>, ApiUser(user): ApiUser) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let keys: Vec<_> = store::registry::list_api_keys(&mut connection)
        .await?
        .into_iter()
        .filter(|key| user.can(Power::ManageAdmins) || key.user_id == user.id)
        .collect();
    Ok(Json(json!({ "api_keys": keys })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyBody {
    /// Whose key; admins only. Defaults to the caller.
    user: Option<String>,
    #[serde(default)]
    name: String,
}

async fn create_api_key(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Json(body): Json<ApiKeyBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    let owner_id = match &body.user {
        Some(email) if email.to_ascii_lowercase() != user.email => {
            if !user.can(Power::ManageAdmins) {
                return Err(ApiError::Forbidden("only super admins create API keys for other users".into()));
            }
            let email = Email::parse(email).map_err(|error| ApiError::BadRequest(error.0))?;
            store::registry::find_user(&mut transaction, email.as_str())
                .await?
                .ok_or_else(|| ApiError::BadRequest(format!("no user with email {email}")))?
                .id
        }
        _ => user.id.clone(),
    };
    let (key, hash, prefix) = auth::new_api_key();
    let id = store::registry::insert_api_key(&mut transaction, &owner_id, &body.name, &prefix, &hash).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    reload(&state).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "prefix": prefix, "key": key, "note": "the key is shown only once" })),
    ))
}

async fn revoke_api_key(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let keys = store::registry::list_api_keys(&mut connection).await?;
    let key =
        keys.iter().find(|key| key.id == id).ok_or_else(|| ApiError::NotFound(format!("no API key with id {id:?}")))?;
    if key.user_id != user.id && !user.can(Power::ManageAdmins) {
        return Err(ApiError::NotFound(format!("no API key with id {id:?}")));
    }
    store::registry::revoke_api_key(&mut connection, &id).await?;
    drop(connection);
    reload(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /settings` (super admins).
async fn get_settings(State(state): State<AppState>, admin: Admin) -> Result<Json<Value>, ApiError> {
    admin.require(Power::ManageAdmins)?;
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let required = store::settings::admin_mfa_required(&mut connection).await?;
    Ok(Json(json!({ "admin_mfa_required": required })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    admin_mfa_required: bool,
}

/// `PUT /settings` (super admins); audited.
async fn put_settings(
    State(state): State<AppState>,
    admin: Admin,
    Json(body): Json<SettingsBody>,
) -> Result<Json<Value>, ApiError> {
    let actor = admin.require(Power::ManageAdmins)?.email.clone();
    let value = if body.admin_mfa_required { "true" } else { "false" };
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    store::settings::set(&mut transaction, store::settings::ADMIN_MFA, value).await?;
    store::audit::insert(&mut transaction, &[settings_event(&actor, value, &state.replica)]).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    Ok(Json(json!({ "admin_mfa_required": body.admin_mfa_required })))
}

fn settings_event(actor: &str, value: &str, replica: &str) -> crate::audit::AuditEvent {
    let reason = format!("admin two-step sign-in required: {value}");
    let target = Some(store::settings::ADMIN_MFA);
    crate::audit::AuditEvent::action(actor, None, "settings/admin-mfa", target, true, &reason, replica)
}

/// `GET /scim-tokens`: the identity providers' tokens, without the tokens (IT admins).
async fn list_scim_tokens(State(state): State<AppState>, admin: Admin) -> Result<Json<Value>, ApiError> {
    admin.require(Power::ManagePeople)?;
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    Ok(Json(json!({ "scim_tokens": store::directory::list_scim_tokens(&mut connection).await? })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScimTokenBody {
    name: String,
}

/// `POST /scim-tokens`: a new token, shown once.
async fn create_scim_token(
    State(state): State<AppState>,
    admin: Admin,
    Json(body): Json<ScimTokenBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = admin.require(Power::ManagePeople)?.email.clone();
    let (token, id) =
        crate::scim::create_token_by(&state.store, &actor, &body.name).await.map_err(|error| match error {
            StoreError::Conflict(text) => ApiError::BadRequest(text),
            other => ApiError::Internal(other),
        })?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "token": token, "note": "the token is shown only once" }))))
}

/// `DELETE /scim-tokens/{id}`: the identity provider's next request is refused.
async fn revoke_scim_token(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = admin.require(Power::ManagePeople)?.email.clone();
    crate::scim::revoke_token(&state.store, &actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    user: Option<String>,
    server: Option<String>,
    method: Option<String>,
    decision: Option<String>,
    outcome: Option<String>,
    target: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// Audit events, newest first. Admins see everyone's; users see their own.
async fn audit(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let user_id = match &query.user {
        Some(email) if user.can(Power::ReadAudit) => {
            let email = Email::parse(email).map_err(|error| ApiError::BadRequest(error.0))?;
            Some(
                store::registry::find_user(&mut connection, email.as_str())
                    .await?
                    .map(|found| found.id)
                    .unwrap_or_default(),
            )
        }
        Some(_) => return Err(ApiError::Forbidden("only administrators read other users' audit events".into())),
        None if user.can(Power::ReadAudit) => None,
        None => Some(user.id.clone()),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 1000".into()));
    }
    let filter = store::audit::Filter {
        user_id,
        server: query.server,
        method: query.method,
        decision: query.decision,
        outcome: query.outcome,
        target: query.target,
        since_ms: query.since_ms,
        until_ms: query.until_ms,
        before: query.before,
        limit,
    };
    let events = store::audit::query(&mut connection, &filter).await?;
    let next = (events.len() as i64 == limit).then(|| events.last().map(|event| event.seq)).flatten();
    Ok(Json(json!({ "events": events, "next_before": next })))
}
