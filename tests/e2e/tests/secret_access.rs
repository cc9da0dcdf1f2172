//! Least privilege on Secrets, asked of the API server itself through
//! SubjectAccessReview: a tenant's server reads its own two Secrets and
//! nothing else; the operator reads no Secret at all; and the admission
//! guard refuses any other binding of the secret-reader role.

use anyhow::{Context, Result, ensure};
use bulkhead_crds::server_config::{API_KEYS_SECRET_NAME, CREDENTIALS_SECRET_NAME};
use bulkhead_e2e::access::{SecretRequest, Subject};
use bulkhead_e2e::probes::CALLER_KEY_SECRET;
use bulkhead_e2e::{TestEnv, run};
use bulkhead_operator::desired::SECRET_READER_CLUSTER_ROLE;
use bulkhead_operator::desired::names::SERVICE_ACCOUNT_NAME;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{
    ClusterRoleBinding, RoleBinding, RoleRef, Subject as RbacSubject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{ListParams, PostParams};

#[tokio::test]
#[ignore = "needs a kind cluster: run tests/e2e/run.sh"]
async fn server_account_reads_only_its_own_tenants_secrets() {
    run(|env| async move {
        let a = env.create_tenant("a", env.tenant_spec()?).await?;
        let b = env.create_tenant("b", env.tenant_spec()?).await?;
        let account = env.server_service_account(&a.namespace).await?;
        let server_a = Subject::service_account(&a.namespace, &account);
        let own = Some(a.namespace.as_str());
        let other = Some(b.namespace.as_str());

        let mut expectations = vec![
            (request("get", own, Some(CREDENTIALS_SECRET_NAME)), true),
            (request("watch", own, Some(CREDENTIALS_SECRET_NAME)), true),
            (request("get", own, Some(API_KEYS_SECRET_NAME)), true),
            (request("watch", own, Some(API_KEYS_SECRET_NAME)), true),
            (request("list", own, None), false),
            (request("watch", own, None), false),
            (request("get", own, Some(CALLER_KEY_SECRET)), false),
            (request("get", own, Some("default-token")), false),
            (request("list", None, None), false),
            (request("watch", None, None), false),
        ];
        for verb in ["get", "list", "watch"] {
            expectations.push((request(verb, other, Some(CREDENTIALS_SECRET_NAME)), false));
            expectations.push((request(verb, other, Some(API_KEYS_SECRET_NAME)), false));
            expectations.push((request(verb, other, None), false));
        }
        ensure_access(&env, &server_a, &expectations).await
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a kind cluster: run tests/e2e/run.sh"]
async fn operator_account_cannot_read_secrets() {
    run(|env| async move {
        let tenant = env.create_tenant("op", env.tenant_spec()?).await?;
        let operator_namespace = env.settings().operator_namespace.clone();
        let deployments = Api::<Deployment>::namespaced(env.client(), &operator_namespace)
            .list(&ListParams::default())
            .await
            .with_context(|| format!("listing Deployments in {operator_namespace}"))?
            .items;
        let accounts: Vec<String> = deployments
            .iter()
            .filter_map(|deployment| {
                let pod = deployment.spec.as_ref()?.template.spec.as_ref()?;
                Some(
                    pod.service_account_name
                        .clone()
                        .unwrap_or_else(|| "default".to_owned()),
                )
            })
            .collect();
        ensure!(
            !accounts.is_empty(),
            "no Deployment in {operator_namespace}: is the operator installed?"
        );

        let tenant_namespace = Some(tenant.namespace.as_str());
        let mut expectations = Vec::new();
        for verb in ["get", "list", "watch"] {
            expectations.push((request(verb, None, None), false));
            expectations.push((request(verb, tenant_namespace, None), false));
            expectations.push((
                request(verb, tenant_namespace, Some(CREDENTIALS_SECRET_NAME)),
                false,
            ));
            expectations.push((
                request(verb, tenant_namespace, Some(API_KEYS_SECRET_NAME)),
                false,
            ));
            expectations.push((
                request(verb, Some(operator_namespace.as_str()), None),
                false,
            ));
        }
        for account in &accounts {
            let subject = Subject::service_account(&operator_namespace, account);
            ensure_access(&env, &subject, &expectations).await?;
        }
        Ok(())
    })
    .await;
}

fn request<'a>(
    verb: &'a str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
) -> SecretRequest<'a> {
    SecretRequest {
        verb,
        namespace,
        name,
    }
}

/// Asks every question and reports all wrong answers at once.
async fn ensure_access(
    env: &TestEnv,
    subject: &Subject,
    expectations: &[(SecretRequest<'_>, bool)],
) -> Result<()> {
    let mut wrong = Vec::new();
    for (request, expected) in expectations {
        let allowed = env.may(subject, *request).await?;
        if allowed != *expected {
            wrong.push(format!(
                "{request:?}: {} (expected {})",
                verdict(allowed),
                verdict(*expected)
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "{subject} has the wrong access to Secrets:\n  {}",
        wrong.join("\n  ")
    );
    Ok(())
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

#[tokio::test]
#[ignore = "needs a kind cluster: run tests/e2e/run.sh"]
async fn secret_reader_role_cannot_be_bound_to_any_other_subject() {
    run(|env| async move {
        let tenant = env.create_tenant("guard", env.tenant_spec()?).await?;
        let namespace = tenant.namespace.as_str();
        let role_ref = RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: SECRET_READER_CLUSTER_ROLE.to_owned(),
        };
        let subject = |name: &str, namespace: &str| RbacSubject {
            kind: "ServiceAccount".to_owned(),
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
            ..RbacSubject::default()
        };
        // Dry run: admission still runs, nothing is stored if it were admitted.
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };

        let role_bindings = Api::<RoleBinding>::namespaced(env.client(), namespace);
        let foreign_subjects = [
            subject("default", namespace),
            subject(SERVICE_ACCOUNT_NAME, &env.settings().operator_namespace),
        ];
        for foreign in foreign_subjects {
            let binding = RoleBinding {
                metadata: ObjectMeta {
                    name: Some(env.name("guard")),
                    ..ObjectMeta::default()
                },
                role_ref: role_ref.clone(),
                subjects: Some(vec![foreign.clone()]),
            };
            let result = role_bindings.create(&dry_run, &binding).await;
            ensure!(
                result.is_err(),
                "a RoleBinding of {SECRET_READER_CLUSTER_ROLE} to {foreign:?} was admitted"
            );
        }

        let cluster_binding = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(env.name("guard")),
                ..ObjectMeta::default()
            },
            role_ref,
            subjects: Some(vec![subject(SERVICE_ACCOUNT_NAME, namespace)]),
        };
        let result = Api::<ClusterRoleBinding>::all(env.client())
            .create(&dry_run, &cluster_binding)
            .await;
        ensure!(
            result.is_err(),
            "a ClusterRoleBinding of {SECRET_READER_CLUSTER_ROLE} was admitted"
        );
        Ok(())
    })
    .await;
}
