/**
 * The serving daemon: images registry + chunk pool + a kernel front end (KernelFrontend: fscache
 * or fanotify, built in src/kernel/) + the nydusd-compatible API. Runs as the child of a
 * supervisor (src/daemon/supervisor.ts) that owns the kernel handle and the API socket, so that a
 * crashed child can be replaced without failing a read: the new child gets the same fds,
 * re-registers the images and takes over the front end's pending work.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { ImageRegistry, ImageRegistration } from './image-registry';
import { LocalFsBackend } from '../backends/localfs';
import { makeNetworkBackend } from '../backends/proxy';
import { BlobBackend, BlobMetrics, FrontendMount, KernelFrontend, MountOptions } from './interfaces';
import type { GateStats } from './backend-gate';
import { ChunkPool } from '../codec/chunk-pool';
import { digestReady } from '../codec/digest';
import { NydusError } from '../errors';
import { ApiServer, DaemonController } from './api-server';
import { NormalizedEntry, parseBlobCacheEntry } from './config';
import { Logger } from './log';
import { VERSION } from '../version';
import { SessionTotals } from './metrics-totals';
import { ScrubManager } from './scrub';
import { renderPrometheus } from './prometheus';
import { MetricsHttpServer } from './metrics-listener';
import { CacheManager, hasCache } from './cache-manager';
import { CacheLifecycleConfig, DEFAULT_CACHE_CONFIG } from './cache-config';

export type DaemonState = 'INIT' | 'READY' | 'RUNNING' | 'STOPPED' | 'UNKNOWN';

export interface DaemonOptions {
  /** the kernel front end (src/kernel/index.ts createFrontend) */
  frontend: KernelFrontend;
  /** the cache directory (reported) */
  cacheDir: string;
  threads?: number;
  apiSock: string;
  /** API connections are handed over by a supervisor (acceptConnection) instead of a socket */
  externalConnections?: boolean;
  /** `PUT /api/v1/daemon/exit` after the front end stopped: end the whole daemon (the supervisor) */
  requestExit?: () => void;
  id?: string;
  supervisor?: string;
  log: Logger;
  /** called after each successful register/unregister with the current registrations */
  onRegistrationsChanged?: (entries: unknown[]) => void;
  /** registrations to restore before serving (failover) */
  initialEntries?: unknown[];
  /** periodic background scrub (scrub.ts); off when absent */
  scrub?: { intervalMs: number; rateBytes: number };
  /** automatic GC and culling under disk pressure (cache-config.ts; default DEFAULT_CACHE_CONFIG) */
  cache?: CacheLifecycleConfig;
}

/**
 * Make the backend a registration asks for. Network backends (registry, http-proxy, s3, oss) get
 * their `proxy` section through makeNetworkBackend (src/backends/proxy.ts).
 */
export function makeBackend(entry: NormalizedEntry): BlobBackend {
  const b = entry.backend;
  switch (b.type) {
    case 'localfs':
      return new LocalFsBackend(b.config as { dir?: string; alt_dirs?: string[]; blob_file?: string });
    case 'registry':
    case 'http-proxy':
    case 's3':
    case 'oss':
      return makeNetworkBackend(b);
    default:
      throw new NydusError('ERR_UNSUPPORTED', `backend type "${b.type}" is not supported (localfs, registry, http-proxy, s3 and oss are)`, { backend: b.type });
  }
}

export class Daemon implements DaemonController {
  state: DaemonState = 'INIT';
  readonly registry: ImageRegistry;
  private readonly frontend: KernelFrontend;
  private api?: ApiServer;
  private pool?: ChunkPool;
  private readonly entries = new Map<string, unknown>();
  private readonly eventLog: unknown[] = [];
  /** counters of closed sessions, for monotonic daemon-wide totals (metrics-totals.ts) */
  private readonly totals = new SessionTotals();
  private scrubber?: ScrubManager;
  private metricsHttp?: MetricsHttpServer;
  /** usage, GC and culling of the cache dir (cache-manager.ts) */
  private readonly cacheMgr?: CacheManager;

  constructor(private readonly opts: DaemonOptions) {
    this.registry = new ImageRegistry({ log: (level, msg, ctx) => opts.log[level](msg, ctx) });
    this.registry.onSessionClosed = (m) => this.totals.retire(m);
    this.frontend = opts.frontend;
    const f = opts.frontend;
    if (hasCache(f)) {
      this.cacheMgr = new CacheManager({
        cacheDir: opts.cacheDir, frontend: f, registry: this.registry, config: opts.cache ?? DEFAULT_CACHE_CONFIG, log: (level, msg, ctx) => opts.log[level](msg, ctx),
      });
    }
  }

