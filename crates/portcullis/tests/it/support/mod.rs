//! Test support: a real gateway in-process on port 0, real stores (a fresh SQLite file or a
//! fresh PostgreSQL database per test), and a small MCP client that speaks raw HTTP so tests
//! can also send what a well-behaved client never would.

#![allow(dead_code)]

use portcullis::app::{App, AppState};
use portcullis::config::Config;
use portcullis::crypto::SecretKey;
use portcullis::store::Store;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Once;
use tokio::sync::oneshot;

static LOGGING: Once = Once::new();

/// Logs stay silent unless TEST_LOG=1.
pub fn init_logging() {
    LOGGING.call_once(|| {
        #[allow(clippy::disallowed_methods)]
        if std::env::var("TEST_LOG").is_ok() {
            tracing_subscriber::fmt().with_env_filter("info").with_test_writer().init();
        }
    });
}

/// The PostgreSQL server tests use.
pub fn postgres_url() -> String {
    #[allow(clippy::disallowed_methods)]
    std::env::var("PORTCULLIS_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Where `cargo xtask ci` installed the third-party peers (npm and PyPI packages).
pub fn peers_dir() -> PathBuf {
    #[allow(clippy::disallowed_methods)]
    let dir = std::env::var("PORTCULLIS_TEST_PEERS").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/portcullis-peers")
    });
    assert!(dir.exists(), "test peers are missing at {}: run `cargo xtask ci` (it installs them)", dir.display());
    dir
}

/// The `portcullis` binary built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// A fresh, empty PostgreSQL database; dropped by [`TestGateway::stop`].
pub async fn fresh_postgres_database() -> (String, String) {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let admin_url = postgres_url();
    let name = format!("portcullis_t_{}", &portcullis::crypto::new_id()[..12]);
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url).await.unwrap_or_else(|error| {
        panic!("PostgreSQL at {admin_url} is needed for this test ({error}); `cargo xtask ci` starts one")
    });
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let base = admin_url.rsplit_once('/').map(|(base, _)| base.to_owned()).unwrap();
    (format!("{base}/{name}"), name)
}

pub async fn drop_postgres_database(name: &str) {
    use sqlx::Executor;
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&postgres_url()).await.unwrap();
    let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
}

/// Which store a test gateway uses.
#[derive(Clone, Debug)]
pub enum StoreKind {
    Sqlite,
    /// A URL of an existing database (shared between replicas) and its name.
    Postgres(String, String),
}

/// A running gateway.
pub struct TestGateway {
    pub address: SocketAddr,
    pub state: AppState,
    pub dir: PathBuf,
    pub store_kind: StoreKind,
    pub key: SecretKey,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

pub struct Options {
    pub store: StoreKind,
    pub key: SecretKey,
    pub tweak: Box<dyn FnOnce(&mut Config) + Send>,
}

impl Default for Options {
    fn default() -> Self {
        Options { store: StoreKind::Sqlite, key: SecretKey::generate(), tweak: Box::new(|_| {}) }
    }
}

impl TestGateway {
    pub async fn start() -> TestGateway {
        TestGateway::start_with(Options::default()).await
    }

    pub async fn start_on(store: StoreKind) -> TestGateway {
        TestGateway::start_with(Options { store, ..Options::default() }).await
    }

