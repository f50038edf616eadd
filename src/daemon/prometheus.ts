/**
 * Prometheus text exposition (format 0.0.4) of the daemon's metrics: a rendering of the same
 * snapshot `GET /api/v1/metrics` returns as JSON, so the two never disagree. Served on the API
 * socket (`GET /metrics`, `GET /api/v1/metrics/prometheus`) and, with `--metrics-listen`, on a
 * loopback TCP port (metrics-listener.ts).
 *
 * Written here rather than with prom-client: the daemon already keeps its counters (sessions,
 * front ends, scrub, GC), and prom-client would need each copied into its own registry objects
 * on every scrape; the format itself is a few lines (HELP/TYPE, label escaping, histograms).
 *
 * Histograms come from LatencyHistogram (blob-session.ts), whose buckets are log-linear, 8 per
 * power of two of microseconds. The `le` bounds here are powers of two of microseconds (16 µs …
 * 8.4 s), which are also bucket bounds there, so the cumulative counts are exact.
 */
import { VERSION } from '../version';

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

type MetricType = 'counter' | 'gauge' | 'histogram' | 'untyped';
type Labels = Record<string, string>;

/** `le` bounds in seconds: 2^k µs for k = 4 … 23 */
export const LATENCY_BOUNDS_S: number[] = Array.from({ length: 20 }, (_, i) => 2 ** (i + 4) / 1e6);

/** The JSON form of a LatencyHistogram (blob-session.ts) */
export interface HistogramJson {
  count: number;
  sum_ms?: number;
  buckets_ms?: Record<string, number>;
}

function escapeHelp(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function escapeLabel(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

/** A metric name from free text (a JSON key): [a-zA-Z_:][a-zA-Z0-9_:]* */
export function metricName(s: string): string {
  const n = s.replace(/[^a-zA-Z0-9_:]/g, '_');
  return /^[a-zA-Z_:]/.test(n) ? n : `_${n}`;
}

/** Collects metric families and writes them in the text format, one HELP/TYPE block each. */
export class Exposition {
  private readonly families = new Map<string, { type: MetricType; help: string; lines: string[] }>();

  private family(name: string, type: MetricType, help: string): string[] {
    let f = this.families.get(name);
    if (!f) this.families.set(name, (f = { type, help, lines: [] }));
    return f.lines;
  }

  private static series(name: string, labels: Labels | undefined, value: number): string {
    const l = labels && Object.keys(labels).length
      ? `{${Object.entries(labels).map(([k, v]) => `${metricName(k)}="${escapeLabel(v)}"`).join(',')}}`
      : '';
    return `${name}${l} ${formatValue(value)}`;
  }

  add(name: string, type: Exclude<MetricType, 'histogram'>, help: string, value: number | undefined | null, labels?: Labels): void {
    if (typeof value !== 'number') return;
    this.family(name, type, help).push(Exposition.series(name, labels, value));
  }

  counter(name: string, help: string, value: number | undefined | null, labels?: Labels): void {
    this.add(name, 'counter', help, value, labels);
  }

  gauge(name: string, help: string, value: number | undefined | null, labels?: Labels): void {
    this.add(name, 'gauge', help, value, labels);
  }

  /** A latency histogram (milliseconds in the JSON) in seconds. */
  histogram(name: string, help: string, h: HistogramJson | undefined, labels: Labels = {}): void {
    if (!h || typeof h.count !== 'number') return;
    const lines = this.family(name, 'histogram', help);
    const buckets = Object.entries(h.buckets_ms ?? {}).map(([k, n]) => [Number(k), n] as const);
    for (const le of LATENCY_BOUNDS_S) {
      const leMs = le * 1000;
      // JSON keys are bucket upper bounds rounded to 3 digits; neighbouring bounds are 9 % apart
      let n = 0;
      for (const [ub, c] of buckets) if (ub <= leMs * 1.02) n += c;
      lines.push(Exposition.series(`${name}_bucket`, { ...labels, le: String(le) }, n));
    }
    lines.push(Exposition.series(`${name}_bucket`, { ...labels, le: '+Inf' }, h.count));
    lines.push(Exposition.series(`${name}_sum`, labels, (h.sum_ms ?? 0) / 1000));
    lines.push(Exposition.series(`${name}_count`, labels, h.count));
  }

  text(): string {
    const out: string[] = [];
    for (const [name, f] of this.families) {
      if (!f.lines.length) continue;
      out.push(`# HELP ${name} ${escapeHelp(f.help)}`, `# TYPE ${name} ${f.type}`, ...f.lines);
    }
    return out.join('\n') + '\n';
  }
}

type Json = Record<string, any>;
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);

/** The GC/culling counters of the `cache` section (cache-manager.ts CacheMetrics); its other numbers are gauges. */
const CACHE_COUNTERS = new Set([
  'gc_runs', 'gc_blobs_removed', 'gc_bytes_freed', 'cull_runs', 'cull_blobs_removed', 'cull_bytes_freed', 'cull_ranges_evicted',
  'cull_bytes_evicted', 'full_writes', 'full_write_bytes_freed', 'full_write_failures', 'kernel_culling_signals',
]);

/**
 * A section of numbers another part of the daemon reports (GC/culling `cache`, `prefetch`):
 * every numeric leaf becomes `nydus_ts_<section>_<path>`; one in `counters` (or ending in
 * `_total`) is a counter named `…_total`, everything else a gauge (prefetch figures are sums
 * over open sessions, which shrink when a session closes).
 */
function renderSection(x: Exposition, section: string, obj: unknown, help: string, counters = new Set<string>(), prefix: string[] = []): void {
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) return;
  for (const [k, v] of Object.entries(obj as Json)) {
    const p = [...prefix, k];
    if (typeof v === 'number') {
      const base = metricName(`nydus_ts_${section}_${p.join('_')}`);
      const counter = counters.has(p.join('.')) || base.endsWith('_total');
      x.add(counter && !base.endsWith('_total') ? `${base}_total` : base, counter ? 'counter' : 'gauge', `${help}: ${p.join('.')}`, num(v));
    } else if (typeof v === 'boolean') {
      x.gauge(metricName(`nydus_ts_${section}_${p.join('_')}`), `${help}: ${p.join('.')} (1 = true)`, v ? 1 : 0);
    } else if (v && typeof v === 'object' && !Array.isArray(v) && prefix.length < 3) {
      renderSection(x, section, v, help, counters, p);
    }
  }
}

