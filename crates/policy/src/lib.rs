//! The Portcullis rule model and its evaluator: pure, no IO, no async.
//!
//! The data plane asks one question for every list entry and every call:
//! [`PolicySet::decide`]`(principal, request) -> Decision`. The answer always carries its
//! reason, so a denial can be explained to the caller and recorded in the audit event.
//!
//! - [`Principal`]: who is asking (a user with groups, or the anonymous principal).
//! - [`Request`]: what they want (a server, an action, a tool/resource/prompt name).
//! - [`Grant`]: the one rule kind so far: "these users and groups may use this server".
//! - [`PolicySet`]: grants compiled into per-server indexes; deny by default.
//!
//! Semantics (kept when richer rules arrive): deny by default, any matching deny wins, the
//! order of rules never matters.

pub mod condition;
pub mod rules;

use std::collections::{HashMap, HashSet};
use std::fmt;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An authenticated user.
    User {
        /// The stable user id.
        id: String,
        /// For reasons shown to people.
        email: String,
        /// Names of the groups the user belongs to.
        groups: Vec<String>,
    },
    /// A request without credentials, on a server marked public.
    Anonymous,
}

impl Principal {
    /// The label used in audit events and reasons.
    pub fn label(&self) -> &str {
        match self {
            Principal::User { email, .. } => email,
            Principal::Anonymous => "anonymous",
        }
    }
}

/// What kind of thing the principal wants to do on a server.
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
}

/// One authorization question.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub server: &'a str,
    pub action: Action,
    /// The tool, prompt name or resource URI; empty for [`Action::Connect`].
    pub name: &'a str,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// The answer, with the reason a person can read and the ids of the rules that decided.
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
        let effect = match self.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        };
        write!(formatter, "{effect}: {}", self.reason)
    }
}

/// "These users and groups may use this server." `public` grants reach everyone, including
/// the anonymous principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// A stable id, reported in decisions.
    pub id: String,
    pub server: String,
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

#[derive(Debug, Default)]
struct ServerIndex {
    public: bool,
    users: HashMap<String, String>,
    groups: HashMap<String, String>,
}

/// Compiled rules. Build once per snapshot, then ask [`PolicySet::decide`] as often as needed.
#[derive(Debug, Default)]
pub struct PolicySet {
    servers: HashMap<String, ServerIndex>,
}

impl PolicySet {
    /// Compile grants. `public_servers` accept every principal, anonymous included.
    pub fn new(grants: &[Grant], public_servers: &HashSet<String>) -> PolicySet {
        let mut servers: HashMap<String, ServerIndex> = HashMap::new();
        for server in public_servers {
            servers.entry(server.clone()).or_default().public = true;
        }
        for grant in grants {
            let index = servers.entry(grant.server.clone()).or_default();
            for user in &grant.users {
                index.users.entry(user.clone()).or_insert_with(|| grant.id.clone());
            }
            for group in &grant.groups {
                index.groups.entry(group.clone()).or_insert_with(|| grant.id.clone());
            }
        }
        PolicySet { servers }
    }

    /// The single authorization function. Deny unless a grant covers the principal.
    pub fn decide(&self, principal: &Principal, request: &Request<'_>) -> Decision {
        let Some(index) = self.servers.get(request.server) else {
            return deny(format!("no rule gives anyone access to server \"{}\"", request.server));
        };
        if index.public {
            return allow(format!("server \"{}\" is public", request.server), Vec::new());
        }
        match principal {
            Principal::Anonymous => deny(format!(
                "server \"{}\" needs credentials: send an API key as \"Authorization: Bearer <key>\"",
                request.server
            )),
            Principal::User { id, email, groups } => {
                if let Some(rule) = index.users.get(id) {
                    return allow(format!("{email} is granted server \"{}\"", request.server), vec![rule.clone()]);
                }
                for group in groups {
                    if let Some(rule) = index.groups.get(group) {
                        return allow(
                            format!("group \"{group}\" is granted server \"{}\"", request.server),
                            vec![rule.clone()],
                        );
                    }
                }
                deny(format!("{email} has no grant for server \"{}\"; ask an administrator for access", request.server))
            }
        }
    }
}

fn allow(reason: String, matched_rules: Vec<String>) -> Decision {
    Decision { effect: Effect::Allow, reason, matched_rules }
}

fn deny(reason: String) -> Decision {
    Decision { effect: Effect::Deny, reason, matched_rules: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, groups: &[&str]) -> Principal {
        Principal::User {
            id: id.into(),
            email: format!("{id}@example.com"),
            groups: groups.iter().map(|group| group.to_string()).collect(),
        }
    }

    fn check(policy: &PolicySet, principal: &Principal, server: &str, expected: &str) {
        let request = Request { server, action: Action::CallTool, name: "echo" };
        assert_eq!(policy.decide(principal, &request).to_string(), expected);
    }

    #[test]
    fn grants_deny_by_default() {
        let grants = vec![
            Grant { id: "g1".into(), server: "docs".into(), users: vec!["ann".into()], groups: vec![] },
            Grant { id: "g2".into(), server: "docs".into(), users: vec![], groups: vec!["eng".into()] },
        ];
        let public = HashSet::from(["open".to_string()]);
        let policy = PolicySet::new(&grants, &public);
        check(&policy, &user("ann", &[]), "docs", "allow: ann@example.com is granted server \"docs\"");
        check(&policy, &user("bob", &["eng"]), "docs", "allow: group \"eng\" is granted server \"docs\"");
        check(
            &policy,
            &user("eve", &["sales"]),
            "docs",
            "deny: eve@example.com has no grant for server \"docs\"; ask an administrator for access",
        );
        check(&policy, &user("ann", &[]), "other", "deny: no rule gives anyone access to server \"other\"");
        check(
            &policy,
            &Principal::Anonymous,
            "docs",
            "deny: server \"docs\" needs credentials: send an API key as \"Authorization: Bearer <key>\"",
        );
        check(&policy, &Principal::Anonymous, "open", "allow: server \"open\" is public");
    }

    #[test]
    fn order_of_grants_never_matters() {
        let mut grants = vec![
            Grant { id: "a".into(), server: "s".into(), users: vec!["u".into()], groups: vec![] },
            Grant { id: "b".into(), server: "s".into(), users: vec![], groups: vec!["g".into()] },
        ];
        let principal = user("u", &["g"]);
        let request = Request { server: "s", action: Action::Connect, name: "" };
        let first = PolicySet::new(&grants, &HashSet::new()).decide(&principal, &request).effect;
        grants.reverse();
        let second = PolicySet::new(&grants, &HashSet::new()).decide(&principal, &request).effect;
        assert_eq!(first, second);
        assert_eq!(first, Effect::Allow);
    }
}
