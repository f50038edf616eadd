/**
 * Build benchmark (issue #11's build goal; not a test): `nydus-ts create` against mkfs.erofs
 * (Debian's 1.5 and, when given, a current release) on one large real tree, and the build's peak
 * memory on a tree N× larger. See bench/README.md.
 *
 * Every build is a child process run under `/usr/bin/time -f '%e %M %U %S'` (wall time is taken
 * around the spawn with a monotonic clock; peak RSS, user and system CPU come from time(1)).
 * Runs are interleaved (round 1 of every variant, then round 2, …) so drift hits all of them
 * alike, and the median of each is reported. Outputs are deleted before each run.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import {
  CLI, benchMain, dropCaches, logger, machine, median, opt, parseArgs, ratio, usageText, writeJson, UsageError, MiB,
} from './lib/harness';
import { makeScaledTree } from './build-scale';

const TIME = '/usr/bin/time';
const log = logger('build-bench');

interface Variant {
  name: string;
  kind: 'ours' | 'erofs';
  compressor?: string;
  digester?: string;
  /** mkfs.erofs binary (default: Debian's, on PATH) */
  mkfs?: string;
  /** mkfs.erofs followed by `sync FILES` (our builder fsyncs its outputs; mkfs.erofs does not) */
  fsync?: boolean;
  /** nydus-ts CLI to run (default: this repository's dist/src/cli/main.js) */
  cli?: string;
}

const VARIANT_KEYS = ['erofs', 'erofs-new', 'erofs-fsync', 'zstd', 'lz4', 'none', 'none-sha256'] as const;
type VariantKey = (typeof VARIANT_KEYS)[number];
const DEFAULT_VARIANTS: VariantKey[] = ['erofs', 'erofs-new', 'zstd', 'lz4', 'none'];
const NAME_W = 36;

const spec = {
  source: opt.path('--source', 'tree to build (e.g. made by scripts/make-rootfs.sh); required', 'DIR'),
  runs: opt.int('--runs', 5, 'timed runs per variant, median reported'),
  cache: opt.choice('--cache', ['warm', 'cold'] as const, 'warm', 'warm: read the whole tree right before every run (this VM pages out files unused for a few seconds); cold: sync and drop the page cache before every run (root only)'),
  threads: opt.optInt('--threads', 'nydus-ts --threads (default: its own, the CPU count)'),
  variants: opt.list('--variants', DEFAULT_VARIANTS, 'which builds', VARIANT_KEYS),
  erofsNew: opt.path('--mkfs-erofs-new', 'a current mkfs.erofs (e.g. erofs-utils 1.9.3 built from source) for the erofs-new variant; default $NYDUS_TS_BENCH_MKFS_EROFS_NEW, skipped when neither is set', 'FILE'),
  scale: opt.int('--scale', 10, 'also build a tree of N copies of the source (each copy\'s file bytes XORed with its number: N× the data, none of it deduplicated) once with nydus-ts zstd and each mkfs.erofs, for peak memory as the tree grows; 0 skips it', { min: 0 }),
  work: opt.path('--work', 'where outputs (and the scaled tree) go (default: a temporary directory, removed at the end)', 'DIR'),
  outputJson: opt.path('--output-json', 'machine-readable results', 'FILE'),
  breakdown: opt.flag('--breakdown', 'also time the build\'s phases in-process (scan, read, hash+compress, full build)'),
  cpuProf: opt.path('--cpu-prof', 'also run one zstd build under node --cpu-prof and summarise the hottest functions (profiles of every thread in DIR)', 'DIR'),
  cli: opt.path('--cli', 'the nydus-ts CLI (main.js) to benchmark (default: this repository\'s)', 'FILE'),
  compareCli: opt.path('--compare-cli', 'also run every nydus-ts variant with another build of the CLI (e.g. a copy of the repository before a change), interleaved, shown as "[compare]"', 'FILE'),
  waitQuiet: opt.num('--wait-quiet', 0, 'before each run, wait up to this many seconds for other processes to leave the CPUs idle; runs that still had company are flagged either way', 'S'),
};
type Args = ReturnType<typeof parseArgs<typeof spec>> & { cliPath: string };

