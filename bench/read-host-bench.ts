/**
 * Host read benchmark for the fanotify front end (issue #9; not a test). On this host kernel
 * (≥ 6.14, file-backed EROFS + fanotify pre-content events) one run measures, on the same image:
 *
 *  - native:   the bootstrap mounted with mount(2) and `device=` the blob's uncompressed data
 *              (a plain file, no daemon): the ceiling;
 *  - naive-c:  bench/naive-fanotify.c, one thread, pread from that uncompressed file + pwrite +
 *              allow, no verification: the floor of what any fanotify daemon costs;
 *  - nydus-ts: `nydus-ts daemon --frontend fanotify` + `nydus-ts mount`, reading the zstd blob,
 *              verifying every chunk's blake3.
 *
 *   node dist/bench/read-host-bench.js [--rounds 3] [--size 256] [--json FILE] [--variants LIST]
 *        [--readers 16] [--reader-mib 4] [--piece-kib 128] [--timeout 600] [--sources hot|cold]
 *        [--no-prime] [--wait-quiet S] [--work-dir DIR] [--keep]
 *
 * Cases, per round and per variant (variants interleaved within a round; medians reported):
 *  - cold:     mount, sync + drop caches (see coldStart: files primed, daemon sources hot by
 *              default), read the file sequentially with 1 MiB read(2)s;
 *  - warm:     read it again (EROFS page cache hot);
 *  - remount:  (naive-c, nydus-ts) umount, mount again, sync + drop caches, read: the cache file
 *              is filled; nydus-ts should fetch 0 backend bytes, naive-c copies again (it keeps
 *              no presence map);
 *  - parallel: a fresh mount (and fresh cache), drop caches, then --readers processes at once,
 *              each reading --reader-mib MiB in random --piece-kib KiB pieces.
 * Every case is verified: after each sequential read the file's sha256 through the mount must
 * equal the source's; each parallel reader hashes its pieces, checked against the source file.
 * Reads run in child processes with a timeout, so a hung daemon fails the run instead of hanging
 * it. Timings are taken in the reader around its read loop only (CLOCK_MONOTONIC, comparable
 * across processes); the parallel figure is all bytes / (last end − first start).
 * Figures are printed as ratios against peers measured in the same run; nothing is asserted.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { exportBlobData } from '../src/tools/export';
import {
  benchMain, CLI, dropCaches, isMounted, logger, MiB, mountsUnder, onCleanup, opt, usageText, otherLoad, parseArgs, REPO, requireRoot, sh, unmountAll, UsageError, writeJson,
} from './lib/harness';
import { children, runReaders, secondsOf } from './lib/readers';
import { expectedPiecesSha, writeRandomFile } from './lib/data';
import { buildNaive, naives, naiveStats, startNaive, stopNaive } from './lib/naive-fanotify';
import { OurBlobMetrics, ourCli, ourDaemons, Ours, ourStatus, startOurs, stopOurs, tail } from './lib/fanotify-daemon';
import { ALL_VARIANTS, CaseResult, firstLine, num, report as readHostReport, RoundResult, VariantName } from './lib/read-host-report';

const log = logger('read-host-bench');

const SPEC = {
  rounds: opt.int('--rounds', 3, 'rounds; medians are reported'),
  sizeMiB: opt.int('--size', 256, 'size of the file, MiB', { metavar: 'MiB' }),
  json: opt.path('--json', 'also write the results as JSON'),
  variants: opt.list('--variants', ALL_VARIANTS, 'a subset of native,naive-c,nydus-ts', ALL_VARIANTS),
  readers: opt.int('--readers', 16, 'parallel readers'),
  readerMiB: opt.int('--reader-mib', 4, 'MiB each parallel reader reads'),
  pieceKiB: opt.int('--piece-kib', 128, 'size of each random piece, KiB'),
  timeoutS: opt.int('--timeout', 600, 'seconds any one read may take before the run fails', { metavar: 'S' }),
  workDir: opt.path('--work-dir', 'where to make the work directory (must be ext4/xfs/btrfs; default the system temp dir if it is one of those, else .cache/bench)', 'DIR'),
  sources: opt.choice('--sources', ['hot', 'cold'] as const, 'hot', "hot: after dropping the page cache, read the daemons' sources (naive-c's uncompressed blob, nydus-ts' compressed blob) back in, so cold cases measure the front end and daemon rather than this VM's disk; cold: they come from the disk too"),
  prime: opt.off('--no-prime', "do not read each case's files once before dropping the page cache (by default they are, so that the host's cache of the VM disk holds every variant's files alike; see coldStart in the source)"),
  waitQuiet: opt.int('--wait-quiet', 0, 'before each round, wait up to S seconds for other processes to leave the CPUs idle (0: only measure and report it)', { metavar: 'S', min: 0 }),
  keep: opt.flag('--keep', 'keep the work directory'),
};

const USAGE = usageText(`usage: node dist/bench/read-host-bench.js [options]        (as root, kernel >= 6.14)
       npm run bench:read -- [options]

Reads one file of random data through native file-backed EROFS, a naive C fanotify daemon and
nydus-ts' fanotify front end: cold, warm, after remount, and parallel random readers; prints
MiB/s and the ratios of the issue's goals.`, SPEC, `Environment: NYDUS_TS_BENCH_CLI=PATH measures another build's CLI (its main.js) as nydus-ts;
NYDUS_TS_CACHE: where bench/naive-fanotify.c is compiled to (default .cache; the binary goes
to its bench/ subdirectory).`);

type Args = ReturnType<typeof parseArgs<typeof SPEC>>;

function parse(argv: string[]): Args {
  const a = parseArgs(argv, SPEC, { usage: USAGE });
  a.variants = ALL_VARIANTS.filter((v) => a.variants.includes(v));
  if (a.pieceKiB % 4 !== 0) throw new UsageError('--piece-kib must be a multiple of 4');
  if (a.readerMiB * 1024 < a.pieceKiB) throw new UsageError('--reader-mib must hold at least one piece');
  if (a.pieceKiB * 1024 > a.sizeMiB * MiB) throw new UsageError('--piece-kib is larger than the file');
  return a;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** Read files (and directory trees) through the page cache; mount points are skipped (a read
 * through a marked path would raise events). */