  /** Bring the daemon up: pool, restored registrations, kernel front end, API. */
  async run(): Promise<void> {
    await digestReady();
    this.pool = await ChunkPool.create({ threads: this.opts.threads });
    this.registry.setPool(this.pool);
    for (const raw of this.opts.initialEntries ?? []) {
      try {
        await this.register(parseBlobCacheEntry(raw), raw, false);
      } catch (e) {
        this.opts.log.error(`re-registering an image after failover failed: ${(e as Error).message}`);
      }
    }
    await this.frontend.start(this.registry);
    this.scrubber = new ScrubManager({
      frontend: this.frontend, log: (level, msg, ctx) => this.opts.log[level](msg, ctx), periodic: this.opts.scrub,
      blobsOf: (image) => this.scrubBlobs(image),
    });
    this.cacheMgr?.start();
    this.state = 'RUNNING';
    // With a supervisor, an unbound server: connections arrive through acceptConnection().
    const server = this.opts.externalConnections ? new net.Server() : undefined;
    this.api = new ApiServer(this, { socketPath: this.opts.apiSock, server, log: this.opts.log, version: { package_ver: VERSION } });
    await this.api.listen();
    this.opts.log.info(`serving: ${this.frontend.kind} front end, cache dir ${this.opts.cacheDir}, API ${this.opts.apiSock}`);
  }

  /** serve a `--metrics-listen` connection accepted by the supervisor: GET /metrics only */
  acceptMetricsConnection(socket: net.Socket): void {
    this.metricsHttp ??= new MetricsHttpServer(() => this.prometheus());
    this.metricsHttp.acceptConnection(socket);
  }

  /** serve an API connection accepted by the supervisor */
  acceptConnection(socket: net.Socket): void {
    if (this.api) this.api.acceptConnection(socket);
    else socket.destroy();
  }

  info(): { id: string | null; supervisor: string | null; state: DaemonState; pid: number; supervisor_pid: number | null; frontend: string; cache_dir: string } {
    // pid of the serving process (tests kill it to prove failover) and of its supervisor
    return {
      id: this.opts.id ?? null, supervisor: this.opts.supervisor ?? null, state: this.state, pid: process.pid,
      supervisor_pid: this.opts.externalConnections ? process.ppid : null, frontend: this.frontend.kind, cache_dir: this.opts.cacheDir,
    };
  }

  async register(entry: NormalizedEntry, raw?: unknown, notify = true): Promise<void> {
    const reg: ImageRegistration = {
      id: entry.id,
      domainId: entry.domainId,
      bootstrapPath: entry.bootstrapPath,
      backend: makeBackend(entry),
      // Digests are always verified when the bootstrap records them (nydusd skips this for
      // legacy configs; serving a corrupt chunk is never acceptable here).
      session: { amplify: entry.amplifyIo, validate: true, metaCacheDir: entry.workDir },
      prefetch: entry.prefetch,
      source: raw,
    };
    this.registry.register(reg);
    this.entries.set(`${entry.domainId}/${entry.id}`, raw ?? entry.raw);
    if (notify) this.opts.onRegistrationsChanged?.([...this.entries.values()]);
  }

  async unregister(domainId: string | undefined, blobId: string | undefined): Promise<void> {
    const removed = this.registry.unregister(domainId, blobId);
    for (const r of removed) this.entries.delete(`${r.domainId}/${r.id}`);
    this.cacheMgr?.afterUnregister();
    this.opts.onRegistrationsChanged?.([...this.entries.values()]);
  }

  async cull(blobId: string): Promise<void> {
    if (this.registry.blobInUse(blobId)) throw new NydusError('ERR_DAEMON', `blob ${blobId} is in use by a registered image`);
    if (this.frontend.cull) await this.frontend.cull(blobId);
    else if (this.cacheMgr) await this.cacheMgr.removeBlob(blobId); // fanotify: its file and presence map
    else throw new NydusError('ERR_UNSUPPORTED', `the ${this.frontend.kind} front end cannot cull blobs`);
  }

