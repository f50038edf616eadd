/**
 * The builder's hot path: file bytes are cut into fixed-size chunks, hashed and compressed on
 * worker threads, then committed strictly in submission order so that blob contents, ci
 * indexes and dedup decisions are deterministic (reproducible builds).
 *
 * Memory is a fixed ring of slots on SharedArrayBuffers, whatever the size of the tree: a
 * source writes chunk bytes straight into the open slot (the directory reader read(2)s into it,
 * the tar reader copies its pieces in), a full slot goes to a worker as one task (a whole chunk,
 * or many small files' chunks back to back), the worker writes digests and compressed bytes
 * into the same slot, and the commit writes them to the blob from there. No chunk is copied
 * between threads and no buffer is allocated per chunk; when every slot is busy the source
 * waits (bench/README.md, "Build pipeline").
 */
import { ChunkPool, ProcessedChunk } from '../codec/chunk-pool';
import { processSharedChunks } from '../codec/shared-chunks';
import { CompressorName, DigesterName } from '../format/constants';
import { ChunkRef, Inode, NO_CHUNKS } from '../tree/node';
import { BlobWriter } from '../blob/blob-writer';
import { ChunkAt } from '../blob/chunk-table';
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

let sharedZero = Buffer.alloc(0);
/** A read-only view of zeros: sources yield it for holes so the sink can skip hashing them. */
export function zeroView(n: number): Buffer {
  if (sharedZero.length < n) sharedZero = Buffer.alloc(Math.max(n, 1 << 20));
  return sharedZero.subarray(0, n);
}
function isZeroView(b: Buffer): boolean {
  return b.buffer === sharedZero.buffer && b.length > 0;
}

/** Chunks per slot at most (digest and size arrays are sized for it). */
const SLOT_MAX_CHUNKS = 512;
/** Small chunks share a slot up to this many bytes (or one chunk, when chunks are larger). */
const SLOT_MIN_BYTES = 1 << 20;
/** The ring's memory, at most (unless the chunk size forces more: at least threads + 1 slots). */
const RING_MAX_BYTES = 64 << 20;

/** Digest and size key of the dedup map: the raw digest bytes as a one-byte string, then the size. */
export function dedupKey(digest: Buffer, size: number): string {
  return digest.toString('latin1') + size;
}

interface SlotChunk {
  inode: Inode;
  k: number;
  size: number;
}

/**
 * One unit of work: chunk bytes (compressed in place by the worker), digests and compressed
 * sizes, on one SharedArrayBuffer.
 */
class Slot {
  readonly data: Buffer;
  readonly digests: Buffer;
  readonly csizes: Int32Array;
  fill = 0;
  chunks: SlotChunk[] = [];

  constructor(readonly capacity: number) {
    const sab = new SharedArrayBuffer(capacity + 32 * SLOT_MAX_CHUNKS + 4 * SLOT_MAX_CHUNKS);
    this.data = Buffer.from(sab, 0, capacity);
    this.digests = Buffer.from(sab, capacity, 32 * SLOT_MAX_CHUNKS);
    this.csizes = new Int32Array(sab, capacity + 32 * SLOT_MAX_CHUNKS, SLOT_MAX_CHUNKS);
  }

  fits(size: number): boolean {
    return this.fill + size <= this.capacity && this.chunks.length < SLOT_MAX_CHUNKS;
  }
}

/** A full slot waiting for a worker (or for this thread); `resolve` when it is processed. */
interface Backlogged {
  slot: Slot;
  sizes: number[];
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** Committed in order: a slot's chunks, or one hole chunk (all zeros, processed once per size). */
type Pending =
  | { slot: Slot; done: Promise<void> }
  | { slot: null; inode: Inode; k: number; size: number; result: Promise<ProcessedChunk> };

export interface ChunkSinkOptions {
  /** slots in the ring (default: the compressing threads plus two, within 64 MiB) */
  slots?: number;
  /**
   * Digest and compress a full slot on this thread when the pool has its next task queued
   * already: this thread is one of the compressors (one worker fewer for the same cores).
   */
  inline?: boolean;
  onProgress?: (s: SinkStats) => void;
}

export class ChunkSink {
  readonly stats: SinkStats = { files: 0, bytesIn: 0, chunks: 0, newChunks: 0, dedupChunks: 0, dedupBytes: 0, newUncompressedBytes: 0 };
  /** dedupKey -> a chunk of the parent layers or the chunk dict (this build's own are in the writer's table) */
  readonly dedup = new Map<string, ChunkRef>();
  /** this build's chunks by ci index, as first referred to (later references at the same file offset share them) */
  private readonly firstRefs: ChunkAt[] = [];
  private readonly free: Slot[] = [];
  private open: Slot | null = null;
  private readonly queue: Pending[] = [];
  private committing: Promise<void> | null = null;
  private waiter: (() => void) | null = null;
  private error: unknown = null;
  /** processed all-zero chunk per size: holes of sparse files reuse it */
  private readonly zeroChunks = new Map<number, Promise<ProcessedChunk>>();
  private readonly onProgress?: (s: SinkStats) => void;
  /** the chunk being filled by a source (reserve() .. filled()) */
  private reserved: SlotChunk | null = null;
  private readonly inline: boolean;
  /** full slots no worker has taken yet, newest first */
  private readonly backlog: Backlogged[] = [];