function readAll(c: Ctx, paths: string[]): void {
  const skip = new Set(mountsUnder(c.work));
  const buf = Buffer.allocUnsafe(8 * MiB);
  const visit = (p: string): void => {
    if (skip.has(p)) return;
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    if (!st) return;
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) visit(path.join(p, e));
    else if (st.isFile()) {
      const fd = fs.openSync(p, 'r');
      try {
        while (fs.readSync(fd, buf, 0, buf.length, null) > 0);
      } finally {
        fs.closeSync(fd);
      }
    }
  };
  paths.forEach(visit);
}

/**
 * Before a cold case. `backing`: what the kernel reads (bootstrap, native's device file, cache
 * files); `sources`: what a daemon reads its data from (naive-c's uncompressed blob, our
 * compressed blob).
 *  1. With priming (default) all of them are read once. This VM's disk is cached by the host for
 *     a while, unpredictably (a native cold read of the same file: 0.6–3.7 GB/s); reading every
 *     variant's files just before puts them in the same state.
 *  2. sync, drop the page cache (and sync before 1 as well).
 *  3. With --sources hot (default), the daemons' sources are read back into the page cache, so
 *     that a daemon's cold case measures the front end and the daemon, as with a fast local
 *     backend: with its source on this disk, the naive C daemon's cold read varied from 0.2 to
 *     1.8 GB/s between runs, nearly all of it in its source pread(2)s; with the source cached,
 *     1.6–1.7 GB/s.
 */
function coldStart(c: Ctx, backing: string[], sources: string[] = []): void {
  // write back what the previous case left dirty (a daemon's cache file) before priming, so
  // that the case does not read while 256 MiB of writes drain
  spawnSync('sync');
  if (c.a.prime) readAll(c, [...backing, ...sources]);
  dropCaches();
  if (c.a.sources === 'hot') readAll(c, sources);
}

/**
 * After a daemon stopped (or died): nothing of its left mounted. Its store is deleted with the
 * work directory at the end, not now: / is ext4 mounted with `discard`, and the discards of a
 * 256 MiB deletion slowed the next case's disk reads (a naive C cold read: 0.5 instead of
 * 1.7 GB/s, the time in its source pread).
 */
