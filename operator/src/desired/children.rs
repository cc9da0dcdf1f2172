//! The one list of child kinds: [`TenantObjects`] names every kind Bulkhead
//! creates for a Tenant, and [`TenantObjects::visit`] walks them in apply
//! order through an exhaustive destructure. Applying, pruning, releasing and
//! watching all go through that walk, so a new kind is handled everywhere
//! once it has a field and its place in the order, and does not compile
//! before.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Every object Bulkhead creates for one Tenant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantObjects {
    /// The tenant's namespace, with Pod Security Admission `restricted`.
    pub namespace: Namespace,
    /// The server's ServiceAccount (no token automount).
    pub service_account: ServiceAccount,
    /// Binds [`super::SECRET_READER_CLUSTER_ROLE`] to the server's ServiceAccount.
    pub role_binding: RoleBinding,
    /// Default deny plus the allowed ingress and egress.
    pub network_policy: NetworkPolicy,
    /// Namespace-wide resource and object limits.
    pub resource_quota: ResourceQuota,
    /// Default requests and limits of containers.
    pub limit_range: LimitRange,
    /// The server configuration.
    pub config_map: ConfigMap,
    /// The server's Service.
    pub service: Service,
    /// The server.
    pub deployment: Deployment,
}

/// Where objects of a child kind live: cluster-wide (the Namespace) or in
/// the tenant namespace (everything else). Implemented for the two scopes
/// `k8s-openapi` gives its types.
pub trait ChildScope {
    /// True for cluster-scoped kinds.
    const CLUSTER_WIDE: bool;

    /// A handle on objects of kind `K`; `namespace` is the tenant namespace
    /// and is ignored for cluster-scoped kinds. Making the handle sends no
    /// request.
    fn api<K>(client: Client, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = Self, DynamicType = ()>;
}

impl ChildScope for NamespaceResourceScope {
    const CLUSTER_WIDE: bool = false;

    fn api<K>(client: Client, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = Self, DynamicType = ()>,
    {
        Api::namespaced(client, namespace)
    }
}

impl ChildScope for ClusterResourceScope {
    const CLUSTER_WIDE: bool = true;

    fn api<K>(client: Client, _namespace: &str) -> Api<K>
    where
        K: Resource<Scope = Self, DynamicType = ()>,
    {
        Api::all(client)
    }
}

/// What the controller needs of a child kind: a typed Kubernetes object of
/// a known scope that can be compared, applied and listed.
pub trait ChildKind:
    Resource<DynamicType = (), Scope: ChildScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> ChildKind for K where
    K: Resource<DynamicType = (), Scope: ChildScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A handle on the objects of kind `K` for the tenant namespace `namespace`.
pub fn child_api<K: ChildKind>(client: &Client, namespace: &str) -> Api<K> {
    <K::Scope as ChildScope>::api(client.clone(), namespace)
}

/// The kind name of `K`, e.g. `Deployment`.
pub fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}

/// Called once per child, in apply order.
pub trait ChildVisitor<'a> {
    /// Visits one child object.
    fn visit<K: ChildKind>(&mut self, object: &'a K);
}

/// Called once per child kind, in apply order.
pub trait KindVisitor {
    /// Visits one child kind.
    fn visit<K: ChildKind>(&mut self);
}

impl TenantObjects {
    /// Visits every child in the order they must be applied: the namespace,
    /// then identity and RBAC, then isolation and limits, then configuration,
    /// Service and last the server, so no server pod can start before its
    /// fences exist.
    pub fn visit<'a>(&'a self, visitor: &mut impl ChildVisitor<'a>) {
        // No `..`: a new field does not compile until it has its place here.
        let Self {
            namespace,
            service_account,
            role_binding,
            network_policy,
            resource_quota,
            limit_range,
            config_map,
            service,
            deployment,
        } = self;
        visitor.visit(namespace);
        visitor.visit(service_account);
        visitor.visit(role_binding);
        visitor.visit(network_policy);
        visitor.visit(resource_quota);
        visitor.visit(limit_range);
        visitor.visit(config_map);
        visitor.visit(service);
        visitor.visit(deployment);
    }

    /// Visits every child kind, in apply order (for work that needs kinds,
    /// not objects: releasing and watching).
    pub fn visit_kinds(visitor: &mut impl KindVisitor) {
        struct Kinds<'v, V>(&'v mut V);
        impl<V: KindVisitor> ChildVisitor<'_> for Kinds<'_, V> {
            fn visit<K: ChildKind>(&mut self, _object: &K) {
                self.0.visit::<K>();
            }
        }
        Self::default().visit(&mut Kinds(visitor));
    }

    /// Every object as JSON, in apply order.
    pub fn to_json_in_apply_order(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        struct ToJson(Vec<Result<serde_json::Value, serde_json::Error>>);
        impl ChildVisitor<'_> for ToJson {
            fn visit<K: ChildKind>(&mut self, object: &K) {
                self.0.push(serde_json::to_value(object));
            }
        }
        let mut json = ToJson(Vec::new());
        self.visit(&mut json);
        json.0.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_visited_in_apply_order_with_their_scope() {
        struct Names(Vec<(String, bool)>);
        impl KindVisitor for Names {
            fn visit<K: ChildKind>(&mut self) {
                self.0
                    .push((kind_of::<K>(), <K::Scope as ChildScope>::CLUSTER_WIDE));
            }
        }
        let mut names = Names(Vec::new());
        TenantObjects::visit_kinds(&mut names);
        let expected = [
            ("Namespace", true),
            ("ServiceAccount", false),
            ("RoleBinding", false),
            ("NetworkPolicy", false),
            ("ResourceQuota", false),
            ("LimitRange", false),
            ("ConfigMap", false),
            ("Service", false),
            ("Deployment", false),
        ];
        let expected: Vec<(String, bool)> = expected
            .iter()
            .map(|(kind, cluster)| ((*kind).to_owned(), *cluster))
            .collect();
        assert_eq!(names.0, expected);
    }
}
