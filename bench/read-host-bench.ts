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
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { exportBlobData } from '../src/tools/export';

const REPO = path.resolve(__dirname, '..', '..');
const CLI = path.join(REPO, 'dist', 'src', 'cli', 'main.js');
/** the CLI whose daemon, mount, umount and status are measured (another build's, for before/after) */
const OUR_CLI = process.env.NYDUS_TS_BENCH_CLI ? path.resolve(process.env.NYDUS_TS_BENCH_CLI) : CLI;
const C_SOURCE = path.join(REPO, 'bench', 'naive-fanotify.c');
const MiB = 1 << 20;

const ALL_VARIANTS = ['native', 'naive-c', 'nydus-ts'] as const;
type VariantName = (typeof ALL_VARIANTS)[number];
const LABEL: Record<VariantName, string> = {
  native: 'native file-backed EROFS',
  'naive-c': 'naive C fanotify daemon',
  'nydus-ts': 'nydus-ts fanotify daemon',
};

interface Args {
  rounds: number;
  sizeMiB: number;
  json?: string;
  variants: VariantName[];
  readers: number;
  readerMiB: number;
  pieceKiB: number;
  timeoutS: number;
  workDir?: string;
  keep: boolean;
  prime: boolean;
  sources: 'hot' | 'cold';
  waitQuiet: number;
}

const USAGE = `usage: node dist/bench/read-host-bench.js [options]        (as root, kernel >= 6.14)
       npm run bench:read -- [options]

Reads one file of random data through native file-backed EROFS, a naive C fanotify daemon and
nydus-ts' fanotify front end: cold, warm, after remount, and parallel random readers; prints
MiB/s and the ratios of the issue's goals.

  --rounds N          rounds; medians are reported (default 3)
  --size MiB          size of the file (default 256)
  --json FILE         also write the results as JSON
  --variants LIST     comma-separated subset of native,naive-c,nydus-ts (default all)
  --readers N         parallel readers (default 16)
  --reader-mib N      MiB each parallel reader reads (default 4)
  --piece-kib N       size of each random piece, KiB (default 128)
  --timeout S         seconds any one read may take before the run fails (default 600)
  --work-dir DIR      where to make the work directory (must be ext4/xfs/btrfs; default the
                      system temp dir if it is one of those, else .cache/bench)
  --sources hot|cold  hot (default): after dropping the page cache, read the daemons' sources
                      (naive-c's uncompressed blob, nydus-ts' compressed blob) back in, so cold
                      cases measure the front end and daemon rather than this VM's disk; cold:
                      they come from the disk too
  --no-prime          do not read each case's files once before dropping the page cache (by
                      default they are, so that the host's cache of the VM disk holds every
                      variant's files alike; see coldStart in the source)
  --wait-quiet S      before each round, wait up to S seconds for other processes to leave the
                      CPUs idle (default 0: only measure and report it)
  --keep              keep the work directory
  -h, --help

Environment: NYDUS_TS_BENCH_CLI=PATH measures another build's CLI (its main.js) as nydus-ts;
NYDUS_TS_CACHE: where bench/naive-fanotify.c is compiled to (default .cache; the binary goes
to its bench/ subdirectory).
`;

function fail(msg: string): never {
  process.stderr.write(`read-host-bench: ${msg}\n\n${USAGE}`);
  process.exit(2);
}

function log(msg: string): void {
  process.stderr.write(`read-host-bench: ${msg}\n`);
}