  constructor(
    private readonly pool: ChunkPool,
    private readonly writer: BlobWriter,
    /** blob-table slot the new blob will occupy */
    private readonly blobSlot: number,
    readonly chunkSize: number,
    private readonly compressor: CompressorName,
    private readonly digester: DigesterName,
    opts: ChunkSinkOptions = {},
  ) {
    this.onProgress = opts.onProgress;
    this.inline = opts.inline ?? false;
    const capacity = Math.max(chunkSize, SLOT_MIN_BYTES);
    // A slot per compressor (the workers and, inline, this thread), one being filled, one
    // queued: more did not build faster (bench/README.md) and each is a chunk of memory.
    const compressors = pool.threads + (this.inline ? 1 : 0);
    const n = opts.slots ?? Math.max(compressors + 1, Math.min(compressors + 2, Math.floor(RING_MAX_BYTES / capacity)));
    for (let i = 0; i < Math.max(2, n); i++) this.free.push(new Slot(capacity));
  }

  /**
   * Chunk one regular file whose bytes `read(dst, fileOffset)` copies into `dst` (exactly
   * dst.length bytes, synchronously). `isHole(fileOffset, n)`, when given, names chunks that lie
   * in a hole of a sparse file: those are not read (they share one processed zero chunk).
   */
  async addFileFrom(inode: Inode, read: (dst: Buffer, fileOffset: number) => void, isHole?: (fileOffset: number, n: number) => boolean): Promise<void> {
    const cs = this.chunkSize;
    const n = Math.ceil(inode.size / cs);
    inode.chunks = n ? new Array(n) : NO_CHUNKS;
    for (let k = 0; k < n; k++) {
      const off = k * cs;
      const size = Math.min(cs, inode.size - off);
      if (isHole?.(off, size)) {
        await this.addZero(inode, k, size);
        continue;
      }
      const dst = this.open?.fits(size) && !this.reserved ? this.reserve(inode, k, size) : await this.reserveAsync(inode, k, size);
      read(dst, off);
      this.filled();
    }
    this.stats.files++;
  }

  /**
   * Chunk one regular file's content from a stream of pieces; the body must yield exactly
   * `inode.size` bytes. Pieces are copied into the ring (`zeroView()` pieces covering a whole
   * chunk count as a hole).
   */
  async addFile(inode: Inode, body: AsyncIterable<Buffer>, where: string): Promise<void> {
    const cs = this.chunkSize;
    inode.chunks = inode.size ? new Array(Math.ceil(inode.size / cs)) : NO_CHUNKS;
    let k = 0;
    let total = 0;
    let dst: Buffer | null = null;
    let fill = 0;
    for await (const piece of body) {
      total += piece.length;
      if (total > inode.size) throw new NydusError('ERR_IO', `${where}: content is longer than its size ${inode.size}`, { path: where });
      const want = (): number => Math.min(cs, inode.size - k * cs);
      if (!dst && isZeroView(piece) && piece.length === want()) {
        await this.addZero(inode, k++, piece.length);
        continue;
      }
      let off = 0;
      while (off < piece.length) {
        if (!dst) {
          const size = want();
          dst = this.open?.fits(size) && !this.reserved ? this.reserve(inode, k, size) : await this.reserveAsync(inode, k, size);
        }
        const n = Math.min(piece.length - off, dst.length - fill);
        piece.copy(dst, fill, off, off + n);
        fill += n;
        off += n;
        if (fill === dst.length) {
          this.filled();
          dst = null;
          fill = 0;
          k++;
        }
      }
    }
    if (total !== inode.size) {
      if (dst) this.unreserve();
      throw new NydusError('ERR_IO', `${where}: expected ${inode.size} bytes of content, got ${total} (file changed while building?)`, { path: where });
    }
    this.stats.files++;
  }

