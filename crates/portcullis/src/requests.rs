//! Server requests: how an MCP server gets into the company (the admin guide's approval
//! workflow). An employee asks for a catalog server, a custom one, or access to a server that
//! is already active; an admin reviews the request — its configuration, the justification, a
//! connection test and the automated checks of [`crate::vetting`] — completes the seven-section
//! checklist, and approves (the server goes live with an access rule for the requester) or
//! rejects with a specific reason and next steps.
//!
//! This module holds the parsed, checked forms; storage is [`crate::store::requests`], the
//! flows are in the API and the console.
//!
//! States: `draft` → `pending` → `approved` | `rejected`; `draft` and `pending` can be
//! `withdrawn` by the requester. A rejected request is resubmitted as a new request linked to
//! it (`previous`), so the history stays.

use crate::catalog::{AuthMethod, Entry, RiskTier};
use crate::registry::{Invalid, ServerSlug, ServerSpec, Transport};
use crate::rules::RuleSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A server made from a catalog entry.
    Catalog,
    /// A server the employee describes.
    Custom,
    /// Access to a server that is already active.
    Access,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Catalog => "catalog",
            Kind::Custom => "custom",
            Kind::Access => "access",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        [Kind::Catalog, Kind::Custom, Kind::Access].into_iter().find(|kind| kind.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Draft,
    Pending,
    Approved,
    Rejected,
    Withdrawn,
}

impl State {
    pub const ALL: [State; 5] = [State::Draft, State::Pending, State::Approved, State::Rejected, State::Withdrawn];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Draft => "draft",
            State::Pending => "pending",
            State::Approved => "approved",
            State::Rejected => "rejected",
            State::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// Who builds a custom server (the guide's timeline distinguishes the two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Built and run by a team in the company.
    Internal,
    /// From a vendor or an open-source project.
    #[default]
    ThirdParty,
}

/// The review class of a request, which sets its target time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// Catalog servers and access to active servers.
    Catalog,
    Internal,
    ThirdParty,
    /// Sensitive data or a high-risk catalog entry.
    HighRisk,
    /// The requester flagged an urgent business need.
    Urgent,
}

impl Tier {
    pub const ALL: [Tier; 5] = [Tier::Catalog, Tier::Internal, Tier::ThirdParty, Tier::HighRisk, Tier::Urgent];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Catalog => "catalog",
            Tier::Internal => "internal",
            Tier::ThirdParty => "third-party",
            Tier::HighRisk => "high-risk",
            Tier::Urgent => "urgent",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Tier::Catalog => "Catalog server or access",
            Tier::Internal => "Custom internal server",
            Tier::ThirdParty => "Third-party custom server",
            Tier::HighRisk => "High-risk / sensitive",
            Tier::Urgent => "Urgent business need",
        }
    }

    pub fn parse(text: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|tier| tier.as_str() == text)
    }
}

/// How long a tier's review should take: hours, or business days (Monday–Friday, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Hours(u32),
    BusinessDays(u32),
}

impl Target {
    /// `8h` or `2d` (business days).
    pub fn parse(text: &str) -> Result<Target, Invalid> {
        let text = text.trim();
        let bad =
            || Invalid(format!("target {text:?} is not a duration: write hours as \"8h\" or business days as \"2d\""));
        let (number, unit) = text.split_at(text.len().saturating_sub(1));
        let amount: u32 = number.trim().parse().map_err(|_| bad())?;
        if amount == 0 || amount > 1000 {
            return Err(Invalid(format!("target {text:?} must be between 1 and 1000 units")));
        }
        match unit {
            "h" => Ok(Target::Hours(amount)),
            "d" => Ok(Target::BusinessDays(amount)),
            _ => Err(bad()),
        }
    }

    pub fn text(self) -> String {
        match self {
            Target::Hours(hours) => format!("{hours}h"),
            Target::BusinessDays(days) => format!("{days}d"),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Target::Hours(1) => "1 hour".into(),
            Target::Hours(hours) => format!("{hours} hours"),
            Target::BusinessDays(1) => "1 business day".into(),
            Target::BusinessDays(days) => format!("{days} business days"),
        }
    }

