// A real OpenID provider (panva's oidc-provider) for callgate's identity tests.
//
//   node server.mjs PORT CONFIG_JSON        (or OIDC_PROVIDER_PORT / OIDC_PROVIDER_CONFIG)
//
// Issuer http://127.0.0.1:PORT. Clients use the client_credentials grant and get JWT access tokens
// (resource indicators, accessTokenFormat 'jwt') whose audience is the config's `audience`, with the
// client's `claims` added (groups, GitHub-Actions-like repository/ref, Kubernetes-like nested claims).
//
// Config file (written by tests/identity_oidc/provider.py):
//   {
//     "adminToken": "…",            // required by the /admin endpoints (Authorization: Bearer …)
//     "audience": "callgate",       // `aud` of every access token
//     "accessTokenTTL": 600,        // seconds
//     "clients": [{"client_id": "…", "client_secret": "…", "alg": "RS256", "claims": {…},
//                  "auth_method": "client_secret_basic"}]   // or client_secret_post (RFC 6749 §2.3.1)
//   }
//
// Admin endpoints, for tests only (loopback, bearer adminToken):
//   POST /admin/rotate {"alg": "RS256"}  a new signing key for `alg` (new kid) becomes the active one;
//                                        older keys stay published so earlier tokens keep verifying.
//   POST /admin/retire {"kid": "…"}      stop publishing (and using) a key.
//   GET  /admin/stats                    requests served per path (discovery, JWKS, token) and keys.
//
// Keys can change without restarting: the HTTP server stays up and the oidc-provider instance
// behind it is rebuilt from the new key list (oidc-provider has no public API to change its keystore).

import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const RESOURCE = 'urn:callgate:gateway';
const ADMIN_BODY_LIMIT = 4096;

const port = Number(process.argv[2] ?? process.env.OIDC_PROVIDER_PORT);
const configPath = process.argv[3] ?? process.env.OIDC_PROVIDER_CONFIG;
if (!Number.isInteger(port) || port <= 0 || port > 65535 || !configPath) {
  console.error('usage: node server.mjs PORT CONFIG_JSON');
  process.exit(2);
}
const settings = JSON.parse(readFileSync(configPath, 'utf8'));
const issuer = `http://${HOST}:${port}`;
const audience = settings.audience ?? 'callgate';
const accessTokenTTL = settings.accessTokenTTL ?? 600;
const clients = new Map((settings.clients ?? []).map((c) => [c.client_id, c]));
if (!settings.adminToken) {
  console.error('config: adminToken is required');
  process.exit(2);
}
const adminToken = Buffer.from(String(settings.adminToken));

// --- keys ----------------------------------------------------------------------------------------

function newKey(alg) {
  const kid = `${alg.toLowerCase()}-${randomBytes(6).toString('hex')}`;
  let pair;
  if (alg === 'RS256' || alg === 'PS256') {
    pair = generateKeyPairSync('rsa', { modulusLength: 2048 });
  } else if (alg === 'ES256') {
    pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  } else if (alg === 'EdDSA') {
    pair = generateKeyPairSync('ed25519');
  } else {
    throw new Error(`unsupported alg ${alg}`);
  }
  return { ...pair.privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

// The first key of an alg is the active one (oidc-provider signs with the first match).
let keys = ['RS256', 'PS256', 'ES256', 'EdDSA'].map(newKey);
const requests = {};

// --- the provider ----------------------------------------------------------------------------------

function buildProvider() {
  const provider = new Provider(issuer, {
    jwks: { keys },
    clients: [...clients.values()].map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      token_endpoint_auth_method: c.auth_method ?? 'client_secret_basic',
      redirect_uris: [],
      response_types: [],
    })),
    scopes: ['api'],
    ttl: { ClientCredentials: accessTokenTTL },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resourceIndicator, client) => {
          if (resourceIndicator !== RESOURCE) {
            throw new Provider.errors.InvalidTarget();
          }
          const alg = clients.get(client.clientId)?.alg ?? 'RS256';
          return {
            scope: 'api',
            audience,
            accessTokenTTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg } },
          };
        },
      },
    },
    enabledJWA: {
      idTokenSigningAlgValues: ['RS256', 'PS256', 'ES256', 'EdDSA'],
    },
    extraTokenClaims: (ctx, token) => clients.get(token.clientId)?.claims ?? undefined,
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  return provider.callback();
}

let handler = buildProvider();

// --- admin -----------------------------------------------------------------------------------------

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

function authorized(req) {
  const given = Buffer.from(String(req.headers.authorization ?? '').replace(/^Bearer /, ''));
  return given.length === adminToken.length && timingSafeEqual(given, adminToken);
}

async function readJson(req) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > ADMIN_BODY_LIMIT) throw new Error('body too large');
    chunks.push(chunk);
  }
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : {};
}

function publicKeys() {
  return keys.map(({ kid, alg }) => ({ kid, alg }));
}

async function admin(req, res, path) {
  if (!authorized(req)) return send(res, 401, { error: 'unauthorized' });
  if (req.method === 'GET' && path === '/admin/stats') {
    return send(res, 200, { requests, keys: publicKeys() });
  }
  if (req.method === 'POST' && path === '/admin/rotate') {
    const { alg = 'RS256' } = await readJson(req);
    const key = newKey(alg);
    const previous = keys.find((k) => k.alg === alg)?.kid ?? null;
    keys = [key, ...keys];
    handler = buildProvider();
    return send(res, 200, { kid: key.kid, previous, keys: publicKeys() });
  }
  if (req.method === 'POST' && path === '/admin/retire') {
    const { kid } = await readJson(req);
    const remaining = keys.filter((k) => k.kid !== kid);
    if (remaining.length === keys.length) return send(res, 404, { error: 'no such kid' });
    keys = remaining;
    handler = buildProvider();
    return send(res, 200, { keys: publicKeys() });
  }
  return send(res, 404, { error: 'not found' });
}

// --- HTTP ----------------------------------------------------------------------------------------

const server = createServer((req, res) => {
  const path = new URL(req.url, issuer).pathname;
  if (path.startsWith('/admin/')) {
    admin(req, res, path).catch((err) => send(res, 400, { error: String(err.message ?? err) }));
    return;
  }
  requests[path] = (requests[path] ?? 0) + 1;
  handler(req, res);
});

server.listen(port, HOST, () => {
  console.log(`oidc-provider listening on ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