  /** `GET /api/v1/cache/usage` */
  cacheUsage(): unknown {
    if (!this.cacheMgr) throw new NydusError('ERR_UNSUPPORTED', `the ${this.frontend.kind} front end has no cache to report`, { httpStatus: 501 });
    return this.cacheMgr.usage();
  }

  /** `POST /api/v1/cache/gc[?dry_run=true]`: remove the data of blobs no registered image uses */
  async cacheGc(dryRun: boolean): Promise<unknown> {
    if (!this.cacheMgr) throw new NydusError('ERR_UNSUPPORTED', `the ${this.frontend.kind} front end has no cache to collect`, { httpStatus: 501 });
    return this.cacheMgr.gc({ trigger: 'api', dryRun });
  }

  /** `POST /api/v1/cache/cull`: a culling pass now (only does something above the high watermark) */
  async cacheCull(): Promise<unknown> {
    if (!this.cacheMgr) throw new NydusError('ERR_UNSUPPORTED', `the ${this.frontend.kind} front end has no cache to cull`, { httpStatus: 501 });
    return (await this.cacheMgr.cull('api')) ?? { trigger: 'api', culled: false, reason: 'below the high watermarks' };
  }

  /** `POST /api/v1/mount?mountpoint=`: mount a registered image (front ends that mount themselves). */
  async mount(id: string, domainId: string, mountpoint: string, opts?: MountOptions): Promise<FrontendMount> {
    if (!this.frontend.mount) {
      throw new NydusError('ERR_UNSUPPORTED', `the ${this.frontend.kind} front end does not mount images itself: the kernel mounts them (mount -t erofs -o fsid=${id}${domainId ? `,domain_id=${domainId}` : ''})`, { httpStatus: 501 });
    }
    const image = this.registry.find(id, domainId);
    if (!image) throw new NydusError('ERR_NOT_FOUND', `no registered image ${id}${domainId ? ` in domain ${domainId}` : ''}: register it first (PUT /api/v2/blobs)`, { id, domainId, httpStatus: 404 });
    return this.frontend.mount(image, mountpoint, opts);
  }

  /** `DELETE /api/v1/mount?mountpoint=`: never lazily; a busy mount is a 409 and stays served. */
  async unmount(mountpoint: string): Promise<void> {
    if (!this.frontend.unmount) throw new NydusError('ERR_UNSUPPORTED', `the ${this.frontend.kind} front end does not mount images itself: use umount(8)`, { httpStatus: 501 });
    await this.frontend.unmount(mountpoint);
  }

  mounts(): FrontendMount[] {
    return this.frontend.mounts?.() ?? [];
  }

  /** `POST|GET|DELETE /api/v1/trace?mountpoint=`: access traces for `nydus-ts optimize`. */
  async trace(action: 'start' | 'get' | 'stop', mountpoint: string): Promise<unknown> {
    const f = this.frontend;
    if (!f.startTrace || !f.trace || !f.stopTrace) {
      throw new NydusError('ERR_UNSUPPORTED', `the ${f.kind} front end cannot record access traces (the fanotify front end can)`, { httpStatus: 501 });
    }
    if (action === 'start') return f.startTrace(mountpoint);
    if (action === 'get') return f.trace(mountpoint);
    return f.stopTrace(mountpoint);
  }

  /** The blobs of one registered image (any domain), or of all, with the fscache volumes holding each. */
  private scrubBlobs(image?: string): Array<{ blobId: string; volumes: string[] }> {
    const images = this.registry.list().filter((i) => image === undefined || i.id === image);
    if (image !== undefined && !images.length) throw new NydusError('ERR_NOT_FOUND', `no registered image ${image}`, { id: image, httpStatus: 404 });
    const volumes = new Map<string, string[]>();
    for (const i of images) {
      for (const b of i.blobIds) {
        if (!volumes.has(b)) volumes.set(b, []);
        volumes.get(b)!.push(ImageRegistry.volumeOf(i.id, i.domainId));
      }
    }
    return [...volumes].map(([blobId, v]) => ({ blobId, volumes: v }));
  }

  /** `/api/v1/cache/scrub`: start one (its report so far), the running or last report, or cancel (scrub.ts). */
  async scrub(action: 'start' | 'status' | 'cancel', req: { image?: string; rateBytes?: number } = {}): Promise<unknown> {
    const s = this.scrubber;
    if (!s) throw new NydusError('ERR_DAEMON', 'the daemon is not serving yet', { httpStatus: 503 });
    if (action === 'start') return s.start({ ...req, trigger: 'api' });
    if (action === 'cancel' && !(await s.cancel())) throw new NydusError('ERR_NOT_FOUND', 'no scrub is running', { httpStatus: 404 });
    return s.status();
  }

