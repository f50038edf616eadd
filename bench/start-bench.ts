/**
 * Container start benchmark (issue #10; a benchmark, not a test). On this host, as root: how long
 * a real container needs from "image in a registry" to its first output byte and to its end, for
 * containerd's overlayfs snapshotter with the plain OCI image (a normal CRI pull: download +
 * unpack) against our snapshotter (`nydus-ts snapshotter`) with the nydus conversion of the same
 * image, both from one docker-registry on loopback, in the same run.
 *
 *   node dist/bench/start-bench.js [--rounds 3] [--json FILE] [--rootfs-tar TAR] [--cmd 'apt-cache policy']
 *        [--variants overlayfs,nydus-ts,nydus-ts-daemon-up] [--no-drop-caches]
 *
 * Setup (once, not timed): the OCI layout of the Debian bookworm minbase rootfs
 * (scripts/make-rootfs.sh; one gzip layer, built with bench/pull-bench.ts' buildRootfsLayout and
 * cached where bench/pull-bench-host.ts caches it), a docker-registry (test/helpers/registry.ts),
 * `skopeo copy` of the layout to REG/bookworm-minbase:oci, `nydus-ts convert` to
 * REG/bookworm-minbase:nydus.
 *
 * Variants (--variants): overlayfs (containerd's own snapshotter, the OCI image), nydus-ts (our
 * snapshotter, the nydus image; it starts its daemon on the first mount, inside the clock) and
 * nydus-ts-daemon-up (the same with the daemon, fresh and empty, started before the clock).
 * Per round the variants run in turn, the order reversed every other round. Each run gets a
 * fresh private containerd (root, content store, state: all new; the same config for all but
 * the CRI snapshotter), for ours also a fresh snapshotter root (so a fresh daemon and cache), then
 * `sync` + drop_caches, a warm-up of the tools (ctr, node + the CLI), and the clock starts:
 *   1. `nydus-ts pull --address SOCK REF` (CRI PullImage, namespace k8s.io): pull time;
 *   2. `ctr -n k8s.io run --snapshotter S REF ID CMD…`: first byte on stdout, end.
 * Bytes: the registry's blob GETs in that window (access log), and for ours the daemon's
 * backend_bytes (/api/v1/metrics) read before the container is removed.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawn, execFileSync, ChildProcess } from 'node:child_process';
import { buildRootfsLayout, LayoutInfo } from './pull-bench';
import { startRegistry, requireCommand, TestRegistry } from '../test/helpers/registry';
import { startSnapshotter, SnapshotterProcess, waitFor, pidsMentioning, unmountUnder, mountsUnder, killLeftovers } from '../test/helpers/containerd';
import { apiRequest, ensureDaemon } from '../src/cli/daemon-commands';

const REPO = path.resolve(__dirname, '..', '..');
const CLI = path.join(REPO, 'dist', 'src', 'cli', 'main.js');
const MiB = 1 << 20;
const NS = 'k8s.io';

/**
 * overlayfs: containerd's own snapshotter, OCI image. nydus-ts: our snapshotter, nydus image; it
 * starts its daemon on the first mount (inside the clock, as on a node's first container).
 * nydus-ts-daemon-up: the same, with the daemon (fresh, empty cache) started before the clock.
 */
type Variant = 'overlayfs' | 'nydus-ts' | 'nydus-ts-daemon-up';
const VARIANTS: Variant[] = ['overlayfs', 'nydus-ts', 'nydus-ts-daemon-up'];
const LABEL: Record<Variant, string> = {
  overlayfs: 'containerd overlayfs, OCI image',
  'nydus-ts': 'nydus-ts snapshotter, nydus image (daemon started on first mount)',
  'nydus-ts-daemon-up': 'nydus-ts snapshotter, nydus image (daemon already running)',
};

