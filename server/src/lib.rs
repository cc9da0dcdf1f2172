//! `bulkhead-server`: the MCP server of exactly one Bulkhead tenant.
//!
//! One process serves one tenant, yet every layer behaves as if the process
//! were shared: the tenant id comes only from the operator-written
//! configuration, the caller id only from a verified API key or OAuth access
//! token, caches and rate limits are keyed by tenant and caller, and secrets
//! never reach logs, metrics, errors or tool results.
//!
//! The binary (`main.rs`) only parses flags; [`app::Server`] wires the
//! pieces: [`config`] loads the
//! [`bulkhead_crds::server_config::ServerConfig`], [`api_keys`] and
//! [`credentials`] read the tenant's Secrets through [`secret_source`],
//! [`transport`] serves MCP over Streamable HTTP behind the gates
//! ([`origin_policy`], [`authentication`] by API key or [`oauth`] access
//! token, limits; every refusal is a [`refusal`]) in front of the
//! [`handler`], whose [`tools`] are served by [`connectors`] to the callers
//! [`access`] allows, and [`admin`] serves health, readiness and metrics.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod admin;
pub mod api_keys;
pub mod app;
pub mod audit;
pub mod authentication;
pub mod cli;
pub mod config;
pub mod connections;
pub mod connectors;
pub mod credentials;
pub mod handler;
pub mod identity;
pub mod in_flight;
pub mod jsonrpc;
pub mod logging;
pub mod metrics;
pub mod oauth;
pub mod origin_policy;
pub mod rate_limit;
pub mod refusal;
pub mod response_cache;
pub mod secret_source;
pub mod tools;
pub mod transport;
