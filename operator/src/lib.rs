//! The Bulkhead operator: turns each `Tenant` into a namespace-isolated MCP
//! server.
//!
//! [`desired`] holds the desired state: pure builders (Tenant in, Kubernetes
//! objects out); [`render`] prints them without a cluster, and
//! [`controller`] applies them. [`advisories`] says where a valid spec
//! allows more than it seems to, for both.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod advisories;
pub mod controller;
pub mod desired;
pub mod labels;
pub mod render;
pub mod settings;