    /// The deadline of something submitted at `from` (ms since the epoch). Business days
    /// skip Saturdays and Sundays (UTC); a request submitted at the weekend counts from Monday.
    pub fn deadline(self, from: i64) -> i64 {
        const HOUR: i64 = 3_600_000;
        const DAY: i64 = 24 * HOUR;
        match self {
            Target::Hours(hours) => from + i64::from(hours) * HOUR,
            Target::BusinessDays(days) => {
                let weekend = |ms: i64| matches!(ms.div_euclid(DAY).rem_euclid(7), 2 | 3); // 1970-01-01 was a Thursday
                let mut at = from;
                while weekend(at) {
                    at = (at.div_euclid(DAY) + 1) * DAY;
                }
                let mut left = days;
                while left > 0 {
                    at += DAY;
                    if !weekend(at) {
                        left -= 1;
                    }
                }
                at
            }
        }
    }
}

/// The target time of each tier; admins change them (`request_targets` setting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(pub BTreeMap<Tier, Target>);

impl Default for Targets {
    /// The guide's timeline: catalog 4–8 hours, custom internal 1–2 business days,
    /// third-party 2–3, high-risk up to a week, urgent the same day.
    fn default() -> Targets {
        Targets(BTreeMap::from([
            (Tier::Catalog, Target::Hours(8)),
            (Tier::Internal, Target::BusinessDays(2)),
            (Tier::ThirdParty, Target::BusinessDays(3)),
            (Tier::HighRisk, Target::BusinessDays(5)),
            (Tier::Urgent, Target::Hours(8)),
        ]))
    }
}

impl Targets {
    pub const SETTING: &'static str = "request_targets";

    pub fn get(&self, tier: Tier) -> Target {
        self.0.get(&tier).copied().unwrap_or(Target::BusinessDays(5))
    }

    /// From the stored JSON (`{"catalog": "8h", …}`); tiers not named keep their default.
    pub fn from_json(text: &str) -> Targets {
        let mut targets = Targets::default();
        if let Ok(map) = serde_json::from_str::<BTreeMap<String, String>>(text) {
            for (tier, target) in map {
                if let (Some(tier), Ok(target)) = (Tier::parse(&tier), Target::parse(&target)) {
                    targets.0.insert(tier, target);
                }
            }
        }
        targets
    }

    /// Change the targets named in `changes` (`{"catalog": "6h"}`), refusing unknown tiers.
    pub fn update(&mut self, changes: &BTreeMap<String, String>) -> Result<(), Invalid> {
        for (tier_name, target) in changes {
            let tier = Tier::parse(tier_name).ok_or_else(|| {
                let known: Vec<&str> = Tier::ALL.iter().map(|tier| tier.as_str()).collect();
                Invalid(format!("unknown tier {tier_name:?}; the tiers are {}", known.join(", ")))
            })?;
            self.0.insert(tier, Target::parse(target)?);
        }
        Ok(())
    }

    pub fn to_json(&self) -> serde_json::Value {
        self.0
            .iter()
            .map(|(tier, target)| (tier.as_str().to_owned(), serde_json::Value::String(target.text())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Why the server is needed (the guide's four questions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Justification {
    #[serde(default)]
    pub why: String,
    #[serde(default)]
    pub use_case: String,
    #[serde(default)]
    pub expected_value: String,
    #[serde(default)]
    pub alternatives: String,
}

impl Justification {
    /// A request is only submitted with every question answered.
    pub fn check_complete(&self) -> Result<(), Invalid> {
        let missing: Vec<&str> = [
            ("why it is needed", &self.why),
            ("the use case", &self.use_case),
            ("the expected value", &self.expected_value),
            ("the alternatives considered", &self.alternatives),
        ]
        .into_iter()
        .filter(|(_, text)| text.trim().is_empty())
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Err(Invalid(format!(
                "the business justification is incomplete: say {} (a draft can be saved without them)",
                missing.join(", ")
            )));
        }
        let too_long = [&self.why, &self.use_case, &self.expected_value, &self.alternatives]
            .iter()
            .any(|text| text.chars().count() > 4000);
        if too_long {
            return Err(Invalid("each justification answer is limited to 4000 characters".into()));
        }
        Ok(())
    }
}

/// The server a request proposes, as the reviewer sees it: everything but secret values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub name: String,
    pub description: String,
    pub transport: Transport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    pub auth: AuthMethod,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oauth_scopes: Vec<String>,
    /// Names of the environment variables set (values are secrets).
    #[serde(default)]
    pub env_names: Vec<String>,
    /// Names of the headers set (values are secrets).
    #[serde(default)]
    pub header_names: Vec<String>,
}

/// The secret half of a proposal, sealed in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalSecrets {
    pub env: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
}

/// A custom server as the request form gives it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomServer {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub transport: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub auth: Option<AuthMethod>,
    #[serde(default)]
    pub oauth_scopes: Vec<String>,
}

