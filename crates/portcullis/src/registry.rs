//! The registry's domain types: servers, users, groups, grants and API keys. Values are
//! parsed at the boundary (`ServerSlug::parse`, `Email::parse`) so the rest of the code never
//! sees an invalid one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Why a value was refused, with what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A server name as used in `/mcp/{server}` and in namespaced tool names `{server}__{tool}`:
/// 1–32 characters of `[a-z0-9-]`, not starting or ending with `-`. Underscores are excluded
/// so the `__` separator is unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServerSlug(String);

impl ServerSlug {
    pub fn parse(text: &str) -> Result<ServerSlug, Invalid> {
        let valid_chars = text.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
        if text.is_empty() || text.len() > 32 || !valid_chars || text.starts_with('-') || text.ends_with('-') {
            return Err(Invalid(format!(
                "server name {text:?} is not valid: use 1-32 characters of a-z, 0-9 and '-', not starting or ending \
                 with '-' (for example \"github\" or \"jira-cloud\")"
            )));
        }
        Ok(ServerSlug(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerSlug {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A user's email address, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Email(String);

impl Email {
    pub fn parse(text: &str) -> Result<Email, Invalid> {
        let text = text.trim().to_ascii_lowercase();
        let valid = match text.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
            }
            None => false,
        };
        if !valid || text.len() > 254 || text.chars().any(char::is_whitespace) {
            return Err(Invalid(format!("{text:?} is not an email address such as ann@example.com")));
        }
        Ok(Email(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A group name: 1–64 printable characters without commas.
pub fn parse_group_name(text: &str) -> Result<String, Invalid> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.len() > 64 || trimmed.contains(',') || trimmed.chars().any(char::is_control) {
        return Err(Invalid(format!("group name {text:?} is not valid: use 1-64 characters without commas")));
    }
    Ok(trimmed.to_owned())
}

/// How the gateway talks to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    StreamableHttp,
    Sse,
    Stdio,
}

impl Transport {
    pub fn parse(text: &str) -> Result<Transport, Invalid> {
        match text {
            "streamable-http" | "http" => Ok(Transport::StreamableHttp),
            "sse" => Ok(Transport::Sse),
            "stdio" => Ok(Transport::Stdio),
            _ => Err(Invalid(format!("transport {text:?} is not one of streamable-http, sse, stdio"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable-http",
            Transport::Sse => "sse",
            Transport::Stdio => "stdio",
        }
    }
}

/// Per-user OAuth to an upstream server: each person connects their own account and the
/// gateway sends their token (never a client's own credential).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthUpstream {
    /// Scopes to ask for (empty: what the server's metadata lists, or none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// A client registered with the authorization server in advance; without one the gateway
    /// registers itself (dynamic client registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The server and its authorization server are inside the company network: discovery may
    /// reach private addresses (refused otherwise, against SSRF).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
}

/// A server as an admin describes it, secrets included (in memory only).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: ServerSlug,
    pub description: String,
    pub transport: Transport,
    /// For HTTP and SSE servers.
    pub url: Option<String>,
    /// For stdio servers.
    pub command: Option<String>,
    pub args: Vec<String>,
    /// Environment of a stdio child. Values are secrets.
    pub env: BTreeMap<String, String>,
    /// Headers sent upstream on every HTTP request. Values are secrets.
    pub headers: BTreeMap<String, String>,
    /// Requests without credentials are served as the anonymous principal.
    pub public: bool,
    /// One stdio process shared by every session (only for stateless tools).
    pub shared_process: bool,
    /// Per-user OAuth to the upstream.
    pub oauth: Option<OAuthUpstream>,
    /// The secret of a pre-registered OAuth client. A secret.
    pub oauth_client_secret: Option<String>,
}

impl fmt::Debug for ServerSpec {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ServerSpec")
            .field("name", &self.name)
            .field("transport", &self.transport)
            .field("url", &self.url)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("public", &self.public)
            .field("oauth", &self.oauth)
            .finish()
    }
}

impl ServerSpec {
    /// Check that the fields fit the transport.
    pub fn validate(&self) -> Result<(), Invalid> {
        let name = &self.name;
        match self.transport {
            Transport::StreamableHttp | Transport::Sse => {
                let Some(url) = &self.url else {
                    return Err(Invalid(format!("server {name}: transport {} needs a url", self.transport.as_str())));
                };
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(Invalid(format!("server {name}: url {url:?} must start with http:// or https://")));
                }
                if self.command.is_some() || !self.args.is_empty() || !self.env.is_empty() {
                    return Err(Invalid(format!(
                        "server {name}: command, args and env are for stdio servers; HTTP servers take url and headers"
                    )));
                }
                for header in self.headers.keys() {
                    if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        return Err(Invalid(format!("server {name}: {header:?} is not a valid HTTP header name")));
                    }
                }
                for (header, value) in &self.headers {
                    if reqwest::header::HeaderValue::from_str(value).is_err() {
                        return Err(Invalid(format!(
                            "server {name}: the value of header {header:?} has characters not allowed in HTTP headers"
                        )));
                    }
                }
            }
            Transport::Stdio => {
                if self.command.as_deref().is_none_or(str::is_empty) {
                    return Err(Invalid(format!("server {name}: transport stdio needs a command")));
                }
                if self.url.is_some() || !self.headers.is_empty() {
                    return Err(Invalid(format!(
                        "server {name}: url and headers are for HTTP servers; stdio servers take command, args and env"
                    )));
                }
                for key in self.env.keys() {
                    if key.is_empty() || key.contains('=') || key.contains('\0') {
                        return Err(Invalid(format!(
                            "server {name}: {key:?} is not a valid environment variable name"
                        )));
                    }
                }
            }
        }
        if self.shared_process && self.transport != Transport::Stdio {
            return Err(Invalid(format!("server {name}: shared_process only applies to stdio servers")));
        }
        if let Some(oauth) = &self.oauth {
            if self.transport != Transport::StreamableHttp {
                return Err(Invalid(format!(
                    "server {name}: per-user OAuth (oauth) needs a streamable-http server; stdio and SSE servers take \
                     static credentials"
                )));
            }
            if self.headers.keys().any(|header| header.eq_ignore_ascii_case("authorization")) {
                return Err(Invalid(format!(
                    "server {name}: with oauth each person's token is the Authorization header; remove the static one"
                )));
            }
            if self.oauth_client_secret.is_some() && oauth.client_id.is_none() {
                return Err(Invalid(format!("server {name}: oauth client_secret needs the client_id it belongs to")));
            }
        } else if self.oauth_client_secret.is_some() {
            return Err(Invalid(format!("server {name}: an oauth client secret is set but oauth is not")));
        }
        Ok(())
    }
}

/// A server as stored and shown: secrets only by name.
#[derive(Debug, Clone, Serialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub description: String,
    pub transport: Transport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub args: Vec<String>,
    /// Names of the environment variables set (values are never returned).
    pub env_names: Vec<String>,
    /// Names of the headers set (values are never returned).
    pub header_names: Vec<String>,
    pub public: bool,
    pub shared_process: bool,
    /// Per-user OAuth to the upstream (the client secret, if any, is among the sealed secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthUpstream>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip)]
    pub sealed_secrets: Vec<u8>,
}

/// The secret part of a server, sealed together in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSecrets {
    pub env: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_client_secret: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub admin: bool,
    /// Every admin role held, super-admin included.
    pub admin_roles: Vec<AdminRole>,
    pub status: Status,
    pub groups: Vec<String>,
    /// Job-function roles (from the identity provider or an admin), for access rules.
    pub roles: Vec<String>,
    /// Identity attributes rules can match: department, title and team when set, and the
    /// directory's other text attributes.
    pub attributes: BTreeMap<String, String>,
    pub created_at: i64,
}

/// An administrator's role. Each grants distinct powers; people hold any number of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminRole {
    /// Everything, including assigning admin roles (`admin = true`).
    SuperAdmin,
    /// Policies and grants, audit, suspending people in an incident.
    SecurityAdmin,
    /// Servers and people.
    ItAdmin,
    /// Reading audit and analytics.
    AnalyticsAdmin,
}

