/**
 * Interoperability of the sign-in: the official Python MCP SDK's own OAuth
 * client connects to Bastion with no token, discovers and registers (DCR),
 * sends the user through the test's OpenID provider and Bastion's consent
 * page (driven here in Chromium: the script prints the authorization URL
 * and reads back the callback), calls a tool, and calls again after its
 * access token expired (the SDK refreshes).
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/broker.ts';
import { walk } from '../identity/flow.ts';
import { startSignInSetup, type SignInSetup } from '../identity/setup.ts';

const PYTHON = path.join(ROOT, '.tools/py/bin/python');
const CLIENT = path.join(ROOT, 'test/clients/python_oauth_client.py');
const TTL_S = 2;

let setup: SignInSetup;

beforeAll(async () => {
  setup = await startSignInSetup({
    grants: { grants_ttl_s: TTL_S, grants_by_group: { engineering: [{ tool: 'rec__echo' }] } },
    broker: { auth: { clock_skew: 0 }, identity: { registration: { enabled: true } } },
  });
}, 60_000);

afterAll(() => setup?.close());

describe('the official Python MCP SDK signs in through Bastion', () => {
  it('discovers, registers, signs in at the IdP, calls a tool, and refreshes after the token expires', async () => {
    const { t, page } = setup;
    const idp = setup.idp!;
    const child = spawn(PYTHON, [CLIENT, t.url, setup.redirect, 'rec__echo', JSON.stringify({ text: 'from python' }), String(TTL_S + 1)], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    let result: { tools: string[]; first: { content: { text: string }[] }; second: { content: { text: string }[] }; tokens: string[] } | undefined;
    for await (const line of createInterface({ input: child.stdout })) {
      const message = JSON.parse(line) as { authorize?: string };
      if (message.authorize) {
        const outcome = await walk(page, new URL(message.authorize), { idp: idp.issuer });
        if (!('callback' in outcome)) throw new Error(`sign-in failed: ${JSON.stringify(outcome)}`);
        child.stdin.write(`${outcome.callback.href}\n`);
      } else {
        result = message as typeof result;
      }
    }
    expect(await exited, stderr).toBe(0);
    expect(result!.tools).toEqual(['rec__echo']);
    expect(result!.first.content[0]!.text).toBe('echo: from python');
    expect(result!.second.content[0]!.text).toBe('echo: from python');
    // Later access tokens came from refreshes, with the same grants. (On a loaded machine the 2 s token
    // can also expire before the first call, and the SDK then refreshes once more: at least one refresh.)
    const tokens = result!.tokens;
    expect(tokens.length).toBeGreaterThanOrEqual(2);
    expect(new Set(tokens).size).toBe(tokens.length);
    for (const token of tokens.slice(1)) expect(decodeJwt(token)).toMatchObject({ sub: 'alice', cap: [{ tool: 'rec__echo' }], aud: t.door.resource });
    const events = (await t.auditRecords()).map((r) => `${r.event} ${r.outcome}`);
    expect(events.filter((e) => e === 'oauth/token ok')).toHaveLength(tokens.length);
  }, 120_000);
});
