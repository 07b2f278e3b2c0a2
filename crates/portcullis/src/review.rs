//! Access reviews: **effective access** (who can use which server, through which rules),
//! **stale access** (allow rules whose people have not used them for N days), and the
//! **simulator** (what a draft rule change would have decided differently over the calls
//! recorded in the last N days, before it is saved).

use crate::access::{self, Ask, Origin};
use crate::audit::AuditLog;
use crate::auth::Caller;
use crate::rules::{Known, RuleSpec};
use crate::snapshot::{Snapshot, UserEntry};
use crate::store::{self, Store, StoreError};
use crate::time::iso_time;
use policy::{Action, Effect, PolicySet, Rule};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

/// One line of an access review: a person, a server, and one rule about them there.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRow {
    pub user: String,
    pub server: String,
    /// Could they open a session at all (allow rules counted whatever their conditions)?
    pub can_connect: bool,
    pub rule: String,
    pub effect: &'static str,
    pub global: bool,
    /// What the rule covers: `entire server`, or its tools, resources and prompts.
    pub scope: String,
    pub conditions: Vec<String>,
    pub expires: Option<String>,
}

fn scope_of(rule: &Rule) -> String {
    let mut parts = Vec::new();
    for (kind, patterns) in [("tools", &rule.tools), ("resources", &rule.resources), ("prompts", &rule.prompts)] {
        if !patterns.is_empty() {
            parts.push(format!("{kind}: {}", patterns.join(", ")));
        }
    }
    if parts.is_empty() { "entire server".to_owned() } else { parts.join("; ") }
}

/// Effective access now: for every active person (or only `user`) and every server (or only
/// `server`), the rules about them there — allows and the denies that narrow them. People no
/// rule lets in on a server are left out, except on public servers.
pub fn effective_access(snapshot: &Snapshot, server: Option<&str>, user: Option<&str>) -> Vec<AccessRow> {
    let now = store::now_ms();
    let mut users: Vec<&Arc<UserEntry>> = snapshot
        .users
        .values()
        .filter(|entry| entry.status == crate::registry::Status::Active)
        .filter(|entry| user.is_none_or(|email| entry.email.eq_ignore_ascii_case(email)))
        .collect();
    users.sort_by(|a, b| a.email.cmp(&b.email));
    let mut servers: Vec<&str> = snapshot
        .servers
        .keys()
        .map(String::as_str)
        .filter(|name| server.is_none_or(|wanted| wanted == *name))
        .collect();
    servers.sort_unstable();
    let mut rows = Vec::new();
    for entry in users {
        let caller = Caller::User { user: entry.clone(), oauth: None };
        for &server in &servers {
            let can_connect = access::reachable(snapshot, &caller, &Ask::connect(server)).is_allowed();
            let row = |rule: String, effect: &'static str, global: bool, scope: String| AccessRow {
                user: entry.email.clone(),
                server: server.to_owned(),
                can_connect,
                rule,
                effect,
                global,
                scope,
                conditions: Vec::new(),
                expires: None,
            };
            let about: Vec<&Rule> = snapshot.policy.rules().about(&entry.subject, server, now).collect();
            let public = snapshot.policy.is_public(server);
            // Only people something lets in: denies alone are listed with the rules that
            // let them in, not for everyone on every server.
            if !public && !about.iter().any(|rule| rule.effect == Effect::Allow) {
                continue;
            }
            for rule in about {
                let mut line = row(
                    rule.name.clone(),
                    if rule.effect == Effect::Allow { "allow" } else { "deny" },
                    rule.global,
                    scope_of(rule),
                );
                line.conditions = rule
                    .conditions
                    .iter()
                    .map(|condition| format!("{} {} {}", condition.field, condition.op, condition.value))
                    .collect();
                line.expires = rule.expires_at.map(iso_time);
                rows.push(line);
            }
            if public {
                rows.push(row("(public server)".into(), "allow", false, "entire server".into()));
            }
        }
    }
    rows
}

/// A CSV cell: quoted when needed, and never read as a formula by a spreadsheet.
fn cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_owned() };
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text }
}

