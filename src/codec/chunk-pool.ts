/**
 * A worker_threads pool for the per-chunk CPU work: digest + compress on the builder side,
 * decompress + verify on the reader / daemon side.
 *
 * Usage and memory. Every submitted task keeps its input (a private copy, or the caller's
 * buffer when `{ transfer: true }`) until a worker has finished with it, and the queue is not
 * bounded by the pool. Callers that feed many chunks (a layer can have thousands of 1 MiB
 * chunks) must limit their in-flight work, e.g.
 *
 *     for (const chunk of chunks) {
 *       await pool.drain(4 * pool.threads);   // wait while more than that many are pending
 *       results.push(pool.process(chunk, 'zstd', 'blake3'));
 *     }
 *
 * `pending` counts queued plus running tasks. Each worker runs at most `maxInFlightPerWorker`
 * tasks at a time (default 2, so it always has its next input ready); the rest wait in the
 * pool's queue in submission order.
 *
 * Data movement. Inputs are copied once into a fresh ArrayBuffer that is transferred to the
 * worker (so the caller may reuse its buffer as soon as `process()` returns). With
 * `{ transfer: true }` a buffer that owns its whole ArrayBuffer is transferred as is, which
 * detaches it in the caller. Results always come back by transfer, never by cloning.
 *
 * All-zero chunks are detected in the calling thread (memcmp against a zero buffer) and their
 * result is computed once per (size, compressor, digester) and then served from a cache.
 *
 * Lifetime. Idle workers are unref()'d, so a pool that nobody closes does not keep node
 * alive; busy workers are ref()'d so pending promises can settle. `close()` waits for all
 * submitted tasks, then terminates the workers. A task that fails in a worker rejects its own
 * promise only; a worker that dies is replaced and only its in-flight tasks are rejected.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { NydusError, invalidArgument } from '../errors';
import type { CompressorName, DigesterName } from '../format/constants';
import type { WorkerMessage, WorkerRequest } from './chunk-worker';
import { reviveError } from './thread-errors';

export interface ProcessedChunk {
  /** Digest of the uncompressed data. */
  digest: Buffer;
  /** What goes into the blob: compressed bytes, or the raw input when `compressed` is false. */
  data: Buffer;
  compressed: boolean;
  /** The input was non-empty and all zero bytes (served from the zero-chunk cache). */
  zero: boolean;
}

export interface ChunkPoolOptions {
  /** Worker threads; default os.availableParallelism(), at least 1. */
  threads?: number;
  /** Tasks handed to one worker at a time; default 2. */
  maxInFlightPerWorker?: number;
  /** V8 limits of each worker (node's defaults when absent; the builder keeps them small) */
  resourceLimits?: import('node:worker_threads').ResourceLimits;
}

export interface SubmitOptions {
  /**
   * Transfer the input's ArrayBuffer to the worker instead of copying it; the caller's
   * buffer becomes detached (length 0). Only used when the buffer owns its whole
   * ArrayBuffer (otherwise it is copied as usual).
   */
  transfer?: boolean;
}

type ResultMessage = Extract<WorkerMessage, { type: 'result'; ok: true }>;

interface Task {
  id: number;
  req: WorkerRequest;
  transfer: ArrayBuffer[];
  resolve: (msg: ResultMessage) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  ready: boolean;
  referenced: boolean;
  inflight: Map<number, Task>;
  lastError?: Error;
}

const WORKER_FILE = path.join(__dirname, 'chunk-worker.js');
const ZERO_CACHE_MAX = 64;

function ownsWholeBuffer(u8: Uint8Array): boolean {
  return u8.byteOffset === 0 && u8.byteLength === u8.buffer.byteLength && u8.buffer instanceof ArrayBuffer;
}

function freshCopy(u8: Uint8Array): Uint8Array {
  const c = new Uint8Array(new ArrayBuffer(u8.byteLength));
  c.set(u8);
  return c;
}

function toBuffer(u8: Uint8Array): Buffer {
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}


export class ChunkPool {
  /** Number of worker threads. */
  readonly threads: number;
  private readonly maxInFlight: number;
  private readonly slots: Slot[] = [];
  private queue: Task[] = [];
  private qHead = 0;
  private inflightCount = 0;
  private nextId = 1;
  private closed = false;
  private closing = false;
  private drainWaiters: { limit: number; resolve: () => void }[] = [];
  private zeroBuf: Buffer = Buffer.alloc(0);
  private readonly zeroCache = new Map<string, Promise<ProcessedChunk>>();

