//! Leader election and restarts of the real operator binary on the real API
//! server: of two replicas only the Lease holder reconciles; when it is
//! killed (SIGKILL, no chance to release the Lease) the other takes over
//! within the lease duration; a Tenant created while no replica leads is
//! reconciled once one does; and an operator killed in the middle of a
//! Tenant's first reconcile, then started again, ends in the same state as
//! an uninterrupted run.
//!
//! Both replicas run as the same ServiceAccount, so the audit log cannot
//! tell them apart: the Lease holder, each replica's reconcile counter
//! (`/metrics`) and its log do. This binary runs its own control plane and
//! starts every operator itself (no shared operator), so it may kill them.

mod live_children;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bulkhead_crds::Tenant;
use bulkhead_crds::tenant::DeletionPolicy;
use bulkhead_envtest::install::{LEASE_NAME, OPERATOR_NAMESPACE};
use bulkhead_envtest::tenants::{RECONCILE_TIMEOUT, example, wait_for};
use bulkhead_envtest::{ControlPlane, OPERATOR_USER, Operator, OperatorOptions};
use bulkhead_operator::labels::TENANT_UID_ANNOTATION;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use live_children::{LiveChild, live_children, operator_writes_in};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The operator's defaults (`bulkhead-operator run --help`), as in production.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Slack for a busy 2-core machine on top of the protocol's bound.
const SLACK: Duration = Duration::from_secs(3);
/// A replica that must wait for a dead holder's Lease to expire first.
const LEADING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the garbage collector may take to remove a tenant namespace.
const GONE_TIMEOUT: Duration = Duration::from_secs(120);
/// The Tenant whose first reconcile is interrupted, and its reference run.
const CRASH_ID: &str = "le-crash";
/// A policy of this test that makes the operator's Deployment write fail,
/// so a first reconcile stops after the other children and before status.
const BLOCKER: &str = "envtest-block-first-deployment";
/// A user the blocker also refuses, to probe that it is enforced.
const BLOCKER_PROBE_USER: &str = "envtest-blocker-probe";

async fn lease_holder(admin: &Client) -> Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    Ok(leases
        .get_opt(LEASE_NAME)
        .await?
        .and_then(|lease| lease.spec?.holder_identity))
}

/// Sum of `bulkhead_operator_reconciles_total` over all outcomes, read from
/// the replica's own `/metrics`.
async fn reconciles(operator: &Operator) -> Result<u64> {
    let mut stream = tokio::net::TcpStream::connect(operator.admin_addr()).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    ensure!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    let mut total = 0;
    for line in body.lines() {
        if let Some(sample) = line.strip_prefix("bulkhead_operator_reconciles_total{") {
            let value = sample.rsplit(' ').next().context("sample without value")?;
            total += value.parse::<f64>().with_context(|| line.to_owned())? as u64;
        }
    }
    Ok(total)
}

fn log_of(operator: &Operator) -> Result<String> {
    std::fs::read_to_string(operator.process().log_path())
        .with_context(|| format!("read the log of {}", operator.identity()))
}

/// The state of a Tenant's children that an uninterrupted run determines:
/// each child without what the API server assigns per object (uids,
/// resourceVersions, timestamps, a Service's cluster IP) or per Tenant
/// (the Tenant's UID, and the applied digest, which covers the owner
/// reference), with its field managers.
fn comparable(children: &[LiveChild], tenant_uid: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (name, object) in children {
        let object = object
            .as_ref()
            .with_context(|| format!("{name} is missing"))?;
        let managers: BTreeSet<String> = object
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .map(|m| {
                format!(
                    "{} {} {}",
                    m.manager.clone().unwrap_or_default(),
                    m.operation.clone().unwrap_or_default(),
                    m.subresource.clone().unwrap_or_default()
                )
            })
            .collect();
        let mut value = serde_json::to_value(object)?;
        let metadata = value["metadata"].as_object_mut().context("metadata")?;
        for assigned in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
        ] {
            metadata.remove(assigned);
        }
        if let Some(annotations) = metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            annotations.remove("bulkhead.dev/applied-digest");
            if annotations.contains_key(TENANT_UID_ANNOTATION) {
                annotations.insert(TENANT_UID_ANNOTATION.to_owned(), json!("TENANT-UID"));
            }
        }
        if let Some(owners) = metadata
            .get_mut("ownerReferences")
            .and_then(Value::as_array_mut)
        {
            for owner in owners {
                ensure!(owner["uid"] == tenant_uid, "{name}: {owner}");
                owner["uid"] = json!("TENANT-UID");
            }
        }
        if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        if let Some(map) = value.as_object_mut() {
            map.remove("status");
        }
        out.push(json!({"child": name, "object": value, "managers": managers}));
    }
    Ok(out)
}

