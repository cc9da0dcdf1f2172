//! One reconcile of one Tenant, as a pipeline:
//! validate → build → (adoption check) → apply → prune → report status.
//!
//! Only the apply, prune and status steps touch the API. Validation and
//! building are the pure builders of [`crate::build`], shared with `render`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_crds::Tenant;
use bulkhead_crds::server_config::{API_KEYS_SECRET_NAME, CREDENTIALS_SECRET_NAME};
use bulkhead_crds::tenant::DeletionPolicy;
use bulkhead_crds::validation::InvalidTenant;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use super::apply::{
    Ensured, WantedNames, ensure_child, is_owned_by, kind_of_val, prune, read_and_ensure,
    read_child,
};
use super::backoff::TenantBackoff;
use super::deletion::{
    drop_retain_finalizer, has_retain_finalizer, reclaim_namespace, release_children,
    sync_finalizer,
};
use super::error::{Error, Result};
use super::metrics::{Metrics, Outcome};
use super::status::{
    CREDENTIALS_BOUND, NAMESPACE_READY, NETWORK_ISOLATED, READY, Report, SERVER_AVAILABLE, STALLED,
    Truth, Verdict, desired_status, ready_transition, write_status,
};
use crate::build::{TenantObjects, desired_objects, endpoint, namespace_name};
use crate::labels::FIELD_MANAGER;
use crate::settings::OperatorSettings;

/// How long a Tenant in a namespace conflict waits before it is checked
/// again: the conflicting namespace is not Bulkhead's, so no watch reports
/// its removal.
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(300);
/// How long to wait for a terminating namespace to disappear.
pub const TERMINATING_RECHECK: Duration = Duration::from_secs(15);
/// Periodic re-check of a healthy Tenant, a safety net for missed watch
/// events; it reads but writes nothing when nothing drifted.
pub const RESYNC: Duration = Duration::from_secs(3600);

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

    fn needs_prune(&self, uid: &str, generation: i64) -> bool {
        let pruned = match self.pruned.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        pruned.get(uid) != Some(&generation)
    }

    fn mark_pruned(&self, uid: &str, generation: i64) {
        let mut pruned = match self.pruned.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        pruned.insert(uid.to_owned(), generation);
    }

    fn first_malformed_report(&self, uid: &str, generation: i64) -> bool {
        let mut reported = match self.malformed_reported.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        reported.insert(uid.to_owned(), generation) != Some(generation)
    }

    /// Publishes an Event on the Tenant; failures are logged, never fatal:
    /// an Event is a courtesy to people, the status is the contract.
    async fn publish(
        &self,
        tenant: &impl Resource<DynamicType = ()>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.publish_to(&tenant.object_ref(&()), type_, reason, action, note)
            .await;
    }

    async fn publish_to(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1000)),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, reference).await {
            warn!(%error, reason, "could not publish Event");
        }
    }
}

/// The reconciler handed to kube-runtime's `Controller`.
///
/// The Tenant arrives inside a [`DeserializeGuard`]: a Tenant that does not
/// match this operator's types (for example written under a newer CRD)
/// reaches here as an error and is reported on its own status, instead of
/// breaking the watch for every other Tenant.
pub async fn reconcile(object: Arc<DeserializeGuard<Tenant>>, ctx: Arc<Context>) -> Result<Action> {
    let name = object.name_any();
    let started = Instant::now();
    let span = info_span!("reconcile", tenant = %name);
    let result = async {
        match &object.0 {
            Ok(tenant) => reconcile_tenant(tenant, &ctx).await,
            Err(invalid) => report_malformed(invalid, &ctx).await,
        }
    }
    .instrument(span.clone())
    .await;
    match result {
        Ok(done) => {
            ctx.backoff.reset(&name);
            ctx.metrics
                .observe_reconcile(done.outcome, started.elapsed());
            Ok(done.action)
        }
        Err(error) => {
            ctx.metrics
                .observe_reconcile(Outcome::Error, started.elapsed());
            ctx.metrics.observe_error(error.metric_label());
            async {
                warn!(%error, reason = error.metric_label(), "reconcile failed; retrying with back-off");
                ctx.publish(&*object, EventType::Warning, "ReconcileFailed", "Reconcile", error.to_string())
                    .await;
            }
            .instrument(span)
            .await;
            Err(error)
        }
    }
}

