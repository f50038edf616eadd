/**
 * The fanotify front end's cache as the daemon's cache manager sees it (FrontendCache): every
 * blob's sparse file and presence map in `<cache>/blobs` + `<cache>/presence`, when each was last
 * read, removing the files of blobs no mount uses, and evicting the coldest ranges of mounted
 * blobs when the cache filesystem is too full.
 *
 * Access times: each read event (fast and slow path) stamps the 1 MiB region it touches; the
 * blob's last access is persisted as its cache file's atime (set explicitly every
 * ATIME_PERSIST_MS and when the blob is closed, so it survives restarts and `noatime` mounts).
 * A blob opened again starts with every region at that time.
 *
 * Evicting a mounted blob's range is safe because of how reads are answered (spec fanotify.md):
 * a read is allowed only where the presence map covers it, so the events of a complete blob are
 * switched back on first (`beforeEvict`), then BlobCacheFile.evict clears the bits (no new read
 * is allowed there), persists the map, waits out reads allowed just before, and punches the pages
 * (never under a write in flight); the blob session forgets those chunks, so the next read of the
 * range is a slow-path event that fetches and verifies them again.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BlobSession, CachedObject, CachePressureHandler, FrontendCache } from '../daemon/interfaces';
import { rangesOfBits, scanFanotifyLayout } from '../daemon/cache-usage';
import { NydusError } from '../errors';
import { BlobCacheFile, CacheFileLog, PAGE } from './blob-cache-file';

/** granularity of access times (and of eviction) */
export const ACCESS_REGION = 1 << 20;
/** how often a read blob's last access is written to its file's atime */
const ATIME_PERSIST_MS = 30_000;

export interface FanotifyOpenBlob {
  id: string;
  file: BlobCacheFile;
  session: BlobSession;
  /** complete, its events switched off: its reads cannot be seen */
  done?: boolean;
}

export interface FanotifyCacheSpaceOptions {
  /** `<cache>` (layout: fanotify-group.ts) */
  dir: string;
  /** the blobs open for mounts right now */
  open: () => Iterable<FanotifyOpenBlob>;
  /** an open blob's ranges are about to be evicted: its reads must raise events again */
  beforeEvict: (id: string) => void;
  log: CacheFileLog;
}

interface AccessTimes {
  /** ms since the epoch, per ACCESS_REGION */
  regions: Float64Array;
  last: number;
  persisted: number;
}

const errMsg = (e: unknown): string => (e instanceof Error ? e.message : String(e));