const USAGE = usageText('usage: node dist/bench/build-bench.js --source DIR [options]', spec);

function variantsOf(a: Args): Record<VariantKey, Variant> {
  return {
    erofs: { name: 'mkfs.erofs 1.5 (Debian)', kind: 'erofs', mkfs: 'mkfs.erofs' },
    'erofs-new': { name: `mkfs.erofs ${a.erofsNew ? erofsVersion(a.erofsNew) : '(new)'}`, kind: 'erofs', mkfs: a.erofsNew },
    'erofs-fsync': { name: 'mkfs.erofs 1.5 + fsync', kind: 'erofs', mkfs: 'mkfs.erofs', fsync: true },
    zstd: { name: 'nydus-ts zstd blake3', kind: 'ours', compressor: 'zstd', digester: 'blake3' },
    lz4: { name: 'nydus-ts lz4_block blake3', kind: 'ours', compressor: 'lz4_block', digester: 'blake3' },
    none: { name: 'nydus-ts none blake3', kind: 'ours', compressor: 'none', digester: 'blake3' },
    'none-sha256': { name: 'nydus-ts none sha256', kind: 'ours', compressor: 'none', digester: 'sha256' },
  };
}

function erofsVersion(mkfs: string): string {
  const r = spawnSync(mkfs, ['--version'], { encoding: 'utf8' });
  const m = /(\d+\.\d+(\.\d+)?)/.exec(`${r.stdout ?? ''}${r.stderr ?? ''}`);
  if (m) return m[1];
  // 1.5 has no --version; its usage text names no version either
  return mkfs === 'mkfs.erofs' ? '1.5' : '?';
}

// ---------------------------------------------------------------------------------------------
// Source tree statistics and cache handling

interface TreeStats {
  entries: number;
  dirs: number;
  regularFiles: number;
  /** bytes of regular-file content, each hardlinked inode counted once */
  bytes: number;
  symlinks: number;
  hardlinkedInodes: number;
}

function treeStats(root: string): TreeStats {
  const s: TreeStats = { entries: 0, dirs: 0, regularFiles: 0, bytes: 0, symlinks: 0, hardlinkedInodes: 0 };
  const seen = new Set<string>();
  const stack = [root];
  while (stack.length) {
    const dir = stack.pop()!;
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      s.entries++;
      if (e.isDirectory()) {
        s.dirs++;
        stack.push(p);
      } else if (e.isSymbolicLink()) s.symlinks++;
      else if (e.isFile()) {
        const st = fs.lstatSync(p);
        if (st.nlink > 1) {
          const key = `${st.dev}:${st.ino}`;
          if (seen.has(key)) continue;
          seen.add(key);
          s.hardlinkedInodes++;
        }
        s.regularFiles++;
        s.bytes += st.size;
      }
    }
  }
  return s;
}

/** Read every regular file once (page cache warm-up). */
function warmTree(root: string): void {
  const buf = Buffer.allocUnsafe(1 << 20);
  const stack = [root];
  while (stack.length) {
    const dir = stack.pop()!;
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) stack.push(p);
      else if (e.isFile()) {
        const fd = fs.openSync(p, 'r');
        try {
          while (fs.readSync(fd, buf, 0, buf.length, null) > 0) { /* discard */ }
        } finally {
          fs.closeSync(fd);
        }
      }
    }
  }
}

let dropWarned = false;
function prepareCache(a: Args, src: string): void {
  if (a.cache === 'warm') {
    warmTree(src);
    return;
  }
  try {
    dropCaches();
  } catch (e) {
    if (!dropWarned) log(`warning: cannot drop caches (${(e as Error).message}); runs are not cold`);
    dropWarned = true;
  }
}

// ---------------------------------------------------------------------------------------------
// Running one build

interface RunResult {
  wall_s: number;
  /** from time(1) %e (10 ms resolution), for reference */
  time_wall_s: number;
  peak_rss_kb: number;
  user_s: number;
  sys_s: number;
  meta_bytes: number;
  blob_bytes: number;
  /** nydus-ts only: the build report's phase times */
  trace?: Record<string, number>;
  /**
   * CPU time other processes used on this machine during the run (busy time from /proc/stat
   * minus the build's own user + system time): other load skews the comparison, above all for
   * our multi-threaded build against the single-threaded mkfs.erofs.
   */
  other_cpu_s: number;
}

