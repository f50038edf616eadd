/**
 * The cache's life cycle in the daemon, for either front end (through its FrontendCache):
 *  - usage: per object and per registered image, plus the cache filesystem (cache-usage.ts);
 *  - GC: remove the data of objects no registered image references (never one in use), on
 *    request, after an unregister or an object's last close, and periodically (automatic passes
 *    spare data read within the grace period);
 *  - culling: above a high watermark (space or files used on the cache filesystem), remove the
 *    least recently read objects no mount uses (unreferenced ones first), then evict the coldest
 *    ranges of mounted ones (front ends that can: fanotify), until below the low watermark;
 *  - a full disk under a cache write (ENOSPC/EDQUOT, cachefiles ENOBUFS): make room the same way
 *    right away, so the write and the read waiting for it go through (makeRoom).
 * Passes run one at a time. Every removal is reported (log, metrics, the caller's report).
 */
import type { CachedObject, CachePressureHandler, FrontendCache, FrontendMount, KernelFrontend, RegisteredImage, BlobMetrics } from './interfaces';
import { CacheLifecycleConfig } from './cache-config';
import { BlobUsage, CacheUsage, FilesystemUsage, ImageUsage, blobUsage, filesystemUsage, totalsOf } from './cache-usage';
import { NydusError } from '../errors';

type Log = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>) => void;

/** What the manager reads from the image registry. */
export interface RegistryView {
  list(): RegisteredImage[];
  openSessions(): Array<{ metrics(): BlobMetrics }>;
  blobEntry(blobId: string): { chunkCount: number } | undefined;
  /** [uncompressed offset, size] of each chunk of a blob the images' chunk tables list */
  blobChunkRanges?(blobId: string): Array<[number, number]> | undefined;
}

export interface CacheManagerOptions {
  cacheDir: string;
  frontend: KernelFrontend & { cache: FrontendCache };
  registry: RegistryView;
  config: CacheLifecycleConfig;
  log: Log;
}

export interface RemovedObject {
  blob_id: string;
  volume?: string;
  kind: BlobUsage['kind'];
  bytes: number;
  last_access: string | null;
}

export interface GcReport {
  trigger: string;
  dry_run: boolean;
  removed: RemovedObject[];
  /** unreferenced, but read within the grace period of automatic passes */
  deferred: number;
  skipped: Array<{ blob_id: string; volume?: string; reason: string }>;
  bytes_freed: number;
  duration_ms: number;
}

export interface CullReport {
  trigger: string;
  before: { used_ratio: number; files_used_ratio: number };
  after: { used_ratio: number; files_used_ratio: number };
  removed: RemovedObject[];
  evicted: Array<{ blob_id: string; bytes: number; ranges: number }>;
  bytes_freed: number;
  /** still above the low watermark: nothing more could be freed */
  still_above_low: boolean;
}

export interface CacheMetrics {
  gc_runs: number;
  gc_blobs_removed: number;
  gc_bytes_freed: number;
  cull_runs: number;
  cull_blobs_removed: number;
  cull_bytes_freed: number;
  cull_ranges_evicted: number;
  cull_bytes_evicted: number;
  /** cache writes that met a full filesystem (room was made, or the read failed) */
  full_writes: number;
  full_write_bytes_freed: number;
  /** full-disk writes for which nothing could be freed (their reads failed) */
  full_write_failures: number;
  /** cachefiles POLLOUT signals */
  kernel_culling_signals: number;
  disk_bytes: number;
  objects: number;
  fs_used_ratio: number;
  fs_files_used_ratio: number;
  fs_avail_bytes: number;
}

const keyOf = (o: { id: string; volume?: string }): string => (o.volume !== undefined ? `${o.volume}/${o.id}` : o.id);
const volumeOf = (i: RegisteredImage): string => i.domainId || i.id;
const iso = (ms: number): string | null => (ms > 0 ? new Date(ms).toISOString() : null);
const errMsg = (e: unknown): string => (e instanceof Error ? e.message : String(e));
/** at least this much is freed when a write meets a full disk (so the next write does not, too) */
const MIN_ROOM = 8 << 20;
/** bytes written between two checks of the watermarks (at least) */
const CHECK_EVERY = 1 << 20;

