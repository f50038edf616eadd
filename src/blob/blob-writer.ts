/**
 * Writes one RAFS v6 data blob (spec rafs-v6.md §2.3): compressed chunks back to back, then the
 * ci array (v1, uncompressed) and the 4 KiB CCT header; with the `blob-toc` feature also the
 * reverse-tar section headers, the chunk digest array and the TOC. The file is written under a
 * temporary name in the blob directory and renamed to its sha256 (the blob id) only when complete.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import {
  BlobFeature, BLOB_CI_V1_SIZE, COMPRESSOR_IDS, DIGESTER_IDS, CompressorName, DigesterName,
  TOC_NAMES, TocFlag, alignUp, EROFS_BLOCK_SIZE,
} from '../format/constants';
import {
  BlobChunk, BlobEntry, encodeCiV1, encodeCctHeader, encodeSectionTarHeader, encodeTocEntry,
} from '../format/layout';
import { NydusError } from '../errors';
import { ChunkTable } from './chunk-table';

export interface BlobWriterOptions {
  dir: string;
  compressor: CompressorName;
  digester: DigesterName;
  chunkSize: number;
  /** write blob.digest + TOC with tar headers (nydus `--features blob-toc`) */
  toc: boolean;
}

export interface FinishedBlob {
  blobId: string;
  path: string;
  entry: BlobEntry;
}

/** Start writeback of what is written every this many bytes (see `write`). */
const SYNC_EVERY = 32 << 20;

export class BlobWriter {
  private fd: number;
  private readonly tmpPath: string;
  private readonly hash = crypto.createHash('sha256');
  private pos = 0; // bytes written to the file so far, pending ones included
  private uncompressedEnd = 0;
  /** the chunks added so far (their ci rows and digests, and an index by digest) */
  readonly table = new ChunkTable();
  /** chunk bytes added but not yet written (views the caller keeps valid until flush()) */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private written = 0;
  private syncedTo = 0;
  private syncing: Promise<void> | null = null;
  private syncError: Error | null = null;
  private closed = false;
  private sealed: FinishedBlob | null = null;

  constructor(readonly opts: BlobWriterOptions) {
    fs.mkdirSync(opts.dir, { recursive: true });
    this.tmpPath = path.join(opts.dir, `.blob-${process.pid}-${crypto.randomBytes(6).toString('hex')}.tmp`);
    this.fd = fs.openSync(this.tmpPath, 'wx', 0o644);
  }

  get chunkCount(): number {
    return this.table.count;
  }

  /** The chunks added so far, as objects (made on each call: the table holds rows, not objects). */
  get chunks(): BlobChunk[] {
    return Array.from({ length: this.table.count }, (_, i) => this.table.row(i));
  }
  get compressedBytes(): number {
    return this.pos;
  }

  private write(buf: Buffer): void {
    this.pending.push(buf);
    this.pendingBytes += buf.length;
    this.pos += buf.length;
    this.flush();
  }

  /**
   * Write what addChunk() queued (one writev per call) and hash it. While the build goes on,
   * every SYNC_EVERY bytes an fdatasync runs on the libuv pool, so the disk writes the blob
   * while the workers compress and the final fsync has little left to do.
   */
  flush(): void {
    const bufs = this.pending;
    if (!bufs.length) return;
    this.pending = [];
    for (const b of bufs) this.hash.update(b);
    let at = this.written;
    for (let i = 0; i < bufs.length; ) {
      // writev takes at most IOV_MAX (1024) pieces; a short write continues where it stopped
      const batch = i === 0 && bufs.length <= 1024 ? bufs : bufs.slice(i, i + 1024);
      let n = fs.writevSync(this.fd, batch, at);
      at += n;
      while (i < bufs.length && n >= bufs[i].length) n -= bufs[i++].length;
      if (n > 0) bufs[i] = bufs[i].subarray(n);
    }
    this.written = at;
    this.pendingBytes = 0;
    if (this.written - this.syncedTo >= SYNC_EVERY && !this.syncing && !this.closed) this.startSync();
  }

  private startSync(): void {
    const to = this.written;
    const p = new Promise<void>((resolve) => {
      fs.fdatasync(this.fd, (err) => {
        if (err) this.syncError ??= err;
        else this.syncedTo = to;
        resolve();
      });
    });
    this.syncing = p;
    void p.then(() => {
      if (this.syncing === p) this.syncing = null;
    });
  }

