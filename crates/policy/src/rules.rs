//! Access rules as admins write them, and the indexed evaluator that decides with them.
//!
//! A [`Rule`] says who (principals), where (servers, or every server for a global rule, and
//! optionally which tools, resources and prompts, `*` globs allowed), under which
//! [`conditions`](crate::condition), whether it allows or denies, and until when.
//! [`RuleSet::decide`] answers with the same semantics whatever the order of the rules: deny by
//! default, any applicable deny wins, an allow needs an applicable allow rule, and a missing
//! context field never grants access. Global rules can only deny.
//!
//! Scope per action: connecting to a server (opening a session, listing) needs an allow rule
//! for the server, whatever its tools; it is denied only by a deny rule on the entire server.
//! Calling a tool (reading a resource, getting a prompt) needs an allow rule for the entire
//! server or one naming the tool, and is denied by a deny rule on the entire server or naming
//! the tool.

use crate::condition::{Condition, Glob, Outcome};
use crate::{Context, Effect};
use std::collections::{BTreeMap, HashMap};

/// Who a rule is about. Empty lists match nobody; `everyone` matches every authenticated
/// subject, and the anonymous caller of a public server only in deny rules (so a global deny
/// reaches every caller, while no allow rule ever names an anonymous one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Principals {
    pub everyone: bool,
    /// User emails (compared case-insensitively).
    pub users: Vec<String>,
    /// Group names (case-insensitively).
    pub groups: Vec<String>,
    /// Job-function roles (case-insensitively).
    pub roles: Vec<String>,
    /// Agent names.
    pub agents: Vec<String>,
    /// Identity attributes that must all match, e.g. department = Finance (case-insensitively).
    pub attributes: BTreeMap<String, String>,
}

/// Who is asking, as rules see them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    pub anonymous: bool,
    /// `None` for people; the agent's name for agent accounts.
    pub agent: Option<String>,
    pub email: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub attributes: BTreeMap<String, String>,
}