function parseArgs(argv: string[]): Args {
  const a: Args = { rounds: 3, sizeMiB: 256, variants: [...ALL_VARIANTS], readers: 16, readerMiB: 4, pieceKiB: 128, timeoutS: 600, keep: false, prime: true, sources: 'hot', waitQuiet: 0 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) fail(`${k} needs a value`);
      return v;
    };
    const int = (): number => {
      const v = val();
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) fail(`${k}: expected a positive integer, got ${v}`);
      return n;
    };
    switch (k) {
      case '-h':
      case '--help':
        process.stdout.write(USAGE);
        process.exit(0);
      // eslint-disable-next-line no-fallthrough
      case '--rounds': a.rounds = int(); break;
      case '--size': a.sizeMiB = int(); break;
      case '--json': a.json = path.resolve(val()); break;
      case '--variants': {
        const vs = val().split(',').filter(Boolean);
        for (const v of vs) if (!(ALL_VARIANTS as readonly string[]).includes(v)) fail(`--variants: unknown variant ${v} (known: ${ALL_VARIANTS.join(', ')})`);
        a.variants = ALL_VARIANTS.filter((v) => vs.includes(v));
        break;
      }
      case '--readers': a.readers = int(); break;
      case '--reader-mib': a.readerMiB = int(); break;
      case '--piece-kib': a.pieceKiB = int(); break;
      case '--timeout': a.timeoutS = int(); break;
      case '--work-dir': a.workDir = path.resolve(val()); break;
      case '--keep': a.keep = true; break;
      case '--no-prime': a.prime = false; break;
      case '--wait-quiet': a.waitQuiet = int(); break;
      case '--sources': {
        const v = val();
        if (v !== 'hot' && v !== 'cold') fail('--sources must be hot or cold');
        a.sources = v;
        break;
      }
      default:
        fail(`unknown argument ${k}`);
    }
  }
  if (a.pieceKiB % 4 !== 0) fail('--piece-kib must be a multiple of 4');
  if (a.readerMiB * 1024 < a.pieceKiB) fail('--reader-mib must hold at least one piece');
  if (a.pieceKiB * 1024 > a.sizeMiB * MiB) fail('--piece-kib is larger than the file');
  return a;
}

// ---------------------------------------------------------------------------------------------
// Reader child processes: every read through a mount happens in one, so that a daemon that never
// answers an event costs a timeout, not a hung benchmark (a blocked reader is killable).

type ChildJob =
  | { mode: 'seq'; file: string }
  | { mode: 'sha256'; file: string }
  | { mode: 'pieces'; file: string; piece: number; offsets: number[] };

interface ChildResult {
  bytes: number;
  /** CLOCK_MONOTONIC ns around the read loop, as decimal strings */
  t0: string;
  t1: string;
  sha256?: string;
}

/** Child side: open, say "ready", wait for a line on stdin, read, print one JSON result. */
function childMain(job: ChildJob): void {
  const fd = fs.openSync(job.file, 'r');
  const buf = Buffer.allocUnsafe(job.mode === 'pieces' ? job.piece * job.offsets.length : MiB);
  process.stdout.write('ready\n');
  process.stdin.once('data', () => {
    const h = job.mode === 'seq' ? undefined : crypto.createHash('sha256');
    let bytes = 0;
    const t0 = process.hrtime.bigint();
    if (job.mode === 'pieces') {
      for (const [i, off] of job.offsets.entries()) {
        let got = 0;
        while (got < job.piece) {
          const n = fs.readSync(fd, buf, i * job.piece + got, job.piece - got, off + got);
          if (n === 0) throw new Error(`${job.file}: short read at ${off + got}`);
          got += n;
        }
        bytes += got;
      }
    } else {
      for (;;) {
        const n = fs.readSync(fd, buf, 0, buf.length, null);
        if (n === 0) break;
        h?.update(buf.subarray(0, n));
        bytes += n;
      }
    }
    const t1 = process.hrtime.bigint();
    // the pieces are hashed after the clock stops
    if (job.mode === 'pieces') h!.update(buf.subarray(0, bytes));
    fs.closeSync(fd);
    const r: ChildResult = { bytes, t0: String(t0), t1: String(t1), sha256: h?.digest('hex') };
    process.stdout.write(JSON.stringify(r) + '\n', () => process.exit(0));
  });
}

const children = new Set<ChildProcess>();

