//! Signing people in through an OpenID Connect provider: the authorization code flow with PKCE
//! (S256), `state` and `nonce` (OpenID Connect Core 1.0, RFC 7636, RFC 9207).
//!
//! [`Sso::begin`] builds the provider's authorization URL and the [`Pending`] request the
//! browser carries (sealed, in a cookie) to the callback; [`Sso::finish`] checks the callback
//! against it, redeems the code, verifies the ID token (signature with the provider's published
//! keys, issuer, audience, expiry, nonce) and returns the [`Identity`] it asserts. [`admit`]
//! then finds, links or creates the person and follows their claimed profile and groups.
//!
//! The provider's metadata and keys are fetched on first use and kept for an hour; a token
//! signed with a key id we have not seen refreshes the keys (at most every 10 seconds), so key
//! rotation at the provider needs nothing from the admin.

use super::jws::{self, JwsError, KeySet};
use crate::config::{ClaimNames, OidcConfig, is_secure_or_loopback};
use crate::crypto::{new_id, random_token, same_secret};
use crate::registry::{Person, Status};
use crate::store::{self, Store, StoreError, accounts::Account, directory};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a sign-in may take between leaving for the provider and coming back.
pub const PENDING_LIFETIME: u64 = 600;
const METADATA_LIFETIME: Duration = Duration::from_secs(3600);
const KEY_REFRESH_GAP: Duration = Duration::from_secs(10);
/// Clock difference tolerated between the provider and us.
const LEEWAY: i64 = 60;
/// Most groups taken from one sign-in (a claim is not a bulk-provisioning channel).
const MAX_CLAIMED_GROUPS: usize = 500;

/// Why a sign-in through the provider did not produce an identity. `Display` is what the
/// person sees; [`SsoError::detail`] is for the log and the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// The provider could not be reached, or answered with something unusable.
    #[error(
        "The identity provider could not be reached or gave an answer Portcullis cannot use. Try again in a moment; if it keeps failing, tell your admin."
    )]
    Provider(String),
    /// The provider refused (the person cancelled, or is not assigned to the application).
    #[error("The identity provider did not sign you in: {0}")]
    Denied(String),
    /// The callback does not belong to a sign-in this browser started, or came too late.
    #[error(
        "This sign-in link is not valid any more (it expired, was used already, or was started in another tab). Start again."
    )]
    Stale(String),
    /// The provider's answer did not verify.
    #[error(
        "The identity provider's answer could not be verified, so you were not signed in. Tell your admin if this keeps happening."
    )]
    Invalid(String),
}

impl SsoError {
    pub fn detail(&self) -> &str {
        match self {
            SsoError::Provider(detail)
            | SsoError::Denied(detail)
            | SsoError::Stale(detail)
            | SsoError::Invalid(detail) => detail,
        }
    }
}

/// The provider's discovery document (the fields used here).
#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

#[derive(Debug, Clone)]
struct Provider {
    metadata: Metadata,
    keys: KeySet,
    fetched: Instant,
    keys_fetched: Instant,
}

/// What the browser carries from [`Sso::begin`] to the callback, sealed in a cookie.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// Where to go once signed in (an OAuth authorization request of this gateway).
    pub next: Option<String>,
    /// Started at (Unix seconds).
    pub t: u64,
}

/// The callback's query.
#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Who the provider says signed in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub name: Option<String>,
    /// `None` when the provider sent no groups claim (then memberships are left alone).
    pub groups: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    pub department: Option<String>,
    pub title: Option<String>,
    pub team: Option<String>,
    /// The authentication methods (`amr`) show a second factor.
    pub mfa: bool,
}