function releaseStore(store: string, mnt: string): void {
  unmountAll(mnt);
  if (!unmountAll(store)) log(`${store} is still mounted; left in place`);
}

function umount(mnt: string): void {
  if (isMounted(mnt)) sh('umount', [mnt]);
}

/** statfs magic numbers of filesystems that allow pre-content marks (SB_I_ALLOW_HSM) */
const HSM_FS: Record<number, string> = { 0xef53: 'ext4', 0x58465342: 'xfs', 0x9123683e: 'btrfs' };

/** Offsets of parallel reader k in round r: --reader-mib MiB of random, piece-aligned pieces. */
function readerOffsets(a: Args, size: number, round: number, k: number): number[] {
  const piece = a.pieceKiB * 1024;
  const slots = Math.floor(size / piece);
  const n = Math.max(1, Math.floor((a.readerMiB * MiB) / piece));
  let x = ((round + 1) * 7919 + (k + 1) * 104729) >>> 0 || 1; // xorshift32 seed
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.push((x % slots) * piece);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// One round of one variant

interface Ctx {
  a: Args;
  work: string;
  boot: string;
  blobDir: string;
  blobId: string;
  raw: string;
  naiveBin: string;
  rel: string;
  size: number;
  sha: string;
  srcFile: string;
}

/** user + system CPU ms of a process and all its descendants (/proc/PID/stat utime + stime) */
function treeCpuMs(root: number | undefined): number {
  if (root === undefined) return NaN;
  const procs = new Map<number, { ppid: number; ms: number }>();
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const st = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      procs.set(Number(e), { ppid: Number(f[1]), ms: ((Number(f[11]) + Number(f[12])) * 1000) / 100 }); // USER_HZ
    } catch {
      // gone meanwhile
    }
  }
  let ms = 0;
  for (const [pid, p] of procs) {
    for (let q = pid, depth = 0; q > 1 && depth < 64; q = procs.get(q)?.ppid ?? 0, depth++) {
      if (q === root) {
        ms += p.ms;
        break;
      }
    }
  }
  return ms;
}

async function seqRead(c: Ctx, mnt: string, what: string, daemonPid?: number): Promise<CaseResult> {
  const file = path.join(mnt, c.rel);
  const cpu0 = treeCpuMs(daemonPid);
  const [r] = await runReaders([{ mode: 'seq', file }], c.a.timeoutS);
  const daemonCpu = treeCpuMs(daemonPid) - cpu0;
  if (r.bytes !== c.size) throw new Error(`${what}: read ${r.bytes} bytes, expected ${c.size}`);
  const [v] = await runReaders([{ mode: 'sha256', file }], c.a.timeoutS);
  if (v.sha256 !== c.sha) throw new Error(`${what}: WRONG BYTES: sha256 through the mount ${v.sha256} != source ${c.sha}`);
  return { seconds: secondsOf(r), bytes: r.bytes, daemon_cpu_ms: daemonCpu };
}

async function parallelRead(c: Ctx, mnt: string, round: number, what: string, daemonPid?: number): Promise<CaseResult> {
  const piece = c.a.pieceKiB * 1024;
  const offsets = Array.from({ length: c.a.readers }, (_, k) => readerOffsets(c.a, c.size, round, k));
  const cpu0 = treeCpuMs(daemonPid);
  const rs = await runReaders(offsets.map((o) => ({ mode: 'pieces', file: path.join(mnt, c.rel), piece, offsets: o })), c.a.timeoutS);
  for (const [k, r] of rs.entries()) {
    const want = expectedPiecesSha(c.srcFile, piece, offsets[k]);
    if (r.sha256 !== want) throw new Error(`${what}: WRONG BYTES: parallel reader ${k} hashed ${r.sha256}, the source's pieces ${want}`);
  }
  const t0 = rs.map((r) => BigInt(r.t0)).reduce((x, y) => (y < x ? y : x));
  const t1 = rs.map((r) => BigInt(r.t1)).reduce((x, y) => (y > x ? y : x));
  return { seconds: Number(t1 - t0) / 1e9, bytes: rs.reduce((n, r) => n + r.bytes, 0), daemon_cpu_ms: treeCpuMs(daemonPid) - cpu0 };
}

