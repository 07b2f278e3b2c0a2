//! Portcullis: an MCP gateway and governance control plane.
//!
//! Start reading at [`app::App::build`], which wires everything together, then follow a
//! request through [`proxy`]. The parts:
//!
//! - [`config`]: the one typed configuration (file → env → flags); the only reader of the
//!   environment.
//! - [`app`]: builds the router and shared state, binds, serves, drains.
//! - [`edge`]: DNS-rebinding protection and client IP resolution.
//! - [`auth`]: who is calling (API keys).
//! - [`proxy`]: the data plane (`/mcp/{server}`): parse, authorise, audit, forward, relay.
//! - [`upstream`]: Streamable HTTP and stdio connections to MCP servers.
//! - [`snapshot`]: the immutable registry snapshot the data plane reads; refreshed from the
//!   store, fail-closed when stale.
//! - [`audit`]: group-committed audit events.
//! - [`registry`]: domain types (servers, users, groups, grants, API keys).
//! - [`apply`]: declarative TOML apply.
//! - [`catalog`], [`requests`], [`lifecycle`], [`conntest`], [`vetting`]: how a server gets
//!   into the company — the catalog, requests and their review, the connection test and the
//!   automated checks.
//! - [`pinning`]: tool definitions pinned by hash; changed ones held until approved.
//! - [`notify`]: the in-app inbox and notification mail.
//! - [`api`]: the REST API and its OpenAPI document.
//! - [`store`]: all SQL, for SQLite and PostgreSQL.
//! - [`crypto`]: keys, sealing, hashing.
//! - [`metrics`]: Prometheus exposition.
//! - [`demo`]: the built-in demo / echo MCP server.
//! - [`cli`]: the subcommands other than `serve`.
//! - [`mod@bench`]: the gateway-versus-direct benchmark.

pub mod access;
pub mod api;
pub mod app;
pub mod apply;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod busy_poll;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod conntest;
pub mod console;
pub mod crypto;
pub mod demo;
pub mod edge;
pub mod known_tools;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod pinning;
pub mod policy_test;
pub mod proxy;
pub mod registry;
pub mod requests;
pub mod review;
pub mod rules;
pub mod scim;
pub mod snapshot;
pub mod store;
pub mod time;
pub mod upstream;
pub mod vetting;
