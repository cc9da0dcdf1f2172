//! Tenants for the builders' unit tests.

use bulkhead_crds::Tenant;

use super::{TenantObjects, desired_objects};
use crate::settings::OperatorSettings;

/// The example Tenants shipped in `manifests/examples/`.
pub const MINIMAL: &str = include_str!("../../../manifests/examples/minimal.yaml");
pub const FULL: &str = include_str!("../../../manifests/examples/full.yaml");
pub const OAUTH: &str = include_str!("../../../manifests/examples/oauth.yaml");
/// The uid the API server would have given the Tenant.
pub const UID: &str = "6f1d9c2e-4b1a-4a39-9d57-0c3e1f7b8a21";

/// Parses a Tenant and gives it a uid, as if read from the API server.
pub fn live_tenant(yaml: &str) -> Tenant {
    let mut tenant: Tenant = yaml_serde::from_str(yaml).unwrap();
    tenant.metadata.uid = Some(UID.to_owned());
    tenant
}

/// The objects of a live Tenant under the default settings.
pub fn objects(yaml: &str) -> TenantObjects {
    desired_objects(&live_tenant(yaml), &OperatorSettings::default()).unwrap()
}
