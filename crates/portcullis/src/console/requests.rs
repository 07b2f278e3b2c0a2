//! Server requests in the console: the employee's request form (catalog, custom or access)
//! and their requests; the admin inbox (pending first, with age, tier, target and overdue
//! highlighting); the request page with the requester, the configuration (secrets masked), the
//! justification, the technical details, the connection test with live progress, the automated
//! checks beside the seven-section checklist, and the approve and reject forms; and the in-app
//! inbox of notifications. The flows are [`crate::lifecycle`]'s, as in the API.

use super::html::{Filter, Html, cell, esc, facts, filters, link, note, rich_table};
use super::{AppState, Signed, csrf, csrf_ok, csrf_refusal, failure, redirect, require, respond};
use crate::api::ApiError;
use crate::catalog::AuthMethod;
use crate::conntest::{Outcome, STEPS};
use crate::lifecycle::{self, Approval, NewRequest, Rejection};
use crate::requests::{
    Answer, Checklist, CustomServer, Grant, GrantTo, Justification, Kind, Mark, Origin, Section, State as RequestState,
    Tier,
};
use crate::snapshot::UserEntry;
use crate::store::requests::{Filter as RequestFilter, Request};
use crate::store::{self, StoreError};
use crate::time::iso_time;
use crate::vetting::{Finding, Level};
use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// The signed-in person as the flows see them.
fn user_of(state: &AppState, signed: &Signed) -> Option<Arc<UserEntry>> {
    state.snapshot.current().ok()?.users.get(&signed.account.user_id).cloned()
}

/// The signed-in person and their snapshot entry, or the response that sends them away.
async fn signed_user(state: &AppState, headers: &HeaderMap) -> Result<(Signed, Arc<UserEntry>), Response> {
    let signed = require(state, headers).await?;
    match user_of(state, &signed) {
        Some(user) => Ok((signed, user)),
        None => Err(failure(&StoreError::Open("the registry snapshot is stale".into()))),
    }
}

/// [`signed_user`] for a form post, its CSRF token checked first.
async fn signed_user_form(
    state: &AppState,
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
) -> Result<(Signed, Arc<UserEntry>), Response> {
    if !csrf_ok(state, headers, form.get("csrf").map(String::as_str).unwrap_or("")) {
        return Err(csrf_refusal());
    }
    signed_user(state, headers).await
}

fn problem(error: &ApiError) -> String {
    match error {
        ApiError::Internal(StoreError::Conflict(text) | StoreError::NotFound(text)) => text.clone(),
        ApiError::Internal(error) => {
            tracing::error!(%error, "console request flow failed");
            "The store did not answer. Try again in a moment.".into()
        }
        other => other.to_string(),
    }
}

fn age(ms: i64, now: i64) -> String {
    let minutes = (now - ms).max(0) / 60_000;
    match minutes {
        0..60 => format!("{minutes} min"),
        60..2880 => format!("{} h", minutes / 60),
        _ => format!("{} days", minutes / 1440),
    }
}

fn state_badge(state: RequestState) -> Html {
    Html::trusted(format!("<span class=\"state state-{0}\">{0}</span>", state.as_str()))
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    tier: String,
    #[serde(default)]
    requester: String,
}

/// `GET /console/requests`: the person's requests and, for reviewers, the inbox.
pub async fn list(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<ListQuery>) -> Response {
    let (signed, user) = match signed_user(&state, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let reviewer = lifecycle::may_review(&user);
    let loaded = async {
        let mut connection = state.store.pool.acquire().await?;
        let mine = store::requests::list(
            &mut connection,
            &RequestFilter { requester_id: Some(user.id.clone()), ..RequestFilter::default() },
            200,
        )
        .await?;
        let targets = lifecycle::targets(&mut connection).await?;
        let inbox = if reviewer {
            let requester_id = match query.requester.trim() {
                "" => None,
                email => Some(
                    store::directory::person_by_email(&mut connection, email)
                        .await?
                        .map(|person| person.id)
                        .unwrap_or_else(|| "-".into()),
                ),
            };
            let filter = RequestFilter {
                state: if query.state.is_empty() {
                    Some(RequestState::Pending)
                } else {
                    RequestState::parse(&query.state)
                },
                kind: Kind::parse(&query.kind),
                tier: Tier::parse(&query.tier),
                requester_id,
                server: None,
            };
            store::requests::list(&mut connection, &filter, 500).await?
        } else {
            Vec::new()
        };
        Ok::<_, StoreError>((mine, inbox, targets))
    }
    .await;
    let (mine, inbox, targets) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return failure(&error),
    };
    let now = store::now_ms();
    let (csrf_token, set) = csrf(&state, &headers);
    let mut content = Html::new();
    content.push(Html::trusted(
        "<p class=\"actions\"><a class=\"button\" href=\"/console/requests/new?kind=catalog\">Request a catalog server</a> \
         <a class=\"button\" href=\"/console/requests/new?kind=custom\">Request a custom server</a> \
         <a class=\"button\" href=\"/console/requests/new?kind=access\">Ask for access to an active server</a></p>"
            .into(),
    ));
    if reviewer {
        content.push(Html::trusted("<h2>Inbox</h2>".into()));
        let states: Vec<&str> = RequestState::ALL.iter().map(|state| state.as_str()).collect();
        let tiers: Vec<&str> = Tier::ALL.iter().map(|tier| tier.as_str()).collect();
        let shown_state = if query.state.is_empty() { "pending" } else { query.state.as_str() };
        content.push(filters(
            "/console/requests",
            &[
                Filter { name: "state", label: "State", value: shown_state, options: &states },
                Filter { name: "kind", label: "Type", value: &query.kind, options: &["catalog", "custom", "access"] },
                Filter { name: "tier", label: "Tier", value: &query.tier, options: &tiers },
                Filter { name: "requester", label: "Requester", value: &query.requester, options: &[] },
            ],
        ));
        if inbox.is_empty() {
            content.push(note("hint", "No request matches."));
        } else {
            let rows: Vec<Vec<Html>> = inbox
                .iter()
                .map(|request| {
                    let due = lifecycle::due(&targets, request, now);
                    let due_cell = match due {
                        Some((at, true)) => Html::trusted(format!(
                            "<span class=\"overdue\">overdue since {}</span>",
                            esc(&iso_time(at))
                        )),
                        Some((at, false)) if request.state == RequestState::Pending => cell(&iso_time(at)),
                        _ => cell("—"),
                    };
                    vec![
                        link(&format!("/console/requests/{}", request.id), &request.server),
                        cell(request.kind.as_str()),
                        cell(&request.requester_email),
                        cell(&format!(
                            "{} (target {})",
                            request.tier.label(),
                            lifecycle::target_text(&targets, request.tier)
                        )),
                        cell(&request.submitted_at.map(|at| age(at, now)).unwrap_or_else(|| "—".into())),
                        due_cell,
                        state_badge(request.state),
                        cell(if request.duplicate_of.is_some() { "duplicate of an active server" } else { "" }),
                    ]
                })
                .collect();
            content.push(rich_table(&["Server", "Type", "Requester", "Tier", "Age", "Due", "State", "Flags"], &rows));
        }
        content.push(Html::trusted("<h2>Review targets</h2>".into()));
        if user.can(crate::registry::Power::ManageServers) {
            let mut form = format!(
                "<form method=\"post\" action=\"/console/request-targets\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
                esc(&csrf_token)
            );
            for tier in Tier::ALL {
                let _ = write!(
                    form,
                    "<label for=\"target-{0}\">{1} (now {2})</label><input id=\"target-{0}\" name=\"{0}\" value=\"{3}\">",
                    tier.as_str(),
                    esc(tier.label()),
                    esc(&lifecycle::target_text(&targets, tier)),
                    esc(&targets.get(tier).text())
                );
            }
            form.push_str("<small class=\"hint\">Hours as 8h, business days as 2d.</small><button type=\"submit\">Save targets</button></form>");
            content.push(Html::trusted(form));
        } else {
            let rows: Vec<Vec<String>> = Tier::ALL
                .iter()
                .map(|tier| vec![tier.label().to_owned(), lifecycle::target_text(&targets, *tier)])
                .collect();
            content.push(super::html::table(&["Tier", "Target"], &rows));
        }
        content.push(link("/console/requests/metrics", "Monthly review: metrics and charts"));
    }
    content.push(Html::trusted("<h2>My requests</h2>".into()));
    if mine.is_empty() {
        content.push(note("hint", "You have not requested anything yet."));
    } else {
        let rows: Vec<Vec<Html>> = mine
            .iter()
            .map(|request| {
                vec![
                    link(&format!("/console/requests/{}", request.id), &request.server),
                    cell(request.kind.as_str()),
                    cell(&iso_time(request.created_at)),
                    state_badge(request.state),
                ]
            })
            .collect();
        content.push(rich_table(&["Server", "Type", "Created", "State"], &rows));
    }
    respond(signed, &csrf_token, set, "Requests", content)
}

