// The TypeScript SDK's own ClientCredentialsProvider, unmodified: url, client id, secret on the command line.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';
const [url, id, secret] = process.argv.slice(2);
const authProvider = new ClientCredentialsProvider({ clientId: id, clientSecret: secret });
const client = new Client({ name: 'ts-cc', version: '1.0.0' });
await client.connect(new StreamableHTTPClientTransport(new URL(url), { authProvider }));
const tools = await client.listTools();
const result = await client.callTool({ name: 'time__get_current_time', arguments: { timezone: 'UTC' } });
console.log(JSON.stringify({ tools: tools.tools.map((t) => t.name).sort(), isError: result.isError ?? false }));
await client.close();
