/**
 * The start-up benchmark's report: per rate and image, medians of each contender, ratios full /
 * lazy (overlayfs over each nydus-ts variant), bytes over the link against the image's size, the
 * issue's goals, and the breakdown of our own start-up; the same as JSON.
 */
import { fmtPct, fmtX, loadWarning, machine, markdownTable, median, MiB, ratio } from './harness';
import { LinkCounters, rateLabel } from './netmodel';

export interface ImageSetup {
  name: string;
  title: string;
  workload: string[];
  oci_layers: Array<{ size: number; uncompressed: number; created_by: string }>;
  /** the OCI image's gzip layers: what a full pull downloads */
  oci_bytes: number;
  uncompressed_bytes: number;
  nydus_blob_bytes: number;
  /** `nydus-ts optimize`'s record of the workload (nydus-ts-optimized) */
  optimized?: { read_bytes: number; files_read: number; startup_compressed_bytes: number; prefetch_files: number };
}

/** Seconds since the clock started, from the snapshotter's and the daemon's logs. */
export interface Breakdown {
  /** the container's rootfs snapshot prepared (ctr run has created the container) */
  prepare_s: number;
  /** the daemon's first log line, its supervisor's (node start + the CLI's modules); NaN when it ran already */
  daemon_first_log_s: number;
  /** the daemon's serving process logs "serving" (its own node start, the daemon's modules, the front end) */
  daemon_serving_s: number;
  /** the snapshotter found the daemon RUNNING */
  daemon_up_s: number;
  /** the image registered and mounted */
  mounted_s: number;
}

export interface StartRun {
  image: string;
  variant: string;
  rate_mbit: number | null;
  rtt_ms: number;
  round: number;
  /** seconds since the start of the pull */
  pull_s: number;
  started_s: number;
  first_output_s: number;
  end_s: number;
  /** the host veth's counters over the run */
  link: LinkCounters;
  registry: { requests: number; blob_gets: number; blob_bytes: number; total_bytes: number };
  daemon: { backend_bytes: number; backend_requests: number; chunks_fetched: number } | null;
  breakdown?: Breakdown;
  output_bytes: number;
  output_sha256: string;
  cpu_load_before: number;
}

interface ReportInput {
  runs: StartRun[];
  images: ImageSetup[];
  variants: string[];
  labels: Record<string, string>;
  rates: Array<number | null>;
  rttMs: number;
  rounds: number;
  dropCaches: boolean;
  /** `nydus-ts --version`: node start + the CLI's entry modules */
  cliStartS: number;
  relayChecks: Array<{ rate_mbit: number | null; direct_mbit: number; relay_mbit: number }>;
}

const s2 = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : '–');
const mib = (x: number): string => (Number.isFinite(x) ? (x / MiB).toFixed(1) : '–');

