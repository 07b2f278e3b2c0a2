//! Every kind of bad input gets the right status, a JSON-RPC error a person can read, and an
//! audit event; nothing is forwarded.

use crate::support::*;
use serde_json::json;

async fn ready_client() -> (TestGateway, McpClient) {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    let key = gw.api_key("ann@example.com").await;
    let mut client = gw.client("demo", Some(&key));
    assert_eq!(client.initialize().await.status, 200);
    (gw, client)
}

/// (body, expected HTTP status, expected JSON-RPC code, a phrase the message must contain)
const CASES: &[(&str, u16, i64, &str)] = &[
    ("{not json", 400, -32700, "not valid JSON"),
    (
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"add"}}"#,
        400,
        -32700,
        "key \"name\" more than once",
    ),
    (r#"{"jsonrpc":"2.0","id":1}"#, 400, -32600, "neither a \"method\""),
    (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}"#, 400, -32600, "must be a JSON object"),
    (r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#, 400, -32600, "\"id\" must be a string or an integer"),
    (r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, 400, -32600, "batches were removed"),
    (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#, 200, -32602, "needs params.name"),
];

#[tokio::test]
async fn malformed_messages() {
    let (gw, client) = ready_client().await;
    for (body, status, code, phrase) in CASES {
        let reply = client.post_raw(body.to_string()).await;
        assert_eq!(reply.status, *status, "{body}: {}", reply.text);
        assert_eq!(reply.error_code(), Some(*code), "{body}: {}", reply.text);
        assert!(reply.error_message().contains(phrase), "{body}: {}", reply.text);
    }
    let events = gw.audit().await;
    let invalid = events.iter().filter(|event| event.outcome == "invalid").count();
    assert_eq!(invalid, CASES.len(), "every bad message is audited");
    gw.stop().await;
}

#[tokio::test]
async fn sessions_versions_sizes_and_hosts() {
    let (gw, client) = ready_client().await;

    let mut no_session = client.clone();
    no_session.session = None;
    let reply = no_session.call_tool("echo", json!({"message": "x"})).await;
    assert_eq!(reply.status, 400);
    assert!(reply.error_message().contains("Mcp-Session-Id header is missing"), "{}", reply.text);

    let mut forged = client.clone();
    forged.session = Some("forged-session-id".into());
    let reply = forged.call_tool("echo", json!({"message": "x"})).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), Some(-32035));

    let mut old_version = client.clone();
    old_version.version = "1999-01-01".into();
    let reply = old_version.call_tool("echo", json!({"message": "x"})).await;
    assert_eq!(reply.status, 400);
    assert!(reply.error_message().contains("2025-06-18"), "lists the supported versions: {}", reply.text);

    // A batch is fine where the protocol version allowed batches.
    let mut batch_client = client.clone();
    batch_client.version = "2025-03-26".into();
    let reply = batch_client
        .post_raw(
            r#"[{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"echo","arguments":{"message":"one"}}},
                {"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"echo","arguments":{"message":"two"}}}]"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.messages.len(), 2, "{}", reply.text);
    assert_eq!(reply.messages[1]["result"]["content"][0]["text"], "two");

    // 413 before the body is read.
    let big = "x".repeat(5 * 1024 * 1024);
    let reply = client.post_raw(big).await;
    assert_eq!(reply.status, 413);

    let reply = client
        .request_builder(reqwest::Method::POST)
        .header("host", "evil.example.com")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 403, "DNS-rebinding protection");
    let reply = client
        .request_builder(reqwest::Method::POST)
        .header("origin", "http://evil.example.com")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 403);

    let reply = reqwest::Client::new()
        .post(&client.url)
        .bearer_auth(client.key.as_ref().unwrap())
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 415);

    // Header / body mismatch in the stateless era is refused.
    let reply = client
        .request_builder(reqwest::Method::POST)
        .header("mcp-method", "tools/list")
        .body(r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"message":"x"}}}"#)
        .send()
        .await
        .unwrap();
    let reply = read(reply).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), Some(-32020));

    // Probing the stateless era gets an error clients fall back on.
    let reply = client.post_raw(r#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{}}"#).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), Some(-32601));

    // Unknown server with valid credentials.
    let mut unknown = client.clone();
    unknown.url = gw.url("/mcp/no-such-server");
    let reply = unknown.initialize().await;
    assert_eq!(reply.status, 404);
    assert!(reply.error_message().contains("no server named"), "{}", reply.text);
    gw.stop().await;
}