  /** Room for chunk k of `inode` in the open slot (the caller checked that it fits). */
  private reserve(inode: Inode, k: number, size: number): Buffer {
    const slot = this.open!;
    const dst = slot.data.subarray(slot.fill, slot.fill + size);
    this.reserved = { inode, k, size };
    return dst;
  }

  private async reserveAsync(inode: Inode, k: number, size: number): Promise<Buffer> {
    if (this.error) throw this.error;
    if (this.reserved) throw new Error('internal: a chunk is still being filled');
    if (!this.open?.fits(size)) {
      this.submitOpen();
      // Let the workers' answers in: a worker that finished waits for its next task.
      await new Promise<void>((r) => setImmediate(r));
      if (this.error) throw this.error;
      while (!this.free.length) {
        // Rather than wait, this thread processes a full slot the workers have not taken yet.
        if (this.inline && this.backlog.length) await this.processHere(this.backlog.pop()!);
        else await new Promise<void>((r) => (this.waiter = r));
        if (this.error) throw this.error;
      }
      this.open = this.free.pop()!;
    }
    return this.reserve(inode, k, size);
  }

  /** Process a backlogged slot on this thread, then let the workers' answers in. */
  private async processHere(b: Backlogged): Promise<void> {
    try {
      processSharedChunks(b.slot, b.sizes, this.compressor, this.digester);
      b.resolve();
    } catch (e) {
      b.reject(e);
    }
    await new Promise<void>((r) => setImmediate(r));
  }

  /** The reserved chunk holds its bytes now. */
  private filled(): void {
    const c = this.reserved!;
    const slot = this.open!;
    slot.chunks.push(c);
    slot.fill += c.size;
    this.stats.bytesIn += c.size;
    this.reserved = null;
  }

  private unreserve(): void {
    this.reserved = null;
  }

  /**
   * Queue the open slot for processing: to a worker while the pool has room for its next task
   * (each worker one running, one queued), else to the backlog, which the workers take from as
   * they finish and this thread works off when it would otherwise wait (reserveAsync, drain).
   */
  private submitOpen(): void {
    const slot = this.open;
    this.open = null;
    if (!slot) return;
    if (!slot.chunks.length) {
      this.free.push(slot);
      return;
    }
    const sizes = slot.chunks.map((c) => c.size);
    let done: Promise<void>;
    if (!this.inline || this.pool.pending < 2 * this.pool.threads) {
      done = this.toPool(slot, sizes);
    } else {
      let resolve!: () => void;
      let reject!: (e: unknown) => void;
      done = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.backlog.unshift({ slot, sizes, resolve, reject });
    }
    done.catch(() => undefined); // surfaced by the commit loop
    this.push({ slot, done });
  }

  private toPool(slot: Slot, sizes: number[]): Promise<void> {
    const done = this.pool.processShared(slot, sizes, this.compressor, this.digester);
    // a worker is free for the next task: the oldest backlogged slot
    void done.then(() => this.feedPool(), () => undefined);
    return done;
  }

  private feedPool(): void {
    while (this.backlog.length && this.pool.pending < 2 * this.pool.threads) {
      const b = this.backlog.pop()!;
      this.toPool(b.slot, b.sizes).then(b.resolve, b.reject);
    }
  }

  private async addZero(inode: Inode, k: number, size: number): Promise<void> {
    if (this.error) throw this.error;
    // Chunks are committed in submission order: what is in the open slot goes first.
    this.submitOpen();
    let result = this.zeroChunks.get(size);
    if (!result) {
      result = this.pool.process(Buffer.alloc(size), this.compressor, this.digester, { transfer: true });
      result.catch(() => undefined);
      this.zeroChunks.set(size, result);
    }
    this.stats.bytesIn += size;
    this.push({ slot: null, inode, k, size, result });
    // Holes take no slot; still let the commit loop run now and then.
    if (this.queue.length > 64) await this.committing;
  }

  private push(p: Pending): void {
    this.queue.push(p);
    if (!this.committing) this.committing = this.commitLoop();
  }

