/**
 * Owns the policy in force and replaces it when its source changes.
 *
 * The pipeline asks `current()` once per call and keeps that engine for the
 * whole call, so a call that started under one policy finishes under it.
 * A replacement is built, tested and loaded completely before one reference
 * assignment puts it in force; anything that goes wrong on the way (Rego
 * that does not compile, a failing `opa test`, a bundle whose signature does
 * not hold, a module that does not load) leaves the previous policy in force
 * and is logged and reported to `onReload` listeners.
 *
 * Sources:
 *   - `rego`: a directory of Rego, rebuilt with the real `opa build -t wasm`
 *     (with Bastion's capabilities) and tested with its own `opa test`
 *     before every swap; data from its data.json files, as opa build merges them;
 *   - `wasm`: a compiled module, with an optional data file;
 *   - `bundle`: an OPA bundle file (signature checked when present or required);
 *   - `url`: an OPA bundle polled over HTTP with ETags, optionally persisted
 *     so a restart without the server still has the last good bundle.
 * File sources are watched (events debounced); every source can be reloaded on demand.
 *
 * @example
 *   const policy = await PolicyHolder.open({ source: { kind: 'rego', dir: 'policies' }, log });
 *   policy.onReload(({ ok, revision, error }) => metrics.policyReloads.inc({ ok: String(ok) }));
 *   const pipeline = new Pipeline({ ..., policy: () => policy.current() });
 */
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../log.ts';
import { NO_VERIFICATION, readBundle } from './bundle.ts';
import { BundleDownload } from './download.ts';
import { createPolicyEngine, type EngineOptions, type PolicyEngine, type PolicyModule } from './engine.ts';
import { OpaCli, type OpaOptions } from './opa.ts';
import type { BundleVerification } from './signature.ts';

export type PolicySource =
  | { kind: 'wasm'; path: string; dataFile?: string | undefined }
  | { kind: 'rego'; dir: string; runTests?: boolean | undefined }
  | { kind: 'bundle'; path: string }
  | {
      kind: 'url';
      url: string;
      /** Poll interval; 0 disables polling (reload() still fetches). Default 60 s. */
      intervalMs?: number | undefined;
      headers?: Record<string, string> | undefined;
      /** Where to keep the last activated bundle, used when the server is unreachable at start-up. */
      persist?: string | undefined;
    };

export interface ReloadEvent {
  ok: boolean;
  /** The revision in force after this attempt (the old one when the attempt failed). */
  revision: string;
  /** The revision that was in force before, when a new one replaced it. */
  previous?: string | undefined;
  /** Whether a different policy is now in force. */
  changed: boolean;
  /** Why the new policy was refused. */
  error?: string | undefined;
  trigger: string;
  source: string;
  durationMs: number;
}

export interface PolicyHolderOptions {
  source: PolicySource;
  log: Logger;
  /** For bundle and url sources. */
  verification?: BundleVerification | undefined;
  engine?: EngineOptions | undefined;
  opa?: OpaOptions | undefined;
  /** Watch file sources for changes (default true). */
  watch?: boolean | undefined;
  /** Quiet period after the last file event before reloading (default 250 ms). */
  debounceMs?: number | undefined;
}

type Loaded = { module: PolicyModule; commit?: () => Promise<void> } | 'not-modified';

function describeSource(source: PolicySource): string {
  switch (source.kind) {
    case 'wasm':
      return source.dataFile ? `${source.path} (data ${source.dataFile})` : source.path;
    case 'rego':
      return source.dir;
    case 'bundle':
      return source.path;
    case 'url':
      return source.url;
  }
}

export class PolicyHolder {
  readonly source: string;
  readonly #options: PolicyHolderOptions;
  readonly #log: Logger;
  readonly #context: LoadContext;
  readonly #listeners = new Set<(event: ReloadEvent) => void>();
  readonly #watchers: FSWatcher[] = [];
  #engine: PolicyEngine;
  #generation = 0;
  #debounce: NodeJS.Timeout | undefined;
  #poll: NodeJS.Timeout | undefined;
  #running: Promise<ReloadEvent> | undefined;
  #queued: Promise<ReloadEvent> | undefined;
  #closed = false;

  private constructor(options: PolicyHolderOptions, engine: PolicyEngine, context: LoadContext) {
    this.#options = options;
    this.#log = options.log;
    this.#context = context;
    this.#engine = engine;
    this.source = describeSource(options.source);
  }

