//! The console over HTTP, as a browser without JavaScript uses it: first-run setup, enforced
//! two-step sign-in for admins, sessions, CSRF, API keys, and the security headers.

use crate::support::*;
use portcullis::auth::{password, totp};
use reqwest::header::HeaderMap;
use std::collections::BTreeMap;

/// A cookie-keeping client that does not follow redirects.
pub(crate) struct Browser {
    pub http: reqwest::Client,
    pub base: String,
    pub cookies: BTreeMap<String, String>,
}

pub(crate) struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers.get("location").and_then(|value| value.to_str().ok()).unwrap_or("")
    }

    pub fn csrf(&self) -> String {
        between(&self.body, "name=\"csrf\" value=\"", "\"").expect("the page has a form")
    }
}

pub(crate) fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(text[from..to].to_owned())
}

impl Browser {
    pub fn new(gw: &TestGateway) -> Browser {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { http, base: gw.url(""), cookies: BTreeMap::new() }
    }

    fn absorb(&mut self, headers: &HeaderMap) {
        for value in headers.get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            assert!(attributes.contains("HttpOnly"), "cookie {name} must be HttpOnly: {text}");
            assert!(attributes.contains("Path=/"), "{text}");
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                assert!(attributes.contains("SameSite="), "cookie {name} needs SameSite: {text}");
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    pub async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookie: Vec<String> = self.cookies.iter().map(|(name, value)| format!("{name}={value}")).collect();
        let response = request.header("cookie", cookie.join("; ")).send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        self.absorb(&headers);
        let body = response.text().await.unwrap();
        if headers.get("content-type").is_some_and(|value| value.to_str().unwrap().starts_with("text/html")) {
            let csp = headers.get("content-security-policy").map(|value| value.to_str().unwrap().to_owned());
            assert!(csp.as_deref().is_some_and(|csp| csp.starts_with("default-src 'none'")), "CSP missing: {csp:?}");
            assert!(!body.contains("<script"), "pages carry no scripts");
        }
        Page { status, headers, body }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let request = self.http.post(format!("{}{path}", self.base)).form(fields);
        self.send(request).await
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn first_run_setup_then_two_step_sign_in_for_the_super_admin() {
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "{}\n[[users]]\nemail = \"x@example.com\"\nname = \"<script>alert(1)</script>\"\n",
        demo_server_toml("demo", &[])
    ))
    .await;
    let link = portcullis::console::first_run_link(gw.store(), &gw.url("")).await.unwrap().expect("a first-run link");
    let path = link.strip_prefix(&gw.url("")).unwrap().to_owned();
    let mut browser = Browser::new(&gw);
    let form = browser.get(&path).await;
    assert_eq!(form.status, 200, "{}", form.body);
    let csrf = form.csrf();
    let fields = |password: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("email", "root@example.com".to_owned()),
            ("name", "Root".to_owned()),
            ("password", password.to_owned()),
            ("confirm", password.to_owned()),
        ]
    };
    let weak = fields("short");
    let weak: Vec<(&str, &str)> = weak.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let refused = browser.post(&path, &weak).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("at least 12 characters"), "{}", refused.body);
    let good = fields("a long enough passphrase");
    let good: Vec<(&str, &str)> = good.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let created = browser.post(&path, &good).await;
    assert_eq!((created.status, created.location()), (303, "/console/mfa"), "{}", created.body);
    // The link works once.
    assert_eq!(Browser::new(&gw).get(&path).await.status, 403);
    // An admin goes nowhere before two-step sign-in is on.
    assert_eq!(browser.get("/console").await.location(), "/console/mfa");
    let enrol = browser.get("/console/mfa").await;
    assert!(enrol.body.contains("<svg"), "a QR code is shown");
    let key = between(&enrol.body, "Key: <code>", "</code>").unwrap();
    let secret = totp::Secret::from_base32(&key).unwrap();
    let wrong = browser.post("/console/mfa", &[("csrf", &enrol.csrf()), ("code", "000000")]).await;
    assert_eq!(wrong.status, 400);
    let enrolled_code = totp::code(&secret, unix_now());
    let done = browser.post("/console/mfa", &[("csrf", &enrol.csrf()), ("code", &enrolled_code)]).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let recovery: Vec<String> = done
        .body
        .split("<li><code>")
        .skip(1)
        .filter_map(|part| part.split_once("</code>"))
        .map(|(code, _)| code.to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    let home = browser.get("/console").await;
    assert_eq!(home.status, 200);
    assert!(home.body.contains("Your API keys") && home.body.contains("Users"), "{}", home.body);

    // Forms without the CSRF token are refused; with it, a key is made and works.
    let forged = browser.post("/console/api-keys", &[("name", "laptop")]).await;
    assert_eq!(forged.status, 403);
    let made = browser.post("/console/api-keys", &[("csrf", &home.csrf()), ("name", "laptop")]).await;
    assert_eq!(made.status, 200);
    let api_key = between(&made.body, "<code class=\"secret\">", "</code>").unwrap();
    let servers = reqwest::Client::new().get(gw.url("/api/v1/servers")).bearer_auth(&api_key).send().await.unwrap();
    assert_eq!(servers.status(), 200);

    // Data shows as text, never as markup.
    let users = browser.get("/console/users").await;
    assert!(users.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{}", users.body);

    // Sign out, then in again: password, then a second step (the enrolment's code is spent).
    let signed_out = browser.post("/logout", &[("csrf", &home.csrf())]).await;
    assert_eq!(signed_out.location(), "/login");
    assert_eq!(browser.get("/console").await.location(), "/login");
    let login = browser.get("/login").await;
    let wrong = browser
        .post("/login", &[("csrf", &login.csrf()), ("email", "root@example.com"), ("password", "not the passphrase")])
        .await;
    assert_eq!(wrong.status, 401);
    let right = browser
        .post(
            "/login",
            &[("csrf", &login.csrf()), ("email", "ROOT@example.com"), ("password", "a long enough passphrase")],
        )
        .await;
    assert_eq!(right.location(), "/login/mfa");
    assert_eq!(browser.get("/console").await.location(), "/login/mfa", "no console before the second step");
    let step = browser.get("/login/mfa").await;
    let replay = browser.post("/login/mfa", &[("csrf", &step.csrf()), ("code", &enrolled_code)]).await;
    assert_eq!(replay.status, 401, "a code is good once");
    let recovered = browser.post("/login/mfa", &[("csrf", &step.csrf()), ("code", &recovery[0].to_uppercase())]).await;
    assert_eq!(recovered.location(), "/console");
    assert_eq!(browser.get("/console").await.status, 200);

    // Signing out everywhere ends the other copies of the session too.
    let mut elsewhere =
        Browser { http: browser.http.clone(), base: browser.base.clone(), cookies: browser.cookies.clone() };
    let home = browser.get("/console").await;
    assert_eq!(browser.post("/logout/everywhere", &[("csrf", &home.csrf())]).await.location(), "/login");
    assert_eq!(elsewhere.get("/console").await.location(), "/login");

    let events = gw.audit().await;
    for (method, decision) in [
        ("console/login", "deny"),
        ("console/login", "allow"),
        ("console/mfa.enrol", "allow"),
        ("console/login.second-factor", "deny"),
        ("admin-role/assign", "allow"),
    ] {
        assert!(
            events.iter().any(|event| event.method == method && event.decision == decision),
            "no {method} {decision}"
        );
    }
    assert!(
        events.iter().all(|event| !format!("{event:?}").contains("a long enough passphrase")),
        "no password in the audit log"
    );
}

#[tokio::test]
async fn employees_sign_in_with_a_password_see_their_servers_and_are_locked_out_after_failures() {
    let gw = TestGateway::start_with(Options {
        tweak: Box::new(|config| config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]),
        ..Options::default()
    })
    .await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    {
        let mut connection = gw.store().pool.acquire().await.unwrap();
        let account = portcullis::store::accounts::by_email(&mut connection, "ann@example.com").await.unwrap().unwrap();
        portcullis::store::accounts::set_password(
            &mut connection,
            &account.user_id,
            &password::hash("ann's long passphrase"),
        )
        .await
        .unwrap();
    }
    let mut browser = Browser::new(&gw);
    let login = browser.get("/login").await;
    let signed_in = browser
        .post("/login", &[("csrf", &login.csrf()), ("email", "ann@example.com"), ("password", "ann's long passphrase")])
        .await;
    assert_eq!(signed_in.location(), "/console", "employees without two-step sign-in go straight in");
    let home = browser.get("/console").await;
    assert!(home.body.contains("/mcp/demo"), "{}", home.body);
    assert_eq!(browser.get("/console/users").await.status, 403);

    // Five failures lock the email for a while, even for the right password.
    let mut other = Browser::new(&gw);
    let login = other.get("/login").await;
    for _ in 0..5 {
        let wrong = other
            .post("/login", &[("csrf", &login.csrf()), ("email", "ann@example.com"), ("password", "wrong guess, long")])
            .await;
        assert_eq!(wrong.status, 401);
    }
    let locked = other
        .post("/login", &[("csrf", &login.csrf()), ("email", "ann@example.com"), ("password", "ann's long passphrase")])
        .await;
    assert_eq!(locked.status, 429);
    assert!(locked.body.contains("Too many failed attempts"), "{}", locked.body);

    // Those failures lock ann out from that address only: from her own network she signs in
    // (the gateway believes X-Forwarded-For from its proxy, here the loopback address).
    let mut elsewhere = Browser::new(&gw);
    let login = elsewhere.get("/login").await;
    let from_home = elsewhere
        .send(elsewhere.http.post(format!("{}/login", elsewhere.base)).header("x-forwarded-for", "198.51.100.7").form(
            &[("csrf", login.csrf().as_str()), ("email", "ann@example.com"), ("password", "ann's long passphrase")],
        ))
        .await;
    assert_eq!((from_home.status, from_home.location()), (303, "/console"), "{}", from_home.body);

    // Guessing spread over many addresses hits the per-email ceiling (fifty in all): strangers'
    // new addresses are refused, but not the network ann signed in from.
    let post_from = |browser: &Browser, address: &str, password: &str, csrf: &str| {
        browser.http.post(format!("{}/login", browser.base)).header("x-forwarded-for", address).form(&[
            ("csrf", csrf),
            ("email", "ann@example.com"),
            ("password", password),
        ])
    };
    let mut guesser = Browser::new(&gw);
    let csrf = guesser.get("/login").await.csrf();
    for network in 0..10 {
        for _ in 0..5 {
            let request = post_from(&guesser, &format!("192.0.2.{network}"), "a wrong guess, long", &csrf);
            guesser.send(request).await;
        }
    }
    let request = post_from(&guesser, "203.0.113.9", "ann's long passphrase", &csrf);
    assert_eq!(guesser.send(request).await.status, 429, "a new address is refused at the ceiling");
    let mut home = Browser::new(&gw);
    let csrf = home.get("/login").await.csrf();
    let request = post_from(&home, "198.51.100.7", "ann's long passphrase", &csrf);
    assert_eq!(home.send(request).await.location(), "/console", "her own network still works");

    // A suspension ends the console session at once.
    portcullis::cli::set_user_status(gw.store(), "ann@example.com", portcullis::registry::Status::Suspended)
        .await
        .unwrap();
    assert_eq!(browser.get("/console").await.location(), "/login");

    // One address guessing across many emails is stopped too: 50 failures in all (the five
    // above came from the same address).
    let mut sprayer = Browser::new(&gw);
    let login = sprayer.get("/login").await;
    let mut statuses = Vec::new();
    for index in 0..45 {
        let email = format!("guess{index}@example.com");
        let page = sprayer
            .post("/login", &[("csrf", &login.csrf()), ("email", &email), ("password", "wrong guess, long")])
            .await;
        statuses.push(page.status);
    }
    assert!(statuses.iter().all(|status| *status == 401), "{statuses:?}");
    let blocked = sprayer
        .post("/login", &[("csrf", &login.csrf()), ("email", "new@example.com"), ("password", "anything at all")])
        .await;
    assert_eq!(blocked.status, 429);
    assert!(blocked.body.contains("from your network"), "{}", blocked.body);
}

