/**
 * The host read benchmark's report: MiB/s per variant and case (median, min–max), the issue's
 * ratios (also per round), event latency, per-case counters of both daemons, the daemons' CPU,
 * other load; the same as JSON.
 */
import * as os from 'node:os';
import { median, MiB } from './harness';
import type { NaiveStats } from './naive-fanotify';
import type { OurBlobMetrics } from './fanotify-daemon';

export const ALL_VARIANTS = ['native', 'naive-c', 'nydus-ts'] as const;
export type VariantName = (typeof ALL_VARIANTS)[number];
export const LABEL: Record<VariantName, string> = {
  native: 'native file-backed EROFS',
  'naive-c': 'naive C fanotify daemon',
  'nydus-ts': 'nydus-ts fanotify daemon',
};

export interface CaseResult {
  seconds: number;
  bytes: number;
  /** naive-c: its own counters for the case; nydus-ts: the status delta */
  events?: NaiveStats | Record<string, number>;
  /** user + system CPU of the daemon's process tree during the timed read */
  daemon_cpu_ms?: number;
}

export interface RoundResult {
  cold?: CaseResult;
  warm?: CaseResult;
  remount?: CaseResult;
  parallel?: CaseResult;
  /** nydus-ts: metrics after the cold read and after the parallel read */
  metrics_cold?: OurBlobMetrics | null;
  metrics_remount?: OurBlobMetrics | null;
  metrics_parallel?: OurBlobMetrics | null;
  remount_backend_bytes?: number;
}

export const num = (x: unknown): number => (typeof x === 'number' ? x : NaN);

/** The line of an error that says what went wrong (a CLI's "error:" line beats a stack frame). */
export function firstLine(e: Error): string {
  const lines = e.message.split('\n');
  const err = lines.find((l, i) => i > 0 && /error:/i.test(l));
  return err ? `${lines[0].slice(0, 160)}… ${err.trim()}` : lines[0];
}

export interface ReportInput {
  a: { sizeMiB: number; rounds: number; variants: VariantName[]; readers: number; readerMiB: number; pieceKiB: number; prime: boolean; sources: string };
  size: number;
  blobId: string;
  blobBytes: number;
  createS: number;
  results: Record<VariantName, RoundResult[]>;
  /** other load before each round */
  loads: number[];
  oursError?: Error;
}

