//! SCIM 2.0: the requests Okta and Entra ID send (replayed from fixtures), errors in SCIM's
//! format, and deactivation and suspension taking effect on the data plane.

use crate::support::*;
use serde_json::{Value, json};
use std::collections::HashMap;

struct Scim {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Scim {
    async fn new(gw: &TestGateway) -> Scim {
        let token = portcullis::scim::create_token(gw.store(), "tests").await.unwrap();
        Scim { http: reqwest::Client::new(), base: gw.url("/scim/v2"), token }
    }

    async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.header("content-type", "application/scim+json").body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// `expected` is contained in `actual`: objects by their keys, arrays element by element with
/// equal length, strings case-sensitively.
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => {
            expected.iter().all(|(key, value)| actual.get(key).is_some_and(|found| contains(found, value)))
        }
        (Value::Array(actual), Value::Array(expected)) => {
            actual.len() == expected.len()
                && expected.iter().all(|value| actual.iter().any(|found| contains(found, value)))
        }
        (actual, expected) => actual == expected,
    }
}

fn substitute(text: &str, ids: &HashMap<String, String>) -> String {
    ids.iter().fold(text.to_owned(), |text, (name, id)| text.replace(&format!("{{{name}}}"), id))
}

/// Replay a vendor's recorded request sequence; returns the captured ids.
async fn replay(scim: &Scim, fixture: &str) -> HashMap<String, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scim").join(fixture);
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut ids = HashMap::new();
    for (index, step) in fixture["steps"].as_array().unwrap().iter().enumerate() {
        let method = step["method"].as_str().unwrap();
        let path = substitute(step["path"].as_str().unwrap(), &ids);
        let body = step.get("body").map(|body| serde_json::from_str(&substitute(&body.to_string(), &ids)).unwrap());
        let (status, answer) = scim.send(method, &path, body.as_ref()).await;
        let context = format!(
            "{fixture_name} step {index}: {method} {path} -> {status} {answer}",
            fixture_name = fixture["about"].as_str().unwrap_or("").chars().take(20).collect::<String>()
        );
        assert_eq!(status, step["status"].as_u64().unwrap() as u16, "{context}");
        if status >= 400 {
            assert_eq!(answer["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error", "{context}");
            assert_eq!(answer["status"], status.to_string(), "{context}");
        }
        if let Some(expected) = step.get("expect") {
            let expected: Value = serde_json::from_str(&substitute(&expected.to_string(), &ids)).unwrap();
            assert!(contains(&answer, &expected), "{context}: expected {expected}");
        }
        if let Some(name) = step.get("capture").and_then(Value::as_str) {
            ids.insert(name.to_owned(), answer["id"].as_str().expect("a created resource has an id").to_owned());
        }
    }
    ids
}

#[tokio::test]
async fn okta_provisioning_replays() {
    let gw = TestGateway::start().await;
    let scim = Scim::new(&gw).await;
    let ids = replay(&scim, "okta.json").await;
    let (_, ann) = scim.send("GET", &format!("/Users/{}", ids["ann"]), None).await;
    // The password Okta sent is neither stored nor echoed.
    assert!(!ann.to_string().contains("Sup3r"), "{ann}");
    let people = {
        let mut connection = gw.store().pool.acquire().await.unwrap();
        portcullis::store::directory::list_people(&mut connection).await.unwrap()
    };
    let person = people.iter().find(|person| person.id == ids["ann"]).unwrap();
    assert!(!person.scim.contains_key("password"));
    assert_eq!(person.status, portcullis::registry::Status::Inactive);
    assert_eq!(
        (person.email.as_str(), person.name.as_str(), person.title.as_str()),
        ("ann.lee@example.com", "Ann Lee", "Controller")
    );
    assert_eq!(person.source, "scim");
    // Every change is in the audit log under the token's name.
    let audit = gw.audit().await;
    assert!(audit.iter().any(|event| event.principal == "scim:tests" && event.method == "scim/Users.create"));
    assert!(audit.iter().any(|event| event.method == "scim/Groups.delete"));
}

