//! The one typed configuration, loaded once. This module is the only reader of the process
//! environment.
//!
//! Layers, lowest first: built-in defaults → the TOML file (`--config`) → `PORTCULLIS_*`
//! environment variables → command-line flags. Every setting has the same name in all three
//! places (`trusted_proxies` = `PORTCULLIS_TRUSTED_PROXIES` = `--trusted-proxies`). Unknown keys
//! and bad values stop the start with a message that names the fix.

use crate::crypto::SecretKey;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every setting, as text, before validation. Flags are given to [`load`] in this form too.
pub type RawSettings = BTreeMap<&'static str, String>;

/// One known setting.
struct Setting {
    key: &'static str,
    help: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting { key: "listen", help: "ADDR:PORT to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port)" },
    Setting { key: "data_dir", help: "directory for the SQLite store and a generated secret key" },
    Setting { key: "database_url", help: "postgres://user@host:port/db to use PostgreSQL instead of SQLite" },
    Setting { key: "secret_key_file", help: "file holding the 32-byte secret key (64 hex digits or base64url)" },
    Setting { key: "secret_key", help: "the secret key itself; only from PORTCULLIS_SECRET_KEY, never the file" },
    Setting { key: "public_url", help: "external base URL, e.g. https://mcp.example.com" },
    Setting { key: "trusted_proxies", help: "comma-separated CIDRs whose X-Forwarded-For is believed" },
    Setting { key: "allowed_hosts", help: "comma-separated extra Host names accepted (DNS-rebinding protection)" },
    Setting { key: "max_body_bytes", help: "largest request body accepted, in bytes" },
    Setting { key: "upstream_timeout_secs", help: "longest an upstream may take for one request, in seconds" },
    Setting { key: "snapshot_max_age_secs", help: "deny all calls when the policy snapshot is older than this" },
    Setting { key: "log_format", help: "text or json" },
    Setting { key: "log", help: "log filter, e.g. info or portcullis=debug" },
    Setting { key: "replica_url", help: "URL other replicas use to reach this one (stdio session forwarding)" },
    Setting { key: "worker_threads", help: "threads serving requests (default: one per CPU core)" },
    Setting {
        key: "busy_poll_us",
        help: "keep polling sockets this many microseconds after each request instead of sleeping (default: 0, off)",
    },
    Setting {
        key: "oauth_redirect_schemes",
        help: "comma-separated private-use URI schemes MCP clients may register as OAuth redirects, e.g. cursor,vscode (default: any)",
    },
    Setting {
        key: "oauth_client_metadata_documents",
        help: "accept https:// client_id URLs (Client ID Metadata Documents) and fetch them (default: true)",
    },
    Setting {
        key: "oauth_client_metadata_networks",
        help: "comma-separated CIDRs from which client metadata documents may be fetched although private",
    },
    Setting {
        key: "ca_file",
        help: "PEM file of extra certificate authorities trusted for outbound TLS (upstreams, the OIDC provider, client documents)",
    },
    // Single sign-on with an OpenID Connect provider: the `[oidc]` table of the config file
    // (`issuer` there is `oidc_issuer` here, `PORTCULLIS_OIDC_ISSUER` in the environment).
    Setting { key: "oidc_issuer", help: "[oidc] issuer: the OpenID Connect provider's issuer URL (turns on SSO)" },
    Setting { key: "oidc_client_id", help: "[oidc] client_id registered at the provider" },
    Setting {
        key: "oidc_client_secret",
        help: "[oidc] client_secret: inline, env:VAR or file:PATH (none for a public client)",
    },
    Setting { key: "oidc_scopes", help: "[oidc] scopes to ask for (default: openid,email,profile)" },
    Setting {
        key: "oidc_label",
        help: "[oidc] the sign-in button's name for the provider, e.g. Okta (default: single sign-on)",
    },
    Setting { key: "oidc_jit", help: "[oidc] create people on their first sign-in (default: true)" },
    Setting {
        key: "oidc_allowed_domains",
        help: "[oidc] email domains that may sign in, e.g. example.com (default: any)",
    },
    Setting {
        key: "oidc_accept_idp_mfa",
        help: "[oidc] an ID token whose amr shows MFA counts as the admin second step (default: true)",
    },
    Setting { key: "oidc_email_claim", help: "[oidc] claim holding the email (default: email)" },
    Setting { key: "oidc_name_claim", help: "[oidc] claim holding the display name (default: name)" },
    Setting { key: "oidc_groups_claim", help: "[oidc] claim holding group names (default: groups)" },
    Setting { key: "oidc_roles_claim", help: "[oidc] claim holding roles / job functions (default: roles)" },
    Setting { key: "oidc_department_claim", help: "[oidc] claim holding the department (default: department)" },
    Setting { key: "oidc_title_claim", help: "[oidc] claim holding the job title (default: title)" },
    Setting { key: "oidc_team_claim", help: "[oidc] claim holding the team (default: team)" },
];

