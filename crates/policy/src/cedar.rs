//! Rules as Cedar policies: Cedar defines what a rule means, the [`crate::RuleSet`] evaluator
//! decides on the request path, and the differential test checks they agree.
//!
//! Every [`Rule`] compiles to one `permit` (allow) or `forbid` (deny) with a `when` clause, and
//! is validated against a schema in strict mode. The model:
//!
//! - principal `Subject`, with `kind` (`user`, `agent`, `anonymous`), `email`, `name` (an
//!   agent's), and the sets `groups`, `roles` and `attributes` (`"department=finance"`).
//!   Emails, groups, roles and attribute values are ASCII-lower-cased on both sides, as the
//!   evaluator compares them case-insensitively.
//! - actions `connect`, `call_tool`, `read_resource`, `get_prompt`;
//! - resource `Target`, with `server` and `name` (tool, resource URI or prompt);
//! - context `now` (milliseconds since the epoch, for expiry) and `f`, one typed view per
//!   field a rule's conditions name: `present`, and when present `kind` (`string`, `number`,
//!   `boolean`, `array`, `object`) and `json` (the value as canonical JSON), and — only when the
//!   value has that form — `s` (string), `n` (whole number), `b` (boolean), `ip` (an address),
//!   and for a list `items` (each element as canonical JSON), `all_s`/`all_n`/`all_b` (every
//!   element a string, number, boolean) and `texts` (its strings, joined by U+001F).
//!
//! The typed views make every policy total: a condition on a missing field, or on a value of
//! the wrong type, is neither true nor false but guarded away, so an allow needs its
//! conditions to hold and a deny stays in force unless one of its conditions fails — the
//! evaluator's three-valued semantics, written in Cedar. (Both order whole numbers only.)

use crate::condition::{Condition, TEXT_SEPARATOR, canonical, integral, scalar_kind};
use crate::rules::{Rule, Subject, Target};
use crate::{Effect, Principals};
use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityUid, Policy, PolicyId, PolicySet, Request, Schema, ValidationMode,
    Validator,
};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::str::FromStr;

/// A Cedar string literal.
pub(crate) fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `like` pattern matching `text` literally, with a wildcard before and/or after.
pub(crate) fn pattern_literal(text: &str, before: bool, after: bool) -> String {
    let mut escaped = literal(text);
    escaped = escaped.replace('*', "\\*");
    let inner = &escaped[1..escaped.len() - 1];
    format!("\"{}{inner}{}\"", if before { "*" } else { "" }, if after { "*" } else { "" })
}

fn ascii_lower(items: &[String]) -> Vec<String> {
    items.iter().map(|item| item.to_ascii_lowercase()).collect()
}

fn slot(field: &str) -> String {
    format!("context.f[{}]", literal(field))
}

/// Who the rule is about.
fn principals(principals: &Principals, deny: bool) -> String {
    let attributes: Vec<String> = principals
        .attributes
        .iter()
        .map(|(key, value)| {
            format!("principal.attributes.contains({})", literal(&format!("{key}={}", value.to_ascii_lowercase())))
        })
        .collect();
    let attributes = (!attributes.is_empty()).then(|| attributes.join(" && "));
    if principals.everyone {
        return match (deny, attributes) {
            (true, None) => "true".to_owned(),
            (false, None) => "principal.kind != \"anonymous\"".to_owned(),
            (true, Some(attributes)) => format!("(principal.kind == \"anonymous\" || ({attributes}))"),
            (false, Some(attributes)) => format!("(principal.kind != \"anonymous\" && {attributes})"),
        };
    }
    let mut named: Vec<String> = Vec::new();
    for user in ascii_lower(&principals.users) {
        named.push(format!("(principal.kind == \"user\" && principal.email == {})", literal(&user)));
    }
    for group in ascii_lower(&principals.groups) {
        named.push(format!("principal.groups.contains({})", literal(&group)));
    }
    for role in ascii_lower(&principals.roles) {
        named.push(format!("principal.roles.contains({})", literal(&role)));
    }
    for agent in &principals.agents {
        named.push(format!("(principal.kind == \"agent\" && principal.name == {})", literal(agent)));
    }
    match (named.is_empty(), attributes) {
        (true, Some(attributes)) => format!("({attributes})"),
        (_, None) => format!("({})", named.join(" || ")),
        (false, Some(attributes)) => format!("(({}) && {attributes})", named.join(" || ")),
    }
}