/** Run jobs in parallel child processes, released together; returns their results in order. */
async function runReaders(jobs: ChildJob[], timeoutS: number): Promise<ChildResult[]> {
  const procs = jobs.map((job) => {
    const p = spawn(process.execPath, [__filename, '--child', JSON.stringify(job)], { stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(p);
    let out = '';
    let err = '';
    p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const ready = new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (out.startsWith('ready\n')) {
          p.stdout!.off('data', check);
          resolve();
        }
      };
      p.stdout!.on('data', check);
      p.once('exit', () => reject(new Error(`reader of ${job.file} exited before it was ready: ${err.trim()}`)));
    });
    const done = new Promise<ChildResult>((resolve, reject) => {
      p.once('exit', (code, sig) => {
        children.delete(p);
        const line = out.split('\n').find((l) => l.startsWith('{'));
        if (code === 0 && line) resolve(JSON.parse(line) as ChildResult);
        else reject(new Error(`reader of ${job.file} failed (${sig ?? `exit ${code}`}): ${err.trim() || out.trim()}`));
      });
    });
    return { p, ready, done };
  });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      for (const { p } of procs) p.kill('SIGKILL');
      reject(new Error(`a read of ${jobs[0].file} took longer than ${timeoutS} s (a daemon that does not answer its events?)`));
    }, timeoutS * 1000);
  });
  try {
    await Promise.race([Promise.all(procs.map((x) => x.ready)), timeout]);
    for (const { p } of procs) p.stdin!.write('go\n');
    return await Promise.race([Promise.all(procs.map((x) => x.done)), timeout]);
  } finally {
    clearTimeout(timer);
    for (const { p } of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
}

const secondsOf = (r: ChildResult): number => Number(BigInt(r.t1) - BigInt(r.t0)) / 1e9;

// ---------------------------------------------------------------------------------------------
// Helpers

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${(r.stderr || r.stdout || r.error?.message || `status ${r.status}`).trim()}`);
  return r.stdout;
}

function dropCaches(): void {
  spawnSync('sync');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

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

function mountsUnder(dir: string): string[] {
  // /proc/self/mounts escapes spaces etc. as octal; our paths have none
  return fs.readFileSync('/proc/self/mounts', 'utf8').split('\n')
    .map((l) => l.split(' ')[1]).filter((m): m is string => !!m && (m === dir || m.startsWith(dir + '/')));
}

const isMounted = (mnt: string): boolean => mountsUnder(mnt).includes(mnt);

/** Unmount everything at or under `dir`, deepest first (lazily if busy); false if some stayed. */
function unmountAll(dir: string): boolean {
  for (const m of mountsUnder(dir).sort((x, y) => y.length - x.length)) {
    if (spawnSync('umount', [m]).status !== 0) spawnSync('umount', ['-l', m]);
  }
  return mountsUnder(dir).length === 0;
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

/** Busy CPU seconds of the whole machine so far (all but idle and iowait, from /proc/stat). */
function machineBusy(): number {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return (f.reduce((x, y) => x + y, 0) - f[3] - (f[4] ?? 0)) / 100; // USER_HZ
}

/**
 * How busy other processes keep the CPUs while this benchmark is idle (0–1, over 0.5 s), after
 * waiting up to `maxS` seconds for it to drop below 10 %. Shared machines run other jobs (a QEMU
 * test VM, builds); a busy machine slows the CPU-bound daemon cases most.
 */
async function otherLoad(maxS: number): Promise<number> {
  const start = Date.now();
  for (;;) {
    const b0 = machineBusy();
    await new Promise((resolve) => setTimeout(resolve, 500));
    const load = (machineBusy() - b0) / 0.5 / os.cpus().length;
    if (load < 0.1 || (Date.now() - start) / 1000 >= maxS) return load;
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Deterministic random bytes (AES-128-CTR keystream): incompressible, so zstd stores chunks raw. */
function writeRandomFile(file: string, size: number): string {
  const cipher = crypto.createCipheriv('aes-128-ctr', Buffer.alloc(16, 9), Buffer.alloc(16, 0));
  const zeros = Buffer.alloc(4 * MiB);
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'w');
  try {
    for (let done = 0; done < size;) {
      const n = Math.min(zeros.length, size - done);
      const b = cipher.update(zeros.subarray(0, n));
      h.update(b);
      fs.writeSync(fd, b, 0, b.length, done);
      done += b.length;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

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

function expectedPiecesSha(srcFile: string, piece: number, offsets: number[]): string {
  const fd = fs.openSync(srcFile, 'r');
  const h = crypto.createHash('sha256');
  const b = Buffer.allocUnsafe(piece);
  try {
    for (const off of offsets) {
      if (fs.readSync(fd, b, 0, piece, off) !== piece) throw new Error(`${srcFile}: short read at ${off}`);
      h.update(b);
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

// ---------------------------------------------------------------------------------------------
// naive-fanotify (C)

/** Compile bench/naive-fanotify.c into .cache/bench unless the binary is newer than the source. */
function buildNaive(): string {
  const dir = path.join(process.env.NYDUS_TS_CACHE ?? path.join(REPO, '.cache'), 'bench');
  const bin = path.join(dir, 'naive-fanotify');
  fs.mkdirSync(dir, { recursive: true });
  if (!fs.existsSync(bin) || fs.statSync(bin).mtimeMs < fs.statSync(C_SOURCE).mtimeMs) {
    sh('gcc', ['-O2', '-Wall', '-o', bin + '.tmp', C_SOURCE]);
    fs.renameSync(bin + '.tmp', bin);
  }
  return bin;
}

/** What naive-fanotify prints on SIGUSR1 (counters since the previous dump) and at exit. */
interface NaiveStats {
  kind: string;
  events: number;
  bytes: number;
  reads: number;
  max_batch: number;
  denied: number;
  overflows: number;
  /** time inside the fills' pread(2) of the source and pwrite(2) into the cache file */
  pread_ms: number;
  pwrite_ms: number;
  p50_us: number;
  p99_us: number;
  max_us: number;
  sizes: Record<string, number>;
}

interface Naive {
  proc: ChildProcess;
  lines: string[];
  waiters: Array<() => void>;
  stderr: string;
  exited: Promise<void>;
}

const naives = new Set<Naive>();

async function nextLine(d: Naive, timeoutS: number, what: string): Promise<string> {
  const t = Date.now();
  while (!d.lines.length) {
    if (d.proc.exitCode !== null || d.proc.signalCode !== null) throw new Error(`naive-fanotify exited (${d.proc.signalCode ?? d.proc.exitCode}) while waiting for ${what}: ${d.stderr.trim()}`);
    if (Date.now() - t > timeoutS * 1000) throw new Error(`naive-fanotify: no ${what} within ${timeoutS} s: ${d.stderr.trim()}`);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 200);
      d.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  return d.lines.shift()!;
}

async function startNaive(bin: string, boot: string, source: string, store: string, mnt: string): Promise<Naive> {
  fs.mkdirSync(store, { recursive: true });
  const proc = spawn(bin, ['--meta', boot, '--source', source, '--store', store, '--mnt', mnt, '--name', 'blob'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const d: Naive = { proc, lines: [], waiters: [], stderr: '', exited: new Promise((resolve) => proc.once('exit', () => resolve())) };
  naives.add(d);
  let buf = '';
  const wake = (): void => {
    for (const w of d.waiters.splice(0)) w();
  };
  proc.stdout!.on('data', (x: Buffer) => {
    buf += x.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      d.lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
    wake();
  });
  proc.stderr!.on('data', (x: Buffer) => (d.stderr += x.toString()));
  proc.once('exit', wake);
  const first = await nextLine(d, 30, '"ready"');
  if (first !== 'ready') throw new Error(`naive-fanotify: expected "ready", got ${first}`);
  return d;
}

async function naiveStats(d: Naive): Promise<NaiveStats> {
  d.proc.kill('SIGUSR1');
  return JSON.parse(await nextLine(d, 30, 'its counters')) as NaiveStats;
}

/** SIGTERM: it unmounts the image and its bind mount, prints its totals and exits. */
async function stopNaive(d: Naive): Promise<NaiveStats | undefined> {
  if (d.proc.exitCode === null && d.proc.signalCode === null) {
    d.proc.kill('SIGTERM');
    const t = setTimeout(() => d.proc.kill('SIGKILL'), 30_000);
    await d.exited;
    clearTimeout(t);
  }
  naives.delete(d);
  const total = d.lines.find((l) => l.includes('"kind":"total"'));
  return total ? (JSON.parse(total) as NaiveStats) : undefined;
}

// ---------------------------------------------------------------------------------------------
// nydus-ts daemon (fanotify front end)

interface Ours {
  proc: ChildProcess;
  sock: string;
  logFile: string;
  exited: Promise<void>;
}

const ourDaemons = new Set<Ours>();

function api(sock: string, method: string, p: string, timeoutMs = 10_000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: sock, method, path: p, timeout: timeoutMs, headers: { 'content-length': 0 } }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${p}: timeout`)));
    req.on('error', reject);
    req.end();
  });
}

