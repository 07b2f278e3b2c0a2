//! The store suite, run against SQLite and PostgreSQL alike.

use crate::support::*;
use portcullis::store::{self, audit::Filter};
use serde_json::json;

fn pending_event(user_id: &str) -> portcullis::audit::AuditEvent {
    portcullis::audit::AuditEvent {
        id: portcullis::crypto::new_id(),
        ts: store::now_ms(),
        user_id: Some(user_id.to_owned()),
        principal: "ann@example.com".into(),
        server: Some("demo".into()),
        method: "tools/call".into(),
        target: Some("echo".into()),
        sealed_arguments: None,
        arguments_digest: None,
        decision: "allow",
        reason: "test".into(),
        outcome: "pending".into(),
        error: None,
        latency_us: None,
        client_name: None,
        client_version: None,
        ip: None,
        correlation_id: "test".into(),
        replica: String::new(),
        rules: vec!["grant".into()],
        detail: None,
    }
}

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

    // A call in flight is on the record as pending (on SQLite outside the query indexes): the
    // same filters find it, in order, and once it ends it is found once, with its outcome.
    let ann = users[0].id.clone();
    let pending = pending_event(&ann);
    let pending_id = pending.id.clone();
    let reference = gw.state.audit.record_durable(pending).await.unwrap();
    gw.state.audit.flush().await;
    let by_user = Filter { user_id: Some(ann.clone()), limit: 100, ..Filter::default() };
    let found = store::audit::query(&mut connection, &by_user).await.unwrap();
    assert_eq!((found[0].id.as_str(), found[0].outcome.as_str()), (pending_id.as_str(), "pending"));
    let seq = found[0].seq;
    assert!(found[1..].iter().all(|event| event.seq < seq && event.outcome != "pending"), "{found:?}");
    let only_pending = Filter { outcome: Some("pending".into()), ..by_user.clone() };
    assert_eq!(store::audit::query(&mut connection, &only_pending).await.unwrap().len(), 1);
    gw.state.audit.complete(portcullis::audit::Completion {
        event: reference,
        outcome: "ok".into(),
        error: None,
        latency_us: Some(7),
    });
    gw.state.audit.flush().await;
    let after = store::audit::query(&mut connection, &by_user).await.unwrap();
    assert_eq!(after.len(), found.len(), "no event lost or doubled");
    assert_eq!((after[0].seq, after[0].outcome.as_str(), after[0].latency_us), (seq, "ok", Some(7)));
    assert!(store::audit::query(&mut connection, &only_pending).await.unwrap().is_empty());

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

/// Under steady durable writes the SQLite WAL must start over now and then instead of growing
/// without bound (a checkpoint beside a busy writer never catches up on its own).
#[tokio::test]
async fn the_sqlite_wal_starts_over_under_steady_load() {
    let directory = std::env::temp_dir().join(format!("portcullis-wal-{}", portcullis::crypto::new_id()));
    let path = directory.join("portcullis.db");
    let location = portcullis::config::StoreLocation::Sqlite(path.clone());
    let store = store::Store::open(&location).await.unwrap();
    let keys = portcullis::crypto::SecretKey::generate().derive();
    let audit = portcullis::audit::AuditLog::start(store.clone(), &location, keys).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_millis(2500);
    let mut commits = 0i64;
    while std::time::Instant::now() < until {
        let event = audit.record_durable(pending_event("load")).await.unwrap();
        audit.complete(portcullis::audit::Completion { event, outcome: "ok".into(), error: None, latency_us: Some(1) });
        // Journaled events reach the database in batches; a flush makes each one a commit.
        audit.flush().await;
        commits += 1;
    }
    audit.flush().await;
    // Each commit appends at least two frames (the row and the pending index); a WAL that
    // never started over would hold them all, one that does holds the last half second's.
    let frames = wal_frames(&path).await;
    assert!(commits > 1000, "only {commits} commits in 2.5 s");
    assert!(frames < commits, "the WAL holds {frames} frames after {commits} commits: it never started over");
    store.close().await;
    let _ = std::fs::remove_dir_all(&directory);
}

/// Frames currently in the WAL of the SQLite database at `path` (the file itself is reused
/// from its start after a restart, so its size says nothing).
async fn wal_frames(path: &std::path::Path) -> i64 {
    let url = format!("sqlite://{}", path.display());
    let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let (_, frames, _): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut connection).await.unwrap();
    frames
}

/// On SQLite a call's event is durable once it is in the audit journal; what a stopped process
/// journaled but had not yet moved into the database is moved at the next start, exactly once,
/// and a torn last record (the process died inside the write) is dropped.
#[tokio::test]
async fn journaled_audit_events_are_replayed_once_after_a_crash() {
    let directory = std::env::temp_dir().join(format!("portcullis-journal-{}", portcullis::crypto::new_id()));
    let path = directory.join("portcullis.db");
    let location = portcullis::config::StoreLocation::Sqlite(path.clone());
    let store = store::Store::open(&location).await.unwrap();
    let keys = portcullis::crypto::SecretKey::generate().derive();
    // A first life: one event applied, then two journaled that never reached the database
    // (written here the way the journal does), the second torn.
    let audit = portcullis::audit::AuditLog::start(store.clone(), &location, keys.clone()).unwrap();
    let applied = pending_event("first");
    audit.record_durable(applied.clone()).await.unwrap();
    audit.flush().await;
    drop(audit);
    // The writer and checkpoint threads let go of the journal's lock within half a second.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let journals = portcullis::audit::journal::files(&path).unwrap();
    let (generation, _) = journals.last().cloned().expect("a journal file");
    let mut appender = portcullis::audit::journal::Appender::create(&path, generation).unwrap();
    let lost = pending_event("second");
    appender.append(&portcullis::audit::journal::encode(&lost)).unwrap();
    let torn = portcullis::audit::journal::encode(&pending_event("third"));
    appender.append(&torn[..torn.len() - 3]).unwrap();
    drop(appender);

    // The next life replays.
    let audit = portcullis::audit::AuditLog::start(store.clone(), &location, keys.clone()).unwrap();
    audit.flush().await;
    let mut connection = store.pool.acquire().await.unwrap();
    let events = store::audit::query(&mut connection, &Filter { limit: 100, ..Filter::default() }).await.unwrap();
    let users: Vec<&str> = events.iter().filter_map(|event| event.user_id.as_deref()).collect();
    assert_eq!(users, ["second", "first"], "replayed once, the torn record dropped");
    drop(connection);
    drop(audit);
    // The writer and checkpoint threads let go of the journal's lock within half a second.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    // And a third life finds nothing more to replay.
    let audit = portcullis::audit::AuditLog::start(store.clone(), &location, keys).unwrap();
    audit.flush().await;
    let mut connection = store.pool.acquire().await.unwrap();
    let again = store::audit::query(&mut connection, &Filter { limit: 100, ..Filter::default() }).await.unwrap();
    assert_eq!(again.len(), 2);
    drop(connection);
    drop(audit);
    store.close().await;
    let _ = std::fs::remove_dir_all(&directory);
}
