/**
 * The fscache front end's cache as the daemon's cache manager sees it (FrontendCache): the
 * cachefiles cache files `<dir>/cache/Ierofs,<volume>/@xx/D<cookie>` (bootstraps and blobs),
 * when each was last read, and removing those no mount uses with cachefiles' own `cull` (as
 * nydusd's `DELETE /api/v2/blobs?blob_id=` does). The kernel refuses to cull an object in use
 * (EBUSY), which is the final guard against removing a mounted image's data.
 *
 * Last access: every READ stamps its object; it is persisted as the cache file's atime (set by
 * path when the object closes and every ATIME_PERSIST_MS), which is also what cachefilesd-style
 * culling sorts by.
 *
 * No cold ranges of objects in use are evicted here: the kernel decides by SEEK_DATA on the cache
 * file whether a range is present and then reads it with direct I/O, with no step the daemon can
 * order a hole punch against, so a punch could race a read that already found data and hand it
 * zeros. Objects in use keep their data; under pressure only objects no mount uses are culled.
 *
 * The kernel's culling signal (poll POLLOUT on the device: free space or files fell below
 * bcull/fcull, spec kernel.md §1.15) runs a culling pass; the reader watches for it again
 * CULLING_REARM_MS later, so a cache that stays full is culled periodically, not in a busy loop.
 */
import * as fs from 'node:fs';
import type { CachedObject, CachePressureHandler, FrontendCache } from '../daemon/interfaces';
import { dataRanges, scanCachefilesLayout } from '../daemon/cache-usage';
import { NydusError } from '../errors';

const ATIME_PERSIST_MS = 30_000;
export const CULLING_REARM_MS = 5_000;

export interface CachefilesCacheSpaceOptions {
  /** the cache dir (the one bound with `dir`) */
  dir: string;
  /** every object open now: volume (domain or fsid, without "erofs,"), cookie, anonymous fd, size */
  open: () => Iterable<{ volume: string; cookie: string; fd: number; size: number }>;
  /** the cache file of a cookie in a volume */
  pathOf: (volume: string, cookie: string) => string;
  /** `cull D<cookie>` in the volume's fan-out directory (cachefiles.ts) */
  cull: (cookie: string, volume: string) => Promise<string[]>;
  /** watch the device for POLLOUT again */
  rearmCullingSignal: () => void;
  log: (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>) => void;
}

const key = (volume: string, cookie: string): string => `${volume}/${cookie}`;
const errMsg = (e: unknown): string => (e instanceof Error ? e.message : String(e));

export class CachefilesCacheSpace implements FrontendCache {
  private handler?: CachePressureHandler;
  /** last READ per object (ms), and what was last written to its atime */
  private readonly access = new Map<string, { volume: string; cookie: string; last: number; persisted: number }>();
  private readonly timer: NodeJS.Timeout;
  private rearmTimer?: NodeJS.Timeout;

  constructor(private readonly opts: CachefilesCacheSpaceOptions) {
    this.timer = setInterval(() => this.persistAll(), ATIME_PERSIST_MS);
    this.timer.unref();
  }

  setPressureHandler(h: CachePressureHandler): void {
    this.handler = h;
  }

  touch(volume: string, cookie: string): void {
    const k = key(volume, cookie);
    const a = this.access.get(k);
    if (a) a.last = Date.now();
    else this.access.set(k, { volume, cookie, last: Date.now(), persisted: 0 });
  }

  /** An object was closed (its image unmounted): persist its last access. */
  closed(volume: string, cookie: string): void {
    const k = key(volume, cookie);
    const a = this.access.get(k);
    if (a) this.persist(a);
    this.access.delete(k);
    this.handler?.released(cookie, volume);
  }

  private persist(a: { volume: string; cookie: string; last: number; persisted: number }): void {
    if (a.last <= a.persisted) return;
    const p = this.opts.pathOf(a.volume, a.cookie);
    try {
      const st = fs.statSync(p);
      fs.utimesSync(p, a.last / 1000, st.mtimeMs / 1000);
      a.persisted = a.last;
    } catch (e) {
      this.opts.log('debug', `cachefiles: cannot record the last access of ${p}: ${errMsg(e)}`);
    }
  }

  private persistAll(): void {
    for (const a of this.access.values()) this.persist(a);
  }