#[tokio::test]
async fn entra_id_provisioning_replays_on_postgres() {
    let (url, name) = fresh_postgres_database().await;
    let gw = TestGateway::start_on(StoreKind::Postgres(url, name.clone())).await;
    let scim = Scim::new(&gw).await;
    let ids = replay(&scim, "entra.json").await;
    let (status, bob) = scim.send("GET", &format!("/Users/{}", ids["bob"]), None).await;
    assert_eq!(status, 200);
    assert_eq!(bob["emails"][0]["value"], "robert.ray@contoso.com");
    let enterprise = &bob["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"];
    assert_eq!(
        (enterprise["department"].as_str(), enterprise["employeeNumber"].as_str()),
        (Some("Legal"), Some("1042"))
    );
    assert_eq!(bob["groups"][0]["display"], "Engineering");
    // The gateway's own view: email from the primary address, department for rules.
    let mut connection = gw.store().pool.acquire().await.unwrap();
    let person = portcullis::store::directory::get_person(&mut connection, &ids["bob"]).await.unwrap().unwrap();
    assert_eq!((person.email.as_str(), person.department.as_str()), ("robert.ray@contoso.com", "Legal"));
    assert_eq!(person.status, portcullis::registry::Status::Inactive);
    let groups = portcullis::store::directory::list_groups(&mut connection).await.unwrap();
    let engineering = groups.iter().find(|group| group.id == ids["engineering"]).unwrap();
    assert_eq!(engineering.external_id.as_deref(), Some("g-eng"));
    assert_eq!(engineering.members.len(), 1);
    drop(connection);
    gw.stop().await;
    drop_postgres_database(&name).await;
}

