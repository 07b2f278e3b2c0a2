//! SCIM 2.0 (RFC 7643/7644) under `/scim/v2`: identity providers (Okta, Entra ID, Google)
//! push people and groups here.
//!
//! A person's SCIM resource is kept whole (the columns the gateway uses — email, user name,
//! display name, title, department, status, external id, roles — are projected out of it), so
//! whatever an identity provider writes reads back the same. Deactivating, deleting or
//! removing someone from a group bumps the registry revision: every replica's snapshot drops
//! their access within its refresh interval.

pub mod filter;
pub mod patch;
mod schemas;

use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::crypto::{new_id, random_token, sha256_hex};
use crate::registry::{DirectoryGroup, Person, Status};
use crate::store::{self, StoreError, now_ms};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use filter::{Filter, get_ci};
use serde_json::{Map, Value, json};

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SEARCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
const CONTENT_TYPE: &str = "application/scim+json";
/// Most resources in one page.
pub const MAX_RESULTS: usize = 200;
/// The prefix of SCIM bearer tokens.
pub const TOKEN_PREFIX: &str = "pcscim_";

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/ServiceProviderConfig", get(schemas::service_provider_config))
        .route("/ResourceTypes", get(schemas::resource_types))
        .route("/ResourceTypes/{id}", get(schemas::resource_type))
        .route("/Schemas", get(schemas::schemas))
        .route("/Schemas/{id}", get(schemas::schema))
        .route("/.search", post(search_all))
        .route("/Users", get(list_users).post(create_user))
        .route("/Users/.search", post(search_users))
        .route("/Users/{id}", get(get_user).put(replace_user).patch(patch_user).delete(delete_user))
        .route("/Groups", get(list_groups).post(create_group))
        .route("/Groups/.search", post(search_groups))
        .route("/Groups/{id}", get(get_group).put(replace_group).patch(patch_group).delete(delete_group))
        .fallback(|| async { ScimError::new(StatusCode::NOT_FOUND, None, "there is no SCIM resource at this address") })
        .layer(middleware::from_fn_with_state(state, authenticate))
}

/// A SCIM error response (RFC 7644 §3.12).
#[derive(Debug)]
pub struct ScimError {
    status: StatusCode,
    scim_type: Option<&'static str>,
    detail: String,
}

impl ScimError {
    fn new(status: StatusCode, scim_type: Option<&'static str>, detail: impl Into<String>) -> ScimError {
        ScimError { status, scim_type, detail: detail.into() }
    }

    fn invalid(scim_type: &'static str, detail: impl Into<String>) -> ScimError {
        ScimError::new(StatusCode::BAD_REQUEST, Some(scim_type), detail)
    }
}

impl From<StoreError> for ScimError {
    fn from(error: StoreError) -> ScimError {
        match error {
            StoreError::Conflict(text) => ScimError::new(StatusCode::CONFLICT, Some("uniqueness"), text),
            StoreError::NotFound(text) => ScimError::new(StatusCode::NOT_FOUND, None, text),
            error => {
                tracing::error!(%error, "SCIM request failed in the store");
                ScimError::new(StatusCode::INTERNAL_SERVER_ERROR, None, "the store failed; try again")
            }
        }
    }
}

impl From<sqlx::Error> for ScimError {
    fn from(error: sqlx::Error) -> ScimError {
        ScimError::from(StoreError::from(error))
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let mut body =
            json!({"schemas": [ERROR_SCHEMA], "status": self.status.as_u16().to_string(), "detail": self.detail});
        if let Some(scim_type) = self.scim_type {
            body["scimType"] = json!(scim_type);
        }
        let mut response = scim_response(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"SCIM\""));
        }
        response
    }
}

fn scim_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body.to_string()).into_response()
}

/// The name of the SCIM token that authenticated the request.
#[derive(Clone)]
struct ScimClient(String);

