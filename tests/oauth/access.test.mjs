// Per-caller tool access (`spec.access`) with API-key and token callers under
// the same rules: `tools/list` shows a caller only its tools, a call to any
// other tool gets the unknown-tool error and is audited with caller and tool,
// and an API-key caller and a token caller of the same name stay different
// callers. Clients are the official MCP TypeScript SDK client; tokens come
// from a real OpenID Provider.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import { startIssuer } from './lib/issuer.mjs';
import { freePort, keygen, resourceFor, startServer } from './lib/bulkhead.mjs';
import { connect } from './lib/client.mjs';

const secret = (id) => `${id}-secret-0123456789abcdef`;
const client = (clientId, claims = {}) => ({ clientId, clientSecret: secret(clientId), scope: 'mcp:tools mcp:read', claims });

// Token callers: the client id is the token's `sub`.
const READER = client('reader');
const ADMIN_BOT = client('admin-bot', { groups: ['admins'] });
const OPS_TOKEN = client('ops'); // named like the API-key caller `ops`, yet another caller

let issuer;
let upstream;
let server;
const apiKeys = {};
const upstreamHeaders = [];

before(async () => {
  // The upstream both http connectors call; it answers with what it was
  // asked and keeps the headers it received.
  upstream = http.createServer((req, res) => {
    upstreamHeaders.push(req.headers);
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ path: req.url }));
  });
  await new Promise((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  const upstreamUrl = `http://127.0.0.1:${upstream.address().port}`;

  issuer = await startIssuer({ clients: [READER, ADMIN_BOT, OPS_TOKEN] });
  for (const caller of ['alice', 'ops', 'carol']) apiKeys[caller] = await keygen(caller);

  const port = await freePort();
  server = await startServer({
    port,
    privateUpstreams: true,
    apiKeys: Object.fromEntries(Object.entries(apiKeys).map(([caller, k]) => [caller, k.hash])),
    tenant: {
      apiVersion: 'bulkhead.dev/v1alpha1',
      kind: 'Tenant',
      metadata: { name: 'gamma' },
      spec: {
        connectors: [
          { name: 'notes', type: 'http', baseUrl: upstreamUrl, allow: [{ method: 'GET', path: '/notes/**' }] },
          { name: 'admin', type: 'http', baseUrl: upstreamUrl, allow: [{ method: 'GET', path: '/admin/**' }] },
        ],
        auth: {
          apiKeys: true,
          oauth: {
            issuer: issuer.issuer,
            resource: resourceFor(port),
            requiredScopes: ['mcp:tools'],
            issuerNetwork: {
              namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'identity' } },
              ports: [Number(new URL(issuer.issuer).port)],
            },
          },
        },
        access: [
          { subjects: [{ apiKeyCaller: 'alice' }, { tokenSubject: 'reader' }], tools: ['whoami', 'notes_*'] },
          { subjects: [{ group: 'admins' }], tools: ['*'] },
          { subjects: [{ apiKeyCaller: 'ops' }], tools: ['admin_request'] },
        ],
      },
    },
  });
}, { timeout: 60_000 });

after(async () => {
  await server?.stop();
  await issuer?.close();
  await new Promise((resolve) => (upstream ? upstream.close(resolve) : resolve()));
});

/** The SDK client for a caller: `{apiKey}` or a token client's credentials. */
const connectAs = (caller) => connect(server.url, caller.clientId ? caller : { apiKey: caller.apiKey });

/** Lists and calls as `caller`; returns the listed names and the outcome of each call. */
async function useAs(caller, calls) {
  const { client: mcp, close } = await connectAs(caller);
  try {
    const names = (await mcp.listTools()).tools.map((t) => t.name).sort();
    const results = {};
    for (const [tool, args] of calls) {
      results[tool] = await mcp.callTool({ name: tool, arguments: args }).then(
        (result) => ({ result }),
        (error) => ({ error: { code: error.code, message: error.message.replaceAll(tool, '<tool>') } }),
      );
    }
    return { names, results };
  } finally {
    await close();
  }
}

