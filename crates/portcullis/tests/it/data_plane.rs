//! The request path end to end against the built-in demo server (stdio) and the echo
//! upstream (Streamable HTTP).

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn stdio_upstream_lists_calls_and_audits() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    let key = gw.api_key("ann@example.com").await;
    let mut client = gw.client("demo", Some(&key));
    let init = client.initialize().await;
    assert_eq!(init.status, 200, "{}", init.text);
    assert_eq!(init.last()["result"]["serverInfo"]["name"], "portcullis-demo");
    assert!(client.session.is_some(), "initialize must return a session");
    assert_eq!(client.tool_names().await, vec!["echo", "add"]);
    let reply = client.call_tool("echo", json!({"message": "through the gateway"})).await;
    assert_eq!(text_of(&reply), "through the gateway");
    let reply = client.call_tool("add", json!({"a": 2, "b": 40})).await;
    assert_eq!(text_of(&reply), "42");

    let events = gw.audit().await;
    let call =
        events.iter().find(|event| event.method == "tools/call" && event.target.as_deref() == Some("echo")).unwrap();
    assert_eq!(call.decision, "allow");
    assert_eq!(call.outcome, "ok");
    assert_eq!(call.principal, "ann@example.com");
    assert_eq!(call.client_name.as_deref(), Some("portcullis-tests"));
    assert!(call.latency_us.is_some());
    // Arguments are stored sealed, with a keyed digest; they open with the deployment key.
    let sealed = call.sealed_arguments.as_ref().expect("arguments are recorded");
    assert!(!String::from_utf8_lossy(sealed).contains("through the gateway"), "arguments must be encrypted at rest");
    assert_eq!(gw.state.audit.open_arguments(sealed), Some(json!({"message": "through the gateway"})));
    assert_eq!(call.arguments_digest.as_ref().map(String::len), Some(64));
    assert!(events.iter().any(|event| event.method == "initialize" && event.outcome == "ok"));
    assert!(events.iter().any(|event| event.method == "tools/list" && event.outcome == "ok"));

    // DELETE ends the session; the process is gone and the session with it.
    let deleted = client.request_builder(reqwest::Method::DELETE).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    let after = client.call_tool("echo", json!({"message": "x"})).await;
    assert_eq!(after.status, 404, "{}", after.text);
    gw.stop().await;
}

#[tokio::test]
async fn fifty_clients_with_the_same_request_ids_get_their_own_answers() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    let key = gw.api_key("ann@example.com").await;
    let mut tasks = Vec::new();
    for index in 0..50 {
        let mut client = gw.client("demo", Some(&key));
        tasks.push(tokio::spawn(async move {
            client.initialize().await;
            // Every client uses the same ids (its counter starts at 1).
            let reply = client.call_tool("echo", json!({"message": format!("client {index}")})).await;
            assert_eq!(reply.last()["id"], 2);
            text_of(&reply)
        }));
    }
    for (index, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), format!("client {index}"));
    }
    gw.stop().await;
}