async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let Some(token) = token else {
        return ScimError::new(
            StatusCode::UNAUTHORIZED,
            None,
            "send the SCIM token as \"Authorization: Bearer <token>\"",
        )
        .into_response();
    };
    let found = async {
        let mut connection = state.store.pool.acquire().await?;
        store::directory::use_scim_token(&mut connection, &sha256_hex(token.as_bytes())).await
    }
    .await;
    match found {
        Ok(Some(name)) => {
            request.extensions_mut().insert(ScimClient(name));
            next.run(request).await
        }
        Ok(None) => ScimError::new(StatusCode::UNAUTHORIZED, None, "the SCIM token is not valid (unknown or revoked)")
            .into_response(),
        Err(error) => ScimError::from(error).into_response(),
    }
}

/// A new SCIM token: (the token to show once, its hash, a prefix to recognise it).
pub fn new_token() -> (String, String, String) {
    let token = format!("{TOKEN_PREFIX}{}", random_token(32));
    let hash = sha256_hex(token.as_bytes());
    let prefix = token[..TOKEN_PREFIX.len() + 6].to_owned();
    (token, hash, prefix)
}

/// Create a SCIM token named `name` on behalf of `actor` (an admin's email, or `cli`);
/// returns the token (stored only hashed) and its id. The creation is an audit event.
pub async fn create_token_by(store: &store::Store, actor: &str, name: &str) -> Result<(String, String), StoreError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(StoreError::Conflict("give the token a name, e.g. --name okta".into()));
    }
    let (token, hash, prefix) = new_token();
    let id = new_id();
    let mut transaction = store.begin_write().await?;
    store::directory::insert_scim_token(&mut transaction, &id, name, &prefix, &hash).await?;
    let event = token_event(actor, "scim-token/create", name);
    store::audit::insert(&mut transaction, &[event]).await?;
    transaction.commit().await?;
    Ok((token, id))
}

/// Create a SCIM token from the command line.
pub async fn create_token(store: &store::Store, name: &str) -> Result<String, StoreError> {
    create_token_by(store, "cli", name).await.map(|(token, _)| token)
}

/// Revoke a SCIM token by id or name; the revocation is an audit event.
pub async fn revoke_token(store: &store::Store, actor: &str, id_or_name: &str) -> Result<(), StoreError> {
    let mut transaction = store.begin_write().await?;
    let tokens = store::directory::list_scim_tokens(&mut transaction).await?;
    let live: Vec<_> = tokens
        .iter()
        .filter(|token| token.revoked_at.is_none() && (token.id == id_or_name || token.name == id_or_name))
        .collect();
    let token = match live.as_slice() {
        [token] => *token,
        [] => return Err(StoreError::NotFound(format!("no live SCIM token with id or name {id_or_name:?}"))),
        _ => {
            return Err(StoreError::Conflict(format!(
                "several live SCIM tokens are named {id_or_name:?}; revoke one by its id"
            )));
        }
    };
    store::directory::revoke_scim_token(&mut transaction, &token.id).await?;
    store::audit::insert(&mut transaction, &[token_event(actor, "scim-token/revoke", &token.name)]).await?;
    transaction.commit().await?;
    Ok(())
}

fn token_event(actor: &str, method: &str, name: &str) -> AuditEvent {
    AuditEvent::action(actor, None, method, Some(name), true, &format!("SCIM token {name:?}"), "")
}

/// Where resources live, for `meta.location`.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    match &state.config.public_url {
        Some(url) => format!("{}/scim/v2", url.trim_end_matches('/')),
        None => {
            let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("localhost");
            format!("http://{host}/scim/v2")
        }
    }
}

pub use crate::time::iso_time;

fn meta(resource_type: &str, location: String, created: i64, updated: i64) -> Value {
    json!({"resourceType": resource_type, "created": iso_time(created), "lastModified": iso_time(updated),
           "location": location, "version": format!("W/\"{updated}\"")})
}