/// The rows as CSV, for access reviews in a spreadsheet.
pub fn access_csv(rows: &[AccessRow]) -> String {
    let mut out = String::from("user,server,can_connect,effect,rule,global,scope,conditions,expires\n");
    for row in rows {
        let cells = [
            cell(&row.user),
            cell(&row.server),
            row.can_connect.to_string(),
            row.effect.to_owned(),
            cell(&row.rule),
            row.global.to_string(),
            cell(&row.scope),
            cell(&row.conditions.join("; ")),
            cell(row.expires.as_deref().unwrap_or("")),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// An allow rule some of whose people have not used it lately.
#[derive(Debug, Clone, Serialize)]
pub struct StaleRule {
    pub rule: String,
    pub servers: Vec<String>,
    /// Active people the rule is about.
    pub people: usize,
    pub used_by: Vec<String>,
    pub unused_by: Vec<String>,
    pub last_used: Option<String>,
}

/// Allow rules with people who have not used them for `days` days ("regularly audit access"),
/// most unused first. Use is read from the audit log: calls the rule allowed.
pub async fn stale_access(store: &Store, snapshot: &Snapshot, days: u32) -> Result<Vec<StaleRule>, StoreError> {
    let since = store::now_ms() - i64::from(days) * 86_400_000;
    let mut connection = store.pool.acquire().await?;
    let uses = store::audit::rule_use(&mut connection, since).await?;
    drop(connection);
    // rule name → (who used it, when last)
    let mut used: BTreeMap<String, (BTreeSet<String>, i64)> = BTreeMap::new();
    for (principal, rules, last) in uses {
        for rule in rules {
            let slot = used.entry(rule).or_insert_with(|| (BTreeSet::new(), 0));
            slot.0.insert(principal.clone());
            slot.1 = slot.1.max(last);
        }
    }
    let now = store::now_ms();
    let active: Vec<&Arc<UserEntry>> =
        snapshot.users.values().filter(|entry| entry.status == crate::registry::Status::Active).collect();
    let mut stale = Vec::new();
    for rule in snapshot.policy.rules().iter() {
        let live = rule.enabled && rule.expires_at.is_none_or(|expires| now < expires);
        if rule.effect != Effect::Allow || !live {
            continue;
        }
        let mut people: Vec<&str> = active
            .iter()
            .filter(|entry| rule.principals.matches(&entry.subject, false))
            .map(|entry| entry.email.as_str())
            .collect();
        people.sort_unstable();
        let (used_by, last) =
            used.get(&rule.name).map_or((BTreeSet::new(), None), |(who, last)| (who.clone(), Some(*last)));
        let unused_by: Vec<String> =
            people.iter().filter(|email| !used_by.contains(**email)).map(|email| email.to_string()).collect();
        if unused_by.is_empty() {
            continue;
        }
        stale.push(StaleRule {
            rule: rule.name.clone(),
            servers: rule.servers.clone(),
            people: people.len(),
            used_by: used_by.into_iter().collect(),
            unused_by,
            last_used: last.map(iso_time),
        });
    }
    stale.sort_by(|a, b| b.unused_by.len().cmp(&a.unused_by.len()).then(a.rule.cmp(&b.rule)));
    Ok(stale)
}

/// A rule change to try before saving it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Draft {
    /// A new rule.
    Create(RuleSpec),
    /// Rule `id` replaced by `rule`.
    Update { id: String, rule: RuleSpec },
    /// Rule `id` deleted.
    Delete(String),
}

/// One recorded call the draft would decide differently.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub time: String,
    pub user: String,
    pub server: String,
    pub method: String,
    pub target: Option<String>,
    /// The decision under the rules in force now, and under the draft.
    pub now: &'static str,
    pub with_change: &'static str,
    pub reason: String,
}

/// What a draft would change.
#[derive(Debug, Clone, Serialize)]
pub struct Simulation {
    pub days: u32,
    /// Recorded calls decided again.
    pub replayed: usize,
    /// Recorded calls that could not be (their user is gone or not active).
    pub skipped: usize,
    pub changes: Vec<Change>,
    /// People who would gain access, with how many of their calls would change.
    pub gains: BTreeMap<String, usize>,
    pub losses: BTreeMap<String, usize>,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The calls replayed at most.
pub const REPLAY_LIMIT: i64 = 20_000;

/// Replay the calls recorded in the last `days` days (at most [`REPLAY_LIMIT`], newest first)
/// under the rules in force and under the rules with `draft` applied; report every decision
/// that would change. Nothing is saved.
pub async fn simulate(
    store: &Store,
    audit: &AuditLog,
    snapshot: &Snapshot,
    draft: &Draft,
    days: u32,
) -> Result<Simulation, SimulationError> {
    let mut connection = store.pool.acquire().await.map_err(StoreError::from)?;
    let stored = store::rules::list_rules(&mut connection).await?;
    let grants = store::registry::list_grants(&mut connection).await?;
    let since = store::now_ms() - i64::from(days) * 86_400_000;
    let filter = store::audit::Filter { since_ms: Some(since), limit: REPLAY_LIMIT, ..Default::default() };
    let events = store::audit::query(&mut connection, &filter).await?;
    drop(connection);

    let servers: HashSet<String> = snapshot.servers.keys().cloned().collect();
    let known = Known { servers: &servers };
    let mut specs: Vec<RuleSpec> = stored.iter().map(|rule| rule.spec.clone()).collect();
    let exists = |id: &str| {
        stored
            .iter()
            .position(|rule| rule.id == id)
            .ok_or_else(|| SimulationError::Invalid(format!("there is no rule with id {id:?}")))
    };
    match draft {
        Draft::Create(spec) => specs.push(spec.clone()),
        Draft::Update { id, rule } => specs[exists(id)?] = rule.clone(),
        Draft::Delete(id) => {
            specs.remove(exists(id)?);
        }
    }
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(specs.len());
    for spec in &specs {
        let rule = spec.compile(Some(&known)).map_err(|error| SimulationError::Invalid(error.0))?;
        if !names.insert(rule.name.clone()) {
            return Err(SimulationError::Invalid(format!("a rule named {:?} exists already", rule.name)));
        }
        rules.push(rule);
    }
    let grants: Vec<policy::Grant> = grants
        .iter()
        .map(|grant| {
            let (users, groups) = match grant.grantee {
                crate::registry::Grantee::User => (vec![grant.principal.clone()], Vec::new()),
                crate::registry::Grantee::Group => (Vec::new(), vec![grant.principal.clone()]),
            };
            policy::Grant { server: grant.server.clone(), users, groups }
        })
        .collect();
    let public: HashSet<String> =
        snapshot.servers.values().filter(|entry| entry.server.public).map(|entry| entry.server.name.clone()).collect();
    let drafted = PolicySet::new(rules, &grants, public).map_err(|error| SimulationError::Invalid(error.0))?;

    let mut simulation = Simulation {
        days,
        replayed: 0,
        skipped: 0,
        changes: Vec::new(),
        gains: BTreeMap::new(),
        losses: BTreeMap::new(),
    };
    for event in &events {
        let action = match event.method.as_str() {
            "tools/call" => Action::CallTool,
            "resources/read" => Action::ReadResource,
            "prompts/get" => Action::GetPrompt,
            "initialize" => Action::Connect,
            _ => continue,
        };
        let (Some(server), Some(user_id)) = (event.server.as_deref(), event.user_id.as_deref()) else { continue };
        let Some(user) = snapshot.users.get(user_id).filter(|user| user.status == crate::registry::Status::Active)
        else {
            simulation.skipped += 1;
            continue;
        };
        let caller = Caller::User { user: user.clone(), oauth: None };
        let payload = event.sealed_arguments.as_deref().and_then(|sealed| audit.open_arguments(sealed));
        let client = event.client_name.as_deref().map(|name| (name, event.client_version.as_deref().unwrap_or("")));
        let origin = Origin { ip: event.ip.as_deref(), user_agent: None, client };
        let ask = Ask { server, action, name: event.target.as_deref().unwrap_or(""), payload: payload.as_ref() };
        let before = access::decide_under(&snapshot.policy, snapshot, &caller, &origin, &ask);
        let after = access::decide_under(&drafted, snapshot, &caller, &origin, &ask);
        simulation.replayed += 1;
        if before.is_allowed() == after.is_allowed() {
            continue;
        }
        let tally = if after.is_allowed() { &mut simulation.gains } else { &mut simulation.losses };
        *tally.entry(user.email.clone()).or_default() += 1;
        simulation.changes.push(Change {
            time: iso_time(event.time_ms),
            user: user.email.clone(),
            server: server.to_owned(),
            method: event.method.clone(),
            target: event.target.clone(),
            now: before.effect.as_str(),
            with_change: after.effect.as_str(),
            reason: after.reason,
        });
    }
    Ok(simulation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("-1"), "'-1");
    }
}
