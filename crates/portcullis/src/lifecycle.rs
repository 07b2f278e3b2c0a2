//! The server-request flows, shared by the REST API and the console: create (draft or
//! submitted), edit a draft, submit, withdraw, resubmit a rejected request, run the connection
//! test, approve and reject. Each change is one transaction with its audit event and the
//! in-app notifications it causes; decisions are guarded so two admins deciding the same
//! request at once get one winner and one clear conflict.

use crate::api::ApiError;
use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::conntest::{self, TestResult};
use crate::registry::{Power, ServerSlug};
use crate::requests::{
    self, Checked, Checklist, CustomServer, Grant, Justification, Kind, Origin, Proposal, ProposalSecrets, State,
    Targets, Tier,
};
use crate::snapshot::{Snapshot, UserEntry};
use crate::store::requests::{Decision, Request};
use crate::store::{self, StoreError};
use crate::vetting::{self, Finding};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How many drafts and pending requests one person may have at once (an inbox is not a
/// place to flood).
pub const MAX_OPEN_REQUESTS: i64 = 20;

/// A request as the form or the API gives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    pub kind: Kind,
    /// Catalog requests: the entry, the settings it needs, and optionally another server name.
    #[serde(default)]
    pub catalog: Option<String>,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Custom requests: the server.
    #[serde(default)]
    pub server: Option<CustomServer>,
    /// Access requests: the active server wanted.
    #[serde(default)]
    pub access_to: Option<String>,
    #[serde(default)]
    pub justification: Justification,
    #[serde(default)]
    pub origin: Origin,
    #[serde(default)]
    pub sensitive: bool,
    #[serde(default)]
    pub urgent: bool,
    /// Submit for review now (default) or keep as a draft.
    #[serde(default = "yes")]
    pub submit: bool,
}

fn yes() -> bool {
    true
}

/// A request made or changed, with what the requester should know.
#[derive(Debug)]
pub struct Saved {
    pub request: Request,
    pub warnings: Vec<String>,
}

fn bad(error: crate::registry::Invalid) -> ApiError {
    ApiError::BadRequest(error.0)
}

fn stale() -> ApiError {
    ApiError::Internal(StoreError::Open("the registry snapshot is stale".into()))
}

fn seal(state: &AppState, id: &str, secrets: &ProposalSecrets) -> String {
    state.keys.secrets.seal_text(&serde_json::to_vec(secrets).unwrap_or_default(), id.as_bytes())
}

/// The request's proposal with its secrets, opened.
pub fn checked(state: &AppState, request: &Request) -> Result<Option<Checked>, ApiError> {
    let Some(proposal) = &request.proposal else { return Ok(None) };
    let secrets = match &request.sealed_secrets {
        Some(sealed) => {
            let bytes = state
                .keys
                .secrets
                .open_text(sealed, request.id.as_bytes())
                .map_err(|_| ApiError::Internal(StoreError::Open("a request's secrets cannot be opened".into())))?;
            serde_json::from_slice(&bytes).unwrap_or_default()
        }
        None => ProposalSecrets::default(),
    };
    Ok(Some(Checked { proposal: proposal.clone(), secrets }))
}

/// The active server that is the same as `proposal`, if any.
fn same_as_active(snapshot: &Snapshot, proposal: &Proposal) -> Option<String> {
    let mut names: Vec<&String> = snapshot.servers.keys().collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let server = &snapshot.servers[name].server;
        requests::same_server(proposal, server.url.as_deref(), server.command.as_deref(), &server.args)
            .then(|| name.clone())
    })
}