  /**
   * Loads the source once and starts watching or polling it. Throws when the
   * first load fails: the broker must not start without a policy.
   */
  static async open(options: PolicyHolderOptions): Promise<PolicyHolder> {
    const { source } = options;
    if (options.verification?.required && (source.kind === 'wasm' || source.kind === 'rego')) {
      throw new Error(`policy signatures are required, but the policy source ${describeSource(source)} is a ${source.kind === 'wasm' ? 'bare wasm file' : 'Rego directory'}, which carries none; use a signed bundle`);
    }
    const download = source.kind === 'url' ? new BundleDownload(source.url, source.headers ? { headers: source.headers } : {}) : undefined;
    const context: LoadContext = { verification: options.verification ?? NO_VERIFICATION, opa: new OpaCli(options.opa), download };
    let loaded: Exclude<Loaded, 'not-modified'>;
    try {
      const first = await loadSource(source, context);
      if (first === 'not-modified') throw new Error('bundle server answered 304 to a request without an ETag');
      loaded = first;
    } catch (error) {
      if (source.kind !== 'url' || !source.persist) throw error;
      options.log.warn({ err: (error as Error).message, url: source.url, persist: source.persist }, 'bundle server unavailable at start-up; using the persisted bundle');
      const bundle = await readBundle(await readFile(source.persist), context.verification);
      loaded = { module: { wasm: bundle.wasm, data: bundle.data, source: source.persist, bundleRevision: bundle.revision } };
    }
    const engine = await createPolicyEngine(loaded.module, options.engine);
    await loaded.commit?.();
    const holder = new PolicyHolder(options, engine, context);
    holder.#start();
    options.log.info({ revision: engine.revision, bundle_revision: engine.bundleRevision, source: holder.source }, 'policy loaded');
    return holder;
  }

  /** The policy in force. Call once per decision (or per call) and keep the result for its duration. */
  current(): PolicyEngine {
    return this.#engine;
  }

  get revision(): string {
    return this.#engine.revision;
  }

  /** How many times a new policy was put in force since open. */
  get generation(): number {
    return this.#generation;
  }

