/**
 * worker_threads entry for ChunkPool (chunk-pool.ts). Protocol, one message per task:
 *
 *   main → worker  { id, op: 'process', data, compressor, digester }
 *                  { id, op: 'processMany', data, sizes, compressor, digester }  (data = the
 *                    inputs back to back; the result has the digests back to back in `digest`,
 *                    the outputs back to back in `data`, and per input `sizes` and `flags`)
 *                  { id, op: 'decompress', data, compressor, compressed, uncompressedSize,
 *                    digester, expected }
 *                  { id, op: 'processShared', data, digests, csizes, sizes, compressor, digester }
 *                    (views of shared memory the caller owns: the worker writes digests,
 *                    compressed bytes and sizes there and answers with an empty `data`;
 *                    nothing is copied through the message)
 *   worker → main  { type: 'ready' } once, after the BLAKE3 module is loaded
 *                  { type: 'result', id, ok: true, digest?, data, compressed? }
 *                  { type: 'result', id, ok: false, error: SerializedError }
 *
 * Every Uint8Array sent back owns its whole ArrayBuffer and is transferred, never cloned.
 */
import { parentPort } from 'node:worker_threads';
import { NydusError, DigestMismatchError } from '../errors';
import type { CompressorName, DigesterName } from '../format/constants';
import { compressChunk, decompressChunk } from './compress';
import { processSharedChunks } from './shared-chunks';
import { serializeError, type SerializedError } from './thread-errors';
import { digest, digestReady } from './digest';

export interface ProcessRequest {
  id: number;
  op: 'process';
  data: Uint8Array;
  compressor: CompressorName;
  digester: DigesterName;
}

export interface DecompressRequest {
  id: number;
  op: 'decompress';
  data: Uint8Array;
  compressor: CompressorName;
  compressed: boolean;
  uncompressedSize: number;
  digester: DigesterName | null;
  expected: Uint8Array | null;
}

/** Test hook: makes the worker exit abruptly, to exercise the pool's crash recovery. */
export interface CrashRequest {
  id: number;
  op: 'crash';
}

/** Several (small) chunks in one message: per-message costs dominate for small files. */
export interface ProcessManyRequest {
  id: number;
  op: 'processMany';
  data: Uint8Array;
  sizes: number[];
  compressor: CompressorName;
  digester: DigesterName;
}

/**
 * Several chunks laid out back to back in `data` (sizes in `sizes`), processed in place on
 * memory shared with the caller (SharedArrayBuffer views): digest i goes to digests[32i, 32i+32);
 * a chunk that compresses to fewer bytes gets them written over its own input (from the same
 * offset), and csizes[i] is that compressed size, or -1 when the chunk is stored raw.
 */
export interface ProcessSharedRequest {
  id: number;
  op: 'processShared';
  data: Uint8Array;
  digests: Uint8Array;
  csizes: Int32Array;
  sizes: number[];
  compressor: CompressorName;
  digester: DigesterName;
}

export type WorkerRequest = ProcessRequest | ProcessManyRequest | ProcessSharedRequest | DecompressRequest | CrashRequest;

export type { SerializedError };
export { serializeError };

export type WorkerMessage =
  | { type: 'ready' }
  | { type: 'result'; id: number; ok: true; digest?: Uint8Array; data: Uint8Array; compressed?: boolean; sizes?: number[]; flags?: boolean[] }
  | { type: 'result'; id: number; ok: false; error: SerializedError };

/** Returns a view that owns its entire ArrayBuffer (copying if needed), so it can be transferred. */
export function owned(u8: Uint8Array): Uint8Array {
  if (u8.byteOffset === 0 && u8.byteLength === u8.buffer.byteLength && u8.buffer instanceof ArrayBuffer) return u8;
  const copy = new Uint8Array(new ArrayBuffer(u8.byteLength));
  copy.set(u8);
  return copy;
}

function asBuffer(u8: Uint8Array): Buffer {
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}