export class CacheManager implements CachePressureHandler {
  private chain: Promise<unknown> = Promise.resolve();
  private readonly timers: NodeJS.Timeout[] = [];
  private gcSoon?: NodeJS.Timeout;
  private gcSoonAt = 0;
  /** when each unreferenced object was first seen so (the grace of automatic passes) */
  private readonly unreferencedSince = new Map<string, number>();
  private cullQueued = false;
  private written = 0;
  private checkEvery = CHECK_EVERY;
  private stopped = false;
  private readonly chunkRanges = new Map<string, Array<[number, number]> | null>();
  private scan?: { at: number; objs: CachedObject[] };
  private readonly m = {
    gc_runs: 0, gc_blobs_removed: 0, gc_bytes_freed: 0, cull_runs: 0, cull_blobs_removed: 0, cull_bytes_freed: 0,
    cull_ranges_evicted: 0, cull_bytes_evicted: 0, full_writes: 0, full_write_bytes_freed: 0, full_write_failures: 0, kernel_culling_signals: 0,
  };

  constructor(private readonly opts: CacheManagerOptions) {}

  private get cache(): FrontendCache {
    return this.opts.frontend.cache;
  }

  start(): void {
    this.cache.setPressureHandler(this);
    const c = this.opts.config;
    if (c.gcIntervalSecs > 0) this.timers.push(setInterval(() => void this.gc({ trigger: 'periodic', graceSecs: c.gcGraceSecs }).catch(() => undefined), c.gcIntervalSecs * 1000));
    if (c.cullIntervalSecs > 0 && (c.space || c.files)) this.timers.push(setInterval(() => this.requestCull('periodic'), c.cullIntervalSecs * 1000));
    for (const t of this.timers) t.unref();
    if (c.space || c.files) this.requestCull('start');
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    clearTimeout(this.gcSoon);
  }

  /** Run `fn` after every pass queued before it. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private objects(): CachedObject[] {
    const objs = this.cache.objects();
    this.scan = { at: Date.now(), objs };
    return objs;
  }

  /** The registered images that reference an object (fscache: in its volume), and what it is for them. */
  private classify(o: { id: string; volume?: string }, images = this.opts.registry.list()): { kind: BlobUsage['kind']; images: string[] } {
    const users: string[] = [];
    let kind: BlobUsage['kind'] = 'unknown';
    for (const i of images) {
      if (o.volume !== undefined && volumeOf(i) !== o.volume) continue;
      if (i.blobIds.includes(o.id)) {
        users.push(i.id);
        kind = 'blob';
      } else if (o.volume !== undefined && i.id === o.id) {
        users.push(i.id);
        kind = 'bootstrap';
      }
    }
    return { kind, images: users };
  }

  private chunksOf(o: CachedObject, kind: BlobUsage['kind'], sessions: Map<string, BlobMetrics>): [number, number] | undefined {
    if (kind !== 'blob') return undefined;
    const s = sessions.get(o.id);
    if (s && o.inUse) return [s.chunks_ready, s.chunk_count];
    const entry = this.opts.registry.blobEntry(o.id);
    if (!entry) return undefined;
    let ranges = this.chunkRanges.get(o.id);
    if (ranges === undefined) {
      const r = this.opts.registry.blobChunkRanges?.(o.id);
      ranges = r && r.length ? [...r].sort((a, b) => a[0] - b[0]) : null;
      this.chunkRanges.set(o.id, ranges);
    }
    if (!ranges) return undefined;
    const present = o.presentRanges();
    let n = 0;
    let j = 0;
    for (const [off, len] of ranges) {
      while (j < present.length && present[j][1] <= off) j++;
      // a chunk's last page may be partial: it is present when its bytes are
      if (j < present.length && present[j][0] <= off && present[j][1] >= Math.min(off + len, o.size)) n++;
    }
    return [n, entry.chunkCount];
  }

