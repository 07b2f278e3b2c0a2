//! The Portcullis rule model and its evaluator: pure, no IO, no async.
//!
//! The data plane asks one question for every list entry and every call:
//! [`PolicySet::decide`]`(subject, request) -> Decision`. The answer always carries its
//! reason, so a denial can be explained to the caller and recorded in the audit event.
//!
//! - [`Subject`]: who is asking (a person or agent with groups, roles and attributes, or the
//!   anonymous caller of a public server).
//! - [`Request`]: what they want (a server, an action, a tool/resource/prompt name) and the
//!   per-call [`Context`] conditions look at, built only when a condition needs it.
//! - [`Rule`]: an access rule as admins write it; [`Grant`]: the older "these users and
//!   groups may use this server", which is an allow rule on the entire server.
//! - [`PolicySet`]: rules and grants compiled into a [`RuleSet`] indexed by server and
//!   principal, plus the servers marked public.
//!
//! Semantics: deny by default, any applicable deny wins, the order of rules never matters, a
//! missing context field never grants access.

pub mod cedar;
pub mod condition;
pub mod rules;

pub use condition::{Condition, ConditionError, Operator};
pub use rules::{Principals, Rule, RuleDecision, RuleError, RuleSet, Subject, Target};

use serde_json::Value;
use std::cell::OnceCell;
use std::collections::HashSet;
use std::fmt;

/// What kind of thing the subject wants to do on a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Open a session, list, ping, subscribe: use the server at all.
    Connect,
    CallTool,
    ReadResource,
    GetPrompt,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Connect => "connect",
            Action::CallTool => "call_tool",
            Action::ReadResource => "read_resource",
            Action::GetPrompt => "get_prompt",
        }
    }

    /// The rule target of this action on `name` (a tool, resource URI or prompt).
    pub fn target(self, name: &str) -> Target<'_> {
        match self {
            Action::Connect => Target::Server,
            Action::CallTool => Target::Tool(name),
            Action::ReadResource => Target::Resource(name),
            Action::GetPrompt => Target::Prompt(name),
        }
    }
}

/// The per-call JSON context conditions read (`payload.*`, `meta.*`), built at most once per
/// call and only when a rule that could apply has conditions.
pub struct Context<'a> {
    value: OnceCell<Value>,
    build: &'a dyn Fn() -> Value,
    assume: Assume,
}

/// Which conditions a [`Context`] cannot judge, and so takes in the caller's favour: as
/// holding in allow rules and as failing in deny rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assume {
    /// A call: every condition is judged on the context.
    Nothing,
    /// A list entry (`tools/list`): the arguments of a later call are not known yet, so
    /// `payload.*` conditions are assumed; the rest (network, client, identity, the tool) is
    /// judged.
    Payload,
    /// Connecting to a server: neither the arguments nor the tool, resource or prompt of later
    /// calls are known, so `payload.*`, `meta.tool.*`, `meta.resource.*` and `meta.prompt.*`
    /// are assumed.
    Target,
    /// Not a call but the question "could this subject get in at all?" (views such as "my
    /// servers" and effective access): every condition is assumed.
    Everything,
}

fn empty() -> Value {
    Value::Object(serde_json::Map::new())
}