impl Principals {
    /// Is `subject` among these principals, for a rule of this effect (`deny`)?
    pub fn matches(&self, subject: &Subject, deny: bool) -> bool {
        if subject.anonymous {
            return deny && self.everyone;
        }
        let any = |names: &[String], held: &[String]| {
            names.iter().any(|name| held.iter().any(|held| held.eq_ignore_ascii_case(name)))
        };
        let named = self.everyone
            || self.users.iter().any(|user| user.eq_ignore_ascii_case(&subject.email) && subject.agent.is_none())
            || any(&self.groups, &subject.groups)
            || any(&self.roles, &subject.roles)
            || subject.agent.as_ref().is_some_and(|agent| self.agents.iter().any(|name| name == agent));
        // Attributes alone name everyone who has them; with other principals they narrow.
        let attributes_match = self
            .attributes
            .iter()
            .all(|(key, wanted)| subject.attributes.get(key).is_some_and(|value| value.eq_ignore_ascii_case(wanted)));
        let only_attributes = !self.everyone
            && self.users.is_empty()
            && self.groups.is_empty()
            && self.roles.is_empty()
            && self.agents.is_empty();
        if only_attributes { !self.attributes.is_empty() && attributes_match } else { named && attributes_match }
    }
}

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Opening a session or listing: using the server at all.
    Server,
    Tool(&'a str),
    Resource(&'a str),
    Prompt(&'a str),
}

/// One access rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub effect: Effect,
    /// Applies to every server (deny rules only).
    pub global: bool,
    pub servers: Vec<String>,
    pub principals: Principals,
    /// Tool name patterns; empty with no resources and prompts either means the entire server.
    pub tools: Vec<String>,
    pub resources: Vec<String>,
    pub prompts: Vec<String>,
    pub conditions: Vec<Condition>,
    /// Milliseconds since the Unix epoch.
    pub expires_at: Option<i64>,
    pub enabled: bool,
}

/// A rule that cannot be used, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError(pub String);

impl std::fmt::Display for RuleError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for RuleError {}

impl Rule {
    /// Check what cannot be expressed: a global allow, a rule on no server, a rule about nobody.
    pub fn check(&self) -> Result<(), RuleError> {
        let name = &self.name;
        if name.trim().is_empty() {
            return Err(RuleError("a rule needs a name".into()));
        }
        if self.global && self.effect == Effect::Allow {
            return Err(RuleError(format!("rule {name:?}: global rules can only deny; put allow rules on servers")));
        }
        if !self.global && self.servers.is_empty() {
            return Err(RuleError(format!("rule {name:?}: name at least one server, or make it global (deny only)")));
        }
        let p = &self.principals;
        if !p.everyone
            && p.users.is_empty()
            && p.groups.is_empty()
            && p.roles.is_empty()
            && p.agents.is_empty()
            && p.attributes.is_empty()
        {
            return Err(RuleError(format!(
                "rule {name:?}: say who it is about (users, groups, roles, agents, attributes or everyone)"
            )));
        }
        Ok(())
    }

    fn entire_server(&self) -> bool {
        self.tools.is_empty() && self.resources.is_empty() && self.prompts.is_empty()
    }
}

/// A rule ready for decisions: its patterns prepared.
#[derive(Debug, Clone)]
struct Compiled {
    rule: Rule,
    tools: Vec<Glob>,
    resources: Vec<Glob>,
    prompts: Vec<Glob>,
}

impl Compiled {
    fn covers(&self, target: Target<'_>) -> bool {
        let entire = self.rule.entire_server();
        match target {
            // Allow rules of any scope let their principals connect; only whole-server denies
            // keep them out.
            Target::Server => self.rule.effect == Effect::Allow || entire,
            Target::Tool(name) => entire || self.tools.iter().any(|glob| glob.matches(name)),
            Target::Resource(uri) => entire || self.resources.iter().any(|glob| glob.matches(uri)),
            Target::Prompt(name) => entire || self.prompts.iter().any(|glob| glob.matches(name)),
        }
    }

    fn live(&self, now_ms: i64) -> bool {
        self.rule.enabled && self.rule.expires_at.is_none_or(|expires| now_ms < expires)
    }
}

/// Does a rule with these conditions apply in `context`? See [`rule_applies`]; conditions
/// the context cannot judge ([`Context::assumes`]) are taken in the caller's favour.
fn applies(conditions: &[Condition], context: &Context<'_>, deny: bool) -> bool {
    conditions.iter().all(
        |condition| {
            if context.assumes(condition) { !deny } else { condition.lets_apply(context.get(), deny) }
        },
    )
}

/// The outcome of a decision, with the rules that made it and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDecision {
    pub allowed: bool,
    /// Names of the rules that decided (the denies when denied, the allows when allowed).
    pub rules: Vec<String>,
    pub reason: String,
}

/// Rules of one principal key, split by what they are for: rules that name only exact tool
/// names are found under those names; the rest (entire server, `*` patterns, resources,
/// prompts) are checked for every target.
#[derive(Debug, Clone, Default)]
struct Bucket {
    any: Vec<usize>,
    tools: HashMap<String, Vec<usize>>,
}

impl Bucket {
    fn add(&mut self, rule: &Rule, index: usize) {
        let exact_tools_only = !rule.tools.is_empty()
            && rule.resources.is_empty()
            && rule.prompts.is_empty()
            && rule.tools.iter().all(|tool| !tool.contains('*'));
        if exact_tools_only {
            for tool in &rule.tools {
                self.tools.entry(tool.clone()).or_default().push(index);
            }
        } else {
            self.any.push(index);
        }
    }

    /// Every rule of the bucket that may cover `target` (none is missed).
    fn candidates(&self, target: Target<'_>, into: &mut Vec<usize>) {
        into.extend_from_slice(&self.any);
        match target {
            Target::Tool(name) => {
                if let Some(rules) = self.tools.get(name) {
                    into.extend_from_slice(rules);
                }
            }
            // Tool-scoped allow rules let their principals connect.
            Target::Server => self.tools.values().for_each(|rules| into.extend_from_slice(rules)),
            Target::Resource(_) | Target::Prompt(_) => {}
        }
    }
}

