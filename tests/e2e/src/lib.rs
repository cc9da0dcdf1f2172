//! Shared helpers of Bulkhead's end-to-end suite.
//!
//! The suite runs against a throwaway kind cluster that `tests/e2e/run.sh`
//! creates, with the operator installed from `manifests/`. Every test runs
//! inside [`run`], which hands it a [`TestEnv`]: a client bound to the e2e
//! cluster's kubeconfig context, and fixtures whose Tenants and namespaces
//! are removed when the test ends — passed, failed or panicked.
#![forbid(unsafe_code)]

pub mod access;
pub mod cluster;
pub mod harness;
pub mod probes;
pub mod tenants;
pub mod wait;

pub use harness::{TestEnv, run};