#[tokio::test]
async fn http_upstream_and_a_denied_user() {
    let gw = TestGateway::start().await;
    let (upstream, serve) = portcullis::demo::bind_http("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let upstream_task = tokio::spawn(serve);
    gw.apply(&format!(
        r#"
        [[servers]]
        name = "echo"
        transport = "streamable-http"
        url = "http://{upstream}/mcp"
        headers = {{ Authorization = "Bearer upstream-secret" }}

        [[groups]]
        name = "engineering"

        [[users]]
        email = "ann@example.com"
        groups = ["engineering"]

        [[users]]
        email = "bob@example.com"

        [[grants]]
        server = "echo"
        groups = ["engineering"]
        "#
    ))
    .await;
    let ann = gw.api_key("ann@example.com").await;
    let bob = gw.api_key("bob@example.com").await;

    let mut client = gw.client("echo", Some(&ann));
    assert_eq!(client.initialize().await.status, 200);
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "hello"})).await), "hello");
    // The upstream's own error comes back as it sent it, to the request that asked, and is
    // recorded as the call's outcome.
    let failed = client.call_tool("nope", json!({})).await;
    assert_eq!(failed.status, 200, "{}", failed.text);
    assert_eq!(failed.error_code(), Some(-32602), "{}", failed.text);
    assert_eq!(failed.error_message(), "unknown tool \"nope\"");
    assert_eq!(failed.last()["id"], 3, "{}", failed.text);
    let events = gw.audit().await;
    let outcome = |tool: &str| {
        events
            .iter()
            .find(|event| event.method == "tools/call" && event.target.as_deref() == Some(tool))
            .map(|event| (event.outcome.clone(), event.error.clone()))
    };
    assert_eq!(outcome("echo"), Some(("ok".to_owned(), None)));
    assert_eq!(outcome("nope"), Some(("error".to_owned(), Some("unknown tool \"nope\"".to_owned()))));

    // Bob has no grant: a JSON-RPC error (not 401/403), with a reason, and an audit event.
    let mut denied = gw.client("echo", Some(&bob));
    let reply = denied.initialize().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.error_code(), Some(-32030));
    assert!(reply.error_message().contains("no rule allows bob@example.com for server \"echo\""), "{}", reply.text);
    // Bob cannot borrow Ann's session either.
    let mut borrowed = denied.clone();
    borrowed.session = client.session.clone();
    assert_eq!(borrowed.call_tool("echo", json!({"message": "x"})).await.status, 404);

    let events = gw.audit().await;
    assert!(
        events
            .iter()
            .any(|event| event.principal == "bob@example.com" && event.decision == "deny" && event.outcome == "denied")
    );

    // The upstream credential is never shown by the API.
    let admin = gw.apply("[[users]]\nemail = \"root@example.com\"\nadmin = true\n").await;
    assert_eq!(admin, vec!["+ user root@example.com (super-admin)"]);
    let root = gw.api_key("root@example.com").await;
    let body = reqwest::Client::new()
        .get(gw.url("/api/v1/servers/echo"))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("\"header_names\":[\"Authorization\"]"), "{body}");
    assert!(!body.contains("upstream-secret"), "a secret leaked: {body}");
    upstream_task.abort();
    gw.stop().await;
}

#[tokio::test]
async fn public_servers_serve_anonymous_callers_and_others_demand_a_key() {
    let gw = TestGateway::start().await;
    let mut toml = demo_server_toml("open", &[]);
    toml.push_str("public = true\n");
    toml.push_str(&demo_server_toml("closed", &[]));
    gw.apply(&toml).await;
    let mut anonymous = gw.client("open", None);
    assert_eq!(anonymous.initialize().await.status, 200);
    assert_eq!(text_of(&anonymous.call_tool("echo", json!({"message": "anyone"})).await), "anyone");

    let reply = gw.client("closed", None).initialize().await;
    assert_eq!(reply.status, 401);
    assert!(reply.headers.contains_key("www-authenticate"));
    let reply = gw.client("closed", Some("pcs_not-a-real-key")).initialize().await;
    assert_eq!(reply.status, 401);
    assert!(!reply.text.contains("pcs_not-a-real-key"), "the key must not be echoed");
    // Unknown servers look the same as closed ones to anonymous callers.
    assert_eq!(gw.client("nothing-here", None).initialize().await.status, 401);
    gw.stop().await;
}

#[tokio::test]
async fn revoking_a_grant_denies_the_next_call() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    let key = gw.api_key("ann@example.com").await;
    let mut client = gw.client("demo", Some(&key));
    client.initialize().await;
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "before"})).await), "before");
    // Remove the grant with a pruning apply that keeps everything else.
    let changes = portcullis::apply::apply_text(
        gw.store(),
        &gw.state.keys,
        &(demo_server_toml("demo", &[]) + "\n[[users]]\nemail = \"ann@example.com\"\n"),
        "test",
        portcullis::apply::Options { prune: true, dry_run: false },
    )
    .await
    .unwrap();
    assert_eq!(changes.changes, vec!["- grant demo → user ann@example.com"]);
    // The refresher picks the change up within a second, without an explicit reload.
    let mut denied = false;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let reply = client.call_tool("echo", json!({"message": "after"})).await;
        if reply.error_code() == Some(-32030) {
            denied = true;
            break;
        }
    }
    assert!(denied, "the call must be denied within 2 seconds of removing the grant");
    gw.stop().await;
}