function tail(file: string, n = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).map((l) => `    ${l}`).join('\n');
  } catch {
    return '    (no log)';
  }
}

async function startOurs(cacheDir: string, work: string, tag: string): Promise<Ours> {
  const sock = path.join(work, `api-${tag}.sock`);
  const logFile = path.join(work, `daemon-${tag}.log`);
  const outFile = path.join(work, `daemon-${tag}.out`);
  fs.mkdirSync(cacheDir, { recursive: true });
  const out = fs.openSync(outFile, 'a');
  const proc = spawn(process.execPath, [OUR_CLI, 'daemon', '--frontend', 'fanotify', '--cache-dir', cacheDir, '--apisock', sock, '--log-file', logFile], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const d: Ours = { proc, sock, logFile, exited: new Promise((resolve) => proc.once('exit', () => resolve())) };
  ourDaemons.add(d);
  const t = Date.now();
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`\`nydus-ts daemon --frontend fanotify\` exited (${proc.signalCode ?? `code ${proc.exitCode}`}) before it was RUNNING; the fanotify front end does not work (yet?).\n  its output:\n${tail(outFile)}`);
    }
    if (Date.now() - t > 60_000) throw new Error(`\`nydus-ts daemon --frontend fanotify\` is not RUNNING after 60 s.\n  its output:\n${tail(outFile)}`);
    try {
      const r = await api(sock, 'GET', '/api/v1/daemon', 2000);
      if (r.status === 200 && (JSON.parse(r.body) as { state?: string }).state === 'RUNNING') return d;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function stopOurs(d: Ours): Promise<void> {
  if (d.proc.exitCode === null && d.proc.signalCode === null) {
    await api(d.sock, 'PUT', '/api/v1/daemon/exit').catch(() => d.proc.kill('SIGTERM'));
    const t1 = setTimeout(() => d.proc.kill('SIGTERM'), 15_000);
    const t2 = setTimeout(() => d.proc.kill('SIGKILL'), 30_000);
    await d.exited;
    clearTimeout(t1);
    clearTimeout(t2);
  }
  ourDaemons.delete(d);
}

function ourCli(args: string[], cli = OUR_CLI): string {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 120_000 });
  if (r.status !== 0) throw new Error(`nydus-ts ${args.join(' ')} failed: ${(r.stderr || r.stdout || r.error?.message || `status ${r.status}`).trim()}`);
  return r.stdout;
}