/// Keys of the `[oidc]` table, each the setting `oidc_<key>`.
const TABLES: &[&str] = &["oidc"];

/// A configuration problem, always with the fix in the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: unknown setting \"{key}\"{suggestion}")]
    Unknown { source_name: String, key: String, suggestion: String },
    #[error("{source_name}: {key} = {value:?} is not valid: {problem}")]
    Invalid { source_name: String, key: String, value: String, problem: String },
    #[error("cannot read config file {path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("{0}")]
    Other(String),
}

/// Where the store lives.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub store: StoreLocation,
    pub data_dir: Option<PathBuf>,
    pub secret_key_file: Option<PathBuf>,
    secret_key: Option<SecretKey>,
    pub public_url: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub allowed_hosts: Vec<String>,
    /// Private-use redirect URI schemes OAuth clients may register; empty means any
    /// (https and loopback http are always allowed; javascript:, data: and file: never).
    pub oauth_redirect_schemes: Vec<String>,
    /// Clients may identify themselves with an `https://` client_id URL (its metadata document).
    pub oauth_client_metadata_documents: bool,
    /// Private networks client metadata documents may be fetched from.
    pub oauth_client_metadata_networks: Vec<IpNet>,
    /// Extra certificate authorities for outbound TLS, from `ca_file`.
    pub extra_roots: Vec<reqwest::Certificate>,
    /// The same trust anchors as PEM, for connections made without reqwest (SMTP).
    pub extra_roots_pem: Vec<u8>,
    pub max_body_bytes: usize,
    pub upstream_timeout: Duration,
    pub snapshot_max_age: Duration,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub replica_url: Option<String>,
    /// `HOME` given to stdio server processes (the gateway's own home directory).
    pub child_home: String,
    /// Threads of the async runtime; `None` means one per CPU core.
    pub worker_threads: Option<usize>,
    /// Keep polling sockets this long after each request (see `busy_poll`); `None`: off.
    pub busy_poll: Option<Duration>,
    /// The process environment names an HTTP proxy (`HTTP_PROXY`, `ALL_PROXY`, …): upstream
    /// requests then all go through the client that honours it.
    pub environment_proxy: bool,
    /// Single sign-on, when an OpenID Connect provider is configured.
    pub oidc: Option<OidcConfig>,
}

/// Sign-in through an OpenID Connect provider.
#[derive(Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    /// Empty for a public client (PKCE alone).
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub label: String,
    /// Create a person on their first sign-in; otherwise only people already known may sign in.
    pub jit: bool,
    /// Lower-case email domains allowed to sign in; empty means any.
    pub allowed_domains: Vec<String>,
    /// An ID token whose `amr` shows a second factor satisfies the admin second step.
    pub accept_idp_mfa: bool,
    /// Emails without `email_verified` count as verified (providers that never send it).
    pub trust_email: bool,
    pub claims: ClaimNames,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("scopes", &self.scopes)
            .field("jit", &self.jit)
            .finish_non_exhaustive()
    }
}

/// Which ID token / userinfo claims carry what.
#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub email: String,
    pub name: String,
    pub groups: String,
    pub roles: String,
    pub department: String,
    pub title: String,
    pub team: String,
}

/// `builder`, also trusting `roots`.
pub fn trusting(mut builder: reqwest::ClientBuilder, roots: &[reqwest::Certificate]) -> reqwest::ClientBuilder {
    for root in roots {
        builder = builder.add_root_certificate(root.clone());
    }
    builder
}

/// The value of an environment variable named by an `env:VAR` secret reference.
pub fn secret_from_environment(variable: &str) -> Option<String> {
    #[allow(clippy::disallowed_methods)]
    std::env::var(variable).ok()
}

impl Config {
    /// Defaults everywhere, a store in `data_dir` and a fixed key: for tests.
    pub fn for_tests(data_dir: &Path) -> Config {
        let mut settings = RawSettings::new();
        settings.insert("listen", "127.0.0.1:0".into());
        settings.insert("data_dir", data_dir.display().to_string());
        resolve(&[("test", settings)]).expect("the test configuration is valid")
    }

