//! `tests/e2e/run.sh` itself, run with stand-ins for docker, kind, kubectl
//! and cargo that record how they were called: it skips plainly where there
//! is no Docker engine (as on the machines `.ci/run` runs on here), refuses
//! a kind whose CNI ignores NetworkPolicy, and otherwise creates, installs,
//! tests and deletes in that order — deleting the cluster even when the
//! tests fail. Also checks that run.sh and the e2e overlay name the objects
//! `manifests/` really installs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary directory with the stand-in tools and their call log.
struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    /// Stand-ins that succeed, report kind `kind_version` and, for cargo,
    /// exit with `cargo_exit`. `docker info` fails when `engine` is false.
    fn new(name: &str, engine: bool, kind_version: &str, cargo_exit: i32) -> Self {
        let dir =
            std::env::temp_dir().join(format!("bulkhead-run-sh-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).expect("sandbox");
        let log = dir.join("calls");
        let tool = |name: &str, body: &str| {
            let path = dir.join("bin").join(name);
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\necho \"{name} $*\" >> '{}'\n{body}\nexit 0\n",
                    log.display()
                ),
            )
            .expect("write stand-in");
            let status = Command::new("chmod")
                .arg("+x")
                .arg(&path)
                .status()
                .expect("chmod");
            assert!(status.success());
        };
        let info = if engine {
            "echo 29.0.0"
        } else {
            "echo 'Cannot connect to the Docker daemon' >&2; exit 1"
        };
        tool(
            "docker",
            &format!(
                "case \"$1\" in\n  info) {info} ;;\n  image) [ \"$2\" = inspect ] && exit 1 ;;\n  inspect) echo 172.18.0.9 ;;\nesac"
            ),
        );
        tool(
            "kind",
            &format!(
                "case \"$1 $2\" in\n  'version ') echo 'kind {kind_version} go1.25 linux/amd64' ;;\n  'get nodes') echo bulkhead-e2e-worker ;;\nesac"
            ),
        );
        tool(
            "kubectl",
            "case \"$*\" in\n  *'addresses[*]'*) echo 172.18.0.3 ;;\n  *'ports[0].port'*) echo 6443 ;;\nesac",
        );
        tool(
            "cargo",
            &format!(
                "echo \"context=$BULKHEAD_E2E_KUBE_CONTEXT metadata=$BULKHEAD_E2E_METADATA_URL\" >> '{}'\nexit {cargo_exit}",
                log.display()
            ),
        );
        Self { dir }
    }

    fn run(&self, env: &[(&str, &str)]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("run.sh");
        let mut command = Command::new("bash");
        command
            .arg(script)
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.dir.join("bin").display()),
            )
            .env("BULKHEAD_E2E_WORKDIR", self.dir.join("work"))
            .env_remove("KEEP_CLUSTER")
            .env_remove("BULKHEAD_E2E_REQUIRED")
            .env_remove("BULKHEAD_E2E_REUSE_CLUSTER")
            .env_remove("BULKHEAD_E2E_SKIP_BUILD")
            .env_remove("BULKHEAD_E2E_CLUSTER");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("bash runs run.sh")
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Index of the first call containing `fragment`, failing if none.
    fn position(&self, fragment: &str) -> usize {
        let calls = self.calls();
        calls
            .iter()
            .position(|call| call.contains(fragment))
            .unwrap_or_else(|| panic!("no call containing {fragment:?} in {calls:#?}"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn skips_plainly_and_succeeds_without_a_docker_engine() {
    let sandbox = Sandbox::new("skip", false, "v0.33.0", 0);
    let output = sandbox.run(&[]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("e2e: SKIPPED: no reachable Docker engine (docker info: Cannot connect to the Docker daemon)"),
        "{stdout}"
    );
    assert!(stdout.contains("no end-to-end test ran"), "{stdout}");
    assert_eq!(sandbox.calls(), ["docker info --format {{.ServerVersion}}"]);
}

#[test]
fn a_required_run_fails_instead_of_skipping() {
    let sandbox = Sandbox::new("required", false, "v0.33.0", 0);
    let output = sandbox.run(&[("BULKHEAD_E2E_REQUIRED", "1")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("e2e: SKIPPED"));
    assert!(text(&output.stderr).contains("BULKHEAD_E2E_REQUIRED=1"));
}

#[test]
fn refuses_a_kind_whose_cni_ignores_network_policy() {
    let sandbox = Sandbox::new("old-kind", true, "v0.23.0", 0);
    let output = sandbox.run(&[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("kind v0.23.0 does not enforce NetworkPolicy"),
        "{}",
        text(&output.stderr)
    );
    assert!(
        !sandbox
            .calls()
            .iter()
            .any(|call| call.starts_with("kind create"))
    );
}

#[test]
fn creates_installs_tests_and_deletes_in_order() {
    let sandbox = Sandbox::new("full", true, "v0.33.0", 0);
    let output = sandbox.run(&[]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("e2e: PASSED"), "{stdout}");

    let create = sandbox
        .position("kind create cluster --name bulkhead-e2e --image kindest/node:v1.35.8@sha256:");
    let build = sandbox.position("docker build --provenance=false -f ");
    let load = sandbox.position(
        "kind load docker-image --name bulkhead-e2e ghcr.io/bulkhead-dev/bulkhead-server:e2e",
    );
    let route = sandbox.position(
        "docker exec bulkhead-e2e-worker ip route replace 169.254.169.254/32 via 172.18.0.9",
    );
    let install = sandbox.position("apply --server-side --force-conflicts -k /");
    let api_server = sandbox.position("get endpointslices -n default");
    let set_env = sandbox.position(
        "set env deployment/bulkhead-operator BULKHEAD_API_SERVER_CIDRS=172.18.0.3/32 BULKHEAD_API_SERVER_PORT=6443",
    );
    let test = sandbox.position("cargo test -p bulkhead-e2e -- --ignored");
    let delete = sandbox.position("kind delete cluster --name bulkhead-e2e");
    assert!(
        create < build && build < load && load < route && route < install,
        "{:#?}",
        sandbox.calls()
    );
    assert!(
        install < api_server && api_server < set_env && set_env < test && test < delete,
        "{:#?}",
        sandbox.calls()
    );
    assert!(
        sandbox
            .calls()
            .contains(&"context=kind-bulkhead-e2e metadata=http://169.254.169.254/".to_owned()),
        "{:#?}",
        sandbox.calls()
    );
}

#[test]
fn failing_tests_fail_the_run_and_still_delete_the_cluster() {
    let sandbox = Sandbox::new("fail", true, "v0.33.0", 101);
    let output = sandbox.run(&[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("e2e tests failed (exit 101)"));
    assert!(!text(&output.stdout).contains("PASSED"));
    let diagnostics = sandbox.position("logs deployment/bulkhead-operator");
    assert!(diagnostics < sandbox.position("kind delete cluster"));
}

#[test]
fn keep_cluster_keeps_it() {
    let sandbox = Sandbox::new("keep", true, "v0.33.0", 0);
    let output = sandbox.run(&[("KEEP_CLUSTER", "1")]);
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stdout).contains("KEEP_CLUSTER=1: cluster bulkhead-e2e kept"));
    assert!(
        !sandbox
            .calls()
            .iter()
            .any(|call| call.starts_with("kind delete"))
    );
}

/// Reads one YAML document as JSON.
fn yaml(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn overlay_and_run_sh_name_the_objects_manifests_install() {
    // A strategic-merge patch whose names do not match adds a second
    // container instead of changing the first; a kubectl patch of a wrong
    // name fails only on a cluster. Check the names here.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let deployment = yaml(&root.join("manifests/operator/deployment.yaml"));
    let policy = yaml(&root.join("manifests/operator/networkpolicy.yaml"));
    let patch = yaml(&root.join("tests/e2e/overlay/operator-images.yaml"));
    let run_sh = std::fs::read_to_string(root.join("tests/e2e/run.sh")).expect("run.sh");

    for field in ["name", "namespace"] {
        assert_eq!(
            patch["metadata"][field], deployment["metadata"][field],
            "{field}"
        );
    }
    let container =
        |doc: &serde_json::Value| doc["spec"]["template"]["spec"]["containers"][0]["name"].clone();
    assert_eq!(container(&patch), container(&deployment));
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    let name = deployment["metadata"]["name"].as_str().expect("name");
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    assert!(run_sh.contains(&format!("readonly OPERATOR_DEPLOYMENT=\"{name}\"")));
    assert!(run_sh.contains(&format!("readonly OPERATOR_NAMESPACE=\"{namespace}\"")));
    // run.sh adds the API server rule to the operator's NetworkPolicy,
    // which it finds under the Deployment's name.
    assert_eq!(policy["metadata"]["name"].as_str(), Some(name));
    assert_eq!(policy["metadata"]["namespace"].as_str(), Some(namespace));
    assert!(
        policy["spec"]["egress"].is_array(),
        "run.sh appends to spec.egress"
    );
}
