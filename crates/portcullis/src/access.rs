//! The one way the gateway asks for an authorization decision: [`decide`] builds the question
//! for [`policy::PolicySet::decide`] from what is known about the call — who (the caller),
//! from where ([`Origin`]), on which server, for which tool, resource or prompt, with which
//! arguments — and the per-call JSON context rule conditions read:
//!
//! | field | value |
//! |---|---|
//! | `payload.*` | the tool arguments (prompt arguments for `prompts/get`) |
//! | `meta.request.ip`, `meta.request.user_agent` | the client's address (after trusted proxies) and `User-Agent` |
//! | `meta.client.name`, `meta.client.version` | the MCP client, from its `initialize` |
//! | `meta.subject.type` | `user`, `agent` or `anonymous` |
//! | `meta.subject.email`, `.name`, `.groups`, `.roles`, `.attributes.*` | the caller's identity |
//! | `meta.oauth.user_verified`, `meta.oauth.client_id` | present when the caller signed in through OAuth |
//! | `meta.server.name`, `.transport`, `.public` | the server |
//! | `meta.tool.name`, `meta.resource.uri`, `meta.prompt.name` | what is asked for |
//! | `meta.tool.annotations.*`, `meta.tool.title` | from the server's last known tool list |
//!
//! The context is built only when a rule that could apply has conditions.

use crate::auth::Caller;
use crate::snapshot::{ServerEntry, Snapshot, UserEntry};
use policy::{Action, Context, Decision, Request};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Where a call comes from, as far as rules can see.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// The MCP client's name and version, from its `initialize`.
    pub client: Option<(&'a str, &'a str)>,
}

/// [`Origin`], owned: for work that outlives the request (list filtering after a streamed
/// answer, long-lived streams re-checked on every policy change).
#[derive(Debug, Clone, Default)]
pub struct OwnedOrigin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub client: Option<(String, String)>,
}

impl OwnedOrigin {
    pub fn of(origin: &Origin<'_>) -> OwnedOrigin {
        OwnedOrigin {
            ip: origin.ip.map(str::to_owned),
            user_agent: origin.user_agent.map(str::to_owned),
            client: origin.client.map(|(name, version)| (name.to_owned(), version.to_owned())),
        }
    }

    pub fn borrow(&self) -> Origin<'_> {
        Origin {
            ip: self.ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            client: self.client.as_ref().map(|(name, version)| (name.as_str(), version.as_str())),
        }
    }
}

/// What is asked for on a server.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub server: &'a str,
    pub action: Action,
    /// The tool, resource URI or prompt; empty when connecting or listing.
    pub name: &'a str,
    pub payload: Option<&'a Value>,
}

