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
  chunks: BlobChunk[];
}

export class BlobWriter {
  private fd: number;
  private readonly tmpPath: string;
  private readonly hash = crypto.createHash('sha256');
  private pos = 0; // bytes written to the file so far
  private uncompressedEnd = 0;
  readonly chunks: BlobChunk[] = [];
  private readonly digests: Buffer[] = [];
  private closed = false;

  constructor(readonly opts: BlobWriterOptions) {
    fs.mkdirSync(opts.dir, { recursive: true });
    this.tmpPath = path.join(opts.dir, `.blob-${process.pid}-${crypto.randomBytes(6).toString('hex')}.tmp`);
    this.fd = fs.openSync(this.tmpPath, 'wx', 0o644);
  }

  get chunkCount(): number {
    return this.chunks.length;
  }
  get compressedBytes(): number {
    return this.pos;
  }

  private write(buf: Buffer): void {
    let off = 0;
    while (off < buf.length) off += fs.writeSync(this.fd, buf, off, buf.length - off, this.pos + off);
    this.hash.update(buf);
    this.pos += buf.length;
  }

  /** Append one chunk (already compressed or stored raw); returns its ci entry. */
  addChunk(data: Buffer, compressed: boolean, uncompressedSize: number, digest: Buffer): BlobChunk {
    if (this.chunks.length >= 1 << 24) throw new NydusError('ERR_UNSUPPORTED', 'a blob can hold at most 2^24 chunks');
    const c: BlobChunk = {
      index: this.chunks.length,
      compressedOffset: this.pos,
      compressedSize: data.length,
      uncompressedOffset: this.uncompressedEnd,
      uncompressedSize,
      compressed,
    };
    this.write(data);
    // v6 aligned chunks: each chunk starts on a 4 KiB boundary of the uncompressed space.
    this.uncompressedEnd = alignUp(this.uncompressedEnd + uncompressedSize, EROFS_BLOCK_SIZE);
    this.chunks.push(c);
    this.digests.push(digest);
    return c;
  }

  /** Finish the blob; returns undefined (and removes the temp file) when it holds no chunk. */
  finish(): FinishedBlob | undefined {
    if (this.closed) throw new Error('blob writer already finished');
    this.closed = true;
    const n = this.chunks.length;
    if (n === 0) {
      fs.closeSync(this.fd);
      fs.rmSync(this.tmpPath, { force: true });
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
    this.chunks.forEach((c, i) => encodeCiV1(ci, i * BLOB_CI_V1_SIZE, c));
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
      const digestArray = Buffer.concat(this.digests);
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
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    const blobId = this.hash.digest('hex');
    const finalPath = path.join(this.opts.dir, blobId);
    fs.renameSync(this.tmpPath, finalPath);
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
    return { blobId, path: finalPath, entry, chunks: this.chunks };
  }

  /** Drop a half-written blob (error paths). */
  abort(): void {
    if (this.closed) return;
    this.closed = true;
    try { fs.closeSync(this.fd); } catch { /* already closed */ }
    fs.rmSync(this.tmpPath, { force: true });
  }
}

function sha256(b: Buffer): Buffer {
  return crypto.createHash('sha256').update(b).digest();
}
