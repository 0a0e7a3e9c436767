/**
 * `bastion token exchange` and `bastion token client-credentials`: the
 * headless grants from a script, against a running broker's token endpoint
 * (POST /oauth/token). Each prints the capability token on stdout, or the
 * broker's OAuth error on stderr with exit status 1.
 *
 * @example
 *   process.exitCode = await tokenExchangeCommand(['--subject-token-file', '/var/run/secrets/tokens/bastion']);
 *   process.exitCode = await clientCredentialsCommand(['--client-id', 'nightly-report', '--key-file', 'key.json']);
 */
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { importJWK, SignJWT, type JWK } from 'jose';
import { defaultResource, loadConfig } from '../config.ts';
import { CLI_CLIENT_ID, TOKEN_EXCHANGE } from '../identity/grants/token-exchange.ts';

export const TOKEN_EXCHANGE_HELP = `usage: bastion token exchange --subject-token-file FILE [--actor-token-file FILE] [--subject-token-type jwt|id_token] [--client-id ID] [--url BROKER] [--config FILE]

Exchanges the identity your platform gave this workload (a Kubernetes
projected service-account token, a GitHub Actions OIDC token, another JWT from
an issuer in identity.token_exchange.issuers) for a capability token, at a
running broker's token endpoint (RFC 8693), and prints it. The grants policy
decides its tools from the token's claims. Its audience must be the broker's
resource (e.g. http://127.0.0.1:8080/mcp).

  --subject-token-file FILE   the workload's JWT ("-" reads standard input)
  --actor-token-file FILE     a JWT of the party acting for the subject; recorded in the token's act chain
  --subject-token-type T      jwt (default) or id_token; the actor token is always a jwt
  --client-id ID              default bastion-cli (the broker's public client for token exchange)
  --url BROKER                the broker's base URL (default from config, e.g. http://127.0.0.1:8080)

Exit status 0 with the token on stdout; 1 with the broker's OAuth error
(error and error_description) on stderr; 2 for bad usage.`;

export const CLIENT_CREDENTIALS_HELP = `usage: bastion token client-credentials --client-id ID --key-file FILE [--url BROKER] [--config FILE]

Gets a capability token for a client configured in identity.clients with
grant_types [client_credentials] and its public keys, and prints it. The
client authenticates with a private_key_jwt assertion (RFC 7523) signed here
with its private key: one audience (the broker's issuer), 60 seconds, a fresh
jti (each works once). No shared secret is ever sent.

  --client-id ID    the client's id (required)
  --key-file FILE   its private JWK (EdDSA, ES256, PS256 or RS256; kid matching its registered JWKS), e.g.
                    the signing-key.json of "bastion keys generate" (required)
  --url BROKER      the broker's base URL (default from config, e.g. http://127.0.0.1:8080)

Exit status 0 with the token on stdout; 1 with the broker's OAuth error on
stderr; 2 for bad usage.`;

const JWT_TYPES = { jwt: 'urn:ietf:params:oauth:token-type:jwt', id_token: 'urn:ietf:params:oauth:token-type:id_token' } as const;

class UsageError extends Error {}

async function readToken(file: string): Promise<string> {
  const text = file === '-' ? await new Response(process.stdin as unknown as ReadableStream).text() : await readFile(file, 'utf8');
  const token = text.trim();
  if (!token) throw new UsageError(`${file} holds no token`);
  return token;
}

/** The broker's origin: --url, or the configured resource's. */
async function brokerOrigin(url: string | undefined, configFile: string | undefined): Promise<string> {
  return new URL(url ?? defaultResource(await loadConfig(configFile))).origin;
}

