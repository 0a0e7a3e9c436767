/**
 * Microbenchmarks: each per-call check alone, in this process, with the
 * broker's own modules and the committed policy. What an allowed call pays
 * besides the MCP machinery and the upstream:
 *
 *   token, cold      full verification (signature, claims, zod) of a token not seen before
 *   token, cached    the same token again (the verified-token cache)
 *   authenticate     a cached token plus the revocation lookups run on every request
 *   policy decision  the default Rego policy in WASM, input and decision validated
 *   arguments hash   RFC 8785 canonical arguments and their SHA-256 (once per call)
 *   audit, seal      hash-chaining and serialising one record (CPU only)
 *   audit, durable   append and wait for fdatasync, one writer (latency of one record)
 *   audit, 32 writers  group commit: 32 appends in flight at all times
 *   together         authenticate + policy decision + durable audit append, one after another
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createLocalJWKSet } from 'jose';
import { canonicalJson, GENESIS_HASH, seal, sha256, type AuditEvent } from '../broker/audit/chain.ts';
import { openAuditLog } from '../broker/audit/log.ts';
import { createAuthenticator } from '../broker/auth/authenticate.ts';
import { generateSigningKey } from '../broker/auth/keys.ts';
import { mintToken } from '../broker/auth/mint.ts';
import { createTokenVerifier, type Principal } from '../broker/auth/verify.ts';
import { metrics } from '../broker/metrics.ts';
import { loadPolicy } from '../broker/policy/engine.ts';
import type { PolicyInput } from '../broker/policy/schema.ts';
import { openEmbeddedState } from '../broker/state/embedded.ts';
import { principalForAudit } from '../broker/pipeline.ts';
import { ECHO_ARGUMENTS } from './lib/load.ts';
import { printTable, summarize, time } from './lib/stats.ts';

export interface MicroResult {
  name: string;
  n: number;
  p50_us: number;
  p99_us: number;
  /** Wall-clock time of the whole loop divided by its operations (includes the timer's own cost for per-op loops). */
  amortised_us: number;
  ops_per_s: number;
  /** Extra facts, e.g. records per fdatasync for the group commit. */
  note?: string;
}

const ISSUER = 'urn:bastion:bench';
const AUDIENCE = 'http://127.0.0.1:8080/mcp';

/** Times `op` once per iteration; yields to the event loop now and then, as a server would. */
async function perOp(name: string, n: number, op: () => unknown | Promise<unknown>, warmup = Math.min(1000, n)): Promise<MicroResult> {
  for (let i = 0; i < warmup; i++) await op();
  const samples = new Float64Array(n);
  const started = performance.now();
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await op();
    samples[i] = performance.now() - t0;
    if ((i & 1023) === 1023) await new Promise((resolve) => setImmediate(resolve));
  }
  const elapsed = performance.now() - started;
  const s = summarize(samples, elapsed / 1000);
  return { name, n, p50_us: s.p50 * 1000, p99_us: s.p99 * 1000, amortised_us: (elapsed / n) * 1000, ops_per_s: n / (elapsed / 1000) };
}

/** Amortised cost without a timer around each operation: for sub-microsecond-scale work. */
async function amortised(into: MicroResult, n: number, op: () => unknown | Promise<unknown>): Promise<MicroResult> {
  const started = performance.now();
  for (let i = 0; i < n; i++) await op();
  const elapsed = performance.now() - started;
  return { ...into, amortised_us: (elapsed / n) * 1000, ops_per_s: n / (elapsed / 1000) };
}

function syncCount(text: string): number {
  return Number(/^bastion_audit_sync_seconds_count (\S+)$/m.exec(text)?.[1] ?? 0);
}