    pub async fn start_with(options: Options) -> TestGateway {
        init_logging();
        let dir = std::env::temp_dir().join(format!("portcullis-test-{}", portcullis::crypto::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = Config::for_tests(&dir).with_secret_key(options.key.clone());
        if let StoreKind::Postgres(url, _) = &options.store {
            config = config.with_database_url(url);
        }
        (options.tweak)(&mut config);
        let app = App::build(config).await.expect("the gateway starts");
        let address = app.address();
        let state = app.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            app.run_until_stopped(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestGateway {
            address,
            state,
            dir,
            store_kind: options.store,
            key: options.key,
            stop: Some(stop),
            done: Some(done),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Apply a TOML document and wait until this gateway's snapshot has it.
    pub async fn apply(&self, toml: &str) -> Vec<String> {
        let report = portcullis::apply::apply_text(self.store(), &self.state.keys, toml, "test", Default::default())
            .await
            .unwrap_or_else(|error| panic!("apply failed: {error}"));
        self.state.snapshot.reload(self.store(), &self.state.keys).await.unwrap();
        report.changes
    }

    /// A new API key for an existing user.
    pub async fn api_key(&self, email: &str) -> String {
        let key = portcullis::cli::create_api_key(self.store(), email, "test").await.unwrap();
        self.state.snapshot.reload(self.store(), &self.state.keys).await.unwrap();
        key
    }

    pub fn client(&self, server: &str, key: Option<&str>) -> McpClient {
        McpClient::new(self.url(&format!("/mcp/{server}")), key.map(str::to_owned))
    }

    /// Audit events, newest first, read straight from the store (after a flush).
    pub async fn audit(&self) -> Vec<portcullis::store::audit::AuditRecord> {
        self.state.audit.flush().await;
        let mut connection = self.store().pool.acquire().await.unwrap();
        let filter = portcullis::store::audit::Filter { limit: 1000, ..Default::default() };
        portcullis::store::audit::query(&mut connection, &filter).await.unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), done).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A deliberately small MCP client over raw HTTP.
#[derive(Clone)]
pub struct McpClient {
    pub url: String,
    pub key: Option<String>,
    pub session: Option<String>,
    pub version: String,
    http: reqwest::Client,
    next_id: i64,
}

/// One HTTP answer: status, headers and the JSON-RPC messages it carried.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub messages: Vec<Value>,
    pub text: String,
}

impl Reply {
    /// The last message (the response, for a request).
    pub fn last(&self) -> &Value {
        self.messages
            .last()
            .unwrap_or_else(|| panic!("no JSON-RPC message in answer (HTTP {}): {}", self.status, self.text))
    }

    pub fn error_code(&self) -> Option<i64> {
        self.last().get("error").and_then(|error| error.get("code")).and_then(Value::as_i64)
    }

    pub fn error_message(&self) -> String {
        self.last()["error"]["message"].as_str().unwrap_or("").to_owned()
    }
}

impl McpClient {
    pub fn new(url: String, key: Option<String>) -> McpClient {
        McpClient { url, key, session: None, version: "2025-06-18".into(), http: reqwest::Client::new(), next_id: 0 }
    }

    pub fn request_builder(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, &self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session).header("mcp-protocol-version", &self.version);
        }
        request
    }

    /// POST raw bytes with the client's headers.
    pub async fn post_raw(&self, body: impl Into<reqwest::Body>) -> Reply {
        read(self.request_builder(reqwest::Method::POST).body(body).send().await.unwrap()).await
    }

    pub async fn send(&mut self, method: &str, params: Value) -> Reply {
        self.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        self.post_raw(body.to_string()).await
    }

    pub async fn notify(&self, method: &str) -> Reply {
        self.post_raw(json!({"jsonrpc": "2.0", "method": method}).to_string()).await
    }

    /// initialize + notifications/initialized; returns the initialize answer.
    pub async fn initialize(&mut self) -> Reply {
        let reply = self
            .send(
                "initialize",
                json!({"protocolVersion": self.version, "capabilities": {}, "clientInfo": {"name": "portcullis-tests", "version": "1"}}),
            )
            .await;
        if let Some(session) = reply.headers.get("mcp-session-id") {
            self.session = Some(session.to_str().unwrap().to_owned());
            let accepted = self.notify("notifications/initialized").await;
            assert_eq!(accepted.status, 202, "notifications/initialized: {}", accepted.text);
        }
        reply
    }

    pub async fn call_tool(&mut self, name: &str, arguments: Value) -> Reply {
        self.send("tools/call", json!({"name": name, "arguments": arguments})).await
    }

    pub async fn tool_names(&mut self) -> Vec<String> {
        let reply = self.send("tools/list", json!({})).await;
        let tools = reply.last()["result"]["tools"].as_array().unwrap_or_else(|| panic!("tools/list: {}", reply.text));
        tools.iter().map(|tool| tool["name"].as_str().unwrap().to_owned()).collect()
    }
}

/// Read an answer, JSON or event stream.
pub async fn read(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let is_stream = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    let text = response.text().await.unwrap_or_default();
    let messages = if is_stream {
        let mut parser = mcp::sse::Parser::new(1 << 26);
        parser
            .push(text.as_bytes())
            .unwrap()
            .into_iter()
            .filter_map(|event| serde_json::from_str::<Value>(&event.data).ok())
            .collect()
    } else {
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(items)) => items,
            Ok(value) => vec![value],
            Err(_) => Vec::new(),
        }
    };
    Reply { status, headers, messages, text }
}

/// The text content of a tools/call result.
pub fn text_of(reply: &Reply) -> String {
    let content =
        reply.last()["result"]["content"].as_array().unwrap_or_else(|| panic!("not a tool result: {}", reply.text));
    content.iter().filter_map(|item| item["text"].as_str()).collect::<Vec<_>>().join("")
}

/// A TOML document registering the built-in demo server over stdio, with `users` granted.
pub fn demo_server_toml(name: &str, users: &[&str]) -> String {
    let mut toml = format!(
        "[[servers]]\nname = \"{name}\"\ntransport = \"stdio\"\ncommand = \"{}\"\nargs = [\"demo-server\"]\n",
        binary()
    );
    for user in users {
        toml.push_str(&format!("\n[[users]]\nemail = \"{user}\"\n"));
    }
    if !users.is_empty() {
        let list = users.iter().map(|user| format!("\"{user}\"")).collect::<Vec<_>>().join(", ");
        toml.push_str(&format!("\n[[grants]]\nserver = \"{name}\"\nusers = [{list}]\n"));
    }
    toml
}

/// A certificate authority and a certificate for 127.0.0.1 it signed, made with `openssl`:
/// (CA certificate, server certificate, server key) paths.
pub fn test_certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 \
  -subj /CN=portcullis-test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr -subj /CN=127.0.0.1
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' > leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile leaf.ext
"#;
    std::fs::create_dir_all(dir).unwrap();
    let made = std::process::Command::new("bash").args(["-c", script]).current_dir(dir).output().unwrap();
    assert!(made.status.success(), "openssl made the test certificates: {}", String::from_utf8_lossy(&made.stderr));
    (dir.join("ca.pem"), dir.join("leaf.pem"), dir.join("leaf.key"))
}

