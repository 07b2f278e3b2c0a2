//! The store suite, run against SQLite and PostgreSQL alike.

use crate::support::*;
use portcullis::store::{self, audit::Filter};
use serde_json::json;

async fn exercise(store_kind: StoreKind) {
    let gw = TestGateway::start_on(store_kind).await;
    let changes = gw
        .apply(&format!(
            "{}\n[[groups]]\nname = \"eng\"\n[[users]]\nemail = \"bob@example.com\"\nadmin = true\ngroups = [\"eng\"]\n",
            demo_server_toml("demo", &["ann@example.com"])
        ))
        .await;
    assert_eq!(changes.len(), 5, "{changes:?}");
    let mut connection = gw.store().pool.acquire().await.unwrap();
    let users = store::registry::list_users(&mut connection).await.unwrap();
    assert_eq!(
        users.iter().map(|user| user.email.as_str()).collect::<Vec<_>>(),
        vec!["ann@example.com", "bob@example.com"]
    );
    assert_eq!(users[1].groups, vec!["eng"]);
    assert!(users[1].admin);
    let grants = store::registry::list_grants(&mut connection).await.unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].principal, "ann@example.com");
    let revision = store::registry::revision(&mut connection).await.unwrap();
    assert!(revision > 1);
    drop(connection);

    // The data plane writes audit events; the query filters them.
    let key = gw.api_key("ann@example.com").await;
    let mut client = gw.client("demo", Some(&key));
    client.initialize().await;
    for index in 0..5 {
        client.call_tool("echo", json!({"message": index.to_string()})).await;
    }
    gw.state.audit.flush().await;
    let mut connection = gw.store().pool.acquire().await.unwrap();
    let filter = Filter { method: Some("tools/call".into()), limit: 3, ..Filter::default() };
    let page = store::audit::query(&mut connection, &filter).await.unwrap();
    assert_eq!(page.len(), 3);
    assert!(page[0].seq > page[1].seq, "newest first");
    let rest = store::audit::query(&mut connection, &Filter { before: Some(page[2].seq), ..filter }).await.unwrap();
    assert_eq!(rest.len(), 2);

    // The REST API on the same store: users see their own events only.
    let http = reqwest::Client::new();
    let own: serde_json::Value =
        http.get(gw.url("/api/v1/audit?limit=100")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let events = own["events"].as_array().unwrap();
    assert!(!events.is_empty());
    assert!(events.iter().all(|event| event["principal"] == "ann@example.com"));
    let forbidden = http.get(gw.url("/api/v1/users")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(forbidden.status(), 403);
    let admin_key = gw.api_key("bob@example.com").await;
    let users: serde_json::Value =
        http.get(gw.url("/api/v1/users")).bearer_auth(&admin_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(users["users"].as_array().unwrap().len(), 2);
    let created = http
        .put(gw.url("/api/v1/users/carol@example.com"))
        .bearer_auth(&admin_key)
        .json(&json!({"name": "Carol", "groups": ["eng", "ops"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let grant = http
        .post(gw.url("/api/v1/grants"))
        .bearer_auth(&admin_key)
        .json(&json!({"server": "demo", "group": "ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(grant.status(), 200, "{}", grant.text().await.unwrap());
    let bad = http
        .put(gw.url("/api/v1/servers/Bad"))
        .bearer_auth(&admin_key)
        .json(&json!({"transport": "stdio"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let openapi: serde_json::Value =
        http.get(gw.url("/api/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(openapi["openapi"], "3.1.0");
    assert!(openapi["paths"]["/audit"]["get"].is_object());

    // Revoking the key denies the next request.
    let keys: serde_json::Value =
        http.get(gw.url("/api/v1/api-keys")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let key_id = keys["api_keys"][0]["id"].as_str().unwrap().to_owned();
    assert!(keys["api_keys"][0].get("key_hash").is_none(), "hashes are not shown");
    let revoked = http.delete(gw.url(&format!("/api/v1/api-keys/{key_id}"))).bearer_auth(&key).send().await.unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(client.call_tool("echo", json!({"message": "x"})).await.status, 401);
    let kind = gw.store_kind.clone();
    gw.stop().await;
    if let StoreKind::Postgres(_, name) = kind {
        drop_postgres_database(&name).await;
    }
}

#[tokio::test]
async fn store_suite_on_sqlite() {
    exercise(StoreKind::Sqlite).await;
}

#[tokio::test]
async fn store_suite_on_postgres() {
    let (url, name) = fresh_postgres_database().await;
    exercise(StoreKind::Postgres(url, name)).await;
}
