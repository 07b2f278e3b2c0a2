//! The server catalog through the API: the starter entries, search, admin edits with checks,
//! MCP Registry `server.json` import, retirement, and who may do what.

use crate::support::*;
use serde_json::{Value, json};

fn names(body: &Value) -> Vec<String> {
    body["entries"].as_array().unwrap().iter().map(|entry| entry["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn the_catalog_is_browsed_searched_edited_imported_and_retired() {
    let gw = TestGateway::start().await;
    gw.apply("[[users]]\nemail = \"root@example.com\"\nadmin = true\n[[users]]\nemail = \"ann@example.com\"\n").await;
    let root = Api::new(&gw, &gw.api_key("root@example.com").await);
    let ann = Api::new(&gw, &gw.api_key("ann@example.com").await);

    // Everyone browses the starter catalog, and searches it.
    let (status, body) = ann.send(reqwest::Method::GET, "/catalog", None).await;
    assert_eq!(status, 200, "{body}");
    let all = names(&body);
    for wanted in ["brave-search", "fetch", "filesystem", "github", "postgres", "slack", "time"] {
        assert!(all.contains(&wanted.to_string()), "{all:?}");
    }
    let (_, found) = ann.send(reqwest::Method::GET, "/catalog?q=slack%20WORKSPACE", None).await;
    assert_eq!(names(&found), ["slack"]);
    let (_, slack) = ann.send(reqwest::Method::GET, "/catalog/slack", None).await;
    assert_eq!(slack["entry"]["source"], "starter");
    assert_eq!(slack["entry"]["settings"][0]["secret"], true);
    // Starting again adds nothing.
    let mut connection = gw.store().pool.acquire().await.unwrap();
    assert_eq!(portcullis::store::catalog::seed(&mut connection, &portcullis::catalog::starter()).await.unwrap(), 0);
    drop(connection);

    // Only IT admins change it; entries are checked.
    let entry = json!({"name": "wiki", "title": "Wiki", "description": "The company wiki.", "publisher": "IT",
                       "transport": "streamable-http", "url": "https://wiki.example.com/mcp", "auth": "oauth",
                       "oauth_scopes": ["read"], "risk": "low"});
    assert_eq!(ann.send(reqwest::Method::PUT, "/catalog/wiki", Some(entry.clone())).await.0, 403);
    let (status, body) = root.send(reqwest::Method::PUT, "/catalog/wiki", Some(entry.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(root.send(reqwest::Method::PUT, "/catalog/wiki", Some(entry.clone())).await.0, 200);
    let mut bad = entry.clone();
    bad["transport"] = json!("stdio");
    let (status, body) = root.send(reqwest::Method::PUT, "/catalog/wiki", Some(bad)).await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "catalog entry wiki: a stdio server needs a command");
    let (status, _) = root.send(reqwest::Method::PUT, "/catalog/other", Some(entry)).await;
    assert_eq!(status, 400, "the path and the entry must name the same entry");

    // Import from the MCP Registry's server.json; a second import of the same name conflicts.
    let document = json!({"name": "com.example/acme-analytics", "title": "ACME Analytics", "version": "2.0.0",
                          "description": "Real-time business intelligence",
                          "remotes": [{"type": "streamable-http", "url": "https://analytics.example.com/mcp"}]});
    let (status, body) = root.send(reqwest::Method::POST, "/catalog/import", Some(document.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["entry"]["name"].as_str(), body["entry"]["risk"].as_str()),
        (Some("acme-analytics"), Some("high"))
    );
    assert_eq!(root.send(reqwest::Method::POST, "/catalog/import", Some(document.clone())).await.0, 409);
    assert_eq!(root.send(reqwest::Method::POST, "/catalog/import?replace=true", Some(document)).await.0, 201);
    let (status, body) = root.send(reqwest::Method::POST, "/catalog/import", Some(json!({"name": "a/b"}))).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("neither \"remotes\" nor \"packages\""), "{body}");

    // Retired entries leave the offer but stay for admins.
    assert_eq!(ann.send(reqwest::Method::POST, "/catalog/time/retire", None).await.0, 403);
    assert_eq!(root.send(reqwest::Method::POST, "/catalog/time/retire", None).await.0, 204);
    let (_, offered) = ann.send(reqwest::Method::GET, "/catalog", None).await;
    assert!(!names(&offered).contains(&"time".to_string()));
    assert_eq!(ann.send(reqwest::Method::GET, "/catalog/time", None).await.0, 404);
    let (_, everything) = root.send(reqwest::Method::GET, "/catalog?retired=true", None).await;
    assert!(names(&everything).contains(&"time".to_string()));
    assert_eq!(root.send(reqwest::Method::POST, "/catalog/nope/retire", None).await.0, 404);

    let events = gw.audit().await;
    let methods: Vec<&str> =
        events.iter().filter(|event| event.method.starts_with("catalog/")).map(|event| event.method.as_str()).collect();
    assert_eq!(methods, ["catalog/retire", "catalog/update", "catalog/create", "catalog/update", "catalog/create"]);
    gw.stop().await;
}
