/**
 * Read benchmark (the issue's, not a test). Runs INSIDE the test VM (bench/read-bench-host.ts
 * boots it; scripts/bench-read.sh does everything): one large file read through nydus-ts'
 * EROFS-over-fscache daemon, each figure as a ratio against native EROFS (the same image exported
 * with `nydus-ts export` and loop-mounted).
 *
 *   node dist/bench/read-bench.js [--size-mib 64] [--rounds 3] [--storage disk|tmpfs]
 *        [--chunk-size 0x100000] [--compressor zstd] [--digester blake3] [--amplify BYTES]
 *        [--threads N] [--output-json FILE] [--cpu-prof DIR] [--keep]
 *
 * Steps (all in one VM run):
 *  1. a file of --size-mib MiB of mixed data: runs of 256 KiB – 2 MiB that are either random
 *     (stored raw) or text-like (zstd ≈ 3–4×), so chunks are raw, compressed or both;
 *  2. `nydus-ts create` (defaults: 1 MiB chunks, zstd, blake3) and `nydus-ts export`;
 *  3. one `nydus-ts daemon` on a cache dir on the ext4 scratch disk;
 *  4. per round (the median of --rounds is reported):
 *     - native cold:   umount, sync + drop caches, `mount -o loop,ro image.erofs`, read;
 *     - native warm:   read again (page cache hot);
 *     - nydus cold:    a new fsid (= a new fscache volume, so a fresh cache file), register it
 *                      over the API, sync + drop caches, mount -o fsid=, read: every byte
 *                      comes through READs (backend read, decompress, verify, write, complete);
 *     - nydus warm:    read again;
 *     - nydus remount: umount, sync + drop caches, mount again with the same fsid: the kernel
 *                      finds the data in the cache file and sends no READ; read;
 *     then the content is checked (sha256 against the source) on both mounts, untimed.
 *  5. per-READ latency: the daemon's blob-session histogram (GET /api/v1/metrics: the time
 *     from the READ reaching the session to its data being in the cache file) and the front
 *     end's READ count and sizes.
 *
 * --storage: where the blob and the native image live. `disk` (default): the ext4 scratch disk
 * (virtio), next to the cache, so native cold, our backend reads and remount-from-cache all read
 * the same device after the drop. `tmpfs`: both in guest RAM (drop_caches cannot evict tmpfs),
 * which removes the device from every path and leaves pure software cost.
 *
 * Reads are sequential, 1 MiB read(2) calls from this process (no extra process per read).
 * Timings use a monotonic clock around the read loop only.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawn, ChildProcess } from 'node:child_process';
import { DaemonApiClient } from '../src/daemon/api-client';
import { writeMixedFile } from './lib/data';
import { perfReport, startPerf, stopPerf, summariseProfile } from './lib/profile';
import { benchMain, CLI, dropCaches, isMounted, logger, median, MiB, must, Opt, opt, usageText, parseArgs, UsageError } from './lib/harness';

const log = logger('read-bench');

/** --variant NAME[:K=V,…], repeatable */
const variantOpt: Opt<Array<{ name: string; env: Record<string, string> }>> = {
  flag: '--variant', metavar: 'NAME[:K=V,…]',
  help: 'measure a daemon with this extra environment (repeatable; default one variant "nydus-ts" without extra environment). Each round runs every variant with a fresh daemon, interleaved, for before/after comparisons. ' +
    'Tuning knobs of the blob session: NYDUS_TS_DECODE=inline|pool|auto, NYDUS_TS_READAHEAD=BYTES, NYDUS_TS_WRITE_BATCH=BYTES; and NYDUS_TS_BENCH_CLI=PATH runs another build\'s CLI (main.js) as the daemon',
  init: () => [],
  take: (cur, next) => {
    const v = next();
    const colon = v.indexOf(':');
    const name = colon < 0 ? v : v.slice(0, colon);
    const env: Record<string, string> = {};
    for (const kv of (colon < 0 ? '' : v.slice(colon + 1)).split(',').filter(Boolean)) {
      const eq = kv.indexOf('=');
      if (eq <= 0) throw new UsageError(`--variant ${v}: expected NAME[:K=V,…]`);
      env[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new UsageError(`--variant ${v}: the name must be [A-Za-z0-9._-]+`);
    return [...cur, { name, env }];
  },
};

const SPEC = {
  sizeMiB: opt.int('--size-mib', 64, 'size of the benchmark file'),
  rounds: opt.int('--rounds', 3, 'measured rounds; medians are reported'),
  storage: opt.choice('--storage', ['disk', 'tmpfs'] as const, 'disk', 'where the blob and the native image live (disk: the ext4 scratch disk, like the cache)'),
  chunkSize: opt.str('--chunk-size', 'nydus-ts create --chunk-size (default: its default, 1 MiB)', 'HEX'),
  compressor: opt.str('--compressor', 'nydus-ts create --compressor (default zstd)', 'NAME'),
  digester: opt.str('--digester', 'nydus-ts create --digester (default blake3)', 'NAME'),
  amplify: opt.optInt('--amplify', "the registration's amplification window (config rafs.batch_size; default: the daemon's, 1 MiB)", { metavar: 'BYTES' }),
  threads: opt.optInt('--threads', 'daemon --fscache-threads (default: its own)'),
  daemonEnv: opt.env('--daemon-env', 'extra environment for the daemon'),
  daemonNodeArgs: opt.repeat('--daemon-node-arg', 'extra node option for the daemon'),
  variants: variantOpt,
  cpuProf: opt.path('--cpu-prof', 'run the daemon under node --cpu-prof (profiles in DIR[/VARIANT]) and print the hottest functions of a serving process', 'DIR'),
  perf: opt.path('--perf', "record the whole guest with perf (cpu-clock, all CPUs) during each variant's first cold read; prints the top symbols (the daemon runs with --perf-basic-prof so JIT frames are named); perf.data in DIR", 'DIR'),
  outputJson: opt.path('--output-json', 'machine-readable results'),
  keep: opt.flag('--keep', 'keep the work directory'),
};

export const USAGE = usageText('usage: node dist/bench/read-bench.js [options]     (inside the test VM, as root)', SPEC);

type Args = ReturnType<typeof parseArgs<typeof SPEC>>;

// ---------------------------------------------------------------------------------------------
// Helpers

async function cli(args: string[], env: Record<string, string> = {}): Promise<string> {
  const r = await must(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } });
  return r.stdout + r.stderr;
}

