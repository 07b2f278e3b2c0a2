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
        key: "oauth_redirect_schemes",
        help: "comma-separated private-use URI schemes MCP clients may register as OAuth redirects, e.g. cursor,vscode (default: any)",
    },
];

/// A configuration problem, always with the fix in the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: unknown setting \"{key}\"{suggestion}")]
    Unknown { source_name: String, key: String, suggestion: String },
    #[error("{source_name}: {key} = {value:?} is not valid: {problem}")]
    Invalid { source_name: String, key: &'static str, value: String, problem: String },
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
    Ok(config)
}

fn read_file(path: &Path) -> Result<RawSettings, ConfigError> {
    let file_error = |problem: String| ConfigError::File { path: path.to_path_buf(), problem };
    let text = std::fs::read_to_string(path).map_err(|error| file_error(error.to_string()))?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| file_error(error.to_string()))?;
    let source_name = format!("config file {}", path.display());
    let mut settings = RawSettings::new();
    for (key, value) in table {
        let known = known_key(&key).ok_or_else(|| ConfigError::Unknown {
            source_name: source_name.clone(),
            suggestion: suggest(&key, str::to_owned),
            key: key.clone(),
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
                    key: known,
                    value: other.to_string(),
                    problem: "expected a string, number, boolean or list".into(),
                });
            }
        };
        settings.insert(known, text);
    }
    Ok(settings)
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
        let shown = if key == "secret_key" { "***".to_owned() } else { value };
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
    let trusted_proxies = match get("trusted_proxies") {
        None => Vec::new(),
        Some((_, value)) => split_list(value)
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| invalid("trusted_proxies", &format!("\"{item}\" is not a CIDR such as 10.0.0.0/8")))
            })
            .collect::<Result<_, _>>()?,
    };
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
    let replica_url = get("replica_url").map(|(_, value)| value.trim_end_matches('/').to_owned());
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
        max_body_bytes: max_body_bytes as usize,
        upstream_timeout: Duration::from_secs(upstream_timeout_secs),
        snapshot_max_age: Duration::from_secs(snapshot_max_age_secs),
        log_format,
        log_filter,
        replica_url,
        child_home: "/tmp".to_owned(),
        worker_threads,
    })
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
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