/// A signed-in browser for an admin of `role` (two-step sign-in set up directly in the store).
async fn signed_in_admin(gw: &TestGateway, email: &str, role: &str) -> Browser {
    gw.apply(&format!("[[users]]\nemail = \"{email}\"\nroles = [\"{role}\"]\n")).await;
    portcullis::cli::set_password(gw.store(), email, "an admin's long passphrase").await.unwrap();
    let secret = totp::Secret::generate();
    let mut connection = gw.store().pool.acquire().await.unwrap();
    let account = portcullis::store::accounts::by_email(&mut connection, email).await.unwrap().unwrap();
    let sealed = gw.state.keys.secrets.seal_text(secret.as_bytes(), format!("totp:{}", account.user_id).as_bytes());
    portcullis::store::accounts::set_totp(&mut connection, &account.user_id, &sealed, 0, &[]).await.unwrap();
    drop(connection);
    let mut browser = Browser::new(gw);
    let login = browser.get("/login").await;
    let step = browser
        .post("/login", &[("csrf", &login.csrf()), ("email", email), ("password", "an admin's long passphrase")])
        .await;
    assert_eq!(step.location(), "/login/mfa");
    let second = browser.get("/login/mfa").await;
    let done =
        browser.post("/login/mfa", &[("csrf", &second.csrf()), ("code", &totp::code(&secret, unix_now()))]).await;
    assert_eq!(done.location(), "/console", "{}", done.body);
    browser
}