async function sh(cmd: string, args: string[]): Promise<void> {
  await must(cmd, args);
}

/** Aggregate guest CPU time (/proc/stat, USER_HZ ticks): user, nice, system, idle, iowait, irq, softirq. */
function cpuTicks(): number[] {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0];
  return line.trim().split(/\s+/).slice(1, 8).map(Number);
}

const CLK_TCK = 100; // USER_HZ on Linux

/** user and system CPU ms of a process (all its threads), from /proc/PID/stat */
function procCpuMs(pid: number): { user: number; system: number } {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    // fields 14 and 15 (utime, stime) are at 11 and 12 after the command
    return { user: (Number(f[11]) * 1000) / CLK_TCK, system: (Number(f[12]) * 1000) / CLK_TCK };
  } catch {
    return { user: NaN, system: NaN };
  }
}

/** Shares of the guest's CPU time between two cpuTicks() samples. */
function cpuShares(a: number[], b: number[]): { user: number; system: number; idle: number; iowait: number; irq: number } {
  const d = b.map((x, i) => x - a[i]);
  const total = d.reduce((x, y) => x + y, 0) || 1;
  return { user: (d[0] + d[1]) / total, system: d[2] / total, idle: d[3] / total, iowait: d[4] / total, irq: (d[5] + d[6]) / total };
}

const readBuf = Buffer.allocUnsafe(MiB);

