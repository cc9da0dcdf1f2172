#!/usr/bin/env bash
# Bulkhead's end-to-end suite on a real cluster.
#
# Creates a throwaway kind cluster whose CNI enforces NetworkPolicy, builds
# the operator and server images from this checkout, loads them into kind,
# installs the CRD and the operator from manifests/ (through
# tests/e2e/overlay), runs the Rust tests in tests/e2e/tests, and deletes
# the cluster again.
#
# Without a reachable Docker engine, kind, kubectl or cargo it says that the
# suite was skipped and why, and exits 0 (set BULKHEAD_E2E_REQUIRED=1 to
# make that an error instead, e.g. in a CI job that must run it).
#
# Usage: tests/e2e/run.sh [extra cargo test arguments, e.g. a test name]
#
# Environment:
#   KEEP_CLUSTER=1                   keep the cluster (and print how to use it)
#   BULKHEAD_E2E_CLUSTER=name        kind cluster name (default bulkhead-e2e)
#   BULKHEAD_E2E_REUSE_CLUSTER=1     use an existing cluster of that name
#   BULKHEAD_E2E_SKIP_BUILD=1        use the :e2e images already in Docker
#   BULKHEAD_E2E_TEST_THREADS=n      tests run in parallel (default 2)
#   BULKHEAD_E2E_REQUIRED=1          missing prerequisites fail instead of skip
#   BULKHEAD_E2E_WORKDIR=dir         kubeconfig and logs (default under $TMPDIR)
set -euo pipefail

# --- Pinned versions ------------------------------------------------------
# kind >= v0.24.0 ships kindnet with NetworkPolicy enforcement
# (sigs.k8s.io/kube-network-policies); v0.33.0 is the release this suite is
# written against, and the node image is one pre-built for it, by digest.
readonly KIND_VERSION="v0.33.0"
readonly KIND_MIN_VERSION="0.24.0"
readonly KIND_NODE_IMAGE="kindest/node:v1.35.8@sha256:07b2536e30b803ed61d1677a79df6115f798ce64c80f9e22f6ed45afd09323c0"
# Probe pods (sh + curl) and the stand-in cloud metadata endpoint.
readonly CURL_IMAGE="curlimages/curl:8.16.0"
readonly METADATA_IMAGE="busybox:1.37.0"
readonly METADATA_IP="169.254.169.254"
# Images built from this checkout; tests/e2e/overlay points the operator at
# both tags.
readonly OPERATOR_IMAGE="ghcr.io/bulkhead-dev/bulkhead-operator:e2e"
readonly SERVER_IMAGE="ghcr.io/bulkhead-dev/bulkhead-server:e2e"
readonly OPERATOR_NAMESPACE="bulkhead-system"
readonly OPERATOR_DEPLOYMENT="bulkhead-operator"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly REPO_ROOT
readonly E2E_DIR="$REPO_ROOT/tests/e2e"
readonly CLUSTER_NAME="${BULKHEAD_E2E_CLUSTER:-bulkhead-e2e}"
readonly KUBE_CONTEXT="kind-$CLUSTER_NAME"
readonly METADATA_CONTAINER="$CLUSTER_NAME-metadata"
readonly KIND_NETWORK="${KIND_EXPERIMENTAL_DOCKER_NETWORK:-kind}"
readonly WORKDIR="${BULKHEAD_E2E_WORKDIR:-${TMPDIR:-/tmp}/bulkhead-e2e-$CLUSTER_NAME}"
readonly KUBECONFIG_FILE="$WORKDIR/kubeconfig"

log() { printf '==> e2e: %s\n' "$*"; }
die() {
  printf 'e2e: FAILED: %s\n' "$*" >&2
  exit 1
}

