/**
 * One open data blob: turns "make bytes [off, off+len) of the uncompressed blob present" into
 * chunk fetches. Chunks covering the range are found by binary search over the blob's ci array,
 * the request is amplified to a window (default 1 MiB) so small kernel reads fetch ahead, runs of
 * adjacent missing chunks become one backend range read, each chunk is decompressed and its
 * digest verified (worker threads), and only then written to the CacheWriter. An in-flight map
 * makes concurrent and overlapping requests share one fetch per chunk; a failed chunk is never
 * written and is retried by the next request that needs it.
 */
import { BlobEntry, BlobChunk } from '../format/layout';
import { readBlobMeta, findChunk } from '../blob/blob-meta';
import { blobCodecs, decodeChunk } from '../blob/local-blob';
import { ChunkPool } from '../codec/chunk-pool';
import { BlobBackend, BlobMetrics, BlobSession, CacheWriter } from './interfaces';
import { NydusError } from '../errors';

export interface BlobSessionOptions {
  /** bytes a request is widened to (nydusd: max(1 MiB, 128 KiB)); 0 disables */
  amplify?: number;
  /** verify chunk digests (default true whenever digests are known) */
  validate?: boolean;
  /** the largest single backend read when merging adjacent chunks */
  maxMergeBytes?: number;
  pool?: ChunkPool;
  log?: (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>) => void;
}

export class ChunkedBlobSession implements BlobSession {
  readonly blobId: string;
  readonly size: number;
  private chunks: BlobChunk[] | null = null;
  private metaLoading: Promise<BlobChunk[]> | null = null;
  private ready = new Uint8Array(0);
  private readonly inflight = new Map<number, Promise<void>>();
  private closed = false;
  private readonly m: BlobMetrics;
  private readonly amplify: number;
  private readonly maxMerge: number;

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
    this.maxMerge = opts.maxMergeBytes ?? 8 << 20;
    this.m = {
      blob_id: entry.blobId, backend_bytes: 0, backend_requests: 0, chunks_fetched: 0, chunks_verified: 0,
      digest_failures: 0, reads: 0, read_bytes: 0, read_latency_ms_total: 0, read_latency_ms_max: 0,
      chunks_ready: 0, chunk_count: entry.chunkCount,
    };
  }

  /** Load the ci array (once) through the backend; marks chunks the writer already holds. */
  private async meta(): Promise<BlobChunk[]> {
    if (this.chunks) return this.chunks;
    this.metaLoading ??= (async () => {
      const meta = await readBlobMeta(this.entry, (off, len) => {
        this.m.backend_requests++;
        this.m.backend_bytes += len;
        return this.backend.readRange(this.blobId, off, len);
      });
      this.ready = new Uint8Array(meta.chunks.length);
      const present = (await this.writer.presentRanges?.()) ?? [];
      for (const [start, end] of present) {
        for (const c of meta.chunks) {
          if (c.uncompressedOffset >= start && c.uncompressedOffset + c.uncompressedSize <= end) this.markReady(c.index);
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
    // Amplify: keep extending forward while the window is not yet covered.
    let ampLast = last;
    const windowEnd = offset + Math.max(this.amplify, length);
    while (ampLast + 1 < chunks.length && chunks[ampLast + 1].uncompressedOffset < windowEnd) ampLast++;

    const required: Promise<void>[] = [];
    let run: BlobChunk[] = [];
    let runBytes = 0;
    const flush = (): void => {
      if (!run.length) return;
      const p = this.fetchRun(run);
      run.forEach((c, k) => {
        const cp = p.then((results) => results[k]);
        // A chunk's promise resolves or rejects by itself; take it out of the map when settled.
        const tracked = cp.then((r) => {
          if (r instanceof Error) throw r;
        });
        tracked.catch(() => undefined);
        this.inflight.set(c.index, tracked);
        tracked.finally(() => {
          if (this.inflight.get(c.index) === tracked) this.inflight.delete(c.index);
        }).catch(() => undefined);
      });
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
      const prev = run[run.length - 1];
      const adjacent = prev && prev.compressedOffset + prev.compressedSize === c.compressedOffset;
      if (run.length && (!adjacent || runBytes + c.compressedSize > this.maxMerge)) flush();
      run.push(c);
      runBytes += c.compressedSize;
    }
    flush();
    for (let i = first; i <= last; i++) {
      const p = this.inflight.get(i);
      if (p) required.push(p);
      else if (!this.ready[i]) required.push(Promise.reject(new NydusError('ERR_BACKEND', `blob ${this.blobId}: chunk ${i} is neither ready nor being fetched`)));
    }
    const results = await Promise.allSettled(required);
    const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
    const ms = performance.now() - t0;
    this.m.reads++;
    this.m.read_bytes += end - offset;
    this.m.read_latency_ms_total += ms;
    this.m.read_latency_ms_max = Math.max(this.m.read_latency_ms_max, ms);
    if (failed) throw failed.reason;
  }

  /** Fetch adjacent chunks with one backend read; returns per chunk: undefined (ok) or the Error. */
  private async fetchRun(run: BlobChunk[]): Promise<(Error | undefined)[]> {
    const start = run[0].compressedOffset;
    const endOff = run[run.length - 1].compressedOffset + run[run.length - 1].compressedSize;
    let raw: Buffer;
    try {
      this.m.backend_requests++;
      raw = await this.backend.readRange(this.blobId, start, endOff - start);
      this.m.backend_bytes += raw.length;
    } catch (e) {
      this.opts.log?.('error', `blob ${this.blobId}: backend read ${start}+${endOff - start} failed: ${(e as Error).message}`, { blobId: this.blobId });
      return run.map(() => e as Error);
    }
    const { compressor, digester } = blobCodecs(this.entry);
    const validate = this.opts.validate !== false;
    return Promise.all(run.map(async (c) => {
      const piece = raw.subarray(c.compressedOffset - start, c.compressedOffset - start + c.compressedSize);
      const expected = validate ? this.digests.get(c.index) ?? null : null;
      try {
        const data = this.opts.pool
          ? await this.opts.pool.decompressAndVerify(piece, compressor, c.compressed, c.uncompressedSize, expected ? digester : null, expected)
          : decodeChunk(this.entry, c, piece, expected ?? undefined);
        this.m.chunks_fetched++;
        if (expected) this.m.chunks_verified++;
        if (this.closed) return new NydusError('ERR_DAEMON', `blob ${this.blobId}: session closed`);
        await this.writer.write(c.uncompressedOffset, data);
        this.markReady(c.index);
        return undefined;
      } catch (e) {
        if ((e as NydusError).code === 'ERR_DIGEST_MISMATCH') this.m.digest_failures++;
        this.opts.log?.('error', `blob ${this.blobId} chunk ${c.index}: ${(e as Error).message}`, { blobId: this.blobId, chunk: c.index });
        return e as Error;
      }
    }));
  }

  metrics(): BlobMetrics {
    return { ...this.m };
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.inflight.values()]);
  }
}