function handleProcess(req: ProcessRequest): WorkerMessage & { ok: true } {
  const input = asBuffer(req.data);
  const d = digest(req.digester, input);
  const c = compressChunk(req.compressor, input);
  return { type: 'result', id: req.id, ok: true, digest: owned(d), data: owned(c.data), compressed: c.compressed };
}

function handleProcessMany(req: ProcessManyRequest): WorkerMessage & { ok: true } {
  const all = asBuffer(req.data);
  const n = req.sizes.length;
  const digests = new Uint8Array(new ArrayBuffer(32 * n));
  const outs: Buffer[] = [];
  const sizes: number[] = [];
  const flags: boolean[] = [];
  let off = 0;
  for (let i = 0; i < n; i++) {
    const input = all.subarray(off, off + req.sizes[i]);
    off += req.sizes[i];
    digests.set(digest(req.digester, input), 32 * i);
    const c = compressChunk(req.compressor, input);
    outs.push(c.data);
    sizes.push(c.data.length);
    flags.push(c.compressed);
  }
  if (off !== all.length) throw new NydusError('ERR_INVALID_ARGUMENT', `chunk worker: processMany sizes add up to ${off}, data has ${all.length} bytes`);
  return { type: 'result', id: req.id, ok: true, digest: digests, data: owned(Buffer.concat(outs)), sizes, flags };
}

const EMPTY = new Uint8Array(0);

function handleProcessShared(req: ProcessSharedRequest): WorkerMessage & { ok: true } {
  processSharedChunks(req, req.sizes, req.compressor, req.digester);
  return { type: 'result', id: req.id, ok: true, data: EMPTY };
}

function handleDecompress(req: DecompressRequest): WorkerMessage & { ok: true } {
  const input = asBuffer(req.data);
  const out = decompressChunk(req.compressor, input, req.compressed, req.uncompressedSize);
  if (req.digester && req.expected) {
    const actual = digest(req.digester, out);
    const expected = asBuffer(req.expected);
    if (!actual.equals(expected)) {
      throw new DigestMismatchError(
        `chunk ${req.digester} digest mismatch: expected ${expected.toString('hex')}, got ${actual.toString('hex')}`,
        { digester: req.digester, expected: expected.toString('hex'), actual: actual.toString('hex'), uncompressedSize: req.uncompressedSize },
      );
    }
  }
  return { type: 'result', id: req.id, ok: true, data: owned(out) };
}

function transferList(msg: WorkerMessage): ArrayBuffer[] {
  if (msg.type !== 'result' || !msg.ok) return [];
  const list: ArrayBuffer[] = [];
  const add = (u8: Uint8Array | undefined): void => {
    if (u8 && u8.buffer instanceof ArrayBuffer && u8.buffer.byteLength > 0 && !list.includes(u8.buffer)) list.push(u8.buffer);
  };
  add(msg.digest);
  add(msg.data);
  return list;
}

if (parentPort) {
  const port = parentPort;
  const ready = digestReady();
  port.on('message', (req: WorkerRequest) => {
    void ready.then(
      () => {
        let msg: WorkerMessage;
        try {
          switch (req.op) {
            case 'process':
              msg = handleProcess(req);
              break;
            case 'processMany':
              msg = handleProcessMany(req);
              break;
            case 'processShared':
              msg = handleProcessShared(req);
              break;
            case 'decompress':
              msg = handleDecompress(req);
              break;
            case 'crash':
              process.exit(70);
            default:
              throw new NydusError('ERR_INVALID_ARGUMENT', `chunk worker: unknown op ${JSON.stringify((req as { op: unknown }).op)}`);
          }
        } catch (err) {
          msg = { type: 'result', id: req.id, ok: false, error: serializeError(err) };
        }
        port.postMessage(msg, transferList(msg));
      },
      (err: unknown) => {
        port.postMessage({ type: 'result', id: req.id, ok: false, error: serializeError(err) } satisfies WorkerMessage);
      },
    );
  });
  void ready.then(
    () => port.postMessage({ type: 'ready' } satisfies WorkerMessage),
    () => port.postMessage({ type: 'ready' } satisfies WorkerMessage), // tasks will report the init error
  );
}