  usage(): CacheUsage {
    const images = this.opts.registry.list();
    const sessions = new Map<string, BlobMetrics>();
    for (const s of this.opts.registry.openSessions()) {
      const m = s.metrics();
      const had = sessions.get(m.blob_id);
      if (!had || had.chunks_ready < m.chunks_ready) sessions.set(m.blob_id, m);
    }
    const objs = this.objects();
    const blobs = objs.map((o) => {
      const c = this.classify(o, images);
      return { o, u: blobUsage(o, { ...c, chunks: this.chunksOf(o, c.kind, sessions) }) };
    });
    blobs.sort((a, b) => (a.u.volume ?? '').localeCompare(b.u.volume ?? '') || a.u.blob_id.localeCompare(b.u.blob_id));
    const mounts: FrontendMount[] = this.opts.frontend.mounts?.() ?? [];
    const imageUsage: ImageUsage[] = images.map((i) => {
      const mine = blobs.filter(({ u }) => u.images.includes(i.id) && (u.volume === undefined || u.volume === volumeOf(i)));
      const withChunks = mine.filter(({ u }) => u.chunk_count !== null);
      const mounted = this.opts.frontend.kind === 'fanotify'
        ? mounts.some((m) => m.id === i.id && m.domainId === i.domainId)
        : mine.some(({ u }) => u.kind === 'bootstrap' && u.mounted);
      return {
        id: i.id, domain_id: i.domainId, blobs: i.blobIds,
        disk_bytes: mine.reduce((n, { u }) => n + u.disk_bytes, 0),
        chunks_present: withChunks.length ? withChunks.reduce((n, { u }) => n + (u.chunks_present ?? 0), 0) : null,
        chunk_count: i.blobIds.length ? i.blobIds.reduce((n, id) => n + (this.opts.registry.blobEntry(id)?.chunkCount ?? 0), 0) : null,
        last_access: iso(Math.max(0, ...mine.map(({ o }) => o.lastAccess))), mounted,
      };
    });
    const list = blobs.map(({ u }) => u);
    const fsu = filesystemUsage(this.opts.cacheDir);
    return {
      cache_dir: this.opts.cacheDir, frontend: this.opts.frontend.kind, source: 'daemon', generated_at: new Date().toISOString(),
      filesystem: fsu, totals: totalsOf(list), blobs: list, images: imageUsage, watermarks: this.watermarks(fsu),
    };
  }

  private watermarks(fsu: FilesystemUsage): Record<string, unknown> {
    const c = this.opts.config;
    return {
      space_high: c.space?.high ?? null, space_low: c.space?.low ?? null, files_high: c.files?.high ?? null, files_low: c.files?.low ?? null,
      above_high: this.aboveHigh(fsu), cull_interval_secs: c.cullIntervalSecs, gc_interval_secs: c.gcIntervalSecs, gc_on_unregister: c.gcOnUnregister,
    };
  }

  private aboveHigh(f: FilesystemUsage): boolean {
    const { space, files } = this.opts.config;
    return (!!space && f.used_ratio > space.high) || (!!files && f.files_used_ratio > files.high);
  }

  private aboveLow(f: FilesystemUsage, which: 'space' | 'files'): boolean {
    const w = this.opts.config[which];
    return !!w && (which === 'space' ? f.used_ratio : f.files_used_ratio) > w.low;
  }

