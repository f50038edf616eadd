/**
 * The chunks of a blob being written, one row per ci index in typed arrays, with an index by
 * digest for deduplication: a build's chunk metadata costs ~120 bytes per chunk this way, not
 * the ~450 of an object, a digest Buffer, a map key and a ci object each (issue #11: memory
 * flat as trees grow). Rows are read through ChunkAt, a ChunkRef whose fields are getters.
 */
import type { BlobChunk } from '../format/layout';
import type { ChunkRef } from '../tree/node';

export class ChunkTable {
  count = 0;
  private cap = 0;
  /** digests back to back, 32 bytes a row (the blob TOC's digest array) */
  digests = Buffer.alloc(0);
  private cOff = new Float64Array(0);
  private cSize = new Uint32Array(0);
  private uOff = new Float64Array(0);
  private uSize = new Uint32Array(0);
  private comp = new Uint8Array(0);
  /** open addressing on the digest's first 4 bytes (digests are uniform); -1: empty */
  private index = new Int32Array(0);

  constructor(initialRows = 1024) {
    this.resize(initialRows);
  }

  /** Add a row; `digest` is read from src[off, off + 32). Returns its ci index. */
  add(c: Omit<BlobChunk, 'index'>, src: Buffer, off = 0): number {
    const i = this.count;
    if (i === this.cap) this.resize(this.cap * 2);
    src.copy(this.digests, i * 32, off, off + 32);
    this.cOff[i] = c.compressedOffset;
    this.cSize[i] = c.compressedSize;
    this.uOff[i] = c.uncompressedOffset;
    this.uSize[i] = c.uncompressedSize;
    this.comp[i] = c.compressed ? 1 : 0;
    this.count++;
    this.insert(i);
    return i;
  }

  /** The row of the chunk with digest src[off, off + 32) and this uncompressed size, or -1. */
  find(src: Buffer, off: number, size: number): number {
    const mask = this.index.length - 1;
    for (let h = src.readUInt32LE(off) & mask; ; h = (h + 1) & mask) {
      const i = this.index[h];
      if (i < 0) return -1;
      if (this.uSize[i] === size && src.compare(this.digests, i * 32, i * 32 + 32, off, off + 32) === 0) return i;
    }
  }

  row(i: number): BlobChunk {
    return {
      index: i, compressedOffset: this.cOff[i], compressedSize: this.cSize[i],
      uncompressedOffset: this.uOff[i], uncompressedSize: this.uSize[i], compressed: this.comp[i] === 1,
    };
  }

  digest(i: number): Buffer {
    return this.digests.subarray(i * 32, i * 32 + 32);
  }
  compressedOffset(i: number): number {
    return this.cOff[i];
  }
  compressedSize(i: number): number {
    return this.cSize[i];
  }
  uncompressedOffset(i: number): number {
    return this.uOff[i];
  }
  uncompressedSize(i: number): number {
    return this.uSize[i];
  }
  compressed(i: number): boolean {
    return this.comp[i] === 1;
  }

  private insert(i: number): void {
    const mask = this.index.length - 1;
    let h = this.digests.readUInt32LE(i * 32) & mask;
    while (this.index[h] >= 0) h = (h + 1) & mask;
    this.index[h] = i;
  }

  private resize(rows: number): void {
    const grow = <T extends Float64Array | Uint32Array | Uint8Array>(a: T, make: (n: number) => T): T => {
      const b = make(rows);
      b.set(a.subarray(0, this.count));
      return b;
    };
    const d = Buffer.alloc(rows * 32);
    this.digests.copy(d, 0, 0, this.count * 32);
    this.digests = d;
    this.cOff = grow(this.cOff, (n) => new Float64Array(n));
    this.cSize = grow(this.cSize, (n) => new Uint32Array(n));
    this.uOff = grow(this.uOff, (n) => new Float64Array(n));
    this.uSize = grow(this.uSize, (n) => new Uint32Array(n));
    this.comp = grow(this.comp, (n) => new Uint8Array(n));
    this.cap = rows;
    // at most half full
    this.index = new Int32Array(rows * 2).fill(-1);
    for (let i = 0; i < this.count; i++) this.insert(i);
  }
}

/** Chunk `ciIndex` of a table, as the tree refers to it (at `fileOffset` of a file). */
export class ChunkAt implements ChunkRef {
  constructor(private readonly t: ChunkTable, readonly ciIndex: number, readonly blobIndex: number, readonly fileOffset: number) {}
  get digest(): Buffer {
    return this.t.digest(this.ciIndex);
  }
  get compressedOffset(): number {
    return this.t.compressedOffset(this.ciIndex);
  }
  get compressedSize(): number {
    return this.t.compressedSize(this.ciIndex);
  }
  get uncompressedOffset(): number {
    return this.t.uncompressedOffset(this.ciIndex);
  }
  get uncompressedSize(): number {
    return this.t.uncompressedSize(this.ciIndex);
  }
  get compressed(): boolean {
    return this.t.compressed(this.ciIndex);
  }
}

/** A plain-object copy of any ChunkRef (ChunkAt's fields are getters: spreading one loses them). */
export function plainChunkRef(c: ChunkRef, over: Partial<ChunkRef> = {}): ChunkRef {
  return {
    blobIndex: c.blobIndex, ciIndex: c.ciIndex, digest: c.digest, compressedOffset: c.compressedOffset,
    compressedSize: c.compressedSize, uncompressedOffset: c.uncompressedOffset, uncompressedSize: c.uncompressedSize,
    compressed: c.compressed, fileOffset: c.fileOffset, ...over,
  };
}