/// The error policy handed to kube-runtime's `Controller`: exponential
/// back-off per Tenant (1 s, 2 s, 4 s … up to 5 minutes), reset by the next
/// successful reconcile of that Tenant.
pub fn error_policy(
    object: Arc<DeserializeGuard<Tenant>>,
    _error: &Error,
    ctx: Arc<Context>,
) -> Action {
    Action::requeue(ctx.backoff.next_delay(&object.name_any()))
}

/// How a reconcile ended and when to look again.
#[derive(Debug)]
pub struct Done {
    /// Outcome for the metrics.
    pub outcome: Outcome,
    /// Next reconcile.
    pub action: Action,
}

/// The pipeline for one well-formed Tenant.
pub async fn reconcile_tenant(tenant: &Tenant, ctx: &Context) -> Result<Done> {
    let id = tenant.name_any();
    let uid = tenant.uid().unwrap_or_default();
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let ns_name = tenant
        .status
        .as_ref()
        .and_then(|s| s.namespace.clone())
        .unwrap_or_else(|| namespace_name(&id, &ctx.settings));

    if tenant.meta().deletion_timestamp.is_some() {
        // Delete: the garbage collector follows the owner references.
        if !has_retain_finalizer(tenant) {
            return Ok(Done {
                outcome: Outcome::Finalized,
                action: Action::await_change(),
            });
        }
        // Switched to Delete after the finalizer was added: the policy in
        // force at deletion wins, so the children keep their owner
        // references and the garbage collector removes them.
        if tenant.spec.deletion_policy != DeletionPolicy::Retain {
            reclaim_namespace(&ctx.client, tenant, &ns_name).await?;
            drop_retain_finalizer(&ctx.client, tenant).await?;
            info!(
                "Tenant deleted with deletionPolicy Delete; finalizer removed, children left to garbage collection"
            );
            return Ok(Done {
                outcome: Outcome::Finalized,
                action: Action::await_change(),
            });
        }
        let released = release_children(&ctx.client, tenant, &ns_name).await?;
        if !released.is_empty() {
            info!(released = ?released, "Tenant deleted with deletionPolicy Retain; children released");
            ctx.publish(
                tenant,
                EventType::Normal,
                "Retained",
                "Delete",
                format!("namespace {ns_name} and its contents are kept without owner references to this Tenant"),
            )
            .await;
        }
        return Ok(Done {
            outcome: Outcome::Finalized,
            action: Action::await_change(),
        });
    }

    // The finalizer patch returns the stored Tenant; continue with it so the
    // status carries the generation the API server now reports.
    let updated = sync_finalizer(&tenants, tenant).await?;
    let tenant = updated.as_ref().unwrap_or(tenant);
    let generation = tenant.meta().generation;

    // validate + build
    let objects = match desired_objects(tenant, &ctx.settings) {
        Ok(objects) => objects,
        Err(invalid) => {
            let report = invalid_spec_report(&invalid);
            finish_status(ctx, &tenants, tenant, &report, generation).await?;
            info!(
                errors = invalid.errors.len(),
                "spec invalid; waiting for a change"
            );
            return Ok(Done {
                outcome: Outcome::InvalidSpec,
                action: Action::await_change(),
            });
        }
    };
    let ns_name = namespace_name(&id, &ctx.settings);
    let tenant_endpoint = endpoint(&id, &ctx.settings);

    // adoption safety: an existing namespace must already be this Tenant's.
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let live_namespace = read_child(&namespaces, &ns_name).await?;
    if let Some(live) = &live_namespace {
        if !is_owned_by(live, &uid) {
            let report = conflict_report(&ns_name);
            finish_status(ctx, &tenants, tenant, &report, generation).await?;
            return Ok(Done {
                outcome: Outcome::NamespaceConflict,
                action: Action::requeue(CONFLICT_RECHECK),
            });
        }
        if live.meta().deletion_timestamp.is_some() {
            let report = Report {
                namespace: Some(ns_name.clone()),
                parts: vec![Verdict::new(
                    NAMESPACE_READY,
                    Truth::False,
                    "NamespaceTerminating",
                    format!(
                        "namespace {ns_name} is being deleted; it is recreated once the deletion finishes"
                    ),
                )],
                ..Report::default()
            };
            finish_status(ctx, &tenants, tenant, &report, generation).await?;
            return Ok(Done {
                outcome: Outcome::Applied,
                action: Action::requeue(TERMINATING_RECHECK),
            });
        }
    }

    // apply, in order
    let applied = match apply_all(ctx, &objects, live_namespace, &ns_name).await {
        Ok(applied) => applied,
        Err(ref error) if let Some((action, message)) = error.rejection() => {
            let report = apply_rejected_report(action, message, &ns_name);
            finish_status(ctx, &tenants, tenant, &report, generation).await?;
            warn!(%error, "the API server rejected a child as invalid; waiting for a change");
            return Ok(Done {
                outcome: Outcome::InvalidSpec,
                action: Action::await_change(),
            });
        }
        Err(error) => return Err(error),
    };
    if !applied.written.is_empty() {
        info!(written = ?applied.written, "applied children");
        ctx.publish(
            tenant,
            EventType::Normal,
            "Applied",
            "Apply",
            format!("applied {}", applied.written.join(", ")),
        )
        .await;
    }

    // prune
    if let Some(generation) = generation.filter(|g| ctx.needs_prune(&uid, *g)) {
        let deleted = prune(&ctx.client, &ns_name, &id, &uid, &applied.wanted).await?;
        ctx.mark_pruned(&uid, generation);
        if !deleted.is_empty() {
            info!(deleted = ?deleted, "pruned children the spec no longer wants");
            ctx.publish(
                tenant,
                EventType::Normal,
                "Pruned",
                "Prune",
                format!("deleted {}", deleted.join(", ")),
            )
            .await;
        }
    }

    // report
    let report = Report {
        namespace: Some(ns_name.clone()),
        endpoint: Some(tenant_endpoint),
        parts: vec![
            Verdict::new(
                NAMESPACE_READY,
                Truth::True,
                "NamespaceReady",
                format!("namespace {ns_name} exists with Pod Security 'restricted' enforced"),
            ),
            Verdict::new(
                NETWORK_ISOLATED,
                Truth::True,
                "NetworkPolicyApplied",
                format!(
                    "NetworkPolicy {} denies all traffic in {ns_name} except ingress from spec.network.ingressFrom and egress to DNS, the API server and spec.network.egress",
                    objects.network_policy.name_any()
                ),
            ),
            credentials_verdict(tenant, &objects, &ns_name),
            server_verdict(&applied.deployment, &ns_name),
        ],
        ready: None,
    };
    finish_status(ctx, &tenants, tenant, &report, generation).await?;
    // A server still starting needs no timer: its Deployment's status
    // changes trigger the next reconcile through the owned-objects watch.
    Ok(Done {
        outcome: Outcome::Applied,
        action: Action::requeue(RESYNC),
    })
}

