//! One reconcile of one Tenant: a Tenant being deleted is [`finalize`]d,
//! any other [`converge`]s through named steps,
//! validate → build → check ownership → apply → prune → report.
//!
//! Each step may stop the sequence with what to say on the status
//! ([`Halt`]); the status is written in one place, [`write_status`]. Only
//! the ownership check, apply, prune and the status write touch the API;
//! validating and building are the pure builders of [`crate::desired`],
//! shared with `render`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_crds::tenant::DeletionPolicy;
use bulkhead_crds::validation::InvalidTenant;
use bulkhead_crds::{Tenant, TenantStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ObjectMeta;
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{Instrument, info, info_span, warn};

use super::apply::{is_owned_by, read_child};
use super::children::{Applied, LiveObjects, TenantChildren};
use super::context::{Context, EventReason, tenant_ref};
use super::deletion::{
    drop_retain_finalizer, has_retain_finalizer, reclaim_namespace, release_children,
    sync_finalizer,
};
use super::error::{Error, Result};
use super::metrics::Outcome;
use super::status::{Report, desired_status, new_advisories, ready_transition, verdicts};
use crate::advisories::advisories;
use crate::desired::{TenantObjects, ValidTenant, namespace_name, validate};

/// How long a Tenant in a namespace conflict waits before it is checked
/// again: the conflicting namespace is not Bulkhead's, so no watch reports
/// its removal.
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(300);
/// How long to wait for a terminating namespace to disappear.
pub const TERMINATING_RECHECK: Duration = Duration::from_secs(15);
/// Periodic re-check of a healthy Tenant, a safety net for missed watch
/// events; it reads but writes nothing when nothing drifted.
pub const RESYNC: Duration = Duration::from_secs(3600);

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
                ctx.publish(&*object, EventType::Warning, EventReason::ReconcileFailed, error.to_string())
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

impl Done {
    fn requeue(outcome: Outcome, after: Duration) -> Self {
        Self {
            outcome,
            action: Action::requeue(after),
        }
    }

    /// Nothing changes until the Tenant does.
    fn await_change(outcome: Outcome) -> Self {
        Self {
            outcome,
            action: Action::await_change(),
        }
    }
}

/// One well-formed Tenant: finalize it if it is being deleted, converge it
/// otherwise.
pub async fn reconcile_tenant(tenant: &Tenant, ctx: &Context) -> Result<Done> {
    if tenant.meta().deletion_timestamp.is_some() {
        finalize(tenant, ctx).await
    } else {
        converge(tenant, ctx).await
    }
}

/// A deleted Tenant. Delete: the garbage collector follows the owner
/// references. Retain: its children are released before the finalizer goes.
async fn finalize(tenant: &Tenant, ctx: &Context) -> Result<Done> {
    let done = Done::await_change(Outcome::Finalized);
    if !has_retain_finalizer(tenant) {
        return Ok(done);
    }
    let ns = tenant
        .status
        .as_ref()
        .and_then(|s| s.namespace.clone())
        .unwrap_or_else(|| namespace_name(&tenant.name_any(), &ctx.settings));
    // Switched to Delete after the finalizer was added: the policy in force
    // at deletion wins, so the children keep their owner references and the
    // garbage collector removes them.
    if tenant.spec.deletion_policy != DeletionPolicy::Retain {
        reclaim_namespace(&ctx.client, tenant, &ns).await?;
        drop_retain_finalizer(&ctx.client, tenant).await?;
        info!(
            "Tenant deleted with deletionPolicy Delete; finalizer removed, children left to garbage collection"
        );
        return Ok(done);
    }
    let released = release_children(&ctx.client, tenant, &ns).await?;
    if !released.is_empty() {
        info!(released = ?released, "Tenant deleted with deletionPolicy Retain; children released");
        let note = format!(
            "namespace {ns} and its contents are kept without owner references to this Tenant"
        );
        ctx.publish(tenant, EventType::Normal, EventReason::Retained, note)
            .await;
    }
    Ok(done)
}

/// Why [`converge`] stopped before the end.
enum Halt {
    /// A state only a change can resolve (or that resolves itself): say so
    /// on the status, then wait as `Done` says.
    Report(Report, Done),
    /// A failure to retry with back-off; the status is left as it was.
    Failed(Error),
}

impl From<Error> for Halt {
    fn from(error: Error) -> Self {
        Self::Failed(error)
    }
}

/// A live Tenant: the steps, then the one status write.
async fn converge(tenant: &Tenant, ctx: &Context) -> Result<Done> {
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    // The finalizer patch returns the stored Tenant; continue with it so the
    // status carries the generation the API server now reports.
    let updated = sync_finalizer(&tenants, tenant).await?;
    let tenant = updated.as_ref().unwrap_or(tenant);
    let (mut report, done) = match converge_steps(tenant, ctx).await {
        Ok(converged) => converged,
        Err(Halt::Report(report, done)) => (report, done),
        Err(Halt::Failed(error)) => return Err(error),
    };
    // Judged from the spec alone, whatever else the reconcile found.
    report.advisories = advisories(&tenant.spec);
    write_status(
        ctx,
        &tenants,
        tenant.meta(),
        tenant.status.as_ref(),
        &report,
    )
    .await?;
    Ok(done)
}

async fn converge_steps(tenant: &Tenant, ctx: &Context) -> Result<(Report, Done), Halt> {
    let valid = validate(tenant, &ctx.settings).map_err(invalid_spec)?;
    let objects = valid.build().map_err(invalid_spec)?;
    let uid = tenant.uid().unwrap_or_default();
    let known = check_ownership(ctx, &valid, &uid).await?;
    let children = TenantChildren::new(&ctx.client, valid.namespace(), valid.id(), &uid);
    let applied = apply(ctx, tenant, &children, &objects, known).await?;
    prune(ctx, tenant, &children, &objects, &uid).await?;
    // The desired Deployment (no status yet) reads as a rollout in progress.
    let deployment = applied
        .live
        .get::<Deployment>()
        .unwrap_or(&objects.deployment);
    let report = verdicts::converged(
        tenant,
        &objects,
        deployment,
        valid.namespace(),
        valid.endpoint(),
    );
    // A server still starting needs no timer: its Deployment's status
    // changes trigger the next reconcile through the owned-objects watch.
    Ok((report, Done::requeue(Outcome::Applied, RESYNC)))
}

fn invalid_spec(invalid: InvalidTenant) -> Halt {
    info!(
        errors = invalid.errors.len(),
        "spec invalid; waiting for a change"
    );
    Halt::Report(
        verdicts::invalid_spec(&invalid),
        Done::await_change(Outcome::InvalidSpec),
    )
}

/// Adoption safety: an existing namespace must already be this Tenant's.
/// Returns the namespace as read, so applying does not read it again.
async fn check_ownership(
    ctx: &Context,
    valid: &ValidTenant<'_>,
    uid: &str,
) -> Result<LiveObjects, Halt> {
    let ns = valid.namespace();
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let live = read_child(&namespaces, ns).await?;
    if let Some(live) = &live {
        if !is_owned_by(live, uid) {
            return Err(Halt::Report(
                verdicts::namespace_conflict(ns),
                Done::requeue(Outcome::NamespaceConflict, CONFLICT_RECHECK),
            ));
        }
        if live.meta().deletion_timestamp.is_some() {
            return Err(Halt::Report(
                verdicts::namespace_terminating(ns),
                Done::requeue(Outcome::Applied, TERMINATING_RECHECK),
            ));
        }
    }
    let mut known = LiveObjects::default();
    known.insert(live);
    Ok(known)
}

/// Applies the children in order; a child the API server refuses as
/// invalid stops here and is reported, since retrying cannot help.
async fn apply(
    ctx: &Context,
    tenant: &Tenant,
    children: &TenantChildren<'_>,
    objects: &TenantObjects,
    known: LiveObjects,
) -> Result<Applied, Halt> {
    let applied = match children.apply(objects, known).await {
        Ok(applied) => applied,
        Err(error) => {
            let Some((action, message)) = error.rejection() else {
                return Err(Halt::Failed(error));
            };
            let report = verdicts::apply_rejected(action, message, children.namespace());
            warn!(%error, "the API server rejected a child as invalid; waiting for a change");
            return Err(Halt::Report(
                report,
                Done::await_change(Outcome::InvalidSpec),
            ));
        }
    };
    if !applied.written.is_empty() {
        info!(written = ?applied.written, "applied children");
        let note = format!("applied {}", applied.written.join(", "));
        ctx.publish(tenant, EventType::Normal, EventReason::Applied, note)
            .await;
    }
    Ok(applied)
}

/// Deletes the children the spec no longer wants, once per spec generation.
async fn prune(
    ctx: &Context,
    tenant: &Tenant,
    children: &TenantChildren<'_>,
    objects: &TenantObjects,
    uid: &str,
) -> Result<()> {
    let Some(generation) = tenant
        .meta()
        .generation
        .filter(|g| ctx.needs_prune(uid, *g))
    else {
        return Ok(());
    };
    let deleted = children.prune(objects).await?;
    ctx.mark_pruned(uid, generation);
    if !deleted.is_empty() {
        info!(deleted = ?deleted, "pruned children the spec no longer wants");
        let note = format!("deleted {}", deleted.join(", "));
        ctx.publish(tenant, EventType::Normal, EventReason::Pruned, note)
            .await;
    }
    Ok(())
}

/// The one place a Tenant's status is written: computes it from `report`,
/// writes it if it changed, and publishes an Event when Ready changed and a
/// Warning Event for each advisory that is new or says something new.
///
/// Generic over the Tenant type so a Tenant this operator cannot read
/// (`DeserializeGuard<Tenant>`) is reported the same way.
async fn write_status<K>(
    ctx: &Context,
    api: &Api<K>,
    meta: &ObjectMeta,
    live: Option<&TenantStatus>,
    report: &Report,
) -> Result<()>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let status = desired_status(report, meta.generation, live);
    let name = meta.name.as_deref().unwrap_or_default();
    super::status::write_status(api, name, &status, live).await?;
    if let Some((event_type, reason, note)) = ready_transition(live, &status) {
        ctx.publish_to(
            &tenant_ref(meta),
            event_type,
            EventReason::ReadyChanged(reason),
            note,
        )
        .await;
    }
    for (kind, note) in new_advisories(live, &status) {
        ctx.publish_to(
            &tenant_ref(meta),
            EventType::Warning,
            EventReason::Advisory(kind),
            note,
        )
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
    let done = Done::await_change(Outcome::InvalidSpec);
    let uid = invalid.metadata.uid.clone().unwrap_or_default();
    let generation = invalid.metadata.generation.unwrap_or_default();
    if !ctx.first_malformed_report(&uid, generation) {
        return Ok(done);
    }
    warn!(error = %invalid.error, "Tenant does not match this operator's schema");
    let report = verdicts::malformed(format!(
        "this operator cannot read the Tenant ({}); check that the installed CRD and the operator are the same version",
        invalid.error
    ));
    let meta = ObjectMeta {
        generation: Some(generation),
        ..invalid.metadata.clone()
    };
    // Guarded: the response is the same malformed object.
    let api: Api<DeserializeGuard<Tenant>> = Api::all(ctx.client.clone());
    write_status(ctx, &api, &meta, None, &report).await?;
    Ok(done)
}
