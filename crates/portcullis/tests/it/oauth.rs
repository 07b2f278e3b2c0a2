//! The OAuth authorization server as an MCP client meets it: discovery from a 401, dynamic
//! registration, sign-in and consent in the console, code + PKCE, resource-bound tokens,
//! rotation with reuse detection, and revocation.

use crate::console::{Browser, between};
use crate::support::*;
use serde_json::{Value, json};

fn s256(verifier: &str) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// The hidden fields of the first form on a page.
fn hidden_fields(body: &str) -> Vec<(String, String)> {
    let form = body.split("</form>").find(|part| part.contains("name=\"decision\"")).unwrap();
    form.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .filter_map(|part| {
            let (name, rest) = part.split_once('"')?;
            let value = between(rest, "value=\"", "\"")?;
            Some((name.to_owned(), unescape(&value)))
        })
        .collect()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(key, _)| *key == name).map(|(_, value)| {
        let bytes = value.as_bytes();
        let mut out = Vec::new();
        let mut index = 0;
        while index < bytes.len() {
            if bytes[index] == b'%' && index + 2 < bytes.len() + 1 {
                out.push(u8::from_str_radix(&value[index + 1..index + 3], 16).unwrap());
                index += 3;
            } else {
                out.push(bytes[index]);
                index += 1;
            }
        }
        String::from_utf8(out).unwrap()
    })
}

async fn token(gw: &TestGateway, form: &[(&str, &str)]) -> (u16, Value, reqwest::header::HeaderMap) {
    let response = reqwest::Client::new().post(gw.url("/oauth/token")).form(form).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.json().await.unwrap(), headers)
}

