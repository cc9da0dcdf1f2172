//! Reading a Tenant's nine children as the API server stores them, for the
//! deletion, adoption and leader election tests, which compare them before
//! and after something happened (resourceVersions, owner references, specs).

#![allow(dead_code, reason = "each test binary uses a part of this module")]

use anyhow::{Context, Result};
use bulkhead_envtest::{AuditEvent, OPERATOR_USER};
use bulkhead_operator::desired::TenantObjects;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};

/// One child as stored: `Kind/name` and the object, `None` when absent.
pub type LiveChild = (String, Option<DynamicObject>);

/// Every child in `objects` (as the operator builds them), read back from
/// the API server in apply order.
pub async fn live_children(client: &Client, objects: &TenantObjects) -> Result<Vec<LiveChild>> {
    let mut live = Vec::new();
    for desired in objects.to_json_in_apply_order()? {
        let text = |key: &str| desired[key].as_str().unwrap_or_default().to_owned();
        let (api_version, kind) = (text("apiVersion"), text("kind"));
        let name = desired["metadata"]["name"]
            .as_str()
            .context("child without a name")?;
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &kind));
        let api: Api<DynamicObject> = match desired["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let object = api
            .get_opt(name)
            .await
            .with_context(|| format!("read {kind} {name}"))?;
        live.push((format!("{kind}/{name}"), object));
    }
    Ok(live)
}

/// `Kind/name -> resourceVersion` of the children that exist.
pub fn resource_versions(children: &[LiveChild]) -> Vec<(String, String)> {
    children
        .iter()
        .filter_map(|(name, object)| {
            let version = object.as_ref()?.metadata.resource_version.clone()?;
            Some((name.clone(), version))
        })
        .collect()
}

/// Writes by the operator's ServiceAccount to namespace `ns` itself or to
/// anything inside it, as `summary()` lines.
pub fn operator_writes_in(events: &[AuditEvent], ns: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.username() == OPERATOR_USER && e.is_write())
        .filter(|e| {
            let object = e.object();
            object.namespace == ns || (object.resource == "namespaces" && object.name == ns)
        })
        .map(AuditEvent::summary)
        .collect()
}