    /// The secret key: given explicitly, or read from (or generated into) the data directory.
    /// A PostgreSQL deployment must be given one, because every replica needs the same key.
    pub fn secret_key(&self) -> Result<SecretKey, ConfigError> {
        if let Some(key) = &self.secret_key {
            return Ok(key.clone());
        }
        if let Some(path) = &self.secret_key_file {
            return read_key_file(path);
        }
        if let (StoreLocation::Postgres(_), None) = (&self.store, &self.data_dir) {
            return Err(ConfigError::Other(
                "a PostgreSQL store needs a secret key shared by every replica: set PORTCULLIS_SECRET_KEY or \
                 --secret-key-file (create one with: portcullis secret-key generate)"
                    .into(),
            ));
        }
        let directory = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let path = directory.join("secret.key");
        if path.exists() {
            return read_key_file(&path);
        }
        std::fs::create_dir_all(&directory).map_err(|error| {
            ConfigError::Other(format!("cannot create data directory {}: {error}", directory.display()))
        })?;
        let key = SecretKey::generate();
        write_private(&path, &key.encode())
            .map_err(|error| ConfigError::Other(format!("cannot write {}: {error}", path.display())))?;
        tracing::info!(path = %path.display(), "generated a new secret key");
        Ok(key)
    }

    /// Replace the key (tests that run two replicas give both the same key).
    pub fn with_secret_key(mut self, key: SecretKey) -> Config {
        self.secret_key = Some(key);
        self
    }

    /// Point the store at PostgreSQL.
    pub fn with_database_url(mut self, url: &str) -> Config {
        self.store = StoreLocation::Postgres(url.to_owned());
        self
    }
}

fn read_key_file(path: &Path) -> Result<SecretKey, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::Other(format!("cannot read secret key file {}: {error}", path.display())))?;
    SecretKey::parse(&text).map_err(|error| ConfigError::Other(format!("{}: {error}", path.display())))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("portcullis-data")
}

/// Load the configuration: `flags` (from the command line) over the environment over the
/// file named by `--config` / `PORTCULLIS_CONFIG`.
pub fn load(config_file: Option<&Path>, flags: RawSettings) -> Result<Config, ConfigError> {
    let mut environment = RawSettings::new();
    let mut config_from_env = None;
    #[allow(clippy::disallowed_methods)]
    for (name, value) in std::env::vars() {
        let Some(rest) = name.strip_prefix("PORTCULLIS_") else { continue };
        // Variables for the test harness and the CLI's own arguments are not settings.
        if rest.starts_with("TEST_") || rest == "API_KEY" || rest == "URL" {
            continue;
        }
        if rest == "CONFIG" {
            config_from_env = Some(PathBuf::from(value));
            continue;
        }
        let key = rest.to_ascii_lowercase();
        let known = known_key(&key).ok_or_else(|| ConfigError::Unknown {
            source_name: format!("environment variable {name}"),
            suggestion: suggest(&key, |key| format!("PORTCULLIS_{}", key.to_ascii_uppercase())),
            key: name.clone(),
        })?;
        environment.insert(known, value);
    }
    let mut layers = Vec::new();
    if let Some(path) = config_file.map(Path::to_path_buf).or(config_from_env) {
        layers.push((format!("config file {}", path.display()), read_file(&path)?));
    }
    layers.push(("environment".to_owned(), environment));
    layers.push(("command line".to_owned(), flags));
    let borrowed: Vec<(&str, RawSettings)> =
        layers.iter().map(|(name, settings)| (name.as_str(), settings.clone())).collect();
    let mut config = resolve(&borrowed)?;
    if let Some(home) = secret_from_environment("HOME") {
        config.child_home = home;
    }
    config.environment_proxy = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| secret_from_environment(name).is_some_and(|value| !value.trim().is_empty()));
    Ok(config)
}

