//! The connection test of a server request: connect with the requested configuration, check
//! that the server speaks MCP, and read what it offers (tools, resources, resource templates,
//! prompts), always with one fixed set of client capabilities so the answer does not depend on
//! who asks.
//!
//! Only an admin starts it: nothing an employee typed runs before an admin has read it. It
//! uses the gateway's own upstream connectors, so a stdio command starts in the same
//! restricted environment as any server process (a clean environment with only the request's
//! variables and a minimal `PATH`/`HOME`, never the gateway's own), and everything is bounded:
//! [`TIME_LIMIT`] for the whole test and [`LISTING_LIMIT`] bytes of listings kept.
//!
//! The result is exactly one [`Outcome`], with the detail that explains it and the steps that
//! passed.

use crate::registry::{Server, ServerSecrets};
use crate::requests::Checked;
use crate::snapshot::ServerEntry;
use crate::upstream::{Attachment, UpstreamError, Upstreams, response_id};
use mcp::{Message, ProtocolVersion};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The longest a connection test may take, start to finish.
pub const TIME_LIMIT: Duration = Duration::from_secs(30);
/// The most listing JSON kept from one test (tools, resources and prompts together).
pub const LISTING_LIMIT: usize = 2 * 1024 * 1024;
/// Pages read from one paginated list.
const MAX_PAGES: usize = 20;

/// What the test found, in the guide's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Connected, the server answered, the protocol checked out and tools are listed.
    Success,
    /// No answer within the time limit (a network issue, or a process that never answers).
    Timeout,
    /// Nothing to connect to: refused, unknown host, TLS failure, a command that cannot start
    /// or exits at once.
    Unreachable,
    /// The server refused the configured credentials.
    AuthFailed,
    /// Something answered, but not MCP as the specification says.
    InvalidResponse,
    /// A valid MCP server that offers no tools (usually a configuration issue).
    NoTools,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "Connection successful",
            Outcome::Timeout => "Connection timeout (network issue)",
            Outcome::Unreachable => "Cannot connect (network or command issue)",
            Outcome::AuthFailed => "Authentication failed (credential issue)",
            Outcome::InvalidResponse => "Invalid response (protocol issue)",
            Outcome::NoTools => "No tools found (configuration issue)",
        }
    }
}

/// One step of the test and whether it passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub ok: bool,
}

/// A finished test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestResult {
    pub outcome: Outcome,
    /// What happened, for a person.
    pub detail: String,
    pub steps: Vec<Step>,
    pub started_at: i64,
    pub finished_at: i64,
    /// Who ran it.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_info: Option<Value>,
    #[serde(default)]
    pub tools: Vec<Value>,
    #[serde(default)]
    pub resources: Vec<Value>,
    #[serde(default)]
    pub resource_templates: Vec<Value>,
    #[serde(default)]
    pub prompts: Vec<Value>,
    /// Whether the connection went over TLS that verified (HTTPS URLs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verified: Option<bool>,
}

/// The steps, in order, as the progress shows them.
pub const STEPS: [&str; 4] =
    ["connecting", "validating the protocol", "listing tools", "listing resources and prompts"];

/// The server a request proposes, as the upstream connectors take it (never stored).
pub fn entry_for(request_id: &str, checked: &Checked) -> ServerEntry {
    let now = crate::store::now_ms();
    let server = Server {
        id: format!("request-{request_id}"),
        name: checked.proposal.name.clone(),
        description: checked.proposal.description.clone(),
        transport: checked.proposal.transport,
        url: checked.proposal.url.clone(),
        command: checked.proposal.command.clone(),
        args: checked.proposal.args.clone(),
        env_names: checked.proposal.env_names.clone(),
        header_names: checked.proposal.header_names.clone(),
        public: false,
        shared_process: false,
        oauth: None,
        created_at: now,
        updated_at: now,
        sealed_secrets: Vec::new(),
    };
    let secrets = ServerSecrets {
        env: checked.secrets.env.clone(),
        headers: checked.secrets.headers.clone(),
        oauth_client_secret: None,
    };
    ServerEntry::new(server, secrets)
}