/// A proposal with its secrets, checked: it would make a valid server.
#[derive(Debug, Clone)]
pub struct Checked {
    pub proposal: Proposal,
    pub secrets: ProposalSecrets,
}

impl Checked {
    /// Does the proposed server live on the internal network (its URL's host is private)?
    pub fn internal(&self) -> bool {
        let url = self.proposal.url.as_deref().and_then(|url| reqwest::Url::parse(url).ok());
        url.as_ref().and_then(reqwest::Url::host_str).is_some_and(crate::vetting::internal_host)
    }

    /// The server spec an approval stores.
    pub fn spec(&self) -> Result<ServerSpec, Invalid> {
        let spec = ServerSpec {
            name: ServerSlug::parse(&self.proposal.name)?,
            description: self.proposal.description.clone(),
            transport: self.proposal.transport,
            url: self.proposal.url.clone(),
            command: self.proposal.command.clone(),
            args: self.proposal.args.clone(),
            env: self.secrets.env.clone(),
            headers: self.secrets.headers.clone(),
            public: false,
            shared_process: false,
            oauth: (self.proposal.auth == AuthMethod::Oauth).then(|| crate::registry::OAuthUpstream {
                scopes: self.proposal.oauth_scopes.clone(),
                client_id: None,
                // A server on the internal network most likely signs people in there too.
                internal: self.internal(),
            }),
            oauth_client_secret: None,
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl CustomServer {
    pub fn check(self) -> Result<Checked, Invalid> {
        let transport = Transport::parse(self.transport.trim())?;
        let description = self.description.trim().to_owned();
        if description.is_empty() {
            return Err(Invalid("describe the server: what it is and what it does".into()));
        }
        if description.chars().count() > 2000 {
            return Err(Invalid("the description is limited to 2000 characters".into()));
        }
        let blank = |value: Option<String>| value.map(|text| text.trim().to_owned()).filter(|text| !text.is_empty());
        let checked = Checked {
            proposal: Proposal {
                name: self.name.trim().to_owned(),
                description,
                transport,
                url: blank(self.url),
                command: blank(self.command),
                args: self.args,
                auth: self.auth.unwrap_or(if self.headers.is_empty() { AuthMethod::None } else { AuthMethod::ApiKey }),
                oauth_scopes: self.oauth_scopes.into_iter().filter(|scope| !scope.trim().is_empty()).collect(),
                env_names: self.env.keys().cloned().collect(),
                header_names: self.headers.keys().cloned().collect(),
            },
            secrets: ProposalSecrets { env: self.env, headers: self.headers },
        };
        checked.spec()?;
        Ok(checked)
    }
}

/// A server made from catalog `entry` with the requester's `settings` (`{NAME}` placeholders
/// in the URL and arguments are filled in; for stdio servers every setting is also an
/// environment variable; for HTTP servers a secret setting not used in the URL is sent as
/// `Authorization: Bearer`).
pub fn from_catalog(
    entry: &Entry,
    name: Option<&str>,
    settings: &BTreeMap<String, String>,
) -> Result<Checked, Invalid> {
    let transport = entry.check()?;
    for given in settings.keys() {
        if !entry.settings.iter().any(|setting| &setting.name == given) {
            let known: Vec<&str> = entry.settings.iter().map(|setting| setting.name.as_str()).collect();
            return Err(Invalid(format!(
                "catalog entry {} has no setting {given:?}; its settings are: {}",
                entry.name,
                if known.is_empty() { "none".into() } else { known.join(", ") }
            )));
        }
    }
    let mut values = BTreeMap::new();
    for setting in &entry.settings {
        match settings.get(&setting.name).map(|value| value.trim()).filter(|value| !value.is_empty()) {
            Some(value) => {
                values.insert(setting.name.clone(), value.to_owned());
            }
            None if setting.required => {
                return Err(Invalid(format!(
                    "catalog entry {} needs the setting {} ({})",
                    entry.name,
                    setting.name,
                    if setting.description.is_empty() { "no description" } else { &setting.description }
                )));
            }
            None => {}
        }
    }
    let fill = |template: &str| {
        values.iter().fold(template.to_owned(), |text, (name, value)| text.replace(&format!("{{{name}}}"), value))
    };
    let url = entry.url.as_deref().map(fill);
    let args: Vec<String> = entry.args.iter().map(|arg| fill(arg)).collect();
    let mut secrets = ProposalSecrets::default();
    match transport {
        Transport::Stdio => secrets.env = values.clone(),
        Transport::StreamableHttp | Transport::Sse => {
            let in_url = entry.url.as_deref().unwrap_or("");
            if let Some(setting) = entry
                .settings
                .iter()
                .find(|setting| setting.secret && !in_url.contains(&format!("{{{}}}", setting.name)))
                && let Some(value) = values.get(&setting.name)
            {
                secrets.headers.insert("Authorization".into(), format!("Bearer {value}"));
            }
        }
    }
    let checked = Checked {
        proposal: Proposal {
            name: name.map(str::trim).filter(|name| !name.is_empty()).unwrap_or(&entry.name).to_owned(),
            description: entry.description.clone(),
            transport,
            url,
            command: entry.command.clone(),
            args,
            auth: entry.auth,
            oauth_scopes: entry.oauth_scopes.clone(),
            env_names: secrets.env.keys().cloned().collect(),
            header_names: secrets.headers.keys().cloned().collect(),
        },
        secrets,
    };
    checked.spec()?;
    Ok(checked)
}

/// The tier of a request.
pub fn tier_of(kind: Kind, catalog_risk: Option<RiskTier>, origin: Origin, sensitive: bool, urgent: bool) -> Tier {
    if urgent {
        return Tier::Urgent;
    }
    if sensitive || catalog_risk == Some(RiskTier::High) {
        return Tier::HighRisk;
    }
    match (kind, origin) {
        (Kind::Catalog | Kind::Access, _) => Tier::Catalog,
        (Kind::Custom, Origin::Internal) => Tier::Internal,
        (Kind::Custom, Origin::ThirdParty) => Tier::ThirdParty,
    }
}

/// The same server, for redundancy: URLs compared without case in scheme and host and without
/// a trailing slash; commands compared with their arguments.
pub fn same_server(left: &Proposal, url: Option<&str>, command: Option<&str>, args: &[String]) -> bool {
    fn normal(url: &str) -> String {
        match reqwest::Url::parse(url) {
            Ok(parsed) => parsed.as_str().trim_end_matches('/').to_owned(),
            Err(_) => url.trim_end_matches('/').to_ascii_lowercase(),
        }
    }
    match (&left.url, url) {
        (Some(mine), Some(theirs)) => return normal(mine) == normal(theirs),
        (Some(_), None) | (None, Some(_)) => return false,
        (None, None) => {}
    }
    match (&left.command, command) {
        (Some(mine), Some(theirs)) => mine == theirs && left.args == args,
        _ => false,
    }
}

/// One of the guide's seven review sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    Source,
    Tools,
    Data,
    Auth,
    Network,
    Need,
    Compliance,
}

impl Section {
    pub const ALL: [Section; 7] = [
        Section::Source,
        Section::Tools,
        Section::Data,
        Section::Auth,
        Section::Network,
        Section::Need,
        Section::Compliance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Section::Source => "source",
            Section::Tools => "tools",
            Section::Data => "data",
            Section::Auth => "auth",
            Section::Network => "network",
            Section::Need => "need",
            Section::Compliance => "compliance",
        }
    }

    pub fn question(self) -> &'static str {
        match self {
            Section::Source => "Does the server come from a trusted source?",
            Section::Tools => "Do its tools match what it is for?",
            Section::Data => "What data can it reach, and is that appropriate?",
            Section::Auth => "Is authentication set up properly?",
            Section::Network => "Can the gateway reach it safely?",
            Section::Need => "Is there a legitimate business need?",
            Section::Compliance => "Does it comply with company policies?",
        }
    }

