//! Connectors: the upstream APIs a tenant's server exposes as MCP tools.

pub mod address;
pub mod github;
pub mod http;
pub mod upstream;