#[tokio::test]
async fn discovery_paging_projection_and_errors() {
    let gw = TestGateway::start().await;
    let scim = Scim::new(&gw).await;
    let (status, config) = scim.send("GET", "/ServiceProviderConfig", None).await;
    assert_eq!(status, 200);
    assert_eq!(config["patch"]["supported"], true);
    let (_, types) = scim.send("GET", "/ResourceTypes", None).await;
    assert_eq!(types["totalResults"], 2);
    let (_, schemas) = scim.send("GET", "/Schemas", None).await;
    let ids: Vec<&str> =
        schemas["Resources"].as_array().unwrap().iter().filter_map(|schema| schema["id"].as_str()).collect();
    assert!(ids.contains(&"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"), "{ids:?}");
    let (status, _) = scim.send("GET", "/Schemas/urn:ietf:params:scim:schemas:core:2.0:Group", None).await;
    assert_eq!(status, 200);

    for index in 0..5 {
        let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("user{index}@example.com"),
                          "name": {"givenName": "User", "familyName": index.to_string()}});
        assert_eq!(scim.send("POST", "/Users", Some(&user)).await.0, 201);
    }
    let (_, page) = scim.send("GET", "/Users?startIndex=2&count=2&attributes=userName,name.givenName", None).await;
    assert_eq!(
        (page["totalResults"].as_u64(), page["startIndex"].as_u64(), page["itemsPerPage"].as_u64()),
        (Some(5), Some(2), Some(2))
    );
    let first = &page["Resources"][0];
    assert_eq!(first["userName"], "user1@example.com");
    assert_eq!(first["name"], json!({"givenName": "User"}));
    assert!(first.get("emails").is_none() && first.get("id").is_some(), "{first}");
    let (_, search) = scim
        .send(
            "POST",
            "/Users/.search",
            Some(&json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": "name.familyName eq \"3\" or userName sw \"USER4\"", "excludedAttributes": ["meta"]})),
        )
        .await;
    assert_eq!(search["totalResults"], 2, "{search}");
    assert!(search["Resources"][0].get("meta").is_none());

    // Errors in SCIM's format, with the scimType that says what is wrong.
    let (status, error) = scim.send("GET", "/Users?filter=userName%20zz%20%22x%22", None).await;
    assert_eq!((status, error["scimType"].as_str()), (400, Some("invalidFilter")), "{error}");
    let (status, error) = scim.send("POST", "/Users", Some(&json!({"name": {"givenName": "Nobody"}}))).await;
    assert_eq!((status, error["scimType"].as_str()), (400, Some("invalidValue")), "{error}");
    let (status, error) = scim.send("POST", "/Users", Some(&json!("not an object"))).await;
    assert_eq!((status, error["scimType"].as_str()), (400, Some("invalidSyntax")), "{error}");
    let (_, list) = scim.send("GET", "/Users?filter=userName%20eq%20%22user0%40example.com%22", None).await;
    let id = list["Resources"][0]["id"].as_str().unwrap().to_owned();
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "id", "value": "x"}]});
    let (status, error) = scim.send("PATCH", &format!("/Users/{id}"), Some(&patch)).await;
    assert_eq!((status, error["scimType"].as_str()), (400, Some("mutability")), "{error}");
    let (status, error) = scim.send("GET", "/Users/no-such-id", None).await;
    assert_eq!((status, error["status"].as_str()), (404, Some("404")));
    assert_eq!(scim.send("GET", "/Nowhere", None).await.0, 404);

    // Without a valid token: 401, and the token is never echoed.
    let anonymous = reqwest::Client::new().get(gw.url("/scim/v2/Users")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let forged =
        reqwest::Client::new().get(gw.url("/scim/v2/Users")).bearer_auth("pcscim_forged-token").send().await.unwrap();
    assert_eq!(forged.status(), 401);
    assert!(!forged.text().await.unwrap().contains("forged-token"));
    // An API key is not a SCIM token.
    gw.apply("[[users]]\nemail = \"root@example.com\"\nadmin = true\n").await;
    let key = gw.api_key("root@example.com").await;
    let with_key = reqwest::Client::new().get(gw.url("/scim/v2/Users")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(with_key.status(), 401);
}

/// Deactivation by the identity provider and suspension by an admin refuse the user's next
/// call; the identity provider cannot lift a suspension.
#[tokio::test]
async fn deactivation_and_suspension_reach_the_data_plane() {
    let gw = TestGateway::start().await;
    let scim = Scim::new(&gw).await;
    let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "dana@example.com", "active": true});
    let (status, created) = scim.send("POST", "/Users", Some(&user)).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_owned();
    gw.apply(&demo_server_toml("demo", &["dana@example.com"])).await;
    let key = gw.api_key("dana@example.com").await;
    let mut client = gw.client("demo", Some(&key));
    assert_eq!(client.initialize().await.status, 200);
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "hi"})).await), "hi");

    let deactivate = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "replace", "value": {"active": false}}]});
    assert_eq!(scim.send("PATCH", &format!("/Users/{id}"), Some(&deactivate)).await.0, 200);
    let refused = client.call_tool("echo", json!({"message": "again"})).await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert!(refused.text.contains("inactive"), "{}", refused.text);

    let activate = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                          "Operations": [{"op": "replace", "path": "active", "value": true}]});
    assert_eq!(scim.send("PATCH", &format!("/Users/{id}"), Some(&activate)).await.0, 200);
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "back"})).await), "back");

    // An admin suspends Dana (the CLI's path); the identity provider cannot lift it.
    portcullis::cli::set_user_status(gw.store(), "dana@example.com", portcullis::registry::Status::Suspended)
        .await
        .unwrap();
    gw.state.snapshot.reload(gw.store(), &gw.state.keys).await.unwrap();
    assert_eq!(client.call_tool("echo", json!({"message": "no"})).await.status, 401);
    let (_, after) = scim.send("PATCH", &format!("/Users/{id}"), Some(&activate)).await;
    assert_eq!(after["active"], false, "{after}");
    assert_eq!(client.call_tool("echo", json!({"message": "still no"})).await.status, 401);

    // The API lifts it (admins only).
    gw.apply("[[users]]\nemail = \"root@example.com\"\nadmin = true\n").await;
    let admin = gw.api_key("root@example.com").await;
    let http = reqwest::Client::new();
    let forbidden =
        http.post(gw.url("/api/v1/users/dana@example.com/activate")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(forbidden.status(), 401, "a suspended user cannot use the API either");
    let lifted = http.post(gw.url("/api/v1/users/dana@example.com/activate")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(lifted.status(), 200);
    let body: Value = lifted.json().await.unwrap();
    assert_eq!((body["status"].as_str(), body["previous_status"].as_str()), (Some("active"), Some("suspended")));
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "welcome back"})).await), "welcome back");

    // Deleting the user over SCIM ends their access too.
    assert_eq!(scim.send("DELETE", &format!("/Users/{id}"), None).await.0, 204);
    assert_eq!(client.call_tool("echo", json!({"message": "gone"})).await.status, 401);
}

