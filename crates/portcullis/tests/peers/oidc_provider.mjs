// A real OpenID Connect provider for the tests: npm `oidc-provider` (panva) with in-memory
// storage, a fresh RS256 key on every start, and a plain HTML login form.
//
// Run it from a folder whose node_modules holds oidc-provider. It listens on 127.0.0.1 on a
// free port, prints `issuer http://127.0.0.1:PORT` on stdout, then reads one line from stdin:
// the redirect URI of the relying party (the gateway, started after it). Only then does it
// create the provider and print `ready`.
//
// Environment:
//   OIDC_USERS_FILE  a JSON file {"alice": {"password": "…", "otp": "123456", "claims": {…}}, …},
//                    read afresh at every sign-in, so a test can change what the provider claims
//   OIDC_CLIENT_ID / OIDC_CLIENT_SECRET   the confidential client (default gateway / gateway-secret)
// A public client `tester` (redirect URI http://127.0.0.1:9/cb) lets a test hold the
// provider's own ID and access tokens.
//
// The login form takes a user name, a password and, for users with `otp`, a one-time code;
// a correct code signs in with amr ["pwd", "otp"], otherwise amr is ["pwd"]. There is no
// consent screen: every requested scope is granted.

import fs from 'node:fs';
import http from 'node:http';
import crypto from 'node:crypto';
import readline from 'node:readline';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const require = createRequire(`${process.cwd()}/`);
const { default: Provider } = await import(pathToFileURL(require.resolve('oidc-provider')).href);

const users = () => JSON.parse(fs.readFileSync(process.env.OIDC_USERS_FILE, 'utf8'));
const clientId = process.env.OIDC_CLIENT_ID || 'gateway';
const clientSecret = process.env.OIDC_CLIENT_SECRET || 'gateway-secret';

let provider;
let handler;

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, message) {
  return `<!doctype html><title>Test IdP sign-in</title>
<h1>Test IdP</h1>${message ? `<p id="error">${escape(message)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<label>User <input name="username" id="username"></label>
<label>Password <input name="password" id="password" type="password"></label>
<label>Code <input name="otp" id="otp"></label>
<button type="submit" id="submit">Sign in</button></form>`;
}

async function readForm(request) {
  let body = '';
  for await (const chunk of request) body += chunk;
  return Object.fromEntries(new URLSearchParams(body));
}

async function interaction(request, response) {
  const match = request.url.match(/^\/interaction\/([^/?]+)(\/login)?/);
  const details = await provider.interactionDetails(request, response);
  if (details.uid !== match[1]) throw new Error('interaction mismatch');
  if (request.method === 'GET') {
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    response.end(loginPage(details.uid));
    return;
  }
  const form = await readForm(request);
  const user = users()[form.username];
  if (!user || user.password !== form.password) {
    response.writeHead(401, { 'content-type': 'text/html; charset=utf-8' });
    response.end(loginPage(details.uid, 'invalid username or password'));
    return;
  }
  const amr = user.otp && form.otp === user.otp ? ['pwd', 'otp'] : ['pwd'];
  await provider.interactionFinished(request, response, { login: { accountId: form.username, amr } }, {
    mergeWithLastSubmission: false,
  });
}

const server = http.createServer((request, response) => {
  if (!provider) {
    response.writeHead(503).end('not ready');
    return;
  }
  if (request.url.startsWith('/interaction/')) {
    interaction(request, response).catch((error) => {
      response.writeHead(400, { 'content-type': 'text/plain' });
      response.end(String(error.message || error));
    });
    return;
  }
  handler(request, response);
});

server.listen(0, '127.0.0.1', async () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  console.log(`issuer ${issuer}`);
  const lines = readline.createInterface({ input: process.stdin });
  const redirectUri = (await lines[Symbol.asyncIterator]().next()).value.trim();
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const key = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
  provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }, {
      // A public client the tests use to hold the provider's own tokens.
      client_id: 'tester',
      redirect_uris: ['http://127.0.0.1:9/cb'],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    }],
    jwks: { keys: [key] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    pkce: { required: () => true },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, details) => `/interaction/${details.uid}` },
    claims: {
      // amr (how the person signed in) rides with openid, as Okta and Entra ID send it.
      openid: ['sub', 'amr'],
      email: ['email', 'email_verified'],
      profile: ['name', 'department', 'title', 'team'],
      groups: ['groups', 'roles'],
    },
    async findAccount(_ctx, id) {
      const user = users()[id];
      if (!user) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, ...user.claims }) };
    },
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope([...ctx.oidc.requestParamScopes].join(' '));
      await grant.save();
      return grant;
    },
  });
  handler = provider.callback();
  console.log('ready');
});