  private constructor(threads: number, maxInFlight: number, private readonly resourceLimits?: import('node:worker_threads').ResourceLimits) {
    this.threads = threads;
    this.maxInFlight = maxInFlight;
  }

  /** Starts the workers and waits until each has loaded its hash module. */
  static async create(opts: ChunkPoolOptions = {}): Promise<ChunkPool> {
    const { pool, ready } = ChunkPool.start(opts);
    try {
      await ready;
    } catch (err) {
      await pool.terminateAll();
      throw err;
    }
    return pool;
  }

  /**
   * Starts the workers without waiting for them: work submitted meanwhile is queued until a
   * worker is ready (a build scans its source while the workers load). `ready` rejects when a
   * worker fails to start; the caller then closes the pool.
   */
  static start(opts: ChunkPoolOptions = {}): { pool: ChunkPool; ready: Promise<void> } {
    const requested = opts.threads ?? os.availableParallelism();
    if (!Number.isFinite(requested)) throw invalidArgument(`ChunkPool: invalid thread count ${requested}`);
    const threads = Math.max(1, Math.floor(requested));
    const mif = opts.maxInFlightPerWorker ?? 2;
    if (!Number.isInteger(mif) || mif < 1) throw invalidArgument(`ChunkPool: invalid maxInFlightPerWorker ${mif}`);
    const pool = new ChunkPool(threads, mif, opts.resourceLimits);
    const started: Promise<void>[] = [];
    for (let i = 0; i < threads; i++) started.push(pool.spawn());
    const ready = Promise.all(started).then(() => undefined);
    ready.catch(() => undefined); // the caller may look at it late; never an unhandled rejection
    return { pool, ready };
  }

  /** Tasks submitted and not yet settled (queued + running in workers). */
  get pending(): number {
    return this.queue.length - this.qHead + this.inflightCount;
  }

  /**
   * Digest (of the uncompressed data) plus nydus-style compression (raw when the compressed
   * form is not strictly smaller). Non-empty all-zero inputs are served from a cache.
   */
  process(data: Uint8Array, compressor: CompressorName, digester: DigesterName, opts: SubmitOptions = {}): Promise<ProcessedChunk> {
    if (this.closed) return Promise.reject(this.closedError('process'));
    if (this.isAllZero(data)) return this.processZero(data.length, compressor, digester);
    return this.processRaw(data, compressor, digester, opts).then((r) => ({ ...r, zero: false }));
  }

  /**
   * Decompresses one chunk (when `compressed`) to exactly `uncompressedSize` bytes and, when
   * both `digester` and `expectedDigest` are given, checks its digest. Rejects with
   * BadBlobError for malformed data and DigestMismatchError (naming both digests) on mismatch.
   */
  decompressAndVerify(
    data: Uint8Array,
    compressor: CompressorName,
    compressed: boolean,
    uncompressedSize: number,
    digester: DigesterName | null,
    expectedDigest: Uint8Array | null,
    opts: SubmitOptions = {},
  ): Promise<Buffer> {
    if (this.closed) return Promise.reject(this.closedError('decompressAndVerify'));
    const input = this.prepareInput(data, opts);
    const expected = expectedDigest ? freshCopy(expectedDigest) : null;
    const transfer = [input.buffer as ArrayBuffer];
    if (expected) transfer.push(expected.buffer as ArrayBuffer);
    return this.submit(
      {
        id: 0,
        op: 'decompress',
        data: input,
        compressor,
        compressed,
        uncompressedSize,
        digester,
        expected,
      },
      transfer,
    ).then((msg) => toBuffer(msg.data));
  }

  /**
   * `process()` for several chunks in one task (one message each way, one copy of the inputs
   * into a transferred buffer): per-task costs dominate for small chunks. Results are in input
   * order; all-zero inputs are processed like any other (`zero` is false).
   */
  processMany(inputs: Uint8Array[], compressor: CompressorName, digester: DigesterName): Promise<ProcessedChunk[]> {
    if (this.closed) return Promise.reject(this.closedError('processMany'));
    let total = 0;
    for (const d of inputs) total += d.byteLength;
    const data = new Uint8Array(new ArrayBuffer(total));
    const sizes: number[] = [];
    let off = 0;
    for (const d of inputs) {
      data.set(d, off);
      off += d.byteLength;
      sizes.push(d.byteLength);
    }
    return this.submit({ id: 0, op: 'processMany', data, sizes, compressor, digester }, [data.buffer as ArrayBuffer]).then((msg) => {
      const digests = toBuffer(msg.digest!);
      const out = toBuffer(msg.data);
      const results: ProcessedChunk[] = [];
      let o = 0;
      msg.sizes!.forEach((n, i) => {
        results.push({ digest: digests.subarray(32 * i, 32 * i + 32), data: out.subarray(o, o + n), compressed: msg.flags![i], zero: false });
        o += n;
      });
      return results;
    });
  }

