/**
 * Registered images (bootstraps) and the blobs they reference, keyed the way the kernel names
 * fscache objects: volume `erofs,<domain_id or fsid>`, cookie `<fsid>` for the bootstrap and
 * `<blob id>` (device tag) for each data blob (spec rafs-v6.md §3.4). Blobs are reference-counted
 * per domain, so images sharing a blob in one domain share one object. A bad bootstrap fails its
 * own registration only.
 */
import * as fs from 'node:fs';
import { readBootstrapTables, RafsBootstrapTables } from '../format/bootstrap-reader';
import { BlobBackend, BlobMetrics, BlobSession, CacheWriter, ImageSource, ObjectLookup, PrefetchHandle, RegisteredImage } from './interfaces';
import type { BlobEntry } from '../format/layout';
import { ChunkedBlobSession, BlobSessionOptions } from './blob-session';
import { BackendGate } from './backend-gate';
import type { PrefetchConfig } from './config';
import { PrefetchPlan, resolvePrefetchPlan } from './prefetch-plan';
import { RatePacer } from './prefetch';
import { NydusError } from '../errors';

export interface ImageRegistration {
  id: string;
  /** '' when the image is not in a shared domain */
  domainId: string;
  bootstrapPath: string;
  backend: BlobBackend;
  session?: Omit<BlobSessionOptions, 'pool' | 'log' | 'gate'>;
  /** background prefetch when a front end opens the image's blobs for a mount (off when absent) */
  prefetch?: PrefetchConfig;
  /** the raw registration (e.g. the API body), kept for failover re-registration */
  source?: unknown;
}

interface Image extends RegisteredImage {
  boot: RafsBootstrapTables;
  bootstrap: Buffer;
  reg: ImageRegistration;
  /** digest by ci index, per blob index */
  digests: Map<number, Buffer>[];
  /** the prefetch table resolved (on the first prefetch) */
  plan?: PrefetchPlan;
  /** bandwidth_rate of this registration, shared by its blobs' prefetch jobs */
  pacer?: RatePacer;
  /** running prefetch jobs (cancelled on unregister) */
  jobs: Set<PrefetchHandle>;
}

function checkName(what: string, v: string): void {
  if (v.includes('/') || v.includes('\0') || v.length > 240) throw new NydusError('ERR_INVALID_ARGUMENT', `${what} "${v}" must be a file-name-safe string without '/' (≤ 240 bytes)`);
}

export class ImageRegistry implements ImageSource {
  private readonly images = new Map<string, Image>();
  /** open sessions and the backend each reads from */
  private readonly sessions = new Map<BlobSession, BlobBackend>();
  /** request slots per backend: prefetch yields to reads on the same connections */
  private readonly gates = new Map<BlobBackend, BackendGate>();

  /** a session closed, with its final counters (the daemon keeps totals: metrics-totals.ts) */
  onSessionClosed?: (m: BlobMetrics) => void;

  constructor(private readonly sessionDefaults: Pick<BlobSessionOptions, 'pool' | 'log'> = {}) {}

  /** worker pool for decompression and digests of every session opened from now on */
  setPool(pool: BlobSessionOptions['pool']): void {
    this.sessionDefaults.pool = pool;
  }

  /** volume name the kernel uses for an image */
  static volumeOf(id: string, domainId: string): string {
    return domainId || id;
  }

  private key(id: string, domainId: string): string {
    return `${ImageRegistry.volumeOf(id, domainId)}/${id}`;
  }

  register(reg: ImageRegistration): RegisteredImage {
    checkName('id', reg.id);
    if (reg.domainId) checkName('domain_id', reg.domainId);
    const key = this.key(reg.id, reg.domainId);
    if (this.images.has(key)) throw new NydusError('ERR_INVALID_ARGUMENT', `image ${reg.id} is already registered${reg.domainId ? ` in domain ${reg.domainId}` : ''}`);
    let bootstrap: Buffer;
    try {
      bootstrap = fs.readFileSync(reg.bootstrapPath);
    } catch (e) {
      throw new NydusError('ERR_INVALID_ARGUMENT', `bootstrap ${reg.bootstrapPath}: ${(e as Error).message}`, { path: reg.bootstrapPath });
    }
    // the tables only: the kernel walks (and checks) the inodes itself, and parsing them here
    // would make registration O(files) for nothing the daemon needs
    const boot = readBootstrapTables(bootstrap, { name: reg.bootstrapPath });
    const digests = boot.blobs.map(() => new Map<number, Buffer>());
    for (const c of boot.chunkTable) digests[c.blobIndex]?.set(c.index, c.digest);
    const img: Image = {
      id: reg.id, domainId: reg.domainId, bootstrapPath: reg.bootstrapPath, bootstrapSize: bootstrap.length,
      blobIds: boot.blobs.map((b) => b.blobId), boot, bootstrap, reg, digests, jobs: new Set(),
    };
    this.images.set(key, img);
    return this.publicView(img);
  }

