/**
 * The sandbox process's share of a warm call, measured in a process of its
 * own (isolated-vm needs --no-node-snapshot): PluginRuntime, the code that
 * runs in every sandbox process, given the text-utils plugin; each call
 * validates its arguments, takes the idle isolate with its prepared context,
 * copies the arguments in, runs the tool, copies the result out and checks
 * it. No process boundary. Calls are a few milliseconds apart, as calls from
 * agents are, so each finds its context prepared.
 *
 *   node --no-node-snapshot bench/lib/sandbox-dispatch.ts CALLS TEXT PAUSE_MS   → prints one JSON line of samples (ms)
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { PluginRuntime } from '../../sandboxes/child/runtime.ts';
import { PluginManifestSchema } from '../../sandboxes/manifest.ts';
import { toolSchemas } from '../../sandboxes/protocol.ts';

const calls = Number(process.argv[2] ?? 300);
const dir = path.join(import.meta.dirname, '../../sandboxes/examples/text-utils');
const manifest = PluginManifestSchema.parse(JSON.parse(await readFile(path.join(dir, 'plugin.json'), 'utf8')));
const runtime = new PluginRuntime(
  {
    t: 'load',
    plugin: 'bench#1',
    name: manifest.name,
    main: manifest.main,
    code: await readFile(path.join(dir, manifest.main), 'utf8'),
    tools: toolSchemas(manifest.tools),
    limits: manifest.limits,
    caps: [],
    maxCapabilityCalls: 64,
    isolates: { max: 4, warm: 1, maxCalls: 1000 },
    clockMs: 100,
  },
  false,
  () => process.exit(70),
);
await runtime.verify(manifest.tools.map((t) => t.name));

const args = JSON.stringify({ text: process.argv[3] ?? 'a few words to count' });
const pauseMs = Number(process.argv[4] ?? 3);
const hooks = { onCapability: () => undefined, onTestAbort: () => undefined };
const samples: number[] = [];
for (let i = 0; i < calls + 50; i++) {
  await new Promise((resolve) => setTimeout(resolve, pauseMs));
  const t0 = performance.now();
  runtime.validateArguments('word_count', args);
  const isolate = await runtime.acquire(i);
  await runtime.newRun({ call: i, tool: 'word_count', args }, isolate, hooks).start();
  if (i >= 50) samples.push(performance.now() - t0);
}
runtime.close();
console.log(JSON.stringify(samples));