/// Which requests the rule covers: its servers, and per action its tools, resources, prompts.
fn scope(rule: &Rule) -> String {
    let mut parts = Vec::new();
    if !rule.global {
        let servers: Vec<String> = rule.servers.iter().map(|server| literal(server)).collect();
        parts.push(format!("[{}].contains(resource.server)", servers.join(", ")));
    }
    let entire = rule.tools.is_empty() && rule.resources.is_empty() && rule.prompts.is_empty();
    if !entire {
        let names = |patterns: &[String]| -> String {
            let any: Vec<String> =
                patterns.iter().map(|pattern| format!("resource.name like {}", literal(pattern))).collect();
            if any.is_empty() { "false".to_owned() } else { format!("({})", any.join(" || ")) }
        };
        let mut actions = Vec::new();
        // Allow rules of any scope let their principals connect; only whole-server denies
        // keep them out.
        if rule.effect == Effect::Allow {
            actions.push("action == Action::\"connect\"".to_owned());
        }
        actions.push(format!("(action == Action::\"call_tool\" && {})", names(&rule.tools)));
        actions.push(format!("(action == Action::\"read_resource\" && {})", names(&rule.resources)));
        actions.push(format!("(action == Action::\"get_prompt\" && {})", names(&rule.prompts)));
        parts.push(format!("({})", actions.join(" || ")));
    }
    if parts.is_empty() { "true".to_owned() } else { parts.join(" && ") }
}

/// The rule as a Cedar policy, annotated with its name. A disabled rule compiles to a policy
/// that never applies.
pub fn policy_text(rule: &Rule) -> String {
    let deny = rule.effect == Effect::Deny;
    let mut clauses: Vec<String> =
        [principals(&rule.principals, deny), scope(rule)].into_iter().filter(|clause| clause != "true").collect();
    if !rule.enabled {
        clauses.push("false".to_owned());
    }
    if let Some(expires) = rule.expires_at {
        clauses.push(format!("context.now < {expires}"));
    }
    for condition in &rule.conditions {
        let (holds, fails) = condition.cedar(&slot(&condition.field));
        clauses.push(if deny { format!("!{fails}") } else { holds });
    }
    if clauses.is_empty() {
        clauses.push("true".to_owned());
    }
    format!(
        "@id({})\n{}(principal, action, resource)\nwhen {{\n  {}\n}};",
        literal(&rule.name),
        if deny { "forbid" } else { "permit" },
        clauses.join("\n  && ")
    )
}

/// The fields the conditions of `rules` read, each once.
pub fn fields<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> BTreeSet<String> {
    rules.into_iter().flat_map(|rule| rule.conditions.iter().map(|condition| condition.field.clone())).collect()
}

/// The Cedar schema for rules reading `fields`.
pub fn schema(fields: &BTreeSet<String>) -> Result<Schema, String> {
    let optional = |kind: Value| {
        let mut kind = kind;
        kind["required"] = json!(false);
        kind
    };
    let field = json!({"type": "Record", "attributes": {
        "present": {"type": "Boolean"},
        "kind": optional(json!({"type": "String"})),
        "all_s": optional(json!({"type": "Boolean"})),
        "all_n": optional(json!({"type": "Boolean"})),
        "all_b": optional(json!({"type": "Boolean"})),
        "texts": optional(json!({"type": "String"})),
        "s": optional(json!({"type": "String"})),
        "n": optional(json!({"type": "Long"})),
        "b": optional(json!({"type": "Boolean"})),
        "ip": optional(json!({"type": "Extension", "name": "ipaddr"})),
        "items": optional(json!({"type": "Set", "element": {"type": "String"}})),
        "json": optional(json!({"type": "String"})),
    }});
    let views: Map<String, Value> = fields.iter().map(|name| (name.clone(), field.clone())).collect();
    let context = json!({"type": "Record", "attributes": {
        "now": {"type": "Long"},
        "f": {"type": "Record", "attributes": views},
    }});
    let strings = json!({"type": "Set", "element": {"type": "String"}});
    let applies = json!({"principalTypes": ["Subject"], "resourceTypes": ["Target"], "context": context});
    let document = json!({"": {
        "entityTypes": {
            "Subject": {"shape": {"type": "Record", "attributes": {
                "kind": {"type": "String"}, "email": {"type": "String"}, "name": {"type": "String"},
                "groups": strings, "roles": strings, "attributes": strings,
            }}},
            "Target": {"shape": {"type": "Record", "attributes": {
                "server": {"type": "String"}, "name": {"type": "String"},
            }}},
        },
        "actions": {
            "connect": {"appliesTo": applies},
            "call_tool": {"appliesTo": applies},
            "read_resource": {"appliesTo": applies},
            "get_prompt": {"appliesTo": applies},
        },
    }});
    Schema::from_json_value(document).map_err(|error| format!("the Cedar schema is invalid: {error}"))
}

