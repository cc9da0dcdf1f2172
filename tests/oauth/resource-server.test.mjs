// bulkhead-server as an OAuth 2.1 resource server (MCP authorization; RFC
// 9728, RFC 8707, RFC 9068, RFC 6750) against a real OpenID Provider and the
// official MCP TypeScript SDK client: discovery from nothing but the URL,
// every refusal with its status and header, signing-key rotation and a flood
// of unknown key ids, and two tenants trusting the same issuer.
//
// The tests of this file run in order and share the provider and servers:
// the rotation and flood tests come after the refusals because an unknown
// `kid` spends the server's JWKS refresh budget.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as jose from 'jose';

import { startIssuer, generateSigningKey } from './lib/issuer.mjs';
import { freePort, mcpRequest, resourceFor, startServer } from './lib/bulkhead.mjs';
import { connect } from './lib/client.mjs';

const AGENT = { clientId: 'agent', clientSecret: 'agent-secret-0123456789', scope: 'mcp:tools mcp:read', claims: { tenant: 'alpha' } };
const BETA_AGENT = { clientId: 'beta-agent', clientSecret: 'beta-secret-0123456789', scope: 'mcp:tools mcp:read', claims: { tenant: 'beta' } };

/** A Tenant whose server accepts tokens of `issuer` for `resource`. */
function tenant(name, { issuer, resource, tenantClaim }) {
  return {
    apiVersion: 'bulkhead.dev/v1alpha1',
    kind: 'Tenant',
    metadata: { name },
    spec: {
      auth: {
        oauth: {
          issuer,
          resource,
          requiredScopes: ['mcp:tools'],
          ...(tenantClaim ? { tenantClaim } : {}),
          // An issuer on the node's own network: in a cluster a namespace
          // selector, which also lets the server reach a private address.
          issuerNetwork: {
            namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'identity' } },
            ports: [Number(new URL(issuer).port)],
          },
        },
      },
    },
  };
}