export const USAGE = `usage: node dist/bench/start-bench.js [options]      (as root; or: npm run bench:start -- [options])

Time to a real container's first output and end: containerd's overlayfs snapshotter with the OCI
image (CRI pull: download + unpack) against nydus-ts snapshotter with its nydus conversion, both
from one docker-registry on loopback; cold caches per run.

  --rounds N        rounds (default 3); medians are reported
  --json FILE       write every measurement as JSON
  --rootfs-tar TAR  the rootfs tar (default: scripts/make-rootfs.sh --cache-only)
  --cmd 'CMD ARGS'  the container's command, split on spaces, no shell (default: apt-cache policy)
  --variants LIST   of overlayfs, nydus-ts (our snapshotter starts its daemon on the first mount,
                    inside the clock), nydus-ts-daemon-up (daemon started before the clock);
                    default all three
  --no-drop-caches  keep the page cache (development only)
  -h, --help        this text

Environment: NYDUS_TS_CACHE (cache dir: rootfs tar, OCI layout), NYDUS_TS_TMP (work dir base; must
be ext4/xfs/btrfs for the daemon's cache), NYDUS_TS_KEEP_TMP (keep the work dir).`;

interface Args { rounds: number; json?: string; rootfsTar?: string; cmd: string[]; dropCaches: boolean; variants: Variant[] }

function log(msg: string): void {
  process.stderr.write(`start-bench [${process.uptime().toFixed(1)} s]: ${msg}\n`);
}

function parseArgs(argv: string[]): Args {
  const a: Args = { rounds: 3, cmd: ['apt-cache', 'policy'], dropCaches: true, variants: VARIANTS };
  for (let i = 0; i < argv.length; i++) {
    const next = (): string => {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
      return argv[++i];
    };
    switch (argv[i]) {
      case '-h': case '--help': process.stdout.write(USAGE + '\n'); process.exit(0);
      // eslint-disable-next-line no-fallthrough
      case '--rounds': a.rounds = Number(next()); if (!Number.isInteger(a.rounds) || a.rounds < 1) throw new Error('--rounds: a positive integer'); break;
      case '--json': a.json = path.resolve(next()); break;
      case '--rootfs-tar': a.rootfsTar = path.resolve(next()); break;
      case '--cmd': a.cmd = next().split(/\s+/).filter(Boolean); break;
      case '--no-drop-caches': a.dropCaches = false; break;
      case '--variants': {
        const vs = next().split(',').filter(Boolean) as Variant[];
        for (const v of vs) if (!VARIANTS.includes(v)) throw new Error(`--variants: unknown ${v} (${VARIANTS.join(', ')})`);
        if (!vs.includes('overlayfs') || vs.length < 2) throw new Error('--variants: overlayfs and at least one nydus-ts variant');
        a.variants = vs;
        break;
      }
      default: throw new Error(`unknown option ${argv[i]} (see --help)`);
    }
  }
  return a;
}

const now = (): number => Number(process.hrtime.bigint()) / 1e9;
const median = (xs: number[]): number => {
  const s = xs.filter(Number.isFinite).sort((x, y) => x - y);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Busy share of all CPUs over 0.5 s (0–1), as bench/read-host-bench.ts measures it. */
async function cpuLoad(): Promise<number> {
  const busy = (): number => {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    return (f.reduce((x, y) => x + y, 0) - f[3] - (f[4] ?? 0)) / 100;
  };
  const b0 = busy();
  await new Promise((r) => setTimeout(r, 500));
  return (busy() - b0) / 0.5 / os.cpus().length;
}

function dropCaches(): void {
  execFileSync('sync');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

/** Run to the end; resolves with exit code, stdout and stderr (never rejects on a non-zero exit). */
function run(cmd: string, args: string[], timeoutMs = 600_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    p.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.once('error', reject);
    p.once('close', (code, sig) => {
      clearTimeout(t);
      resolve({ code: code ?? (sig ? 128 : -1), stdout, stderr });
    });
  });
}

