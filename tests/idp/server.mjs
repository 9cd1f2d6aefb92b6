// A real OpenID provider for the hub's tests: panva's oidc-provider, issuing JWT access tokens
// through the client_credentials grant with resource indicators.
//
//   node server.mjs <port> <private JWKS file>
//
// Environment: CLOCK_SKEW_SECONDS moves this provider's clock (iat/exp) ahead of the hub's.
// The resource decides the signing algorithm: urn:hub (RS256) or urn:hub:es256 (ES256); both
// tokens carry the audience urn:hub. Clients get their roles as scopes ("hub:agent ..."), and
// every token carries nested claims as Keycloak-like providers issue them.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const [port, jwksFile] = process.argv.slice(2);
const skew = Number(process.env.CLOCK_SKEW_SECONDS || 0) * 1000;
if (skew) {
  const realNow = Date.now;
  Date.now = () => realNow() + skew;
}

const AUDIENCE = 'urn:hub';
const SCOPES = 'hub:agent hub:dashboard hub:operator';

const configuration = {
  scopes: ['openid', ...SCOPES.split(' ')],
  jwks: JSON.parse(readFileSync(jwksFile, 'utf8')),
  clients: [
    {
      client_id: 'agent-7',
      client_secret: 'agent-7-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: SCOPES,
    },
  ],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => AUDIENCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => ({
        audience: AUDIENCE,
        scope: SCOPES,
        accessTokenFormat: 'jwt',
        accessTokenTTL: 600,
        jwt: { sign: { alg: resource === 'urn:hub:es256' ? 'ES256' : 'RS256' } },
      }),
    },
  },
  extraTokenClaims: () => ({
    realm_access: { roles: ['fleet-agent', 'offline_access'] },
    org: { id: 'tenant-a' },
  }),
  cookies: { keys: ['test-only-cookie-key'] },
};

const provider = new Provider(`http://127.0.0.1:${port}`, configuration);
provider.listen(Number(port), '127.0.0.1', () => {
  process.stdout.write('ready\n');
});
