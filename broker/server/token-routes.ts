/**
 * HTTP routes around tokens: RFC 9728 protected-resource metadata (so
 * standard MCP clients discover the issuer), delegation (a holder mints a
 * narrower token for a sub-agent) and revocation (operators stop a token or
 * a subject at once).
 *
 * @example
 *   app.use(tokenRoutes({ broker, resource, authenticate, refuse }));
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { z } from 'zod';
import { delegate } from '../auth/delegate.ts';
import { revoke } from '../auth/revocation.ts';
import type { Principal } from '../auth/verify.ts';
import type { Broker } from '../broker.ts';
import { Denial } from '../errors.ts';
import { principalForAudit } from '../pipeline.ts';
import type { AuthedRequest } from './http.ts';

/** The literal grant an operator token needs for POST /admin/revoke; globs never confer it. */
export const REVOKE_GRANT = 'bastion:revoke';

export interface TokenRouteOptions {
  broker: Broker;
  resource: string;
  authenticate: (req: AuthedRequest, res: Response, next: NextFunction) => Promise<void>;
}

const RevokeSchema = z.union([
  z.strictObject({ jti: z.string().min(1).max(256), iss: z.string().min(1).max(1024) }),
  z.strictObject({ sub: z.string().min(1).max(256) }),
]);

export function tokenRoutes({ broker, resource, authenticate }: TokenRouteOptions): Router {
  const router = express.Router();
  const { config, pipeline } = broker;
  const resourcePath = new URL(resource).pathname;

  const metadata = (_req: Request, res: Response) => {
    res.json({
      resource,
      authorization_servers: broker.issuers.map((i) => i.issuer).filter((iss) => /^https?:\/\//.test(iss)),
      bearer_methods_supported: ['header'],
      resource_name: 'Bastion',
      dpop_signing_alg_values_supported: config.auth.algorithms,
      dpop_bound_access_tokens_required: false,
    });
  };
  router.get('/.well-known/oauth-protected-resource', metadata);
  router.get(`/.well-known/oauth-protected-resource${resourcePath}`, metadata);

  const json = express.json({ limit: 65_536, type: () => true });
  const principalOf = (req: AuthedRequest) => req.auth?.extra?.principal as Principal;

  const audited = async (req: AuthedRequest, event: string, outcome: 'ok' | 'denied', detail: Record<string, unknown>, denial?: Denial) => {
    await pipeline.recordEvent({
      event,
      transport: 'http',
      principal: principalForAudit(principalOf(req)),
      outcome,
      detail,
      ...(denial ? { denial: denial.toJSON() } : {}),
    });
  };

  router.post('/token/delegate', json, authenticate, async (req: AuthedRequest, res) => {
    const signer = broker.delegationSignerFor(resource);
    if (!signer) {
      res.status(404).json({ error: 'not_found', error_description: 'delegation is disabled on this broker' });
      return;
    }
    try {
      const { token, exp } = await delegate(principalOf(req), req.body, signer);
      await audited(req, 'token/delegate', 'ok', { child_sub: (req.body as { sub: string }).sub, exp });
      res.json({ access_token: token, token_type: 'Bearer', expires_at: exp });
    } catch (error) {
      const denial = error instanceof Denial ? error : new Denial('authorize', 'BASTION_DELEGATION_REFUSED', (error as Error).message);
      await audited(req, 'token/delegate', 'denied', {}, denial);
      res.status(403).json({ error: 'delegation_refused', code: denial.code, error_description: denial.reason });
    }
  });

  router.post('/admin/revoke', json, authenticate, async (req: AuthedRequest, res) => {
    const principal = principalOf(req);
    if (principal.anonymous || !principal.cap.some((grant) => grant.tool === REVOKE_GRANT)) {
      const denial = new Denial('authorize', 'BASTION_POLICY_DENIED', `revocation needs a token with the literal grant "${REVOKE_GRANT}"`);
      await audited(req, 'admin/revoke', 'denied', {}, denial);
      res.status(403).json({ error: 'forbidden', code: denial.code, error_description: denial.reason });
      return;
    }
    const parsed = RevokeSchema.safeParse(req.body);
    if (!parsed.success) {
      res.status(400).json({ error: 'invalid_request', error_description: 'send {"jti": "...", "iss": "..."} or {"sub": "..."}' });
      return;
    }
    try {
      await revoke(broker.state, parsed.data, config.auth.max_ttl);
    } catch (error) {
      res.status(503).json({ error: 'temporarily_unavailable', error_description: `state store unavailable: ${(error as Error).message}` });
      return;
    }
    await audited(req, 'admin/revoke', 'ok', { revoked: parsed.data });
    res.json({ revoked: parsed.data });
  });

  return router;
}