/// Build the request `form` describes (not stored yet). `carried` are secrets of the request
/// this one resubmits, used where the form leaves a value out.
async fn build(
    state: &AppState,
    user: &UserEntry,
    id: &str,
    form: NewRequest,
    carried: Option<&Checked>,
) -> Result<Saved, ApiError> {
    let snapshot = state.snapshot.current().map_err(|_| stale())?;
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let mut warnings = Vec::new();
    let mut catalog_risk = None;
    let (server, catalog_entry, checked) = match form.kind {
        Kind::Catalog => {
            let name = form.catalog.as_deref().map(str::trim).filter(|name| !name.is_empty()).ok_or_else(|| {
                ApiError::BadRequest("a catalog request names the catalog entry (\"catalog\": \"slack\")".into())
            })?;
            let stored = store::catalog::get(&mut connection, name)
                .await?
                .filter(|stored| stored.retired_at.is_none())
                .ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "the catalog has no entry {name:?} on offer; see GET /api/v1/catalog for the entries"
                    ))
                })?;
            catalog_risk = Some(stored.entry.risk);
            let mut settings = form.settings.clone();
            if let Some(carried) = carried {
                for (key, value) in &carried.secrets.env {
                    settings.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            let checked = requests::from_catalog(&stored.entry, form.name.as_deref(), &settings).map_err(bad)?;
            (checked.proposal.name.clone(), Some(stored.entry.name.clone()), Some(checked))
        }
        Kind::Custom => {
            let mut server = form.server.clone().ok_or_else(|| {
                ApiError::BadRequest(
                    "a custom request describes the server: \"server\": {\"name\", \"description\", \"transport\", \
                     \"url\" or \"command\"/\"args\", \"env\", \"headers\"}"
                        .into(),
                )
            })?;
            if let Some(carried) = carried {
                for (key, value) in &carried.secrets.env {
                    server.env.entry(key.clone()).or_insert_with(|| value.clone());
                }
                for (key, value) in &carried.secrets.headers {
                    server.headers.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            let checked = server.check().map_err(bad)?;
            (checked.proposal.name.clone(), None, Some(checked))
        }
        Kind::Access => {
            let name = form.access_to.as_deref().map(str::trim).filter(|name| !name.is_empty()).ok_or_else(|| {
                ApiError::BadRequest("an access request names the active server (\"access_to\": \"github\")".into())
            })?;
            if !snapshot.servers.contains_key(name) {
                return Err(ApiError::NotFound(format!(
                    "no active server is named {name:?}; request it as a catalog or custom server instead"
                )));
            }
            let entry = snapshot.users.get(&user.id).cloned().unwrap_or_else(|| Arc::new(user.clone()));
            if crate::access::servers_of(&snapshot, &entry).contains(&name) {
                return Err(ApiError::Conflict(format!("you can already use {name}; there is nothing to request")));
            }
            (name.to_owned(), None, None)
        }
    };
    let mut duplicate_of = None;
    if let Some(checked) = &checked {
        ServerSlug::parse(&checked.proposal.name).map_err(bad)?;
        duplicate_of = same_as_active(&snapshot, &checked.proposal);
        // The same catalog entry made into a server before (whatever its settings).
        if duplicate_of.is_none()
            && let Some(entry) = &catalog_entry
        {
            let approved = store::requests::list(
                &mut connection,
                &store::requests::Filter {
                    state: Some(State::Approved),
                    kind: Some(Kind::Catalog),
                    ..Default::default()
                },
                1000,
            )
            .await?;
            duplicate_of = approved
                .into_iter()
                .find(|other| {
                    other.catalog_entry.as_ref() == Some(entry) && snapshot.servers.contains_key(&other.server)
                })
                .map(|other| other.server);
        }
        if duplicate_of.is_none() && snapshot.servers.contains_key(&checked.proposal.name) {
            return Err(ApiError::Conflict(format!(
                "a different server is already named {:?}; choose another name (\"name\")",
                checked.proposal.name
            )));
        }
        if let Some(existing) = &duplicate_of {
            warnings.push(format!(
                "the active server {existing} is this server already: ask for access to it instead (kind \"access\", \
                 access_to \"{existing}\"); if you submit anyway, the reviewer sees it flagged as a duplicate"
            ));
        }
    }
    let open = store::requests::list(
        &mut connection,
        &store::requests::Filter {
            requester_id: Some(user.id.clone()),
            server: Some(server.clone()),
            ..Default::default()
        },
        50,
    )
    .await?;
    let mine = store::requests::list(
        &mut connection,
        &store::requests::Filter { requester_id: Some(user.id.clone()), ..Default::default() },
        MAX_OPEN_REQUESTS + 50,
    )
    .await?;
    let open_count =
        mine.iter().filter(|other| other.id != id && matches!(other.state, State::Draft | State::Pending)).count();
    if open_count as i64 >= MAX_OPEN_REQUESTS {
        return Err(ApiError::Conflict(format!(
            "you have {open_count} open requests (drafts and pending); withdraw some or wait for decisions before \
             asking for more"
        )));
    }
    if let Some(open) = open.iter().find(|other| other.id != id && matches!(other.state, State::Draft | State::Pending))
    {
        return Err(ApiError::Conflict(format!(
            "you already have a {} request for {server} ({}); edit or withdraw it instead",
            open.state.as_str(),
            open.id
        )));
    }
    if form.submit {
        form.justification.check_complete().map_err(bad)?;
    }
    let now = store::now_ms();
    let request = Request {
        id: id.to_owned(),
        kind: form.kind,
        state: if form.submit { State::Pending } else { State::Draft },
        requester_id: user.id.clone(),
        requester_email: user.email.clone(),
        server,
        catalog_entry,
        proposal: checked.as_ref().map(|checked| checked.proposal.clone()),
        sealed_secrets: checked.as_ref().map(|checked| seal(state, id, &checked.secrets)),
        justification: form.justification,
        origin: form.origin,
        sensitive: form.sensitive,
        urgent: form.urgent,
        tier: requests::tier_of(form.kind, catalog_risk, form.origin, form.sensitive, form.urgent),
        duplicate_of,
        previous_id: None,
        next_id: None,
        created_at: now,
        submitted_at: form.submit.then_some(now),
        updated_at: now,
        decided_at: None,
        decided_by: None,
        decision: None,
        test_running_since: None,
        test_step: None,
        test: None,
    };
    Ok(Saved { request, warnings })
}

fn event(state: &AppState, user: &UserEntry, method: &str, request: &Request, reason: String) -> AuditEvent {
    let mut event =
        AuditEvent::action(&user.email, Some(&user.id), method, Some(&request.server), true, &reason, &state.replica);
    event.detail = Some(json!({"request": request.id, "kind": request.kind, "tier": request.tier}).to_string());
    event
}

/// Tell every admin who decides requests that one is waiting.
async fn notify_reviewers(
    connection: &mut sqlx::AnyConnection,
    snapshot: &Snapshot,
    request: &Request,
) -> Result<(), StoreError> {
    let what = match request.kind {
        Kind::Access => format!("access to {}", request.server),
        Kind::Catalog => format!("the catalog server {}", request.server),
        Kind::Custom => format!("the custom server {}", request.server),
    };
    for admin in snapshot.users.values().filter(|user| user.can(Power::ManageServers)) {
        crate::notify::tell(
            &mut *connection,
            crate::notify::Recipient { user_id: &admin.id, email: &admin.email },
            "request-submitted",
            &format!("New request: {what}"),
            &format!("{} asks for {what} ({}).", request.requester_email, request.tier.label()),
            &format!("/console/requests/{}", request.id),
            crate::notify::Mail::IfAlertsOn,
        )
        .await?;
    }
    Ok(())
}

/// Create a request (a draft, or submitted for review).
pub async fn create(state: &AppState, user: &UserEntry, form: NewRequest) -> Result<Saved, ApiError> {
    let id = crate::crypto::new_id();
    let saved = build(state, user, &id, form, None).await?;
    store_new(state, user, saved).await
}

async fn store_new(state: &AppState, user: &UserEntry, saved: Saved) -> Result<Saved, ApiError> {
    let snapshot = state.snapshot.current().map_err(|_| stale())?;
    let request = &saved.request;
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    store::requests::insert(&mut transaction, request).await?;
    if let Some(previous) = &request.previous_id
        && !store::requests::link_next(&mut transaction, previous, &request.id).await?
    {
        return Err(ApiError::Conflict(format!(
            "request {previous} was resubmitted already, or is not rejected; only a rejected request is resubmitted, \
             once"
        )));
    }
    let (method, verb) = match (request.state, &request.previous_id) {
        (State::Pending, Some(_)) => ("request/resubmit", "resubmitted"),
        (State::Pending, None) => ("request/submit", "submitted"),
        _ => ("request/draft", "drafted"),
    };
    let reason = format!("{} {verb} a {} request for {}", user.email, request.kind.as_str(), request.server);
    store::audit::insert(&mut transaction, &[event(state, user, method, request, reason)]).await?;
    if request.state == State::Pending {
        notify_reviewers(&mut transaction, &snapshot, request).await?;
    }
    transaction.commit().await.map_err(StoreError::from)?;
    state.mailer.wake();
    Ok(saved)
}

/// Load a request `user` may see: their own, or any for those who review requests.
pub async fn visible(state: &AppState, user: &UserEntry, id: &str) -> Result<Request, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let request = store::requests::get(&mut connection, id).await?;
    match request {
        Some(request) if request.requester_id == user.id || may_review(user) => Ok(request),
        _ => Err(ApiError::NotFound(format!("no request {id:?} of yours"))),
    }
}

