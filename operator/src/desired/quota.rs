//! ResourceQuota and LimitRange: one tenant cannot starve the others.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::context::BuildContext;
use super::names::{
    DEFAULT_CONTAINER_CPU_LIMIT, DEFAULT_CONTAINER_CPU_REQUEST, DEFAULT_CONTAINER_MEMORY_LIMIT,
    DEFAULT_CONTAINER_MEMORY_REQUEST,
};

/// Name of the ResourceQuota in the tenant namespace.
pub const RESOURCE_QUOTA_NAME: &str = "bulkhead-tenant-quota";
/// Name of the LimitRange in the tenant namespace.
pub const LIMIT_RANGE_NAME: &str = "bulkhead-tenant-limits";

/// Namespace CPU (requests and limits) when the spec sets none.
pub const DEFAULT_QUOTA_CPU: &str = "2";
/// Namespace memory (requests and limits) when the spec sets none.
pub const DEFAULT_QUOTA_MEMORY: &str = "2Gi";
/// Pods when the spec sets none: room for replicas plus a rolling update.
pub const DEFAULT_QUOTA_PODS: i32 = 10;
/// Services when the spec sets none (the server needs one).
pub const DEFAULT_QUOTA_SERVICES: i32 = 2;
/// ConfigMaps when the spec sets none (server config and `kube-root-ca.crt`).
pub const DEFAULT_QUOTA_CONFIG_MAPS: i32 = 5;
/// Secrets when the spec sets none (credentials and API keys).
pub const DEFAULT_QUOTA_SECRETS: i32 = 5;
/// PersistentVolumeClaims when the spec sets none: the server keeps no state.
pub const DEFAULT_QUOTA_PVCS: i32 = 0;

fn quantity(value: &str) -> Quantity {
    Quantity(value.to_owned())
}

fn count(value: i32) -> Quantity {
    Quantity(value.to_string())
}

/// The namespace's quota: compute, pods, object counts, and no
/// LoadBalancer or NodePort Services (a tenant is reached only through the
/// cluster network, never directly from outside).
pub(crate) fn desired_resource_quota(ctx: &BuildContext<'_>) -> ResourceQuota {
    let spec = &ctx.tenant.spec.quota;
    let cpu = spec
        .cpu
        .clone()
        .unwrap_or_else(|| quantity(DEFAULT_QUOTA_CPU));
    let memory = spec
        .memory
        .clone()
        .unwrap_or_else(|| quantity(DEFAULT_QUOTA_MEMORY));
    let hard = BTreeMap::from([
        ("requests.cpu".to_owned(), cpu.clone()),
        ("limits.cpu".to_owned(), cpu),
        ("requests.memory".to_owned(), memory.clone()),
        ("limits.memory".to_owned(), memory),
        (
            "pods".to_owned(),
            count(spec.pods.unwrap_or(DEFAULT_QUOTA_PODS)),
        ),
        (
            "services".to_owned(),
            count(spec.services.unwrap_or(DEFAULT_QUOTA_SERVICES)),
        ),
        ("services.loadbalancers".to_owned(), count(0)),
        ("services.nodeports".to_owned(), count(0)),
        (
            "configmaps".to_owned(),
            count(spec.config_maps.unwrap_or(DEFAULT_QUOTA_CONFIG_MAPS)),
        ),
        (
            "secrets".to_owned(),
            count(spec.secrets.unwrap_or(DEFAULT_QUOTA_SECRETS)),
        ),
        (
            "persistentvolumeclaims".to_owned(),
            count(spec.persistent_volume_claims.unwrap_or(DEFAULT_QUOTA_PVCS)),
        ),
    ]);
    ResourceQuota {
        metadata: ctx.metadata(RESOURCE_QUOTA_NAME, true),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

/// Default requests and limits for containers that state none, so every pod
/// fits the quota (a compute quota refuses pods without requests and limits).
pub(crate) fn desired_limit_range(ctx: &BuildContext<'_>) -> LimitRange {
    let resources = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), quantity(cpu)),
            ("memory".to_owned(), quantity(memory)),
        ])
    };
    LimitRange {
        metadata: ctx.metadata(LIMIT_RANGE_NAME, true),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_owned(),
                default: Some(resources(
                    DEFAULT_CONTAINER_CPU_LIMIT,
                    DEFAULT_CONTAINER_MEMORY_LIMIT,
                )),
                default_request: Some(resources(
                    DEFAULT_CONTAINER_CPU_REQUEST,
                    DEFAULT_CONTAINER_MEMORY_REQUEST,
                )),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::{FULL, MINIMAL, objects};

    fn hard(objects: &crate::desired::TenantObjects) -> BTreeMap<String, String> {
        let quota = objects.resource_quota.spec.clone().unwrap();
        quota
            .hard
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn quota_defaults_bound_compute_pods_and_objects() {
        assert_eq!(
            hard(&objects(MINIMAL)),
            map(&[
                ("requests.cpu", "2"),
                ("limits.cpu", "2"),
                ("requests.memory", "2Gi"),
                ("limits.memory", "2Gi"),
                ("pods", "10"),
                ("services", "2"),
                ("services.loadbalancers", "0"),
                ("services.nodeports", "0"),
                ("configmaps", "5"),
                ("secrets", "5"),
                ("persistentvolumeclaims", "0"),
            ])
        );
    }

    #[test]
    fn quota_follows_the_spec_but_never_opens_external_services() {
        assert_eq!(
            hard(&objects(FULL)),
            map(&[
                ("requests.cpu", "4"),
                ("limits.cpu", "4"),
                ("requests.memory", "4Gi"),
                ("limits.memory", "4Gi"),
                ("pods", "8"),
                ("services", "2"),
                ("services.loadbalancers", "0"),
                ("services.nodeports", "0"),
                ("configmaps", "5"),
                ("secrets", "5"),
                ("persistentvolumeclaims", "0"),
            ])
        );
    }

    #[test]
    fn limit_range_gives_every_container_requests_and_limits() {
        let objects = objects(MINIMAL);
        assert_eq!(
            objects.limit_range.metadata.name.as_deref(),
            Some(LIMIT_RANGE_NAME)
        );
        let limits = objects.limit_range.spec.unwrap().limits;
        assert_eq!(
            limits,
            vec![LimitRangeItem {
                type_: "Container".into(),
                default: Some(BTreeMap::from([
                    ("cpu".into(), quantity("500m")),
                    ("memory".into(), quantity("256Mi")),
                ])),
                default_request: Some(BTreeMap::from([
                    ("cpu".into(), quantity("100m")),
                    ("memory".into(), quantity("64Mi")),
                ])),
                ..LimitRangeItem::default()
            }]
        );
    }
}