export class FanotifyCacheSpace implements FrontendCache {
  private handler?: CachePressureHandler;
  private readonly access = new Map<string, AccessTimes>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly opts: FanotifyCacheSpaceOptions) {
    this.timer = setInterval(() => this.persistAtimes(), ATIME_PERSIST_MS);
    this.timer.unref();
  }

  setPressureHandler(h: CachePressureHandler): void {
    this.handler = h;
  }

  /** A blob's cache file was opened: its regions start at the persisted last access. */
  opened(b: FanotifyOpenBlob): void {
    let atime = 0;
    try {
      atime = fs.fstatSync(b.file.fd).atimeMs;
    } catch {
      // unknown: oldest
    }
    const regions = new Float64Array(Math.max(1, Math.ceil(b.file.size / ACCESS_REGION))).fill(atime);
    this.access.set(b.id, { regions, last: atime, persisted: atime });
    // the file's writes meet a full disk here: make room, then the write is retried
    b.file.onNoSpace = (bytes) => this.handler?.makeRoom(bytes, b.id) ?? Promise.resolve(0);
    // fetched now (a read, its amplification, prefetch): about to be read, not cold
    b.file.onWritten = (offset, length) => {
      this.stamp(b.id, offset, length);
      this.handler?.wrote(length);
    };
  }

  /** A blob's cache file is about to close: persist its last access. */
  closing(b: FanotifyOpenBlob): void {
    this.persist(b);
    this.access.delete(b.id);
    this.handler?.released(b.id);
  }

  /** A read of [offset, offset+count) of blob `id` was served (or is being). */
  touch(id: string, offset: number, count: number): void {
    const a = this.access.get(id);
    if (!a) return;
    a.last = Date.now();
    this.stamp(id, offset, count);
  }

  /** the regions of [offset, offset+count) were used now */
  private stamp(id: string, offset: number, count: number): void {
    const a = this.access.get(id);
    if (!a || !(offset >= 0) || !(count >= 0)) return;
    const t = Date.now();
    const first = Math.floor(offset / ACCESS_REGION);
    const end = Math.min(a.regions.length, Math.floor((offset + Math.max(count, 1) - 1) / ACCESS_REGION) + 1);
    for (let r = first; r < end; r++) a.regions[r] = t;
  }

  private persist(b: FanotifyOpenBlob): void {
    const a = this.access.get(b.id);
    if (!a || a.last <= a.persisted) return;
    try {
      const st = fs.fstatSync(b.file.fd);
      fs.futimesSync(b.file.fd, a.last / 1000, st.mtimeMs / 1000);
      a.persisted = a.last;
    } catch (e) {
      this.opts.log('debug', `blob ${b.id}: cannot record its last access: ${errMsg(e)}`, { blobId: b.id });
    }
  }

  private persistAtimes(): void {
    for (const b of this.opts.open()) this.persist(b);
  }

  objects(): CachedObject[] {
    const out: CachedObject[] = [];
    const open = new Set<string>();
    for (const b of this.opts.open()) {
      open.add(b.id);
      const f = b.file;
      let disk = 0;
      try {
        disk = f.diskBytes();
      } catch {
        // closed meanwhile
      }
      const ranges = rangesOfBits(new Uint8Array(f.bits), f.pages, f.size);
      out.push({
        id: b.id, path: f.path, size: f.size, diskBytes: disk, presentBytes: Math.min(f.size, f.presentPages * PAGE),
        lastAccess: this.access.get(b.id)?.last ?? 0, inUse: true, presentRanges: () => ranges,
      });
    }
    return out.concat(scanFanotifyLayout(this.opts.dir, open));
  }

  /** Remove a blob's cache file and presence map (synchronously: no mount can open it meanwhile). */
  async remove(obj: CachedObject): Promise<number> {
    for (const b of this.opts.open()) {
      if (b.id === obj.id) throw new NydusError('ERR_DAEMON', `blob ${obj.id} is in use by a mount; its cache file stays`, { blobId: obj.id });
    }
    const file = path.join(this.opts.dir, 'blobs', obj.id);
    let bytes = 0;
    try {
      bytes = fs.statSync(file).blocks * 512;
    } catch {
      return 0; // gone already
    }
    fs.rmSync(file, { force: true });
    for (const p of [path.join(this.opts.dir, 'presence', obj.id), path.join(this.opts.dir, 'presence', `${obj.id}.tmp`)]) fs.rmSync(p, { force: true });
    return bytes;
  }

  /**
   * Evict about `bytes` of the least recently read regions of mounted blobs (see the file
   * comment for why this never lets a read see a hole). Regions are evicted together, so the
   * grace period is waited once.
   */
  async evictCold(bytes: number): Promise<Array<{ id: string; bytes: number; ranges: number }>> {
    type Cand = { b: FanotifyOpenBlob; r: number; t: number; present: number };
    const cands: Cand[] = [];
    for (const b of this.opts.open()) {
      const a = this.access.get(b.id);
      if (!a) continue;
      const bits = new Uint8Array(b.file.bits);
      const pagesPer = ACCESS_REGION / PAGE;
      for (let r = 0; r < a.regions.length; r++) {
        let n = 0;
        const end = Math.min(b.file.pages, (r + 1) * pagesPer);
        for (let p = r * pagesPer; p < end; p++) if (bits[p >> 3] & (1 << (p & 7))) n++;
        if (n) cands.push({ b, r, t: a.regions[r], present: n * PAGE });
      }
    }
    // A complete blob raises no events, so its reads are not seen: its regions count as read
    // now (evicted last) rather than as cold since it became complete.
    const now = Date.now();
    for (const c of cands) if (c.b.done) c.t = now;
    cands.sort((x, y) => x.t - y.t);
    const chosen: Cand[] = [];
    let sum = 0;
    for (const c of cands) {
      if (sum >= bytes) break;
      chosen.push(c);
      sum += c.present;
    }
    const per = new Map<string, { id: string; bytes: number; ranges: number }>();
    for (const c of chosen) {
      if (!per.has(c.b.id)) {
        this.opts.beforeEvict(c.b.id);
        per.set(c.b.id, { id: c.b.id, bytes: 0, ranges: 0 });
      }
    }
    await Promise.all(chosen.map(async (c) => {
      const a = c.r * ACCESS_REGION;
      const e = Math.min(c.b.file.size, a + ACCESS_REGION);
      try {
        // evict() clears the bits before its first await; the session must forget those chunks
        // in the same tick, or a read meanwhile would find them "ready" and not refetch them
        const p = c.b.file.evict(a, e);
        c.b.session.forget?.(a, e - a);
        const n = await p;
        const s = per.get(c.b.id)!;
        s.bytes += n;
        if (n) s.ranges++;
      } catch (err) {
        this.opts.log('warn', `blob ${c.b.id}: evicting ${a}+${e - a} failed: ${errMsg(err)}`, { blobId: c.b.id });
      }
    }));
    return [...per.values()].filter((s) => s.bytes > 0);
  }

  close(): void {
    clearInterval(this.timer);
    this.persistAtimes();
  }
}