/// What [`apply_all`] did.
struct Applied {
    written: Vec<String>,
    wanted: WantedNames,
    deployment: Deployment,
}

/// Applies every child in the deliberate order: namespace, then identity
/// and RBAC, then isolation and limits, then configuration, Service and last
/// the server, so no server pod can start before its fences exist.
async fn apply_all(
    ctx: &Context,
    objects: &TenantObjects,
    live_namespace: Option<Namespace>,
    ns: &str,
) -> Result<Applied> {
    let client = &ctx.client;
    let mut written = Vec::new();
    let mut wanted = WantedNames::default();
    let mut note = |kind: &str, name: String, was_written: bool| {
        if was_written {
            written.push(format!("{kind}/{name}"));
        }
    };

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = ensure_child(&namespaces, &objects.namespace, live_namespace).await?;
    note("Namespace", namespace.object.name_any(), namespace.written);

    macro_rules! ensure_namespaced {
        ($object:expr) => {{
            let ensured: Ensured<_> =
                read_and_ensure(&Api::namespaced(client.clone(), ns), $object).await?;
            wanted.insert($object);
            note(
                &kind_of_val($object),
                ensured.object.name_any(),
                ensured.written,
            );
            ensured
        }};
    }
    ensure_namespaced!(&objects.service_account);
    ensure_namespaced!(&objects.role_binding);
    ensure_namespaced!(&objects.network_policy);
    ensure_namespaced!(&objects.resource_quota);
    ensure_namespaced!(&objects.limit_range);
    ensure_namespaced!(&objects.config_map);
    ensure_namespaced!(&objects.service);
    let deployment = ensure_namespaced!(&objects.deployment);
    Ok(Applied {
        written,
        wanted,
        deployment: deployment.object,
    })
}