impl<'a> Context<'a> {
    /// A context built by `build` the first time a condition asks.
    pub fn lazy(build: &'a dyn Fn() -> Value) -> Context<'a> {
        Context { value: OnceCell::new(), build, assume: Assume::Nothing }
    }

    /// The context of a list entry: like [`Context::lazy`], but conditions on `payload.*` (the
    /// arguments of a call not yet made) are assumed in the caller's favour.
    pub fn listing(build: &'a dyn Fn() -> Value) -> Context<'a> {
        Context { value: OnceCell::new(), build, assume: Assume::Payload }
    }

    /// The context of a connection (opening a session, listing, streaming): like
    /// [`Context::listing`], and conditions on the tool, resource or prompt of later calls are
    /// assumed too.
    pub fn connecting(build: &'a dyn Fn() -> Value) -> Context<'a> {
        Context { value: OnceCell::new(), build, assume: Assume::Target }
    }

    /// The context of the question "could the subject get in, under some conditions?".
    pub fn potential() -> Context<'static> {
        Context { value: OnceCell::new(), build: &empty, assume: Assume::Everything }
    }

    /// Is `condition` beyond this context, so to be assumed in the caller's favour?
    pub fn assumes(&self, condition: &Condition) -> bool {
        match self.assume {
            Assume::Nothing => false,
            Assume::Payload => under(&condition.field, "payload"),
            Assume::Target => ["payload", "meta.tool", "meta.resource", "meta.prompt"]
                .iter()
                .any(|root| under(&condition.field, root)),
            Assume::Everything => true,
        }
    }

    /// A context given whole.
    pub fn of(value: Value) -> Context<'static> {
        let context = Context { value: OnceCell::new(), build: &empty, assume: Assume::Nothing };
        let _ = context.value.set(value);
        context
    }

    /// The context, building it if this is the first look.
    pub fn get(&self) -> &Value {
        self.value.get_or_init(self.build)
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Context").field("value", &self.value.get()).finish()
    }
}

/// Is `field` the path `root` or below it?
fn under(field: &str, root: &str) -> bool {
    field.strip_prefix(root).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// One authorization question.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub server: &'a str,
    pub action: Action,
    /// The tool, prompt name or resource URI; empty for [`Action::Connect`].
    pub name: &'a str,
    pub context: &'a Context<'a>,
    /// Milliseconds since the Unix epoch, for rule expiry.
    pub now_ms: i64,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// The answer, with the reason a person can read and the names of the rules that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    pub reason: String,
    pub matched_rules: Vec<String>,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.effect == Effect::Allow
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.effect.as_str(), self.reason)
    }
}

/// "These users and groups may use this server": an allow rule on the entire server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub server: String,
    /// User emails.
    pub users: Vec<String>,
    /// Group names.
    pub groups: Vec<String>,
}

impl Grant {
    /// The allow rules this grant stands for, one per user or group, named after them so a
    /// decision says which grant let someone in.
    fn rules(&self) -> impl Iterator<Item = Rule> + '_ {
        let users = self.users.iter().map(|user| {
            (
                format!("grant of {:?} to {user}", self.server),
                Principals { users: vec![user.clone()], ..Principals::default() },
            )
        });
        let groups = self.groups.iter().map(|group| {
            (
                format!("grant of {:?} to group {group}", self.server),
                Principals { groups: vec![group.clone()], ..Principals::default() },
            )
        });
        users.chain(groups).map(|(name, principals)| Rule {
            name,
            effect: Effect::Allow,
            global: false,
            servers: vec![self.server.clone()],
            principals,
            tools: Vec::new(),
            resources: Vec::new(),
            prompts: Vec::new(),
            conditions: Vec::new(),
            expires_at: None,
            enabled: true,
        })
    }
}

/// Compiled rules. Build once per snapshot, then ask [`PolicySet::decide`] as often as needed.
#[derive(Debug, Default)]
pub struct PolicySet {
    rules: RuleSet,
    public: HashSet<String>,
}

impl PolicySet {
    /// Compile rules and grants. `public_servers` are open to every caller, anonymous ones
    /// included, unless a deny rule says otherwise.
    pub fn new(rules: Vec<Rule>, grants: &[Grant], public_servers: HashSet<String>) -> Result<PolicySet, RuleError> {
        let mut all = rules;
        all.extend(grants.iter().flat_map(Grant::rules));
        Ok(PolicySet { rules: RuleSet::compile(all)?, public: public_servers })
    }

    /// The compiled rules (for listing what applies, e.g. in effective-access views).
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Is the server open to anonymous callers?
    pub fn is_public(&self, server: &str) -> bool {
        self.public.contains(server)
    }

    /// The same answer as [`PolicySet::decide`], without the reason (for filtering lists).
    pub fn allows(&self, subject: &Subject, request: &Request<'_>) -> bool {
        let public = self.public.contains(request.server);
        if subject.anonymous && !public {
            return false;
        }
        let target = request.action.target(request.name);
        self.rules.allows(subject, request.server, target, request.context, request.now_ms)
            || (public && self.decide(subject, request).is_allowed())
    }

