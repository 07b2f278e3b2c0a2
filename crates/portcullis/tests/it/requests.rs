//! Server requests through the API: an employee asks, an admin tests the connection, reads
//! the automated checks, completes the checklist and approves (the server goes live with a
//! rule for the requester) or rejects with a reason; resubmission, withdrawal, duplicates,
//! access requests, concurrent decisions and the connection test's failure outcomes.

use crate::support::*;
use reqwest::Method;
use serde_json::{Value, json};

const PEOPLE: &str = "[[users]]\nemail = \"root@example.com\"\nadmin = true\n\
                      [[users]]\nemail = \"ann@example.com\"\nname = \"Ann\"\ngroups = [\"support\"]\n\
                      [[users]]\nemail = \"bob@example.com\"\n";

fn justification() -> Value {
    json!({"why": "Support answers customer questions about orders every day.",
           "use_case": "Look up a customer's notes while on a ticket.",
           "expected_value": "Saves about ten minutes per ticket for the support team.",
           "alternatives": "No active server reads the notes system; exporting by hand is slow."})
}

fn demo_request(name: &str) -> Value {
    json!({"kind": "custom", "justification": justification(), "origin": "internal",
           "server": {"name": name, "description": "Echo messages and add numbers for support notes",
                      "transport": "stdio", "command": binary(), "args": ["demo-server"],
                      "env": {"NOTES_TOKEN": "s3cr3t-notes-token"}}})
}

fn all_checked() -> Value {
    let sections = ["source", "tools", "data", "auth", "network", "need", "compliance"];
    Value::Object(sections.iter().map(|section| (section.to_string(), json!({"mark": "checked"}))).collect())
}

/// Start the connection test and wait for its result.
async fn tested(api: &Api, id: &str) -> Value {
    let (status, body) = api.send(Method::POST, &format!("/requests/{id}/test"), None).await;
    assert_eq!(status, 202, "{body}");
    for _ in 0..400 {
        let (_, body) = api.send(Method::GET, &format!("/requests/{id}"), None).await;
        if body["request"]["test"].is_object() && body["request"]["test_running_since"].is_null() {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the connection test of {id} did not finish");
}

fn check<'a>(detail: &'a Value, id: &str) -> &'a Value {
    detail["checks"].as_array().unwrap().iter().find(|check| check["id"] == id).unwrap()
}