/// Test the server of `entry`, reporting the current step on `progress`.
pub async fn run(
    upstreams: &Upstreams,
    entry: &ServerEntry,
    by: &str,
    progress: &watch::Sender<&'static str>,
) -> TestResult {
    let started_at = crate::store::now_ms();
    let https = entry.server.url.as_deref().is_some_and(|url| url.starts_with("https://"));
    let mut result = TestResult {
        outcome: Outcome::Timeout,
        detail: String::new(),
        steps: Vec::new(),
        started_at,
        finished_at: started_at,
        by: by.to_owned(),
        protocol_version: None,
        server_info: None,
        tools: Vec::new(),
        resources: Vec::new(),
        resource_templates: Vec::new(),
        prompts: Vec::new(),
        tls_verified: None,
    };
    let deadline = Instant::now() + TIME_LIMIT;
    let mut session = Session { upstreams, entry, attachment: None, version: ProtocolVersion::V2025_06_18 };
    let finished = tokio::time::timeout(TIME_LIMIT, probe(&mut session, &mut result, progress)).await;
    match finished {
        Ok(Ok(())) => {}
        Ok(Err((outcome, detail))) => {
            result.outcome = outcome;
            result.detail = detail;
            if outcome == Outcome::Unreachable
                && entry.server.transport == crate::registry::Transport::Stdio
                && !result.detail.contains("check the command")
            {
                result.detail.push_str(" — check the command, its arguments and its environment variables");
            }
        }
        Err(_) => {
            let step = *progress.borrow();
            result.outcome = Outcome::Timeout;
            result.detail = format!("no answer within {} seconds while {step}", TIME_LIMIT.as_secs());
        }
    }
    if let Some(attachment) = &session.attachment {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(2));
        let _ = tokio::time::timeout(left, upstreams.close(entry, attachment, session.version)).await;
    }
    if https {
        result.tls_verified = Some(result.steps.first().is_some_and(|step| step.ok));
    }
    result.finished_at = crate::store::now_ms();
    result
}

struct Session<'a> {
    upstreams: &'a Upstreams,
    entry: &'a ServerEntry,
    attachment: Option<Attachment>,
    version: ProtocolVersion,
}

type Failure = (Outcome, String);

fn failure(error: &UpstreamError) -> Failure {
    if let UpstreamError::Unavailable(text) = error
        && text.starts_with("it answered HTTP")
    {
        // Something answers at the URL, but not as an MCP server does.
        return (Outcome::InvalidResponse, format!("something answers at this URL, but not as an MCP server: {text}"));
    }
    let outcome = match error {
        UpstreamError::Timeout => Outcome::Timeout,
        UpstreamError::Refused(_) | UpstreamError::NeedsConnection(_) => Outcome::AuthFailed,
        UpstreamError::Unavailable(_) => Outcome::Unreachable,
        UpstreamError::Invalid(_)
        | UpstreamError::SessionGone
        | UpstreamError::OtherReplica(_)
        | UpstreamError::NotSupported(_) => Outcome::InvalidResponse,
    };
    (outcome, error.to_string())
}

impl Session<'_> {
    /// The response to request `message`, skipping notifications sent on the way.
    async fn answer(&self, replies: &mut crate::upstream::Replies, message: &Message) -> Result<Value, Failure> {
        let wanted = message.id.as_ref().map(mcp::Id::to_value);
        loop {
            match replies.recv().await {
                Some(Ok(value))
                    if response_id(&value).is_some()
                        && (response_id(&value) == wanted.as_ref() || response_id(&value) == Some(&Value::Null)) =>
                {
                    return Ok(value);
                }
                Some(Ok(value)) if value.get("method").is_some() && value.get("id").is_some() => {
                    self.decline(&value).await;
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(failure(&error)),
                None => {
                    return Err((
                        Outcome::Unreachable,
                        "the server closed the connection without answering (for a command: it exited — check \
                         the command, its arguments and its environment variables)"
                            .into(),
                    ));
                }
            }
        }
    }

    /// Answer a request the server sends while being read: no roots, and no sampling or
    /// elicitation (nobody is there to answer).
    async fn decline(&self, request: &Value) {
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let reply = match request.get("method").and_then(Value::as_str) {
            Some("roots/list") => json!({"jsonrpc": "2.0", "id": id, "result": {"roots": []}}),
            Some("ping") => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
            _ => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601,
                "message": "the gateway is only reading what this server offers; nobody can answer this"}}),
        };
        if let (Some(attachment), Ok(reply)) = (&self.attachment, Message::from_value(reply)) {
            let _ = self.upstreams.send(self.entry, attachment, self.version, &reply).await;
        }
    }

    async fn request(&self, id: i64, method: &str, params: Value) -> Result<Value, Failure> {
        let message = message(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        let attachment = self.attachment.as_ref().ok_or((Outcome::InvalidResponse, "no session".to_owned()))?;
        let mut replies =
            self.upstreams.request(self.entry, attachment, self.version, &message).await.map_err(|e| failure(&e))?;
        self.answer(&mut replies, &message).await
    }

    /// Every item of a paginated list (`tools/list` → `tools`).
    async fn list(&self, first_id: i64, method: &str, key: &str, kept: &mut usize) -> Result<Vec<Value>, Failure> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0..MAX_PAGES {
            let params = match &cursor {
                Some(cursor) => json!({"cursor": cursor}),
                None => json!({}),
            };
            let answer = self.request(first_id + page as i64, method, params).await?;
            if let Some(error) = answer.get("error") {
                return Err((Outcome::InvalidResponse, format!("{method} failed: {}", error_text(error))));
            }
            let result = answer.get("result").cloned().unwrap_or(Value::Null);
            let Some(list) = result.get(key).and_then(Value::as_array) else {
                return Err((Outcome::InvalidResponse, format!("the {method} answer has no {key:?} list")));
            };
            *kept += serde_json::to_vec(list).map(|bytes| bytes.len()).unwrap_or(0);
            if *kept > LISTING_LIMIT {
                return Err((
                    Outcome::InvalidResponse,
                    format!("the listings exceed {} MiB; a server offering that much is refused", LISTING_LIMIT >> 20),
                ));
            }
            items.extend(list.iter().cloned());
            cursor = result.get("nextCursor").and_then(Value::as_str).map(str::to_owned);
            if cursor.is_none() {
                return Ok(items);
            }
        }
        Err((Outcome::InvalidResponse, format!("{method} kept paginating past {MAX_PAGES} pages")))
    }
}

