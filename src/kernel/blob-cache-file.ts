/**
 * One data blob's cache for the fanotify front end: a sparse file of the blob's uncompressed
 * size, `<cache>/blobs/<blob id>`, that EROFS reads as an extra device, plus its presence map,
 * `<cache>/presence/<blob id>`: one bit per 4 KiB page that holds verified bytes.
 *
 * The kernel never checks which ranges of the file hold data (spec fanotify.md §5), so this map is
 * what stands between a reader and a hole of zeros. The rules that keep it true:
 *  - a bit is set only after pwrite() of its page returned (in memory), and persisted only after
 *    fdatasync() of the data (flush: snapshot the bits, fdatasync, write the map under a temporary
 *    name, fdatasync it, rename) — a crash loses bits, never gains one;
 *  - the persisted map names the file it describes: inode number, size and a random generation
 *    stamp that is also stored in the file's `user.nydus-ts.generation` xattr. A file that was
 *    replaced (another inode, no stamp) or resized is not trusted: its contents are discarded
 *    (truncated to 0 and back) and every page is fetched again;
 *  - holes win: at open, and whenever a range is checked (`verifyData`), pages that SEEK_HOLE
 *    reports as holes lose their bit, so a file punched or truncated behind the daemon's back is
 *    refilled instead of served as zeros.
 *
 * The bits live in a SharedArrayBuffer so the front end's event thread can answer reads of
 * present ranges without a round trip to the main thread. All I/O here goes through the store
 * path (`<cache>/blobs`), which carries no fanotify mark, so none of it raises an event.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CacheWriter } from '../daemon/interfaces';
import { NydusError } from '../errors';
import { lgetxattr, lsetxattr, lseek, punchHole, O_CLOEXEC, SEEK_DATA, SEEK_HOLE } from '../sys/native';

export const PAGE = 4096;
const MAGIC = Buffer.from('NYTSPRS1');
const HEADER = 56;
const GEN_XATTR = 'user.nydus-ts.generation';
/** how long written bits may stay unpersisted (a crash costs at most this much refetching) */
const FLUSH_DELAY_MS = 1000;
/**
 * How long evict() waits between clearing presence bits and punching the pages: a read the event
 * thread allowed just before the bits were cleared is still reading the file then, and must find
 * the bytes, not a fresh hole.
 */
export const EVICT_GRACE_MS = 1000;

export type CacheFileLog = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>) => void;

export interface BlobCacheFileOptions {
  /** the store directory (unmarked): `<cache>/blobs` */
  storeDir: string;
  /** where presence maps are kept: `<cache>/presence` */
  presenceDir: string;
  blobId: string;
  /** the blob's uncompressed size */
  size: number;
  log?: CacheFileLog;
}

function pwriteAll(fd: number, buf: Buffer, pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (off: number): void => {
      fs.write(fd, buf, off, buf.length - off, pos + off, (err, n) => {
        if (err) return reject(err);
        if (off + n < buf.length) step(off + n);
        else resolve();
      });
    };
    step(0);
  });
}

export class BlobCacheFile implements CacheWriter {
  readonly blobId: string;
  readonly size: number;
  readonly path: string;
  readonly pages: number;
  /** one bit per page, shared with the event thread */
  readonly bits: SharedArrayBuffer;
  private readonly view: Uint8Array;
  readonly fd: number;
  readonly ino: bigint;
  readonly dev: bigint;
  private generation: Buffer;
  private present = 0;
  private dirty = false;
  private flushTimer?: NodeJS.Timeout;
  private flushing: Promise<void> = Promise.resolve();
  private closed = false;
  /** byte ranges being written: evict() never punches under a pwrite in flight */
  private readonly writing = new Set<[number, number]>();
  /** called once when the last page becomes present */
  onComplete?: () => void;
  /**
   * A write met a full filesystem (ENOSPC/EDQUOT): make room (resolves with the bytes freed),
   * then the write is retried. The kernel reads what EROFS asks for from this file after the
   * answer, so a read cannot be served without keeping its bytes: room has to be made.
   */
  onNoSpace?: (bytes: number) => Promise<number>;
  /** [offset, offset+length) was written (access times; the cache manager's watermark checks) */
  onWritten?: (offset: number, length: number) => void;
  /** why the cache was discarded at open (replaced, resized, …); undefined if it was trusted */
  readonly rebuiltBecause?: string;
  private readonly log: CacheFileLog;
  private readonly mapPath: string;