# Prints why the suite did not run. Exits 0, or 1 with BULKHEAD_E2E_REQUIRED=1.
skip() {
  printf '\n'
  printf 'e2e: SKIPPED: %s\n' "$1"
  printf 'e2e: no end-to-end test ran; nothing was checked against a cluster.\n'
  printf 'e2e: to run the suite you need a running Docker engine, kind >= v%s (written against %s), kubectl and cargo; see the README section "End-to-end suite on a real cluster".\n' \
    "$KIND_MIN_VERSION" "$KIND_VERSION"
  if [[ "${BULKHEAD_E2E_REQUIRED:-0}" == "1" ]]; then
    printf 'e2e: BULKHEAD_E2E_REQUIRED=1, so a skip is an error.\n' >&2
    exit 1
  fi
  exit 0
}

# True when version $1 (x.y.z) is at least $2.
version_at_least() {
  local IFS=.
  local -a have want
  read -r -a have <<<"$1"
  read -r -a want <<<"$2"
  local i
  for i in 0 1 2; do
    if ((${have[i]:-0} != ${want[i]:-0})); then
      ((${have[i]:-0} > ${want[i]:-0}))
      return
    fi
  done
  return 0
}

check_prerequisites() {
  command -v docker >/dev/null 2>&1 || skip "docker is not installed"
  local docker_error
  if ! docker_error="$(docker info --format '{{.ServerVersion}}' 2>&1 >/dev/null)"; then
    skip "no reachable Docker engine (docker info: ${docker_error//$'\n'/ })"
  fi
  command -v kind >/dev/null 2>&1 || skip "kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation, $KIND_VERSION)"
  command -v kubectl >/dev/null 2>&1 || skip "kubectl is not installed"
  command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"

  local kind_version
  kind_version="$(kind version | sed -n 's/^kind v\([0-9][0-9.]*\).*/\1/p')"
  [[ -n "$kind_version" ]] || die "cannot read the kind version from: $(kind version)"
  # An older kind would run every test on a CNI that ignores NetworkPolicy.
  version_at_least "$kind_version" "$KIND_MIN_VERSION" ||
    die "kind v$kind_version does not enforce NetworkPolicy; install kind >= v$KIND_MIN_VERSION ($KIND_VERSION recommended)"
  if [[ "v$kind_version" != "$KIND_VERSION" ]]; then
    log "note: kind v$kind_version, suite written against $KIND_VERSION (node image $KIND_NODE_IMAGE)"
  fi
}

CLUSTER_CREATED=0
cleanup() {
  local status=$?
  if [[ "${KEEP_CLUSTER:-0}" == "1" ]]; then
    log "KEEP_CLUSTER=1: cluster $CLUSTER_NAME kept. Use it with:"
    printf '    export KUBECONFIG=%s\n    kubectl --context %s get tenants\n' "$KUBECONFIG_FILE" "$KUBE_CONTEXT"
    printf '    delete it with: kind delete cluster --name %s && docker rm -f %s\n' "$CLUSTER_NAME" "$METADATA_CONTAINER"
  elif [[ "$CLUSTER_CREATED" == "1" ]]; then
    log "deleting cluster $CLUSTER_NAME"
    kind delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE" || true
    docker rm -f "$METADATA_CONTAINER" >/dev/null 2>&1 || true
  fi
  exit "$status"
}

kc() { kubectl --kubeconfig "$KUBECONFIG_FILE" --context "$KUBE_CONTEXT" "$@"; }

create_cluster() {
  mkdir -p "$WORKDIR"
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
    [[ "${BULKHEAD_E2E_REUSE_CLUSTER:-0}" == "1" ]] ||
      die "a kind cluster named $CLUSTER_NAME already exists; delete it (kind delete cluster --name $CLUSTER_NAME) or set BULKHEAD_E2E_REUSE_CLUSTER=1"
    log "reusing cluster $CLUSTER_NAME"
    kind export kubeconfig --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE"
    return
  fi
  log "creating kind cluster $CLUSTER_NAME ($KIND_NODE_IMAGE)"
  CLUSTER_CREATED=1
  kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
    --config "$E2E_DIR/kind-config.yaml" --kubeconfig "$KUBECONFIG_FILE" --wait 180s
}