/// Compile one rule to Cedar and validate it against the schema (strict mode); the policy
/// text, or what Cedar objects to.
pub fn validate(rule: &Rule) -> Result<String, String> {
    let text = policy_text(rule);
    let policy = Policy::parse(Some(PolicyId::new("rule")), &text)
        .map_err(|error| format!("rule {:?} does not compile to Cedar: {error}", rule.name))?;
    let mut set = PolicySet::new();
    set.add(policy).map_err(|error| format!("rule {:?}: {error}", rule.name))?;
    let schema = schema(&fields([rule]))?;
    let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
    if result.validation_passed() {
        Ok(text)
    } else {
        let problems: Vec<String> = result.validation_errors().map(|error| error.to_string()).collect();
        Err(format!("rule {:?} does not validate in Cedar: {}", rule.name, problems.join("; ")))
    }
}

/// Rules compiled to one Cedar policy set, to decide with Cedar's own authorizer (the oracle
/// of the differential test, and the baseline of the decision benchmark).
#[derive(Debug)]
pub struct Oracle {
    policies: PolicySet,
    conditions: Vec<Condition>,
    authorizer: Authorizer,
}

impl Oracle {
    pub fn new(rules: &[Rule]) -> Result<Oracle, String> {
        let mut policies = PolicySet::new();
        for (at, rule) in rules.iter().enumerate() {
            let policy = Policy::parse(Some(PolicyId::new(format!("r{at}"))), policy_text(rule))
                .map_err(|error| format!("rule {:?}: {error}", rule.name))?;
            policies.add(policy).map_err(|error| format!("rule {:?}: {error}", rule.name))?;
        }
        let mut conditions: Vec<Condition> = Vec::new();
        for rule in rules {
            for condition in &rule.conditions {
                if !conditions.iter().any(|known| known.field == condition.field) {
                    conditions.push(condition.clone());
                }
            }
        }
        Ok(Oracle { policies, conditions, authorizer: Authorizer::new() })
    }

    /// Cedar's decision, and the errors it met (there must be none: the policies are total).
    pub fn decide(
        &self,
        subject: &Subject,
        server: &str,
        target: Target<'_>,
        context: &Value,
        now_ms: i64,
    ) -> Result<bool, String> {
        self.authorize(&self.prepare(subject, server, target, context, now_ms)?)
    }

    /// Cedar's decision on a prepared question.
    pub fn authorize(&self, question: &Question) -> Result<bool, String> {
        let response = self.authorizer.is_authorized(&question.request, &self.policies, &question.entities);
        let errors: Vec<String> = response.diagnostics().errors().map(|error| error.to_string()).collect();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(response.decision() == Decision::Allow)
    }

