/**
 * Local blob files: random-access reads, chunk decoding with digest verification, and the
 * blob's uncompressed address space (what the fscache cache file / an EROFS extra device holds).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlobChunk, BlobEntry } from '../format/layout';
import { COMPRESSOR_BY_ID, DIGESTER_BY_ID, CompressorName, DigesterName } from '../format/constants';
import { decompressChunk } from '../codec/compress';
import { digest } from '../codec/digest';
import { BadBlobError, DigestMismatchError, NydusError } from '../errors';
import { ReadAt } from './blob-meta';

export class LocalBlobFile {
  private fd: number;
  readonly size: number;
  constructor(readonly path: string) {
    try {
      this.fd = fs.openSync(path, 'r');
    } catch (e) {
      throw new NydusError('ERR_NOT_FOUND', `blob file ${path}: ${(e as Error).message}`, { path });
    }
    this.size = fs.fstatSync(this.fd).size;
  }
  readAt: ReadAt = async (offset, length) => this.readAtSync(offset, length);
  readAtSync(offset: number, length: number): Buffer {
    if (offset < 0 || offset + length > this.size) throw new BadBlobError(`blob file ${this.path}: range ${offset}+${length} is beyond its ${this.size} bytes`, { path: this.path, offset, length });
    const b = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const n = fs.readSync(this.fd, b, got, length - got, offset + got);
      if (n === 0) throw new BadBlobError(`blob file ${this.path}: short read at ${offset + got}`);
      got += n;
    }
    return b;
  }
  close(): void {
    fs.closeSync(this.fd);
  }
}

/** Locate a blob in a blob directory (`<dir>/<blob id>`). */
export function blobPath(blobDir: string, blobId: string): string {
  return path.join(blobDir, blobId);
}

export function blobCodecs(entry: BlobEntry): { compressor: CompressorName; digester: DigesterName } {
  const compressor = COMPRESSOR_BY_ID[entry.compressionAlgo];
  const digester = DIGESTER_BY_ID[entry.digestAlgo];
  if (!compressor || !digester) throw new BadBlobError(`blob ${entry.blobId}: unknown compressor ${entry.compressionAlgo} or digester ${entry.digestAlgo}`);
  return { compressor, digester };
}

/**
 * Decode one chunk from its compressed bytes; with `expected`, verify its digest (a mismatch
 * throws DigestMismatchError naming the blob and chunk index).
 */
export function decodeChunk(entry: BlobEntry, c: BlobChunk, raw: Buffer, expected?: Buffer): Buffer {
  const { compressor, digester } = blobCodecs(entry);
  let data: Buffer;
  try {
    data = decompressChunk(compressor, raw, c.compressed, c.uncompressedSize);
  } catch (e) {
    throw new BadBlobError(`blob ${entry.blobId} chunk ${c.index}: cannot decompress (${(e as Error).message})`, { blobId: entry.blobId, chunk: c.index });
  }
  if (expected) {
    const got = digest(digester, data);
    if (!got.equals(expected)) {
      throw new DigestMismatchError(`blob ${entry.blobId} chunk ${c.index}: digest ${got.toString('hex')} != expected ${expected.toString('hex')}`, { blobId: entry.blobId, chunk: c.index });
    }
  }
  return data;
}
