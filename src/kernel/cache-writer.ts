/**
 * The CacheWriter of the cachefiles on-demand front end: writes into the anonymous fd the kernel
 * hands over in an OPEN (kernel.md §1.6). Those writes go to the backing cache file with O_DIRECT
 * semantics, so:
 *  - the file offset must be a multiple of the page size (else ENOBUFS),
 *  - the length and the user buffer address must be aligned for direct I/O (else EINVAL).
 * Every write is therefore done in whole 4 KiB pages from page-aligned memory, zero-padded past
 * the data. Node Buffers are not page aligned, so data is copied into buffers from a small,
 * bounded pool of page-aligned buffers (see `alignedBuffer` in sys/native.ts); data that already
 * sits page-aligned with a page-multiple length is written as is.
 *
 * pwrite runs on libuv's threadpool (fs.write), so writes never block the event loop. `lseek`
 * with SEEK_DATA/SEEK_HOLE on the anonymous fd is passed to the backing file, which gives the
 * ranges already present (`presentRanges`).
 */
import * as fs from 'node:fs';
import { CacheWriter } from '../daemon/interfaces';
import { NydusError } from '../errors';
import { alignedBuffer, isAligned, lseek, sysError, SEEK_DATA, SEEK_END, SEEK_HOLE } from '../sys/native';

/** Page size = the alignment of offsets, lengths and buffers (x86-64 / 4 KiB-page arm64). */
export const CACHE_PAGE_SIZE = 4096;

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface AlignedBufferPoolOptions {
  /** bytes per buffer (a multiple of 4096); default 1 MiB */
  bufferSize?: number;
  /** most buffers that may exist at once; further acquirers wait; default 16 */
  maxBuffers?: number;
}

/**
 * A bounded pool of page-aligned buffers of one size. `acquire()` hands out a free buffer,
 * allocates a new one while fewer than `maxBuffers` exist, or waits for a `release()`.
 */
export class AlignedBufferPool {
  readonly bufferSize: number;
  readonly maxBuffers: number;
  private readonly free: Buffer[] = [];
  private readonly waiters: Array<(b: Buffer) => void> = [];
  private created = 0;

  constructor(opts: AlignedBufferPoolOptions = {}) {
    this.bufferSize = opts.bufferSize ?? 1 << 20;
    this.maxBuffers = opts.maxBuffers ?? 16;
    if (this.bufferSize <= 0 || this.bufferSize % CACHE_PAGE_SIZE !== 0) {
      throw new NydusError('ERR_INVALID_ARGUMENT', `aligned buffer size ${this.bufferSize} is not a positive multiple of ${CACHE_PAGE_SIZE}`);
    }
    if (!(this.maxBuffers >= 1)) throw new NydusError('ERR_INVALID_ARGUMENT', `aligned buffer pool needs at least one buffer (got ${this.maxBuffers})`);
  }

  acquire(): Promise<Buffer> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    if (this.created < this.maxBuffers) {
      this.created++;
      return Promise.resolve(alignedBuffer(this.bufferSize, CACHE_PAGE_SIZE));
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(b: Buffer): void {
    const w = this.waiters.shift();
    if (w) w(b);
    else this.free.push(b);
  }

  stats(): { buffers: number; free: number; waiting: number; buffer_size: number } {
    return { buffers: this.created, free: this.free.length, waiting: this.waiters.length, buffer_size: this.bufferSize };
  }
}

let sharedPool: AlignedBufferPool | undefined;
/** The process-wide pool every AnonFdWriter uses unless given its own (1 MiB × 16). */
export function defaultAlignedPool(): AlignedBufferPool {
  sharedPool ??= new AlignedBufferPool();
  return sharedPool;
}

const SYNC_WRITES = process.env.NYDUS_TS_SYNC_WRITE === '1';

function pwrite(fd: number, buf: Buffer, position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.write(fd, buf, 0, buf.length, position, (e, n) => (e ? reject(e) : resolve(n))));
}

export interface AnonFdWriterOptions {
  pool?: AlignedBufferPool;
  /**
   * How often an ENOBUFS is retried (backoff 10, 20, 40 … ms). For a new object the kernel
   * creates the backing tmpfile only after the `copen`, in its own worker, and until then the
   * anonymous fd answers ENOBUFS to pwrite and lseek; a write right after the copen (bootstrap
   * prefill, blob prefetch) must wait for it. Default 8 (≈ 2.5 s in total).
   */
  enobufsRetries?: number;
  /** names the object in errors and logs (e.g. "blob <id>" / "erofs,<domain>/<cookie>") */
  name?: string;
  /**
   * A write met a full cache filesystem (ENOSPC/EDQUOT, or ENOBUFS that outlasted the retries):
   * make room (resolves with the bytes freed), then the write is retried. The kernel reads the
   * data from the cache file after READ_COMPLETE, so it cannot be served without keeping it.
   */
  onNoSpace?: (bytes: number) => Promise<number>;
}

/** Statistics of one writer. */
export interface AnonFdWriterStats {
  writes: number;
  /** data bytes asked to be written */
  bytes: number;
  /** bytes actually written, padding included */
  written_bytes: number;
  /** writes whose data could be written without copying (already aligned) */
  zero_copy_writes: number;
}

export class AnonFdWriter implements CacheWriter {
  private closed = false;
  private fdClosed = false;
  /** pwrites submitted to the threadpool and not yet finished: the fd must stay open for them */
  private pending = 0;
  private readonly pool: AlignedBufferPool;
  readonly name: string;
  private readonly st: AnonFdWriterStats = { writes: 0, bytes: 0, written_bytes: 0, zero_copy_writes: 0 };

