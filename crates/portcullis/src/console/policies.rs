//! Access rules in the console: each server's **Permissions** tab
//! (`/console/servers/{name}/permissions`), **Policies** for global deny rules
//! (`/console/policies`), the rule form — principals, scope and conditions as fields, never
//! Cedar to write — with "Simulate" (replay the last 30 days under the draft) before "Save",
//! and **effective access** (`/console/access`, with a CSV download for access reviews).

use super::html::{Html, cell, esc, facts, link, note, rich_table};
use super::{
    AppState, Signed, csrf, csrf_ok, csrf_refusal, failure, html_response, page, redirect, require_admin, respond,
};
use crate::registry::Power;
use crate::review::{self, Draft};
use crate::rules::{ConditionSpec, RuleSpec, StoredRule};
use crate::store::{self, StoreError};
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write as _;

fn may_change(signed: &Signed) -> bool {
    signed.account.admin_roles.iter().any(|role| role.can(Power::ManagePolicies))
}

fn list(text: &str) -> Vec<String> {
    text.split([',', '\n']).map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect()
}

/// The rule form as posted. Lists are comma- or line-separated; conditions are one per line,
/// `field operator value`, the value as JSON (`["orders", "invoices"]`, `10`, `true`) or a
/// bare word.
#[derive(Debug, Default, Deserialize)]
pub struct RuleForm {
    csrf: String,
    /// `save` or `simulate`.
    #[serde(default)]
    intent: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    effect: String,
    /// Comma-separated server names; empty with `global`.
    #[serde(default)]
    servers: String,
    #[serde(default)]
    global: Option<String>,
    #[serde(default)]
    everyone: Option<String>,
    #[serde(default)]
    users: String,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    roles: String,
    #[serde(default)]
    agents: String,
    /// `key=value` pairs.
    #[serde(default)]
    attributes: String,
    #[serde(default)]
    tools: String,
    #[serde(default)]
    resources: String,
    #[serde(default)]
    prompts: String,
    #[serde(default)]
    conditions: String,
    #[serde(default)]
    expires: String,
    #[serde(default)]
    notes: String,
    #[serde(default)]
    disabled: Option<String>,
}

impl RuleForm {
    fn spec(&self) -> Result<RuleSpec, String> {
        let mut attributes = std::collections::BTreeMap::new();
        for pair in list(&self.attributes) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("attribute {pair:?} is not key=value, e.g. department=Finance"))?;
            attributes.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        let mut conditions = Vec::new();
        for (at, line) in self.conditions.lines().map(str::trim).filter(|line| !line.is_empty()).enumerate() {
            let mut parts = line.splitn(3, char::is_whitespace);
            let (Some(field), Some(op)) = (parts.next(), parts.next()) else {
                return Err(format!(
                    "condition {} ({line:?}): write field, operator and value, e.g. payload.table in [\"orders\"]",
                    at + 1
                ));
            };
            let value = match parts.next().map(str::trim).filter(|rest| !rest.is_empty()) {
                None => Value::Null,
                Some(rest) => serde_json::from_str(rest).unwrap_or_else(|_| Value::String(rest.to_owned())),
            };
            conditions.push(ConditionSpec { field: field.to_owned(), op: op.trim().to_owned(), value });
        }
        let global = self.global.is_some();
        Ok(RuleSpec {
            name: self.name.trim().to_owned(),
            effect: self.effect.trim().to_owned(),
            global,
            servers: if global { Vec::new() } else { list(&self.servers) },
            tools: list(&self.tools),
            resources: list(&self.resources),
            prompts: list(&self.prompts),
            everyone: self.everyone.is_some(),
            users: list(&self.users),
            groups: list(&self.groups),
            roles: list(&self.roles),
            agents: list(&self.agents),
            attributes,
            conditions,
            expires: Some(self.expires.trim().to_owned()).filter(|text| !text.is_empty()),
            enabled: self.disabled.is_none(),
            notes: self.notes.trim().to_owned(),
        })
    }

    fn of(rule: &StoredRule) -> RuleForm {
        let spec = &rule.spec;
        let flag = |on: bool| on.then(|| "on".to_owned());
        RuleForm {
            id: rule.id.clone(),
            name: spec.name.clone(),
            effect: spec.effect.clone(),
            servers: spec.servers.join(", "),
            global: flag(spec.global),
            everyone: flag(spec.everyone),
            users: spec.users.join(", "),
            groups: spec.groups.join(", "),
            roles: spec.roles.join(", "),
            agents: spec.agents.join(", "),
            attributes: spec
                .attributes
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(", "),
            tools: spec.tools.join(", "),
            resources: spec.resources.join(", "),
            prompts: spec.prompts.join(", "),
            conditions: spec
                .conditions
                .iter()
                .map(|condition| {
                    let value = if condition.value.is_null() { String::new() } else { condition.value.to_string() };
                    format!("{} {} {value}", condition.field, condition.op).trim_end().to_owned()
                })
                .collect::<Vec<_>>()
                .join("\n"),
            expires: spec.expires.clone().unwrap_or_default(),
            notes: spec.notes.clone(),
            disabled: flag(!spec.enabled),
            ..RuleForm::default()
        }
    }
}

