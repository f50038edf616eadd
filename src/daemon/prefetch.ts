/**
 * Background prefetch of one blob for one mounted image (nydusd `prefetch_config`): the chunks
 * the image's prefetch table names (prefetch-plan.ts), in table order, then with `prefetch_all`
 * every other chunk of the blob in blob order. `threads` workers each take the next chunks that
 * are neither present nor being fetched, merge those adjacent in the blob into one backend
 * request of up to `mergeBytes` compressed bytes, and hand it to the blob session, which
 * fetches, verifies and writes it like an on-demand fill (and shares it with any reader that
 * needs one of its chunks meanwhile). Every request first takes a prefetch slot of the backend
 * gate (backend-gate.ts: only when no on-demand request is in flight or queued) and then the
 * registration's rate pacer (`bandwidth_rate` bytes/s, 0 = unlimited).
 *
 * Never fatal: a failed request is logged and counted, its chunks stay missing (a reader fetches
 * them on demand); after several failures in a row the job gives up. cancel() (unmount,
 * unregister, session close, daemon exit) stops it between requests.
 */
import type { BlobChunk } from '../format/layout';
import type { BackendGate } from './backend-gate';

/** What a prefetch job needs from a blob session (ChunkedBlobSession implements it). */
export interface PrefetchTarget {
  readonly blobId: string;
  readonly gate: BackendGate;
  readonly isClosed: boolean;
  /** the blob's chunk index (loaded once) */
  chunkIndex(): Promise<BlobChunk[]>;
  /** present in the cache, or being fetched */
  presentOrBusy(i: number): boolean;
  /** fetch adjacent chunks as one request; `release` is called when the backend read ends; resolves with the chunks that failed */
  prefetchRun(run: BlobChunk[], release: () => void): Promise<number>;
  /** the session's prefetch counters (shared by every job on it) */
  readonly prefetchCounters: PrefetchCounters;
}

export interface PrefetchCounters {
  jobs: number;
  jobs_running: number;
  jobs_done: number;
  jobs_cancelled: number;
  jobs_failed: number;
  /** chunks the jobs set out to fetch (listed + the rest of the blob with prefetch_all) */
  planned_chunks: number;
  /** chunks fetched (verified and written) by prefetch requests */
  chunks: number;
  /** compressed bytes of prefetch requests */
  bytes: number;
  requests: number;
  failed_requests: number;
  /** prefetch requests in flight now, and the most at once */
  inflight: number;
  max_inflight: number;
  /** times a request waited for the bandwidth limit, and for how long in total */
  throttle_waits: number;
  throttle_ms: number;
}

export function newPrefetchCounters(): PrefetchCounters {
  return {
    jobs: 0, jobs_running: 0, jobs_done: 0, jobs_cancelled: 0, jobs_failed: 0, planned_chunks: 0, chunks: 0, bytes: 0, requests: 0,
    failed_requests: 0, inflight: 0, max_inflight: 0, throttle_waits: 0, throttle_ms: 0,
  };
}

/**
 * `bytesPerSec` pacing shared by every job of a registration: a request may start once the
 * bytes before it have "drained" at the rate, so by any time t after the first request at most
 * rate · (t − t₀) + one request's bytes have been asked for.
 */
export class RatePacer {
  private nextAt = 0;
  constructor(readonly bytesPerSec: number) {}
  /** ms until the next request may start (0 = now) */
  delay(): number {
    return this.bytesPerSec > 0 ? Math.max(0, this.nextAt - performance.now()) : 0;
  }
  charge(bytes: number): void {
    if (this.bytesPerSec <= 0) return;
    this.nextAt = Math.max(this.nextAt, performance.now()) + (bytes / this.bytesPerSec) * 1000;
  }
}

export interface PrefetchJobOptions {
  /** ci indices in the order to fetch them (the prefetch table's files) */
  listed: number[];
  /** then every chunk of the blob */
  all: boolean;
  threads: number;
  /** the largest compressed size of one merged request (at least one chunk) */
  mergeBytes: number;
  pacer: RatePacer;
  /** names the job in logs: the image */
  image: string;
  log?: (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>) => void;
}

export type PrefetchState = 'pending' | 'running' | 'done' | 'cancelled' | 'failed';

/** consecutive failed requests after which a job stops (a backend that is down) */
const MAX_FAILURES_IN_A_ROW = 8;

export class PrefetchJob {
  state: PrefetchState = 'pending';
  /** where the workers are in the order (listed, then 0..n-1 with `all`) */
  private cursor = 0;
  private total = 0;
  private chunks: BlobChunk[] = [];
  private failuresInARow = 0;
  private sleeping = new Set<() => void>();
  readonly done: Promise<void>;

  constructor(private readonly target: PrefetchTarget, private readonly o: PrefetchJobOptions) {
    this.done = this.run().catch((e) => {
      this.finish('failed');
      this.o.log?.('error', `prefetch of blob ${target.blobId} for image ${o.image} failed: ${(e as Error).message}`, { blobId: target.blobId });
    });
  }

  private get c(): PrefetchCounters {
    return this.target.prefetchCounters;
  }