impl<'a> Ask<'a> {
    /// Using the server at all: opening a session, listing, pinging.
    pub fn connect(server: &'a str) -> Ask<'a> {
        Ask { server, action: Action::Connect, name: "", payload: None }
    }
}

/// The context rule conditions read, for one call.
pub fn context(
    caller: &Caller,
    origin: &Origin<'_>,
    snapshot: Option<&Snapshot>,
    entry: Option<&ServerEntry>,
    ask: &Ask<'_>,
) -> Value {
    let mut meta = Map::new();
    let mut request = Map::new();
    if let Some(ip) = origin.ip {
        request.insert("ip".into(), ip.into());
    }
    if let Some(agent) = origin.user_agent {
        request.insert("user_agent".into(), agent.into());
    }
    meta.insert("request".into(), Value::Object(request));
    if let Some((name, version)) = origin.client {
        meta.insert("client".into(), json!({ "name": name, "version": version }));
    }
    meta.insert("subject".into(), subject(caller));
    if let Some(oauth) = caller.oauth() {
        meta.insert("oauth".into(), json!({ "user_verified": true, "client_id": oauth.client_id }));
    }
    let mut server = json!({ "name": ask.server });
    if let Some(entry) = entry {
        server["transport"] = entry.server.transport.as_str().into();
        server["public"] = entry.server.public.into();
    }
    meta.insert("server".into(), server);
    match ask.action {
        Action::Connect => {}
        Action::CallTool => {
            let mut tool = json!({ "name": ask.name });
            let known = snapshot.and_then(|snapshot| snapshot.tools.get(ask.server)?.tools.get(ask.name));
            if let Some(known) = known {
                if !known.annotations.is_null() {
                    tool["annotations"] = known.annotations.clone();
                }
                if let Some(title) = &known.title {
                    tool["title"] = title.as_str().into();
                }
            }
            meta.insert("tool".into(), tool);
        }
        Action::ReadResource => {
            meta.insert("resource".into(), json!({ "uri": ask.name }));
        }
        Action::GetPrompt => {
            meta.insert("prompt".into(), json!({ "name": ask.name }));
        }
    }
    let payload = ask.payload.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    json!({ "payload": payload, "meta": meta })
}

fn subject(caller: &Caller) -> Value {
    match caller.user() {
        None => json!({ "type": "anonymous" }),
        Some(user) => {
            let subject = &user.subject;
            json!({
                "type": if subject.agent.is_some() { "agent" } else { "user" },
                "email": user.email,
                "name": user.name,
                "groups": subject.groups,
                "roles": subject.roles,
                "attributes": subject.attributes,
            })
        }
    }
}

/// Decide `ask` for `caller` under `snapshot`: the single authorization function of the
/// gateway (data plane, API and console all come here).
///
/// Connecting (opening a session, listing, streaming) names no tool and carries no arguments,
/// so conditions on `payload.*` and on the tool, resource or prompt wait for the calls.
pub fn decide(snapshot: &Snapshot, caller: &Caller, origin: &Origin<'_>, ask: &Ask<'_>) -> Decision {
    decide_under(&snapshot.policy, snapshot, caller, origin, ask)
}

/// May an entry of a list answer (`tools/list`, …) be shown? Decided like a call, with the
/// arguments of the call unknown: conditions on `payload.*` are taken in the caller's favour.
pub fn listed(snapshot: &Snapshot, caller: &Caller, origin: &Origin<'_>, ask: &Ask<'_>) -> bool {
    asking(snapshot, caller, origin, ask, Judge::Listing, |request| snapshot.policy.allows(caller.subject(), request))
}

/// Decide `ask` under `policy` — the snapshot's, or a draft being simulated — as
/// [`decide`] does.
pub fn decide_under(
    policy: &policy::PolicySet,
    snapshot: &Snapshot,
    caller: &Caller,
    origin: &Origin<'_>,
    ask: &Ask<'_>,
) -> Decision {
    let judge = if ask.action == Action::Connect { Judge::Connect } else { Judge::Call };
    if let Some(reason) = crate::pinning::refusal(snapshot, ask.server, ask.action, ask.name) {
        return Decision { effect: policy::Effect::Deny, reason, matched_rules: Vec::new() };
    }
    asking(snapshot, caller, origin, ask, judge, |request| policy.decide(caller.subject(), request))
}

/// Could `caller` get what `ask` asks for, given suitable circumstances? For views ("my
/// servers", effective access): allow rules count whatever their conditions, deny rules only
/// when they have none.
pub fn reachable(snapshot: &Snapshot, caller: &Caller, ask: &Ask<'_>) -> Decision {
    let origin = Origin::default();
    asking(snapshot, caller, &origin, ask, Judge::Potential, |request| {
        snapshot.policy.decide(caller.subject(), request)
    })
}

/// What the context of a question can judge (see [`policy::Context`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judge {
    Call,
    Connect,
    Listing,
    Potential,
}

/// Build the question — the request and its lazily built context — and hand it to `answer`.
fn asking<T>(
    snapshot: &Snapshot,
    caller: &Caller,
    origin: &Origin<'_>,
    ask: &Ask<'_>,
    judge: Judge,
    answer: impl FnOnce(&Request<'_>) -> T,
) -> T {
    let entry = snapshot.servers.get(ask.server).map(|entry| &**entry);
    let build = || self::context(caller, origin, Some(snapshot), entry, ask);
    let context = match judge {
        Judge::Call => Context::lazy(&build),
        Judge::Connect => Context::connecting(&build),
        Judge::Listing => Context::listing(&build),
        Judge::Potential => Context::potential(),
    };
    let request = Request {
        server: ask.server,
        action: ask.action,
        name: ask.name,
        context: &context,
        now_ms: crate::store::now_ms(),
    };
    answer(&request)
}

/// The servers `user` could use, by name (none when they are not active).
pub fn servers_of<'a>(snapshot: &'a Snapshot, user: &Arc<UserEntry>) -> Vec<&'a str> {
    if user.status != crate::registry::Status::Active {
        return Vec::new();
    }
    let caller = Caller::User { user: user.clone(), oauth: None };
    let mut names: Vec<&str> = snapshot
        .servers
        .keys()
        .filter(|server| reachable(snapshot, &caller, &Ask::connect(server)).is_allowed())
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    names
}
