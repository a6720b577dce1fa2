// A real OpenID provider (panva/oidc-provider, certified) for mcp-guard's identity suites.
//
//   node provider.mjs genkey OUT.json KID        writes a private RSA JWK (RS256, use=sig), and
//                                                the same key as OUT.pem (PKCS#8)
//   node provider.mjs --port P --keys A.json[,B.json] [--ttl SECONDS] [--host ADDRESS]
//
// Issuer http://ADDRESS:P (ADDRESS 127.0.0.1 unless given: the real-node suite binds it on the
// node's bridge so pods reach it). The first key signs; every key is published at /jwks, so a key
// rotation is "restart with --keys NEW,OLD" (then "--keys NEW" to retire the old one).
//
// Clients (client_secret_basic):
//   agent-admin  / admin-secret    client_credentials, roles [mcp-admin], groups [ops, dev]
//   agent-reader / reader-secret   client_credentials, roles [mcp-reader], groups [dev]
//   mcp-guard-sidecar / sidecar-secret   RFC 8693 token exchange only
// Access tokens: resourceIndicators, RS256 JWT (typ at+jwt), aud = the requested resource,
// claims roles, groups, email. Token exchange: verifies the subject token with the provider's own
// keys, issues an at+jwt for `audience` with act = {sub: exchanging client, act: {sub: agent}}.
// GET /test/stats -> {"exchanges": N, "token_requests": N} (for cache assertions).
// Prints "READY <port>" once listening.

import { readFileSync, writeFileSync } from 'node:fs';
import { randomUUID, createPrivateKey } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';
import { generateKeyPair, exportJWK, importJWK, jwtVerify, createLocalJWKSet, SignJWT } from 'jose';

const argv = process.argv.slice(2);

if (argv[0] === 'genkey') {
  const [, out, kid] = argv;
  const { privateKey } = await generateKeyPair('RS256', { modulusLength: 2048, extractable: true });
  const jwk = await exportJWK(privateKey);
  Object.assign(jwk, { kid, alg: 'RS256', use: 'sig' });
  writeFileSync(out, JSON.stringify(jwk));
  // The same key as PKCS#8 PEM, so suites can forge tokens the provider would never issue.
  const pem = createPrivateKey({ key: jwk, format: 'jwk' }).export({ type: 'pkcs8', format: 'pem' });
  writeFileSync(out.replace(/\.json$/, '.pem'), pem);
  process.exit(0);
}

const arg = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const port = Number(arg('--port'));
const ttl = Number(arg('--ttl', '300'));
const keys = arg('--keys').split(',').map((f) => JSON.parse(readFileSync(f, 'utf8')));
const host = arg('--host', '127.0.0.1');
const issuer = `http://${host}:${port}`;
const stats = { exchanges: 0, token_requests: 0 };

const ACCOUNTS = {
  'agent-admin': { roles: ['mcp-admin'], groups: ['ops', 'dev'], email: 'admin-agent@example.test' },
  'agent-reader': { roles: ['mcp-reader'], groups: ['dev'], email: 'reader-agent@example.test' },
};
const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const AT = 'urn:ietf:params:oauth:token-type:access_token';

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'agent-admin',
      client_secret: 'admin-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: 'mcp:tools mcp:admin',
    },
    {
      client_id: 'agent-reader',
      client_secret: 'reader-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: 'mcp:tools',
    },
    {
      client_id: 'mcp-guard-sidecar',
      client_secret: 'sidecar-secret',
      grant_types: [EXCHANGE],
      redirect_uris: [],
      response_types: [],
    },
  ],
  jwks: { keys },
  cookies: { keys: ['mcp-guard-test-cookie-key'] },
  scopes: ['openid', 'mcp:tools', 'mcp:admin'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: 'mcp:tools mcp:admin',
        audience: resource,
        accessTokenTTL: ttl,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  ttl: { ClientCredentials: () => ttl },
  extraTokenClaims: async (ctx, token) => ACCOUNTS[token.clientId] ?? {},
});

const publicJwks = createLocalJWKSet({
  keys: keys.map(({ kty, n, e, kid, alg, use }) => ({ kty, n, e, kid, alg, use })),
});
const signingKey = await importJWK(keys[0], 'RS256');

provider.registerGrantType(
  EXCHANGE,
  async (ctx) => {
    stats.exchanges += 1;
    const p = ctx.oidc.params;
    if (p.subject_token_type !== AT) throw new errors.InvalidRequest('unsupported subject_token_type');
    if (!p.audience) throw new errors.InvalidTarget('audience is required');
    let subject;
    try {
      ({ payload: subject } = await jwtVerify(p.subject_token, publicJwks, { issuer }));
    } catch (e) {
      throw new errors.InvalidGrant(`subject_token: ${e.code ?? 'invalid'}`);
    }
    const now = Math.floor(Date.now() / 1000);
    const exp = Math.min(now + ttl, subject.exp);
    const claims = {
      sub: subject.sub,
      client_id: ctx.oidc.client.clientId,
      act: subject.client_id
        ? { sub: ctx.oidc.client.clientId, act: { sub: subject.client_id } }
        : { sub: ctx.oidc.client.clientId },
      roles: subject.roles,
      groups: subject.groups,
      email: subject.email,
      scope: p.scope ?? subject.scope,
      jti: randomUUID(),
    };
    const jwt = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', kid: keys[0].kid, typ: 'at+jwt' })
      .setIssuer(issuer)
      .setAudience(p.audience)
      .setIssuedAt(now)
      .setExpirationTime(exp)
      .sign(signingKey);
    ctx.body = { access_token: jwt, issued_token_type: AT, token_type: 'Bearer', expires_in: exp - now };
  },
  new Set(['subject_token', 'subject_token_type', 'audience', 'resource', 'scope', 'requested_token_type', 'actor_token', 'actor_token_type']),
);

provider.use(async (ctx, next) => {
  if (ctx.path === '/test/stats') {
    ctx.body = stats;
    return;
  }
  if (ctx.path === '/token') stats.token_requests += 1;
  await next();
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.on('grant.error', (ctx, err) => console.error('grant.error', err.message, err.error_description ?? ''));

provider.listen(port, host, () => console.log(`READY ${port}`));
