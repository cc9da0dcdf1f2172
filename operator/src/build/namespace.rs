//! The tenant's Namespace, under Pod Security Admission `restricted`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;

use super::BuildContext;

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

/// The tenant's namespace with the Bulkhead and Pod Security labels.
pub(crate) fn desired_namespace(ctx: &BuildContext<'_>) -> Namespace {
    let mut metadata = ctx.metadata(&ctx.namespace, false);
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
    use crate::build::fixtures::{MINIMAL, objects};

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
                    owner_references: namespace.metadata.owner_references.clone(),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            }
        );
    }
}