  /**
   * Append one chunk (already compressed or stored raw); returns its ci entry. `data` is
   * written by the next flush() (the sink calls it once per slot), so it must stay unchanged
   * until then.
   */
  addChunk(data: Buffer, compressed: boolean, uncompressedSize: number, digest: Buffer): BlobChunk {
    return this.table.row(this.append(data, compressed, uncompressedSize, digest, 0));
  }

  /** addChunk() with the digest at digestSrc[digestOff, +32), returning only the ci index. */
  append(data: Buffer, compressed: boolean, uncompressedSize: number, digestSrc: Buffer, digestOff: number): number {
    if (this.table.count >= 1 << 24) throw new NydusError('ERR_UNSUPPORTED', 'a blob can hold at most 2^24 chunks');
    const ci = this.table.add({
      compressedOffset: this.pos, compressedSize: data.length, uncompressedOffset: this.uncompressedEnd, uncompressedSize, compressed,
    }, digestSrc, digestOff);
    this.pending.push(data);
    this.pendingBytes += data.length;
    this.pos += data.length;
    if (this.pendingBytes >= 4 << 20) this.flush();
    // v6 aligned chunks: each chunk starts on a 4 KiB boundary of the uncompressed space.
    this.uncompressedEnd = alignUp(this.uncompressedEnd + uncompressedSize, EROFS_BLOCK_SIZE);
    return ci;
  }

