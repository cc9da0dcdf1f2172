//! Short-lived curl pods that try a connection from a given namespace.
//!
//! NetworkPolicy is about where traffic comes from, so reachability can
//! only be tested from pods in the right namespaces. Each probe is a pod
//! that runs one shell script with curl, exits with curl's exit code and is
//! deleted after its exit code and logs are read. The pods meet the
//! `restricted` Pod Security Standard so they can also run inside tenant
//! namespaces.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, Pod, PodSecurityContext,
    PodSpec, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{LogParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use crate::harness::{SUITE_LABEL, TestEnv, delete_ignoring_absent};
use crate::wait::{self, Check};

/// Time for a probe pod to be scheduled, start and finish.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// curl's exit code when the connection was refused or rejected.
const CURL_COULDNT_CONNECT: i32 = 7;
/// curl's exit code when the connection timed out (dropped packets).
const CURL_TIMED_OUT: i32 = 28;
/// Name of the Secret, in the probe's namespace, that holds the API key a
/// probe presents; mounted as an environment variable so the key is in
/// neither the pod spec nor the logs.
pub const CALLER_KEY_SECRET: &str = "e2e-caller-key";
const CALLER_KEY_ENTRY: &str = "api-key";

/// `$1` is the URL. Any HTTP response means the connection was made.
const CONNECT_SCRIPT: &str = r#"
curl -sS --connect-timeout 5 --max-time 10 -o /dev/null -w 'http-status=%{http_code}\n' "$1"
"#;

/// `$1` is the MCP endpoint, `$BULKHEAD_API_KEY` the caller's key.
/// initialize, notifications/initialized, then tools/list — echoing the
/// session id if the server hands one out, so this works whether the
/// server is stateless or keeps sessions. Exits with the first curl
/// failure, so a refused connection shows up in the exit code.
const MCP_TOOLS_LIST_SCRIPT: &str = r#"
set -u
url="$1"
post() {
  out="$1"; shift
  curl -sS --connect-timeout 5 --max-time 15 -o "$out" -D "$out.headers" \
    -w '%{http_code}' -X POST "$url" \
    -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' \
    -H 'MCP-Protocol-Version: 2025-06-18' \
    -H "Authorization: Bearer $BULKHEAD_API_KEY" "$@"
}
status=$(post /tmp/initialize --data '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bulkhead-e2e","version":"0.1.0"}}}') || exit $?
echo "initialize-status=$status"
[ "$status" = 200 ] || exit 0
session=$(grep -i '^mcp-session-id:' /tmp/initialize.headers | cut -d: -f2 | tr -d ' \r')
if [ -n "$session" ]; then set -- -H "Mcp-Session-Id: $session"; else set --; fi
post /tmp/initialized "$@" --data '{"jsonrpc":"2.0","method":"notifications/initialized"}' >/dev/null || exit $?
status=$(post /tmp/tools "$@" --data '{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}') || exit $?
echo "tools-list-status=$status"
cat /tmp/tools
"#;

/// What a probe pod did.
#[derive(Debug)]
pub struct Probe {
    /// Where it ran and what it tried.
    pub description: String,
    /// The script's (curl's) exit code.
    pub exit_code: i32,
    /// Its output.
    pub logs: String,
}

impl Probe {
    /// The connection was made and an HTTP response came back.
    pub fn connected(&self) -> bool {
        self.exit_code == 0
    }

    /// The connection could not be made: dropped (timeout) or rejected.
    /// Any other failure (DNS, bad URL) is neither connected nor blocked.
    pub fn blocked(&self) -> bool {
        matches!(self.exit_code, CURL_COULDNT_CONNECT | CURL_TIMED_OUT)
    }

    /// The value of a `key=value` line the script printed.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.logs.lines().find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::trim)
        })
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: exit code {}, output: {:?}",
            self.description, self.exit_code, self.logs
        )
    }
}