export function report({ a, size, blobId, blobBytes, createS, results, loads, oursError }: ReportInput): { text: string; json: unknown } {
  type CaseName = 'cold' | 'warm' | 'remount' | 'parallel';
  const CASES: CaseName[] = ['cold', 'warm', 'remount', 'parallel'];
  const summary: Record<string, Record<string, { mib_per_s: number; min: number; max: number }>> = {};
  for (const v of a.variants) {
    summary[v] = {};
    for (const k of CASES) {
      const xs = results[v].map((x) => x[k]).filter((x): x is CaseResult => !!x);
      if (!xs.length) continue;
      const rates = xs.map((x) => x.bytes / MiB / x.seconds);
      summary[v][k] = { mib_per_s: median(rates), min: Math.min(...rates), max: Math.max(...rates) };
    }
  }
  const rate = (v: VariantName, k: CaseName): number => summary[v]?.[k]?.mib_per_s ?? NaN;
  const ratios = {
    ours_cold_vs_naive_c_cold: { ratio: rate('nydus-ts', 'cold') / rate('naive-c', 'cold'), goal: '>= 0.5, aim 1.0' },
    ours_warm_vs_native_warm: { ratio: rate('nydus-ts', 'warm') / rate('native', 'warm'), goal: '>= 0.95' },
    ours_remount_vs_native_cold: { ratio: rate('nydus-ts', 'remount') / rate('native', 'cold'), goal: '>= 0.9' },
    ours_parallel_vs_native_parallel: { ratio: rate('nydus-ts', 'parallel') / rate('native', 'parallel'), goal: '' },
    naive_c_cold_vs_native_cold: { ratio: rate('naive-c', 'cold') / rate('native', 'cold'), goal: '(context)' },
  };
  const ourLat = results['nydus-ts'].map((x) => x.metrics_cold?.event_latency).filter((x): x is NonNullable<typeof x> => !!x);
  const ourParLat = results['nydus-ts'].map((x) => x.metrics_parallel?.event_latency).filter((x): x is NonNullable<typeof x> => !!x);
  const latency = {
    nydus_ts_cold: ourLat.length ? { p50_ms: median(ourLat.map((l) => num(l.p50_ms))), p99_ms: median(ourLat.map((l) => num(l.p99_ms))) } : null,
    nydus_ts_parallel: ourParLat.length ? { p50_ms: median(ourParLat.map((l) => num(l.p50_ms))), p99_ms: median(ourParLat.map((l) => num(l.p99_ms))) } : null,
    naive_c_cold: results['naive-c'].length
      ? { p50_ms: median(results['naive-c'].map((x) => (x.cold!.events as NaiveStats).p50_us / 1000)), p99_ms: median(results['naive-c'].map((x) => (x.cold!.events as NaiveStats).p99_us / 1000)) }
      : null,
  };

  const L: string[] = [''];
  L.push(`Host read benchmark (fanotify): ${a.sizeMiB} MiB file of random data; blob ${(blobBytes / MiB).toFixed(1)} MiB (zstd + blake3, 1 MiB chunks); ` +
    `${a.rounds} round(s), medians (min–max); kernel ${os.release()}, ${os.cpus().length} CPU(s); parallel = ${a.readers} readers × ${a.readerMiB} MiB in random ${a.pieceKiB} KiB pieces, cold; ` +
    `cold = page cache dropped${a.prime ? ' (files primed in the host cache)' : ' (not primed)'}, daemon sources ${a.sources === 'hot' ? 'in the page cache' : 'dropped too'}`);
  L.push(`${'MiB/s: median (min–max)'.padEnd(34)}${'cold'.padStart(21)}${'warm'.padStart(21)}${'remount'.padStart(21)}${'parallel'.padStart(21)}`);
  for (const v of a.variants) {
    const cell = (k: CaseName): string => {
      const s = summary[v][k];
      return (s ? `${s.mib_per_s.toFixed(0)} (${s.min.toFixed(0)}–${s.max.toFixed(0)})` : '-').padStart(21);
    };
    L.push(`${LABEL[v].padEnd(34)}${CASES.map(cell).join('')}${v === 'nydus-ts' && oursError ? '   (failed)' : ''}`);
  }
  L.push('');
  const f = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : 'n/a');
  L.push(`ours cold / naive C cold           ${f(ratios.ours_cold_vs_naive_c_cold.ratio).padStart(8)}   goal ≥ 0.5 (verification on), aim 1.0`);
  L.push(`ours warm / native warm            ${f(ratios.ours_warm_vs_native_warm.ratio).padStart(8)}   goal ≥ 0.95`);
  L.push(`ours remount / native cold         ${f(ratios.ours_remount_vs_native_cold.ratio).padStart(8)}   goal ≥ 0.9`);
  L.push(`ours parallel / native parallel    ${f(ratios.ours_parallel_vs_native_parallel.ratio).padStart(8)}`);
  L.push(`naive C cold / native cold         ${f(ratios.naive_c_cold_vs_native_cold.ratio).padStart(8)}   (context: what any daemon costs)`);
  // the same ratios round by round: cold figures on a shared VM vary a lot between rounds
  const perRound = (v: VariantName, k: CaseName, w: VariantName, l: CaseName): number[] =>
    results[v].map((x, i) => (x[k] && results[w][i]?.[l] ? (x[k]!.bytes / x[k]!.seconds) / (results[w][i][l]!.bytes / results[w][i][l]!.seconds) : NaN));
  const rr = {
    ours_cold_vs_naive_c_cold: perRound('nydus-ts', 'cold', 'naive-c', 'cold'),
    ours_remount_vs_native_cold: perRound('nydus-ts', 'remount', 'native', 'cold'),
    naive_c_cold_vs_native_cold: perRound('naive-c', 'cold', 'native', 'cold'),
  };
  for (const [k, xs] of Object.entries(rr)) if (xs.length > 1 && xs.some(Number.isFinite)) L.push(`  per round, ${k.replace(/_/g, ' ')}: ${xs.map(f).join(', ')}`);
  L.push('');
  const ms = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : 'n/a');
  if (latency.nydus_ts_cold) L.push(`event latency, nydus-ts (its metrics, cold read): p50 ${ms(latency.nydus_ts_cold.p50_ms)} ms, p99 ${ms(latency.nydus_ts_cold.p99_ms)} ms` +
    (latency.nydus_ts_parallel ? `; parallel: p50 ${ms(latency.nydus_ts_parallel.p50_ms)} ms, p99 ${ms(latency.nydus_ts_parallel.p99_ms)} ms` : ''));
  else if (a.variants.includes('nydus-ts')) L.push('event latency, nydus-ts: not reported');
  if (latency.naive_c_cold) L.push(`event handling time, naive C (read of the batch → response written, cold read): p50 ${ms(latency.naive_c_cold.p50_ms)} ms, p99 ${ms(latency.naive_c_cold.p99_ms)} ms`);
  const last = <T>(xs: T[]): T | undefined => xs[xs.length - 1];
  const nc = last(results['naive-c']);
  if (nc) {
    const e = (x?: CaseResult): string => {
      const s = x?.events as NaiveStats | undefined;
      if (!s) return '-';
      if (!s.events) return '0 events';
      const sizes = Object.entries(s.sizes).sort((p, q) => q[1] - p[1]).map(([k, n]) => `${n}×${+k % 1024 ? k : `${+k / 1024}K`}`).join(' ');
      return `${s.events} events (${sizes}), ≤ ${s.max_batch} per read(), pread ${s.pread_ms.toFixed(0)} ms + pwrite ${s.pwrite_ms.toFixed(0)} ms`;
    };
    L.push(`naive C, last round: cold ${e(nc.cold)}; warm ${e(nc.warm)}; remount ${e(nc.remount)}; parallel ${e(nc.parallel)}`);
  }
  const oc = last(results['nydus-ts']);
  const cpuLine = (v: VariantName): void => {
    const rr0 = last(results[v]);
    if (!rr0) return;
    const cell = (k: CaseName): string => {
      const x = rr0[k];
      return x?.daemon_cpu_ms === undefined || !Number.isFinite(x.daemon_cpu_ms) ? '' : `${k} ${x.daemon_cpu_ms.toFixed(0)} ms (${(x.daemon_cpu_ms / 1000 / x.seconds * 100).toFixed(0)}% of the read's time)`;
    };
    const cells = CASES.map(cell).filter(Boolean);
    if (cells.length) L.push(`${v} daemon CPU during the timed reads (10 ms ticks), last round: ${cells.join(', ')}`);
  };
  cpuLine('naive-c');
  cpuLine('nydus-ts');
  if (oc) {
    const e = (x?: CaseResult): string => Object.entries((x?.events as Record<string, number>) ?? {}).map(([k, n]) => `${k} ${Number.isFinite(n) ? n : '?'}`).join(', ');
    L.push(`nydus-ts, last round: cold: ${e(oc.cold)}; warm: ${e(oc.warm)}; remount: ${e(oc.remount)}; parallel: ${e(oc.parallel)}`);
    L.push(`nydus-ts backend bytes after remount, per round: ${results['nydus-ts'].map((x) => x.remount_backend_bytes).join(', ')} (expected 0)`);
  }
  if (loads.some((x) => x > 0.25)) L.push(`warning: other processes kept the CPUs busy before round(s) ${loads.map((x, i) => (x > 0.25 ? `${i + 1} (${(x * 100).toFixed(0)}%)` : '')).filter(Boolean).join(', ')}; rerun on a quiet machine (--wait-quiet S)`);
  if (oursError) L.push(`\nnydus-ts FAILED: ${firstLine(oursError)}`);
  L.push('');
  const json = {
    benchmark: 'read-host', kernel: os.release(), cpus: os.cpus().length, size_bytes: size, rounds: a.rounds, prime: a.prime, sources: a.sources, other_load_per_round: loads,
    image: { blob_id: blobId, blob_bytes: blobBytes, create_s: createS, compressor: 'zstd', digester: 'blake3' },
    parallel: { readers: a.readers, reader_mib: a.readerMiB, piece_kib: a.pieceKiB },
    mib_per_s: summary, ratios, ratios_per_round: rr, latency, per_round: results, nydus_ts_error: oursError?.message ?? null,
  };
  return { text: L.join('\n'), json };
}