    /// The question in Cedar's terms: the request and the entities it names.
    pub fn prepare(
        &self,
        subject: &Subject,
        server: &str,
        target: Target<'_>,
        context: &Value,
        now_ms: i64,
    ) -> Result<Question, String> {
        let (action, name) = match target {
            Target::Server => ("connect", ""),
            Target::Tool(name) => ("call_tool", name),
            Target::Resource(uri) => ("read_resource", uri),
            Target::Prompt(name) => ("get_prompt", name),
        };
        let kind = if subject.anonymous {
            "anonymous"
        } else if subject.agent.is_some() {
            "agent"
        } else {
            "user"
        };
        let attributes: Vec<String> =
            subject.attributes.iter().map(|(key, value)| format!("{key}={}", value.to_ascii_lowercase())).collect();
        let entities = json!([
            {"uid": {"type": "Subject", "id": "subject"}, "parents": [], "attrs": {
                "kind": kind,
                "email": subject.email.to_ascii_lowercase(),
                "name": subject.agent.clone().unwrap_or_default(),
                "groups": ascii_lower(&subject.groups),
                "roles": ascii_lower(&subject.roles),
                "attributes": attributes,
            }},
            {"uid": {"type": "Target", "id": "target"}, "parents": [], "attrs": {"server": server, "name": name}},
        ]);
        let entities = Entities::from_json_value(entities, None).map_err(|error| error.to_string())?;
        let mut views = Map::new();
        for condition in &self.conditions {
            views.insert(condition.field.clone(), view(condition.found(context)));
        }
        let context = Context::from_json_value(json!({"now": now_ms, "f": views}), None)
            .map_err(|error| format!("context: {error}"))?;
        let uid = |text: &str| EntityUid::from_str(text).map_err(|error| error.to_string());
        let request = Request::new(
            uid("Subject::\"subject\"")?,
            uid(&format!("Action::{}", literal(action)))?,
            uid("Target::\"target\"")?,
            context,
            None,
        )
        .map_err(|error| error.to_string())?;
        Ok(Question { request, entities })
    }
}

/// A request prepared for Cedar (see [`Oracle::prepare`]).
#[derive(Debug)]
pub struct Question {
    request: Request,
    entities: Entities,
}