/// Who sees every request: IT admins (who decide), security admins and auditors.
pub fn may_review(user: &UserEntry) -> bool {
    user.can(Power::ManageServers) || user.can(Power::ManagePolicies) || user.can(Power::ReadAudit)
}

async fn own(state: &AppState, user: &UserEntry, id: &str) -> Result<Request, ApiError> {
    let request = visible(state, user, id).await?;
    if request.requester_id != user.id {
        return Err(ApiError::Forbidden(format!("request {id} is {}'s; only they change it", request.requester_email)));
    }
    Ok(request)
}

/// Replace a draft with `form` (submitting it if the form says so).
pub async fn edit(state: &AppState, user: &UserEntry, id: &str, form: NewRequest) -> Result<Saved, ApiError> {
    let existing = own(state, user, id).await?;
    if existing.state != State::Draft {
        return Err(ApiError::Conflict(format!(
            "request {id} is {}; only drafts are edited (a rejected request is resubmitted)",
            existing.state.as_str()
        )));
    }
    let carried = checked(state, &existing)?;
    let submit = form.submit;
    let mut saved = build(state, user, id, NewRequest { submit: false, ..form }, carried.as_ref()).await?;
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    if !store::requests::update_draft(&mut transaction, &saved.request).await? {
        return Err(ApiError::Conflict(format!("request {id} is no longer a draft")));
    }
    transaction.commit().await.map_err(StoreError::from)?;
    if submit {
        saved.request = self::submit(state, user, id).await?;
    }
    Ok(saved)
}