/// What an admin role allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    ManageServers,
    ManagePeople,
    SuspendPeople,
    ManagePolicies,
    ReadAudit,
    /// Assign and remove admin roles; see everyone's API keys.
    ManageAdmins,
}

impl AdminRole {
    pub const ALL: [AdminRole; 4] =
        [AdminRole::SuperAdmin, AdminRole::SecurityAdmin, AdminRole::ItAdmin, AdminRole::AnalyticsAdmin];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::SuperAdmin => "super-admin",
            AdminRole::SecurityAdmin => "security-admin",
            AdminRole::ItAdmin => "it-admin",
            AdminRole::AnalyticsAdmin => "analytics-admin",
        }
    }

    pub fn parse(text: &str) -> Result<AdminRole, Invalid> {
        let text = text.trim().to_ascii_lowercase();
        AdminRole::ALL.into_iter().find(|role| role.as_str() == text).ok_or_else(|| {
            let known: Vec<&str> = AdminRole::ALL.iter().map(|role| role.as_str()).collect();
            Invalid(format!("unknown admin role {text:?}; the admin roles are {}", known.join(", ")))
        })
    }

    pub fn can(self, power: Power) -> bool {
        match self {
            AdminRole::SuperAdmin => true,
            AdminRole::SecurityAdmin => {
                matches!(power, Power::ManagePolicies | Power::ReadAudit | Power::SuspendPeople)
            }
            AdminRole::ItAdmin => matches!(power, Power::ManageServers | Power::ManagePeople | Power::SuspendPeople),
            AdminRole::AnalyticsAdmin => matches!(power, Power::ReadAudit),
        }
    }

    /// The roles held by someone with the super-admin flag `admin` and stored `roles`
    /// (unknown names in the store are ignored).
    pub fn held(admin: bool, roles: &[String]) -> Vec<AdminRole> {
        let mut held: Vec<AdminRole> = roles.iter().filter_map(|role| AdminRole::parse(role).ok()).collect();
        if admin {
            held.push(AdminRole::SuperAdmin);
        }
        held.sort();
        held.dedup();
        held
    }
}