build_and_load_images() {
  if [[ "${BULKHEAD_E2E_SKIP_BUILD:-0}" == "1" ]]; then
    log "BULKHEAD_E2E_SKIP_BUILD=1: using the images already in Docker"
  else
    # No provenance attestation: kind cannot import an image whose index
    # names an attestation manifest that `docker save` leaves out.
    log "building $OPERATOR_IMAGE"
    docker build --provenance=false -f "$REPO_ROOT/operator/Dockerfile" -t "$OPERATOR_IMAGE" "$REPO_ROOT"
    log "building $SERVER_IMAGE"
    docker build --provenance=false -f "$REPO_ROOT/server/Dockerfile" -t "$SERVER_IMAGE" "$REPO_ROOT"
  fi
  docker image inspect "$CURL_IMAGE" >/dev/null 2>&1 || docker pull "$CURL_IMAGE"
  local image
  for image in "$OPERATOR_IMAGE" "$SERVER_IMAGE" "$CURL_IMAGE"; do
    load_image "$image"
  done
}

# kind load docker-image, or, where Docker's containerd image store hands
# kind an index with platforms it does not have (kind issue #3795), a
# single-platform archive of the image.
load_image() {
  local image="$1" platform archive
  log "loading $image into kind"
  if kind load docker-image --name "$CLUSTER_NAME" "$image"; then
    return
  fi
  platform="$(docker version --format '{{.Server.Os}}/{{.Server.Arch}}')"
  archive="$WORKDIR/image.tar"
  log "retrying $image as a $platform archive"
  docker image save --platform "$platform" -o "$archive" "$image"
  kind load image-archive --name "$CLUSTER_NAME" "$archive"
  rm -f "$archive"
}

