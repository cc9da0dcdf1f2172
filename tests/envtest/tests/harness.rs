//! The harness itself: the control plane is the pinned release, the
//! clients authenticate as who they claim, the audit log names them, and no
//! process outlives a harness that is killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulkhead_envtest::ControlPlane;
use bulkhead_envtest::process::{is_alive, live_members};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::Client;
use kube::api::{Api, PostParams};

/// The user the API server sees for `client` (SelfSubjectReview).
async fn who_am_i(client: &Client) -> Result<(String, Vec<String>)> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .context("SelfSubjectReview")?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .context("SelfSubjectReview without userInfo")?;
    Ok((
        user.username.unwrap_or_default(),
        user.groups.unwrap_or_default(),
    ))
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn the_api_server_is_the_pinned_release_and_audits_requests() -> Result<()> {
    let cp = ControlPlane::shared();
    let admin = cp.admin_client().await?;
    let mark = cp.audit().mark()?;
    let version = admin.apiserver_version().await?;
    assert_eq!(version.git_version, "v1.36.3", "{version:?}");
    let (user, groups) = who_am_i(&admin).await?;
    assert_eq!(user, bulkhead_envtest::pki::ADMIN_USER);
    assert!(groups.contains(&"system:masters".to_owned()), "{groups:?}");

    // The audit log records the requests, by user and verb.
    let events = bulkhead_envtest::tenants::wait_for(
        "the SelfSubjectReview in the audit log",
        Duration::from_secs(10),
        || async {
            let events = cp.audit().since(mark)?;
            Ok(events
                .iter()
                .any(|e| e.object().resource == "selfsubjectreviews" && e.verb == "create")
                .then_some(events))
        },
    )
    .await?;
    let review = events
        .iter()
        .find(|e| e.object().resource == "selfsubjectreviews")
        .context("no audit event of the review")?;
    assert_eq!(review.username(), bulkhead_envtest::pki::ADMIN_USER);
    assert_eq!(review.code(), 201, "{}", review.summary());
    assert!(
        events
            .iter()
            .any(|e| e.request_uri == "/version"
                && e.username() == bulkhead_envtest::pki::ADMIN_USER),
        "no audit event for GET /version"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn clients_authenticate_as_a_service_account_and_as_an_impersonated_user() -> Result<()> {
    let cp = ControlPlane::shared();
    // The ServiceAccount controller made `default` in `kube-system`; its
    // TokenRequest token is a real credential.
    let account = cp.service_account_client("kube-system", "default").await?;
    let (user, groups) = who_am_i(&account.client).await?;
    assert_eq!(user, "system:serviceaccount:kube-system:default");
    assert!(
        groups.contains(&"system:serviceaccounts:kube-system".to_owned()),
        "{groups:?}"
    );
    // ... and it is not an admin: RBAC refuses it.
    let refused = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
        account.client.clone(),
        "kube-system",
    )
    .list(&Default::default())
    .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403),
        "a default ServiceAccount listed Secrets: {refused:?}"
    );

    let as_user = cp.client_as_user("jane", &["team-a"]).await?;
    let (user, groups) = who_am_i(&as_user).await?;
    assert_eq!(user, "jane");
    assert!(groups.contains(&"team-a".to_owned()), "{groups:?}");

    // kubectl with a token kubeconfig is the ServiceAccount too.
    let kubeconfig = cp.kubeconfig_with_token("harness-test.kubeconfig", &account.token)?;
    let output = Command::new(cp.binaries().kubectl())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "system:serviceaccount:kube-system:default"
    );
    Ok(())
}

/// A harness process killed with SIGKILL leaves nothing running: the
/// watchdog ends every process group it started and removes its work directory.
#[test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
fn no_process_survives_a_killed_harness() -> Result<()> {
    let mut harness = Command::new(env!("CARGO_BIN_EXE_bulkhead-envtest"))
        .arg("--install")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start bulkhead-envtest")?;
    let stdout = harness.stdout.take().context("stdout")?;
    let mut kubeconfig = None;
    let mut pids: Vec<u32> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(path) = line.strip_prefix("kubeconfig: ") {
            kubeconfig = Some(std::path::PathBuf::from(path));
        } else if let Some(list) = line.strip_prefix("pids: ") {
            pids = list
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()?;
        } else if line == "ready" {
            break;
        }
    }
    let kubeconfig = kubeconfig.context("bulkhead-envtest printed no kubeconfig")?;
    let work_dir = kubeconfig.parent().context("work directory")?.to_owned();
    // etcd, kube-apiserver, kube-controller-manager, the watchdog and the operator.
    assert_eq!(pids.len(), 5, "{pids:?}");
    let stopped: Vec<u32> = pids.iter().copied().filter(|pid| !is_alive(*pid)).collect();
    assert!(
        stopped.is_empty(),
        "not running before the kill: {stopped:?} of {pids:?}"
    );

    harness.kill()?; // SIGKILL: no destructor, no panic hook runs.
    harness.wait()?;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = live_members(&pids);
        if left.is_empty() && !work_dir.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "20 s after SIGKILL: processes {left:?} still run, work directory exists: {}",
            work_dir.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
