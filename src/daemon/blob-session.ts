/**
 * One open data blob: turns "make bytes [off, off+len) of the uncompressed blob present" into
 * chunk fetches. Chunks covering the range are found by binary search over the blob's ci array,
 * the request is amplified to a window (default 1 MiB) so small kernel reads fetch ahead, and a
 * request that continues the previous one (a sequential reader) also fetches `readahead` bytes
 * beyond it in the background. Runs of adjacent missing chunks become one backend range read;
 * each chunk is decompressed and its digest verified, and only then written to the CacheWriter.
 * An in-flight map makes concurrent and overlapping requests share one fetch per chunk; a failed
 * chunk is never written and is retried by the next request that needs it.
 *
 * The data path is built for few copies and no fresh memory per chunk (fresh pages cost more
 * than the copy itself, badly so under emulation): chunks are decompressed straight into a
 * reused, page-aligned batch buffer, verified there, zero-padded to whole pages, and written
 * from it (the O_DIRECT cache writer takes such a buffer without copying). Adjacent chunks of a
 * run share one batch buffer and one write, up to `writeBatch` bytes, unless a waiting request
 * needs an earlier chunk first. Each chunk settles on its own, so a request never waits for the
 * chunks fetched ahead of it.
 *
 * Where the CPU work runs (`decode`): `inline` on the main thread, `pool` on the worker threads
 * of the ChunkPool, `auto` (default): inline, except that a chunk a request waits for goes to an
 * idle worker when another waited-for chunk is already queued for the main thread (concurrent
 * requests: parallelism on multi-core machines). Handing a chunk to a worker costs copies and
 * fresh memory on both sides, which only pays off when a second chunk competes for the thread.
 * Measurements: bench/read-bench.ts.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlobEntry, BlobChunk } from '../format/layout';
import { BLOB_CCT_HEADER_SIZE } from '../format/constants';
import { readBlobMeta, findChunk } from '../blob/blob-meta';
import { blobCodecs } from '../blob/local-blob';
import { ChunkPool } from '../codec/chunk-pool';
import { decompressChunk } from '../codec/compress';
import { digest, digestReady } from '../codec/digest';
import { alignedBuffer } from '../sys/native';
import { BlobBackend, BlobMetrics, BlobSession, CacheWriter } from './interfaces';
import { BackendGate } from './backend-gate';
import { backendErrorKind } from './backend-errors';
import { PrefetchCounters, PrefetchJob, PrefetchJobOptions, PrefetchTarget, newPrefetchCounters } from './prefetch';
import { BadBlobError, DigestMismatchError, NydusError } from '../errors';
import type { CompressorName, DigesterName } from '../format/constants';
import zstdBinding = require('zstd-napi/binding');

export type DecodeMode = 'inline' | 'pool' | 'auto';

export interface BlobSessionOptions {
  /** bytes a request is widened to (nydusd: max(1 MiB, 128 KiB)); 0 disables (and readahead) */
  amplify?: number;
  /**
   * sequential readahead: when a request lands in or right after the previous request's window,
   * also fetch this many bytes beyond it, in the background (default 2 MiB; 0 disables)
   */
  readahead?: number;
  /** verify chunk digests (default true whenever digests are known) */
  validate?: boolean;
  /** the largest single backend read when merging adjacent chunks */
  maxMergeBytes?: number;
  /**
   * wait for the amplified window's chunks before answering a request (default true, as nydusd
   * answers after its merged request); false fetches the window as a separate backend read that
   * the request does not wait for (the reader gets its own chunks a window's transfer sooner)
   */
  windowWait?: boolean;
  /** where chunks are decompressed and verified (see the file comment); default auto */
  decode?: DecodeMode;
  /** the largest cache write gathering adjacent decoded chunks (default 1 MiB, at least one chunk) */
  writeBatch?: number;
  /**
   * Keep the blob's chunk index in `<dir>/<blob id>.nydus-ts.ci` (nydusd keeps its own
   * `<blob id>.blob.meta` there; the names differ so a shared work dir confuses neither), so a
   * blob opened again (a remount, a restarted daemon) needs no backend request before its reads.
   */
  metaCacheDir?: string;
  pool?: ChunkPool;
  /** backend request slots shared with the other sessions on the same backend (prefetch yields to reads) */
  gate?: BackendGate;
  log?: (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>) => void;
}

const PAGE = 4096;
const alignUp = (n: number): number => Math.ceil(n / PAGE) * PAGE;

