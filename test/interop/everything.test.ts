/**
 * server-everything (the MCP reference server that exercises every feature)
 * called directly and through Bastion, over stdio and over Streamable HTTP:
 * each feature gives the same result both ways, less Bastion's documented
 * differences (harness.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BASTION_INSTRUCTIONS, instructionsHeading } from '../../broker/server/advertised.ts';
import { Agent, byKey, eventually, everythingOver, expectEquivalent, openPair, type Pair, type Side } from './harness.ts';

const CONNECTOR = 'everything';
const ROOTS = [{ uri: 'file:///srv/project-a', name: 'project-a' }];

describe.each(['stdio', 'http'] as const)('server-everything over %s: direct and through Bastion', (transport) => {
  let pair: Pair;
  let server: Awaited<ReturnType<typeof everythingOver>> | undefined;

  beforeAll(async () => {
    server = await everythingOver(transport);
    const { upstream } = server;
    // Roots are set before connecting: the server reads them at its initialization (directly) or first use (through Bastion).
    const agent = new Agent();
    agent.roots = ROOTS;
    // Flow control would hold the open-world URL elicitation tool for approval once a
    // sampled (untrusted) result is in the session: policy withholding, not the
    // feature under test. The operator declares the tool label-free, as config allows; and the
    // open-world gzip tool (it may fetch a URL), whose result would hold the sampling tool likewise.
    pair = await openPair(CONNECTOR, upstream, {
      agent,
      connectorExtra: { tools: { 'trigger-url-elicitation': { labels: [] }, 'gzip-file-as-resource': { labels: [] } } },
    });
  });

  afterAll(async () => {
    await pair?.close();
    await server?.close();
  });

  it('capabilities: what the server offers, tasks included (relayed: tasks.test.ts)', () => {
    const direct = pair.direct.client.getServerCapabilities()!;
    expect(direct.tasks).toBeDefined();
    expect(pair.bastion.client.getServerCapabilities()).toEqual(direct);
  });

  it('instructions: passed on under the connector heading', () => {
    const direct = pair.direct.client.getInstructions();
    expect(direct).toContain('Everything Server');
    expect(pair.bastion.client.getInstructions()).toBe(`${BASTION_INSTRUCTIONS}\n\n${instructionsHeading({ name: CONNECTOR, config: { namespace: true } })}\n\n${direct}`);
  });

  it('tools/list: the same tools and descriptors', async () => {
    const [direct, via] = await pair.both(async (side) => {
      const { tools } = await side.client.listTools();
      return { tools: byKey(tools, (t) => t.name) };
    });
    expect(direct.tools.length).toBeGreaterThan(10);
    expectEquivalent(direct, { tools: byKey(via.tools, (t) => t.name.replace(`${CONNECTOR}__`, '')) }, CONNECTOR);
  });

  it('tools/call: text, image, annotated and embedded-resource results', async () => {
    const calls: [string, Record<string, unknown>][] = [
      ['echo', { message: 'hello through the broker' }],
      ['get-sum', { a: 2, b: 40 }],
      ['get-tiny-image', {}],
      ['get-annotated-message', { messageType: 'error', includeImage: true }],
      ['get-resource-reference', { resourceType: 'Text', resourceId: 3 }],
      ['get-resource-links', { count: 3 }],
    ];
    for (const [name, args] of calls) {
      const [direct, via] = await pair.both((side) => side.client.callTool({ name: side.tool(name), arguments: args }));
      expect(direct.isError ?? false, name).toBe(false);
      expectEquivalent(direct, via, CONNECTOR);
    }
  });

  it('structured content: the same structuredContent, validated against the output schema', async () => {
    const [direct, via] = await pair.both((side) => side.client.callTool({ name: side.tool('get-structured-content'), arguments: { location: 'Chicago' } }));
    expect(direct.structuredContent).toMatchObject({ temperature: expect.any(Number) });
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('a tool error: the same isError result', async () => {
    const [direct, via] = await pair.both((side) => side.client.callTool({ name: side.tool('get-sum'), arguments: { a: 'two', b: 2 } }));
    expect(direct.isError).toBe(true);
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('resources/list and resources/templates/list: the same entries', async () => {
    const [direct, via] = await pair.both(async (side) => ({
      resources: byKey((await side.client.listResources()).resources, (r) => r.uri),
      templates: byKey((await side.client.listResourceTemplates()).resourceTemplates, (t) => t.uriTemplate),
    }));
    expect(direct.resources.length).toBeGreaterThan(0);
    expect(direct.templates.length).toBeGreaterThan(0);
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('resources/read: a listed resource and template instances (text and blob)', async () => {
    const listed = (await pair.direct.client.listResources()).resources[0]!.uri;
    for (const uri of [listed, 'demo://resource/dynamic/text/7', 'demo://resource/dynamic/blob/2']) {
      const [direct, via] = await pair.both((side) => side.client.readResource({ uri }));
      expect(direct.contents.length, uri).toBeGreaterThan(0);
      expectEquivalent(direct, via, CONNECTOR);
    }
  });

  it('session resources: one a tool made for this session is listed and read the same', async () => {
    // A name per side: over HTTP both sessions share one server process, which keeps one registration per URI.
    const uri = (side: Side) => `demo://resource/session/interop-${side.kind}.txt.gz`;
    const made = await pair.both((side) =>
      side.client.callTool({
        name: side.tool('gzip-file-as-resource'),
        arguments: { name: `interop-${side.kind}.txt.gz`, data: 'data:text/plain;base64,' + Buffer.from('made for this session').toString('base64'), outputType: 'resourceLink' },
      }),
    );
    expect(JSON.stringify(made[1])).toContain(uri(pair.bastion));
    // Bastion lists it once it has read the server's list_changed for the agent's upstream session.
    const entry = async (side: Side) => (await side.client.listResources()).resources.find((r) => r.uri === uri(side));
    expect(await entry(pair.direct)).toBeDefined();
    expect(await eventually(async () => (await entry(pair.bastion)) !== undefined)).toBe(true);
    const [direct, via] = await pair.both(async (side) => {
      const same = (text: string) => text.replaceAll(`interop-${side.kind}`, 'interop-<side>');
      return JSON.parse(same(JSON.stringify({ listed: await entry(side), read: await side.client.readResource({ uri: uri(side) }) }))) as unknown;
    });
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('subscriptions: resources/updated notifications for a subscribed resource', async () => {
    const uri = 'demo://resource/dynamic/text/1';
    await pair.both(async (side) => {
      await side.client.subscribeResource({ uri });
      await side.client.callTool({ name: side.tool('toggle-subscriber-updates'), arguments: {} });
    });
    // The server sends updates every 5 s to each subscribed session.
    expect(await eventually(() => pair.direct.observed.updated.includes(uri) && pair.bastion.observed.updated.includes(uri))).toBe(true);
    await pair.both((side) => side.client.callTool({ name: side.tool('toggle-subscriber-updates'), arguments: {} }));
    expectEquivalent([...new Set(pair.direct.observed.updated)], [...new Set(pair.bastion.observed.updated)], CONNECTOR);
  });

  it('prompts/list and prompts/get: the same prompts and messages', async () => {
    const [directList, viaList] = await pair.both(async (side) => ({ prompts: byKey((await side.client.listPrompts()).prompts, (p) => p.name) }));
    expect(directList.prompts.length).toBeGreaterThan(0);
    expectEquivalent(directList, { prompts: byKey(viaList.prompts, (p) => p.name.replace(`${CONNECTOR}__`, '')) }, CONNECTOR);
    const gets: [string, Record<string, string>][] = [
      ['simple-prompt', {}],
      ['args-prompt', { city: 'Lisbon', state: 'Lisboa' }],
      ['resource-prompt', { resourceType: 'Text', resourceId: '2' }],
    ];
    for (const [name, args] of gets) {
      const [direct, via] = await pair.both((side) => side.client.getPrompt({ name: side.tool(name), arguments: args }));
      expect(direct.messages.length, name).toBeGreaterThan(0);
      expectEquivalent(direct, via, CONNECTOR);
    }
  });

  it('completions: prompt arguments, with context from earlier arguments', async () => {
    const [direct, via] = await pair.both(async (side) => [
      await side.client.complete({ ref: { type: 'ref/prompt', name: side.tool('completable-prompt') }, argument: { name: 'department', value: 'S' } }),
      await side.client.complete({
        ref: { type: 'ref/prompt', name: side.tool('completable-prompt') },
        argument: { name: 'name', value: '' },
        context: { arguments: { department: 'Sales' } },
      }),
    ]);
    expect(direct.map((r) => r.completion.values)).toEqual([
      ['Sales', 'Support'],
      ['David', 'Eve', 'Frank'],
    ]);
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('completions: resource template variables', async () => {
    const [direct, via] = await pair.both((side) =>
      side.client.complete({ ref: { type: 'ref/resource', uri: 'demo://resource/dynamic/text/{resourceId}' }, argument: { name: 'resourceId', value: '12' } }),
    );
    expect(direct.completion.values).toEqual(['12']);
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('progress: the same notifications, in order, then the same result', async () => {
    const [direct, via] = await pair.both(async (side) => {
      const progress: { progress: number; total?: number }[] = [];
      const result = await side.client.callTool(
        { name: side.tool('trigger-long-running-operation'), arguments: { duration: 2, steps: 4 } },
        { onprogress: (p) => progress.push(p) },
      );
      return { progress, result };
    });
    // The server sends its last notification right before the result; a client
    // may drop one that arrives in the same read as the result (the SDK's own
    // race, on either side). Every other one must arrive, in order.
    const all = [1, 2, 3, 4].map((progress) => ({ progress, total: 4 }));
    for (const side of [direct, via]) {
      expect(side.progress.length).toBeGreaterThanOrEqual(3);
      expect(side.progress).toEqual(all.slice(0, side.progress.length));
    }
    expectEquivalent(direct.result, via.result, CONNECTOR);
  });

  it('cancellation: the cancelled call rejects the same way and the session goes on', async () => {
    const [direct, via] = await pair.both(async (side) => {
      const controller = new AbortController();
      const progress: unknown[] = [];
      const call = side.client.callTool(
        { name: side.tool('trigger-long-running-operation'), arguments: { duration: 30, steps: 30 } },
        { signal: controller.signal, onprogress: (p) => progress.push(p) },
      );
      // Cancel once the operation is known to be running upstream.
      await eventually(() => progress.length > 0);
      controller.abort('the user stopped it');
      const outcome = await call.then(
        () => 'resolved',
        (error: Error) => `${error.name}: ${error.message}`,
      );
      const after = await side.client.callTool({ name: side.tool('echo'), arguments: { message: 'still here' } });
      return { outcome, after };
    });
    expect(direct.outcome).not.toBe('resolved');
    expectEquivalent(direct, via, CONNECTOR);
    // Bastion's own record of it says what happened.
    const cancelled = (await pair.broker.auditRecords()).filter((r) => r.tool === `${CONNECTOR}__trigger-long-running-operation` && r.denial?.code === 'BASTION_CANCELLED');
    expect(cancelled).toHaveLength(1);
  });

  it('sampling: the server’s request reaches the agent unchanged and its answer goes back', async () => {
    const [direct, via] = await pair.both((side) =>
      side.client.callTool({ name: side.tool('trigger-sampling-request'), arguments: { prompt: 'Name a prime number', maxTokens: 50 } }),
    );
    expect(JSON.stringify(direct)).toContain('sampled: ');
    expectEquivalent(direct, via, CONNECTOR);
    expect(pair.bastion.observed.sampling.at(-1)).toEqual(pair.direct.observed.sampling.at(-1));
  });

  it('elicitation (form mode): the same request and the accepted content goes back', async () => {
    const [direct, via] = await pair.both((side) => side.client.callTool({ name: side.tool('trigger-elicitation-request'), arguments: {} }));
    expect(JSON.stringify(direct)).toContain('Ada Lovelace');
    expectEquivalent(direct, via, CONNECTOR);
    expect(pair.bastion.observed.elicitations.at(-1)).toEqual(pair.direct.observed.elicitations.at(-1));
  });

  it('elicitation (URL mode): the same URL request and result', async () => {
    const args = { url: 'https://example.com/authorize', message: 'Open this page', elicitationId: 'interop-1' };
    const [direct, via] = await pair.both((side) =>
      side.client.callTool({ name: side.tool('trigger-url-elicitation'), arguments: args }, { timeout: 15_000 }).catch((error: Error) => {
        throw new Error(`${side.kind}: ${error.message}`);
      }),
    );
    expect(JSON.stringify(direct)).toContain('User completed the URL elicitation flow');
    expectEquivalent(direct, via, CONNECTOR);
    expect(pair.bastion.observed.elicitations.at(-1)).toEqual(pair.direct.observed.elicitations.at(-1));
  });

  it('roots: the server reads the agent’s roots', async () => {
    const [direct, via] = await pair.both((side) => side.client.callTool({ name: side.tool('get-roots-list'), arguments: {} }));
    expect(JSON.stringify(direct)).toContain(ROOTS[0]!.uri);
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('roots changes: after notifications/roots/list_changed the server reads the new roots', async () => {
    pair.agent.roots = [{ uri: 'file:///srv/project-b', name: 'project-b' }];
    await pair.both((side) => side.client.sendRootsListChanged());
    const [direct, via] = await pair.both(async (side) => {
      let result: unknown;
      const updated = await eventually(async () => {
        result = await side.client.callTool({ name: side.tool('get-roots-list'), arguments: {} });
        return JSON.stringify(result).includes('project-b');
      });
      expect(updated, side.kind).toBe(true);
      return result;
    });
    expectEquivalent(direct, via, CONNECTOR);
  });

  it('logging: after logging/setLevel, messages a request causes reach the agent', async () => {
    const uri = 'demo://resource/dynamic/text/9';
    const [direct, via] = await pair.both(async (side) => {
      await side.client.setLoggingLevel('debug');
      const before = side.observed.logs.length;
      await side.client.subscribeResource({ uri });
      expect(await eventually(() => side.observed.logs.slice(before).some((log) => String(log.data).includes('Subscribe')))).toBe(true);
      // Only what the subscription caused (a roots refresh may log too); upstream session ids in the text differ on any two connections.
      return side.observed.logs
        .slice(before)
        .filter((log) => String(log.data).includes('Subscribe'))
        .map((log) => ({ ...log, data: String(log.data).replace(/ from session \S+/, '') }));
    });
    expect(direct[0]?.data).toContain(`Received Subscribe Resource request for URI: ${uri}`);
    expectEquivalent(direct, via, CONNECTOR);
  });
});
