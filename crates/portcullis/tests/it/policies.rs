//! Access rules end to end: `[[rules]]` in apply, decisions on calls and lists with the reason
//! and the deciding rules on the audit event, global denies, expiry, the REST API (checks,
//! conflicts, before/after in the audit log, revocation of live streams), and
//! `portcullis policy test` through the real binary.

use crate::support::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

async fn echo_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let (upstream, serve) = portcullis::demo::bind_http("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (
        upstream,
        tokio::spawn(async move {
            let _ = serve.await;
        }),
    )
}

fn people_and_server(upstream: Option<std::net::SocketAddr>) -> String {
    let server = match upstream {
        Some(upstream) => format!("transport = \"streamable-http\"\nurl = \"http://{upstream}/mcp\""),
        None => format!("transport = \"stdio\"\ncommand = \"{}\"\nargs = [\"demo-server\"]", binary()),
    };
    format!(
        r#"
        [[servers]]
        name = "echo"
        {server}

        [[users]]
        email = "ann@example.com"
        groups = ["Finance"]

        [[users]]
        email = "bob@example.com"
        groups = ["engineering"]

        [[users]]
        email = "cara@contractor.example"

        [[users]]
        email = "root@example.com"
        admin = true
        "#
    )
}

#[tokio::test]
async fn rules_decide_calls_and_lists_and_say_why() {
    let gw = TestGateway::start().await;
    let (upstream, upstream_task) = echo_upstream().await;
    let expires = portcullis::time::iso_time(portcullis::store::now_ms() + 3_000);
    let rules = format!(
        r#"
        [[rules]]
        name = "finance may echo greetings"
        effect = "allow"
        servers = ["echo"]
        tools = ["echo"]
        groups = ["finance"]
        conditions = [ {{ field = "payload.message", op = "in", value = ["hello", "hi"] }} ]

        [[rules]]
        name = "engineering uses echo"
        effect = "allow"
        servers = ["echo"]
        groups = ["engineering"]

        [[rules]]
        name = "bob never adds"
        effect = "deny"
        servers = ["echo"]
        tools = ["a*"]
        users = ["Bob@Example.com"]

        [[rules]]
        name = "contractor, temporarily"
        effect = "allow"
        servers = ["echo"]
        tools = ["echo"]
        users = ["cara@contractor.example"]
        expires = "{expires}"
        notes = "ticket FIN-42"

        [[rules]]
        name = "Test client only"
        effect = "deny"
        global = true
        everyone = true
        conditions = [ {{ field = "meta.client.name", op = "ne", value = "portcullis-tests" }} ]
        "#
    );
    let changes = gw.apply(&(people_and_server(Some(upstream)) + &rules)).await;
    for rule in ["finance may echo greetings", "engineering uses echo", "bob never adds", "Test client only"] {
        assert!(changes.contains(&format!("+ rule {rule}")), "{changes:?}");
    }
    assert!(gw.apply(&(people_and_server(Some(upstream)) + &rules)).await.is_empty(), "applying again changes nothing");

    // Ann (Finance, by group name in any case) sees and may call only echo, only with greetings.
    let ann = gw.api_key("ann@example.com").await;
    let mut client = gw.client("echo", Some(&ann));
    assert_eq!(client.initialize().await.status, 200);
    assert_eq!(client.tool_names().await, ["echo"]);
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "hello"})).await), "hello");
    let refused = client.call_tool("echo", json!({"message": "the payroll"})).await;
    assert_eq!(refused.error_code(), Some(-32030), "{}", refused.text);
    assert!(
        refused.error_message().contains("no rule allows ann@example.com for tool \"echo\" on \"echo\""),
        "{}",
        refused.text
    );
    assert_eq!(client.call_tool("add", json!({"a": 1, "b": 2})).await.error_code(), Some(-32030));

    // Bob may use the server, but a deny on a tool pattern wins over his team's allow.
    let bob = gw.api_key("bob@example.com").await;
    let mut client = gw.client("echo", Some(&bob));
    assert_eq!(client.initialize().await.status, 200);
    let tools = client.tool_names().await;
    assert!(tools.contains(&"echo".to_string()) && !tools.contains(&"add".to_string()), "{tools:?}");
    let denied = client.call_tool("add", json!({"a": 1, "b": 2})).await;
    assert!(denied.error_message().contains("denied by rule \"bob never adds\""), "{}", denied.text);
    let events = gw.audit().await;
    let event = events
        .iter()
        .find(|event| {
            event.method == "tools/call"
                && event.target.as_deref() == Some("add")
                && event.principal == "bob@example.com"
        })
        .expect("the denied call is audited");
    assert_eq!((event.decision.as_str(), event.outcome.as_str()), ("deny", "denied"));
    assert_eq!(event.rules, ["bob never adds"]);
    let allowed = events
        .iter()
        .find(|event| event.method == "tools/call" && event.principal == "ann@example.com" && event.decision == "allow")
        .expect("the allowed call is audited");
    assert_eq!(allowed.rules, ["finance may echo greetings"]);
    assert_eq!(allowed.reason, "allowed by rule \"finance may echo greetings\"");

    // A global deny: another MCP client is turned away whoever uses it, with the reason.
    let mut other = gw.client("echo", Some(&bob));
    let reply = other
        .send("initialize", json!({"protocolVersion": other.version, "capabilities": {}, "clientInfo": {"name": "other-client", "version": "9"}}))
        .await;
    assert_eq!(reply.error_code(), Some(-32030), "{}", reply.text);
    assert!(
        reply
            .error_message()
            .contains("denied by global rule \"Test client only\": meta.client.name is \"other-client\""),
        "{}",
        reply.text
    );

    // The contractor's access ends by itself when the rule expires.
    let cara = gw.api_key("cara@contractor.example").await;
    let mut client = gw.client("echo", Some(&cara));
    assert_eq!(client.initialize().await.status, 200);
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "hi"})).await), "hi");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.call_tool("echo", json!({"message": "hi"})).await;
        if reply.error_code() == Some(-32030) {
            assert!(reply.error_message().contains("no rule allows cara@contractor.example"), "{}", reply.text);
            break;
        }
        assert!(Instant::now() < deadline, "the expired rule still grants: {}", reply.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Changing a rule reports it; pruning deletes what the file no longer lists.
    let changed = rules.replace("value = [\"hello\", \"hi\"]", "value = [\"hello\"]");
    let changes = gw.apply(&(people_and_server(Some(upstream)) + &changed)).await;
    assert_eq!(changes, ["~ rule finance may echo greetings"]);
    let without = changed.replace("name = \"bob never adds\"", "name = \"bob never adds, renamed\"");
    let report = portcullis::apply::apply_text(
        gw.store(),
        &gw.state.keys,
        &(people_and_server(Some(upstream)) + &without),
        "test",
        portcullis::apply::Options { prune: true, dry_run: false },
    )
    .await
    .unwrap();
    assert!(report.changes.contains(&"+ rule bob never adds, renamed".to_string()), "{:?}", report.changes);
    assert!(report.changes.contains(&"- rule bob never adds".to_string()), "{:?}", report.changes);

    // Bad rules are refused with what is wrong, and nothing of the file is applied.
    for (rule, expected) in [
        (
            "name = \"x\"\neffect = \"allow\"\nservers = [\"nope\"]\neveryone = true",
            "rule \"x\": there is no server named \"nope\"",
        ),
        (
            "name = \"x\"\neffect = \"deny\"\nglobal = true\neveryone = true\nconditions = [{ field = \"meta.request.ip\", op = \"in_cidr\", value = \"10.0.0.0/40\" }]",
            "condition 1 (meta.request.ip)",
        ),
        ("name = \"x\"\neffect = \"allow\"\nservers = [\"echo\"]\ngroup = [\"finance\"]", "unknown field `group`"),
        ("name = \"x\"\neffect = \"allow\"\nglobal = true\neveryone = true", "global rules can only deny"),
    ] {
        let text = format!("[[users]]\nemail = \"new@example.com\"\n[[rules]]\n{rule}\n");
        let error = portcullis::apply::apply_text(gw.store(), &gw.state.keys, &text, "bad.toml", Default::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
    let mut connection = gw.store().pool.acquire().await.unwrap();
    assert!(portcullis::store::registry::find_user(&mut connection, "new@example.com").await.unwrap().is_none());
    drop(connection);

    upstream_task.abort();
    gw.stop().await;
}

#[tokio::test]
async fn rules_through_the_api_are_checked_audited_and_revoke_at_once() {
    let gw = TestGateway::start().await;
    gw.apply(&people_and_server(None)).await;
    let api = Api::new(&gw, &gw.api_key("root@example.com").await);
    let ann = gw.api_key("ann@example.com").await;

    let rule = json!({
        "name": "finance uses echo",
        "effect": "allow",
        "servers": ["echo"],
        "groups": ["finance"],
        "notes": "access review 2026-Q4",
    });
    let (status, created) = api.send(reqwest::Method::POST, "/rules", Some(rule.clone())).await;
    assert_eq!(status, 201, "{created}");
    let id = created["rule"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["rule"]["author"], "root@example.com");
    assert_eq!(created["rule"]["notes"], "access review 2026-Q4");
    let cedar = created["cedar"].as_str().unwrap();
    assert!(cedar.starts_with("@id(\"finance uses echo\")\npermit(principal, action, resource)"), "{cedar}");
    assert!(cedar.contains("principal.groups.contains(\"finance\")"), "{cedar}");
    let (status, listed) = api.send(reqwest::Method::GET, "/rules?server=echo", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["rules"].as_array().unwrap().len(), 1);

    // Refused, saying what is wrong: a taken name, an unknown server, a bad operator value.
    let (status, body) = api.send(reqwest::Method::POST, "/rules", Some(rule.clone())).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")), "{body}");
    let mut bad = rule.clone();
    bad["name"] = json!("other");
    bad["servers"] = json!(["nope"]);
    let (status, body) = api.send(reqwest::Method::POST, "/rules", Some(bad)).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("there is no server named \"nope\""), "{body}");
    let mut bad = rule.clone();
    bad["conditions"] = json!([{"field": "payload.limit", "op": "lt", "value": "ten"}]);
    let (status, body) = api.send(reqwest::Method::PUT, &format!("/rules/{id}"), Some(bad)).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        "rule \"finance uses echo\": condition 1 (payload.limit): operator lt on payload.limit needs a number, not \"ten\""
    );

    // Ann uses the server through the rule; a live stream of hers ends when it is deleted.
    let mut client = gw.client("echo", Some(&ann));
    assert_eq!(client.initialize().await.status, 200);
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "hello"})).await), "hello");
    let mut changed = rule.clone();
    changed["tools"] = json!(["echo"]);
    let (status, updated) = api.send(reqwest::Method::PUT, &format!("/rules/{id}"), Some(changed)).await;
    assert_eq!(status, 200, "{updated}");
    let stream =
        client.request_builder(reqwest::Method::GET).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let (status, _) = api.send(reqwest::Method::DELETE, &format!("/rules/{id}"), None).await;
    assert_eq!(status, 204);
    let ended = tokio::time::timeout(Duration::from_secs(3), stream.text()).await;
    assert!(ended.is_ok(), "the stream outlived the rule that allowed it");
    assert_eq!(client.call_tool("echo", json!({"message": "hello"})).await.error_code(), Some(-32030));

    // Each change is on the audit log with the rule before and after.
    let events = gw.audit().await;
    let changes: Vec<(&str, &Value)> = events
        .iter()
        .filter(|event| event.method.starts_with("rule/"))
        .map(|event| (event.method.as_str(), event.detail.as_ref().unwrap()))
        .collect();
    assert_eq!(changes.len(), 3, "{changes:?}");
    let (method, detail) = changes[0];
    assert_eq!((method, detail["after"].clone()), ("rule/delete", Value::Null));
    assert_eq!(detail["before"]["tools"], json!(["echo"]));
    let (method, detail) = changes[1];
    assert_eq!(method, "rule/update");
    assert_eq!((detail["before"].get("tools"), &detail["after"]["tools"]), (None, &json!(["echo"])));
    assert_eq!(changes[2].0, "rule/create");
    assert!(
        events
            .iter()
            .filter(|event| event.method.starts_with("rule/"))
            .all(|event| event.principal == "root@example.com")
    );

    // Only policy admins change rules.
    let ann_api = Api { key: ann, ..api };
    let (status, _) = ann_api.send(reqwest::Method::POST, "/rules", Some(rule)).await;
    assert_eq!(status, 403);

    gw.stop().await;
}

