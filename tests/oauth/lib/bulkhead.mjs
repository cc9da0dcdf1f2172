// bulkhead-server configured from a rendered Tenant: the Tenant goes through
// `bulkhead-operator render`, and the server runs the `server.yaml` of the
// rendered ConfigMap on loopback. Also API keys from `bulkhead-server keygen`,
// the audit lines the server writes to stdout, and a raw MCP request for
// asserting statuses and headers.
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, existsSync, appendFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';

import YAML from 'yaml';

const run = promisify(execFile);
const serverBin = process.env.BULKHEAD_SERVER_BIN;
const operatorBin = process.env.BULKHEAD_OPERATOR_BIN;
const workRoot = process.env.BULKHEAD_OAUTH_WORK ?? '/tmp';

if (!serverBin || !operatorBin) {
  throw new Error('BULKHEAD_SERVER_BIN and BULKHEAD_OPERATOR_BIN must name the binaries (tests/oauth/run.sh sets them)');
}

/** A free TCP port on 127.0.0.1 (the server binds it right after). */
export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The `server.yaml` the operator renders for `tenant` (a Tenant object). */
export async function renderServerConfig(tenant) {
  const dir = mkdtempSync(path.join(workRoot, 'tenant-'));
  const file = path.join(dir, 'tenant.yaml');
  writeFileSync(file, YAML.stringify(tenant));
  const { stdout } = await run(operatorBin, ['render', file], { timeout: 20_000 });
  const configMap = YAML.parseAllDocuments(stdout)
    .map((doc) => doc.toJS())
    .find((obj) => obj?.kind === 'ConfigMap' && obj.metadata?.name === 'bulkhead-server-config');
  if (!configMap) throw new Error(`render printed no bulkhead-server-config ConfigMap:\n${stdout}`);
  return YAML.parse(configMap.data['server.yaml']);
}

/** A new API key for `caller`: {key, hash} as `bulkhead-server keygen` prints them. */
export async function keygen(caller) {
  const { stdout } = await run(serverBin, ['keygen', '--caller', caller], { timeout: 10_000 });
  const key = stdout.match(/\b(bhk_[A-Za-z0-9_-]+)/)?.[1];
  const hash = stdout.match(new RegExp(`^\\s*${caller}: (sha256:[0-9a-f]{64})$`, 'm'))?.[1];
  if (!key || !hash) throw new Error(`unexpected keygen output:\n${stdout}`);
  return { key, hash };
}

/** The MCP endpoint of a server about to listen on `port` (the Tenant's `resource`). */
export const resourceFor = (port) => `http://127.0.0.1:${port}/mcp`;

/**
 * Starts bulkhead-server for `tenant` on `port`, from the rendered
 * configuration. Only what cannot exist outside a cluster is rewritten:
 * - the Secret sources (API keys, credentials) become local files;
 * - with `privateUpstreams`, `allowPrivateTargets` of the connectors, which
 *   the operator never sets (in a cluster the NetworkPolicy decides egress),
 *   since the suite's upstream is on loopback.
 * The rendered `allowedHosts` must already hold the resource's host:port,
 * the Host clients send.
 *
 * apiKeys: {callerId: hash}. Waits until /readyz answers 200, or with
 * `waitReady: false` only until the server listens.
 * Returns {url, adminUrl, config, audit(), auditFor(requestId), stop()}.
 */
export async function startServer({ tenant, port, apiKeys = {}, privateUpstreams = false, waitReady = true }) {
  const config = await renderServerConfig(tenant);
  const dir = mkdtempSync(path.join(workRoot, `server-${tenant.metadata.name}-`));
  writeFileSync(path.join(dir, 'keys.yaml'), YAML.stringify(apiKeys));
  writeFileSync(path.join(dir, 'credentials.yaml'), '{}\n');
  config.apiKeys = { type: 'file', path: 'keys.yaml' };
  config.credentials = { type: 'file', path: 'credentials.yaml' };
  if (privateUpstreams) {
    for (const connector of config.connectors ?? []) connector.allowPrivateTargets = true;
  }
  const authority = `127.0.0.1:${port}`;
  if (!config.allowedHosts.includes(authority)) {
    throw new Error(`the rendered allowedHosts ${JSON.stringify(config.allowedHosts)} lack the resource's ${authority}`);
  }
  writeFileSync(path.join(dir, 'server.yaml'), YAML.stringify(config));

  const readyFile = path.join(dir, 'ready.json');
  const auditFile = path.join(dir, 'audit.jsonl');
  const logFile = path.join(dir, 'server.log');
  const child = spawn(
    serverBin,
    [
      '--config', path.join(dir, 'server.yaml'),
      '--listen', authority,
      '--admin-listen', '127.0.0.1:0',
      '--ready-file', readyFile,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  child.stdout.on('data', (chunk) => {
    stdout += chunk;
    appendFileSync(auditFile, chunk);
  });
  child.stderr.on('data', (chunk) => appendFileSync(logFile, chunk));
  // Should the test process end without stopping the server, take it along.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  let done = false;
  exited.then(() => {
    done = true;
    process.removeListener('exit', killOnExit);
  });

  const stop = async () => {
    if (!done) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
  };
  const log = () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');

  // Listening first, then ready: /readyz waits for the issuer's metadata and JWKS.
  const deadline = Date.now() + 20_000;
  let admin = null;
  let ready = false;
  while (Date.now() < deadline && !done) {
    if (!admin && existsSync(readyFile)) {
      const text = readFileSync(readyFile, 'utf8');
      if (text) admin = JSON.parse(text).admin;
    }
    if (admin && !waitReady) {
      ready = true;
      break;
    }
    if (admin) {
      const res = await fetch(`http://${admin}/readyz`).catch(() => null);
      if (res?.status === 200) {
        ready = true;
        break;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  if (!ready) {
    await stop();
    throw new Error(`bulkhead-server for ${tenant.metadata.name} did not ${waitReady ? 'become ready' : 'listen'}:\n${log()}`);
  }

  const audit = () =>
    stdout
      .split('\n')
      .filter((line) => line.trim().startsWith('{'))
      .map((line) => JSON.parse(line));
  return {
    url: resourceFor(port),
    adminUrl: `http://${admin}`,
    config,
    log,
    audit,
    /** The audit line of one request (by its x-request-id), waiting briefly for the writer. */
    auditFor: (requestId) => waitForLines(audit, (l) => l.request_id === requestId, 1).then((lines) => lines[0]),
    /** The audit lines matching `predicate` once there are at least `count`, waiting briefly. */
    auditWhere: (predicate, count = 1) => waitForLines(audit, predicate, count),
    stop,
  };
}

/** The audit is written by its own thread: waits up to 5 s for `count` matching lines. */
async function waitForLines(audit, predicate, count) {
  for (let i = 0; i < 100; i += 1) {
    const lines = audit().filter(predicate);
    if (lines.length >= count) return lines;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`fewer than ${count} matching audit line(s) after 5 s:\n${JSON.stringify(audit(), null, 1)}`);
}

/**
 * One MCP JSON-RPC request over HTTP, without a client library, so a test
 * sees the exact status and headers. Returns {status, headers, body}.
 */
export async function mcpRequest(url, { token, method = 'tools/list', params = {} } = {}) {
  const headers = {
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
    'mcp-protocol-version': '2025-06-18',
  };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const res = await fetch(url, {
    method: 'POST',
    headers,
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON (an empty 401 body, for instance): keep the text.
  }
  return { status: res.status, headers: res.headers, body };
}
