// Runs inside every fresh isolate context, before any plugin code. A classic
// script whose completion value is the function below; the sandbox process
// calls it with:
//   send       a plain function (an ivm.Callback) that copies three primitives
//              (kind, id, text) out to the sandbox process;
//   configJson {"caps":{"fetch":bool,"kv":bool,"log":bool},"clockMs":100,
//               "maxResultBytes":65536,"maxRequests":65,"testHooks":false}
// and gets back `control(kind, a, b)`, which only the sandbox process holds
// (as a Reference). Nothing isolated-vm made is left reachable from the
// global object: `send` and `control` live in this closure only.
//
// Everything plugin code can touch is plain JavaScript: `tools` (an empty
// object the script fills) and `host` (the second argument of each tool,
// with only the requested capabilities), whose functions take and return
// copies of plain data, as JSON text under the hood.
(function bastionBootstrap(send, configJson) {
  'use strict';
  const g = globalThis;
  const parse = JSON.parse;
  const stringify = JSON.stringify;
  const defineProperty = Object.defineProperty;
  const getOwnPropertyDescriptor = Object.getOwnPropertyDescriptor;
  const getPrototypeOf = Object.getPrototypeOf;
  const freeze = Object.freeze;
  const create = Object.create;
  const keys = Object.keys;
  const hasOwn = Object.prototype.hasOwnProperty;
  const apply = Reflect.apply;
  const construct = Reflect.construct;
  const PromiseCtor = Promise;
  const promiseThen = Promise.prototype.then;
  const StringCtor = String;
  const ErrorCtor = Error;
  const EvalErrorCtor = EvalError;
  const ProxyCtor = Proxy;
  const config = parse(configJson);

  // 1. No shared memory or threads' clocks, no wasm, no callbacks the host did
  //    not schedule (finalizers), no console.
  for (const name of ['SharedArrayBuffer', 'Atomics', 'WebAssembly', 'FinalizationRegistry', 'console']) {
    delete g[name];
  }

  // 2. Code comes only from the pinned script: no eval, no Function('…').
  const refuseCode = function Function() {
    throw new EvalErrorCtor('code generation from strings is disabled in Bastion sandboxes');
  };
  refuseCode.prototype = Function.prototype; // keeps `f instanceof Function` true
  const functionPrototypes = [
    Function.prototype,
    getPrototypeOf(async function () {}),
    getPrototypeOf(function* () {}),
    getPrototypeOf(async function* () {}),
  ];
  for (const proto of functionPrototypes) {
    defineProperty(proto, 'constructor', { value: refuseCode, writable: false, enumerable: false, configurable: false });
  }
  defineProperty(g, 'Function', { value: refuseCode, writable: false, enumerable: false, configurable: false });
  defineProperty(g, 'eval', {
    value: function evaluate() {
      throw new EvalErrorCtor('eval is disabled in Bastion sandboxes');
    },
    writable: false,
    enumerable: false,
    configurable: false,
  });

  // 3. Coarse clocks (config.clockMs), against timing side channels.
  const RealDate = Date;
  const realNow = RealDate.now;
  const grain = config.clockMs;
  const coarseNow = () => {
    const t = realNow();
    return t - (t % grain);
  };
  const CoarseDate = new ProxyCtor(RealDate, {
    apply() {
      return apply(RealDate.prototype.toString, construct(RealDate, [coarseNow()]), []);
    },
    construct(target, args, newTarget) {
      return construct(target, args.length === 0 ? [coarseNow()] : args, newTarget === CoarseDate ? target : newTarget);
    },
  });
  defineProperty(RealDate, 'now', { value: coarseNow, writable: false, enumerable: false, configurable: false });
  defineProperty(RealDate.prototype, 'constructor', { value: CoarseDate, writable: false, enumerable: false, configurable: false });
  defineProperty(g, 'Date', { value: CoarseDate, writable: true, enumerable: false, configurable: true });
  const DateTimeFormat = Intl.DateTimeFormat;
  const formatGetter = getOwnPropertyDescriptor(DateTimeFormat.prototype, 'format').get;
  const formatToParts = DateTimeFormat.prototype.formatToParts;
  defineProperty(DateTimeFormat.prototype, 'format', {
    get() {
      const format = apply(formatGetter, this, []);
      return (date) => format(date === undefined ? coarseNow() : date);
    },
    enumerable: false,
    configurable: false,
  });
  defineProperty(DateTimeFormat.prototype, 'formatToParts', {
    value: function formatToPartsCoarse(date) {
      return apply(formatToParts, this, [date === undefined ? coarseNow() : date]);
    },
    writable: false,
    enumerable: false,
    configurable: false,
  });

  // 4. The tools object the plugin script fills.
  const tools = {};
  defineProperty(g, 'tools', { value: tools, writable: false, enumerable: false, configurable: false });

  // 5. The host API. Each request is one JSON text out, one JSON text back.
  //    At most config.maxRequests go out per call (the broker's per-call cap,
  //    plus the one it refuses and ends the call on): a plugin looping on the
  //    host, awaiting nothing, cannot queue more for the sandbox process.
  const pending = create(null);
  let nextRequest = 1;
  let requests = 0;
  const overCap = () => {
    if (++requests <= config.maxRequests) return undefined;
    const error = new ErrorCtor('more capability uses than this call may make');
    error.name = 'CapabilityError';
    return error;
  };
  const request = (build) =>
    new PromiseCtor((resolve, reject) => {
      const payload = stringify(build()); // plugin values: any throw rejects this promise
      const refused = overCap();
      if (refused !== undefined) throw refused;
      const id = nextRequest++;
      pending[id] = { resolve, reject };
      send('cap', id, payload);
    });

  const host = create(null);
  if (config.caps.fetch) {
    host.fetch = function fetch(url, init) {
      return request(() => {
        const options = init === undefined || init === null ? {} : init;
        const headers = {};
        if (options.headers !== undefined && options.headers !== null) {
          for (const name of keys(options.headers)) headers[StringCtor(name)] = StringCtor(options.headers[name]);
        }
        return {
          cap: 'fetch',
          url: StringCtor(url),
          method: options.method === undefined ? 'GET' : StringCtor(options.method),
          headers,
          body: options.body === undefined || options.body === null ? undefined : StringCtor(options.body),
        };
      }).then((response) => {
        response.ok = response.status >= 200 && response.status < 300;
        return response;
      });
    };
  }
  if (config.caps.kv) {
    host.kv = freeze({
      get: (key) => request(() => ({ cap: 'kv', op: 'get', key: StringCtor(key) })),
      set: (key, value) => request(() => ({ cap: 'kv', op: 'set', key: StringCtor(key), value })),
      delete: (key) => request(() => ({ cap: 'kv', op: 'delete', key: StringCtor(key) })),
    });
  }
  if (config.caps.log) {
    host.log = function log(level, message) {
      let payload;
      try {
        payload = stringify({ cap: 'log', level: StringCtor(level), msg: StringCtor(message) });
      } catch {
        return;
      }
      const refused = overCap();
      if (refused !== undefined) throw refused;
      send('log', 0, payload);
    };
  }
  if (config.testHooks) {
    // Only present when the sandbox process was started with --test-hooks (tests only).
    host.abortProcessForTest = function abortProcessForTest() {
      send('test:abort', 0, '');
    };
  }
  freeze(host);

  // 6. Results. The first outcome counts; JSON.stringify (and any getter or
  //    toJSON in the result) runs here, inside the isolate, under its limits.
  const describe = (error) => {
    try {
      if (error !== null && typeof error === 'object' && typeof error.message === 'string') {
        const name = typeof error.name === 'string' ? error.name : 'Error';
        return name + ': ' + error.message;
      }
      return 'non-Error value thrown (' + typeof error + '): ' + StringCtor(error);
    } catch {
      return 'non-Error value thrown (' + typeof error + ')';
    }
  };
  // The outcome is one text: a kind letter, then the result's JSON or the
  // error. A tool that returns a plain value finishes within its entry, and
  // the outcome goes back as that entry's return value; a promise's outcome
  // goes out through `send` when it settles.
  let finished = false;
  const settle = (kind, text) => {
    if (finished) return undefined;
    finished = true;
    return kind + text;
  };
  const resultOutcome = (value) => {
    let json;
    try {
      json = value === undefined ? 'null' : stringify(value);
    } catch (error) {
      return settle('S', describe(error));
    }
    if (typeof json !== 'string') return settle('S', 'the result is not JSON (a ' + typeof value + ')');
    if (json.length > config.maxResultBytes) return settle('T', StringCtor(json.length));
    return settle('R', json);
  };
  const errorOutcome = (error) => settle('E', describe(error));
  const sendOutcome = (outcome) => {
    if (outcome !== undefined) send('done', 0, outcome);
  };
  const isThenable = (value) => {
    if (value === null || (typeof value !== 'object' && typeof value !== 'function')) return false;
    return typeof value.then === 'function'; // may run a plugin getter: the caller catches
  };

  return function control(kind, a, b) {
    if (kind === 'invoke') {
      const fn = apply(hasOwn, tools, [a]) ? tools[a] : undefined;
      if (typeof fn !== 'function') return settle('U', 'the plugin script does not define tools.' + a);
      let result;
      try {
        result = fn(parse(b), host);
        if (!isThenable(result)) return resultOutcome(result);
      } catch (error) {
        return errorOutcome(error);
      }
      apply(promiseThen, new PromiseCtor((resolve) => resolve(result)), [
        (value) => sendOutcome(resultOutcome(value)),
        (error) => sendOutcome(errorOutcome(error)),
      ]);
      return undefined;
    }
    if (kind === 'defined') {
      // Which of the named tools the script defined (checked once at load).
      const names = parse(a);
      const missing = [];
      for (const name of names) if (!(apply(hasOwn, tools, [name]) && typeof tools[name] === 'function')) missing.push(name);
      send('defined', 0, stringify(missing));
      return;
    }
    const entry = pending[a];
    if (entry === undefined) return;
    delete pending[a];
    if (kind === 'resolve') {
      entry.resolve(parse(b));
    } else {
      const error = new ErrorCtor(b);
      error.name = 'CapabilityError';
      entry.reject(error);
    }
  };
});