fn read_file(path: &Path) -> Result<RawSettings, ConfigError> {
    let file_error = |problem: String| ConfigError::File { path: path.to_path_buf(), problem };
    let text = std::fs::read_to_string(path).map_err(|error| file_error(error.to_string()))?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| file_error(error.to_string()))?;
    let source_name = format!("config file {}", path.display());
    let mut settings = RawSettings::new();
    let mut entries: Vec<(String, toml::Value)> = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) if TABLES.contains(&key.as_str()) => {
                entries.extend(inner.into_iter().map(|(inner_key, value)| (format!("{key}_{inner_key}"), value)));
            }
            value => entries.push((key, value)),
        }
    }
    for (key, value) in entries {
        let known = known_key(&key).ok_or_else(|| ConfigError::Unknown {
            source_name: source_name.clone(),
            suggestion: suggest(&key, file_key),
            key: file_key(&key),
        })?;
        if known == "secret_key" {
            return Err(file_error(
                "secret_key may not be written in the config file; use secret_key_file or PORTCULLIS_SECRET_KEY".into(),
            ));
        }
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned).unwrap_or_else(|| item.to_string()))
                .collect::<Vec<_>>()
                .join(","),
            other => {
                return Err(ConfigError::Invalid {
                    source_name,
                    key: file_key(known),
                    value: other.to_string(),
                    problem: "expected a string, number, boolean or list".into(),
                });
            }
        };
        settings.insert(known, text);
    }
    Ok(settings)
}

/// How a setting is written in the config file: `oidc_issuer` is `issuer` in `[oidc]`.
fn file_key(key: &str) -> String {
    TABLES
        .iter()
        .find_map(|table| key.strip_prefix(table).and_then(|rest| rest.strip_prefix('_')).map(|rest| (table, rest)))
        .map_or_else(|| key.to_owned(), |(table, rest)| format!("[{table}] {rest}"))
}

fn known_key(key: &str) -> Option<&'static str> {
    SETTINGS.iter().find(|setting| setting.key == key).map(|setting| setting.key)
}

/// The help text of every setting, for `--help` output and documentation.
pub fn describe_settings() -> String {
    SETTINGS.iter().map(|setting| format!("  {:<24} {}\n", setting.key, setting.help)).collect()
}

