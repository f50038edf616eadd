/**
 * The nydusd HTTP API (fscache / singleton subset, spec rafs-v6.md §3.7) on a unix socket.
 *
 * Behaviour that clients (nydus-snapshotter, our CLI) depend on:
 * - routing by exact path, the query string is ignored for matching; a known path with the wrong
 *   method is a 400, an unknown path a 404;
 * - every response has `Content-Type: application/json` and `Server: Nydus API`; success without
 *   a body is 204, with a body 200; errors are `{"code":"UNDEFINED","message":"…"}` with 400 (bad
 *   request or body), 404 (no route, no such metrics id), 413 (body over the limit), 501 (FUSE-only
 *   endpoints), 503 (not ready) or 500 (anything else); an unknown blob on DELETE /api/v2/blobs is
 *   a 500 whose message contains `blob_cache: cache entry not found` (the snapshotter matches it);
 * - idle connections are never timed out (the snapshotter holds one open and takes its hang-up
 *   for the daemon's death), including connections that never send a request;
 * - a failing handler produces a 500 and never takes the server down.
 *
 * The daemon behind the API is a DaemonController; errors it throws map to statuses as follows:
 * NydusError.context.httpStatus (4xx/5xx) wins; then ERR_UNSUPPORTED → 501; ERR_NOT_FOUND → 404
 * on metrics routes and the "cache entry not found" 500 on DELETE /api/v2/blobs; ERR_INVALID_ARGUMENT
 * on PUT /api/v1/daemon → 400; everything else → 500. See `notReady()` / `httpError()`.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { NydusError } from '../errors';
import { NormalizedEntry, parseBlobCacheEntry } from './config';
import type { MountOptions } from './interfaces';
import { PROMETHEUS_CONTENT_TYPE } from './prometheus';

export type DaemonStateName = 'INIT' | 'READY' | 'RUNNING' | 'STOPPED' | 'UNKNOWN';

export interface DaemonController {
  /** `GET /api/v1/daemon` (extra keys of the returned object are passed through) */
  info(): { id: string | null; supervisor: string | null; state: DaemonStateName };
  /** `PUT /api/v2/blobs` (the server parses and validates the body first) */
  register(entry: NormalizedEntry): Promise<void>;
  /**
   * `DELETE /api/v2/blobs?domain_id=D[&blob_id=B]` (blob_id alone is `cull`). Throw
   * NydusError('ERR_NOT_FOUND') for an unknown entry: it becomes the nydusd "cache entry not
   * found" 500.
   */
  unregister(domainId: string | undefined, blobId: string | undefined): Promise<void>;
  /** `DELETE /api/v2/blobs?blob_id=B` (no domain_id): cull the cache files of cookie B */
  cull(blobId: string): Promise<void>;
  /** `PUT /api/v1/daemon/start` (Ready → Running) */
  start(): Promise<void>;
  /** `PUT /api/v1/daemon/exit`: the response is sent after this resolves, so defer the exit itself */
  exit(): Promise<void>;
  /** `PUT /api/v1/daemon/fuse/sendfd` */
  sendfd(): Promise<void>;
  /** `PUT /api/v1/daemon/fuse/takeover` */
  takeover(): Promise<void>;
  /** `PUT /api/v1/daemon {"log_level": …}`; the level is already checked and lower-cased */
  setLogLevel(level: string): void;
  /**
   * `GET /api/v1/metrics[?id=]` and `GET /api/v1/metrics/blobcache[?id=]`; the id arrives without
   * a leading '/'. Throw NydusError('ERR_NOT_FOUND') for an unknown id (→ 404).
   */
  metrics(id?: string): unknown;
  /** `GET /api/v1/daemon/events` */
  events(): unknown[];
  /**
   * optional: `POST /api/v1/mount?mountpoint=M` with `{"id": …, "domain_id": …}` — mount a
   * registered image (front ends whose mounts the daemon makes: fanotify). Without it, 501.
   */
  mount?(id: string, domainId: string, mountpoint: string, opts?: MountOptions): Promise<unknown>;
  /** optional: `DELETE /api/v1/mount?mountpoint=M` (never lazily: busy → 409) */
  unmount?(mountpoint: string): Promise<void>;
  /** optional: `GET /api/v1/mount`: the daemon's mounts */
  mounts?(): unknown[];
  /** optional: `GET /api/v1/metrics/backend[?id=]`; without it the route answers 404 */
  backendMetrics?(id?: string): unknown;
  /** optional: `GET /api/v1/cache/usage` (cache-usage.ts CacheUsage); without it, 501 */
  cacheUsage?(): unknown;
  /** optional: `POST /api/v1/cache/gc[?dry_run=true]` (cache-manager.ts GcReport); without it, 501 */
  cacheGc?(dryRun: boolean): Promise<unknown>;
  /** optional: `POST /api/v1/cache/cull`: a culling pass now; without it, 501 */
  cacheCull?(): Promise<unknown>;
  /**
   * optional: access traces of a daemon mount (`nydus-ts optimize`): `POST /api/v1/trace?mountpoint=M`
   * starts one, `GET` returns it so far, `DELETE` stops it and returns it. Without it, 501.
   */
  trace?(action: 'start' | 'get' | 'stop', mountpoint: string): Promise<unknown>;
  /** optional: `GET /metrics`, `GET /api/v1/metrics/prometheus`: Prometheus text (format 0.0.4). Without it, 404. */
  prometheus?(): string;
  /**
   * optional: `/api/v1/cache/scrub` — `POST [?image=ID&rate=BYTES_PER_SEC]` starts a scrub and
   * returns its report so far, `GET` the running or last report, `DELETE` cancels. Without it, 501.
   */
  scrub?(action: 'start' | 'status' | 'cancel', req?: { image?: string; rateBytes?: number }): Promise<unknown>;
}

