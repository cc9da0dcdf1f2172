//! The verdicts a reconcile reports: one builder per situation it can end
//! in, each giving the [`Report`] the status is computed from.

use bulkhead_crds::Tenant;
use bulkhead_crds::server_config::{API_KEYS_SECRET_NAME, CREDENTIALS_SECRET_NAME};
use bulkhead_crds::validation::InvalidTenant;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Resource, ResourceExt};

use super::{
    CREDENTIALS_BOUND, NAMESPACE_READY, NETWORK_ISOLATED, READY, Reason, Report, SERVER_AVAILABLE,
    Truth, Verdict,
};
use crate::desired::TenantObjects;

/// Every child is applied: the parts as observed, with the namespace and
/// endpoint.
pub fn converged(
    tenant: &Tenant,
    objects: &TenantObjects,
    deployment: &Deployment,
    ns: &str,
    endpoint: String,
) -> Report {
    Report {
        namespace: Some(ns.to_owned()),
        endpoint: Some(endpoint),
        parts: vec![
            Verdict::new(
                NAMESPACE_READY,
                Truth::True,
                Reason::NamespaceReady,
                format!("namespace {ns} exists with Pod Security 'restricted' enforced"),
            ),
            Verdict::new(
                NETWORK_ISOLATED,
                Truth::True,
                Reason::NetworkPolicyApplied,
                format!(
                    "NetworkPolicy {} denies all traffic in {ns} except ingress from spec.network.ingressFrom and egress to DNS, the API server and spec.network.egress",
                    objects.network_policy.name_any()
                ),
            ),
            credentials(tenant, objects, ns),
            server(tenant, deployment, ns),
        ],
        ready: None,
    }
}

/// CredentialsBound: the RBAC is in place; the Secrets themselves are the
/// platform's to create (the operator holds no right to read them).
fn credentials(tenant: &Tenant, objects: &TenantObjects, ns: &str) -> Verdict {
    let keys: Vec<&str> = tenant
        .spec
        .credentials
        .iter()
        .map(|c| c.key.as_str())
        .collect();
    let keys = if keys.is_empty() {
        String::from("no credential keys are declared")
    } else {
        format!("keys {}", keys.join(", "))
    };
    Verdict::new(
        CREDENTIALS_BOUND,
        Truth::True,
        Reason::SecretAccessBound,
        format!(
            "ServiceAccount {} may read only Secrets {CREDENTIALS_SECRET_NAME} ({keys}) and {API_KEYS_SECRET_NAME} in {ns}; create them there",
            objects.service_account.name_any()
        ),
    )
}

/// ServerAvailable from the Deployment's own `Available` condition. With
/// `spec.auth.oauth`, a server that is not available names the issuer: its
/// pods are ready only once they have read the issuer's metadata and JWKS,
/// so an issuer the NetworkPolicy or DNS keeps out of reach is the usual
/// cause.
fn server(tenant: &Tenant, deployment: &Deployment, ns: &str) -> Verdict {
    let name = deployment.name_any();
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment.status.as_ref();
    let available = status.and_then(|s| s.available_replicas).unwrap_or(0);
    let rolled_out = match (
        deployment.meta().generation,
        status.and_then(|s| s.observed_generation),
    ) {
        (Some(generation), Some(observed)) => observed >= generation,
        _ => false,
    };
    let conditions = status.and_then(|s| s.conditions.as_ref());
    let available_condition =
        conditions.and_then(|conditions| conditions.iter().find(|c| c.type_ == "Available"));
    // The deployment controller copies a ReplicaSet's `ReplicaFailure`
    // (pods refused at admission: a missing RuntimeClass, quota, Pod
    // Security) to the Deployment; no pod exists to carry events then.
    let replica_failure = conditions
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        })
        .map(|c| {
            format!(
                " (pods cannot be created: {})",
                c.message.as_deref().unwrap_or("no reason given")
            )
        })
        .unwrap_or_default();
    let issuer = tenant
        .spec
        .auth
        .oauth
        .as_ref()
        .map(|oauth| {
            format!(
                "; server pods become ready only after reading the metadata and JWKS of the issuer {}: check that spec.auth.oauth.issuerNetwork names where it is",
                oauth.issuer
            )
        })
        .unwrap_or_default();
    let hint =
        format!("see `kubectl -n {ns} describe deployment {name}` and the pods' events{issuer}");
    match available_condition {
        Some(c) if c.status == "True" && rolled_out => Verdict::new(
            SERVER_AVAILABLE,
            Truth::True,
            Reason::DeploymentAvailable,
            format!("{available}/{wanted} server replicas available"),
        ),
        Some(c) if c.status == "False" => Verdict::new(
            SERVER_AVAILABLE,
            Truth::False,
            Reason::DeploymentUnavailable,
            format!(
                "{available}/{wanted} server replicas available: {}{replica_failure}; {hint}",
                c.message.as_deref().unwrap_or("no reason given")
            ),
        ),
        _ => Verdict::new(
            SERVER_AVAILABLE,
            Truth::False,
            Reason::DeploymentProgressing,
            format!(
                "{available}/{wanted} server replicas available{replica_failure}; the rollout is in progress ({hint})"
            ),
        ),
    }
}

