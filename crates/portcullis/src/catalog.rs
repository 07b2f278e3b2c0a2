//! The server catalog: pre-vetted entries employees pick from when they request a server
//! (the server-lifecycle issue). An [`Entry`] says what the server is, who publishes it, how
//! to reach it (a connection template: a URL, or a command with arguments, where `{NAME}`
//! stands for a required setting), how it authenticates, which settings a request must fill
//! in, and its risk tier. Portcullis ships a [starter catalog](starter) as data; entries can
//! also be imported from the MCP Registry's `server.json` format ([`from_server_json`]).
//!
//! Not wired into storage, the API or the console yet: this module is the parsed, checked
//! form those will use.

use crate::registry::{Invalid, ServerSlug, Transport};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a server authenticates its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    None,
    /// A static secret (API key, token) given as a setting.
    ApiKey,
    /// Per-user OAuth to the upstream.
    Oauth,
}

/// How much review a server needs (drives the approval target time and the checklist's depth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RiskTier {
    Low,
    Medium,
    High,
}

/// A value a request must (or may) provide, such as an API token or a directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    /// `[A-Z][A-Z0-9_]*`: the environment variable or header placeholder it fills.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Stored encrypted and never shown again once entered.
    #[serde(default)]
    pub secret: bool,
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

/// One catalog entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The slug a server made from it gets by default.
    pub name: String,
    pub title: String,
    pub description: String,
    pub publisher: String,
    /// `streamable-http`, `sse` or `stdio`.
    pub transport: String,
    /// HTTP/SSE: the URL (placeholders allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// stdio: the command and its arguments (placeholders allowed in arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    pub auth: AuthMethod,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oauth_scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<Setting>,
    pub risk: RiskTier,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs: Option<String>,
}

fn setting_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|first| first.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The `{NAME}` placeholders of a template.
fn placeholders(template: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        found.push(&after[..close]);
        rest = &after[close + 1..];
    }
    found
}

impl Entry {
    /// Check the entry: a valid slug, a transport with what it needs, settings with proper
    /// names, and every placeholder naming a setting.
    pub fn check(&self) -> Result<Transport, Invalid> {
        let name = ServerSlug::parse(&self.name)?;
        let bad = |what: String| Invalid(format!("catalog entry {name}: {what}"));
        if self.title.trim().is_empty() || self.description.trim().is_empty() || self.publisher.trim().is_empty() {
            return Err(bad("title, description and publisher are required".into()));
        }
        let transport = Transport::parse(&self.transport).map_err(|error| bad(error.0))?;
        match transport {
            Transport::Stdio if self.command.as_deref().is_none_or(|command| command.trim().is_empty()) => {
                return Err(bad("a stdio server needs a command".into()));
            }
            Transport::StreamableHttp | Transport::Sse => {
                let url = self.url.as_deref().unwrap_or("");
                let concrete =
                    placeholders(url).iter().fold(url.to_owned(), |url, name| url.replace(&format!("{{{name}}}"), "x"));
                if !(concrete.starts_with("https://") || concrete.starts_with("http://"))
                    || reqwest::Url::parse(&concrete).is_err()
                {
                    return Err(bad(format!("the URL {url:?} is not an http(s) URL")));
                }
            }
            Transport::Stdio => {}
        }
        for setting in &self.settings {
            if !setting_name_ok(&setting.name) {
                return Err(bad(format!(
                    "setting {:?}: names are upper-case letters, digits and _ (e.g. GITHUB_TOKEN)",
                    setting.name
                )));
            }
        }
        let templates = self.url.iter().chain(self.args.iter());
        for template in templates {
            for placeholder in placeholders(template) {
                if !self.settings.iter().any(|setting| setting.name == placeholder) {
                    return Err(bad(format!("{{{placeholder}}} in {template:?} names no setting")));
                }
            }
        }
        if self.auth == AuthMethod::ApiKey && !self.settings.iter().any(|setting| setting.secret) {
            return Err(bad("an API-key server needs a secret setting to hold the key".into()));
        }
        Ok(transport)
    }
}

/// The catalog Portcullis ships with.
pub fn starter() -> Vec<Entry> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        entries: Vec<Entry>,
    }
    let file: File = toml::from_str(include_str!("../catalog/starter.toml")).unwrap_or(File { entries: Vec::new() });
    file.entries
}

