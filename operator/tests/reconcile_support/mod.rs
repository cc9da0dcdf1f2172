//! An in-memory API server (kube-fake-client) behind a small tower layer
//! that counts requests and injects faults, shared by the reconcile tests
//! and the reconcile bench.
//!
//! What kube-fake-client 0.3 does differently from a real API server, and
//! how this harness deals with it:
//! - No watches: tests call the reconciler directly with the Tenant as the
//!   Controller would hand it over.
//! - Custom resources are always namespaced. The layer maps the
//!   cluster-scoped `/apis/bulkhead.dev/v1alpha1/tenants` onto a hidden
//!   namespace and strips that namespace from responses.
//! - Namespaces cannot be read or written over HTTP at all (its path parser
//!   takes `/api/v1/namespaces/x` for a namespaced path), so the layer keeps
//!   Namespaces itself ([`NamespaceStore`]): get, list by label, apply and
//!   merge patch (with the resourceVersion precondition), delete.
//! - Server-side apply is a JSON merge patch; `dryRun` is ignored.
//! - Deletes ignore finalizers and cascade only within a namespace, so the
//!   tests run a minimal garbage collector (delete what names a deleted
//!   owner) and set up "marked for deletion" Tenants directly.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use bulkhead_crds::Tenant;
use bulkhead_operator::controller::context::Context;
use bulkhead_operator::controller::metrics::Metrics;
use bulkhead_operator::controller::{error, reconcile};
use bulkhead_operator::settings::OperatorSettings;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode, Uri};
use k8s_openapi::api::apps::v1::Deployment;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, Client};
use kube_fake_client::ClientBuilder;
use serde_json::{Value, json};

const TENANTS_PATH: &str = "/apis/bulkhead.dev/v1alpha1/tenants";
const TENANTS_NAMESPACE: &str = "tenants-are-cluster-scoped";

/// Requests that reached the API server: reads, writes of objects, and
/// writes of Events (counted apart: they are notes to people, not state).
#[derive(Debug, Default)]
pub struct Requests {
    reads: AtomicUsize,
    writes: AtomicUsize,
    events: AtomicUsize,
}

impl Requests {
    /// `(reads, writes, event writes)` so far.
    pub fn snapshot(&self) -> (usize, usize, usize) {
        (
            self.reads.load(Ordering::SeqCst),
            self.writes.load(Ordering::SeqCst),
            self.events.load(Ordering::SeqCst),
        )
    }
}

/// Makes writes into one namespace fail like an overloaded API server (500),
/// or requests to some paths never get an answer (a hung connection).
#[derive(Debug, Default)]
pub struct Faults {
    failing_namespace: Mutex<Option<String>>,
    hanging_paths: Mutex<Option<String>>,
    rejected_paths: Mutex<Option<String>>,
}

impl Faults {
    /// Fail every write into `namespace` from now on (`None`: stop failing).
    pub fn fail_writes_in(&self, namespace: Option<&str>) {
        *self.failing_namespace.lock().unwrap() = namespace.map(str::to_owned);
    }

    /// Leave every request whose path contains `fragment` unanswered from
    /// now on (`None`: answer everything again).
    pub fn hang_requests_to(&self, fragment: Option<&str>) {
        *self.hanging_paths.lock().unwrap() = fragment.map(str::to_owned);
    }

    /// Reject every write whose path contains `fragment` as invalid (422),
    /// like an API server whose validation refuses the object.
    pub fn reject_writes_to(&self, fragment: Option<&str>) {
        *self.rejected_paths.lock().unwrap() = fragment.map(str::to_owned);
    }

    fn rejects(&self, path: &str) -> bool {
        self.rejected_paths
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|fragment| path.contains(fragment))
    }

    fn hangs(&self, path: &str) -> bool {
        self.hanging_paths
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|fragment| path.contains(fragment))
    }

    fn fails(&self, path: &str) -> bool {
        match self.failing_namespace.lock().unwrap().as_deref() {
            Some(ns) => path.contains(&format!("/namespaces/{ns}/")),
            None => false,
        }
    }
}

/// The layer: counts, injects faults, maps the Tenant path.
#[derive(Clone)]
struct Layer {
    fake: Client,
    namespaces: Arc<NamespaceStore>,
    requests: Arc<Requests>,
    faults: Arc<Faults>,
}

