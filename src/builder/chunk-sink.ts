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
import { compressSlack } from '../codec/compress';
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

/** Digest and size key of the dedup map: the raw digest bytes as a one-byte string. */
export function dedupKey(digest: Uint8Array, size: number): string {
  return Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength).toString('latin1') + size;
}

interface SlotChunk {
  inode: Inode;
  k: number;
  size: number;
}

/** One unit of work: input, output, digests and compressed sizes on one SharedArrayBuffer. */
class Slot {
  readonly input: Buffer;
  readonly output: Buffer;
  readonly digests: Buffer;
  readonly csizes: Int32Array;
  fill = 0;
  chunks: SlotChunk[] = [];

  constructor(readonly capacity: number, slack: number) {
    const outCap = capacity + slack;
    const sab = new SharedArrayBuffer(capacity + outCap + 32 * SLOT_MAX_CHUNKS + 4 * SLOT_MAX_CHUNKS);
    this.input = Buffer.from(sab, 0, capacity);
    this.output = Buffer.from(sab, capacity, outCap);
    this.digests = Buffer.from(sab, capacity + outCap, 32 * SLOT_MAX_CHUNKS);
    this.csizes = new Int32Array(sab, capacity + outCap + 32 * SLOT_MAX_CHUNKS, SLOT_MAX_CHUNKS);
  }

  fits(size: number): boolean {
    return this.fill + size <= this.capacity && this.chunks.length < SLOT_MAX_CHUNKS;
  }
}

/** Committed in order: a slot's chunks, or one hole chunk (all zeros, processed once per size). */
type Pending =
  | { slot: Slot; done: Promise<void> }
  | { slot: null; inode: Inode; k: number; size: number; result: Promise<ProcessedChunk> };

export interface ChunkSinkOptions {
  /** slots in the ring (default: twice the pool's threads plus two, within 64 MiB) */
  slots?: number;
  onProgress?: (s: SinkStats) => void;
}

export class ChunkSink {
  readonly stats: SinkStats = { files: 0, bytesIn: 0, chunks: 0, newChunks: 0, dedupChunks: 0, dedupBytes: 0, newUncompressedBytes: 0 };
  /** digest:size -> an existing chunk (parent layers, chunk dict, this build) */
  readonly dedup = new Map<string, ChunkRef>();
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
    const capacity = Math.max(chunkSize, SLOT_MIN_BYTES);
    const slack = Math.max(compressSlack(compressor, capacity), 0);
    const perSlot = 2 * capacity + slack;
    const n = opts.slots ?? Math.max(pool.threads + 1, Math.min(2 * pool.threads + 2, Math.floor(RING_MAX_BYTES / perSlot)));
    for (let i = 0; i < Math.max(2, n); i++) this.free.push(new Slot(capacity, slack));
  }

  /**
   * Chunk one regular file whose bytes `read(dst, fileOffset)` copies into `dst` (exactly
   * dst.length bytes, synchronously). `isHole(fileOffset, n)`, when given, names chunks that lie
   * in a hole of a sparse file: those are not read (they share one processed zero chunk).
   */
  async addFileFrom(inode: Inode, read: (dst: Buffer, fileOffset: number) => void, isHole?: (fileOffset: number, n: number) => boolean): Promise<void> {
    const cs = this.chunkSize;
    const n = Math.ceil(inode.size / cs);
    inode.chunks = new Array(n);
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
    inode.chunks = new Array(Math.ceil(inode.size / cs));
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
    const dst = slot.input.subarray(slot.fill, slot.fill + size);
    this.reserved = { inode, k, size };
    return dst;
  }

  private async reserveAsync(inode: Inode, k: number, size: number): Promise<Buffer> {
    if (this.error) throw this.error;
    if (this.reserved) throw new Error('internal: a chunk is still being filled');
    if (!this.open?.fits(size)) {
      this.submitOpen();
      while (!this.free.length) {
        await new Promise<void>((r) => (this.waiter = r));
        if (this.error) throw this.error;
      }
      this.open = this.free.pop()!;
    }
    return this.reserve(inode, k, size);
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

  private submitOpen(): void {
    const slot = this.open;
    this.open = null;
    if (!slot) return;
    if (!slot.chunks.length) {
      this.free.push(slot);
      return;
    }
    const done = this.pool.processShared(slot, slot.chunks.map((c) => c.size), this.compressor, this.digester);
    done.catch(() => undefined); // surfaced by the commit loop
    this.push({ slot, done });
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
    let inOff = 0;
    let outOff = 0;
    slot.chunks.forEach((c, i) => {
      const digest = slot.digests.subarray(32 * i, 32 * i + 32);
      const csize = slot.csizes[i];
      let data: Buffer;
      if (csize >= 0) {
        data = slot.output.subarray(outOff, outOff + csize);
        outOff += csize;
      } else {
        data = slot.input.subarray(inOff, inOff + c.size);
      }
      inOff += c.size;
      this.commitOne(c.inode, c.k, c.size, digest, data, csize >= 0);
    });
    // The writer holds views of this slot until it has written them.
    this.writer.flush();
  }

  private commitOne(inode: Inode, k: number, size: number, digest: Buffer, data: Buffer, compressed: boolean): void {
    const key = dedupKey(digest, size);
    const fileOffset = k * this.chunkSize;
    this.stats.chunks++;
    const hit = this.dedup.get(key);
    if (hit) {
      this.stats.dedupChunks++;
      this.stats.dedupBytes += size;
      inode.chunks[k] = hit.fileOffset === fileOffset ? hit : { ...hit, fileOffset };
    } else {
      const own = Buffer.from(digest); // the slot's copy is overwritten by the next task
      const c = this.writer.addChunk(data, compressed, size, own);
      const ref: ChunkRef = {
        blobIndex: this.blobSlot, ciIndex: c.index, digest: own, compressedOffset: c.compressedOffset,
        compressedSize: c.compressedSize, uncompressedOffset: c.uncompressedOffset,
        uncompressedSize: c.uncompressedSize, compressed: c.compressed, fileOffset,
      };
      this.dedup.set(key, ref);
      this.stats.newChunks++;
      this.stats.newUncompressedBytes += size;
      inode.chunks[k] = ref;
    }
    if (this.onProgress && (this.stats.chunks & 63) === 0) this.onProgress(this.stats);
  }

  /** Stop committing (after a failure elsewhere) and wait for the commit loop to go idle. */
  async cancel(reason: unknown): Promise<void> {
    this.error ??= reason;
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

  /** Wait until every submitted chunk is committed; rethrows the first failure. */
  async drain(): Promise<void> {
    if (!this.error) this.submitOpen();
    while (this.committing) await this.committing;
    if (this.error) throw this.error;
    this.onProgress?.(this.stats);
  }
}