/// The spec breaks a rule; nothing was applied.
pub fn invalid_spec(invalid: &InvalidTenant) -> Report {
    let details = invalid
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect::<Vec<_>>()
        .join("; ");
    stalled(
        None,
        Reason::InvalidSpec,
        format!("fix the Tenant's spec (nothing was changed in the cluster): {details}"),
    )
}

/// A child the API server refused as invalid (HTTP 422), e.g. a
/// nodeSelector key or resource quantity the Tenant schema let through.
/// Retrying the same spec cannot succeed, so this is reported as stalled.
pub fn apply_rejected(action: &str, message: &str, ns: &str) -> Report {
    stalled(
        Some(ns),
        Reason::ApplyRejected,
        format!("fix the Tenant's spec; the API server refused to {action}: {message}"),
    )
}

/// The Tenant cannot be read by this operator (see
/// [`crate::controller::reconcile::reconcile`]).
pub fn malformed(message: String) -> Report {
    stalled(None, Reason::MalformedTenant, message)
}

/// A Ready verdict only a person can change.
fn stalled(ns: Option<&str>, reason: Reason, message: String) -> Report {
    Report {
        namespace: ns.map(str::to_owned),
        ready: Some(Verdict::new(READY, Truth::False, reason, message)),
        ..Report::default()
    }
}

/// The namespace is being deleted; it is recreated afterwards.
pub fn namespace_terminating(ns: &str) -> Report {
    Report {
        namespace: Some(ns.to_owned()),
        parts: vec![Verdict::new(
            NAMESPACE_READY,
            Truth::False,
            Reason::NamespaceTerminating,
            format!("namespace {ns} is being deleted; it is recreated once the deletion finishes"),
        )],
        ..Report::default()
    }
}

/// The namespace exists and is not this Tenant's; nothing was touched.
pub fn namespace_conflict(ns: &str) -> Report {
    let message = format!(
        "namespace {ns} already exists and is not owned by this Tenant; nothing in it was touched. Delete or rename that namespace, or choose another Tenant name"
    );
    let not_applied = |type_| {
        Verdict::new(
            type_,
            Truth::Unknown,
            Reason::NamespaceConflict,
            format!("not applied: namespace {ns} belongs to someone else"),
        )
    };
    Report {
        namespace: None,
        endpoint: None,
        parts: vec![
            Verdict::new(
                NAMESPACE_READY,
                Truth::False,
                Reason::NamespaceConflict,
                message.clone(),
            ),
            not_applied(NETWORK_ISOLATED),
            not_applied(CREDENTIALS_BOUND),
            not_applied(SERVER_AVAILABLE),
        ],
        ready: Some(Verdict::new(
            READY,
            Truth::False,
            Reason::NamespaceConflict,
            message,
        )),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};

    fn condition(type_: &str, status: &str, message: &str) -> DeploymentCondition {
        DeploymentCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            message: Some(message.to_owned()),
            ..DeploymentCondition::default()
        }
    }

    #[test]
    fn a_refused_pod_creation_is_named_in_server_available() {
        let refused =
            "pods \"mcp-server-x\" is forbidden: pod rejected: RuntimeClass \"gvisor\" not found";
        let mut deployment = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                conditions: Some(vec![
                    condition(
                        "Available",
                        "False",
                        "Deployment does not have minimum availability.",
                    ),
                    condition("ReplicaFailure", "True", refused),
                ]),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        };
        let tenant = Tenant::new("acme", Default::default());
        let verdict = server(&tenant, &deployment, "bulkhead-acme");
        assert_eq!(verdict.status, Truth::False);
        assert!(verdict.message.contains(refused), "{}", verdict.message);

        // Without the condition the message says nothing about creation.
        if let Some(status) = deployment.status.as_mut() {
            status.conditions = Some(vec![condition(
                "Available",
                "False",
                "Deployment does not have minimum availability.",
            )]);
        }
        let verdict = server(&tenant, &deployment, "bulkhead-acme");
        assert!(
            !verdict.message.contains("cannot be created"),
            "{}",
            verdict.message
        );
    }

    fn unavailable(available: &str) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                conditions: Some(vec![condition(
                    "Available",
                    available,
                    "Deployment does not have minimum availability.",
                )]),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    #[test]
    fn a_server_that_is_not_available_names_the_oauth_issuer() {
        let tenant: Tenant =
            yaml_serde::from_str(include_str!("../../../../manifests/examples/oauth.yaml"))
                .unwrap();
        const ISSUER: &str = "the issuer https://login.example.com/realms/initech";
        // Unavailable, and still rolling out (no Available condition yet).
        for deployment in [unavailable("False"), Deployment::default()] {
            let verdict = server(&tenant, &deployment, "bulkhead-initech");
            assert_eq!(verdict.status, Truth::False);
            assert!(
                verdict.message.contains(ISSUER)
                    && verdict.message.contains("metadata and JWKS")
                    && verdict.message.contains("spec.auth.oauth.issuerNetwork"),
                "{}",
                verdict.message
            );
        }
        // Without oauth there is no issuer to name.
        let plain = Tenant::new("acme", Default::default());
        let verdict = server(&plain, &unavailable("False"), "bulkhead-acme");
        assert!(!verdict.message.contains("issuer"), "{}", verdict.message);
    }
}
