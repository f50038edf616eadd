/**
 * Build benchmark (the issue's, not a test): `nydus-ts create` against mkfs.erofs on one large
 * real tree (scripts/make-rootfs.sh makes a Debian bookworm minbase rootfs). See bench/README.md.
 *
 *   node dist/bench/build-bench.js --source DIR [--runs 3] [--cache warm|cold] [--threads N]
 *        [--variants LIST] [--work DIR] [--output-json FILE] [--breakdown] [--cpu-prof DIR]
 *        [--cli PATH] [--compare-cli PATH] [--wait-quiet SECONDS]
 *
 * Every build is a child process run under `/usr/bin/time -f '%e %M %U %S'` (wall time is taken
 * around the spawn with a monotonic clock; peak RSS, user and system CPU come from time(1)).
 * Runs are interleaved (round 1 of every variant, then round 2, …) so drift hits all of them
 * alike, and the median of each is reported. Caches: `warm` (default) reads the whole tree once
 * before the first round and leaves the page cache alone; `cold` syncs and drops the page cache
 * (echo 3 > /proc/sys/vm/drop_caches, root only) before every run of every variant. Outputs are
 * deleted before each run, so every run writes its image from scratch.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';

const REPO = path.resolve(__dirname, '..', '..');
const CLI = path.join(REPO, 'dist', 'src', 'cli', 'main.js');
const TIME = '/usr/bin/time';

interface Variant {
  name: string;
  kind: 'ours' | 'erofs';
  compressor?: string;
  digester?: string;
  /** mkfs.erofs followed by `sync FILES` (our builder fsyncs its outputs; mkfs.erofs 1.5 does not) */
  fsync?: boolean;
  /** nydus-ts CLI to run (default: this repository's dist/src/cli/main.js) */
  cli?: string;
}

const ALL_VARIANTS: Record<string, Variant> = {
  erofs: { name: 'mkfs.erofs', kind: 'erofs' },
  'erofs-fsync': { name: 'mkfs.erofs + fsync', kind: 'erofs', fsync: true },
  zstd: { name: 'nydus-ts zstd blake3', kind: 'ours', compressor: 'zstd', digester: 'blake3' },
  lz4: { name: 'nydus-ts lz4_block blake3', kind: 'ours', compressor: 'lz4_block', digester: 'blake3' },
  none: { name: 'nydus-ts none blake3', kind: 'ours', compressor: 'none', digester: 'blake3' },
  'none-sha256': { name: 'nydus-ts none sha256', kind: 'ours', compressor: 'none', digester: 'sha256' },
};
const DEFAULT_VARIANTS = ['erofs', 'erofs-fsync', 'zstd', 'lz4', 'none', 'none-sha256'];
const NAME_W = 36;

interface Args {
  source: string;
  runs: number;
  cache: 'warm' | 'cold';
  threads?: number;
  variants: string[];
  work?: string;
  outputJson?: string;
  breakdown: boolean;
  cpuProf?: string;
  cli: string;
  compareCli?: string;
  waitQuiet: number;
}

const USAGE = `usage: node dist/bench/build-bench.js --source DIR [options]

  --source DIR          tree to build (e.g. made by scripts/make-rootfs.sh)
  --runs N              timed runs per variant, median reported (default 3)
  --cache warm|cold     warm: read the tree once first (default); cold: sync + drop the page
                        cache before every run (root only)
  --threads N           nydus-ts --threads (default: its own default, the CPU count)
  --variants LIST       comma-separated, from: ${Object.keys(ALL_VARIANTS).join(', ')}
                        (default ${DEFAULT_VARIANTS.join(',')})
  --work DIR            where outputs go (default: a temporary directory, removed at the end)
  --output-json FILE    machine-readable results
  --breakdown           also time the build's phases in-process (scan, read, hash+compress,
                        full build) to show where the time goes
  --cpu-prof DIR        also run one zstd build under node --cpu-prof and summarise the
                        hottest functions (profiles of the main thread and the workers in DIR)
  --cli PATH            the nydus-ts CLI (main.js) to benchmark (default: this repository's)
  --compare-cli PATH    also run every nydus-ts variant with another build of the CLI (e.g. a
                        patched copy of the repository), interleaved with the others, shown
                        as "[compare]": before/after numbers from the same conditions
  --wait-quiet S        before each run, wait (up to S seconds) until other processes leave
                        the CPUs idle; runs that still had company are flagged either way
  -h, --help
`;