/** POSTs a token request; prints the token (0) or the OAuth error (1). */
async function requestToken(origin: string, params: Record<string, string>): Promise<number> {
  let response: Response;
  try {
    response = await fetch(`${origin}/oauth/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(params) });
  } catch (error) {
    process.stderr.write(`bastion: cannot reach ${origin}: ${(error as Error).message}\n`);
    return 1;
  }
  const body = (await response.json().catch(() => ({}))) as Record<string, unknown>;
  if (!response.ok || typeof body.access_token !== 'string') {
    process.stderr.write(`bastion: ${origin}/oauth/token refused (${response.status}): ${String(body.error ?? 'no token')}${body.error_description ? `: ${String(body.error_description)}` : ''}\n`);
    return 1;
  }
  process.stdout.write(`${body.access_token}\n`);
  return 0;
}

/** Runs a command body; usage mistakes exit 2 with the message. */
async function run(body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (error) {
    if (!(error instanceof UsageError) && !(error as NodeJS.ErrnoException).code) throw error;
    process.stderr.write(`bastion: ${(error as Error).message}\n`);
    return 2;
  }
}

export function tokenExchangeCommand(argv: string[]): Promise<number> {
  return run(async () => {
    const { values } = parseArgs({
      args: argv,
      options: {
        'subject-token-file': { type: 'string' },
        'actor-token-file': { type: 'string' },
        'subject-token-type': { type: 'string', default: 'jwt' },
        'client-id': { type: 'string', default: CLI_CLIENT_ID },
        url: { type: 'string' },
        config: { type: 'string' },
        help: { type: 'boolean' },
      },
    });
    if (values.help) {
      console.log(TOKEN_EXCHANGE_HELP);
      return 0;
    }
    if (!values['subject-token-file']) throw new UsageError('token exchange: --subject-token-file is required');
    const type = values['subject-token-type'] as keyof typeof JWT_TYPES;
    if (!(type in JWT_TYPES)) throw new UsageError('token exchange: --subject-token-type is jwt or id_token');
    const params: Record<string, string> = {
      grant_type: TOKEN_EXCHANGE,
      client_id: values['client-id'],
      subject_token: await readToken(values['subject-token-file']),
      subject_token_type: JWT_TYPES[type],
    };
    if (values['actor-token-file']) Object.assign(params, { actor_token: await readToken(values['actor-token-file']), actor_token_type: JWT_TYPES.jwt });
    return requestToken(await brokerOrigin(values.url, values.config), params);
  });
}

/** The JWS algorithm a private JWK signs with. */
function algorithmOf(jwk: JWK): string {
  if (jwk.alg) return jwk.alg;
  if (jwk.kty === 'OKP') return 'EdDSA';
  if (jwk.kty === 'EC' && jwk.crv === 'P-256') return 'ES256';
  if (jwk.kty === 'RSA') return 'PS256';
  throw new UsageError('--key-file: give the key an "alg" (EdDSA, ES256, PS256 or RS256)');
}

export function clientCredentialsCommand(argv: string[]): Promise<number> {
  return run(async () => {
    const { values } = parseArgs({
      args: argv,
      options: { 'client-id': { type: 'string' }, 'key-file': { type: 'string' }, url: { type: 'string' }, config: { type: 'string' }, help: { type: 'boolean' } },
    });
    if (values.help) {
      console.log(CLIENT_CREDENTIALS_HELP);
      return 0;
    }
    if (!values['client-id']) throw new UsageError('token client-credentials: --client-id is required');
    if (!values['key-file']) throw new UsageError('token client-credentials: --key-file is required');
    let jwk: JWK;
    try {
      jwk = JSON.parse(await readFile(values['key-file'], 'utf8')) as JWK;
    } catch (error) {
      throw new UsageError(`--key-file: ${(error as Error).message}`);
    }
    if (!jwk.d) throw new UsageError('--key-file: not a private key (no "d")');
    const alg = algorithmOf(jwk);
    const origin = await brokerOrigin(values.url, values.config);
    const clientId = values['client-id'];
    const assertion = await new SignJWT({})
      .setProtectedHeader({ alg, typ: 'JWT', ...(jwk.kid ? { kid: jwk.kid } : {}) })
      .setIssuer(clientId)
      .setSubject(clientId)
      .setAudience(origin)
      .setIssuedAt()
      .setExpirationTime('60s')
      .setJti(randomUUID())
      .sign(await importJWK(jwk, alg));
    return requestToken(origin, {
      grant_type: 'client_credentials',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: assertion,
    });
  });
}
