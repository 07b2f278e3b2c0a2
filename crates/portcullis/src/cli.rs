//! Subcommands besides `serve`: `api-key create`, `connect` (stdio bridge) and the
//! `--demo` set-up.

use crate::apply::put_server;
use crate::auth::new_api_key;
use crate::crypto::Keys;
use crate::registry::{Grantee, ServerSlug, ServerSpec, Status, Transport};
use crate::store::{self, Store};
use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::BTreeMap;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Create an API key for `email`; returns the key.
pub async fn create_api_key(store: &Store, email: &str, name: &str) -> anyhow::Result<String> {
    let email = crate::registry::Email::parse(email).map_err(|error| anyhow::anyhow!(error.0))?;
    let mut transaction = store.begin_write().await?;
    let user = store::registry::find_user(&mut transaction, email.as_str()).await?.with_context(|| {
        format!("no user with email {email}; add them with `portcullis apply` ([[users]]) or PUT /api/v1/users/{email}")
    })?;
    let (key, hash, prefix) = new_api_key();
    store::registry::insert_api_key(&mut transaction, &user.id, name, &prefix, &hash).await?;
    transaction.commit().await?;
    Ok(key)
}

/// The demo user's email.
pub const DEMO_USER: &str = "demo@example.com";

/// Register the built-in demo server and a demo admin user with access to it; returns a
/// fresh API key for the demo user.
pub async fn set_up_demo(store: &Store, keys: &Keys) -> anyhow::Result<String> {
    let executable = std::env::current_exe().context("cannot find the portcullis executable for the demo server")?;
    let spec = ServerSpec {
        name: ServerSlug::parse("demo").map_err(|error| anyhow::anyhow!(error.0))?,
        description: "Built-in demo server: echo and add.".into(),
        transport: Transport::Stdio,
        url: None,
        command: Some(executable.display().to_string()),
        args: vec!["demo-server".into()],
        env: BTreeMap::new(),
        headers: BTreeMap::new(),
        public: false,
        shared_process: false,
        oauth: None,
        oauth_client_secret: None,
    };
    let mut transaction = store.begin_write().await?;
    put_server(&mut transaction, keys, &spec).await?;
    let user_id = store::registry::upsert_user(&mut transaction, DEMO_USER, "Demo User", true).await?;
    let server =
        store::registry::get_server(&mut transaction, "demo").await?.context("the demo server was just stored")?;
    store::registry::add_grant(&mut transaction, &server.id, Grantee::User, &user_id).await?;
    transaction.commit().await?;
    create_api_key(store, DEMO_USER, "demo").await
}

/// Bridge a stdio MCP client to a gateway URL: each line on stdin is POSTed, every message
/// of every answer (JSON or event stream) is written to stdout as one line.
pub async fn connect(url: &str, api_key: Option<&str>) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let (output, mut output_receiver) = mpsc::channel::<Value>(64);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(value) = output_receiver.recv().await {
            let mut line = value.to_string().into_bytes();
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    });
    let mut session: Option<String> = None;
    let mut version: Option<String> = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(error) => {
                eprintln!("portcullis connect: ignoring a line that is not JSON: {error}");
                continue;
            }
        };
        let mut request = client
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(line.clone());
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        if let Some(session) = &session {
            request = request.header("mcp-session-id", session);
        }
        if let Some(version) = &version {
            request = request.header("mcp-protocol-version", version);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                eprintln!("portcullis connect: cannot reach {url}: {error}");
                continue;
            }
        };
        if let Some(new_session) = response.headers().get("mcp-session-id").and_then(|value| value.to_str().ok()) {
            session = Some(new_session.to_owned());
        }
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            eprintln!(
                "portcullis connect: the gateway refused the credentials (401); pass --api-key or set PORTCULLIS_API_KEY"
            );
        }
        let is_stream = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        if is_stream {
            let output = output.clone();
            tokio::spawn(async move {
                let mut parser = mcp::sse::Parser::new(32 * 1024 * 1024);
                let mut stream = response.bytes_stream();
                while let Some(Ok(chunk)) = stream.next().await {
                    let chunk: Bytes = chunk;
                    let Ok(events) = parser.push(&chunk) else { return };
                    for event in events {
                        if let Ok(value) = serde_json::from_str::<Value>(&event.data) {
                            let _ = output.send(value).await;
                        }
                    }
                }
            });
        } else {
            let body = response.bytes().await.unwrap_or_default();
            if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                if message.get("method").and_then(Value::as_str) == Some("initialize") {
                    version = value
                        .get("result")
                        .and_then(|result| result.get("protocolVersion"))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                }
                let _ = output.send(value).await;
            } else if !status.is_success() {
                eprintln!("portcullis connect: the gateway answered HTTP {status}");
            }
        }
    }
    drop(output);
    let _ = writer.await;
    Ok(())
}

/// Set a user's account status (suspend, reactivate); returns the status it had. The change
/// reaches every running replica with the next registry revision.
pub async fn set_user_status(store: &Store, email: &str, status: Status) -> anyhow::Result<Status> {
    let mut transaction = store.begin_write().await?;
    let before = crate::store::directory::set_status(&mut transaction, email, status).await?;
    transaction.commit().await?;
    Ok(before)
}

/// Set a user's console password after checking its strength; the hash is argon2id.
pub async fn set_password(store: &Store, email: &str, password: &str) -> anyhow::Result<()> {
    crate::auth::password::check(password, email)?;
    let mut transaction = store.begin_write().await?;
    let account = crate::store::accounts::by_email(&mut transaction, email)
        .await?
        .with_context(|| format!("no user with email {email:?}; add them with apply first"))?;
    crate::store::accounts::set_password(&mut transaction, &account.user_id, &crate::auth::password::hash(password))
        .await?;
    transaction.commit().await?;
    Ok(())
}