# A stand-in for the cloud metadata endpoint: an HTTP server at
# 169.254.169.254 in a container beside the nodes, with every node routing
# that address to it. Traffic to it leaves the node as it would on a cloud,
# so a test can show it is reachable without NetworkPolicy and blocked from
# tenant pods.
start_metadata_endpoint() {
  log "starting the stand-in metadata endpoint at $METADATA_IP"
  docker rm -f "$METADATA_CONTAINER" >/dev/null 2>&1 || true
  docker run -d --name "$METADATA_CONTAINER" --network "$KIND_NETWORK" --cap-add NET_ADMIN \
    "$METADATA_IMAGE" sh -c \
    "ip addr add $METADATA_IP/32 dev lo && mkdir -p /www && echo stand-in > /www/index.html && exec httpd -f -p 80 -h /www" \
    >/dev/null
  local address node
  address="$(docker inspect -f "{{(index .NetworkSettings.Networks \"$KIND_NETWORK\").IPAddress}}" "$METADATA_CONTAINER")"
  [[ -n "$address" ]] || die "the metadata container has no address on network $KIND_NETWORK"
  for node in $(kind get nodes --name "$CLUSTER_NAME"); do
    docker exec "$node" ip route replace "$METADATA_IP/32" via "$address"
  done
}

install_operator() {
  kc wait --for=condition=Ready nodes --all --timeout=180s
  log "installing the CRD and the operator (kubectl apply -k tests/e2e/overlay)"
  # --force-conflicts: on a reused cluster, fields set by `kubectl set env`
  # below on an earlier run go back to the manifests' values first.
  kc apply --server-side --force-conflicts -k "$E2E_DIR/overlay"
  kc wait --for=condition=Established --timeout=60s crd/tenants.bulkhead.dev

  # NetworkPolicy is evaluated after the kubernetes Service's address is
  # translated, so tenant servers (and the operator) need the API server's
  # real endpoint, known only now.
  local addresses port cidrs="" address
  addresses="$(kc get endpointslices -n default -l kubernetes.io/service-name=kubernetes \
    -o jsonpath='{.items[*].endpoints[*].addresses[*]}')"
  port="$(kc get endpointslices -n default -l kubernetes.io/service-name=kubernetes \
    -o jsonpath='{.items[0].ports[0].port}')"
  [[ -n "$addresses" && -n "$port" ]] || die "cannot read the API server endpoints"
  for address in $addresses; do
    cidrs="${cidrs:+$cidrs,}$address/32"
    kc -n "$OPERATOR_NAMESPACE" patch networkpolicy "$OPERATOR_DEPLOYMENT" --type=json -p \
      "[{\"op\":\"add\",\"path\":\"/spec/egress/-\",\"value\":{\"to\":[{\"ipBlock\":{\"cidr\":\"$address/32\"}}],\"ports\":[{\"protocol\":\"TCP\",\"port\":$port}]}}]"
  done
  log "API server endpoints for NetworkPolicy: $cidrs port $port"
  kc -n "$OPERATOR_NAMESPACE" set env "deployment/$OPERATOR_DEPLOYMENT" \
    "BULKHEAD_API_SERVER_CIDRS=$cidrs" "BULKHEAD_API_SERVER_PORT=$port"
  kc -n "$OPERATOR_NAMESPACE" rollout status "deployment/$OPERATOR_DEPLOYMENT" --timeout=240s
}

dump_diagnostics() {
  log "diagnostics"
  kc get tenants -o wide || true
  kc get pods -A -o wide || true
  kc -n "$OPERATOR_NAMESPACE" logs "deployment/$OPERATOR_DEPLOYMENT" --tail=200 || true
  kc get events -A --sort-by=.lastTimestamp | tail -n 60 || true
}

run_tests() {
  log "running the e2e tests (cargo test -p bulkhead-e2e -- --ignored)"
  local status=0
  (
    cd "$REPO_ROOT"
    export KUBECONFIG="$KUBECONFIG_FILE"
    export BULKHEAD_E2E_KUBE_CONTEXT="$KUBE_CONTEXT"
    export BULKHEAD_E2E_OPERATOR_NAMESPACE="$OPERATOR_NAMESPACE"
    export BULKHEAD_E2E_CURL_IMAGE="$CURL_IMAGE"
    export BULKHEAD_E2E_METADATA_URL="http://$METADATA_IP/"
    cargo test -p bulkhead-e2e -- --ignored \
      --test-threads="${BULKHEAD_E2E_TEST_THREADS:-2}" "$@"
  ) || status=$?
  if [[ "$status" != "0" ]]; then
    dump_diagnostics
    die "e2e tests failed (exit $status); see the output above"
  fi
}

print_proof() {
  if (($# > 0)); then
    printf '\ne2e: PASSED, but only the tests selected by "%s" ran; run without arguments for the whole suite.\n' "$*"
    return
  fi
  cat <<EOF

e2e: PASSED on kind $(kind version | cut -d' ' -f2), node image $KIND_NODE_IMAGE, CNI kindnet.
It showed, on a real cluster:
  - a Tenant becomes Ready; its namespace enforces Pod Security "restricted"
    and refuses a privileged pod;
  - MCP tools/list through the tenant's Service works from an admitted
    namespace and cannot connect from another namespace or another tenant;
  - tenant A's server ServiceAccount may get A's two Secrets and may not
    get, list or watch B's, nor any other Secret in its own namespace;
  - A's API key gets 401 from B's server;
  - a tenant pod cannot reach the metadata address 169.254.169.254 nor
    another tenant's pod, both reachable where no policy applies;
  - a deleted NetworkPolicy, ConfigMap and Deployment come back; a spec
    change rolls the server; deleting a Tenant removes its namespace, and
    deletionPolicy Retain keeps it;
  - the operator's ServiceAccount cannot get, list or watch Secrets.
EOF
}

main() {
  cd "$REPO_ROOT"
  check_prerequisites
  trap cleanup EXIT
  create_cluster
  build_and_load_images
  start_metadata_endpoint
  install_operator
  run_tests "$@"
  print_proof "$@"
}

main "$@"
