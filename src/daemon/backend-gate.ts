/**
 * Backend request slots with two classes, so that a read a reader waits for is never queued
 * behind prefetch. One gate per backend (its connection pool is what requests queue for).
 *
 *   on-demand: takes a slot at once while fewer than `limit` requests are in flight; else it
 *              queues, ahead of every prefetch request, and gets the next slot that frees.
 *   prefetch:  takes a slot only while no on-demand request is in flight or queued, and then
 *              at most `prefetchLimit` of them — so the slots prefetch holds leave at least
 *              `limit - prefetchLimit` free for on-demand requests arriving meanwhile.
 *
 * An on-demand request that still finds every slot taken while prefetch holds some has waited
 * behind prefetch: that is counted (it should stay 0), as are on-demand requests that ran while
 * prefetch requests were in flight (they share the link, but did not queue).
 */

/** the HTTP backends' connections per origin (src/backends/http.ts): more requests queue there */
export const DEFAULT_BACKEND_SLOTS = 16;

export interface GateStats {
  limit: number;
  prefetch_limit: number;
  ondemand_active: number;
  prefetch_active: number;
  /** on-demand requests that had to queue for a slot */
  ondemand_queued: number;
  /** … of which at least one slot was held by a prefetch request (should be 0) */
  ondemand_waits_behind_prefetch: number;
  /** on-demand requests started while prefetch requests were in flight */
  ondemand_during_prefetch: number;
  /** times a prefetch request waited because on-demand requests were in flight or queued */
  prefetch_yields: number;
}

export interface DemandSlot {
  release(): void;
  /** this request queued for a slot */
  queued: boolean;
  /** this request queued while a prefetch request held a slot */
  waitedBehindPrefetch: boolean;
  /** prefetch requests were in flight when this one started */
  duringPrefetch: boolean;
}

export class BackendGate {
  private demandActive = 0;
  private prefetchActive = 0;
  private readonly demandQueue: Array<() => void> = [];
  private prefetchWaiters: Array<() => void> = [];
  private readonly st = { ondemand_queued: 0, ondemand_waits_behind_prefetch: 0, ondemand_during_prefetch: 0, prefetch_yields: 0 };

  constructor(
    readonly limit = DEFAULT_BACKEND_SLOTS,
    readonly prefetchLimit = Math.max(1, Math.floor(limit / 2)),
  ) {}

  private get active(): number {
    return this.demandActive + this.prefetchActive;
  }

  /** A slot for a request a reader waits for. */
  async demand(): Promise<DemandSlot> {
    let waitedBehindPrefetch = false;
    const queued = this.active >= this.limit || this.demandQueue.length > 0;
    if (this.active >= this.limit || this.demandQueue.length > 0) {
      this.st.ondemand_queued++;
      if (this.prefetchActive > 0) {
        waitedBehindPrefetch = true;
        this.st.ondemand_waits_behind_prefetch++;
      }
      // the releasing request hands its slot over (demandActive is counted for us)
      await new Promise<void>((resolve) => this.demandQueue.push(resolve));
    } else this.demandActive++;
    const duringPrefetch = this.prefetchActive > 0;
    if (duringPrefetch) this.st.ondemand_during_prefetch++;
    let released = false;
    return {
      queued,
      waitedBehindPrefetch,
      duringPrefetch,
      release: () => {
        if (released) return;
        released = true;
        this.demandActive--;
        this.pump();
      },
    };
  }

  /**
   * A slot for a prefetch request, once no on-demand request is in flight or queued; resolves
   * undefined when `cancelled()` turns true meanwhile (call wakePrefetch() after cancelling).
   */
  async prefetch(cancelled: () => boolean): Promise<(() => void) | undefined> {
    let yielded = false;
    for (;;) {
      if (cancelled()) return undefined;
      if (this.demandActive === 0 && this.demandQueue.length === 0 && this.active < this.limit && this.prefetchActive < this.prefetchLimit) break;
      if (!yielded && (this.demandActive > 0 || this.demandQueue.length > 0)) {
        yielded = true;
        this.st.prefetch_yields++;
      }
      await new Promise<void>((resolve) => this.prefetchWaiters.push(resolve));
    }
    this.prefetchActive++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.prefetchActive--;
      this.pump();
    };
  }

  /** let waiting prefetch requests look at their cancellation */
  wakePrefetch(): void {
    const w = this.prefetchWaiters;
    this.prefetchWaiters = [];
    for (const r of w) r();
  }

  private pump(): void {
    while (this.demandQueue.length > 0 && this.active < this.limit) {
      this.demandActive++;
      this.demandQueue.shift()!();
    }
    if (this.demandActive === 0 && this.demandQueue.length === 0 && this.prefetchWaiters.length > 0) this.wakePrefetch();
  }

  stats(): GateStats {
    return { limit: this.limit, prefetch_limit: this.prefetchLimit, ondemand_active: this.demandActive, prefetch_active: this.prefetchActive, ...this.st };
  }
}
