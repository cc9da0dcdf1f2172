// A real OpenID Provider (oidc-provider) on loopback, as the tenants'
// authorization server: client credentials grant, resource indicators
// (RFC 8707) issuing JWT access tokens (RFC 9068, `typ: at+jwt`) whose
// audience is the requested resource. The test generates its signing keys,
// so it can rotate them and sign crafted tokens with the issuer's own key,
// and counts the JWKS requests the servers make.
import http from 'node:http';

import * as jose from 'jose';
import Provider from 'oidc-provider';

/** Every scope the resource servers in these tests know. */
export const SCOPES = ['mcp:tools', 'mcp:read'];

/** An RS256 signing key: the private JWK the provider signs with and its key object. */
export async function generateSigningKey(kid) {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await jose.exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
  return { kid, jwk, privateKey };
}

/**
 * Starts the provider on 127.0.0.1 (random port).
 *
 * clients: [{clientId, clientSecret, scope, claims}] — `claims` are added
 * to every access token of that client (groups, tenant).
 * Returns {issuer, jwksRequests(), rotate(keys), tokenFor(...), keys, close()}.
 */
export async function startIssuer({ clients }) {
  const claimsByClient = new Map(clients.map((c) => [c.clientId, c.claims ?? {}]));
  const counter = { jwks: 0 };
  let keys = [await generateSigningKey('key-1')];
  let handler = null;

  const server = http.createServer((req, res) => handler(req, res));
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${server.address().port}`;

  const build = () => {
    const provider = new Provider(issuer, {
      clients: clients.map((c) => ({
        client_id: c.clientId,
        client_secret: c.clientSecret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: c.scope,
      })),
      // The provider signs with the first key; the rest stay published.
      jwks: { keys: keys.map((k) => k.jwk) },
      scopes: SCOPES,
      features: {
        devInteractions: { enabled: false },
        clientCredentials: { enabled: true },
        resourceIndicators: {
          enabled: true,
          defaultResource: () => undefined,
          useGrantedResource: () => true,
          getResourceServerInfo: (_ctx, resourceIndicator) => {
            // Only the loopback MCP servers of the suite are resource servers.
            if (!/^http:\/\/127\.0\.0\.1:\d+\/mcp$/.test(resourceIndicator)) {
              throw new Provider.errors.InvalidTarget();
            }
            return {
              scope: SCOPES.join(' '),
              audience: resourceIndicator,
              accessTokenTTL: 300,
              accessTokenFormat: 'jwt',
              jwt: { sign: { alg: 'RS256' } },
            };
          },
        },
      },
      ttl: { ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 300 },
      extraTokenClaims: (_ctx, token) => claimsByClient.get(token.clientId),
    });
    provider.use(async (ctx, next) => {
      if (ctx.path === '/jwks') counter.jwks += 1;
      await next();
    });
    return provider.callback();
  };
  handler = build();

  return {
    issuer,
    jwksRequests: () => counter.jwks,
    /** The current signing key (first published key). */
    signingKey: () => keys[0],
    /** Switches the signing key: `key` signs from now on, the old keys stay published. */
    rotate: (key) => {
      keys = [key, ...keys];
      handler = build();
    },
    /** An access token from the token endpoint, as any client would obtain it. */
    tokenFor: async ({ clientId, clientSecret, resource, scope }) => {
      const body = new URLSearchParams({ grant_type: 'client_credentials', resource });
      if (scope) body.set('scope', scope);
      const res = await fetch(`${issuer}/token`, {
        method: 'POST',
        headers: {
          authorization: `Basic ${Buffer.from(`${clientId}:${clientSecret}`).toString('base64')}`,
          'content-type': 'application/x-www-form-urlencoded',
        },
        body,
        signal: AbortSignal.timeout(10_000),
      });
      const json = await res.json();
      if (!res.ok) throw new Error(`token endpoint: ${res.status} ${JSON.stringify(json)}`);
      return json.access_token;
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}