#[tokio::test]
async fn an_mcp_client_gets_a_token_through_discovery_registration_and_consent() {
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "{}\n{}\n[[grants]]\nserver = \"second\"\nusers = [\"ann@example.com\"]\n",
        demo_server_toml("demo", &["ann@example.com"]),
        demo_server_toml("second", &[])
    ))
    .await;
    portcullis::cli::set_password(gw.store(), "ann@example.com", "ann's long passphrase").await.unwrap();
    let base = gw.url("");
    let http = reqwest::Client::new();

    // Discovery starts from the 401.
    let refused =
        http.post(gw.url("/mcp/demo")).header("content-type", "application/json").body("{}").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let metadata_url = format!("{base}/.well-known/oauth-protected-resource/mcp/demo");
    assert!(challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")), "{challenge}");
    let resource: Value = http.get(&metadata_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(resource["resource"], format!("{base}/mcp/demo"));
    assert_eq!(resource["authorization_servers"], json!([base]));
    let server: Value =
        http.get(gw.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(server["issuer"], base);
    assert_eq!(server["code_challenge_methods_supported"], json!(["S256"]));
    let alias: Value =
        http.get(gw.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(alias["token_endpoint"], server["token_endpoint"]);

    // Registration: redirect URIs are checked.
    let bad = http
        .post(gw.url("/oauth/register"))
        .json(&json!({"client_name": "x", "redirect_uris": ["javascript:alert(1)"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["error"], "invalid_redirect_uri");
    let redirect_uri = "http://127.0.0.1:9/callback";
    let registered: Value = http
        .post(gw.url("/oauth/register"))
        .json(&json!({"client_name": "Test <Client>", "redirect_uris": [redirect_uri]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap().to_owned();

    // Authorization: sign in, see who asks for what, approve.
    let verifier = "a-verifier-that-is-long-enough-for-pkce-0123456789";
    let authorize = format!(
        "/oauth/authorize?response_type=code&client_id={client_id}&redirect_uri={}&code_challenge={}&code_challenge_method=S256&state=xyz&resource={}",
        encode(redirect_uri),
        s256(verifier),
        encode(&format!("{base}/mcp/demo"))
    );
    let mut browser = Browser::new(&gw);
    let to_login = browser.get(&authorize).await;
    assert_eq!(to_login.status, 303);
    assert!(to_login.location().starts_with("/login?next="), "{}", to_login.location());
    let login = browser.get(to_login.location()).await;
    let next = between(&login.body, "name=\"next\" value=\"", "\"").map(|next| unescape(&next)).unwrap();
    let signed_in = browser
        .post(
            "/login",
            &[
                ("csrf", &login.csrf()),
                ("email", "ann@example.com"),
                ("password", "ann's long passphrase"),
                ("next", &next),
            ],
        )
        .await;
    assert_eq!(signed_in.location(), authorize, "back to the authorization after signing in");
    let consent = browser.get(&authorize).await;
    assert_eq!(consent.status, 200, "{}", consent.body);
    assert!(consent.body.contains("Test &lt;Client&gt; asks to use the server demo"), "{}", consent.body);
    let fields = hidden_fields(&consent.body);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let approved = browser.post("/oauth/authorize", &fields).await;
    assert_eq!(approved.status, 303);
    let location = approved.location().to_owned();
    assert!(location.starts_with(redirect_uri), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some("xyz"));
    assert_eq!(query_param(&location, "iss").as_deref(), Some(base.as_str()));
    let code = query_param(&location, "code").unwrap();

    // The token request: PKCE checked, tokens not cached.
    let (status, wrong, _) = token(
        &gw,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &client_id),
            ("redirect_uri", redirect_uri),
            ("code_verifier", "not-the-verifier-at-all-not-the-verifier-at-all"),
        ],
    )
    .await;
    assert_eq!((status, wrong["error"].as_str()), (400, Some("invalid_grant")));
    // That code is now spent; a new authorization gives another.
    let approved = browser.post("/oauth/authorize", &fields).await;
    let code = query_param(approved.location(), "code").unwrap();
    let (status, granted, headers) = token(
        &gw,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &client_id),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{granted}");
    assert_eq!(headers["cache-control"], "no-store");
    let access = granted["access_token"].as_str().unwrap().to_owned();
    let refresh = granted["refresh_token"].as_str().unwrap().to_owned();

    // The token works for the server it was requested for, and nowhere else.
    let mut client = gw.client("demo", Some(&access));
    assert_eq!(client.initialize().await.status, 200);
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "via oauth"})).await), "via oauth");
    let mut elsewhere = gw.client("second", Some(&access));
    let refused = elsewhere.initialize().await;
    assert_eq!(refused.status, 401);
    assert!(refused.text.contains("/mcp/demo"), "{}", refused.text);
    let api = http.get(gw.url("/api/v1/servers")).bearer_auth(&access).send().await.unwrap();
    assert_eq!(api.status(), 401, "MCP tokens are not API keys");

    // Refresh rotates; presenting the old refresh token again revokes the whole family.
    let (status, rotated, _) =
        token(&gw, &[("grant_type", "refresh_token"), ("refresh_token", &refresh), ("client_id", &client_id)]).await;
    assert_eq!(status, 200, "{rotated}");
    let new_access = rotated["access_token"].as_str().unwrap().to_owned();
    let mut rotated_client = gw.client("demo", Some(&new_access));
    assert_eq!(rotated_client.initialize().await.status, 200);
    let (status, reused, _) =
        token(&gw, &[("grant_type", "refresh_token"), ("refresh_token", &refresh), ("client_id", &client_id)]).await;
    assert_eq!((status, reused["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(rotated_client.call_tool("echo", json!({"message": "x"})).await.status, 401, "the family is revoked");
    assert_eq!(client.call_tool("echo", json!({"message": "x"})).await.status, 401);

    // A code used twice is refused (and what it gave is revoked).
    let (status, replayed, _) = token(
        &gw,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &client_id),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!((status, replayed["error"].as_str()), (400, Some("invalid_grant")));

    // Revocation (RFC 7009).
    let approved = browser.post("/oauth/authorize", &fields).await;
    let code = query_param(approved.location(), "code").unwrap();
    let (_, granted, _) = token(
        &gw,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &client_id),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ],
    )
    .await;
    let access = granted["access_token"].as_str().unwrap().to_owned();
    let mut client = gw.client("demo", Some(&access));
    assert_eq!(client.initialize().await.status, 200);
    let revoked = http.post(gw.url("/oauth/revoke")).form(&[("token", access.as_str())]).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(client.call_tool("echo", json!({"message": "x"})).await.status, 401);
}

#[tokio::test]
async fn bad_authorization_requests_are_refused_the_standard_way() {
    let gw = TestGateway::start().await;
    gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    let base = gw.url("");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let registered: Value = http
        .post(gw.url("/oauth/register"))
        .json(&json!({"client_name": "c", "redirect_uris": ["http://127.0.0.1:9/cb"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap();
    let resource = encode(&format!("{base}/mcp/demo"));
    let ask = |query: String| {
        let request = http.get(gw.url(&format!("/oauth/authorize?{query}")));
        async move { request.send().await.unwrap() }
    };
    // An unregistered redirect URI gets a page, never a redirect.
    let page = ask(format!("response_type=code&client_id={client_id}&redirect_uri={}&code_challenge=x&code_challenge_method=S256&resource={resource}", encode("http://127.0.0.1:9/evil"))).await;
    assert_eq!(page.status(), 400);
    assert!(page.headers().get("location").is_none());
    // Before anyone signs in, a bad request never bounces the browser to the client (anyone
    // may register one): it goes to the sign-in page.
    let unsigned = ask(format!("response_type=code&client_id={client_id}&state=s&resource={resource}")).await;
    assert!(unsigned.headers()["location"].to_str().unwrap().starts_with("/login?next="));
    // Signed in: without PKCE, or with plain, the error goes to the client's redirect URI.
    portcullis::cli::set_password(gw.store(), "ann@example.com", "ann's long passphrase").await.unwrap();
    let mut browser = Browser::new(&gw);
    let login = browser.get("/login").await;
    browser
        .post("/login", &[("csrf", &login.csrf()), ("email", "ann@example.com"), ("password", "ann's long passphrase")])
        .await;
    for query in [
        format!("response_type=code&client_id={client_id}&state=s&resource={resource}"),
        format!(
            "response_type=code&client_id={client_id}&state=s&code_challenge=x&code_challenge_method=plain&resource={resource}"
        ),
    ] {
        let refused = browser.get(&format!("/oauth/authorize?{query}")).await;
        assert_eq!(refused.status, 303);
        let location = refused.location().to_owned();
        assert!(location.starts_with("http://127.0.0.1:9/cb?error=invalid_request"), "{location}");
        assert!(location.contains("state=s"), "{location}");
    }
    // A resource that is not one of ours.
    let elsewhere = encode("https://elsewhere.example.com/mcp");
    let refused = browser
        .get(&format!(
            "/oauth/authorize?response_type=code&client_id={client_id}&code_challenge=x&code_challenge_method=S256&resource={elsewhere}"
        ))
        .await;
    assert!(refused.location().contains("error=invalid_target"), "{}", refused.location());
    // An unknown client.
    let unknown = ask(format!(
        "response_type=code&client_id=pcl_nobody&code_challenge=x&code_challenge_method=S256&resource={resource}"
    ))
    .await;
    assert_eq!(unknown.status(), 400);
    // Unknown grant types and forged tokens.
    let (status, body, _) = token(&gw, &[("grant_type", "password")]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_grant_type")));
    let forged = gw.client("demo", Some("pco_forged")).initialize().await;
    assert_eq!(forged.status, 401);
    // The default endpoints of 2025-03-26 clients that find no metadata answer the same way.
    let fallback = http.get(gw.url("/authorize?response_type=code&client_id=pcl_nobody")).send().await.unwrap();
    assert_eq!(fallback.status(), 400);
    let fallback = http.post(gw.url("/token")).form(&[("grant_type", "password")]).send().await.unwrap();
    assert_eq!(fallback.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
    let registered = http
        .post(gw.url("/register"))
        .json(&json!({"redirect_uris": ["https://app.example.com/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
}

#[tokio::test]
async fn a_client_identified_by_its_metadata_document_url_gets_a_token() {
    let redirect_uri = "http://127.0.0.1:9/callback";
    let host = ClientDocuments::start(redirect_uri).await;
    let (documents, fetched) = (host.base.clone(), host.fetched.clone());
    let gw = host.gateway().await;
    let base = gw.url("");
    let metadata: Value =
        reqwest::get(gw.url("/.well-known/oauth-authorization-server")).await.unwrap().json().await.unwrap();
    assert_eq!(metadata["client_id_metadata_document_supported"], true);

    let verifier = "a-verifier-that-is-long-enough-for-pkce-0123456789";
    let authorize = |client_id: &str| {
        format!(
            "/oauth/authorize?response_type=code&client_id={}&redirect_uri={}&code_challenge={}&code_challenge_method=S256&state=s1&resource={}",
            encode(client_id),
            encode(redirect_uri),
            s256(verifier),
            encode(&format!("{base}/mcp/demo"))
        )
    };
    let client_id = format!("{documents}/client.json");
    let mut browser = Browser::new(&gw);
    // Nobody signed in: the document is not fetched for an anonymous request.
    let to_login = browser.get(&authorize(&client_id)).await;
    assert!(to_login.location().starts_with("/login?next="), "{}", to_login.location());
    assert!(fetched.lock().unwrap().is_empty(), "no fetch before sign-in");
    let login = browser.get("/login").await;
    let signed_in = browser
        .post("/login", &[("csrf", &login.csrf()), ("email", "ann@example.com"), ("password", "ann's long passphrase")])
        .await;
    assert_eq!(signed_in.status, 303);

    let consent = browser.get(&authorize(&client_id)).await;
    assert_eq!(consent.status, 200, "{}", consent.body);
    assert!(consent.body.contains("Document App (from 127.0.0.1) asks to use the server demo"), "{}", consent.body);
    let fields = hidden_fields(&consent.body);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let approved = browser.post("/oauth/authorize", &fields).await;
    assert_eq!(approved.status, 303, "{}", approved.body);
    let code = query_param(approved.location(), "code").unwrap();
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("client_id", client_id.as_str()),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
    ];
    let (status, granted, _) = token(&gw, &exchange).await;
    assert_eq!(status, 200, "{granted}");
    let mut client = gw.client("demo", Some(granted["access_token"].as_str().unwrap()));
    assert_eq!(client.initialize().await.status, 200);
    let (status, refreshed, _) = token(
        &gw,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", granted["refresh_token"].as_str().unwrap()),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(
        fetched.lock().unwrap().as_slice(),
        ["GET /client.json"],
        "fetched once for the consent page and the approval (kept as max-age says)"
    );

    // Documents that must not be used, and addresses that must not be fetched.
    for (client_id, problem) in [
        (format!("{documents}/other.json"), "client_id is not its own URL"),
        (format!("{documents}/redirect.json"), "redirects are not followed"),
        (format!("{documents}/big.json"), "larger than 5120 bytes"),
        (format!("{documents}/missing.json"), "answered 404"),
        ("https://10.0.0.7/client.json".to_owned(), "10.0.0.7, which is not a public address"),
        ("https://169.254.169.254/latest/meta-data.json".to_owned(), "not a public address"),
        ("https://[::ffff:7f00:2]/client.json".to_owned(), "not a public address"),
        ("https://127.0.0.1:1/x/../client.json".to_owned(), "not in normal form"),
    ] {
        let page = browser.get(&authorize(&client_id)).await;
        assert_eq!(page.status, 400, "{client_id}: {}", page.body);
        assert!(page.body.contains(problem), "{client_id}: {problem:?} in {}", page.body);
        assert!(page.location().is_empty(), "never a redirect for an untrusted client");
    }
    gw.stop().await;
    host.stop().await;
}

/// Per-user OAuth to an upstream: a second Portcullis, whose MCP endpoint is an OAuth-protected
/// resource with its own authorization server, is the upstream. A person connects their own
/// account from the console (discovery, dynamic registration, consent at the upstream, code +
/// PKCE); their calls then carry their token, refreshed (with rotation) when it expires; a
/// person who did not connect is told where to; a token the upstream refuses for good leads to
/// "needs reconnect".
#[tokio::test]
async fn a_person_connects_their_own_account_to_an_upstream_that_uses_oauth() {
    let upstream = TestGateway::start().await;
    upstream.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
    portcullis::cli::set_password(upstream.store(), "ann@example.com", "a long upstream passphrase").await.unwrap();
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "[[servers]]\nname = \"remote\"\ntransport = \"streamable-http\"\nurl = \"{}\"\noauth = {{ internal = true }}\n\
         [[users]]\nemail = \"ann@example.com\"\n[[users]]\nemail = \"bob@example.com\"\n\
         [[grants]]\nserver = \"remote\"\nusers = [\"ann@example.com\", \"bob@example.com\"]\n",
        upstream.url("/mcp/demo")
    ))
    .await;
    portcullis::cli::set_password(gw.store(), "ann@example.com", "a long gateway passphrase").await.unwrap();
    let ann_key = gw.api_key("ann@example.com").await;
    let bob_key = gw.api_key("bob@example.com").await;

    // Before connecting, a call says where to connect.
    let mut client = gw.client("remote", Some(&ann_key));
    let refused = client.initialize().await;
    assert_eq!(refused.error_code(), Some(-32037), "{:?}", refused.last());
    assert!(refused.error_message().contains("/console/connect/remote"), "{:?}", refused.last());

    // Connect: sign in here, go to the upstream's authorization server, consent there, back.
    let mut here = Browser::new(&gw);
    let login = here.get("/login").await;
    let signed_in = here
        .post(
            "/login",
            &[("csrf", &login.csrf()), ("email", "ann@example.com"), ("password", "a long gateway passphrase")],
        )
        .await;
    assert_eq!(signed_in.location(), "/console");
    let home = here.get("/console").await;
    assert!(
        home.body.contains("Not connected") && home.body.contains("href=\"/console/connect/remote\""),
        "{}",
        home.body
    );
    let start = here.get("/console/connect/remote").await;
    assert_eq!(start.status, 303, "{}", start.body);
    let authorize =
        start.location().strip_prefix(&upstream.url("")).expect("to the upstream's authorization server").to_owned();
    assert!(
        authorize.starts_with("/oauth/authorize?") && authorize.contains("code_challenge_method=S256"),
        "{authorize}"
    );
    let mut there = Browser::new(&upstream);
    let to_login = there.get(&authorize).await;
    let login = there.get(to_login.location()).await;
    let next = between(&login.body, "name=\"next\" value=\"", "\"").map(|next| unescape(&next)).unwrap();
    there
        .post(
            "/login",
            &[
                ("csrf", &login.csrf()),
                ("email", "ann@example.com"),
                ("password", "a long upstream passphrase"),
                ("next", &next),
            ],
        )
        .await;
    let consent = there.get(&authorize).await;
    assert!(consent.body.contains("Portcullis MCP gateway asks to use the server demo"), "{}", consent.body);
    let fields = hidden_fields(&consent.body);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let approved = there.post("/oauth/authorize", &fields).await;
    let back = approved.location().strip_prefix(&gw.url("")).expect("back to this gateway").to_owned();
    assert!(back.starts_with("/oauth/upstream/callback?"), "{back}");
    let done = here.get(&back).await;
    assert!(done.body.contains("Your account is connected"), "{}", done.body);
    assert!(here.get("/console").await.body.contains("Connected"));

    // The person's calls now act as them at the upstream.
    let mut client = gw.client("remote", Some(&ann_key));
    client.initialize().await;
    assert_eq!(client.tool_names().await, ["echo", "add"]);
    assert_eq!(text_of(&client.call_tool("echo", json!({"message": "as ann"})).await), "as ann");
    // The gateway pins the server's tools, reading it with the account of someone who uses it.
    let mut pinned = Vec::new();
    for _ in 0..100 {
        let mut connection = gw.store().pool.acquire().await.unwrap();
        pinned = portcullis::store::pins::list(&mut connection, Some("remote")).await.unwrap();
        if !pinned.is_empty() {
            break;
        }
        drop(connection);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let names: Vec<&str> = pinned.iter().map(|pin| pin.name.as_str()).collect();
    assert_eq!(names, ["add", "echo"], "pinned through ann's account");
    let upstream_events = upstream.audit().await;
    assert!(
        upstream_events.iter().any(|event| event.method == "tools/call" && event.principal == "ann@example.com"),
        "the upstream saw ann's own token"
    );
    // Someone else who did not connect is still asked to.
    let mut bobs = gw.client("remote", Some(&bob_key));
    assert_eq!(bobs.initialize().await.error_code(), Some(-32037));

    // Expired tokens are refreshed, and the rotated refresh token is kept: a second refresh
    // works too (reusing the first refresh token would revoke everything).
    let user_id = {
        let mut connection = gw.store().pool.acquire().await.unwrap();
        portcullis::store::directory::person_by_email(&mut connection, "ann@example.com").await.unwrap().unwrap().id
    };
    for round in 0..2 {
        {
            let mut connection = gw.store().pool.acquire().await.unwrap();
            portcullis::store::upstream_tokens::expire_now(&mut connection, &user_id, "remote").await.unwrap();
        }
        gw.state.upstream_tokens.forget(&user_id, "remote");
        let reply = client.call_tool("echo", json!({"message": format!("refreshed {round}")})).await;
        assert_eq!(text_of(&reply), format!("refreshed {round}"), "round {round}");
    }

    // The upstream stops accepting the person: their next call asks them to reconnect.
    {
        let mut connection = upstream.store().pool.acquire().await.unwrap();
        portcullis::store::directory::set_status(
            &mut connection,
            "ann@example.com",
            portcullis::registry::Status::Suspended,
        )
        .await
        .unwrap();
    }
    upstream.state.snapshot.reload(upstream.store(), &upstream.state.keys).await.unwrap();
    let reply = client.call_tool("echo", json!({"message": "again"})).await;
    assert!(reply.error_message().contains("reconnect"), "{:?}", reply.last());
    assert!(here.get("/console").await.body.contains("Needs reconnect"));
    let (_, notes) = Api::new(&gw, &ann_key).send(reqwest::Method::GET, "/notifications", None).await;
    assert_eq!(notes["notifications"][0]["kind"], "reconnect-needed", "{notes}");
    gw.stop().await;
    upstream.stop().await;
}

/// A requested server whose people sign in with OAuth: the connection test says the anonymous
/// connection is refused, as expected, and that OAuth discovery works; approval makes it a
/// per-user OAuth server (internal, since it lives on the internal network).
#[tokio::test]
async fn a_requested_oauth_server_is_tested_by_discovery_and_approved_as_per_user() {
    let upstream = TestGateway::start().await;
    upstream.apply(&demo_server_toml("demo", &[])).await;
    let gw = TestGateway::start().await;
    gw.apply("[[users]]\nemail = \"root@example.com\"\nadmin = true\n[[users]]\nemail = \"ann@example.com\"\n").await;
    let root = Api::new(&gw, &gw.api_key("root@example.com").await);
    let ann = Api::new(&gw, &gw.api_key("ann@example.com").await);
    let request = json!({"kind": "custom", "server": {"name": "remote", "description": "The team's remote echo",
        "transport": "streamable-http", "url": upstream.url("/mcp/demo"), "auth": "oauth", "oauth_scopes": ["mcp"]},
        "justification": {"why": "We need the remote echo for support replies.", "use_case": "Echo text back to check formatting.",
                          "expected_value": "Fewer broken replies to customers.", "alternatives": "No active server echoes text."}});
    let (status, body) = ann.send(reqwest::Method::POST, "/requests", Some(request)).await;
    assert_eq!(status, 201, "{body}");
    let id = body["request"]["id"].as_str().unwrap().to_owned();
    assert_eq!(root.send(reqwest::Method::POST, &format!("/requests/{id}/test"), None).await.0, 202);
    let mut test = Value::Null;
    for _ in 0..200 {
        let (_, detail) = root.send(reqwest::Method::GET, &format!("/requests/{id}"), None).await;
        if detail["request"]["test"].is_object() && detail["request"]["test_running_since"].is_null() {
            test = detail["request"]["test"].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(test["outcome"], "auth_failed", "{test}");
    let detail = test["detail"].as_str().unwrap();
    assert!(detail.contains("Discovery works") && detail.contains(&upstream.url("")), "{detail}");
    let checklist: serde_json::Map<String, Value> =
        ["source", "tools", "data", "auth", "network", "need", "compliance"]
            .iter()
            .map(|section| (section.to_string(), json!({"mark": "checked"})))
            .collect();
    let (status, body) = root
        .send(reqwest::Method::POST, &format!("/requests/{id}/approve"), Some(json!({"checklist": checklist})))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, server) = root.send(reqwest::Method::GET, "/servers/remote", None).await;
    assert_eq!(server["oauth"], json!({"scopes": ["mcp"], "internal": true}), "{server}");
    gw.stop().await;
    upstream.stop().await;
}