/// The condition types, statuses and reasons of a reconciled Tenant.
fn conditions(tenant: &Tenant) -> Vec<(String, String, String)> {
    tenant
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

/// The full example as CRASH_ID, with `deletionPolicy: Delete` so that
/// deleting it clears the way for the next run.
fn crash_tenant() -> Result<Tenant> {
    let mut tenant = example("full.yaml", CRASH_ID)?;
    tenant.spec.deletion_policy = DeletionPolicy::Delete;
    Ok(tenant)
}

/// Waits for the operator's report on CRASH_ID and returns the
/// comparable state of its children and its conditions.
async fn reconciled_state(
    cp: &ControlPlane,
    admin: &Client,
) -> Result<(Vec<Value>, Vec<(String, String, String)>)> {
    cp.wait_reconciled(admin, CRASH_ID).await?;
    // Settled: no kubelet runs here, so once the deployment controller has
    // judged the Deployment, the operator reports it unavailable.
    let tenants: Api<Tenant> = Api::all(admin.clone());
    let tenant = wait_for(
        &format!("{CRASH_ID}'s server to be reported unavailable"),
        RECONCILE_TIMEOUT,
        || async {
            let tenant = tenants.get(CRASH_ID).await?;
            let settled = conditions(&tenant).iter().any(|(type_, _, reason)| {
                type_ == "ServerAvailable" && reason == "DeploymentUnavailable"
            });
            Ok(settled.then_some(tenant))
        },
    )
    .await?;
    let uid = tenant.uid().context("uid")?;
    let children = live_children(admin, &cp.desired_children(&tenant)?).await?;
    Ok((comparable(&children, &uid)?, conditions(&tenant)))
}

async fn delete_and_wait_gone(cp: &ControlPlane, admin: &Client, id: &str) -> Result<()> {
    cp.delete_tenant(admin, id).await?;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let ns = cp.tenant_namespace(id);
    let tenants: Api<Tenant> = Api::all(admin.clone());
    wait_for(
        &format!("Tenant {id} and namespace {ns} to be gone"),
        GONE_TIMEOUT,
        || async {
            Ok(
                (tenants.get_opt(id).await?.is_none() && namespaces.get_opt(&ns).await?.is_none())
                    .then_some(()),
            )
        },
    )
    .await
}

/// Installs (or removes) a ValidatingAdmissionPolicy that refuses the
/// operator's writes of Deployments in CRASH_ID's namespace, with reason
/// Forbidden (HTTP 403): to the operator a failure to retry, not an invalid
/// spec, so its first reconcile stops after the other eight children and
/// before any status. Returns once the API server enforces (or no longer
/// enforces) it, probed with a dry-run by [`BLOCKER_PROBE_USER`].
async fn set_blocker(cp: &ControlPlane, enforced: bool) -> Result<()> {
    let ns = cp.tenant_namespace(CRASH_ID);
    if enforced {
        let policy = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": BLOCKER},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
                "matchConditions": [{"name": "operator-in-the-crash-namespace", "expression": format!(
                    "(request.userInfo.username == '{OPERATOR_USER}' && request.namespace == '{ns}') || request.userInfo.username == '{BLOCKER_PROBE_USER}'")}],
                "validations": [{"expression": "false", "reason": "Forbidden",
                    "message": "blocked by the leader election test"}],
            }
        });
        let binding = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": BLOCKER},
            "spec": {"policyName": BLOCKER, "validationActions": ["Deny"]},
        });
        cp.kubectl_apply(&policy)?;
        cp.kubectl_apply(&binding)?;
    } else {
        cp.kubectl_ok(&[
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            BLOCKER,
        ])?;
    }
    let probe_user = cp
        .client_as_user(BLOCKER_PROBE_USER, &["system:masters"])
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(probe_user, "default");
    let probe: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "blocker-probe"},
        "spec": {"selector": {"matchLabels": {"app": "probe"}},
            "template": {"metadata": {"labels": {"app": "probe"}},
                "spec": {"containers": [{"name": "c", "image": "probe"}]}}}
    }))?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    wait_for(
        &format!(
            "the blocker to be {}",
            if enforced { "enforced" } else { "gone" }
        ),
        Duration::from_secs(30),
        || async {
            let refused = match deployments.create(&dry_run, &probe).await {
                Ok(_) => false,
                Err(kube::Error::Api(status)) if status.message.contains(BLOCKER) => true,
                Err(error) => return Err(error.into()),
            };
            Ok((refused == enforced).then_some(()))
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn one_leader_reconciles_a_killed_leader_is_replaced_and_a_killed_reconcile_converges()
-> Result<()> {
    let cp = ControlPlane::shared();
    cp.apply_manifests()?;
    let admin = cp.admin_client().await?;

    // Two replicas; exactly one holds the Lease.
    let a = cp.start_operator(&OperatorOptions::new("le-a")).await?;
    let b = cp.start_operator(&OperatorOptions::new("le-b")).await?;
    let holder = wait_for("a leader", LEADING_TIMEOUT, || async {
        a.process().ensure_running()?;
        b.process().ensure_running()?;
        lease_holder(&admin).await
    })
    .await?;
    let (leader, follower) = match holder.as_str() {
        "le-a" => (a, b),
        "le-b" => (b, a),
        other => bail!("unexpected Lease holder {other}"),
    };
    eprintln!(
        "leader {}, follower {}",
        leader.identity(),
        follower.identity()
    );

    // Only the leader reconciles: the reference run of CRASH_ID.
    cp.kubectl_apply(&crash_tenant()?)?;
    let reference = reconciled_state(cp, &admin).await?;
    assert_eq!(
        lease_holder(&admin).await?.as_deref(),
        Some(leader.identity())
    );
    let (by_leader, by_follower) = (reconciles(&leader).await?, reconciles(&follower).await?);
    assert!(by_leader > 0, "the leader reconciled nothing");
    assert_eq!(by_follower, 0, "the follower reconciled");
    assert!(log_of(&leader)?.contains("applied children"));
    assert!(!log_of(&follower)?.contains("applied children"));
    eprintln!("reconciles: leader {by_leader}, follower {by_follower}");

    // SIGKILL the leader: the follower takes over once the Lease expires.
    let ns = cp.tenant_namespace(CRASH_ID);
    let mark = cp.audit().mark()?;
    let killed = Instant::now();
    leader.process().kill()?;
    follower
        .wait_leading(&admin, LEASE_DURATION + RETRY_PERIOD + SLACK)
        .await?;
    let takeover = killed.elapsed();
    eprintln!(
        "{} took over {:.1} s after the leader was killed (lease {} s)",
        follower.identity(),
        takeover.as_secs_f64(),
        LEASE_DURATION.as_secs()
    );
    // The new leader reconciles every Tenant once, and writes nothing for
    // one that is already as it should be.
    wait_for("the new leader to reconcile", RECONCILE_TIMEOUT, || async {
        Ok((reconciles(&follower).await? > 0).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = operator_writes_in(&cp.audit().since(mark)?, &ns);
    assert!(
        writes.is_empty(),
        "the new leader wrote:\n{}",
        writes.join("\n")
    );
    delete_and_wait_gone(cp, &admin, CRASH_ID).await?;

    // No replica runs: a new Tenant waits, then is reconciled by the next leader.
    follower.process().kill()?;
    drop((leader, follower));
    let orphan = "le-orphan";
    cp.kubectl_apply(&example("minimal.yaml", orphan)?)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let waiting = Api::<Tenant>::all(admin.clone()).get(orphan).await?;
    assert!(
        waiting.status.is_none(),
        "reconciled without a leader: {:?}",
        waiting.status
    );
    let c = cp.start_operator(&OperatorOptions::new("le-c")).await?;
    c.wait_leading(&admin, LEADING_TIMEOUT).await?;
    let served = cp.wait_reconciled(&admin, orphan).await?;
    assert!(
        conditions(&served).contains(&(
            "NamespaceReady".to_owned(),
            "True".to_owned(),
            "NamespaceReady".to_owned()
        )),
        "{:?}",
        served.status
    );

    // Killed in the middle of a first reconcile, deterministically: the
    // Deployment write is refused, so the namespace and the other children
    // exist and no status was written when the operator dies.
    set_blocker(cp, true).await?;
    let mark = cp.audit().mark()?;
    cp.kubectl_apply(&crash_tenant()?)?;
    wait_for(
        "the operator to hit the blocker",
        RECONCILE_TIMEOUT,
        || async {
            let events = cp.audit().since(mark)?;
            Ok(events
                .iter()
                .any(|e| {
                    e.username() == OPERATOR_USER
                        && e.object().resource == "deployments"
                        && e.object().namespace == ns
                        && e.code() == 403
                })
                .then_some(()))
        },
    )
    .await?;
    c.process().kill()?;
    drop(c);
    let stored = Api::<Tenant>::all(admin.clone()).get(CRASH_ID).await?;
    assert!(
        stored.status.is_none(),
        "status written: {:?}",
        stored.status
    );
    let partial = live_children(&admin, &cp.desired_children(&stored)?).await?;
    let present: Vec<&str> = partial
        .iter()
        .filter(|(_, o)| o.is_some())
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(present.len(), 8, "before the kill: {present:?}");
    set_blocker(cp, false).await?;
    let d = cp.start_operator(&OperatorOptions::new("le-d")).await?;
    d.wait_leading(&admin, LEADING_TIMEOUT).await?;
    let resumed = reconciled_state(cp, &admin).await?;
    assert_eq!(
        resumed, reference,
        "resumed after a kill before the Deployment"
    );
    delete_and_wait_gone(cp, &admin, CRASH_ID).await?;

    // Killed as soon as the namespace appears, wherever the reconcile is.
    cp.kubectl_apply(&crash_tenant()?)?;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let deadline = Instant::now() + RECONCILE_TIMEOUT;
    while namespaces.get_opt(&ns).await?.is_none() {
        ensure!(Instant::now() < deadline, "namespace {ns} never appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.process().kill()?;
    drop(d);
    let stored = Api::<Tenant>::all(admin.clone()).get(CRASH_ID).await?;
    let at_kill = live_children(&admin, &cp.desired_children(&stored)?).await?;
    eprintln!(
        "killed with {} of 9 children and {} status",
        at_kill.iter().filter(|(_, o)| o.is_some()).count(),
        if stored.status.is_some() { "a" } else { "no" }
    );
    let e = cp.start_operator(&OperatorOptions::new("le-e")).await?;
    e.wait_leading(&admin, LEADING_TIMEOUT).await?;
    let resumed = reconciled_state(cp, &admin).await?;
    assert_eq!(
        resumed, reference,
        "resumed after a kill once the namespace appeared"
    );

    for id in [CRASH_ID, orphan] {
        cp.delete_tenant(&admin, id).await?;
    }
    drop(e);
    Ok(())
}