/// The rules of one server (or the global ones), indexed by the principals they name and then
/// by tool, so a decision looks only at rules that can be about the subject and the target.
#[derive(Debug, Clone, Default)]
struct Index {
    /// Lower-cased `user:`, `group:`, `role:` and `agent:` keys → rules naming them.
    named: HashMap<String, Bucket>,
    /// Rules about everyone, or only about attributes: checked for every subject.
    open: Bucket,
}

impl Index {
    fn add(&mut self, rule: &Rule, index: usize) {
        let principals = &rule.principals;
        let keyed = principals.users.iter().map(|user| format!("user:{}", user.to_ascii_lowercase()));
        let keyed = keyed
            .chain(principals.groups.iter().map(|group| format!("group:{}", group.to_ascii_lowercase())))
            .chain(principals.roles.iter().map(|role| format!("role:{}", role.to_ascii_lowercase())))
            .chain(principals.agents.iter().map(|agent| format!("agent:{agent}")));
        let mut any = false;
        for key in keyed {
            any = true;
            self.named.entry(key).or_default().add(rule, index);
        }
        if principals.everyone || !any {
            self.open.add(rule, index);
        }
    }

    /// Every rule that may be about `subject` and cover `target` (more may be returned; none
    /// is missed).
    fn candidates(&self, subject: &Subject, target: Target<'_>, into: &mut Vec<usize>) {
        self.open.candidates(target, into);
        if self.named.is_empty() || subject.anonymous {
            return;
        }
        // One buffer for every key looked up: no allocation per group or role.
        let mut key = String::with_capacity(64);
        let mut look = |kind: &str, name: &str, fold: bool| {
            key.clear();
            key.push_str(kind);
            if fold {
                key.extend(name.chars().map(|c| c.to_ascii_lowercase()));
            } else {
                key.push_str(name);
            }
            if let Some(bucket) = self.named.get(key.as_str()) {
                bucket.candidates(target, into);
            }
        };
        match &subject.agent {
            Some(agent) => look("agent:", agent, false),
            None => look("user:", &subject.email, true),
        }
        for group in &subject.groups {
            look("group:", group, true);
        }
        for role in &subject.roles {
            look("role:", role, true);
        }
    }
}

/// Rules indexed by server and principal, so a decision looks only at the rules that can apply.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    by_server: HashMap<String, Index>,
    global: Index,
    rules: Vec<Compiled>,
}

impl RuleSet {
    /// Check and index the rules; the first invalid rule is the error.
    pub fn compile(rules: Vec<Rule>) -> Result<RuleSet, RuleError> {
        let mut set = RuleSet::default();
        for rule in rules {
            rule.check()?;
            let index = set.rules.len();
            if rule.global {
                set.global.add(&rule, index);
            } else {
                for server in &rule.servers {
                    set.by_server.entry(server.clone()).or_default().add(&rule, index);
                }
            }
            let globs = |patterns: &[String]| patterns.iter().map(|pattern| Glob::new(pattern)).collect();
            set.rules.push(Compiled {
                tools: globs(&rule.tools),
                resources: globs(&rule.resources),
                prompts: globs(&rule.prompts),
                rule,
            });
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|compiled| &compiled.rule)
    }

