//! Client sessions, sealed into the `Mcp-Session-Id` header. Nothing about a Streamable HTTP
//! session is stored on the gateway: any replica holding the shared secret key can open the
//! header and continue the session, so no sticky load balancing is needed.

use crate::crypto::Sealer;
use crate::upstream::Attachment;
use mcp::ProtocolVersion;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One server inside an aggregate session (`/mcp`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    #[serde(rename = "s")]
    pub server: String,
    /// The version negotiated with this server.
    #[serde(rename = "v")]
    pub version: String,
    #[serde(rename = "a")]
    pub attachment: Attachment,
}

/// What the gateway needs to continue a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionState {
    /// The server the session belongs to.
    #[serde(rename = "s")]
    pub server: String,
    /// The user who opened it; `None` for the anonymous principal.
    #[serde(rename = "u", skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The negotiated protocol version.
    #[serde(rename = "v")]
    pub version: String,
    #[serde(rename = "a")]
    pub attachment: Attachment,
    /// Client name and version from `initialize`, for audit events.
    #[serde(rename = "c", skip_serializing_if = "Option::is_none")]
    pub client: Option<(String, String)>,
    /// Creation time, milliseconds since the epoch.
    #[serde(rename = "t")]
    pub created_ms: i64,
    /// For an aggregate session: the servers it spans (then `server` is `*`).
    #[serde(rename = "m", default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
}

const CONTEXT: &[u8] = b"mcp-session-v1";

impl SessionState {
    pub fn seal(&self, sealer: &Sealer) -> String {
        sealer.seal_text(&serde_json::to_vec(self).unwrap_or_default(), CONTEXT)
    }

    /// Open a header value. Any failure (garbage, tampering, another deployment's key) means
    /// "no such session".
    pub fn open(sealer: &Sealer, header: &str) -> Option<SessionState> {
        let bytes = sealer.open_text(header.trim(), CONTEXT).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn protocol_version(&self) -> ProtocolVersion {
        ProtocolVersion::parse(&self.version).unwrap_or(ProtocolVersion::ASSUMED_WITHOUT_HEADER)
    }
}

/// Sessions opened lately, by their header value: a session sends many requests, and opening
/// its header (base64, decryption, JSON) on each one costs more than finding it here. A header
/// opens to the same state every time, so keeping it changes no answer: who may use the
/// session is still checked on every request. Two generations bound the memory: when the newer
/// fills up, the older is dropped and the newer takes its place; a session found only in the
/// older moves to the newer.
#[derive(Debug, Default)]
pub struct OpenedSessions {
    generations: Mutex<[HashMap<Box<str>, Arc<SessionState>>; 2]>,
}

/// Sessions in one generation.
const GENERATION: usize = 4096;

impl OpenedSessions {
    /// The session sealed in `header`; `None` when it does not open (see [`SessionState::open`]).
    pub fn open(&self, sealer: &Sealer, header: &str) -> Option<Arc<SessionState>> {
        let header = header.trim();
        if let Ok(mut generations) = self.generations.lock() {
            if let Some(known) = generations[0].get(header) {
                return Some(known.clone());
            }
            if let Some(known) = generations[1].remove(header) {
                keep(&mut generations, header, known.clone());
                return Some(known);
            }
        }
        let opened = Arc::new(SessionState::open(sealer, header)?);
        if let Ok(mut generations) = self.generations.lock() {
            keep(&mut generations, header, opened.clone());
        }
        Some(opened)
    }
}

fn keep(generations: &mut [HashMap<Box<str>, Arc<SessionState>>; 2], header: &str, session: Arc<SessionState>) {
    if generations[0].len() >= GENERATION {
        generations[1] = std::mem::take(&mut generations[0]);
    }
    generations[0].insert(header.into(), session);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    #[test]
    fn sealed_sessions_open_only_with_the_same_key() {
        let keys = SecretKey::generate().derive();
        let state = SessionState {
            server: "docs".into(),
            user_id: Some("u1".into()),
            version: "2025-06-18".into(),
            attachment: Attachment::Http { session: Some("abc".into()) },
            client: Some(("claude".into(), "1.0".into())),
            created_ms: 1,
            members: Vec::new(),
        };
        let header = state.seal(&keys.session);
        assert!(header.bytes().all(|byte| byte.is_ascii_graphic()));
        assert_eq!(SessionState::open(&keys.session, &header), Some(state));
        assert_eq!(SessionState::open(&SecretKey::generate().derive().session, &header), None);
        let mut tampered = header.into_bytes();
        tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(SessionState::open(&keys.session, &String::from_utf8(tampered).unwrap()), None);
    }

    fn session(number: usize) -> SessionState {
        SessionState {
            server: "docs".into(),
            user_id: Some(format!("u{number}")),
            version: "2025-06-18".into(),
            attachment: Attachment::Http { session: None },
            client: None,
            created_ms: number as i64,
            members: Vec::new(),
        }
    }

    #[test]
    fn opened_sessions_are_kept_within_bounds_and_never_mixed_up() {
        let keys = SecretKey::generate().derive();
        let opened = OpenedSessions::default();
        let headers: Vec<String> = (0..GENERATION * 2 + 10).map(|number| session(number).seal(&keys.session)).collect();
        for (number, header) in headers.iter().enumerate() {
            assert_eq!(opened.open(&keys.session, header).as_deref(), Some(&session(number)));
        }
        // Found again, from either generation, as the same session; never more than two
        // generations kept.
        for (number, header) in headers.iter().enumerate().rev().take(GENERATION + 5) {
            assert_eq!(opened.open(&keys.session, &format!(" {header} ")).as_deref(), Some(&session(number)));
        }
        let kept: usize = opened.generations.lock().unwrap().iter().map(HashMap::len).sum();
        assert!(kept <= 2 * GENERATION, "{kept} sessions kept");
        // What does not open is not kept, and a header sealed with another key does not open.
        assert_eq!(opened.open(&keys.session, "garbage"), None);
        let foreign = session(1).seal(&SecretKey::generate().derive().session);
        assert_eq!(opened.open(&keys.session, &foreign), None);
        assert!(opened.generations.lock().unwrap().iter().all(|generation| !generation.contains_key("garbage")));
    }
}
