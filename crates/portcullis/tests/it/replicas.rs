//! Two gateway processes on one PostgreSQL serve the same Streamable HTTP session.

use crate::support::*;
use portcullis::crypto::SecretKey;
use serde_json::json;

#[tokio::test]
async fn two_replicas_share_a_session_on_postgres() {
    let (url, name) = fresh_postgres_database().await;
    let key = SecretKey::generate();
    let store = StoreKind::Postgres(url, name.clone());
    let first = TestGateway::start_with(Options { store: store.clone(), key: key.clone(), ..Options::default() }).await;
    let second = TestGateway::start_with(Options { store, key, ..Options::default() }).await;
    let (upstream, serve) = portcullis::demo::bind_http("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let upstream_task = tokio::spawn(serve);
    first
        .apply(&format!(
            "[[servers]]\nname = \"echo\"\ntransport = \"streamable-http\"\nurl = \"http://{upstream}/mcp\"\n\
             [[users]]\nemail = \"ann@example.com\"\n[[grants]]\nserver = \"echo\"\nusers = [\"ann@example.com\"]\n"
        ))
        .await;
    let api_key = first.api_key("ann@example.com").await;
    // The second replica learns about the change through the store within a second.
    let mut on_first = first.client("echo", Some(&api_key));
    assert_eq!(on_first.initialize().await.status, 200);
    let mut on_second = second.client("echo", Some(&api_key));
    on_second.session = on_first.session.clone();
    let mut answered = None;
    for _ in 0..30 {
        let reply = on_second.call_tool("echo", json!({"message": "from replica two"})).await;
        if reply.status == 200 && reply.last().get("result").is_some() {
            answered = Some(text_of(&reply));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(answered.as_deref(), Some("from replica two"));
    // Both replicas wrote to the same audit log.
    let events = first.audit().await;
    assert!(events.iter().any(|event| event.method == "initialize" && event.outcome == "ok"));
    second.state.audit.flush().await;
    let events = first.audit().await;
    assert!(events.iter().any(|event| event.method == "tools/call" && event.outcome == "ok"));
    upstream_task.abort();
    first.stop().await;
    second.stop().await;
    drop_postgres_database(&name).await;
}

#[tokio::test]
async fn a_stdio_session_is_forwarded_to_the_replica_that_owns_its_process() {
    let (url, name) = fresh_postgres_database().await;
    let key = SecretKey::generate();
    let store = StoreKind::Postgres(url, name.clone());
    let first = TestGateway::start_with(Options { store: store.clone(), key: key.clone(), ..Options::default() }).await;
    let second = TestGateway::start_with(Options { store, key, ..Options::default() }).await;
    first.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    let api_key = first.api_key("ann@example.com").await;
    let mut on_first = first.client("demo", Some(&api_key));
    assert_eq!(on_first.initialize().await.status, 200);
    let mut on_second = second.client("demo", Some(&api_key));
    on_second.session = on_first.session.clone();
    // The second replica passes the request to the first, which holds the process.
    let mut answered = None;
    for _ in 0..80 {
        let reply = on_second.call_tool("echo", json!({"message": "via the owner"})).await;
        if reply.status == 200 && reply.last().get("result").is_some() {
            answered = Some(text_of(&reply));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(answered.as_deref(), Some("via the owner"));
    assert_eq!(first.state.upstreams.local.len(), 1, "the process lives in the first replica");
    assert_eq!(second.state.upstreams.local.len(), 0, "the second replica started no process");
    // Ending the session through the second replica stops the first replica's process.
    let deleted = on_second.request_builder(reqwest::Method::DELETE).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(first.state.upstreams.local.len(), 0);
    first.stop().await;
    second.stop().await;
    drop_postgres_database(&name).await;
}

#[tokio::test]
async fn the_answer_to_a_server_request_may_reach_another_replica() {
    use futures_util::StreamExt;
    let (url, name) = fresh_postgres_database().await;
    let key = SecretKey::generate();
    let store = StoreKind::Postgres(url, name.clone());
    let first = TestGateway::start_with(Options { store: store.clone(), key: key.clone(), ..Options::default() }).await;
    let second = TestGateway::start_with(Options { store, key, ..Options::default() }).await;
    let (mut fixture, fixture_url) = crate::conformance::fixture_over_http().await;
    first
        .apply(&format!(
            "[[servers]]\nname = \"fixture\"\ntransport = \"streamable-http\"\nurl = \"{fixture_url}\"\n\
             [[users]]\nemail = \"ann@example.com\"\n[[grants]]\nserver = \"fixture\"\nusers = [\"ann@example.com\"]\n"
        ))
        .await;
    let api_key = first.api_key("ann@example.com").await;
    second.state.snapshot.reload(second.store(), &second.state.keys).await.unwrap();
    let mut on_first = first.client("fixture", Some(&api_key));
    let init = on_first
        .send(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {"sampling": {}},
                   "clientInfo": {"name": "replica-test", "version": "1"}}),
        )
        .await;
    on_first.session = Some(init.headers["mcp-session-id"].to_str().unwrap().to_owned());
    assert_eq!(on_first.notify("notifications/initialized").await.status, 202);
    let mut on_second = second.client("fixture", Some(&api_key));
    on_second.session = on_first.session.clone();

    // The call goes to the first replica; the server asks the client to sample on the call's
    // stream; the client answers through the second replica.
    let call = json!({"jsonrpc": "2.0", "id": 77, "method": "tools/call",
                      "params": {"name": "test_sampling", "arguments": {"prompt": "hello"}}});
    let response = on_first.request_builder(reqwest::Method::POST).body(call.to_string()).send().await.unwrap();
    let mut stream = response.bytes_stream();
    let mut parser = mcp::sse::Parser::new(1 << 20);
    let mut answered = false;
    let mut final_text = None;
    'read: while let Some(chunk) =
        tokio::time::timeout(std::time::Duration::from_secs(20), stream.next()).await.unwrap()
    {
        for event in parser.push(&chunk.unwrap()).unwrap() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&event.data) else { continue };
            if message["method"] == "sampling/createMessage" {
                let answer = json!({"jsonrpc": "2.0", "id": message["id"], "result": {
                    "role": "assistant", "content": {"type": "text", "text": "from replica two"},
                    "model": "test", "stopReason": "endTurn"}});
                let reply = on_second.post_raw(answer.to_string()).await;
                assert_eq!(reply.status, 202, "{}", reply.text);
                answered = true;
            } else if message["id"] == 77 {
                final_text = message["result"]["content"][0]["text"].as_str().map(str::to_owned);
                break 'read;
            }
        }
    }
    assert!(answered, "the server's sampling request reached the client");
    assert_eq!(final_text.as_deref(), Some("LLM response: from replica two"));
    fixture.kill().await.unwrap();
    first.stop().await;
    second.stop().await;
    drop_postgres_database(&name).await;
}

/// Suspending a user through one replica refuses their next call on the other and ends their
/// open event stream there; the test waits for the change to arrive (PostgreSQL NOTIFY, with
/// polling behind it) instead of sleeping a fixed time.
#[tokio::test]
async fn a_suspension_on_one_replica_refuses_calls_and_ends_streams_on_the_other() {
    let (url, name) = fresh_postgres_database().await;
    let key = SecretKey::generate();
    let store = StoreKind::Postgres(url, name.clone());
    let first = TestGateway::start_with(Options { store: store.clone(), key: key.clone(), ..Options::default() }).await;
    let second = TestGateway::start_with(Options { store, key, ..Options::default() }).await;
    first
        .apply(&format!(
            "{}\n[[users]]\nemail = \"root@example.com\"\nadmin = true\n",
            demo_server_toml("demo", &["ann@example.com"])
        ))
        .await;
    let api_key = first.api_key("ann@example.com").await;
    let admin_key = first.api_key("root@example.com").await;
    let mut on_second = second.client("demo", Some(&api_key));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while on_second.initialize().await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "the second replica never learned of the new user");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(text_of(&on_second.call_tool("echo", json!({"message": "hi"})).await), "hi");
    let stream =
        on_second.request_builder(reqwest::Method::GET).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(stream.status(), 200);

    let started = std::time::Instant::now();
    let suspended = reqwest::Client::new()
        .post(first.url("/api/v1/users/ann@example.com/suspend"))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(suspended.status(), 200);
    let deadline = started + std::time::Duration::from_secs(10);
    loop {
        let reply = on_second.call_tool("echo", json!({"message": "still there?"})).await;
        if reply.status == 401 {
            assert!(reply.text.contains("suspended"), "{}", reply.text);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the suspension never reached the second replica");
    }
    let refused_after = started.elapsed();
    // The open stream ends (its body completes) instead of lingering.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), stream.bytes()).await;
    assert!(ended.is_ok(), "the suspended user's event stream stayed open");
    eprintln!("suspension reached the other replica's next call after {refused_after:?}");
    first.stop().await;
    second.stop().await;
    drop_postgres_database(&name).await;
}

/// Deleting a rule on one replica ends a live stream that relied on it on another, and the next
/// call there is denied (the snapshot refresher of every replica is woken by the change).
#[tokio::test]
async fn a_deleted_rule_ends_access_on_another_replica() {
    let (url, name) = fresh_postgres_database().await;
    let key = SecretKey::generate();
    let store = StoreKind::Postgres(url, name.clone());
    let first = TestGateway::start_with(Options { store: store.clone(), key: key.clone(), ..Options::default() }).await;
    let second = TestGateway::start_with(Options { store, key, ..Options::default() }).await;
    first
        .apply(&format!(
            "{}\n[[users]]\nemail = \"ann@example.com\"\n[[rules]]\nname = \"ann uses demo\"\neffect = \"allow\"\n\
             servers = [\"demo\"]\nusers = [\"ann@example.com\"]\n",
            demo_server_toml("demo", &[])
        ))
        .await;
    let api_key = first.api_key("ann@example.com").await;
    second.state.snapshot.reload(second.store(), &second.state.keys).await.unwrap();
    let mut client = second.client("demo", Some(&api_key));
    assert_eq!(client.initialize().await.status, 200);
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "hi"})).await), "hi");
    let stream =
        client.request_builder(reqwest::Method::GET).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(stream.status(), 200);

    let deleted_at = std::time::Instant::now();
    let mut connection = first.store().begin_write().await.unwrap();
    let rules = portcullis::store::rules::list_rules(&mut connection).await.unwrap();
    portcullis::rules::delete(&mut connection, &rules[0].id, "admin@example.com", "test").await.unwrap();
    connection.commit().await.unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), stream.text()).await;
    assert!(ended.is_ok(), "the stream on the other replica outlived the rule");
    eprintln!("stream ended {:?} after the rule was deleted on the other replica", deleted_at.elapsed());
    let denied = client.call_tool("echo", json!({"message": "hi"})).await;
    assert_eq!(denied.error_code(), Some(-32030), "{}", denied.text);
    first.stop().await;
    second.stop().await;
    drop_postgres_database(&name).await;
}