/// The request form as posted (and as shown again after a problem).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RequestForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    kind: String,
    /// Resubmit this rejected request.
    #[serde(default)]
    resubmit: String,
    /// Edit this draft.
    #[serde(default)]
    draft: String,
    #[serde(default)]
    catalog: String,
    #[serde(default)]
    access_to: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    transport: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    command: String,
    /// One argument per line.
    #[serde(default)]
    args: String,
    /// `NAME=value` per line (values are secret).
    #[serde(default)]
    env: String,
    /// `Name: value` per line (values are secret).
    #[serde(default)]
    headers: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    oauth_scopes: String,
    /// Catalog settings, `NAME=value` per line.
    #[serde(default)]
    settings: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    sensitive: Option<String>,
    #[serde(default)]
    urgent: Option<String>,
    #[serde(default)]
    why: String,
    #[serde(default)]
    use_case: String,
    #[serde(default)]
    expected_value: String,
    #[serde(default)]
    alternatives: String,
    /// `draft` or `submit`.
    #[serde(default)]
    intent: String,
    /// Submit although an active server is the same.
    #[serde(default)]
    confirm_duplicate: Option<String>,
}

fn pairs(text: &str, separator: char) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let Some((key, value)) = line.split_once(separator) else {
            return Err(format!("{line:?} is not NAME{separator}value"));
        };
        map.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(map)
}