const NOTES = ['notes_request', { path: '/notes/1' }];
const ADMIN = ['admin_request', { path: '/admin/1' }];
const UNKNOWN = ['no_such_tool', {}];

/** The audit line of the last `tools/call` of `tool` by `caller` (waits for the writer). */
async function lastCall(caller, tool) {
  const lines = await server.auditWhere((l) => l.method === 'tools/call' && l.tool === tool && l.caller === caller);
  return lines.at(-1);
}

describe('per-caller tool access', () => {
  for (const [label, caller, id, auth] of [
    ['API-key caller alice', () => ({ apiKey: apiKeys.alice.key }), 'alice', 'api_key'],
    ['token caller reader', () => READER, 'reader', 'oauth'],
  ]) {
    test(`${label} sees and calls only whoami and notes_*`, async () => {
      const { names, results } = await useAs(caller(), [NOTES, ADMIN, UNKNOWN]);
      assert.deepEqual(names, ['notes_request', 'whoami']);
      assert.equal(results.notes_request.result?.isError ?? false, false, JSON.stringify(results.notes_request));
      assert.deepEqual(results.notes_request.result.structuredContent, { status: 200, data: { path: '/notes/1' } });
      assert.ok(results.admin_request.error, 'the call to a tool not allowed is a JSON-RPC error');
      assert.deepEqual(results.admin_request.error, results.no_such_tool.error, 'the same error as for a tool that does not exist');

      const refused = await lastCall(id, 'admin_request');
      assert.ok(refused, 'the refused call is audited with caller and tool');
      assert.equal(refused.auth, auth);
      assert.equal(refused.outcome, 'forbidden');
      assert.equal(refused.upstream_status ?? null, null, 'the upstream was not called');
      assert.equal((await lastCall(id, 'notes_request')).outcome, 'ok');
    });
  }

  test("the caller's bearer value never reaches the upstream", async () => {
    const seen = upstreamHeaders.length;
    const { results } = await useAs(READER, [NOTES]);
    assert.equal(results.notes_request.result?.isError ?? false, false);
    assert.equal(upstreamHeaders.length, seen + 1);
    const headers = upstreamHeaders.at(-1);
    assert.equal(headers.authorization, undefined, 'no credential is configured, so none is sent');
    assert.ok(!JSON.stringify(headers).includes('eyJ'), 'no JWT in any upstream header');
  });

  test('a token caller in the admins group uses every tool', async () => {
    const { names, results } = await useAs(ADMIN_BOT, [ADMIN]);
    assert.deepEqual(names, ['admin_request', 'notes_request', 'whoami']);
    assert.deepEqual(results.admin_request.result?.structuredContent, { status: 200, data: { path: '/admin/1' } });
    assert.equal((await lastCall('admin-bot', 'admin_request')).auth, 'oauth');
  });

  test('the API-key caller ops and the token caller ops are different callers', async () => {
    const byKey = await useAs({ apiKey: apiKeys.ops.key }, [ADMIN]);
    assert.deepEqual(byKey.names, ['admin_request']);
    assert.equal(byKey.results.admin_request.result?.isError ?? false, false);

    const byToken = await useAs(OPS_TOKEN, [ADMIN]);
    assert.deepEqual(byToken.names, [], 'no rule names the token subject ops');
    assert.ok(byToken.results.admin_request.error);
    const lines = await server.auditWhere((l) => l.method === 'tools/call' && l.caller === 'ops', 2);
    assert.deepEqual(lines.map((l) => [l.auth, l.outcome]), [['api_key', 'ok'], ['oauth', 'forbidden']]);
  });

  test('a caller no rule names sees no tool and calls none', async () => {
    const { names, results } = await useAs({ apiKey: apiKeys.carol.key }, [['whoami', {}]]);
    assert.deepEqual(names, []);
    assert.ok(results.whoami.error);
    assert.equal((await lastCall('carol', 'whoami')).outcome, 'forbidden');
  });
});