/// The single sign-on client of one deployment.
#[derive(Debug)]
pub struct Sso {
    pub config: OidcConfig,
    http: reqwest::Client,
    provider: tokio::sync::Mutex<Option<Provider>>,
    /// When the keys were last refetched because of an unknown key id.
    last_key_refresh: Mutex<Option<Instant>>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()))
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{}={}", crate::console::url_encode(key), crate::console::url_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Sso {
    pub fn new(config: OidcConfig, roots: &[reqwest::Certificate]) -> Sso {
        let http = crate::config::trusting(reqwest::Client::builder(), roots)
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Sso { config, http, provider: tokio::sync::Mutex::new(None), last_key_refresh: Mutex::new(None) }
    }

    async fn get_json(&self, url: &str, bearer: Option<&str>) -> Result<Vec<u8>, SsoError> {
        let mut request = self.http.get(url).header("accept", "application/json");
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|error| SsoError::Provider(format!("GET {url}: {error}")))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| SsoError::Provider(format!("GET {url}: {error}")))?;
        if !status.is_success() {
            return Err(SsoError::Provider(format!("GET {url} answered {status}")));
        }
        Ok(body.to_vec())
    }

    async fn discover(&self) -> Result<Metadata, SsoError> {
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer);
        let body = self.get_json(&url, None).await?;
        let metadata: Metadata = serde_json::from_slice(&body).map_err(|error| {
            SsoError::Provider(format!("{url} is not an OpenID Connect discovery document: {error}"))
        })?;
        if metadata.issuer.trim_end_matches('/') != self.config.issuer {
            return Err(SsoError::Provider(format!(
                "{url} names issuer {:?}, not the configured {:?}",
                metadata.issuer, self.config.issuer
            )));
        }
        for endpoint in [&metadata.authorization_endpoint, &metadata.token_endpoint, &metadata.jwks_uri]
            .into_iter()
            .chain(metadata.userinfo_endpoint.as_ref())
        {
            if !is_secure_or_loopback(endpoint) {
                return Err(SsoError::Provider(format!("the provider's endpoint {endpoint} is not https")));
            }
        }
        Ok(metadata)
    }

    async fn fetch_keys(&self, metadata: &Metadata) -> Result<KeySet, SsoError> {
        let body = self.get_json(&metadata.jwks_uri, None).await?;
        KeySet::parse(&body).map_err(|error| SsoError::Provider(format!("{}: {error}", metadata.jwks_uri)))
    }

    /// The provider's metadata and keys, fetched when missing or older than an hour.
    async fn provider(&self) -> Result<Provider, SsoError> {
        let mut cached = self.provider.lock().await;
        if let Some(provider) = cached.as_ref().filter(|provider| provider.fetched.elapsed() < METADATA_LIFETIME) {
            return Ok(provider.clone());
        }
        let metadata = self.discover().await?;
        let keys = self.fetch_keys(&metadata).await?;
        let now = Instant::now();
        let provider = Provider { metadata, keys, fetched: now, keys_fetched: now };
        *cached = Some(provider.clone());
        Ok(provider)
    }

    /// Refetch the keys after a token named a key id we do not hold (the provider rotated).
    async fn refreshed_keys(&self, kid: &str) -> Result<Option<KeySet>, SsoError> {
        {
            let mut last = self.last_key_refresh.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|at| at.elapsed() < KEY_REFRESH_GAP) {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        let mut cached = self.provider.lock().await;
        let Some(provider) = cached.as_mut() else { return Ok(None) };
        let keys = self.fetch_keys(&provider.metadata).await?;
        if !keys.has_kid(kid) {
            return Ok(None);
        }
        provider.keys = keys.clone();
        provider.keys_fetched = Instant::now();
        Ok(Some(keys))
    }

    /// Start a sign-in: the URL to send the browser to, and what it must bring back.
    pub async fn begin(&self, redirect_uri: &str, next: Option<String>) -> Result<(String, Pending), SsoError> {
        let provider = self.provider().await?;
        let pending = Pending {
            state: random_token(24),
            nonce: random_token(24),
            verifier: random_token(48),
            next,
            t: unix_now(),
        };
        let scope = self.config.scopes.join(" ");
        let challenge = challenge(&pending.verifier);
        let query = form_encode(&[
            ("response_type", "code"),
            ("client_id", &self.config.client_id),
            ("redirect_uri", redirect_uri),
            ("scope", &scope),
            ("state", &pending.state),
            ("nonce", &pending.nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]);
        let endpoint = &provider.metadata.authorization_endpoint;
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        Ok((format!("{endpoint}{separator}{query}"), pending))
    }

    /// Finish a sign-in: check the callback against the pending request, redeem the code and
    /// verify the ID token.
    pub async fn finish(
        &self,
        pending: &Pending,
        redirect_uri: &str,
        callback: &Callback,
    ) -> Result<Identity, SsoError> {
        if unix_now().saturating_sub(pending.t) > PENDING_LIFETIME {
            return Err(SsoError::Stale("the sign-in took longer than 10 minutes".into()));
        }
        let state_matches =
            callback.state.as_deref().is_some_and(|state| same_secret(state.as_bytes(), pending.state.as_bytes()));
        if !state_matches {
            return Err(SsoError::Stale("the state parameter does not match this browser's sign-in".into()));
        }
        let provider = self.provider().await?;
        // RFC 9207: a response naming another issuer is a mix-up attack.
        if let Some(iss) = &callback.iss
            && iss.trim_end_matches('/') != provider.metadata.issuer.trim_end_matches('/')
        {
            return Err(SsoError::Invalid(format!("the response names issuer {iss:?}")));
        }
        if let Some(error) = &callback.error {
            let printable = |text: &str| text.chars().filter(|c| !c.is_control()).take(200).collect::<String>();
            let shown = match &callback.error_description {
                Some(description) => format!("{} ({})", printable(description), printable(error)),
                None => printable(error),
            };
            return Err(SsoError::Denied(shown));
        }
        let Some(code) = callback.code.as_deref() else {
            return Err(SsoError::Invalid("the callback carries no code".into()));
        };
        let tokens = self.redeem(&provider.metadata, code, &pending.verifier, redirect_uri).await?;
        let id_token = tokens
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| SsoError::Invalid("the token response holds no id_token".into()))?;
        let mut claims = self.verify_id_token(&provider, id_token, &pending.nonce, unix_now() as i64).await?;
        if let (Some(userinfo), Some(access_token)) =
            (&provider.metadata.userinfo_endpoint, tokens.get("access_token").and_then(Value::as_str))
        {
            merge_userinfo(&mut claims, &self.get_json(userinfo, Some(access_token)).await?)?;
        }
        identity_from(&claims, &self.config.claims)
    }

    async fn redeem(
        &self,
        metadata: &Metadata,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<Map<String, Value>, SsoError> {
        let mut pairs = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let mut request = self.http.post(&metadata.token_endpoint).header("accept", "application/json");
        let secret = &self.config.client_secret;
        let methods = &metadata.token_endpoint_auth_methods_supported;
        if secret.is_empty() {
            pairs.push(("client_id", &self.config.client_id));
        } else if methods.is_empty() || methods.iter().any(|method| method == "client_secret_basic") {
            // RFC 6749 §2.3.1: both halves are form-encoded before Basic encoding.
            let id = crate::console::url_encode(&self.config.client_id);
            let encoded = crate::console::url_encode(secret);
            request = request.basic_auth(id, Some(encoded));
        } else {
            pairs.push(("client_id", &self.config.client_id));
            pairs.push(("client_secret", secret));
        }
        let response = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_encode(&pairs))
            .send()
            .await
            .map_err(|error| SsoError::Provider(format!("token endpoint: {error}")))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| SsoError::Provider(format!("token endpoint: {error}")))?;
        let parsed: Map<String, Value> = serde_json::from_slice(&body).unwrap_or_default();
        if !status.is_success() {
            let error = parsed.get("error").and_then(Value::as_str).unwrap_or("no error code");
            return Err(SsoError::Invalid(format!("the token endpoint refused the code ({status}, {error})")));
        }
        Ok(parsed)
    }

    async fn verify_id_token(
        &self,
        provider: &Provider,
        token: &str,
        nonce: &str,
        now: i64,
    ) -> Result<Map<String, Value>, SsoError> {
        let invalid = |error: JwsError| SsoError::Invalid(format!("ID token: {error}"));
        let verified = match jws::verify(token, &provider.keys) {
            Err(JwsError::UnknownKey(Some(kid))) if !provider.keys.has_kid(&kid) => {
                match self.refreshed_keys(&kid).await? {
                    Some(keys) => jws::verify(token, &keys),
                    None => Err(JwsError::UnknownKey(Some(kid))),
                }
            }
            other => other,
        };
        let (header, claims) = verified.map_err(invalid)?;
        check_id_token(&header, &claims, &provider.metadata.issuer, &self.config.client_id, nonce, now)
            .map_err(|problem| SsoError::Invalid(format!("ID token: {problem}")))?;
        Ok(claims)
    }
}