  /** `fd`: the anonymous fd of an OPEN; the writer owns it from now on (`close()` closes it). */
  private readonly enobufsRetries: number;
  private readonly onNoSpace?: (bytes: number) => Promise<number>;

  constructor(readonly fd: number, opts: AnonFdWriterOptions = {}) {
    this.pool = opts.pool ?? defaultAlignedPool();
    this.onNoSpace = opts.onNoSpace;
    this.enobufsRetries = opts.enobufsRetries ?? 8;
    this.name = opts.name ?? `cache object fd ${fd}`;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Write `data` at `offset` (a multiple of 4096) of the cache file, in whole pages: the tail is
   * zero-padded to 4096. Any length works (split into pool-sized pwrites).
   */
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.closed) throw new NydusError('ERR_IO', `${this.name}: write after close`, { offset });
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % CACHE_PAGE_SIZE !== 0) {
      throw new NydusError('ERR_INVALID_ARGUMENT', `${this.name}: cache write offset ${offset} is not a multiple of ${CACHE_PAGE_SIZE}`, { offset });
    }
    this.st.writes++;
    this.st.bytes += data.length;
    if (data.length === 0) return;
    if (data.length % CACHE_PAGE_SIZE === 0 && isAligned(data, CACHE_PAGE_SIZE)) {
      this.st.zero_copy_writes++;
      await this.writeAll(offset, data);
      return;
    }
    const seg = this.pool.bufferSize;
    for (let done = 0; done < data.length; done += seg) {
      const n = Math.min(seg, data.length - done);
      const buf = await this.pool.acquire();
      try {
        data.copy(buf, 0, done, done + n);
        const padded = alignUp(n, CACHE_PAGE_SIZE);
        if (padded > n) buf.fill(0, n, padded);
        await this.writeAll(offset + done, buf.subarray(0, padded));
      } finally {
        this.pool.release(buf);
      }
    }
  }

  /** pwrite all of `buf` (aligned, page-multiple) at `position`, continuing after short writes. */
  private async writeAll(position: number, buf: Buffer): Promise<void> {
    let done = 0;
    let enobufs = 0;
    let roomMade = 0;
    while (done < buf.length) {
      if (this.closed) throw new NydusError('ERR_IO', `${this.name}: closed during a write`, { offset: position + done });
      let n: number;
      this.pending++;
      try {
        n = SYNC_WRITES ? fs.writeSync(this.fd, buf, done, buf.length - done, position + done) : await pwrite(this.fd, done ? buf.subarray(done) : buf, position + done);
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        if (err.code === 'EINTR' || err.code === 'EAGAIN') continue;
        if (err.code === 'ENOBUFS' && enobufs < this.enobufsRetries && !this.closed) {
          await sleep(10 << enobufs++);
          continue;
        }
        if ((err.code === 'ENOSPC' || err.code === 'EDQUOT' || err.code === 'ENOBUFS') && this.onNoSpace && roomMade < 3 && !this.closed) {
          roomMade++;
          if ((await this.onNoSpace(buf.length - done)) > 0) {
            enobufs = 0;
            continue;
          }
        }
        if (typeof err.errno === 'number') {
          throw sysError('pwrite', this.name, -err.errno, { detail: `offset ${position + done} length ${buf.length - done}`, offset: position + done, length: buf.length - done });
        }
        throw e;
      } finally {
        this.pending--;
        if (this.closed && this.pending === 0) this.closeFd();
      }
      if (n <= 0) throw new NydusError('ERR_IO', `pwrite ${this.name}: wrote nothing at offset ${position + done}`, { offset: position + done });
      if (n % CACHE_PAGE_SIZE !== 0 && done + n < buf.length) {
        // A short write that leaves an unaligned remainder cannot be continued with O_DIRECT.
        throw new NydusError('ERR_IO', `pwrite ${this.name}: short write of ${n} bytes at offset ${position + done}`, { offset: position + done, written: n });
      }
      done += n;
      this.st.written_bytes += n;
    }
  }

  /**
   * Data ranges of the backing cache file ([start, end) pairs, page granular) from
   * SEEK_DATA/SEEK_HOLE on the anonymous fd (passed to the backing file by cachefiles).
   */
  async presentRanges(): Promise<Array<[number, number]>> {
    if (this.closed) return [];
    const out: Array<[number, number]> = [];
    let size = 0;
    for (let attempt = 0; ; attempt++) {
      try {
        size = lseek(this.fd, 0, SEEK_END, this.name);
        break;
      } catch (e) {
        // ENOBUFS: the backing file does not exist yet (see enobufsRetries)
        if ((e as NydusError).context?.code !== 'ENOBUFS' || attempt >= this.enobufsRetries || this.closed) throw e;
        await sleep(10 << attempt);
      }
    }
    let pos = 0;
    while (pos < size) {
      const d = lseek(this.fd, pos, SEEK_DATA, this.name);
      if (d < 0) break;
      const h = lseek(this.fd, d, SEEK_HOLE, this.name);
      const end = h < 0 ? size : h;
      out.push([d, end]);
      pos = end;
    }
    return out;
  }

  stats(): AnonFdWriterStats {
    return { ...this.st };
  }

  /**
   * Close the anonymous fd (idempotent). New writes fail from now on; pwrites already running
   * finish first (the fd number must not be reused under them), then the fd is closed.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.pending === 0) this.closeFd();
  }

  private closeFd(): void {
    if (this.fdClosed) return;
    this.fdClosed = true;
    try {
      fs.closeSync(this.fd);
    } catch {
      // already closed: nothing to release
    }
  }
}