function parseArgs(argv: string[]): Args {
  const a: Args = { source: '', runs: 3, cache: 'warm', variants: DEFAULT_VARIANTS, breakdown: false, cli: CLI, waitQuiet: 0 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) fail(`${k} needs a value`);
      return v;
    };
    switch (k) {
      case '-h':
      case '--help':
        process.stdout.write(USAGE);
        process.exit(0);
      // eslint-disable-next-line no-fallthrough
      case '--source': a.source = val(); break;
      case '--runs': a.runs = Number(val()); break;
      case '--cache': a.cache = val() as Args['cache']; break;
      case '--threads': a.threads = Number(val()); break;
      case '--variants': a.variants = val().split(',').map((s) => s.trim()).filter(Boolean); break;
      case '--work': a.work = val(); break;
      case '--output-json': a.outputJson = val(); break;
      case '--breakdown': a.breakdown = true; break;
      case '--cpu-prof': a.cpuProf = val(); break;
      case '--cli': a.cli = path.resolve(val()); break;
      case '--compare-cli': a.compareCli = path.resolve(val()); break;
      case '--wait-quiet': a.waitQuiet = Number(val()); break;
      default:
        if (!k.startsWith('-') && !a.source) a.source = k;
        else fail(`unknown argument ${k}`);
    }
  }
  if (!a.source) fail('--source DIR is required');
  if (!Number.isInteger(a.runs) || a.runs < 1) fail('--runs must be a positive integer');
  if (a.cache !== 'warm' && a.cache !== 'cold') fail('--cache must be warm or cold');
  if (a.threads !== undefined && (!Number.isInteger(a.threads) || a.threads < 1)) fail('--threads must be a positive integer');
  for (const v of a.variants) if (!(v in ALL_VARIANTS)) fail(`unknown variant ${v}`);
  if (!(a.waitQuiet >= 0)) fail('--wait-quiet must be a number of seconds');
  return a;
}

function fail(msg: string): never {
  process.stderr.write(`build-bench: ${msg}\n\n${USAGE}`);
  process.exit(2);
}

function log(msg: string): void {
  process.stderr.write(`build-bench: ${msg}\n`);
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
function dropCaches(): void {
  spawnSync('sync', { stdio: 'ignore' });
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3\n');
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
    const mkfs = ['mkfs.erofs', '--quiet', '--chunksize=1048576', `--blobdev=${blob}`, img, src];
    const argv = v.fsync ? ['sh', '-c', `"$@" && exec sync -- "${img}" "${blob}"`, 'sh', ...mkfs] : mkfs;
    return { argv, meta: img, blob };
  }
  const boot = path.join(out, 'image.boot');
  const blobs = path.join(out, 'blobs');
  const report = path.join(out, 'report.json');
  const argv = ['node', ...nodeFlags, v.cli ?? a.cli, 'create', '-B', boot, '-D', blobs, '-J', report, '--compressor', v.compressor!, '--digester', v.digester!];
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
  if (a.cache === 'cold') dropCaches();
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

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

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
  time_ratio_vs_erofs: number | null;
  rss_ratio_vs_erofs: number | null;
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
  return (n / 1048576).toFixed(1);
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padEnd(n) : s.padStart(n);
}