    /// The single authorization function.
    pub fn decide(&self, subject: &Subject, request: &Request<'_>) -> Decision {
        let server = request.server;
        let public = self.public.contains(server);
        if subject.anonymous && !public {
            return Decision {
                effect: Effect::Deny,
                reason: format!(
                    "server {server:?} needs credentials: send an API key as \"Authorization: Bearer <key>\""
                ),
                matched_rules: Vec::new(),
            };
        }
        let decided =
            self.rules.decide(subject, server, request.action.target(request.name), request.context, request.now_ms);
        if decided.allowed {
            return Decision { effect: Effect::Allow, reason: decided.reason, matched_rules: decided.rules };
        }
        if public && decided.rules.is_empty() {
            return Decision {
                effect: Effect::Allow,
                reason: format!("server {server:?} is public"),
                matched_rules: Vec::new(),
            };
        }
        Decision { effect: Effect::Deny, reason: decided.reason, matched_rules: decided.rules }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(email: &str, groups: &[&str]) -> Subject {
        Subject {
            email: email.into(),
            groups: groups.iter().map(|group| group.to_string()).collect(),
            ..Subject::default()
        }
    }

    fn check(policy: &PolicySet, subject: &Subject, server: &str, expected: &str) {
        let context = Context::of(json!({}));
        let request = Request { server, action: Action::CallTool, name: "echo", context: &context, now_ms: 0 };
        assert_eq!(policy.decide(subject, &request).to_string(), expected);
    }

    #[test]
    fn grants_are_allow_rules_and_public_servers_admit_anyone() {
        let grants = vec![
            Grant { server: "docs".into(), users: vec!["ann@example.com".into()], groups: vec![] },
            Grant { server: "docs".into(), users: vec![], groups: vec!["eng".into()] },
        ];
        let public = HashSet::from(["open".to_string()]);
        let policy = PolicySet::new(Vec::new(), &grants, public).unwrap();
        check(
            &policy,
            &user("ann@example.com", &[]),
            "docs",
            "allow: allowed by rule \"grant of \\\"docs\\\" to ann@example.com\"",
        );
        check(
            &policy,
            &user("bob@example.com", &["eng"]),
            "docs",
            "allow: allowed by rule \"grant of \\\"docs\\\" to group eng\"",
        );
        check(
            &policy,
            &user("eve@example.com", &["sales"]),
            "docs",
            "deny: no rule allows eve@example.com for tool \"echo\" on \"docs\"; ask an administrator for access",
        );
        check(
            &policy,
            &user("ann@example.com", &[]),
            "other",
            "deny: no rule allows ann@example.com for tool \"echo\" on \"other\"; ask an administrator for access",
        );
        let anonymous = Subject { anonymous: true, ..Subject::default() };
        check(
            &policy,
            &anonymous,
            "docs",
            "deny: server \"docs\" needs credentials: send an API key as \"Authorization: Bearer <key>\"",
        );
        check(&policy, &anonymous, "open", "allow: server \"open\" is public");
        check(&policy, &user("eve@example.com", &[]), "open", "allow: server \"open\" is public");
    }

    #[test]
    fn deny_rules_reach_public_servers_and_anonymous_callers() {
        let mut deny = Rule {
            name: "Corporate network only".into(),
            effect: Effect::Deny,
            global: true,
            servers: Vec::new(),
            principals: Principals { everyone: true, ..Principals::default() },
            tools: Vec::new(),
            resources: Vec::new(),
            prompts: Vec::new(),
            conditions: vec![Condition::compile("meta.request.ip", "not_in_cidr", json!("10.0.0.0/8")).unwrap()],
            expires_at: None,
            enabled: true,
        };
        let policy = PolicySet::new(vec![deny.clone()], &[], HashSet::from(["open".to_string()])).unwrap();
        let anonymous = Subject { anonymous: true, ..Subject::default() };
        let outside = Context::of(json!({"meta": {"request": {"ip": "192.0.2.1"}}}));
        let inside = Context::of(json!({"meta": {"request": {"ip": "10.0.0.1"}}}));
        let ask = |context| Request { server: "open", action: Action::Connect, name: "", context, now_ms: 0 };
        assert!(!policy.decide(&anonymous, &ask(&outside)).is_allowed());
        assert!(policy.decide(&anonymous, &ask(&inside)).is_allowed());
        // A deny about named people never reaches the anonymous caller, and expiry ends a rule.
        deny.principals = Principals { groups: vec!["eng".into()], ..Principals::default() };
        let policy = PolicySet::new(vec![deny.clone()], &[], HashSet::from(["open".to_string()])).unwrap();
        assert!(policy.decide(&anonymous, &ask(&outside)).is_allowed());
        assert!(!policy.decide(&user("a@x", &["eng"]), &ask(&outside)).is_allowed());
        deny.expires_at = Some(10);
        let policy = PolicySet::new(vec![deny], &[], HashSet::from(["open".to_string()])).unwrap();
        let later = Request { now_ms: 10, ..ask(&outside) };
        assert!(policy.decide(&user("a@x", &["eng"]), &later).is_allowed());
    }

    fn conditional(name: &str, effect: Effect, field: &str, op: &str, value: Value) -> Rule {
        Rule {
            name: name.into(),
            effect,
            global: false,
            servers: vec!["db".into()],
            principals: Principals { everyone: true, ..Principals::default() },
            tools: vec!["query".into()],
            resources: Vec::new(),
            prompts: Vec::new(),
            conditions: vec![Condition::compile(field, op, value).unwrap()],
            expires_at: None,
            enabled: true,
        }
    }

    #[test]
    fn lists_assume_the_arguments_and_views_assume_everything() {
        let tables = conditional("tables", Effect::Allow, "payload.table", "eq", json!("orders"));
        let no_drop = conditional("no drop", Effect::Deny, "payload.sql", "contains", json!("DROP"));
        let network = conditional("network", Effect::Deny, "meta.request.ip", "not_in_cidr", json!("10.0.0.0/8"));
        let ask = |rules: Vec<Rule>, context: &Context<'_>| {
            let policy = PolicySet::new(rules, &[], HashSet::new()).unwrap();
            let request = Request { server: "db", action: Action::CallTool, name: "query", context, now_ms: 0 };
            policy.decide(&user("a@x", &[]), &request).is_allowed()
        };
        let outside = || json!({"meta": {"request": {"ip": "192.0.2.1"}}});
        let inside = || json!({"meta": {"request": {"ip": "10.0.0.1"}}});
        // A call without the argument: the allow needs it, the deny stays in force without it.
        assert!(!ask(vec![tables.clone()], &Context::lazy(&inside)));
        // Listing: the argument is not known yet, so the tool is shown ...
        assert!(ask(vec![tables.clone()], &Context::listing(&inside)));
        assert!(ask(vec![tables.clone(), no_drop.clone()], &Context::listing(&inside)));
        // ... but what is known counts: from outside the network it is hidden.
        assert!(!ask(vec![tables.clone(), network.clone()], &Context::listing(&outside)));
        // Connecting assumes the tool too; a list entry judges it.
        let read_only =
            conditional("read-only", Effect::Allow, "meta.tool.annotations.readOnlyHint", "eq", json!(true));
        assert!(ask(vec![read_only.clone()], &Context::connecting(&inside)));
        assert!(!ask(vec![read_only.clone()], &Context::listing(&inside)));
        // A view of who could get in assumes every condition.
        assert!(ask(vec![tables, no_drop, network], &Context::potential()));
    }