  /** Prometheus text exposition of metrics() (prometheus.ts). */
  prometheus(): string {
    return renderPrometheus(this.metrics() as Record<string, unknown>);
  }

  /** API `PUT /api/v1/daemon/start`: Ready → Running (we serve from the start). */
  async start(): Promise<void> {
    this.state = 'RUNNING';
  }

  /** Unmount (busy → error, the daemon keeps serving), then end the daemon. */
  async exit(): Promise<void> {
    await this.frontend.stop();
    this.state = 'STOPPED';
    setImmediate(() => (this.opts.requestExit ? this.opts.requestExit() : process.kill(process.pid, 'SIGTERM')));
  }

  /**
   * nydusd hands its state and fd to the snapshotter's supervisor here. Our own supervisor
   * process already holds the kernel handle and the registrations, so there is nothing to
   * send; answer success so a snapshotter configured with a supervisor carries on.
   */
  async sendfd(): Promise<void> {
    this.opts.log.info('sendfd: state is kept by the built-in supervisor; nothing to send');
  }

  async takeover(): Promise<void> {
    this.opts.log.info('takeover: the built-in supervisor already restored the state');
  }

  setLogLevel(level: string): void {
    this.opts.log.setLevel(level);
  }

  metrics(id?: string): unknown {
    const sessions = this.registry.openSessions().map((s) => s.metrics());
    const images = this.registry.list().filter((i) => !id || i.id === id.replace(/^\//, ''));
    if (id && images.length === 0) throw new NydusError('ERR_NOT_FOUND', `no metrics for id ${id}`);
    const blobIds = new Set(images.flatMap((i) => i.blobIds));
    const blobs = sessions.filter((m) => !id || blobIds.has(m.blob_id));
    return {
      images: images.map((i) => ({ id: i.id, domain_id: i.domainId, bootstrap: i.bootstrapPath, blobs: i.blobIds })),
      blobs: blobs.map((m) => ({ ...m, ...this.frontend.blobStats?.(m.blob_id) })),
      mounts: this.mounts(),
      frontend: this.frontend.stats(),
      // daemon-wide, closed sessions included (monotonic: the Prometheus counters come from here)
      totals: this.totals.snapshot(sessions),
      scrub: this.scrubber?.stats(),
      cache: this.cacheMgr?.metrics(),
      prefetch: prefetchTotals(blobs, this.registry.gateStats()),
    };
  }

  events(): unknown[] {
    return this.eventLog;
  }

  /** Stop: the front end first (it unmounts; a busy mount throws and everything keeps serving). */
  async stop(): Promise<void> {
    await this.scrubber?.close();
    this.cacheMgr?.stop();
    await this.frontend.stop();
    this.state = 'STOPPED';
    await this.api?.close();
    this.metricsHttp?.close();
    for (const s of this.registry.openSessions()) await s.close();
    await this.pool?.close();
  }
}

/**
 * Daemon-wide prefetch figures: the blobs' prefetch counters summed, and the backend gates'
 * on-demand requests that queued behind prefetch (should stay 0).
 */
function prefetchTotals(blobs: BlobMetrics[], gates: GateStats[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const b of blobs) {
    const p = (b as { prefetch?: Record<string, unknown> }).prefetch;
    if (!p) continue;
    for (const [k, v] of Object.entries(p)) if (typeof v === 'number' && k !== 'max_inflight') out[k] = (out[k] ?? 0) + v;
  }
  for (const k of ['ondemand_queued', 'ondemand_waits_behind_prefetch', 'ondemand_during_prefetch', 'prefetch_yields'] as const) {
    out[k] = gates.reduce((n, g) => n + g[k], 0);
  }
  return out;
}

export function readConfigEntries(file: string): unknown[] {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `--config ${file}: ${(e as Error).message}`);
  }
  const blobs = (json as { blobs?: unknown[] }).blobs;
  if (!Array.isArray(blobs)) throw new NydusError('ERR_INVALID_ARGUMENT', `--config ${file}: expected {"blobs": [ … ]}`);
  return blobs;
}
