//! The seams between the operator, the server and the install manifests,
//! checked without a cluster: what the operator writes into a Tenant's
//! Deployment, ConfigMap, Service and RoleBinding must be what the real
//! `bulkhead-server` parses, listens on and reads. These are the mistakes a
//! kind run would otherwise be the first to find (a pod that never becomes
//! Ready, a Host header the server refuses), so they run everywhere.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use bulkhead_crds::Tenant;
use bulkhead_crds::server_config::{
    ADMIN_PORT, API_KEYS_SECRET_NAME, CONFIG_FILE_KEY, CONFIG_MAP_NAME, CONFIG_MOUNT_DIR,
    CREDENTIALS_SECRET_NAME, MCP_PORT, SecretSource,
};
use bulkhead_e2e::tenants::fixture_spec;
use bulkhead_operator::desired::{
    SECRET_READER_CLUSTER_ROLE, TenantObjects, desired_objects, endpoint,
};
use bulkhead_operator::settings::OperatorSettings;
use clap::Parser;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

const TENANT: &str = "contract";

fn objects() -> TenantObjects {
    let tenant = Tenant::new(TENANT, fixture_spec("abcdef").expect("fixture spec"));
    desired_objects(&tenant, &OperatorSettings::default()).expect("fixture Tenant builds")
}

fn pod_spec(objects: &TenantObjects) -> PodSpec {
    objects
        .deployment
        .spec
        .clone()
        .and_then(|spec| spec.template.spec)
        .expect("pod spec")
}

fn server_container(objects: &TenantObjects) -> Container {
    let pod = pod_spec(objects);
    assert_eq!(pod.containers.len(), 1, "one server container");
    pod.containers[0].clone()
}

/// Resolves a probe or Service port (number or container port name).
fn container_port(container: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(number) => *number,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    }
}

/// The server's command line as the pod runs it: the image's entrypoint
/// (the server) with the container's args, and the container's environment
/// standing in for flags not given.
fn server_cli(container: &Container) -> bulkhead_server::cli::Cli {
    assert!(
        container.command.is_none(),
        "the Deployment must not replace the image's entrypoint"
    );
    let mut argv = vec!["bulkhead-server".to_owned()];
    let args = container.args.clone().unwrap_or_default();
    for env in container.env.iter().flatten() {
        let flag = match env.name.as_str() {
            "BULKHEAD_CONFIG" => "--config",
            "BULKHEAD_LISTEN" => "--listen",
            "BULKHEAD_ADMIN_LISTEN" => "--admin-listen",
            _ => continue,
        };
        if let Some(value) = &env.value
            && !args.iter().any(|arg| arg == flag)
        {
            argv.extend([flag.to_owned(), value.clone()]);
        }
    }
    argv.extend(args);
    bulkhead_server::cli::Cli::try_parse_from(&argv).unwrap_or_else(|error| {
        panic!("the server refuses the operator's arguments {argv:?}: {error}")
    })
}

#[test]
fn server_accepts_the_operators_arguments_and_listens_where_the_cluster_connects() {
    let objects = objects();
    let container = server_container(&objects);
    let cli = server_cli(&container);
    assert!(
        cli.command.is_none(),
        "the server must serve, not run a subcommand"
    );

    assert_eq!(
        cli.serve.config,
        Path::new(CONFIG_MOUNT_DIR).join(CONFIG_FILE_KEY)
    );
    let config_volume = pod_spec(&objects)
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|volume| volume.config_map.as_ref().map(|c| c.name.as_str()) == Some(CONFIG_MAP_NAME))
        .expect("a volume from the server ConfigMap");
    let mounted_at: Vec<String> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|mount| mount.name == config_volume.name)
        .map(|mount| mount.mount_path.clone())
        .collect();
    assert_eq!(mounted_at, [CONFIG_MOUNT_DIR]);

    // The Service forwards to the pod IP, so MCP must not listen on loopback.
    assert_eq!(
        cli.serve.listen,
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, MCP_PORT))
    );
    // The kubelet sends /healthz and /readyz to the pod IP too: an admin
    // listener on loopback means a pod that never becomes Ready.
    assert_eq!(
        cli.serve.admin_listen,
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, ADMIN_PORT)),
        "the kubelet probes /healthz and /readyz at the pod IP, but the server's admin listener \
         defaults to loopback: the operator's Deployment must pass `--admin-listen 0.0.0.0:{ADMIN_PORT}` \
         (operator/src/desired/deployment.rs), or no Tenant ever becomes Ready"
    );
    // The Deployment's args replace the image's CMD, so JSON logs must be
    // asked for there, or the cluster's log pipeline gets plain text.
    assert!(
        matches!(cli.serve.log_format, bulkhead_server::cli::LogFormat::Json),
        "the server must log JSON in the cluster"
    );
}

