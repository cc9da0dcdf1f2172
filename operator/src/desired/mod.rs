//! Pure builders: one Tenant in, every Kubernetes object Bulkhead creates for
//! it out. One module per resource; nothing here talks to the API server, so
//! `render`, the controller and the tests share exactly the same objects.

pub mod children;
pub mod config_map;
pub mod context;
pub mod deployment;
pub mod names;
pub mod namespace;
pub mod network_policy;
pub mod quota;
pub mod rbac;
pub mod service;
pub mod service_account;

#[cfg(test)]
pub(crate) mod fixtures;

use bulkhead_crds::Tenant;
use bulkhead_crds::cidr::Cidr;
use bulkhead_crds::validation::{FieldError, InvalidTenant, NamespaceNaming, validate_tenant};

use crate::settings::OperatorSettings;
use context::BuildContext;

pub use children::TenantObjects;
pub use context::{endpoint, namespace_name};
pub use rbac::SECRET_READER_CLUSTER_ROLE;

/// A Tenant that passed every rule: the CRD's, again in code, and the ones
/// that depend on the operator's settings. Only a valid Tenant is built.
pub struct ValidTenant<'a> {
    ctx: BuildContext<'a>,
}

/// Validates the Tenant; the errors name every offending field.
pub fn validate<'a>(
    tenant: &'a Tenant,
    settings: &'a OperatorSettings,
) -> Result<ValidTenant<'a>, InvalidTenant> {
    validate_tenant(
        tenant,
        &NamespaceNaming {
            prefix: &settings.namespace_prefix,
            operator_namespace: &settings.operator_namespace,
        },
    )?;
    check_egress_against_cluster(tenant, settings)?;
    let id = tenant.metadata.name.as_deref().unwrap_or_default();
    Ok(ValidTenant {
        ctx: BuildContext {
            tenant,
            tenant_id: id,
            namespace: namespace_name(id, settings),
            settings,
        },
    })
}

impl ValidTenant<'_> {
    /// The tenant id (the Tenant's name).
    pub fn id(&self) -> &str {
        self.ctx.tenant_id
    }

    /// The tenant namespace.
    pub fn namespace(&self) -> &str {
        &self.ctx.namespace
    }

    /// The in-cluster URL of the tenant's MCP endpoint.
    pub fn endpoint(&self) -> String {
        endpoint(self.ctx.tenant_id, self.ctx.settings)
    }

    /// Builds every child object.
    ///
    /// Children carry both labels of [`crate::labels::child_labels`] and,
    /// when the Tenant has a uid (it was read from the API server), an
    /// ownerReference to it with `controller` and `blockOwnerDeletion` set.
    /// `Err` only when the server configuration cannot be written as YAML.
    pub fn build(&self) -> Result<TenantObjects, InvalidTenant> {
        let ctx = &self.ctx;
        let config_map = config_map::desired_config_map(ctx)?;
        Ok(TenantObjects {
            namespace: namespace::desired_namespace(ctx),
            service_account: service_account::desired_service_account(ctx),
            role_binding: rbac::desired_role_binding(ctx),
            network_policy: network_policy::desired_network_policy(ctx),
            resource_quota: quota::desired_resource_quota(ctx),
            limit_range: quota::desired_limit_range(ctx),
            service: service::desired_service(ctx),
            deployment: deployment::desired_deployment(ctx, &config_map),
            config_map,
        })
    }
}

/// Validates the Tenant and builds every child object ([`validate`], then
/// [`ValidTenant::build`]).
pub fn desired_objects(
    tenant: &Tenant,
    settings: &OperatorSettings,
) -> Result<TenantObjects, InvalidTenant> {
    validate(tenant, settings)?.build()
}

/// A spec range that lies inside a cluster range (but is not that range)
/// cannot be excepted (an `except` must lie inside its `cidr`) and would open
/// part of the pod or service network: refuse it.
fn check_egress_against_cluster(
    tenant: &Tenant,
    settings: &OperatorSettings,
) -> Result<(), InvalidTenant> {
    let cluster: Vec<Cidr> = settings
        .cluster_cidrs
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    let errors: Vec<FieldError> = tenant
        .spec
        .network
        .egress
        .cidrs
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            let cidr: Cidr = raw.parse().ok()?;
            let inside = cluster.iter().find(|c| c.strictly_contains(&cidr))?;
            Some(FieldError {
                field: format!("spec.network.egress.cidrs[{i}]"),
                reason: format!(
                    "{cidr} lies inside the cluster range {inside}; cluster ranges open only when named exactly"
                ),
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidTenant { errors })
    }
}

#[cfg(test)]
mod tests {
    use bulkhead_crds::Tenant;