/// Send a draft for review.
pub async fn submit(state: &AppState, user: &UserEntry, id: &str) -> Result<Request, ApiError> {
    let request = own(state, user, id).await?;
    request.justification.check_complete().map_err(bad)?;
    let snapshot = state.snapshot.current().map_err(|_| stale())?;
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    if !store::requests::transition(&mut transaction, id, &[State::Draft], State::Pending).await? {
        return Err(ApiError::Conflict(format!(
            "request {id} is {}; only a draft is submitted",
            request.state.as_str()
        )));
    }
    let reason = format!("{} submitted a {} request for {}", user.email, request.kind.as_str(), request.server);
    store::audit::insert(&mut transaction, &[event(state, user, "request/submit", &request, reason)]).await?;
    notify_reviewers(&mut transaction, &snapshot, &request).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    state.mailer.wake();
    visible(state, user, id).await
}

/// Take back a draft or a pending request.
pub async fn withdraw(state: &AppState, user: &UserEntry, id: &str) -> Result<Request, ApiError> {
    let request = own(state, user, id).await?;
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    if !store::requests::transition(&mut transaction, id, &[State::Draft, State::Pending], State::Withdrawn).await? {
        return Err(ApiError::Conflict(format!(
            "request {id} is {} and can no longer be withdrawn",
            request.state.as_str()
        )));
    }
    let reason = format!("{} withdrew the request for {}", user.email, request.server);
    store::audit::insert(&mut transaction, &[event(state, user, "request/withdraw", &request, reason)]).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    visible(state, user, id).await
}

/// Resubmit a rejected request with changes: a new request linked to the old one. Secrets the
/// form leaves out are carried over from the rejected request.
pub async fn resubmit(state: &AppState, user: &UserEntry, id: &str, form: NewRequest) -> Result<Saved, ApiError> {
    let previous = own(state, user, id).await?;
    if previous.state != State::Rejected {
        return Err(ApiError::Conflict(format!(
            "request {id} is {}; only a rejected request is resubmitted",
            previous.state.as_str()
        )));
    }
    if let Some(next) = &previous.next_id {
        return Err(ApiError::Conflict(format!("request {id} was resubmitted already as {next}")));
    }
    let carried = checked(state, &previous)?;
    let new_id = crate::crypto::new_id();
    let mut saved = build(state, user, &new_id, form, carried.as_ref()).await?;
    saved.request.previous_id = Some(previous.id.clone());
    store_new(state, user, saved).await
}

/// The reviewer of a decision: an IT admin (or super admin).
fn reviewer(user: &UserEntry) -> Result<(), ApiError> {
    if user.can(Power::ManageServers) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "{} needs the it-admin or super-admin role to test and decide server requests",
        user.email
    )))
}

/// Why a pending-only action cannot happen to `request`.
fn not_pending(request: &Request) -> ApiError {
    let by = request.decided_by.as_deref().map(|by| format!(" by {by}")).unwrap_or_default();
    let at = request.decided_at.map(|at| format!(" at {}", crate::time::iso_time(at))).unwrap_or_default();
    let what = match request.state {
        State::Withdrawn => "was withdrawn by the requester".to_owned(),
        State::Draft => "is a draft the requester has not submitted".to_owned(),
        other => format!("was {} already{by}{at}", other.as_str()),
    };
    ApiError::Conflict(format!("request {} {what}; nothing was changed", request.id))
}