#[tokio::test]
async fn admins_see_a_person_and_the_groups_and_suspend_from_the_console() {
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "{}\n[[groups]]\nname = \"Finance\"\n[[users]]\nemail = \"bob@example.com\"\ngroups = [\"Finance\"]\n",
        demo_server_toml("demo", &["ann@example.com"])
    ))
    .await;
    let mut it = signed_in_admin(&gw, "it@example.com", "it-admin").await;
    let list = it.get("/console/users?group=finance").await;
    assert!(list.body.contains("href=\"/console/users/bob%40example.com\""), "{}", list.body);
    assert!(!list.body.contains("ann@example.com"), "filtered by group");
    let ann = it.get("/console/users/ann%40example.com").await;
    assert_eq!(ann.status, 200);
    assert!(ann.body.contains("<dt>Can use</dt><dd>demo</dd>"), "{}", ann.body);
    let suspended =
        it.post("/console/users/ann%40example.com/status", &[("csrf", &ann.csrf()), ("status", "suspended")]).await;
    assert_eq!(suspended.status, 303);
    let ann = it.get("/console/users/ann%40example.com").await;
    assert!(ann.body.contains("<dt>Status</dt><dd>suspended</dd>") && ann.body.contains("Reactivate"), "{}", ann.body);
    let groups = it.get("/console/groups").await;
    assert!(groups.body.contains("Finance") && groups.body.contains("bob@example.com"), "{}", groups.body);
    // An analytics admin sees people but cannot suspend them.
    let mut analyst = signed_in_admin(&gw, "numbers@example.com", "analytics-admin").await;
    let bob = analyst.get("/console/users/bob%40example.com").await;
    assert!(!bob.body.contains("Suspend"), "{}", bob.body);
    let refused = analyst
        .post("/console/users/bob%40example.com/status", &[("csrf", &bob.csrf()), ("status", "suspended")])
        .await;
    assert_eq!(refused.status, 403);
    assert!(
        gw.audit()
            .await
            .iter()
            .any(|event| event.method == "console/user.status" && event.principal == "it@example.com")
    );
}