/** Render the daemon's metrics snapshot (Daemon.metrics()) as Prometheus text. */
export function renderPrometheus(m: Json): string {
  const x = new Exposition();
  x.gauge('nydus_ts_build_info', 'nydus-ts version and kernel front end (always 1)', 1, { version: VERSION, frontend: String(m.frontend?.frontend ?? m.frontend_kind ?? 'unknown') });
  x.gauge('nydus_ts_images', 'registered images', (m.images ?? []).length);
  x.gauge('nydus_ts_mounts', 'mounts the daemon made (fanotify front end)', (m.mounts ?? []).length);
  x.gauge('nydus_ts_blob_sessions', 'open blob sessions', (m.blobs ?? []).length);

  // daemon-wide totals over every session the daemon opened (closed ones included): monotonic
  const t: Json = m.totals ?? {};
  for (const [kind, b] of Object.entries((t.by_backend ?? {}) as Record<string, Json>)) {
    const l = { backend: kind };
    x.counter('nydus_ts_backend_requests_total', 'backend range requests (chunk runs and chunk indexes)', num(b.requests), l);
    x.counter('nydus_ts_backend_read_bytes_total', 'compressed bytes fetched from the backend', num(b.bytes), l);
    for (const [ek, n] of Object.entries((b.errors_by_kind ?? {}) as Record<string, number>)) {
      x.counter('nydus_ts_backend_errors_total', 'failed backend requests by kind (http_4xx, http_5xx, not_found, timeout, network, other)', num(n), { ...l, kind: ek });
    }
  }
  x.counter('nydus_ts_chunks_fetched_total', 'chunks fetched, decompressed and written to the cache', num(t.chunks_fetched));
  x.counter('nydus_ts_chunks_verified_total', 'fetched chunks whose digest was checked and matched', num(t.chunks_verified));
  x.counter('nydus_ts_chunk_digest_failures_total', 'fetched chunks whose digest did not match (never written to the cache)', num(t.digest_failures));
  x.counter('nydus_ts_fill_requests_total', 'fill requests (a kernel read that needed the daemon) served by blob sessions', num(t.reads));
  x.counter('nydus_ts_fill_bytes_total', 'bytes asked for by fill requests', num(t.read_bytes));
  x.histogram('nydus_ts_fill_latency_seconds', 'time to make a requested range present (fetch, verify, write)', t.read_latency_hist);

  // the kernel front end
  const f: Json = m.frontend ?? {};
  const kind = String(f.frontend ?? (f.opens !== undefined ? 'fscache' : 'unknown'));
  if (kind === 'fanotify') {
    x.counter('nydus_ts_fanotify_events_total', 'pre-content events', num(f.events));
    x.counter('nydus_ts_fanotify_fast_path_total', 'events answered from the presence map by the event thread', num(f.fast_path));
    x.counter('nydus_ts_fanotify_slow_path_total', 'events answered after a fill', num(f.slow_path));
    x.counter('nydus_ts_fanotify_denials_total', 'events denied (the reader got EIO)', num(f.denials));
    x.counter('nydus_ts_fanotify_unknown_files_total', 'events for files that are not open blob cache files', num(f.unknown_files));
    x.counter('nydus_ts_fanotify_queue_overflows_total', 'fanotify queue overflows (reads the kernel let through unchecked)', num(f.queue_overflows));
    x.gauge('nydus_ts_fanotify_blobs_open', 'blob cache files open', num(f.blobs_open));
    x.histogram('nydus_ts_kernel_request_latency_seconds', 'kernel request latency: fanotify event / cachefiles READ, from arrival to answer', f.event_latency);
  } else if (kind === 'fscache') {
    x.counter('nydus_ts_fscache_opens_total', 'cachefiles OPEN requests', num(f.opens));
    x.counter('nydus_ts_fscache_opens_failed_total', 'cachefiles OPEN requests failed', num(f.opens_failed));
    x.counter('nydus_ts_fscache_reads_total', 'cachefiles READ requests', num(f.reads));
    x.counter('nydus_ts_fscache_reads_failed_total', 'cachefiles READ requests completed without data (the reader got EIO)', num(f.reads_failed));
    x.counter('nydus_ts_fscache_read_bytes_total', 'bytes asked for by cachefiles READ requests', num(f.read_bytes));
    x.gauge('nydus_ts_fscache_reads_in_flight', 'cachefiles READ requests being served', num(f.reads_in_flight));
    x.gauge('nydus_ts_fscache_objects_open', 'cachefiles objects open', num(f.objects_open));
    x.histogram('nydus_ts_kernel_request_latency_seconds', 'kernel request latency: fanotify event / cachefiles READ, from arrival to answer', f.read_latency);
  }

  // per open blob (counters restart when a blob's session is opened again)
  for (const b of (m.blobs ?? []) as Json[]) {
    const l = { blob: String(b.blob_id) };
    x.counter('nydus_ts_blob_backend_read_bytes_total', 'compressed bytes fetched for this blob (this session)', num(b.backend_bytes), l);
    x.counter('nydus_ts_blob_backend_requests_total', 'backend requests for this blob (this session)', num(b.backend_requests), l);
    x.counter('nydus_ts_blob_backend_errors_total', 'failed backend requests for this blob (this session)', num(b.backend_errors ?? 0), l);
    x.counter('nydus_ts_blob_chunks_verified_total', 'chunks of this blob fetched and verified (this session)', num(b.chunks_verified), l);
    x.counter('nydus_ts_blob_digest_failures_total', 'chunks of this blob whose digest did not match (this session)', num(b.digest_failures), l);
    x.gauge('nydus_ts_blob_chunks_cached', 'chunks of this blob present in the cache', num(b.chunks_ready), l);
    x.gauge('nydus_ts_blob_chunks', 'chunks in this blob', num(b.chunk_count), l);
    if (typeof b.pages_present === 'number') x.gauge('nydus_ts_blob_cache_bytes', 'bytes of this blob present in the cache file', b.pages_present * 4096, l);
    if (typeof b.events === 'number') x.counter('nydus_ts_blob_kernel_events_total', 'fanotify events for this blob (this session)', b.events, l);
    if (typeof b.done === 'boolean') x.gauge('nydus_ts_blob_complete', '1 when every page of the blob is cached (no more events)', b.done ? 1 : 0, l);
  }

  // scrub (scrub.ts)
  const s: Json = m.scrub ?? {};
  x.counter('nydus_ts_scrub_runs_total', 'scrub runs finished (manual and periodic)', num(s.runs_total));
  x.counter('nydus_ts_scrub_runs_failed_total', 'scrub runs that failed or were cancelled', num(s.runs_failed_total));
  x.counter('nydus_ts_scrub_chunks_verified_total', 'cached chunks re-read and verified by scrub', num(s.chunks_verified_total));
  x.counter('nydus_ts_scrub_bytes_verified_total', 'bytes of cached chunks re-read by scrub', num(s.bytes_verified_total));
  x.counter('nydus_ts_scrub_digest_mismatches_total', 'cached chunks scrub found damaged (evicted, fetched again on the next read)', num(s.mismatches_total));
  x.counter('nydus_ts_scrub_read_errors_total', 'cached chunks scrub could not read (evicted)', num(s.read_errors_total));
  x.counter('nydus_ts_scrub_evicted_bytes_total', 'bytes scrub evicted from the cache', num(s.evicted_bytes_total));
  x.counter('nydus_ts_scrub_blobs_skipped_total', 'blobs scrub could not check (see the scrub report for why)', num(s.blobs_skipped_total));
  x.gauge('nydus_ts_scrub_running', '1 while a scrub runs', s.running ? 1 : 0);
  x.gauge('nydus_ts_scrub_last_run_timestamp_seconds', 'end of the last finished scrub run (Unix time)', num(s.last_run_finished_at));
  x.gauge('nydus_ts_scrub_last_run_findings', 'damaged chunks found by the last finished scrub run', num(s.last_run_findings));

  renderSection(x, 'cache', m.cache, 'cache life cycle (usage, GC, culling)', CACHE_COUNTERS);
  renderSection(x, 'prefetch', m.prefetch, 'background prefetch, summed over open blob sessions');
  return x.text();
}
