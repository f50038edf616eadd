/**
 * Daemon-wide counters over every blob session the daemon opened, closed ones included: the
 * per-blob figures in the metrics vanish when a blob's last mount goes, and a Prometheus counter
 * must never go down. Closed sessions' final counters are kept here (`retire`); a snapshot adds
 * the open sessions' current ones.
 */
import type { BlobMetrics } from './interfaces';
import type { HistogramJson } from './prometheus';

const COUNTERS = ['backend_bytes', 'backend_requests', 'backend_errors', 'chunks_fetched', 'chunks_verified', 'digest_failures', 'reads', 'read_bytes', 'read_latency_ms_total'] as const;

export interface BackendTotals {
  requests: number;
  bytes: number;
  errors: number;
  errors_by_kind: Record<string, number>;
}

export interface SessionTotalsJson extends Record<(typeof COUNTERS)[number], number> {
  /** by backend type (localfs, registry, …) */
  by_backend: Record<string, BackendTotals>;
  /** fill latency of every session, merged */
  read_latency_hist: Required<HistogramJson>;
  sessions_closed: number;
}

type Metrics = BlobMetrics & { read_latency_hist?: HistogramJson };

function empty(): SessionTotalsJson {
  const t = Object.fromEntries(COUNTERS.map((k) => [k, 0])) as unknown as SessionTotalsJson;
  t.by_backend = {};
  t.read_latency_hist = { count: 0, sum_ms: 0, buckets_ms: {} };
  t.sessions_closed = 0;
  return t;
}

function add(t: SessionTotalsJson, m: Metrics): void {
  for (const k of COUNTERS) t[k] += (m as unknown as Record<string, number | undefined>)[k] ?? 0;
  const kind = m.backend_kind ?? 'unknown';
  const b = (t.by_backend[kind] ??= { requests: 0, bytes: 0, errors: 0, errors_by_kind: {} });
  b.requests += m.backend_requests;
  b.bytes += m.backend_bytes;
  b.errors += m.backend_errors ?? 0;
  for (const [ek, n] of Object.entries(m.backend_errors_by_kind ?? {})) b.errors_by_kind[ek] = (b.errors_by_kind[ek] ?? 0) + n;
  const h = m.read_latency_hist;
  if (h) {
    t.read_latency_hist.count += h.count;
    t.read_latency_hist.sum_ms += h.sum_ms ?? 0;
    for (const [ub, n] of Object.entries(h.buckets_ms ?? {})) t.read_latency_hist.buckets_ms[ub] = (t.read_latency_hist.buckets_ms[ub] ?? 0) + n;
  }
}

export class SessionTotals {
  private readonly closed = empty();

  /** A session closed: keep its final counters. */
  retire(m: BlobMetrics): void {
    add(this.closed, structuredClone(m));
    this.closed.sessions_closed++;
  }

  snapshot(open: BlobMetrics[]): SessionTotalsJson {
    const t = structuredClone(this.closed);
    for (const m of open) add(t, m);
    return t;
  }
}
