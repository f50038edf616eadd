/**
 * The parts of undici nydus-ts uses: Agent, Pool, ProxyAgent and `request` on a dispatcher.
 * `require('undici')` loads the package's whole surface first (fetch, WebSocket, EventSource,
 * mocks, caches: 110 modules, ~80 ms natively and several seconds under emulation), which every
 * `mount --image` and daemon start would pay; these entry points load 35 modules. undici has no
 * "exports" map, so the paths are reachable; test/backends.test.ts checks that they are the very
 * classes the package exports, so an upgrade that moves them fails a test rather than a user.
 */
import type * as Undici from 'undici';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const DispatcherClass = require('undici/lib/dispatcher/dispatcher') as typeof Undici.Dispatcher;
// What undici's index.js does on load: put the request/stream/pipeline API on every dispatcher
// (assigning the same functions again is harmless when the full package is loaded too).
// eslint-disable-next-line @typescript-eslint/no-require-imports
Object.assign(DispatcherClass.prototype, require('undici/lib/api'));

/* eslint-disable @typescript-eslint/no-require-imports */
export const Agent = require('undici/lib/dispatcher/agent') as typeof Undici.Agent;
export const Pool = require('undici/lib/dispatcher/pool') as typeof Undici.Pool;
export const ProxyAgent = require('undici/lib/dispatcher/proxy-agent') as typeof Undici.ProxyAgent;
/* eslint-enable @typescript-eslint/no-require-imports */
export type Dispatcher = Undici.Dispatcher;
export type ProxyAgentOptions = Undici.ProxyAgent.Options;
export type ResponseData = Undici.Dispatcher.ResponseData;
export type HttpMethod = Undici.Dispatcher.HttpMethod;

export interface RequestOptions {
  dispatcher: Dispatcher;
  method: HttpMethod;
  headers?: Record<string, string>;
  body?: Undici.Dispatcher.DispatchOptions['body'];
  signal?: AbortSignal;
  /** close the connection after this request (no keep-alive) */
  reset?: boolean;
}

/** undici's `request(url, opts)`, always on an explicit dispatcher. */
export function request(url: string, o: RequestOptions): Promise<ResponseData> {
  const u = new URL(url);
  return o.dispatcher.request({ origin: u.origin, path: u.pathname + u.search, method: o.method, headers: o.headers, body: o.body, signal: o.signal, reset: o.reset });
}