  /**
   * Digest and compress the chunks laid out back to back in `views.data`, in place on shared
   * memory (SharedArrayBuffer views; results as ProcessSharedRequest in chunk-worker.ts): a
   * chunk that compresses is overwritten by its compressed bytes. Nothing is copied or
   * allocated per chunk in either direction. The caller owns the memory and must not touch it
   * until the promise settles.
   */
  processShared(
    views: { data: Uint8Array; digests: Uint8Array; csizes: Int32Array },
    sizes: number[],
    compressor: CompressorName,
    digester: DigesterName,
  ): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError('processShared'));
    const { data, digests, csizes } = views; // only these go into the message
    for (const v of [data, digests, csizes]) {
      if (!(v.buffer instanceof SharedArrayBuffer)) return Promise.reject(invalidArgument('ChunkPool.processShared: every view must be on a SharedArrayBuffer'));
    }
    return this.submit({ id: 0, op: 'processShared', data, digests, csizes, sizes, compressor, digester }, []).then(() => undefined);
  }

  /** Resolves once at most `limit` tasks are pending (default 0: everything settled). */
  drain(limit = 0): Promise<void> {
    if (this.pending <= limit) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push({ limit, resolve }));
  }

  /** Waits for every submitted task to settle, then stops the workers. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    await this.drain(0);
    await this.terminateAll();
  }

  /** @internal Test hook: makes one worker exit abruptly; resolves with the rejection. */
  _crashWorkerForTest(): Promise<unknown> {
    return this.submit({ id: 0, op: 'crash' }, []).then(
      () => undefined,
      (err: unknown) => err,
    );
  }

  // ---------------------------------------------------------------------------------------

  private closedError(what: string): NydusError {
    return invalidArgument(`ChunkPool.${what}: the pool is closed`);
  }

  private prepareInput(data: Uint8Array, opts: SubmitOptions): Uint8Array {
    if (opts.transfer && ownsWholeBuffer(data)) return new Uint8Array(data.buffer, 0, data.byteLength);
    return freshCopy(data);
  }

  private processRaw(
    data: Uint8Array,
    compressor: CompressorName,
    digester: DigesterName,
    opts: SubmitOptions,
  ): Promise<{ digest: Buffer; data: Buffer; compressed: boolean }> {
    const input = this.prepareInput(data, opts);
    return this.submit({ id: 0, op: 'process', data: input, compressor, digester }, [input.buffer as ArrayBuffer]).then(
      (msg) => ({ digest: toBuffer(msg.digest!), data: toBuffer(msg.data), compressed: msg.compressed === true }),
    );
  }

  private isAllZero(data: Uint8Array): boolean {
    const n = data.byteLength;
    if (n === 0) return false;
    // Cheap early exits before the memcmp.
    if (data[0] !== 0 || data[n - 1] !== 0 || data[n >>> 1] !== 0) return false;
    if (this.zeroBuf.length < n) this.zeroBuf = Buffer.alloc(n);
    return Buffer.compare(data, this.zeroBuf.subarray(0, n)) === 0;
  }

  private processZero(size: number, compressor: CompressorName, digester: DigesterName): Promise<ProcessedChunk> {
    const key = `${size}:${compressor}:${digester}`;
    let cached = this.zeroCache.get(key);
    if (!cached) {
      if (this.zeroCache.size >= ZERO_CACHE_MAX) {
        const oldest = this.zeroCache.keys().next().value;
        if (oldest !== undefined) this.zeroCache.delete(oldest);
      }
      cached = this.processRaw(Buffer.alloc(size), compressor, digester, { transfer: true }).then((r) => ({
        ...r,
        zero: true,
      }));
      this.zeroCache.set(key, cached);
      cached.catch(() => {
        if (this.zeroCache.get(key) === cached) this.zeroCache.delete(key);
      });
    }
    // Each caller gets its own copies, so the cached entry cannot be mutated from outside.
    return cached.then((r) => ({
      digest: Buffer.from(r.digest),
      data: Buffer.from(r.data),
      compressed: r.compressed,
      zero: true,
    }));
  }

  private submit(req: WorkerRequest, transfer: ArrayBuffer[]): Promise<ResultMessage> {
    return new Promise<ResultMessage>((resolve, reject) => {
      const id = this.nextId++;
      req.id = id;
      this.queue.push({ id, req, transfer, resolve, reject });
      this.dispatch();
    });
  }

  private spawn(): Promise<void> {
    const worker = new Worker(WORKER_FILE, this.resourceLimits ? { resourceLimits: this.resourceLimits } : {});
    const slot: Slot = { worker, ready: false, referenced: true, inflight: new Map() };
    this.slots.push(slot);
    return new Promise<void>((resolveReady, rejectReady) => {
      worker.on('message', (msg: WorkerMessage) => {
        if (msg.type === 'ready') {
          slot.ready = true;
          this.updateRef(slot);
          resolveReady();
          this.dispatch();
          return;
        }
        const task = slot.inflight.get(msg.id);
        if (!task) return;
        slot.inflight.delete(msg.id);
        this.inflightCount--;
        this.updateRef(slot);
        if (msg.ok) task.resolve(msg);
        else task.reject(reviveError(msg.error));
        this.dispatch();
        this.notifyDrain();
      });
      worker.on('error', (err) => {
        slot.lastError = err;
      });
      worker.on('exit', (code) => {
        const idx = this.slots.indexOf(slot);
        if (idx >= 0) this.slots.splice(idx, 1);
        if (!slot.ready) {
          // No worker left to run what is queued (a pool from start() takes work early).
          if (this.slots.length === 0 && !this.closing) {
            setImmediate(() => this.failQueued(new Error(`chunk worker exited with code ${code} before it was ready`)));
          }
          rejectReady(
            new Error(`chunk worker exited with code ${code} before it was ready${slot.lastError ? `: ${slot.lastError.message}` : ''}`, {
              cause: slot.lastError,
            }),
          );
        }
        if (this.closing) return;
        const lost = [...slot.inflight.values()];
        slot.inflight.clear();
        this.inflightCount -= lost.length;
        for (const task of lost) {
          task.reject(
            new Error(
              `chunk worker exited unexpectedly (code ${code}) while running task ${task.id} (${task.req.op})` +
                (slot.lastError ? `: ${slot.lastError.message}` : ''),
              { cause: slot.lastError },
            ),
          );
        }
        if (slot.ready) {
          // Replace the lost worker; a failure to respawn leaves the remaining ones working.
          this.spawn().catch((err: unknown) => {
            if (this.slots.length === 0) this.failQueued(err instanceof Error ? err : new Error(String(err)));
          });
        }
        this.dispatch();
        this.notifyDrain();
      });
    });
  }

  private updateRef(slot: Slot): void {
    const busy = !slot.ready || slot.inflight.size > 0;
    if (busy && !slot.referenced) {
      slot.worker.ref();
      slot.referenced = true;
    } else if (!busy && slot.referenced) {
      slot.worker.unref();
      slot.referenced = false;
    }
  }

  private dispatch(): void {
    while (this.qHead < this.queue.length) {
      let best: Slot | undefined;
      for (const s of this.slots) {
        if (!s.ready || s.inflight.size >= this.maxInFlight) continue;
        if (!best || s.inflight.size < best.inflight.size) best = s;
      }
      if (!best) break;
      const task = this.queue[this.qHead];
      this.queue[this.qHead++] = undefined as unknown as Task;
      best.inflight.set(task.id, task);
      this.inflightCount++;
      this.updateRef(best);
      try {
        best.worker.postMessage(task.req, task.transfer);
      } catch (err) {
        best.inflight.delete(task.id);
        this.inflightCount--;
        this.updateRef(best);
        task.reject(err instanceof Error ? err : new Error(String(err)));
        this.notifyDrain();
      }
    }
    if (this.qHead > 1024 && this.qHead * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.qHead);
      this.qHead = 0;
    } else if (this.qHead === this.queue.length && this.qHead > 0) {
      this.queue = [];
      this.qHead = 0;
    }
  }

  /** No worker left and none could be started: nothing queued can ever run. */
  private failQueued(err: Error): void {
    const tasks = this.queue.slice(this.qHead);
    this.queue = [];
    this.qHead = 0;
    for (const t of tasks) t.reject(new Error(`chunk pool has no usable worker: ${err.message}`, { cause: err }));
    this.notifyDrain();
  }

  private notifyDrain(): void {
    if (this.drainWaiters.length === 0) return;
    const p = this.pending;
    const keep: typeof this.drainWaiters = [];
    for (const w of this.drainWaiters) {
      if (p <= w.limit) w.resolve();
      else keep.push(w);
    }
    this.drainWaiters = keep;
  }

  private async terminateAll(): Promise<void> {
    this.closing = true;
    const slots = this.slots.splice(0);
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }
}