/** Benchmark / tuning overrides from the environment (documented in bench/read-bench.ts). */
function envNumber(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  return Number.isFinite(n) && n >= 0 ? n : undefined;
}
function envDecode(): DecodeMode | undefined {
  const v = process.env.NYDUS_TS_DECODE;
  return v === 'inline' || v === 'pool' || v === 'auto' ? v : undefined;
}

/**
 * Log-linear latency histogram (8 buckets per power of two, ≈ 9 % resolution) from 1 µs to
 * about 35 minutes: constant memory, cheap to update, quantiles from bucket upper bounds.
 */
export class LatencyHistogram {
  private static readonly SUB = 8;
  private readonly buckets = new Float64Array(31 * LatencyHistogram.SUB);
  count = 0;
  /** summed latency (Prometheus histograms report it) */
  sumMs = 0;
  minMs = Infinity;
  maxMs = 0;

  add(ms: number): void {
    this.count++;
    this.sumMs += ms;
    if (ms < this.minMs) this.minMs = ms;
    if (ms > this.maxMs) this.maxMs = ms;
    const us = Math.max(1, ms * 1000);
    const i = Math.min(this.buckets.length - 1, Math.floor(Math.log2(us) * LatencyHistogram.SUB));
    this.buckets[i]++;
  }

  /** upper bound (ms) of bucket i */
  private static upper(i: number): number {
    return 2 ** ((i + 1) / LatencyHistogram.SUB) / 1000;
  }

  quantile(q: number): number {
    if (this.count === 0) return 0;
    const want = Math.max(1, Math.ceil(q * this.count));
    let seen = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      seen += this.buckets[i];
      if (seen >= want) return Math.min(this.maxMs, Math.max(this.minMs, LatencyHistogram.upper(i)));
    }
    return this.maxMs;
  }

  toJSON(): { count: number; sum_ms: number; min_ms: number; p50_ms: number; p90_ms: number; p99_ms: number; max_ms: number; buckets_ms: Record<string, number> } {
    const buckets: Record<string, number> = {};
    this.buckets.forEach((n, i) => {
      if (n) buckets[LatencyHistogram.upper(i).toPrecision(3)] = n;
    });
    return {
      count: this.count, sum_ms: this.sumMs, min_ms: this.count ? this.minMs : 0, p50_ms: this.quantile(0.5), p90_ms: this.quantile(0.9),
      p99_ms: this.quantile(0.99), max_ms: this.maxMs, buckets_ms: buckets,
    };
  }
}

/** BlobMetrics plus the session's own details (the API passes them through). */
export interface ChunkedBlobMetrics extends BlobMetrics {
  /** per-ensure() latency: count, min/p50/p90/p99/max (ms) and the non-empty buckets (upper bound ms → count) */
  read_latency_hist: ReturnType<LatencyHistogram['toJSON']>;
  /** busy time summed over operations (they may overlap): backend reads, decompress + verify, cache writes */
  backend_ms: number;
  decode_ms: number;
  write_ms: number;
  /** chunks decoded on the main thread / on the worker pool */
  inline_decodes: number;
  pool_decodes: number;
  /** cache writes (one per batch of adjacent chunks) */
  cache_writes: number;
  /** chunks fetched ahead by sequential readahead (beyond the amplified window) */
  readahead_chunks: number;
  /** on-demand backend requests that queued for a slot, and those that queued behind prefetch (should be 0) */
  ondemand_queued: number;
  ondemand_waits_behind_prefetch: number;
  /** background prefetch of this blob (prefetch.ts); `pending_chunks`: not yet fetched by running jobs */
  prefetch: PrefetchCounters & { state: string; pending_chunks: number; shared_with_reads: number };
}

/**
 * Page-aligned scratch buffers, reused across sessions (by size), so the hot path touches no
 * fresh memory. A few are kept per size; the rest are left to the GC.
 */
class ScratchBuffers {
  private readonly free = new Map<number, Buffer[]>();
  constructor(private readonly keep: number) {}
  acquire(size: number): Buffer {
    return this.free.get(size)?.pop() ?? alignedBuffer(size, PAGE);
  }
  release(b: Buffer): void {
    let l = this.free.get(b.length);
    if (!l) this.free.set(b.length, (l = []));
    if (l.length < this.keep) l.push(b);
  }
}
const scratch = new ScratchBuffers(8);

/** cache writes of one run in flight while its next chunks are decoded */
const MAX_RUN_WRITES = 2;

function rawBufferSize(n: number): number {
  let size = 1 << 20;
  while (size < n) size *= 2;
  return size;
}

/**
 * The main thread's decode queue (all sessions): one inline decode per event-loop turn, so READs
 * that arrive meanwhile are dispatched and completions run between decodes. Chunks a request
 * waits for go first; no decode starts while a write that completes a waiting request is in
 * flight (its completion, and so the READ's, would otherwise wait for the whole decode).
 */
