//! Labels and the field manager every child object carries.

use std::collections::BTreeMap;

/// Label naming the tool that manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on every object Bulkhead creates.
pub const MANAGED_BY_VALUE: &str = "bulkhead";
/// Label naming the tenant an object belongs to.
pub const TENANT_LABEL: &str = "bulkhead.dev/tenant";
/// Annotation on a tenant Namespace naming the UID of the Tenant it belongs
/// to. A `Retain` Tenant's Namespace carries no ownerReference (so no
/// deletion of the Tenant, foreground or not, can cascade into it); this
/// annotation is how the operator still recognises it as its own.
pub const TENANT_UID_ANNOTATION: &str = "bulkhead.dev/tenant-uid";
/// Server-side apply field manager of the operator.
pub const FIELD_MANAGER: &str = "bulkhead-operator";

/// The labels every child object of a Tenant carries.
pub fn child_labels(tenant_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (TENANT_LABEL.to_owned(), tenant_id.to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_labels_name_the_manager_and_the_tenant() {
        let labels = child_labels("acme");
        assert_eq!(labels.len(), 2);
        assert_eq!(labels[MANAGED_BY_LABEL], "bulkhead");
        assert_eq!(labels[TENANT_LABEL], "acme");
    }
}