    /// The rules that may be about `subject` and `target` on `server`, each once, in index
    /// order.
    fn candidates(&self, subject: &Subject, server: &str, target: Target<'_>) -> Vec<usize> {
        let mut candidates = Vec::new();
        self.global.candidates(subject, target, &mut candidates);
        if let Some(index) = self.by_server.get(server) {
            index.candidates(subject, target, &mut candidates);
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates
    }

    /// Does rule `index` apply to this request?
    fn applies_to(
        &self,
        index: usize,
        subject: &Subject,
        target: Target<'_>,
        context: &Context<'_>,
        now_ms: i64,
    ) -> bool {
        let compiled = &self.rules[index];
        let rule = &compiled.rule;
        let deny = rule.effect == Effect::Deny;
        compiled.live(now_ms)
            && compiled.covers(target)
            && rule.principals.matches(subject, deny)
            && applies(&rule.conditions, context, deny)
    }

    /// The rules in force at `now_ms` that are about `subject` on `server` (global ones
    /// included), whatever their tools and conditions: what an access review lists.
    pub fn about<'a>(&'a self, subject: &'a Subject, server: &str, now_ms: i64) -> impl Iterator<Item = &'a Rule> + 'a {
        self.candidates(subject, server, Target::Server)
            .into_iter()
            .map(|index| &self.rules[index])
            .filter(move |compiled| {
                compiled.live(now_ms) && compiled.rule.principals.matches(subject, compiled.rule.effect == Effect::Deny)
            })
            .map(|compiled| &compiled.rule)
    }

    /// The same answer as [`RuleSet::decide`], without the reason (for filtering lists).
    pub fn allows(
        &self,
        subject: &Subject,
        server: &str,
        target: Target<'_>,
        context: &Context<'_>,
        now_ms: i64,
    ) -> bool {
        let mut allowed = false;
        for index in self.candidates(subject, server, target) {
            if self.applies_to(index, subject, target, context, now_ms) {
                if self.rules[index].rule.effect == Effect::Deny {
                    return false;
                }
                allowed = true;
            }
        }
        allowed
    }