/// Start the connection test of a request in the background. Its progress and result are
/// stored with the request.
pub async fn start_test(state: &AppState, admin: &UserEntry, id: &str) -> Result<(), ApiError> {
    reviewer(admin)?;
    let request = visible(state, admin, id).await?;
    let checked = checked(state, &request)?.ok_or_else(|| {
        ApiError::BadRequest(format!(
            "request {id} asks for access to the active server {}: there is nothing to test",
            request.server
        ))
    })?;
    if !matches!(request.state, State::Pending | State::Draft | State::Rejected) {
        return Err(ApiError::Conflict(format!(
            "request {id} is {}; its server is no longer tested",
            request.state.as_str()
        )));
    }
    let stale_after = (conntest::TIME_LIMIT.as_millis() as i64) * 2;
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    if !store::requests::start_test(&mut connection, id, stale_after).await? {
        return Err(ApiError::Conflict(format!("a connection test of request {id} is running already")));
    }
    drop(connection);
    let state = state.clone();
    let admin = admin.email.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        let (progress, mut steps) = tokio::sync::watch::channel("starting");
        let writer_state = state.clone();
        let writer_id = id.clone();
        let writer = tokio::spawn(async move {
            while steps.changed().await.is_ok() {
                let step = *steps.borrow_and_update();
                if let Ok(mut connection) = writer_state.store.pool.acquire().await {
                    let _ = store::requests::test_step(&mut connection, &writer_id, step).await;
                }
            }
        });
        let entry = conntest::entry_for(&id, &checked);
        let mut result = conntest::run(&state.upstreams, &entry, &admin, &progress).await;
        // A server where each person signs in refuses the test's anonymous connection; say
        // whether its OAuth can be discovered, which is what approval will rely on.
        if result.outcome == conntest::Outcome::AuthFailed
            && checked.proposal.auth == crate::catalog::AuthMethod::Oauth
            && let Some(url) = checked.proposal.url.as_deref()
        {
            let settings = crate::registry::OAuthUpstream {
                scopes: checked.proposal.oauth_scopes.clone(),
                client_id: None,
                internal: checked.internal(),
            };
            let found = crate::auth::upstream::discover(url, &settings, state.upstream_tokens.roots()).await;
            result.detail = match found {
                Ok(found) => format!(
                    "{} — expected: each person signs in with their own account (OAuth). Discovery works: \
                     authorization server {}, PKCE supported{}; after approval people connect from My servers",
                    result.detail,
                    found.issuer,
                    if found.registration_endpoint.is_some() { ", dynamic registration offered" } else { "" }
                ),
                Err(error) => format!("{} — and its OAuth cannot be discovered: {error}", result.detail),
            };
        }
        drop(progress);
        let _ = writer.await;
        record_test(&state, &id, &admin, &result).await;
    });
    Ok(())
}

async fn record_test(state: &AppState, id: &str, admin: &str, result: &TestResult) {
    let written = async {
        let mut transaction = state.store.begin_write().await?;
        store::requests::finish_test(&mut transaction, id, result).await?;
        let reason = format!("{admin} tested the connection of request {id}: {}", result.outcome.label());
        let mut event = AuditEvent::action(admin, None, "request/test", Some(id), true, &reason, &state.replica);
        event.detail = Some(json!({"request": id, "outcome": result.outcome, "detail": result.detail}).to_string());
        store::audit::insert(&mut transaction, &[event]).await?;
        transaction.commit().await?;
        Ok::<_, StoreError>(())
    }
    .await;
    if let Err(error) = written {
        tracing::error!(%error, request = id, "the connection test result could not be stored");
    }
}

/// The automated checks of a request, as things stand.
pub async fn findings(state: &AppState, request: &Request) -> Result<Vec<Finding>, ApiError> {
    let Some(proposal) = &request.proposal else { return Ok(Vec::new()) };
    let snapshot = state.snapshot.current().map_err(|_| stale())?;
    let entry = match &request.catalog_entry {
        Some(name) => {
            let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
            store::catalog::get(&mut connection, name).await?.map(|stored| stored.entry)
        }
        None => None,
    };
    let active_tools: Vec<(String, String)> = snapshot
        .tools
        .iter()
        .filter(|(server, _)| snapshot.servers.contains_key(*server))
        .flat_map(|(server, tools)| tools.tools.keys().map(move |tool| (server.clone(), tool.clone())))
        .collect();
    Ok(vetting::review(&vetting::Subject {
        proposal,
        catalog: entry.as_ref(),
        justification: &request.justification,
        sensitive: request.sensitive,
        duplicate_of: request.duplicate_of.as_deref(),
        test: request.test.as_ref(),
        active_tools: &active_tools,
    }))
}

/// An approval as the reviewer confirms it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    #[serde(default)]
    pub checklist: Checklist,
    /// The access rule created for the requester (default: the requester, whole server).
    #[serde(default)]
    pub grant: Grant,
    /// Put the server on the high-risk list.
    #[serde(default)]
    pub high_risk: bool,
}