  /** Remove the data of every object no registered image references; skip objects in use. */
  gc(o: { trigger: string; dryRun?: boolean; graceSecs?: number }): Promise<GcReport> {
    return this.serial(async () => {
      const t0 = Date.now();
      const report: GcReport = { trigger: o.trigger, dry_run: !!o.dryRun, removed: [], deferred: 0, skipped: [], bytes_freed: 0, duration_ms: 0 };
      const graceMs = (o.graceSecs ?? 0) * 1000;
      let nextExpiry = Infinity;
      const objs = this.objects();
      for (const k of this.unreferencedSince.keys()) if (!objs.some((x) => keyOf(x) === k)) this.unreferencedSince.delete(k);
      for (const obj of objs) {
        // classified again right before the removal: a registration made meanwhile keeps it
        const c = this.classify(obj);
        const k = keyOf(obj);
        if (c.images.length) {
          this.unreferencedSince.delete(k);
          continue;
        }
        if (!this.unreferencedSince.has(k)) this.unreferencedSince.set(k, t0);
        // grace: counted from its last read or from when it was first seen unreferenced (after
        // the last unregister; a daemon restart starts it again), whichever is later
        const idleFrom = Math.max(obj.lastAccess, this.unreferencedSince.get(k)!);
        if (graceMs > 0 && t0 - idleFrom < graceMs) {
          report.deferred++;
          nextExpiry = Math.min(nextExpiry, idleFrom + graceMs);
          continue;
        }
        const ref = { blob_id: obj.id, ...(obj.volume !== undefined ? { volume: obj.volume } : {}) };
        if (obj.inUse) {
          report.skipped.push({ ...ref, reason: 'in use by a mount (it is removed after the unmount)' });
          continue;
        }
        let bytes = obj.diskBytes;
        if (!o.dryRun) {
          try {
            bytes = await this.cache.remove(obj);
          } catch (e) {
            report.skipped.push({ ...ref, reason: errMsg(e) });
            continue;
          }
        }
        report.removed.push({ ...ref, kind: c.kind, bytes, last_access: iso(obj.lastAccess) });
        report.bytes_freed += bytes;
      }
      report.duration_ms = Date.now() - t0;
      // an automatic pass comes back when the first deferred object's grace is over
      if (graceMs > 0 && nextExpiry < Infinity && !o.dryRun) this.scheduleGc('grace', Math.max(1000, nextExpiry - Date.now() + 1000));
      if (!o.dryRun) {
        this.m.gc_runs++;
        this.m.gc_blobs_removed += report.removed.length;
        this.m.gc_bytes_freed += report.bytes_freed;
        this.scan = undefined;
      }
      if (report.removed.length || report.skipped.length) {
        this.opts.log('info', `cache gc (${o.trigger})${o.dryRun ? ' dry run' : ''}: ${o.dryRun ? 'would remove' : 'removed'} ${report.removed.length} unreferenced object(s), ${report.bytes_freed} bytes` +
          `${report.removed.length ? ` [${report.removed.map((r) => `${r.volume !== undefined ? `${r.volume}/` : ''}${r.blob_id} ${r.bytes}`).join(', ')}]` : ''}` +
          `${report.skipped.length ? `; kept ${report.skipped.length} in use` : ''}`, { gc: report });
      }
      return report;
    });
  }

  /**
   * `DELETE /api/v2/blobs?blob_id=B` on a front end without its own cull (fanotify): remove the
   * cached data of blob B, which no registered image may reference and no mount may use.
   */
  removeBlob(blobId: string): Promise<number> {
    return this.serial(async () => {
      const objs = this.objects().filter((o) => o.id === blobId);
      if (!objs.length) throw new NydusError('ERR_NOT_FOUND', `blob_cache: cache entry not found (no cached data of blob ${blobId})`, { blobId });
      let bytes = 0;
      for (const o of objs) {
        if (this.classify(o).images.length || o.inUse) throw new NydusError('ERR_DAEMON', `blob ${blobId} is in use (registered or mounted); its cached data stays`, { blobId });
        bytes += await this.cache.remove(o);
      }
      this.m.gc_blobs_removed++;
      this.m.gc_bytes_freed += bytes;
      this.scan = undefined;
      this.opts.log('info', `cache: removed blob ${blobId} on request (${bytes} bytes)`, { blobId, bytes });
      return bytes;
    });
  }

  /** After an unregister: a GC shortly (objects still mounted are removed after their last close). */
  afterUnregister(): void {
    if (this.opts.config.gcOnUnregister) this.scheduleGc('unregister');
  }

  private scheduleGc(trigger: string, delayMs = 200): void {
    if (this.stopped) return;
    if (this.gcSoon) {
      if (this.gcSoonAt <= Date.now() + delayMs) return; // one is due sooner
      clearTimeout(this.gcSoon);
    }
    this.gcSoonAt = Date.now() + delayMs;
    this.gcSoon = setTimeout(() => {
      this.gcSoon = undefined;
      void this.gc({ trigger, graceSecs: this.opts.config.gcGraceSecs }).catch((e) => this.opts.log('warn', `cache gc (${trigger}) failed: ${errMsg(e)}`));
    }, delayMs);
    this.gcSoon.unref();
  }

  /** CachePressureHandler: an object's last user closed it. */
  released(id: string, volume?: string): void {
    if (this.opts.config.gcOnUnregister && this.classify({ id, volume }).images.length === 0) this.scheduleGc('unmount');
  }