    /// Decide whether `subject` may reach `target` on `server`, given the request `context`.
    pub fn decide(
        &self,
        subject: &Subject,
        server: &str,
        target: Target<'_>,
        context: &Context<'_>,
        now_ms: i64,
    ) -> RuleDecision {
        let mut denies = Vec::new();
        let mut allows = Vec::new();
        for index in self.candidates(subject, server, target) {
            if self.applies_to(index, subject, target, context, now_ms) {
                let compiled = &self.rules[index];
                if compiled.rule.effect == Effect::Deny { denies.push(compiled) } else { allows.push(compiled) }
            }
        }
        if !denies.is_empty() {
            let mut names: Vec<String> = denies.iter().map(|compiled| compiled.rule.name.clone()).collect();
            names.sort();
            // The reason names the first rule (by name, so it does not depend on order) and why.
            let first = denies.iter().min_by(|a, b| a.rule.name.cmp(&b.rule.name)).map(|compiled| &compiled.rule);
            let why = first
                .map(|rule| {
                    let kind = if rule.global { "global rule" } else { "rule" };
                    let detail: Vec<String> = rule
                        .conditions
                        .iter()
                        .filter(|condition| condition.evaluate(context.get()) != Outcome::Fails)
                        .map(|condition| condition.explain(context.get()))
                        .collect();
                    if detail.is_empty() {
                        format!("denied by {kind} {:?}", rule.name)
                    } else {
                        format!("denied by {kind} {:?}: {}", rule.name, detail.join("; "))
                    }
                })
                .unwrap_or_default();
            return RuleDecision { allowed: false, rules: names, reason: why };
        }
        if allows.is_empty() {
            let what = match target {
                Target::Server => format!("server {server:?}"),
                Target::Tool(name) => format!("tool {name:?} on {server:?}"),
                Target::Resource(uri) => format!("resource {uri:?} on {server:?}"),
                Target::Prompt(name) => format!("prompt {name:?} on {server:?}"),
            };
            let who = if subject.anonymous { "anonymous callers" } else { &subject.email };
            return RuleDecision {
                allowed: false,
                rules: Vec::new(),
                reason: format!("no rule allows {who} for {what}; ask an administrator for access"),
            };
        }
        let mut names: Vec<String> = allows.iter().map(|compiled| compiled.rule.name.clone()).collect();
        names.sort();
        RuleDecision { allowed: true, reason: format!("allowed by rule {:?}", names[0]), rules: names }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::condition::rule_applies;
    use serde_json::{Value, json};

    fn rule(name: &str, effect: Effect, servers: &[&str]) -> Rule {
        Rule {
            name: name.into(),
            effect,
            global: false,
            servers: servers.iter().map(|server| server.to_string()).collect(),
            principals: Principals { everyone: true, ..Principals::default() },
            tools: Vec::new(),
            resources: Vec::new(),
            prompts: Vec::new(),
            conditions: Vec::new(),
            expires_at: None,
            enabled: true,
        }
    }

    fn person(email: &str, groups: &[&str], roles: &[&str], department: &str) -> Subject {
        Subject {
            anonymous: false,
            agent: None,
            email: email.into(),
            groups: groups.iter().map(|group| group.to_string()).collect(),
            roles: roles.iter().map(|role| role.to_string()).collect(),
            attributes: [("department".to_string(), department.to_string())].into(),
        }
    }

    fn condition(field: &str, op: &str, value: Value) -> Condition {
        Condition::compile(field, op, value).unwrap()
    }

    /// The admin guide's examples, each expressed as rules and decided.
    #[test]
    fn the_admin_guide_examples() {
        let now = 1_000_000;
        let mut team = rule("engineers use github", Effect::Allow, &["github"]);
        team.principals = Principals { groups: vec!["Engineering".into()], ..Principals::default() };
        let mut finance = rule("finance read-only db", Effect::Allow, &["db"]);
        finance.principals = Principals { roles: vec!["finance-analyst".into()], ..Principals::default() };
        finance.tools = vec!["query".into(), "list_*".into()];
        finance.conditions = vec![condition("payload.table", "in", json!(["orders", "invoices"]))];
        let mut contractor = rule("contractor slack", Effect::Allow, &["slack"]);
        contractor.principals = Principals { users: vec!["Cara@Contractor.example".into()], ..Principals::default() };
        contractor.tools = vec!["post_message".into(), "list_channels".into()];
        contractor.expires_at = Some(now + 10);
        let mut support = rule("support customer db", Effect::Allow, &["customers"]);
        support.principals = Principals { roles: vec!["Support".into()], ..Principals::default() };
        let mut network = rule("Corporate network only", Effect::Deny, &[]);
        network.global = true;
        network.conditions = vec![condition("meta.request.ip", "not_in_cidr", json!("10.0.0.0/8"))];
        let mut client = rule("Cursor only", Effect::Deny, &[]);
        client.global = true;
        client.conditions = vec![condition("meta.client.name", "ne", json!("cursor"))];
        let mut verified = rule("OAuth verification required", Effect::Deny, &[]);
        verified.global = true;
        verified.conditions = vec![condition("meta.oauth.user_verified", "ne", json!(true))];
        let set = RuleSet::compile(vec![team, finance, contractor, support, network, client, verified]).unwrap();

        let inside = json!({"meta": {"request": {"ip": "10.2.3.4"}, "client": {"name": "cursor"}, "oauth": {"user_verified": true}}, "payload": {"table": "orders"}});
        let with = |path: &[&str], value: Value| {
            let mut context = inside.clone();
            let mut slot = &mut context;
            for part in path {
                slot = &mut slot[*part];
            }
            *slot = value;
            context
        };
        let ann = person("ann@example.com", &["engineering"], &[], "R&D");
        let fay = person("fay@example.com", &[], &["Finance-Analyst"], "Finance");
        let cara = person("cara@contractor.example", &[], &[], "");
        let sam = person("sam@example.com", &[], &["support"], "Support");

        let decide = |subject: &Subject, server: &str, target: Target<'_>, context: &Value, now: i64| {
            set.decide(subject, server, target, &Context::of(context.clone()), now)
        };
        assert!(decide(&ann, "github", Target::Tool("create_issue"), &inside, now).allowed);
        assert!(!decide(&ann, "db", Target::Server, &inside, now).allowed);
        assert!(decide(&fay, "db", Target::Server, &inside, now).allowed, "tool-scoped allows still let her connect");
        assert!(decide(&fay, "db", Target::Tool("list_tables"), &inside, now).allowed);
        assert!(!decide(&fay, "db", Target::Tool("drop_table"), &inside, now).allowed);
        let users_table = with(&["payload", "table"], json!("users"));
        assert!(!decide(&fay, "db", Target::Tool("query"), &users_table, now).allowed, "only named tables");
        assert!(decide(&cara, "slack", Target::Tool("post_message"), &inside, now).allowed);
        assert!(!decide(&cara, "slack", Target::Tool("post_message"), &inside, now + 10).allowed, "expired");
        assert!(!decide(&cara, "slack", Target::Tool("delete_channel"), &inside, now).allowed);
        assert!(decide(&sam, "customers", Target::Tool("lookup"), &inside, now).allowed);

        let outside = with(&["meta", "request", "ip"], json!("203.0.113.7"));
        let denied = decide(&ann, "github", Target::Tool("create_issue"), &outside, now);
        assert!(!denied.allowed);
        assert_eq!(denied.rules, ["Corporate network only"]);
        assert_eq!(
            denied.reason,
            "denied by global rule \"Corporate network only\": meta.request.ip is \"203.0.113.7\"; rule: meta.request.ip not_in_cidr \"10.0.0.0/8\""
        );
        let no_ip = with(&["meta", "request"], json!({}));
        assert!(
            !decide(&ann, "github", Target::Server, &no_ip, now).allowed,
            "a missing IP never passes the network rule"
        );
        assert!(
            !decide(&ann, "github", Target::Server, &with(&["meta", "client", "name"], json!("claude")), now).allowed
        );
        assert!(!decide(&ann, "github", Target::Server, &with(&["meta", "oauth"], json!({})), now).allowed);
    }

