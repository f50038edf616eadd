/**
 * Digest and compress chunks in place on shared memory: the work of one builder task, done by
 * a chunk worker (op processShared) or by the builder's own thread when the workers are busy.
 */
import { NydusError } from '../errors';
import type { CompressorName, DigesterName } from '../format/constants';
import { compressChunkInto, compressSlack } from './compress';
import { digest } from './digest';

/** Where a chunk is compressed before it goes back over its input (grown on demand, per thread). */
let scratch = new Uint8Array(0);

/**
 * The chunks laid out back to back in `data` (sizes in `sizes`): digest i goes to
 * digests[32i, 32i+32); a chunk that compresses to fewer bytes gets them written over its own
 * input (from the same offset), and csizes[i] is that size, or -1 when it is stored raw.
 */
export function processSharedChunks(
  views: { data: Uint8Array; digests: Uint8Array; csizes: Int32Array },
  sizes: number[],
  compressor: CompressorName,
  digester: DigesterName,
): void {
  const { data, digests, csizes } = views;
  let total = 0;
  for (const n of sizes) total += n;
  if (total > data.length || sizes.length > csizes.length || 32 * sizes.length > digests.length) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `processSharedChunks: ${sizes.length} chunks of ${total} bytes for ${data.length} bytes and ${csizes.length} result slots`);
  }
  let off = 0;
  for (let i = 0; i < sizes.length; i++) {
    const src = data.subarray(off, off + sizes[i]);
    digests.set(digest(digester, src), 32 * i);
    const room = sizes[i] + compressSlack(compressor, sizes[i]);
    if (scratch.length < room) scratch = new Uint8Array(Math.max(room, 64 * 1024));
    const n = compressChunkInto(compressor, src, scratch);
    if (n >= 0) data.set(scratch.subarray(0, n), off);
    csizes[i] = n;
    off += sizes[i];
  }
}