async function roundNative(c: Ctx, r: number): Promise<RoundResult> {
  const mnt = path.join(c.work, 'mnt-native');
  fs.mkdirSync(mnt, { recursive: true });
  const mount = (): void => void sh(c.naiveBin, ['--mount-only', '--meta', c.boot, '--device', c.raw, '--mnt', mnt]);
  const out: RoundResult = {};
  mount();
  try {
    coldStart(c, [c.boot, c.raw]);
    out.cold = await seqRead(c, mnt, 'native cold');
    out.warm = await seqRead(c, mnt, 'native warm');
    umount(mnt);
    mount();
    coldStart(c, [c.boot, c.raw]);
    out.parallel = await parallelRead(c, mnt, r, 'native parallel');
  } finally {
    umount(mnt);
  }
  return out;
}

async function roundNaive(c: Ctx, r: number): Promise<RoundResult> {
  const mnt = path.join(c.work, 'mnt-naive');
  fs.mkdirSync(mnt, { recursive: true });
  const out: RoundResult = {};
  // sequential cases on one store
  let store = path.join(c.work, `naive-store-${r}`);
  let d = await startNaive(c.naiveBin, c.boot, c.raw, store, mnt);
  try {
    await naiveStats(d); // reset
    coldStart(c, [c.boot], [c.raw]);
    out.cold = await seqRead(c, mnt, 'naive-c cold', d.proc.pid);
    out.cold.events = await naiveStats(d);
    if (out.cold.events.events === 0) throw new Error('naive-c cold: the daemon saw no events: reads bypassed it (mark after mount?)');
    out.warm = await seqRead(c, mnt, 'naive-c warm', d.proc.pid);
    out.warm.events = await naiveStats(d);
    // remount through the marked bind mount while the daemon keeps its mark
    umount(mnt);
    sh(c.naiveBin, ['--mount-only', '--meta', c.boot, '--device', path.join(store, 'hsm', 'blob'), '--mnt', mnt]);
    coldStart(c, [c.boot, path.join(store, 'blobs')], [c.raw]);
    await naiveStats(d);
    out.remount = await seqRead(c, mnt, 'naive-c remount', d.proc.pid);
    out.remount.events = await naiveStats(d);
  } finally {
    await stopNaive(d);
    releaseStore(store, mnt);
  }
  // parallel: a fresh store (nothing filled)
  store = path.join(c.work, `naive-store-${r}-p`);
  d = await startNaive(c.naiveBin, c.boot, c.raw, store, mnt);
  try {
    await naiveStats(d);
    coldStart(c, [c.boot], [c.raw]);
    out.parallel = await parallelRead(c, mnt, r, 'naive-c parallel', d.proc.pid);
    out.parallel.events = await naiveStats(d);
  } finally {
    await stopNaive(d);
    releaseStore(store, mnt);
  }
  return out;
}

/** Counters of the nydus-ts blob metrics that grow, as after − before (a counter that went down
 * was reset, e.g. by a remount, and counts from 0). */
function metricsDelta(b: OurBlobMetrics | null, a: OurBlobMetrics | null): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of ['events', 'fast_path', 'slow_path', 'denials', 'backend_bytes']) {
    const x = num(a?.[k]);
    const y = num(b?.[k]) || 0;
    out[k] = x >= y ? x - y : x;
  }
  return out;
}

/** One round of nydus-ts; a failure carries the tail of the daemon's log. */
async function roundOurs(c: Ctx, r: number): Promise<RoundResult> {
  try {
    return await roundOursInner(c, r);
  } catch (e) {
    const logs = fs.readdirSync(c.work).filter((f) => /^daemon-.*\.(log|out)$/.test(f)).map((f) => path.join(c.work, f));
    const newest = logs.sort((x, y) => fs.statSync(y).mtimeMs - fs.statSync(x).mtimeMs).slice(0, 2);
    const msg = (e as Error).message;
    throw new Error(msg.includes('its output:') ? msg : `${msg}\n${newest.map((f) => `  ${path.basename(f)}:\n${tail(f)}`).join('\n')}`);
  }
}