    #[test]
    fn principals_match_as_written() {
        let subject = person("ann@example.com", &["Finance"], &["analyst"], "Finance");
        let matches = |principals: Principals| principals.matches(&subject, false);
        assert!(matches(Principals { users: vec!["ANN@example.com".into()], ..Principals::default() }));
        assert!(matches(Principals { groups: vec!["finance".into()], ..Principals::default() }));
        assert!(matches(Principals {
            attributes: [("department".into(), "finance".into())].into(),
            ..Principals::default()
        }));
        assert!(!matches(Principals {
            groups: vec!["finance".into()],
            attributes: [("department".into(), "Sales".into())].into(),
            ..Principals::default()
        }));
        assert!(!matches(Principals { agents: vec!["ann@example.com".into()], ..Principals::default() }));
        let anonymous = Subject { anonymous: true, ..Subject::default() };
        assert!(!Principals { everyone: true, ..Principals::default() }.matches(&anonymous, false));
        assert!(Principals { everyone: true, ..Principals::default() }.matches(&anonymous, true));
        assert!(!Principals { groups: vec!["finance".into()], ..Principals::default() }.matches(&anonymous, true));
        let agent = Subject { agent: Some("ci-bot".into()), email: "ann@example.com".into(), ..Subject::default() };
        assert!(Principals { agents: vec!["ci-bot".into()], ..Principals::default() }.matches(&agent, false));
        assert!(!Principals { users: vec!["ann@example.com".into()], ..Principals::default() }.matches(&agent, false));
    }

    #[test]
    fn rules_that_cannot_be_expressed_are_refused() {
        let mut global_allow = rule("open", Effect::Allow, &[]);
        global_allow.global = true;
        assert!(RuleSet::compile(vec![global_allow]).unwrap_err().0.contains("global rules can only deny"));
        assert!(
            RuleSet::compile(vec![rule("nowhere", Effect::Allow, &[])]).unwrap_err().0.contains("at least one server")
        );
        let mut nobody = rule("nobody", Effect::Allow, &["db"]);
        nobody.principals = Principals::default();
        assert!(RuleSet::compile(vec![nobody]).unwrap_err().0.contains("say who it is about"));
    }