/// An entry from an MCP Registry `server.json` document. Remote servers (`remotes`) are
/// preferred; otherwise the first npm (`npx -y`) or PyPI (`uvx`) package run over stdio.
/// Environment variables become settings (secret when the document says so). Review fields
/// the document does not carry (publisher, risk) get cautious defaults: the name's namespace,
/// and high risk until an admin says otherwise.
pub fn from_server_json(document: &Value) -> Result<Entry, Invalid> {
    let text = |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    let full_name = text(document, "name")
        .ok_or_else(|| Invalid("server.json: \"name\" (e.g. io.github.you/weather) is missing".into()))?;
    let (namespace, short) = full_name
        .split_once('/')
        .ok_or_else(|| Invalid(format!("server.json: name {full_name:?} must be namespace/name")))?;
    let slug: String = short
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(32)
        .collect();
    let description = text(document, "description").unwrap_or_default();
    let title = text(document, "title").unwrap_or_else(|| short.to_owned());
    let mut entry = Entry {
        name: slug.trim_end_matches('-').to_owned(),
        title,
        description: if description.is_empty() { format!("{full_name} (imported)") } else { description },
        publisher: namespace.to_owned(),
        transport: String::new(),
        url: None,
        command: None,
        args: Vec::new(),
        auth: AuthMethod::None,
        oauth_scopes: Vec::new(),
        settings: Vec::new(),
        risk: RiskTier::High,
        docs: document.get("repository").and_then(|repository| text(repository, "url")),
    };
    let settings = |variables: Option<&Value>| -> Vec<Setting> {
        variables
            .and_then(Value::as_array)
            .map(|variables| {
                variables
                    .iter()
                    .filter_map(|variable| {
                        Some(Setting {
                            name: text(variable, "name")?,
                            description: text(variable, "description").unwrap_or_default(),
                            secret: variable.get("isSecret").and_then(Value::as_bool).unwrap_or(false),
                            required: variable.get("isRequired").and_then(Value::as_bool).unwrap_or(false),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(remote) = document.get("remotes").and_then(Value::as_array).and_then(|remotes| remotes.first()) {
        entry.transport = text(remote, "type").unwrap_or_default();
        entry.url = text(remote, "url");
        entry.settings = settings(remote.get("headers"));
    } else if let Some(package) =
        document.get("packages").and_then(Value::as_array).and_then(|packages| packages.first())
    {
        let identifier = text(package, "identifier").unwrap_or_default();
        let version = text(package, "version");
        let pinned = |separator: &str| match &version {
            Some(version) => format!("{identifier}{separator}{version}"),
            None => identifier.clone(),
        };
        match text(package, "registryType").as_deref() {
            Some("npm") => {
                entry.command = Some("npx".into());
                entry.args = vec!["-y".into(), pinned("@")];
            }
            Some("pypi") => {
                entry.command = Some("uvx".into());
                entry.args = vec![pinned("==")];
            }
            other => {
                return Err(Invalid(format!(
                    "server.json: package registry {other:?} is not supported yet; use npm, pypi or remotes"
                )));
            }
        }
        entry.transport =
            package.get("transport").and_then(|transport| text(transport, "type")).unwrap_or_else(|| "stdio".into());
        entry.settings = settings(package.get("environmentVariables"));
    } else {
        return Err(Invalid("server.json: neither \"remotes\" nor \"packages\" says how to run the server".into()));
    }
    if entry.settings.iter().any(|setting| setting.secret) {
        entry.auth = AuthMethod::ApiKey;
    }
    entry.check()?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_starter_catalog_is_valid() {
        let entries = starter();
        assert!(entries.len() >= 7, "{}", entries.len());
        let mut names: Vec<&str> = entries.iter().map(|entry| entry.name.as_str()).collect();
        for entry in &entries {
            entry.check().unwrap_or_else(|error| panic!("{error}"));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), entries.len(), "names are unique");
        for wanted in ["github", "slack", "brave-search", "filesystem", "postgres", "fetch", "time"] {
            assert!(names.contains(&wanted), "{wanted} is in the starter catalog");
        }
    }

    #[test]
    fn server_json_imports_remotes_and_packages() {
        let remote = from_server_json(&json!({
            "name": "com.example/acme-analytics", "title": "ACME Analytics", "version": "2.0.0",
            "description": "Real-time business intelligence",
            "remotes": [{"type": "streamable-http", "url": "https://analytics.example.com/mcp",
                         "headers": [{"name": "ACME_KEY", "isSecret": true, "isRequired": true}]}]
        }))
        .unwrap();
        assert_eq!((remote.name.as_str(), remote.transport.as_str()), ("acme-analytics", "streamable-http"));
        assert_eq!(
            (remote.publisher.as_str(), remote.auth, remote.risk),
            ("com.example", AuthMethod::ApiKey, RiskTier::High)
        );
        let package = from_server_json(&json!({
            "name": "io.github.someone/Weather_Server", "version": "1.0.2", "description": "Weather",
            "packages": [{"registryType": "npm", "identifier": "@someone/weather", "version": "1.0.2",
                          "transport": {"type": "stdio"},
                          "environmentVariables": [{"name": "WEATHER_UNITS", "description": "metric or imperial"}]}]
        }))
        .unwrap();
        assert_eq!(package.name, "weather-server");
        assert_eq!(package.command.as_deref(), Some("npx"));
        assert_eq!(package.args, ["-y", "@someone/weather@1.0.2"]);
        assert_eq!((package.settings.len(), package.auth), (1, AuthMethod::None));
        for (document, expected) in [
            (json!({"description": "x"}), "\"name\""),
            (json!({"name": "noslash", "remotes": []}), "namespace/name"),
            (json!({"name": "a/b", "packages": [{"registryType": "oci", "identifier": "x"}]}), "not supported"),
            (json!({"name": "a/b"}), "neither"),
            (json!({"name": "a/b", "remotes": [{"type": "streamable-http", "url": "ftp://x"}]}), "not an http(s) URL"),
        ] {
            let error = from_server_json(&document).unwrap_err().0;
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn entries_are_checked() {
        let mut entry = starter().into_iter().find(|entry| entry.name == "github").unwrap();
        entry.args.push("{MISSING}".into());
        assert!(entry.check().unwrap_err().0.contains("{MISSING}"));
        let mut entry = starter().into_iter().find(|entry| entry.name == "time").unwrap();
        entry.command = None;
        assert!(entry.check().unwrap_err().0.contains("needs a command"));
    }
}
