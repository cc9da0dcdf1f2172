//! A Tenant's life on a real cluster: it becomes Ready in a namespace that
//! enforces Pod Security `restricted`, the operator repairs what is deleted
//! by hand, a spec change rolls the server, and deletion follows
//! `deletionPolicy`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bulkhead_crds::Tenant;
use bulkhead_crds::server_config::{CONFIG_FILE_KEY, CONFIG_MAP_NAME};
use bulkhead_crds::tenant::DeletionPolicy;
use bulkhead_e2e::harness::delete_ignoring_absent;
use bulkhead_e2e::probes::admission_test_pod;
use bulkhead_e2e::run;
use bulkhead_e2e::tenants::managed_by_selector;
use bulkhead_e2e::wait::{self, Check, NAMESPACE_DELETION_TIMEOUT, READY_TIMEOUT};
use bulkhead_operator::desired::deployment::CONFIG_CHECKSUM_ANNOTATION;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

/// How long a retained namespace must survive its Tenant. Garbage
/// collection of objects whose owner is gone takes seconds, so an owner
/// reference left behind would show within this time.
const RETAIN_OBSERVATION: Duration = Duration::from_secs(20);

/// The spec change of the roll test: the per-caller rate limit is part of
/// the server configuration, so it must change the ConfigMap and roll the
/// server.
fn rate_limit_change() -> serde_json::Value {
    serde_json::json!({"rateLimits": {"perCaller": {"requestsPerMinute": 77, "burst": 7}}})
}
/// What the changed `server.yaml` contains once the operator applied it.
const CHANGED_CONFIG_MARKER: &str = "requestsPerMinute: 77";

