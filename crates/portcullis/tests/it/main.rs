//! The integration tests: one binary, real gateway, real stores, real MCP peers.

mod support;

mod apply;
mod bad_input;
mod browser;
mod catalog;
mod conformance;
mod console;
mod data_plane;
mod oauth;
mod peers;
mod people;
mod pinning;
mod policies;
mod replicas;
mod requests;
mod scim;
mod sso;
mod store_suite;
