//! Real third-party MCP peers through the gateway: the reference server
//! `@modelcontextprotocol/server-everything` (npm) over stdio and Streamable HTTP, and the
//! official Python SDK (`mcp` 2.x, PyPI) as the client.

use crate::support::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

pub fn everything_entry() -> PathBuf {
    peers_dir().join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js")
}

/// Run the Python SDK client; returns its JSON report.
async fn python_client(url: &str, token: &str, mode: &str, extra: &[&str]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_client.py");
    let mut command = tokio::process::Command::new(peers_dir().join("venv/bin/python"));
    command.arg(script).args([url, "--token", token, "--mode", mode]).args(extra);
    report_of(&format!("python client ({mode})"), command).await
}

/// Run a client script that prints one JSON report; fail the test with its stderr otherwise.
async fn report_of(what: &str, mut command: tokio::process::Command) -> Value {
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what} failed: {stderr}\n{stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{what} printed no JSON ({error}): {stdout}"))
}

#[tokio::test]
async fn python_sdk_through_the_gateway_to_server_everything_over_stdio() {
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        r#"
        [[servers]]
        name = "everything"
        transport = "stdio"
        command = "node"
        args = ["{}", "stdio"]
        env = {{ CANARY = "configured-for-the-server" }}

        [[users]]
        email = "ann@example.com"

        [[grants]]
        server = "everything"
        users = ["ann@example.com"]
        "#,
        everything_entry().display()
    ))
    .await;
    let key = gw.api_key("ann@example.com").await;
    let url = gw.url("/mcp/everything");
    for mode in ["auto", "legacy"] {
        let report = python_client(
            &url,
            &key,
            mode,
            &[
                "--call",
                "echo",
                "--args",
                r#"{"message":"hi"}"#,
                "--call",
                "get-env",
                "--list-resources",
                "--list-prompts",
            ],
        )
        .await;
        // A modern client speaks the stateless era with the gateway whatever the upstream speaks.
        let expected_protocol = if mode == "auto" { "2026-07-28" } else { "2025-11-25" };
        assert_eq!(report["protocol"], expected_protocol, "{report}");
        if mode == "legacy" {
            // Only the session era names the server to the client.
            assert_eq!(report["server"], "mcp-servers/everything", "{report}");
        }
        let tools: Vec<&str> = report["tools"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(tools.contains(&"echo") && tools.contains(&"get-sum"), "{tools:?}");
        assert_eq!(report["calls"][0]["text"], "Echo: hi");
        // The child sees its configured environment and nothing of the gateway's.
        let environment = report["calls"][1]["text"].as_str().unwrap();
        assert!(environment.contains("configured-for-the-server"), "{environment}");
        assert!(!environment.contains("CARGO_PKG_NAME"), "the gateway's environment leaked: {environment}");
        assert!(!environment.contains("PORTCULLIS"), "the gateway's environment leaked: {environment}");
        assert!(!report["resources"].as_array().unwrap().is_empty());
        assert!(report["prompts"].as_array().unwrap().iter().any(|prompt| prompt == "simple-prompt"));
    }
    let events = gw.audit().await;
    assert!(events.iter().any(|event| event.target.as_deref() == Some("get-env") && event.outcome == "ok"));
    gw.stop().await;
}