  private publicView(img: Image): RegisteredImage {
    return { id: img.id, domainId: img.domainId, bootstrapPath: img.bootstrapPath, bootstrapSize: img.bootstrapSize, blobIds: img.blobIds };
  }

  /** Remove one image (domain + id), or every image of a domain (id undefined). */
  unregister(domainId: string | undefined, id: string | undefined): RegisteredImage[] {
    const removed: RegisteredImage[] = [];
    for (const [k, img] of this.images) {
      const inDomain = domainId === undefined || ImageRegistry.volumeOf(img.id, img.domainId) === domainId || img.domainId === domainId;
      if (inDomain && (id === undefined || img.id === id)) {
        this.images.delete(k);
        for (const j of img.jobs) j.cancel();
        img.jobs.clear();
        removed.push(this.publicView(img));
        this.closeIfUnused(img.reg.backend);
      }
    }
    if (removed.length === 0) {
      throw new NydusError('ERR_NOT_FOUND', `blob_cache: cache entry not found (domain_id=${domainId ?? ''}, blob_id=${id ?? ''})`);
    }
    return removed;
  }

  /**
   * Close a backend (connections, a proxy's ping timer) once no registered image and no open
   * session uses it: the kernel may still read through an unregistered image until it closes
   * the image's last object (the snapshotter unregisters before it unmounts).
   */
  private closeIfUnused(backend: BlobBackend): void {
    if ([...this.images.values()].some((i) => i.reg.backend === backend)) return;
    if ([...this.sessions.values()].includes(backend)) return;
    this.gates.delete(backend);
    backend.close().catch(() => undefined);
  }

  list(): RegisteredImage[] {
    return [...this.images.values()].map((i) => this.publicView(i));
  }

  registrations(): ImageRegistration[] {
    return [...this.images.values()].map((i) => i.reg);
  }

  /** Is this blob referenced by any registered image? */
  blobInUse(blobId: string): boolean {
    return [...this.images.values()].some((i) => i.blobIds.includes(blobId));
  }

  resolve(domain: string, cookie: string): ObjectLookup {
    const inVolume = [...this.images.values()].filter((i) => ImageRegistry.volumeOf(i.id, i.domainId) === domain);
    const img = inVolume.find((i) => i.id === cookie);
    if (img) {
      return {
        kind: 'bootstrap',
        image: this.publicView(img),
        read: async (offset, length) => {
          const out = Buffer.alloc(length);
          if (offset < img.bootstrap.length) img.bootstrap.copy(out, 0, offset, Math.min(img.bootstrap.length, offset + length));
          return out;
        },
      };
    }
    for (const owner of inVolume) {
      const idx = owner.blobIds.indexOf(cookie);
      if (idx < 0) continue;
      return {
        kind: 'blob',
        image: this.publicView(owner),
        open: async (writer: CacheWriter) => this.openSession(owner, idx, writer),
      };
    }
    return { kind: 'unknown', reason: `no registered image in volume "erofs,${domain}" has an object "${cookie}"` };
  }

  find(id: string, domainId: string): RegisteredImage | undefined {
    const img = this.images.get(this.key(id, domainId));
    return img && this.publicView(img);
  }

  /** the first registered image holding `blobId`, and the blob's index in it */
  private owner(blobId: string): { img: Image; idx: number } | undefined {
    for (const img of this.images.values()) {
      const idx = img.blobIds.indexOf(blobId);
      if (idx >= 0) return { img, idx };
    }
    return undefined;
  }