async function roundOursInner(c: Ctx, r: number): Promise<RoundResult> {
  const mnt = path.join(c.work, 'mnt-nydus');
  fs.mkdirSync(mnt, { recursive: true });
  const out: RoundResult = {};
  const mount = (d: Ours): void => void ourCli(['mount', '-A', d.sock, '-B', c.boot, '-D', c.blobDir, mnt]);
  const unmount = (): void => {
    if (!isMounted(mnt)) return;
    try {
      ourCli(['umount', mnt]);
    } catch (e) {
      log(`nydus-ts umount failed (${(e as Error).message.split('\n')[0]}); using umount(8)`);
      umount(mnt);
    }
  };
  // sequential cases: one daemon, one fresh cache dir
  let cache = path.join(c.work, `nydus-cache-${r}`);
  let d = await startOurs(cache, c.work, `${r}`);
  try {
    mount(d);
    coldStart(c, [c.boot, cache], [c.blobDir]);
    const m0 = ourStatus(d.sock, c.blobId);
    out.cold = await seqRead(c, mnt, 'nydus-ts cold', d.proc.pid);
    out.metrics_cold = ourStatus(d.sock, c.blobId);
    out.cold.events = metricsDelta(m0, out.metrics_cold);
    out.warm = await seqRead(c, mnt, 'nydus-ts warm', d.proc.pid);
    const m2 = ourStatus(d.sock, c.blobId);
    out.warm.events = metricsDelta(out.metrics_cold, m2);
    unmount();
    mount(d);
    coldStart(c, [c.boot, cache], [c.blobDir]);
    const m3 = ourStatus(d.sock, c.blobId);
    out.remount = await seqRead(c, mnt, 'nydus-ts remount', d.proc.pid);
    out.metrics_remount = ourStatus(d.sock, c.blobId);
    out.remount.events = metricsDelta(m3, out.metrics_remount);
    out.remount_backend_bytes = out.remount.events.backend_bytes;
    unmount();
  } finally {
    unmount();
    await stopOurs(d);
    releaseStore(cache, mnt);
  }
  // parallel: a fresh daemon on a fresh cache dir
  cache = path.join(c.work, `nydus-cache-${r}-p`);
  d = await startOurs(cache, c.work, `${r}-p`);
  try {
    mount(d);
    coldStart(c, [c.boot, cache], [c.blobDir]);
    const m0 = ourStatus(d.sock, c.blobId);
    out.parallel = await parallelRead(c, mnt, r, 'nydus-ts parallel', d.proc.pid);
    out.metrics_parallel = ourStatus(d.sock, c.blobId);
    out.parallel.events = metricsDelta(m0, out.metrics_parallel);
    unmount();
  } finally {
    unmount();
    await stopOurs(d);
    releaseStore(cache, mnt);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Clean-up: readers, daemons, then any mount left under the work directory (deepest first).

async function cleanup(work: string | undefined, keep: boolean): Promise<void> {
  for (const p of children) p.kill('SIGKILL');
  for (const d of [...naives]) await stopNaive(d).catch(() => undefined);
  // nydus-ts mounts go before their daemon exits (spec §8: unmount, then drop the group)
  if (work) unmountAll(work);
  for (const d of [...ourDaemons]) await stopOurs(d).catch(() => undefined);
  if (work) {
    unmountAll(work);
    const left = mountsUnder(work);
    if (left.length) log(`still mounted, keeping ${work}: ${left.join(', ')}`);
    else if (!keep) fs.rmSync(work, { recursive: true, force: true });
    else log(`kept ${work}`);
  }
}

// ---------------------------------------------------------------------------------------------

function pickWorkBase(a: Args): string {
  const candidates = a.workDir ? [a.workDir] : [os.tmpdir(), path.join(REPO, '.cache', 'bench')];
  for (const dir of candidates) {
    fs.mkdirSync(dir, { recursive: true });
    const type = Number(fs.statfsSync(dir).type);
    if (HSM_FS[type]) return dir;
    if (a.workDir) throw new UsageError(`--work-dir ${dir} is on a filesystem with statfs type 0x${type.toString(16)}; fanotify pre-content marks need ext4, xfs or btrfs`);
  }
  throw new UsageError(`neither ${candidates.join(' nor ')} is on ext4/xfs/btrfs; pass --work-dir`);
}

async function main(): Promise<number> {
  const a = parse(process.argv.slice(2));
  requireRoot('mount(2), fanotify_init(FAN_CLASS_PRE_CONTENT), drop_caches');
  const work = fs.mkdtempSync(path.join(pickWorkBase(a), 'read-host-bench-'));
  let cleaning: Promise<void> | undefined;
  const clean = (): Promise<void> => (cleaning ??= cleanup(work, a.keep));
  onCleanup('readers, daemons, mounts, work dir', clean);
  let oursError: Error | undefined;
  try {
    const size = a.sizeMiB * MiB;
    // 1. data and image
    const src = path.join(work, 'src');
    fs.mkdirSync(src);
    const rel = 'random.bin';
    const srcFile = path.join(src, rel);
    let t = Date.now();
    const sha = writeRandomFile(srcFile, size);
    log(`data: ${a.sizeMiB} MiB of random bytes in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    const boot = path.join(work, 'image.boot');
    const blobDir = path.join(work, 'blobs');
    const report = path.join(work, 'create.json');
    t = Date.now();
    ourCli(['create', '-B', boot, '-D', blobDir, '-J', report, src], CLI);
    const createS = (Date.now() - t) / 1000;
    const blobId = (JSON.parse(fs.readFileSync(report, 'utf8')) as { blobs: string[] }).blobs[0];
    const blobBytes = fs.statSync(path.join(blobDir, blobId)).size;
    // the blob's uncompressed address space: native's device= file and naive-c's source
    const raw = path.join(work, 'blob.raw');
    t = Date.now();
    await exportBlobData(boot, blobDir, blobId, raw);
    log(`image: blob ${blobId.slice(0, 12)}… ${(blobBytes / MiB).toFixed(1)} MiB (create ${createS.toFixed(1)} s), uncompressed ${(fs.statSync(raw).size / MiB).toFixed(1)} MiB (${((Date.now() - t) / 1000).toFixed(1)} s); work dir ${work}`);
    // naive-fanotify serves naive-c, and its --mount-only does native's mount(2)
    const c: Ctx = { a, work, boot, blobDir, blobId, raw, naiveBin: buildNaive(), rel, size, sha, srcFile };

    // 2. rounds
    const results: Record<VariantName, RoundResult[]> = { native: [], 'naive-c': [], 'nydus-ts': [] };
    const mbs = (x?: CaseResult): string => (x ? (x.bytes / MiB / x.seconds).toFixed(0) : '-');
    const loads: number[] = [];
    for (let r = 0; r < a.rounds; r++) {
      const load = await otherLoad(a.waitQuiet);
      loads.push(load);
      if (load > 0.25) log(`round ${r + 1}: other processes keep the CPUs ${(load * 100).toFixed(0)}% busy; figures will be skewed`);
      for (const v of a.variants) {
        if (v === 'nydus-ts' && oursError) continue;
        let res: RoundResult;
        try {
          res = v === 'native' ? await roundNative(c, r) : v === 'naive-c' ? await roundNaive(c, r) : await roundOurs(c, r);
        } catch (e) {
          // ours failing (not written yet, or wrong bytes) still leaves the peers' figures to print
          if (v !== 'nydus-ts') throw e;
          oursError = e as Error;
          log(`nydus-ts failed: ${oursError.message}`);
          continue;
        }
        results[v].push(res);
        const ev = (x?: CaseResult): string => {
          const n = (x?.events as { events?: number } | undefined)?.events;
          return n === undefined ? '' : ` (${n} events)`;
        };
        log(`round ${r + 1}/${a.rounds}: ${v}: cold ${mbs(res.cold)}${ev(res.cold)}, warm ${mbs(res.warm)}, remount ${mbs(res.remount)}${ev(res.remount)}, parallel ${mbs(res.parallel)}${ev(res.parallel)} MiB/s; bytes verified`);
      }
    }

    const { text, json } = readHostReport({ a, size, blobId, blobBytes, createS, results, loads, oursError });
    process.stdout.write(text + '\n');
    if (a.json) {
      writeJson(a.json, json);
      log(`results: ${a.json}`);
    }
  } finally {
    await clean();
  }
  if (oursError) {
    process.stderr.write(`read-host-bench: error: the nydus-ts fanotify front end failed (details above): ${firstLine(oursError)}\n`);
    return 1;
  }
  return 0;
}

benchMain('read-host-bench', main);