#[test]
fn policy_test_runs_a_table_of_cases_through_the_binary() {
    let dir = std::env::temp_dir().join(format!("portcullis-policy-{}", portcullis::crypto::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            r#"
[[servers]]
name = "db"
transport = "stdio"
command = "{}"
args = ["demo-server"]

[[users]]
email = "ann@example.com"
groups = ["finance"]

[[rules]]
name = "finance read-only db"
effect = "allow"
servers = ["db"]
tools = ["query", "list_tables"]
groups = ["finance"]
conditions = [ {{ field = "payload.table", op = "in", value = ["orders", "invoices"] }} ]

[[rules]]
name = "Corporate network only"
effect = "deny"
global = true
everyone = true
conditions = [ {{ field = "meta.request.ip", op = "not_in_cidr", value = "10.0.0.0/8" }} ]

[[rules]]
name = "ci bot reads"
effect = "allow"
servers = ["db"]
tools = ["list_*"]
agents = ["ci-bot"]
"#,
            binary()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(binary()).args(args).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(&["apply", "--data-dir", data, "-f", rules.to_str().unwrap()]);
    assert!(ok && stdout.contains("+ rule finance read-only db"), "{stdout}{stderr}");

    let cases = dir.join("cases.toml");
    let passing = r#"
[[cases]]
user = "ann@example.com"
server = "db"
tool = "query"
payload = { table = "orders" }
ip = "10.1.2.3"
client = "cursor"
expect = "allow"

[[cases]]
name = "not the users table"
user = "ann@example.com"
server = "db"
tool = "query"
payload = { table = "users" }
ip = "10.1.2.3"
expect = "deny"

[[cases]]
user = "ann@example.com"
server = "db"
tool = "query"
payload = { table = "orders" }
ip = "203.0.113.7"
expect = "deny"

[[cases]]
agent = "ci-bot"
server = "db"
tool = "list_tables"
ip = "10.0.0.9"
expect = "allow"
"#;
    std::fs::write(&cases, passing).unwrap();
    let (ok, stdout, stderr) = run(&["policy", "test", "--data-dir", data, "-f", cases.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(lines[4], "4 passed, 0 failed");
    assert!(lines[1].starts_with("ok   not the users table: deny"), "{stdout}");
    assert!(
        lines[2].contains("denied by global rule \"Corporate network only\": meta.request.ip is \"203.0.113.7\""),
        "{stdout}"
    );

    // A case that fails (and one that cannot be run) fails the command.
    let failing = format!(
        "{passing}\n[[cases]]\nuser = \"ann@example.com\"\nserver = \"db\"\ntool = \"drop_table\"\nip = \"10.1.1.1\"\nexpect = \"allow\"\n\n[[cases]]\nuser = \"nobody@example.com\"\nserver = \"db\"\nexpect = \"deny\"\n"
    );
    std::fs::write(&cases, failing).unwrap();
    let (ok, stdout, stderr) = run(&["policy", "test", "--data-dir", data, "-f", cases.to_str().unwrap()]);
    assert!(!ok);
    assert!(stdout.ends_with("4 passed, 2 failed\n"), "{stdout}");
    assert!(stdout.contains("FAIL ann@example.com → db tool drop_table: expected allow, got deny"), "{stdout}");
    assert!(
        stdout.contains("FAIL case 6 (nobody@example.com → db connect): there is no user nobody@example.com"),
        "{stdout}"
    );
    assert!(stderr.contains("2 of 6 cases failed"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn access_reviews_simulate_changes_and_find_stale_access() {
    let gw = TestGateway::start().await;
    let rules = r#"
        [[groups]]
        name = "engineering"

        [[rules]]
        name = "finance uses echo"
        effect = "allow"
        servers = ["echo"]
        groups = ["finance"]

        [[rules]]
        name = "engineering uses echo"
        effect = "allow"
        servers = ["echo"]
        groups = ["engineering"]
        expires = "2099-12-31"
    "#;
    gw.apply(&(people_and_server(None) + rules)).await;
    let api = Api::new(&gw, &gw.api_key("root@example.com").await);
    let ann = gw.api_key("ann@example.com").await;
    let bob = gw.api_key("bob@example.com").await;
    let mut client = gw.client("echo", Some(&ann));
    assert_eq!(client.initialize().await.status, 200);
    for message in ["hello", "hello", "bye"] {
        assert_eq!(text_of(&client.call_tool("echo", json!({"message": message})).await), message);
    }
    let mut client = gw.client("echo", Some(&bob));
    assert_eq!(client.initialize().await.status, 200);
    gw.audit().await;

    // Effective access: who, where, through which rule; as JSON and as CSV.
    let (status, body) = api.send(reqwest::Method::GET, "/access?server=echo", None).await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<(String, String, bool)> = body["access"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (row["user"].as_str().unwrap().into(), row["rule"].as_str().unwrap().into(), row["can_connect"] == true)
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("ann@example.com".into(), "finance uses echo".into(), true),
            ("bob@example.com".into(), "engineering uses echo".into(), true)
        ]
    );
    let csv = api
        .http
        .get(gw.url("/api/v1/access?user=bob@example.com&format=csv"))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        csv.text().await.unwrap(),
        "user,server,can_connect,effect,rule,global,scope,conditions,expires\n\
         bob@example.com,echo,true,allow,engineering uses echo,false,entire server,,2099-12-31T00:00:00Z\n"
    );

    // Stale access: Bob never called a tool through his team's rule.
    let (status, body) = api.send(reqwest::Method::GET, "/access/stale?days=30", None).await;
    assert_eq!(status, 200, "{body}");
    let stale = body["stale"].as_array().unwrap();
    assert_eq!(stale.len(), 1, "{body}");
    assert_eq!(stale[0]["rule"], "engineering uses echo");
    assert_eq!(stale[0]["unused_by"], json!(["bob@example.com"]));

    // The simulator: a draft deny on greetings would have refused two of Ann's calls ...
    let draft = json!({"create": {
        "name": "no greetings for finance", "effect": "deny", "servers": ["echo"], "tools": ["echo"],
        "groups": ["finance"], "conditions": [{"field": "payload.message", "op": "eq", "value": "hello"}]
    }, "days": 1});
    let (status, body) = api.send(reqwest::Method::POST, "/rules/simulate", Some(draft)).await;
    assert_eq!(status, 200, "{body}");
    let simulation = &body["simulation"];
    assert_eq!(simulation["losses"], json!({"ann@example.com": 2}), "{body}");
    assert_eq!(simulation["gains"], json!({}));
    assert!(simulation["replayed"].as_u64().unwrap() >= 5, "{body}");
    let change = &simulation["changes"][0];
    assert_eq!((change["now"].as_str(), change["with_change"].as_str()), (Some("allow"), Some("deny")));
    assert!(change["reason"].as_str().unwrap().contains("denied by rule \"no greetings for finance\""), "{body}");
    // ... deleting Bob's team rule would have refused his session; and nothing was saved.
    let (_, listed) = api.send(reqwest::Method::GET, "/rules", None).await;
    let id =
        listed["rules"].as_array().unwrap().iter().find(|rule| rule["name"] == "engineering uses echo").unwrap()["id"]
            .clone();
    let (status, body) = api.send(reqwest::Method::POST, "/rules/simulate", Some(json!({"delete": id}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["simulation"]["losses"], json!({"bob@example.com": 1}), "{body}");
    assert_eq!(listed["rules"].as_array().unwrap().len(), 2);
    let (_, after) = api.send(reqwest::Method::GET, "/rules", None).await;
    assert_eq!(after["rules"].as_array().unwrap().len(), 2, "the simulator saved nothing");
    // A draft that cannot be a rule is refused as such.
    let bad = json!({"create": {"name": "x", "effect": "allow", "global": true, "everyone": true}});
    let (status, body) = api.send(reqwest::Method::POST, "/rules/simulate", Some(bad)).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("global rules can only deny"), "{body}");
    gw.stop().await;
}

/// "Read-only tools for finance": a condition on the tool's annotations, known from the
/// server's last tool list; and a rule naming a tool the server never listed is saved with a
/// warning.
#[tokio::test]
async fn conditions_read_tool_annotations_from_the_last_known_tool_list() {
    let gw = TestGateway::start().await;
    let (upstream, upstream_task) = echo_upstream().await;
    let rules = r#"
        [[rules]]
        name = "finance read-only tools"
        effect = "allow"
        servers = ["echo"]
        groups = ["finance"]
        conditions = [ { field = "meta.tool.annotations.readOnlyHint", op = "eq", value = true } ]

        [[rules]]
        name = "engineering uses echo"
        effect = "allow"
        servers = ["echo"]
        groups = ["engineering"]
    "#;
    gw.apply(&(people_and_server(Some(upstream)) + rules)).await;
    let ann = gw.api_key("ann@example.com").await;
    let mut client = gw.client("echo", Some(&ann));
    assert_eq!(client.initialize().await.status, 200);
    // Nobody has listed the tools yet: whether echo is read-only is unknown, so no allow.
    let unknown = client.call_tool("echo", json!({"message": "hi"})).await;
    assert_eq!(unknown.error_code(), Some(-32030), "{}", unknown.text);
    // A complete tools/list is recorded (off the request path) and published.
    let bob = gw.api_key("bob@example.com").await;
    let mut listing = gw.client("echo", Some(&bob));
    assert_eq!(listing.initialize().await.status, 200);
    assert_eq!(listing.tool_names().await, ["echo", "add"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.state.snapshot.current().unwrap().tools.contains_key("echo") {
        assert!(Instant::now() < deadline, "the tool list was not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
        gw.state.snapshot.reload(gw.store(), &gw.state.keys).await.unwrap();
    }
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "hi"})).await), "hi");
    let add = client.call_tool("add", json!({"a": 1, "b": 2})).await;
    assert_eq!(add.error_code(), Some(-32030), "add is not marked read-only: {}", add.text);
    assert_eq!(client.tool_names().await, ["echo"]);

    // A tool the server never listed: saved, with a warning.
    let api = Api::new(&gw, &gw.api_key("root@example.com").await);
    let rule = json!({"name": "no dropping", "effect": "deny", "servers": ["echo"], "tools": ["drop_*", "echo"], "everyone": true, "enabled": false});
    let (status, body) = api.send(reqwest::Method::POST, "/rules", Some(rule)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["warnings"],
        json!([
            "rule \"no dropping\": tool \"drop_*\" is not in server \"echo\"'s last known tool list (2 tools); saved anyway"
        ])
    );
    upstream_task.abort();
    gw.stop().await;
}

/// When the rule that let someone in expires, their open stream ends by itself (the refresher
/// republishes the snapshot at the expiry, as it does after a change).
#[tokio::test]
async fn an_expiring_rule_ends_the_streams_it_allowed() {
    let gw = TestGateway::start().await;
    let expires = portcullis::time::iso_time(portcullis::store::now_ms() + 2_000);
    gw.apply(&(people_and_server(None)
        + &format!(
            "[[rules]]\nname = \"ann, briefly\"\neffect = \"allow\"\nservers = [\"echo\"]\nusers = [\"ann@example.com\"]\nexpires = \"{expires}\"\n"
        )))
    .await;
    let ann = gw.api_key("ann@example.com").await;
    let mut client = gw.client("echo", Some(&ann));
    assert_eq!(client.initialize().await.status, 200);
    let stream =
        client.request_builder(reqwest::Method::GET).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(8), stream.text()).await;
    assert!(ended.is_ok(), "the stream outlived the rule's expiry");
    assert_eq!(client.call_tool("echo", json!({"message": "hi"})).await.error_code(), Some(-32030));
    gw.stop().await;
}
