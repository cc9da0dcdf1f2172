#!/usr/bin/env bash
# Installs the independent NetworkPolicy evaluator, network-config-analyzer
# (PyPI, pinned with hashes in requirements.txt), into a virtual environment
# in a cache outside the repository, and prints the path of its `nca`
# command as the last line of standard output.
#
# No CNI can run on the machines the envtest suite runs on, so the
# connectivity that Bulkhead's stored NetworkPolicies allow is computed by
# this third-party evaluator instead (tests/network_policy.rs).
#
# The cache key is the hash of this script, requirements.txt and the Python
# version, so a warm run installs nothing and a changed pin installs afresh.
# Override the cache root with BULKHEAD_ENVTEST_CACHE (default:
# ~/.cache/bulkhead-envtest) and the interpreter with PYTHON (default: python3,
# 3.9 or later).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${BULKHEAD_ENVTEST_CACHE:-${HOME}/.cache/bulkhead-envtest}"
python="${PYTHON:-python3}"

log() { printf 'netpol-install: %s\n' "$*" >&2; }

command -v "$python" >/dev/null || { log "error: $python is not on PATH (Python 3.9 or later is needed)"; exit 1; }

version="$(awk -F'==' '$1 == "network-config-analyzer" { sub(/[ \\].*/, "", $2); print $2; exit }' "$here/requirements.txt")"
[[ -n "$version" ]] || { log "error: no network-config-analyzer pin in $here/requirements.txt"; exit 1; }

key="$(cat "$0" "$here/requirements.txt" <("$python" --version 2>&1) | sha256sum | cut -c1-16)"
venv="$cache_root/network-config-analyzer-$version-$key"
nca="$venv/bin/nca"

# One install at a time per cache entry (test binaries may run in parallel);
# the marker is written last, so an interrupted install is redone.
mkdir -p "$cache_root"
exec 9>"$venv.lock"
flock 9
if [[ -x "$nca" && -f "$venv/.installed" ]]; then
    log "reusing $venv"
    printf '%s\n' "$nca"
    exit 0
fi

started=$SECONDS
log "installing network-config-analyzer $version into $venv"
rm -rf "$venv"
"$python" -m venv "$venv"
# --require-hashes: every distribution, transitive ones included, must match
# a hash in requirements.txt; --no-deps: nothing outside that list comes in.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --require-hashes --no-deps --only-binary=:all: -r "$here/requirements.txt" >&2
"$nca" --version >&2
touch "$venv/.installed"
log "installed in $((SECONDS - started)) s"
printf '%s\n' "$nca"
