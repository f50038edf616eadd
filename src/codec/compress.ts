/**
 * Chunk compression for the compressors nydus blobs use. Everything here is synchronous and
 * keeps per-thread native contexts, so it is safe to call from worker threads (see
 * chunk-pool.ts for the parallel hot path).
 *
 *   none       identity
 *   lz4_block  raw LZ4 block, no frame or size prefix (./lz4.ts)
 *   zstd       one zstd frame, level 3, content size in the header (zstd-napi)
 *   gzip       decompression only (stargz-style blobs); compression is ERR_UNSUPPORTED
 */
import * as zlib from 'node:zlib';
import { BadBlobError, NydusError, invalidArgument } from '../errors';
import type { CompressorName } from '../format/constants';
import { lz4BlockCompress, lz4BlockDecompress } from './lz4';

// zstd-napi's low-level binding: lets us compress into / decompress into caller-sized buffers,
// which is what bounds decompression output for untrusted input.
import zstdBinding = require('zstd-napi/binding');

export const ZSTD_LEVEL = 3;

let cctx: zstdBinding.CCtx | undefined;
let dctx: zstdBinding.DCtx | undefined;
let zstdScratch: Buffer = Buffer.allocUnsafeSlow(0);

function exact(buf: Buffer, len: number): Buffer {
  const out = Buffer.allocUnsafeSlow(len);
  buf.copy(out, 0, 0, len);
  return out;
}