/// The SCIM compliance tester (`scim2-tester`, through its `scim2` CLI) finds nothing wrong:
/// discovery, CRUD, attribute projection, search, and PATCH add/remove/replace of every
/// attribute the Schemas endpoint declares.
#[tokio::test]
async fn scim2_tester_passes_every_check() {
    let gw = TestGateway::start().await;
    let token = portcullis::scim::create_token(gw.store(), "scim2-tester").await.unwrap();
    let cli = peers_dir().join("venv-scim/bin/scim2");
    let output = tokio::process::Command::new(&cli)
        .args(["--url", &gw.url("/scim/v2"), "test"])
        .env("SCIM_CLI_HEADERS", format!("Authorization: Bearer {token}"))
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|error| panic!("cannot run {}: {error} (run `cargo xtask peers`)", cli.display()));
    let report = String::from_utf8_lossy(&output.stdout);
    let passed = report.lines().filter(|line| line.starts_with("SUCCESS")).count();
    let failed: Vec<&str> =
        report.lines().filter(|line| line.starts_with("ERROR") || line.starts_with("CRITICAL")).collect();
    eprintln!("scim2-tester: {passed} checks passed, {} failed", failed.len());
    assert!(output.status.success() && failed.is_empty(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(passed >= 100, "too few checks ran ({passed}): {report}");
    assert!(!report.contains(&token), "the token must not be echoed");
}

/// IT admins create and revoke identity providers' tokens through the API; both are audit
/// events, and a revoked token is refused at once.
#[tokio::test]
async fn scim_tokens_are_managed_by_admins_and_audited() {
    let gw = TestGateway::start().await;
    gw.apply("[[users]]\nemail = \"it@example.com\"\nroles = [\"it-admin\"]\n[[users]]\nemail = \"numbers@example.com\"\nroles = [\"analytics-admin\"]\n").await;
    let it = gw.api_key("it@example.com").await;
    let numbers = gw.api_key("numbers@example.com").await;
    let http = reqwest::Client::new();
    let refused = http
        .post(gw.url("/api/v1/scim-tokens"))
        .bearer_auth(&numbers)
        .json(&json!({"name": "okta"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let created =
        http.post(gw.url("/api/v1/scim-tokens")).bearer_auth(&it).json(&json!({"name": "okta"})).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("pcscim_"));
    let scim = Scim { http: http.clone(), base: gw.url("/scim/v2"), token: token.clone() };
    assert_eq!(scim.send("GET", "/Users", None).await.0, 200);
    let listed: Value =
        http.get(gw.url("/api/v1/scim-tokens")).bearer_auth(&it).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["scim_tokens"][0]["name"], "okta");
    assert!(listed["scim_tokens"][0]["last_used_at"].is_i64(), "{listed}");
    assert!(!listed.to_string().contains(&token), "a listed token must not show the token");
    let id = created["id"].as_str().unwrap();
    let revoked = http.delete(gw.url(&format!("/api/v1/scim-tokens/{id}"))).bearer_auth(&it).send().await.unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(scim.send("GET", "/Users", None).await.0, 401);
    let again = http.delete(gw.url(&format!("/api/v1/scim-tokens/{id}"))).bearer_auth(&it).send().await.unwrap();
    assert_eq!(again.status(), 404);
    let events = gw.audit().await;
    for method in ["scim-token/create", "scim-token/revoke"] {
        assert!(
            events.iter().any(|event| event.method == method
                && event.principal == "it@example.com"
                && event.target.as_deref() == Some("okta")),
            "no {method} event"
        );
    }
    assert!(
        events.iter().all(|event| !format!("{event:?}").contains(&token)),
        "the token must not be in the audit log"
    );
}

/// Removing someone from the group that grants them a server (over SCIM) refuses their next
/// call to it.
#[tokio::test]
async fn removal_from_a_granting_group_refuses_the_next_call() {
    let gw = TestGateway::start().await;
    let scim = Scim::new(&gw).await;
    let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "eve@example.com"});
    let (_, eve) = scim.send("POST", "/Users", Some(&user)).await;
    let eve_id = eve["id"].as_str().unwrap().to_owned();
    let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Support",
                       "members": [{"value": eve_id}]});
    let (status, support) = scim.send("POST", "/Groups", Some(&group)).await;
    assert_eq!(status, 201, "{support}");
    let group_id = support["id"].as_str().unwrap().to_owned();
    // The grant names the group as apply spells it (case-insensitive match).
    gw.apply(&format!("{}\n[[grants]]\nserver = \"demo\"\ngroups = [\"support\"]\n", demo_server_toml("demo", &[])))
        .await;
    let key = gw.api_key("eve@example.com").await;
    let mut client = gw.client("demo", Some(&key));
    assert_eq!(client.initialize().await.status, 200);
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "in"})).await), "in");
    let remove = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "remove", "path": format!("members[value eq \"{eve_id}\"]")}]});
    assert_eq!(scim.send("PATCH", &format!("/Groups/{group_id}"), Some(&remove)).await.0, 200);
    let refused = client.call_tool("echo", json!({"message": "out"})).await;
    assert_eq!(refused.error_code(), Some(-32030), "{}", refused.text);
}