/// The checks of OpenID Connect Core §3.1.3.7 after the signature.
fn check_id_token(
    header: &jws::Header,
    claims: &Map<String, Value>,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    now: i64,
) -> Result<(), String> {
    if header
        .typ
        .as_deref()
        .is_some_and(|typ| typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt"))
    {
        return Err("it is an access token (typ at+jwt), not an ID token".into());
    }
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(format!("issuer {:?} is not {issuer:?}", claims.get("iss")));
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(audience)) => vec![audience.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&client_id) {
        return Err(format!("it was issued to {audiences:?}, not to this client"));
    }
    let azp = claims.get("azp").and_then(Value::as_str);
    if (audiences.len() > 1 || azp.is_some()) && azp != Some(client_id) {
        return Err("its authorized party (azp) is another client".into());
    }
    let time = |name: &str| claims.get(name).and_then(Value::as_i64);
    match time("exp") {
        Some(exp) if exp + LEEWAY > now => {}
        Some(_) => return Err("it has expired".into()),
        None => return Err("it has no expiry".into()),
    }
    if time("iat").is_some_and(|iat| iat > now + LEEWAY) || time("nbf").is_some_and(|nbf| nbf > now + LEEWAY) {
        return Err("it is not valid yet (check the clocks)".into());
    }
    let nonce_matches = claims
        .get("nonce")
        .and_then(Value::as_str)
        .is_some_and(|claimed| same_secret(claimed.as_bytes(), nonce.as_bytes()));
    if !nonce_matches {
        return Err("its nonce is not the one this sign-in sent (a replayed token?)".into());
    }
    match claims.get("sub").and_then(Value::as_str) {
        Some(subject) if !subject.is_empty() => Ok(()),
        _ => Err("it has no subject".into()),
    }
}