fn suggest(key: &str, render: impl Fn(&str) -> String) -> String {
    // A known setting that the key starts with (listen_port → listen) is the likeliest meaning.
    if let Some(setting) =
        SETTINGS.iter().filter(|setting| key.starts_with(setting.key)).max_by_key(|setting| setting.key.len())
    {
        return format!("; did you mean \"{}\"?", render(setting.key));
    }
    let best = SETTINGS
        .iter()
        .map(|setting| (edit_distance(key, setting.key), setting.key))
        .min_by_key(|(distance, _)| *distance);
    match best {
        Some((distance, nearest)) if distance <= 3 => format!("; did you mean \"{}\"?", render(nearest)),
        _ => format!(
            "; known settings: {}",
            SETTINGS.iter().map(|setting| render(setting.key)).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (row, left_char) in left.chars().enumerate() {
        let mut current = vec![row + 1];
        for (column, right_char) in right.iter().enumerate() {
            let cost = usize::from(left_char != *right_char);
            current.push((previous[column] + cost).min(previous[column + 1] + 1).min(current[column] + 1));
        }
        previous = current;
    }
    previous[right.len()]
}

/// Merge layers (later wins) and validate.
fn resolve(layers: &[(&str, RawSettings)]) -> Result<Config, ConfigError> {
    let mut merged: BTreeMap<&'static str, (String, String)> = BTreeMap::new();
    for (source_name, settings) in layers {
        for (key, value) in settings {
            merged.insert(key, (source_name.to_string(), value.clone()));
        }
    }
    let get = |key: &'static str| merged.get(key);
    let invalid = |key: &'static str, problem: &str| {
        let (source_name, value) = merged.get(key).cloned().unwrap_or_default();
        let shown = if matches!(key, "secret_key" | "oidc_client_secret") { "***".to_owned() } else { value };
        // Name the setting as it is written where it came from.
        let key = if source_name.starts_with("config file") {
            file_key(key)
        } else if source_name.starts_with("environment") {
            format!("PORTCULLIS_{}", key.to_ascii_uppercase())
        } else {
            key.to_owned()
        };
        ConfigError::Invalid { source_name, key, value: shown, problem: problem.to_owned() }
    };
    let parse_number = |key: &'static str, default: u64| -> Result<u64, ConfigError> {
        match get(key) {
            None => Ok(default),
            Some((_, value)) => value.trim().parse().map_err(|_| invalid(key, "expected a whole number")),
        }
    };

    let listen = match get("listen") {
        None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        Some((_, value)) => {
            value.parse().map_err(|_| invalid("listen", "expected ADDR:PORT such as 127.0.0.1:8080 or [::1]:0"))?
        }
    };
    let data_dir = get("data_dir").map(|(_, value)| PathBuf::from(value));
    let store = match get("database_url") {
        Some((_, url)) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            StoreLocation::Postgres(url.clone())
        }
        Some((_, url)) if url.starts_with("sqlite:") => {
            StoreLocation::Sqlite(PathBuf::from(url.trim_start_matches("sqlite://").trim_start_matches("sqlite:")))
        }
        Some(_) => {
            return Err(invalid(
                "database_url",
                "expected postgres://user@host:port/database (or leave it out to use SQLite in data_dir)",
            ));
        }
        None => StoreLocation::Sqlite(data_dir.clone().unwrap_or_else(default_data_dir).join("portcullis.db")),
    };
    let secret_key = match get("secret_key") {
        None => None,
        Some((_, value)) => Some(SecretKey::parse(value).map_err(|error| invalid("secret_key", &error.to_string()))?),
    };
    let secret_key_file = get("secret_key_file").map(|(_, value)| PathBuf::from(value));
    let public_url = match get("public_url") {
        None => None,
        Some((_, value)) => {
            let trimmed = value.trim_end_matches('/');
            if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) || host_of_url(trimmed).is_none() {
                return Err(invalid("public_url", "expected an absolute http:// or https:// URL"));
            }
            Some(trimmed.to_owned())
        }
    };
    let cidr_list = |key: &'static str| -> Result<Vec<IpNet>, ConfigError> {
        match get(key) {
            None => Ok(Vec::new()),
            Some((_, value)) => split_list(value)
                .map(|item| {
                    item.parse::<IpNet>()
                        .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| invalid(key, &format!("\"{item}\" is not a CIDR such as 10.0.0.0/8")))
                })
                .collect(),
        }
    };
    let trusted_proxies = cidr_list("trusted_proxies")?;
    let allowed_hosts =
        get("allowed_hosts").map(|(_, value)| split_list(value).map(str::to_owned).collect()).unwrap_or_default();
    let oauth_redirect_schemes: Vec<String> = get("oauth_redirect_schemes")
        .map(|(_, value)| split_list(value).map(str::to_ascii_lowercase).collect())
        .unwrap_or_default();
    if let Some(bad) = oauth_redirect_schemes.iter().find(|scheme| {
        scheme.is_empty()
            || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            || ["javascript", "data", "file", "http", "https"].contains(&scheme.as_str())
    }) {
        return Err(invalid(
            "oauth_redirect_schemes",
            &format!("{bad:?} is not a private-use URI scheme (list names like cursor,vscode without \"://\")"),
        ));
    }
    let oauth_client_metadata_documents = match get("oauth_client_metadata_documents").map(|(_, value)| value.trim()) {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(invalid("oauth_client_metadata_documents", "expected true or false")),
    };
    let oauth_client_metadata_networks = cidr_list("oauth_client_metadata_networks")?;
    let mut extra_roots_pem = Vec::new();
    let extra_roots = match get("ca_file") {
        None => Vec::new(),
        Some((_, path)) => {
            let pem = std::fs::read(path).map_err(|error| invalid("ca_file", &format!("cannot read it ({error})")))?;
            extra_roots_pem = pem.clone();
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|error| invalid("ca_file", &format!("it is not a PEM certificate bundle ({error})")))?;
            if roots.is_empty() {
                return Err(invalid("ca_file", "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
            }
            roots
        }
    };
    let max_body_bytes = parse_number("max_body_bytes", 4 * 1024 * 1024)?;
    if max_body_bytes < 1024 {
        return Err(invalid("max_body_bytes", "must be at least 1024"));
    }
    let upstream_timeout_secs = parse_number("upstream_timeout_secs", 120)?;
    if upstream_timeout_secs == 0 {
        return Err(invalid("upstream_timeout_secs", "must be at least 1"));
    }
    let snapshot_max_age_secs = parse_number("snapshot_max_age_secs", 30)?;
    if snapshot_max_age_secs == 0 {
        return Err(invalid("snapshot_max_age_secs", "must be at least 1"));
    }
    let log_format = match get("log_format").map(|(_, value)| value.as_str()) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(_) => return Err(invalid("log_format", "expected text or json")),
    };
    let log_filter = get("log").map(|(_, value)| value.clone()).unwrap_or_else(|| "info".into());
    let worker_threads = match parse_number("worker_threads", 0)? {
        0 => None,
        threads if threads > 1024 => return Err(invalid("worker_threads", "must be at most 1024")),
        threads => Some(threads as usize),
    };
    let busy_poll = match parse_number("busy_poll_us", 0)? {
        0 => None,
        micros if micros > 100_000 => {
            return Err(invalid("busy_poll_us", "must be at most 100000 (0.1 s); a few hundred to 1000 is typical"));
        }
        micros => Some(Duration::from_micros(micros)),
    };
    let replica_url = get("replica_url").map(|(_, value)| value.trim_end_matches('/').to_owned());
    let oidc = oidc_config(&get, &invalid)?;
    Ok(Config {
        listen,
        store,
        data_dir,
        secret_key_file,
        secret_key,
        public_url,
        trusted_proxies,
        allowed_hosts,
        oauth_redirect_schemes,
        oauth_client_metadata_documents,
        oauth_client_metadata_networks,
        extra_roots,
        extra_roots_pem,
        max_body_bytes: max_body_bytes as usize,
        upstream_timeout: Duration::from_secs(upstream_timeout_secs),
        snapshot_max_age: Duration::from_secs(snapshot_max_age_secs),
        log_format,
        log_filter,
        replica_url,
        child_home: "/tmp".to_owned(),
        worker_threads,
        busy_poll,
        oidc,
        environment_proxy: false,
    })
}

