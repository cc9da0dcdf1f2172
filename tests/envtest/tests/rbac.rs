//! Secret access through the real RBAC authorizer: the answers of
//! SubjectAccessReview, and real requests with real ServiceAccount tokens.
//!
//! Tenant A's server ServiceAccount may get and watch A's two Secrets by
//! name and nothing else; the operator may read no Secret anywhere.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bulkhead_crds::server_config::{API_KEYS_SECRET_NAME, CREDENTIALS_SECRET_NAME};
use bulkhead_envtest::tenants::example;
use bulkhead_envtest::{ControlPlane, OPERATOR_GROUPS, OPERATOR_NAMESPACE, OPERATOR_USER};
use bulkhead_operator::desired::names::SERVICE_ACCOUNT_NAME;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};

/// A Secret request: verb, namespace (`None`: all namespaces), name (`None`: any).
type Request<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

async fn allowed(
    admin: &Client,
    user: &str,
    groups: &[String],
    request: Request<'_>,
) -> Result<bool> {
    let (verb, namespace, name) = request;
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(String::new()),
                version: Some("v1".to_owned()),
                resource: Some("secrets".to_owned()),
                verb: Some(verb.to_owned()),
                namespace: namespace.map(str::to_owned),
                name: name.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .with_context(|| format!("SubjectAccessReview {user} {request:?}"))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".to_owned(),
    ]
}

async fn create_secret(admin: &Client, namespace: &str, name: &str) -> Result<()> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some([("value".to_owned(), ByteString(b"v1".to_vec()))].into()),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("create Secret {namespace}/{name}"))?;
    Ok(())
}

/// Fails unless the API server answers a watch with 403 Forbidden, which
/// kube reports either on the request or as the stream's first item.
async fn watch_refused(api: &Api<Secret>, params: &WatchParams) -> Result<()> {
    let mut stream = match api.watch(params, "0").await {
        Err(kube::Error::Api(status)) if status.code == 403 => return Ok(()),
        Err(error) => anyhow::bail!("watch {params:?} failed otherwise: {error}"),
        Ok(stream) => stream.boxed(),
    };
    let first = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .context("the watch neither failed nor sent anything within 20 s")?;
    match first {
        Some(Err(kube::Error::Api(status))) if status.code == 403 => Ok(()),
        Some(Ok(WatchEvent::Error(status))) if status.code == 403 => Ok(()),
        other => anyhow::bail!("watch {params:?} was not refused: {other:?}"),
    }
}