fn message(value: Value) -> Result<Message, Failure> {
    Message::from_value(value).map_err(|error| (Outcome::InvalidResponse, error.to_string()))
}

fn error_text(error: &Value) -> String {
    let text = error.get("message").and_then(Value::as_str).unwrap_or("no message");
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    format!("{text} (JSON-RPC error {code})")
}

async fn probe(
    session: &mut Session<'_>,
    result: &mut TestResult,
    progress: &watch::Sender<&'static str>,
) -> Result<(), Failure> {
    let step = |result: &mut TestResult, name: &'static str| {
        if let Some(last) = result.steps.last_mut() {
            last.ok = true;
        }
        result.steps.push(Step { name: name.to_owned(), ok: false });
        progress.send_replace(name);
    };
    step(result, STEPS[0]);
    // One fixed set of capabilities — every client capability, so the server shows everything
    // it could show any client (some list sampling or elicitation tools only to clients that
    // can answer them); what a client with fewer capabilities sees is a subset.
    let initialize = message(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": ProtocolVersion::V2025_06_18.as_str(),
        "capabilities": {"roots": {"listChanged": true}, "sampling": {}, "elicitation": {}},
        "clientInfo": {"name": "portcullis-connection-test", "version": env!("CARGO_PKG_VERSION")}
    }}))?;
    let (attachment, mut replies) =
        session.upstreams.open(session.entry, &initialize).await.map_err(|error| failure(&error))?;
    session.attachment = Some(attachment);
    let answer = session.answer(&mut replies, &initialize).await?;
    step(result, STEPS[1]);
    if let Some(error) = answer.get("error") {
        return Err((Outcome::InvalidResponse, format!("initialize failed: {}", error_text(error))));
    }
    let init = answer.get("result").cloned().unwrap_or(Value::Null);
    let version = init.get("protocolVersion").and_then(Value::as_str).unwrap_or("");
    session.version = ProtocolVersion::parse(version).ok_or_else(|| {
        (
            Outcome::InvalidResponse,
            format!("the server answered initialize with protocol version {version:?}, which is not an MCP version"),
        )
    })?;
    let capabilities = init
        .get("capabilities")
        .filter(|value| value.is_object())
        .ok_or_else(|| (Outcome::InvalidResponse, "the initialize answer has no capabilities object".to_owned()))?;
    let capabilities = capabilities.clone();
    result.protocol_version = Some(version.to_owned());
    result.server_info = init.get("serverInfo").cloned();
    let initialized = message(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
    let attachment = session.attachment.clone().ok_or((Outcome::InvalidResponse, "no session".to_owned()))?;
    session
        .upstreams
        .send(session.entry, &attachment, session.version, &initialized)
        .await
        .map_err(|error| failure(&error))?;
    step(result, STEPS[2]);
    let mut kept = 0;
    if capabilities.get("tools").is_some() {
        result.tools = session.list(100, "tools/list", "tools", &mut kept).await?;
    }
    step(result, STEPS[3]);
    if capabilities.get("resources").is_some() {
        result.resources = session.list(200, "resources/list", "resources", &mut kept).await?;
        result.resource_templates =
            session.list(300, "resources/templates/list", "resourceTemplates", &mut kept).await.unwrap_or_default();
    }
    if capabilities.get("prompts").is_some() {
        result.prompts = session.list(400, "prompts/list", "prompts", &mut kept).await?;
    }
    if let Some(last) = result.steps.last_mut() {
        last.ok = true;
    }
    if result.tools.is_empty() {
        result.outcome = Outcome::NoTools;
        result.detail = if capabilities.get("tools").is_some() {
            "the server answered, but its tool list is empty — check its configuration (a missing setting often \
             hides every tool)"
                .into()
        } else {
            "the server answered, but does not offer tools at all (no tools capability)".into()
        };
        return Ok(());
    }
    result.outcome = Outcome::Success;
    let name = result.server_info.as_ref().and_then(|info| info.get("name")).and_then(Value::as_str).unwrap_or("?");
    result.detail = format!(
        "server {name:?} responded with MCP {version}: {} tools, {} resources, {} resource templates, {} prompts",
        result.tools.len(),
        result.resources.len(),
        result.resource_templates.len(),
        result.prompts.len()
    );
    Ok(())
}