#[tokio::test]
#[ignore = "needs a kind cluster: run tests/e2e/run.sh"]
async fn tenant_becomes_ready_in_a_restricted_namespace() {
    run(|env| async move {
        let tenant = env.create_tenant("ready", env.tenant_spec()?).await?;
        // The same question as a person or a CD tool asks it.
        let context = env.settings().context.clone();
        let name = tenant.name.clone();
        let wait = tokio::task::spawn_blocking(move || {
            std::process::Command::new("kubectl")
                .args(["--context", &context, "wait", "--for=condition=Ready"])
                .arg(format!("tenant/{name}"))
                .arg("--timeout=60s")
                .output()
        })
        .await?
        .context("running kubectl wait (kubectl must be on PATH)")?;
        ensure!(
            wait.status.success(),
            "kubectl wait --for=condition=Ready tenant/{} failed: {}{}",
            tenant.name,
            String::from_utf8_lossy(&wait.stdout),
            String::from_utf8_lossy(&wait.stderr)
        );
        ensure!(
            tenant.namespace == format!("bulkhead-{}", tenant.name),
            "Tenant {} reports namespace {}, expected bulkhead-{}",
            tenant.name,
            tenant.namespace,
            tenant.name
        );

        let namespace = Api::<Namespace>::all(env.client())
            .get(&tenant.namespace)
            .await?;
        for mode in ["enforce", "audit", "warn"] {
            let key = format!("pod-security.kubernetes.io/{mode}");
            let value = namespace.labels().get(&key);
            ensure!(
                value.map(String::as_str) == Some("restricted"),
                "namespace {} has {key}={value:?}, expected restricted",
                tenant.namespace
            );
        }

        let pods: Api<Pod> = Api::namespaced(env.client(), &tenant.namespace);
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let image = &env.settings().curl_image;
        pods.create(&dry_run, &admission_test_pod(image, false))
            .await
            .context(
                "a pod that meets Pod Security `restricted` was refused, so the check \
                 that a privileged pod is refused would prove nothing",
            )?;
        match pods
            .create(&dry_run, &admission_test_pod(image, true))
            .await
        {
            Ok(_) => bail!("a privileged pod was admitted in {}", tenant.namespace),
            Err(kube::Error::Api(status))
                if status.code == 403 && status.message.contains("violates PodSecurity") => {}
            Err(other) => bail!("the privileged pod was refused, but not by Pod Security: {other}"),
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a kind cluster: run tests/e2e/run.sh"]
async fn children_deleted_by_hand_come_back() {
    run(|env| async move {
        let tenant = env.create_tenant("heal", env.tenant_spec()?).await?;
        let namespace = &tenant.namespace;

        // The NetworkPolicy is the isolation itself: it must not stay gone.
        let policies: Api<NetworkPolicy> = Api::namespaced(env.client(), namespace);
        let names: Vec<String> = policies
            .list(&ListParams::default().labels(&managed_by_selector()))
            .await?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        ensure!(
            !names.is_empty(),
            "no Bulkhead NetworkPolicy in {namespace}"
        );
        for name in &names {
            wait::deleted_and_restored(&policies, name).await?;
        }

        let config_maps: Api<ConfigMap> = Api::namespaced(env.client(), namespace);
        wait::deleted_and_restored(&config_maps, CONFIG_MAP_NAME).await?;

        let deployment = env.server_deployment(namespace).await?.name_any();
        let deployments: Api<Deployment> = Api::namespaced(env.client(), namespace);
        wait::deleted_and_restored(&deployments, &deployment).await?;

        env.wait_for_tenant_ready(&tenant.name).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a kind cluster: run tests/e2e/run.sh"]
async fn spec_change_rolls_the_server() {
    run(|env| async move {
        let tenant = env.create_tenant("roll", env.tenant_spec()?).await?;
        let namespace = &tenant.namespace;
        let deployments: Api<Deployment> = Api::namespaced(env.client(), namespace);
        let before = env.server_deployment(namespace).await?;
        let deployment_name = before.name_any();
        let annotations_before = template_annotations(&before);
        let replica_sets: Api<ReplicaSet> = Api::namespaced(env.client(), namespace);
        let old_replica_sets: Vec<String> = replica_sets
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();

        // The per-caller rate limit is part of the server configuration.
        Api::<Tenant>::all(env.client())
            .patch(
                &tenant.name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": rate_limit_change()})),
            )
            .await
            .context("changing the Tenant's rate limits")?;

        let config_maps: Api<ConfigMap> = Api::namespaced(env.client(), namespace);
        wait::until(
            "the server configuration to carry the new rate limit",
            wait::RECONCILE_TIMEOUT,
            async || {
                let config = config_maps
                    .get(CONFIG_MAP_NAME)
                    .await?
                    .data
                    .and_then(|mut data| data.remove(CONFIG_FILE_KEY))
                    .unwrap_or_default();
                Ok(if config.contains(CHANGED_CONFIG_MARKER) {
                    Check::Done(())
                } else {
                    Check::Pending(format!("{CONFIG_FILE_KEY}: {config}"))
                })
            },
        )
        .await?;

        let changed = wait::until(
            "the server's pod template annotations to change",
            wait::RECONCILE_TIMEOUT,
            async || {
                let now = template_annotations(&deployments.get(&deployment_name).await?);
                let changed: Vec<String> = now
                    .iter()
                    .filter(|(key, value)| annotations_before.get(*key) != Some(*value))
                    .map(|(key, _)| key.clone())
                    .collect();
                Ok(if changed.is_empty() {
                    Check::Pending(format!("unchanged: {now:?}"))
                } else {
                    Check::Done(changed)
                })
            },
        )
        .await?;
        ensure!(
            changed.iter().any(|key| key == CONFIG_CHECKSUM_ANNOTATION),
            "the pod template changed only in {changed:?}; expected {CONFIG_CHECKSUM_ANNOTATION} to change"
        );

        wait::until("a new ReplicaSet to take over", READY_TIMEOUT, async || {
            let deployment = deployments.get(&deployment_name).await?;
            let wanted = deployment
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1);
            let status = deployment.status.clone().unwrap_or_default();
            let current = replica_sets.list(&ListParams::default()).await?.items;
            let new_ready = current.iter().any(|rs| {
                !old_replica_sets.contains(&rs.name_any())
                    && rs.status.as_ref().and_then(|s| s.ready_replicas) == Some(wanted)
            });
            let rolled = status.observed_generation >= deployment.metadata.generation
                && status.updated_replicas == Some(wanted)
                && status.available_replicas == Some(wanted)
                && status.replicas == Some(wanted);
            Ok(if new_ready && rolled {
                Check::Done(())
            } else {
                Check::Pending(format!(
                    "deployment status {status:?}; ReplicaSets {:?}",
                    current
                        .iter()
                        .map(ResourceExt::name_any)
                        .collect::<Vec<_>>()
                ))
            })
        })
        .await?;
        env.wait_for_tenant_ready(&tenant.name).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a kind cluster: run tests/e2e/run.sh"]
async fn deleting_a_tenant_removes_its_namespace() {
    run(|env| async move {
        let tenant = env.create_tenant("delete", env.tenant_spec()?).await?;
        delete_ignoring_absent(&Api::<Tenant>::all(env.client()), &tenant.name).await?;
        let namespaces: Api<Namespace> = Api::all(env.client());
        wait::until(
            &format!("namespace {} to be deleted", tenant.namespace),
            NAMESPACE_DELETION_TIMEOUT,
            async || {
                Ok(match namespaces.get_opt(&tenant.namespace).await? {
                    None => Check::Done(()),
                    Some(namespace) => Check::Pending(format!(
                        "phase {:?}",
                        namespace.status.and_then(|status| status.phase)
                    )),
                })
            },
        )
        .await
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a kind cluster: run tests/e2e/run.sh"]
async fn retain_keeps_the_namespace_after_the_tenant_is_gone() {
    run(|env| async move {
        let mut spec = env.tenant_spec()?;
        spec.deletion_policy = DeletionPolicy::Retain;
        let tenant = env.create_tenant("retain", spec).await?;
        env.register_namespace(&tenant.namespace);
        let tenants: Api<Tenant> = Api::all(env.client());
        let tenant_uid = tenants.get(&tenant.name).await?.uid();

        delete_ignoring_absent(&tenants, &tenant.name).await?;
        wait::until(
            &format!("Tenant {} to be deleted", tenant.name),
            wait::RECONCILE_TIMEOUT,
            async || {
                Ok(match tenants.get_opt(&tenant.name).await? {
                    None => Check::Done(()),
                    Some(_) => Check::Pending("still present".to_owned()),
                })
            },
        )
        .await?;
        tokio::time::sleep(RETAIN_OBSERVATION).await;

        let namespace = Api::<Namespace>::all(env.client())
            .get_opt(&tenant.namespace)
            .await?
            .with_context(|| format!("retained namespace {} was deleted", tenant.namespace))?;
        ensure!(
            namespace.metadata.deletion_timestamp.is_none(),
            "retained namespace {} is terminating",
            tenant.namespace
        );
        let deployment = env.server_deployment(&tenant.namespace).await?;
        for (kind, owners) in [
            ("namespace", namespace.owner_references()),
            ("server Deployment", deployment.owner_references()),
        ] {
            ensure!(
                owners
                    .iter()
                    .all(|owner| Some(&owner.uid) != tenant_uid.as_ref()),
                "the retained {kind} still names the deleted Tenant as its owner"
            );
        }
        Ok(())
    })
    .await;
}

fn template_annotations(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|meta| meta.annotations.clone())
        .unwrap_or_default()
}

/// Keeps the roll test honest without a cluster: the operator renders the
/// changed rate limit into `server.yaml` in the form the test waits for,
/// and the change alters the configuration checksum.
#[test]
fn rate_limit_change_changes_the_rendered_configuration_and_checksum() {
    use bulkhead_e2e::tenants::fixture_spec;
    use bulkhead_operator::desired::desired_objects;
    use bulkhead_operator::settings::OperatorSettings;

    let render = |spec: serde_json::Value| {
        let spec = serde_json::from_value(spec).expect("spec");
        let objects = desired_objects(&Tenant::new("roll", spec), &OperatorSettings::default())
            .expect("builds");
        let config = objects.config_map.data.clone().unwrap_or_default()[CONFIG_FILE_KEY].clone();
        (config, template_annotations(&objects.deployment))
    };
    let mut spec = serde_json::to_value(fixture_spec("abcdef").expect("fixture")).expect("json");
    let (before, before_annotations) = render(spec.clone());
    if let (Some(spec), serde_json::Value::Object(change)) =
        (spec.as_object_mut(), rate_limit_change())
    {
        spec.extend(change);
    }
    let (after, after_annotations) = render(spec);

    assert!(!before.contains(CHANGED_CONFIG_MARKER), "{before}");
    assert!(after.contains(CHANGED_CONFIG_MARKER), "{after}");
    assert_ne!(
        before_annotations.get(CONFIG_CHECKSUM_ANNOTATION),
        after_annotations.get(CONFIG_CHECKSUM_ANNOTATION)
    );
}