fn is_forbidden<T: std::fmt::Debug>(result: &kube::Result<T>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

/// Two reconciled Tenants with the platform's Secrets and one unrelated
/// Secret each; returns their namespaces.
async fn two_tenants(
    cp: &ControlPlane,
    admin: &Client,
    a: &str,
    b: &str,
) -> Result<(String, String)> {
    for id in [a, b] {
        cp.kubectl_apply(&example("minimal.yaml", id)?)?;
    }
    for id in [a, b] {
        cp.wait_reconciled(admin, id).await?;
        let ns = cp.tenant_namespace(id);
        for name in [
            CREDENTIALS_SECRET_NAME,
            API_KEYS_SECRET_NAME,
            "platform-other",
        ] {
            create_secret(admin, &ns, name).await?;
        }
    }
    Ok((cp.tenant_namespace(a), cp.tenant_namespace(b)))
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn subject_access_reviews_grant_a_server_its_own_two_secrets_only() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let (a, b) = two_tenants(cp, &admin, "rb-sar-a", "rb-sar-b").await?;
    let server = format!("system:serviceaccount:{a}:{SERVICE_ACCOUNT_NAME}");
    let groups = service_account_groups(&a);

    let mut wrong = Vec::new();
    for name in [CREDENTIALS_SECRET_NAME, API_KEYS_SECRET_NAME] {
        for verb in ["get", "watch"] {
            if !allowed(&admin, &server, &groups, (verb, Some(&a), Some(name))).await? {
                wrong.push(format!("denied {verb} {a}/{name}"));
            }
        }
    }
    let denied: Vec<Request<'_>> = vec![
        ("list", Some(&a), None),
        ("watch", Some(&a), None),
        ("get", Some(&a), Some("platform-other")),
        ("watch", Some(&a), Some("platform-other")),
        ("get", Some(&b), Some(CREDENTIALS_SECRET_NAME)),
        ("watch", Some(&b), Some(CREDENTIALS_SECRET_NAME)),
        ("get", Some(&b), Some(API_KEYS_SECRET_NAME)),
        ("list", Some(&b), None),
        ("list", None, None),
        ("watch", None, None),
        ("get", None, Some(CREDENTIALS_SECRET_NAME)),
        ("update", Some(&a), Some(CREDENTIALS_SECRET_NAME)),
        ("patch", Some(&a), Some(API_KEYS_SECRET_NAME)),
        ("delete", Some(&a), Some(CREDENTIALS_SECRET_NAME)),
        ("create", Some(&a), None),
    ];
    for request in &denied {
        if allowed(&admin, &server, &groups, *request).await? {
            wrong.push(format!("allowed {request:?}"));
        }
    }

    // The operator: no Secret verb anywhere.
    let operator_groups: Vec<String> = OPERATOR_GROUPS.iter().map(|g| (*g).to_owned()).collect();
    for namespace in [
        Some(a.as_str()),
        Some(b.as_str()),
        Some(OPERATOR_NAMESPACE),
        Some("default"),
        None,
    ] {
        for verb in ["get", "list", "watch"] {
            for name in [None, Some(CREDENTIALS_SECRET_NAME)] {
                if allowed(
                    &admin,
                    OPERATOR_USER,
                    &operator_groups,
                    (verb, namespace, name),
                )
                .await?
                {
                    wrong.push(format!("operator allowed {verb} {namespace:?} {name:?}"));
                }
            }
        }
    }
    ensure!(
        wrong.is_empty(),
        "RBAC disagrees with the design:\n{}",
        wrong.join("\n")
    );
    for id in ["rb-sar-a", "rb-sar-b"] {
        cp.delete_tenant(&admin, id).await?;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn a_server_token_reads_and_watches_its_own_secrets_and_nothing_else() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_bulkhead();
    let admin = cp.admin_client().await?;
    let (a, b) = two_tenants(cp, &admin, "rb-tok-a", "rb-tok-b").await?;
    let server = cp
        .service_account_client(&a, SERVICE_ACCOUNT_NAME)
        .await?
        .client;
    let own: Api<Secret> = Api::namespaced(server.clone(), &a);
    let other_tenant: Api<Secret> = Api::namespaced(server.clone(), &b);

    for name in [CREDENTIALS_SECRET_NAME, API_KEYS_SECRET_NAME] {
        let secret = own
            .get(name)
            .await
            .with_context(|| format!("get {a}/{name}"))?;
        assert_eq!(
            secret.data.unwrap_or_default()["value"],
            ByteString(b"v1".to_vec())
        );
        let refused = other_tenant.get(name).await;
        assert!(is_forbidden(&refused), "got B's {name}: {refused:?}");
    }
    let refused = own.get("platform-other").await;
    assert!(is_forbidden(&refused), "{refused:?}");
    let refused = own.list(&ListParams::default()).await;
    assert!(
        is_forbidden(&refused),
        "listed its namespace's Secrets: {refused:?}"
    );
    let refused = Api::<Secret>::all(server.clone())
        .list(&ListParams::default())
        .await;
    assert!(is_forbidden(&refused), "{refused:?}");

    // A watch narrowed to one name by a field selector is what a
    // `resourceNames` rule allows (the server follows rotation this way).
    let by_name =
        WatchParams::default().fields(&format!("metadata.name={CREDENTIALS_SECRET_NAME}"));
    let mut events = own
        .watch(&by_name, "0")
        .await
        .context("watch own credentials")?
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(20), events.try_next())
        .await
        .context("no watch event within 20 s")??;
    assert!(
        matches!(&first, Some(WatchEvent::Added(s)) if s.metadata.name.as_deref() == Some(CREDENTIALS_SECRET_NAME)),
        "{first:?}"
    );
    // Rotation by the platform arrives on the watch.
    Api::<Secret>::namespaced(admin.clone(), &a)
        .patch(
            CREDENTIALS_SECRET_NAME,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"value": "djI="}})),
        )
        .await?;
    let rotated = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.try_next().await? {
                Some(WatchEvent::Modified(secret)) => return anyhow::Ok(secret),
                Some(WatchEvent::Bookmark(_)) => continue,
                other => anyhow::bail!("unexpected watch event {other:?}"),
            }
        }
    })
    .await
    .context("no MODIFIED event within 20 s")??;
    assert_eq!(
        rotated.data.unwrap_or_default()["value"],
        ByteString(b"v2".to_vec())
    );

    // The same watch on B's Secret, or unnarrowed, is refused.
    watch_refused(&other_tenant, &by_name).await?;
    watch_refused(&own, &WatchParams::default()).await?;

    // The operator's own token reads no Secret, anywhere.
    let operator = cp
        .service_account_client(OPERATOR_NAMESPACE, "bulkhead-operator")
        .await?
        .client;
    for namespace in [a.as_str(), b.as_str(), OPERATOR_NAMESPACE] {
        let api: Api<Secret> = Api::namespaced(operator.clone(), namespace);
        let refused = api.get(CREDENTIALS_SECRET_NAME).await;
        assert!(
            is_forbidden(&refused),
            "operator got {namespace} credentials: {refused:?}"
        );
        let refused = api.list(&ListParams::default()).await;
        assert!(
            is_forbidden(&refused),
            "operator listed {namespace}: {refused:?}"
        );
        watch_refused(&api, &by_name).await?;
    }
    let refused = Api::<Secret>::all(operator)
        .list(&ListParams::default())
        .await;
    assert!(is_forbidden(&refused), "{refused:?}");
    for id in ["rb-tok-a", "rb-tok-b"] {
        cp.delete_tenant(&admin, id).await?;
    }
    Ok(())
}