#[tokio::test]
async fn python_sdk_through_the_gateway_to_server_everything_over_streamable_http() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut upstream = tokio::process::Command::new("node")
        .arg(everything_entry())
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let upstream_url = format!("http://127.0.0.1:{port}/mcp");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "[[servers]]\nname = \"everything\"\ntransport = \"streamable-http\"\nurl = \"{upstream_url}\"\n\
         [[users]]\nemail = \"ann@example.com\"\n[[grants]]\nserver = \"everything\"\nusers = [\"ann@example.com\"]\n"
    ))
    .await;
    let key = gw.api_key("ann@example.com").await;
    let report = python_client(
        &gw.url("/mcp/everything"),
        &key,
        "auto",
        &["--call", "get-sum", "--args", r#"{"a":2,"b":3}"#, "--call", "echo", "--args", r#"{"message":"over http"}"#],
    )
    .await;
    assert_eq!(report["calls"][0]["text"], "The sum of 2 and 3 is 5.", "{report}");
    assert_eq!(report["calls"][1]["text"], "Echo: over http");
    // A wrong key is refused before anything reaches the upstream.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_client.py");
    let refused = tokio::process::Command::new(peers_dir().join("venv/bin/python"))
        .arg(script)
        .args([gw.url("/mcp/everything").as_str(), "--token", "pcs_wrong", "--mode", "legacy"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    gw.stop().await;
    upstream.kill().await.unwrap();
}

/// Start server-everything over a network transport on a free loopback port.
pub async fn everything_over(mode: &str) -> (tokio::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = tokio::process::Command::new("node")
        .arg(everything_entry())
        .arg(mode)
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, port)
}

#[tokio::test]
async fn legacy_sse_on_both_sides_server_everything_and_the_python_sdk() {
    let (mut upstream, port) = everything_over("sse").await;
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "[[servers]]\nname = \"everything\"\ntransport = \"sse\"\nurl = \"http://127.0.0.1:{port}/sse\"\n\
         [[users]]\nemail = \"ann@example.com\"\n[[grants]]\nserver = \"everything\"\nusers = [\"ann@example.com\"]\n"
    ))
    .await;
    let key = gw.api_key("ann@example.com").await;
    // A modern client through the gateway to a legacy SSE upstream.
    let report = python_client(
        &gw.url("/mcp/everything"),
        &key,
        "auto",
        &["--call", "echo", "--args", r#"{"message":"to an sse upstream"}"#],
    )
    .await;
    assert_eq!(report["calls"][0]["text"], "Echo: to an sse upstream", "{report}");
    // A legacy client on the gateway's /sse front, to the same legacy upstream.
    let report = python_client(
        &gw.url("/sse/everything"),
        &key,
        "legacy",
        &["--transport", "sse", "--call", "get-sum", "--args", r#"{"a":20,"b":22}"#, "--list-prompts"],
    )
    .await;
    assert_eq!(report["calls"][0]["text"], "The sum of 20 and 22 is 42.", "{report}");
    assert!(report["prompts"].as_array().unwrap().iter().any(|prompt| prompt == "simple-prompt"));
    let events = gw.audit().await;
    assert!(events.iter().any(|event| event.target.as_deref() == Some("get-sum") && event.outcome == "ok"));
    gw.stop().await;
    upstream.kill().await.unwrap();
}

/// Run the TypeScript SDK client; returns its JSON report.
async fn typescript_client(url: &str, token: &str, extra: &[&str]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/ts_client.mjs");
    let mut command = tokio::process::Command::new("node");
    command.arg(script).args([url, token]).args(extra).env("PORTCULLIS_PEERS_NODE", peers_dir().join("node"));
    report_of("typescript client", command).await
}

#[tokio::test]
async fn typescript_sdk_answers_sampling_requests_relayed_through_the_gateway() {
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "[[servers]]\nname = \"everything\"\ntransport = \"stdio\"\ncommand = \"node\"\nargs = [\"{}\", \"stdio\"]\n\
         [[users]]\nemail = \"ann@example.com\"\n[[grants]]\nserver = \"everything\"\nusers = [\"ann@example.com\"]\n",
        everything_entry().display()
    ))
    .await;
    let key = gw.api_key("ann@example.com").await;
    let sampling = r#"{"prompt":"say hi","maxTokens":20}"#;
    // The server asks the client to sample in the middle of a tool call; the request travels
    // back on the call's stream and the client's answer finds its way upstream.
    let report = typescript_client(
        &gw.url("/mcp/everything"),
        &key,
        &["--sampling", "echo", r#"{"message":"from typescript"}"#, "trigger-sampling-request", sampling],
    )
    .await;
    assert_eq!(report["server"], "mcp-servers/everything", "{report}");
    assert_eq!(report["calls"][0]["text"], "Echo: from typescript");
    let sampled = report["calls"][1]["text"].as_str().unwrap();
    assert!(sampled.contains("sampled by the client"), "{report}");
    // The same through the aggregate endpoint, where the server's request id is namespaced.
    let report =
        typescript_client(&gw.url("/mcp"), &key, &["--sampling", "everything__trigger-sampling-request", sampling])
            .await;
    assert!(report["tools"].as_array().unwrap().iter().any(|tool| tool == "everything__echo"), "{report}");
    assert!(report["calls"][0]["text"].as_str().unwrap().contains("sampled by the client"), "{report}");
    gw.stop().await;
}