async function must(cmd: string, args: string[], timeoutMs?: number): Promise<string> {
  const r = await run(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

// ---------------------------------------------------------------- image layout (cached)

/** The one-layer OCI layout of the rootfs tar, in bench/pull-bench-host.ts' cache (same stamp). */
async function ensureLayout(tar: string): Promise<LayoutInfo> {
  const cache = process.env.NYDUS_TS_CACHE || path.join(REPO, '.cache');
  const dir = path.join(cache, 'bench', 'pull-oci-1l');
  const st = fs.statSync(tar);
  const source = { tar: path.resolve(tar), size: st.size, mtime_ms: Math.floor(st.mtimeMs) };
  const stampFile = path.join(dir, 'pull-bench-source.json');
  const infoFile = path.join(dir, 'pull-bench-layout.json');
  if (fs.existsSync(infoFile) && fs.existsSync(stampFile)) {
    const old = JSON.parse(fs.readFileSync(stampFile, 'utf8')) as typeof source;
    if (old.tar === source.tar && old.size === source.size && old.mtime_ms === source.mtime_ms) {
      log(`using the cached OCI layout ${dir}`);
      return JSON.parse(fs.readFileSync(infoFile, 'utf8')) as LayoutInfo;
    }
  }
  log(`building the OCI layout ${dir} from ${tar}`);
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const info = await buildRootfsLayout(tar, dir, { layers: 1, slim: false, log });
  fs.writeFileSync(stampFile, JSON.stringify(source, null, 2) + '\n');
  return info;
}

// ---------------------------------------------------------------- registry egress

interface Egress { blob_gets: number; blob_bytes: number; total_bytes: number }

/** Registry responses logged since `offset` (distribution's logfmt "response completed" lines). */
function egressSince(reg: TestRegistry, offset: number): Egress {
  const text = Buffer.from(reg.log(), 'utf8').subarray(offset).toString('utf8');
  const e: Egress = { blob_gets: 0, blob_bytes: 0, total_bytes: 0 };
  const field = (line: string, k: string): string | undefined => {
    const m = new RegExp(`(?:^| )${k.replace(/\./g, '\\.')}=("(?:[^"\\\\]|\\\\.)*"|\\S+)`).exec(line);
    return m ? m[1].replace(/^"|"$/g, '') : undefined;
  };
  for (const line of text.split('\n')) {
    if (!/msg="response completed/.test(line)) continue;
    const bytes = Number(field(line, 'http.response.written') ?? 0) || 0;
    e.total_bytes += bytes;
    if (field(line, 'http.request.method') === 'GET' && /\/blobs\/sha256:/.test(field(line, 'http.request.uri') ?? '')) {
      e.blob_gets++;
      e.blob_bytes += bytes;
    }
  }
  return e;
}

const logBytes = (reg: TestRegistry): number => Buffer.byteLength(reg.log(), 'utf8');

// ---------------------------------------------------------------- a private containerd

/**
 * Like test/helpers/containerd.ts' startContainerd (same config: private root/state/sockets,
 * `[proxy_plugins.nydus-ts]`, disable_snapshot_annotations = false), but with the CRI
 * snapshotter chosen: `overlayfs` (containerd's own) or `nydus-ts`, so both variants pull
 * through the same CRI path.
 */
interface Ctd { dir: string; sock: string; ctr(args: string[], timeoutMs?: number): Promise<string>; stop(): Promise<void> }

async function startCtd(dir: string, criSnapshotter: string, nydusSock: string): Promise<Ctd> {
  const root = path.join(dir, 'root');
  const state = path.join(dir, 'state');
  const sock = path.join(dir, 'containerd.sock');
  for (const d of [root, state, path.join(dir, 'cni-conf'), path.join(dir, 'opt')]) fs.mkdirSync(d, { recursive: true });
  const config = path.join(dir, 'config.toml');
  fs.writeFileSync(config, [
    'version = 2',
    `root = ${JSON.stringify(root)}`,
    `state = ${JSON.stringify(state)}`,
    '[grpc]',
    `  address = ${JSON.stringify(sock)}`,
    '[ttrpc]',
    `  address = ${JSON.stringify(sock + '.ttrpc')}`,
    '[proxy_plugins.nydus-ts]',
    '  type = "snapshot"',
    `  address = ${JSON.stringify(nydusSock)}`,
    '[plugins."io.containerd.grpc.v1.cri"]',
    '  stream_server_address = "127.0.0.1"',
    '  stream_server_port = "0"',
    '[plugins."io.containerd.grpc.v1.cri".containerd]',
    `  snapshotter = ${JSON.stringify(criSnapshotter)}`,
    '  disable_snapshot_annotations = false',
    '[plugins."io.containerd.grpc.v1.cri".cni]',
    `  conf_dir = ${JSON.stringify(path.join(dir, 'cni-conf'))}`,
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${JSON.stringify(path.join(dir, 'opt'))}`,
    '',
  ].join('\n'));
  const logFile = path.join(dir, 'containerd.log');
  const out = fs.openSync(logFile, 'a');
  const child: ChildProcess = spawn('containerd', ['-c', config], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  children.add(child);
  let exitCode: number | string | undefined;
  const exited = new Promise<void>((resolve) => child.once('exit', (code, sig) => {
    children.delete(child);
    exitCode = code ?? sig ?? -1;
    resolve();
  }));
  const ctr = (args: string[], timeoutMs?: number): Promise<string> => must('ctr', ['-a', sock, '-n', NS, ...args], timeoutMs);
  await waitFor(`containerd on ${sock}`, async () => {
    if (exitCode !== undefined) throw new Error(`containerd exited (${exitCode}):\n${fs.readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n')}`);
    return (await run('ctr', ['-a', sock, 'version'], 5000)).code === 0;
  }, 30_000);
  const stop = async (): Promise<void> => {
    if (exitCode === undefined) {
      const r = await run('ctr', ['-a', sock, '-n', NS, 'tasks', 'ls', '-q'], 10_000);
      for (const id of r.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) {
        await run('ctr', ['-a', sock, '-n', NS, 'tasks', 'kill', '-s', 'SIGKILL', id], 10_000);
        await run('ctr', ['-a', sock, '-n', NS, 'tasks', 'rm', '-f', id], 10_000);
      }
      const c = await run('ctr', ['-a', sock, '-n', NS, 'containers', 'ls', '-q'], 10_000);
      for (const id of c.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) await run('ctr', ['-a', sock, '-n', NS, 'containers', 'rm', id], 10_000);
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(killer);
    }
    for (const pid of pidsMentioning(sock)) {
      try {
        process.kill(pid, 'SIGKILL'); // a shim that outlived containerd (ours: it names our socket)
      } catch {
        // gone
      }
    }
    unmountUnder(dir);
  };
  return { dir, sock, ctr, stop };
}

const children = new Set<ChildProcess>();

// ---------------------------------------------------------------- the daemon our snapshotter starts

async function daemonBackendBytes(sock: string): Promise<number | null> {
  if (!fs.existsSync(sock)) return null;
  const r = await apiRequest(sock, 'GET', '/api/v1/metrics').catch(() => undefined);
  if (!r || r.status !== 200) return null;
  return ((r.body?.blobs ?? []) as Array<{ backend_bytes?: number }>).reduce((n, b) => n + (b.backend_bytes ?? 0), 0);
}

/** SIGTERM the supervisor of the daemon on `sock`, wait, SIGKILL what stays. */
async function stopDaemon(sock: string): Promise<void> {
  if (!fs.existsSync(sock)) return;
  const info = await apiRequest(sock, 'GET', '/api/v1/daemon').catch(() => undefined);
  const pids = [info?.body?.supervisor_pid, info?.body?.pid].filter((p): p is number => typeof p === 'number' && p > 0);
  if (!pids.length) return;
  const running = (p: number): boolean => {
    try {
      return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${p}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  try {
    process.kill(pids[0], 'SIGTERM');
  } catch {
    // gone
  }
  await waitFor(`the daemon on ${sock} to exit`, () => !pids.some(running), 20_000).catch(() => {
    for (const p of pids) if (running(p)) process.kill(p, 'SIGKILL');
  });
}

// ---------------------------------------------------------------- one measurement

interface RunResult {
  variant: Variant;
  round: number;
  /** seconds from the start of the pull */
  pull_s: number;
  first_output_s: number;
  end_s: number;
  /** the same two, from the start of `ctr run` */
  run_first_output_s: number;
  run_end_s: number;
  exit_code: number;
  output_bytes: number;
  output_sha256: string;
  registry: Egress;
  daemon_backend_bytes: number | null;
  cpu_load_before: number;
}

/** State of the variant being measured: cleanup() tears it down even on failure. */
let current: { ctd?: Ctd; snap?: SnapshotterProcess; snapRoot?: string; dir: string } | undefined;

async function cleanupCurrent(): Promise<void> {
  const c = current;
  current = undefined;
  if (!c) return;
  await c.ctd?.stop().catch((e) => log(`containerd stop: ${(e as Error).message}`));
  await c.snap?.stop().catch(() => undefined);
  if (c.snapRoot) {
    const daemonSock = path.join(c.snapRoot, 'daemon', 'api.sock');
    for (const m of mountsUnder(path.join(c.snapRoot, 'images'))) await apiRequest(daemonSock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(m)}`).catch(() => undefined);
    unmountUnder(c.snapRoot);
    await stopDaemon(daemonSock);
  }
  unmountUnder(c.dir);
  if (mountsUnder(c.dir).length) log(`warning: mounts left under ${c.dir}: ${mountsUnder(c.dir).join(', ')}`);
  else if (!process.env.NYDUS_TS_KEEP_TMP) fs.rmSync(c.dir, { recursive: true, force: true });
}

async function measure(variant: Variant, round: number, work: string, reg: TestRegistry, ref: string, a: Args): Promise<RunResult> {
  const dir = path.join(work, `r${round}-${variant}`);
  fs.mkdirSync(dir, { recursive: true });
  current = { dir };
  try {
    const snapSock = path.join(dir, 'sn.sock');
    const ours = variant !== 'overlayfs';
    if (ours) {
      current.snapRoot = path.join(dir, 'sn');
      current.snap = await startSnapshotter(current.snapRoot, snapSock);
      if (variant === 'nydus-ts-daemon-up') {
        // where the snapshotter looks for its own daemon: it finds this one alive and uses it
        const d = path.join(current.snapRoot, 'daemon');
        fs.mkdirSync(d, { recursive: true, mode: 0o700 });
        await ensureDaemon(path.join(d, 'api.sock'), path.join(current.snapRoot, 'cache'), path.join(d, 'daemon.log'));
      }
    }
    // the overlayfs variant's containerd names a snapshotter socket nobody serves: never dialled
    current.ctd = await startCtd(path.join(dir, 'ctd'), ours ? 'nydus-ts' : 'overlayfs', snapSock);
    const ctd = current.ctd;
    if (a.dropCaches) dropCaches();
    // the tools as they would be resident on a node: ctr, runc, node + the CLI's modules
    await must('ctr', ['-a', ctd.sock, 'version']);
    await run('runc', ['--version']);
    await must(process.execPath, [CLI, 'pull', '--help']);
    const load = await cpuLoad();
    if (load > 0.25) log(`round ${round} ${variant}: other processes keep the CPUs ${(load * 100).toFixed(0)}% busy; figures will be skewed`);
    const off = logBytes(reg);
    const t0 = now();
    await must(process.execPath, [CLI, 'pull', '--address', ctd.sock, ref]);
    const tPull = now();
    const id = `start-bench-${round}-${variant}`;
    const out = await new Promise<{ code: number; first: number; end: number; bytes: number; sha: string; stderr: string }>((resolve, reject) => {
      const p = spawn('ctr', ['-a', ctd.sock, '-n', NS, 'run', '--snapshotter', ours ? 'nydus-ts' : 'overlayfs', ref, id, ...a.cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
      let first = NaN;
      let bytes = 0;
      let stderr = '';
      const h = crypto.createHash('sha256');
      p.stdout.on('data', (b: Buffer) => {
        if (!bytes) first = now();
        bytes += b.length;
        h.update(b);
      });
      p.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      const t = setTimeout(() => p.kill('SIGKILL'), 600_000);
      p.once('error', reject);
      p.once('close', (code, sig) => {
        clearTimeout(t);
        resolve({ code: code ?? (sig ? 128 : -1), first, end: now(), bytes, sha: h.digest('hex'), stderr });
      });
    });
    if (out.code !== 0) throw new Error(`ctr run (${variant}) exited ${out.code}:\n${out.stderr}${current.snap ? `\n--- snapshotter log tail ---\n${current.snap.log().split('\n').slice(-20).join('\n')}` : ''}`);
    const registry = egressSince(reg, off);
    const daemonBytes = current.snapRoot ? await daemonBackendBytes(path.join(current.snapRoot, 'daemon', 'api.sock')) : null;
    await ctd.ctr(['containers', 'rm', id]);
    const r: RunResult = {
      variant, round, pull_s: tPull - t0, first_output_s: out.first - t0, end_s: out.end - t0,
      run_first_output_s: out.first - tPull, run_end_s: out.end - tPull, exit_code: out.code,
      output_bytes: out.bytes, output_sha256: out.sha, registry, daemon_backend_bytes: daemonBytes, cpu_load_before: load,
    };
    log(`round ${round} ${variant}: pull ${r.pull_s.toFixed(2)} s, first output ${r.first_output_s.toFixed(2)} s, end ${r.end_s.toFixed(2)} s, registry blobs ${(registry.blob_bytes / MiB).toFixed(2)} MiB in ${registry.blob_gets} GETs${daemonBytes !== null ? `, daemon backend ${(daemonBytes / MiB).toFixed(2)} MiB` : ''}`);
    return r;
  } finally {
    await cleanupCurrent();
  }
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('must run as root (containerd, mounts, drop_caches)');
  for (const [c, pkg] of [['containerd', 'containerd'], ['ctr', 'containerd'], ['runc', 'runc'], ['containerd-shim-runc-v2', 'containerd'], ['docker-registry', 'docker-registry'], ['skopeo', 'skopeo']]) requireCommand(c, pkg);
  const tar = a.rootfsTar ?? execFileSync('bash', [path.join(REPO, 'scripts', 'make-rootfs.sh'), '--cache-only'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim().split('\n').pop()!;
  const layout = await ensureLayout(tar);
  const base = process.env.NYDUS_TS_TMP || os.tmpdir();
  fs.mkdirSync(base, { recursive: true });
  const work = fs.mkdtempSync(path.join(base, 'nydus-start-bench-'));
  let reg: TestRegistry | undefined;
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: cleaning up`);
    void cleanupCurrent().finally(async () => {
      await reg?.stop().catch(() => undefined);
      killLeftovers();
      for (const c of children) c.kill('SIGKILL');
      process.exit(130);
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const results: RunResult[] = [];
  try {
    // no Docker credentials: the registry is anonymous
    process.env.DOCKER_CONFIG = path.join(work, 'docker-empty');
    fs.mkdirSync(process.env.DOCKER_CONFIG);
    reg = await startRegistry();
    const ociRef = reg.ref('bookworm-minbase', 'oci');
    const nydusRef = reg.ref('bookworm-minbase', 'nydus');
    let t = now();
    await must('skopeo', ['--insecure-policy', 'copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests', `oci:${layout.dir}:latest`, `docker://${ociRef}`]);
    log(`skopeo copy to ${ociRef}: ${(now() - t).toFixed(1)} s (${layout.layers.map((l) => `${(l.size / MiB).toFixed(1)} MiB gzip`).join(', ')})`);
    t = now();
    const convJson = path.join(work, 'convert.json');
    await must(process.execPath, [CLI, 'convert', '--source', ociRef, '--target', nydusRef, '--insecure', '--work-dir', path.join(work, 'convert'), '-J', convJson]);
    const conv = JSON.parse(fs.readFileSync(convJson, 'utf8')) as { blobs?: Array<{ size?: number }> };
    const nydusBlobBytes = (conv.blobs ?? []).reduce((n, b) => n + (b.size ?? 0), 0);
    log(`nydus-ts convert to ${nydusRef}: ${(now() - t).toFixed(1)} s (data blobs ${(nydusBlobBytes / MiB).toFixed(1)} MiB)`);
    const refs: Record<Variant, string> = { overlayfs: ociRef, 'nydus-ts': nydusRef, 'nydus-ts-daemon-up': nydusRef };
    for (let r = 1; r <= a.rounds; r++) {
      const order: Variant[] = r % 2 ? a.variants : [...a.variants].reverse();
      for (const v of order) {
        log(`round ${r}/${a.rounds}: ${v} …`);
        results.push(await measure(v, r, work, reg, refs[v], a));
      }
    }
    // ---- report
    const of = (v: Variant): RunResult[] => results.filter((x) => x.variant === v);
    const med = (v: Variant, f: (x: RunResult) => number): number => median(of(v).map(f));
    const s = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : '-');
    const mib = (x: number): string => (Number.isFinite(x) ? (x / MiB).toFixed(2) : '-');
    const L: string[] = [];
    L.push(`Container start: \`${a.cmd.join(' ')}\` in a Debian bookworm minbase image, ${a.rounds} round(s), medians; ${a.dropCaches ? 'cold page cache' : 'WARM page cache'}, fresh containerd + snapshotter + daemon per run; ${os.cpus().length} CPUs, kernel ${os.release()}`);
    L.push('');
    L.push('| variant | pull s | first output s | end s | run → first output s | run → end s | registry blob MiB (GETs) | daemon backend MiB |');
    L.push('| --- | --- | --- | --- | --- | --- | --- | --- |');
    for (const v of a.variants) {
      L.push(`| ${LABEL[v]} | ${s(med(v, (x) => x.pull_s))} | ${s(med(v, (x) => x.first_output_s))} | ${s(med(v, (x) => x.end_s))} | ${s(med(v, (x) => x.run_first_output_s))} | ${s(med(v, (x) => x.run_end_s))} | ${mib(med(v, (x) => x.registry.blob_bytes))} (${med(v, (x) => x.registry.blob_gets)}) | ${v !== 'overlayfs' ? mib(med(v, (x) => x.daemon_backend_bytes ?? NaN)) : '-'} |`);
    }
    const ours = a.variants.filter((v) => v !== 'overlayfs');
    const ratio = (v: Variant, f: (x: RunResult) => number): number => med('overlayfs', f) / med(v, f);
    const bytesRatio = (v: Variant): number => med(v, (x) => x.registry.blob_bytes) / med('overlayfs', (x) => x.registry.blob_bytes);
    L.push('');
    for (const v of ours) {
      L.push(`overlayfs / ${v}: time to first output ${ratio(v, (x) => x.first_output_s).toFixed(2)}×, time to end ${ratio(v, (x) => x.end_s).toFixed(2)}× (pull ${ratio(v, (x) => x.pull_s).toFixed(2)}×); bytes fetched ${v} / overlayfs (registry blob bytes) ${bytesRatio(v).toFixed(3)}`);
    }
    L.push(`image sizes: OCI ${mib(layout.layers.reduce((n, l) => n + l.size, 0))} MiB gzip, nydus data blobs ${mib(nydusBlobBytes)} MiB`);
    const shas = new Set(results.map((x) => x.output_sha256));
    L.push(shas.size === 1 ? `output identical in every run (${results[0].output_bytes} bytes)` : `warning: the output differs between runs (${shas.size} distinct)`);
    const busy = results.filter((x) => x.cpu_load_before > 0.25);
    if (busy.length) L.push(`warning: other processes kept the CPUs busy before ${busy.length} of ${results.length} runs (${busy.map((x) => `${(x.cpu_load_before * 100).toFixed(0)}%`).join(', ')}); load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}; figures are skewed`);
    process.stdout.write(L.join('\n') + '\n');
    if (a.json) {
      fs.mkdirSync(path.dirname(a.json), { recursive: true });
      fs.writeFileSync(a.json, JSON.stringify({
        date: new Date().toISOString(), cpus: os.cpus().length, kernel: os.release(), command: a.cmd, rounds: a.rounds, drop_caches: a.dropCaches,
        image: { oci_layers: layout.layers, nydus_blob_bytes: nydusBlobBytes },
        medians: Object.fromEntries(a.variants.map((v) => [v, {
          pull_s: med(v, (x) => x.pull_s), first_output_s: med(v, (x) => x.first_output_s), end_s: med(v, (x) => x.end_s),
          registry_blob_bytes: med(v, (x) => x.registry.blob_bytes), daemon_backend_bytes: v !== 'overlayfs' ? med(v, (x) => x.daemon_backend_bytes ?? NaN) : null,
        }])),
        ratios: Object.fromEntries(ours.map((v) => [v, { first_output_overlayfs_over_ours: ratio(v, (x) => x.first_output_s), end_overlayfs_over_ours: ratio(v, (x) => x.end_s), pull_overlayfs_over_ours: ratio(v, (x) => x.pull_s), bytes_ours_over_theirs: bytesRatio(v) }])),
        runs: results,
      }, null, 2) + '\n');
      log(`wrote ${a.json}`);
    }
  } finally {
    await cleanupCurrent();
    await reg?.stop().catch(() => undefined);
    if (mountsUnder(work).length) log(`warning: mounts left under ${work}: ${mountsUnder(work).join(', ')}`);
    else if (!process.env.NYDUS_TS_KEEP_TMP) fs.rmSync(work, { recursive: true, force: true });
    killLeftovers();
  }
}

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`start-bench: error: ${(e as Error).stack ?? e}\n`);
    process.exitCode = 1;
  });
}
