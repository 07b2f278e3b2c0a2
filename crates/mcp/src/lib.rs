//! The MCP / JSON-RPC envelope as the gateway sees it. No IO, no async.
//!
//! - [`json`]: strict JSON parsing (duplicate object keys are an error, so what the gateway
//!   checks is exactly what an upstream will read).
//! - [`envelope`]: classify one JSON-RPC message (request, notification, response) and pull
//!   out the fields the gateway inspects, without copying the rest.
//! - [`version`]: the MCP protocol versions the gateway speaks and what each one allows.
//! - [`error`]: the stable JSON-RPC error-code registry the gateway answers with.
//! - [`sse`]: an incremental `text/event-stream` parser and writer.
//!
//! Start with [`envelope::Message::parse`].

pub mod envelope;
pub mod error;
pub mod json;
pub mod sse;
pub mod version;

pub use envelope::{Id, Message, MessageKind};
pub use error::ErrorCode;
pub use version::ProtocolVersion;