/// Add the userinfo claims the ID token does not carry; the subject must be the same person.
fn merge_userinfo(claims: &mut Map<String, Value>, body: &[u8]) -> Result<(), SsoError> {
    let userinfo: Map<String, Value> = serde_json::from_slice(body).map_err(|_| {
        SsoError::Provider("the userinfo endpoint did not answer with JSON (signed userinfo is not supported)".into())
    })?;
    if userinfo.get("sub") != claims.get("sub") {
        return Err(SsoError::Invalid("the userinfo subject is not the ID token's".into()));
    }
    for (name, value) in userinfo {
        claims.entry(name).or_insert(value);
    }
    Ok(())
}

/// A claim by name, or by a dotted path into nested objects (`realm_access.roles`).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    Some(value)
}

fn text_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claim(claims, name).and_then(Value::as_str).map(str::trim).filter(|text| !text.is_empty()).map(str::to_owned)
}

/// A list claim: an array of strings, or one string (some providers send a single value).
fn list_claim(claims: &Map<String, Value>, name: &str) -> Option<Vec<String>> {
    let items = match claim(claims, name)? {
        Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::trim).map(str::to_owned).collect(),
        Value::String(one) => vec![one.trim().to_owned()],
        _ => return None,
    };
    let mut items: Vec<String> =
        items.into_iter().filter(|item: &String| !item.is_empty() && item.len() <= 256).collect();
    items.sort_by_key(|item| item.to_lowercase());
    items.dedup_by(|left, right| left.eq_ignore_ascii_case(right));
    items.truncate(MAX_CLAIMED_GROUPS);
    Some(items)
}

/// Does `amr` (RFC 8176) show a second factor: `mfa`, or a knowledge factor plus a possession
/// or inherence factor?
fn shows_mfa(claims: &Map<String, Value>) -> bool {
    let methods: Vec<&str> = claims
        .get("amr")
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let has = |names: &[&str]| methods.iter().any(|method| names.contains(method));
    has(&["mfa", "mca"])
        || (has(&["pwd", "pin", "kba"])
            && has(&["otp", "hwk", "swk", "sms", "tel", "sc", "fpt", "face", "iris", "retina", "vbm"]))
}

/// The identity the verified claims assert.
fn identity_from(claims: &Map<String, Value>, names: &ClaimNames) -> Result<Identity, SsoError> {
    let subject = text_claim(claims, "sub").ok_or_else(|| SsoError::Invalid("no subject".into()))?;
    let email_verified = match claims.get("email_verified") {
        Some(Value::Bool(flag)) => Some(*flag),
        Some(Value::String(text)) => Some(text.eq_ignore_ascii_case("true")),
        _ => None,
    };
    Ok(Identity {
        subject,
        email: text_claim(claims, &names.email).map(|email| email.to_lowercase()),
        email_verified,
        name: text_claim(claims, &names.name),
        groups: list_claim(claims, &names.groups),
        roles: list_claim(claims, &names.roles),
        department: text_claim(claims, &names.department),
        title: text_claim(claims, &names.title),
        team: text_claim(claims, &names.team),
        mfa: shows_mfa(claims),
    })
}

/// The outcome of [`admit`].
#[derive(Debug)]
pub enum Admission {
    Admitted(Account),
    /// Not let in: what the person sees, and the reason for the audit trail.
    Refused {
        shown: String,
        reason: String,
    },
}

fn refused(shown: impl Into<String>, reason: impl Into<String>) -> Admission {
    Admission::Refused { shown: shown.into(), reason: reason.into() }
}