  /**
   * Write the blob's trailer (ci array, header, TOC) and start its fsync on the libuv pool;
   * returns the blob's id and table entry, or undefined (temp file removed) when it holds no
   * chunk. The blob gets its final name in persist(), so the caller can lay out the bootstrap
   * while the disk catches up.
   */
  seal(): FinishedBlob | undefined {
    const sealed = this.writeTrailer();
    if (!sealed) return undefined;
    const previous = this.syncing;
    const fd = this.fd;
    this.syncing = (async () => {
      await previous;
      await new Promise<void>((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
    })();
    this.syncing.catch(() => undefined); // persist() reports it
    return sealed;
  }

  private writeTrailer(): FinishedBlob | undefined {
    if (this.closed) throw new Error('blob writer already finished');
    this.flush();
    this.closed = true;
    const n = this.table.count;
    if (n === 0) {
      this.closeAndRemove();
      return undefined;
    }
    const toc = this.opts.toc;
    const dataLen = this.pos;
    const tocEntries: Buffer[] = [];
    if (toc) {
      const hdr = encodeSectionTarHeader(TOC_NAMES.blob, dataLen);
      // The image.blob TOC digest covers the chunk data plus its tar header (a nydus quirk), so
      // hash a snapshot of the running digest with the header appended.
      const dataDigest = this.hash.copy().update(hdr).digest();
      this.write(hdr);
      tocEntries.push(encodeTocEntry({ flags: TocFlag.NONE, name: TOC_NAMES.blob, digest: dataDigest, compressedOffset: 0, compressedSize: dataLen, uncompressedSize: dataLen }));
    }
    let features = BlobFeature.ALIGNED | BlobFeature.CAP_TAR_TOC;
    if (toc) features |= BlobFeature.INLINED_CHUNK_DIGEST | BlobFeature.HAS_TAR_HEADER | BlobFeature.HAS_TOC;
    const ci = Buffer.alloc(n * BLOB_CI_V1_SIZE);
    for (let i = 0; i < n; i++) encodeCiV1(ci, i * BLOB_CI_V1_SIZE, this.table.row(i));
    const ciOffset = this.pos;
    const header = encodeCctHeader({
      features, ciCompressor: 0, ciEntries: n, ciOffset, ciCompressedSize: ci.length,
      ciUncompressedSize: ci.length, ciZranOffset: 0, ciZranSize: 0, ciZranCount: 0,
    });
    this.write(ci);
    this.write(header);
    if (toc) {
      this.write(encodeSectionTarHeader(TOC_NAMES.meta, ci.length + header.length));
      tocEntries.push(encodeTocEntry({ flags: TocFlag.NONE, name: TOC_NAMES.meta, digest: sha256(ci), compressedOffset: ciOffset, compressedSize: ci.length, uncompressedSize: ci.length }));
      tocEntries.push(encodeTocEntry({ flags: TocFlag.NONE, name: TOC_NAMES.metaHeader, digest: sha256(header), compressedOffset: ciOffset + ci.length, compressedSize: header.length, uncompressedSize: header.length }));
      const digestArray = this.table.digests.subarray(0, n * 32);
      const digestOffset = this.pos;
      this.write(digestArray);
      this.write(encodeSectionTarHeader(TOC_NAMES.digest, digestArray.length));
      tocEntries.push(encodeTocEntry({ flags: TocFlag.NONE, name: TOC_NAMES.digest, digest: sha256(digestArray), compressedOffset: digestOffset, compressedSize: digestArray.length, uncompressedSize: digestArray.length }));
    }
    let tocSize = 0;
    let tocDigest: Buffer = Buffer.alloc(32);
    if (toc) {
      const entries = Buffer.concat(tocEntries);
      const hdr = encodeSectionTarHeader(TOC_NAMES.toc, entries.length);
      this.write(entries);
      this.write(hdr);
      tocSize = entries.length + hdr.length;
      tocDigest = sha256(Buffer.concat([entries, hdr]));
    }
    const blobId = this.hash.digest('hex');
    const entry: BlobEntry = {
      blobId,
      blobIndex: 0,
      chunkSize: this.opts.chunkSize,
      chunkCount: n,
      compressionAlgo: COMPRESSOR_IDS[this.opts.compressor],
      digestAlgo: DIGESTER_IDS[this.opts.digester],
      features,
      compressedSize: this.pos,
      uncompressedSize: this.uncompressedEnd,
      blobTocSize: tocSize,
      ciCompressor: 0,
      ciOffset,
      ciCompressedSize: ci.length,
      ciUncompressedSize: ci.length,
      blobTocDigest: tocDigest,
      blobMetaDigest: Buffer.alloc(32),
      blobMetaSize: 0,
      cipherIv: Buffer.alloc(8),
      cipherAlgo: 0,
    };
    this.flush();
    this.sealed = { blobId, path: path.join(this.opts.dir, blobId), entry };
    return this.sealed;
  }

  /** Wait for the sealed blob to be on disk, then give it its final name (the blob id). */
  async persist(): Promise<FinishedBlob> {
    const sealed = this.sealed;
    if (!sealed) throw new Error('blob writer: persist() before seal()');
    try {
      await this.syncing;
      this.syncing = null;
      if (this.syncError) throw this.syncError;
    } catch (e) {
      this.syncing = null;
      throw this.failedOnDisk(e);
    }
    return this.moveToFinalName(sealed);
  }

  /**
   * Finish in one step, synchronously: trailer, fsync, final name. Returns undefined (and
   * removes the temp file) when the blob holds no chunk.
   */
  finish(): FinishedBlob | undefined {
    const sealed = this.writeTrailer();
    if (!sealed) return undefined;
    try {
      fs.fsyncSync(this.fd);
      if (this.syncError) throw this.syncError;
    } catch (e) {
      throw this.failedOnDisk(e);
    }
    return this.moveToFinalName(sealed);
  }

  /** The data did not reach the disk: drop the temp file; the error names it. */
  private failedOnDisk(e: unknown): NydusError {
    this.closeAndRemove();
    return new NydusError('ERR_IO', `blob ${this.tmpPath}: cannot write to disk: ${(e as Error).message}`, { path: this.tmpPath });
  }

  /** The synced blob takes its final name (the blob id). */
  private moveToFinalName(sealed: FinishedBlob): FinishedBlob {
    this.closeFd();
    fs.renameSync(this.tmpPath, sealed.path);
    this.sealed = null;
    return sealed;
  }

  /** Drop a half-written or sealed, not yet persisted blob (error paths). */
  abort(): void {
    if (this.closed && !this.sealed) return;
    this.closed = true;
    this.sealed = null;
    this.closeAndRemove();
  }

  private closeAndRemove(): void {
    fs.rmSync(this.tmpPath, { force: true });
    this.closeFd();
  }

  private closeFd(): void {
    const fd = this.fd;
    this.fd = -1;
    if (fd < 0) return;
    // An fsync may still run on the fd in the libuv pool: close it once that is over.
    const close = (): void => {
      try { fs.closeSync(fd); } catch { /* already closed */ }
    };
    if (this.syncing) void this.syncing.then(close, close);
    else close();
  }
}


function sha256(b: Buffer): Buffer {
  return crypto.createHash('sha256').update(b).digest();
}
