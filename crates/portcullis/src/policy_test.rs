//! `portcullis policy test -f CASES.toml`: a table of `(who, server, what, context) → expected
//! decision` cases run against the rules in the store, for the CI pipelines of customers who
//! keep their rules in git. Each case is decided exactly as the data plane would decide the
//! call (same snapshot, same function, same context).

use crate::access::{self, Ask, Origin};
use crate::auth::Caller;
use crate::snapshot::{Snapshot, UserEntry};
use policy::Action;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    cases: Vec<Case>,
}

/// One case. Exactly one of `user` / `agent`, and at most one of `tool` / `resource` /
/// `prompt` (none: connecting to the server).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// A label for the output; defaults to a description of the case.
    name: Option<String>,
    user: Option<String>,
    agent: Option<String>,
    server: String,
    tool: Option<String>,
    resource: Option<String>,
    prompt: Option<String>,
    /// Tool arguments (`payload.*` in conditions).
    payload: Option<Value>,
    ip: Option<String>,
    user_agent: Option<String>,
    /// The MCP client's name (`meta.client.name`).
    client: Option<String>,
    client_version: Option<String>,
    /// The call came with an OAuth access token (`meta.oauth.user_verified`).
    #[serde(default)]
    oauth: bool,
    /// `allow` or `deny`.
    expect: String,
}

/// The outcome of a run: one line per case, and the counts.
#[derive(Debug, Default)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub passed: usize,
    pub failed: usize,
}

/// Why the cases could not be run at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CasesError(pub String);

/// Run the cases in `text` (`source` names the file in messages) against `snapshot`.
pub fn run(snapshot: &Snapshot, text: &str, source: &str) -> Result<Outcome, CasesError> {
    let file: CasesFile = toml::from_str(text).map_err(|error| CasesError(format!("{source}: {error}")))?;
    if file.cases.is_empty() {
        return Err(CasesError(format!("{source} has no [[cases]]; see `portcullis policy test --help`")));
    }
    let mut outcome = Outcome::default();
    for (at, case) in file.cases.iter().enumerate() {
        let label = case.name.clone().unwrap_or_else(|| describe(case));
        match decide(snapshot, case) {
            Err(problem) => {
                outcome.failed += 1;
                outcome.lines.push(format!("FAIL case {} ({label}): {problem}", at + 1));
            }
            Ok((expected, decision)) => {
                let got = decision.effect.as_str();
                if got == expected {
                    outcome.passed += 1;
                    outcome.lines.push(format!("ok   {label}: {got} ({})", decision.reason));
                } else {
                    outcome.failed += 1;
                    outcome.lines.push(format!("FAIL {label}: expected {expected}, got {got} ({})", decision.reason));
                }
            }
        }
    }
    Ok(outcome)
}

fn describe(case: &Case) -> String {
    let who = case.user.as_deref().or(case.agent.as_deref()).unwrap_or("?");
    let what = case
        .tool
        .as_deref()
        .map(|tool| format!("tool {tool}"))
        .or_else(|| case.resource.as_deref().map(|uri| format!("resource {uri}")))
        .or_else(|| case.prompt.as_deref().map(|prompt| format!("prompt {prompt}")))
        .unwrap_or_else(|| "connect".into());
    format!("{who} → {} {what}", case.server)
}

fn decide(snapshot: &Snapshot, case: &Case) -> Result<(&'static str, policy::Decision), String> {
    let expected = match case.expect.as_str() {
        "allow" => "allow",
        "deny" => "deny",
        other => return Err(format!("expect = {other:?}: write \"allow\" or \"deny\"")),
    };
    if !snapshot.servers.contains_key(&case.server) {
        return Err(format!("there is no server named {:?}", case.server));
    }
    let user = match (&case.user, &case.agent) {
        (Some(email), None) => {
            let email = email.trim().to_lowercase();
            snapshot
                .users
                .values()
                .find(|user| user.email == email)
                .cloned()
                .ok_or_else(|| format!("there is no user {email}"))?
        }
        (None, Some(agent)) => Arc::new(agent_entry(agent)),
        _ => return Err("name exactly one of user = \"…\" or agent = \"…\"".into()),
    };
    let (action, name) = match (&case.tool, &case.resource, &case.prompt) {
        (None, None, None) => (Action::Connect, ""),
        (Some(tool), None, None) => (Action::CallTool, tool.as_str()),
        (None, Some(uri), None) => (Action::ReadResource, uri.as_str()),
        (None, None, Some(prompt)) => (Action::GetPrompt, prompt.as_str()),
        _ => return Err("name at most one of tool, resource and prompt".into()),
    };
    let oauth = case.oauth.then(|| {
        Arc::new(crate::snapshot::OAuthAccess {
            user_id: user.id.clone(),
            client_id: "policy-test".into(),
            resource: format!("/mcp/{}", case.server),
            expires_at: i64::MAX,
        })
    });
    let caller = if user.status == crate::registry::Status::Active {
        Caller::User { user, oauth }
    } else {
        return Ok((
            expected,
            policy::Decision {
                effect: policy::Effect::Deny,
                reason: format!("{} is {}", user.email, user.status.as_str()),
                matched_rules: Vec::new(),
            },
        ));
    };
    let client = case.client.as_deref().map(|name| (name, case.client_version.as_deref().unwrap_or("")));
    let origin = Origin { ip: case.ip.as_deref(), user_agent: case.user_agent.as_deref(), client };
    let ask = Ask { server: &case.server, action, name, payload: case.payload.as_ref() };
    Ok((expected, access::decide(snapshot, &caller, &origin, &ask)))
}

/// An agent as rules see it (agent accounts are named in rules by their name).
fn agent_entry(name: &str) -> UserEntry {
    UserEntry {
        id: format!("agent:{name}"),
        email: name.to_owned(),
        name: name.to_owned(),
        admin: false,
        admin_roles: Vec::new(),
        status: crate::registry::Status::Active,
        groups: Vec::new(),
        subject: policy::Subject { agent: Some(name.to_owned()), email: name.to_owned(), ..policy::Subject::default() },
    }
}
