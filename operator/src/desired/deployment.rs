//! The Deployment of the tenant's MCP server.
//!
//! Hardened to Pod Security `restricted` and beyond: non-root with a fixed
//! uid, read-only root filesystem, no privilege escalation, every capability
//! dropped, seccomp `RuntimeDefault` on pod and container, no automounted
//! token, no Service links in the environment.

use std::collections::BTreeMap;

use bulkhead_crds::server_config::{ADMIN_PORT, CONFIG_FILE_KEY, CONFIG_MOUNT_DIR, MCP_PORT};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIProjection, DownwardAPIVolumeFile, EmptyDirVolumeSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::context::BuildContext;
use super::names::{
    DEFAULT_CONTAINER_CPU_LIMIT, DEFAULT_CONTAINER_CPU_REQUEST, DEFAULT_CONTAINER_MEMORY_LIMIT,
    DEFAULT_CONTAINER_MEMORY_REQUEST, MCP_PORT_NAME, SERVICE_ACCOUNT_NAME,
};

/// Name of the Deployment in the tenant namespace.
pub const DEPLOYMENT_NAME: &str = "mcp-server";
/// Name of the server container.
pub const CONTAINER_NAME: &str = "server";
/// Pod template annotation holding the SHA-256 of the ConfigMap data; a
/// changed configuration changes the template and so rolls the pods.
pub const CONFIG_CHECKSUM_ANNOTATION: &str = "bulkhead.dev/config-checksum";
/// uid and gid the server runs as (the distroless `nonroot` user).
pub const SERVER_UID: i64 = 65532;
/// Where the projected ServiceAccount token, CA and namespace are mounted:
/// the path the Kubernetes client's in-cluster configuration reads.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Lifetime of the projected token; the kubelet refreshes it well before.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// Name of the admin port (health, readiness, metrics).
pub const ADMIN_PORT_NAME: &str = "admin";

/// SHA-256 over the ConfigMap data, keys in order, each key and value
/// length-prefixed so no two different maps hash alike.
pub fn config_checksum(config_map: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in config_map.data.iter().flatten() {
        for part in [key, value] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

fn default_resources() -> ResourceRequirements {
    let resources = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(resources(
            DEFAULT_CONTAINER_CPU_REQUEST,
            DEFAULT_CONTAINER_MEMORY_REQUEST,
        )),
        limits: Some(resources(
            DEFAULT_CONTAINER_CPU_LIMIT,
            DEFAULT_CONTAINER_MEMORY_LIMIT,
        )),
        ..ResourceRequirements::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(ADMIN_PORT_NAME.to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SERVER_UID),
        run_as_group: Some(SERVER_UID),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// The volumes: the configuration, a scratch `/tmp`, and the projected
/// ServiceAccount token (short-lived, audience-bound to the API server)
/// with the cluster CA and the namespace, as the in-cluster client expects.
fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: bulkhead_crds::server_config::CONFIG_MAP_NAME.to_owned(),
                items: Some(vec![KeyToPath {
                    key: CONFIG_FILE_KEY.to_owned(),
                    path: CONFIG_FILE_KEY.to_owned(),
                    mode: None,
                }]),
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: None,
                size_limit: Some(Quantity("64Mi".to_owned())),
            }),
            ..Volume::default()
        },
        Volume {
            name: "kube-api-access".to_owned(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o444),
                sources: Some(vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            path: "token".to_owned(),
                            expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                            audience: None,
                        }),
                        ..VolumeProjection::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".to_owned(),
                            items: Some(vec![KeyToPath {
                                key: "ca.crt".to_owned(),
                                path: "ca.crt".to_owned(),
                                mode: None,
                            }]),
                            optional: None,
                        }),
                        ..VolumeProjection::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardAPIProjection {
                            items: Some(vec![DownwardAPIVolumeFile {
                                path: "namespace".to_owned(),
                                field_ref: Some(ObjectFieldSelector {
                                    api_version: Some("v1".to_owned()),
                                    field_path: "metadata.namespace".to_owned(),
                                }),
                                ..DownwardAPIVolumeFile::default()
                            }]),
                        }),
                        ..VolumeProjection::default()
                    },
                ]),
            }),
            ..Volume::default()
        },
    ]
}

