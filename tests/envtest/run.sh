#!/usr/bin/env bash
# Runs Bulkhead's envtest suite: the tests in tests/envtest/tests against a
# real control plane (etcd, kube-apiserver, kube-controller-manager) that
# each test binary starts on loopback through the bulkhead-envtest harness.
#
# Builds what is missing first: the control-plane binaries (build.sh, cached
# outside the repository) and the bulkhead-operator and bulkhead-server
# binaries the tests run. Starts no control plane itself.
#
# Usage: tests/envtest/run.sh [cargo test arguments after `--`, e.g. a test
#        name filter]
#   tests/envtest/run.sh                      the whole suite
#   tests/envtest/run.sh --test rbac          one file (cargo test arguments
#                                             before `--` go to cargo)
#   tests/envtest/run.sh -- hand_edits        one test by name
#
# The tests are `#[ignore]`d so that `cargo test --workspace` on a machine
# without the binaries stays green; this script runs them all
# (`--include-ignored`), and a missing binary is a failure, never a skip.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME}/.cache/bulkhead/target}"

log() { printf 'envtest: %s\n' "$*" >&2; }

started=$SECONDS
bin="$(bash "$here/build.sh" | tail -n 1)"
for component in etcd kube-apiserver kube-controller-manager kubectl; do
    [[ -x "$bin/$component" ]] || { log "FAILED: build.sh printed $bin, which has no $component"; exit 1; }
done
export BULKHEAD_ENVTEST_BIN="$bin"
log "control-plane binaries: $bin"

log "building bulkhead-operator and bulkhead-server"
cargo build -p bulkhead-operator -p bulkhead-server
# BULKHEAD_OPERATOR_BIN and BULKHEAD_SERVER_BIN, when set, name the binaries
# to test instead (e.g. copies, where the target directory is shared with
# other checkouts whose builds overwrite it).
log "binaries: ${BULKHEAD_OPERATOR_BIN:-the operator just built}, ${BULKHEAD_SERVER_BIN:-the server just built}"

# Arguments before `--` go to cargo test, after it to the test binaries.
cargo_args=()
while [[ $# -gt 0 && "$1" != "--" ]]; do cargo_args+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift

output="$(mktemp)"
trap 'rm -f "$output"' EXIT
tests_started=$SECONDS
set +e
cargo test -p bulkhead-envtest --no-fail-fast "${cargo_args[@]}" -- --include-ignored "$@" 2>&1 | tee "$output"
status=${PIPESTATUS[0]}
set -e

# Sum the per-binary summaries: "test result: ok. 3 passed; 0 failed; 0 ignored; ..."
read -r passed failed ignored < <(awk '
    /^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i+1) ~ /^passed;?$/) p += $i
            if ($(i+1) ~ /^failed;?$/) f += $i
            if ($(i+1) ~ /^ignored;?$/) g += $i
        }
    }
    END { print p + 0, f + 0, g + 0 }' "$output")
log "$passed passed, $failed failed, $ignored ignored; tests took $((SECONDS - tests_started)) s, all $((SECONDS - started)) s"
if [[ $status -ne 0 ]]; then
    log "FAILED (cargo test exited $status)"
    exit "$status"
fi
if [[ $passed -eq 0 || $ignored -ne 0 ]]; then
    log "FAILED: every envtest test must run ($passed ran, $ignored ignored)"
    exit 1
fi