/// Attributes the gateway computes, never stored from a client. (`active` is kept, so that a
/// client that removed it does not see it come back; its value is always the status.)
const COMPUTED: [&str; 7] = ["schemas", "id", "meta", "groups", "password", "userName", "externalId"];

fn user_resource(person: &Person, base: &str) -> Value {
    let mut resource = person.scim.clone();
    let mut schemas = vec![json!(USER_SCHEMA)];
    if filter::key_ci(&resource, ENTERPRISE_SCHEMA).is_some() || !person.department.is_empty() {
        schemas.push(json!(ENTERPRISE_SCHEMA));
    }
    resource.insert("schemas".into(), Value::Array(schemas));
    resource.insert("id".into(), json!(person.id));
    resource.insert("userName".into(), json!(person.user_name));
    if let Some(external_id) = &person.external_id {
        resource.insert("externalId".into(), json!(external_id));
    }
    // What an identity provider wrote reads back as written; people made in Portcullis get
    // their email, name and status filled in.
    let local = person.source != "scim";
    if let Some(key) = filter::key_ci(&resource, "active").or_else(|| local.then(|| "active".to_owned())) {
        resource.insert(key, json!(person.status == Status::Active));
    }
    if local && filter::key_ci(&resource, "displayName").is_none() && !person.name.is_empty() {
        resource.insert("displayName".into(), json!(person.name));
    }
    if local && filter::key_ci(&resource, "emails").is_none() {
        resource.insert("emails".into(), json!([{"value": person.email, "type": "work", "primary": true}]));
    }
    if !person.department.is_empty() {
        let key = filter::key_ci(&resource, ENTERPRISE_SCHEMA).unwrap_or_else(|| ENTERPRISE_SCHEMA.to_owned());
        let extension = resource.entry(key).or_insert_with(|| json!({}));
        if let Some(extension) = extension.as_object_mut() {
            extension.insert("department".into(), json!(person.department));
        }
    }
    if !person.title.is_empty() {
        resource.insert("title".into(), json!(person.title));
    }
    let groups: Vec<Value> = person
        .groups
        .iter()
        .map(
            |(id, name)| json!({"value": id, "display": name, "$ref": format!("{base}/Groups/{id}"), "type": "direct"}),
        )
        .collect();
    if !groups.is_empty() {
        resource.insert("groups".into(), Value::Array(groups));
    }
    let location = format!("{base}/Users/{}", person.id);
    resource.insert("meta".into(), meta("User", location, person.created_at, person.updated_at));
    Value::Object(resource)
}

/// A boolean as identity providers send it: `true`, or Entra ID's `"True"`.
fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(value) => Some(*value),
        Value::String(text) => text.to_ascii_lowercase().parse().ok(),
        _ => None,
    }
}

fn text(resource: &Value, key: &str) -> Option<String> {
    get_ci(resource, key).and_then(Value::as_str).map(str::trim).filter(|text| !text.is_empty()).map(str::to_owned)
}