/** A handler result sent as it is, not as JSON (the Prometheus text). */
export class RawBody {
  constructor(readonly contentType: string, readonly data: string) {}
}

export interface ApiLogger {
  debug(msg: string, ctx?: Record<string, unknown>): void;
  info(msg: string, ctx?: Record<string, unknown>): void;
  warn(msg: string, ctx?: Record<string, unknown>): void;
  error(msg: string, ctx?: Record<string, unknown>): void;
}

export interface BuildInfo {
  package_ver: string;
  git_commit: string;
  build_time: string;
  profile: string;
  rustc: string;
}

export interface ApiServerOptions {
  /** the unix socket path (also used, when `server` is given, only for messages) */
  socketPath: string;
  /**
   * An already listening server handle to serve on (e.g. received from a supervisor process over
   * IPC). The socket file is then neither created nor chmod-ed, and close() closes this handle
   * without removing the file (libuv does remove it if the handle was bound in this process).
   * A supervisor that keeps its own copy of the handle must not accept on it (create it with
   * `pauseOnConnect: true` and forward accepted sockets to the child, which passes them to
   * acceptConnection()); a connection accepted by a process that does not serve HTTP hangs.
   */
  server?: net.Server;
  log?: ApiLogger;
  /** request body limit in bytes (default 1 MiB) */
  maxBodyBytes?: number;
  /** overrides of the reported build info */
  version?: Partial<BuildInfo>;
}

export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;
export const SERVER_HEADER = 'Nydus API';

// ------------------------------------------------------------------------------------------------
// errors with an explicit status

/** An error that the API reports with `status` (any 4xx/5xx). */
export function httpError(status: number, message: string, context: Record<string, unknown> = {}): NydusError {
  return new NydusError('ERR_DAEMON', message, { ...context, httpStatus: status });
}

/** 503: the daemon cannot serve this request in its current state. */
export function notReady(message: string): NydusError {
  return httpError(503, message);
}

class RouteError extends Error {
  constructor(readonly status: number, message: string, readonly close = false) {
    super(message);
  }
}

// ------------------------------------------------------------------------------------------------
// build info

let buildInfoCache: BuildInfo | undefined;