  blobEntry(blobId: string): BlobEntry | undefined {
    const o = this.owner(blobId);
    return o && o.img.boot.blobs[o.idx];
  }

  /** [uncompressed offset, size] of each chunk of `blobId` in its image's chunk table (cache usage) */
  blobChunkRanges(blobId: string): Array<[number, number]> | undefined {
    const o = this.owner(blobId);
    if (!o) return undefined;
    const seen = new Map<number, [number, number]>();
    for (const c of o.img.boot.chunkTable) if (c.blobIndex === o.idx && !seen.has(c.index)) seen.set(c.index, [c.uncompressedOffset, c.uncompressedSize]);
    return [...seen.values()];
  }

  openBlob(blobId: string, writer: CacheWriter): BlobSession {
    const o = this.owner(blobId);
    if (!o) throw new NydusError('ERR_NOT_FOUND', `no registered image has blob ${blobId}`, { blobId });
    return this.openSession(o.img, o.idx, writer);
  }

  /** A session over `owner`'s backend and digests; the backend is closed with its last user. */
  private openSession(owner: Image, idx: number, writer: CacheWriter): BlobSession {
    const backend = owner.reg.backend;
    let gate = this.gates.get(backend);
    if (!gate) this.gates.set(backend, (gate = new BackendGate()));
    const s = new ChunkedBlobSession(owner.boot.blobs[idx], backend, writer, owner.digests[idx], {
      ...owner.reg.session, ...this.sessionDefaults, gate,
    });
    this.sessions.set(s, backend);
    const close = s.close.bind(s);
    s.close = async () => {
      const wasOpen = this.sessions.delete(s);
      await close();
      if (wasOpen) this.onSessionClosed?.(s.metrics());
      if (wasOpen) this.closeIfUnused(backend);
    };
    return s;
  }

  openSessions(): BlobSession[] {
    return [...this.sessions.keys()];
  }

  /**
   * A front end opened `session` (one of `image`'s blobs) for a mount: start prefetching what the
   * image's prefetch table lists in it (and, with prefetch_all, the rest of the blob) in the
   * background, if the registration enables prefetch. Never throws: a bad table entry is logged
   * (naming the image and the nid) and the rest is prefetched.
   */
  startPrefetch(image: RegisteredImage, session: BlobSession): PrefetchHandle | undefined {
    const img = this.images.get(this.key(image.id, image.domainId));
    const cfg = img?.reg.prefetch;
    if (!img || !cfg?.enable || !(session instanceof ChunkedBlobSession) || session.isClosed) return undefined;
    const idx = img.blobIds.indexOf(session.blobId);
    if (idx < 0) return undefined;
    const log = this.sessionDefaults.log;
    try {
      if (!img.plan) {
        img.plan = resolvePrefetchPlan(img.bootstrap, img.boot, img.id);
        for (const e of img.plan.errors) log?.('error', `${e}; the image still serves, that entry is not prefetched`, { id: img.id });
        log?.('info', `image ${img.id}: prefetch table of ${img.boot.prefetchNids.length} entr${img.boot.prefetchNids.length === 1 ? 'y' : 'ies'} → ${img.plan.everything ? 'every blob, whole' : `${img.plan.files} file(s), ${img.plan.chunks.reduce((n, c) => n + c.length, 0)} chunk(s)`}${cfg.prefetchAll ? ', then the whole blob(s)' : ''}`, { id: img.id });
      }
      img.pacer ??= new RatePacer(cfg.bandwidthLimit);
      const listed = img.plan.chunks[idx];
      if (listed.length === 0 && !cfg.prefetchAll) return undefined;
      const job = session.startPrefetch({
        listed, all: cfg.prefetchAll, threads: cfg.threads, mergeBytes: cfg.batchSize || (1 << 20), pacer: img.pacer, image: img.id, log,
      });
      img.jobs.add(job);
      void job.done.finally(() => img.jobs.delete(job));
      return job;
    } catch (e) {
      log?.('error', `image ${img.id}: cannot start the prefetch of blob ${session.blobId}: ${(e as Error).message}`, { id: img.id, blobId: session.blobId });
      return undefined;
    }
  }

  /** request slots of each backend in use (the metrics API) */
  gateStats(): ReturnType<BackendGate['stats']>[] {
    return [...this.gates.values()].map((g) => g.stats());
  }
}