/// Two-step sign-in for admins is on by default; a super admin can turn it off (audited), and
/// then an admin without an authenticator signs in with the password alone.
#[tokio::test]
async fn the_super_admin_decides_whether_admins_need_a_second_step() {
    let gw = TestGateway::start().await;
    gw.apply("[[users]]\nemail = \"it@example.com\"\nroles = [\"it-admin\"]\n").await;
    portcullis::cli::set_password(gw.store(), "it@example.com", "it's long passphrase").await.unwrap();
    let sign_in = |gw: &TestGateway| {
        let mut browser = Browser::new(gw);
        async move {
            let login = browser.get("/login").await;
            let fields = [
                ("csrf", login.csrf()),
                ("email", "it@example.com".into()),
                ("password", "it's long passphrase".into()),
            ];
            let fields: Vec<(&str, &str)> = fields.iter().map(|(name, value)| (*name, value.as_str())).collect();
            browser.post("/login", &fields).await.location().to_owned()
        }
    };
    assert_eq!(sign_in(&gw).await, "/console/mfa", "admins must enrol first");
    let mut root = signed_in_admin(&gw, "root@example.com", "super-admin").await;
    let settings = root.get("/console/settings").await;
    assert!(settings.body.contains("Required"), "{}", settings.body);
    let off = root.post("/console/settings", &[("csrf", &settings.csrf()), ("admin_mfa", "off")]).await;
    assert_eq!(off.location(), "/console/settings");
    assert_eq!(sign_in(&gw).await, "/console", "a password alone now");
    let key = gw.api_key("root@example.com").await;
    let http = reqwest::Client::new();
    let current: serde_json::Value =
        http.get(gw.url("/api/v1/settings")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert_eq!(current["admin_mfa_required"], false);
    let on = http
        .put(gw.url("/api/v1/settings"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"admin_mfa_required": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(on.status(), 200);
    assert_eq!(sign_in(&gw).await, "/console/mfa");
    // Only super admins see or change settings.
    let it_key = gw.api_key("it@example.com").await;
    assert_eq!(http.get(gw.url("/api/v1/settings")).bearer_auth(&it_key).send().await.unwrap().status(), 403);
    let events = gw.audit().await;
    assert_eq!(events.iter().filter(|event| event.method == "settings/admin-mfa").count(), 2);
}

#[tokio::test]
async fn over_https_cookies_are_secure_and_host_bound() {
    let gw = TestGateway::start_with(Options {
        tweak: Box::new(|config| config.public_url = Some("https://portcullis.example".into())),
        ..Options::default()
    })
    .await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    portcullis::cli::set_password(gw.store(), "ann@example.com", "ann's long passphrase").await.unwrap();
    let mut browser = Browser::new(&gw);
    let login = browser.get("/login").await;
    let set: Vec<String> =
        login.headers.get_all("set-cookie").iter().map(|value| value.to_str().unwrap().to_owned()).collect();
    assert!(
        set.iter().any(|cookie| cookie.starts_with("__Host-portcullis_csrf=") && cookie.contains("; Secure")),
        "{set:?}"
    );
    let signed_in = browser
        .post("/login", &[("csrf", &login.csrf()), ("email", "ann@example.com"), ("password", "ann's long passphrase")])
        .await;
    let set: Vec<String> =
        signed_in.headers.get_all("set-cookie").iter().map(|value| value.to_str().unwrap().to_owned()).collect();
    let session = set.iter().find(|cookie| cookie.starts_with("__Host-portcullis_session=")).expect("a session cookie");
    assert!(session.contains("; Secure") && session.contains("Path=/;") && !session.contains("Domain"), "{session}");
    assert_eq!(browser.get("/console").await.status, 200);

    // The same value under the plain name (as a sibling site or plain-http page could set it)
    // is not a session.
    let value = browser.cookies["__Host-portcullis_session"].clone();
    let mut planted = Browser::new(&gw);
    planted.cookies.insert("portcullis_session".into(), value);
    assert_eq!(planted.get("/console").await.location(), "/login");
    gw.stop().await;
}

/// Everyone reads their own activity; auditors read everyone's, filter it and page back.
/// Administrators see the servers with the names of their credentials, never the values.
#[tokio::test]
async fn the_audit_trail_and_the_servers_in_the_console() {
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "{}\n[[servers]]\nname = \"crm\"\ndescription = \"Customer records\"\ntransport = \"streamable-http\"\n\
         url = \"http://127.0.0.1:9/mcp\"\nheaders = {{ Authorization = \"Bearer crm-secret-value\" }}\n\
         [[grants]]\nserver = \"crm\"\ngroups = [\"Sales\"]\n[[users]]\nemail = \"bob@example.com\"\ngroups = [\"Sales\"]\n",
        demo_server_toml("demo", &["ann@example.com"])
    ))
    .await;
    portcullis::cli::set_password(gw.store(), "ann@example.com", "ann's long passphrase").await.unwrap();
    let key = gw.api_key("ann@example.com").await;
    let mut client = gw.client("demo", Some(&key));
    client.initialize().await;
    client.call_tool("echo", serde_json::json!({"message": "hello"})).await;
    // Many events of bob's, so the auditor pages back through them.
    let (bob_id, replica) = (person_id(&gw, "bob@example.com").await, gw.state.replica.to_string());
    let events: Vec<_> = (0..60)
        .map(|index| {
            portcullis::audit::AuditEvent::action(
                "bob@example.com",
                Some(&bob_id),
                "tools/call",
                Some(&format!("lookup-{index}")),
                index % 2 == 0,
                "test event",
                &replica,
            )
        })
        .collect();
    let mut connection = gw.store().pool.acquire().await.unwrap();
    portcullis::store::audit::insert(&mut connection, &events).await.unwrap();
    drop(connection);

    let mut ann = Browser::new(&gw);
    let login = ann.get("/login").await;
    ann.post("/login", &[("csrf", &login.csrf()), ("email", "ann@example.com"), ("password", "ann's long passphrase")])
        .await;
    let mine = ann.get("/console/audit?person=bob%40example.com").await;
    assert_eq!(mine.status, 200);
    assert!(mine.body.contains("<h1>My activity</h1>") && mine.body.contains("echo"), "{}", mine.body);
    assert!(!mine.body.contains("bob@example.com") && !mine.body.contains("lookup-"), "only ann's own events");
    assert_eq!(ann.get("/console/servers").await.status, 403);

    let mut security = signed_in_admin(&gw, "sec@example.com", "security-admin").await;
    let all = security.get("/console/audit").await;
    assert!(all.body.contains("<h1>Audit log</h1>"), "{}", all.body);
    assert!(all.body.contains("lookup-59") && !all.body.contains("lookup-9<"), "newest first, fifty a page");
    let older = between(&all.body, "href=\"/console/audit?before=", "\"").expect("a link to older events");
    let page_two = security.get(&format!("/console/audit?before={}", older.replace("&amp;", "&"))).await;
    assert!(page_two.body.contains("lookup-9<") && !page_two.body.contains("lookup-59"), "{}", page_two.body);
    let denied = security.get("/console/audit?person=bob%40example.com&decision=deny").await;
    assert!(denied.body.contains("lookup-59") && !denied.body.contains("lookup-58<"), "only denials");
    assert!(!denied.body.contains(">echo<"), "only bob's");
    let anns = security.get("/console/audit?person=ann%40example.com&method=tools%2Fcall").await;
    assert!(anns.body.contains(">echo<") && !anns.body.contains("lookup-"), "{}", anns.body);

    let servers = security.get("/console/servers").await;
    assert_eq!(servers.status, 200);
    for shown in ["crm", "Customer records", "header Authorization", "group Sales", "ann@example.com"] {
        assert!(servers.body.contains(shown), "{shown} in {}", servers.body);
    }
    assert!(!servers.body.contains("crm-secret-value"), "credentials are never shown");
    gw.stop().await;
}

async fn person_id(gw: &TestGateway, email: &str) -> String {
    let mut connection = gw.store().pool.acquire().await.unwrap();
    portcullis::store::accounts::by_email(&mut connection, email).await.unwrap().unwrap().user_id
}

/// Permissions tab, Admin → Policies, simulate-then-save, edit, delete and effective access,
/// all through forms; only policy admins change rules.
#[tokio::test]
async fn admins_write_rules_in_the_console_without_writing_cedar() {
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "{}\n[[groups]]\nname = \"Finance\"\n[[users]]\nemail = \"ann@example.com\"\ngroups = [\"Finance\"]\n",
        demo_server_toml("demo", &[])
    ))
    .await;
    let mut browser = signed_in_admin(&gw, "sec@example.com", "security-admin").await;
    let tab = browser.get("/console/servers/demo/permissions").await;
    assert_eq!(tab.status, 200, "{}", tab.body);
    assert!(tab.body.contains("No rules name this server yet"), "{}", tab.body);
    assert!(browser.get("/console/servers").await.body.contains("/console/servers/demo/permissions"));

    let rule = |intent: &'static str, conditions: &'static str| {
        vec![
            ("intent", intent),
            ("name", "finance demo"),
            ("effect", "allow"),
            ("servers", "demo"),
            ("groups", "Finance"),
            ("tools", "echo, add"),
            ("conditions", conditions),
            ("notes", "ticket FIN-42"),
        ]
    };
    let post = |csrf: String, fields: Vec<(&'static str, &'static str)>| {
        let mut all: Vec<(String, String)> = vec![("csrf".into(), csrf)];
        all.extend(fields.into_iter().map(|(name, value)| (name.to_owned(), value.to_owned())));
        all
    };
    // A bad condition is refused with the part named, and the form keeps what was typed.
    let fields = post(tab.csrf(), rule("save", "meta.request.ip in_cidr 10.0.0.0/40"));
    let fields: Vec<(&str, &str)> = fields.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let refused = browser.post("/console/rules", &fields).await;
    assert_eq!(refused.status, 200);
    assert!(
        refused.body.contains("Rule not saved") && refused.body.contains("condition 1 (meta.request.ip)"),
        "{}",
        refused.body
    );
    assert!(refused.body.contains("ticket FIN-42"));
    // Simulate first: nothing saved, the report and the form come back.
    let fields = post(refused.csrf(), rule("simulate", "payload.message in [\"hi\"]"));
    let fields: Vec<(&str, &str)> = fields.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let simulated = browser.post("/console/rules", &fields).await;
    assert!(
        simulated.body.contains("Calls replayed") && simulated.body.contains("Nothing is saved"),
        "{}",
        simulated.body
    );
    assert!(browser.get("/console/servers/demo/permissions").await.body.contains("No rules name this server yet"));
    // Then save.
    let fields = post(simulated.csrf(), rule("save", "payload.message in [\"hi\"]"));
    let fields: Vec<(&str, &str)> = fields.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let saved = browser.post("/console/rules", &fields).await;
    assert_eq!((saved.status, saved.location()), (303, "/console/servers/demo/permissions"), "{}", saved.body);
    let tab = browser.get("/console/servers/demo/permissions").await;
    assert!(
        tab.body.contains("finance demo") && tab.body.contains("payload.message in [&quot;hi&quot;]"),
        "{}",
        tab.body
    );
    assert!(tab.body.contains("principal.groups.contains(&quot;finance&quot;)"), "the Cedar text is shown");

    // A global rule on Admin → Policies.
    let policies = browser.get("/console/policies").await;
    assert!(policies.body.contains("No global rules yet"));
    let saved = browser
        .post(
            "/console/rules",
            &[
                ("csrf", &policies.csrf()),
                ("intent", "save"),
                ("name", "Cursor only"),
                ("effect", "deny"),
                ("global", "on"),
                ("everyone", "on"),
                ("conditions", "meta.client.name ne cursor"),
            ],
        )
        .await;
    assert_eq!(saved.location(), "/console/policies", "{}", saved.body);
    assert!(browser.get("/console/policies").await.body.contains("Cursor only"));

    // Effective access, on the page and as CSV.
    let access = browser.get("/console/access?server=demo").await;
    assert!(access.body.contains("ann@example.com") && access.body.contains("finance demo"), "{}", access.body);
    let csv = browser.get("/console/access.csv?server=demo&user=").await;
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    assert!(
        csv.body.contains("ann@example.com,demo,true,allow,finance demo,false,\"tools: echo, add\""),
        "{}",
        csv.body
    );
    assert!(!csv.body.contains("sec@example.com"), "people with no allow on the server are not listed: {}", csv.body);

    // Everyone browses the catalog and the servers already active.
    let catalog = browser.get("/console/catalog?q=slack").await;
    assert!(catalog.body.contains("Slack") && !catalog.body.contains("Brave Search"), "{}", catalog.body);
    let catalog = browser.get("/console/catalog?q=demo").await;
    assert!(
        catalog.body.contains("href=\"/console/requests/new?kind=access&amp;access_to=demo\"")
            && catalog.body.contains("Ask for access")
            && !catalog.body.contains("you can use it"),
        "{}",
        catalog.body
    );

    // Nobody called a tool through the rule yet: it is stale for Ann.
    let stale = browser.get("/console/access/stale?days=30").await;
    assert!(stale.body.contains("finance demo") && stale.body.contains("ann@example.com"), "{}", stale.body);

    // Edit, then delete, from the tab.
    let tab = browser.get("/console/servers/demo/permissions").await;
    let id = between(&tab.body, "action=\"/console/rules/", "/delete").unwrap();
    let form = browser.get(&format!("/console/rules/{id}")).await;
    assert!(form.body.contains("value=\"finance demo\"") && form.body.contains("ticket FIN-42"), "{}", form.body);
    let deleted = browser.post(&format!("/console/rules/{id}/delete"), &[("csrf", &tab.csrf())]).await;
    assert_eq!(deleted.location(), "/console/servers/demo/permissions");
    assert!(browser.get("/console/servers/demo/permissions").await.body.contains("No rules name this server yet"));
    let events = gw.audit().await;
    let methods: Vec<&str> =
        events.iter().filter(|event| event.method.starts_with("rule/")).map(|event| event.method.as_str()).collect();
    assert_eq!(methods, ["rule/delete", "rule/create", "rule/create"]);
    assert!(
        events
            .iter()
            .filter(|event| event.method.starts_with("rule/"))
            .all(|event| event.principal == "sec@example.com")
    );

    // An analytics admin reviews access but changes no rule.
    let mut analyst = signed_in_admin(&gw, "numbers@example.com", "analytics-admin").await;
    let tab = analyst.get("/console/servers/demo/permissions").await;
    assert!(!tab.body.contains("New rule"));
    assert_eq!(analyst.get("/console/access").await.status, 200);
    let refused = analyst.post("/console/rules", &[("csrf", &tab.csrf()), ("intent", "save"), ("name", "x")]).await;
    assert_eq!(refused.status, 403);
    gw.stop().await;
}