/** The per-blob metrics the fanotify front end reports in `status --json` (metrics.blobs[]). */
interface OurBlobMetrics {
  events?: number;
  fast_path?: number;
  slow_path?: number;
  denials?: number;
  event_latency?: { p50_ms?: number; p99_ms?: number; [k: string]: unknown };
  backend_bytes?: number;
  [k: string]: unknown;
}

/** `status --json` ({daemon, mounts, metrics: {blobs: [...]}}), reduced to our blob's entry. */
function ourStatus(sock: string, blobId: string): OurBlobMetrics | null {
  const j = JSON.parse(ourCli(['status', '-A', sock, '--json'])) as { metrics?: { blobs?: Array<OurBlobMetrics & { blob_id?: string }> } };
  const blobs = j.metrics?.blobs ?? [];
  return blobs.find((b) => b.blob_id === blobId) ?? blobs[0] ?? null;
}

const num = (x: unknown): number => (typeof x === 'number' ? x : NaN);

// ---------------------------------------------------------------------------------------------
// One round of one variant

interface CaseResult {
  seconds: number;
  bytes: number;
  /** naive-c: its own counters for the case; nydus-ts: the status delta */
  events?: NaiveStats | Record<string, number>;
  /** user + system CPU of the daemon's process tree during the timed read */
  daemon_cpu_ms?: number;
}