export async function runMicro(options: { root: string; quick: boolean }): Promise<MicroResult[]> {
  const n = options.quick ? 5_000 : 50_000;
  const durableN = options.quick ? 500 : 3_000;
  const dir = await mkdtemp(path.join(tmpdir(), 'bastion-micro-'));
  const results: MicroResult[] = [];
  try {
    const key = await generateSigningKey('EdDSA');
    const issuers = [{ issuer: ISSUER, getKey: createLocalJWKSet(key.jwks), loads: 1 }];
    const verifierOptions = { issuers, audience: AUDIENCE, algorithms: ['EdDSA', 'ES256'] as ('EdDSA' | 'ES256')[], tokenType: 'bastion-cap+jwt', maxTtlMs: 900_000, clockSkewMs: 30_000 };
    const token = await mintToken({ key: key.privateJwk, issuer: ISSUER, audience: AUDIENCE, sub: 'agent:bench', cap: [{ tool: '*' }], ttlMs: 900_000 });

    const cold = createTokenVerifier({ ...verifierOptions, cacheEntries: 0 });
    results.push(await perOp('token verification, cold', options.quick ? 1_000 : 10_000, () => cold.verify(token)));

    const cached = createTokenVerifier(verifierOptions);
    results.push(await amortised(await perOp('token verification, cached', n, () => cached.verify(token)), n * 4, () => cached.verify(token)));

    const state = await openEmbeddedState(path.join(dir, 'state.db'));
    const authenticator = createAuthenticator({ verifier: cached, state, algorithms: ['EdDSA'], dpopMaxAgeMs: 60_000, clockSkewMs: 30_000 });
    const evidence = { token, transport: 'http' as const, method: 'POST', url: AUDIENCE };
    results.push(await amortised(await perOp('authenticate (cached token + revocation)', n, () => authenticator.authenticate(evidence)), n, () => authenticator.authenticate(evidence)));
    const principal: Principal = await authenticator.authenticate(evidence);

    const engine = await loadPolicy(path.join(options.root, 'policies/compiled/policy.wasm'));
    const input = (): PolicyInput => ({
      version: 1,
      principal: { sub: principal.sub, iss: principal.iss, act: principal.act, cap: principal.cap, anonymous: false },
      tool: { name: 'bench__echo', connector: 'bench', risk: 'low', descriptor_hash: `sha256:${'ab'.repeat(32)}` },
      arguments: ECHO_ARGUMENTS,
      context: { time: new Date().toISOString(), transport: 'http', session: '6f1c0c52-5f39-4a43-9d35-3f0b8c1d2e4f', method: 'tools/call' },
    });
    if (!engine.decide(input()).allow) throw new Error('the benchmark call is not allowed by the default policy');
    // As the pipeline asks: input it built from verified parts is not validated again.
    results.push(await perOp('policy decision (default policy, WASM)', n, () => engine.decideTrusted(input())));
    results.push(await perOp('policy decision, outside input validated first', n, () => engine.decide(input())));

    results.push(await perOp('arguments: canonical JSON + SHA-256', n, () => sha256(canonicalJson(ECHO_ARGUMENTS))));

    const event = (): AuditEvent => ({
      event: 'tools/call',
      session: '6f1c0c52-5f39-4a43-9d35-3f0b8c1d2e4f',
      transport: 'http',
      principal: principalForAudit(principal),
      tool: 'bench__echo',
      args_hash: sha256(canonicalJson(ECHO_ARGUMENTS)),
      decision: { allow: true, reasons: ['capability * covers bench__echo'], approval_required: false },
      policy_revision: engine.revision,
      outcome: 'ok',
      latency_ms: 1.234,
      detail: { result_bytes: 80 },
    });
    let seq = 0;
    let prev = GENESIS_HASH;
    results.push(
      await perOp('audit: seal + serialise one record (CPU)', n, () => {
        const { record, line } = seal(event(), ++seq, prev, new Date());
        prev = record.hash;
        return line;
      }),
    );

    const audit = await openAuditLog(path.join(dir, 'audit.jsonl'));
    results.push(await perOp('audit: durable append, 1 writer (write + fdatasync)', durableN, () => audit.append(event()), 50));

    // Group commit: keep 32 appends in flight; count records per fdatasync from the broker's own metric.
    const writers = 32;
    const perWriter = Math.ceil((options.quick ? 2_000 : 20_000) / writers);
    const syncsBefore = syncCount((await metrics.render()).body);
    const latencies: number[] = [];
    const started = performance.now();
    await Promise.all(
      Array.from({ length: writers }, async () => {
        for (let i = 0; i < perWriter; i++) {
          const t0 = performance.now();
          await audit.append(event());
          latencies.push(performance.now() - t0);
        }
      }),
    );
    const elapsed = (performance.now() - started) / 1000;
    const syncs = syncCount((await metrics.render()).body) - syncsBefore;
    const s = summarize(latencies, elapsed);
    results.push({
      name: `audit: durable append, ${writers} writers (group commit)`,
      n: latencies.length,
      p50_us: s.p50 * 1000,
      p99_us: s.p99 * 1000,
      amortised_us: (elapsed / latencies.length) * 1e6,
      ops_per_s: s.perSecond,
      note: `${(latencies.length / Math.max(1, syncs)).toFixed(1)} records per fdatasync`,
    });

    results.push(
      await perOp(
        'together: authenticate + policy + durable audit',
        durableN,
        async () => {
          const who = await authenticator.authenticate(evidence);
          const decision = engine.decideTrusted(input());
          await audit.append({ ...event(), principal: principalForAudit(who), decision: { allow: decision.allow, reasons: decision.reasons, approval_required: false } });
        },
        50,
      ),
    );
    const handedOver = await openAuditLog(path.join(dir, 'audit-process.jsonl'), { durability: 'process' });
    results.push(
      await perOp('together, audit.durability process', durableN, async () => {
        const who = await authenticator.authenticate(evidence);
        const decision = engine.decideTrusted(input());
        await handedOver.append({ ...event(), principal: principalForAudit(who), decision: { allow: decision.allow, reasons: decision.reasons, approval_required: false } });
      }),
    );
    await handedOver.close();
    results.push(
      await perOp('together, CPU only: authenticate + policy + seal', n, async () => {
        const who = await authenticator.authenticate(evidence);
        const decision = engine.decideTrusted(input());
        const { record, line } = seal({ ...event(), principal: principalForAudit(who), decision: { allow: decision.allow, reasons: decision.reasons, approval_required: false } }, ++seq, prev, new Date());
        prev = record.hash;
        return line;
      }),
    );
    await audit.close();
    await state.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }

  console.log(`Each check alone (in-process, ${n.toLocaleString('en')} operations; durable audit ${durableN.toLocaleString('en')})`);
  printTable(
    ['operation', 'p50', 'p99', 'amortised', 'ops/s', ''],
    results.map((r) => [r.name, time(r.p50_us / 1000), time(r.p99_us / 1000), time(r.amortised_us / 1000), Math.round(r.ops_per_s).toLocaleString('en'), r.note ?? '']),
  );
  return results;
}
