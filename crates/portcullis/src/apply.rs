//! `portcullis apply -f FILE`: declarative servers, groups, users, grants and access rules
//! from TOML.
//!
//! Idempotent: applying the same file twice changes nothing the second time. It adds and
//! updates; it deletes only with `--prune`. Everything happens in one transaction, so a file
//! with an error changes nothing, and `--dry-run` is the same run rolled back. Secrets may be
//! written inline or as `env:VAR` / `file:PATH` references, resolved at apply time and then
//! stored encrypted.

use crate::crypto::Keys;
use crate::registry::{
    AdminRole, Email, Grantee, Invalid, OAuthUpstream, Server, ServerSecrets, ServerSlug, ServerSpec, Transport,
    parse_group_name,
};
use crate::store::{self, Store, StoreError};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Why a file could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot read {path}: {problem}")]
    Read { path: String, problem: String },
    #[error("{path}: {problem}")]
    Parse { path: String, problem: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Invalid> for ApplyError {
    fn from(error: Invalid) -> Self {
        ApplyError::Invalid(error.0)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    servers: Vec<ServerDocument>,
    #[serde(default)]
    groups: Vec<GroupDocument>,
    #[serde(default)]
    users: Vec<UserDocument>,
    #[serde(default)]
    grants: Vec<GrantDocument>,
    /// Access rules; see [`crate::rules::RuleSpec`].
    #[serde(default)]
    rules: Vec<crate::rules::RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerDocument {
    name: String,
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
    /// Per-user OAuth: `oauth = { scopes = [...], client_id = "…", client_secret = "env:…", internal = true }`.
    #[serde(default)]
    oauth: Option<OAuthDocument>,
}

/// The `oauth` table of a server (also the API's `oauth` object).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthDocument {
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    /// A secret (inline, `env:VAR` or `file:PATH`).
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub internal: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDocument {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserDocument {
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    admin: bool,
    /// Admin roles besides (or instead of) `admin = true`: `super-admin`, `security-admin`,
    /// `it-admin`, `analytics-admin`.
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantDocument {
    server: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

/// What a run changed (or, for a dry run, would change), one line per change.
#[derive(Debug, Default)]
pub struct Report {
    pub changes: Vec<String>,
    /// What was applied but deserves a second look (a rule naming a tool its server never listed).
    pub warnings: Vec<String>,
}

/// Options of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub prune: bool,
    pub dry_run: bool,
}

/// Resolve a secret reference: `env:VAR`, `file:PATH`, or the literal value.
fn resolve_secret(value: &str, what: &str) -> Result<String, ApplyError> {
    crate::config::resolve_secret_reference(value).map_err(|problem| ApplyError::Invalid(format!("{what} {problem}")))
}

fn server_spec(document: &ServerDocument) -> Result<ServerSpec, ApplyError> {
    let name = ServerSlug::parse(&document.name)?;
    let transport = Transport::parse(&document.transport)
        .map_err(|error| ApplyError::Invalid(format!("server {name}: {}", error.0)))?;
    let mut env = BTreeMap::new();
    for (key, value) in &document.env {
        env.insert(key.clone(), resolve_secret(value, &format!("server {name}, env {key}"))?);
    }
    let mut headers = BTreeMap::new();
    for (key, value) in &document.headers {
        headers.insert(key.clone(), resolve_secret(value, &format!("server {name}, header {key}"))?);
    }
    let (oauth, oauth_client_secret) = match &document.oauth {
        None => (None, None),
        Some(oauth) => {
            let secret = match &oauth.client_secret {
                Some(value) => Some(resolve_secret(value, &format!("server {name}, oauth client_secret"))?),
                None => None,
            };
            let public = OAuthUpstream {
                scopes: oauth.scopes.clone(),
                client_id: oauth.client_id.clone(),
                internal: oauth.internal,
            };
            (Some(public), secret)
        }
    };
    let spec = ServerSpec {
        name,
        description: document.description.clone(),
        transport,
        url: document.url.clone(),
        command: document.command.clone(),
        args: document.args.clone(),
        env,
        headers,
        public: document.public,
        shared_process: document.shared_process,
        oauth,
        oauth_client_secret,
    };
    spec.validate()?;
    Ok(spec)
}

/// A stored [`Server`] for a spec, with its secrets sealed under the server's id.
pub fn seal_server(keys: &Keys, spec: &ServerSpec, id: &str) -> Server {
    let secrets = ServerSecrets {
        env: spec.env.clone(),
        headers: spec.headers.clone(),
        oauth_client_secret: spec.oauth_client_secret.clone(),
    };
    let sealed = keys.secrets.seal(&serde_json::to_vec(&secrets).unwrap_or_default(), id.as_bytes());
    Server {
        id: id.to_owned(),
        name: spec.name.to_string(),
        description: spec.description.clone(),
        transport: spec.transport,
        url: spec.url.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env_names: spec.env.keys().cloned().collect(),
        header_names: spec.headers.keys().cloned().collect(),
        public: spec.public,
        shared_process: spec.shared_process,
        oauth: spec.oauth.clone(),
        created_at: 0,
        updated_at: 0,
        sealed_secrets: sealed,
    }
}

/// Store a server (create or update). Returns a line describing the change, if anything changed.
pub async fn put_server(
    connection: &mut sqlx::AnyConnection,
    keys: &Keys,
    spec: &ServerSpec,
) -> Result<Option<String>, StoreError> {
    let existing = store::registry::get_server(connection, spec.name.as_str()).await?;
    let id = match &existing {
        Some(existing) => {
            let secrets: ServerSecrets = keys
                .secrets
                .open(&existing.sealed_secrets, existing.id.as_bytes())
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
            let differences = differences(existing, &secrets, spec);
            if differences.is_empty() {
                return Ok(None);
            }
            let server = seal_server(keys, spec, &existing.id);
            store::registry::upsert_server(connection, &server).await?;
            return Ok(Some(format!("~ server {} ({})", spec.name, differences.join(", "))));
        }
        None => crate::crypto::new_id(),
    };
    // Seal under the id the row will get.
    let server = seal_server(keys, spec, &id);
    store::registry::upsert_server(connection, &server).await?;
    Ok(Some(format!("+ server {} ({})", spec.name, spec.transport.as_str())))
}

fn differences(existing: &Server, secrets: &ServerSecrets, spec: &ServerSpec) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if existing.description != spec.description {
        changed.push("description");
    }
    if existing.transport != spec.transport {
        changed.push("transport");
    }
    if existing.url != spec.url {
        changed.push("url");
    }
    if existing.command != spec.command {
        changed.push("command");
    }
    if existing.args != spec.args {
        changed.push("args");
    }
    if secrets.env != spec.env {
        changed.push("env");
    }
    if secrets.headers != spec.headers {
        changed.push("headers");
    }
    if existing.oauth != spec.oauth || secrets.oauth_client_secret != spec.oauth_client_secret {
        changed.push("oauth");
    }
    if existing.public != spec.public {
        changed.push("public");
    }
    if existing.shared_process != spec.shared_process {
        changed.push("shared_process");
    }
    changed
}

/// Read and apply a file.
pub async fn apply_file(store: &Store, keys: &Keys, path: &Path, options: Options) -> Result<Report, ApplyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|error| ApplyError::Read { path: shown.clone(), problem: error.to_string() })?;
    apply_text(store, keys, &text, &shown, options).await
}

/// Apply a TOML document (`source` names it in messages).
pub async fn apply_text(
    store: &Store,
    keys: &Keys,
    text: &str,
    source: &str,
    options: Options,
) -> Result<Report, ApplyError> {
    let document: Document = toml::from_str(text)
        .map_err(|error| ApplyError::Parse { path: source.to_owned(), problem: error.to_string() })?;

    // Validate everything before writing anything.
    let mut specs = Vec::new();
    let mut server_names = BTreeSet::new();
    for server in &document.servers {
        let spec = server_spec(server)?;
        if !server_names.insert(spec.name.to_string()) {
            return Err(ApplyError::Invalid(format!("server {} is listed twice", spec.name)));
        }
        specs.push(spec);
    }
    // Group names match case-insensitively (identity providers vary the case): the first
    // spelling seen, in the store or else in the file, is the group's name.
    let mut group_names: Vec<String> = Vec::new();
    for group in &document.groups {
        group_names.push(parse_group_name(&group.name)?);
    }
    let mut users = Vec::new();
    let mut emails = BTreeSet::new();
    for user in &document.users {
        let email = Email::parse(&user.email)?;
        if !emails.insert(email.to_string()) {
            return Err(ApplyError::Invalid(format!("user {email} is listed twice")));
        }
        let groups: Vec<String> = user.groups.iter().map(|group| parse_group_name(group)).collect::<Result<_, _>>()?;
        let mut roles: Vec<AdminRole> = user
            .roles
            .iter()
            .map(|role| {
                AdminRole::parse(role).map_err(|error| ApplyError::Invalid(format!("user {email}: {}", error.0)))
            })
            .collect::<Result<_, _>>()?;
        if user.admin {
            roles.push(AdminRole::SuperAdmin);
        }
        group_names.extend(groups.iter().cloned());
        users.push((email, user, groups, roles));
    }

    let mut rule_names = BTreeSet::new();
    for rule in &document.rules {
        // Checked here for everything but the servers it names (those may be in this file).
        rule.compile(None)?;
        if !rule_names.insert(rule.name.trim().to_owned()) {
            return Err(ApplyError::Invalid(format!("rule {:?} is listed twice", rule.name.trim())));
        }
    }

    let mut transaction = store.begin_write().await.map_err(StoreError::from)?;
    let mut report = Report::default();
    for spec in &specs {
        if let Some(change) = put_server(&mut transaction, keys, spec).await? {
            report.changes.push(change);
        }
    }
    let existing_groups = store::registry::list_groups(&mut transaction).await?;
    let mut canonical: BTreeMap<String, String> =
        existing_groups.iter().map(|group| (group.name.to_lowercase(), group.name.clone())).collect();
    let mut group_ids: BTreeMap<String, String> =
        existing_groups.iter().map(|group| (group.name.to_lowercase(), group.id.clone())).collect();
    for name in &group_names {
        let folded = name.to_lowercase();
        if !canonical.contains_key(&folded) {
            let id = store::registry::ensure_group(&mut transaction, name).await?;
            report.changes.push(format!("+ group {name}"));
            canonical.insert(folded.clone(), name.clone());
            group_ids.insert(folded, id);
        }
    }
    let existing_users = store::registry::list_users(&mut transaction).await?;
    let mut user_ids = BTreeMap::new();
    for (email, document, groups, roles) in &users {
        let existing = existing_users.iter().find(|user| user.email == email.as_str());
        let mut wanted_groups: Vec<String> =
            groups.iter().map(|group| canonical[&group.to_lowercase()].clone()).collect();
        wanted_groups.sort();
        wanted_groups.dedup();
        let id = match existing {
            Some(user) => {
                let mut changed = Vec::new();
                if user.name != document.name {
                    changed.push("name");
                }
                let mut wanted_roles = roles.clone();
                wanted_roles.sort();
                wanted_roles.dedup();
                if user.admin_roles != wanted_roles {
                    changed.push("admin roles");
                }
                let mut current_groups = user.groups.clone();
                current_groups.sort();
                if current_groups != wanted_groups {
                    changed.push("groups");
                }
                if changed.contains(&"name") {
                    store::registry::upsert_user(&mut transaction, email.as_str(), &document.name, user.admin).await?;
                }
                if changed.contains(&"admin roles") {
                    set_roles(&mut transaction, &user.id, email.as_str(), roles).await?;
                }
                if !changed.is_empty() {
                    report.changes.push(format!("~ user {email} ({})", changed.join(", ")));
                }
                if changed.contains(&"groups") {
                    let ids: Vec<String> =
                        wanted_groups.iter().map(|group| group_ids[&group.to_lowercase()].clone()).collect();
                    store::registry::set_memberships(&mut transaction, &user.id, &ids).await?;
                }
                user.id.clone()
            }
            None => {
                let id = store::registry::upsert_user(&mut transaction, email.as_str(), &document.name, false).await?;
                let ids: Vec<String> =
                    wanted_groups.iter().map(|group| group_ids[&group.to_lowercase()].clone()).collect();
                store::registry::set_memberships(&mut transaction, &id, &ids).await?;
                set_roles(&mut transaction, &id, email.as_str(), roles).await?;
                let label: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
                let label = if label.is_empty() { String::new() } else { format!(" ({})", label.join(", ")) };
                report.changes.push(format!("+ user {email}{label}"));
                id
            }
        };
        user_ids.insert(email.to_string(), id);
    }

    // Grants may name servers, users and groups that exist already, not only those in the file.
    let servers = store::registry::list_servers(&mut transaction).await?;
    let all_users = store::registry::list_users(&mut transaction).await?;
    let all_groups = store::registry::list_groups(&mut transaction).await?;
    let existing_grants = store::registry::list_grants(&mut transaction).await?;
    let mut wanted_grants = BTreeSet::new();
    for grant in &document.grants {
        let server = servers.iter().find(|server| server.name == grant.server).ok_or_else(|| {
            ApplyError::Invalid(format!(
                "a grant names server {:?}, which is neither in the file nor registered",
                grant.server
            ))
        })?;
        if grant.users.is_empty() && grant.groups.is_empty() {
            return Err(ApplyError::Invalid(format!(
                "the grant for server {} names no users and no groups",
                grant.server
            )));
        }
        for user in &grant.users {
            let email = Email::parse(user)?;
            let found = all_users.iter().find(|candidate| candidate.email == email.as_str()).ok_or_else(|| {
                ApplyError::Invalid(format!(
                    "the grant for server {} names user {email}, who does not exist",
                    grant.server
                ))
            })?;
            wanted_grants.insert((
                server.id.clone(),
                Grantee::User,
                found.id.clone(),
                format!("{} → user {email}", server.name),
            ));
        }
        for group in &grant.groups {
            let name = parse_group_name(group)?;
            let found =
                all_groups.iter().find(|candidate| candidate.name.eq_ignore_ascii_case(&name)).ok_or_else(|| {
                    ApplyError::Invalid(format!(
                        "the grant for server {} names group {name:?}, which does not exist (add it under [[groups]])",
                        grant.server
                    ))
                })?;
            wanted_grants.insert((
                server.id.clone(),
                Grantee::Group,
                found.id.clone(),
                format!("{} → group {name}", server.name),
            ));
        }
    }
    for (server_id, grantee, principal_id, label) in &wanted_grants {
        let exists = existing_grants.iter().any(|grant| {
            grant.grantee == *grantee
                && grant.principal_id == *principal_id
                && servers.iter().any(|server| server.id == *server_id && server.name == grant.server)
        });
        if !exists {
            store::registry::add_grant(&mut transaction, server_id, *grantee, principal_id).await?;
            report.changes.push(format!("+ grant {label}"));
        }
    }

    let existing_rules = store::rules::list_rules(&mut transaction).await?;
    for rule in &document.rules {
        let existing = existing_rules.iter().find(|stored| stored.spec.name == rule.name.trim());
        let saved =
            crate::rules::save(&mut transaction, rule, existing.map(|stored| stored.id.as_str()), "apply", "cli")
                .await
                .map_err(|error| match error {
                    crate::rules::SaveError::Invalid(text) => ApplyError::Invalid(text),
                    crate::rules::SaveError::Store(error) => ApplyError::Store(error),
                })?;
        match (existing, saved.changed) {
            (None, _) => report.changes.push(format!("+ rule {}", rule.name.trim())),
            (Some(_), true) => report.changes.push(format!("~ rule {}", rule.name.trim())),
            (Some(_), false) => {}
        }
        if saved.changed {
            report.warnings.extend(saved.warnings);
        }
    }

    if options.prune {
        for rule in &existing_rules {
            if !rule_names.contains(&rule.spec.name) {
                crate::rules::delete(&mut transaction, &rule.id, "apply", "cli").await?;
                report.changes.push(format!("- rule {}", rule.spec.name));
            }
        }
        for grant in &existing_grants {
            let server_id = servers.iter().find(|server| server.name == grant.server).map(|server| server.id.clone());
            let kept = wanted_grants.iter().any(|(id, grantee, principal_id, _)| {
                Some(id) == server_id.as_ref() && *grantee == grant.grantee && *principal_id == grant.principal_id
            });
            if !kept {
                store::registry::delete_grant(&mut transaction, &grant.id).await?;
                report.changes.push(format!(
                    "- grant {} → {} {}",
                    grant.server,
                    grant.grantee.as_str(),
                    grant.principal
                ));
            }
        }
        for server in &servers {
            if !server_names.contains(&server.name) {
                store::registry::delete_server(&mut transaction, &server.name).await?;
                report.changes.push(format!("- server {}", server.name));
            }
        }
        for user in &all_users {
            if !emails.contains(&user.email) {
                store::registry::delete_user(&mut transaction, &user.email).await?;
                report.changes.push(format!("- user {}", user.email));
            }
        }
        for group in &all_groups {
            if !group_names.iter().any(|name| name.eq_ignore_ascii_case(&group.name)) {
                store::registry::delete_group(&mut transaction, &group.name).await?;
                report.changes.push(format!("- group {}", group.name));
            }
        }
    }

    if options.dry_run {
        transaction.rollback().await.map_err(StoreError::from)?;
    } else {
        transaction.commit().await.map_err(StoreError::from)?;
    }
    Ok(report)
}

/// Give the user exactly `roles`, recording each role given or taken in the audit log.
async fn set_roles(
    connection: &mut sqlx::AnyConnection,
    user_id: &str,
    email: &str,
    roles: &[AdminRole],
) -> Result<(), ApplyError> {
    let (added, removed) = store::directory::set_admin_roles(connection, user_id, roles).await?;
    let events = crate::audit::role_changes("apply", email, &added, &removed, "cli");
    store::audit::insert(connection, &events).await?;
    Ok(())
}