interface RoundResult {
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
    if (a.workDir) fail(`--work-dir ${dir} is on a filesystem with statfs type 0x${type.toString(16)}; fanotify pre-content marks need ext4, xfs or btrfs`);
  }
  fail(`neither ${candidates.join(' nor ')} is on ext4/xfs/btrfs; pass --work-dir`);
}

/** The line of an error that says what went wrong (a CLI's "error:" line beats a stack frame). */
function firstLine(e: Error): string {
  const lines = e.message.split('\n');
  const err = lines.find((l, i) => i > 0 && /error:/i.test(l));
  return err ? `${lines[0].slice(0, 160)}… ${err.trim()}` : lines[0];
}

async function main(): Promise<void> {
  if (process.argv[2] === '--child') return childMain(JSON.parse(process.argv[3]) as ChildJob);
  const a = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) fail('must run as root (mount(2), fanotify_init(FAN_CLASS_PRE_CONTENT), drop_caches)');
  const work = fs.mkdtempSync(path.join(pickWorkBase(a), 'read-host-bench-'));
  let cleaning: Promise<void> | undefined;
  const clean = (): Promise<void> => (cleaning ??= cleanup(work, a.keep));
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      log(`${sig}: cleaning up`);
      void clean().finally(() => process.exit(130));
    });
  }
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

    // 3. report
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
    process.stdout.write(L.join('\n') + '\n');

    if (a.json) {
      const out = {
        benchmark: 'read-host', kernel: os.release(), cpus: os.cpus().length, size_bytes: size, rounds: a.rounds, prime: a.prime, sources: a.sources, other_load_per_round: loads,
        image: { blob_id: blobId, blob_bytes: blobBytes, create_s: createS, compressor: 'zstd', digester: 'blake3' },
        parallel: { readers: a.readers, reader_mib: a.readerMiB, piece_kib: a.pieceKiB },
        mib_per_s: summary, ratios, ratios_per_round: rr, latency, per_round: results, nydus_ts_error: oursError?.message ?? null,
      };
      fs.mkdirSync(path.dirname(a.json), { recursive: true });
      fs.writeFileSync(a.json, JSON.stringify(out, null, 2) + '\n');
      log(`results: ${a.json}`);
    }
  } finally {
    await clean();
  }
  if (oursError) {
    process.stderr.write(`read-host-bench: error: the nydus-ts fanotify front end failed (details above): ${firstLine(oursError)}\n`);
    process.exitCode = 1;
  }
}

main().catch((e) => {
  process.stderr.write(`read-host-bench: error: ${(e as Error).stack ?? e}\n`);
  process.exitCode = 1;
});