function findUp(start: string, name: string): string | undefined {
  let dir = start;
  for (let i = 0; i < 6; i++) {
    const p = path.join(dir, name);
    if (fs.existsSync(p)) return p;
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return undefined;
}

function gitCommit(repoDir: string): string {
  try {
    const gitDir = path.join(repoDir, '.git');
    const head = fs.readFileSync(path.join(gitDir, 'HEAD'), 'utf8').trim();
    if (!head.startsWith('ref: ')) return head;
    const ref = head.slice(5);
    try {
      return fs.readFileSync(path.join(gitDir, ref), 'utf8').trim();
    } catch {
      const packed = fs.readFileSync(path.join(gitDir, 'packed-refs'), 'utf8');
      const line = packed.split('\n').find((l) => l.endsWith(` ${ref}`));
      return line ? line.split(' ')[0] : 'unknown';
    }
  } catch {
    return 'unknown';
  }
}

/** `version` of GET /api/v1/daemon: package.json version, git commit, build time of this file. */
export function buildInfo(): BuildInfo {
  if (buildInfoCache) return buildInfoCache;
  let packageVer = '0.0.0';
  let commit = 'unknown';
  const pkg = findUp(__dirname, 'package.json');
  if (pkg) {
    try {
      const j = JSON.parse(fs.readFileSync(pkg, 'utf8')) as { name?: string; version?: string };
      if (typeof j.version === 'string') packageVer = j.version;
      commit = gitCommit(path.dirname(pkg));
    } catch {
      // keep the defaults
    }
  }
  let built = 'unknown';
  try {
    built = fs.statSync(__filename).mtime.toISOString();
  } catch {
    // keep the default
  }
  buildInfoCache = {
    package_ver: packageVer,
    git_commit: commit,
    build_time: built,
    profile: 'release',
    rustc: 'none (TypeScript)',
  };
  return buildInfoCache;
}

// ------------------------------------------------------------------------------------------------
// socket file handling

/** Does something accept connections on this unix socket? */
export function socketAlive(sock: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(sock);
    const done = (v: boolean): void => {
      clearTimeout(t);
      c.destroy();
      resolve(v);
    };
    const t = setTimeout(() => done(true), timeoutMs); // connecting but slow: someone is there
    c.once('connect', () => done(true));
    c.once('error', () => done(false));
  });
}

/**
 * Make `sock` bindable: remove a stale socket file (nobody accepts on it); refuse if a live daemon
 * answers there or if the path is something other than a socket.
 */
export async function clearStaleSocket(sock: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(sock);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new NydusError('ERR_DAEMON', `API socket path ${sock} exists and is not a socket; refusing to replace it`, { sock });
  if (await socketAlive(sock)) throw new NydusError('ERR_DAEMON', `API socket ${sock} is in use by a running daemon`, { sock });
  fs.rmSync(sock, { force: true });
}

/** Listen on a unix socket created with mode 0600 (after clearing a stale socket file). */
export async function listenUnixSocket(server: net.Server, sock: string): Promise<void> {
  await clearStaleSocket(sock);
  fs.mkdirSync(path.dirname(sock), { recursive: true });
  // bind with a restrictive umask so that the socket is never reachable by others, then chmod
  // to be exact. The bind happens synchronously inside listen(), so the process-wide umask is
  // restored before any other code runs (umask cannot be changed in worker threads).
  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error): void => reject(new NydusError('ERR_DAEMON', `cannot listen on API socket ${sock}: ${e.message}`, { sock }));
    server.once('error', onError);
    let oldMask: number | undefined;
    try {
      oldMask = process.umask(0o177);
    } catch {
      oldMask = undefined;
    }
    try {
      server.listen(sock, () => {
        server.off('error', onError);
        resolve();
      });
    } finally {
      if (oldMask !== undefined) process.umask(oldMask);
    }
  });
  fs.chmodSync(sock, 0o600);
}

// ------------------------------------------------------------------------------------------------
// routing

type Method = 'GET' | 'PUT' | 'DELETE' | 'POST' | 'PATCH' | 'HEAD' | 'OPTIONS';

interface RequestContext {
  method: string;
  query: URLSearchParams;
  body: () => Promise<Buffer>;
}

/** a handler returns the JSON body (200) or undefined (204) */
type Handler = (ctx: RequestContext) => Promise<unknown> | unknown;

const FUSE_ONLY = 'this endpoint needs a FUSE filesystem service, which a daemon in fscache (singleton) mode does not have';

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];

function unsupported(): never {
  throw new RouteError(501, `Unsupported: ${FUSE_ONLY}`);
}

function queryId(q: URLSearchParams, key: string): string | undefined {
  const v = q.get(key);
  return v === null || v === '' ? undefined : v;
}

