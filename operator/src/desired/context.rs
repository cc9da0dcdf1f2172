//! What every builder shares: the Tenant being built, where its objects
//! live, and the metadata and selector every child carries.

use std::collections::BTreeMap;

use bulkhead_crds::Tenant;
use bulkhead_crds::server_config::{MCP_PATH, MCP_PORT};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use super::names::{SERVER_APP_NAME, SERVICE_NAME};
use crate::labels::child_labels;
use crate::settings::OperatorSettings;

/// The namespace of a tenant: `<prefix><tenant id>`.
pub fn namespace_name(tenant_id: &str, settings: &OperatorSettings) -> String {
    format!("{}{tenant_id}", settings.namespace_prefix)
}

/// The in-cluster URL of a tenant's MCP endpoint.
pub fn endpoint(tenant_id: &str, settings: &OperatorSettings) -> String {
    format!(
        "http://{}.{}.svc.{}:{MCP_PORT}{MCP_PATH}",
        SERVICE_NAME,
        namespace_name(tenant_id, settings),
        settings.cluster_domain
    )
}

/// What every builder needs: the validated Tenant and where it lives.
pub(crate) struct BuildContext<'a> {
    pub tenant: &'a Tenant,
    pub tenant_id: &'a str,
    pub namespace: String,
    pub settings: &'a OperatorSettings,
}

impl BuildContext<'_> {
    /// Metadata of a child object: name, namespace (unless cluster-scoped),
    /// the two labels and the owner reference.
    pub fn metadata(&self, name: &str, namespaced: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: namespaced.then(|| self.namespace.clone()),
            labels: Some(child_labels(self.tenant_id)),
            owner_references: self.tenant.controller_owner_ref(&()).map(|owner| {
                vec![OwnerReference {
                    block_owner_deletion: Some(true),
                    ..owner
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    /// Labels that select the server pods.
    pub fn server_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                SERVER_APP_NAME.to_owned(),
            ),
            (
                crate::labels::TENANT_LABEL.to_owned(),
                self.tenant_id.to_owned(),
            ),
        ])
    }
}