interface DecodeJob {
  wanted(): boolean;
  exec(): void;
  resolve(): void;
  reject(e: Error): void;
}
const inlineQueue: DecodeJob[] = [];
let drainScheduled = false;
let urgentWrites = 0;
const URGENT_GATE = process.env.NYDUS_TS_URGENT_GATE !== '0';

function scheduleDrain(): void {
  if (drainScheduled || urgentWrites > 0 || inlineQueue.length === 0) return;
  drainScheduled = true;
  setImmediate(drainOne);
}

function drainOne(): void {
  drainScheduled = false;
  if (urgentWrites > 0 || inlineQueue.length === 0) return;
  let i = inlineQueue.findIndex((j) => j.wanted());
  if (i < 0) i = 0;
  const job = inlineQueue.splice(i, 1)[0];
  try {
    job.exec();
    job.resolve();
  } catch (e) {
    job.reject(e as Error);
  }
  scheduleDrain();
}

function inlineQueueHasWanted(): boolean {
  return inlineQueue.some((j) => j.wanted());
}

/** The main thread's zstd decompression context (created on first use, reset after an error). */
let dctx: zstdBinding.DCtx | undefined;

/** Decompress + verify one chunk into `dst` (exactly `c.uncompressedSize` bytes) on this thread. */
function decodeInto(
  dst: Buffer, piece: Buffer, c: BlobChunk, compressor: CompressorName, digester: DigesterName, expected: Buffer | null, blobId: string,
): void {
  const size = c.uncompressedSize;
  try {
    if (!c.compressed || compressor === 'none') {
      if (piece.length !== size) throw new BadBlobError(`none: chunk is ${piece.length} bytes, expected ${size}`);
      piece.copy(dst, 0, 0, size);
    } else if (compressor === 'zstd') {
      dctx ??= new zstdBinding.DCtx();
      let n: number;
      try {
        // the frame cannot write past dst: too much output is an error, too little a short count
        n = dctx.decompress(dst, piece);
      } catch (e) {
        dctx = undefined;
        throw new BadBlobError(`zstd: cannot decompress ${piece.length}-byte chunk to ${size} bytes: ${(e as Error).message}`);
      }
      if (n !== size) throw new BadBlobError(`zstd: chunk decompresses to ${n} bytes, expected ${size}`);
    } else {
      decompressChunk(compressor, piece, true, size).copy(dst, 0, 0, size);
    }
  } catch (e) {
    throw new BadBlobError(`blob ${blobId} chunk ${c.index}: cannot decompress (${(e as Error).message})`, { blobId, chunk: c.index });
  }
  if (expected) {
    const got = digest(digester, dst);
    if (!got.equals(expected)) {
      throw new DigestMismatchError(`blob ${blobId} chunk ${c.index}: digest ${got.toString('hex')} != expected ${expected.toString('hex')}`, { blobId, chunk: c.index });
    }
  }
}

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (e: Error) => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // a chunk nobody waits for may fail quietly (it is logged)
  return { promise, resolve, reject };
}

/** Decoded chunks gathered for one cache write. */
interface Batch {
  buf: Buffer;
  /** uncompressed offset of buf[0] */
  base: number;
  /** bytes filled (whole pages) */
  used: number;
  /** positions in the run */
  members: number[];
}

export class ChunkedBlobSession implements BlobSession, PrefetchTarget {
  readonly blobId: string;
  readonly size: number;
  private chunks: BlobChunk[] | null = null;
  private metaLoading: Promise<BlobChunk[]> | null = null;
  private ready = new Uint8Array(0);
  /** requests waiting for each chunk */
  private wanted = new Uint16Array(0);
  private readonly inflight = new Map<number, Promise<void>>();
  /** chunks in flight in a prefetch request (a reader that needs one shares it) */
  private readonly prefetching = new Set<number>();
  /** … and still waiting for the backend: close() does not wait for those (nothing is written after it) */
  private readonly prefetchInBackend = new Set<number>();
  private closed = false;
  readonly gate: BackendGate;
  readonly prefetchCounters = newPrefetchCounters();
  private readonly jobs = new Set<PrefetchJob>();
  private readonly demandCounters = { ondemand_queued: 0, ondemand_waits_behind_prefetch: 0, prefetch_shared_with_reads: 0 };
  private readonly m: BlobMetrics;
  private readonly hist = new LatencyHistogram();
  private readonly extra = { backend_ms: 0, decode_ms: 0, write_ms: 0, inline_decodes: 0, pool_decodes: 0, cache_writes: 0, readahead_chunks: 0 };
  private readonly amplify: number;
  private readonly readahead: number;
  private readonly maxMerge: number;
  private readonly windowWait: boolean;
  private readonly decodeMode: DecodeMode;
  private readonly writeBatch: number;
  /** the previous request's window [first, last] (chunk indices), for sequential detection */
  private lastWindow: [number, number] = [-2, -2];

