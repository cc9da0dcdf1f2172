//! The `Tenant` custom resource and the contract between the operator and the
//! per-tenant MCP server.
//!
//! Both binaries depend on this crate: the operator writes the server
//! configuration and names the Secrets, the server reads them. Keeping both
//! sides on one definition means they cannot drift apart.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cidr;
pub mod server_config;
pub mod tenant;
pub mod validation;

pub use tenant::{Tenant, TenantSpec, TenantStatus};
pub use validation::{FieldError, InvalidTenant};