/** The auth-params of a `WWW-Authenticate: Bearer ...` header (RFC 6750 section 3). */
function bearerChallenge(headers) {
  const value = headers.get('www-authenticate');
  assert.ok(value, 'a WWW-Authenticate header');
  assert.match(value, /^Bearer\b/, `a Bearer challenge: ${value}`);
  return Object.fromEntries([...value.matchAll(/([a-z_]+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
}

const now = () => Math.floor(Date.now() / 1000);

let issuer;
let alpha;
let beta;
let metadataUrlAlpha;

before(async () => {
  issuer = await startIssuer({ clients: [AGENT, BETA_AGENT] });
  const [portA, portB] = [await freePort(), await freePort()];
  alpha = await startServer({
    tenant: tenant('alpha', { issuer: issuer.issuer, resource: resourceFor(portA), tenantClaim: 'tenant' }),
    port: portA,
  });
  beta = await startServer({
    tenant: tenant('beta', { issuer: issuer.issuer, resource: resourceFor(portB) }),
    port: portB,
  });
  metadataUrlAlpha = `http://127.0.0.1:${portA}/.well-known/oauth-protected-resource/mcp`;
}, { timeout: 60_000 });

after(async () => {
  await Promise.all([alpha?.stop(), beta?.stop()]);
  await issuer?.close();
});

/** A real token of `client` for `resource`. */
const tokenFor = (client, resource, scope = 'mcp:tools') =>
  issuer.tokenFor({ ...client, resource, scope });

/**
 * A token with the claims of a real one for alpha, changed by `edit`, signed
 * with the issuer's own current key (so only the edited claim is wrong).
 */
async function forged(edit = (claims) => claims, header = {}) {
  const real = await tokenFor(AGENT, alpha.url);
  const claims = edit({ ...jose.decodeJwt(real) });
  const key = issuer.signingKey();
  return new jose.SignJWT(claims)
    .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: key.kid, ...header })
    .sign(key.privateKey);
}

/** Asserts a 401 with a Bearer challenge naming the metadata, and an audit line without caller. */
async function assertUnauthorized(server, token, { metadataUrl = metadataUrlAlpha, tenantId = 'alpha' } = {}) {
  const res = await mcpRequest(server.url, { token });
  assert.equal(res.status, 401);
  const challenge = bearerChallenge(res.headers);
  assert.equal(challenge.resource_metadata, metadataUrl);
  if (token !== undefined) {
    assert.equal(challenge.error, 'invalid_token', 'RFC 6750 section 3.1: a presented token that is not valid');
  }
  const line = await server.auditFor(res.headers.get('x-request-id'));
  assert.equal(line.tenant, tenantId);
  assert.equal(line.caller ?? null, null, 'a refused token names no caller');
  assert.equal(line.auth, 'none');
  assert.equal(line.outcome, 'unauthenticated');
  assert.equal(line.http_status, 401);
  return { res, challenge, line };
}

describe('discovery with the official SDK client', () => {
  test('Protected Resource Metadata names the issuer, scopes and bearer method (RFC 9728)', async () => {
    const origin = new URL(alpha.url).origin;
    for (const path of ['/.well-known/oauth-protected-resource/mcp', '/.well-known/oauth-protected-resource']) {
      const res = await fetch(origin + path, { signal: AbortSignal.timeout(5_000) });
      assert.equal(res.status, 200, path);
      const metadata = await res.json();
      assert.equal(metadata.resource, alpha.url, path);
      assert.deepEqual(metadata.authorization_servers, [issuer.issuer], path);
      assert.ok(metadata.scopes_supported?.includes('mcp:tools'), `${path}: scopes_supported ${metadata.scopes_supported}`);
      assert.deepEqual(metadata.bearer_methods_supported, ['header'], path);
    }
  });

  test('discovery -> token with resource indicator -> tools/list -> tools/call', async () => {
    const { client, exchanges, close } = await connect(alpha.url, AGENT);
    try {
      const { tools } = await client.listTools();
      assert.ok(tools.some((t) => t.name === 'whoami'), 'whoami is listed');
      const result = await client.callTool({ name: 'whoami', arguments: {} });
      assert.equal(result.isError ?? false, false);
      assert.deepEqual(result.structuredContent, { tenantId: 'alpha', callerId: 'agent' });
    } finally {
      await close();
    }
    const origin = new URL(alpha.url).origin;
    const first = exchanges[0];
    assert.deepEqual([first.method, first.url, first.status], ['POST', alpha.url, 401]);
    const prm = exchanges.find((e) => e.url.startsWith(`${origin}/.well-known/oauth-protected-resource`));
    assert.equal(prm?.status, 200, 'the client read the Protected Resource Metadata');
    const asMetadata = exchanges.find((e) => e.url.startsWith(`${issuer.issuer}/.well-known/`) && e.status === 200);
    assert.ok(asMetadata, 'the client read the authorization server metadata');
    const tokenRequest = exchanges.find((e) => e.url === `${issuer.issuer}/token`);
    assert.equal(tokenRequest?.status, 200);
    assert.equal(tokenRequest.body.grant_type, 'client_credentials');
    assert.equal(tokenRequest.body.resource, alpha.url, 'RFC 8707 resource indicator');
    assert.ok(exchanges.indexOf(prm) < exchanges.indexOf(tokenRequest));
    assert.ok(exchanges.some((e) => e.url === alpha.url && e.status === 200 && exchanges.indexOf(e) > exchanges.indexOf(tokenRequest)));

    const [call] = await alpha.auditWhere((l) => l.method === 'tools/call' && l.tool === 'whoami');
    assert.equal(call.caller, 'agent');
    assert.equal(call.auth, 'oauth');
    assert.equal(call.tenant, 'alpha');
  });

  test('a token is never written to the audit or the log', async () => {
    const token = await tokenFor(AGENT, alpha.url);
    const res = await mcpRequest(alpha.url, { token });
    assert.equal(res.status, 200);
    assert.equal((await alpha.auditFor(res.headers.get('x-request-id'))).caller, 'agent');
    const signature = token.split('.')[2];
    const everything = JSON.stringify(alpha.audit()) + alpha.log();
    assert.ok(!everything.includes(signature), 'the token signature appears nowhere');
  });
});

describe('refusals', () => {
  test('control: a re-signed copy of a real token is accepted', async () => {
    const res = await mcpRequest(alpha.url, { token: await forged() });
    assert.equal(res.status, 200, JSON.stringify(res.body));
  });

  test('no token: 401 with resource_metadata and no error code', async () => {
    const { challenge } = await assertUnauthorized(alpha, undefined);
    assert.equal(challenge.error, undefined, 'RFC 6750 section 3.1: no error code without credentials');
  });

  test('expired', async () => {
    await assertUnauthorized(alpha, await forged((c) => ({ ...c, iat: now() - 900, exp: now() - 600 })));
  });

  test('not yet valid', async () => {
    await assertUnauthorized(alpha, await forged((c) => ({ ...c, nbf: now() + 600 })));
  });

  test('wrong issuer', async () => {
    await assertUnauthorized(alpha, await forged((c) => ({ ...c, iss: 'http://127.0.0.1:9/other-issuer' })));
  });

  test("audience of another tenant's server", async () => {
    await assertUnauthorized(alpha, await tokenFor(AGENT, beta.url));
  });

  test('missing scope: 403 insufficient_scope naming the scope', async () => {
    const res = await mcpRequest(alpha.url, { token: await tokenFor(AGENT, alpha.url, 'mcp:read') });
    assert.equal(res.status, 403);
    const challenge = bearerChallenge(res.headers);
    assert.equal(challenge.error, 'insufficient_scope');
    assert.ok(challenge.scope?.split(' ').includes('mcp:tools'), `scope="${challenge.scope}"`);
    assert.equal(challenge.resource_metadata, metadataUrlAlpha);
  });

  test('alg none', async () => {
    const real = await tokenFor(AGENT, alpha.url);
    const unsecured = new jose.UnsecuredJWT(jose.decodeJwt(real)).encode();
    assert.equal(jose.decodeProtectedHeader(unsecured).alg, 'none');
    await assertUnauthorized(alpha, unsecured);
  });

  test("HS256 signed with the issuer's public key", async () => {
    const key = issuer.signingKey();
    const publicPem = await jose.exportSPKI(await jose.importJWK(
      { kty: key.jwk.kty, n: key.jwk.n, e: key.jwk.e }, 'RS256', { extractable: true },
    ));
    const real = await tokenFor(AGENT, alpha.url);
    const token = await new jose.SignJWT(jose.decodeJwt(real))
      .setProtectedHeader({ alg: 'HS256', typ: 'at+jwt', kid: key.kid })
      .sign(new TextEncoder().encode(publicPem));
    await assertUnauthorized(alpha, token);
  });

  test('tenant claim of another tenant', async () => {
    const token = await tokenFor(BETA_AGENT, alpha.url);
    assert.equal(jose.decodeJwt(token).tenant, 'beta');
    await assertUnauthorized(alpha, token);
  });
});

describe('signing keys', () => {
  test('the issuer rotates its key: new tokens work without a restart', async () => {
    const rotated = await generateSigningKey('key-2');
    const fetchesBefore = issuer.jwksRequests();
    const started = Date.now();
    issuer.rotate(rotated);
    const token = await tokenFor(AGENT, alpha.url);
    assert.equal(jose.decodeProtectedHeader(token).kid, 'key-2');
    // The server may hold an unknown kid until its refresh interval allows a
    // fetch; it must not take longer than that interval.
    const limit = alpha.config.auth.oauth.jwksMinRefreshSeconds;
    const deadline = Date.now() + (limit + 5) * 1000;
    let res = await mcpRequest(alpha.url, { token });
    while (res.status !== 200 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      res = await mcpRequest(alpha.url, { token });
    }
    assert.equal(res.status, 200, 'a token signed with the rotated key is accepted');
    assert.ok(issuer.jwksRequests() > fetchesBefore, 'the server fetched the JWKS again');
    console.log(`# rotation: the new key was accepted after ${((Date.now() - started) / 1000).toFixed(1)} s`);
  });

  test('unknown kid, and a flood of them fetches the JWKS at most at the configured rate', async () => {
    const { privateKey } = await jose.generateKeyPair('ES256');
    const real = jose.decodeJwt(await tokenFor(AGENT, alpha.url));
    const bogus = (i) =>
      new jose.SignJWT(real).setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: `unpublished-${i}` }).sign(privateKey);

    await assertUnauthorized(alpha, await bogus('single'));

    const limit = alpha.config.auth.oauth.jwksMinRefreshSeconds;
    const before = issuer.jwksRequests();
    const started = Date.now();
    const statuses = [];
    for (let batch = 0; batch < 10; batch += 1) {
      const tokens = await Promise.all(Array.from({ length: 20 }, (_, i) => bogus(batch * 20 + i)));
      const results = await Promise.all(tokens.map((token) => mcpRequest(alpha.url, { token })));
      statuses.push(...results.map((r) => r.status));
    }
    const elapsed = (Date.now() - started) / 1000;
    const fetches = issuer.jwksRequests() - before;
    assert.equal(statuses.length, 200);
    assert.ok(statuses.every((s) => s === 401), `every bogus kid is refused: ${[...new Set(statuses)]}`);
    assert.ok(
      fetches <= 1 + Math.floor(elapsed / limit),
      `${fetches} JWKS fetches in ${elapsed.toFixed(1)} s; at most one per ${limit} s allowed`,
    );
    console.log(`# flood: 200 unknown kids in ${elapsed.toFixed(1)} s -> ${fetches} JWKS fetch(es)`);

    const res = await mcpRequest(alpha.url, { token: await tokenFor(AGENT, alpha.url) });
    assert.equal(res.status, 200, 'a valid token still works after the flood');
  });
});