impl TestEnv {
    /// Tries an HTTP connection to `url` from a pod in `namespace`.
    pub async fn probe_connect(&self, namespace: &str, url: &str) -> Result<Probe> {
        self.run_probe(
            namespace,
            &format!("connect from {namespace} to {url}"),
            CONNECT_SCRIPT,
            url,
            false,
        )
        .await
    }

    /// Calls MCP `tools/list` at `endpoint` from a pod in `namespace`,
    /// presenting the key stored with [`TestEnv::store_caller_key`].
    pub async fn probe_mcp_tools_list(&self, namespace: &str, endpoint: &str) -> Result<Probe> {
        self.run_probe(
            namespace,
            &format!("MCP tools/list from {namespace} to {endpoint}"),
            MCP_TOOLS_LIST_SCRIPT,
            endpoint,
            true,
        )
        .await
    }

    /// Stores the API key that MCP probes in `namespace` present, replacing
    /// any key stored there before.
    pub async fn store_caller_key(&self, namespace: &str, api_key: &str) -> Result<()> {
        let secrets: Api<Secret> = Api::namespaced(self.client(), namespace);
        delete_ignoring_absent(&secrets, CALLER_KEY_SECRET).await?;
        wait::until(
            &format!("Secret {namespace}/{CALLER_KEY_SECRET} to be gone"),
            PROBE_TIMEOUT,
            async || {
                Ok(match secrets.get_opt(CALLER_KEY_SECRET).await? {
                    None => Check::Done(()),
                    Some(_) => Check::Pending("still present".to_owned()),
                })
            },
        )
        .await?;
        self.create_secret(
            namespace,
            CALLER_KEY_SECRET,
            BTreeMap::from([(CALLER_KEY_ENTRY.to_owned(), api_key.to_owned())]),
        )
        .await
    }

    async fn run_probe(
        &self,
        namespace: &str,
        description: &str,
        script: &str,
        target: &str,
        with_api_key: bool,
    ) -> Result<Probe> {
        let pods: Api<Pod> = Api::namespaced(self.client(), namespace);
        let pod = probe_pod(
            &self.settings().curl_image,
            self.run_id(),
            script,
            target,
            with_api_key,
        );
        let created = pods
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating the probe pod for {description}"))?;
        let name = created.name_any();
        let outcome = self.finish_probe(&pods, &name, description).await;
        if let Err(error) = delete_ignoring_absent(&pods, &name).await {
            eprintln!("cleanup: probe pod {namespace}/{name}: {error:#}");
        }
        outcome
    }

    async fn finish_probe(&self, pods: &Api<Pod>, name: &str, description: &str) -> Result<Probe> {
        let exit_code = wait::until(
            &format!("probe pod {name} ({description}) to finish"),
            PROBE_TIMEOUT,
            async || {
                let pod = pods.get(name).await?;
                let statuses = pod
                    .status
                    .and_then(|status| status.container_statuses)
                    .unwrap_or_default();
                let Some(state) = statuses.first().and_then(|status| status.state.clone()) else {
                    return Ok(Check::Pending("no container status yet".to_owned()));
                };
                if let Some(terminated) = state.terminated {
                    return Ok(Check::Done(terminated.exit_code));
                }
                if let Some(waiting) = state.waiting {
                    let reason = waiting.reason.unwrap_or_default();
                    if matches!(
                        reason.as_str(),
                        "ErrImagePull" | "ImagePullBackOff" | "CreateContainerConfigError"
                    ) {
                        bail!(
                            "probe pod {name} cannot start: {reason}: {}",
                            waiting.message.unwrap_or_default()
                        );
                    }
                    return Ok(Check::Pending(format!("waiting: {reason}")));
                }
                Ok(Check::Pending("running".to_owned()))
            },
        )
        .await?;
        let logs = pods
            .logs(name, &LogParams::default())
            .await
            .with_context(|| format!("reading the logs of probe pod {name}"))?;
        Ok(Probe {
            description: description.to_owned(),
            exit_code,
            logs,
        })
    }
}