#[tokio::test]
async fn it_admins_keep_the_high_risk_list_in_the_console() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &[])).await;
    let mut browser = signed_in_admin(&gw, "it@example.com", "it-admin").await;
    let servers = browser.get("/console/servers").await;
    assert!(servers.body.contains("No server is on the high-risk list."), "{}", servers.body);
    let csrf = servers.csrf();
    let short = browser.post("/console/high-risk", &[("csrf", &csrf), ("server", "demo"), ("note", "risky")]).await;
    assert!(short.body.contains("at least 10 characters"), "{}", short.body);
    let added = browser
        .post("/console/high-risk", &[("csrf", &csrf), ("server", "demo"), ("note", "reads customer payment data")])
        .await;
    assert_eq!(added.location(), "/console/servers");
    let servers = browser.get("/console/servers").await;
    assert!(
        servers.body.contains("reads customer payment data") && servers.body.contains("Record review"),
        "{}",
        servers.body
    );
    assert!(servers.body.contains("high risk: reads customer payment data"), "shown in the list: {}", servers.body);
    let reviewed = browser.post("/console/high-risk/demo/review", &[("csrf", &csrf)]).await;
    assert_eq!(reviewed.location(), "/console/servers");
    let removed = browser.post("/console/high-risk/demo/remove", &[("csrf", &csrf)]).await;
    assert_eq!(removed.location(), "/console/servers");
    assert!(browser.get("/console/servers").await.body.contains("No server is on the high-risk list."));
    let events = gw.audit().await;
    for method in ["server/high-risk", "server/high-risk-review", "server/low-risk"] {
        assert!(events.iter().any(|event| event.method == method), "no {method} event");
    }
}