#[tokio::test]
async fn audit_store_failure_fails_tools_call_closed() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    let key = gw.api_key("ann@example.com").await;
    let mut client = gw.client("demo", Some(&key));
    client.initialize().await;
    // Break the audit table for real. On PostgreSQL the very next call would fail; on SQLite
    // a call is durable once journaled, so the one in the writer's current batch still goes
    // ahead, and from the failed commit on every call fails closed without being forwarded.
    sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_gone").execute(&gw.store().pool).await.unwrap();
    let mut refused = None;
    let mut forwarded = Vec::new();
    for attempt in 0..40 {
        let message = format!("attempt {attempt}");
        let reply = client.call_tool("echo", json!({"message": message})).await;
        if reply.status == 503 {
            refused = Some(reply);
            break;
        }
        forwarded.push(message);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let refused = refused.expect("calls fail closed once the audit store cannot write");
    assert!(refused.error_message().contains("audit log cannot be written"), "{}", refused.text);
    assert!(forwarded.len() <= 2, "at most the calls of one batch went ahead: {forwarded:?}");
    // The store comes back: calls go through again, and nothing journaled was lost.
    sqlx::query("ALTER TABLE audit_events_gone RENAME TO audit_events").execute(&gw.store().pool).await.unwrap();
    let mut back = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if client.call_tool("echo", json!({"message": "back"})).await.status == 200 {
            back = true;
            break;
        }
    }
    assert!(back, "calls go through once the audit store writes again");
    let all = gw.audit().await;
    let calls: Vec<_> = all.into_iter().filter(|event| event.method == "tools/call").collect();
    let outcomes: Vec<&str> = calls.iter().map(|event| event.outcome.as_str()).collect();
    assert_eq!(calls.len(), forwarded.len() + 1, "every forwarded call is on the record: {outcomes:?} {forwarded:?}");
    gw.stop().await;
}