/// Find the person the provider vouched for — by the subject linked at an earlier sign-in, or
/// else by email (then link it) — or create them when just-in-time creation is on. People not
/// managed by SCIM then follow their claimed name, department, title, team, roles and groups.
pub async fn admit(
    store: &Store,
    config: &OidcConfig,
    issuer: &str,
    identity: &Identity,
) -> Result<Admission, StoreError> {
    let link = format!("{issuer} {}", identity.subject);
    let email = identity.email.as_deref();
    if let Some(email) = email {
        let domain = email.rsplit_once('@').map(|(_, domain)| domain).unwrap_or_default();
        if !config.allowed_domains.is_empty() && !config.allowed_domains.iter().any(|allowed| allowed == domain) {
            return Ok(refused(
                format!("Accounts of {domain} cannot sign in here."),
                format!("email domain {domain} is not allowed"),
            ));
        }
    }
    let mut transaction = store.begin_write().await?;
    let mut person = match directory::person_by_oidc_link(&mut transaction, &link).await? {
        Some(person) => person,
        None => {
            let Some(email) = email else {
                return Ok(refused(
                    format!(
                        "The identity provider did not send your email address (claim {:?}). Tell your admin.",
                        config.claims.email
                    ),
                    "no email claim",
                ));
            };
            // The email decides whose account this is, so it must be one the provider vouches
            // for: `email_verified: true`, or, for providers that never send the claim (Entra
            // ID), an admin's explicit `trust_email`. Never a claim the person could have typed.
            let vouched =
                identity.email_verified == Some(true) || (identity.email_verified.is_none() && config.trust_email);
            if !vouched {
                let shown = if identity.email_verified == Some(false) {
                    "The identity provider says your email address is not verified."
                } else {
                    "The identity provider does not say your email address is verified, so it cannot decide which account is yours. Tell your admin (see trust_email in the single sign-on settings)."
                };
                return Ok(refused(shown, "email not verified at the provider"));
            }
            match directory::person_by_email(&mut transaction, email).await? {
                Some(person) => {
                    // A person linked to another identity of this provider stays theirs: an
                    // email moved to someone else at the provider must not take the account.
                    if let Some(existing) = directory::oidc_link(&mut transaction, &person.id).await?
                        && existing.starts_with(&format!("{issuer} "))
                    {
                        return Ok(refused(
                            "This account belongs to a different identity at the identity provider. Ask an admin.",
                            "email matches an account linked to another subject",
                        ));
                    }
                    directory::set_oidc_link(&mut transaction, &person.id, &link).await?;
                    person
                }
                None if config.jit => {
                    let mut person = Person::new(new_id(), email, "oidc");
                    person.name = identity.name.clone().unwrap_or_default();
                    directory::insert_person(&mut transaction, &person).await?;
                    directory::set_oidc_link(&mut transaction, &person.id, &link).await?;
                    person
                }
                None => {
                    return Ok(refused(
                        format!("There is no Portcullis account for {email}. Ask an admin to add you."),
                        "no account and just-in-time creation is off",
                    ));
                }
            }
        }
    };
    if person.status != Status::Active {
        let status = person.status.as_str();
        return Ok(refused(format!("Your account is {status}. Ask an admin."), format!("the account is {status}")));
    }
    if person.source != "scim" {
        let before = person.clone();
        follow_claims(&mut person, identity);
        if person != before {
            directory::update_person(&mut transaction, &person).await?;
        }
        if let Some(groups) = &identity.groups {
            directory::follow_claimed_groups(&mut transaction, &person.id, groups).await?;
        }
    }
    transaction.commit().await?;
    let mut connection = store.pool.acquire().await?;
    match store::accounts::by_id(&mut connection, &person.id).await? {
        Some(account) => Ok(Admission::Admitted(account)),
        None => Ok(refused("Your account was removed while you signed in.", "account removed")),
    }
}