/// CredentialsBound: the RBAC is in place; the Secrets themselves are the
/// platform's to create (the operator holds no right to read them).
fn credentials_verdict(tenant: &Tenant, objects: &TenantObjects, ns: &str) -> Verdict {
    let keys: Vec<&str> = tenant
        .spec
        .credentials
        .iter()
        .map(|c| c.key.as_str())
        .collect();
    let keys = if keys.is_empty() {
        String::from("no credential keys are declared")
    } else {
        format!("keys {}", keys.join(", "))
    };
    Verdict::new(
        CREDENTIALS_BOUND,
        Truth::True,
        "SecretAccessBound",
        format!(
            "ServiceAccount {} may read only Secrets {CREDENTIALS_SECRET_NAME} ({keys}) and {API_KEYS_SECRET_NAME} in {ns}; create them there",
            objects.service_account.name_any()
        ),
    )
}

/// ServerAvailable from the Deployment's own `Available` condition.
fn server_verdict(deployment: &Deployment, ns: &str) -> Verdict {
    let name = deployment.name_any();
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment.status.as_ref();
    let available = status.and_then(|s| s.available_replicas).unwrap_or(0);
    let rolled_out = match (
        deployment.meta().generation,
        status.and_then(|s| s.observed_generation),
    ) {
        (Some(generation), Some(observed)) => observed >= generation,
        _ => false,
    };
    let conditions = status.and_then(|s| s.conditions.as_ref());
    let available_condition =
        conditions.and_then(|conditions| conditions.iter().find(|c| c.type_ == "Available"));
    // The deployment controller copies a ReplicaSet's `ReplicaFailure`
    // (pods refused at admission: a missing RuntimeClass, quota, Pod
    // Security) to the Deployment; no pod exists to carry events then.
    let replica_failure = conditions
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        })
        .map(|c| {
            format!(
                " (pods cannot be created: {})",
                c.message.as_deref().unwrap_or("no reason given")
            )
        })
        .unwrap_or_default();
    let hint = format!("see `kubectl -n {ns} describe deployment {name}` and the pods' events");
    match available_condition {
        Some(c) if c.status == "True" && rolled_out => Verdict::new(
            SERVER_AVAILABLE,
            Truth::True,
            "DeploymentAvailable",
            format!("{available}/{wanted} server replicas available"),
        ),
        Some(c) if c.status == "False" => Verdict::new(
            SERVER_AVAILABLE,
            Truth::False,
            "DeploymentUnavailable",
            format!(
                "{available}/{wanted} server replicas available: {}{replica_failure}; {hint}",
                c.message.as_deref().unwrap_or("no reason given")
            ),
        ),
        _ => Verdict::new(
            SERVER_AVAILABLE,
            Truth::False,
            "DeploymentProgressing",
            format!(
                "{available}/{wanted} server replicas available{replica_failure}; the rollout is in progress ({hint})"
            ),
        ),
    }
}

fn invalid_spec_report(invalid: &InvalidTenant) -> Report {
    let details = invalid
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect::<Vec<_>>()
        .join("; ");
    Report {
        ready: Some(Verdict::new(
            READY,
            Truth::False,
            "InvalidSpec",
            format!("fix the Tenant's spec (nothing was changed in the cluster): {details}"),
        )),
        ..Report::default()
    }
}

/// A child the API server refused as invalid (HTTP 422), e.g. a
/// nodeSelector key or resource quantity the Tenant schema let through.
/// Retrying the same spec cannot succeed, so this is reported as stalled.
fn apply_rejected_report(action: &str, message: &str, ns: &str) -> Report {
    Report {
        namespace: Some(ns.to_owned()),
        ready: Some(Verdict::new(
            READY,
            Truth::False,
            "ApplyRejected",
            format!("fix the Tenant's spec; the API server refused to {action}: {message}"),
        )),
        ..Report::default()
    }
}

fn conflict_report(ns: &str) -> Report {
    let message = format!(
        "namespace {ns} already exists and is not owned by this Tenant; nothing in it was touched. Delete or rename that namespace, or choose another Tenant name"
    );
    let not_applied = |type_| {
        Verdict::new(
            type_,
            Truth::Unknown,
            "NamespaceConflict",
            format!("not applied: namespace {ns} belongs to someone else"),
        )
    };
    Report {
        namespace: None,
        endpoint: None,
        parts: vec![
            Verdict::new(
                NAMESPACE_READY,
                Truth::False,
                "NamespaceConflict",
                message.clone(),
            ),
            not_applied(NETWORK_ISOLATED),
            not_applied(CREDENTIALS_BOUND),
            not_applied(SERVER_AVAILABLE),
        ],
        ready: Some(Verdict::new(
            READY,
            Truth::False,
            "NamespaceConflict",
            message,
        )),
    }
}