function checkQueryId(v: string | undefined, key: string): void {
  if (v !== undefined && (v.includes('/') || v.includes('\0'))) throw new RouteError(400, `bad request: query parameter ${key}=${JSON.stringify(v)} must not contain '/'`);
}

function parseJson(buf: Buffer, what: string): unknown {
  if (buf.length === 0) throw new RouteError(400, `bad request: ${what} needs a JSON body`);
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch (e) {
    throw new RouteError(400, `bad request: malformed JSON body: ${(e as Error).message}`);
  }
}

/** `/x` and `x` name the same metrics id (the snapshotter sends `/<fsid>`) */
function metricsId(q: URLSearchParams): string | undefined {
  const id = q.get('id');
  if (id === null) return undefined;
  const stripped = id.replace(/^\/+/, '');
  return stripped === '' ? undefined : stripped;
}

export class ApiServer {
  readonly socketPath: string;
  private readonly http: http.Server;
  private net?: net.Server;
  private readonly owned: boolean;
  private readonly sockets = new Set<net.Socket>();
  private readonly routes = new Map<string, Partial<Record<Method, Handler>>>();
  private readonly maxBody: number;
  private listening = false;
  private readonly onConnection = (s: net.Socket): void => {
    this.http.emit('connection', s);
  };

  constructor(private readonly controller: DaemonController, private readonly opts: ApiServerOptions) {
    this.socketPath = opts.socketPath;
    this.maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    this.owned = opts.server === undefined;
    this.http = http.createServer({
      // never time out idle or silent connections: the snapshotter's liveness monitor connects
      // and waits for a hang-up without sending anything
      keepAliveTimeout: 0,
      requestTimeout: 0,
      headersTimeout: 0,
      requireHostHeader: false,
      maxHeaderSize: 16 * 1024,
    });
    this.http.timeout = 0;
    this.http.keepAliveTimeout = 0;
    this.http.on('request', (req, res) => void this.dispatch(req, res));
    this.http.on('connection', (s: net.Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
      s.on('error', () => undefined);
    });
    this.http.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => this.clientError(err, socket));
    this.buildRoutes();
  }

  private get log(): ApiLogger | undefined {
    return this.opts.log;
  }

  /** Start serving: bind the socket (or attach to the inherited server). */
  async listen(): Promise<void> {
    if (this.listening) return;
    if (this.opts.server) {
      this.net = this.opts.server;
      this.net.on('connection', this.onConnection);
    } else {
      this.net = this.http;
      await listenUnixSocket(this.http, this.socketPath);
    }
    this.listening = true;
    this.log?.debug(`API server listening on ${this.socketPath}`);
  }

  /**
   * Serve an already accepted connection (e.g. forwarded by a supervisor over IPC). A paused
   * socket (pauseOnConnect) is fine: the HTTP parser resumes it.
   */
  acceptConnection(socket: net.Socket): void {
    if (!this.listening) {
      socket.destroy();
      return;
    }
    this.http.emit('connection', socket);
    socket.resume();
  }

  /** Number of open client connections (idle ones included). */
  connectionCount(): number {
    return this.sockets.size;
  }

  /** Stop serving, drop every connection, and remove the socket file if this server created it. */
  async close(): Promise<void> {
    if (!this.listening) return;
    this.listening = false;
    const n = this.net!;
    if (n !== this.http) n.off('connection', this.onConnection);
    const closed = new Promise<void>((resolve) => n.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await closed;
    if (this.owned) fs.rmSync(this.socketPath, { force: true });
  }

  // ----------------------------------------------------------------------------------------------

  private route(p: string, handlers: Partial<Record<Method, Handler>>): void {
    this.routes.set(p, handlers);
  }

  private buildRoutes(): void {
    const c = this.controller;
    const daemonInfo = (withBackends: boolean): unknown => {
      const i = c.info();
      const { id, supervisor, state, ...rest } = i as ReturnType<DaemonController['info']> & Record<string, unknown>;
      const out: Record<string, unknown> = { version: { ...buildInfo(), ...this.opts.version }, id: id ?? null, supervisor: supervisor ?? null, state, ...rest };
      if (withBackends) out.backend_collection = rest.backend_collection ?? null;
      else delete out.backend_collection;
      return out;
    };

    this.route('/api/v1/daemon', {
      GET: () => daemonInfo(true),
      PUT: async (ctx) => {
        const body = parseJson(await ctx.body(), 'PUT /api/v1/daemon');
        if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new RouteError(400, 'bad request: body must be a JSON object like {"log_level":"info"}');
        const level = (body as Record<string, unknown>).log_level;
        if (level === undefined) throw new RouteError(400, 'bad request: log_level is required');
        if (typeof level !== 'string' || !LOG_LEVELS.includes(level.toLowerCase())) {
          throw new RouteError(400, `bad request: log_level must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(level)}`);
        }
        c.setLogLevel(level.toLowerCase());
        return undefined;
      },
    });
    this.route('/api/v2/daemon', { GET: () => daemonInfo(false) });
    this.route('/api/v1/daemon/start', { PUT: () => c.start().then(() => undefined) });
    this.route('/api/v1/daemon/exit', { PUT: () => c.exit().then(() => undefined) });
    this.route('/api/v1/daemon/fuse/sendfd', { PUT: () => c.sendfd().then(() => undefined) });
    this.route('/api/v1/daemon/fuse/takeover', { PUT: () => c.takeover().then(() => undefined) });
    this.route('/api/v1/daemon/events', { GET: () => c.events() });
    this.route('/api/v1/daemon/backend', { GET: unsupported });

    this.route('/api/v2/blobs', {
      GET: () => {
        throw new RouteError(501, 'Unsupported: listing blobs is not implemented (as in nydusd)');
      },
      PUT: async (ctx) => {
        const body = parseJson(await ctx.body(), 'PUT /api/v2/blobs');
        let entry: NormalizedEntry;
        try {
          entry = parseBlobCacheEntry(body);
        } catch (e) {
          if (e instanceof NydusError && e.code === 'ERR_INVALID_ARGUMENT') throw new RouteError(400, `bad request: invalid blob cache entry: ${e.message}`);
          throw e;
        }
        await c.register(entry);
        return undefined;
      },
      DELETE: async (ctx) => {
        const domainId = queryId(ctx.query, 'domain_id');
        const blobId = queryId(ctx.query, 'blob_id');
        checkQueryId(domainId, 'domain_id');
        checkQueryId(blobId, 'blob_id');
        if (domainId === undefined && blobId === undefined) throw new RouteError(400, 'bad request: DELETE /api/v2/blobs needs domain_id and/or blob_id query parameters');
        try {
          if (domainId === undefined) await c.cull(blobId!);
          else await c.unregister(domainId, blobId);
        } catch (e) {
          if (e instanceof NydusError && e.code === 'ERR_NOT_FOUND' && e.context.httpStatus === undefined) {
            const m = e.message.includes('blob_cache: cache entry not found') ? e.message : `blob_cache: cache entry not found (${e.message})`;
            throw new RouteError(500, m);
          }
          throw e;
        }
        return undefined;
      },
    });

    const metrics = (get: (id?: string) => unknown): Handler => async (ctx) => {
      try {
        return (await get(metricsId(ctx.query))) ?? null;
      } catch (e) {
        if (e instanceof NydusError && e.code === 'ERR_NOT_FOUND' && e.context.httpStatus === undefined) throw new RouteError(404, `metrics: ${e.message}`);
        throw e;
      }
    };
    this.route('/api/v1/metrics', { GET: metrics((id) => c.metrics(id)) });
    this.route('/api/v1/metrics/blobcache', { GET: metrics((id) => c.metrics(id)) });
    this.route('/api/v1/metrics/backend', {
      GET: metrics((id) => {
        if (!c.backendMetrics) throw new RouteError(404, 'metrics: no backend metrics counter');
        return c.backendMetrics(id);
      }),
    });
    // RAFS (FUSE) filesystem counters do not exist in fscache mode
    for (const p of ['/api/v1/metrics/files', '/api/v1/metrics/pattern', '/api/v1/metrics/access_patterns', '/api/v1/metrics/fop_latency']) {
      this.route(p, {
        GET: () => {
          throw new RouteError(404, 'metrics: no RAFS filesystem counters in fscache mode');
        },
      });
    }
    this.route('/api/v1/metrics/inflight', { GET: unsupported });
    const mountpointOf = (q: URLSearchParams): string => {
      const m = q.get('mountpoint');
      if (!m || !m.startsWith('/') || m.includes('\0')) throw new RouteError(400, 'bad request: the mountpoint query parameter must be an absolute path');
      return m;
    };
    this.route('/api/v1/mount', {
      GET: () => (c.mounts ? c.mounts() : unsupported()),
      POST: async (ctx) => {
        if (!c.mount) unsupported();
        const mnt = mountpointOf(ctx.query);
        const body = parseJson(await ctx.body(), 'POST /api/v1/mount');
        const b = body as Record<string, unknown> | null;
        if (typeof b !== 'object' || b === null || typeof b.id !== 'string' || !b.id || (b.domain_id !== undefined && typeof b.domain_id !== 'string')) {
          throw new RouteError(400, 'bad request: body must be {"id": "<registered image id>", "domain_id": "<optional>", "read_ahead_kb": <optional>}');
        }
        const ra = b.read_ahead_kb;
        if (ra !== undefined && (typeof ra !== 'number' || !Number.isInteger(ra) || ra < 0 || ra > 65536)) {
          throw new RouteError(400, `bad request: read_ahead_kb must be an integer from 0 to 65536 (KiB; 0 keeps the kernel's), got ${JSON.stringify(ra)}`);
        }
        return c.mount!(b.id, (b.domain_id as string | undefined) ?? '', mnt, ra === undefined ? undefined : { readaheadKb: ra });
      },
      PUT: unsupported,
      DELETE: async (ctx) => {
        if (!c.unmount) unsupported();
        await c.unmount!(mountpointOf(ctx.query));
        return undefined;
      },
    });
    const trace = (action: 'start' | 'get' | 'stop'): Handler => async (ctx) => {
      if (!c.trace) unsupported();
      return c.trace!(action, mountpointOf(ctx.query));
    };
    this.route('/api/v1/trace', { POST: trace('start'), GET: trace('get'), DELETE: trace('stop') });
    this.route('/api/v1/cache/usage', { GET: () => (c.cacheUsage ? c.cacheUsage() : unsupported()) });
    this.route('/api/v1/cache/gc', {
      POST: (ctx) => {
        const d = ctx.query.get('dry_run');
        if (d !== null && !['true', 'false', '1', '0', ''].includes(d)) throw new RouteError(400, `bad request: dry_run=${JSON.stringify(d)} must be true or false`);
        return c.cacheGc ? c.cacheGc(d === 'true' || d === '1' || d === '') : unsupported();
      },
    });
    this.route('/api/v1/cache/cull', { POST: () => (c.cacheCull ? c.cacheCull() : unsupported()) });
    this.route('/api/v1/config', { GET: unsupported, PUT: unsupported });
    const prometheus: Handler = () => {
      if (!c.prometheus) throw new RouteError(404, 'metrics: no Prometheus exposition');
      return new RawBody(PROMETHEUS_CONTENT_TYPE, c.prometheus());
    };
    this.route('/metrics', { GET: prometheus });
    this.route('/api/v1/metrics/prometheus', { GET: prometheus });
    const scrub = (action: 'start' | 'status' | 'cancel'): Handler => async (ctx) => {
      if (!c.scrub) unsupported();
      const image = queryId(ctx.query, 'image');
      const rate = ctx.query.get('rate');
      if (rate !== null && !/^\d+(\.\d+)?$/.test(rate)) throw new RouteError(400, `bad request: rate=${JSON.stringify(rate)} must be a number of bytes per second (0 = unlimited)`);
      return c.scrub!(action, { image, rateBytes: rate === null ? undefined : Number(rate) });
    };
    this.route('/api/v1/cache/scrub', { POST: scrub('start'), GET: scrub('status'), DELETE: scrub('cancel') });
  }

  // ----------------------------------------------------------------------------------------------

  private async dispatch(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = Date.now();
    let status = 500;
    try {
      // the request target as sent: exact path, then the query (an absolute-form target is
      // reduced to its path)
      let target = req.url ?? '/';
      if (/^https?:\/\//i.test(target)) {
        const u = new URL(target);
        target = u.pathname + u.search;
      }
      const qi = target.indexOf('?');
      const pathname = qi < 0 ? target : target.slice(0, qi);
      const query = new URLSearchParams(qi < 0 ? '' : target.slice(qi + 1));
      const route = this.routes.get(pathname);
      if (!route) throw new RouteError(404, `no route for ${pathname}`);
      const handler = route[(req.method ?? 'GET').toUpperCase() as Method];
      if (!handler) throw new RouteError(400, `bad request: method ${req.method} is not supported on ${pathname}`);
      const ctx: RequestContext = {
        method: req.method ?? 'GET',
        query,
        body: () => this.readBody(req),
      };
      const out = await handler(ctx);
      // an unread body is discarded by node:http after the response (keep-alive is preserved)
      status = out === undefined ? 204 : 200;
      if (out instanceof RawBody) {
        const data = Buffer.from(out.data);
        res.writeHead(200, { 'Content-Type': out.contentType, Server: SERVER_HEADER, 'Content-Length': data.length });
        res.end(data);
        return;
      }
      this.send(res, status, out);
    } catch (e) {
      const err = this.toHttpError(e);
      status = err.status;
      if (status >= 500) this.log?.warn(`API ${req.method} ${req.url}: ${status} ${err.message}`);
      this.send(res, status, { code: 'UNDEFINED', message: err.message }, err.close);
    } finally {
      this.log?.debug(`API ${req.method} ${req.url} → ${status} (${Date.now() - started} ms)`);
    }
  }

  private toHttpError(e: unknown): RouteError {
    if (e instanceof RouteError) return e;
    if (e instanceof NydusError) {
      const s = e.context.httpStatus;
      if (typeof s === 'number' && Number.isInteger(s) && s >= 400 && s <= 599) return new RouteError(s, e.message);
      if (e.code === 'ERR_UNSUPPORTED') return new RouteError(501, `Unsupported: ${e.message}`);
      return new RouteError(500, e.message);
    }
    const msg = e instanceof Error ? e.message : String(e);
    return new RouteError(500, `internal error: ${msg}`);
  }

  private readBody(req: http.IncomingMessage): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const declared = req.headers['content-length'];
      if (declared !== undefined && Number(declared) > this.maxBody) {
        req.resume();
        reject(new RouteError(413, `request body of ${declared} bytes exceeds the limit of ${this.maxBody} bytes`, true));
        return;
      }
      if (req.readableEnded) {
        resolve(Buffer.alloc(0));
        return;
      }
      const parts: Buffer[] = [];
      let n = 0;
      let over = false;
      req.on('data', (d: Buffer) => {
        if (over) return;
        n += d.length;
        if (n > this.maxBody) {
          over = true;
          parts.length = 0;
          reject(new RouteError(413, `request body exceeds the limit of ${this.maxBody} bytes`, true));
          return;
        }
        parts.push(d);
      });
      req.once('end', () => {
        if (!over) resolve(Buffer.concat(parts));
      });
      req.once('error', (e) => reject(new RouteError(400, `bad request: ${e.message}`, true)));
    });
  }

  private send(res: http.ServerResponse, status: number, body: unknown, close = false): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const headers: Record<string, string | number> = { 'Content-Type': 'application/json', Server: SERVER_HEADER };
    if (close) headers.Connection = 'close';
    let data: Buffer | undefined;
    if (status !== 204) {
      try {
        data = Buffer.from(JSON.stringify(body === undefined ? null : body));
      } catch (e) {
        status = 500;
        data = Buffer.from(JSON.stringify({ code: 'UNDEFINED', message: `internal error: cannot serialize the response: ${(e as Error).message}` }));
      }
      headers['Content-Length'] = data.length;
    }
    try {
      res.writeHead(status, headers);
      res.end(data);
      if (close) res.once('finish', () => res.socket?.destroySoon());
    } catch (e) {
      this.log?.error(`API: cannot send a response: ${(e as Error).message}`);
      res.destroy();
    }
  }

  private clientError(err: NodeJS.ErrnoException, socket: net.Socket): void {
    const code = err.code ?? '';
    if (code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const status = code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    const reason = status === 431 ? 'Request Header Fields Too Large' : 'Bad Request';
    const body = JSON.stringify({ code: 'UNDEFINED', message: `bad request: ${err.message}` });
    socket.end(
      `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nServer: ${SERVER_HEADER}\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  }
}
