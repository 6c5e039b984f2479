// The TypeScript SDK's OAuth client (authorization code + PKCE) with a Client ID Metadata Document:
//   node ts_sign_in.mjs MCP_URL CLIENT_METADATA_URL REDIRECT_URI
// Prints "AUTHORIZE <url>" when the SDK hands over the authorization URL, reads the code from stdin,
// finishes the sign-in, lists and calls tools, refreshes once, and prints one JSON line.
import readline from 'node:readline';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError, refreshAuthorization, discoverAuthorizationServerMetadata } from '@modelcontextprotocol/sdk/client/auth.js';

const [url, clientMetadataUrl, redirectUrl] = process.argv.slice(2);
const store = {};
const provider = {
  get redirectUrl() { return redirectUrl; },
  clientMetadataUrl,
  get clientMetadata() {
    return { client_name: 'TS IDE', redirect_uris: [redirectUrl], grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'], token_endpoint_auth_method: 'none' };
  },
  clientInformation() { return store.client; },
  saveClientInformation(info) { store.client = info; },
  tokens() { return store.tokens; },
  saveTokens(tokens) { store.tokens = tokens; },
  redirectToAuthorization(authorizationUrl) { console.log(`AUTHORIZE ${authorizationUrl.href}`); },
  saveCodeVerifier(v) { store.verifier = v; },
  codeVerifier() { return store.verifier; },
};
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
let transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
let client = new Client({ name: 'ts-ide', version: '1.0.0' });
try {
  await client.connect(transport);
} catch (err) {
  if (!(err instanceof UnauthorizedError)) throw err;
  const code = (await lines.next()).value.trim();
  await transport.finishAuth(code);
  transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  client = new Client({ name: 'ts-ide', version: '1.0.0' });
  await client.connect(transport);
}
const tools = await client.listTools();
const result = await client.callTool({ name: 'time__get_current_time', arguments: { timezone: 'UTC' } });
await client.close();
const first = store.tokens;
const metadata = await discoverAuthorizationServerMetadata(new URL(url).origin);
const refreshed = await refreshAuthorization(new URL(url).origin, {
  metadata, clientInformation: store.client, refreshToken: first.refresh_token, resource: new URL(`${new URL(url).origin}/mcp`) });
console.log(JSON.stringify({ tools: tools.tools.map((t) => t.name).sort(), isError: result.isError ?? false,
  access_token: first.access_token, refresh_token: first.refresh_token, refreshed }));
process.exit(0);