/// The typed view of one field's value (see the module documentation).
fn view(found: Option<&Value>) -> Value {
    let Some(value) = found else { return json!({"present": false}) };
    let kind = match value {
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Array(_) => "array",
        _ => "object",
    };
    let mut view = json!({"present": true, "kind": kind, "json": canonical(value)});
    match value {
        Value::String(text) => {
            view["s"] = json!(text);
            if let Ok(ip) = text.trim().parse::<IpAddr>() {
                let ip = match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                    v4 => v4,
                };
                view["ip"] = json!({"__extn": {"fn": "ip", "arg": ip.to_string()}});
            }
        }
        Value::Number(number) => {
            if let Some(whole) = number.as_f64().and_then(integral) {
                view["n"] = json!(whole);
            }
        }
        Value::Bool(flag) => view["b"] = json!(flag),
        Value::Array(items) => {
            view["items"] = Value::Array(items.iter().map(|item| json!(canonical(item))).collect());
            let all = |kind: u8| items.iter().all(|item| scalar_kind(item) == Some(kind));
            view["all_s"] = json!(all(0));
            view["all_n"] = json!(all(1));
            view["all_b"] = json!(all(2));
            let texts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            view["texts"] = json!(texts.join(&TEXT_SEPARATOR.to_string()));
        }
        _ => {}
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSet;

    /// A small deterministic generator (no dependency).
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        fn pick<T: Clone>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize].clone()
        }

        fn some<T: Clone>(&mut self, items: &[T]) -> Vec<T> {
            let count = 1 + self.below(2) as usize;
            (0..count).map(|_| self.pick(items)).collect()
        }
    }

    const FIELDS: [&str; 6] =
        ["payload.table", "payload.limit", "payload.tags", "meta.request.ip", "meta.client.name", "payload.flag"];

    /// Values of every shape, so conditions meet missing fields and wrong types.
    fn values() -> Vec<Value> {
        vec![
            json!("orders"),
            json!("Orders"),
            json!("users"),
            json!("a*b"),
            json!("10.1.2.3"),
            json!("192.0.2.7"),
            json!(" 10.9.9.9 "),
            json!("::ffff:10.0.0.5"),
            json!("2001:db8::1"),
            json!(3),
            json!(10),
            json!(10.0),
            json!(-4),
            json!(true),
            json!(false),
            json!(["eu", "pii"]),
            json!(["orders", 3]),
            json!([]),
            json!({"k": 1}),
            Value::Null,
        ]
    }

    fn random_condition(random: &mut Random) -> Condition {
        let field = random.pick(&FIELDS);
        loop {
            let op = random.pick(&crate::condition::Operator::ALL).as_str();
            let value = match op {
                "in" | "not_in" => {
                    json!(random.some(&[json!("orders"), json!("users"), json!(10), json!(true), json!(["eu", "pii"])]))
                }
                "starts_with" | "not_starts_with" | "ends_with" | "not_ends_with" => {
                    random.pick(&[json!("ord"), json!("rs"), json!("*"), json!("a*"), json!("")])
                }
                "glob" => random.pick(&[json!("ord*"), json!("*s"), json!("a\\*b"), json!("*"), json!("x")]),
                "lt" | "le" | "gt" | "ge" => random.pick(&[json!(3), json!(10), json!(9.5), json!(-4)]),
                "in_cidr" | "not_in_cidr" => {
                    random.pick(&[json!("10.0.0.0/8"), json!(["192.0.2.0/24", "2001:db8::/32"]), json!("10.1.2.3/8")])
                }
                "exists" | "not_exists" => Value::Null,
                _ => random.pick(&values()),
            };
            if let Ok(condition) = Condition::compile(field, op, value) {
                return condition;
            }
        }
    }

    fn random_rule(random: &mut Random, index: usize) -> Rule {
        let effect = if random.below(3) == 0 { Effect::Deny } else { Effect::Allow };
        let global = effect == Effect::Deny && random.below(4) == 0;
        let principals = match random.below(7) {
            0 => Principals { everyone: true, ..Principals::default() },
            1 => {
                Principals { users: random.some(&["ANN@x".to_string(), "bob@x".to_string()]), ..Principals::default() }
            }
            2 => {
                Principals { groups: random.some(&["Finance".to_string(), "eng".to_string()]), ..Principals::default() }
            }
            3 => Principals { roles: random.some(&["support".to_string()]), ..Principals::default() },
            4 => Principals { agents: vec!["ci-bot".into()], ..Principals::default() },
            5 => Principals {
                attributes: [("department".to_string(), random.pick(&["finance".to_string(), "R&D".to_string()]))]
                    .into(),
                ..Principals::default()
            },
            _ => Principals {
                everyone: random.below(2) == 0,
                groups: vec!["eng".into()],
                attributes: [("department".to_string(), "Finance".to_string())].into(),
                ..Principals::default()
            },
        };
        let patterns = ["query", "list_*", "*", "write_*", "q*y"];
        let scoped = random.below(2) == 0;
        Rule {
            name: format!("rule {index} \"quoted\""),
            effect,
            global,
            servers: if global { Vec::new() } else { random.some(&["db".to_string(), "slack".to_string()]) },
            principals,
            tools: if scoped { random.some(&patterns.map(String::from)) } else { Vec::new() },
            resources: if scoped && random.below(2) == 0 { vec!["db://orders/*".into()] } else { Vec::new() },
            prompts: Vec::new(),
            conditions: (0..random.below(3)).map(|_| random_condition(random)).collect(),
            expires_at: (random.below(4) == 0).then_some(1_000),
            enabled: random.below(8) != 0,
        }
    }

    fn random_context(random: &mut Random) -> Value {
        let mut context = json!({"payload": {}, "meta": {"request": {}, "client": {}}});
        for field in FIELDS {
            if random.below(4) != 0 {
                let path: Vec<&str> = field.split('.').collect();
                let mut slot = &mut context;
                for part in &path {
                    slot = &mut slot[*part];
                }
                *slot = random.pick(&values());
            }
        }
        context
    }

    fn subjects() -> Vec<Subject> {
        let person = |email: &str, groups: &[&str], roles: &[&str], department: &str| Subject {
            email: email.into(),
            groups: groups.iter().map(|group| group.to_string()).collect(),
            roles: roles.iter().map(|role| role.to_string()).collect(),
            attributes: if department.is_empty() {
                Default::default()
            } else {
                [("department".to_string(), department.to_string())].into()
            },
            ..Subject::default()
        };
        vec![
            person("ann@x", &["finance"], &[], "FINANCE"),
            person("Bob@X", &["Eng"], &["Support"], "r&d"),
            person("cara@x", &[], &[], ""),
            Subject { agent: Some("ci-bot".into()), email: "ci-bot".into(), ..Subject::default() },
            Subject { anonymous: true, ..Subject::default() },
        ]
    }

    /// The fast evaluator and Cedar's own authorizer agree on every decision, over random rule
    /// sets, subjects, targets, contexts and times; and Cedar meets no error (the policies are
    /// total). Every rule also validates against the schema.
    #[test]
    fn the_evaluator_agrees_with_cedar() {
        let mut random = Random(0x2545_f491_4f6c_dd1d);
        let targets = [
            Target::Server,
            Target::Tool("query"),
            Target::Tool("list_tables"),
            Target::Tool("quay"),
            Target::Tool("drop"),
            Target::Resource("db://orders/7"),
            Target::Prompt("p"),
        ];
        let subjects = subjects();
        let mut decisions = 0;
        let mut allowed = 0;
        for round in 0..300 {
            let count = 1 + random.below(6) as usize;
            let rules: Vec<Rule> = (0..count).map(|index| random_rule(&mut random, index)).collect();
            for rule in &rules {
                validate(rule).unwrap_or_else(|error| panic!("{error}\n{}", policy_text(rule)));
            }
            let fast = RuleSet::compile(rules.clone()).unwrap();
            let oracle = Oracle::new(&rules).unwrap();
            for _ in 0..12 {
                let context = random_context(&mut random);
                let subject = random.pick(&subjects);
                let server = random.pick(&["db", "slack"]);
                let target = random.pick(&targets);
                let now = random.pick(&[0, 999, 1_000, 5_000]);
                let ours = fast.decide(&subject, server, target, &crate::Context::of(context.clone()), now).allowed;
                let cedar = oracle
                    .decide(&subject, server, target, &context, now)
                    .unwrap_or_else(|error| panic!("round {round}: Cedar erred: {error}"));
                let texts: Vec<String> = rules.iter().map(policy_text).collect();
                assert_eq!(
                    ours,
                    cedar,
                    "round {round}: {subject:?} {server} {target:?} now={now}\ncontext: {context}\n{}",
                    texts.join("\n")
                );
                decisions += 1;
                allowed += usize::from(ours);
            }
        }
        // The generator reaches both answers often enough to mean something.
        assert!(allowed >= 200 && decisions - allowed >= 200, "{allowed} of {decisions} allowed");
    }

    #[test]
    fn the_admin_guide_examples_read_as_cedar() {
        let rule = Rule {
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
        assert_eq!(
            validate(&rule).unwrap(),
            "@id(\"Corporate network only\")\nforbid(principal, action, resource)\nwhen {\n  \
             !(context.f[\"meta.request.ip\"] has ip && (context.f[\"meta.request.ip\"].ip.isInRange(ip(\"10.0.0.0/8\"))))\n};"
        );
        let mut finance = rule.clone();
        finance.name = "finance read-only db".into();
        finance.effect = Effect::Allow;
        finance.global = false;
        finance.servers = vec!["db".into()];
        finance.principals = Principals { groups: vec!["Finance".into()], ..Principals::default() };
        finance.tools = vec!["query".into(), "list_*".into()];
        finance.conditions = vec![Condition::compile("payload.table", "in", json!(["orders", "invoices"])).unwrap()];
        let text = validate(&finance).unwrap();
        assert!(text.starts_with("@id(\"finance read-only db\")\npermit(principal, action, resource)"), "{text}");
        assert!(text.contains("principal.groups.contains(\"finance\")"), "{text}");
        assert!(text.contains("resource.name like \"list_*\""), "{text}");
    }

    #[test]
    fn literals_and_patterns_escape_what_they_must() {
        assert_eq!(literal("a\"b\\c\n"), "\"a\\\"b\\\\c\\u{a}\"");
        assert_eq!(pattern_literal("a*b", true, false), "\"*a\\*b\"");
    }
}
