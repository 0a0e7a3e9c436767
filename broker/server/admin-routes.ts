/**
 * HTTP routes beside MCP: RFC 9728 protected-resource metadata (so standard
 * MCP clients discover the issuer), delegation (a holder mints a narrower
 * token for a sub-agent), and the operator endpoints: revocation, the
 * review of quarantined tool descriptors, and the agents' flows (show,
 * clear). Operator endpoints need a token with a literal grant
 * (`bastion:revoke`, `bastion:tools`, `bastion:flows`); no glob confers one.
 *
 * @example
 *   app.use(adminRoutes({ broker, resource, authenticate }));
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { decodeJwt } from 'jose';
import { z } from 'zod';
import { OPERATOR_GRANT_PREFIX } from '../auth/attenuate.ts';
import { delegate } from '../auth/delegate.ts';
import { flowKey } from '../flows/control.ts';
import { revoke } from '../auth/revocation.ts';
import type { Principal } from '../auth/verify.ts';
import type { Broker } from '../broker.ts';
import { Denial } from '../errors.ts';
import { principalForAudit } from '../pipeline.ts';
import type { AuthedRequest } from './http.ts';

/** The literal grants operator tokens need; globs never confer them. */
export const REVOKE_GRANT = `${OPERATOR_GRANT_PREFIX}revoke`;
export const TOOLS_GRANT = `${OPERATOR_GRANT_PREFIX}tools`;
export const FLOWS_GRANT = `${OPERATOR_GRANT_PREFIX}flows`;

export interface AdminRouteOptions {
  broker: Broker;
  resource: string;
  authenticate: (req: AuthedRequest, res: Response, next: NextFunction) => Promise<void>;
}

/** Names a flow by the root principal it belongs to. */
const FlowOwnerSchema = z.strictObject({ iss: z.string().min(1).max(1024), sub: z.string().min(1).max(256) });

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
    let issued: { token: string; exp: number };
    try {
      issued = await delegate(principalOf(req), req.body, signer);
    } catch (error) {
      const denial = error instanceof Denial ? error : new Denial('authorize', 'BASTION_DELEGATION_REFUSED', (error as Error).message);
      await audited(req, 'token/delegate', 'denied', {}, denial);
      res.status(403).json({ error: 'delegation_refused', code: denial.code, error_description: denial.reason });
      return;
    }
    const { token, exp } = issued;
    try {
      // The child shares its parent's flow: without the link it would start clean (and be refused).
      const claims = decodeJwt(token);
      await broker.flows?.linkDelegation(principalOf(req), { iss: String(claims.iss), jti: String(claims.jti), exp });
    } catch (error) {
      const denial = new Denial('authorize', 'BASTION_FLOW_UNAVAILABLE', `the sub-agent's flow cannot be linked to its parent's: ${(error as Error).message}`);
      await audited(req, 'token/delegate', 'denied', {}, denial);
      res.status(503).json({ error: 'temporarily_unavailable', code: denial.code, error_description: denial.reason });
      return;
    }
    await audited(req, 'token/delegate', 'ok', { child_sub: (req.body as { sub: string }).sub, exp });
    res.json({ access_token: token, token_type: 'Bearer', expires_at: exp });
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
    broker.sessions.listChanged('tools');
    res.json({ approved: tool, hash: approved.seen.hash });
  });

  const flowOwner = (req: AuthedRequest, res: Response, source: unknown): string | undefined => {
    const parsed = FlowOwnerSchema.safeParse(source);
    if (!parsed.success) {
      res.status(400).json({ error: 'invalid_request', error_description: 'name the flow by its root principal: {"iss": "...", "sub": "..."}' });
      return undefined;
    }
    return flowKey(parsed.data.iss, parsed.data.sub);
  };
  const flowsOff = (res: Response): boolean => {
    if (broker.flows) return false;
    res.status(404).json({ error: 'not_found', error_description: 'flow control is off on this broker (flows.enabled: false)' });
    return true;
  };

  router.get('/admin/flows', authenticate, async (req: AuthedRequest, res) => {
    if (!(await holds(req, res, FLOWS_GRANT, 'admin/flows/show')) || flowsOff(res)) return;
    try {
      if (req.query.sub === undefined && req.query.iss === undefined) {
        const flows = await broker.flows!.store.list();
        res.json({ flows: flows.map(({ key, labels, counts, updated }) => ({ key, labels, counts, updated })) });
        return;
      }
      const key = flowOwner(req, res, { iss: req.query.iss, sub: req.query.sub });
      if (key === undefined) return;
      res.json({ key, flow: (await broker.flows!.show(key)) ?? null });
    } catch (error) {
      res.status(503).json({ error: 'temporarily_unavailable', error_description: `state store unavailable: ${(error as Error).message}` });
    }
  });

  router.post('/admin/flows/clear', json, authenticate, async (req: AuthedRequest, res) => {
    if (!(await holds(req, res, FLOWS_GRANT, 'admin/flows/clear')) || flowsOff(res)) return;
    const key = flowOwner(req, res, req.body);
    if (key === undefined) return;
    let had;
    try {
      had = await broker.flows!.clear(key);
    } catch (error) {
      const denial = new Denial('authorize', 'BASTION_FLOW_UNAVAILABLE', `state store unavailable: ${(error as Error).message}`);
      await audited(req, 'admin/flows/clear', 'denied', { flow: key }, denial);
      res.status(503).json({ error: 'temporarily_unavailable', error_description: denial.reason });
      return;
    }
    // What was forgotten stays on record: the labels, how many sources brought each, and the latest ones.
    await audited(req, 'admin/flows/clear', 'ok', {
      flow: key,
      cleared: had !== undefined,
      ...(had ? { labels: had.labels, counts: had.counts, sources: had.sources.map(({ id, tool, at, labels }) => ({ id, tool, at, labels })) } : {}),
    });
    res.json({ cleared: had !== undefined, flow: key });
  });

  return router;
}
