//! Single sign-on against a real OpenID Connect provider (npm `oidc-provider`, started by
//! `tests/peers/oidc_provider.mjs`): the browser goes to the provider and back, people are
//! created just in time and follow the groups and roles the provider claims, and every way a
//! sign-in can go wrong is refused with a page that says so.

use crate::console::{Browser, Page, between};
use crate::support::*;
use portcullis::config::{ClaimNames, OidcConfig};
use portcullis::registry::Status;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The provider process, killed when dropped.
pub(crate) struct Idp {
    pub(crate) issuer: String,
    users_file: PathBuf,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Idp {
    /// Start the provider; it waits for [`Idp::ready`] to learn the gateway's redirect URI.
    pub(crate) async fn start(users: Value) -> Idp {
        let users_file = std::env::temp_dir().join(format!("portcullis-idp-{}.json", portcullis::crypto::new_id()));
        std::fs::write(&users_file, users.to_string()).unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/oidc_provider.mjs");
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .current_dir(peers_dir().join("node"))
            .env("OIDC_USERS_FILE", &users_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs the test identity provider");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let issuer = loop {
            let line = lines.next_line().await.unwrap().expect("the provider prints its issuer");
            if let Some(issuer) = line.strip_prefix("issuer ") {
                break issuer.to_owned();
            }
        };
        Idp { issuer, users_file, child, stdin, lines }
    }

    async fn ready(&mut self, redirect_uri: &str) {
        let mut stdin = self.stdin.take().unwrap();
        stdin.write_all(format!("{redirect_uri}\n").as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
        while let Some(line) = self.lines.next_line().await.unwrap() {
            if line == "ready" {
                return;
            }
        }
        panic!("the provider stopped before it was ready");
    }

    fn set_users(&self, users: Value) {
        std::fs::write(&self.users_file, users.to_string()).unwrap();
    }

    fn config(&self) -> OidcConfig {
        OidcConfig {
            issuer: self.issuer.clone(),
            client_id: "gateway".into(),
            client_secret: "gateway-secret".into(),
            scopes: ["openid", "email", "profile", "groups"].map(str::to_owned).to_vec(),
            label: "Test IdP".into(),
            jit: true,
            allowed_domains: Vec::new(),
            accept_idp_mfa: true,
            trust_email: false,
            claims: ClaimNames {
                email: "email".into(),
                name: "name".into(),
                groups: "groups".into(),
                roles: "roles".into(),
                department: "department".into(),
                title: "title".into(),
                team: "team".into(),
            },
        }
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_file(&self.users_file);
    }
}

/// The provider's side of the browser: follows its redirects and fills in its login form,
/// keeping its cookies (apart from the gateway's).
struct IdpBrowser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

impl IdpBrowser {
    fn new() -> IdpBrowser {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        IdpBrowser { http, cookies: BTreeMap::new() }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> (u16, String, String) {
        let cookie: Vec<String> = self.cookies.iter().map(|(name, value)| format!("{name}={value}")).collect();
        let response = request.header("cookie", cookie.join("; ")).send().await.unwrap();
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.insert(name.to_owned(), value.to_owned());
        }
        let status = response.status().as_u16();
        let location =
            response.headers().get("location").map(|value| value.to_str().unwrap().to_owned()).unwrap_or_default();
        (status, location, response.text().await.unwrap())
    }

    /// From the provider's authorization URL to the gateway's callback URL, signing in on the way.
    async fn sign_in(&mut self, issuer: &str, authorize: &str, user: &str, password: &str, otp: &str) -> String {
        self.sign_in_to(issuer, authorize, user, password, otp, "/auth/oidc/callback").await
    }

    /// From the provider's authorization URL to the redirect URI containing `until`.
    async fn sign_in_to(
        &mut self,
        issuer: &str,
        authorize: &str,
        user: &str,
        password: &str,
        otp: &str,
        until: &str,
    ) -> String {
        let mut url = authorize.to_owned();
        for _ in 0..10 {
            let (status, location, body) = self.send(self.http.get(&url)).await;
            if status == 200 {
                let action = between(&body, "action=\"", "\"").expect("the provider shows its login form");
                let form = [("username", user), ("password", password), ("otp", otp)];
                let (status, location, body) = self.send(self.http.post(format!("{issuer}{action}")).form(&form)).await;
                assert_eq!(status, 303, "the provider accepts {user}: {body}");
                url = location;
                continue;
            }
            assert!(matches!(status, 302 | 303), "the provider answered {status}: {body}");
            let absolute = if location.starts_with('/') { format!("{issuer}{location}") } else { location };
            if absolute.contains(until) {
                return absolute;
            }
            url = absolute;
        }
        panic!("the provider never sent the browser back");
    }
}

/// Sign in through the provider; returns the gateway's answer to the callback.
async fn sso(browser: &mut Browser, idp: &Idp, user: &str, password: &str, otp: &str, next: Option<&str>) -> Page {
    let start = match next {
        Some(next) => format!("/auth/oidc/login?next={}", portcullis::console::url_encode(next)),
        None => "/auth/oidc/login".to_owned(),
    };
    let leaving = browser.get(&start).await;
    assert_eq!(leaving.status, 303, "{}", leaving.body);
    assert!(leaving.location().starts_with(&format!("{}/auth?", idp.issuer)), "{}", leaving.location());
    for parameter in ["code_challenge_method=S256", "nonce=", "state=", "scope=openid%20email%20profile%20groups"] {
        assert!(leaving.location().contains(parameter), "{parameter} in {}", leaving.location());
    }
    let callback = IdpBrowser::new().sign_in(&idp.issuer, leaving.location(), user, password, otp).await;
    assert!(callback.contains("iss="), "RFC 9207: the provider names itself: {callback}");
    let path = callback.strip_prefix(&browser.base).expect("the provider returns to this gateway").to_owned();
    browser.get(&path).await
}

fn alice(groups: &[&str]) -> Value {
    json!({"alice": {"password": "alice-pass", "claims": {
        "email": "Alice@Example.com", "email_verified": true, "name": "Alice Liddell",
        "groups": groups, "roles": ["support"], "department": "R&D", "title": "Engineer",
    }}})
}

pub(crate) async fn gateway(
    idp: &mut Idp,
    store: StoreKind,
    tweak: impl FnOnce(&mut OidcConfig) + Send + 'static,
) -> TestGateway {
    let mut oidc = idp.config();
    tweak(&mut oidc);
    let gw = TestGateway::start_with(Options {
        store,
        tweak: Box::new(move |config| config.oidc = Some(oidc)),
        ..Options::default()
    })
    .await;
    idp.ready(&gw.url("/auth/oidc/callback")).await;
    gw
}

async fn person(gw: &TestGateway, email: &str) -> portcullis::registry::Person {
    let mut connection = gw.store().pool.acquire().await.unwrap();
    portcullis::store::directory::person_by_email(&mut connection, email).await.unwrap().expect("the person exists")
}

fn group_names(person: &portcullis::registry::Person) -> Vec<String> {
    let mut names: Vec<String> = person.groups.iter().map(|(_, name)| name.clone()).collect();
    names.sort();
    names
}

async fn people_sign_in_and_follow_their_claims(store: StoreKind) {
    let mut idp = Idp::start(alice(&["Engineering", "Support"])).await;
    let gw = gateway(&mut idp, store.clone(), |_| {}).await;
    // An admin-managed group alice is in, which no claim can take away.
    gw.apply("[[users]]\nemail = \"bob@example.com\"\ngroups = [\"Local\", \"Prod-Deploy\"]\n").await;
    let mut browser = Browser::new(&gw);
    let login = browser.get("/login").await;
    assert!(login.body.contains("href=\"/auth/oidc/login\">Sign in with Test IdP</a>"), "{}", login.body);

    let back = sso(&mut browser, &idp, "alice", "alice-pass", "", None).await;
    assert_eq!((back.status, back.location()), (303, "/console"), "{}", back.body);
    let home = browser.get("/console").await;
    assert_eq!(home.status, 200);
    assert!(home.body.contains("alice@example.com"), "{}", home.body);

    // Created just in time, with what the provider claims.
    let created = person(&gw, "alice@example.com").await;
    assert_eq!(created.source, "oidc");
    assert_eq!(
        (created.name.as_str(), created.department.as_str(), created.title.as_str()),
        ("Alice Liddell", "R&D", "Engineer")
    );
    assert_eq!(created.roles, ["support"]);
    assert_eq!(group_names(&created), ["Engineering", "Support"]);
    assert!(created.last_login_at.is_some());
    let audit = gw.audit().await;
    assert!(
        audit.iter().any(|event| event.method == "console/login"
            && event.decision == "allow"
            && event.principal == "alice@example.com"),
        "the sign-in is audited"
    );

    // An admin adds her to a local group; the provider drops Support and adds Ops.
    gw.apply("[[users]]\nemail = \"alice@example.com\"\ngroups = [\"Local\", \"Engineering\", \"Support\"]\n").await;
    idp.set_users(alice(&["engineering", "Ops", "prod-deploy"]));
    let mut again = Browser::new(&gw);
    let next = "/oauth/authorize?client_id=x";
    let back = sso(&mut again, &idp, "alice", "alice-pass", "", Some(next)).await;
    assert_eq!((back.status, back.location()), (303, next), "the sign-in continues where it was asked for");
    let followed = person(&gw, "alice@example.com").await;
    assert_eq!(followed.id, created.id, "the same person, found by the linked subject");
    assert_eq!(
        group_names(&followed),
        ["Engineering", "Local", "Ops"],
        "Support (created by sign-in) left; Local stays"
    );

    // The callback is good once.
    let replay = browser.get("/auth/oidc/callback?code=x&state=y").await;
    assert_eq!(replay.status, 400);
    assert!(replay.body.contains("not valid any more"), "{}", replay.body);

    gw.stop().await;
    idp.stop().await;
}

#[tokio::test]
async fn people_sign_in_through_the_provider_and_follow_their_claims() {
    people_sign_in_and_follow_their_claims(StoreKind::Sqlite).await;
}

#[tokio::test]
async fn people_sign_in_through_the_provider_and_follow_their_claims_on_postgres() {
    let (url, name) = fresh_postgres_database().await;
    people_sign_in_and_follow_their_claims(StoreKind::Postgres(url, name.clone())).await;
    drop_postgres_database(&name).await;
}

#[tokio::test]
async fn sign_ins_that_must_not_work_are_refused_with_a_reason() {
    let users = json!({
        "bob": {"password": "bob-pass", "claims": {"email": "bob@example.com", "email_verified": true}},
        "sam": {"password": "sam-pass", "claims": {"email": "sam@example.com"}},
        "eve": {"password": "eve-pass", "claims": {"email": "eve@example.com", "email_verified": false}},
        "zed": {"password": "zed-pass", "claims": {"email": "zed@elsewhere.org", "email_verified": true}},
    });
    let mut idp = Idp::start(users).await;
    let gw = gateway(&mut idp, StoreKind::Sqlite, |oidc| {
        oidc.jit = false;
        oidc.allowed_domains = vec!["example.com".into()];
    })
    .await;
    gw.apply("[[users]]\nemail = \"bob@example.com\"\n\n[[users]]\nemail = \"sam@example.com\"\n\n[[users]]\nemail = \"eve@example.com\"\n")
        .await;
    let refused = |page: &Page, status: u16, text: &str| {
        assert_eq!(page.status, status, "{}", page.body);
        assert!(page.body.contains(text), "{text:?} in {}", page.body);
        assert!(
            !page
                .headers
                .get_all("set-cookie")
                .iter()
                .any(|value| value.to_str().unwrap().starts_with("portcullis_session="))
        );
    };

    // Known people sign in with a verified email; linking happens once, and later sign-ins
    // find them by their identity at the provider even without the claim.
    let bob = sso(&mut Browser::new(&gw), &idp, "bob", "bob-pass", "", None).await;
    assert_eq!((bob.status, bob.location()), (303, "/console"), "{}", bob.body);
    // An email the provider does not vouch for decides nothing (unless trust_email is set).
    refused(
        &sso(&mut Browser::new(&gw), &idp, "sam", "sam-pass", "", None).await,
        403,
        "does not say your email address is verified",
    );
    idp.set_users(json!({
        "sam": {"password": "sam-pass", "claims": {"email": "sam@example.com", "email_verified": true}},
    }));
    assert_eq!(sso(&mut Browser::new(&gw), &idp, "sam", "sam-pass", "", None).await.status, 303);
    // Just-in-time creation is off: no account, no entry.
    idp.set_users(json!({
        "bob": {"password": "bob-pass", "claims": {"email": "bob@example.com"}},
        "sam": {"password": "sam-pass", "claims": {"email": "sam@example.com"}},
        "eve": {"password": "eve-pass", "claims": {"email": "eve@example.com", "email_verified": false}},
        "zed": {"password": "zed-pass", "claims": {"email": "zed@elsewhere.org", "email_verified": true}},
        "newcomer": {"password": "n-pass", "claims": {"email": "newcomer@example.com", "email_verified": true}},
        "impostor": {"password": "i-pass", "claims": {"email": "bob@example.com", "email_verified": true}},
    }));
    refused(
        &sso(&mut Browser::new(&gw), &idp, "newcomer", "n-pass", "", None).await,
        403,
        "no Portcullis account for newcomer@example.com",
    );
    // An unverified email links nobody.
    refused(&sso(&mut Browser::new(&gw), &idp, "eve", "eve-pass", "", None).await, 403, "not verified");
    // Another domain is turned away.
    refused(
        &sso(&mut Browser::new(&gw), &idp, "zed", "zed-pass", "", None).await,
        403,
        "Accounts of elsewhere.org cannot sign in here",
    );
    // Another identity at the provider that now claims bob's email does not get bob's account.
    refused(
        &sso(&mut Browser::new(&gw), &idp, "impostor", "i-pass", "", None).await,
        403,
        "belongs to a different identity",
    );
    // Suspended people are refused.
    {
        let mut connection = gw.store().pool.acquire().await.unwrap();
        portcullis::store::directory::set_status(&mut connection, "sam@example.com", Status::Suspended).await.unwrap();
    }
    refused(&sso(&mut Browser::new(&gw), &idp, "sam", "sam-pass", "", None).await, 403, "Your account is suspended");

    // The provider's refusal is shown; a response naming another issuer (mix-up) and a state
    // that is not this browser's are refused.
    let mut browser = Browser::new(&gw);
    let leaving = browser.get("/auth/oidc/login").await;
    let state = between(leaving.location(), "state=", "&").unwrap();
    let iss = portcullis::console::url_encode(&idp.issuer);
    let denied = browser
        .get(&format!(
            "/auth/oidc/callback?error=access_denied&error_description=User%20not%20assigned&state={state}&iss={iss}"
        ))
        .await;
    refused(&denied, 403, "did not sign you in: User not assigned");
    let leaving = browser.get("/auth/oidc/login").await;
    let state = between(leaving.location(), "state=", "&").unwrap();
    let mixed =
        browser.get(&format!("/auth/oidc/callback?code=abc&state={state}&iss=https%3A%2F%2Fevil.example")).await;
    refused(&mixed, 400, "could not be verified");
    browser.get("/auth/oidc/login").await;
    let forged = browser.get("/auth/oidc/callback?code=abc&state=not-the-state").await;
    refused(&forged, 400, "not valid any more");
    // A code that the provider never issued.
    let leaving = browser.get("/auth/oidc/login").await;
    let state = between(leaving.location(), "state=", "&").unwrap();
    let made_up = browser.get(&format!("/auth/oidc/callback?code=made-up&state={state}&iss={iss}")).await;
    refused(&made_up, 400, "could not be verified");

    let audit = gw.audit().await;
    let reasons: Vec<&str> = audit
        .iter()
        .filter(|event| event.method == "console/login" && event.decision == "deny")
        .map(|event| event.reason.as_str())
        .collect();
    for expected in [
        "just-in-time creation is off",
        "email not verified",
        "email domain elsewhere.org",
        "linked to another subject",
        "the account is suspended",
        "access_denied",
        "issuer",
    ] {
        assert!(reasons.iter().any(|reason| reason.contains(expected)), "{expected:?} in {reasons:?}");
    }
    gw.stop().await;
    idp.stop().await;
}

#[tokio::test]
async fn admins_need_a_second_factor_unless_the_provider_proved_one() {
    let users = json!({"root": {"password": "root-pass", "otp": "424242", "claims": {"email": "root@example.com", "email_verified": true}}});
    let mut idp = Idp::start(users).await;
    let gw = gateway(&mut idp, StoreKind::Sqlite, |_| {}).await;
    gw.apply("[[users]]\nemail = \"root@example.com\"\nadmin = true\n").await;
    // Password alone at the provider: the admin must still enrol a second factor here.
    let mut browser = Browser::new(&gw);
    let back = sso(&mut browser, &idp, "root", "root-pass", "", None).await;
    assert_eq!((back.status, back.location()), (303, "/console/mfa"), "{}", back.body);
    assert_eq!(browser.get("/console/users").await.location(), "/console/mfa");
    // A one-time code at the provider (amr otp): straight in.
    let mut browser = Browser::new(&gw);
    let back = sso(&mut browser, &idp, "root", "root-pass", "424242", None).await;
    assert_eq!((back.status, back.location()), (303, "/console"), "{}", back.body);
    assert_eq!(browser.get("/console/users").await.status, 200);
    let settings = browser.get("/console/settings").await;
    let callback = gw.url("/auth/oidc/callback");
    for shown in [idp.issuer.as_str(), callback.as_str(), "Test IdP"] {
        assert!(settings.body.contains(shown), "{shown} on the settings page: {}", settings.body);
    }
    assert!(!settings.body.contains("gateway-secret"), "the client secret is never shown");
    gw.stop().await;
    idp.stop().await;

    // An admin who does not trust the provider's MFA keeps the second step here; this provider
    // sends no email_verified at all, which `trust_email` accepts.
    let mut idp = Idp::start(
        json!({"root": {"password": "root-pass", "otp": "424242", "claims": {"email": "root@example.com"}}}),
    )
    .await;
    let gw = gateway(&mut idp, StoreKind::Sqlite, |oidc| {
        oidc.accept_idp_mfa = false;
        oidc.trust_email = true;
    })
    .await;
    gw.apply("[[users]]\nemail = \"root@example.com\"\nadmin = true\n").await;
    let back = sso(&mut Browser::new(&gw), &idp, "root", "root-pass", "424242", None).await;
    assert_eq!(back.location(), "/console/mfa");
    gw.stop().await;
    idp.stop().await;
}

/// Tokens that are not this gateway's access tokens are refused at the MCP endpoint with 401:
/// the provider's real ID token and access token, JWTs with `alg: none` or signed by anyone,
/// and an expired Portcullis token.
#[tokio::test]
async fn tokens_that_are_not_this_gateways_are_refused() {
    use base64::Engine;
    let users =
        json!({"ann": {"password": "ann-pass", "claims": {"email": "ann@example.com", "email_verified": true}}});
    let mut idp = Idp::start(users).await;
    let gw = gateway(&mut idp, StoreKind::Sqlite, |_| {}).await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;

    // The provider's own tokens, through its public test client.
    let verifier = "a-verifier-that-is-long-enough-for-pkce-0123456789";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    let authorize = format!(
        "{}/auth?response_type=code&client_id=tester&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&scope=openid%20email&nonce=n1&state=s1&code_challenge={challenge}&code_challenge_method=S256",
        idp.issuer
    );
    let back = IdpBrowser::new().sign_in_to(&idp.issuer, &authorize, "ann", "ann-pass", "", "127.0.0.1:9/cb").await;
    let code = between(&format!("{back}&"), "code=", "&").unwrap();
    let tokens: Value = reqwest::Client::new()
        .post(format!("{}/token", idp.issuer))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("client_id", "tester"),
            ("redirect_uri", "http://127.0.0.1:9/cb"),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id_token = tokens["id_token"].as_str().expect("the provider issued an ID token").to_owned();
    let idp_access = tokens["access_token"].as_str().expect("and an access token").to_owned();

    let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    let claims =
        encode(&format!(r#"{{"iss":"{}","sub":"ann","aud":"{}","exp":9999999999}}"#, gw.url(""), gw.url("/mcp/demo")));
    let unsigned = format!("{}.{claims}.", encode(r#"{"alg":"none","typ":"at+jwt"}"#));
    let forged = format!("{}.{claims}.{}", encode(r#"{"alg":"HS256","typ":"at+jwt"}"#), encode("not a signature"));

    // An expired token of this gateway's own.
    let expired = "pco_expired-token-for-the-test-0123456789";
    {
        let mut connection = gw.store().pool.acquire().await.unwrap();
        let ann = portcullis::store::accounts::by_email(&mut connection, "ann@example.com").await.unwrap().unwrap();
        portcullis::store::oauth::save_client(
            &mut connection,
            &portcullis::store::oauth::Client { id: "pcl_test".into(), name: "t".into(), redirect_uris: vec![] },
        )
        .await
        .unwrap();
        let token = portcullis::store::oauth::Token {
            kind: "access".into(),
            family: "f1".into(),
            client_id: "pcl_test".into(),
            user_id: ann.user_id,
            resource: "/mcp/demo".into(),
            expires_at: portcullis::store::now_ms() - 1000,
            used: false,
            revoked: false,
        };
        let hash = portcullis::crypto::sha256_hex(expired.as_bytes());
        portcullis::store::oauth::insert_token(&mut connection, &hash, &token).await.unwrap();
    }
    gw.state.snapshot.reload(gw.store(), &gw.state.keys).await.unwrap();

    for (what, token) in [
        ("the provider's ID token", id_token.as_str()),
        ("the provider's access token", idp_access.as_str()),
        ("an unsigned JWT (alg none)", unsigned.as_str()),
        ("a forged JWT", forged.as_str()),
        ("an expired access token", expired),
    ] {
        let mut client = gw.client("demo", Some(token));
        let refused = client.initialize().await;
        assert_eq!(refused.status, 401, "{what}: {}", refused.text);
        let challenge = refused.headers.get("www-authenticate").map(|value| value.to_str().unwrap().to_owned());
        assert!(
            challenge.as_deref().is_some_and(|challenge| challenge.contains("resource_metadata=")),
            "{what}: {challenge:?}"
        );
    }
    gw.stop().await;
    idp.stop().await;
}