/** Busy CPU seconds of the whole machine so far (all but idle and iowait, from /proc/stat). */
function machineBusy(): number {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((x, y) => x + y, 0);
    return (total - f[3] - (f[4] ?? 0)) / 100; // USER_HZ
  } catch {
    return NaN;
  }
}

/** Wait until the machine has been nearly idle for half a second, at most `maxS` seconds. */
async function waitQuiet(maxS: number): Promise<void> {
  if (maxS <= 0) return;
  const cores = os.cpus().length;
  const start = Date.now();
  let said = false;
  for (;;) {
    const b0 = machineBusy();
    await new Promise((r) => setTimeout(r, 500));
    const load = (machineBusy() - b0) / 0.5 / cores;
    if (!(load > 0.1)) return;
    if ((Date.now() - start) / 1000 >= maxS) {
      log(`machine still ${(load * 100).toFixed(0)}% busy after ${maxS} s; running anyway`);
      return;
    }
    if (!said) log(`waiting for a quiet machine (${(load * 100).toFixed(0)}% busy)`);
    said = true;
  }
}

function dirSize(p: string): number {
  let n = 0;
  if (!fs.existsSync(p)) return 0;
  for (const e of fs.readdirSync(p)) n += fs.statSync(path.join(p, e)).size;
  return n;
}

function command(v: Variant, out: string, src: string, a: Args, nodeFlags: string[] = []): { argv: string[]; meta: string; blob: string; report?: string } {
  if (v.kind === 'erofs') {
    const img = path.join(out, 'erofs.img');
    const blob = path.join(out, 'erofs.blob');
    const mkfs = [v.mkfs!, '--quiet', '--chunksize=1048576', `--blobdev=${blob}`, img, src];
    const argv = v.fsync ? ['sh', '-c', `"$@" && exec sync -- "${img}" "${blob}"`, 'sh', ...mkfs] : mkfs;
    return { argv, meta: img, blob };
  }
  const boot = path.join(out, 'image.boot');
  const blobs = path.join(out, 'blobs');
  const report = path.join(out, 'report.json');
  const argv = ['node', ...nodeFlags, v.cli ?? a.cliPath, 'create', '-B', boot, '-D', blobs, '-J', report, '--compressor', v.compressor!, '--digester', v.digester!];
  if (a.threads) argv.push('--threads', String(a.threads));
  argv.push(src);
  return { argv, meta: boot, blob: blobs, report };
}

