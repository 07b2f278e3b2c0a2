//! MCP protocol versions. The gateway speaks every version below to clients and relays to
//! upstreams in whatever version they negotiated.

use std::fmt;

/// A protocol version the gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    V2024_11_05,
    V2025_03_26,
    V2025_06_18,
    V2025_11_25,
    /// The stateless era: no sessions, `server/discover`, `Mcp-Method`/`Mcp-Name` headers.
    V2026_07_28,
}

impl ProtocolVersion {
    /// All versions, oldest first.
    pub const ALL: [ProtocolVersion; 5] = [
        ProtocolVersion::V2024_11_05,
        ProtocolVersion::V2025_03_26,
        ProtocolVersion::V2025_06_18,
        ProtocolVersion::V2025_11_25,
        ProtocolVersion::V2026_07_28,
    ];

    /// The newest version that uses `initialize` and sessions.
    pub const LATEST_SESSION: ProtocolVersion = ProtocolVersion::V2025_11_25;

    /// The version assumed when a request has no `MCP-Protocol-Version` header, as the
    /// specification asks for backwards compatibility.
    pub const ASSUMED_WITHOUT_HEADER: ProtocolVersion = ProtocolVersion::V2025_03_26;

    pub fn parse(text: &str) -> Option<ProtocolVersion> {
        ProtocolVersion::ALL.into_iter().find(|version| version.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V2024_11_05 => "2024-11-05",
            ProtocolVersion::V2025_03_26 => "2025-03-26",
            ProtocolVersion::V2025_06_18 => "2025-06-18",
            ProtocolVersion::V2025_11_25 => "2025-11-25",
            ProtocolVersion::V2026_07_28 => "2026-07-28",
        }
    }

    /// JSON-RPC batches (arrays of messages) were allowed up to 2025-03-26 and removed after.
    pub fn allows_batch(self) -> bool {
        self <= ProtocolVersion::V2025_03_26
    }

    /// Requests carry their own context in `_meta` and no session exists.
    pub fn is_stateless(self) -> bool {
        self >= ProtocolVersion::V2026_07_28
    }

    /// The version to answer an `initialize` that asked for `requested`: the same one when the
    /// gateway speaks it, otherwise the newest session version (the client then decides).
    pub fn negotiate(requested: &str) -> ProtocolVersion {
        match ProtocolVersion::parse(requested) {
            Some(version) if !version.is_stateless() => version,
            _ => ProtocolVersion::LATEST_SESSION,
        }
    }

    /// A comma-separated list for error messages.
    pub fn list() -> String {
        ProtocolVersion::ALL.map(ProtocolVersion::as_str).join(", ")
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(ProtocolVersion::negotiate("2025-06-18"), ProtocolVersion::V2025_06_18);
        assert_eq!(ProtocolVersion::negotiate("1999-01-01"), ProtocolVersion::V2025_11_25);
        assert_eq!(ProtocolVersion::negotiate("2026-07-28"), ProtocolVersion::V2025_11_25);
        assert!(ProtocolVersion::V2025_03_26.allows_batch());
        assert!(!ProtocolVersion::V2025_06_18.allows_batch());
    }
}
