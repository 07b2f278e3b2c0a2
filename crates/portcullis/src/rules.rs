//! Access rules as admins write them — in `[[rules]]` tables of `portcullis apply`, in the
//! REST API and in the console — and their checks. [`RuleSpec`] is the written form (stored as
//! is, so a rule reads back the way it was written); [`RuleSpec::compile`] checks it and turns
//! it into the evaluator's [`policy::Rule`], with errors that name the rule and the bad part.

use crate::registry::Invalid;
use crate::time::{iso_time, parse_iso_time};
use policy::{Condition, Effect, Principals, Rule};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

/// One condition as written: `{ field = "payload.table", op = "in", value = ["orders"] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    pub field: String,
    pub op: String,
    /// Absent for `exists` / `not_exists`.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub value: Value,
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A rule as written. Every list may be omitted; see the module documentation of
/// [`policy::rules`] for what each part means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// `allow` or `deny`.
    pub effect: String,
    /// Applies to every server, tool, resource and prompt (deny rules only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub global: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub everyone: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ConditionSpec>,
    /// RFC 3339 time (or a date) after which the rule no longer applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
}

/// What a rule may name, for the checks that need the registry.
pub struct Known<'a> {
    pub servers: &'a HashSet<String>,
}

impl RuleSpec {
    /// Check the rule and compile it. With `known`, the servers it names must exist.
    pub fn compile(&self, known: Option<&Known<'_>>) -> Result<Rule, Invalid> {
        let name = self.name.trim();
        let bad = |what: String| Invalid(format!("rule {name:?}: {what}"));
        if name.is_empty() {
            return Err(Invalid("every rule needs a name".into()));
        }
        if name.chars().count() > 120 || name.chars().any(char::is_control) {
            return Err(bad("the name must be at most 120 characters, without control characters".into()));
        }
        let effect = match self.effect.as_str() {
            "allow" => Effect::Allow,
            "deny" => Effect::Deny,
            other => return Err(bad(format!("effect {other:?} is not \"allow\" or \"deny\""))),
        };
        if self.global && !self.servers.is_empty() {
            return Err(bad("a global rule applies to every server: drop `servers` or `global`".into()));
        }
        for server in &self.servers {
            if let Some(known) = known
                && !known.servers.contains(server)
            {
                return Err(bad(format!(
                    "there is no server named {server:?}; register it first, or check the spelling"
                )));
            }
        }
        let names = |kind: &str, list: &[String]| -> Result<Vec<String>, Invalid> {
            list.iter()
                .map(|item| {
                    let item = item.trim();
                    if item.is_empty() { Err(bad(format!("{kind} has an empty entry"))) } else { Ok(item.to_owned()) }
                })
                .collect()
        };
        let mut users = names("users", &self.users)?;
        for user in &mut users {
            *user = crate::registry::Email::parse(user).map_err(|error| bad(error.0))?.as_str().to_owned();
        }
        let mut attributes = BTreeMap::new();
        for (key, value) in &self.attributes {
            if key.trim().is_empty() || key.contains('=') {
                return Err(bad(format!("attribute name {key:?} must be non-empty and without '='")));
            }
            attributes.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        let mut conditions = Vec::with_capacity(self.conditions.len());
        for (at, condition) in self.conditions.iter().enumerate() {
            let compiled = Condition::compile(&condition.field, &condition.op, condition.value.clone())
                .map_err(|error| bad(format!("condition {} ({}): {error}", at + 1, condition.field)))?;
            conditions.push(compiled);
        }
        let expires_at = match &self.expires {
            None => None,
            Some(text) => Some(parse_iso_time(text).ok_or_else(|| {
                bad(format!("expires {text:?} is not a time such as \"2099-12-31T00:00:00Z\" or a date \"2099-12-31\""))
            })?),
        };
        let rule = Rule {
            name: name.to_owned(),
            effect,
            global: self.global,
            servers: self.servers.clone(),
            principals: Principals {
                everyone: self.everyone,
                users,
                groups: names("groups", &self.groups)?,
                roles: names("roles", &self.roles)?,
                agents: names("agents", &self.agents)?,
                attributes,
            },
            tools: names("tools", &self.tools)?,
            resources: names("resources", &self.resources)?,
            prompts: names("prompts", &self.prompts)?,
            conditions,
            expires_at,
            enabled: self.enabled,
        };
        rule.check().map_err(|error| Invalid(error.0))?;
        Ok(rule)
    }

    /// The same rule with its text tidied the way it is stored (trimmed name, emails
    /// lower-cased, the expiry in one form), so reading it back shows what is in force.
    pub fn normalized(&self, rule: &Rule) -> RuleSpec {
        RuleSpec {
            name: rule.name.clone(),
            users: rule.principals.users.clone(),
            expires: rule.expires_at.map(iso_time),
            ..self.clone()
        }
    }
}

impl RuleSpec {
    /// The rule as the Cedar policy that defines it, for admins who want to read it.
    pub fn cedar(&self) -> Option<String> {
        self.compile(None).ok().map(|rule| policy::cedar::policy_text(&rule))
    }
}

/// A stored rule: the written form and its bookkeeping.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRule {
    pub id: String,
    #[serde(flatten)]
    pub spec: RuleSpec,
    pub author: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A rule was created, changed or deleted: the audit event, with the rule before and after.
pub fn change_event(
    actor: &str,
    before: Option<&RuleSpec>,
    after: Option<&RuleSpec>,
    replica: &str,
) -> crate::audit::AuditEvent {
    let (method, name, verb) = match (before, after) {
        (None, Some(after)) => ("rule/create", &after.name, "created"),
        (Some(before), None) => ("rule/delete", &before.name, "deleted"),
        (_, Some(after)) => ("rule/update", &after.name, "changed"),
        (None, None) => ("rule/update", &String::new(), "changed"),
    };
    let reason = format!("{actor} {verb} rule {name:?}");
    let mut event = crate::audit::AuditEvent::action(actor, None, method, Some(name), true, &reason, replica);
    event.detail = Some(serde_json::json!({ "before": before, "after": after }).to_string());
    event
}

/// The names of the servers a rule may name.
pub async fn known_servers(connection: &mut sqlx::AnyConnection) -> Result<HashSet<String>, crate::store::StoreError> {
    Ok(crate::store::registry::list_servers(connection).await?.into_iter().map(|server| server.name).collect())
}

/// Why a rule could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A rule as saved.
#[derive(Debug)]
pub struct Saved {
    pub rule: StoredRule,
    /// False when the rule was already exactly so.
    pub changed: bool,
    /// What deserves a second look but is no reason to refuse: tools the servers never listed.
    pub warnings: Vec<String>,
}

/// What deserves a second look in `rule` but is no reason to refuse it: agents (not available
/// yet), a deny condition on what only some kinds of call carry, and tool patterns that match
/// no tool in the last known list of a server it names (servers never listed are not judged).
pub async fn warnings_for(
    connection: &mut sqlx::AnyConnection,
    rule: &Rule,
) -> Result<Vec<String>, crate::store::StoreError> {
    let mut warnings = Vec::new();
    if !rule.principals.agents.is_empty() {
        warnings.push(format!(
            "rule {:?}: agents are named, but agent accounts are not available yet; until they are, the rule matches no agent",
            rule.name
        ));
    }
    // A condition on what a call is for is missing on other kinds of call, where a deny then
    // stays in force: say so when the rule's scope reaches those calls.
    let entire = rule.tools.is_empty() && rule.resources.is_empty() && rule.prompts.is_empty();
    for (root, kind, own) in [
        ("meta.tool.", "tool calls", &rule.tools),
        ("meta.resource.", "resource reads", &rule.resources),
        ("meta.prompt.", "prompt requests", &rule.prompts),
    ] {
        let reaches_others = entire
            || [&rule.tools, &rule.resources, &rule.prompts]
                .iter()
                .any(|scope| !std::ptr::eq(*scope, own) && !scope.is_empty());
        if rule.effect == policy::Effect::Deny
            && reaches_others
            && let Some(condition) = rule.conditions.iter().find(|condition| condition.field.starts_with(root))
        {
            warnings.push(format!(
                "rule {:?}: {} exists only on {kind}; on every other request this deny applies, as its field is missing — \
                 limit the rule's scope to {kind} if that is not meant",
                rule.name, condition.field
            ));
        }
    }
    if rule.tools.is_empty() {
        return Ok(warnings);
    }
    for server in &rule.servers {
        let known = crate::store::known_tools::tools_of(&mut *connection, server).await?;
        if known.is_empty() {
            continue;
        }
        for pattern in &rule.tools {
            let glob = policy::condition::Glob::new(pattern);
            if !known.iter().any(|tool| glob.matches(&tool.name)) {
                warnings.push(format!(
                    "rule {:?}: tool {pattern:?} is not in server {server:?}'s last known tool list ({} tools); saved anyway",
                    rule.name,
                    known.len()
                ));
            }
        }
    }
    Ok(warnings)
}

/// Check `spec` against the registry and store it — as a new rule (`id` = `None`) or in place
/// of rule `id` — with its audit event, in the caller's transaction.
pub async fn save(
    connection: &mut sqlx::AnyConnection,
    spec: &RuleSpec,
    id: Option<&str>,
    actor: &str,
    replica: &str,
) -> Result<Saved, SaveError> {
    let servers = known_servers(&mut *connection).await?;
    let rule = spec.compile(Some(&Known { servers: &servers })).map_err(|error| SaveError::Invalid(error.0))?;
    // Cedar defines what the rule means; a rule that does not validate there is not saved.
    policy::cedar::validate(&rule).map_err(SaveError::Invalid)?;
    let spec = spec.normalized(&rule);
    let warnings = warnings_for(&mut *connection, &rule).await?;
    let (stored, before) = match id {
        None => (crate::store::rules::insert_rule(&mut *connection, &spec, actor).await?, None),
        Some(id) => {
            let before = crate::store::rules::get_rule(&mut *connection, id).await?;
            if let Some(before) = before.as_ref().filter(|before| before.spec == spec) {
                return Ok(Saved { rule: before.clone(), changed: false, warnings });
            }
            (crate::store::rules::update_rule(&mut *connection, id, &spec, actor).await?, before.map(|rule| rule.spec))
        }
    };
    let event = change_event(actor, before.as_ref(), Some(&stored.spec), replica);
    crate::store::audit::insert(connection, &[event]).await?;
    Ok(Saved { rule: stored, changed: true, warnings })
}

/// Delete rule `id` with its audit event, in the caller's transaction.
pub async fn delete(
    connection: &mut sqlx::AnyConnection,
    id: &str,
    actor: &str,
    replica: &str,
) -> Result<StoredRule, crate::store::StoreError> {
    let deleted = crate::store::rules::delete_rule(&mut *connection, id).await?;
    crate::store::audit::insert(connection, &[change_event(actor, Some(&deleted.spec), None, replica)]).await?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> RuleSpec {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn the_issue_example_compiles_and_reads_back() {
        let written = spec(
            r#"
            name = "finance read-only db"
            effect = "allow"
            servers = ["db"]
            tools = ["query", "list_tables"]
            groups = ["finance"]
            conditions = [ { field = "payload.table", op = "in", value = ["orders", "invoices"] } ]
            expires = "2099-12-31"
            notes = "temporary, ticket FIN-42"
            "#,
        );
        let servers = HashSet::from(["db".to_string()]);
        let rule = written.compile(Some(&Known { servers: &servers })).unwrap();
        assert_eq!(rule.tools, ["query", "list_tables"]);
        assert_eq!(rule.expires_at, parse_iso_time("2099-12-31T00:00:00Z"));
        let stored = written.normalized(&rule);
        assert_eq!(stored.expires.as_deref(), Some("2099-12-31T00:00:00Z"));
        let json = serde_json::to_value(&stored).unwrap();
        assert_eq!(serde_json::from_value::<RuleSpec>(json).unwrap(), stored);
    }

    #[test]
    fn bad_rules_are_refused_naming_the_part() {
        let servers = HashSet::from(["db".to_string()]);
        let known = Known { servers: &servers };
        let refused = |text: &str| spec(text).compile(Some(&known)).unwrap_err().0;
        assert_eq!(
            refused(
                r#"name = "x"
effect = "permit"
servers = ["db"]
everyone = true"#
            ),
            "rule \"x\": effect \"permit\" is not \"allow\" or \"deny\""
        );
        assert!(
            refused("name = \"x\"\neffect = \"allow\"\nservers = [\"nope\"]\neveryone = true")
                .contains("there is no server named \"nope\"")
        );
        assert!(
            refused(
                "name = \"x\"\neffect = \"deny\"\nglobal = true\neveryone = true\nconditions = [{ field = \"meta.request.ip\", op = \"in_cidr\", value = \"10.0.0.0/33\" }]"
            )
            .contains("condition 1 (meta.request.ip)")
        );
        assert!(refused("name = \"x\"\neffect = \"allow\"\nglobal = true\neveryone = true").contains("only deny"));
        assert!(
            refused("name = \"x\"\neffect = \"allow\"\nservers = [\"db\"]\nusers = [\"not-an-email\"]")
                .contains("rule \"x\"")
        );
        assert!(
            refused("name = \"x\"\neffect = \"deny\"\nservers = [\"db\"]\neveryone = true\nexpires = \"soon\"")
                .contains("expires \"soon\"")
        );
        let unknown_key = toml::from_str::<RuleSpec>("name = \"x\"\neffect = \"deny\"\nserver = [\"db\"]").unwrap_err();
        assert!(unknown_key.to_string().contains("unknown field `server`"), "{unknown_key}");
    }
}