describe('readiness', () => {
  test('a server whose issuer is unreachable is not ready, and the reason names the issuer', async () => {
    const unreachable = `http://127.0.0.1:${await freePort()}`;
    const port = await freePort();
    const server = await startServer({
      tenant: tenant('delta', { issuer: unreachable, resource: resourceFor(port) }),
      port,
      waitReady: false,
    });
    try {
      // Give the server time for a first attempt at the issuer's metadata.
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      const res = await fetch(`${server.adminUrl}/readyz`, { signal: AbortSignal.timeout(5_000) });
      assert.equal(res.status, 503);
      assert.ok((await res.text()).includes(unreachable), 'the reason names the issuer');
    } finally {
      await server.stop();
    }
  });
});

describe('two tenants trusting the same issuer', () => {
  test("B's own token works on B", async () => {
    const res = await mcpRequest(beta.url, { token: await tokenFor(AGENT, beta.url) });
    assert.equal(res.status, 200, JSON.stringify(res.body));
  });

  test("A's token is refused by B, and B's audit line names tenant B and no caller", async () => {
    const token = await tokenFor(AGENT, alpha.url);
    assert.equal((await mcpRequest(alpha.url, { token })).status, 200, 'the token is good for A');
    const metadataUrl = `${new URL(beta.url).origin}/.well-known/oauth-protected-resource/mcp`;
    const { line } = await assertUnauthorized(beta, token, { metadataUrl, tenantId: 'beta' });
    assert.equal(line.tenant, 'beta');
    assert.ok(!('caller' in line) || line.caller === null);
  });
});