function printTable(rows: VariantSummary[], runs: number): void {
  const head = ['variant', 'wall s', 'min', 'max', 'CPU s', 'RSS MiB', 'MB/s', 'meta MiB', 'blob MiB', 'time ×', 'RSS ×'];
  const w = [NAME_W, 7, 6, 6, 6, 8, 6, 9, 9, 7, 6];
  const line = (cells: string[]): string => cells.map((c, i) => pad(c, w[i], i === 0)).join(' ');
  console.log(`\nmedian of ${runs} run(s); × = ours / mkfs.erofs (plain)`);
  console.log(line(head));
  console.log(line(w.map((n) => '-'.repeat(n))));
  for (const r of rows) {
    console.log(line([
      r.name, r.median_wall_s.toFixed(2), r.min_wall_s.toFixed(2), r.max_wall_s.toFixed(2), r.median_cpu_s.toFixed(2),
      mib(r.median_peak_rss_kb * 1024), r.throughput_mb_s.toFixed(0), mib(r.meta_bytes), mib(r.blob_bytes),
      r.time_ratio_vs_erofs === null ? '' : r.time_ratio_vs_erofs.toFixed(2),
      r.rss_ratio_vs_erofs === null ? '' : r.rss_ratio_vs_erofs.toFixed(2),
    ]));
  }
  const busy = rows.filter((r) => r.contended_runs > 0);
  if (busy.length) {
    console.log(`\nwarning: other processes used the CPU during ${busy.map((r) => `${r.contended_runs} run(s) of ${r.name}`).join(', ')}; those figures are skewed (rerun on a quiet machine)`);
  }
  const traced = rows.filter((r) => r.median_trace);
  if (traced.length) {
    console.log('\nnydus-ts phases (median, from its -J report: dump_blob = scan + read + hash/compress + blob write, dump_bootstrap = layout + write)');
    for (const r of traced) {
      const t = r.median_trace!;
      console.log(`  ${pad(r.name, NAME_W, true)} total ${t.total_build?.toFixed(2)} s, dump_blob ${t.dump_blob?.toFixed(2)} s, dump_bootstrap ${t.dump_bootstrap?.toFixed(2)} s (process wall ${r.median_wall_s.toFixed(2)} s: the rest is node start-up and exit)`);
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

  if (a.cache === 'cold') dropCaches();
  let t = performance.now();
  const { files } = scanDirectory(src);
  out.scan_s = (performance.now() - t) / 1000;
  out.files = files.length;

  // Reading alone, the way the builder reads (one file at a time, chunk-sized async reads).
  if (a.cache === 'cold') dropCaches();
  t = performance.now();
  const chunks: Buffer[] = [];
  for (const f of files) {
    for await (const b of readFileChunks(f.path, f.inode.size, CS, f.display)) {
      out.read_bytes += b.length;
      chunks.push(b);
    }
  }
  out.read_s = (performance.now() - t) / 1000;

  // Hashing + compression alone, from memory, with the builder's in-flight limit.
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
    if (a.cache === 'cold') dropCaches();
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
  console.log(`  read (builder's reader, files one after another): ${b.read_s.toFixed(2)} s, ${(b.read_bytes / 1e6 / b.read_s).toFixed(0)} MB/s`);
  for (const [k, v] of Object.entries(b.cpu)) console.log(`  hash+compress ${pad(k, 16, true)} (pool, from memory): ${v.s.toFixed(2)} s, ${v.mb_s.toFixed(0)} MB/s`);
  for (const [k, v] of Object.entries(b.full_build)) console.log(`  createImage ${pad(k, 18, true)} (no node start-up): ${v.total_s.toFixed(2)} s (dump_blob ${v.dump_blob_s.toFixed(2)}, dump_bootstrap ${v.dump_bootstrap_s.toFixed(2)})`);
}

// ---------------------------------------------------------------------------------------------
// CPU profile summary (node --cpu-prof writes one .cpuprofile per thread)

interface ProfNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

function summariseProfile(file: string, top = 12): { file: string; total_ms: number; top: { fn: string; self_ms: number; pct: number }[] } {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    const n = byId.get(id)!;
    const f = n.callFrame;
    const where = f.url ? `${path.basename(f.url)}:${f.lineNumber + 1}` : '';
    const key = `${f.functionName || '(anonymous)'}${where ? ' ' + where : ''}`;
    self.set(key, (self.get(key) ?? 0) + dt);
    total += dt;
  });
  const topList = [...self.entries()].sort((x, y) => y[1] - x[1]).slice(0, top).map(([fn, ms]) => ({ fn, self_ms: ms, pct: (100 * ms) / total }));
  return { file, total_ms: total, top: topList };
}

async function cpuProfile(src: string, a: Args, work: string): Promise<ReturnType<typeof summariseProfile>[]> {
  fs.mkdirSync(a.cpuProf!, { recursive: true });
  const before = new Set(fs.readdirSync(a.cpuProf!));
  const out = path.join(work, 'cpu-prof');
  await runOnce(ALL_VARIANTS.zstd, out, src, a, ['--cpu-prof', `--cpu-prof-dir=${path.resolve(a.cpuProf!)}`]);
  const files = fs.readdirSync(a.cpuProf!).filter((f) => f.endsWith('.cpuprofile') && !before.has(f));
  return files.map((f) => summariseProfile(path.join(a.cpuProf!, f)));
}

// ---------------------------------------------------------------------------------------------

