// A real local OpenID Connect provider for the quickstart and the tests: panva's oidc-provider
// (OpenID-certified), on 127.0.0.1 only, with two demo users and one printed password.
//
//   IDP_PORT            port [8766]
//   IDP_REDIRECT_URI    the gateway's callback [http://127.0.0.1:8765/oauth/callback]; the console's
//                       (/console/callback on the same origin) is registered beside it
//   IDP_CLIENT_SECRET   the gateway's client secret (client_id mcp-gateway) [quickstart-idp-secret]
//   IDP_PASSWORD        the demo users' password [a random one, printed]
//
// Users: alice@example.com and bob@example.com (verified emails). The login page is this file's
// own; the gateway is a first-party client, so no consent is asked here (the gateway asks its own).
import crypto from 'node:crypto';
import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.env.IDP_PORT || 8766);
const issuer = `http://127.0.0.1:${port}`;
const redirect = process.env.IDP_REDIRECT_URI || 'http://127.0.0.1:8765/oauth/callback';
const clientSecret = process.env.IDP_CLIENT_SECRET || 'quickstart-idp-secret';
const password = process.env.IDP_PASSWORD || crypto.randomBytes(6).toString('base64url');
const users = {
  'alice@example.com': { sub: 'alice', name: 'Alice Example' },
  'bob@example.com': { sub: 'bob', name: 'Bob Example' },
};
const bySub = Object.fromEntries(Object.entries(users).map(([email, u]) => [u.sub, { ...u, email }]));

const key = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'mcp-gateway', client_secret: clientSecret,
    redirect_uris: [redirect, redirect.replace(/\/oauth\/callback$/, '/console/callback')],
    grant_types: ['authorization_code'], response_types: ['code'], token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [{ ...key, use: 'sig', kid: crypto.randomUUID() }] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  scopes: ['openid', 'email', 'profile'],
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const user = bySub[id];
    if (!user) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, email: user.email, email_verified: true, name: user.name }) };
  },
});

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const loginPage = (uid, error) => `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in</title></head>
<body><h1>Example IdP: sign in</h1>${error ? `<p id="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<label>Email <input id="email" name="email" autocomplete="username"></label>
<label>Password <input id="password" name="password" type="password" autocomplete="current-password"></label>
<button id="submit" type="submit">Sign in</button></form></body></html>`;

async function body(req) {
  let data = '';
  for await (const chunk of req) {
    data += chunk;
    if (data.length > 8192) throw new Error('body too large');
  }
  return new URLSearchParams(data);
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store',
    'content-security-policy': "default-src 'none'; frame-ancestors 'none'" });
  res.end(html);
}

const oidc = provider.callback();
const server = http.createServer(async (req, res) => {
  const match = /^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/.exec(new URL(req.url, issuer).pathname);
  if (!match) return oidc(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    if (match[2] && req.method === 'POST') {
      const form = await body(req);
      const email = (form.get('email') || '').trim().toLowerCase();
      if (!users[email] || form.get('password') !== password) {
        return send(res, 401, loginPage(details.uid, 'Unknown user or wrong password.'));
      }
      return await provider.interactionFinished(req, res, { login: { accountId: users[email].sub } },
        { mergeWithLastSubmission: false });
    }
    if (details.prompt.name === 'login') return send(res, 200, loginPage(details.uid));
    // consent: the gateway is this IdP's own first-party client; grant what it asked for
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    const missing = details.prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    const grantId = await grant.save();
    return await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  } catch (err) {
    return send(res, 400, `<!doctype html><p id="error">${escape(err.message)}</p>`);
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`IdP ${issuer} ready: users alice@example.com, bob@example.com; password: ${password}`);
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