function runOnce(v: Variant, out: string, src: string, a: Args, nodeFlags: string[] = []): Promise<RunResult> {
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(out, { recursive: true });
  const cmd = command(v, out, src, a, nodeFlags);
  const timeFile = path.join(out, '.time');
  const logFile = path.join(out, '.log');
  prepareCache(a, src);
  const logFd = fs.openSync(logFile, 'w');
  const busy0 = machineBusy();
  const t0 = process.hrtime.bigint();
  const child = spawn(TIME, ['-f', '%e %M %U %S', '-o', timeFile, ...cmd.argv], {
    stdio: ['ignore', logFd, logFd],
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      const wall = Number(process.hrtime.bigint() - t0) / 1e9;
      const busy = machineBusy() - busy0;
      fs.closeSync(logFd);
      if (code !== 0) {
        const tail = fs.readFileSync(logFile, 'utf8').split('\n').slice(-15).join('\n');
        reject(new Error(`${v.name}: ${cmd.argv.join(' ')} exited with ${code ?? signal}\n${tail}`));
        return;
      }
      const [e, m, u, s] = fs.readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(/\s+/).map(Number);
      const r: RunResult = {
        wall_s: wall, time_wall_s: e, peak_rss_kb: m, user_s: u, sys_s: s,
        other_cpu_s: Math.max(0, busy - u - s),
        meta_bytes: fs.statSync(cmd.meta).size,
        blob_bytes: v.kind === 'erofs' ? fs.statSync(cmd.blob).size : dirSize(cmd.blob),
      };
      if (cmd.report) {
        const rep = JSON.parse(fs.readFileSync(cmd.report, 'utf8')) as { trace?: { consumed_time?: Record<string, number> } };
        r.trace = rep.trace?.consumed_time;
      }
      resolve(r);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Statistics and output

interface VariantSummary {
  key: string;
  name: string;
  command: string;
  runs: RunResult[];
  median_wall_s: number;
  min_wall_s: number;
  max_wall_s: number;
  median_cpu_s: number;
  median_peak_rss_kb: number;
  throughput_mb_s: number;
  meta_bytes: number;
  blob_bytes: number;
  /** ours / mkfs.erofs 1.5 */
  time_ratio_vs_erofs: number | null;
  rss_ratio_vs_erofs: number | null;
  /** ours / the current mkfs.erofs (erofs-new), when it ran */
  time_ratio_vs_erofs_new: number | null;
  median_trace?: Record<string, number>;
  /** runs during which other processes kept a core more than a quarter busy */
  contended_runs: number;
}

function summarise(key: string, v: Variant, runs: RunResult[], cmd: string, srcBytes: number): VariantSummary {
  const walls = runs.map((r) => r.wall_s);
  const s: VariantSummary = {
    key, name: v.name, command: cmd, runs,
    median_wall_s: median(walls), min_wall_s: Math.min(...walls), max_wall_s: Math.max(...walls),
    median_cpu_s: median(runs.map((r) => r.user_s + r.sys_s)),
    median_peak_rss_kb: median(runs.map((r) => r.peak_rss_kb)),
    throughput_mb_s: 0,
    meta_bytes: runs[runs.length - 1].meta_bytes,
    blob_bytes: runs[runs.length - 1].blob_bytes,
    time_ratio_vs_erofs: null,
    rss_ratio_vs_erofs: null,
    time_ratio_vs_erofs_new: null,
    contended_runs: runs.filter(contended).length,
  };
  s.throughput_mb_s = srcBytes / 1e6 / s.median_wall_s;
  if (runs[0].trace) {
    s.median_trace = {};
    for (const k of Object.keys(runs[0].trace)) s.median_trace[k] = median(runs.map((r) => r.trace?.[k] ?? 0));
  }
  return s;
}

function contended(r: RunResult): boolean {
  return r.other_cpu_s > 0.25 * r.wall_s;
}

function mib(n: number): string {
  return (n / MiB).toFixed(1);
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padEnd(n) : s.padStart(n);
}

function printTable(rows: VariantSummary[], runs: number): void {
  const head = ['variant', 'wall s', 'min', 'max', 'CPU s', 'RSS MiB', 'MB/s', 'meta MiB', 'blob MiB', 'time ×', 'RSS ×', '× new'];
  const w = [NAME_W, 7, 6, 6, 6, 8, 6, 9, 9, 7, 6, 6];
  const line = (cells: string[]): string => cells.map((c, i) => pad(c, w[i], i === 0)).join(' ');
  console.log(`\nmedian of ${runs} run(s); × = ours / mkfs.erofs 1.5, × new = ours / the current mkfs.erofs`);
  console.log(line(head));
  console.log(line(w.map((n) => '-'.repeat(n))));
  const x = (v: number | null): string => (v === null ? '' : v.toFixed(2));
  for (const r of rows) {
    console.log(line([
      r.name, r.median_wall_s.toFixed(2), r.min_wall_s.toFixed(2), r.max_wall_s.toFixed(2), r.median_cpu_s.toFixed(2),
      mib(r.median_peak_rss_kb * 1024), r.throughput_mb_s.toFixed(0), mib(r.meta_bytes), mib(r.blob_bytes),
      x(r.time_ratio_vs_erofs), x(r.rss_ratio_vs_erofs), x(r.time_ratio_vs_erofs_new),
    ]));
  }
  const busy = rows.filter((r) => r.contended_runs > 0);
  if (busy.length) {
    console.log(`\nwarning: other processes used the CPU during ${busy.map((r) => `${r.contended_runs} run(s) of ${r.name}`).join(', ')}; those figures are skewed (rerun on a quiet machine)`);
  }
  const traced = rows.filter((r) => r.median_trace);
  if (traced.length) {
    console.log('\nnydus-ts phases (median, from its -J report; dump_blob = scan + read + hash/compress + blob write; after it: stop workers, bootstrap layout + write, wait for the blob\'s fsync, bootstrap fsync)');
    for (const r of traced) {
      const t = r.median_trace!;
      const f = (k: string): string => (t[k] ?? NaN).toFixed(2);
      console.log(`  ${pad(r.name, NAME_W, true)} total ${f('total_build')} s: dump_blob ${f('dump_blob')}, stop_workers ${f('stop_workers')}, layout_bootstrap ${f('layout_bootstrap')}, blob_sync_wait ${f('blob_sync_wait')}, write_bootstrap ${f('write_bootstrap')} (process wall ${r.median_wall_s.toFixed(2)} s: the rest is node start-up and exit)`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// In-process breakdown: each phase of the build on its own

interface Breakdown {
  scan_s: number;
  entries: number;
  files: number;
  read_s: number;
  read_bytes: number;
  cpu: Record<string, { s: number; mb_s: number }>;
  full_build: Record<string, { total_s: number; dump_blob_s: number; dump_bootstrap_s: number }>;
}

async function breakdown(src: string, a: Args, work: string): Promise<Breakdown> {
  /* eslint-disable @typescript-eslint/no-require-imports */
  const { scanDirectory, readFileChunks } = require('../src/builder/dir-source') as typeof import('../src/builder/dir-source');
  const { ChunkPool } = require('../src/codec/chunk-pool') as typeof import('../src/codec/chunk-pool');
  const { createImage } = require('../src/builder/build') as typeof import('../src/builder/build');
  /* eslint-enable @typescript-eslint/no-require-imports */
  const CS = 1 << 20;
  const threads = a.threads ?? os.availableParallelism();
  const out: Breakdown = { scan_s: 0, entries: 0, files: 0, read_s: 0, read_bytes: 0, cpu: {}, full_build: {} };

  prepareCache(a, src);
  let t = performance.now();
  const { files } = scanDirectory(src);
  out.scan_s = (performance.now() - t) / 1000;
  out.files = files.length;

  // Reading alone (one file at a time, chunk-sized reads into fresh buffers).
  prepareCache(a, src);
  t = performance.now();
  const chunks: Buffer[] = [];
  for (const f of files) {
    for await (const b of readFileChunks(f.path, f.inode.size, CS, f.display)) {
      out.read_bytes += b.length;
      chunks.push(b);
    }
  }
  out.read_s = (performance.now() - t) / 1000;

  // Hashing + compression alone, from memory, on the pool.
  const pool = await ChunkPool.create({ threads });
  for (const [c, d] of [['zstd', 'blake3'], ['lz4_block', 'blake3'], ['none', 'blake3'], ['none', 'sha256']] as const) {
    t = performance.now();
    const pending: Promise<unknown>[] = [];
    const limit = Math.max(4, threads * 4);
    for (const b of chunks) {
      if (pending.length >= limit) await pending.shift();
      pending.push(pool.process(b, c, d));
    }
    await Promise.all(pending);
    const s = (performance.now() - t) / 1000;
    out.cpu[`${c}+${d}`] = { s, mb_s: out.read_bytes / 1e6 / s };
  }
  await pool.close();
  chunks.length = 0;

  // The whole build in this process (no node start-up), with the report's phase split.
  for (const c of ['zstd', 'none'] as const) {
    const dir = path.join(work, `breakdown-${c}`);
    fs.rmSync(dir, { recursive: true, force: true });
    prepareCache(a, src);
    const rep = await createImage({ type: 'dir', source: src, bootstrap: path.join(dir, 'boot'), blobDir: path.join(dir, 'blobs'), compressor: c, digester: 'blake3', threads: a.threads });
    const ct = rep.trace.consumed_time;
    out.full_build[`${c}+blake3`] = { total_s: ct.total_build, dump_blob_s: ct.dump_blob, dump_bootstrap_s: ct.dump_bootstrap };
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

function printBreakdown(b: Breakdown): void {
  console.log('\nbreakdown (in-process, each phase alone):');
  console.log(`  scan (readdir + lstat + xattrs of the tree):       ${b.scan_s.toFixed(2)} s, ${b.files} regular files`);
  console.log(`  read (files one after another, fresh buffers):    ${b.read_s.toFixed(2)} s, ${(b.read_bytes / 1e6 / b.read_s).toFixed(0)} MB/s`);
  for (const [k, v] of Object.entries(b.cpu)) console.log(`  hash+compress ${pad(k, 16, true)} (pool, from memory): ${v.s.toFixed(2)} s, ${v.mb_s.toFixed(0)} MB/s`);
  for (const [k, v] of Object.entries(b.full_build)) console.log(`  createImage ${pad(k, 18, true)} (no node start-up): ${v.total_s.toFixed(2)} s (dump_blob ${v.dump_blob_s.toFixed(2)}, dump_bootstrap ${v.dump_bootstrap_s.toFixed(2)})`);
}

// ---------------------------------------------------------------------------------------------
// CPU profile summary (node --cpu-prof writes one .cpuprofile per thread)

interface ProfNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface Profile {
  nodes: ProfNode[];
  samples: number[];
  timeDeltas: number[];
}

function summariseProfile(file: string, top = 12): { file: string; total_ms: number; top: { fn: string; self_ms: number; pct: number }[] } {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    const f = byId.get(id)!.callFrame;
    const where = f.url ? `${path.basename(f.url)}:${f.lineNumber + 1}` : '';
    const key = `${f.functionName || '(anonymous)'}${where ? ' ' + where : ''}`;
    self.set(key, (self.get(key) ?? 0) + dt);
    total += dt;
  });
  const topList = [...self.entries()].sort((x, y) => y[1] - x[1]).slice(0, top).map(([fn, ms]) => ({ fn, self_ms: ms, pct: (100 * ms) / total }));
  return { file, total_ms: total, top: topList };
}

async function cpuProfile(v: Variant, src: string, a: Args, work: string): Promise<ReturnType<typeof summariseProfile>[]> {
  fs.mkdirSync(a.cpuProf!, { recursive: true });
  const before = new Set(fs.readdirSync(a.cpuProf!));
  await runOnce(v, path.join(work, 'cpu-prof'), src, a, ['--cpu-prof', `--cpu-prof-dir=${a.cpuProf}`]);
  const files = fs.readdirSync(a.cpuProf!).filter((f) => f.endsWith('.cpuprofile') && !before.has(f));
  return files.map((f) => summariseProfile(path.join(a.cpuProf!, f)));
}

// ---------------------------------------------------------------------------------------------
// Memory as the tree grows: one build of an N× tree per builder

interface ScaleResult {
  factor: number;
  source: TreeStats;
  builds: { key: string; name: string; wall_s: number; peak_rss_kb: number; peak_rss_1x_kb: number; growth: number; blob_bytes: number }[];
}

async function scaleCheck(a: Args, src: string, work: string, plan: { key: string; v: Variant }[], rows: VariantSummary[]): Promise<ScaleResult> {
  const dir = path.join(work, `scaled-${a.scale}x`);
  log(`scale check: a tree of ${a.scale} copies of the source in ${dir} (made once, reused)`);
  const tree = makeScaledTree(src, dir, a.scale, log);
  const stats = treeStats(tree);
  const res: ScaleResult = { factor: a.scale, source: stats, builds: [] };
  for (const { key, v } of plan) {
    if (!['zstd', 'erofs', 'erofs-new'].includes(key)) continue;
    const r = await runOnce(v, path.join(work, `${key}-scaled`), tree, a);
    const one = rows.find((x) => x.key === key)!.median_peak_rss_kb;
    res.builds.push({ key, name: v.name, wall_s: r.wall_s, peak_rss_kb: r.peak_rss_kb, peak_rss_1x_kb: one, growth: r.peak_rss_kb / one, blob_bytes: r.blob_bytes });
    log(`scale ${a.scale}× ${pad(v.name, NAME_W, true)} ${r.wall_s.toFixed(2)} s, ${mib(r.peak_rss_kb * 1024)} MiB peak RSS`);
    fs.rmSync(path.join(work, `${key}-scaled`), { recursive: true, force: true });
  }
  console.log(`\npeak memory as the tree grows: the source, then ${a.scale} copies of it (${stats.entries} entries, ${mib(stats.bytes)} MiB, no chunk repeated)`);
  for (const b of res.builds) {
    console.log(`  ${pad(b.name, NAME_W, true)} 1×: ${mib(b.peak_rss_1x_kb * 1024).padStart(6)} MiB   ${a.scale}×: ${mib(b.peak_rss_kb * 1024).padStart(6)} MiB   (${b.growth.toFixed(2)}×; ${b.wall_s.toFixed(1)} s)`);
  }
  return res;
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const parsed = parseArgs(process.argv.slice(2), spec, { usage: USAGE });
  const a: Args = { ...parsed, cliPath: parsed.cli ?? CLI, erofsNew: parsed.erofsNew ?? process.env.NYDUS_TS_BENCH_MKFS_EROFS_NEW };
  if (!a.source) throw new UsageError('--source DIR is required');
  const src = a.source;
  if (!fs.statSync(src, { throwIfNoEntry: false })?.isDirectory()) throw new UsageError(`--source ${src} is not a directory`);
  if (!fs.existsSync(TIME)) throw new UsageError(`${TIME} is missing (apt-get install time)`);
  const all = variantsOf(a);
  let keys = a.variants;
  if (keys.includes('erofs-new') && !a.erofsNew) {
    log('no current mkfs.erofs given (--mkfs-erofs-new or NYDUS_TS_BENCH_MKFS_EROFS_NEW): skipping the erofs-new variant');
    keys = keys.filter((k) => k !== 'erofs-new');
  }
  const hasOurs = keys.some((k) => all[k].kind === 'ours');
  if (hasOurs && !fs.existsSync(a.cliPath)) throw new UsageError(`${a.cliPath} is missing (run npm run build)`);
  if (a.compareCli && !fs.existsSync(a.compareCli)) throw new UsageError(`--compare-cli ${a.compareCli} is missing`);
  const plan: { key: string; v: Variant }[] = [];
  for (const k of keys) {
    plan.push({ key: k, v: all[k] });
    if (a.compareCli && all[k].kind === 'ours') plan.push({ key: `${k}@compare`, v: { ...all[k], name: `${all[k].name} [compare]`, cli: a.compareCli } });
  }
  const ownWork = !a.work;
  const work = a.work ?? fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-ts-bench-'));
  fs.mkdirSync(work, { recursive: true });

  const stats = treeStats(src);
  const m = machine();
  log(`source ${src}: ${stats.entries} entries, ${stats.regularFiles} files, ${mib(stats.bytes)} MiB of file data`);
  log(`machine: ${m.host_cpus} × ${m.cpu_model}, ${m.memory_gib} GiB, node ${m.node}; ${plan.filter((p) => p.v.kind === 'erofs').map((p) => p.v.name).join(', ')}`);

  const results = new Map<string, RunResult[]>();
  for (const { key } of plan) results.set(key, []);
  try {
    for (let round = 1; round <= a.runs; round++) {
      for (const { key, v } of plan) {
        await waitQuiet(a.waitQuiet);
        const r = await runOnce(v, path.join(work, key), src, a);
        results.get(key)!.push(r);
        log(`round ${round}/${a.runs} ${pad(v.name, NAME_W, true)} ${r.wall_s.toFixed(2)} s, ${mib(r.peak_rss_kb * 1024)} MiB peak RSS${contended(r) ? `, other load ${r.other_cpu_s.toFixed(2)} CPU s` : ''}`);
      }
    }
    const rows = plan.map(({ key, v }) => summarise(key, v, results.get(key)!, command(v, path.join(work, key), src, a).argv.join(' '), stats.bytes));
    const peer = rows.find((r) => r.key === 'erofs');
    const peerNew = rows.find((r) => r.key === 'erofs-new');
    for (const r of rows) {
      if (r.key.startsWith('erofs')) continue;
      if (peer) {
        r.time_ratio_vs_erofs = r.median_wall_s / peer.median_wall_s;
        r.rss_ratio_vs_erofs = r.median_peak_rss_kb / peer.median_peak_rss_kb;
      }
      if (peerNew) r.time_ratio_vs_erofs_new = r.median_wall_s / peerNew.median_wall_s;
    }
    printTable(rows, a.runs);

    let scale: ScaleResult | undefined;
    if (a.scale > 1 && rows.some((r) => r.key === 'zstd')) scale = await scaleCheck(a, src, work, plan, rows);

    const zstd = rows.find((r) => r.key === 'zstd');
    const goals: Record<string, { value: number; target: string; met: boolean }> = {};
    if (zstd && peer) goals.time_vs_erofs_1_5 = { value: zstd.time_ratio_vs_erofs!, target: '≤ 0.7× mkfs.erofs 1.5 wall time', met: zstd.time_ratio_vs_erofs! <= 0.7 };
    if (zstd && peerNew) goals.time_vs_erofs_new = { value: zstd.time_ratio_vs_erofs_new!, target: `≤ 2× ${peerNew.name} wall time`, met: zstd.time_ratio_vs_erofs_new! <= 2 };
    if (zstd) goals.peak_rss = { value: zstd.median_peak_rss_kb / 1024, target: '≤ 128 MiB peak RSS', met: zstd.median_peak_rss_kb <= 128 * 1024 };
    const scaled = scale?.builds.find((b) => b.key === 'zstd');
    if (scaled) goals.peak_rss_scaled = { value: scaled.peak_rss_kb / 1024, target: `≤ 128 MiB peak RSS on the ${scale!.factor}× tree`, met: scaled.peak_rss_kb <= 128 * 1024 };
    const cmp = rows.find((r) => r.key === 'zstd@compare');
    console.log('\ngoals (nydus-ts zstd + blake3):');
    for (const g of Object.values(goals)) {
      const v = g.target.includes('MiB') ? `${g.value.toFixed(1)} MiB` : `${g.value.toFixed(2)}×`;
      console.log(`  ${g.target.padEnd(44)} ${v.padStart(10)} — ${g.met ? 'met' : 'NOT met'}`);
    }
    if (cmp && peer) console.log(`  [compare] time ${ratio(cmp.median_wall_s, peer.median_wall_s).toFixed(2)}× mkfs.erofs 1.5, ${mib(cmp.median_peak_rss_kb * 1024)} MiB peak RSS`);

    let bd: Breakdown | undefined;
    if (a.breakdown) {
      log('breakdown: timing the phases in-process');
      bd = await breakdown(src, a, work);
      printBreakdown(bd);
    }
    let prof: ReturnType<typeof summariseProfile>[] | undefined;
    if (a.cpuProf) {
      log(`cpu profile: one zstd build under node --cpu-prof (profiles in ${a.cpuProf})`);
      prof = await cpuProfile(all.zstd, src, a, work);
      for (const p of prof) {
        console.log(`\n${path.basename(p.file)}: ${(p.total_ms / 1000).toFixed(2)} s sampled; top self time:`);
        for (const t of p.top) console.log(`  ${t.self_ms.toFixed(0).padStart(6)} ms ${t.pct.toFixed(1).padStart(5)}%  ${t.fn}`);
      }
    }

    if (a.outputJson) {
      writeJson(a.outputJson, {
        ...m,
        erofs_versions: plan.filter((p) => p.v.kind === 'erofs').map((p) => p.v.name),
        source: { path: src, ...stats },
        runs: a.runs, cache: a.cache, threads: a.threads ?? null, cli: a.cliPath, compare_cli: a.compareCli ?? null,
        variants: rows, goals, scale: scale ?? null, breakdown: bd ?? null, cpu_profile: prof ?? null,
      });
      log(`results in ${a.outputJson}`);
    }
  } finally {
    if (ownWork) fs.rmSync(work, { recursive: true, force: true });
  }
}

benchMain('build-bench', main);