function zstdCompress(data: Buffer): Buffer {
  cctx ??= new zstdBinding.CCtx();
  const bound = zstdBinding.compressBound(data.length);
  if (zstdScratch.length < bound) zstdScratch = Buffer.allocUnsafeSlow(Math.max(bound, 64 * 1024));
  const n = cctx.compress(zstdScratch, data, ZSTD_LEVEL);
  return exact(zstdScratch, n);
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function zstdDecompress(data: Buffer, size: number): Buffer {
  dctx ??= new zstdBinding.DCtx();
  // One spare byte so that "too much output" is distinguishable from "exactly right".
  const dst = Buffer.allocUnsafeSlow(size + 1);
  let n: number;
  try {
    n = dctx.decompress(dst, data);
  } catch (err) {
    // The context may be left mid-frame; start fresh next time.
    dctx = undefined;
    throw new BadBlobError(`zstd: cannot decompress ${data.length}-byte chunk to ${size} bytes: ${describe(err)}`, {
      codec: 'zstd',
      compressedSize: data.length,
      uncompressedSize: size,
    });
  }
  if (n !== size) {
    throw new BadBlobError(`zstd: chunk decompresses to ${n} bytes, expected ${size}`, {
      codec: 'zstd',
      compressedSize: data.length,
      actualSize: n,
      uncompressedSize: size,
    });
  }
  return dst.subarray(0, size);
}

function gzipDecompress(data: Buffer, size: number): Buffer {
  let out: Buffer;
  try {
    // maxOutputLength caps memory for hostile input; size + 1 detects over-long output.
    out = zlib.gunzipSync(data, { maxOutputLength: size + 1 });
  } catch (err) {
    throw new BadBlobError(`gzip: cannot decompress ${data.length}-byte chunk to ${size} bytes: ${describe(err)}`, {
      codec: 'gzip',
      compressedSize: data.length,
      uncompressedSize: size,
    });
  }
  if (out.length !== size) {
    throw new BadBlobError(`gzip: chunk decompresses to ${out.length > size ? 'more than ' + size : out.length} bytes, expected ${size}`, {
      codec: 'gzip',
      compressedSize: data.length,
      actualSize: out.length,
      uncompressedSize: size,
    });
  }
  return out;
}

function unknownAlgo(algo: unknown, what: string): NydusError {
  return new NydusError('ERR_UNSUPPORTED', `${what}: unknown compressor ${JSON.stringify(algo)}`, { compressor: algo });
}

/** Compresses `data` with `algo`; `none` returns `data` itself. gzip is ERR_UNSUPPORTED. */
export function compress(algo: CompressorName, data: Buffer): Buffer {
  switch (algo) {
    case 'none':
      return data;
    case 'lz4_block':
      return lz4BlockCompress(data);
    case 'zstd':
      return zstdCompress(data);
    case 'gzip':
      throw new NydusError('ERR_UNSUPPORTED', 'compress: gzip compression is not supported (gzip blobs are read-only)', {
        compressor: algo,
      });
    default:
      throw unknownAlgo(algo, 'compress');
  }
}

/**
 * Decompresses one chunk. The output is exactly `uncompressedSize` bytes or BadBlobError is
 * thrown (also for `none` when the lengths differ). Never allocates more than
 * `uncompressedSize + 1` bytes of output, whatever the input claims.
 */
export function decompress(algo: CompressorName, data: Buffer, uncompressedSize: number): Buffer {
  if (!Number.isSafeInteger(uncompressedSize) || uncompressedSize < 0 || uncompressedSize > 0x7fffffff) {
    throw invalidArgument(`decompress(${algo}): invalid uncompressed size ${uncompressedSize}`, { compressor: algo });
  }
  switch (algo) {
    case 'none':
      if (data.length !== uncompressedSize) {
        throw new BadBlobError(`none: chunk is ${data.length} bytes, expected ${uncompressedSize}`, {
          codec: 'none',
          actualSize: data.length,
          uncompressedSize,
        });
      }
      return data;
    case 'lz4_block':
      return lz4BlockDecompress(data, uncompressedSize);
    case 'zstd':
      return zstdDecompress(data, uncompressedSize);
    case 'gzip':
      return gzipDecompress(data, uncompressedSize);
    default:
      throw unknownAlgo(algo, 'decompress');
  }
}

/**
 * Compresses one chunk the nydus way: the compressed form is kept only when it is strictly
 * smaller than the input, otherwise the chunk is stored raw (`compressed: false`, `data` is
 * the input itself). `none` always stores raw.
 */
export function compressChunk(algo: CompressorName, data: Buffer): { data: Buffer; compressed: boolean } {
  if (algo === 'none') return { data, compressed: false };
  const c = compress(algo, data);
  if (c.length < data.length) return { data: c, compressed: true };
  return { data, compressed: false };
}

/**
 * compressChunk() writing into `dst` instead of allocating: returns the compressed length when
 * it is strictly smaller than `src` (the bytes are in `dst[0, n)`), or -1 when the chunk is to
 * be stored raw (`dst` then holds nothing useful). The bytes equal compressChunk()'s. zstd only
 * produces the same frame when it has compressBound(src) bytes of room (with less it takes a
 * more careful path that can fail on nearly incompressible input), so a smaller `dst` goes
 * through a scratch buffer.
 */
export function compressChunkInto(algo: CompressorName, src: Uint8Array, dst: Uint8Array): number {
  let out: Uint8Array;
  let n: number;
  switch (algo) {
    case 'none':
      return -1;
    case 'zstd': {
      if (src.length === 0) return -1;
      cctx ??= new zstdBinding.CCtx();
      const bound = zstdBinding.compressBound(src.length);
      if (dst.length >= bound) {
        n = cctx.compress(dst, src, ZSTD_LEVEL);
        return n < src.length ? n : -1;
      }
      if (zstdScratch.length < bound) zstdScratch = Buffer.allocUnsafeSlow(Math.max(bound, 64 * 1024));
      n = cctx.compress(zstdScratch, src, ZSTD_LEVEL);
      out = zstdScratch;
      break;
    }
    case 'lz4_block':
      out = lz4BlockCompress(Buffer.from(src.buffer, src.byteOffset, src.byteLength));
      n = out.length;
      break;
    default:
      compress(algo, Buffer.alloc(0)); // gzip and unknown names throw their usual errors
      throw unknownAlgo(algo, 'compressChunkInto');
  }
  if (n >= src.length) return -1;
  if (n > dst.length) throw invalidArgument(`compressChunkInto: ${n} compressed bytes do not fit the ${dst.length}-byte destination`);
  dst.set(out.subarray(0, n));
  return n;
}

/** Room compressChunkInto() needs beyond the input size to compress in place of a scratch copy. */
export function compressSlack(algo: CompressorName, size: number): number {
  if (algo === 'zstd') return zstdBinding.compressBound(size) - size;
  return 0;
}

/** Inverse of compressChunk: decompresses when `compressed`, else checks the raw length. */
export function decompressChunk(algo: CompressorName, data: Buffer, compressed: boolean, uncompressedSize: number): Buffer {
  return decompress(compressed ? algo : 'none', data, uncompressedSize);
}