/** Sequential read of a whole file with 1 MiB read(2) calls; returns bytes and seconds. */
function timedRead(file: string): { bytes: number; seconds: number } {
  const t0 = process.hrtime.bigint();
  const fd = fs.openSync(file, 'r');
  let bytes = 0;
  try {
    for (;;) {
      const n = fs.readSync(fd, readBuf, 0, readBuf.length, null);
      if (n === 0) break;
      bytes += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return { bytes, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

function sha256File(file: string): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    for (;;) {
      const n = fs.readSync(fd, readBuf, 0, readBuf.length, null);
      if (n === 0) break;
      h.update(readBuf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

// ---------------------------------------------------------------------------------------------
// The daemon

interface Daemon {
  proc: ChildProcess;
  api: DaemonApiClient;
  sock: string;
  logFile: string;
}

async function startDaemon(a: Args, cacheDir: string, work: string): Promise<Daemon> {
  const sock = path.join(work, 'api.sock');
  const logFile = path.join(work, 'daemon.log');
  const out = fs.openSync(logFile, 'a');
  const nodeArgs = [...a.daemonNodeArgs];
  if (a.perf) nodeArgs.push('--perf-basic-prof-only-functions');
  if (a.cpuProf) {
    fs.mkdirSync(a.cpuProf, { recursive: true });
    nodeArgs.push('--cpu-prof', '--cpu-prof-dir', a.cpuProf);
  }
  // NYDUS_TS_BENCH_CLI in a variant's environment: another build of the CLI (before/after runs)
  const cliPath = a.daemonEnv.NYDUS_TS_BENCH_CLI || CLI;
  const args = [...nodeArgs, cliPath, 'daemon', '--fscache', cacheDir, '--apisock', sock, '--log-level', 'warn'];
  if (a.threads) args.push('--fscache-threads', String(a.threads));
  const proc = spawn(process.execPath, args, { stdio: ['ignore', out, out], env: { ...process.env, ...a.daemonEnv } });
  fs.closeSync(out);
  const api = new DaemonApiClient(sock);
  for (let i = 0; i < 300 && !(await api.isAlive()); i++) await new Promise((r) => setTimeout(r, 100));
  if (!(await api.isAlive())) throw new Error(`the daemon did not start:\n${fs.readFileSync(logFile, 'utf8')}`);
  return { proc, api, sock, logFile };
}

async function stopDaemon(d: Daemon): Promise<void> {
  d.api.close();
  if (d.proc.exitCode !== null) return;
  const exited = new Promise((r) => d.proc.once('exit', r));
  d.proc.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 20_000))]);
}

async function register(d: Daemon, fsid: string, boot: string, blobDir: string, work: string, amplify?: number): Promise<void> {
  fs.mkdirSync(path.join(work, 'fscache-work'), { recursive: true });
  const cfg: Record<string, unknown> = {
    version: 2, id: fsid, backend: { type: 'localfs', localfs: { dir: blobDir } },
    cache: { type: 'fscache', fscache: { work_dir: path.join(work, 'fscache-work') } }, metadata_path: boot,
  };
  if (amplify) cfg.rafs = { batch_size: amplify };
  await d.api.call('PUT', '/api/v2/blobs', { type: 'bootstrap', id: fsid, domain_id: '', config_v2: cfg });
}

async function unregister(d: Daemon, fsid: string): Promise<void> {
  await d.api.call('DELETE', `/api/v2/blobs?domain_id=${encodeURIComponent(fsid)}&blob_id=${encodeURIComponent(fsid)}`);
}

interface FrontStats {
  blob_reads: number;
  read_bytes: number;
  reads_failed: number;
  read_sizes: Record<string, number>;
}

async function frontStats(d: Daemon): Promise<FrontStats> {
  const m = (await d.api.metrics()) as { frontend: FrontStats };
  return m.frontend;
}

interface LatencySummary {
  count: number;
  min_ms: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  max_ms: number;
  mean_ms: number;
}

/** Latency quantiles from the session histogram (upper bucket bounds) or the totals. */
function latencyOf(blob: Record<string, any>): LatencySummary | null {
  const h = blob.read_latency_hist as { count: number; min_ms: number; max_ms: number; p50_ms: number; p90_ms: number; p99_ms: number } | undefined;
  const mean = blob.reads ? blob.read_latency_ms_total / blob.reads : NaN;
  if (h) return { count: h.count, min_ms: h.min_ms, p50_ms: h.p50_ms, p90_ms: h.p90_ms, p99_ms: h.p99_ms, max_ms: h.max_ms, mean_ms: mean };
  if (!blob.reads) return null;
  return { count: blob.reads, min_ms: NaN, p50_ms: NaN, p90_ms: NaN, p99_ms: NaN, max_ms: blob.read_latency_ms_max, mean_ms: mean };
}

// ---------------------------------------------------------------------------------------------
// Main

interface NativeRound {
  cold_s: number;
  warm_s: number;
}

interface VariantRound {
  cold_s: number;
  warm_s: number;
  remount_s: number;
  cold_reads: number;
  cold_read_sizes: Record<string, number>;
  remount_reads: number;
  remount_backend_bytes: number;
  latency: LatencySummary | null;
  blob_metrics: Record<string, unknown> | null;
  /** guest CPU time shares during the cold read (all vCPUs) */
  cold_cpu: ReturnType<typeof cpuShares>;
  /** CPU time of the serving daemon process and of this (reading) process during the cold read */
  cold_proc_cpu: { daemon_user_ms: number; daemon_system_ms: number; reader_user_ms: number; reader_system_ms: number };
}

interface Variant {
  name: string;
  env: Record<string, string>;
  rounds: VariantRound[];
  profile?: ReturnType<typeof summariseProfile>;
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2), SPEC, { usage: USAGE });
  const disk = process.env.NYDUS_VM_CACHE_DIR;
  if (!disk || !fs.existsSync('/dev/cachefiles') || process.getuid?.() !== 0) {
    throw new UsageError('must run as root inside the test VM (/dev/cachefiles and $NYDUS_VM_CACHE_DIR); use bench/read-bench-host.ts or scripts/bench-read.sh');
  }
  const size = Math.round(a.sizeMiB * MiB);
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'read-bench-'));
  const store = a.storage === 'disk' ? fs.mkdtempSync(path.join(disk, 'read-bench-')) : path.join(scratch, 'store');
  fs.mkdirSync(store, { recursive: true });
  const cacheDir = fs.mkdtempSync(path.join(disk, 'cache-'));
  const mntN = path.join(scratch, 'mnt-native');
  const mntD = path.join(scratch, 'mnt-nydus');
  fs.mkdirSync(mntN);
  fs.mkdirSync(mntD);
  let daemon: Daemon | undefined;
  const cleanup = async (): Promise<void> => {
    for (const m of [mntN, mntD]) if (isMounted(m)) await sh('umount', [m]).catch(() => undefined);
    if (daemon) await stopDaemon(daemon);
    if (!a.keep) {
      fs.rmSync(scratch, { recursive: true, force: true });
      if (a.storage === 'disk') fs.rmSync(store, { recursive: true, force: true });
      fs.rmSync(cacheDir, { recursive: true, force: true });
    }
  };
  try {
    // 1. data
    const src = path.join(scratch, 'src');
    fs.mkdirSync(src);
    const file = path.join(src, 'big.bin');
    let t = Date.now();
    const data = writeMixedFile(file, size);
    log(`data: ${a.sizeMiB} MiB (${(data.randomBytes / MiB).toFixed(1)} MiB random, ${(data.textBytes / MiB).toFixed(1)} MiB text) in ${((Date.now() - t) / 1000).toFixed(1)} s`);

    // 2. image + native export
    const boot = path.join(store, 'image.boot');
    const blobDir = path.join(store, 'blobs');
    const report = path.join(scratch, 'create.json');
    const createArgs = ['create', '-B', boot, '-D', blobDir, '-J', report];
    if (a.chunkSize) createArgs.push('--chunk-size', a.chunkSize);
    if (a.compressor) createArgs.push('--compressor', a.compressor);
    if (a.digester) createArgs.push('--digester', a.digester);
    t = Date.now();
    await cli([...createArgs, src]);
    const created = JSON.parse(fs.readFileSync(report, 'utf8')) as { blobs: string[] };
    const blobId = created.blobs[0];
    const blobSize = fs.statSync(path.join(blobDir, blobId)).size;
    const buildS = (Date.now() - t) / 1000;
    const erofs = path.join(store, 'image.erofs');
    t = Date.now();
    await cli(['export', '-B', boot, '-D', blobDir, '-O', erofs]);
    const exportS = (Date.now() - t) / 1000;
    log(`image: blob ${blobId.slice(0, 12)}… ${(blobSize / MiB).toFixed(1)} MiB compressed (create ${buildS.toFixed(1)} s), native image ${(fs.statSync(erofs).size / MiB).toFixed(1)} MiB (export ${exportS.toFixed(1)} s), storage ${a.storage}`);
    fs.rmSync(src, { recursive: true, force: true }); // the guest's RAM is better spent elsewhere

    // 3. rounds: native, then each variant with its own daemon (started fresh every round)
    const variants: Variant[] = (a.variants.length ? a.variants : [{ name: 'nydus-ts', env: {} }]).map((v) => ({ ...v, rounds: [] }));
    const native: NativeRound[] = [];
    const perfReports: Array<{ name: string; file: string; report: string }> = [];
    const rel = 'big.bin';
    const mbs = (sec: number): string => (size / MiB / sec).toFixed(1);
    for (let r = 0; r < a.rounds; r++) {
      if (isMounted(mntN)) await sh('umount', [mntN]);
      dropCaches();
      await sh('mount', ['-t', 'erofs', '-o', 'loop,ro', erofs, mntN]);
      const nc = timedRead(path.join(mntN, rel));
      const nw = timedRead(path.join(mntN, rel));
      if (nc.bytes !== size || nw.bytes !== size) throw new Error(`native read ${nc.bytes}/${nw.bytes} bytes, expected ${size}`);
      if (r === 0) {
        const hN = sha256File(path.join(mntN, rel));
        if (hN !== data.sha256) throw new Error(`native mount: sha256 ${hN} != source ${data.sha256}`);
      }
      await sh('umount', [mntN]);
      native.push({ cold_s: nc.seconds, warm_s: nw.seconds });
      log(`round ${r + 1}/${a.rounds}: native cold ${mbs(nc.seconds)} warm ${mbs(nw.seconds)} MiB/s`);

      for (const [vi, v] of variants.entries()) {
        const prof = a.cpuProf ? path.join(a.cpuProf, variants.length > 1 ? v.name : '') : undefined;
        daemon = await startDaemon({ ...a, cpuProf: prof, daemonEnv: { ...a.daemonEnv, ...v.env } }, cacheDir, scratch);
        const d = daemon;
        // cold: a new fsid is a new fscache volume, i.e. a fresh cache file
        const fsid = `rb-${process.pid}-${r}-${vi}`;
        await register(d, fsid, boot, blobDir, scratch, a.amplify);
        dropCaches();
        await sh('mount', ['-t', 'erofs', '-o', `fsid=${fsid}`, 'none', mntD]);
        const s0 = await frontStats(d);
        const servingPid = ((await d.api.daemonInfo()) as unknown as { pid: number }).pid;
        const perfData = a.perf && r === 0 ? path.join(a.perf, `${v.name}.perf.data`) : undefined;
        const perfProc = perfData ? await startPerf(perfData) : undefined;
        const c0 = cpuTicks();
        const p0 = procCpuMs(servingPid);
        const r0 = process.cpuUsage();
        const dc = timedRead(path.join(mntD, rel));
        if (perfProc) await stopPerf(perfProc);
        const cpu = cpuShares(c0, cpuTicks());
        const p1 = procCpuMs(servingPid);
        const r1 = process.cpuUsage(r0);
        const procCpu = { daemon_user_ms: p1.user - p0.user, daemon_system_ms: p1.system - p0.system, reader_user_ms: r1.user / 1000, reader_system_ms: r1.system / 1000 };
        const s1 = await frontStats(d);
        const m1 = (await d.api.metrics(fsid)) as { blobs: Array<Record<string, any>> };
        const blobM = m1.blobs.find((b) => b.blob_id === blobId) ?? null;
        const dw = timedRead(path.join(mntD, rel));
        if (dc.bytes !== size || dw.bytes !== size) throw new Error(`${v.name}: read ${dc.bytes}/${dw.bytes} bytes, expected ${size}`);
        // remount from the cache
        await sh('umount', [mntD]);
        dropCaches();
        await sh('mount', ['-t', 'erofs', '-o', `fsid=${fsid}`, 'none', mntD]);
        const s2 = await frontStats(d);
        const dr = timedRead(path.join(mntD, rel));
        const s3 = await frontStats(d);
        const m3 = (await d.api.metrics(fsid)) as { blobs: Array<Record<string, any>> };
        const remountBackend = m3.blobs.filter((b) => b.blob_id === blobId).reduce((n, b) => n + (b.backend_bytes as number), 0);
        const hD = sha256File(path.join(mntD, rel));
        if (hD !== data.sha256) throw new Error(`${v.name} (round ${r + 1}): sha256 ${hD} != source ${data.sha256}`);
        await sh('umount', [mntD]);
        await unregister(d, fsid);
        if (s1.reads_failed !== s0.reads_failed) throw new Error(`${v.name}: ${s1.reads_failed - s0.reads_failed} READs failed during the cold read; see ${d.logFile}`);
        await stopDaemon(d);
        daemon = undefined;
        const sizes: Record<string, number> = {};
        for (const [k, n] of Object.entries(s1.read_sizes)) {
          const dn = n - (s0.read_sizes[k] ?? 0);
          if (dn) sizes[k] = dn;
        }
        const vr: VariantRound = {
          cold_s: dc.seconds, warm_s: dw.seconds, remount_s: dr.seconds,
          cold_reads: s1.blob_reads - s0.blob_reads, cold_read_sizes: sizes, remount_reads: s3.blob_reads - s2.blob_reads,
          remount_backend_bytes: remountBackend, latency: blobM ? latencyOf(blobM) : null, blob_metrics: blobM, cold_cpu: cpu, cold_proc_cpu: procCpu,
        };
        v.rounds.push(vr);
        if (perfData) perfReports.push({ name: v.name, file: perfData, report: perfReport(perfData) });
        log(`round ${r + 1}/${a.rounds}: ${v.name}: cold ${mbs(dc.seconds)} warm ${mbs(dw.seconds)} remount ${mbs(dr.seconds)} MiB/s; ${vr.cold_reads} cold READs, ${vr.remount_reads} READs after remount`);
      }
    }

    // 4. report
    const mibps = (sec: number): number => size / MiB / sec;
    const nativeRes = { cold: mibps(median(native.map((x) => x.cold_s))), warm: mibps(median(native.map((x) => x.warm_s))) };
    const lines: string[] = [];
    const row = (name: string, v: number, ratio: string): string => `${name.padEnd(44)}${v.toFixed(1).padStart(10)}   ${ratio}`;
    lines.push('');
    lines.push(`Read benchmark: ${a.sizeMiB} MiB file (blob ${(blobSize / MiB).toFixed(1)} MiB), ${a.rounds} round(s), medians; storage ${a.storage}; kernel ${os.release()}; ${os.cpus().length} vCPU(s)`);
    lines.push(`${'case'.padEnd(44)}${'MiB/s'.padStart(10)}   ratio`);
    lines.push(row('native EROFS (loop) cold', nativeRes.cold, '1.00'));
    lines.push(row('native EROFS (loop) warm', nativeRes.warm, '1.00'));
    const results = variants.map((v) => {
      const med = (k: 'cold_s' | 'warm_s' | 'remount_s'): number => median(v.rounds.map((x) => x[k]));
      const res = { cold: mibps(med('cold_s')), warm: mibps(med('warm_s')), remount: mibps(med('remount_s')) };
      const ratios = {
        cold_vs_native_cold: res.cold / nativeRes.cold,
        warm_vs_native_warm: res.warm / nativeRes.warm,
        remount_vs_native_cold: res.remount / nativeRes.cold,
      };
      const lats = v.rounds.map((x) => x.latency).filter((x): x is LatencySummary => !!x);
      const mk = (k: keyof LatencySummary): number => median(lats.map((l) => l[k]));
      const latency = lats.length
        ? { count: mk('count'), min_ms: mk('min_ms'), p50_ms: mk('p50_ms'), p90_ms: mk('p90_ms'), p99_ms: mk('p99_ms'), max_ms: mk('max_ms'), mean_ms: mk('mean_ms') }
        : null;
      const goals = {
        warm: { goal: 0.95, ratio: ratios.warm_vs_native_warm, met: ratios.warm_vs_native_warm >= 0.95 },
        remount: { goal: 0.9, ratio: ratios.remount_vs_native_cold, met: ratios.remount_vs_native_cold >= 0.9 },
        cold: { goal: 0.2, ratio: ratios.cold_vs_native_cold, met: ratios.cold_vs_native_cold > 0.2, note: 'a naive C daemon reaches about 0.2× native cold under TCG' },
      };
      const label = variants.length > 1 ? `${v.name} ` : 'nydus-ts ';
      lines.push(row(`${label}cold (fresh cache)`, res.cold, `${ratios.cold_vs_native_cold.toFixed(3)} × native cold`));
      lines.push(row(`${label}warm (page cache)`, res.warm, `${ratios.warm_vs_native_warm.toFixed(3)} × native warm   (goal ≥ 0.95)`));
      lines.push(row(`${label}remount (from the cache file)`, res.remount, `${ratios.remount_vs_native_cold.toFixed(3)} × native cold   (goal ≥ 0.90)`));
      return { name: v.name, env: v.env, mib_per_s: res, ratios, goals, latency, per_round: v.rounds };
    });
    for (const [i, v] of variants.entries()) {
      const r0 = v.rounds[v.rounds.length - 1];
      const lat = results[i].latency;
      const who = variants.length > 1 ? `${v.name}: ` : '';
      lines.push('');
      lines.push(`${who}cold READs per round: ${v.rounds.map((x) => x.cold_reads).join(', ')} (last round's sizes: ${Object.entries(r0.cold_read_sizes).map(([k, n]) => `${n}×${+k >= 1024 ? `${+k / 1024}K` : k}`).join(' ')}); READs after remount: ${v.rounds.map((x) => x.remount_reads).join(', ')}; backend bytes after remount: ${v.rounds.map((x) => x.remount_backend_bytes).join(', ')}`);
      if (lat) {
        lines.push(`${who}per-READ latency in the daemon (ms; median over rounds): n=${lat.count} min ${lat.min_ms.toFixed(2)} p50 ${lat.p50_ms.toFixed(2)} p90 ${lat.p90_ms.toFixed(2)} p99 ${lat.p99_ms.toFixed(2)} max ${lat.max_ms.toFixed(2)} mean ${lat.mean_ms.toFixed(2)}`);
      }
      const bm = r0.blob_metrics as Record<string, any> | null;
      if (bm) {
        const extra = ['backend_ms', 'decode_ms', 'write_ms', 'inline_decodes', 'pool_decodes', 'cache_writes', 'readahead_chunks']
          .filter((k) => k in bm).map((k) => `${k} ${Number.isInteger(bm[k]) ? bm[k] : Number(bm[k]).toFixed(0)}`);
        const c = r0.cold_cpu;
        lines.push(`${who}guest CPU during the last cold read (${os.cpus().length} vCPUs): user ${(100 * c.user).toFixed(0)}%, system ${(100 * c.system).toFixed(0)}%, irq ${(100 * c.irq).toFixed(0)}%, iowait ${(100 * c.iowait).toFixed(0)}%, idle ${(100 * c.idle).toFixed(0)}%`);
        const pc = r0.cold_proc_cpu;
        lines.push(`${who}CPU during the last cold read (${(r0.cold_s * 1000).toFixed(0)} ms): serving daemon user ${pc.daemon_user_ms.toFixed(0)} ms + system ${pc.daemon_system_ms.toFixed(0)} ms; reader user ${pc.reader_user_ms.toFixed(0)} ms + system ${pc.reader_system_ms.toFixed(0)} ms`);
        lines.push(`${who}last cold round: ${bm.chunks_fetched} chunks fetched, ${bm.backend_requests} backend reads, ${(bm.backend_bytes / MiB).toFixed(1)} MiB${extra.length ? '; ' + extra.join(', ') : ''}`);
      }
    }
    lines.push('');
    process.stdout.write(lines.join('\n') + '\n');

    if (a.cpuProf) {
      for (const v of variants) {
        const dir = path.join(a.cpuProf, variants.length > 1 ? v.name : '');
        // the serving child's profiles are the largest ones; summarise the last round's
        const files = fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(dir, f));
        const biggest = files.sort((x, y) => fs.statSync(y).size - fs.statSync(x).size)[0];
        if (!biggest) continue;
        v.profile = summariseProfile(biggest);
        process.stdout.write(`CPU profile of a serving daemon${variants.length > 1 ? ` (${v.name})` : ''}: ${biggest} (${v.profile.total_ms.toFixed(0)} ms sampled), self time:\n`);
        for (const f of v.profile.functions) process.stdout.write(`  ${f.self_ms.toFixed(0).padStart(7)} ms ${f.pct.toFixed(1).padStart(5)}%  ${f.name}\n`);
      }
    }

    for (const p of perfReports) process.stdout.write(`perf, whole guest during the first cold read of ${p.name} (${p.file}):\n${p.report}\n`);

    if (a.outputJson) {
      const first = results[0];
      const out = {
        benchmark: 'read', kernel: os.release(), vcpus: os.cpus().length, size_bytes: size, rounds: a.rounds, storage: a.storage,
        image: { blob_id: blobId, blob_bytes: blobSize, chunk_size: a.chunkSize ?? 'default', compressor: a.compressor ?? 'default', digester: a.digester ?? 'default', amplify: a.amplify ?? 'default', create_s: buildS, export_s: exportS },
        data: { random_bytes: data.randomBytes, text_bytes: data.textBytes },
        native: { mib_per_s: nativeRes, per_round: native },
        // the first (or only) variant at the top level
        mib_per_s: { native_cold: nativeRes.cold, native_warm: nativeRes.warm, nydus_cold: first.mib_per_s.cold, nydus_warm: first.mib_per_s.warm, nydus_remount: first.mib_per_s.remount },
        ratios: first.ratios, goals: first.goals, latency: first.latency,
        variants: results.map((r, i) => ({ ...r, cpu_profile: variants[i].profile ?? null })),
      };
      fs.mkdirSync(path.dirname(a.outputJson), { recursive: true });
      fs.writeFileSync(a.outputJson, JSON.stringify(out, null, 2) + '\n');
      log(`results: ${a.outputJson}`);
    }
  } finally {
    await cleanup();
  }
}

if (require.main === module) benchMain('read-bench', main);