#[tokio::test]
async fn slow_and_dead_upstreams_fail_only_their_own_callers() {
    use axum::routing::post;
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_address = slow.local_addr().unwrap();
    let slow_router = axum::Router::new().route(
        "/mcp",
        post(|body: axum::body::Bytes| async move {
            let message: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if message["method"] == "tools/call" {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
            axum::Json(portcullis::demo::answer(&message).unwrap_or(json!({})))
        }),
    );
    let slow_task = tokio::spawn(async move { axum::serve(slow, slow_router).await.unwrap() });
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let gw = TestGateway::start_with(Options {
        tweak: Box::new(|config| config.upstream_timeout = std::time::Duration::from_secs(1)),
        ..Options::default()
    })
    .await;
    gw.apply(&format!(
        "[[servers]]\nname = \"slow\"\ntransport = \"streamable-http\"\nurl = \"http://{slow_address}/mcp\"\n\
         [[servers]]\nname = \"dead\"\ntransport = \"streamable-http\"\nurl = \"http://{dead}/mcp\"\n\
         {}\n[[grants]]\nserver = \"slow\"\nusers = [\"ann@example.com\"]\n[[grants]]\nserver = \"dead\"\nusers = [\"ann@example.com\"]\n",
        demo_server_toml("demo", &["ann@example.com"])
    ))
    .await;
    let key = gw.api_key("ann@example.com").await;

    let mut slow_client = gw.client("slow", Some(&key));
    slow_client.initialize().await;
    let started = std::time::Instant::now();
    let reply = slow_client.call_tool("echo", json!({"message": "zzz"})).await;
    assert_eq!(reply.error_code(), Some(-32032), "{}", reply.text);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    let reply = gw.client("dead", Some(&key)).initialize().await;
    assert_eq!(reply.error_code(), Some(-32031), "{}", reply.text);
    assert!(reply.error_message().contains("unavailable"), "{}", reply.text);

    // The healthy server is unaffected.
    let mut healthy = gw.client("demo", Some(&key));
    healthy.initialize().await;
    assert_eq!(text_of(&healthy.call_tool("echo", json!({"message": "fine"})).await), "fine");

    let events = gw.audit().await;
    assert!(events.iter().any(|event| event.server.as_deref() == Some("slow") && event.outcome == "upstream_timeout"));
    assert!(
        events.iter().any(|event| event.server.as_deref() == Some("dead") && event.outcome == "upstream_unavailable")
    );
    let metrics = reqwest::get(gw.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("portcullis_upstream_up{server=\"dead\"} 0"), "{metrics}");
    assert!(metrics.contains("portcullis_upstream_up{server=\"demo\"} 1"), "{metrics}");
    assert!(metrics.contains("portcullis_upstream_errors_total{server=\"slow\"} 1"), "{metrics}");
    slow_task.abort();
    gw.stop().await;
}

#[tokio::test]
async fn metrics_and_health() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    let key = gw.api_key("ann@example.com").await;
    let mut client = gw.client("demo", Some(&key));
    client.initialize().await;
    client.call_tool("echo", json!({"message": "m"})).await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(gw.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(gw.url("/readyz")).send().await.unwrap().status(), 200);
    let metrics = http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("portcullis_requests_total{method=\"tools/call\",outcome=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("portcullis_decisions_total{effect=\"allow\"}"), "{metrics}");
    assert!(metrics.contains("portcullis_upstream_links 1"), "{metrics}");
    gw.stop().await;
}

#[tokio::test]
async fn a_shared_process_serves_many_sessions_without_mixing_answers() {
    let gw = TestGateway::start().await;
    gw.apply(
        &demo_server_toml("demo", &["ann@example.com", "bob@example.com"])
            .replace("args = [\"demo-server\"]\n", "args = [\"demo-server\"]\nshared_process = true\n"),
    )
    .await;
    let ann = gw.api_key("ann@example.com").await;
    let bob = gw.api_key("bob@example.com").await;
    let mut tasks = Vec::new();
    for (index, key) in [&ann, &bob, &ann, &bob, &ann, &bob, &ann, &bob].into_iter().enumerate() {
        let mut client = gw.client("demo", Some(key));
        tasks.push(tokio::spawn(async move {
            assert_eq!(client.initialize().await.status, 200);
            let mut answers = Vec::new();
            for round in 0..5 {
                let reply = client.call_tool("echo", json!({"message": format!("{index}/{round}")})).await;
                answers.push(text_of(&reply));
            }
            let deleted = client.request_builder(reqwest::Method::DELETE).send().await.unwrap();
            assert_eq!(deleted.status(), 200);
            answers
        }));
    }
    for (index, task) in tasks.into_iter().enumerate() {
        let expected: Vec<String> = (0..5).map(|round| format!("{index}/{round}")).collect();
        assert_eq!(task.await.unwrap(), expected);
    }
    // One process served everyone, and ending a session did not stop it.
    assert_eq!(gw.state.upstreams.local.len(), 1);
    let mut late = gw.client("demo", Some(&ann));
    late.initialize().await;
    assert_eq!(text_of(&late.call_tool("echo", json!({"message": "still up"})).await), "still up");
    gw.stop().await;
}