/// Take the profile fields the provider sent (a missing claim leaves the field as it is).
fn follow_claims(person: &mut Person, identity: &Identity) {
    let fields = [
        (&mut person.name, &identity.name),
        (&mut person.department, &identity.department),
        (&mut person.title, &identity.title),
        (&mut person.team, &identity.team),
    ];
    for (field, claimed) in fields {
        if let Some(claimed) = claimed {
            field.clone_from(claimed);
        }
    }
    if let Some(roles) = &identity.roles {
        person.roles.clone_from(roles);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jws::tests::Signer;
    use serde_json::json;

    fn names() -> ClaimNames {
        ClaimNames {
            email: "email".into(),
            name: "name".into(),
            groups: "groups".into(),
            roles: "realm_access.roles".into(),
            department: "department".into(),
            title: "title".into(),
            team: "team".into(),
        }
    }

    fn check(claims: Value, header: Value) -> Result<(), String> {
        let signer = Signer::new("k1");
        let keys = KeySet::parse(signer.jwks().as_bytes()).unwrap();
        let token = signer.sign_with_header(&header, &claims);
        let (header, claims) = jws::verify(&token, &keys).map_err(|error| error.to_string())?;
        check_id_token(&header, &claims, "https://idp.example", "portcullis", "n1", 1_000_000)
    }

    fn good() -> Value {
        json!({"iss": "https://idp.example", "aud": "portcullis", "sub": "u1", "exp": 1_000_300, "iat": 1_000_000, "nonce": "n1"})
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    #[test]
    fn id_tokens_are_checked_for_issuer_audience_expiry_and_nonce() {
        let header = json!({"alg": "ES256", "kid": "k1"});
        assert_eq!(check(good(), header.clone()), Ok(()));
        assert_eq!(check(with(good(), "aud", json!(["portcullis"])), header.clone()), Ok(()));
        let refusals = [
            (with(good(), "iss", json!("https://evil.example")), "issuer"),
            (with(good(), "aud", json!("another-client")), "not to this client"),
            (with(good(), "aud", json!(["portcullis", "other"])), "authorized party"),
            (with(good(), "exp", json!(999_000)), "expired"),
            (with(good(), "iat", json!(1_000_500)), "not valid yet"),
            (with(good(), "nonce", json!("replayed")), "nonce"),
            (with(good(), "sub", json!("")), "no subject"),
        ];
        for (claims, expected) in refusals {
            let outcome = check(claims.clone(), header.clone()).unwrap_err();
            assert!(outcome.contains(expected), "{claims}: {outcome}");
        }
        let mut no_nonce = good();
        no_nonce.as_object_mut().unwrap().remove("nonce");
        assert!(check(no_nonce, header).unwrap_err().contains("nonce"));
        let access = check(good(), json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"})).unwrap_err();
        assert!(access.contains("access token"), "{access}");
    }

    #[test]
    fn claims_map_to_an_identity() {
        let claims = json!({
            "sub": "u1", "email": "Alice@Example.COM", "email_verified": true, "name": "Alice",
            "groups": ["Engineering", "engineering", " Admins ", ""], "realm_access": {"roles": ["support"]},
            "department": "R&D", "amr": ["pwd", "otp"],
        });
        let identity = identity_from(claims.as_object().unwrap(), &names()).unwrap();
        assert_eq!(identity.email.as_deref(), Some("alice@example.com"));
        assert_eq!(identity.groups, Some(vec!["Admins".to_owned(), "Engineering".to_owned()]));
        assert_eq!(identity.roles, Some(vec!["support".to_owned()]));
        assert_eq!(identity.department.as_deref(), Some("R&D"));
        assert_eq!(identity.title, None);
        assert!(identity.mfa);
        let single = json!({"sub": "u2", "groups": "Sales", "amr": ["pwd"]});
        let identity = identity_from(single.as_object().unwrap(), &names()).unwrap();
        assert_eq!(identity.groups, Some(vec!["Sales".to_owned()]));
        assert_eq!(identity.roles, None);
        assert!(!identity.mfa);
    }

    #[test]
    fn only_a_second_factor_counts_as_mfa() {
        let mfa = |amr: Value| shows_mfa(json!({ "amr": amr }).as_object().unwrap());
        assert!(mfa(json!(["mfa"])));
        assert!(mfa(json!(["pwd", "hwk"])));
        assert!(!mfa(json!(["pwd"])));
        assert!(!mfa(json!(["otp"])));
        assert!(!mfa(json!("mfa")));
        assert!(!shows_mfa(&Map::new()));
    }

    #[test]
    fn userinfo_adds_claims_but_cannot_change_the_subject() {
        let mut claims = good().as_object().unwrap().clone();
        merge_userinfo(&mut claims, br#"{"sub": "u1", "email": "a@example.com", "iss": "https://evil"}"#).unwrap();
        assert_eq!(claims["email"], "a@example.com");
        assert_eq!(claims["iss"], "https://idp.example");
        assert!(merge_userinfo(&mut claims, br#"{"sub": "u2"}"#).is_err());
    }
}
