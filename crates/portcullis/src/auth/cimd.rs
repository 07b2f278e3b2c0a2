//! OAuth Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document, the MCP
//! clients' preferred registration): a client whose `client_id` is an `https://` URL is
//! described by the JSON document at that URL, which the gateway fetches.
//!
//! Fetching a URL that anyone on the internet can name is a server-side request forgery risk,
//! so the fetch is narrow: https only, no credentials or fragments in the URL, the host's
//! addresses resolved first and every one of them public (loopback, private, link-local,
//! carrier-grade NAT, multicast, documentation and cloud-metadata ranges are refused unless an
//! admin lists the network), the connection pinned to the checked address (no second DNS
//! answer), no redirects, 5 seconds, 5 KiB. A document passes only if it names itself as the
//! client, registers redirect URIs this gateway accepts and is a public client.
//! Documents are kept as their `Cache-Control: max-age` says (1 minute to 1 day; 10 minutes
//! without one), and stored as the client so codes and tokens can refer to it.

use crate::auth::oauth::check_redirect_uri;
use crate::store::oauth::Client;
use ipnet::IpNet;
use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_BYTES: usize = 5 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_KEEP: Duration = Duration::from_secs(600);
const MIN_KEEP: Duration = Duration::from_secs(60);
const MAX_KEEP: Duration = Duration::from_secs(86_400);
const MAX_CACHED: usize = 10_000;
const FAILURE_KEEP: Duration = Duration::from_secs(60);

/// Is this `client_id` a metadata document URL (rather than a registered id)?
pub fn is_document_url(client_id: &str) -> bool {
    client_id.starts_with("https://")
}

/// Is `ip` an address anyone may reach on the public internet?
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let segments = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local
                || (segments[0] & 0xffc0) == 0xfe80 // link-local
                || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed inside)
                || segments[..6] == [0, 0, 0, 0, 0xffff, 0] // IPv4-translated (::ffff:0:a.b.c.d)
                || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
                || (segments[0] == 0x2001 && segments[1] == 0) // Teredo
                || (segments[0] == 0x0064 && segments[1] == 0xff9b) // NAT64
                || segments[0] == 0x2002 // 6to4
                || segments[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes 169.254.169.254, the cloud metadata service
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19))) // benchmarking
}

