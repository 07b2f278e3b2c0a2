//! The edge: checks made before anything else looks at a request. DNS-rebinding protection
//! (Host and Origin must name this gateway), and the client's IP address (believing
//! `X-Forwarded-For` only from trusted proxies).

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// Which Host / Origin names this gateway answers to.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// Host names (lower case, without port) accepted on any port.
    names: Vec<String>,
}

impl HostPolicy {
    /// `localhost`, any IP literal (DNS rebinding needs a DNS name), the host of `public_url`,
    /// and the configured extra names.
    pub fn new(public_url: Option<&str>, extra: &[String]) -> HostPolicy {
        let mut names = vec!["localhost".to_owned()];
        if let Some(host) = public_url.and_then(crate::config::host_of_url) {
            names.push(strip_port(host).to_ascii_lowercase());
        }
        names.extend(extra.iter().map(|name| strip_port(name).to_ascii_lowercase()));
        HostPolicy { names }
    }

    fn allows_host(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        let literal = name.trim_start_matches('[').trim_end_matches(']');
        literal.parse::<IpAddr>().is_ok() || self.names.contains(&name)
    }

    /// Why the request must be refused, if it must.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        if let Some(host) = headers.get(axum::http::header::HOST) {
            let host = host.to_str().map_err(|_| "the Host header is not valid text".to_owned())?;
            if !self.allows_host(host) {
                return Err(format!(
                    "Host {host:?} is not a name of this gateway (DNS-rebinding protection); set public_url or \
                     allowed_hosts to accept it"
                ));
            }
        }
        if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
            let origin = origin.to_str().map_err(|_| "the Origin header is not valid text".to_owned())?;
            let allowed = crate::config::host_of_url(origin).is_some_and(|host| self.allows_host(host));
            if !allowed {
                return Err(format!(
                    "Origin {origin:?} is not allowed (DNS-rebinding protection); set public_url or allowed_hosts to \
                     accept it"
                ));
            }
        }
        Ok(())
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().map_or(host, |inner| &host[..inner.len() + 2]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address in `X-Forwarded-For`.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = peer.ip();
    if !trusted.iter().any(|net| net.contains(&peer_ip)) {
        return peer_ip;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|item| item.trim().parse().ok())
        .collect();
    forwarded.into_iter().rev().find(|ip| !trusted.iter().any(|net| net.contains(ip))).unwrap_or(peer_ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn check(policy: &HostPolicy, host: Option<&str>, origin: Option<&str>) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert("host", HeaderValue::from_str(host).unwrap());
        }
        if let Some(origin) = origin {
            headers.insert("origin", HeaderValue::from_str(origin).unwrap());
        }
        policy.check(&headers).is_ok()
    }

    #[test]
    fn dns_rebinding() {
        let policy = HostPolicy::new(Some("https://mcp.example.com"), &["gw.internal".into()]);
        assert!(check(&policy, Some("127.0.0.1:8080"), None));
        assert!(check(&policy, Some("localhost:9"), Some("http://localhost:9")));
        assert!(check(&policy, Some("[::1]:80"), None));
        assert!(check(&policy, Some("mcp.example.com"), Some("https://mcp.example.com")));
        assert!(check(&policy, Some("GW.internal:443"), None));
        assert!(!check(&policy, Some("evil.example.com"), None));
        assert!(!check(&policy, Some("127.0.0.1:8080"), Some("http://evil.example.com")));
        assert!(!check(&policy, Some("127.0.0.1:8080"), Some("null")));
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4, 10.0.0.7"));
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "8.8.8.8:5000".parse().unwrap();
        assert_eq!(client_ip(proxy, &headers, &trusted).to_string(), "1.2.3.4");
        assert_eq!(client_ip(stranger, &headers, &trusted).to_string(), "8.8.8.8");
    }
}

/// Counts events per key in a fixed window (failed sign-ins per email, client registrations
/// per address). Per process: with several replicas each counts its own.
#[derive(Debug)]
pub struct Counter {
    counts: std::sync::Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>,
    limit: u32,
    window: std::time::Duration,
}

impl Counter {
    pub fn new(limit: u32, window: std::time::Duration) -> Counter {
        Counter { counts: Default::default(), limit, window }
    }

    /// Count one event for `key`; false when that makes it go over the limit.
    pub fn hit(&self, key: &str) -> bool {
        let Ok(mut counts) = self.counts.lock() else { return false };
        // Invented keys (emails, addresses) must not grow the table without bound.
        if counts.len() >= 10_000 {
            let window = self.window;
            counts.retain(|_, (_, since)| since.elapsed() <= window);
        }
        let entry = counts.entry(key.to_owned()).or_insert((0, std::time::Instant::now()));
        if entry.1.elapsed() > self.window {
            *entry = (0, std::time::Instant::now());
        }
        entry.0 += 1;
        entry.0 <= self.limit
    }

    /// How long `key` must still wait, when it reached the limit.
    pub fn blocked(&self, key: &str) -> Option<std::time::Duration> {
        let counts = self.counts.lock().ok()?;
        let (count, since) = counts.get(key)?;
        let left = self.window.checked_sub(since.elapsed())?;
        (*count >= self.limit).then_some(left)
    }

    pub fn clear(&self, key: &str) {
        if let Ok(mut counts) = self.counts.lock() {
            counts.remove(key);
        }
    }
}

/// Networks each email signed in from lately (in this process), so a per-email limit meant for
/// strangers does not lock the person out from where they usually are. Bounded: at most
/// eight networks per email and 10,000 emails (then it starts over).
#[derive(Debug, Default)]
pub struct KnownNetworks {
    seen: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
}

impl KnownNetworks {
    pub fn knows(&self, email: &str, network: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.get(email).is_some_and(|networks| networks.iter().any(|known| known == network))
    }

    pub fn remember(&self, email: &str, network: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.len() >= 10_000 && !seen.contains_key(email) {
            seen.clear();
        }
        let networks = seen.entry(email.to_owned()).or_default();
        if !networks.iter().any(|known| known == network) {
            if networks.len() >= 8 {
                networks.remove(0);
            }
            networks.push(network.to_owned());
        }
    }
}