  /**
   * CachePressureHandler: `bytes` were written to the cache. Every CHECK_EVERY written (or 0.5% of
   * the filesystem, if more), the watermarks are checked, so culling keeps up with fast fills
   * between the periodic checks.
   */
  wrote(bytes: number): void {
    this.written += bytes;
    if (this.written < this.checkEvery) return;
    this.written = 0;
    try {
      const f = filesystemUsage(this.opts.cacheDir);
      this.checkEvery = Math.max(CHECK_EVERY, Math.floor(f.total_bytes / 200));
      if (this.aboveHigh(f)) this.requestCull('writes');
    } catch {
      // statfs failed: the periodic check tries again
    }
  }

  /** CachePressureHandler: cachefiles says free space or files fell below its culling limit. */
  cullingNeeded(): void {
    this.m.kernel_culling_signals++;
    this.requestCull('kernel');
  }

  private requestCull(trigger: string): void {
    if (this.stopped || this.cullQueued) return;
    this.cullQueued = true;
    void this.cull(trigger)
      .catch((e) => this.opts.log('warn', `cache culling (${trigger}) failed: ${errMsg(e)}`))
      .finally(() => (this.cullQueued = false));
  }

  /** Cull when above the high watermark (or when the kernel asks): down to the low one. */
  cull(trigger: string): Promise<CullReport | undefined> {
    return this.serial(async () => {
      const { space, files } = this.opts.config;
      if (!space && !files) return undefined;
      let f = filesystemUsage(this.opts.cacheDir);
      if (!this.aboveHigh(f) && trigger !== 'kernel') return undefined;
      const report: CullReport = {
        trigger, before: { used_ratio: f.used_ratio, files_used_ratio: f.files_used_ratio }, after: { used_ratio: 0, files_used_ratio: 0 },
        removed: [], evicted: [], bytes_freed: 0, still_above_low: false,
      };
      const need = (): boolean => this.aboveLow(f, 'space') || this.aboveLow(f, 'files');
      // 1. objects no mount uses, unreferenced first, least recently read first
      for (const obj of this.victims()) {
        if (!need()) break;
        const r = await this.removeVictim(obj);
        if (r) {
          report.removed.push(r);
          report.bytes_freed += r.bytes;
          f = filesystemUsage(this.opts.cacheDir);
        }
      }
      // 2. the coldest ranges of mounted objects (space only: a punched range frees no inode)
      for (let round = 0; round < 4 && this.aboveLow(f, 'space') && this.cache.evictCold; round++) {
        const want = Math.ceil(f.used_bytes - space!.low * (f.used_bytes + f.avail_bytes));
        const ev = await this.cache.evictCold(Math.max(want, 1 << 20));
        if (!ev.length) break;
        for (const e of ev) {
          report.evicted.push({ blob_id: e.id, bytes: e.bytes, ranges: e.ranges });
          report.bytes_freed += e.bytes;
          this.m.cull_ranges_evicted += e.ranges;
          this.m.cull_bytes_evicted += e.bytes;
        }
        f = filesystemUsage(this.opts.cacheDir);
      }
      report.after = { used_ratio: f.used_ratio, files_used_ratio: f.files_used_ratio };
      report.still_above_low = need();
      this.m.cull_runs++;
      this.m.cull_blobs_removed += report.removed.length;
      this.m.cull_bytes_freed += report.bytes_freed;
      this.scan = undefined;
      const pct = (r: number): string => `${(r * 100).toFixed(1)}%`;
      this.opts.log(report.still_above_low ? 'warn' : 'info',
        `cache culling (${trigger}): space ${pct(report.before.used_ratio)} → ${pct(report.after.used_ratio)}, files ${pct(report.before.files_used_ratio)} → ${pct(report.after.files_used_ratio)}; ` +
          `removed ${report.removed.length} object(s) no mount uses${report.removed.length ? ` [${report.removed.map((r) => r.blob_id).join(', ')}]` : ''}, ` +
          `evicted ${report.evicted.reduce((n, e) => n + e.ranges, 0)} cold range(s) of mounted blobs (${report.evicted.reduce((n, e) => n + e.bytes, 0)} bytes)` +
          (report.still_above_low ? '; still above the low watermark: everything left is in use' : ''), { cull: report });
      return report;
    });
  }

