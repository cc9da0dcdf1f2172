//! kstatus, the status model Flux and `kubectl`'s `cli-utils` read from any
//! resource, computed for a custom resource as
//! `sigs.k8s.io/cli-utils/pkg/kstatus/status` does for a kind it has no
//! special rules for (`checkGenericProperties` in `generic.go`, then
//! Current in `core.go`), in the order of those rules:
//!
//! 1. `metadata.deletionTimestamp` set: **Terminating**;
//! 2. `status.observedGeneration` present and not `metadata.generation`:
//!    **InProgress** (the controller has not seen the latest spec);
//! 3. a condition `Reconciling=True`: **InProgress**;
//! 4. a condition `Stalled=True`: **Failed**;
//! 5. otherwise **Current**.
//!
//! The README's kstatus section promises exactly these results for a Tenant.

use serde_json::Value;

/// A kstatus result (`status.Status` in cli-utils).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KStatus {
    /// Fully reconciled.
    Current,
    /// Being reconciled.
    InProgress,
    /// Reconciling failed and needs a person.
    Failed,
    /// Being deleted.
    Terminating,
}

/// The kstatus of `object` (any resource as JSON, e.g. a Tenant read from
/// the API server), with the reason kstatus gives.
pub fn kstatus(object: &Value) -> (KStatus, String) {
    if object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return (
            KStatus::Terminating,
            "resource scheduled for deletion".into(),
        );
    }
    let generation = object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    if let Some(observed) = object
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64)
        && Some(observed) != generation
    {
        return (
            KStatus::InProgress,
            format!("observedGeneration {observed} is not generation {generation:?}"),
        );
    }
    let conditions = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_true = |kind: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == kind && c["status"] == "True")
    };
    if let Some(condition) = is_true("Reconciling") {
        return (KStatus::InProgress, condition["reason"].to_string());
    }
    if let Some(condition) = is_true("Stalled") {
        return (KStatus::Failed, condition["reason"].to_string());
    }
    (KStatus::Current, "resource is current".into())
}