export function report(inp: ReportInput): { text: string; json: unknown } {
  const m = machine();
  const L: string[] = [];
  const of = (img: string, rate: number | null, v: string): StartRun[] => inp.runs.filter((r) => r.image === img && r.rate_mbit === rate && r.variant === v);
  const med = (img: string, rate: number | null, v: string, f: (r: StartRun) => number): number => median(of(img, rate, v).map(f));
  const FULL = inp.variants[0];
  const lazy = inp.variants.slice(1);
  L.push(`Container start-up on a modelled link, ${m.date.slice(0, 10)}: ${m.host_cpus} CPUs (${m.cpu_model}), ${m.memory_gib} GiB, kernel ${m.kernel}, node ${m.node}`);
  L.push(`${inp.rounds} round(s), medians; ${inp.dropCaches ? 'cold page cache' : 'WARM page cache'}, fresh containerd + snapshotter + daemon per run; registry in its own network namespace behind veth + tbf${inp.rttMs ? `, +${inp.rttMs} ms RTT (delay relay)` : ''}; seconds since the start of the pull`);
  for (const c of inp.relayChecks) L.push(`delay relay at ${rateLabel(c.rate_mbit)}: ${c.relay_mbit.toFixed(0)} Mbit/s through it, ${c.direct_mbit.toFixed(0)} Mbit/s straight${c.relay_mbit < 0.9 * c.direct_mbit ? ' — it does NOT keep up at this rate' : ''}`);
  L.push('');
  L.push('Images (OCI: gzip layers, what a full pull downloads; nydus: zstd data blobs):');
  for (const i of inp.images) L.push(`  ${i.name}: ${i.title}; ${i.oci_layers.length} layer(s) ${mib(i.oci_bytes)} MiB gzip, ${mib(i.uncompressed_bytes)} MiB unpacked; nydus ${mib(i.nydus_blob_bytes)} MiB; workload \`${i.workload.join(' ')}\``);

  const summary: string[][] = [];
  const goals: Array<{ goal: string; image: string; rate: string; variant: string; value: number; met: boolean }> = [];
  for (const rate of inp.rates) {
    L.push('', `### ${rateLabel(rate)}`, '');
    const rows: string[][] = [];
    for (const i of inp.images) {
      for (const v of inp.variants) {
        const f = (g: (r: StartRun) => number): number => med(i.name, rate, v, g);
        rows.push([i.name, inp.labels[v] ?? v, s2(f((r) => r.pull_s)), s2(f((r) => r.started_s)), s2(f((r) => r.first_output_s)), s2(f((r) => r.end_s)),
          mib(f((r) => r.link.rx_bytes)), `${f((r) => r.registry.requests)} (${f((r) => r.registry.blob_gets)})`,
          v === FULL ? '–' : `${mib(f((r) => r.daemon?.backend_bytes ?? NaN))} (${f((r) => r.daemon?.backend_requests ?? NaN)})`]);
      }
    }
    L.push(...markdownTable(['image', 'variant', 'pull', 'started', 'first output', 'end', 'link MiB in', 'registry requests (blob GETs)', 'daemon fetched MiB (requests)'], rows));
    L.push('');
    for (const i of inp.images) {
      for (const v of lazy) {
        const r = (g: (x: StartRun) => number): number => ratio(med(i.name, rate, FULL, g), med(i.name, rate, v, g));
        const lazyBytes = med(i.name, rate, v, (x) => x.link.rx_bytes);
        const share = lazyBytes / i.oci_bytes;
        L.push(`${i.name}, full / ${v}: started ${fmtX(r((x) => x.started_s))}, first output ${fmtX(r((x) => x.first_output_s))}, end ${fmtX(r((x) => x.end_s))}; link bytes ${v} / full ${fmtPct(ratio(lazyBytes, med(i.name, rate, FULL, (x) => x.link.rx_bytes)))}, = ${fmtPct(share)} of the gzip image (${fmtPct(lazyBytes / i.nydus_blob_bytes)} of the nydus blobs)`);
        const endRatio = r((x) => x.end_s);
        summary.push([i.name, `${mib(i.oci_bytes)} / ${mib(i.uncompressed_bytes)}`, rateLabel(rate), v, s2(med(i.name, rate, FULL, (x) => x.end_s)), s2(med(i.name, rate, v, (x) => x.end_s)), `**${fmtX(endRatio)}**`,
          `${mib(med(i.name, rate, FULL, (x) => x.link.rx_bytes))} / ${mib(lazyBytes)} (${fmtPct(share)})`,
          `${med(i.name, rate, FULL, (x) => x.registry.requests)} / ${med(i.name, rate, v, (x) => x.registry.requests)}`]);
        if (v === 'nydus-ts' || v === 'nydus-ts-optimized') {
          const want = v === 'nydus-ts' ? 10 : 20;
          if (rate === 100 && (i.name === 'python' || i.name === 'node')) goals.push({ goal: `end ≥ ${want}× sooner than the full pull at 100 Mbit/s`, image: i.name, rate: rateLabel(rate), variant: v, value: endRatio, met: endRatio >= want });
          if (v === 'nydus-ts') goals.push({ goal: 'bytes over the link ≤ 10 % of the compressed image', image: i.name, rate: rateLabel(rate), variant: v, value: share, met: share <= 0.1 });
          if (rate === null) goals.push({ goal: 'never slower than the full pull at unlimited rate', image: i.name, rate: rateLabel(rate), variant: v, value: endRatio, met: endRatio >= 1 });
        }
        if (v === 'nydus-ts-optimized' && i.optimized) {
          const over = lazyBytes / i.optimized.startup_compressed_bytes;
          L.push(`  ${i.name}, optimized: the workload read ${mib(i.optimized.read_bytes)} MiB (${i.optimized.files_read} files), ${mib(i.optimized.startup_compressed_bytes)} MiB as stored (compressed start-up chunks); link bytes are ${fmtX(over, 2)} that`);
          goals.push({ goal: 'bytes over the link within 1.2× of what the workload read (compressed start-up chunks)', image: i.name, rate: rateLabel(rate), variant: v, value: over, met: over <= 1.2 });
        }
      }
    }
  }

  L.push('', '### Summary: workload end, full pull (overlayfs) against lazy', '');
  L.push(...markdownTable(['image', 'gzip / unpacked MiB', 'link', 'lazy variant', 'full end s', 'lazy end s', 'full / lazy', 'link MiB in: full / lazy (share of gzip image)', 'registry requests full / lazy'], summary));

  L.push('', '### Where the time goes (medians, seconds)', '');
  const bd: string[][] = [];
  for (const rate of inp.rates) {
    for (const i of inp.images) {
      for (const v of inp.variants) {
        const f = (g: (r: StartRun) => number): number => med(i.name, rate, v, g);
        const b = (k: keyof Breakdown): number => f((r) => r.breakdown?.[k] ?? NaN);
        const mountedFrom = Number.isFinite(b('daemon_up_s')) ? b('daemon_up_s') : b('prepare_s');
        bd.push([rateLabel(rate), i.name, v, s2(f((r) => r.pull_s)),
          v === FULL ? '–' : s2(b('prepare_s') - f((r) => r.pull_s)),
          v === FULL ? '–' : s2(b('daemon_first_log_s') - b('prepare_s')),
          v === FULL ? '–' : s2(b('daemon_serving_s') - b('daemon_first_log_s')),
          v === FULL ? '–' : s2(b('daemon_up_s') - b('daemon_serving_s')),
          v === FULL ? '–' : s2(b('mounted_s') - mountedFrom),
          s2(f((r) => r.started_s) - (v === FULL ? f((r) => r.pull_s) : b('mounted_s'))),
          s2(f((r) => r.first_output_s - r.started_s)), s2(f((r) => r.end_s - r.first_output_s))]);
      }
    }
  }
  L.push(...markdownTable(['link', 'image', 'variant', 'CRI pull', 'ctr run → rootfs prepared', '→ daemon supervisor up (node, CLI)', '→ serving process up (node, daemon modules, front end)', '→ snapshotter sees it', '→ registered + mounted', '→ task started', '→ first output', '→ end'], bd));
  L.push(`\`nydus-ts --version\` (node start + the CLI's entry modules): ${s2(inp.cliStartS)} s; the CRI pull runs it once in every variant.`);

  L.push('', '### Goals', '');
  for (const g of goals) L.push(`- ${g.image}, ${g.variant}, ${g.rate}: ${g.goal}: ${g.goal.startsWith('bytes over the link ≤') ? fmtPct(g.value) : fmtX(g.value, 2)} — ${g.met ? 'met' : 'NOT met'}`);
  for (const i of inp.images) {
    const shas = new Set(inp.runs.filter((r) => r.image === i.name).map((r) => r.output_sha256));
    if (shas.size > 1) L.push(`warning: ${i.name}: the workload's output differs between runs (${shas.size} distinct)`);
  }
  L.push(...loadWarning(inp.runs.map((r) => r.cpu_load_before)));
  return {
    text: L.join('\n'),
    json: { benchmark: 'start', ...m, rounds: inp.rounds, rtt_ms: inp.rttMs, drop_caches: inp.dropCaches, variants: inp.variants, rates_mbit: inp.rates, cli_start_s: inp.cliStartS, relay_checks: inp.relayChecks, images: inp.images, goals, runs: inp.runs },
  };
}