    /// What the reviewer weighs in this section.
    pub fn points(self) -> &'static [&'static str] {
        match self {
            Section::Source => &[
                "catalog entry, known vendor or internal team",
                "documentation and source code available",
                "no known vulnerabilities; maintained",
            ],
            Section::Tools => &[
                "clear names and descriptions, nothing obfuscated",
                "no instructions hidden in metadata",
                "shell or file-system tools only when justified",
            ],
            Section::Data => &[
                "data scope clear and fit for the use case",
                "no PII, financial or health data without need",
                "read-only where possible; no exfiltration path",
            ],
            Section::Auth => &[
                "appropriate method; minimal OAuth scopes",
                "no credentials in plain text",
                "MFA for sensitive servers",
            ],
            Section::Network => &[
                "URL valid and reachable; connection test passes",
                "TLS valid for external servers",
                "network path secure",
            ],
            Section::Need => {
                &["use case clear; role justifies it", "no existing server serves the need", "not for personal use"]
            }
            Section::Compliance => &[
                "data governance and regulations (GDPR, SOC 2, HIPAA …)",
                "least privilege; recorded in the server inventory",
                "legal approval where needed",
            ],
        }
    }

    pub fn parse(text: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|section| section.as_str() == text)
    }
}

/// The reviewer's answer for one section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mark {
    Checked,
    NotApplicable,
    Concern,
}

