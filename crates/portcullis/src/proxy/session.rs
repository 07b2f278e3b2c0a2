//! Client sessions, sealed into the `Mcp-Session-Id` header. Nothing about a Streamable HTTP
//! session is stored on the gateway: any replica holding the shared secret key can open the
//! header and continue the session, so no sticky load balancing is needed.

use crate::crypto::Sealer;
use crate::upstream::Attachment;
use mcp::ProtocolVersion;
use serde::{Deserialize, Serialize};

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
}