/// Why a URL may not be fetched as a client metadata document, if it may not.
pub fn check_document_url(text: &str) -> Result<reqwest::Url, String> {
    if text.len() > 2048 {
        return Err("the client_id URL is longer than 2048 characters".into());
    }
    let url = reqwest::Url::parse(text).map_err(|error| format!("the client_id is not a URL ({error})"))?;
    if url.scheme() != "https" {
        return Err("a client_id URL must use https".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a client_id URL must not carry a user name or password".into());
    }
    if url.fragment().is_some() || text.contains('#') {
        return Err("a client_id URL must not have a fragment".into());
    }
    if url.path() == "/" || url.path().is_empty() {
        return Err("a client_id URL must have a path (the document's own address)".into());
    }
    // The URL must be exactly as written: no dot segments or other normalisation.
    if url.as_str() != text {
        return Err(format!("the client_id URL is not in normal form (it would be read as {:?})", url.as_str()));
    }
    Ok(url)
}

/// Fetched documents, kept a while.
#[derive(Debug)]
pub struct Documents {
    /// Networks an admin allows despite being private (internal agents' documents).
    allowed_networks: Vec<IpNet>,
    /// Extra certificate authorities (the deployment's `ca_file`).
    roots: Vec<reqwest::Certificate>,
    redirect_schemes: Vec<String>,
    /// Documents that passed (until when), and documents that failed (until when, and why):
    /// a failure is remembered a minute, so retries cannot make the gateway fetch in a loop.
    cache: Mutex<HashMap<String, Cached>>,
}

/// A fetch's outcome and until when it is kept.
type Cached = (Instant, Result<Client, String>);

impl Documents {
    pub fn new(allowed_networks: Vec<IpNet>, roots: Vec<reqwest::Certificate>, redirect_schemes: Vec<String>) -> Self {
        Documents { allowed_networks, roots, redirect_schemes, cache: Mutex::new(HashMap::new()) }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed_networks.iter().any(|network| network.contains(&ip))
    }

    /// The client a document URL describes: from the cache, or fetched and checked now. The
    /// error says what is wrong, for the person at the consent page and the client's developer.
    pub async fn client(&self, client_id: &str) -> Result<Client, String> {
        {
            let cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((until, outcome)) = cache.get(client_id)
                && Instant::now() < *until
            {
                return outcome.clone();
            }
        }
        let (outcome, keep) = match self.fetch(client_id).await {
            Ok((client, keep)) => (Ok(client), keep),
            Err(problem) => (Err(problem), FAILURE_KEEP),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(client_id.to_owned(), (Instant::now() + keep, outcome.clone()));
        outcome
    }

    async fn fetch(&self, client_id: &str) -> Result<(Client, Duration), String> {
        let url = check_document_url(client_id)?;
        let host = url.host_str().ok_or("the client_id URL has no host")?.to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addresses: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((bare, port)))
                .await
                .map_err(|_| format!("{host} did not resolve in time"))?
                .map_err(|error| format!("{host} does not resolve ({error})"))?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(format!("{host} does not resolve"));
        }
        // Every address must be allowed: a name that also points inside is refused outright.
        if let Some(refused) = addresses.iter().find(|address| !self.allowed(address.ip())) {
            return Err(format!(
                "{host} resolves to {}, which is not a public address; client metadata documents are fetched from the internet only",
                refused.ip()
            ));
        }
        let http = crate::config::trusting(reqwest::Client::builder(), &self.roots)
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .resolve(bare, addresses[0])
            .no_proxy()
            .build()
            .map_err(|error| format!("cannot make an HTTP client ({error})"))?;
        let mut response = http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|error| format!("cannot fetch the client metadata document ({})", without_url(&error)))?;
        if response.status().is_redirection() {
            return Err("the client metadata document URL redirects; redirects are not followed".into());
        }
        if !response.status().is_success() {
            return Err(format!("the client metadata document URL answered {}", response.status()));
        }
        let keep = keep_for(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|error| format!("reading the document failed ({})", without_url(&error)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BYTES {
                return Err(format!("the client metadata document is larger than {MAX_BYTES} bytes"));
            }
        }
        let client = self.parse(client_id, &body)?;
        Ok((client, keep))
    }

    /// Check a document's contents.
    fn parse(&self, client_id: &str, body: &[u8]) -> Result<Client, String> {
        let document: Value = serde_json::from_slice(body)
            .map_err(|error| format!("the client metadata document is not JSON ({error})"))?;
        let Some(document) = document.as_object() else {
            return Err("the client metadata document is not a JSON object".into());
        };
        if document.get("client_id").and_then(Value::as_str) != Some(client_id) {
            return Err("the document's client_id is not its own URL".into());
        }
        match document.get("token_endpoint_auth_method").and_then(Value::as_str) {
            None | Some("none") => {}
            Some(method @ ("client_secret_basic" | "client_secret_post" | "client_secret_jwt")) => {
                return Err(format!("a client metadata document cannot use {method} (there is no shared secret)"));
            }
            Some(method) => {
                return Err(format!(
                    "token_endpoint_auth_method {method:?} is not supported here; use \"none\" (a public client with PKCE)"
                ));
            }
        }
        let list = |name: &str| -> Option<Vec<&str>> {
            document.get(name).and_then(Value::as_array).map(|items| items.iter().filter_map(Value::as_str).collect())
        };
        if let Some(grants) = list("grant_types")
            && (!grants.contains(&"authorization_code")
                || grants.iter().any(|grant| !["authorization_code", "refresh_token"].contains(grant)))
        {
            return Err("grant_types must be authorization_code (and refresh_token)".into());
        }
        if let Some(types) = list("response_types")
            && types != ["code"]
        {
            return Err("response_types must be [\"code\"]".into());
        }
        let redirect_uris: Vec<String> =
            list("redirect_uris").unwrap_or_default().into_iter().map(str::to_owned).collect();
        if redirect_uris.is_empty() {
            return Err("the document registers no redirect_uris".into());
        }
        for uri in &redirect_uris {
            check_redirect_uri(uri, &self.redirect_schemes)?;
        }
        let name = document
            .get("client_name")
            .and_then(Value::as_str)
            .map(|name| name.chars().filter(|c| !c.is_control()).take(100).collect::<String>())
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| "an unnamed application".to_owned());
        Ok(Client { id: client_id.to_owned(), name, redirect_uris })
    }
}