  /** Objects no mount uses, in culling order: unreferenced first, then least recently read. */
  private victims(exceptKey?: string): CachedObject[] {
    const images = this.opts.registry.list();
    return this.objects()
      .filter((o) => !o.inUse && keyOf(o) !== exceptKey)
      .map((o) => ({ o, ref: this.classify(o, images).images.length > 0 }))
      .sort((a, b) => Number(a.ref) - Number(b.ref) || a.o.lastAccess - b.o.lastAccess)
      .map(({ o }) => o);
  }

  private async removeVictim(obj: CachedObject): Promise<RemovedObject | undefined> {
    try {
      const bytes = await this.cache.remove(obj);
      return { blob_id: obj.id, ...(obj.volume !== undefined ? { volume: obj.volume } : {}), kind: this.classify(obj).kind, bytes, last_access: iso(obj.lastAccess) };
    } catch (e) {
      this.opts.log('debug', `cache culling: ${keyOf(obj)} stays: ${errMsg(e)}`);
      return undefined;
    }
  }

  /**
   * CachePressureHandler: a cache write met a full filesystem. Free at least `bytes` (and down to
   * the low watermark when one is set) the way culling does, sparing object `keep`. Resolves with
   * the bytes freed; 0 means nothing could be, and the write (and its read) fails.
   */
  makeRoom(bytes: number, keep: string): Promise<number> {
    this.m.full_writes++;
    return this.serial(async () => {
      let f = filesystemUsage(this.opts.cacheDir);
      // another write made room meanwhile (root may use every free block)
      if (f.free_bytes >= bytes + MIN_ROOM) return f.free_bytes;
      const space = this.opts.config.space;
      const toLow = space ? Math.ceil(f.used_bytes - space.low * (f.used_bytes + f.avail_bytes)) : 0;
      const want = Math.max(bytes + MIN_ROOM, toLow);
      let freed = 0;
      const removed: string[] = [];
      for (const obj of this.victims(keep)) {
        if (freed >= want) break;
        const r = await this.removeVictim(obj);
        if (r) {
          freed += r.bytes;
          removed.push(r.blob_id);
          this.m.cull_blobs_removed++;
          this.m.cull_bytes_freed += r.bytes;
        }
      }
      let evicted = 0;
      if (freed < want && this.cache.evictCold) {
        for (const e of await this.cache.evictCold(want - freed)) {
          evicted += e.bytes;
          this.m.cull_ranges_evicted += e.ranges;
          this.m.cull_bytes_evicted += e.bytes;
        }
        freed += evicted;
      }
      this.scan = undefined;
      f = filesystemUsage(this.opts.cacheDir);
      this.m.full_write_bytes_freed += freed;
      if (freed === 0) {
        this.m.full_write_failures++;
        this.opts.log('error', `cache filesystem full (${f.free_bytes} bytes free) writing ${bytes} bytes of ${keep}, and nothing can be freed: every cached range is in use. The read fails; give the cache more space or lower the watermarks`, { keep });
      } else {
        this.opts.log('warn', `cache filesystem full writing ${bytes} bytes of ${keep}: made room, ${removed.length} object(s) removed${removed.length ? ` [${removed.join(', ')}]` : ''}, ${evicted} bytes of cold ranges evicted; the write is retried`, { keep, freed });
      }
      return freed;
    });
  }

  metrics(): CacheMetrics {
    let objs = this.scan && Date.now() - this.scan.at < 5000 ? this.scan.objs : undefined;
    if (!objs) {
      try {
        objs = this.objects();
      } catch {
        objs = [];
      }
    }
    let f: FilesystemUsage | undefined;
    try {
      f = filesystemUsage(this.opts.cacheDir);
    } catch {
      f = undefined;
    }
    return {
      ...this.m, disk_bytes: objs.reduce((n, o) => n + o.diskBytes, 0), objects: objs.length,
      fs_used_ratio: f?.used_ratio ?? 0, fs_files_used_ratio: f?.files_used_ratio ?? 0, fs_avail_bytes: f?.avail_bytes ?? 0,
    };
  }
}

/** A front end with a cache (both of ours have one). */
export function hasCache(f: KernelFrontend): f is KernelFrontend & { cache: FrontendCache } {
  return f.cache !== undefined;
}

export function noCacheError(kind: string): NydusError {
  return new NydusError('ERR_UNSUPPORTED', `the ${kind} front end has no cache to manage`, { httpStatus: 501 });
}