/// An https server of OAuth Client ID Metadata Documents (`tests/peers/client_documents.py`)
/// on 127.0.0.1, with a certificate from a test CA, recording the paths it was asked for.
pub struct ClientDocuments {
    /// `https://127.0.0.1:PORT`
    pub base: String,
    pub fetched: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ca: PathBuf,
    dir: PathBuf,
    child: tokio::process::Child,
}

impl ClientDocuments {
    pub async fn start(redirect_uri: &str) -> ClientDocuments {
        use tokio::io::AsyncBufReadExt;
        let dir = std::env::temp_dir().join(format!("portcullis-cimd-{}", portcullis::crypto::new_id()));
        let (ca, cert, key) = test_certificates(&dir);
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/client_documents.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .args([&cert, &key])
            .arg(redirect_uri)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 serves the client documents");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next_line().await.unwrap().expect("the document server prints its address");
        let base = first.strip_prefix("listening ").unwrap().to_owned();
        let fetched = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log = fetched.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push(line);
            }
        });
        ClientDocuments { base, fetched, ca, dir, child }
    }

    /// A gateway that trusts this host's CA and may fetch documents from 127.0.0.1, with the
    /// demo server granted to ann (who has a password).
    pub async fn gateway(&self) -> TestGateway {
        let roots = self.roots();
        let gw = TestGateway::start_with(Options {
            tweak: Box::new(move |config| {
                config.extra_roots = roots;
                config.oauth_client_metadata_networks = vec!["127.0.0.1/32".parse().unwrap()];
            }),
            ..Options::default()
        })
        .await;
        gw.apply(&demo_server_toml("demo", &["ann@example.com"])).await;
        portcullis::cli::set_password(gw.store(), "ann@example.com", "ann's long passphrase").await.unwrap();
        gw
    }

    /// The test CA, for the gateway's `extra_roots`.
    pub fn roots(&self) -> Vec<reqwest::Certificate> {
        reqwest::Certificate::from_pem_bundle(&std::fs::read(&self.ca).unwrap()).unwrap()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The REST API (`/api/v1`) as a client: `send` with its own API key, `call` with another.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub key: String,
}

impl Api {
    pub fn new(gw: &TestGateway, key: &str) -> Api {
        Api { http: reqwest::Client::new(), base: gw.url("/api/v1"), key: key.to_owned() }
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(&self.key, method, path, body).await
    }

    pub async fn call(&self, key: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}