/// The rule form, filled with `form`; `global` forms only deny.
fn rule_form(csrf: &str, form: &RuleForm, global: bool) -> Html {
    let mut out = String::from("<form method=\"post\" action=\"/console/rules\" class=\"rule\">");
    let _ = write!(out, "<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf));
    let _ = write!(out, "<input type=\"hidden\" name=\"id\" value=\"{}\">", esc(&form.id));
    let input = |out: &mut String, name: &str, label: &str, value: &str, hint: &str| {
        let _ = write!(
            out,
            "<label for=\"{name}\">{}</label><input id=\"{name}\" name=\"{name}\" value=\"{}\" placeholder=\"{}\">",
            esc(label),
            esc(value),
            esc(hint)
        );
    };
    let check = |out: &mut String, name: &str, label: &str, on: bool| {
        let _ = write!(
            out,
            "<label class=\"check\"><input type=\"checkbox\" name=\"{name}\"{}> {}</label>",
            if on { " checked" } else { "" },
            esc(label)
        );
    };
    input(&mut out, "name", "Name", &form.name, "finance read-only db");
    if global {
        out.push_str("<input type=\"hidden\" name=\"effect\" value=\"deny\"><input type=\"hidden\" name=\"global\" value=\"on\">");
        out.push_str("<p class=\"hint\">A global rule applies to every server, tool, resource and prompt, and can only deny.</p>");
    } else {
        out.push_str("<label for=\"effect\">Effect</label><select id=\"effect\" name=\"effect\">");
        for effect in ["allow", "deny"] {
            let selected = if form.effect == effect { " selected" } else { "" };
            let _ = write!(out, "<option{selected}>{effect}</option>");
        }
        out.push_str("</select>");
        input(&mut out, "servers", "Servers", &form.servers, "db");
    }
    out.push_str("<fieldset><legend>Applies to</legend>");
    check(&mut out, "everyone", "Everyone", form.everyone.is_some());
    input(&mut out, "users", "Users (emails)", &form.users, "ann@example.com, bob@example.com");
    input(&mut out, "groups", "Groups", &form.groups, "Engineering");
    input(&mut out, "roles", "Roles", &form.roles, "Support");
    input(&mut out, "agents", "Agent accounts", &form.agents, "ci-bot");
    input(&mut out, "attributes", "Attributes (all must match)", &form.attributes, "department=Finance");
    out.push_str("</fieldset>");
    if !global {
        out.push_str("<fieldset><legend>Scope (leave empty for the entire server)</legend>");
        input(&mut out, "tools", "Tools (* allowed)", &form.tools, "query, list_*");
        input(&mut out, "resources", "Resources", &form.resources, "db://orders/*");
        input(&mut out, "prompts", "Prompts", &form.prompts, "report-*");
        out.push_str("</fieldset>");
    }
    let _ = write!(
        out,
        "<label for=\"conditions\">Conditions (all must hold; one per line: field operator value)</label>\
         <textarea id=\"conditions\" name=\"conditions\" rows=\"3\" placeholder=\"{}\">{}</textarea>",
        esc("payload.table in [\"orders\", \"invoices\"]\nmeta.request.ip not_in_cidr 10.0.0.0/8"),
        esc(&form.conditions)
    );
    input(&mut out, "expires", "Expires (optional)", &form.expires, "2099-12-31 or 2099-12-31T17:00:00Z");
    input(&mut out, "notes", "Notes", &form.notes, "temporary, ticket FIN-42");
    check(&mut out, "disabled", "Disabled (kept, not in force)", form.disabled.is_some());
    out.push_str(
        "<div class=\"actions\"><button type=\"submit\" name=\"intent\" value=\"simulate\">Simulate (last 30 days)</button>\
         <button type=\"submit\" name=\"intent\" value=\"save\">Save</button></div></form>",
    );
    Html::trusted(out)
}

/// A table of rules, with their Cedar text and, for policy admins, edit and delete.
fn rules_table(rules: &[&StoredRule], csrf: &str, changeable: bool) -> Html {
    let rows: Vec<Vec<Html>> = rules
        .iter()
        .map(|rule| {
            let spec = &rule.spec;
            let mut who: Vec<String> = Vec::new();
            if spec.everyone {
                who.push("everyone".into());
            }
            who.extend(spec.users.iter().cloned());
            who.extend(spec.groups.iter().map(|group| format!("group {group}")));
            who.extend(spec.roles.iter().map(|role| format!("role {role}")));
            who.extend(spec.agents.iter().map(|agent| format!("agent {agent}")));
            who.extend(spec.attributes.iter().map(|(key, value)| format!("{key} = {value}")));
            let mut scope: Vec<String> = Vec::new();
            for (kind, items) in [("tools", &spec.tools), ("resources", &spec.resources), ("prompts", &spec.prompts)] {
                if !items.is_empty() {
                    scope.push(format!("{kind}: {}", items.join(", ")));
                }
            }
            let scope = if spec.global {
                "every server".to_owned()
            } else if scope.is_empty() {
                format!("{} (entire)", spec.servers.join(", "))
            } else {
                format!("{}: {}", spec.servers.join(", "), scope.join("; "))
            };
            let conditions: Vec<String> = spec
                .conditions
                .iter()
                .map(|condition| format!("{} {} {}", condition.field, condition.op, condition.value))
                .collect();
            let mut name = format!("<strong>{}</strong>", esc(&spec.name));
            if !spec.notes.is_empty() {
                let _ = write!(name, "<br><small>{}</small>", esc(&spec.notes));
            }
            if let Some(cedar) = spec.cedar() {
                let _ = write!(name, "<details><summary>Cedar</summary><pre>{}</pre></details>", esc(&cedar));
            }
            let mut actions = String::new();
            if changeable {
                let _ = write!(
                    actions,
                    "<a href=\"/console/rules/{id}\">Edit</a> <form method=\"post\" action=\"/console/rules/{id}/delete\" class=\"inline\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Delete</button></form>",
                    esc(csrf),
                    id = esc(&rule.id)
                );
            }
            let status = match (&spec.expires, spec.enabled) {
                (_, false) => "disabled".to_owned(),
                (Some(expires), true) => format!("until {expires}"),
                (None, true) => "in force".to_owned(),
            };
            vec![
                Html::trusted(name),
                cell(&spec.effect),
                cell(&who.join(", ")),
                cell(&scope),
                cell(&conditions.join("; ")),
                cell(&status),
                Html::trusted(actions),
            ]
        })
        .collect();
    rich_table(&["Rule", "Effect", "Who", "Scope", "Conditions", "Status", ""], &rows)
}

async fn load_rules(state: &AppState) -> Result<Vec<StoredRule>, StoreError> {
    let mut connection = state.store.pool.acquire().await?;
    store::rules::list_rules(&mut connection).await
}

/// `GET /console/servers/{name}/permissions`: the server's rules, the global rules that also
/// apply, and the form for a new rule.
pub async fn permissions(State(state): State<AppState>, headers: HeaderMap, Path(server): Path<String>) -> Response {
    let signed = match require_admin(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let rules = match load_rules(&state).await {
        Ok(rules) => rules,
        Err(error) => return failure(&error),
    };
    let known = state.snapshot.current().is_ok_and(|snapshot| snapshot.servers.contains_key(&server));
    if !known {
        return html_response(
            StatusCode::NOT_FOUND,
            page("Not found", None, note("error", "There is no such server.")),
        );
    }
    let (csrf_token, set) = csrf(&state, &headers);
    let changeable = may_change(&signed);
    let mut content = Html::new();
    let known: Vec<String> = state
        .snapshot
        .current()
        .ok()
        .and_then(|snapshot| snapshot.tools.get(&server).map(|tools| tools.tools.keys().cloned().collect()))
        .unwrap_or_default();
    let known = if known.is_empty() {
        "not seen yet (they are recorded the first time someone lists them)".to_owned()
    } else {
        known.join(", ")
    };
    content.push(facts(&[("Server", server.clone()), ("Last known tools", known)]));
    content.push(link(
        &format!("/console/access?server={}", super::url_encode(&server)),
        "Who can use it (effective access)",
    ));
    let own: Vec<&StoredRule> = rules.iter().filter(|rule| rule.spec.servers.contains(&server)).collect();
    content.push(Html::trusted("<h2>Rules on this server</h2>".into()));
    if own.is_empty() {
        content.push(note(
            "hint",
            "No rules name this server yet: nobody may use it unless a grant or a rule allows them.",
        ));
    } else {
        content.push(rules_table(&own, &csrf_token, changeable));
    }
    let global: Vec<&StoredRule> = rules.iter().filter(|rule| rule.spec.global).collect();
    if !global.is_empty() {
        content.push(Html::trusted("<h2>Global rules that also apply</h2>".into()));
        content.push(rules_table(&global, &csrf_token, false));
    }
    if changeable {
        content.push(Html::trusted("<h2>New rule</h2>".into()));
        let form = RuleForm { effect: "allow".into(), servers: server.clone(), ..RuleForm::default() };
        content.push(rule_form(&csrf_token, &form, false));
    }
    respond(signed, &csrf_token, set, &format!("Permissions: {server}"), content)
}

/// `GET /console/policies`: global deny rules (Admin → Policies).
pub async fn policies(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = match require_admin(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let rules = match load_rules(&state).await {
        Ok(rules) => rules,
        Err(error) => return failure(&error),
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let changeable = may_change(&signed);
    let mut content = Html::new();
    content.push(note(
        "hint",
        "Global rules apply to every server, tool, resource and prompt and can only deny: corporate network only, one MCP client only, OAuth verification required.",
    ));
    let global: Vec<&StoredRule> = rules.iter().filter(|rule| rule.spec.global).collect();
    if global.is_empty() {
        content.push(note("hint", "No global rules yet."));
    } else {
        content.push(rules_table(&global, &csrf_token, changeable));
    }
    content.push(link("/console/access", "Effective access of everyone"));
    if changeable {
        content.push(Html::trusted("<h2>New global rule</h2>".into()));
        let form = RuleForm { effect: "deny".into(), everyone: Some("on".into()), ..RuleForm::default() };
        content.push(rule_form(&csrf_token, &form, true));
    }
    respond(signed, &csrf_token, set, "Policies", content)
}

/// `GET /console/rules/{id}`: the form to change a rule.
pub async fn edit(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let signed = match require_admin(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if !may_change(&signed) {
        return not_allowed();
    }
    let rule = async {
        let mut connection = state.store.pool.acquire().await?;
        store::rules::get_rule(&mut connection, &id).await
    }
    .await;
    let rule = match rule {
        Ok(Some(rule)) => rule,
        Ok(None) => {
            return html_response(
                StatusCode::NOT_FOUND,
                page("Not found", None, note("error", "There is no such rule.")),
            );
        }
        Err(error) => return failure(&error),
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let form = rule_form(&csrf_token, &RuleForm::of(&rule), rule.spec.global);
    respond(signed, &csrf_token, set, &format!("Rule: {}", rule.spec.name), form)
}

/// A form post by a signed-in admin who may change rules, with a valid CSRF token.
async fn require_policy_admin(state: &AppState, headers: &HeaderMap, csrf_token: &str) -> Result<Signed, Response> {
    if !csrf_ok(state, headers, csrf_token) {
        return Err(csrf_refusal());
    }
    let signed = require_admin(state, headers).await?;
    if !may_change(&signed) {
        return Err(not_allowed());
    }
    Ok(signed)
}

/// Publish a rule change in this process at once (other replicas follow within a second).
async fn reload(state: &AppState) {
    if let Err(error) = state.snapshot.reload(&state.store, &state.keys).await {
        tracing::warn!(%error, "snapshot reload after a rule change failed; the refresher will retry");
    }
}

fn not_allowed() -> Response {
    html_response(
        StatusCode::FORBIDDEN,
        page("Not allowed", None, note("error", "Your admin roles do not let you change access rules.")),
    )
}

/// Where to go back to after a change to `spec`.
fn home_of(spec: &RuleSpec) -> String {
    match spec.servers.first() {
        Some(server) if !spec.global => format!("/console/servers/{}/permissions", super::url_encode(server)),
        _ => "/console/policies".to_owned(),
    }
}

/// `POST /console/rules`: simulate or save the rule in the form (a new one, or rule `id`).
pub async fn save(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<RuleForm>) -> Response {
    let signed = match require_policy_admin(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let global = form.global.is_some();
    let again = |problem: &str, form: &RuleForm| {
        let mut content = Html::new();
        content.push(note("error", problem));
        content.push(rule_form(&csrf_token, form, global));
        (content, "Rule not saved")
    };
    let id = Some(form.id.trim()).filter(|id| !id.is_empty());
    let spec = match form.spec() {
        Ok(spec) => spec,
        Err(problem) => {
            let (content, title) = again(&problem, &form);
            return respond(signed, &csrf_token, set, title, content);
        }
    };
    if form.intent == "simulate" {
        let Ok(snapshot) = state.snapshot.current() else {
            let (content, title) =
                again("The gateway cannot read its policy store right now; try again shortly.", &form);
            return respond(signed, &csrf_token, set, title, content);
        };
        let draft = match id {
            Some(id) => Draft::Update { id: id.to_owned(), rule: spec },
            None => Draft::Create(spec),
        };
        return match review::simulate(&state.store, &state.audit, &snapshot, &draft, 30).await {
            Ok(simulation) => {
                let mut content = simulation_report(&simulation);
                content.push(Html::trusted("<h2>The rule</h2>".into()));
                content.push(rule_form(&csrf_token, &form, global));
                respond(signed, &csrf_token, set, "Simulation", content)
            }
            Err(error) => {
                let (content, title) = again(&error.to_string(), &form);
                respond(signed, &csrf_token, set, title, content)
            }
        };
    }
    let saved = async {
        let mut transaction = state.store.begin_write().await.map_err(StoreError::from)?;
        let saved = crate::rules::save(&mut transaction, &spec, id, &signed.account.email, &state.replica).await?;
        transaction.commit().await.map_err(StoreError::from)?;
        Ok::<_, crate::rules::SaveError>(saved)
    }
    .await;
    match saved {
        Ok(saved) => {
            reload(&state).await;
            if saved.warnings.is_empty() {
                return redirect(&home_of(&saved.rule.spec));
            }
            let mut content = Html::new();
            for warning in &saved.warnings {
                content.push(note("hint", warning));
            }
            content.push(link(&home_of(&saved.rule.spec), "Back to the rules"));
            respond(signed, &csrf_token, set, "Rule saved, with warnings", content)
        }
        Err(
            crate::rules::SaveError::Invalid(problem) | crate::rules::SaveError::Store(StoreError::Conflict(problem)),
        ) => {
            let (content, title) = again(&problem, &form);
            respond(signed, &csrf_token, set, title, content)
        }
        Err(crate::rules::SaveError::Store(error)) => failure(&error),
    }
}

fn simulation_report(simulation: &review::Simulation) -> Html {
    let mut content = Html::new();
    content.push(facts(&[
        ("Calls replayed", format!("{} (last {} days)", simulation.replayed, simulation.days)),
        ("Decisions that would change", simulation.changes.len().to_string()),
        (
            "Who would gain access",
            simulation.gains.iter().map(|(who, calls)| format!("{who} ({calls})")).collect::<Vec<_>>().join(", "),
        ),
        (
            "Who would lose access",
            simulation.losses.iter().map(|(who, calls)| format!("{who} ({calls})")).collect::<Vec<_>>().join(", "),
        ),
    ]));
    if simulation.changes.is_empty() {
        content.push(note("hint", "No recorded call would be decided differently."));
    } else {
        let rows: Vec<Vec<Html>> = simulation
            .changes
            .iter()
            .take(200)
            .map(|change| {
                vec![
                    cell(&change.time),
                    cell(&change.user),
                    cell(&change.server),
                    cell(&change.method),
                    cell(change.target.as_deref().unwrap_or("")),
                    cell(&format!("{} → {}", change.now, change.with_change)),
                    cell(&change.reason),
                ]
            })
            .collect();
        content.push(rich_table(&["Time (UTC)", "Who", "Server", "Request", "Target", "Decision", "Why"], &rows));
    }
    content.push(note("hint", "Nothing is saved until you press Save."));
    content
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /console/rules/{id}/delete`: delete a rule; whoever relied on it loses access at once.
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let signed = match require_policy_admin(&state, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let deleted = async {
        let mut transaction = state.store.begin_write().await?;
        let deleted = crate::rules::delete(&mut transaction, &id, &signed.account.email, &state.replica).await?;
        transaction.commit().await?;
        Ok::<_, StoreError>(deleted)
    }
    .await;
    match deleted {
        Ok(rule) => {
            reload(&state).await;
            redirect(&home_of(&rule.spec))
        }
        Err(StoreError::NotFound(text)) => {
            html_response(StatusCode::NOT_FOUND, page("Not found", None, note("error", &text)))
        }
        Err(error) => failure(&error),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct AccessQuery {
    #[serde(default)]
    server: String,
    #[serde(default)]
    user: String,
}

fn may_review(signed: &Signed) -> bool {
    signed.account.admin_roles.iter().any(|role| role.can(Power::ReadAudit))
}

/// A signed-in admin whose roles read audit, who may review access.
async fn require_reviewer(state: &AppState, headers: &HeaderMap) -> Result<Signed, Response> {
    let signed = require_admin(state, headers).await?;
    if !may_review(&signed) {
        return Err(html_response(
            StatusCode::FORBIDDEN,
            page("Not allowed", None, note("error", "Access reviews need an admin role that reads audit.")),
        ));
    }
    Ok(signed)
}

/// The effective-access rows asked for, for a signed-in admin who reads audit.
async fn access_rows(
    state: &AppState,
    headers: &HeaderMap,
    query: &AccessQuery,
) -> Result<(Signed, Vec<review::AccessRow>), Response> {
    let signed = require_reviewer(state, headers).await?;
    let Ok(snapshot) = state.snapshot.current() else {
        return Err(failure(&StoreError::Open("the policy snapshot is stale".into())));
    };
    let server = Some(query.server.trim()).filter(|text| !text.is_empty());
    let user = Some(query.user.trim()).filter(|text| !text.is_empty());
    Ok((signed, review::effective_access(&snapshot, server, user)))
}

/// `GET /console/access`: effective access, for a server or a person, with a CSV download.
pub async fn access(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<AccessQuery>) -> Response {
    let (signed, rows) = match access_rows(&state, &headers, &query).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let mut content = Html::new();
    content.push(super::html::filters(
        "/console/access",
        &[
            super::html::Filter { name: "server", label: "Server", value: &query.server, options: &[] },
            super::html::Filter { name: "user", label: "Person (email)", value: &query.user, options: &[] },
        ],
    ));
    let csv = format!(
        "/console/access.csv?server={}&user={}",
        super::url_encode(&query.server),
        super::url_encode(&query.user)
    );
    content.push(link(&csv, "Download as CSV"));
    content.push(link("/console/access/stale?days=90", "Stale access: rules people have not used in 90 days"));
    if rows.is_empty() {
        content.push(note("hint", "Nobody has a rule on what you chose."));
    } else {
        let table: Vec<Vec<Html>> = rows
            .iter()
            .map(|row| {
                vec![
                    cell(&row.user),
                    cell(&row.server),
                    cell(if row.can_connect { "yes" } else { "no" }),
                    cell(row.effect),
                    cell(&row.rule),
                    cell(&row.scope),
                    cell(&row.conditions.join("; ")),
                    cell(row.expires.as_deref().unwrap_or("")),
                ]
            })
            .collect();
        content.push(rich_table(
            &["Person", "Server", "Can connect", "Effect", "Through rule", "Scope", "Conditions", "Expires"],
            &table,
        ));
    }
    respond(signed, &csrf_token, set, "Effective access", content)
}

/// `GET /console/access.csv`: the same rows as a CSV file.
pub async fn access_csv(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<AccessQuery>,
) -> Response {
    let rows = match access_rows(&state, &headers, &query).await {
        Ok((_, rows)) => rows,
        Err(response) => return response,
    };
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"portcullis-access.csv\""),
        ],
        review::access_csv(&rows),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct StaleQuery {
    days: Option<u32>,
}

/// `GET /console/access/stale?days=N`: allow rules with people who made no call through them
/// in N days ("regularly audit access").
pub async fn stale(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<StaleQuery>) -> Response {
    let signed = match require_reviewer(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let Ok(snapshot) = state.snapshot.current() else {
        return failure(&StoreError::Open("the policy snapshot is stale".into()));
    };
    let days = query.days.unwrap_or(90).clamp(1, 3650);
    let stale = match review::stale_access(&state.store, &snapshot, days).await {
        Ok(stale) => stale,
        Err(error) => return failure(&error),
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let mut content = Html::new();
    content.push(note(
        "hint",
        &format!("Allow rules whose people made no call through them in the last {days} days: candidates to narrow or remove."),
    ));
    if stale.is_empty() {
        content.push(note("hint", "Every allow rule was used by everyone it covers."));
    } else {
        let rows: Vec<Vec<Html>> = stale
            .iter()
            .map(|rule| {
                vec![
                    cell(&rule.rule),
                    cell(&rule.servers.join(", ")),
                    cell(&format!("{} of {}", rule.unused_by.len(), rule.people)),
                    cell(&rule.unused_by.join(", ")),
                    cell(rule.last_used.as_deref().unwrap_or("never")),
                ]
            })
            .collect();
        content.push(rich_table(&["Rule", "Servers", "Unused by", "People", "Last used"], &rows));
    }
    respond(signed, &csrf_token, set, "Stale access", content)
}
