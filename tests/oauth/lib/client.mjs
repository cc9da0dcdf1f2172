// The official MCP TypeScript SDK client, connected the way a client nobody
// configured by hand connects: only the server URL and either client
// credentials (OAuth discovery does the rest) or an API key header. Every
// HTTP exchange is recorded, so a test can assert the discovery steps.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';

/**
 * Connects an SDK client to `url`. With {clientId, clientSecret, scope} the
 * SDK's client-credentials provider does OAuth discovery; with {apiKey} the
 * key is sent as `Authorization: Bearer`.
 *
 * `scope` is the client's registered scope: for the client credentials
 * grant the SDK (1.32) requests the scope of the client's own metadata and
 * not the one the server's challenge or metadata names (it uses those only
 * for interactive flows), as a machine client registered for a scope does. Returns {client, exchanges, close()}:
 * exchanges are {method, url, status, body} in order (body: form fields of
 * a token request).
 */
export async function connect(url, { clientId, clientSecret, scope, apiKey } = {}) {
  const exchanges = [];
  const recordingFetch = async (input, init = {}) => {
    const res = await fetch(input, { ...init, signal: init.signal ?? AbortSignal.timeout(10_000) });
    const body = init.body instanceof URLSearchParams ? Object.fromEntries(init.body) : undefined;
    exchanges.push({ method: init.method ?? 'GET', url: String(input), status: res.status, body });
    return res;
  };
  const options = { fetch: recordingFetch };
  if (clientId) {
    options.authProvider = new ClientCredentialsProvider({ clientId, clientSecret, scope });
  }
  if (apiKey) {
    options.requestInit = { headers: { authorization: `Bearer ${apiKey}` } };
  }
  const client = new Client({ name: 'bulkhead-oauth-suite', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(url), options);
  await client.connect(transport, { timeout: 20_000 });
  return { client, exchanges, close: () => client.close() };
}