  /** A cache write of object `volume/cookie` met a full disk: make room (bytes freed). */
  noSpace(volume: string, cookie: string): (bytes: number) => Promise<number> {
    return (bytes) => this.handler?.makeRoom(bytes, key(volume, cookie)) ?? Promise.resolve(0);
  }

  /** The device reported POLLOUT: culling is needed. */
  cullingSignal(): void {
    this.opts.log('info', 'cachefiles: the kernel reports the cache filesystem below its culling limit (POLLOUT); culling');
    this.handler?.cullingNeeded();
    clearTimeout(this.rearmTimer);
    this.rearmTimer = setTimeout(() => this.opts.rearmCullingSignal(), CULLING_REARM_MS);
    this.rearmTimer.unref();
  }

  /**
   * The cache files in the cache dir, and the objects open now whose file is not there: cachefiles
   * creates a new object's file as a tmpfile and links it into its directory only when the object
   * is withdrawn (unmount), so until then it is seen through the object's anonymous fd only
   * (SEEK_DATA/SEEK_HOLE reach the backing file; its data bytes stand for its size on disk).
   */
  objects(): CachedObject[] {
    const open = new Map<string, { volume: string; cookie: string; fd: number; size: number }>();
    for (const o of this.opts.open()) open.set(key(o.volume, o.cookie), o);
    const out = scanCachefilesLayout(this.opts.dir).map((o) => {
      const k = key(o.volume ?? '', o.id);
      const tracked = this.access.get(k)?.last ?? 0;
      return { ...o, inUse: open.has(k), lastAccess: Math.max(o.lastAccess, tracked) };
    });
    const seen = new Set(out.map((o) => key(o.volume ?? '', o.id)));
    for (const [k, o] of open) {
      if (seen.has(k)) continue;
      let ranges: Array<[number, number]> = [];
      try {
        ranges = dataRanges(o.fd, o.size, `cache object erofs,${k}`);
      } catch {
        // no backing file yet (ENOBUFS until the kernel's worker made it)
      }
      const present = ranges.reduce((n, [a, b]) => n + (b - a), 0);
      out.push({
        id: o.cookie, volume: o.volume, path: this.opts.pathOf(o.volume, o.cookie), size: o.size, diskBytes: present, presentBytes: present,
        lastAccess: this.access.get(k)?.last ?? 0, inUse: true, presentRanges: () => ranges,
      });
    }
    return out;
  }

  async remove(obj: CachedObject): Promise<number> {
    const volume = obj.volume ?? '';
    for (const o of this.opts.open()) {
      if (o.volume === volume && o.cookie === obj.id) throw new NydusError('ERR_DAEMON', `cache object erofs,${volume}/${obj.id} is in use by a mount`, { cookie: obj.id, volume });
    }
    let bytes: number;
    try {
      bytes = fs.statSync(obj.path).blocks * 512;
    } catch {
      return 0; // gone already
    }
    await this.opts.cull(obj.id, volume);
    this.access.delete(key(volume, obj.id));
    return bytes;
  }

  close(): void {
    clearInterval(this.timer);
    clearTimeout(this.rearmTimer);
    this.persistAll();
  }
}

/** cachefiles' culling limits in percent of free blocks / files (spec kernel.md §1.2, §1.15). */
export interface CachefilesLimits {
  brun: number;
  bcull: number;
  bstop: number;
  frun: number;
  fcull: number;
  fstop: number;
}

/**
 * The kernel's limits for our watermarks (ratios of used space / files): culling is signalled
 * above `high` (free below 100−high %) and ends below `low`. stop = 0: a write never fails on the
 * kernel's own threshold; the daemon makes room when the filesystem is really full.
 */
export function limitsForWatermarks(space?: { high: number; low: number }, files?: { high: number; low: number }): CachefilesLimits | undefined {
  if (!space && !files) return undefined;
  const pair = (w: { high: number; low: number } | undefined, dflt: [number, number]): [number, number] => {
    if (!w) return dflt;
    const cull = Math.max(1, Math.min(98, Math.round(100 - w.high * 100)));
    const run = Math.max(cull + 1, Math.min(99, Math.round(100 - w.low * 100)));
    return [run, cull];
  };
  const [brun, bcull] = pair(space, [7, 5]);
  const [frun, fcull] = pair(files, [7, 5]);
  return { brun, bcull, bstop: 0, frun, fcull, fstop: 0 };
}