fn probe_pod(image: &str, run_id: &str, script: &str, target: &str, with_api_key: bool) -> Pod {
    let api_key_env = with_api_key.then(|| EnvVar {
        name: "BULKHEAD_API_KEY".to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: CALLER_KEY_SECRET.to_owned(),
                key: CALLER_KEY_ENTRY.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some("probe-".to_owned()),
            labels: Some(BTreeMap::from([
                (SUITE_LABEL.to_owned(), run_id.to_owned()),
                (
                    "app.kubernetes.io/name".to_owned(),
                    "bulkhead-e2e-probe".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(0),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: "probe".to_owned(),
                image: Some(image.to_owned()),
                image_pull_policy: Some("IfNotPresent".to_owned()),
                command: Some(vec![
                    "sh".to_owned(),
                    "-c".to_owned(),
                    script.to_owned(),
                    "probe".to_owned(),
                    target.to_owned(),
                ]),
                env: api_key_env.map(|env| vec![env]),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities("20m", "16Mi")),
                    limits: Some(quantities("200m", "64Mi")),
                    ..ResourceRequirements::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".to_owned()]),
                        ..Capabilities::default()
                    }),
                    ..SecurityContext::default()
                }),
                volume_mounts: Some(vec![VolumeMount {
                    name: "tmp".to_owned(),
                    mount_path: "/tmp".to_owned(),
                    ..VolumeMount::default()
                }]),
                ..Container::default()
            }],
            volumes: Some(vec![Volume {
                name: "tmp".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// A pod that Pod Security `restricted` admits, for dry-run admission
/// checks; `privileged` turns it into one that any baseline policy refuses.
pub fn admission_test_pod(image: &str, privileged: bool) -> Pod {
    let mut pod = probe_pod(
        image,
        "admission",
        CONNECT_SCRIPT,
        "http://127.0.0.1/",
        false,
    );
    if privileged {
        let container = pod
            .spec
            .as_mut()
            .and_then(|spec| spec.containers.first_mut());
        if let Some(security) = container.and_then(|c| c.security_context.as_mut()) {
            security.privileged = Some(true);
            security.allow_privilege_escalation = Some(true);
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    //! The probe scripts are checked here against a loopback HTTP server
    //! that plays the MCP server's part, with the same `sh` and `curl` the
    //! probe image runs — so a broken script shows up before a cluster run.

    use std::process::Command;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// One request as the fake server saw it: head (lower-cased) and body.
    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    /// Serves `responses` in order, one per connection, recording requests.
    async fn fake_server(responses: Vec<String>) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
        let seen: Seen = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            for response in responses {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = stream.read(&mut chunk).await.expect("read");
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .to_ascii_lowercase()
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>())
                            })
                            .transpose()
                            .expect("content-length")
                            .unwrap_or(0);
                        if body.len() >= length || n == 0 {
                            break (head.to_ascii_lowercase(), body.to_owned());
                        }
                    }
                };
                record.lock().expect("lock").push((head, body));
                stream.write_all(response.as_bytes()).await.expect("write");
                stream.shutdown().await.expect("shutdown");
            }
        });
        (url, seen)
    }

    fn http(status: &str, extra_headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// Runs `script` as the probe pod would: `sh -c script probe target`.
    async fn run_script(script: &'static str, target: String, api_key: &str) -> Probe {
        let api_key = api_key.to_owned();
        tokio::task::spawn_blocking(move || {
            let output = Command::new("sh")
                .args(["-c", script, "probe", &target])
                .env("BULKHEAD_API_KEY", &api_key)
                .current_dir(std::env::temp_dir())
                .output()
                .expect("these tests need `sh` and `curl` on PATH, as in the probe image");
            Probe {
                description: target,
                exit_code: output.status.code().expect("exit code"),
                logs: String::from_utf8_lossy(&output.stdout).into_owned(),
            }
        })
        .await
        .expect("script task")
    }

    #[tokio::test]
    async fn mcp_script_initializes_keeps_the_session_and_lists_tools() {
        let (url, seen) = fake_server(vec![
            http(
                "200 OK",
                "Mcp-Session-Id: session-1\r\n",
                r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18"}}"#,
            ),
            http("202 Accepted", "", ""),
            http(
                "200 OK",
                "",
                r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"whoami"}]}}"#,
            ),
        ])
        .await;
        let probe = run_script(MCP_TOOLS_LIST_SCRIPT, url, "bhk_test").await;

        assert!(probe.connected(), "{probe}");
        assert_eq!(probe.field("initialize-status"), Some("200"), "{probe}");
        assert_eq!(probe.field("tools-list-status"), Some("200"), "{probe}");
        assert!(probe.logs.contains("whoami"), "{probe}");
        let seen = seen.lock().expect("lock").clone();
        let methods: Vec<&str> = seen
            .iter()
            .map(|(_, body)| {
                ["\"initialize\"", "notifications/initialized", "tools/list"]
                    .into_iter()
                    .find(|m| body.contains(m))
                    .unwrap_or("?")
            })
            .collect();
        assert_eq!(
            methods,
            ["\"initialize\"", "notifications/initialized", "tools/list"]
        );
        for (index, (head, _)) in seen.iter().enumerate() {
            assert!(head.contains("authorization: bearer bhk_test"), "{head}");
            assert!(head.contains("mcp-protocol-version: 2025-06-18"), "{head}");
            assert!(
                head.contains("accept: application/json, text/event-stream"),
                "{head}"
            );
            assert_eq!(
                head.contains("mcp-session-id: session-1"),
                index > 0,
                "{head}"
            );
        }
    }

    /// The real `bulkhead-server`, in-process on loopback with file-based
    /// keys, answering the same script the cluster probes run: proves the
    /// script speaks the server's MCP dialect (headers, Host, stateless
    /// JSON), not just the fake's.
    #[tokio::test(flavor = "multi_thread")]
    async fn mcp_script_lists_tools_of_the_real_server_and_gets_401_for_a_wrong_key() {
        use bulkhead_server::api_keys::{generate_api_key, hash_api_key};
        use clap::Parser;

        let dir = std::env::temp_dir().join(format!(
            "bulkhead-e2e-script-{}-{}",
            std::process::id(),
            crate::harness::fixture_name("x", "server")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = generate_api_key().expect("key");
        std::fs::write(
            dir.join("keys.yaml"),
            format!("e2e-gateway: \"{}\"\n", hash_api_key(&key)),
        )
        .expect("keys");
        std::fs::write(dir.join("credentials.yaml"), "{}\n").expect("credentials");
        std::fs::write(
            dir.join("server.yaml"),
            "tenantId: script-check\n\
             allowedHosts: [\"127.0.0.1\"]\n\
             apiKeys: {type: file, path: keys.yaml}\n\
             credentials: {type: file, path: credentials.yaml}\n",
        )
        .expect("config");
        let ready = dir.join("ready.json");
        let cli = bulkhead_server::cli::Cli::parse_from([
            "bulkhead-server".as_ref(),
            "--config".as_ref(),
            dir.join("server.yaml").as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--admin-listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--ready-file".as_ref(),
            ready.as_os_str(),
        ]);
        let server = tokio::spawn(bulkhead_server::app::run(cli.serve));
        let mcp = wait::until(
            "the server to listen",
            Duration::from_secs(30),
            async || {
                Ok(match std::fs::read_to_string(&ready) {
                    Ok(text) => {
                        let value: serde_json::Value = serde_json::from_str(&text)?;
                        Check::Done(value["mcp"].as_str().unwrap_or_default().to_owned())
                    }
                    Err(_) if !server.is_finished() => Check::Pending("no ready file".to_owned()),
                    Err(error) => return Err(error.into()),
                })
            },
        )
        .await
        .expect("server listening");
        let url = format!("http://{mcp}/mcp");

        // Readiness waits for the key file; retry until the key is accepted.
        let own = wait::until(
            "the server to accept the key",
            Duration::from_secs(30),
            async || {
                let probe = run_script(MCP_TOOLS_LIST_SCRIPT, url.clone(), &key).await;
                Ok(if probe.field("tools-list-status") == Some("200") {
                    Check::Done(probe)
                } else {
                    Check::Pending(probe.to_string())
                })
            },
        )
        .await
        .expect("tools/list with the right key");
        let wrong = run_script(MCP_TOOLS_LIST_SCRIPT, url, "bhk_not-a-key").await;
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);

        assert_eq!(own.field("initialize-status"), Some("200"), "{own}");
        assert!(own.logs.contains("whoami"), "{own}");
        assert!(wrong.connected(), "{wrong}");
        assert_eq!(wrong.field("initialize-status"), Some("401"), "{wrong}");
    }

    #[tokio::test]
    async fn mcp_script_reports_a_refused_key_and_stops() {
        let (url, seen) = fake_server(vec![http(
            "401 Unauthorized",
            "WWW-Authenticate: Bearer\r\n",
            "",
        )])
        .await;
        let probe = run_script(MCP_TOOLS_LIST_SCRIPT, url, "bhk_other").await;

        assert!(probe.connected(), "{probe}");
        assert_eq!(probe.field("initialize-status"), Some("401"), "{probe}");
        assert_eq!(probe.field("tools-list-status"), None, "{probe}");
        assert_eq!(seen.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn scripts_report_a_refused_connection_as_blocked() {
        // Bind and drop: nothing listens on this port any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let url = format!("http://127.0.0.1:{port}/mcp");
        for script in [CONNECT_SCRIPT, MCP_TOOLS_LIST_SCRIPT] {
            let probe = run_script(script, url.clone(), "bhk_test").await;
            assert!(probe.blocked() && !probe.connected(), "{probe}");
        }
    }

    #[tokio::test]
    async fn connect_script_counts_any_http_answer_as_connected() {
        let (url, _) = fake_server(vec![http("404 Not Found", "", "")]).await;
        let probe = run_script(CONNECT_SCRIPT, url, "unused").await;
        assert!(probe.connected() && !probe.blocked(), "{probe}");
        assert_eq!(probe.field("http-status"), Some("404"));
    }

    #[test]
    fn other_curl_failures_are_neither_connected_nor_blocked() {
        let dns_failure = Probe {
            description: String::new(),
            exit_code: 6,
            logs: String::new(),
        };
        assert!(!dns_failure.connected() && !dns_failure.blocked());
    }

    #[test]
    fn probe_pods_meet_the_restricted_pod_security_standard() {
        let pod = probe_pod("curl", "run", CONNECT_SCRIPT, "http://x/", true);
        let spec = pod.spec.expect("spec");
        let pod_security = spec.security_context.expect("pod securityContext");
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(
            pod_security.seccomp_profile.map(|p| p.type_).as_deref(),
            Some("RuntimeDefault")
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
        let container = &spec.containers[0];
        let security = container
            .security_context
            .clone()
            .expect("container securityContext");
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.privileged, None);
        assert_eq!(
            security.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_owned()])
        );
        let env = container.env.clone().expect("api key env");
        let from = env[0]
            .value_from
            .clone()
            .and_then(|f| f.secret_key_ref)
            .expect("from a Secret");
        assert_eq!(from.name, CALLER_KEY_SECRET);
        assert!(
            env[0].value.is_none(),
            "the key must not be in the pod spec"
        );
    }

    #[test]
    fn admission_test_pod_is_privileged_only_when_asked() {
        let security = |pod: Pod| {
            pod.spec.expect("spec").containers[0]
                .security_context
                .clone()
                .expect("securityContext")
        };
        assert_eq!(
            security(admission_test_pod("curl", true)).privileged,
            Some(true)
        );
        assert_eq!(security(admission_test_pod("curl", false)).privileged, None);
    }
}
