//! Scoped secret access: the server may read its own two Secrets, nothing else.
//!
//! Each tenant gets a RoleBinding, in its own namespace, to one shared
//! ClusterRole ([`SECRET_READER_CLUSTER_ROLE`]) that allows `get` and `watch`
//! on Secrets limited by `resourceNames` to `bulkhead-credentials` and
//! `bulkhead-api-keys`. A RoleBinding grants a ClusterRole's rules only
//! inside the binding's namespace, so the server reads exactly its own
//! tenant's two Secrets.
//!
//! Why one ClusterRole rather than a Role per tenant: to create a Role the
//! operator would have to hold every right the Role grants (Kubernetes
//! refuses privilege escalation), that is read access to Secrets in every
//! tenant namespace. With a shared ClusterRole the operator needs only the
//! `bind` verb on that one ClusterRole (by `resourceNames`) and holds no
//! right to read any Secret itself; the rules live in one reviewed manifest
//! (`manifests/operator/secret-reader-clusterrole.yaml`) instead of being
//! generated per tenant.

use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};

use super::context::BuildContext;
use super::names::SERVICE_ACCOUNT_NAME;

/// Name of the one ClusterRole the per-tenant RoleBinding points at
/// (get/watch on Secrets bulkhead-credentials and bulkhead-api-keys only).
pub const SECRET_READER_CLUSTER_ROLE: &str = "bulkhead-tenant-secret-reader";
/// Name of the RoleBinding in the tenant namespace.
pub const ROLE_BINDING_NAME: &str = "mcp-server-secret-reader";

/// Binds the secret reader ClusterRole to the server's ServiceAccount, in the
/// tenant's namespace only.
pub(crate) fn desired_role_binding(ctx: &BuildContext<'_>) -> RoleBinding {
    RoleBinding {
        metadata: ctx.metadata(ROLE_BINDING_NAME, true),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: SECRET_READER_CLUSTER_ROLE.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: SERVICE_ACCOUNT_NAME.to_owned(),
            namespace: Some(ctx.namespace.clone()),
            api_group: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::{FULL, objects};

    #[test]
    fn role_binding_grants_the_secret_reader_to_the_server_in_its_own_namespace_only() {
        let binding = objects(FULL).role_binding;
        assert_eq!(
            binding.metadata.name.as_deref(),
            Some("mcp-server-secret-reader")
        );
        assert_eq!(
            binding.metadata.namespace.as_deref(),
            Some("bulkhead-globex")
        );
        assert_eq!(
            binding.role_ref,
            RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: "bulkhead-tenant-secret-reader".into(),
            }
        );
        assert_eq!(
            binding.subjects,
            Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: "mcp-server".into(),
                namespace: Some("bulkhead-globex".into()),
                api_group: None,
            }])
        );
    }
}