#[tokio::test]
async fn the_stdio_bridge_connects_a_stdio_client() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    let key = gw.api_key("ann@example.com").await;
    let mut bridge = tokio::process::Command::new(binary())
        .args(["connect", &gw.url("/mcp/demo")])
        .env("PORTCULLIS_API_KEY", &key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = bridge.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(bridge.stdout.take().unwrap()).lines();
    let send = |line: &str| format!("{line}\n");
    stdin
        .write_all(send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"stdio-client","version":"1"}}}"#).as_bytes())
        .await
        .unwrap();
    let init: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(init["result"]["serverInfo"]["name"], "portcullis-demo");
    stdin.write_all(send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).as_bytes()).await.unwrap();
    stdin
        .write_all(send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"bridged"}}}"#).as_bytes())
        .await
        .unwrap();
    let call: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(call["id"], 2);
    assert_eq!(call["result"]["content"][0]["text"], "bridged");
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), bridge.wait()).await.unwrap().unwrap();
    assert!(status.success());
    gw.stop().await;
}

/// The official Python SDK's OAuth client as ann, calling `echo` on `demo` with the token it
/// gets; `extra` adds arguments (the client's identity).
async fn python_oauth_call(gw: &TestGateway, extra: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_client.py");
    let mut command = tokio::process::Command::new(peers_dir().join("venv/bin/python"));
    command.arg(script).args([
        &gw.url("/mcp/demo"),
        "--oauth-login",
        "ann@example.com:ann's long passphrase",
        "--mode",
        "legacy",
        "--call",
        "echo",
        "--args",
        r#"{"message":"signed in with oauth"}"#,
    ]);
    command.args(extra);
    let report = report_of("python client (oauth)", command).await;
    assert_eq!(report["calls"][0]["text"], "signed in with oauth", "{report}");
    let events = gw.audit().await;
    assert!(events.iter().any(|event| event.method == "oauth/authorize" && event.principal == "ann@example.com"));
    assert!(events.iter().any(|event| event.method == "tools/call" && event.principal == "ann@example.com"));
}

/// The official Python SDK's OAuth client, given only the URL, discovers the authorization
/// server from the 401, registers, sends the person through sign-in and consent (the script
/// fills the console's forms), exchanges the code with PKCE and calls a tool with the token.
#[tokio::test]
async fn python_sdk_completes_the_oauth_flow_end_to_end() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    portcullis::cli::set_password(gw.store(), "ann@example.com", "ann's long passphrase").await.unwrap();
    python_oauth_call(&gw, &[]).await;
    gw.stop().await;
}

/// The same client identifying by its Client ID Metadata Document URL instead of registering:
/// the gateway fetches the document (over https, from a test CA it was told to trust).
#[tokio::test]
async fn python_sdk_completes_the_oauth_flow_with_a_client_metadata_document() {
    let host = ClientDocuments::start("http://127.0.0.1:9/callback").await;
    let gw = host.gateway().await;
    let document = format!("{}/client.json", host.base);
    python_oauth_call(&gw, &["--client-metadata-url", &document]).await;
    assert_eq!(host.fetched.lock().unwrap().as_slice(), ["GET /client.json"]);
    let mut connection = gw.store().pool.acquire().await.unwrap();
    let client = portcullis::store::oauth::client(&mut connection, &document).await.unwrap();
    assert_eq!(client.map(|client| client.name).as_deref(), Some("Document App"), "no registration, the document");
    drop(connection);
    gw.stop().await;
    host.stop().await;
}