impl tower::Service<Request<Body>> for Layer {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let write = request.method() != http::Method::GET;
            let path = request.uri().path().to_owned();
            let counter = if !write {
                &this.requests.reads
            } else if path.starts_with("/apis/events.k8s.io/") {
                &this.requests.events
            } else {
                &this.requests.writes
            };
            counter.fetch_add(1, Ordering::SeqCst);
            if this.faults.hangs(&path) {
                std::future::pending::<()>().await;
            }
            if write && this.faults.rejects(&path) {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "Deployment.apps \"mcp-server\" is invalid: spec.template.spec.nodeSelector: Invalid value: \"bad key!\": name part must consist of alphanumeric characters",
                    "reason": "Invalid", "code": 422});
                return Ok(Response::builder()
                    .status(StatusCode::UNPROCESSABLE_ENTITY)
                    .header("content-type", "application/json")
                    .body(Body::from(status.to_string().into_bytes()))
                    .expect("response"));
            }
            if write && this.faults.fails(&path) {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "injected: etcd request timed out", "reason": "InternalError", "code": 500});
                return Ok(Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .header("content-type", "application/json")
                    .body(Body::from(status.to_string().into_bytes()))
                    .expect("response"));
            }
            if path == "/api/v1/namespaces"
                || path
                    .strip_prefix("/api/v1/namespaces/")
                    .is_some_and(|rest| !rest.contains('/'))
            {
                let method = request.method().clone();
                let query = request.uri().query().unwrap_or_default().to_owned();
                let content_type = request
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = request.into_body().collect_bytes().await?;
                let (status, value) =
                    this.namespaces
                        .handle(&method, &path, &query, &content_type, &body);
                return Ok(Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(value.to_string().into_bytes()))
                    .expect("response"));
            }
            let tenant_path = path.starts_with(TENANTS_PATH);
            if tenant_path {
                let rest = &path[TENANTS_PATH.len()..];
                let mapped = format!(
                    "/apis/bulkhead.dev/v1alpha1/namespaces/{TENANTS_NAMESPACE}/tenants{rest}"
                );
                let uri = match request.uri().query() {
                    Some(query) => format!("{mapped}?{query}"),
                    None => mapped,
                };
                *request.uri_mut() = uri.parse::<Uri>().expect("uri");
            }
            let response = this.fake.send(request).await?;
            if !tenant_path {
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let bytes = body.collect_bytes().await?;
            let bytes = match serde_json::from_slice::<Value>(&bytes) {
                Ok(mut value) => {
                    hide_tenant_namespace(&mut value);
                    serde_json::to_vec(&value).expect("json")
                }
                Err(_) => bytes.to_vec(),
            };
            Ok(Response::from_parts(parts, Body::from(bytes)))
        })
    }
}

/// Namespaces, kept by the layer because the fake cannot serve them.
#[derive(Debug, Default)]
pub struct NamespaceStore {
    objects: Mutex<BTreeMap<String, Value>>,
    versions: AtomicUsize,
}

impl NamespaceStore {
    fn insert(&self, mut object: Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("namespace name")
            .to_owned();
        self.stamp(&mut object, true);
        self.objects.lock().unwrap().insert(name, object);
    }

    fn stamp(&self, object: &mut Value, new: bool) {
        let version = self.versions.fetch_add(1, Ordering::SeqCst) + 1;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(version.to_string());
        if new {
            meta["uid"] = json!(format!("namespace-uid-{version}"));
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
    }

    fn handle(
        &self,
        method: &http::Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let name = path.strip_prefix("/api/v1/namespaces/").map(str::to_owned);
        let mut objects = self.objects.lock().unwrap();
        let not_found = |name: &str| {
            (
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                       "message": format!("namespaces \"{name}\" not found")}),
            )
        };
        match (method.as_str(), name) {
            ("GET", None) => {
                let selector = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("labelSelector="))
                    .map(|s| {
                        s.replace("%3D", "=")
                            .replace("%2C", ",")
                            .replace("%2F", "/")
                    })
                    .unwrap_or_default();
                let items: Vec<Value> = objects
                    .values()
                    .filter(|o| matches_labels(o, &selector))
                    .cloned()
                    .collect();
                (
                    StatusCode::OK,
                    json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("GET", Some(name)) => match objects.get(&name) {
                Some(object) => (StatusCode::OK, object.clone()),
                None => not_found(&name),
            },
            ("DELETE", Some(name)) => match objects.remove(&name) {
                Some(object) => (StatusCode::OK, object),
                None => not_found(&name),
            },
            ("PATCH", Some(name)) => {
                let patch: Value = serde_json::from_slice(body).expect("patch body");
                let apply = content_type.contains("apply-patch");
                match objects.get_mut(&name) {
                    None if apply => {
                        let mut object = patch;
                        object["metadata"]["name"] = json!(name);
                        self.stamp(&mut object, true);
                        objects.insert(name, object.clone());
                        (StatusCode::CREATED, object)
                    }
                    None => not_found(&name),
                    Some(object) => {
                        let wanted_version = patch["metadata"]["resourceVersion"].as_str();
                        if wanted_version.is_some_and(|v| {
                            Some(v) != object["metadata"]["resourceVersion"].as_str()
                        }) {
                            return (
                                StatusCode::CONFLICT,
                                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
                                       "code": 409, "message": "the object has been modified"}),
                            );
                        }
                        merge(object, &patch);
                        self.stamp(object, false);
                        (StatusCode::OK, object.clone())
                    }
                }
            }
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 405, "message": "not supported by the test layer"}),
            ),
        }
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    if let Some(map) = target.as_object_mut() {
                        map.remove(key);
                    }
                } else {
                    merge(&mut target[key.as_str()], value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Equality-based label selectors (`a=b,c=d`), the only kind the operator uses.
fn matches_labels(object: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|r| !r.is_empty())
        .all(|requirement| match requirement.split_once('=') {
            Some((key, value)) => object["metadata"]["labels"][key].as_str() == Some(value),
            None => false,
        })
}

fn hide_tenant_namespace(value: &mut Value) {
    if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
        items.iter_mut().for_each(hide_tenant_namespace);
    }
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("namespace");
    }
}

