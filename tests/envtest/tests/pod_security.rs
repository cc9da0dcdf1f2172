//! Pod Security admission in tenant namespaces: the namespace's
//! `restricted` labels make the real API server refuse privileged, root and
//! hostPath pods, and admit the server's pod exactly as the operator builds it.

use anyhow::{Context, Result, ensure};
use bulkhead_envtest::ControlPlane;
use bulkhead_envtest::tenants::example;
use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, Pod, PodSpec, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// The refusal message if PodSecurity refused, `None` if admitted; any other
/// error fails.
async fn pod_security_refusal(pods: &Api<Pod>, pod: &Pod) -> Result<Option<String>> {
    match pods.create(&dry_run(), pod).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(status))
            if status.code == 403
                && status
                    .message
                    .contains("violates PodSecurity \"restricted:latest\"") =>
        {
            Ok(Some(status.message))
        }
        Err(error) => Err(error).context("creating the pod failed for another reason"),
    }
}

fn bare_pod(name: &str, container: Container, volumes: Option<Vec<Volume>>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            volumes,
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// A container that would pass `restricted` on its own.
fn compliant_container() -> Container {
    Container {
        name: "probe".to_owned(),
        image: Some("registry.example/probe:1".to_owned()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(1000),
            allow_privilege_escalation: Some(false),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

async fn tenant_pods(
    cp: &ControlPlane,
    admin: &Client,
    file: &str,
    id: &str,
) -> Result<(Api<Pod>, Pod)> {
    cp.kubectl_apply(&example(file, id)?)?;
    let live = cp.wait_reconciled(admin, id).await?;
    let ns = cp.tenant_namespace(id);
    let deployment = cp.desired_children(&live)?.deployment;
    let template = deployment.spec.context("Deployment without spec")?.template;
    let server_pod = Pod {
        metadata: ObjectMeta {
            name: Some("server-as-built".to_owned()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        ..Pod::default()
    };
    Ok((Api::namespaced(admin.clone(), &ns), server_pod))
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn privileged_root_and_host_path_pods_are_refused_in_a_tenant_namespace() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let id = "ps-refuse";
    let (pods, _) = tenant_pods(cp, &admin, "minimal.yaml", id).await?;

    // The control: the compliant container alone is admitted, so every
    // refusal below is due to the one thing each case adds.
    let control = bare_pod("control", compliant_container(), None);
    ensure!(
        pod_security_refusal(&pods, &control).await?.is_none(),
        "the compliant control pod was refused"
    );

    let mut privileged = compliant_container();
    if let Some(context) = privileged.security_context.as_mut() {
        // The API server's own validation wants both together.
        context.privileged = Some(true);
        context.allow_privilege_escalation = Some(true);
    }
    let mut root = compliant_container();
    if let Some(context) = root.security_context.as_mut() {
        context.run_as_non_root = Some(false);
        context.run_as_user = Some(0);
    }
    let mut host_path = compliant_container();
    host_path.volume_mounts = Some(vec![VolumeMount {
        name: "host".to_owned(),
        mount_path: "/host".to_owned(),
        ..VolumeMount::default()
    }]);
    let host_volume = vec![Volume {
        name: "host".to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: "/".to_owned(),
            type_: None,
        }),
        ..Volume::default()
    }];
    let cases = [
        (
            "privileged",
            bare_pod("privileged", privileged, None),
            "privileged",
        ),
        ("root", bare_pod("root", root, None), "runAsUser=0"),
        (
            "hostPath",
            bare_pod("host-path", host_path, Some(host_volume)),
            "hostPath",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, pod, reason) in cases {
        match pod_security_refusal(&pods, &pod).await? {
            Some(message) if message.contains(reason) => {}
            Some(message) => wrong.push(format!(
                "{what}: refused without naming {reason}: {message}"
            )),
            None => wrong.push(format!("{what}: admitted")),
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    cp.delete_tenant(&admin, id).await
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn the_server_pod_as_built_is_admitted_under_restricted() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    // full.yaml asks for runtimeClassName gvisor; the RuntimeClass admission
    // plugin wants it to exist (its handler is never run here).
    let runtime_class = RuntimeClass {
        metadata: ObjectMeta {
            name: Some("gvisor".to_owned()),
            ..ObjectMeta::default()
        },
        handler: "runsc".to_owned(),
        ..RuntimeClass::default()
    };
    match Api::<RuntimeClass>::all(admin.clone())
        .create(&PostParams::default(), &runtime_class)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error).context("create RuntimeClass gvisor"),
    }
    for (file, id) in [
        ("minimal.yaml", "ps-built-min"),
        ("full.yaml", "ps-built-full"),
    ] {
        let (pods, server_pod) = tenant_pods(cp, &admin, file, id).await?;
        if let Some(message) = pod_security_refusal(&pods, &server_pod).await? {
            anyhow::bail!("{id}: the server pod as built was refused: {message}");
        }
        cp.delete_tenant(&admin, id).await?;
    }
    Ok(())
}
