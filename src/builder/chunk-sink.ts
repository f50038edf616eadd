/**
 * The builder's hot path: file bytes are cut into fixed-size chunks, hashed and compressed on
 * worker threads (many in flight), then committed strictly in submission order so that blob
 * contents, ci indexes and dedup decisions are deterministic (reproducible builds).
 */
import { ChunkPool, ProcessedChunk } from '../codec/chunk-pool';
import { CompressorName, DigesterName } from '../format/constants';
import { ChunkRef, Inode } from '../tree/node';
import { BlobWriter } from '../blob/blob-writer';
import { NydusError } from '../errors';

export interface SinkStats {
  files: number;
  bytesIn: number;
  chunks: number;
  newChunks: number;
  dedupChunks: number;
  dedupBytes: number;
  newUncompressedBytes: number;
}

interface Pending {
  /** holds an in-flight slot (the chunks of one batch share the first one's) */
  slot: boolean;
  result: Promise<ProcessedChunk>;
  inode: Inode;
  k: number;
  size: number;
}

let sharedZero = Buffer.alloc(0);
/** A read-only view of zeros: sources yield it for holes so the sink can skip hashing them. */
export function zeroView(n: number): Buffer {
  if (sharedZero.length < n) sharedZero = Buffer.alloc(Math.max(n, 1 << 20));
  return sharedZero.subarray(0, n);
}
function isZeroView(b: Buffer): boolean {
  return b.buffer === sharedZero.buffer && b.length > 0;
}

/**
 * Chunks up to this size are sent to the workers in batches (one task for up to BATCH_MAX
 * chunks or BATCH_BYTES bytes): most files of a rootfs are small, and one message per chunk
 * cost more than hashing and compressing them (bench/README.md).
 */
const SMALL_CHUNK = 64 * 1024;
const BATCH_MAX = 64;
const BATCH_BYTES = 1 << 20;

export function dedupKey(digest: Buffer, size: number): string {
  return digest.toString('hex') + ':' + size;
}

export class ChunkSink {
  readonly stats: SinkStats = { files: 0, bytesIn: 0, chunks: 0, newChunks: 0, dedupChunks: 0, dedupBytes: 0, newUncompressedBytes: 0 };
  /** digest:size -> an existing chunk (parent layers, chunk dict, this build) */
  readonly dedup = new Map<string, ChunkRef>();
  private queue: Pending[] = [];
  private committing: Promise<void> | null = null;
  private inflight = 0;
  private waiters: (() => void)[] = [];
  private error: unknown = null;
  /** small chunks not yet handed to the pool; the first one holds an in-flight slot */
  private batch: { inode: Inode; k: number; data: Buffer }[] = [];
  private batchBytes = 0;
  /** processed all-zero chunk per size: holes of sparse files reuse it */
  private readonly zeroChunks = new Map<number, Promise<ProcessedChunk>>();

  constructor(
    private readonly pool: ChunkPool,
    private readonly writer: BlobWriter,
    /** blob-table slot the new blob will occupy */
    private readonly blobSlot: number,
    readonly chunkSize: number,
    private readonly compressor: CompressorName,
    private readonly digester: DigesterName,
    private readonly maxInflight: number,
    private readonly onProgress?: (s: SinkStats) => void,
  ) {}

  /**
   * Chunk one regular file's content; the body must yield exactly `inode.size` bytes.
   * `freshPieces`: each piece is a buffer the source never touches again, so whole-chunk pieces
   * may be handed to the worker pool by transfer (they are detached afterwards).
   */
  async addFile(inode: Inode, body: AsyncIterable<Buffer>, where: string, freshPieces = false): Promise<void> {
    const cs = this.chunkSize;
    let buf = Buffer.allocUnsafe(Math.min(cs, Math.max(inode.size, 1)));
    let fill = 0;
    let k = 0;
    let total = 0;
    inode.chunks = new Array(Math.ceil(inode.size / cs));
    for await (const piece of body) {
      let off = 0;
      total += piece.length;
      if (total > inode.size) throw new NydusError('ERR_IO', `${where}: content is longer than its size ${inode.size}`, { path: where });
      if (isZeroView(piece) && fill === 0 && piece.length === buf.length) {
        // a whole chunk of hole: no copy, no hashing
        await this.submit(inode, k++, piece, true);
        const remaining = inode.size - k * cs;
        buf = Buffer.allocUnsafe(Math.min(cs, Math.max(remaining, 1)));
        continue;
      }
      if (freshPieces && fill === 0 && piece.length === buf.length) {
        // The source handed over exactly the next chunk in a buffer it will not touch again
        // (the directory reader does): no copy here, and the pool takes its ArrayBuffer instead
        // of copying it again (pieces that share an ArrayBuffer are still copied by the pool).
        await this.submit(inode, k++, piece, false, true);
        const remaining = inode.size - k * cs;
        buf = Buffer.allocUnsafe(Math.min(cs, Math.max(remaining, 1)));
        continue;
      }
      while (off < piece.length) {
        const n = Math.min(piece.length - off, buf.length - fill);
        piece.copy(buf, fill, off, off + n);
        fill += n;
        off += n;
        if (fill === buf.length) {
          await this.submit(inode, k++, buf);
          const remaining = inode.size - k * cs;
          buf = Buffer.allocUnsafe(Math.min(cs, Math.max(remaining, 1)));
          fill = 0;
        }
      }
    }
    if (total !== inode.size) throw new NydusError('ERR_IO', `${where}: expected ${inode.size} bytes of content, got ${total} (file changed while building?)`, { path: where });
    this.stats.files++;
  }