  constructor(
    readonly entry: BlobEntry,
    private readonly backend: BlobBackend,
    private readonly writer: CacheWriter,
    /** expected digest by ci index (from the bootstrap chunk table); empty = unknown */
    private readonly digests: Map<number, Buffer>,
    private readonly opts: BlobSessionOptions = {},
  ) {
    this.blobId = entry.blobId;
    this.size = entry.uncompressedSize;
    this.amplify = opts.amplify ?? 1 << 20;
    this.readahead = this.amplify > 0 ? (opts.readahead ?? envNumber('NYDUS_TS_READAHEAD') ?? 2 << 20) : 0;
    this.maxMerge = opts.maxMergeBytes ?? 8 << 20;
    this.windowWait = opts.windowWait ?? process.env.NYDUS_TS_WINDOW_WAIT !== '0';
    this.decodeMode = opts.decode ?? envDecode() ?? 'auto';
    this.gate = opts.gate ?? new BackendGate();
    this.writeBatch = Math.max(alignUp(entry.chunkSize || PAGE), alignUp(opts.writeBatch ?? envNumber('NYDUS_TS_WRITE_BATCH') ?? 1 << 20));
    this.m = {
      blob_id: entry.blobId, backend_bytes: 0, backend_requests: 0, chunks_fetched: 0, chunks_verified: 0,
      digest_failures: 0, backend_errors: 0, backend_errors_by_kind: {}, backend_kind: backend.kind, reads: 0, read_bytes: 0, read_latency_ms_total: 0, read_latency_ms_max: 0,
      chunks_ready: 0, chunk_count: entry.chunkCount,
    };
  }