/// Writes the status for `report` if it changed and publishes an Event when
/// Ready changed.
async fn finish_status(
    ctx: &Context,
    api: &Api<Tenant>,
    tenant: &Tenant,
    report: &Report,
    generation: Option<i64>,
) -> Result<()> {
    let live = tenant.status.as_ref();
    let status = desired_status(report, generation, live);
    write_status(api, &tenant.name_any(), &status, live).await?;
    if let Some((event_type, reason, note)) = ready_transition(live, &status) {
        ctx.publish(tenant, event_type, &reason, "Reconcile", note)
            .await;
    }
    Ok(())
}

/// A Tenant this operator cannot read: say so on its status and wait for a change.
///
/// The status of such a Tenant cannot be read back, so whether it was
/// already reported is remembered per UID and generation; without that, the
/// status write would trigger the next reconcile and so on forever.
async fn report_malformed(invalid: &InvalidObject, ctx: &Context) -> Result<Done> {
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let uid = invalid.metadata.uid.clone().unwrap_or_default();
    let generation = invalid.metadata.generation.unwrap_or_default();
    let done = Done {
        outcome: Outcome::InvalidSpec,
        action: Action::await_change(),
    };
    if !ctx.first_malformed_report(&uid, generation) {
        return Ok(done);
    }
    warn!(error = %invalid.error, "Tenant does not match this operator's schema");
    let message = format!(
        "this operator cannot read the Tenant ({}); check that the installed CRD and the operator are the same version",
        invalid.error
    );
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let condition = |type_: &str, status: &str| {
        json!({
            "type": type_,
            "status": status,
            "reason": "MalformedTenant",
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": now,
        })
    };
    let body = json!({
        "apiVersion": Tenant::api_version(&()),
        "kind": Tenant::kind(&()),
        "status": {
            "observedGeneration": generation,
            "conditions": [condition(READY, "False"), condition(STALLED, "True")],
        }
    });
    // Guarded: the response is the same malformed object.
    let api: Api<DeserializeGuard<Tenant>> = Api::all(ctx.client.clone());
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| Error::kube(format!("write status of Tenant {name}"), e))?;
    let reference = invalid_object_ref(invalid);
    ctx.publish_to(
        &reference,
        EventType::Warning,
        "MalformedTenant",
        "Reconcile",
        message,
    )
    .await;
    Ok(done)
}

/// An ObjectReference to a Tenant known only by its metadata.
fn invalid_object_ref(invalid: &InvalidObject) -> ObjectReference {
    ObjectReference {
        api_version: Some(Tenant::api_version(&()).into_owned()),
        kind: Some(Tenant::kind(&()).into_owned()),
        name: invalid.metadata.name.clone(),
        uid: invalid.metadata.uid.clone(),
        resource_version: invalid.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};

    fn condition(type_: &str, status: &str, message: &str) -> DeploymentCondition {
        DeploymentCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            message: Some(message.to_owned()),
            ..DeploymentCondition::default()
        }
    }

    #[test]
    fn a_refused_pod_creation_is_named_in_server_available() {
        let refused =
            "pods \"mcp-server-x\" is forbidden: pod rejected: RuntimeClass \"gvisor\" not found";
        let mut deployment = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                conditions: Some(vec![
                    condition(
                        "Available",
                        "False",
                        "Deployment does not have minimum availability.",
                    ),
                    condition("ReplicaFailure", "True", refused),
                ]),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        };
        let verdict = server_verdict(&deployment, "bulkhead-acme");
        assert_eq!(verdict.status, Truth::False);
        assert!(verdict.message.contains(refused), "{}", verdict.message);

        // Without the condition the message says nothing about creation.
        if let Some(status) = deployment.status.as_mut() {
            status.conditions = Some(vec![condition(
                "Available",
                "False",
                "Deployment does not have minimum availability.",
            )]);
        }
        let verdict = server_verdict(&deployment, "bulkhead-acme");
        assert!(
            !verdict.message.contains("cannot be created"),
            "{}",
            verdict.message
        );
    }
}