/// The `[oidc]` settings, validated; `None` when no issuer is set.
fn oidc_config<'a>(
    get: &impl Fn(&'static str) -> Option<&'a (String, String)>,
    invalid: &impl Fn(&'static str, &str) -> ConfigError,
) -> Result<Option<OidcConfig>, ConfigError> {
    let text = |key: &'static str| get(key).map(|(_, value)| value.trim().to_owned()).filter(|value| !value.is_empty());
    let flag = |key: &'static str, default: bool| match text(key).as_deref() {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(invalid(key, "expected true or false")),
    };
    let Some(issuer) = text("oidc_issuer") else {
        if let Some(key) =
            SETTINGS.iter().map(|setting| setting.key).find(|key| key.starts_with("oidc_") && get(key).is_some())
        {
            return Err(invalid(key, "single sign-on needs the provider's issuer too: add issuer to [oidc]"));
        }
        return Ok(None);
    };
    let issuer = issuer.trim_end_matches('/').to_owned();
    if !is_secure_or_loopback(&issuer) {
        return Err(invalid(
            "oidc_issuer",
            "expected the provider's https:// issuer URL (http:// only for 127.0.0.1 or localhost, in tests)",
        ));
    }
    let client_id = text("oidc_client_id").ok_or_else(|| {
        invalid("oidc_issuer", "[oidc] needs client_id, the client registered for Portcullis at the provider")
    })?;
    let client_secret = match text("oidc_client_secret") {
        None => String::new(),
        Some(reference) => {
            resolve_secret_reference(&reference).map_err(|problem| invalid("oidc_client_secret", &problem))?
        }
    };
    let scopes: Vec<String> = match text("oidc_scopes") {
        None => vec!["openid".into(), "email".into(), "profile".into()],
        Some(value) => {
            value.split([',', ' ']).map(str::trim).filter(|scope| !scope.is_empty()).map(str::to_owned).collect()
        }
    };
    if !scopes.iter().any(|scope| scope == "openid") {
        return Err(invalid("oidc_scopes", "the scopes must include openid"));
    }
    let allowed_domains = text("oidc_allowed_domains")
        .map(|value| split_list(&value).map(|domain| domain.trim_start_matches('@').to_ascii_lowercase()).collect())
        .unwrap_or_default();
    let claim = |key: &'static str, default: &str| text(key).unwrap_or_else(|| default.to_owned());
    Ok(Some(OidcConfig {
        label: text("oidc_label").unwrap_or_else(|| "single sign-on".to_owned()),
        jit: flag("oidc_jit", true)?,
        accept_idp_mfa: flag("oidc_accept_idp_mfa", true)?,
        trust_email: flag("oidc_trust_email", false)?,
        issuer,
        client_id,
        client_secret,
        scopes,
        allowed_domains,
        claims: ClaimNames {
            email: claim("oidc_email_claim", "email"),
            name: claim("oidc_name_claim", "name"),
            groups: claim("oidc_groups_claim", "groups"),
            roles: claim("oidc_roles_claim", "roles"),
            department: claim("oidc_department_claim", "department"),
            title: claim("oidc_title_claim", "title"),
            team: claim("oidc_team_claim", "team"),
        },
    }))
}