  private constructor(opts: BlobCacheFileOptions, fd: number, st: fs.BigIntStats, generation: Buffer, bits: Uint8Array | null, rebuiltBecause: string | undefined) {
    this.blobId = opts.blobId;
    this.size = opts.size;
    this.path = path.join(opts.storeDir, opts.blobId);
    this.mapPath = path.join(opts.presenceDir, opts.blobId);
    this.pages = Math.ceil(opts.size / PAGE);
    this.bits = new SharedArrayBuffer(Math.ceil(this.pages / 8));
    this.view = new Uint8Array(this.bits);
    this.fd = fd;
    this.ino = st.ino;
    this.dev = st.dev;
    this.generation = generation;
    this.log = opts.log ?? (() => undefined);
    this.rebuiltBecause = rebuiltBecause;
    if (bits) {
      this.view.set(bits.subarray(0, this.view.length));
      for (let p = 0; p < this.pages; p++) if (this.has(p)) this.present++;
    }
  }

  /**
   * Open (or create) the cache file and load its presence map. Synchronous: it runs when an image
   * is mounted, before the kernel can read. Throws NydusError('ERR_IO') naming the file.
   */
  static open(opts: BlobCacheFileOptions): BlobCacheFile {
    const file = path.join(opts.storeDir, opts.blobId);
    const log = opts.log ?? (() => undefined);
    if (!/^[A-Za-z0-9._-]{1,200}$/.test(opts.blobId) || opts.blobId.startsWith('.')) {
      throw new NydusError('ERR_INVALID_ARGUMENT', `blob id "${opts.blobId}" cannot name a cache file`, { blobId: opts.blobId });
    }
    fs.mkdirSync(opts.storeDir, { recursive: true });
    fs.mkdirSync(opts.presenceDir, { recursive: true });
    let fd: number;
    try {
      fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | O_CLOEXEC, 0o600);
    } catch (e) {
      throw new NydusError('ERR_IO', `cache file ${file}: ${(e as Error).message}`, { path: file });
    }
    try {
      let st = fs.fstatSync(fd, { bigint: true });
      let generation: Buffer | undefined;
      try {
        generation = lgetxattr(file, GEN_XATTR);
      } catch {
        generation = undefined;
      }
      const map = BlobCacheFile.readMap(path.join(opts.presenceDir, opts.blobId), opts.size);
      let why: string | undefined;
      if (st.size === 0n && !generation) why = undefined; // a new file: nothing to discard
      else if (!generation || generation.length !== 16) why = 'the file carries no generation stamp (not written by this cache, or replaced)';
      else if (st.size !== BigInt(opts.size)) why = `its size is ${st.size}, the blob's is ${opts.size} (truncated or replaced)`;
      else if (!map.ok) why = map.why;
      else if (map.ino !== st.ino) why = `the presence map names inode ${map.ino}, the file is inode ${st.ino} (replaced)`;
      else if (!map.generation.equals(generation)) why = 'the presence map was written for another generation of the file';
      const fresh = st.size === 0n && !generation;
      if (fresh || why) {
        // start over: discard the contents (same inode, so a mount still using it refills too)
        fs.ftruncateSync(fd, 0);
        fs.ftruncateSync(fd, opts.size);
        generation = crypto.randomBytes(16);
        lsetxattr(file, GEN_XATTR, generation);
        fs.rmSync(path.join(opts.presenceDir, opts.blobId), { force: true });
        st = fs.fstatSync(fd, { bigint: true });
        if (why) log('warn', `cache file ${file} is not trusted: ${why}; its contents are discarded and fetched again`, { blobId: opts.blobId });
      }
      const cf = new BlobCacheFile(opts, fd, st, generation!, fresh || why ? null : map.ok ? map.bits : null, why);
      // an empty map right away: a crash before the first flush then costs only the unflushed
      // pages, not the whole file
      if (fresh || why) cf.writeMapSync(Buffer.from(cf.view));
      // holes win over the map (a page punched while the daemon was down)
      const lost = cf.dropHoles(0, opts.size);
      if (lost.length) log('warn', `cache file ${file}: ${lost.length} range(s) marked present are holes; they are fetched again`, { blobId: opts.blobId });
      return cf;
    } catch (e) {
      fs.closeSync(fd);
      if (e instanceof NydusError) throw e;
      throw new NydusError('ERR_IO', `cache file ${file}: ${(e as Error).message}`, { path: file }, { cause: e });
    }
  }

  /**
   * Read a presence map without the blob's size (cache usage with no daemon): the bits as the map
   * says, or undefined if the map is missing or damaged. Not a proof the file holds the data.
   */
  static peekMap(file: string): { size: number; pages: number; bits: Uint8Array } | undefined {
    let size: number;
    try {
      const head = Buffer.alloc(HEADER);
      const fd = fs.openSync(file, 'r');
      try {
        if (fs.readSync(fd, head, 0, HEADER, 0) !== HEADER) return undefined;
      } finally {
        fs.closeSync(fd);
      }
      size = Number(head.readBigUInt64LE(16));
    } catch {
      return undefined;
    }
    const m = BlobCacheFile.readMap(file, size);
    return m.ok ? { size, pages: Math.ceil(size / PAGE), bits: m.bits } : undefined;
  }

  private static readMap(file: string, size: number): { ok: true; ino: bigint; generation: Buffer; bits: Uint8Array } | { ok: false; why: string } {
    let data: Buffer;
    try {
      data = fs.readFileSync(file);
    } catch {
      return { ok: false, why: `it has no presence map (${file} is missing)` };
    }
    const pages = Math.ceil(size / PAGE);
    const want = HEADER + Math.ceil(pages / 8) + 32;
    if (data.length !== want || !data.subarray(0, 8).equals(MAGIC)) return { ok: false, why: `its presence map ${file} is damaged (${data.length} bytes)` };
    const body = data.subarray(0, want - 32);
    if (!crypto.createHash('sha256').update(body).digest().equals(data.subarray(want - 32))) return { ok: false, why: `its presence map ${file} fails its checksum` };
    if (data.readUInt32LE(8) !== 1 || data.readUInt32LE(12) !== PAGE || data.readBigUInt64LE(16) !== BigInt(size) || data.readBigUInt64LE(48) !== BigInt(pages)) {
      return { ok: false, why: `its presence map ${file} describes another blob size or format` };
    }
    return { ok: true, ino: data.readBigUInt64LE(24), generation: Buffer.from(data.subarray(32, 48)), bits: new Uint8Array(data.subarray(HEADER, HEADER + Math.ceil(pages / 8))) };
  }

  private has(p: number): boolean {
    return (Atomics.load(this.view, p >> 3) & (1 << (p & 7))) !== 0;
  }

  private setPages(first: number, end: number): void {
    for (let p = first; p < end; p++) {
      if (!this.has(p)) {
        Atomics.or(this.view, p >> 3, 1 << (p & 7));
        this.present++;
      }
    }
  }

  private clearPages(first: number, end: number): number {
    let n = 0;
    for (let p = first; p < end; p++) {
      if (this.has(p)) {
        Atomics.and(this.view, p >> 3, ~(1 << (p & 7)) & 0xff);
        this.present--;
        n++;
      }
    }
    if (n) this.dirty = true;
    return n;
  }

  get presentPages(): number {
    return this.present;
  }

  get complete(): boolean {
    return this.present === this.pages;
  }

  /** Does the map say every page of [a, b) is present? */
  covers(a: number, b: number): boolean {
    const end = Math.min(b, this.size);
    for (let p = Math.floor(a / PAGE); p * PAGE < end; p++) if (!this.has(p)) return false;
    return true;
  }

  /**
   * Check [a, b) against the file itself: a page the map calls present but SEEK_HOLE reports as a
   * hole (punched, truncated) loses its bit; a file shrunk behind our back is extended again.
   * Returns the byte ranges whose bits were dropped.
   */
  dropHoles(a: number, b: number): Array<[number, number]> {
    const st = fs.fstatSync(this.fd);
    const dropped: Array<[number, number]> = [];
    if (st.size < this.size) {
      const from = Math.floor(st.size / PAGE);
      if (this.clearPages(from, this.pages)) dropped.push([from * PAGE, this.size]);
      fs.ftruncateSync(this.fd, this.size);
    }
    const end = Math.min(b, this.size);
    let pos = Math.floor(a / PAGE) * PAGE;
    while (pos < end) {
      const hole = lseek(this.fd, pos, SEEK_HOLE, this.path);
      if (hole < 0 || hole >= end) break;
      const data = lseek(this.fd, hole, SEEK_DATA, this.path);
      const holeEnd = data < 0 ? end : Math.min(data, end);
      if (this.clearPages(Math.floor(hole / PAGE), Math.ceil(holeEnd / PAGE))) dropped.push([hole, holeEnd]);
      pos = holeEnd;
    }
    return dropped;
  }

  /**
   * Give up [a, b) (widened to whole pages, clamped to the blob): its bits are cleared first, so
   * no new read is allowed from it, persisted, and after `graceMs` (see EVICT_GRACE_MS) the pages
   * are punched out, so the space is freed and a later read refetches. The caller tells the blob
   * session (`forget`), which then no longer takes those chunks as ready. Returns the bytes whose
   * bits were cleared.
   */
  async evict(a: number, b: number, graceMs = EVICT_GRACE_MS): Promise<number> {
    if (this.closed) return 0;
    const first = Math.floor(a / PAGE);
    const end = Math.min(Math.ceil(Math.min(b, this.size) / PAGE), this.pages);
    if (end <= first) return 0;
    const cleared = this.clearPages(first, end);
    if (cleared) {
      try {
        await this.flush();
      } catch (e) {
        // a full disk may refuse the map: punch anyway, since holes win when the file is opened
        // again (a persisted bit over a hole is dropped), and punching is what frees the space
        this.log('warn', `cache file ${this.path}: cannot persist the presence map before evicting: ${(e as Error).message}`);
      }
    }
    if (graceMs > 0) await new Promise((r) => setTimeout(r, graceMs));
    if (this.closed) return cleared * PAGE;
    // only pages still clear: one written again meanwhile holds good bytes now
    let p = first;
    while (p < end) {
      while (p < end && this.has(p)) p++;
      const start = p;
      while (p < end && !this.has(p)) p++;
      if (p > start) this.punchOutsideWrites(start * PAGE, Math.min(p * PAGE, this.size));
    }
    return cleared * PAGE;
  }

  private punchOutsideWrites(a: number, b: number): void {
    const busy = [...this.writing].filter(([s, e]) => s < b && e > a).sort((x, y) => x[0] - y[0]);
    let pos = a;
    for (const [s, e] of busy) {
      const stop = Math.max(pos, Math.floor(s / PAGE) * PAGE);
      if (stop > pos) punchHole(this.fd, pos, stop - pos, this.path);
      pos = Math.max(pos, Math.ceil(e / PAGE) * PAGE);
    }
    if (b > pos) punchHole(this.fd, pos, b - pos, this.path);
  }

  /** Bytes the file occupies on disk (st_blocks × 512). */
  diskBytes(): number {
    return fs.fstatSync(this.fd).blocks * 512;
  }

  /** CacheWriter: write verified bytes at `offset` (clamped to the blob), then mark their pages. */
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.closed) throw new NydusError('ERR_DAEMON', `cache file ${this.path} is closed`);
    const len = Math.min(data.length, this.size - offset);
    if (len <= 0) return;
    const w: [number, number] = [offset, offset + len];
    this.writing.add(w);
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          await pwriteAll(this.fd, len === data.length ? data : data.subarray(0, len), offset);
          break;
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if ((code !== 'ENOSPC' && code !== 'EDQUOT') || !this.onNoSpace || attempt >= 3 || this.closed) throw e;
          // this range stays in `writing` meanwhile, so eviction never punches under it
          if ((await this.onNoSpace(len)) <= 0) throw e;
        }
      }
    } finally {
      this.writing.delete(w);
    }
    this.onWritten?.(offset, len);
    // whole pages only, and the last (partial) page of the blob when the write reaches the end
    const first = Math.ceil(offset / PAGE);
    const end = offset + len >= this.size ? this.pages : Math.floor((offset + len) / PAGE);
    const was = this.present;
    this.setPages(first, end);
    if (this.present !== was) {
      this.dirty = true;
      this.scheduleFlush();
      if (this.complete) this.onComplete?.();
    }
  }

  /** CacheWriter: the present ranges (the blob session marks their chunks ready). */
  async presentRanges(): Promise<Array<[number, number]>> {
    const out: Array<[number, number]> = [];
    let start = -1;
    for (let p = 0; p <= this.pages; p++) {
      const on = p < this.pages && this.has(p);
      if (on && start < 0) start = p;
      else if (!on && start >= 0) {
        out.push([start * PAGE, Math.min(p * PAGE, this.size)]);
        start = -1;
      }
    }
    return out;
  }

  private scheduleFlush(): void {
    if (this.flushTimer || this.closed) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      this.flush().catch((e) => this.log('warn', `cache file ${this.path}: cannot persist the presence map: ${(e as Error).message}`));
    }, FLUSH_DELAY_MS);
    this.flushTimer.unref();
  }

  private mapBytes(bits: Buffer): Buffer {
    const header = Buffer.alloc(HEADER);
    MAGIC.copy(header, 0);
    header.writeUInt32LE(1, 8);
    header.writeUInt32LE(PAGE, 12);
    header.writeBigUInt64LE(BigInt(this.size), 16);
    header.writeBigUInt64LE(this.ino, 24);
    this.generation.copy(header, 32);
    header.writeBigUInt64LE(BigInt(this.pages), 48);
    const body = Buffer.concat([header, bits]);
    return Buffer.concat([body, crypto.createHash('sha256').update(body).digest()]);
  }

  private writeMapSync(bits: Buffer): void {
    const tmp = `${this.mapPath}.tmp`;
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeSync(fd, this.mapBytes(bits));
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, this.mapPath);
  }

  /** Persist the map: data first (fdatasync), then the bits that were set before it. */
  flush(): Promise<void> {
    const run = async (): Promise<void> => {
      if (!this.dirty) return;
      this.dirty = false;
      const snapshot = Buffer.from(this.view); // a copy taken before the data is synced
      try {
        await new Promise<void>((res, rej) => fs.fdatasync(this.fd, (e) => (e ? rej(e) : res())));
        const tmp = `${this.mapPath}.tmp`;
        const fh = await fs.promises.open(tmp, 'w', 0o600);
        try {
          await fh.writeFile(this.mapBytes(snapshot));
          await fh.datasync();
        } finally {
          await fh.close();
        }
        await fs.promises.rename(tmp, this.mapPath);
      } catch (e) {
        this.dirty = true;
        throw e;
      }
    };
    this.flushing = this.flushing.catch(() => undefined).then(run);
    return this.flushing;
  }

  /** Is the file at our path still the one we hold (not deleted, not replaced)? */
  identityProblem(): string | undefined {
    let st: fs.BigIntStats;
    try {
      st = fs.statSync(this.path, { bigint: true });
    } catch {
      return 'deleted';
    }
    if (st.ino !== this.ino || st.dev !== this.dev) return 'replaced by another file';
    return undefined;
  }

  /** Flush the map and close the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    try {
      await this.flush();
    } catch (e) {
      this.log('warn', `cache file ${this.path}: cannot persist the presence map at close: ${(e as Error).message}`);
    }
    this.closed = true;
    fs.closeSync(this.fd);
  }
}