/// Approve a pending request: the server goes live (catalog and custom requests), an access
/// rule is created, the requester is told, and the decision is audited with the checklist.
pub async fn approve(state: &AppState, admin: &UserEntry, id: &str, approval: Approval) -> Result<Request, ApiError> {
    reviewer(admin)?;
    let request = visible(state, admin, id).await?;
    if request.state != State::Pending {
        return Err(not_pending(&request));
    }
    if request.kind != Kind::Access || !approval.checklist.is_empty() {
        requests::check_checklist(&approval.checklist).map_err(bad)?;
    }
    let spec = match checked(state, &request)? {
        Some(checked) => Some(checked.spec().map_err(bad)?),
        None => None,
    };
    let rule = approval.grant.rule(&request.id, &request.server, &request.requester_email).map_err(bad)?;
    let checks = findings(state, &request)
        .await?
        .into_iter()
        .map(|finding| (finding.id.to_owned(), finding.level.as_str().to_owned()))
        .collect();
    let mut decision = Decision {
        checklist: approval.checklist.clone(),
        grant: Some(approval.grant.clone()),
        checks,
        ..Decision::default()
    };
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    // The guard comes first: it takes the row, so a concurrent approval waits here and then
    // finds the request decided.
    if !store::requests::decide(&mut transaction, id, State::Approved, &admin.email, &decision).await? {
        drop(transaction);
        let now = visible(state, admin, id).await?;
        return Err(not_pending(&now));
    }
    if let Some(spec) = &spec {
        if store::registry::get_server(&mut transaction, spec.name.as_str()).await?.is_some() {
            return Err(ApiError::Conflict(format!(
                "a server named {} was added since the request was made; reject this request with a note to \
                 rename it, or grant access to the existing server",
                spec.name
            )));
        }
        crate::apply::put_server(&mut transaction, &state.keys, spec).await?;
    } else if store::registry::get_server(&mut transaction, &request.server).await?.is_none() {
        return Err(ApiError::Conflict(format!(
            "the server {} no longer exists; reject the request and point the requester to its successor",
            request.server
        )));
    }
    let saved =
        crate::rules::save(&mut transaction, &rule, None, &admin.email, &state.replica).await.map_err(|error| {
            match error {
                crate::rules::SaveError::Invalid(text) => ApiError::BadRequest(text),
                crate::rules::SaveError::Store(error) => ApiError::Internal(error),
            }
        })?;
    decision.rule_id = Some(saved.rule.id.clone());
    store::requests::set_decision(&mut transaction, id, &decision).await?;
    // Pin what the connection test read; without one, the first listing pins.
    if spec.is_some()
        && let Some(test) = request
            .test
            .as_ref()
            .filter(|test| matches!(test.outcome, conntest::Outcome::Success | conntest::Outcome::NoTools))
    {
        let items = crate::pinning::items_of(test);
        crate::pinning::pin_items(&mut transaction, &request.server, &items, &admin.email).await?;
    }
    if approval.high_risk {
        let note = format!("marked when request {id} was approved");
        store::requests::mark_high_risk(&mut transaction, &request.server, &note, &admin.email).await?;
    }
    let reason = format!("{} approved the {} request for {}", admin.email, request.kind.as_str(), request.server);
    let mut event = AuditEvent::action(
        &admin.email,
        Some(&admin.id),
        "request/approve",
        Some(&request.server),
        true,
        &reason,
        &state.replica,
    );
    event.detail = Some(
        json!({"request": id, "requester": request.requester_email, "checklist": decision.checklist,
               "checks": decision.checks, "rule": saved.rule.id, "server_created": spec.is_some()})
        .to_string(),
    );
    store::audit::insert(&mut transaction, &[event]).await?;
    crate::notify::tell(
        &mut transaction,
        crate::notify::Recipient { user_id: &request.requester_id, email: &request.requester_email },
        "request-approved",
        &format!("Approved: {}", request.server),
        &format!(
            "{} approved your request. Connect your MCP client to /mcp/{} (or /mcp, where its tools appear as {}__…).",
            admin.email, request.server, request.server
        ),
        &format!("/console/requests/{id}"),
        crate::notify::Mail::Always,
    )
    .await?;
    transaction.commit().await.map_err(StoreError::from)?;
    state.mailer.wake();
    if let Err(error) = state.snapshot.reload(&state.store, &state.keys).await {
        tracing::warn!(%error, "snapshot reload after an approval failed; the refresher will retry");
    }
    // Initialise the connection: without a successful test to pin from, read the new server
    // now (in the background) so its tools are pinned before anyone lists them.
    let tested = request.test.as_ref().is_some_and(|test| test.outcome == conntest::Outcome::Success);
    if spec.is_some() && !tested {
        let state = state.clone();
        let server = request.server.clone();
        tokio::spawn(async move {
            match crate::pinning::check(&state, &server, "approval").await {
                Ok(report) => {
                    tracing::info!(%server, outcome = ?report.outcome, items = report.items, "approved server read")
                }
                Err(error) => tracing::warn!(%server, %error, "the approved server could not be read yet"),
            }
        });
    }
    visible(state, admin, id).await
}

/// A rejection: the specific reason and the next steps are required.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    pub reason: String,
    pub next_steps: String,
    #[serde(default)]
    pub checklist: Checklist,
}

