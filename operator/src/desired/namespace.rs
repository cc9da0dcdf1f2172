//! The tenant's Namespace, under Pod Security Admission `restricted`.

use std::collections::BTreeMap;

use bulkhead_crds::tenant::DeletionPolicy;
use k8s_openapi::api::core::v1::Namespace;

use super::context::BuildContext;
use crate::labels::TENANT_UID_ANNOTATION;

/// Pod Security Admission labels: every mode (`enforce` refuses, `audit`
/// records, `warn` tells the client) at level `restricted`, following the
/// newest version of the standard.
pub const POD_SECURITY_LABELS: [(&str, &str); 6] = [
    ("pod-security.kubernetes.io/enforce", "restricted"),
    ("pod-security.kubernetes.io/enforce-version", "latest"),
    ("pod-security.kubernetes.io/audit", "restricted"),
    ("pod-security.kubernetes.io/audit-version", "latest"),
    ("pod-security.kubernetes.io/warn", "restricted"),
    ("pod-security.kubernetes.io/warn-version", "latest"),
];

/// The tenant's namespace with the Bulkhead and Pod Security labels, and
/// the Tenant's UID as an annotation.
///
/// Under `deletionPolicy: Retain` the namespace has no ownerReference: the
/// garbage collector deletes every dependent of a Tenant deleted in the
/// foreground (`kubectl delete --cascade=foreground`, Argo CD) before any
/// finalizer can release it, and it deletes them too when the Tenant goes
/// before the operator has added its finalizer. Without an ownerReference
/// nothing can cascade into a retained namespace and the Secrets the
/// platform team put there.
pub(crate) fn desired_namespace(ctx: &BuildContext<'_>) -> Namespace {
    let mut metadata = ctx.metadata(&ctx.namespace, false);
    if ctx.tenant.spec.deletion_policy == DeletionPolicy::Retain {
        metadata.owner_references = None;
    }
    if let Some(uid) = &ctx.tenant.metadata.uid {
        metadata.annotations = Some(BTreeMap::from([(
            TENANT_UID_ANNOTATION.to_owned(),
            uid.clone(),
        )]));
    }
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.extend(
        POD_SECURITY_LABELS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Namespace {
        metadata,
        ..Namespace::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::desired::fixtures::{MINIMAL, objects};

    #[test]
    fn namespace_enforces_restricted_pod_security_in_every_mode() {
        let namespace = objects(MINIMAL).namespace;
        let labels: BTreeMap<String, String> = [
            ("app.kubernetes.io/managed-by", "bulkhead"),
            ("bulkhead.dev/tenant", "acme"),
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/enforce-version", "latest"),
            ("pod-security.kubernetes.io/audit", "restricted"),
            ("pod-security.kubernetes.io/audit-version", "latest"),
            ("pod-security.kubernetes.io/warn", "restricted"),
            ("pod-security.kubernetes.io/warn-version", "latest"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            namespace,
            Namespace {
                metadata: ObjectMeta {
                    name: Some("bulkhead-acme".into()),
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        "bulkhead.dev/tenant-uid".to_owned(),
                        crate::desired::fixtures::UID.to_owned()
                    )])),
                    owner_references: namespace.metadata.owner_references.clone(),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            }
        );
    }

    #[test]
    fn only_a_delete_tenant_owns_its_namespace() {
        let mut tenant = crate::desired::fixtures::live_tenant(MINIMAL);
        tenant.spec.deletion_policy = DeletionPolicy::Delete;
        let owned = crate::desired::desired_objects(&tenant, &Default::default())
            .unwrap()
            .namespace;
        let owners = owned.metadata.owner_references.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, crate::desired::fixtures::UID);

        tenant.spec.deletion_policy = DeletionPolicy::Retain;
        let retained = crate::desired::desired_objects(&tenant, &Default::default())
            .unwrap()
            .namespace;
        assert_eq!(retained.metadata.owner_references, None);
        assert_eq!(
            retained.metadata.annotations.unwrap()[TENANT_UID_ANNOTATION],
            crate::desired::fixtures::UID
        );
    }
}