  private async commitLoop(): Promise<void> {
    try {
      while (this.queue.length) {
        const p = this.queue[0];
        try {
          if (p.slot) {
            await p.done;
            if (!this.error) this.commitSlot(p.slot);
          } else {
            const r = await p.result;
            if (!this.error) this.commitOne(p.inode, p.k, p.size, r.digest, r.data, r.compressed);
          }
        } catch (e) {
          this.error ??= e;
        }
        this.queue.shift();
        if (p.slot) {
          p.slot.fill = 0;
          p.slot.chunks = [];
          this.free.push(p.slot);
          const w = this.waiter;
          this.waiter = null;
          w?.();
        }
      }
    } finally {
      this.committing = null;
    }
  }

  private commitSlot(slot: Slot): void {
    let off = 0;
    const { chunks, csizes, digests } = slot;
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i];
      const csize = csizes[i];
      if (!this.commitHit(digests, 32 * i, c.inode, c.k, c.size)) {
        // a view of the slot only for a chunk that goes into the blob
        const data = slot.data.subarray(off, off + (csize >= 0 ? csize : c.size));
        this.commitNew(digests, 32 * i, c.inode, c.k, c.size, data, csize >= 0);
      }
      off += c.size;
    }
    // The writer holds views of this slot until it has written them.
    this.writer.flush();
  }

  private commitOne(inode: Inode, k: number, size: number, digest: Buffer, data: Buffer, compressed: boolean): void {
    if (!this.commitHit(digest, 0, inode, k, size)) this.commitNew(digest, 0, inode, k, size, data, compressed);
  }

  /**
   * Is chunk k of `inode` (digest at src[off, +32)) one the image has already: from the parent
   * or chunk dict (`dedup`), or written by this build (the writer's table)?
   */
  private commitHit(src: Buffer, off: number, inode: Inode, k: number, size: number): boolean {
    const fileOffset = k * this.chunkSize;
    let ref: ChunkRef | undefined;
    if (this.dedup.size) {
      const hit = this.dedup.get(src.toString('latin1', off, off + 32) + size);
      if (hit) ref = hit.fileOffset === fileOffset ? hit : { ...hit, fileOffset };
    }
    if (!ref) {
      const ci = this.writer.table.find(src, off, size);
      if (ci < 0) return false;
      const first = this.firstRefs[ci];
      ref = first.fileOffset === fileOffset ? first : new ChunkAt(this.writer.table, ci, this.blobSlot, fileOffset);
    }
    this.stats.chunks++;
    this.stats.dedupChunks++;
    this.stats.dedupBytes += size;
    inode.chunks[k] = ref;
    if (this.onProgress && (this.stats.chunks & 63) === 0) this.onProgress(this.stats);
    return true;
  }

  private commitNew(src: Buffer, off: number, inode: Inode, k: number, size: number, data: Buffer, compressed: boolean): void {
    const fileOffset = k * this.chunkSize;
    this.stats.chunks++;
    const ci = this.writer.append(data, compressed, size, src, off);
    const ref = new ChunkAt(this.writer.table, ci, this.blobSlot, fileOffset);
    this.firstRefs[ci] = ref;
    this.stats.newChunks++;
    this.stats.newUncompressedBytes += size;
    inode.chunks[k] = ref;
    if (this.onProgress && (this.stats.chunks & 63) === 0) this.onProgress(this.stats);
  }

  /** Stop committing (after a failure elsewhere) and wait for the commit loop to go idle. */
  async cancel(reason: unknown): Promise<void> {
    this.error ??= reason;
    for (const b of this.backlog.splice(0)) b.reject(reason);
    this.reserved = null;
    if (this.open) {
      this.free.push(this.open);
      this.open = null;
    }
    while (this.committing) await this.committing.catch(() => undefined);
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /**
   * After drain(): give back the ring and the dedup table (the rest of the build lays out the
   * bootstrap and needs neither; a 10× tree's peak memory is at that point).
   */
  release(): void {
    if (this.committing || this.queue.length) throw new Error('internal: ChunkSink.release() before drain()');
    this.free.length = 0;
    this.open = null;
    this.dedup.clear();
    this.zeroChunks.clear();
    this.firstRefs.length = 0;
  }

  /** Wait until every submitted chunk is committed; rethrows the first failure. */
  async drain(): Promise<void> {
    if (!this.error) this.submitOpen();
    while (this.backlog.length) {
      // newest here, oldest to the workers as they finish (feedPool)
      const b = this.backlog.shift()!;
      if (this.error) b.reject(this.error);
      else await this.processHere(b);
    }
    while (this.committing) await this.committing;
    if (this.error) throw this.error;
    this.onProgress?.(this.stats);
  }
}