/// One in-memory cluster and the operator's context on it.
pub struct World {
    pub client: Client,
    pub requests: Arc<Requests>,
    pub faults: Arc<Faults>,
    pub ctx: Arc<Context>,
}

/// Builds a cluster holding `objects` (JSON, each with apiVersion and kind).
pub async fn world(objects: Vec<Value>) -> World {
    world_with(objects, true).await
}

/// A cluster on which the Tenant CRD is not installed.
pub async fn world_without_tenant_crd() -> World {
    world_with(Vec::new(), false).await
}

async fn world_with(objects: Vec<Value>, tenant_crd: bool) -> World {
    let namespaces = Arc::new(NamespaceStore::default());
    let objects = objects
        .into_iter()
        .filter_map(|mut object| {
            if object["kind"] == "Namespace" {
                namespaces.insert(object);
                return None;
            }
            if object["kind"] == "Tenant" {
                object["metadata"]["namespace"] = json!(TENANTS_NAMESPACE);
            }
            Some(object)
        })
        .collect();
    let mut builder = ClientBuilder::new();
    if tenant_crd {
        builder = builder.with_resource::<Tenant>();
    }
    let fake = builder
        .with_status_subresource::<Deployment>()
        .with_runtime_objects(objects)
        .build()
        .await
        .expect("fake API server");
    let requests = Arc::new(Requests::default());
    let faults = Arc::new(Faults::default());
    let layer = Layer {
        fake,
        namespaces,
        requests: requests.clone(),
        faults: faults.clone(),
    };
    let client = Client::new(layer, "default");
    let ctx = Arc::new(Context::new(
        client.clone(),
        OperatorSettings::default(),
        Arc::new(Metrics::default()),
        Some("test".into()),
    ));
    World {
        client,
        requests,
        faults,
        ctx,
    }
}

/// A valid Tenant with one credential and one connector.
///
/// The empty `status` makes the fake treat `status` as a subresource (its
/// builder method for that needs a `Default` type, which Tenant is not).
pub fn tenant(name: &str, deletion_policy: &str) -> Value {
    json!({
        "apiVersion": "bulkhead.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "credentials": [{"name": "github", "key": "github_token"}],
            "connectors": [{"name": "github", "type": "github", "baseUrl": "https://api.github.com", "credential": "github"}],
            "network": {"ingressFrom": [{"matchLabels": {"kubernetes.io/metadata.name": "mcp-gateway"}}]},
            "deletionPolicy": deletion_policy,
        },
        "status": {}
    })
}

/// Outcome of one reconcile and the API requests it made.
pub struct Reconciled {
    pub result: Result<Action, error::Error>,
    pub reads: usize,
    pub writes: usize,
    pub events: usize,
}

impl World {
    /// Reads the Tenant as the Controller's watch would deliver it.
    pub async fn fetch(&self, name: &str) -> DeserializeGuard<Tenant> {
        let api: Api<DeserializeGuard<Tenant>> = Api::all(self.client.clone());
        api.get(name).await.expect("Tenant exists")
    }

    /// Reconciles the current version of Tenant `name` once, counting only
    /// the reconcile's own requests.
    pub async fn reconcile(&self, name: &str) -> Reconciled {
        let object = Arc::new(self.fetch(name).await);
        let before = self.requests.snapshot();
        let result = reconcile(object, self.ctx.clone()).await;
        let after = self.requests.snapshot();
        Reconciled {
            result,
            reads: after.0 - before.0,
            writes: after.1 - before.1,
            events: after.2 - before.2,
        }
    }

    /// The Tenant as stored now.
    pub async fn tenant(&self, name: &str) -> Tenant {
        let api: Api<Tenant> = Api::all(self.client.clone());
        api.get(name).await.expect("Tenant exists")
    }
}