fn volume_mounts() -> Vec<VolumeMount> {
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    vec![
        mount("config", CONFIG_MOUNT_DIR, true),
        mount("tmp", "/tmp", false),
        mount("kube-api-access", SERVICE_ACCOUNT_DIR, true),
    ]
}

/// The server Deployment; `config_map` is the tenant's ConfigMap, whose
/// checksum goes on the pod template.
pub(crate) fn desired_deployment(ctx: &BuildContext<'_>, config_map: &ConfigMap) -> Deployment {
    let server = &ctx.tenant.spec.server;
    let selector = ctx.server_selector();
    let mut pod_labels = crate::labels::child_labels(ctx.tenant_id);
    pod_labels.extend(selector.clone());

    let container = Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(
            server
                .image
                .clone()
                .unwrap_or_else(|| ctx.settings.server_image.clone()),
        ),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_MOUNT_DIR}/{CONFIG_FILE_KEY}"),
            "--listen".to_owned(),
            format!("0.0.0.0:{MCP_PORT}"),
            // The server binds its admin port to loopback by default; the
            // kubelet probes it on the pod address.
            "--admin-listen".to_owned(),
            format!("0.0.0.0:{ADMIN_PORT}"),
            // Args replace the image's CMD, so the log format is set here
            // too: one JSON object per line for the cluster's log pipeline.
            "--log-format".to_owned(),
            "json".to_owned(),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some(MCP_PORT_NAME.to_owned()),
                container_port: i32::from(MCP_PORT),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(ADMIN_PORT_NAME.to_owned()),
                container_port: i32::from(ADMIN_PORT),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        resources: Some(server.resources.clone().unwrap_or_else(default_resources)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(volume_mounts()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    };

    let pod_spec = PodSpec {
        service_account_name: Some(SERVICE_ACCOUNT_NAME.to_owned()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SERVER_UID),
            run_as_group: Some(SERVER_UID),
            fs_group: Some(SERVER_UID),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        runtime_class_name: server.runtime_class_name.clone(),
        node_selector: (!server.node_selector.is_empty()).then(|| server.node_selector.clone()),
        tolerations: (!server.tolerations.is_empty()).then(|| server.tolerations.clone()),
        containers: vec![container],
        volumes: Some(volumes()),
        ..PodSpec::default()
    };

    Deployment {
        metadata: ctx.metadata(DEPLOYMENT_NAME, true),
        spec: Some(DeploymentSpec {
            replicas: Some(server.replicas.unwrap_or(1)),
            revision_history_limit: Some(3),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_CHECKSUM_ANNOTATION.to_owned(),
                        config_checksum(config_map),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::desired_objects;
    use crate::desired::fixtures::{FULL, MINIMAL, live_tenant, objects};
    use crate::settings::OperatorSettings;

    fn pod_spec(deployment: &Deployment) -> PodSpec {
        deployment.spec.clone().unwrap().template.spec.unwrap()
    }

    #[test]
    fn container_security_context_is_locked_down() {
        let pod = pod_spec(&objects(FULL).deployment);
        assert_eq!(pod.containers.len(), 1);
        assert_eq!(pod.init_containers, None);
        assert_eq!(
            pod.containers[0].security_context,
            Some(SecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                privileged: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..SecurityContext::default()
            })
        );
    }

    #[test]
    fn pod_runs_as_non_root_without_an_automounted_token() {
        let pod = pod_spec(&objects(MINIMAL).deployment);
        assert_eq!(
            pod.security_context,
            Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                fs_group: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            })
        );
        assert_eq!(pod.service_account_name.as_deref(), Some("mcp-server"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.enable_service_links, Some(false));
        assert_eq!(pod.host_network, None);
        assert_eq!(pod.host_pid, None);
        assert_eq!(pod.host_ipc, None);
    }

    #[test]
    fn projected_token_is_short_lived_and_mounted_where_the_client_looks() {
        let pod = pod_spec(&objects(MINIMAL).deployment);
        let volumes = pod.volumes.unwrap();
        let projected = volumes
            .iter()
            .find(|v| v.name == "kube-api-access")
            .and_then(|v| v.projected.clone())
            .unwrap();
        let sources = projected.sources.unwrap();
        assert_eq!(
            sources[0].service_account_token,
            Some(ServiceAccountTokenProjection {
                path: "token".into(),
                expiration_seconds: Some(3600),
                audience: None,
            })
        );
        let ca = sources[1].config_map.clone().unwrap();
        assert_eq!(ca.name, "kube-root-ca.crt");
        assert_eq!(ca.items.unwrap()[0].path, "ca.crt");
        let namespace = sources[2].downward_api.clone().unwrap().items.unwrap();
        assert_eq!(namespace[0].path, "namespace");
        assert_eq!(
            namespace[0].field_ref.as_ref().unwrap().field_path,
            "metadata.namespace"
        );

        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        let mount = |name: &str| mounts.iter().find(|m| m.name == name).unwrap().clone();
        assert_eq!(
            mount("kube-api-access").mount_path,
            "/var/run/secrets/kubernetes.io/serviceaccount"
        );
        assert_eq!(mount("kube-api-access").read_only, Some(true));
        assert_eq!(mount("config").mount_path, "/etc/bulkhead");
        assert_eq!(mount("config").read_only, Some(true));
        assert_eq!(mount("tmp").mount_path, "/tmp");
        assert!(
            volumes
                .iter()
                .any(|v| v.name == "tmp" && v.empty_dir.is_some())
        );
        assert_eq!(mounts.len(), 3);
    }

    #[test]
    fn server_container_serves_mcp_and_probes_on_the_admin_port() {
        let pod = pod_spec(&objects(MINIMAL).deployment);
        let container = &pod.containers[0];
        assert_eq!(container.name, "server");
        assert_eq!(
            container.image.as_deref(),
            Some("ghcr.io/bulkhead-dev/bulkhead-server:0.1.0")
        );
        assert_eq!(
            container.args,
            Some(
                [
                    "--config",
                    "/etc/bulkhead/server.yaml",
                    "--listen",
                    "0.0.0.0:8080",
                    "--admin-listen",
                    "0.0.0.0:9090",
                    "--log-format",
                    "json"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        let ports: Vec<(Option<String>, i32)> = container
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [(Some("mcp".into()), 8080), (Some("admin".into()), 9090)]
        );
        let probe_path = |probe: &Option<Probe>| {
            let get = probe.as_ref().unwrap().http_get.clone().unwrap();
            assert_eq!(get.port, IntOrString::String("admin".into()));
            get.path.unwrap()
        };
        assert_eq!(probe_path(&container.liveness_probe), "/healthz");
        assert_eq!(probe_path(&container.readiness_probe), "/readyz");
        assert_eq!(container.resources, Some(default_resources()));
        assert_eq!(pod.runtime_class_name, None);
        assert_eq!(pod.node_selector, None);
        assert_eq!(pod.tolerations, None);
    }

    #[test]
    fn placement_replicas_image_and_resources_come_from_the_spec() {
        let mut tenant = live_tenant(FULL);
        tenant.spec.server.image = Some("registry.example.com/bulkhead-server@sha256:0123".into());
        let deployment = desired_objects(&tenant, &OperatorSettings::default())
            .unwrap()
            .deployment;
        let spec = deployment.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = pod_spec(&deployment);
        assert_eq!(pod.runtime_class_name.as_deref(), Some("gvisor"));
        assert_eq!(
            pod.node_selector,
            Some(tenant.spec.server.node_selector.clone())
        );
        assert_eq!(
            pod.tolerations,
            Some(tenant.spec.server.tolerations.clone())
        );
        assert_eq!(pod.containers[0].resources, tenant.spec.server.resources);
        assert_eq!(pod.containers[0].image, tenant.spec.server.image);
    }

    #[test]
    fn selector_matches_the_pods_and_only_this_tenants_pods() {
        let deployment = objects(MINIMAL).deployment;
        let spec = deployment.spec.unwrap();
        let selector = spec.selector.match_labels.unwrap();
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(selector["bulkhead.dev/tenant"], "acme");
        for (key, value) in &selector {
            assert_eq!(pod_labels.get(key), Some(value));
        }
        assert_eq!(pod_labels["app.kubernetes.io/managed-by"], "bulkhead");
    }

    #[test]
    fn config_checksum_changes_with_the_configuration_only() {
        let checksum = |tenant: &bulkhead_crds::Tenant| {
            let deployment = desired_objects(tenant, &OperatorSettings::default())
                .unwrap()
                .deployment;
            deployment
                .spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[CONFIG_CHECKSUM_ANNOTATION]
                .clone()
        };
        let tenant = live_tenant(FULL);
        let original = checksum(&tenant);
        assert_eq!(original.len(), 64);
        assert_eq!(original, config_checksum(&objects(FULL).config_map));

        let mut replicas_changed = tenant.clone();
        replicas_changed.spec.server.replicas = Some(3);
        assert_eq!(
            checksum(&replicas_changed),
            original,
            "replicas are not configuration"
        );

        let mut limits_changed = tenant.clone();
        limits_changed.spec.rate_limits.per_caller = None;
        assert_ne!(
            checksum(&limits_changed),
            original,
            "rate limits are configuration"
        );
    }

    /// The checks of the Pod Security Standard `restricted` (baseline
    /// included) that a pod template can fail, as the admission controller
    /// applies them to the tenant namespace.
    fn pod_security_restricted_violations(pod: &PodSpec) -> Vec<String> {
        const ALLOWED_VOLUMES: &[&str] = &[
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
        ];
        let mut violations = Vec::new();
        if pod.host_network == Some(true)
            || pod.host_pid == Some(true)
            || pod.host_ipc == Some(true)
        {
            violations.push("host namespaces".to_owned());
        }
        let pod_context = pod.security_context.clone().unwrap_or_default();
        if pod_context.sysctls.is_some() {
            violations.push("sysctls".to_owned());
        }
        for volume in pod.volumes.iter().flatten() {
            let json = serde_json::to_value(volume).unwrap();
            let kinds: Vec<&String> = json
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "name")
                .collect();
            if kinds.iter().any(|k| !ALLOWED_VOLUMES.contains(&k.as_str())) {
                violations.push(format!("volume {} of type {kinds:?}", volume.name));
            }
        }
        for container in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let context = container.security_context.clone().unwrap_or_default();
            let name = &container.name;
            if context.privileged == Some(true) {
                violations.push(format!("{name}: privileged"));
            }
            if context.allow_privilege_escalation != Some(false) {
                violations.push(format!("{name}: allowPrivilegeEscalation not false"));
            }
            let caps = context.capabilities.clone().unwrap_or_default();
            if !caps.drop.iter().flatten().any(|c| c == "ALL") {
                violations.push(format!("{name}: capabilities not dropped"));
            }
            if caps.add.iter().flatten().any(|c| c != "NET_BIND_SERVICE") {
                violations.push(format!("{name}: capabilities added"));
            }
            let non_root = context.run_as_non_root.or(pod_context.run_as_non_root);
            if non_root != Some(true) {
                violations.push(format!("{name}: runAsNonRoot not true"));
            }
            if context.run_as_user.or(pod_context.run_as_user) == Some(0) {
                violations.push(format!("{name}: runs as uid 0"));
            }
            let seccomp = context
                .seccomp_profile
                .clone()
                .or(pod_context.seccomp_profile.clone());
            if !seccomp.is_some_and(|s| s.type_ == "RuntimeDefault" || s.type_ == "Localhost") {
                violations.push(format!("{name}: no seccomp profile"));
            }
            if container
                .ports
                .iter()
                .flatten()
                .any(|p| p.host_port.is_some())
            {
                violations.push(format!("{name}: host port"));
            }
            if context
                .proc_mount
                .as_deref()
                .is_some_and(|m| m != "Default")
            {
                violations.push(format!("{name}: procMount"));
            }
        }
        violations
    }

    #[test]
    fn pods_pass_pod_security_restricted() {
        for yaml in [MINIMAL, FULL] {
            let pod = pod_spec(&objects(yaml).deployment);
            assert_eq!(
                pod_security_restricted_violations(&pod),
                Vec::<String>::new()
            );
        }
    }

    #[test]
    fn the_pod_security_check_can_fail() {
        let mut pod = pod_spec(&objects(MINIMAL).deployment);
        pod.containers[0].security_context = None;
        pod.security_context = None;
        pod.host_network = Some(true);
        let violations = pod_security_restricted_violations(&pod);
        assert_eq!(violations.len(), 5, "{violations:?}");
    }

    #[test]
    fn checksum_distinguishes_where_keys_end_and_values_begin() {
        let config_map = |key: &str, value: &str| ConfigMap {
            data: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
            ..ConfigMap::default()
        };
        assert_ne!(
            config_checksum(&config_map("ab", "c")),
            config_checksum(&config_map("a", "bc"))
        );
    }
}
