//! The console in a real browser: headless Chromium driven over the W3C WebDriver protocol
//! (ChromeDriver), no JavaScript of ours involved. First-run setup, two-step enrolment, the
//! home page with its stylesheet applied under the CSP, an API key made through a form, and an
//! access rule written in a server's Permissions tab.

use crate::support::*;
use portcullis::auth::totp;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;

/// ChromeDriver on a free port, and one browser session.
struct Driver {
    process: tokio::process::Child,
    http: reqwest::Client,
    base: String,
    session: String,
    profile: std::path::PathBuf,
}

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Driver {
    async fn start() -> Driver {
        let driver = std::path::Path::new("/usr/bin/chromedriver");
        assert!(driver.exists(), "ChromeDriver is missing: `cargo xtask ci` installs chromium and chromium-driver");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let process = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{base}/status")).send().await.ok();
            if let Some(response) = ready
                && response.json::<Value>().await.is_ok_and(|status| status["value"]["ready"] == true)
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "ChromeDriver did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("portcullis-chromium-{}", portcullis::crypto::new_id()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": ["--headless=new", "--no-sandbox",
                "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                format!("--user-data-dir={}", profile.display())]}}}});
        let created: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session =
            created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_owned();
        Driver { process, http, base, session, profile }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(answer["value"].get("error").is_none(), "WebDriver {path}: {answer}");
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None).await.as_str().unwrap().to_owned()
    }

    async fn find(&self, css: &str) -> String {
        let found =
            self.call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_owned()
    }

    async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{element}/text"), None).await.as_str().unwrap().to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text}))).await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    async fn css(&self, css: &str, property: &str) -> String {
        let element = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{element}/css/{property}"), None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Wait (up to 10 s) for the page titled `heading` after a click that navigates.
    async fn wait_for(&self, heading: &str) {
        let wanted = format!("<h1>{heading}</h1>");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let source = self.source().await;
            if source.contains(&wanted) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "never reached {heading:?}; the page is: {source}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None).await.as_str().unwrap().to_owned()
    }

    /// What the page logged (CSP violations appear here).
    async fn console_log(&self) -> Vec<String> {
        let url = format!("{}/session/{}/se/log", self.base, self.session);
        let answer: Value =
            self.http.post(url).json(&json!({"type": "browser"})).send().await.unwrap().json().await.unwrap();
        answer["value"]
            .as_array()
            .map(|entries| entries.iter().map(|entry| entry["message"].to_string()).collect())
            .unwrap_or_default()
    }

    async fn stop(mut self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send().await;
        let _ = self.process.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_new_super_admin_sets_up_portcullis_in_a_real_browser() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &[])).await;
    let link = portcullis::console::first_run_link(gw.store(), &gw.url("")).await.unwrap().unwrap();
    let browser = Driver::start().await;

    browser.go(&link).await;
    browser.type_into("#email", "root@example.com").await;
    browser.type_into("#name", "Root").await;
    browser.type_into("#password", "a long enough passphrase").await;
    browser.type_into("#confirm", "a long enough passphrase").await;
    browser.click("button[type=submit]").await;
    browser.wait_for("Set up two-step sign-in").await;
    assert!(browser.url().await.ends_with("/console/mfa"));
    assert!(browser.source().await.contains("<svg"), "the QR code is drawn");
    let key = browser.text("main code").await;
    let secret = totp::Secret::from_base32(&key).expect("the key is base32");
    browser.type_into("#code", &totp::code(&secret, unix_now())).await;
    browser.click("main button[type=submit]").await;
    browser.wait_for("Recovery codes").await;
    browser.click("main a").await;
    browser.wait_for("My servers").await;
    assert!(browser.url().await.ends_with("/console"), "{}", browser.url().await);
    // The stylesheet applies under the CSP (the body's background comes from it).
    assert_eq!(browser.css("body", "background-color").await, "rgba(246, 247, 249, 1)");

    browser.type_into("#name", "browser key").await;
    browser.click("form[action='/console/api-keys'] button").await;
    browser.wait_for("Your new API key").await;
    let api_key = browser.text("code.secret").await;
    assert!(api_key.starts_with("pcs_"), "{api_key}");
    let servers = reqwest::Client::new().get(gw.url("/api/v1/servers")).bearer_auth(&api_key).send().await.unwrap();
    assert_eq!(servers.status(), 200);

    // A rule written in the Permissions tab's form, saved, and listed with its Cedar policy.
    browser.go(&gw.url("/console/servers/demo/permissions")).await;
    browser.wait_for("Permissions: demo").await;
    browser.type_into("#name", "root uses echo").await;
    browser.type_into("#users", "root@example.com").await;
    browser.type_into("#tools", "echo").await;
    browser.type_into("#conditions", "payload.message starts_with hello").await;
    browser.click("button[value=save]").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut page = browser.source().await;
    while !page.contains("<summary>Cedar</summary>") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        page = browser.source().await;
    }
    assert!(page.contains("root uses echo") && page.contains("<summary>Cedar</summary>"), "{page}");
    assert!(page.contains("payload.message starts_with \"hello\""), "{page}");

    let log = browser.console_log().await;
    assert!(log.iter().all(|line| !line.contains("Content Security Policy")), "CSP violations: {log:?}");
    browser.stop().await;
}

/// Single sign-on in a real browser: the sign-in page's button leads to the provider, its form
/// signs in, and the browser comes back signed in to the console (the pending sign-in's
/// SameSite=Lax cookie survives the trip).
#[tokio::test]
async fn an_employee_signs_in_through_the_identity_provider_in_a_real_browser() {
    let users = json!({"alice": {"password": "alice-pass", "claims": {"email": "alice@example.com", "email_verified": true, "name": "Alice"}}});
    let mut idp = crate::sso::Idp::start(users).await;
    let gw = crate::sso::gateway(&mut idp, StoreKind::Sqlite, |_| {}).await;
    let driver = Driver::start().await;
    driver.go(&gw.url("/login")).await;
    driver.wait_for("Sign in").await;
    assert_eq!(driver.text("a.button").await, "Sign in with Test IdP");
    driver.click("a.button").await;
    driver.wait_for("Test IdP").await;
    assert!(driver.url().await.starts_with(&idp.issuer), "at the provider: {}", driver.url().await);
    driver.type_into("#username", "alice").await;
    driver.type_into("#password", "alice-pass").await;
    driver.click("#submit").await;
    driver.wait_for("My servers").await;
    assert_eq!(driver.url().await, gw.url("/console"));
    assert!(driver.source().await.contains("alice@example.com"));
    driver.stop().await;
    gw.stop().await;
    idp.stop().await;
}