/// What went wrong with a request, by its causes, without the URL (the caller names it).
fn without_url(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    if error.is_timeout() {
        parts.push("timed out".to_owned());
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    if parts.is_empty() { "no answer".to_owned() } else { parts.join(": ") }
}

/// How long to keep a document: its `max-age`, within bounds.
fn keep_for(headers: &reqwest::header::HeaderMap) -> Duration {
    let max_age = headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|directive| directive.trim().strip_prefix("max-age="))
        .find_map(|seconds| seconds.trim_matches('"').parse::<u64>().ok());
    max_age.map_or(DEFAULT_KEEP, |seconds| Duration::from_secs(seconds).clamp(MIN_KEEP, MAX_KEEP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "ff02::1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private} is not public");
        }
        for public in ["93.184.215.14", "1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public} is public");
        }
    }

    #[test]
    fn document_urls_must_be_plain_https_with_a_path() {
        assert!(check_document_url("https://app.example.com/oauth/client.json").is_ok());
        for (url, problem) in [
            ("http://app.example.com/client.json", "https"),
            ("https://app.example.com/", "path"),
            ("https://app.example.com", "path"),
            ("https://user:pw@app.example.com/c.json", "user name"),
            ("https://app.example.com/c.json#x", "fragment"),
            ("https://app.example.com/a/../c.json", "normal form"),
            ("https://APP.example.com/c.json", "normal form"),
            ("javascript:alert(1)", "https"),
        ] {
            let error = check_document_url(url).unwrap_err();
            assert!(error.contains(problem), "{url}: {error}");
        }
    }

    #[test]
    fn documents_are_checked() {
        let documents = Documents::new(Vec::new(), Vec::new(), Vec::new());
        let id = "https://app.example.com/client.json";
        let good =
            serde_json::json!({"client_id": id, "client_name": "App", "redirect_uris": ["http://127.0.0.1:3334/cb"]});
        let client = documents.parse(id, good.to_string().as_bytes()).unwrap();
        assert_eq!((client.id.as_str(), client.name.as_str()), (id, "App"));
        let with = |key: &str, value: Value| {
            let mut document = good.clone();
            document[key] = value;
            documents.parse(id, document.to_string().as_bytes()).unwrap_err()
        };
        assert!(with("client_id", "https://evil.example/client.json".into()).contains("not its own URL"));
        assert!(with("token_endpoint_auth_method", "client_secret_basic".into()).contains("no shared secret"));
        assert!(with("token_endpoint_auth_method", "private_key_jwt".into()).contains("not supported"));
        assert!(with("redirect_uris", serde_json::json!([])).contains("no redirect_uris"));
        assert!(with("redirect_uris", serde_json::json!(["javascript:alert(1)"])).contains("javascript"));
        assert!(with("grant_types", serde_json::json!(["client_credentials"])).contains("grant_types"));
        assert!(with("response_types", serde_json::json!(["token"])).contains("response_types"));
        assert!(documents.parse(id, b"[1]").unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn cache_lifetime_follows_max_age_within_bounds() {
        let headers = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::CACHE_CONTROL, value.parse().unwrap());
            headers
        };
        assert_eq!(keep_for(&reqwest::header::HeaderMap::new()), DEFAULT_KEEP);
        assert_eq!(keep_for(&headers("public, max-age=3600")), Duration::from_secs(3600));
        assert_eq!(keep_for(&headers("max-age=5")), MIN_KEEP);
        assert_eq!(keep_for(&headers("max-age=99999999")), MAX_KEEP);
    }
}