pub async fn reject(state: &AppState, admin: &UserEntry, id: &str, rejection: Rejection) -> Result<Request, ApiError> {
    reviewer(admin)?;
    requests::check_rejection(&rejection.reason, &rejection.next_steps).map_err(bad)?;
    let request = visible(state, admin, id).await?;
    if request.state != State::Pending {
        return Err(not_pending(&request));
    }
    let decision = Decision {
        reason: rejection.reason.trim().to_owned(),
        next_steps: rejection.next_steps.trim().to_owned(),
        checklist: rejection.checklist,
        ..Decision::default()
    };
    let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
    if !store::requests::decide(&mut transaction, id, State::Rejected, &admin.email, &decision).await? {
        drop(transaction);
        let now = visible(state, admin, id).await?;
        return Err(not_pending(&now));
    }
    let reason = format!("{} rejected the request for {}: {}", admin.email, request.server, decision.reason);
    let mut event = AuditEvent::action(
        &admin.email,
        Some(&admin.id),
        "request/reject",
        Some(&request.server),
        true,
        &reason,
        &state.replica,
    );
    event.detail = Some(
        json!({"request": id, "requester": request.requester_email, "reason": decision.reason,
               "next_steps": decision.next_steps, "checklist": decision.checklist})
        .to_string(),
    );
    store::audit::insert(&mut transaction, &[event]).await?;
    crate::notify::tell(
        &mut transaction,
        crate::notify::Recipient { user_id: &request.requester_id, email: &request.requester_email },
        "request-rejected",
        &format!("Not approved: {}", request.server),
        &format!("Reason: {}\nNext steps: {}", decision.reason, decision.next_steps),
        &format!("/console/requests/{id}"),
        crate::notify::Mail::Always,
    )
    .await?;
    transaction.commit().await.map_err(StoreError::from)?;
    state.mailer.wake();
    visible(state, admin, id).await
}

/// The review targets in force.
pub async fn targets(connection: &mut sqlx::AnyConnection) -> Result<Targets, StoreError> {
    Ok(store::settings::get(connection, Targets::SETTING)
        .await?
        .map(|text| Targets::from_json(&text))
        .unwrap_or_default())
}

/// When a pending request is due, and whether it is overdue at `now`.
pub fn due(targets: &Targets, request: &Request, now: i64) -> Option<(i64, bool)> {
    let submitted = request.submitted_at?;
    let deadline = targets.get(request.tier).deadline(submitted);
    Some((deadline, request.state == State::Pending && now > deadline))
}

/// A tier's target, for people.
pub fn target_text(targets: &Targets, tier: Tier) -> String {
    targets.get(tier).describe()
}

/// Who asked, for the reviewer: the guide's requester information.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Requester {
    pub name: String,
    pub email: String,
    pub department: String,
    pub title: String,
    pub team: String,
    pub groups: Vec<String>,
    /// Their other requests: (id, server, state), newest first.
    pub previous: Vec<(String, String, State)>,
    /// The servers they can use now.
    pub access: Vec<String>,
}

