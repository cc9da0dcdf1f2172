//! What every reconcile shares: the API client, the cluster facts, the
//! Event recorder, metrics and back-off, and the little memory that keeps a
//! reconcile from repeating work it already did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bulkhead_crds::Tenant;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use tracing::warn;

use super::backoff::TenantBackoff;
use super::metrics::Metrics;
use crate::advisories::AdvisoryKind;
use crate::labels::FIELD_MANAGER;
use crate::settings::OperatorSettings;

/// Why an Event is published, and the action it reports (the `reason` and
/// `action` fields of an `events.k8s.io/v1` Event: CamelCase, stable for
/// alerting).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventReason {
    /// Children were written.
    Applied,
    /// Children the spec no longer wants were deleted.
    Pruned,
    /// A deleted Retain Tenant's children were released.
    Retained,
    /// A reconcile failed and is retried.
    ReconcileFailed,
    /// The Ready condition changed; the reason is the condition's.
    ReadyChanged(String),
    /// The spec gives cause for an advisory (newly, or with a new message);
    /// the reason is the advisory's condition type.
    Advisory(AdvisoryKind),
}

impl EventReason {
    /// The Event's `reason`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Applied => "Applied",
            Self::Pruned => "Pruned",
            Self::Retained => "Retained",
            Self::ReconcileFailed => "ReconcileFailed",
            Self::ReadyChanged(reason) => reason,
            Self::Advisory(kind) => kind.as_str(),
        }
    }

    /// The Event's `action`: what the controller was doing.
    pub fn action(&self) -> &'static str {
        match self {
            Self::Applied => "Apply",
            Self::Pruned => "Prune",
            Self::Retained => "Delete",
            Self::ReconcileFailed | Self::ReadyChanged(_) | Self::Advisory(_) => "Reconcile",
        }
    }
}

/// Shared state of all reconciles.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Cluster facts used by the builders.
    pub settings: OperatorSettings,
    /// Publishes Events on Tenants.
    pub recorder: Recorder,
    /// Controller metrics.
    pub metrics: Arc<Metrics>,
    /// Per-tenant back-off after failures.
    pub backoff: TenantBackoff,
    // Tenant UID -> generation whose stale children were last swept. The
    // sweep lists every child kind, so it runs once per spec generation (and
    // once per operator start) rather than on every no-op reconcile.
    pruned: Mutex<HashMap<String, i64>>,
    // Tenant UID -> generation of a malformed Tenant already reported.
    malformed_reported: Mutex<HashMap<String, i64>>,
}

/// A lock that survives a panic elsewhere: the maps hold plain values, so
/// a poisoned one is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Context {
    /// A context whose Events are reported as `bulkhead-operator` from `instance`.
    pub fn new(
        client: Client,
        settings: OperatorSettings,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            backoff: TenantBackoff::default(),
            pruned: Mutex::default(),
            malformed_reported: Mutex::default(),
        }
    }

    /// Whether the children of the Tenant with `uid` still need a sweep for
    /// spec `generation`.
    pub(crate) fn needs_prune(&self, uid: &str, generation: i64) -> bool {
        lock(&self.pruned).get(uid) != Some(&generation)
    }

    /// Records that the sweep for `generation` is done.
    pub(crate) fn mark_pruned(&self, uid: &str, generation: i64) {
        lock(&self.pruned).insert(uid.to_owned(), generation);
    }

    /// True the first time a malformed Tenant's `generation` is seen.
    pub(crate) fn first_malformed_report(&self, uid: &str, generation: i64) -> bool {
        lock(&self.malformed_reported).insert(uid.to_owned(), generation) != Some(generation)
    }

    /// Publishes an Event on the Tenant; failures are logged, never fatal:
    /// an Event is a courtesy to people, the status is the contract.
    pub(crate) async fn publish(
        &self,
        tenant: &impl Resource<DynamicType = ()>,
        type_: EventType,
        reason: EventReason,
        note: String,
    ) {
        self.publish_to(&tenant.object_ref(&()), type_, reason, note)
            .await;
    }

    /// Publishes an Event on the object `reference` names.
    pub(crate) async fn publish_to(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: EventReason,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.as_str().to_owned(),
            note: Some(truncate(note, 1000)),
            action: reason.action().to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, reference).await {
            warn!(%error, reason = reason.as_str(), "could not publish Event");
        }
    }
}

/// An ObjectReference to a Tenant known only by its metadata (one that
/// could not be read as a Tenant).
pub(crate) fn tenant_ref(metadata: &kube::api::ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(Tenant::api_version(&()).into_owned()),
        kind: Some(Tenant::kind(&()).into_owned()),
        name: metadata.name.clone(),
        uid: metadata.uid.clone(),
        resource_version: metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary (an Event
/// note is limited to 1 KiB by the API server).
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