  /** `transfer`: the pool may detach `data` (the caller must not use it afterwards). */
  private async submit(inode: Inode, k: number, data: Buffer, zero = false, transfer = false): Promise<void> {
    if (this.error) throw this.error;
    const size = data.length; // read before a transfer detaches `data`
    const small = !zero && size <= SMALL_CHUNK;
    if (small && this.batch.length) {
      this.addToBatch(inode, k, data);
      return;
    }
    // Whatever is batched goes first, so that chunks are committed in submission order.
    if (!small) this.flushBatch();
    while (this.inflight >= this.maxInflight) {
      await new Promise<void>((r) => this.waiters.push(r));
      if (this.error) throw this.error;
    }
    this.inflight++;
    if (small) {
      this.addToBatch(inode, k, data);
      return;
    }
    let result: Promise<ProcessedChunk>;
    if (zero) {
      let z = this.zeroChunks.get(size);
      if (!z) this.zeroChunks.set(size, (z = this.pool.process(Buffer.alloc(size), this.compressor, this.digester)));
      result = z;
    } else {
      result = this.pool.process(data, this.compressor, this.digester, { transfer });
    }
    result.catch(() => undefined); // surfaced by the commit loop
    this.queue.push({ slot: true, result, inode, k, size });
    this.stats.bytesIn += size;
    if (!this.committing) this.committing = this.commitLoop();
  }

  private addToBatch(inode: Inode, k: number, data: Buffer): void {
    this.batch.push({ inode, k, data });
    this.batchBytes += data.length;
    this.stats.bytesIn += data.length;
    if (this.batch.length >= BATCH_MAX || this.batchBytes >= BATCH_BYTES) this.flushBatch();
  }

  private flushBatch(): void {
    const batch = this.batch;
    if (!batch.length) return;
    this.batch = [];
    this.batchBytes = 0;
    const all = this.pool.processMany(batch.map((b) => b.data), this.compressor, this.digester);
    batch.forEach((b, i) => {
      const result = all.then((r) => r[i]);
      result.catch(() => undefined); // surfaced by the commit loop
      this.queue.push({ slot: i === 0, result, inode: b.inode, k: b.k, size: b.data.length });
    });
    if (!this.committing) this.committing = this.commitLoop();
  }



  private async commitLoop(): Promise<void> {
    try {
      while (this.queue.length) {
        const p = this.queue.shift()!;
        let r: ProcessedChunk;
        try {
          r = await p.result;
        } catch (e) {
          this.error ??= e;
          r = undefined as never;
        }
        if (!this.error) this.commit(p, r);
        if (p.slot) {
          this.inflight--;
          this.waiters.shift()?.();
        }
      }
    } finally {
      this.committing = null;
    }
    if (this.queue.length && !this.committing) this.committing = this.commitLoop();
  }

  private commit(p: Pending, r: ProcessedChunk): void {
    const key = dedupKey(r.digest, p.size);
    const fileOffset = p.k * this.chunkSize;
    this.stats.chunks++;
    const hit = this.dedup.get(key);
    if (hit) {
      this.stats.dedupChunks++;
      this.stats.dedupBytes += p.size;
      p.inode.chunks[p.k] = { ...hit, fileOffset };
    } else {
      const c = this.writer.addChunk(r.data, r.compressed, p.size, r.digest);
      const ref: ChunkRef = {
        blobIndex: this.blobSlot, ciIndex: c.index, digest: r.digest, compressedOffset: c.compressedOffset,
        compressedSize: c.compressedSize, uncompressedOffset: c.uncompressedOffset,
        uncompressedSize: c.uncompressedSize, compressed: c.compressed, fileOffset,
      };
      this.dedup.set(key, ref);
      this.stats.newChunks++;
      this.stats.newUncompressedBytes += p.size;
      p.inode.chunks[p.k] = ref;
    }
    if (this.onProgress && (this.stats.chunks & 63) === 0) this.onProgress(this.stats);
  }

  /** Stop committing (after a failure elsewhere) and wait for the commit loop to go idle. */
  async cancel(reason: unknown): Promise<void> {
    this.error ??= reason;
    this.batch = [];
    while (this.committing) await this.committing.catch(() => undefined);
    for (const w of this.waiters.splice(0)) w();
  }

  /** Wait until every submitted chunk is committed; rethrows the first failure. */
  async drain(): Promise<void> {
    if (!this.error) this.flushBatch();
    while (this.committing) await this.committing;
    if (this.error) throw this.error;
    this.onProgress?.(this.stats);
  }
}