function tool(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const src = path.resolve(a.source);
  if (!fs.statSync(src, { throwIfNoEntry: false })?.isDirectory()) fail(`--source ${src} is not a directory`);
  if (!fs.existsSync(TIME)) fail(`${TIME} is missing (apt-get install time)`);
  const hasOurs = a.variants.some((v) => ALL_VARIANTS[v].kind === 'ours');
  if (hasOurs && !fs.existsSync(a.cli)) fail(`${a.cli} is missing (run npm run build)`);
  if (a.compareCli && !fs.existsSync(a.compareCli)) fail(`--compare-cli ${a.compareCli} is missing`);
  const plan: { key: string; v: Variant }[] = [];
  for (const k of a.variants) {
    plan.push({ key: k, v: ALL_VARIANTS[k] });
    if (a.compareCli && ALL_VARIANTS[k].kind === 'ours') {
      plan.push({ key: `${k}@compare`, v: { ...ALL_VARIANTS[k], name: `${ALL_VARIANTS[k].name} [compare]`, cli: a.compareCli } });
    }
  }
  const ownWork = !a.work;
  const work = a.work ? path.resolve(a.work) : fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-ts-bench-'));
  fs.mkdirSync(work, { recursive: true });

  const erofsVersion = a.variants.some((v) => ALL_VARIANTS[v].kind === 'erofs') ? tool('mkfs.erofs', ['--version']).split('\n')[0] : null;
  const stats = treeStats(src);
  const cpus = os.cpus();
  log(`source ${src}: ${stats.entries} entries, ${stats.regularFiles} files, ${mib(stats.bytes)} MiB of file data`);
  log(`machine: ${cpus.length} × ${cpus[0]?.model ?? '?'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}, ${erofsVersion ?? ''}`);
  if (a.cache === 'warm') {
    log('warming the page cache (reading the tree once)');
    warmTree(src);
  }

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
    if (peer) {
      for (const r of rows) {
        if (r.key === 'erofs') continue;
        r.time_ratio_vs_erofs = r.median_wall_s / peer.median_wall_s;
        r.rss_ratio_vs_erofs = r.median_peak_rss_kb / peer.median_peak_rss_kb;
      }
    }
    printTable(rows, a.runs);
    const zstd = rows.find((r) => r.key === 'zstd');
    let goal: { target: string; ratio: number; met: boolean; compare_ratio?: number; compare_met?: boolean } | null = null;
    if (peer && zstd) {
      goal = { target: 'nydus-ts zstd+blake3 wall time <= 2 x mkfs.erofs', ratio: zstd.time_ratio_vs_erofs!, met: zstd.time_ratio_vs_erofs! <= 2 };
      console.log(`\ngoal (zstd + blake3 at most 2× mkfs.erofs' time): ${goal.ratio.toFixed(2)}× — ${goal.met ? 'met' : 'NOT met'}`);
      const cmp = rows.find((r) => r.key === 'zstd@compare');
      if (cmp) {
        goal.compare_ratio = cmp.time_ratio_vs_erofs!;
        goal.compare_met = goal.compare_ratio <= 2;
        console.log(`                                    [compare]: ${goal.compare_ratio.toFixed(2)}× — ${goal.compare_met ? 'met' : 'NOT met'}`);
      }
    }

    let bd: Breakdown | undefined;
    if (a.breakdown) {
      log('breakdown: timing the phases in-process');
      bd = await breakdown(src, a, work);
      printBreakdown(bd);
    }
    let prof: ReturnType<typeof summariseProfile>[] | undefined;
    if (a.cpuProf) {
      log(`cpu profile: one zstd build under node --cpu-prof (profiles in ${a.cpuProf})`);
      prof = await cpuProfile(src, a, work);
      for (const p of prof) {
        console.log(`\n${path.basename(p.file)}: ${(p.total_ms / 1000).toFixed(2)} s sampled; top self time:`);
        for (const t of p.top) console.log(`  ${t.self_ms.toFixed(0).padStart(6)} ms ${t.pct.toFixed(1).padStart(5)}%  ${t.fn}`);
      }
    }

    if (a.outputJson) {
      const json = {
        date: new Date().toISOString(),
        machine: {
          cpus: cpus.length, cpu_model: cpus[0]?.model, mem_bytes: os.totalmem(), kernel: os.release(),
          node: process.version, mkfs_erofs: erofsVersion,
        },
        source: { path: src, ...stats },
        runs: a.runs,
        cache: a.cache,
        threads: a.threads ?? null,
        cli: a.cli,
        compare_cli: a.compareCli ?? null,
        variants: rows,
        goal,
        breakdown: bd ?? null,
        cpu_profile: prof ?? null,
      };
      fs.mkdirSync(path.dirname(path.resolve(a.outputJson)), { recursive: true });
      fs.writeFileSync(a.outputJson, JSON.stringify(json, null, 2) + '\n');
      log(`results in ${a.outputJson}`);
    }
  } finally {
    if (ownWork) fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`build-bench: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
  process.exit(1);
});