impl Mark {
    pub fn parse(text: &str) -> Option<Mark> {
        match text {
            "checked" => Some(Mark::Checked),
            "not-applicable" | "n/a" => Some(Mark::NotApplicable),
            "concern" => Some(Mark::Concern),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Checked => "checked",
            Mark::NotApplicable => "not-applicable",
            Mark::Concern => "concern",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub mark: Mark,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The completed checklist, section by section.
pub type Checklist = BTreeMap<Section, Answer>;

/// An approval needs every section answered, and a note on each concern.
pub fn check_checklist(checklist: &Checklist) -> Result<(), Invalid> {
    let missing: Vec<&str> = Section::ALL
        .iter()
        .filter(|section| !checklist.contains_key(section))
        .map(|section| section.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Invalid(format!(
            "complete the security checklist before approving: mark {} as checked, not-applicable or concern",
            missing.join(", ")
        )));
    }
    for (section, answer) in checklist {
        if answer.mark == Mark::Concern && answer.note.trim().len() < 10 {
            return Err(Invalid(format!(
                "the checklist marks a concern about {} without saying what it is: add a note",
                section.as_str()
            )));
        }
        if answer.note.chars().count() > 2000 {
            return Err(Invalid("checklist notes are limited to 2000 characters".into()));
        }
    }
    Ok(())
}

/// Whom the access rule an approval creates applies to (the guide's scenario 2: start narrow).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// `requester` (default) or `group`.
    #[serde(default)]
    pub to: GrantTo,
    /// For `group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Only these tools (empty: the whole server).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrantTo {
    #[default]
    Requester,
    Group,
}

impl Grant {
    /// The allow rule for `server`, granted on request `id` of `requester`.
    pub fn rule(&self, id: &str, server: &str, requester: &str) -> Result<RuleSpec, Invalid> {
        let (users, groups, who) = match self.to {
            GrantTo::Requester => (vec![requester.to_owned()], Vec::new(), requester.to_owned()),
            GrantTo::Group => {
                let group = self
                    .group
                    .as_deref()
                    .map(str::trim)
                    .filter(|group| !group.is_empty())
                    .ok_or_else(|| Invalid("name the group the access rule is for".into()))?;
                (Vec::new(), vec![group.to_owned()], format!("group {group}"))
            }
        };
        let tools: Vec<String> =
            self.tools.iter().map(|tool| tool.trim().to_owned()).filter(|tool| !tool.is_empty()).collect();
        Ok(RuleSpec {
            name: format!("{server} for {who}"),
            effect: "allow".into(),
            global: false,
            servers: vec![server.to_owned()],
            tools,
            resources: Vec::new(),
            prompts: Vec::new(),
            everyone: false,
            users,
            groups,
            roles: Vec::new(),
            agents: Vec::new(),
            attributes: BTreeMap::new(),
            conditions: Vec::new(),
            expires: None,
            enabled: true,
            notes: format!("created by the approval of request {id}"),
        })
    }
}

/// Phrases that on their own say nothing about why a request was rejected.
const GENERIC: &[&str] = &[
    "security concerns",
    "security concern",
    "security reasons",
    "security risk",
    "security",
    "not approved",
    "denied",
    "rejected",
    "no",
    "not needed",
    "not necessary",
    "policy",
    "company policy",
    "against policy",
    "compliance",
    "too risky",
    "risky",
    "risk",
    "not allowed",
    "n/a",
    "see above",
    "other",
];

/// A rejection must tell the requester what the specific issue is and what to do next.
pub fn check_rejection(reason: &str, next_steps: &str) -> Result<(), Invalid> {
    let normal: String = reason
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() || c == '/' { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let words = normal.split_whitespace().count();
    if GENERIC.contains(&normal.as_str()) || normal.chars().count() < 40 || words < 8 {
        return Err(Invalid(
            "give a detailed reason: what the specific issue is, what would need to change, and any alternative — \
             for example \"This server can read every customer record, but the use case needs only order status. \
             Please resubmit with a narrower scope.\" A phrase such as \"security concerns\" is not enough"
                .into(),
        ));
    }
    if next_steps.trim().chars().count() < 15 {
        return Err(Invalid(
            "suggest next steps: how to resubmit, an existing server that might serve, or whom to contact".into(),
        ));
    }
    if reason.chars().count() > 4000 || next_steps.chars().count() > 4000 {
        return Err(Invalid("the reason and the next steps are limited to 4000 characters each".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_days_skip_the_weekend() {
        // Friday 2026-11-27 10:00 UTC + 1 business day = Monday 2026-11-30 10:00.
        let friday = crate::time::parse_iso_time("2026-11-27T10:00:00Z").unwrap();
        let monday = crate::time::parse_iso_time("2026-11-30T10:00:00Z").unwrap();
        assert_eq!(Target::BusinessDays(1).deadline(friday), monday);
        // Saturday counts from Monday 00:00: 2 business days later is Wednesday 00:00.
        let saturday = crate::time::parse_iso_time("2026-11-28T15:00:00Z").unwrap();
        assert_eq!(crate::time::iso_time(Target::BusinessDays(2).deadline(saturday)), "2026-12-02T00:00:00Z");
        assert_eq!(Target::Hours(8).deadline(friday), friday + 8 * 3_600_000);
    }

    #[test]
    fn targets_parse_and_refuse() {
        assert_eq!(Target::parse("8h").unwrap(), Target::Hours(8));
        assert_eq!(Target::parse(" 3d").unwrap(), Target::BusinessDays(3));
        for bad in ["", "h", "0h", "3w", "-1d", "1.5d"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        let mut targets = Targets::default();
        assert!(targets.update(&BTreeMap::from([("weekly".into(), "1d".into())])).is_err());
        targets.update(&BTreeMap::from([("catalog".into(), "4h".into())])).unwrap();
        assert_eq!(targets.get(Tier::Catalog), Target::Hours(4));
        assert_eq!(Targets::from_json(&targets.to_json().to_string()), targets);
    }

    #[test]
    fn rejection_reasons_must_be_specific() {
        let steps = "Resubmit with a read-only token, or ask #platform.";
        for generic in ["Security concerns", "security concerns.", "No", "Not approved - policy"] {
            assert!(check_rejection(generic, steps).is_err(), "{generic}");
        }
        let good = "This server can read every customer record, but the stated use needs only order status.";
        assert!(check_rejection(good, steps).is_ok());
        assert!(check_rejection(good, "").is_err());
    }

    #[test]
    fn catalog_settings_fill_the_template() {
        let entry = crate::catalog::starter().into_iter().find(|entry| entry.name == "slack").unwrap();
        let missing = from_catalog(&entry, None, &BTreeMap::new()).unwrap_err();
        assert!(missing.0.contains("SLACK_BOT_TOKEN"), "{}", missing.0);
        let settings =
            BTreeMap::from([("SLACK_BOT_TOKEN".into(), "xoxb-1".into()), ("SLACK_TEAM_ID".into(), "T1".into())]);
        let checked = from_catalog(&entry, Some("team-slack"), &settings).unwrap();
        assert_eq!(checked.proposal.name, "team-slack");
        assert_eq!(checked.proposal.env_names, vec!["SLACK_BOT_TOKEN", "SLACK_TEAM_ID"]);
        assert_eq!(checked.secrets.env["SLACK_BOT_TOKEN"], "xoxb-1");
        let unknown = BTreeMap::from([("TOKEN".into(), "x".into())]);
        assert!(from_catalog(&entry, None, &unknown).unwrap_err().0.contains("no setting"));
    }

    #[test]
    fn checklist_needs_every_section_and_notes_on_concerns() {
        let mut checklist: Checklist = Section::ALL[..6]
            .iter()
            .map(|section| (*section, Answer { mark: Mark::Checked, note: String::new() }))
            .collect();
        assert!(check_checklist(&checklist).unwrap_err().0.contains("compliance"));
        checklist.insert(Section::Compliance, Answer { mark: Mark::Concern, note: "hm".into() });
        assert!(check_checklist(&checklist).is_err());
        checklist
            .insert(Section::Compliance, Answer { mark: Mark::Concern, note: "needs a DPA with the vendor".into() });
        assert!(check_checklist(&checklist).is_ok());
    }
}
