//! People and admin roles: each admin role has its own powers, assigning and removing roles
//! is audited, and admins can find people by status, role and group.

use crate::support::*;
use serde_json::{Value, json};

const PEOPLE: &str = r#"
[[servers]]
name = "echo"
transport = "streamable-http"
url = "http://127.0.0.1:9/mcp"

[[users]]
email = "root@example.com"
admin = true

[[users]]
email = "sec@example.com"
roles = ["security-admin"]

[[users]]
email = "it@example.com"
roles = ["it-admin"]
groups = ["Ops"]

[[users]]
email = "numbers@example.com"
roles = ["analytics-admin"]

[[users]]
email = "ann@example.com"
groups = ["ops"]
"#;

#[tokio::test]
async fn admin_roles_have_distinct_powers_and_changes_are_audited() {
    let gw = TestGateway::start().await;
    let changes = gw.apply(PEOPLE).await;
    assert!(changes.contains(&"+ user it@example.com (it-admin)".to_owned()), "{changes:?}");
    // "Ops" and "ops" are one group.
    assert_eq!(changes.iter().filter(|change| change.starts_with("+ group")).count(), 1, "{changes:?}");
    let key = |email: &'static str| gw.api_key(email);
    let (root, sec, it, numbers, ann) = (
        key("root@example.com").await,
        key("sec@example.com").await,
        key("it@example.com").await,
        key("numbers@example.com").await,
        key("ann@example.com").await,
    );
    let api = Api::new(&gw, "");
    use reqwest::Method;
    let server = json!({"transport": "streamable-http", "url": "http://127.0.0.1:9/mcp"});
    let grant = json!({"server": "echo", "user": "ann@example.com"});
    // IT admins manage servers and people, not grants.
    assert_eq!(api.call(&it, Method::PUT, "/servers/tools", Some(server.clone())).await.0, 200);
    let (status, refusal) = api.call(&it, Method::POST, "/grants", Some(grant.clone())).await;
    assert_eq!(status, 403);
    assert!(refusal["message"].as_str().unwrap().contains("security-admin"), "{refusal}");
    // Security admins manage grants and read everyone's audit, not servers.
    assert_eq!(api.call(&sec, Method::POST, "/grants", Some(grant)).await.0, 200);
    assert_eq!(api.call(&sec, Method::PUT, "/servers/other", Some(server)).await.0, 403);
    assert_eq!(api.call(&sec, Method::GET, "/audit?user=ann@example.com", None).await.0, 200);
    // Analytics admins read audit and nothing else; nobody else reads others' events.
    assert_eq!(api.call(&numbers, Method::GET, "/audit?user=ann@example.com", None).await.0, 200);
    assert_eq!(api.call(&numbers, Method::POST, "/users/ann@example.com/suspend", None).await.0, 403);
    assert_eq!(api.call(&it, Method::GET, "/audit?user=ann@example.com", None).await.0, 403);
    assert_eq!(api.call(&ann, Method::GET, "/users", None).await.0, 403);
    // IT and security admins can suspend; only super admins give admin roles, or act on a
    // super admin; nobody suspends themselves.
    assert_eq!(api.call(&it, Method::POST, "/users/root@example.com/suspend", None).await.0, 403);
    assert_eq!(api.call(&it, Method::POST, "/users/it@example.com/suspend", None).await.0, 403);
    assert_eq!(api.call(&it, Method::POST, "/users/ann@example.com/suspend", None).await.0, 200);
    let promote = json!({"roles": ["security-admin"], "groups": ["ops"]});
    assert_eq!(api.call(&it, Method::PUT, "/users/ann@example.com", Some(promote.clone())).await.0, 403);
    assert_eq!(api.call(&it, Method::PUT, "/users/ann@example.com", Some(json!({"groups": ["ops"]}))).await.0, 200);
    assert_eq!(api.call(&root, Method::PUT, "/users/ann@example.com", Some(promote)).await.0, 200);
    let (status, body) =
        api.call(&root, Method::PUT, "/users/ann@example.com", Some(json!({"roles": ["owner"]}))).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("it-admin"), "the error lists the roles: {body}");

    // Admins find people by status, role and group.
    let emails = |body: Value| -> Vec<String> {
        body["users"].as_array().unwrap().iter().map(|user| user["email"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(emails(api.call(&it, Method::GET, "/users?status=suspended", None).await.1), vec!["ann@example.com"]);
    assert_eq!(
        emails(api.call(&it, Method::GET, "/users?role=security-admin", None).await.1),
        vec!["ann@example.com", "sec@example.com"]
    );
    assert_eq!(
        emails(api.call(&it, Method::GET, "/users?group=OPS", None).await.1),
        vec!["ann@example.com", "it@example.com"]
    );
    assert_eq!(api.call(&it, Method::GET, "/users?status=gone", None).await.0, 400);

    // Taking a role away through apply is audited too.
    gw.apply("[[users]]\nemail = \"sec@example.com\"\n").await;
    let events = gw.audit().await;
    let role_events: Vec<(String, String, String)> = events
        .iter()
        .filter(|event| event.method.starts_with("admin-role/"))
        .map(|event| (event.principal.clone(), event.method.clone(), event.target.clone().unwrap_or_default()))
        .collect();
    for expected in [
        ("apply", "admin-role/assign", "it@example.com: it-admin"),
        ("apply", "admin-role/assign", "root@example.com: super-admin"),
        ("root@example.com", "admin-role/assign", "ann@example.com: security-admin"),
        ("apply", "admin-role/remove", "sec@example.com: security-admin"),
    ] {
        let expected = (expected.0.to_owned(), expected.1.to_owned(), expected.2.to_owned());
        assert!(role_events.contains(&expected), "missing {expected:?} in {role_events:?}");
    }
    // A former admin has no admin powers left.
    assert_eq!(api.call(&sec, Method::GET, "/users", None).await.0, 403);
}

#[tokio::test]
async fn unknown_admin_roles_are_refused_by_apply() {
    let gw = TestGateway::start().await;
    let error = portcullis::apply::apply_text(
        gw.store(),
        &gw.state.keys,
        "[[users]]\nemail = \"x@example.com\"\nroles = [\"superuser\"]\n",
        "test",
        Default::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("x@example.com") && error.contains("security-admin"), "{error}");
}

#[tokio::test]
async fn a_person_shows_their_access_and_recent_activity() {
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "{}\n[[users]]\nemail = \"it@example.com\"\nroles = [\"it-admin\"]\n[[users]]\nemail = \"bob@example.com\"\n",
        demo_server_toml("demo", &["ann@example.com"])
    ))
    .await;
    let ann = gw.api_key("ann@example.com").await;
    let it = gw.api_key("it@example.com").await;
    let mut client = gw.client("demo", Some(&ann));
    client.initialize().await;
    client.call_tool("echo", json!({"message": "hello"})).await;
    gw.state.audit.flush().await;
    let http = reqwest::Client::new();
    let detail = |email: &'static str| {
        let request = http.get(gw.url(&format!("/api/v1/users/{email}"))).bearer_auth(&it);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let user = &detail("ann@example.com").await["user"];
    assert_eq!(user["servers"], json!(["demo"]));
    assert_eq!(user["status"], "active");
    let methods: Vec<&str> =
        user["recent_activity"].as_array().unwrap().iter().filter_map(|event| event["method"].as_str()).collect();
    assert!(methods.contains(&"tools/call") && methods.contains(&"initialize"), "{methods:?}");
    assert_eq!(detail("bob@example.com").await["user"]["servers"], json!([]));
    let missing = http.get(gw.url("/api/v1/users/nobody@example.com")).bearer_auth(&it).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let forbidden = http.get(gw.url("/api/v1/users/ann@example.com")).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(forbidden.status(), 403);

    // Keys show when they were last used (written in batches, off the request path).
    let unused = gw.api_key("ann@example.com").await;
    gw.state.key_use.flush(gw.store()).await;
    let keys: Value =
        http.get(gw.url("/api/v1/api-keys")).bearer_auth(&unused).send().await.unwrap().json().await.unwrap();
    gw.state.key_use.flush(gw.store()).await;
    let keys = keys["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys[0]["last_used_at"].is_i64(), "the key that made calls: {keys:?}");
    assert!(keys[1]["last_used_at"].is_null(), "not used before this listing: {keys:?}");
}