/// The request form in the console for catalog and access requests, and the duplicate
/// warning that offers an access request instead.
#[tokio::test]
async fn employees_request_catalog_servers_and_access_in_the_console() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &[])).await;
    gw.apply("[[users]]\nemail = \"ann@example.com\"\n").await;
    portcullis::cli::set_password(gw.store(), "ann@example.com", "employee passphrase 42").await.unwrap();
    let mut browser = Browser::new(&gw);
    let login = browser.get("/login").await;
    browser
        .post(
            "/login",
            &[("csrf", &login.csrf()), ("email", "ann@example.com"), ("password", "employee passphrase 42")],
        )
        .await;
    let justification = [
        ("why", "Marketing needs web search for market research."),
        ("use_case", "Search competitors' announcements."),
        ("expected_value", "Faster weekly reports."),
        ("alternatives", "No active server searches the web."),
    ];

    // A catalog server: the form asks for the entry's settings; a missing one is explained.
    let form = browser.get("/console/requests/new?kind=catalog&catalog=brave-search").await;
    assert!(form.body.contains("BRAVE_API_KEY"), "{}", form.body);
    let csrf = form.csrf();
    let mut fields =
        vec![("csrf", csrf.as_str()), ("kind", "catalog"), ("catalog", "brave-search"), ("intent", "submit")];
    fields.extend(justification);
    let missing = browser.post("/console/requests", &fields).await;
    assert!(missing.body.contains("needs the setting BRAVE_API_KEY"), "{}", missing.body);
    fields.push(("settings", "BRAVE_API_KEY=bsa-secret-value"));
    let created = browser.post("/console/requests", &fields).await;
    assert_eq!(created.status, 303, "{}", created.body);
    let page = browser.get(created.location()).await;
    assert!(page.body.contains("<dd>pending</dd>") && page.body.contains("BRAVE_API_KEY = ••••"), "{}", page.body);
    assert!(!page.body.contains("bsa-secret-value"), "secrets are never shown");

    // The same command as the active demo server: the form offers access instead.
    let custom = browser.get("/console/requests/new?kind=custom").await;
    let csrf = custom.csrf();
    let binary = binary();
    let mut fields = vec![
        ("csrf", csrf.as_str()),
        ("kind", "custom"),
        ("name", "my-echo"),
        ("description", "An echo server"),
        ("transport", "stdio"),
        ("command", binary),
        ("args", "demo-server"),
        ("intent", "submit"),
    ];
    fields.extend(justification);
    let duplicate = browser.post("/console/requests", &fields).await;
    assert!(duplicate.body.contains("demo is already active"), "{}", duplicate.body);
    assert!(duplicate.body.contains("/console/requests/new?kind=access&amp;access_to=demo"), "{}", duplicate.body);

    // Access to the active server instead.
    let access = browser.get("/console/requests/new?kind=access&access_to=demo").await;
    assert!(access.body.contains("<option value=\"demo\" selected>"), "{}", access.body);
    let csrf = access.csrf();
    let mut fields = vec![("csrf", csrf.as_str()), ("kind", "access"), ("access_to", "demo"), ("intent", "submit")];
    fields.extend(justification);
    let asked = browser.post("/console/requests", &fields).await;
    assert_eq!(asked.status, 303, "{}", asked.body);
    let mine = browser.get("/console/requests").await;
    assert!(
        mine.body.contains("My requests") && mine.body.contains(">demo<") && mine.body.contains(">brave-search<"),
        "{}",
        mine.body
    );
}