/// Project a client's user resource onto `person` (everything but id, groups and timestamps).
fn apply_user(person: &mut Person, resource: &Value) -> Result<(), ScimError> {
    if !resource.is_object() {
        return Err(ScimError::invalid("invalidSyntax", "a User must be a JSON object"));
    }
    let user_name =
        text(resource, "userName").ok_or_else(|| ScimError::invalid("invalidValue", "userName is required"))?;
    let emails = get_ci(resource, "emails").and_then(Value::as_array).cloned().unwrap_or_default();
    let email = emails
        .iter()
        .find(|email| get_ci(email, "primary").and_then(boolean) == Some(true))
        .or_else(|| emails.first())
        .and_then(|email| text(email, "value"))
        .unwrap_or_else(|| user_name.clone());
    let name = get_ci(resource, "name");
    let formatted = name.and_then(|name| text(name, "formatted"));
    let given_family = name
        .map(|name| {
            [text(name, "givenName"), text(name, "familyName")].into_iter().flatten().collect::<Vec<_>>().join(" ")
        })
        .filter(|joined| !joined.is_empty());
    person.name = text(resource, "displayName").or(formatted).or(given_family).unwrap_or_default();
    person.email = email.to_lowercase();
    person.user_name = user_name;
    person.external_id = text(resource, "externalId");
    person.title = text(resource, "title").unwrap_or_default();
    person.department =
        get_ci(resource, ENTERPRISE_SCHEMA).and_then(|extension| text(extension, "department")).unwrap_or_default();
    person.roles = get_ci(resource, "roles")
        .and_then(Value::as_array)
        .map(|roles| {
            roles.iter().filter_map(|role| text(role, "value").or_else(|| role.as_str().map(str::to_owned))).collect()
        })
        .unwrap_or_default();
    match get_ci(resource, "active") {
        None => {}
        Some(value) => {
            let active =
                boolean(value).ok_or_else(|| ScimError::invalid("invalidValue", "active must be true or false"))?;
            // An admin's suspension stands until an admin lifts it.
            if person.status != Status::Suspended {
                person.status = if active { Status::Active } else { Status::Inactive };
            }
        }
    }
    let mut extra: Map<String, Value> = resource.as_object().cloned().unwrap_or_default();
    extra.retain(|key, _| !COMPUTED.iter().any(|computed| computed.eq_ignore_ascii_case(key)));
    person.scim = extra;
    person.source = "scim".into();
    Ok(())
}

fn group_resource(group: &DirectoryGroup, base: &str) -> Value {
    let members: Vec<Value> = group
        .members
        .iter()
        .map(|(id, _)| json!({"value": id, "$ref": format!("{base}/Users/{id}"), "type": "User"}))
        .collect();
    let mut resource = json!({"schemas": [GROUP_SCHEMA], "id": group.id, "displayName": group.name, "members": members,
        "meta": meta("Group", format!("{base}/Groups/{}", group.id), group.created_at, group.updated_at)});
    if let Some(external_id) = &group.external_id {
        resource["externalId"] = json!(external_id);
    }
    resource
}

fn apply_group(group: &mut DirectoryGroup, resource: &Value) -> Result<(), ScimError> {
    if !resource.is_object() {
        return Err(ScimError::invalid("invalidSyntax", "a Group must be a JSON object"));
    }
    group.name =
        text(resource, "displayName").ok_or_else(|| ScimError::invalid("invalidValue", "displayName is required"))?;
    group.external_id = text(resource, "externalId");
    group.members = get_ci(resource, "members")
        .and_then(Value::as_array)
        .map(|members| {
            members.iter().filter_map(|member| text(member, "value")).map(|id| (id, String::new())).collect()
        })
        .unwrap_or_default();
    group.source = "scim".into();
    Ok(())
}

/// Parse a JSON body; SCIM clients get SCIM errors.
fn body(bytes: &Bytes) -> Result<Value, ScimError> {
    serde_json::from_slice(bytes)
        .map_err(|error| ScimError::invalid("invalidSyntax", format!("the body is not JSON: {error}")))
}

/// Query parameters of a list or search.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    filter: Option<String>,
    start_index: Option<i64>,
    count: Option<i64>,
    attributes: Option<String>,
    excluded_attributes: Option<String>,
}

impl ListQuery {
    fn from_search(value: &Value) -> ListQuery {
        let joined = |key: &str| {
            get_ci(value, key).map(|value| match value {
                Value::Array(items) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
                other => other.as_str().unwrap_or_default().to_owned(),
            })
        };
        ListQuery {
            filter: get_ci(value, "filter").and_then(Value::as_str).map(str::to_owned),
            start_index: get_ci(value, "startIndex").and_then(Value::as_i64),
            count: get_ci(value, "count").and_then(Value::as_i64),
            attributes: joined("attributes"),
            excluded_attributes: joined("excludedAttributes"),
        }
    }
}