#[test]
fn probes_and_service_target_the_ports_the_server_serves() {
    let objects = objects();
    let container = server_container(&objects);
    for (probe, path) in [
        (container.readiness_probe.clone(), "/readyz"),
        (container.liveness_probe.clone(), "/healthz"),
    ] {
        let http = probe.and_then(|p| p.http_get).expect("HTTP probe");
        assert_eq!(http.path.as_deref(), Some(path));
        assert_eq!(
            container_port(&container, &http.port),
            i32::from(ADMIN_PORT)
        );
    }

    let service = objects.service.spec.clone().expect("service spec");
    let ports = service.ports.unwrap_or_default();
    assert_eq!(ports.len(), 1, "the Service exposes MCP only: {ports:?}");
    assert_eq!(ports[0].port, i32::from(MCP_PORT));
    let target = ports[0].target_port.clone().expect("targetPort");
    assert_eq!(container_port(&container, &target), i32::from(MCP_PORT));

    let pod_labels = objects
        .deployment
        .spec
        .clone()
        .and_then(|spec| spec.template.metadata)
        .and_then(|meta| meta.labels)
        .unwrap_or_default();
    let selector = service.selector.unwrap_or_default();
    assert!(!selector.is_empty());
    for (key, value) in &selector {
        assert_eq!(pod_labels.get(key), Some(value), "Service selector {key}");
    }
}

#[test]
fn server_loads_the_configuration_the_operator_writes() {
    let objects = objects();
    let yaml = objects
        .config_map
        .data
        .clone()
        .and_then(|mut data| data.remove(CONFIG_FILE_KEY))
        .expect("server.yaml in the ConfigMap");
    let dir = std::env::temp_dir().join(format!("bulkhead-contract-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(CONFIG_FILE_KEY);
    std::fs::write(&path, &yaml).expect("write config");
    let loaded = bulkhead_server::config::load(&path);
    let _ = std::fs::remove_dir_all(&dir);
    let config = loaded.unwrap_or_else(|error| {
        panic!("the server refuses the operator's configuration: {error}\n{yaml}")
    });

    let namespace = objects.namespace.metadata.name.clone().expect("namespace");
    assert_eq!(config.tenant_id, TENANT);
    assert_eq!(
        config.api_keys,
        SecretSource::KubernetesSecret {
            namespace: namespace.clone(),
            name: API_KEYS_SECRET_NAME.to_owned()
        }
    );
    assert_eq!(
        config.credentials,
        SecretSource::KubernetesSecret {
            namespace,
            name: CREDENTIALS_SECRET_NAME.to_owned()
        }
    );

    // The endpoint the Tenant's status advertises must pass the server's
    // Host check, with and without the port.
    let advertised = endpoint(TENANT, &OperatorSettings::default());
    let authority = advertised
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .expect("http://host:port/path");
    let host = authority.split(':').next().expect("host");
    for accepted in [authority, host] {
        assert!(
            config.allowed_hosts.iter().any(|h| h == accepted),
            "{accepted} (from {advertised}) is not in allowedHosts {:?}",
            config.allowed_hosts
        );
    }
}

/// One document of the install manifests.
#[derive(Debug, Deserialize)]
struct Manifest {
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Rule {
    #[serde(default, rename = "apiGroups")]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default, rename = "resourceNames")]
    resource_names: Vec<String>,
}

impl Rule {
    fn covers_secrets(&self) -> bool {
        self.api_groups.iter().any(|g| g.is_empty() || g == "*")
            && self.resources.iter().any(|r| r == "secrets" || r == "*")
    }
}

fn roles_in_manifests() -> Vec<Manifest> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/operator");
    let mut roles = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("manifests/operator") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read manifest");
        for document in yaml_serde::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(document)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            if matches!(value["kind"].as_str(), Some("ClusterRole" | "Role")) {
                roles.push(serde_json::from_value(value).expect("Role shape"));
            }
        }
    }
    assert!(
        !roles.is_empty(),
        "no Role or ClusterRole in {}",
        dir.display()
    );
    roles
}

#[test]
fn secret_reader_role_grants_exactly_the_reads_the_server_makes() {
    let roles = roles_in_manifests();
    let reader = roles
        .iter()
        .find(|role| role.kind == "ClusterRole" && role.metadata.name == SECRET_READER_CLUSTER_ROLE)
        .expect("the secret-reader ClusterRole is installed by manifests/");
    assert_eq!(reader.rules.len(), 1, "{reader:?}");
    let rule = &reader.rules[0];
    assert_eq!(rule.api_groups, [""]);
    assert_eq!(rule.resources, ["secrets"]);
    assert_eq!(
        rule.verbs.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"get".to_owned(), &"watch".to_owned()])
    );
    assert_eq!(
        rule.resource_names
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([CREDENTIALS_SECRET_NAME, API_KEYS_SECRET_NAME])
    );

    let objects = objects();
    let binding = &objects.role_binding;
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, SECRET_READER_CLUSTER_ROLE);
    let account = pod_spec(&objects)
        .service_account_name
        .expect("server ServiceAccount");
    let namespace = objects.namespace.metadata.name.clone();
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, account);
    assert_eq!(subjects[0].namespace, namespace);
    assert_eq!(binding.metadata.namespace, namespace);
}

#[test]
fn operator_roles_grant_no_secret_reads() {
    for role in roles_in_manifests() {
        if role.metadata.name == SECRET_READER_CLUSTER_ROLE {
            continue;
        }
        for rule in role.rules.iter().filter(|rule| rule.covers_secrets()) {
            let reads: Vec<&String> = rule
                .verbs
                .iter()
                .filter(|verb| matches!(verb.as_str(), "get" | "list" | "watch" | "*"))
                .collect();
            assert!(
                reads.is_empty(),
                "{} {} may {reads:?} Secrets: {rule:?}",
                role.kind,
                role.metadata.name
            );
        }
    }
}