  /** Load the ci array (once) through the backend; marks chunks the writer already holds. */
  private async meta(): Promise<BlobChunk[]> {
    if (this.chunks) return this.chunks;
    this.metaLoading ??= (async () => {
      await digestReady(); // inline verification needs the hash module in this thread
      const fromBackend = async (off: number, len: number): Promise<Buffer> => {
        this.m.backend_requests++;
        this.m.backend_bytes += len;
        const raw = await this.backend.readRange(this.blobId, off, len).catch((e) => {
          this.countBackendError(e);
          throw e;
        });
        await this.storeMetaCache(raw);
        return raw;
      };
      const cached = await this.loadMetaCache();
      let meta;
      try {
        meta = await readBlobMeta(this.entry, cached ? async () => cached : fromBackend);
      } catch (e) {
        if (!cached) throw e;
        this.opts.log?.('warn', `blob ${this.blobId}: cached chunk index ${this.metaCachePath()} is unusable (${(e as Error).message}); fetching it again`);
        meta = await readBlobMeta(this.entry, fromBackend);
      }
      this.ready = new Uint8Array(meta.chunks.length);
      this.wanted = new Uint16Array(meta.chunks.length);
      const present = (await this.writer.presentRanges?.()) ?? [];
      for (const [start, end] of present) {
        // chunks are sorted by offset: find the first one starting at or after `start`
        let lo = 0;
        let hi = meta.chunks.length;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (meta.chunks[mid].uncompressedOffset < start) lo = mid + 1;
          else hi = mid;
        }
        for (let i = lo; i < meta.chunks.length; i++) {
          const c = meta.chunks[i];
          if (c.uncompressedOffset + c.uncompressedSize > end) break;
          this.markReady(i);
        }
      }
      this.chunks = meta.chunks;
      return meta.chunks;
    })();
    try {
      return await this.metaLoading;
    } catch (e) {
      this.metaLoading = null; // let a later request retry
      throw e;
    }
  }

  private metaCachePath(): string | undefined {
    return this.opts.metaCacheDir ? path.join(this.opts.metaCacheDir, `${this.blobId}.nydus-ts.ci`) : undefined;
  }

  /** The cached chunk-index bytes: `raw ‖ sha256(raw)`, raw as read from the blob; undefined if absent or damaged. */
  private async loadMetaCache(): Promise<Buffer | undefined> {
    const file = this.metaCachePath();
    if (!file) return undefined;
    const want = this.entry.ciCompressedSize + BLOB_CCT_HEADER_SIZE;
    const data = await fs.promises.readFile(file).catch(() => undefined);
    if (!data || data.length !== want + 32) return undefined;
    const raw = data.subarray(0, want);
    return crypto.createHash('sha256').update(raw).digest().equals(data.subarray(want)) ? raw : undefined;
  }

  /**
   * Best effort: a failure only costs the next open a backend request. Temp name + rename like
   * util/atomic-file, but asynchronous and without fsync: this runs in the daemon's event loop,
   * and the stored sha256 already rejects a torn copy.
   */
  private async storeMetaCache(raw: Buffer): Promise<void> {
    const file = this.metaCachePath();
    if (!file) return;
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      await fs.promises.writeFile(tmp, Buffer.concat([raw, crypto.createHash('sha256').update(raw).digest()]));
      await fs.promises.rename(tmp, file);
    } catch (e) {
      await fs.promises.rm(tmp, { force: true }).catch(() => undefined);
      this.opts.log?.('warn', `blob ${this.blobId}: cannot keep the chunk index in ${file}: ${(e as Error).message}`);
    }
  }

  private countBackendError(e: unknown): void {
    const kind = backendErrorKind(e);
    const byKind = (this.m.backend_errors_by_kind ??= {});
    this.m.backend_errors = (this.m.backend_errors ?? 0) + 1;
    byKind[kind] = (byKind[kind] ?? 0) + 1;
  }

  /** scrub: the digest chunk `i` must have (undefined when the bootstrap records none) */
  expectedDigest(i: number): Buffer | undefined {
    return this.digests.get(i);
  }

  prepare(): void {
    if (!this.closed) this.meta().catch(() => undefined); // the first READ retries and reports it
  }

  forget(offset: number, length: number): void {
    const chunks = this.chunks;
    if (!chunks || length <= 0) return;
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i];
      if (c.uncompressedOffset < offset + length && c.uncompressedOffset + c.uncompressedSize > offset && this.ready[i]) {
        this.ready[i] = 0;
        this.m.chunks_ready--;
      }
    }
  }

  private markReady(i: number): void {
    if (!this.ready[i]) {
      this.ready[i] = 1;
      this.m.chunks_ready++;
    }
  }

  async ensure(offset: number, length: number): Promise<void> {
    if (this.closed) throw new NydusError('ERR_DAEMON', `blob ${this.blobId}: session closed`);
    const t0 = performance.now();
    const chunks = await this.meta();
    const end = Math.min(offset + length, this.size);
    if (length <= 0 || offset >= end || chunks.length === 0) return;
    const first = findChunk(chunks, offset);
    const last = findChunk(chunks, end - 1);
    if (first < 0 || last < 0) {
      // Every byte below `size` belongs to a chunk or its 4K padding, so this is a corrupt ci
      // array or a request outside the blob: fail it (the reader gets EIO).
      throw new NydusError('ERR_BAD_BLOB', `blob ${this.blobId}: range ${offset}+${length} is not covered by any chunk`, { blobId: this.blobId });
    }
    // Amplify: keep extending forward while the window is not yet covered; a sequential reader
    // (this request starts in or right after the previous window) also gets readahead.
    let windowEnd = offset + Math.max(this.amplify, length);
    let ampLast = last;
    while (ampLast + 1 < chunks.length && chunks[ampLast + 1].uncompressedOffset < windowEnd) ampLast++;
    const ampOnly = ampLast;
    const [pFirst, pLast] = this.lastWindow;
    let raFrom = chunks.length;
    if (this.readahead > 0 && first >= pFirst && first <= pLast + 1) {
      raFrom = ampLast + 1;
      windowEnd = Math.max(windowEnd, chunks[ampLast].uncompressedOffset + chunks[ampLast].uncompressedSize + this.readahead);
      while (ampLast + 1 < chunks.length && chunks[ampLast + 1].uncompressedOffset < windowEnd) ampLast++;
    }
    this.lastWindow = [first, ampLast];

    let run: BlobChunk[] = [];
    let runBytes = 0;
    /** chunks of the amplified window beyond [first, last] that this request fetches */
    const amplified: number[] = [];
    const flush = (): void => {
      if (!run.length) return;
      const defs = run.map((c) => {
        const d = deferred();
        const tracked = d.promise;
        this.inflight.set(c.index, tracked);
        tracked.finally(() => {
          if (this.inflight.get(c.index) === tracked) this.inflight.delete(c.index);
        }).catch(() => undefined);
        return d;
      });
      void this.fetchRun(run, defs);
      run = [];
      runBytes = 0;
    };
    for (let i = first; i <= ampLast; i++) {
      const c = chunks[i];
      if (this.ready[i]) continue;
      if (this.inflight.has(i)) {
        flush();
        continue;
      }
      if (i >= raFrom) {
        this.extra.readahead_chunks++;
        // the readahead is a run of its own: the window's chunks must not wait for its bytes
        if (i === raFrom) flush();
      } else if (i > last && i <= ampOnly) amplified.push(i);
      // a window not waited for travels in a read of its own, after the requested chunks'
      if (!this.windowWait && i > last && run.length && run[0].index <= last) flush();
      const prev = run[run.length - 1];
      const adjacent = prev && prev.compressedOffset + prev.compressedSize === c.compressedOffset;
      if (run.length && (!adjacent || runBytes + c.compressedSize > this.maxMerge)) flush();
      run.push(c);
      runBytes += c.compressedSize;
    }
    flush();
    const required: Promise<void>[] = [];
    const waiting: number[] = [];
    for (let i = first; i <= last; i++) {
      if (this.ready[i]) continue;
      const p = this.inflight.get(i);
      if (p) {
        required.push(p);
        waiting.push(i);
        this.wanted[i]++;
        if (this.prefetching.has(i)) this.demandCounters.prefetch_shared_with_reads++;
      } else required.push(Promise.reject(new NydusError('ERR_BACKEND', `blob ${this.blobId}: chunk ${i} is neither ready nor being fetched`)));
    }
    // The amplified window is part of the request (a small read brings its window in), so it
    // is waited for too, but only a failure of the requested range fails the request.
    const nRequired = required.length;
    for (const i of this.windowWait ? amplified : []) {
      const p = this.inflight.get(i);
      if (p) {
        required.push(p);
        waiting.push(i);
        this.wanted[i]++;
      }
    }
    const results = (await Promise.allSettled(required)).slice(0, nRequired);
    for (const i of waiting) this.wanted[i]--;
    const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
    const ms = performance.now() - t0;
    this.m.reads++;
    this.m.read_bytes += end - offset;
    this.m.read_latency_ms_total += ms;
    this.m.read_latency_ms_max = Math.max(this.m.read_latency_ms_max, ms);
    this.hist.add(ms);
    if (failed) throw failed.reason;
  }

  /**
   * Decompress + verify chunk `c` into `dst`: on the main thread through the decode queue, or
   * (`auto`) on an idle worker when it is waited for and another waited-for chunk is already
   * queued for the main thread (concurrent requests), and big enough to be worth the round trip.
   */
  private decode(c: BlobChunk, dst: Buffer, piece: Buffer, compressor: CompressorName, digester: DigesterName, expected: Buffer | null): Promise<void> {
    const pool = this.opts.pool;
    if (pool && (this.decodeMode === 'pool' ||
        (this.decodeMode === 'auto' && this.wanted[c.index] > 0 && c.uncompressedSize >= 64 << 10 && pool.pending < pool.threads && inlineQueueHasWanted()))) {
      this.extra.pool_decodes++;
      return pool.decompressAndVerify(piece, compressor, c.compressed, c.uncompressedSize, expected ? digester : null, expected).then((b) => {
        b.copy(dst);
      });
    }
    this.extra.inline_decodes++;
    return new Promise<void>((resolve, reject) => {
      inlineQueue.push({ wanted: () => this.wanted[c.index] > 0, exec: () => decodeInto(dst, piece, c, compressor, digester, expected, this.blobId), resolve, reject });
      scheduleDrain();
    });
  }

  /**
   * Fetch adjacent chunks with one backend read, then decode, verify and write them in order,
   * settling each chunk's deferred as soon as its bytes are in the cache (or it failed).
   */
  private async fetchRun(run: BlobChunk[], defs: Deferred[], prefetchSlot?: () => void): Promise<void> {
    const start = run[0].compressedOffset;
    const endOff = run[run.length - 1].compressedOffset + run[run.length - 1].compressedSize;
    let raw: Buffer;
    // compressed bytes land in a reused buffer (size classes of powers of two from 1 MiB)
    const rawBuf = scratch.acquire(rawBufferSize(endOff - start));
    let compressor: CompressorName;
    let digester: DigesterName;
    let release = prefetchSlot;
    try {
      ({ compressor, digester } = blobCodecs(this.entry));
      if (!release) {
        const slot = await this.gate.demand();
        release = slot.release;
        if (slot.queued) this.demandCounters.ondemand_queued++;
        if (slot.waitedBehindPrefetch) this.demandCounters.ondemand_waits_behind_prefetch++;
      }
      this.m.backend_requests++;
      const tb = performance.now();
      raw = await this.backend.readRange(this.blobId, start, endOff - start, rawBuf);
      this.extra.backend_ms += performance.now() - tb;
      this.m.backend_bytes += raw.length;
    } catch (e) {
      release?.();
      scratch.release(rawBuf);
      this.countBackendError(e);
      if (!this.closed) this.opts.log?.('error', `blob ${this.blobId}: backend read ${start}+${endOff - start} failed: ${(e as Error).message}`, { blobId: this.blobId });
      for (const d of defs) d.reject(e as Error);
      return;
    }
    release?.();
    try {
      await this.decodeRun(run, defs, raw, start, compressor, digester);
    } finally {
      // every decode of the run has settled (or copied its input, for the pool) by now
      scratch.release(rawBuf);
    }
  }

  /** Decode, verify and write the chunks of a fetched run (`raw` holds its compressed bytes from `start`). */
  private async decodeRun(run: BlobChunk[], defs: Deferred[], raw: Buffer, start: number, compressor: CompressorName, digester: DigesterName): Promise<void> {
    const validate = this.opts.validate !== false;
    const pieceOf = (c: BlobChunk): Buffer => raw.subarray(c.compressedOffset - start, c.compressedOffset - start + c.compressedSize);
    const expectedOf = (c: BlobChunk): Buffer | null => (validate ? this.digests.get(c.index) ?? null : null);

    // `pool`: every chunk goes to the workers at once (in parallel); otherwise one after another.
    const pool = this.opts.pool;
    const pooled = pool && this.decodeMode === 'pool'
      ? run.map((c) => {
          const expected = expectedOf(c);
          const p = pool.decompressAndVerify(pieceOf(c), compressor, c.compressed, c.uncompressedSize, expected ? digester : null, expected);
          p.catch(() => undefined);
          this.extra.pool_decodes++;
          return p;
        })
      : null;

    let batch: Batch | null = null;
    const settleWrite = async (b: Batch): Promise<void> => {
      const tw = performance.now();
      const urgent = URGENT_GATE && b.members.some((k) => this.wanted[run[k].index] > 0);
      if (urgent) urgentWrites++;
      try {
        if (this.closed) throw new NydusError('ERR_DAEMON', `blob ${this.blobId}: session closed`);
        this.extra.cache_writes++;
        await this.writer.write(b.base, b.buf.subarray(0, b.used));
        this.extra.write_ms += performance.now() - tw;
        for (const k of b.members) {
          this.markReady(run[k].index);
          defs[k].resolve();
        }
      } catch (e) {
        this.opts.log?.('error', `blob ${this.blobId}: cache write ${b.base}+${b.used} failed: ${(e as Error).message}`, { blobId: this.blobId });
        for (const k of b.members) defs[k].reject(e as Error);
      } finally {
        scratch.release(b.buf);
        if (urgent) {
          urgentWrites--;
          scheduleDrain();
        }
      }
    };
    // Cache writes overlap the decoding of the next chunks (at most MAX_RUN_WRITES in flight;
    // settleWrite never rejects).
    const writes = new Set<Promise<void>>();
    const flushBatch = async (): Promise<void> => {
      const b = batch;
      batch = null;
      if (b && b.members.length) {
        const p = settleWrite(b);
        writes.add(p);
        void p.finally(() => writes.delete(p));
        while (writes.size >= MAX_RUN_WRITES) await Promise.race(writes);
      } else if (b) scratch.release(b.buf);
    };
    const drainWrites = async (): Promise<void> => {
      await flushBatch();
      await Promise.all(writes);
    };

    for (let k = 0; k < run.length; k++) {
      const c = run[k];
      if (this.closed) {
        await drainWrites();
        for (let j = k; j < run.length; j++) defs[j].reject(new NydusError('ERR_DAEMON', `blob ${this.blobId}: session closed`));
        return;
      }
      const padded = alignUp(c.uncompressedSize);
      if (batch && (batch.base + batch.used !== c.uncompressedOffset || batch.used + padded > batch.buf.length)) await flushBatch();
      const b: Batch = (batch ??= { buf: scratch.acquire(this.writeBatch), base: c.uncompressedOffset, used: 0, members: [] });
      const dst = b.buf.subarray(b.used, b.used + c.uncompressedSize);
      const expected = expectedOf(c);
      try {
        const td = performance.now();
        if (pooled) (await pooled[k]).copy(dst);
        else await this.decode(c, dst, pieceOf(c), compressor, digester, expected);
        this.extra.decode_ms += performance.now() - td;
        if (padded > c.uncompressedSize) b.buf.fill(0, b.used + c.uncompressedSize, b.used + padded);
        this.m.chunks_fetched++;
        if (expected) this.m.chunks_verified++;
      } catch (e) {
        const err = e instanceof NydusError ? e : new BadBlobError((e as Error).message, { blobId: this.blobId, chunk: c.index });
        if (err.code === 'ERR_DIGEST_MISMATCH') this.m.digest_failures++;
        const where = `blob ${this.blobId} chunk ${c.index}: `;
        this.opts.log?.('error', err.message.startsWith(where) ? err.message : where + err.message, { blobId: this.blobId, chunk: c.index });
        defs[k].reject(err);
        await flushBatch(); // the batch must stay contiguous: write what came before
        continue;
      }
      b.used += padded;
      b.members.push(k);
      // Write now when the batch is full, the next chunk does not continue it, or a request waits
      // for one of its chunks; otherwise keep gathering (one write for several small chunks).
      const next = run[k + 1];
      const full = !next || b.used + alignUp(next.uncompressedSize) > b.buf.length || b.base + b.used !== next.uncompressedOffset;
      if (full || b.members.some((j) => this.wanted[run[j].index] > 0)) await flushBatch();
    }
    await drainWrites();
  }

  metrics(): ChunkedBlobMetrics {
    const { prefetch_shared_with_reads, ...demand } = this.demandCounters;
    let pending = 0;
    let state = 'off';
    for (const j of this.jobs) {
      pending += j.remaining();
      state = j.state;
    }
    return {
      ...this.m, read_latency_hist: this.hist.toJSON(), ...this.extra, ...demand,
      prefetch: { state, pending_chunks: pending, shared_with_reads: prefetch_shared_with_reads, ...this.prefetchCounters },
    };
  }

  // ------------------------------------------------------------------ prefetch (prefetch.ts)

  get isClosed(): boolean {
    return this.closed;
  }

  chunkIndex(): Promise<BlobChunk[]> {
    return this.meta();
  }

  presentOrBusy(i: number): boolean {
    return this.ready[i] === 1 || this.inflight.has(i);
  }

  /** Start a background prefetch job on this blob; it ends with the session at the latest. */
  startPrefetch(o: PrefetchJobOptions): PrefetchJob {
    if (this.closed) throw new NydusError('ERR_DAEMON', `blob ${this.blobId}: session closed`);
    const job = new PrefetchJob(this, o);
    // the newest job's state is the one reported; finished jobs leave the set
    this.jobs.add(job);
    void job.done.finally(() => {
      if (this.jobs.size > 1) this.jobs.delete(job);
    });
    return job;
  }

  /**
   * One prefetch request: `run` holds adjacent chunks that are neither present nor in flight.
   * They go through the in-flight map like an on-demand fetch, so a reader that needs one of
   * them waits for this request instead of fetching it again. Resolves with the number of
   * chunks that failed (never rejects).
   */
  async prefetchRun(run: BlobChunk[], release: () => void): Promise<number> {
    const c = this.prefetchCounters;
    if (this.closed) {
      release();
      return run.length;
    }
    const defs = run.map((ch) => {
      const d = deferred();
      const tracked = d.promise;
      this.inflight.set(ch.index, tracked);
      this.prefetching.add(ch.index);
      tracked.finally(() => {
        if (this.inflight.get(ch.index) === tracked) this.inflight.delete(ch.index);
        this.prefetching.delete(ch.index);
      }).catch(() => undefined);
      return d;
    });
    for (const ch of run) this.prefetchInBackend.add(ch.index);
    const backendDone = (): void => {
      for (const ch of run) this.prefetchInBackend.delete(ch.index);
      release();
    };
    const bytes = run[run.length - 1].compressedOffset + run[run.length - 1].compressedSize - run[0].compressedOffset;
    c.requests++;
    c.inflight++;
    c.max_inflight = Math.max(c.max_inflight, c.inflight);
    let failed = 0;
    try {
      await this.fetchRun(run, defs, backendDone);
      const results = await Promise.allSettled(defs.map((d) => d.promise));
      failed = results.filter((r) => r.status === 'rejected').length;
    } finally {
      c.inflight--;
    }
    c.chunks += run.length - failed;
    if (failed < run.length) c.bytes += bytes;
    if (failed > 0) {
      c.failed_requests++;
      if (!this.closed) this.opts.log?.('warn', `blob ${this.blobId}: prefetch request ${run[0].compressedOffset}+${bytes} (${run.length} chunks): ${failed} chunk(s) failed; they are fetched when read`, { blobId: this.blobId });
    }
    return failed;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const j of this.jobs) j.cancel();
    // A prefetch request still waiting for the backend is abandoned (its answer is dropped:
    // decodeRun writes nothing once closed), so a slow backend cannot hold up an unmount.
    await Promise.allSettled([...this.inflight].filter(([i]) => !this.prefetchInBackend.has(i)).map(([, p]) => p));
  }
}