#[tokio::test]
async fn the_aggregate_endpoint_merges_the_callers_servers() {
    let gw = TestGateway::start().await;
    let (upstream, serve) = portcullis::demo::bind_http("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let upstream_task = tokio::spawn(serve);
    let mut toml = demo_server_toml("local", &["ann@example.com"]);
    toml.push_str(&format!(
        "[[servers]]\nname = \"remote\"\ntransport = \"streamable-http\"\nurl = \"http://{upstream}/mcp\"\n\
         [[grants]]\nserver = \"remote\"\nusers = [\"ann@example.com\"]\n"
    ));
    toml.push_str(&demo_server_toml("secret", &[]));
    gw.apply(&toml).await;
    let key = gw.api_key("ann@example.com").await;
    let mut client = McpClient::new(gw.url("/mcp"), Some(key.clone()));
    let init = client.initialize().await;
    assert_eq!(init.last()["result"]["serverInfo"]["name"], "portcullis", "{}", init.text);
    let mut tools = client.tool_names().await;
    tools.sort();
    // Ann sees her two servers' tools, namespaced, and nothing of "secret".
    assert_eq!(tools, vec!["local__add", "local__echo", "remote__add", "remote__echo"]);
    assert_eq!(text_of(&client.call_tool("remote__echo", json!({"message": "routed"})).await), "routed");
    assert_eq!(text_of(&client.call_tool("local__add", json!({"a": 1, "b": 2})).await), "3");
    let reply = client.call_tool("secret__echo", json!({"message": "x"})).await;
    assert_eq!(reply.error_code(), Some(-32602), "{}", reply.text);
    let reply = client.call_tool("echo", json!({"message": "x"})).await;
    assert!(reply.error_message().contains("server__tool"), "{}", reply.text);
    assert_eq!(client.send("ping", json!({})).await.last()["result"], json!({}));
    // Calls through the aggregate are audited per server, like direct ones.
    let events = gw.audit().await;
    assert!(
        events.iter().any(|event| event.server.as_deref() == Some("remote") && event.target.as_deref() == Some("echo"))
    );
    let deleted = client.request_builder(reqwest::Method::DELETE).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    upstream_task.abort();
    gw.stop().await;
}

#[tokio::test]
async fn an_upstream_that_answers_garbage_gets_a_clear_error() {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/mcp",
        post(|body: axum::body::Bytes| async move {
            let message: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if message["method"] == "tools/call" {
                return ([("content-type", "text/html")], "<html>502 Bad Gateway</html>".to_owned());
            }
            let answer = portcullis::demo::answer(&message).unwrap_or(json!({}));
            ([("content-type", "application/json")], answer.to_string())
        }),
    );
    let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "[[servers]]\nname = \"broken\"\ntransport = \"streamable-http\"\nurl = \"http://{address}/mcp\"\n\
         [[users]]\nemail = \"ann@example.com\"\n[[grants]]\nserver = \"broken\"\nusers = [\"ann@example.com\"]\n"
    ))
    .await;
    let key = gw.api_key("ann@example.com").await;
    let mut client = gw.client("broken", Some(&key));
    assert_eq!(client.initialize().await.status, 200);
    let reply = client.call_tool("echo", json!({"message": "x"})).await;
    assert_eq!(reply.error_code(), Some(-32033), "{}", reply.text);
    assert!(reply.error_message().contains("not MCP"), "{}", reply.text);
    assert!(!reply.text.contains("<html>"), "the upstream's body is not echoed");
    let events = gw.audit().await;
    assert!(events.iter().any(|event| event.target.as_deref() == Some("echo") && event.outcome == "upstream_invalid"));
    task.abort();
    gw.stop().await;
}

/// `portcullis serve` on `data_dir`, once it listens: the process and its base URL.
async fn serve(data_dir: &str) -> (tokio::process::Child, String) {
    serve_with(data_dir, &[]).await
}

/// [`serve`] with extra environment variables.
async fn serve_with(data_dir: &str, env: &[(&str, &str)]) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut gateway = tokio::process::Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(gateway.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let base = line.strip_prefix("listening on ").expect("the gateway listens").to_owned();
    // Keep reading: the gateway prints more (the first-run link), and a closed pipe would end it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (gateway, base)
}