/// An https URL, or http to a loopback host (for tests and local providers).
pub fn is_secure_or_loopback(url: &str) -> bool {
    if url.starts_with("https://") {
        return host_of_url(url).is_some();
    }
    let Some(authority) = url.strip_prefix("http://").and_then(|_| host_of_url(url)) else { return false };
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Resolve a secret reference: `env:VAR`, `file:PATH`, or the literal value. The error says
/// which variable or file is missing, never the secret.
pub fn resolve_secret_reference(value: &str) -> Result<String, String> {
    if let Some(variable) = value.strip_prefix("env:") {
        return secret_from_environment(variable)
            .ok_or_else(|| format!("refers to environment variable {variable}, which is not set"));
    }
    if let Some(path) = value.strip_prefix("file:") {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("refers to file {path}, which cannot be read: {error}"))?;
        return Ok(text.trim_end_matches(['\n', '\r']).to_owned());
    }
    Ok(value.to_owned())
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|item| !item.is_empty())
}

/// `host[:port]` of an absolute URL.
pub fn host_of_url(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    (!authority.is_empty()).then_some(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(settings: &[(&'static str, &str)], expected: &str) {
        let raw: RawSettings = settings.iter().map(|(key, value)| (*key, value.to_string())).collect();
        let actual = match resolve(&[("test", raw)]) {
            Ok(config) => format!("ok listen={} store={:?}", config.listen, config.store),
            Err(error) => error.to_string(),
        };
        assert_eq!(actual, expected);
    }

    #[test]
    fn validation_messages() {
        check(
            &[("listen", "127.0.0.1:0"), ("data_dir", "/d")],
            r#"ok listen=127.0.0.1:0 store=Sqlite("/d/portcullis.db")"#,
        );
        check(
            &[("listen", "localhost")],
            r#"test: listen = "localhost" is not valid: expected ADDR:PORT such as 127.0.0.1:8080 or [::1]:0"#,
        );
        check(
            &[("database_url", "mysql://x")],
            r#"test: database_url = "mysql://x" is not valid: expected postgres://user@host:port/database (or leave it out to use SQLite in data_dir)"#,
        );
        check(
            &[("trusted_proxies", "10.0.0.0/8, nonsense")],
            r#"test: trusted_proxies = "10.0.0.0/8, nonsense" is not valid: "nonsense" is not a CIDR such as 10.0.0.0/8"#,
        );
        check(
            &[("secret_key", "abc")],
            r#"test: secret_key = "***" is not valid: the secret key must be 32 random bytes written as 64 hex digits or 43 base64url characters (generate one with: portcullis secret-key generate)"#,
        );
        check(&[("log_format", "xml")], r#"test: log_format = "xml" is not valid: expected text or json"#);
        check(
            &[("busy_poll_us", "500000")],
            r#"test: busy_poll_us = "500000" is not valid: must be at most 100000 (0.1 s); a few hundred to 1000 is typical"#,
        );
        check(
            &[("oauth_redirect_schemes", "cursor, javascript")],
            r#"test: oauth_redirect_schemes = "cursor, javascript" is not valid: "javascript" is not a private-use URI scheme (list names like cursor,vscode without "://")"#,
        );
        check(
            &[("oauth_redirect_schemes", "vscode://")],
            r#"test: oauth_redirect_schemes = "vscode://" is not valid: "vscode://" is not a private-use URI scheme (list names like cursor,vscode without "://")"#,
        );
    }

    #[test]
    fn unknown_keys_suggest_the_nearest() {
        assert_eq!(suggest("listne", str::to_owned), "; did you mean \"listen\"?");
        assert_eq!(
            suggest("data_dri", |key| format!("PORTCULLIS_{}", key.to_ascii_uppercase())),
            "; did you mean \"PORTCULLIS_DATA_DIR\"?"
        );
        assert!(suggest("zzzzzzzzzzzz", str::to_owned).starts_with("; known settings: listen"));
    }

    #[test]
    fn file_layer_rejects_unknown_keys_and_inline_secrets() {
        let directory = std::env::temp_dir().join(format!("portcullis-config-{}", crate::crypto::new_id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:0\"\nlisten_port = 3\n").unwrap();
        let error = read_file(&path).unwrap_err().to_string();
        assert!(error.contains("unknown setting \"listen_port\"; did you mean \"listen\"?"), "{error}");
        std::fs::write(&path, "secret_key = \"x\"\n").unwrap();
        let error = read_file(&path).unwrap_err().to_string();
        assert!(error.contains("use secret_key_file or PORTCULLIS_SECRET_KEY"), "{error}");
        std::fs::write(&path, "trusted_proxies = [\"10.0.0.0/8\", \"192.168.0.0/16\"]\nmax_body_bytes = 2048\n")
            .unwrap();
        let settings = read_file(&path).unwrap();
        assert_eq!(settings["trusted_proxies"], "10.0.0.0/8,192.168.0.0/16");
        assert_eq!(settings["max_body_bytes"], "2048");
        std::fs::write(&path, "[oidc]\nissuer = \"https://idp.example\"\nclient_idd = \"x\"\n").unwrap();
        let error = read_file(&path).unwrap_err().to_string();
        assert!(error.contains("unknown setting \"[oidc] client_idd\"; did you mean \"[oidc] client_id\"?"), "{error}");
        std::fs::write(&path, "[oidc]\nissuer = \"https://idp.example\"\n").unwrap();
        let error = resolve(&[("config file c.toml", read_file(&path).unwrap())]).unwrap_err().to_string();
        assert!(
            error.starts_with(
                "config file c.toml: [oidc] issuer = \"https://idp.example\" is not valid: [oidc] needs client_id"
            ),
            "{error}"
        );
        let secret_file = directory.join("oidc-secret");
        std::fs::write(&secret_file, "s3cret\n").unwrap();
        std::fs::write(
            &path,
            format!(
                "[oidc]\nissuer = \"https://idp.example/\"\nclient_id = \"portcullis\"\nclient_secret = \"file:{}\"\n\
                 scopes = [\"openid\", \"email\", \"groups\"]\njit = false\nallowed_domains = \"@Example.com\"\n",
                secret_file.display()
            ),
        )
        .unwrap();
        let config = resolve(&[("file", read_file(&path).unwrap())]).unwrap();
        let oidc = config.oidc.unwrap();
        assert_eq!(oidc.issuer, "https://idp.example");
        assert_eq!(oidc.client_secret, "s3cret");
        assert_eq!(oidc.scopes, ["openid", "email", "groups"]);
        assert!(!oidc.jit && oidc.accept_idp_mfa);
        assert_eq!(oidc.allowed_domains, ["example.com"]);
        assert!(!format!("{oidc:?}").contains("s3cret"));
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn outbound_trust_and_client_document_settings_are_checked() {
        check(
            &[("ca_file", "/no/such/ca.pem")],
            r#"test: ca_file = "/no/such/ca.pem" is not valid: cannot read it (No such file or directory (os error 2))"#,
        );
        check(
            &[("ca_file", "/dev/null")],
            r#"test: ca_file = "/dev/null" is not valid: it holds no PEM certificate (-----BEGIN CERTIFICATE-----)"#,
        );
        check(
            &[("oauth_client_metadata_networks", "10.0.0.0/8, intranet")],
            r#"test: oauth_client_metadata_networks = "10.0.0.0/8, intranet" is not valid: "intranet" is not a CIDR such as 10.0.0.0/8"#,
        );
        check(
            &[("oauth_client_metadata_documents", "no")],
            r#"test: oauth_client_metadata_documents = "no" is not valid: expected true or false"#,
        );
    }

    #[test]
    fn single_sign_on_settings_are_checked() {
        check(
            &[("oidc_issuer", "http://idp.example"), ("oidc_client_id", "x")],
            r#"test: oidc_issuer = "http://idp.example" is not valid: expected the provider's https:// issuer URL (http:// only for 127.0.0.1 or localhost, in tests)"#,
        );
        check(
            &[("oidc_issuer", "https://idp.example")],
            r#"test: oidc_issuer = "https://idp.example" is not valid: [oidc] needs client_id, the client registered for Portcullis at the provider"#,
        );
        check(
            &[("oidc_client_secret", "hunter2")],
            r#"test: oidc_client_secret = "***" is not valid: single sign-on needs the provider's issuer too: add issuer to [oidc]"#,
        );
        check(
            &[("oidc_issuer", "http://127.0.0.1:4444"), ("oidc_client_id", "x"), ("oidc_scopes", "email")],
            r#"test: oidc_scopes = "email" is not valid: the scopes must include openid"#,
        );
        check(
            &[("oidc_issuer", "http://localhost:4444"), ("oidc_client_id", "x"), ("oidc_jit", "yes")],
            r#"test: oidc_jit = "yes" is not valid: expected true or false"#,
        );
        check(
            &[
                ("oidc_issuer", "http://[::1]:4444"),
                ("oidc_client_id", "x"),
                ("oidc_client_secret", "env:NO_SUCH_VARIABLE_X"),
            ],
            r#"test: oidc_client_secret = "***" is not valid: refers to environment variable NO_SUCH_VARIABLE_X, which is not set"#,
        );
    }
}