    use super::fixtures::{FULL, MINIMAL, UID, live_tenant, objects};
    use super::*;
    use crate::labels::{MANAGED_BY_LABEL, TENANT_LABEL};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn metadata_of(objects: &TenantObjects) -> Vec<(&'static str, &ObjectMeta)> {
        vec![
            ("Namespace", &objects.namespace.metadata),
            ("ServiceAccount", &objects.service_account.metadata),
            ("RoleBinding", &objects.role_binding.metadata),
            ("NetworkPolicy", &objects.network_policy.metadata),
            ("ResourceQuota", &objects.resource_quota.metadata),
            ("LimitRange", &objects.limit_range.metadata),
            ("ConfigMap", &objects.config_map.metadata),
            ("Service", &objects.service.metadata),
            ("Deployment", &objects.deployment.metadata),
        ]
    }

    #[test]
    fn names_follow_the_settings() {
        let settings = OperatorSettings::default();
        assert_eq!(namespace_name("acme", &settings), "bulkhead-acme");
        assert_eq!(
            endpoint("acme", &settings),
            "http://mcp.bulkhead-acme.svc.cluster.local:8080/mcp"
        );
        let custom = OperatorSettings {
            namespace_prefix: "mcp-".into(),
            cluster_domain: "corp.internal".into(),
            ..OperatorSettings::default()
        };
        assert_eq!(
            endpoint("acme", &custom),
            "http://mcp.mcp-acme.svc.corp.internal:8080/mcp"
        );
    }

    #[test]
    fn every_child_is_labelled_owned_and_in_the_tenant_namespace() {
        let objects = objects(FULL);
        let owner = OwnerReference {
            api_version: "bulkhead.dev/v1alpha1".into(),
            kind: "Tenant".into(),
            name: "globex".into(),
            uid: UID.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        for (kind, meta) in metadata_of(&objects) {
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels[MANAGED_BY_LABEL], "bulkhead", "{kind}");
            assert_eq!(labels[TENANT_LABEL], "globex", "{kind}");
            // FULL is a Retain Tenant: its Namespace is recognised by the
            // UID annotation instead of an ownerReference.
            let expected_owners = (kind != "Namespace").then(|| vec![owner.clone()]);
            assert_eq!(meta.owner_references, expected_owners, "{kind}");
            let expected_namespace = (kind != "Namespace").then(|| "bulkhead-globex".to_owned());
            assert_eq!(meta.namespace, expected_namespace, "{kind}");
        }
        assert_eq!(
            objects.namespace.metadata.name.as_deref(),
            Some("bulkhead-globex")
        );
    }

    #[test]
    fn a_tenant_without_uid_gets_no_owner_references() {
        let mut tenant = live_tenant(MINIMAL);
        tenant.metadata.uid = None;
        let objects = desired_objects(&tenant, &OperatorSettings::default()).unwrap();
        for (kind, meta) in metadata_of(&objects) {
            assert_eq!(meta.owner_references, None, "{kind}");
        }
    }

    #[test]
    fn an_invalid_tenant_builds_nothing() {
        let mut tenant = live_tenant(FULL);
        tenant.spec.server.replicas = Some(-1);
        let error = desired_objects(&tenant, &OperatorSettings::default()).unwrap_err();
        assert!(error.names_field("spec.server.replicas"), "{error}");
    }

    #[test]
    fn the_operator_namespace_setting_reserves_its_id() {
        let tenant: Tenant = Tenant::new("ops", Default::default());
        let settings = OperatorSettings {
            operator_namespace: "bulkhead-ops".into(),
            ..OperatorSettings::default()
        };
        let error = desired_objects(&tenant, &settings).unwrap_err();
        assert!(
            error.names_field("metadata.name") && error.to_string().contains("reserved"),
            "{error}"
        );
    }

    #[test]
    fn part_of_a_cluster_range_is_refused_but_the_whole_range_may_be_named() {
        let mut tenant = live_tenant(MINIMAL);
        tenant.spec.network.egress.cidrs = vec!["10.244.3.0/24".into()];
        let error = desired_objects(&tenant, &OperatorSettings::default()).unwrap_err();
        assert!(error.names_field("spec.network.egress.cidrs[0]"), "{error}");
        assert!(error.to_string().contains("10.244.0.0/16"), "{error}");

        tenant.spec.network.egress.cidrs = vec!["10.244.0.0/16".into()];
        assert!(desired_objects(&tenant, &OperatorSettings::default()).is_ok());
    }

    #[test]
    fn apply_order_puts_isolation_and_rbac_before_the_server() {
        let kinds: Vec<String> = objects(MINIMAL)
            .to_json_in_apply_order()
            .unwrap()
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "RoleBinding",
                "NetworkPolicy",
                "ResourceQuota",
                "LimitRange",
                "ConfigMap",
                "Service",
                "Deployment"
            ]
        );
    }
}
