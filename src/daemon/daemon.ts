/**
 * The serving daemon: images registry + chunk pool + a kernel front end + the nydusd-compatible
 * API. Runs as the child of a supervisor (src/daemon/supervisor.ts) that owns the
 * /dev/cachefiles fd and the API socket, so that a crashed child can be replaced without failing
 * a read: the new child gets the same fds, re-registers the images and writes `restore`.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { ImageRegistry, ImageRegistration } from './image-registry';
import { LocalFsBackend } from './backend';
import { makeNetworkBackend } from '../backends/proxy';
import { BlobBackend } from './interfaces';
import { ChunkPool } from '../codec/chunk-pool';
import { digestReady } from '../codec/digest';
import { NydusError } from '../errors';
import { CachefilesFrontend } from '../kernel/cachefiles';
import { ApiServer, DaemonController } from './api-server';
import { NormalizedEntry, parseBlobCacheEntry } from './config';
import { Logger } from './log';
import { VERSION } from '../version';

export type DaemonState = 'INIT' | 'READY' | 'RUNNING' | 'STOPPED' | 'UNKNOWN';

export interface DaemonOptions {
  fscacheDir: string;
  fscacheTag?: string;
  threads?: number;
  apiSock: string;
  /** API connections are handed over by a supervisor (acceptConnection) instead of a socket */
  externalConnections?: boolean;
  /** an inherited, already bound /dev/cachefiles fd */
  cachefilesFd?: number;
  /** write `restore` on the inherited fd (a replacement child) */
  restore?: boolean;
  id?: string;
  supervisor?: string;
  log: Logger;
  /** called after each successful register/unregister with the current registrations */
  onRegistrationsChanged?: (entries: unknown[]) => void;
  /** registrations to restore before serving (failover) */
  initialEntries?: unknown[];
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
  private frontend?: CachefilesFrontend;
  private api?: ApiServer;
  private pool?: ChunkPool;
  private readonly entries = new Map<string, unknown>();
  private readonly eventLog: unknown[] = [];

  constructor(private readonly opts: DaemonOptions) {
    this.registry = new ImageRegistry({ log: (level, msg, ctx) => opts.log[level](msg, ctx) });
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
    this.frontend = CachefilesFrontend.open({
      dir: this.opts.fscacheDir,
      tag: this.opts.fscacheTag,
      inheritedFd: this.opts.cachefilesFd,
      restore: this.opts.restore,
      log: (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>) => this.opts.log[level](msg, ctx),
    });
    this.frontend.start(this.registry);
    this.state = 'RUNNING';
    // With a supervisor, an unbound server: connections arrive through acceptConnection().
    const server = this.opts.externalConnections ? new net.Server() : undefined;
    this.api = new ApiServer(this, { socketPath: this.opts.apiSock, server, log: this.opts.log, version: { package_ver: VERSION } });
    await this.api.listen();
    this.opts.log.info(`serving: fscache dir ${this.opts.fscacheDir}, API ${this.opts.apiSock}`);
  }

  /** serve an API connection accepted by the supervisor */
  acceptConnection(socket: net.Socket): void {
    if (this.api) this.api.acceptConnection(socket);
    else socket.destroy();
  }

  info(): { id: string | null; supervisor: string | null; state: DaemonState; pid: number; supervisor_pid: number | null } {
    // pid of the serving process (tests kill it to prove failover) and of its supervisor
    return { id: this.opts.id ?? null, supervisor: this.opts.supervisor ?? null, state: this.state, pid: process.pid, supervisor_pid: this.opts.externalConnections ? process.ppid : null };
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
      source: raw,
    };
    this.registry.register(reg);
    this.entries.set(`${entry.domainId}/${entry.id}`, raw ?? entry.raw);
    if (notify) this.opts.onRegistrationsChanged?.([...this.entries.values()]);
  }

  async unregister(domainId: string | undefined, blobId: string | undefined): Promise<void> {
    const removed = this.registry.unregister(domainId, blobId);
    for (const r of removed) this.entries.delete(`${r.domainId}/${r.id}`);
    this.opts.onRegistrationsChanged?.([...this.entries.values()]);
  }

  async cull(blobId: string): Promise<void> {
    if (this.registry.blobInUse(blobId)) throw new NydusError('ERR_DAEMON', `blob ${blobId} is in use by a registered image`);
    await this.frontend?.cull(blobId);
  }

  /** API `PUT /api/v1/daemon/start`: Ready → Running (we serve from the start). */
  async start(): Promise<void> {
    this.state = 'RUNNING';
  }

  async exit(): Promise<void> {
    this.state = 'STOPPED';
    setImmediate(() => process.kill(process.pid, 'SIGTERM'));
  }

  /**
   * nydusd hands its state and fd to the snapshotter's supervisor here. Our own supervisor
   * process already holds the /dev/cachefiles fd and the registrations, so there is nothing to
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
    return {
      images: images.map((i) => ({ id: i.id, domain_id: i.domainId, bootstrap: i.bootstrapPath, blobs: i.blobIds })),
      blobs: sessions.filter((m) => !id || blobIds.has(m.blob_id)),
      frontend: this.frontend?.stats() ?? null,
    };
  }

  events(): unknown[] {
    return this.eventLog;
  }

  async stop(): Promise<void> {
    this.state = 'STOPPED';
    await this.api?.close();
    await this.frontend?.stop();
    for (const s of this.registry.openSessions()) await s.close();
    await this.pool?.close();
  }
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
