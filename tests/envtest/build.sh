#!/usr/bin/env bash
# Builds the envtest control plane from source, pinned, into a cache outside
# the repository, and prints the directory holding the binaries as the last
# line of standard output.
#
#   etcd                      go.etcd.io/etcd/server/v3   (tests/envtest/etcd)
#   kube-apiserver            k8s.io/kubernetes           (tests/envtest/k8s)
#   kube-controller-manager   k8s.io/kubernetes
#   kube-scheduler            k8s.io/kubernetes
#   kubectl                   k8s.io/kubernetes
#   kwok                      sigs.k8s.io/kwok            (tests/envtest/kwok)
#
# Each upstream module is built from a consumer module of its own, because
# `go install pkg@version` refuses modules whose go.mod has `replace`
# directives, and because one module holding both Kubernetes and etcd would
# let minimal version selection move the API server's dependencies.
#
# The cache key is the hash of this script, the helper modules' go.mod and
# go.sum files and the Go version, so a warm run relinks nothing and any
# change to a pin builds afresh. Override the cache root with
# BULKHEAD_ENVTEST_CACHE (default: ~/.cache/bulkhead-envtest).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${BULKHEAD_ENVTEST_CACHE:-${HOME}/.cache/bulkhead-envtest}"

log() { printf 'envtest-build: %s\n' "$*" >&2; }

command -v go >/dev/null || { log "error: go is not on PATH (Go 1.26 or later is needed)"; exit 1; }

# The pinned versions are read from the helper modules, so go.mod is the
# only place a version is written.
module_version() { # <go.mod> <module path>
    awk -v m="$2" '($1 == m && $2 ~ /^v/) { print $2; exit } ($1 == "require" && $2 == m) { print $3; exit }' "$1"
}
k8s_version="$(module_version "$here/k8s/go.mod" k8s.io/kubernetes)"
etcd_version="$(module_version "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"
kwok_version="$(module_version "$here/kwok/go.mod" sigs.k8s.io/kwok)"
[[ -n "$k8s_version" && -n "$etcd_version" && -n "$kwok_version" ]] || {
    log "error: could not read the pinned versions from tests/envtest/*/go.mod"; exit 1; }

key="$(cat "$0" "$here"/k8s/go.mod "$here"/k8s/go.sum "$here"/etcd/go.mod "$here"/etcd/go.sum \
    "$here"/etcd/main.go "$here"/kwok/go.mod "$here"/kwok/go.sum \
    <(go version) | sha256sum | cut -c1-16)"
bin="$cache_root/k8s-$k8s_version-etcd-$etcd_version-kwok-$kwok_version-$key/bin"
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

complete=1
for c in "${components[@]}"; do [[ -x "$bin/$c" ]] || complete=0; done
if [[ $complete == 1 ]]; then
    log "reusing $bin (kubernetes $k8s_version, etcd $etcd_version, kwok $kwok_version)"
    printf '%s\n' "$bin"
    exit 0
fi

staging="$bin.partial.$$"
rm -rf "$staging"
mkdir -p "$staging"
trap 'rm -rf "$staging"' EXIT

export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -trimpath"

# Reports wall time and the peak resident memory of the largest process of
# the build (the linker or one compiler), as GNU time measures children.
timed() { # <label> <dir> <go args...>
    local label="$1" dir="$2"; shift 2
    local started=$SECONDS
    if [[ -x /usr/bin/time ]]; then
        (cd "$dir" && /usr/bin/time -f "%e %M" -o "$staging/.time" go "$@")
        read -r wall kib < "$staging/.time"
        log "built $label in ${wall} s, peak RSS $((kib / 1024)) MiB"
    else
        (cd "$dir" && go "$@")
        log "built $label in $((SECONDS - started)) s"
    fi
}

started=$SECONDS
log "building into $bin (cold builds take 15-30 minutes on 2 cores)"

# Version stamps, as Kubernetes' own hack/lib/version.sh sets them, so that
# `--version` and the API server's /version report the pinned release.
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

timed "etcd $etcd_version" "$here/etcd" build -ldflags "-s -w" -o "$staging/etcd" .
timed "kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $k8s_version" "$here/k8s" \
    build -ldflags "$k8s_ldflags" -o "$staging/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
timed "kwok $kwok_version" "$here/kwok" \
    build -ldflags "-s -w" -o "$staging/kwok" sigs.k8s.io/kwok/cmd/kwok

rm -f "$staging/.time"
rm -rf "$bin"
mv "$staging" "$bin"
trap - EXIT
log "built ${components[*]} in $((SECONDS - started)) s"
"$bin/kube-apiserver" --version >&2
"$bin/etcd" --version | head -1 >&2
printf '%s\n' "$bin"
