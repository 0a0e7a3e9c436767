/**
 * HTTP routes beside MCP: RFC 9728 protected-resource metadata (so standard
 * MCP clients discover the issuer), delegation (a holder mints a narrower
 * token for a sub-agent), and the operator endpoints: revocation, and the
 * review of quarantined tool descriptors. Operator endpoints need a token
 * with a literal grant (`bastion:revoke`, `bastion:tools`); no glob confers one.
 *
 * @example
 *   app.use(adminRoutes({ broker, resource, authenticate }));
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { z } from 'zod';
import { OPERATOR_GRANT_PREFIX } from '../auth/attenuate.ts';
import { delegate } from '../auth/delegate.ts';
import { revoke } from '../auth/revocation.ts';
import type { Principal } from '../auth/verify.ts';
import type { Broker } from '../broker.ts';
import { Denial } from '../errors.ts';
import { principalForAudit } from '../pipeline.ts';
import type { AuthedRequest } from './http.ts';

/** The literal grants operator tokens need; globs never confer them. */
export const REVOKE_GRANT = `${OPERATOR_GRANT_PREFIX}revoke`;
export const TOOLS_GRANT = `${OPERATOR_GRANT_PREFIX}tools`;

export interface AdminRouteOptions {
  broker: Broker;
  resource: string;
  authenticate: (req: AuthedRequest, res: Response, next: NextFunction) => Promise<void>;
}

const RevokeSchema = z.union([
  z.strictObject({ jti: z.string().min(1).max(256), iss: z.string().min(1).max(1024) }),
  z.strictObject({ sub: z.string().min(1).max(256) }),
]);

export function adminRoutes({ broker, resource, authenticate }: AdminRouteOptions): Router {
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

  /** Refuses (403, audited) unless the caller's token holds `grant` literally. */
  const holds = async (req: AuthedRequest, res: Response, grant: string, event: string): Promise<boolean> => {
    const principal = principalOf(req);
    if (!principal.anonymous && principal.cap.some((g) => g.tool === grant)) return true;
    const denial = new Denial('authorize', 'BASTION_POLICY_DENIED', `this needs a token with the literal grant "${grant}"`);
    await audited(req, event, 'denied', {}, denial);
    res.status(403).json({ error: 'forbidden', code: denial.code, error_description: denial.reason });
    return false;
  };

  router.post('/admin/revoke', json, authenticate, async (req: AuthedRequest, res) => {
    if (!(await holds(req, res, REVOKE_GRANT, 'admin/revoke'))) return;
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

  router.get('/admin/tools/quarantine', authenticate, async (req: AuthedRequest, res) => {
    if (!(await holds(req, res, TOOLS_GRANT, 'admin/tools/review'))) return;
    res.json({ quarantined: await broker.pins.quarantined() });
  });

  router.post('/admin/tools/approve', json, authenticate, async (req: AuthedRequest, res) => {
    if (!(await holds(req, res, TOOLS_GRANT, 'admin/tools/approve'))) return;
    const tool = (req.body as { tool?: unknown })?.tool;
    if (typeof tool !== 'string') {
      res.status(400).json({ error: 'invalid_request', error_description: 'send {"tool": "<connector>__<tool>"}' });
      return;
    }
    const approved = await broker.pins.approve(tool, principalOf(req).sub);
    if (!approved) {
      res.status(404).json({ error: 'not_found', error_description: `${tool} is not quarantined` });
      return;
    }
    broker.registry.invalidate();
    broker.sessions.broadcast((s) => s.server.sendToolListChanged());
    res.json({ approved: tool, hash: approved.seen.hash });
  });

  return router;
}