  /** Subscribes to reload attempts (successful or not); returns the unsubscribe function. */
  onReload(listener: (event: ReloadEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Rebuilds or re-fetches the source now and swaps if it changed. Never
   * throws: the outcome is in the event. Concurrent requests are coalesced
   * into at most one more run after the one in progress.
   */
  reload(trigger = 'manual'): Promise<ReloadEvent> {
    if (!this.#running) {
      this.#running = this.#reloadOnce(trigger).finally(() => {
        this.#running = undefined;
      });
      return this.#running;
    }
    this.#queued ??= this.#running.then(() => {
      this.#queued = undefined;
      return this.reload(trigger);
    });
    return this.#queued;
  }

  /** Stops watching and polling; waits for a reload in progress. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#debounce);
    clearInterval(this.#poll);
    for (const watcher of this.#watchers) watcher.close();
    await this.#queued?.catch(() => undefined);
    await this.#running?.catch(() => undefined);
  }

  #start(): void {
    const { source } = this.#options;
    if (source.kind === 'url') {
      const interval = source.intervalMs ?? 60_000;
      if (interval > 0) {
        this.#poll = setInterval(() => void this.reload('poll'), interval);
        this.#poll.unref();
      }
      return;
    }
    if (this.#options.watch === false) return;
    if (source.kind === 'rego') {
      // What opa build and opa test leave out (SOURCE_IGNORES) cannot change the policy.
      this.#watch(source.dir, true, (file) => file === null || !file.split(path.sep).some((part) => part.startsWith('.') || part === 'compiled' || part === 'examples'));
    } else {
      const files = source.kind === 'wasm' && source.dataFile ? [source.path, source.dataFile] : [source.path];
      for (const file of files) {
        const name = path.basename(file);
        // The directory, not the file: editors and deploy tools replace files by renaming over them.
        this.#watch(path.dirname(file), false, (changed) => changed === null || changed === name);
      }
    }
  }

  #watch(target: string, recursive: boolean, relevant: (file: string | null) => boolean): void {
    try {
      const watcher = watch(target, { recursive, persistent: false }, (_event, file) => {
        if (relevant(file === null ? null : String(file))) this.#schedule();
      });
      watcher.on('error', (error) => this.#log.warn({ err: error.message, path: target }, 'policy source watch failed; reload on demand only'));
      this.#watchers.push(watcher);
    } catch (error) {
      this.#log.warn({ err: (error as Error).message, path: target }, 'cannot watch the policy source; reload on demand only');
    }
  }

  #schedule(): void {
    if (this.#closed) return;
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => void this.reload('watch'), this.#options.debounceMs ?? 250);
    this.#debounce.unref();
  }

  async #reloadOnce(trigger: string): Promise<ReloadEvent> {
    const started = performance.now();
    const previous = this.#engine;
    const event = (fields: Pick<ReloadEvent, 'ok' | 'revision' | 'changed'> & Partial<ReloadEvent>): ReloadEvent => ({
      trigger,
      source: this.source,
      durationMs: Math.round((performance.now() - started) * 10) / 10,
      ...fields,
    });
    if (this.#closed) return event({ ok: false, revision: previous.revision, changed: false, error: 'policy holder is closed' });

    let result: ReloadEvent;
    try {
      const loaded = await loadSource(this.#options.source, this.#context);
      if (loaded === 'not-modified') return event({ ok: true, revision: previous.revision, changed: false });
      const engine = await createPolicyEngine(loaded.module, this.#options.engine);
      if (this.#closed) return event({ ok: false, revision: previous.revision, changed: false, error: 'policy holder is closed' });
      if (engine.revision === previous.revision) {
        await loaded.commit?.();
        result = event({ ok: true, revision: previous.revision, changed: false });
      } else {
        this.#engine = engine; // the swap: calls that already hold `previous` finish with it
        this.#generation++;
        await loaded.commit?.();
        result = event({ ok: true, revision: engine.revision, previous: previous.revision, changed: true });
        this.#log.info({ revision: engine.revision, previous: previous.revision, bundle_revision: engine.bundleRevision, source: this.source, trigger }, 'policy reloaded');
      }
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      result = event({ ok: false, revision: previous.revision, changed: false, error: message });
      this.#log.error({ err: message, source: this.source, trigger, revision: previous.revision }, 'new policy refused; the previous policy stays in force');
    }
    for (const listener of this.#listeners) {
      try {
        listener(result);
      } catch (error) {
        this.#log.warn({ err: (error as Error).message }, 'policy reload listener threw');
      }
    }
    return result;
  }
}

interface LoadContext {
  verification: BundleVerification;
  opa: OpaCli;
  download: BundleDownload | undefined;
}

/** Reads (or builds, or downloads) a source into a module, without touching the policy in force. */
async function loadSource(source: PolicySource, context: LoadContext): Promise<Loaded> {
  switch (source.kind) {
    case 'wasm': {
      const [wasm, data] = await Promise.all([readFile(source.path), source.dataFile ? readFile(source.dataFile) : undefined]);
      return { module: { wasm, data, source: source.path } };
    }
    case 'bundle': {
      const bundle = await readBundle(await readFile(source.path), context.verification);
      return { module: { wasm: bundle.wasm, data: bundle.data, source: source.path, bundleRevision: bundle.revision } };
    }
    case 'rego':
      return { module: await buildRego(context.opa, source.dir, source.runTests ?? true) };
    case 'url': {
      const download = context.download!;
      const got = await download.fetch();
      if (got.status === 'not-modified') return 'not-modified';
      const bundle = await readBundle(got.bytes, context.verification);
      return {
        module: { wasm: bundle.wasm, data: bundle.data, source: source.url, bundleRevision: bundle.revision },
        // Only once the bundle is in force: a refused bundle must not be hidden behind a 304 next time.
        commit: async () => {
          download.accept(got.etag);
          if (source.persist) await persist(source.persist, got.bytes);
        },
      };
    }
  }
}

/** Builds a Rego directory with the real OPA and runs its tests; throws with OPA's output on failure. */
async function buildRego(opa: OpaCli, dir: string, runTests: boolean): Promise<PolicyModule> {
  const build = await opa.buildWasm(dir);
  if (!build.ok) throw new Error(`opa build failed for ${dir}:\n${build.output}`);
  if (runTests) {
    const tests = await opa.test(dir);
    if (!tests.ok) throw new Error(`opa test failed for ${dir}; not swapping:\n${tests.output}`);
  }
  const bundle = await readBundle(build.bundle);
  return { wasm: bundle.wasm, data: bundle.data, source: dir };
}

async function persist(file: string, bytes: Uint8Array): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const temporary = `${file}.${process.pid}.tmp`;
  await writeFile(temporary, bytes, { mode: 0o600 });
  await rename(temporary, file);
}