pub async fn requester(state: &AppState, request: &Request) -> Result<Requester, ApiError> {
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let person = store::directory::get_person(&mut connection, &request.requester_id).await?;
    let others = store::requests::list(
        &mut connection,
        &store::requests::Filter { requester_id: Some(request.requester_id.clone()), ..Default::default() },
        200,
    )
    .await?;
    let snapshot = state.snapshot.current().map_err(|_| stale())?;
    let access = snapshot
        .users
        .get(&request.requester_id)
        .map(|user| crate::access::servers_of(&snapshot, user).into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut previous: Vec<(String, String, State)> = others
        .iter()
        .filter(|other| other.id != request.id)
        .map(|other| (other.id.clone(), other.server.clone(), other.state))
        .collect();
    previous.truncate(50);
    Ok(match person {
        Some(person) => Requester {
            name: person.name,
            email: person.email,
            department: person.department,
            title: person.title,
            team: person.team,
            groups: person.groups.into_iter().map(|(_, name)| name).collect(),
            previous,
            access,
        },
        None => Requester {
            name: String::new(),
            email: request.requester_email.clone(),
            department: String::new(),
            title: String::new(),
            team: String::new(),
            groups: Vec::new(),
            previous,
            access,
        },
    })
}

/// The monthly review's numbers (the admin guide's "Continuous improvement" questions).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Metrics {
    pub days: i64,
    pub since: i64,
    /// Requests made in the period.
    pub requested: usize,
    /// Most requested servers: (server, requests).
    pub most_requested: Vec<(String, usize)>,
    /// Rejections in the period, by checklist section marked as a concern.
    pub rejections_by_concern: Vec<(String, usize)>,
    /// The rejections themselves: (server, reason), newest first.
    pub rejection_reasons: Vec<(String, String)>,
    /// Per tier: decisions, median hours to decision, the target in hours, share within target.
    pub time_to_decision: Vec<TierTiming>,
    /// Pending now, per tier: (tier, pending, overdue).
    pub backlog: Vec<(Tier, usize, usize)>,
    /// Requests per week, oldest first: (week start, count).
    pub weekly: Vec<(i64, usize)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TierTiming {
    pub tier: Tier,
    pub decided: usize,
    pub median_hours: f64,
    pub target_hours: f64,
    pub within_target: f64,
}

/// Compute the review metrics over the last `days` days.
pub async fn metrics(state: &AppState, days: i64) -> Result<Metrics, StoreError> {
    const DAY: i64 = 86_400_000;
    let days = days.clamp(1, 366);
    let now = store::now_ms();
    let since = now - days * DAY;
    let mut connection = state.store.pool.acquire().await?;
    let targets = targets(&mut connection).await?;
    let all = store::requests::list(&mut connection, &store::requests::Filter::default(), 5000).await?;
    drop(connection);
    let recent: Vec<&Request> = all.iter().filter(|request| request.created_at >= since).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for request in &recent {
        *counts.entry(request.server.clone()).or_default() += 1;
    }
    let mut most_requested: Vec<(String, usize)> = counts.into_iter().collect();
    most_requested.sort_by(|left, right| right.1.cmp(&left.1).then(left.0.cmp(&right.0)));
    most_requested.truncate(10);
    let rejected: Vec<&Request> = all
        .iter()
        .filter(|request| request.state == State::Rejected && request.decided_at.is_some_and(|at| at >= since))
        .collect();
    let mut concerns: BTreeMap<String, usize> = BTreeMap::new();
    for request in &rejected {
        let sections: Vec<&requests::Section> = request
            .decision
            .iter()
            .flat_map(|decision| decision.checklist.iter())
            .filter(|(_, answer)| answer.mark == requests::Mark::Concern)
            .map(|(section, _)| section)
            .collect();
        if sections.is_empty() {
            *concerns.entry("no checklist concern recorded".into()).or_default() += 1;
        }
        for section in sections {
            *concerns.entry(section.question().to_owned()).or_default() += 1;
        }
    }
    let mut rejections_by_concern: Vec<(String, usize)> = concerns.into_iter().collect();
    rejections_by_concern.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    let mut rejection_reasons: Vec<(i64, String, String)> = rejected
        .iter()
        .map(|request| {
            let reason = request.decision.as_ref().map(|decision| decision.reason.clone()).unwrap_or_default();
            (request.decided_at.unwrap_or(0), request.server.clone(), reason)
        })
        .collect();
    rejection_reasons.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let time_to_decision = Tier::ALL
        .iter()
        .filter_map(|tier| {
            let mut hours: Vec<f64> = all
                .iter()
                .filter(|request| request.tier == *tier && request.decided_at.is_some_and(|at| at >= since))
                .filter_map(|request| Some((request.decided_at? - request.submitted_at?) as f64 / 3_600_000.0))
                .collect();
            if hours.is_empty() {
                return None;
            }
            hours.sort_by(|left, right| left.total_cmp(right));
            let within = all
                .iter()
                .filter(|request| request.tier == *tier && request.decided_at.is_some_and(|at| at >= since))
                .filter(|request| {
                    let (Some(submitted), Some(decided)) = (request.submitted_at, request.decided_at) else {
                        return false;
                    };
                    decided <= targets.get(*tier).deadline(submitted)
                })
                .count();
            let target = targets.get(*tier);
            Some(TierTiming {
                tier: *tier,
                decided: hours.len(),
                median_hours: hours[hours.len() / 2],
                target_hours: (target.deadline(now) - now) as f64 / 3_600_000.0,
                within_target: within as f64 / hours.len() as f64,
            })
        })
        .collect();
    let backlog = Tier::ALL
        .iter()
        .map(|tier| {
            let pending: Vec<&Request> =
                all.iter().filter(|request| request.state == State::Pending && request.tier == *tier).collect();
            let overdue =
                pending.iter().filter(|request| due(&targets, request, now).is_some_and(|(_, late)| late)).count();
            (*tier, pending.len(), overdue)
        })
        .collect();
    let weeks = (days + 6) / 7;
    let weekly = (0..weeks)
        .rev()
        .map(|back| {
            let start = now - (back + 1) * 7 * DAY;
            let end = start + 7 * DAY;
            (start, all.iter().filter(|request| request.created_at >= start && request.created_at < end).count())
        })
        .collect();
    Ok(Metrics {
        days,
        since,
        requested: recent.len(),
        most_requested,
        rejections_by_concern,
        rejection_reasons: rejection_reasons.into_iter().take(20).map(|(_, server, reason)| (server, reason)).collect(),
        time_to_decision,
        backlog,
        weekly,
    })
}