/// Keep what `attributes` asks for (plus `id` and `schemas`), drop `excludedAttributes`.
fn project(resource: Value, attributes: Option<&str>, excluded: Option<&str>) -> Value {
    let Value::Object(mut object) = resource else { return resource };
    let names = |list: Option<&str>| -> Vec<String> {
        list.unwrap_or_default().split(',').map(str::trim).filter(|name| !name.is_empty()).map(str::to_owned).collect()
    };
    let wanted = names(attributes);
    if !wanted.is_empty() {
        let mut kept = Map::new();
        for key in ["schemas", "id"] {
            if let Some(value) = object.get(key) {
                kept.insert(key.to_owned(), value.clone());
            }
        }
        for name in &wanted {
            let Some((key, value)) = select(&object, name) else { continue };
            match (kept.get_mut(&key), value) {
                (Some(Value::Object(existing)), Value::Object(more)) => existing.extend(more),
                (_, value) => {
                    kept.insert(key, value);
                }
            }
        }
        object = kept;
    }
    for name in names(excluded) {
        if name != "id" && name != "schemas" {
            remove_path(&mut object, &name);
        }
    }
    Value::Object(object)
}

/// The part of `object` that the attribute path `name` selects, as (top-level key, value).
fn select(object: &Map<String, Value>, name: &str) -> Option<(String, Value)> {
    if let Some(key) = filter::key_ci(object, name) {
        return Some((key.clone(), object[&key].clone()));
    }
    let path = filter::AttrPath::parse(name).ok()?;
    let (outer, container) = match &path.schema {
        None => (None, object),
        Some(schema) => {
            let key = filter::key_ci(object, schema)?;
            (Some(key.clone()), object[&key].as_object()?)
        }
    };
    let key = filter::key_ci(container, &path.name)?;
    let only = |item: &Value, sub: &str| -> Value {
        match item {
            Value::Object(inner) => Value::Object(
                inner
                    .iter()
                    .filter(|(name, _)| name.eq_ignore_ascii_case(sub))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            other => other.clone(),
        }
    };
    let value = match (&container[&key], &path.sub) {
        (value, None) => value.clone(),
        (Value::Array(items), Some(sub)) => Value::Array(items.iter().map(|item| only(item, sub)).collect()),
        (value, Some(sub)) => only(value, sub),
    };
    Some(match outer {
        None => (key, value),
        Some(outer) => (outer, json!({ key: value })),
    })
}

fn remove_path(object: &mut Map<String, Value>, name: &str) {
    if let Some(key) = filter::key_ci(object, name) {
        object.remove(&key);
        return;
    }
    let Ok(path) = filter::AttrPath::parse(name) else { return };
    let container = match &path.schema {
        None => Some(object),
        Some(schema) => {
            filter::key_ci(object, schema).and_then(|key| object.get_mut(&key)).and_then(Value::as_object_mut)
        }
    };
    let Some(container) = container else { return };
    let Some(key) = filter::key_ci(container, &path.name) else { return };
    match &path.sub {
        None => {
            container.remove(&key);
        }
        Some(sub) => {
            let strip = |item: &mut Value| {
                if let Some(inner) = item.as_object_mut()
                    && let Some(sub_key) = filter::key_ci(inner, sub)
                {
                    inner.remove(&sub_key);
                }
            };
            match container.get_mut(&key) {
                Some(Value::Array(items)) => items.iter_mut().for_each(strip),
                Some(item) => strip(item),
                None => {}
            }
        }
    }
}

fn list_response(resources: Vec<Value>, query: &ListQuery) -> Result<Response, ScimError> {
    let filter = match query.filter.as_deref().filter(|text| !text.trim().is_empty()) {
        Some(text) => Some(Filter::parse(text).map_err(|error| ScimError::invalid("invalidFilter", error.0))?),
        None => None,
    };
    let matching: Vec<Value> = resources
        .into_iter()
        .filter(|resource| filter.as_ref().is_none_or(|filter| filter.matches(resource)))
        .collect();
    let total = matching.len();
    let start = query.start_index.unwrap_or(1).max(1) as usize;
    let count = query.count.unwrap_or(MAX_RESULTS as i64).clamp(0, MAX_RESULTS as i64) as usize;
    let page: Vec<Value> = matching
        .into_iter()
        .skip(start - 1)
        .take(count)
        .map(|resource| project(resource, query.attributes.as_deref(), query.excluded_attributes.as_deref()))
        .collect();
    let body = json!({"schemas": [LIST_SCHEMA], "totalResults": total, "startIndex": start,
                      "itemsPerPage": page.len(), "Resources": page});
    Ok(scim_response(StatusCode::OK, &body))
}

/// Record a change made over SCIM in the audit log.
fn audit(state: &AppState, client: &ScimClient, method: &str, target: &str, outcome: &str) {
    let principal = format!("scim:{}", client.0);
    let mut event = AuditEvent::action(&principal, None, method, Some(target), true, "SCIM token", &state.replica);
    event.outcome = outcome.to_owned();
    state.audit.record(event);
}

async fn reload(state: &AppState) {
    if let Err(error) = state.snapshot.reload(&state.store, &state.keys).await {
        tracing::warn!(%error, "snapshot reload after a SCIM change failed; the refresher will retry");
    }
}

async fn all_users(state: &AppState, base: &str) -> Result<Vec<Value>, ScimError> {
    let mut connection = state.store.pool.acquire().await?;
    let people = store::directory::list_people(&mut connection).await?;
    Ok(people.iter().map(|person| user_resource(person, base)).collect())
}

async fn list_users(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response, ScimError> {
    let base = base_url(&state, &headers);
    list_response(all_users(&state, &base).await?, &query)
}

async fn search_users(State(state): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Result<Response, ScimError> {
    let request = body(&bytes)?;
    check_schema(&request, SEARCH_SCHEMA)?;
    let base = base_url(&state, &headers);
    list_response(all_users(&state, &base).await?, &ListQuery::from_search(&request))
}

/// `POST /.search`: a search over every resource type (RFC 7644 §3.4.3).
async fn search_all(State(state): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Result<Response, ScimError> {
    let request = body(&bytes)?;
    check_schema(&request, SEARCH_SCHEMA)?;
    let base = base_url(&state, &headers);
    let mut resources = all_users(&state, &base).await?;
    resources.extend(all_groups(&state, &base).await?);
    list_response(resources, &ListQuery::from_search(&request))
}

fn check_schema(request: &Value, expected: &str) -> Result<(), ScimError> {
    let listed = get_ci(request, "schemas").and_then(Value::as_array);
    match listed {
        Some(schemas)
            if schemas.iter().any(|schema| schema.as_str().is_some_and(|s| s.eq_ignore_ascii_case(expected))) =>
        {
            Ok(())
        }
        // Lenient: a body without `schemas` is accepted (several clients omit it).
        None => Ok(()),
        Some(_) => Err(ScimError::invalid("invalidSyntax", format!("the body's schemas must include {expected}"))),
    }
}

async fn load_person(state: &AppState, id: &str) -> Result<Person, ScimError> {
    let mut connection = state.store.pool.acquire().await?;
    store::directory::get_person(&mut connection, id)
        .await?
        .ok_or_else(|| ScimError::new(StatusCode::NOT_FOUND, None, format!("no User with id {id:?}")))
}

fn created_or_ok(status: StatusCode, resource: Value) -> Response {
    let location = resource["meta"]["location"].as_str().map(str::to_owned);
    let version = resource["meta"]["version"].as_str().map(str::to_owned);
    let mut response = scim_response(status, &resource);
    if let Some(location) = location.and_then(|location| HeaderValue::from_str(&location).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if let Some(version) = version.and_then(|version| HeaderValue::from_str(&version).ok()) {
        response.headers_mut().insert(header::ETAG, version);
    }
    response
}

async fn get_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ScimError> {
    let person = load_person(&state, &id).await?;
    let resource = user_resource(&person, &base_url(&state, &headers));
    Ok(created_or_ok(
        StatusCode::OK,
        project(resource, query.attributes.as_deref(), query.excluded_attributes.as_deref()),
    ))
}

async fn create_user(
    State(state): State<AppState>,
    axum::Extension(client): axum::Extension<ScimClient>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ScimError> {
    let resource = body(&bytes)?;
    let mut person = Person::new(new_id(), "", "scim");
    apply_user(&mut person, &resource)?;
    let mut connection = state.store.begin_write().await?;
    store::directory::insert_person(&mut connection, &person).await?;
    connection.commit().await?;
    audit(&state, &client, "scim/Users.create", &person.user_name, "ok");
    reload(&state).await;
    let person = load_person(&state, &person.id).await?;
    Ok(created_or_ok(StatusCode::CREATED, user_resource(&person, &base_url(&state, &headers))))
}

/// Write `person` as changed by `change` and answer with the stored result.
async fn save_person(state: &AppState, headers: &HeaderMap, person: Person) -> Result<Response, ScimError> {
    let mut connection = state.store.begin_write().await?;
    store::directory::update_person(&mut connection, &person).await?;
    connection.commit().await?;
    reload(state).await;
    let person = load_person(state, &person.id).await?;
    Ok(created_or_ok(StatusCode::OK, user_resource(&person, &base_url(state, headers))))
}

async fn replace_user(
    State(state): State<AppState>,
    axum::Extension(client): axum::Extension<ScimClient>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ScimError> {
    let resource = body(&bytes)?;
    let mut person = load_person(&state, &id).await?;
    apply_user(&mut person, &resource)?;
    let response = save_person(&state, &headers, person).await?;
    audit(&state, &client, "scim/Users.replace", &id, "ok");
    Ok(response)
}

async fn patch_user(
    State(state): State<AppState>,
    axum::Extension(client): axum::Extension<ScimClient>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ScimError> {
    let request = body(&bytes)?;
    check_schema(&request, PATCH_SCHEMA)?;
    let mut person = load_person(&state, &id).await?;
    let mut resource = user_resource(&person, &base_url(&state, &headers));
    patch::apply(&mut resource, &request).map_err(|error| ScimError::invalid(error.scim_type, error.detail))?;
    apply_user(&mut person, &resource)?;
    let response = save_person(&state, &headers, person).await?;
    audit(&state, &client, "scim/Users.patch", &id, "ok");
    Ok(response)
}

async fn delete_user(
    State(state): State<AppState>,
    axum::Extension(client): axum::Extension<ScimClient>,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    let mut connection = state.store.begin_write().await?;
    store::directory::delete_person(&mut connection, &id).await?;
    connection.commit().await?;
    audit(&state, &client, "scim/Users.delete", &id, "ok");
    reload(&state).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn all_groups(state: &AppState, base: &str) -> Result<Vec<Value>, ScimError> {
    let mut connection = state.store.pool.acquire().await?;
    let groups = store::directory::list_groups(&mut connection).await?;
    Ok(groups.iter().map(|group| group_resource(group, base)).collect())
}

async fn list_groups(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response, ScimError> {
    let base = base_url(&state, &headers);
    list_response(all_groups(&state, &base).await?, &query)
}

async fn search_groups(State(state): State<AppState>, headers: HeaderMap, bytes: Bytes) -> Result<Response, ScimError> {
    let request = body(&bytes)?;
    check_schema(&request, SEARCH_SCHEMA)?;
    let base = base_url(&state, &headers);
    list_response(all_groups(&state, &base).await?, &ListQuery::from_search(&request))
}

async fn load_group(state: &AppState, id: &str) -> Result<DirectoryGroup, ScimError> {
    let mut connection = state.store.pool.acquire().await?;
    store::directory::get_group(&mut connection, id)
        .await?
        .ok_or_else(|| ScimError::new(StatusCode::NOT_FOUND, None, format!("no Group with id {id:?}")))
}

/// Members that name no user are the client's mistake, not a missing group.
fn member_error(error: StoreError) -> ScimError {
    match error {
        StoreError::NotFound(text) if text.starts_with("no user") => {
            ScimError::invalid("invalidValue", format!("members: {text}"))
        }
        other => ScimError::from(other),
    }
}

async fn get_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ScimError> {
    let group = load_group(&state, &id).await?;
    let resource = group_resource(&group, &base_url(&state, &headers));
    Ok(created_or_ok(
        StatusCode::OK,
        project(resource, query.attributes.as_deref(), query.excluded_attributes.as_deref()),
    ))
}

async fn create_group(
    State(state): State<AppState>,
    axum::Extension(client): axum::Extension<ScimClient>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ScimError> {
    let resource = body(&bytes)?;
    let now = now_ms();
    let mut group = DirectoryGroup {
        id: new_id(),
        name: String::new(),
        external_id: None,
        source: "scim".into(),
        members: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    apply_group(&mut group, &resource)?;
    let mut connection = state.store.begin_write().await?;
    store::directory::insert_group(&mut connection, &group).await.map_err(member_error)?;
    connection.commit().await?;
    audit(&state, &client, "scim/Groups.create", &group.name, "ok");
    reload(&state).await;
    let group = load_group(&state, &group.id).await?;
    Ok(created_or_ok(StatusCode::CREATED, group_resource(&group, &base_url(&state, &headers))))
}

async fn save_group(state: &AppState, headers: &HeaderMap, group: DirectoryGroup) -> Result<Response, ScimError> {
    let mut connection = state.store.begin_write().await?;
    store::directory::update_group(&mut connection, &group).await.map_err(member_error)?;
    connection.commit().await?;
    reload(state).await;
    let group = load_group(state, &group.id).await?;
    Ok(created_or_ok(StatusCode::OK, group_resource(&group, &base_url(state, headers))))
}

async fn replace_group(
    State(state): State<AppState>,
    axum::Extension(client): axum::Extension<ScimClient>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ScimError> {
    let resource = body(&bytes)?;
    let mut group = load_group(&state, &id).await?;
    apply_group(&mut group, &resource)?;
    let response = save_group(&state, &headers, group).await?;
    audit(&state, &client, "scim/Groups.replace", &id, "ok");
    Ok(response)
}

async fn patch_group(
    State(state): State<AppState>,
    axum::Extension(client): axum::Extension<ScimClient>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ScimError> {
    let request = body(&bytes)?;
    check_schema(&request, PATCH_SCHEMA)?;
    let mut group = load_group(&state, &id).await?;
    let mut resource = group_resource(&group, &base_url(&state, &headers));
    patch::apply(&mut resource, &request).map_err(|error| ScimError::invalid(error.scim_type, error.detail))?;
    apply_group(&mut group, &resource)?;
    let response = save_group(&state, &headers, group).await?;
    audit(&state, &client, "scim/Groups.patch", &id, "ok");
    Ok(response)
}

async fn delete_group(
    State(state): State<AppState>,
    axum::Extension(client): axum::Extension<ScimClient>,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    let mut connection = state.store.begin_write().await?;
    store::directory::delete_group(&mut connection, &id).await?;
    connection.commit().await?;
    audit(&state, &client, "scim/Groups.delete", &id, "ok");
    reload(&state).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_times() {
        assert_eq!(super::iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso_time(1_764_028_800_000), "2025-11-25T00:00:00Z");
        assert_eq!(super::iso_time(951_782_400_000 + 3_723_000), "2000-02-29T01:02:03Z");
    }
}