  private get stopped(): boolean {
    return this.state === 'cancelled' || this.state === 'failed' || this.target.isClosed;
  }

  cancel(): void {
    if (this.state === 'done' || this.state === 'cancelled' || this.state === 'failed') return;
    const left = this.remaining();
    this.finish('cancelled');
    this.o.log?.('info', `prefetch of blob ${this.target.blobId} for image ${this.o.image} cancelled${left ? ` with ${left} chunk(s) not fetched` : ''}`, { blobId: this.target.blobId });
    for (const wake of this.sleeping) wake();
    this.target.gate.wakePrefetch();
  }

  private finish(state: PrefetchState): void {
    if (this.state === 'running') this.c.jobs_running--;
    if (this.state === 'done' || this.state === 'cancelled' || this.state === 'failed') return;
    this.state = state;
    if (state === 'done') this.c.jobs_done++;
    else if (state === 'cancelled') this.c.jobs_cancelled++;
    else if (state === 'failed') this.c.jobs_failed++;
  }

  /** chunks of the plan not yet passed by the workers */
  remaining(): number {
    return this.state === 'running' || this.state === 'pending' ? Math.max(0, this.total - this.cursor) : 0;
  }

  private at(k: number): number {
    return k < this.o.listed.length ? this.o.listed[k] : k - this.o.listed.length;
  }

  private async run(): Promise<void> {
    this.c.jobs++;
    this.chunks = await this.target.chunkIndex();
    if (this.state !== 'pending') return;
    const listed = this.o.listed.filter((i) => i < this.chunks.length);
    if (listed.length < this.o.listed.length) this.o.log?.('warn', `prefetch of blob ${this.target.blobId} for image ${this.o.image}: ${this.o.listed.length - listed.length} listed chunk(s) are beyond the blob's ${this.chunks.length} chunks`);
    this.o.listed = listed;
    this.total = listed.length + (this.o.all ? this.chunks.length : 0);
    let planned = 0;
    for (let k = 0; k < this.total; k++) if (!this.target.presentOrBusy(this.at(k))) planned++;
    this.c.planned_chunks += planned;
    this.state = 'running';
    this.c.jobs_running++;
    const t0 = performance.now();
    const before = { chunks: this.c.chunks, bytes: this.c.bytes };
    await Promise.all(Array.from({ length: Math.max(1, this.o.threads) }, () => this.worker()));
    if (this.state === 'running') {
      this.finish('done');
      this.o.log?.('info', `prefetch of blob ${this.target.blobId} for image ${this.o.image} done: ${this.c.chunks - before.chunks} chunk(s), ${this.c.bytes - before.bytes} bytes in ${Math.round(performance.now() - t0)} ms`, { blobId: this.target.blobId });
    }
  }

  /** the next chunk of the order that nobody has or fetches, or -1 */
  private nextPending(): number {
    while (this.cursor < this.total) {
      const i = this.at(this.cursor);
      if (!this.target.presentOrBusy(i)) return i;
      this.cursor++;
    }
    return -1;
  }

  /** the chunks of the next request: from the cursor, adjacent in the blob, up to mergeBytes */
  private takeRun(): BlobChunk[] {
    const first = this.nextPending();
    if (first < 0) return [];
    const run = [this.chunks[first]];
    let bytes = this.chunks[first].compressedSize;
    this.cursor++;
    while (this.cursor < this.total) {
      const i = this.at(this.cursor);
      const prev = run[run.length - 1];
      const c = this.chunks[i];
      if (this.target.presentOrBusy(i) || prev.compressedOffset + prev.compressedSize !== c.compressedOffset || bytes + c.compressedSize > this.o.mergeBytes) break;
      run.push(c);
      bytes += c.compressedSize;
      this.cursor++;
    }
    return run;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        this.sleeping.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.sleeping.add(wake);
    });
  }

  private async worker(): Promise<void> {
    while (!this.stopped) {
      if (this.nextPending() < 0) return;
      const wait = this.o.pacer.delay();
      if (wait > 0) {
        this.c.throttle_waits++;
        const t = performance.now();
        await this.sleep(wait);
        this.c.throttle_ms += performance.now() - t;
        continue;
      }
      const release = await this.target.gate.prefetch(() => this.stopped);
      if (!release) return;
      // another worker may have started a request while this one waited for the slot
      if (this.stopped || this.o.pacer.delay() > 0) {
        release();
        continue;
      }
      const run = this.takeRun();
      if (run.length === 0) {
        release();
        return;
      }
      const bytes = run[run.length - 1].compressedOffset + run[run.length - 1].compressedSize - run[0].compressedOffset;
      this.o.pacer.charge(bytes);
      const failed = await this.target.prefetchRun(run, release);
      if (failed > 0) {
        if (++this.failuresInARow >= MAX_FAILURES_IN_A_ROW && this.state === 'running') {
          this.finish('failed');
          this.o.log?.('error', `prefetch of blob ${this.target.blobId} for image ${this.o.image} stopped after ${MAX_FAILURES_IN_A_ROW} failed requests in a row; its chunks are fetched on demand`, { blobId: this.target.blobId });
        }
      } else this.failuresInARow = 0;
    }
  }
}