    /// A small deterministic generator for the property tests (no dependency).
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[(self.next() % items.len() as u64) as usize]
        }
    }

    fn random_rule(random: &mut Random, index: usize) -> Rule {
        let effect = if random.next().is_multiple_of(3) { Effect::Deny } else { Effect::Allow };
        let servers = ["a", "b"];
        let server = *random.pick(&servers);
        let mut rule = rule(&format!("r{index}"), effect, &[server]);
        if effect == Effect::Deny && random.next().is_multiple_of(4) {
            rule.global = true;
            rule.servers.clear();
        }
        rule.principals = match random.next() % 6 {
            0 => Principals { everyone: true, ..Principals::default() },
            1 => Principals { groups: vec![random.pick(&["g1", "G2"]).to_string()], ..Principals::default() },
            2 => Principals { roles: vec![random.pick(&["r1", "r2"]).to_string()], ..Principals::default() },
            3 => Principals {
                attributes: [("department".to_string(), random.pick(&["d1", "D2"]).to_string())].into(),
                ..Principals::default()
            },
            4 => Principals {
                groups: vec!["g1".into()],
                attributes: [("department".to_string(), "d1".to_string())].into(),
                ..Principals::default()
            },
            _ => Principals { users: vec![random.pick(&["U1@x", "u2@x"]).to_string()], ..Principals::default() },
        };
        if random.next().is_multiple_of(2) {
            rule.tools = vec![random.pick(&["t1", "t*", "t2"]).to_string()];
        }
        if random.next().is_multiple_of(2) {
            let choices = [
                ("payload.n", "lt", json!(5)),
                ("meta.request.ip", "in_cidr", json!("10.0.0.0/8")),
                ("payload.s", "eq", json!("x")),
            ];
            let (field, op, value) = random.pick(&choices);
            rule.conditions = vec![condition(field, op, value.clone())];
        }
        rule
    }

    #[test]
    fn deny_wins_nothing_allows_without_an_allow_and_order_never_matters() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let subjects = [
            person("u1@x", &["g1"], &["r1"], "d1"),
            person("u2@x", &["g2"], &[], "d2"),
            person("u3@x", &["g1", "g2"], &["R2"], ""),
            Subject { anonymous: true, ..Subject::default() },
        ];
        let contexts = [
            json!({"payload": {"n": 3, "s": "x"}, "meta": {"request": {"ip": "10.0.0.1"}}}),
            json!({"payload": {"n": 9}, "meta": {"request": {"ip": "192.0.2.1"}}}),
            json!({}),
        ];
        let targets = [Target::Server, Target::Tool("t1"), Target::Tool("t2"), Target::Tool("x")];
        for round in 0..200 {
            let count = 1 + (random.next() % 8) as usize;
            let rules: Vec<Rule> = (0..count).map(|index| random_rule(&mut random, index)).collect();
            let set = RuleSet::compile(rules.clone()).unwrap();
            let mut reversed = rules.clone();
            reversed.reverse();
            let mut rotated = rules.clone();
            rotated.rotate_left(round % count);
            let others = [RuleSet::compile(reversed).unwrap(), RuleSet::compile(rotated).unwrap()];
            for subject in &subjects {
                for context in &contexts {
                    let lazy = Context::of(context.clone());
                    for server in ["a", "b"] {
                        for target in targets {
                            let decision = set.decide(subject, server, target, &lazy, 0);
                            assert_eq!(set.allows(subject, server, target, &lazy, 0), decision.allowed);
                            for other in &others {
                                assert_eq!(other.decide(subject, server, target, &lazy, 0), decision, "order matters");
                            }
                            let applicable = |effect: Effect| {
                                rules.iter().any(|rule| {
                                    rule.effect == effect
                                        && (rule.global || rule.servers.iter().any(|s| s == server))
                                        && rule.principals.matches(subject, effect == Effect::Deny)
                                        && set.rules.iter().any(|c| c.rule.name == rule.name && c.covers(target))
                                        && rule_applies(&rule.conditions, context, effect == Effect::Deny)
                                })
                            };
                            assert_eq!(
                                decision.allowed,
                                !applicable(Effect::Deny) && applicable(Effect::Allow),
                                "{decision:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
