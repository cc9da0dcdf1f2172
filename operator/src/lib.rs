//! The Bulkhead operator: turns each `Tenant` into a namespace-isolated MCP
//! server.
//!
//! [`desired`] holds the desired state: pure builders (Tenant in, Kubernetes
//! objects out); [`render`] prints them without a cluster, and
//! [`controller`] applies them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod controller;
pub mod desired;
pub mod labels;
pub mod render;
pub mod settings;