    #[test]
    fn the_context_is_built_only_when_a_condition_needs_it() {
        let built = std::cell::Cell::new(0);
        let build = || {
            built.set(built.get() + 1);
            json!({"payload": {"table": "orders"}})
        };
        let grants = [Grant { server: "db".into(), users: vec!["a@x".into()], groups: vec![] }];
        let policy = PolicySet::new(Vec::new(), &grants, HashSet::new()).unwrap();
        let context = Context::lazy(&build);
        let request = Request { server: "db", action: Action::CallTool, name: "query", context: &context, now_ms: 0 };
        assert!(policy.decide(&user("a@x", &[]), &request).is_allowed());
        assert_eq!(built.get(), 0);
        let rule = Rule {
            name: "tables".into(),
            effect: Effect::Deny,
            global: false,
            servers: vec!["db".into()],
            principals: Principals { everyone: true, ..Principals::default() },
            tools: vec!["query".into()],
            resources: Vec::new(),
            prompts: Vec::new(),
            conditions: vec![Condition::compile("payload.table", "ne", json!("orders")).unwrap()],
            expires_at: None,
            enabled: true,
        };
        let policy = PolicySet::new(vec![rule], &grants, HashSet::new()).unwrap();
        assert!(policy.decide(&user("a@x", &[]), &request).is_allowed());
        assert!(policy.decide(&user("a@x", &[]), &request).is_allowed());
        assert_eq!(built.get(), 1, "built once, on the first condition");
    }
}
