/**
 * A stand-in workload issuer for the token-exchange tests: a real OpenID
 * provider (oidc-provider) on a loopback port serving discovery and its JWKS,
 * whose key also signs the tokens a platform would hand its workloads:
 * Kubernetes projected service-account tokens and GitHub Actions OIDC
 * tokens, claim for claim. `sign` makes any other (broken) token with the
 * same key.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, importJWK, SignJWT, type JWK, type JWTHeaderParameters, type JWTPayload } from 'jose';
import Provider from 'oidc-provider';

export interface WorkloadIssuer {
  issuer: string;
  jwksUri: string;
  /** The private signing key (RS256), kid `workload-key`. */
  privateJwk: JWK;
  /** Signs `claims` with the issuer's key (RS256); iss/iat/nbf/exp/jti default to a valid five-minute token. */
  sign(claims: JWTPayload, header?: Partial<JWTHeaderParameters>): Promise<string>;
  /** A Kubernetes projected service-account token (RS256, no typ). */
  kubernetesToken(options: { namespace: string; serviceAccount: string; audience: string; extra?: JWTPayload }): Promise<string>;
  /** A GitHub Actions OIDC token (RS256, typ JWT). */
  githubToken(options: { repository: string; workflow: string; audience: string; ref?: string; extra?: JWTPayload }): Promise<string>;
  close(): Promise<void>;
}

export async function startWorkloadIssuer(): Promise<WorkloadIssuer> {
  const server: Server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const privateJwk: JWK = { ...(await exportJWK(privateKey)), kid: 'workload-key', alg: 'RS256', use: 'sig' };
  const key = await importJWK(privateJwk, 'RS256');
  const provider = new Provider(issuer, {
    jwks: { keys: [privateJwk as never] },
    clientDefaults: { id_token_signed_response_alg: 'RS256' } as never,
    cookies: { keys: ['workload-issuer-cookie-key-0123'] },
    features: { devInteractions: { enabled: false } },
  });
  server.on('request', provider.callback());

  const sign: WorkloadIssuer['sign'] = (claims, header = {}) => {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ iss: issuer, iat: now, nbf: now, exp: now + 300, jti: randomUUID(), ...claims })
      .setProtectedHeader({ alg: 'RS256', kid: 'workload-key', ...header } as JWTHeaderParameters)
      .sign(key);
  };
  return {
    issuer,
    jwksUri: `${issuer}/jwks`,
    privateJwk,
    sign,
    kubernetesToken: ({ namespace, serviceAccount, audience, extra = {} }) =>
      sign({
        aud: [audience],
        sub: `system:serviceaccount:${namespace}:${serviceAccount}`,
        'kubernetes.io': { namespace, serviceaccount: { name: serviceAccount, uid: randomUUID() }, pod: { name: `${serviceAccount}-7d9f`, uid: randomUUID() } },
        ...extra,
      }),
    githubToken: ({ repository, workflow, audience, ref = 'refs/heads/main', extra = {} }) =>
      sign(
        {
          aud: audience,
          sub: `repo:${repository}:ref:${ref}`,
          repository,
          repository_owner: repository.split('/')[0],
          workflow,
          ref,
          event_name: 'push',
          job_workflow_ref: `${repository}/.github/workflows/${workflow}.yml@${ref}`,
          runner_environment: 'github-hosted',
          ...extra,
        },
        { typ: 'JWT' },
      ),
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