impl RequestForm {
    fn new_request(&self) -> Result<NewRequest, String> {
        let kind =
            Kind::parse(&self.kind).ok_or("choose what to request: a catalog server, a custom server or access")?;
        let justification = Justification {
            why: self.why.trim().to_owned(),
            use_case: self.use_case.trim().to_owned(),
            expected_value: self.expected_value.trim().to_owned(),
            alternatives: self.alternatives.trim().to_owned(),
        };
        let auth = match self.auth.as_str() {
            "oauth" => Some(AuthMethod::Oauth),
            "api-key" => Some(AuthMethod::ApiKey),
            "none" => Some(AuthMethod::None),
            _ => None,
        };
        let server = (kind == Kind::Custom).then(|| -> Result<CustomServer, String> {
            Ok(CustomServer {
                name: self.name.trim().to_owned(),
                description: self.description.clone(),
                transport: self.transport.clone(),
                url: Some(self.url.clone()),
                command: Some(self.command.clone()),
                args: self.args.lines().map(str::trim).filter(|arg| !arg.is_empty()).map(str::to_owned).collect(),
                env: pairs(&self.env, '=')?,
                headers: pairs(&self.headers, ':')?,
                auth,
                oauth_scopes: self
                    .oauth_scopes
                    .split([',', ' ', '\n'])
                    .map(str::trim)
                    .filter(|scope| !scope.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        });
        Ok(NewRequest {
            kind,
            catalog: Some(self.catalog.clone()).filter(|name| !name.is_empty()),
            settings: pairs(&self.settings, '=')?,
            name: Some(self.name.clone()).filter(|name| !name.trim().is_empty()),
            server: server.transpose()?,
            access_to: Some(self.access_to.clone()).filter(|name| !name.is_empty()),
            justification,
            origin: if self.origin == "internal" { Origin::Internal } else { Origin::ThirdParty },
            sensitive: self.sensitive.is_some(),
            urgent: self.urgent.is_some(),
            submit: self.intent != "draft",
        })
    }

    /// The form of an existing request (secret values are never put back in a page).
    fn of(request: &Request) -> RequestForm {
        let proposal = request.proposal.as_ref();
        RequestForm {
            kind: request.kind.as_str().to_owned(),
            catalog: request.catalog_entry.clone().unwrap_or_default(),
            access_to: if request.kind == Kind::Access { request.server.clone() } else { String::new() },
            name: proposal.map(|proposal| proposal.name.clone()).unwrap_or_default(),
            description: proposal.map(|proposal| proposal.description.clone()).unwrap_or_default(),
            transport: proposal.map(|proposal| proposal.transport.as_str().to_owned()).unwrap_or_default(),
            url: proposal.and_then(|proposal| proposal.url.clone()).unwrap_or_default(),
            command: proposal.and_then(|proposal| proposal.command.clone()).unwrap_or_default(),
            args: proposal.map(|proposal| proposal.args.join("\n")).unwrap_or_default(),
            auth: proposal
                .map(|proposal| match proposal.auth {
                    AuthMethod::None => "none",
                    AuthMethod::ApiKey => "api-key",
                    AuthMethod::Oauth => "oauth",
                })
                .unwrap_or_default()
                .to_owned(),
            oauth_scopes: proposal.map(|proposal| proposal.oauth_scopes.join(" ")).unwrap_or_default(),
            origin: match request.origin {
                Origin::Internal => "internal".into(),
                Origin::ThirdParty => "third-party".into(),
            },
            sensitive: request.sensitive.then(|| "on".into()),
            urgent: request.urgent.then(|| "on".into()),
            why: request.justification.why.clone(),
            use_case: request.justification.use_case.clone(),
            expected_value: request.justification.expected_value.clone(),
            alternatives: request.justification.alternatives.clone(),
            ..RequestForm::default()
        }
    }
}

fn input(out: &mut String, name: &str, label: &str, value: &str, hint: &str) {
    let _ = write!(
        out,
        "<label for=\"{name}\">{}</label><input id=\"{name}\" name=\"{name}\" value=\"{}\">",
        esc(label),
        esc(value)
    );
    if !hint.is_empty() {
        let _ = write!(out, "<small class=\"hint\">{}</small>", esc(hint));
    }
}

fn textarea(out: &mut String, name: &str, label: &str, value: &str, hint: &str) {
    let _ = write!(
        out,
        "<label for=\"{name}\">{}</label><textarea id=\"{name}\" name=\"{name}\" rows=\"3\">{}</textarea>",
        esc(label),
        esc(value)
    );
    if !hint.is_empty() {
        let _ = write!(out, "<small class=\"hint\">{}</small>", esc(hint));
    }
}

fn select(out: &mut String, name: &str, label: &str, value: &str, options: &[(&str, &str)]) {
    let _ = write!(out, "<label for=\"{name}\">{}</label><select id=\"{name}\" name=\"{name}\">", esc(label));
    for (option, text) in options {
        let selected = if *option == value { " selected" } else { "" };
        let _ = write!(out, "<option value=\"{}\"{selected}>{}</option>", esc(option), esc(text));
    }
    out.push_str("</select>");
}

fn checkbox(out: &mut String, name: &str, label: &str, checked: bool) {
    let checked = if checked { " checked" } else { "" };
    let _ = write!(
        out,
        "<label class=\"check\"><input type=\"checkbox\" name=\"{name}\" value=\"on\"{checked}> {}</label>",
        esc(label)
    );
}

/// The request form for `form.kind`, filled with `form`.
fn request_form(csrf: &str, form: &RequestForm, entries: &[crate::catalog::Entry], servers: &[String]) -> Html {
    let mut out = String::from("<form method=\"post\" action=\"/console/requests\" class=\"wide\">");
    let _ = write!(out, "<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf));
    let _ = write!(out, "<input type=\"hidden\" name=\"kind\" value=\"{}\">", esc(&form.kind));
    for (name, value) in [("resubmit", &form.resubmit), ("draft", &form.draft)] {
        if !value.is_empty() {
            let _ = write!(out, "<input type=\"hidden\" name=\"{name}\" value=\"{}\">", esc(value));
        }
    }
    match Kind::parse(&form.kind) {
        Some(Kind::Catalog) => {
            let options: Vec<(&str, &str)> =
                entries.iter().map(|entry| (entry.name.as_str(), entry.title.as_str())).collect();
            select(&mut out, "catalog", "Catalog server", &form.catalog, &options);
            input(&mut out, "name", "Server name (optional)", &form.name, "defaults to the entry's name");
            let needed: Vec<String> = entries
                .iter()
                .find(|entry| entry.name == form.catalog)
                .map(|entry| {
                    entry
                        .settings
                        .iter()
                        .map(|setting| {
                            format!(
                                "{}{}: {}",
                                setting.name,
                                if setting.required { "" } else { " (optional)" },
                                setting.description
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let hint = if needed.is_empty() {
                "NAME=value per line, as the entry asks (stored encrypted, never shown again)".to_owned()
            } else {
                format!("NAME=value per line; this entry asks for {}", needed.join("; "))
            };
            textarea(&mut out, "settings", "Settings", "", &hint);
        }
        Some(Kind::Access) => {
            let options: Vec<(&str, &str)> = servers.iter().map(|name| (name.as_str(), name.as_str())).collect();
            select(&mut out, "access_to", "Active server", &form.access_to, &options);
        }
        _ => {
            input(&mut out, "name", "Server name", &form.name, "a-z, 0-9 and -, up to 32 characters");
            textarea(&mut out, "description", "Description", &form.description, "what the server is and does");
            select(
                &mut out,
                "transport",
                "Transport",
                &form.transport,
                &[
                    ("streamable-http", "HTTP (Streamable HTTP)"),
                    ("sse", "SSE (legacy HTTP+SSE)"),
                    ("stdio", "stdio (a command the gateway runs)"),
                ],
            );
            input(&mut out, "url", "URL (HTTP and SSE)", &form.url, "");
            input(&mut out, "command", "Command (stdio)", &form.command, "");
            textarea(&mut out, "args", "Arguments (stdio)", &form.args, "one per line; never put secrets here");
            textarea(
                &mut out,
                "env",
                "Environment variables (stdio)",
                "",
                "NAME=value per line; stored encrypted, never shown again",
            );
            textarea(
                &mut out,
                "headers",
                "Headers (HTTP)",
                "",
                "Name: value per line; stored encrypted, never shown again",
            );
            select(
                &mut out,
                "auth",
                "Authentication",
                &form.auth,
                &[("none", "None"), ("api-key", "API key or token"), ("oauth", "OAuth (each person signs in)")],
            );
            input(&mut out, "oauth_scopes", "OAuth scopes", &form.oauth_scopes, "space-separated, if OAuth");
            select(
                &mut out,
                "origin",
                "Who builds it",
                &form.origin,
                &[("third-party", "A vendor or open-source project"), ("internal", "A team in the company")],
            );
        }
    }
    out.push_str("<fieldset><legend>Business justification</legend>");
    textarea(&mut out, "why", "Why is it needed?", &form.why, "");
    textarea(&mut out, "use_case", "Use case: what problem does it solve?", &form.use_case, "");
    textarea(&mut out, "expected_value", "Expected value", &form.expected_value, "");
    textarea(
        &mut out,
        "alternatives",
        "Alternatives considered",
        &form.alternatives,
        "why existing servers do not serve",
    );
    out.push_str("</fieldset>");
    checkbox(&mut out, "sensitive", "It reaches sensitive data (PII, financial, health)", form.sensitive.is_some());
    checkbox(&mut out, "urgent", "Urgent business need (same-day review)", form.urgent.is_some());
    if form.confirm_duplicate.is_some() {
        checkbox(&mut out, "confirm_duplicate", "Submit anyway, although the server is active already", true);
    }
    out.push_str(
        "<div class=\"buttons\"><button type=\"submit\" name=\"intent\" value=\"submit\">Submit for review</button> \
         <button type=\"submit\" name=\"intent\" value=\"draft\" class=\"secondary\">Save as draft</button></div></form>",
    );
    Html::trusted(out)
}

async fn form_choices(state: &AppState) -> Result<(Vec<crate::catalog::Entry>, Vec<String>), StoreError> {
    let mut connection = state.store.pool.acquire().await?;
    let entries = store::catalog::list(&mut connection, false).await?.into_iter().map(|stored| stored.entry).collect();
    let mut servers: Vec<String> =
        store::registry::list_servers(&mut connection).await?.into_iter().map(|server| server.name).collect();
    servers.sort();
    Ok((entries, servers))
}

#[derive(Debug, Default, Deserialize)]
pub struct NewQuery {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    catalog: String,
    #[serde(default)]
    access_to: String,
    #[serde(default)]
    resubmit: String,
    #[serde(default)]
    draft: String,
}

/// `GET /console/requests/new`: the request form (also for resubmitting and editing a draft).
pub async fn new(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<NewQuery>) -> Response {
    let (signed, user) = match signed_user(&state, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let (entries, servers) = match form_choices(&state).await {
        Ok(choices) => choices,
        Err(error) => return failure(&error),
    };
    let based_on = Some(query.resubmit.as_str())
        .filter(|id| !id.is_empty())
        .or(Some(query.draft.as_str()).filter(|id| !id.is_empty()));
    let mut form = match based_on {
        Some(id) => match lifecycle::visible(&state, &user, id).await {
            Ok(request) => RequestForm::of(&request),
            Err(error) => {
                let content = note("error", &problem(&error));
                return respond(signed, &csrf_token, set, "Request not found", content);
            }
        },
        None => RequestForm {
            kind: if query.kind.is_empty() { "custom".into() } else { query.kind.clone() },
            catalog: query.catalog.clone(),
            access_to: query.access_to.clone(),
            ..RequestForm::default()
        },
    };
    form.resubmit = query.resubmit.clone();
    form.draft = query.draft.clone();
    let mut content = Html::new();
    if based_on.is_some() {
        content.push(note("hint", "Secret values are not shown again: leave them out to keep the ones given before."));
    }
    content.push(request_form(&csrf_token, &form, &entries, &servers));
    let title = match Kind::parse(&form.kind) {
        Some(Kind::Catalog) => "Request a catalog server",
        Some(Kind::Access) => "Ask for access to an active server",
        _ => "Request a custom server",
    };
    respond(signed, &csrf_token, set, title, content)
}

/// `POST /console/requests`: create, resubmit or edit, as the form says.
pub async fn create(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<RequestForm>) -> Response {
    if !csrf_ok(&state, &headers, &form.csrf) {
        return csrf_refusal();
    }
    let (signed, user) = match signed_user(&state, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let again = |problem: &str, form: &RequestForm, choices: (Vec<crate::catalog::Entry>, Vec<String>)| {
        let mut content = Html::new();
        content.push(note("error", problem));
        content.push(request_form(&csrf_token, form, &choices.0, &choices.1));
        content
    };
    let choices = match form_choices(&state).await {
        Ok(choices) => choices,
        Err(error) => return failure(&error),
    };
    let request = match form.new_request() {
        Ok(request) => request,
        Err(text) => return respond(signed, &csrf_token, set, "Request not sent", again(&text, &form, choices)),
    };
    let result = if !form.resubmit.is_empty() {
        lifecycle::resubmit(&state, &user, &form.resubmit, request).await
    } else if !form.draft.is_empty() {
        lifecycle::edit(&state, &user, &form.draft, request).await
    } else if request.kind != Kind::Access && form.confirm_duplicate.is_none() && request.submit {
        // Offer access instead when the server is active already: save as a draft first, and
        // only submit once the person confirms.
        let draft = NewRequest { submit: false, ..request.clone() };
        match lifecycle::create(&state, &user, draft).await {
            Ok(saved) if saved.request.duplicate_of.is_some() => {
                let existing = saved.request.duplicate_of.clone().unwrap_or_default();
                let mut content = Html::new();
                content.push(note(
                    "error",
                    &format!("{existing} is already active in the company and is this same server."),
                ));
                content.push(Html::trusted(format!(
                    "<p><a class=\"button\" href=\"/console/requests/new?kind=access&amp;access_to={}\">Ask for access to {} instead</a></p>",
                    esc(&super::url_encode(&existing)),
                    esc(&existing)
                )));
                content.push(note("hint", "Your request is saved as a draft. To submit it anyway, confirm below; the reviewer will see it flagged as a duplicate."));
                let mut form = form.clone();
                form.draft = saved.request.id.clone();
                form.confirm_duplicate = Some("on".into());
                content.push(request_form(&csrf_token, &form, &choices.0, &choices.1));
                return respond(signed, &csrf_token, set, "This server is active already", content);
            }
            Ok(saved) => lifecycle::submit(&state, &user, &saved.request.id)
                .await
                .map(|request| lifecycle::Saved { request, warnings: saved.warnings }),
            Err(error) => Err(error),
        }
    } else {
        lifecycle::create(&state, &user, request).await
    };
    match result {
        Ok(saved) => redirect(&format!("/console/requests/{}", saved.request.id)),
        Err(error) => respond(signed, &csrf_token, set, "Request not sent", again(&problem(&error), &form, choices)),
    }
}

fn finding_row(finding: &Finding) -> Vec<Html> {
    let class = match finding.level {
        Level::Pass => "ok",
        Level::Fail => "error",
        Level::Warn => "warn",
        Level::Review | Level::NotRun => "hint",
    };
    let mut evidence = String::new();
    if !finding.evidence.is_empty() {
        evidence.push_str("<ul class=\"evidence\">");
        for line in &finding.evidence {
            let _ = write!(evidence, "<li>{}</li>", esc(line));
        }
        evidence.push_str("</ul>");
    }
    vec![
        cell(finding.title),
        Html::trusted(format!("<span class=\"{class}\">{}</span>", finding.level.as_str())),
        Html::trusted(format!("{}{evidence}", esc(&finding.summary))),
    ]
}

fn schema_text(value: Option<&serde_json::Value>) -> String {
    value.map(|value| serde_json::to_string_pretty(value).unwrap_or_default()).unwrap_or_default()
}

/// `GET /console/requests/{id}`: everything about one request, and what the viewer may do.
pub async fn detail(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (signed, user) = match signed_user(&state, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let request = match lifecycle::visible(&state, &user, &id).await {
        Ok(request) => request,
        Err(error) => return respond(signed, &csrf_token, set, "Request not found", note("error", &problem(&error))),
    };
    let content = match detail_content(&state, &user, &request, &csrf_token).await {
        Ok(content) => content,
        Err(error) => note("error", &problem(&error)),
    };
    respond(signed, &csrf_token, set, &format!("Request: {}", request.server), content)
}

async fn detail_content(state: &AppState, user: &UserEntry, request: &Request, csrf: &str) -> Result<Html, ApiError> {
    let reviewer = lifecycle::may_review(user);
    let decider = user.can(crate::registry::Power::ManageServers);
    let mine = request.requester_id == user.id;
    let now = store::now_ms();
    let mut connection = state.store.pool.acquire().await.map_err(StoreError::from)?;
    let targets = lifecycle::targets(&mut connection).await?;
    drop(connection);
    let mut content = Html::new();
    if request.test_running_since.is_some() {
        // Progress without scripts: the page reloads itself until the test ends.
        content.push(Html::trusted("<meta http-equiv=\"refresh\" content=\"1\">".into()));
    }
    let mut summary = vec![
        ("State", request.state.as_str().to_owned()),
        ("Type", request.kind.as_str().to_owned()),
        ("Requested by", request.requester_email.clone()),
        ("Created", iso_time(request.created_at)),
        ("Tier", format!("{} (target {})", request.tier.label(), lifecycle::target_text(&targets, request.tier))),
    ];
    if let Some((due, overdue)) = lifecycle::due(&targets, request, now) {
        summary.push(("Due", format!("{}{}", iso_time(due), if overdue { " — overdue" } else { "" })));
    }
    if let Some(catalog) = &request.catalog_entry {
        summary.push(("Catalog entry", catalog.clone()));
    }
    if let (Some(by), Some(at)) = (&request.decided_by, request.decided_at) {
        summary.push(("Decided", format!("{} by {by}", iso_time(at))));
    }
    content.push(facts(&summary));
    if let Some(existing) = &request.duplicate_of {
        content.push(note(
            "error",
            &format!(
                "Duplicate: the active server {existing} is this same server. Consider granting access to it instead."
            ),
        ));
    }
    for (label, other) in [("Resubmission of", &request.previous_id), ("Resubmitted as", &request.next_id)] {
        if let Some(other) = other {
            content.push(Html::trusted(format!(
                "<p>{} <a href=\"/console/requests/{}\">request {}</a></p>",
                esc(label),
                esc(other),
                esc(other)
            )));
        }
    }
    if let Some(decision) = &request.decision
        && request.state == RequestState::Rejected
    {
        content.push(Html::trusted("<h2>Why it was not approved</h2>".into()));
        content.push(note("error", &decision.reason));
        content.push(facts(&[("Next steps", decision.next_steps.clone())]));
    }
    // What the requester can do.
    if mine {
        let mut actions = String::new();
        if request.state == RequestState::Draft {
            let _ = write!(
                actions,
                "<a class=\"button\" href=\"/console/requests/new?draft={}\">Edit the draft</a>",
                esc(&request.id)
            );
            actions.push_str(&action_button(csrf, &request.id, "submit", "Submit for review"));
        }
        if matches!(request.state, RequestState::Draft | RequestState::Pending) {
            actions.push_str(&action_button(csrf, &request.id, "withdraw", "Withdraw"));
        }
        if request.state == RequestState::Rejected && request.next_id.is_none() {
            let _ = write!(
                actions,
                "<a class=\"button\" href=\"/console/requests/new?resubmit={}\">Change and resubmit</a>",
                esc(&request.id)
            );
        }
        if !actions.is_empty() {
            content.push(Html::trusted(format!("<div class=\"actions\">{actions}</div>")));
        }
    }
    if reviewer {
        let requester = lifecycle::requester(state, request).await?;
        content.push(Html::trusted("<h2>Requester</h2>".into()));
        let previous: Vec<String> =
            requester.previous.iter().map(|(_, server, state)| format!("{server} ({})", state.as_str())).collect();
        content.push(facts(&[
            ("Name", requester.name.clone()),
            ("Email", requester.email.clone()),
            ("Department", requester.department.clone()),
            ("Title", requester.title.clone()),
            ("Team", requester.team.clone()),
            ("Groups", requester.groups.join(", ")),
            ("Previous requests", if previous.is_empty() { "none".into() } else { previous.join(", ") }),
            ("Current access", if requester.access.is_empty() { "none".into() } else { requester.access.join(", ") }),
        ]));
    }
    content.push(Html::trusted("<h2>Configuration</h2>".into()));
    match &request.proposal {
        Some(proposal) => {
            let masked = |names: &[String]| {
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.iter().map(|name| format!("{name} = ••••")).collect::<Vec<_>>().join(", ")
                }
            };
            content.push(facts(&[
                ("Name", proposal.name.clone()),
                ("Description", proposal.description.clone()),
                ("Transport", proposal.transport.as_str().to_owned()),
                ("URL", proposal.url.as_deref().map(store::redact_url).unwrap_or_else(|| "—".into())),
                (
                    "Command",
                    proposal
                        .command
                        .clone()
                        .map(|command| format!("{command} {}", proposal.args.join(" ")))
                        .unwrap_or_else(|| "—".into()),
                ),
                ("Authentication", format!("{:?}", proposal.auth).to_lowercase()),
                (
                    "OAuth scopes",
                    if proposal.oauth_scopes.is_empty() { "—".into() } else { proposal.oauth_scopes.join(" ") },
                ),
                ("Environment variables", masked(&proposal.env_names)),
                ("Headers", masked(&proposal.header_names)),
                (
                    "Built by",
                    match request.origin {
                        Origin::Internal => "a team in the company".into(),
                        Origin::ThirdParty => "a vendor or open-source project".into(),
                    },
                ),
                ("Sensitive data", if request.sensitive { "yes".into() } else { "not declared".into() }),
            ]));
        }
        None => {
            content.push(facts(&[("Access to", request.server.clone())]));
        }
    }
    content.push(Html::trusted("<h2>Business justification</h2>".into()));
    let justification = &request.justification;
    content.push(facts(&[
        ("Why needed", justification.why.clone()),
        ("Use case", justification.use_case.clone()),
        ("Expected value", justification.expected_value.clone()),
        ("Alternatives considered", justification.alternatives.clone()),
    ]));
    if request.proposal.is_some() {
        content.push(Html::trusted("<h2>Connection</h2>".into()));
        if request.test_running_since.is_some() {
            let current = request.test_step.as_deref().unwrap_or("starting");
            let position = STEPS.iter().position(|step| *step == current).map(|at| at + 1).unwrap_or(0);
            content.push(Html::trusted(format!(
                "<p class=\"progress-line\"><progress max=\"{}\" value=\"{position}\"></progress> Testing: {}…</p>",
                STEPS.len(),
                esc(current)
            )));
        } else if let Some(test) = &request.test {
            let class = if test.outcome == Outcome::Success { "ok" } else { "error" };
            let mut steps = String::from("<ul class=\"steps\">");
            for step in &test.steps {
                let _ = write!(steps, "<li>{} {}</li>", if step.ok { "✅" } else { "❌" }, esc(&step.name));
            }
            steps.push_str("</ul>");
            content.push(Html::trusted(format!(
                "<p class=\"{class}\" id=\"test-outcome\">{}</p><p>{}</p>{steps}<p class=\"hint\">Tested {} by {} ({} ms)</p>",
                esc(test.outcome.label()),
                esc(&test.detail),
                esc(&iso_time(test.finished_at)),
                esc(&test.by),
                test.finished_at - test.started_at
            )));
        } else {
            content
                .push(note("hint", "Not tested yet. Nothing the requester typed runs until an admin starts the test."));
        }
        if decider
            && request.test_running_since.is_none()
            && matches!(request.state, RequestState::Pending | RequestState::Draft)
        {
            content.push(Html::trusted(action_button(csrf, &request.id, "test", "Test connection")));
        }
        if let Some(test) = &request.test
            && (reviewer || mine)
        {
            content.push(Html::trusted("<h2>Technical details</h2>".into()));
            let tools: Vec<Vec<Html>> = test
                .tools
                .iter()
                .map(|tool| {
                    vec![
                        cell(tool.get("name").and_then(|name| name.as_str()).unwrap_or("")),
                        cell(tool.get("description").and_then(|text| text.as_str()).unwrap_or("")),
                        Html::trusted(format!("<pre>{}</pre>", esc(&schema_text(tool.get("inputSchema"))))),
                    ]
                })
                .collect();
            content.push(text_heading(&format!("Tools ({})", tools.len())));
            if !tools.is_empty() {
                content.push(rich_table(&["Tool", "Description", "Input schema"], &tools));
            }
            let listed = |items: &[serde_json::Value], key: &str| -> Vec<Vec<String>> {
                items
                    .iter()
                    .map(|item| {
                        vec![
                            item.get(key).and_then(|v| v.as_str()).unwrap_or("").to_owned(),
                            item.get("description").and_then(|v| v.as_str()).unwrap_or("").to_owned(),
                        ]
                    })
                    .collect()
            };
            for (title, items, key) in [
                ("Resources", &test.resources, "uri"),
                ("Resource templates", &test.resource_templates, "uriTemplate"),
                ("Prompts", &test.prompts, "name"),
            ] {
                content.push(text_heading(&format!("{title} ({})", items.len())));
                if !items.is_empty() {
                    content.push(super::html::table(&["Name", "Description"], &listed(items, key)));
                }
            }
        }
    }
    if reviewer && request.proposal.is_some() {
        let findings = lifecycle::findings(state, request).await?;
        content.push(Html::trusted("<h2>Automated checks</h2>".into()));
        let rows: Vec<Vec<Html>> = findings.iter().map(finding_row).collect();
        content.push(rich_table(&["Check", "Result", "Evidence"], &rows));
        if decider && request.state == RequestState::Pending {
            content.push(review_forms(csrf, request, &findings));
        }
    } else if decider && request.state == RequestState::Pending {
        content.push(review_forms(csrf, request, &[]));
    }
    if let Some(decision) = &request.decision
        && reviewer
        && !decision.checklist.is_empty()
    {
        content.push(Html::trusted("<h2>Checklist as completed</h2>".into()));
        let rows: Vec<Vec<String>> = decision
            .checklist
            .iter()
            .map(|(section, answer)| {
                vec![section.question().to_owned(), answer.mark.as_str().to_owned(), answer.note.clone()]
            })
            .collect();
        content.push(super::html::table(&["Section", "Mark", "Note"], &rows));
    }
    Ok(content)
}

fn text_heading(title: &str) -> Html {
    Html::trusted(format!("<h3>{}</h3>", esc(title)))
}

fn action_button(csrf: &str, id: &str, action: &str, label: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/console/requests/{}/{action}\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">{}</button></form>",
        esc(id),
        esc(csrf),
        esc(label)
    )
}

/// The checklist with the automated checks of each section beside it, the approval (with the
/// access rule it creates) and the rejection.
fn review_forms(csrf: &str, request: &Request, findings: &[Finding]) -> Html {
    let mut out = String::new();
    let _ = write!(
        out,
        "<h2>Review</h2><form method=\"post\" action=\"/console/requests/{}/approve\" class=\"wide\" id=\"approve-form\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&request.id),
        esc(csrf)
    );
    out.push_str("<fieldset><legend>Security checklist</legend>");
    for section in Section::ALL {
        let name = section.as_str();
        let _ = write!(
            out,
            "<div class=\"section\"><p><strong>{}</strong></p><ul class=\"points\">",
            esc(section.question())
        );
        for point in section.points() {
            let _ = write!(out, "<li>{}</li>", esc(point));
        }
        out.push_str("</ul>");
        let related: Vec<&Finding> = findings.iter().filter(|finding| finding.section == section).collect();
        if !related.is_empty() {
            out.push_str("<ul class=\"checks\">");
            for finding in related {
                let _ = write!(
                    out,
                    "<li>{}: <em>{}</em> — {}</li>",
                    esc(finding.title),
                    finding.level.as_str(),
                    esc(&finding.summary)
                );
            }
            out.push_str("</ul>");
        }
        for (mark, label) in
            [(Mark::Checked, "checked"), (Mark::NotApplicable, "not applicable"), (Mark::Concern, "concern")]
        {
            let _ = write!(
                out,
                "<label class=\"check\"><input type=\"radio\" name=\"mark_{name}\" value=\"{}\"> {label}</label>",
                mark.as_str()
            );
        }
        let _ = write!(
            out,
            "<input name=\"note_{name}\" placeholder=\"note (required with a concern)\" aria-label=\"note on {name}\"></div>"
        );
    }
    out.push_str("</fieldset><fieldset><legend>Access rule created on approval</legend>");
    let _ = write!(
        out,
        "<label class=\"check\"><input type=\"radio\" name=\"grant_to\" value=\"requester\" checked> {} only</label>\
         <label class=\"check\"><input type=\"radio\" name=\"grant_to\" value=\"group\"> a group:</label>\
         <input name=\"grant_group\" aria-label=\"group\" placeholder=\"group name\">\
         <label for=\"grant_tools\">Only these tools (comma-separated; empty = the whole server)</label><input id=\"grant_tools\" name=\"grant_tools\">",
        esc(&request.requester_email)
    );
    out.push_str("</fieldset>");
    checkbox(
        &mut out,
        "high_risk",
        "Put the server on the high-risk list (quarterly review)",
        request.tier == Tier::HighRisk,
    );
    out.push_str("<button type=\"submit\">Approve</button></form>");
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/console/requests/{}/reject\" class=\"wide\" id=\"reject-form\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&request.id),
        esc(csrf)
    );
    textarea(&mut out, "reason", "Reason (required: the specific issue, what to fix, alternatives)", "", "");
    textarea(&mut out, "next_steps", "Next steps (how to resubmit, servers that might serve, whom to contact)", "", "");
    out.push_str("<button type=\"submit\" class=\"danger\">Reject</button></form>");
    Html::trusted(out)
}

/// Checklist, grant and rejection fields as posted.
fn checklist_of(form: &BTreeMap<String, String>) -> Checklist {
    let mut checklist = Checklist::new();
    for section in Section::ALL {
        if let Some(mark) = form.get(&format!("mark_{}", section.as_str())).and_then(|mark| Mark::parse(mark)) {
            let note = form.get(&format!("note_{}", section.as_str())).cloned().unwrap_or_default();
            checklist.insert(section, Answer { mark, note: note.trim().to_owned() });
        }
    }
    checklist
}

/// `POST /console/requests/{id}/{action}`: submit, withdraw, test, approve or reject.
pub async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let (signed, user) = match signed_user_form(&state, &headers, &form).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let result = match action.as_str() {
        "submit" => lifecycle::submit(&state, &user, &id).await.map(|_| ()),
        "withdraw" => lifecycle::withdraw(&state, &user, &id).await.map(|_| ()),
        "test" => lifecycle::start_test(&state, &user, &id).await,
        "approve" => {
            let grant = Grant {
                to: if field("grant_to") == "group" { GrantTo::Group } else { GrantTo::Requester },
                group: Some(field("grant_group")).filter(|group| !group.trim().is_empty()),
                tools: field("grant_tools")
                    .split(',')
                    .map(str::trim)
                    .filter(|tool| !tool.is_empty())
                    .map(str::to_owned)
                    .collect(),
            };
            let approval =
                Approval { checklist: checklist_of(&form), grant, high_risk: form.contains_key("high_risk") };
            lifecycle::approve(&state, &user, &id, approval).await.map(|_| ())
        }
        "reject" => {
            let rejection =
                Rejection { reason: field("reason"), next_steps: field("next_steps"), checklist: checklist_of(&form) };
            lifecycle::reject(&state, &user, &id, rejection).await.map(|_| ())
        }
        _ => Err(ApiError::NotFound(format!("no action {action:?}"))),
    };
    match result {
        Ok(()) => redirect(&format!("/console/requests/{id}")),
        Err(error) => {
            let back = format!("/console/requests/{id}");
            super::not_done(&state, &headers, signed, "Not done", &problem(&error), (&back, "Back to the request"))
        }
    }
}

/// `POST /console/request-targets` (IT admins).
pub async fn save_targets(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let (signed, user) = match signed_user_form(&state, &headers, &form).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let result = if user.can(crate::registry::Power::ManageServers) {
        let changes: BTreeMap<String, String> = form.into_iter().filter(|(key, _)| key != "csrf").collect();
        crate::api::requests::set_targets(&state, &user.email, &changes).await.map(|_| ())
    } else {
        Err(ApiError::Forbidden("only IT admins change review targets".into()))
    };
    match result {
        Ok(()) => redirect("/console/requests"),
        Err(error) => super::not_done(
            &state,
            &headers,
            signed,
            "Targets not saved",
            &problem(&error),
            ("/console/requests", "Back to the requests"),
        ),
    }
}

/// `GET /console/inbox`: the person's notifications.
pub async fn inbox(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = match require(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let loaded = async {
        let mut connection = state.store.pool.acquire().await?;
        store::notifications::list(&mut connection, &signed.account.user_id, 200).await
    }
    .await;
    let items = match loaded {
        Ok(items) => items,
        Err(error) => return failure(&error),
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let mut content = Html::new();
    let may_alert = signed.account.admin_roles.iter().any(|role| role.can(crate::registry::Power::ManageServers));
    match super::mail::preference_form(&state, &signed.account.user_id, may_alert, &csrf_token).await {
        Ok(form) => content.push(form),
        Err(error) => return failure(&error),
    };
    if items.is_empty() {
        content.push(note("hint", "Nothing yet."));
    } else {
        content.push(Html::trusted(format!(
            "<form method=\"post\" action=\"/console/inbox/read\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Mark all read</button></form>",
            esc(&csrf_token)
        )));
        let rows: Vec<Vec<Html>> = items
            .iter()
            .map(|item| {
                let title = if item.read_at.is_none() {
                    Html::trusted(format!("<strong>{}</strong>", esc(&item.title)))
                } else {
                    cell(&item.title)
                };
                vec![cell(&iso_time(item.created_at)), title, cell(&item.body), link(&item.link, "Open")]
            })
            .collect();
        content.push(rich_table(&["When", "What", "Detail", ""], &rows));
    }
    respond(signed, &csrf_token, set, "Inbox", content)
}

pub async fn read_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let signed = match super::require_form(&state, &headers, &form).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let marked = async {
        let mut connection = state.store.pool.acquire().await?;
        store::notifications::mark_read(&mut connection, &signed.account.user_id, None).await
    }
    .await;
    match marked {
        Ok(_) => redirect("/console/inbox"),
        Err(error) => failure(&error),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct MetricsQuery {
    #[serde(default)]
    days: Option<i64>,
}

/// `GET /console/requests/metrics`: the monthly review, drawn.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<MetricsQuery>) -> Response {
    use super::charts::{Bar, bars, columns};
    let (signed, user) = match signed_user(&state, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let (csrf_token, set) = csrf(&state, &headers);
    if !lifecycle::may_review(&user) {
        return respond(signed, &csrf_token, set, "Request metrics", note("error", "Request metrics are for admins."));
    }
    let metrics = match lifecycle::metrics(&state, query.days.unwrap_or(30)).await {
        Ok(metrics) => metrics,
        Err(error) => return failure(&error),
    };
    let mut content = Html::new();
    content.push(filters(
        "/console/requests/metrics",
        &[Filter { name: "days", label: "Days", value: &metrics.days.to_string(), options: &[] }],
    ));
    let pending: usize = metrics.backlog.iter().map(|(_, pending, _)| pending).sum();
    let overdue: usize = metrics.backlog.iter().map(|(_, _, overdue)| overdue).sum();
    content.push(facts(&[
        ("Period", format!("the last {} days (since {})", metrics.days, iso_time(metrics.since))),
        ("Requests", metrics.requested.to_string()),
        ("Pending now", format!("{pending} ({overdue} overdue)")),
    ]));
    content.push(Html::trusted("<h2>What is requested most?</h2>".into()));
    let most: Vec<Bar> = metrics
        .most_requested
        .iter()
        .map(|(server, count)| Bar { label: server.clone(), value: *count as f64, target: None })
        .collect();
    content.push(bars("Requests per server", &most, ""));
    content.push(note("hint", "Servers requested often are candidates for the catalog or for a group rule."));
    let weekly: Vec<(String, f64)> =
        metrics.weekly.iter().map(|(start, count)| (iso_time(*start)[5..10].to_owned(), *count as f64)).collect();
    content.push(columns("Requests per week (week starting)", &weekly));
    content.push(Html::trusted("<h2>Are timelines being met?</h2>".into()));
    let timing: Vec<Bar> = metrics
        .time_to_decision
        .iter()
        .map(|timing| Bar {
            label: format!(
                "{} ({} decided, {:.0}% on time)",
                timing.tier.label(),
                timing.decided,
                timing.within_target * 100.0
            ),
            value: timing.median_hours,
            target: Some(timing.target_hours),
        })
        .collect();
    content.push(bars("Median hours to a decision, against the target (mark)", &timing, " h"));
    content.push(Html::trusted("<h2>Where is the backlog?</h2>".into()));
    let backlog: Vec<Bar> = metrics
        .backlog
        .iter()
        .filter(|(_, pending, _)| *pending > 0)
        .map(|(tier, pending, overdue)| Bar {
            label: format!("{} ({overdue} overdue)", tier.label()),
            value: *pending as f64,
            target: None,
        })
        .collect();
    content.push(bars("Pending requests by tier", &backlog, ""));
    content.push(Html::trusted("<h2>Why are requests rejected?</h2>".into()));
    let concerns: Vec<Bar> = metrics
        .rejections_by_concern
        .iter()
        .map(|(concern, count)| Bar { label: concern.clone(), value: *count as f64, target: None })
        .collect();
    content.push(bars("Rejections by checklist concern", &concerns, ""));
    if !metrics.rejection_reasons.is_empty() {
        let rows: Vec<Vec<String>> =
            metrics.rejection_reasons.iter().map(|(server, reason)| vec![server.clone(), reason.clone()]).collect();
        content.push(super::html::table(&["Server", "Reason given"], &rows));
    }
    respond(signed, &csrf_token, set, "Request metrics", content)
}