#[tokio::test]
async fn a_custom_server_is_requested_tested_reviewed_approved_and_used() {
    let gw = TestGateway::start().await;
    gw.apply(PEOPLE).await;
    let root = Api::new(&gw, &gw.api_key("root@example.com").await);
    let ann_key = gw.api_key("ann@example.com").await;
    let ann = Api::new(&gw, &ann_key);
    let bob = Api::new(&gw, &gw.api_key("bob@example.com").await);

    // An incomplete justification keeps a request a draft.
    let mut incomplete = demo_request("notes");
    incomplete["justification"]["alternatives"] = json!("");
    let (status, body) = ann.send(Method::POST, "/requests", Some(incomplete.clone())).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("the alternatives considered"), "{body}");
    incomplete["submit"] = json!(false);
    let (status, body) = ann.send(Method::POST, "/requests", Some(incomplete)).await;
    assert_eq!(status, 201, "{body}");
    let draft = body["request"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["request"]["state"], "draft");
    // The draft is completed and submitted by editing it.
    let (status, body) = ann.send(Method::PUT, &format!("/requests/{draft}"), Some(demo_request("notes"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["request"]["state"], "pending");
    let id = draft;
    // Secrets never come back; the tier follows the origin.
    let text = body.to_string();
    assert!(!text.contains("s3cr3t"), "{text}");
    assert_eq!(body["request"]["proposal"]["env_names"], json!(["NOTES_TOKEN"]));
    assert_eq!(body["request"]["tier"], "internal");

    // Bob sees neither the request nor the inbox; admins get an in-app notification.
    assert_eq!(bob.send(Method::GET, &format!("/requests/{id}"), None).await.0, 404);
    let (_, listed) = bob.send(Method::GET, "/requests", None).await;
    assert_eq!(listed["requests"].as_array().unwrap().len(), 0);
    let (_, inbox) = root.send(Method::GET, "/requests?state=pending", None).await;
    let pending = &inbox["requests"][0];
    assert_eq!((pending["id"].as_str(), pending["overdue"].as_bool()), (Some(id.as_str()), Some(false)));
    assert_eq!(pending["target"], "2 business days");
    let (_, notes) = root.send(Method::GET, "/notifications", None).await;
    assert_eq!(notes["notifications"][0]["kind"], "request-submitted", "{notes}");

    // Before the test, the checks that need the tools say so.
    let (_, detail) = root.send(Method::GET, &format!("/requests/{id}"), None).await;
    assert_eq!(check(&detail, "tool-names")["level"], "not-run");
    assert_eq!(check(&detail, "catalog")["level"], "review");
    assert_eq!(detail["requester"]["groups"], json!(["support"]));
    // Only IT admins test and decide.
    assert_eq!(ann.send(Method::POST, &format!("/requests/{id}/test"), None).await.0, 403);
    let detail = tested(&root, &id).await;
    let test = &detail["request"]["test"];
    assert_eq!(test["outcome"], "success", "{test}");
    let tools: Vec<&str> =
        test["tools"].as_array().unwrap().iter().map(|tool| tool["name"].as_str().unwrap()).collect();
    assert_eq!(tools, ["echo", "add"]);
    assert_eq!(test["steps"].as_array().unwrap().iter().filter(|step| step["ok"] == true).count(), 4, "{test}");
    assert_eq!(check(&detail, "tool-names")["level"], "pass");
    assert_eq!(check(&detail, "hidden-instructions")["level"], "pass");
    assert_eq!(check(&detail, "plaintext-credentials")["level"], "pass");
    assert_eq!(check(&detail, "writes")["level"], "review", "add is not marked read-only");

    // Approval needs the whole checklist, and a note with each concern.
    let (status, body) = root.send(Method::POST, &format!("/requests/{id}/approve"), Some(json!({}))).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("complete the security checklist"), "{body}");
    let mut checklist = all_checked();
    checklist["data"] = json!({"mark": "concern", "note": ""});
    let approval = json!({"checklist": checklist, "grant": {"to": "requester", "tools": ["echo"]}});
    assert_eq!(root.send(Method::POST, &format!("/requests/{id}/approve"), Some(approval)).await.0, 400);
    checklist["data"] = json!({"mark": "concern", "note": "reads customer notes; limit to echo for now"});
    let approval = json!({"checklist": checklist, "grant": {"to": "requester", "tools": ["echo"]}, "high_risk": true});

    // Two admins approve at once: exactly one wins.
    let path = format!("/requests/{id}/approve");
    let (first, second) = tokio::join!(
        root.send(Method::POST, &path, Some(approval.clone())),
        root.send(Method::POST, &path, Some(approval.clone()))
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{first:?} {second:?}");
    let loser = if first.0 == 409 { &first.1 } else { &second.1 };
    assert!(loser["message"].as_str().unwrap().contains("was approved already by root@example.com"), "{loser}");

    // The server is live; Ann may call echo (the rule names only it) and nothing else.
    let mut client = gw.client("notes", Some(&ann_key));
    client.initialize().await;
    assert_eq!(client.tool_names().await, ["echo"]);
    let reply = client.call_tool("echo", json!({"message": "hello"})).await;
    assert_eq!(text_of(&reply), "hello");
    let mut bobs = gw.client("notes", Some(&bob.key));
    let refused = bobs.initialize().await;
    assert!(refused.error_message().contains("access denied"), "{:?}", refused.last());
    // The decision is recorded, audited with the checklist, and Ann is told.
    let (_, after) = ann.send(Method::GET, &format!("/requests/{id}"), None).await;
    assert_eq!(after["request"]["state"], "approved");
    assert_eq!(after["request"]["decision"]["checklist"]["data"]["mark"], "concern");
    let events = gw.audit().await;
    let approved = events.iter().find(|event| event.method == "request/approve").expect("an approval event");
    assert_eq!(approved.principal, "root@example.com");
    assert!(approved.detail.as_ref().unwrap().to_string().contains("limit to echo for now"));
    let (_, notes) = ann.send(Method::GET, "/notifications", None).await;
    assert_eq!(notes["notifications"][0]["kind"], "request-approved", "{notes}");
    assert_eq!(notes["unread"], 1);
    let (_, high) = root.send(Method::GET, "/high-risk", None).await;
    assert_eq!(high["servers"][0]["server"], "notes", "{high}");
    assert_eq!(high["servers"][0]["review_overdue"], false);
    // A decided request takes no more decisions.
    let rejection = json!({"reason": "This server reaches every customer note, which the use case does not need at all.",
                           "next_steps": "Resubmit with a read-only token."});
    let (status, body) = root.send(Method::POST, &format!("/requests/{id}/reject"), Some(rejection)).await;
    assert_eq!(status, 409, "{body}");
    gw.stop().await;
}

#[tokio::test]
async fn rejection_needs_a_real_reason_and_a_rejected_request_is_resubmitted() {
    let gw = TestGateway::start().await;
    gw.apply(PEOPLE).await;
    let root = Api::new(&gw, &gw.api_key("root@example.com").await);
    let ann = Api::new(&gw, &gw.api_key("ann@example.com").await);
    let (status, body) = ann.send(Method::POST, "/requests", Some(demo_request("notes"))).await;
    assert_eq!(status, 201, "{body}");
    let id = body["request"]["id"].as_str().unwrap().to_owned();

    for (reason, steps) in
        [("Security concerns", "Ask the platform team."), ("This reaches every note and more than needed.", "")]
    {
        let (status, body) = root
            .send(Method::POST, &format!("/requests/{id}/reject"), Some(json!({"reason": reason, "next_steps": steps})))
            .await;
        assert_eq!(status, 400, "{reason}: {body}");
    }
    let rejection = json!({"reason": "The server reads every customer's notes, but the use case only needs the notes of open tickets.",
                           "next_steps": "Resubmit with a token limited to open tickets, or ask #support-tools."});
    let (status, body) = root.send(Method::POST, &format!("/requests/{id}/reject"), Some(rejection)).await;
    assert_eq!(status, 200, "{body}");
    let (_, notes) = ann.send(Method::GET, "/notifications", None).await;
    assert!(notes["notifications"][0]["body"].as_str().unwrap().contains("only needs the notes of open tickets"));

    // Only a rejected request is resubmitted, once; left-out secrets carry over.
    let mut changed = demo_request("notes");
    changed["server"]["env"] = json!({});
    changed["justification"]["use_case"] = json!("Look up the notes of open tickets only, with a scoped token.");
    let (status, body) = ann.send(Method::POST, &format!("/requests/{id}/resubmit"), Some(changed.clone())).await;
    assert_eq!(status, 201, "{body}");
    let second = body["request"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["request"]["previous_id"], id.as_str());
    assert_eq!(body["request"]["proposal"]["env_names"], json!(["NOTES_TOKEN"]));
    let (_, first) = ann.send(Method::GET, &format!("/requests/{id}"), None).await;
    assert_eq!(first["request"]["next_id"], second.as_str());
    assert_eq!(ann.send(Method::POST, &format!("/requests/{id}/resubmit"), Some(changed)).await.0, 409);

    // Withdrawn requests take no decision.
    let (status, body) = ann.send(Method::POST, &format!("/requests/{second}/withdraw"), None).await;
    assert_eq!((status, body["request"]["state"].as_str()), (200, Some("withdrawn")), "{body}");
    let (status, body) = root
        .send(Method::POST, &format!("/requests/{second}/approve"), Some(json!({"checklist": all_checked()})))
        .await;
    assert_eq!(status, 409);
    assert!(body["message"].as_str().unwrap().contains("withdrawn by the requester"), "{body}");
    // The monthly review counts it: requested twice, rejected once with its reason.
    let (status, metrics) = root.send(Method::GET, "/requests/metrics?days=30", None).await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(metrics["requested"], 2);
    assert_eq!(metrics["most_requested"][0], json!(["notes", 2]));
    assert!(metrics["rejection_reasons"][0][1].as_str().unwrap().contains("open tickets"), "{metrics}");
    assert_eq!(metrics["time_to_decision"][0]["tier"], "internal");
    assert_eq!(metrics["time_to_decision"][0]["within_target"], 1.0);
    assert_eq!(ann.send(Method::GET, "/requests/metrics", None).await.0, 403);
    let events = gw.audit().await;
    for method in ["request/submit", "request/reject", "request/resubmit", "request/withdraw"] {
        assert!(events.iter().any(|event| event.method == method), "no {method} event");
    }
    gw.stop().await;
}

#[tokio::test]
async fn duplicates_are_flagged_and_access_is_requested_instead() {
    let gw = TestGateway::start().await;
    gw.apply(PEOPLE).await;
    gw.apply(&demo_server_toml("demo", &[])).await;
    let root = Api::new(&gw, &gw.api_key("root@example.com").await);
    let ann_key = gw.api_key("ann@example.com").await;
    let ann = Api::new(&gw, &ann_key);

    // The same command as the active demo server: a warning, and the reviewer sees the flag.
    let (status, body) = ann.send(Method::POST, "/requests", Some(demo_request("my-demo"))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["request"]["duplicate_of"], "demo");
    assert!(body["warnings"][0].as_str().unwrap().contains("ask for access to it instead"), "{body}");
    let duplicate = body["request"]["id"].as_str().unwrap().to_owned();
    let (_, detail) = root.send(Method::GET, &format!("/requests/{duplicate}"), None).await;
    assert_eq!(check(&detail, "redundancy")["level"], "fail");
    // Another server of the same name is refused outright.
    let mut clash = demo_request("demo");
    clash["server"]["args"] = json!(["demo-server", "--other"]);
    let (status, body) = ann.send(Method::POST, "/requests", Some(clash)).await;
    assert_eq!(status, 409, "{body}");
    // An open request for the same server is not repeated.
    assert_eq!(ann.send(Method::POST, "/requests", Some(demo_request("my-demo"))).await.0, 409);

    // A catalog entry made into a server before is the same server, whatever its settings.
    let files = |name: &str, root: &str| {
        json!({"kind": "catalog", "catalog": "filesystem", "name": name, "settings": {"ROOT_DIRECTORY": root},
               "justification": justification()})
    };
    let (status, body) = root.send(Method::POST, "/requests", Some(files("team-files", "/srv/team"))).await;
    assert_eq!((status, body["request"]["tier"].as_str()), (201, Some("high-risk")), "{body}");
    let first = body["request"]["id"].as_str().unwrap().to_owned();
    let approval = json!({"checklist": all_checked()});
    assert_eq!(root.send(Method::POST, &format!("/requests/{first}/approve"), Some(approval)).await.0, 200);
    let (status, body) = ann.send(Method::POST, "/requests", Some(files("my-files", "/home/ann"))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["request"]["duplicate_of"], "team-files", "{body}");

    // Access to the active server: approved with a group rule, no checklist needed.
    let access = json!({"kind": "access", "access_to": "demo", "justification": justification()});
    // IT admins change the review targets; a target that is not a duration is refused.
    let (status, body) = root.send(Method::PUT, "/request-targets", Some(json!({"catalog": "6h"}))).await;
    assert_eq!((status, body["targets"]["catalog"].as_str()), (200, Some("6h")), "{body}");
    assert_eq!(root.send(Method::PUT, "/request-targets", Some(json!({"catalog": "soon"}))).await.0, 400);
    assert_eq!(root.send(Method::PUT, "/request-targets", Some(json!({"weekly": "1d"}))).await.0, 400);
    assert_eq!(ann.send(Method::PUT, "/request-targets", Some(json!({"catalog": "1h"}))).await.0, 403);
    let (status, body) = ann.send(Method::POST, "/requests", Some(access.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["request"]["tier"], "catalog");
    let (_, listed) = root.send(Method::GET, "/requests?state=pending&kind=access", None).await;
    assert_eq!(listed["requests"][0]["target"], "6 hours", "{listed}");
    let id = body["request"]["id"].as_str().unwrap().to_owned();
    let (status, body) = root
        .send(
            Method::POST,
            &format!("/requests/{id}/approve"),
            Some(json!({"grant": {"to": "group", "group": "support"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut client = gw.client("demo", Some(&ann_key));
    client.initialize().await;
    assert_eq!(client.tool_names().await, ["echo", "add"]);
    // Now Ann can use it, so asking again is refused.
    let (status, body) = ann.send(Method::POST, "/requests", Some(access)).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("already use demo"), "{body}");
    gw.stop().await;
}

#[tokio::test]
async fn connection_tests_report_what_went_wrong() {
    let gw = TestGateway::start().await;
    gw.apply(PEOPLE).await;
    gw.apply(&demo_server_toml("demo", &[])).await;
    let root = Api::new(&gw, &gw.api_key("root@example.com").await);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cases = [
        // A command that does not exist.
        (json!({"transport": "stdio", "command": "/nonexistent/mcp-server"}), "unreachable", "cannot start"),
        // A command that exits at once.
        (json!({"transport": "stdio", "command": "/bin/false"}), "unreachable", "exited"),
        // Nothing listens there.
        (json!({"transport": "streamable-http", "url": format!("http://{closed}/mcp")}), "unreachable", ""),
        // The gateway itself without credentials: 401.
        (json!({"transport": "streamable-http", "url": gw.url("/mcp/demo")}), "auth_failed", "401"),
        // Something that is not MCP.
        (json!({"transport": "streamable-http", "url": gw.url("/healthz")}), "invalid_response", ""),
    ];
    for (index, (server, outcome, detail)) in cases.into_iter().enumerate() {
        let mut server = server;
        server["name"] = json!(format!("case-{index}"));
        server["description"] = json!("a server under test");
        let request = json!({"kind": "custom", "server": server, "justification": justification(), "submit": false});
        let (status, body) = root.send(Method::POST, "/requests", Some(request)).await;
        assert_eq!(status, 201, "{body}");
        let id = body["request"]["id"].as_str().unwrap().to_owned();
        let result = tested(&root, &id).await;
        let test = &result["request"]["test"];
        assert_eq!(test["outcome"], outcome, "case {index}: {test}");
        assert!(test["detail"].as_str().unwrap().contains(detail), "case {index}: {test}");
    }
    let events = gw.audit().await;
    assert_eq!(events.iter().filter(|event| event.method == "request/test").count(), 5);
    gw.stop().await;
}

/// A real SMTP server (aiosmtpd) storing what it receives in a Maildir.
pub struct SmtpSink {
    process: tokio::process::Child,
    pub port: u16,
    pub maildir: std::path::PathBuf,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        use tokio::io::AsyncBufReadExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let maildir = std::env::temp_dir().join(format!("portcullis-mail-{}", portcullis::crypto::new_id()));
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/smtp_sink.py");
        let mut process = tokio::process::Command::new(peers_dir().join("venv/bin/python"))
            .arg(script)
            .arg(port.to_string())
            .arg(&maildir)
            .env("PYTHONUNBUFFERED", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs the SMTP sink");
        let stdout = process.stdout.take().unwrap();
        let line = tokio::io::BufReader::new(stdout).lines().next_line().await.unwrap();
        assert_eq!(line.as_deref(), Some(format!("listening on {port}").as_str()), "the SMTP sink did not start");
        SmtpSink { process, port, maildir }
    }

    /// Every message received: (headers, decoded body).
    pub fn messages(&self) -> Vec<(String, String)> {
        use base64::Engine;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(self.maildir.join("new")).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap().replace("\r\n", "\n");
            let (headers, body) = text.split_once("\n\n").unwrap_or((&text, ""));
            let encoded: String = body.split_whitespace().collect();
            let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap_or_default();
            found.push((headers.to_owned(), String::from_utf8_lossy(&decoded).into_owned()));
        }
        found
    }

    /// Wait until a message whose headers contain `subject` arrives.
    pub async fn wait_for(&self, subject: &str) -> (String, String) {
        for _ in 0..200 {
            if let Some(found) = self.messages().into_iter().find(|(headers, _)| headers.contains(subject)) {
                return found;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no mail with {subject:?} arrived; got {:?}", self.messages());
    }

    pub async fn stop(mut self) {
        let _ = self.process.kill().await;
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}

#[tokio::test]
async fn decisions_and_new_requests_arrive_by_mail() {
    let sink = SmtpSink::start().await;
    let gw = TestGateway::start().await;
    gw.apply(PEOPLE).await;
    let root = Api::new(&gw, &gw.api_key("root@example.com").await);
    let ann = Api::new(&gw, &gw.api_key("ann@example.com").await);

    // Only the super admin sets the mail server; bad settings are refused with the reason.
    let settings = json!({"host": "127.0.0.1", "port": sink.port, "security": "none",
                          "from": "portcullis@example.com", "password": "not-used-without-username"});
    assert_eq!(ann.send(Method::PUT, "/settings/email", Some(settings.clone())).await.0, 403);
    let mut bad = settings.clone();
    bad["from"] = json!("nobody");
    let (status, body) = root.send(Method::PUT, "/settings/email", Some(bad)).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("sender address"), "{body}");
    let (status, body) = root.send(Method::PUT, "/settings/email", Some(settings)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["smtp"]["password_set"], true);
    assert!(!body.to_string().contains("not-used"), "the password never comes back: {body}");
    let (status, body) = root.send(Method::POST, "/settings/email/test", Some(json!({"to": "root@example.com"}))).await;
    assert_eq!(status, 200, "{body}");
    let (headers, text) = sink.wait_for("Portcullis test message").await;
    assert!(headers.contains("To: <root@example.com>"), "{headers}");
    assert!(text.contains("Mail notifications work"), "{text}");

    // Admins who turn alerts on hear of new requests; requesters always hear of decisions.
    assert_eq!(ann.send(Method::PUT, "/notifications/preferences", Some(json!({"email_alerts": true}))).await.0, 403);
    let (status, _) = root.send(Method::PUT, "/notifications/preferences", Some(json!({"email_alerts": true}))).await;
    assert_eq!(status, 200);
    let (_, body) = ann.send(Method::POST, "/requests", Some(demo_request("notes"))).await;
    let id = body["request"]["id"].as_str().unwrap().to_owned();
    let (headers, text) = sink.wait_for("New request: the custom server notes").await;
    assert!(headers.contains("To: <root@example.com>"), "{headers}");
    assert!(text.contains(&format!("/console/requests/{id}")), "{text}");
    let rejection = json!({"reason": "The notes server reads every customer's history; the use case needs open tickets only.",
                           "next_steps": "Resubmit with a token scoped to open tickets."});
    assert_eq!(root.send(Method::POST, &format!("/requests/{id}/reject"), Some(rejection)).await.0, 200);
    let (headers, text) = sink.wait_for("Not approved: notes").await;
    assert!(headers.contains("To: <ann@example.com>"), "{headers}");
    assert!(text.contains("needs open tickets only") && text.contains("scoped to open tickets"), "{text}");
    gw.stop().await;
    sink.stop().await;
}

/// Static credentials rotate in place: the next request uses the new value, an open session
/// keeps working, nothing shows the value, the audit names what changed.
#[tokio::test]
async fn credentials_rotate_without_downtime() {
    let upstream = TestGateway::start().await;
    upstream.apply(&demo_server_toml("demo", &["svc@example.com"])).await;
    let old_key = upstream.api_key("svc@example.com").await;
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "[[servers]]\nname = \"remote\"\ntransport = \"streamable-http\"\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer {old_key}\" }}\n\
         [[users]]\nemail = \"root@example.com\"\nadmin = true\n[[users]]\nemail = \"ann@example.com\"\n\
         [[grants]]\nserver = \"remote\"\nusers = [\"ann@example.com\"]\n",
        upstream.url("/mcp/demo")
    ))
    .await;
    let root = Api::new(&gw, &gw.api_key("root@example.com").await);
    let ann_key = gw.api_key("ann@example.com").await;
    let mut client = gw.client("remote", Some(&ann_key));
    client.initialize().await;
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "before"})).await), "before");

    // A new key upstream; rotate it in; revoke the old one there.
    let new_key = upstream.api_key("svc@example.com").await;
    let ann = Api::new(&gw, &ann_key);
    let body = json!({"headers": {"Authorization": format!("Bearer {new_key}")}});
    assert_eq!(ann.send(Method::POST, "/servers/remote/credentials", Some(body.clone())).await.0, 403);
    let (status, answer) = root.send(Method::POST, "/servers/remote/credentials", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"], json!(["header Authorization"]));
    let upstream_root = {
        upstream.apply("[[users]]\nemail = \"root@example.com\"\nadmin = true\n").await;
        Api::new(&upstream, &upstream.api_key("root@example.com").await)
    };
    let (_, keys) = upstream_root.send(Method::GET, "/api-keys", None).await;
    let old_id = keys["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| old_key.starts_with(key["prefix"].as_str().unwrap()) && key["user_email"] == "svc@example.com")
        .map(|key| key["id"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("the old key is listed: {keys}"));
    assert_eq!(upstream_root.send(Method::DELETE, &format!("/api-keys/{old_id}"), None).await.0, 204);
    // The same client session goes on, now with the new credential.
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "after"})).await), "after");
    let (_, server) = root.send(Method::GET, "/servers/remote", None).await;
    assert!(!server.to_string().contains(&new_key) && !server.to_string().contains(&old_key), "{server}");
    let events = gw.audit().await;
    let rotated = events.iter().find(|event| event.method == "server/credentials").expect("an audit event");
    assert!(
        rotated.reason.contains("header Authorization") && !rotated.reason.contains(&new_key),
        "{}",
        rotated.reason
    );
    // Naming nothing is a clear error; a bad header value too.
    assert_eq!(root.send(Method::POST, "/servers/remote/credentials", Some(json!({}))).await.0, 400);
    let bad = json!({"headers": {"Authorization": "line\nbreak"}});
    assert_eq!(root.send(Method::POST, "/servers/remote/credentials", Some(bad)).await.0, 400);
    gw.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn one_person_cannot_flood_the_inbox() {
    let gw = TestGateway::start().await;
    gw.apply(PEOPLE).await;
    let ann = Api::new(&gw, &gw.api_key("ann@example.com").await);
    for index in 0..portcullis::lifecycle::MAX_OPEN_REQUESTS {
        let mut draft = demo_request(&format!("notes-{index}"));
        draft["submit"] = json!(false);
        draft["server"]["args"] = json!(["demo-server", format!("--copy={index}")]);
        let (status, body) = ann.send(Method::POST, "/requests", Some(draft)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = ann.send(Method::POST, "/requests", Some(demo_request("one-more"))).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("20 open requests"), "{body}");
    gw.stop().await;
}