/// May an admin holding `actor` roles suspend or reactivate someone holding `target` roles?
/// Nobody changes their own status, and only a super admin acts on a super admin.
pub fn may_change_status(
    actor: &[AdminRole],
    actor_id: &str,
    target: &[AdminRole],
    target_id: &str,
) -> Result<(), Invalid> {
    if actor_id == target_id {
        return Err(Invalid("you cannot suspend or reactivate yourself".into()));
    }
    if target.contains(&AdminRole::SuperAdmin) && !actor.contains(&AdminRole::SuperAdmin) {
        return Err(Invalid("only a super admin can suspend or reactivate a super admin".into()));
    }
    Ok(())
}

/// Whether a person may use Portcullis. Only `active` people authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    /// Deactivated by the identity provider (SCIM `active: false`).
    Inactive,
    /// Suspended by an admin; the identity provider cannot lift it.
    Suspended,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
            Status::Suspended => "suspended",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "active" => Some(Status::Active),
            "inactive" => Some(Status::Inactive),
            "suspended" => Some(Status::Suspended),
            _ => None,
        }
    }
}

/// A person with everything the directory knows: what the identity provider pushed (SCIM),
/// what admins set, and where the record came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Person {
    pub id: String,
    pub email: String,
    /// The identity provider's login name (SCIM `userName`); unique case-insensitively.
    pub user_name: String,
    pub name: String,
    pub external_id: Option<String>,
    pub status: Status,
    pub department: String,
    pub title: String,
    pub team: String,
    /// Super admin.
    pub admin: bool,
    /// Further admin roles: `security-admin`, `it-admin`, `analytics-admin`.
    pub admin_roles: Vec<String>,
    /// Job-function roles, from the identity provider or set by an admin.
    pub roles: Vec<String>,
    /// Other identity attributes (for policy conditions).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The rest of the SCIM resource as the identity provider last wrote it.
    #[serde(skip)]
    pub scim: serde_json::Map<String, serde_json::Value>,
    /// `local`, `scim` or `oidc`.
    pub source: String,
    /// (group id, group name).
    pub groups: Vec<(String, String)>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_login_at: Option<i64>,
}

impl Person {
    /// A new active person with only an email (also their user name), from `source`.
    pub fn new(id: String, email: &str, source: &str) -> Person {
        let now = crate::store::now_ms();
        Person {
            id,
            email: email.to_owned(),
            user_name: email.to_owned(),
            name: String::new(),
            external_id: None,
            status: Status::Active,
            department: String::new(),
            title: String::new(),
            team: String::new(),
            admin: false,
            admin_roles: Vec::new(),
            roles: Vec::new(),
            attributes: serde_json::Map::new(),
            scim: serde_json::Map::new(),
            source: source.to_owned(),
            groups: Vec::new(),
            created_at: now,
            updated_at: now,
            last_login_at: None,
        }
    }

    /// Does the person match the filters admins use: status, a role (admin or job function)
    /// and a group (case-insensitive)?
    pub fn matches(&self, status: Option<Status>, role: Option<&str>, group: Option<&str>) -> bool {
        status.is_none_or(|status| self.status == status)
            && role.is_none_or(|role| {
                AdminRole::held(self.admin, &self.admin_roles).iter().any(|held| held.as_str() == role)
                    || self.roles.iter().any(|held| held.eq_ignore_ascii_case(role))
            })
            && group.is_none_or(|group| self.groups.iter().any(|(_, name)| name.eq_ignore_ascii_case(group)))
    }
}

/// A group with its identity-provider identity and members (user id, email).
#[derive(Debug, Clone, Serialize)]
pub struct DirectoryGroup {
    pub id: String,
    pub name: String,
    pub external_id: Option<String>,
    pub source: String,
    pub members: Vec<(String, String)>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub members: Vec<String>,
}

/// Who a grant names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grantee {
    User,
    Group,
}

impl Grantee {
    pub fn as_str(self) -> &'static str {
        match self {
            Grantee::User => "user",
            Grantee::Group => "group",
        }
    }
}

/// "This user / group may use this server."
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    pub id: String,
    pub server: String,
    pub grantee: Grantee,
    /// The user's email or the group's name.
    pub principal: String,
    #[serde(skip)]
    pub principal_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub user_id: String,
    pub user_email: String,
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// Up to a few seconds behind: uses are written in batches.
    pub last_used_at: Option<i64>,
    #[serde(skip)]
    pub key_hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for good in ["a", "github", "jira-cloud", "x1", "0123456789abcdef0123456789abcdef"] {
            assert!(ServerSlug::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a__b", "a b", "0123456789abcdef0123456789abcdef0", "é"] {
            assert!(ServerSlug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(Email::parse(" Ann@Example.COM ").unwrap().as_str(), "ann@example.com");
        for bad in ["ann", "@example.com", "ann@example", "a n@example.com", "ann@.com"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }
}