/// A data directory `dir/data` set up through the CLI, as an operator would: the demo server
/// for ann@example.com (`apply`) and her API key (`api-key create`); the directory and the key.
fn demo_data_dir(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let data = dir.join("data");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("servers.toml"), demo_server_toml("demo", &["ann@example.com"])).unwrap();
    let data_arg = data.to_str().unwrap();
    let applied = std::process::Command::new(binary())
        .args(["apply", "--data-dir", data_arg, "-f", dir.join("servers.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(applied.status.success());
    let created = std::process::Command::new(binary())
        .args(["api-key", "create", "--data-dir", data_arg, "--user", "ann@example.com"])
        .output()
        .unwrap();
    let key = String::from_utf8(created.stdout).unwrap().lines().last().unwrap().to_owned();
    (data, key)
}

/// CPU time (user + system, in clock ticks) the process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// With busy polling on (and one worker thread, the tuned set-up of the benchmark) calls work
/// as usual, also after the polling went idle, and an idle gateway stops polling: it does not
/// keep a core busy once requests stop.
#[tokio::test]
async fn busy_polling_serves_calls_and_stops_when_idle() {
    let dir = std::env::temp_dir().join(format!("portcullis-busy-{}", portcullis::crypto::new_id()));
    let (data, key) = demo_data_dir(&dir);
    let data_arg = data.to_str().unwrap();
    let env = [("PORTCULLIS_WORKER_THREADS", "1"), ("PORTCULLIS_BUSY_POLL_US", "2000")];
    let (mut gateway, base) = serve_with(data_arg, &env).await;
    let pid = gateway.id().unwrap();
    let mut client = McpClient::new(format!("{base}/mcp/demo"), Some(key));
    assert_eq!(client.initialize().await.status, 200);
    for round in 0..20 {
        let reply = client.call_tool("echo", json!({"message": format!("call {round}")})).await;
        assert_eq!(text_of(&reply), format!("call {round}"));
    }
    // Past the window the polling sleeps; the next call wakes it and is answered.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let reply = client.call_tool("echo", json!({"message": "after a pause"})).await;
    assert_eq!(text_of(&reply), "after a pause");
    // Idle for a second: a loop that kept polling would use about a second of CPU.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let used = cpu_ticks(pid) - before;
    assert!(used < 30, "an idle gateway used {used} clock ticks in a second: busy polling did not stop");
    gateway.start_kill().unwrap();
    gateway.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_acknowledged_call_survives_a_killed_gateway() {
    let dir = std::env::temp_dir().join(format!("portcullis-crash-{}", portcullis::crypto::new_id()));
    let (data, key) = demo_data_dir(&dir);
    let data_arg = data.to_str().unwrap();
    let (mut gateway, base) = serve(data_arg).await;
    // A second process on the same SQLite store is refused at start, with the reason.
    let second = std::process::Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data_arg])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another Portcullis process serves the store"), "{stderr}");
    let mut client = McpClient::new(format!("{base}/mcp/demo"), Some(key));
    client.initialize().await;
    let reply = client.call_tool("echo", json!({"message": "remember me"})).await;
    assert_eq!(text_of(&reply), "remember me");
    // No graceful shutdown: the process is killed outright.
    gateway.start_kill().unwrap();
    gateway.wait().await.unwrap();
    // The next start moves what the killed process journaled into the store (before it listens).
    let (mut restarted, _) = serve(data_arg).await;
    restarted.start_kill().unwrap();
    restarted.wait().await.unwrap();
    let store = portcullis::store::Store::open(&portcullis::config::StoreLocation::Sqlite(data.join("portcullis.db")))
        .await
        .unwrap();
    let mut connection = store.pool.acquire().await.unwrap();
    let filter =
        portcullis::store::audit::Filter { method: Some("tools/call".into()), limit: 10, ..Default::default() };
    let events = portcullis::store::audit::query(&mut connection, &filter).await.unwrap();
    assert_eq!(events.len(), 1, "the acknowledged call's audit event survived the crash");
    assert_eq!(events[0].target.as_deref(), Some("echo"));
    drop(connection);
    store.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn stateless_clients_discover_and_call_without_a_session() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    gw.apply("[[users]]\nemail = \"bob@example.com\"\n").await;
    let ann = gw.api_key("ann@example.com").await;
    let bob = gw.api_key("bob@example.com").await;
    let http = reqwest::Client::new();
    let post = |key: &str, method: &str, name: Option<&str>, body: serde_json::Value| {
        let mut request = http
            .post(gw.url("/mcp/demo"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method)
            .body(body.to_string());
        if let Some(name) = name {
            request = request.header("mcp-name", name);
        }
        request.send()
    };
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientInfo": {"name": "modern", "version": "1"}});
    let discover = read(
        post(
            &ann,
            "server/discover",
            None,
            json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(discover.status, 200, "{}", discover.text);
    let result = &discover.last()["result"];
    assert!(result["supportedVersions"].as_array().unwrap().iter().any(|version| version == "2026-07-28"));
    assert!(result["capabilities"]["tools"].is_object(), "{}", discover.text);
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": "no session"}, "_meta": meta}});
    let reply = read(post(&ann, "tools/call", Some("echo"), call.clone()).await.unwrap()).await;
    assert_eq!(text_of(&reply), "no session");
    assert_eq!(reply.last()["result"]["resultType"], "complete");
    // Without the Mcp-Method header the request is refused; a wrong Mcp-Name too.
    let no_method = http
        .post(gw.url("/mcp/demo"))
        .bearer_auth(&ann)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .body(call.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(no_method.status(), 400);
    let wrong_name = read(post(&ann, "tools/call", Some("add"), call.clone()).await.unwrap()).await;
    assert_eq!(wrong_name.status, 400);
    assert_eq!(wrong_name.error_code(), Some(-32020));
    // Bob has no grant: discovery and calls are denied, stateless or not.
    let denied = read(post(&bob, "tools/call", Some("echo"), call).await.unwrap()).await;
    assert_eq!(denied.error_code(), Some(-32030), "{}", denied.text);
    let events = gw.audit().await;
    assert!(
        events
            .iter()
            .any(|event| event.method == "tools/call" && event.principal == "ann@example.com" && event.outcome == "ok")
    );
    gw.stop().await;
}

/// Revoking the API key an event stream was opened with ends that stream (not only the next
/// call), while a stream opened with the user's other key stays.
#[tokio::test]
async fn revoking_a_key_ends_the_streams_opened_with_it() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    let (doomed, kept) = (gw.api_key("ann@example.com").await, gw.api_key("ann@example.com").await);
    let open = |key: &str| {
        let mut client = gw.client("demo", Some(key));
        async move {
            assert_eq!(client.initialize().await.status, 200);
            let stream = client
                .request_builder(reqwest::Method::GET)
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap();
            assert_eq!(stream.status(), 200);
            stream
        }
    };
    let (doomed_stream, kept_stream) = (open(&doomed).await, open(&kept).await);
    let http = reqwest::Client::new();
    let keys: serde_json::Value =
        http.get(gw.url("/api/v1/api-keys")).bearer_auth(&kept).send().await.unwrap().json().await.unwrap();
    let id = keys["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| doomed.starts_with(key["prefix"].as_str().unwrap()))
        .map(|key| key["id"].as_str().unwrap().to_owned())
        .unwrap();
    let revoked = http.delete(gw.url(&format!("/api/v1/api-keys/{id}"))).bearer_auth(&kept).send().await.unwrap();
    assert_eq!(revoked.status(), 204);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), doomed_stream.bytes()).await;
    assert!(ended.is_ok(), "the stream of the revoked key stayed open");
    let mut kept_stream = kept_stream;
    let still_open = tokio::time::timeout(std::time::Duration::from_millis(500), kept_stream.chunk()).await;
    assert!(still_open.is_err(), "the other key's stream must stay open: {still_open:?}");
}
