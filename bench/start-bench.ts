/**
 * Container start-up benchmark on a modelled network (issue #11; a benchmark, not a test). On
 * this host, as root: how long a real container takes from "image in a registry" to its start,
 * its first output and its end, for containerd's overlayfs snapshotter with the OCI image (a CRI
 * pull: download + unpack, then `ctr run`) against our snapshotter (`nydus-ts snapshotter`,
 * lazy) with the nydus conversion of the same image; the registry behind a link of a known rate.
 *
 *   node dist/bench/start-bench.js [--images python,node,minbase] [--rates 100m,1g,unlimited]
 *        [--rtt-ms MS] [--rounds 3] [--variants overlayfs,nydus-ts,…] [--json FILE]
 *
 * Set-up (once, not timed): the images (bench/lib/start-images.ts, cached), the link
 * (bench/lib/netmodel.ts: a namespace of ours, veth, tbf both ways), a docker-registry inside
 * the namespace, `skopeo copy` of each image to REG/NAME:oci and `nydus-ts convert` to
 * REG/NAME:nydus (with the link unlimited), and what a variant needs (an optimized image).
 * Then per rate, image and round (variants interleaved, their order reversed every other round),
 * each run cold: a fresh private containerd (new root, content store and state), for ours a fresh
 * snapshotter root (so a fresh daemon and empty cache), `sync` + drop_caches, the tools read once
 * (as resident on a node), and the clock starts:
 *   1. `nydus-ts pull --address SOCK REF` (CRI PullImage, namespace k8s.io);
 *   2. `ctr run --snapshotter S REF ID CMD…`: containerd's /tasks/start event (started), first
 *      byte on stdout, exit (end).
 * Bytes over the link: the host veth's counters around the run (every byte, whoever fetched it;
 * with headers). Backend requests: the registry's log lines in that window. For ours also the
 * daemon's metrics and a breakdown of our own start-up from the snapshotter's and the daemon's
 * logs. The report (bench/lib/start-report.ts) gives medians, ratios full / lazy, and the goals.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { spawn, execFileSync } from 'node:child_process';
import { startRegistry, TestRegistry } from '../test/helpers/registry';
import { startSnapshotter, SnapshotterProcess, killLeftovers } from '../test/helpers/containerd';
import { apiRequest } from '../src/cli/daemon-commands';
import {
  benchMain, CACHE_DIR, CLI, REPO, dropCaches, logger, must, now, onCleanup, opt, otherLoad, parseArgs, usageText, removeWorkDir, requireCommands,
  requireRoot, roundOrder, run, UsageError, workDir, median, MiB,
} from './lib/harness';
import { createLink, countersDelta, parseRate, rateLabel, ShapedLink, LinkCounters } from './lib/netmodel';
import { startDelayRelay, DelayRelay } from './lib/delay-relay';
import { egressSince, logOffset, Egress } from './lib/registry-log';
import { startContainerd, Ctd, NS } from './lib/containerd';
import { IMAGES, IMAGE_NAMES, ImageName, ensureImage } from './lib/start-images';
import { LayoutInfo } from './lib/oci-layout';
import { report, StartRun, ImageSetup, Breakdown } from './lib/start-report';

const log = logger('start-bench');

/** A contender: which snapshotter, which image tag, and what it needs before the clock. */
interface VariantDef {
  label: string;
  snapshotter: 'overlayfs' | 'nydus-ts';
  tag: string;
  /** the snapshotter's daemon (fresh, empty; started with the snapshotter) is up before the clock */
  daemonUp?: boolean;
  /** more `nydus-ts snapshotter` options (prefetch) */
  snapshotterArgs?: string[];
  /** environment of the snapshotter, so of the daemon it starts (the daemon's measurement knobs) */
  env?: Record<string, string>;
  /** once per image, untimed: make the image this variant pulls */
  setup?: (img: ImageSetup, ctx: SetupCtx) => Promise<void>;
}

interface SetupCtx { reg: TestRegistry; work: string; optimizeArgs: string[] }

const VARIANTS = {
  overlayfs: { label: 'containerd overlayfs, OCI image (full pull)', snapshotter: 'overlayfs', tag: 'oci' },
  'nydus-ts': { label: 'nydus-ts snapshotter, nydus image (lazy; its daemon started with the snapshotter, before the clock)', snapshotter: 'nydus-ts', tag: 'nydus', daemonUp: true },
  'nydus-ts-untuned': { label: 'nydus-ts snapshotter --amplify-io 1048576 --read-ahead-kb 1024, nydus image (lazy; the window and read-ahead before tuning: nydusd\'s and the daemon\'s defaults)', snapshotter: 'nydus-ts', tag: 'nydus', daemonUp: true, snapshotterArgs: ['--amplify-io', '1048576', '--read-ahead-kb', '1024'] },
  'nydus-ts-chunk-256k': { label: 'nydus-ts snapshotter, the image converted with --chunk-size 0x40000 (256 KiB chunks instead of 1 MiB)', snapshotter: 'nydus-ts', tag: 'nydus-256k', daemonUp: true, setup: convert256k },
  'nydus-ts-1-connection': { label: 'nydus-ts snapshotter, its daemon with one connection per registry (NYDUS_TS_HTTP_CONNECTIONS=1; default 16)', snapshotter: 'nydus-ts', tag: 'nydus', daemonUp: true, env: { NYDUS_TS_HTTP_CONNECTIONS: '1' } },
  'nydus-ts-no-keepalive': { label: 'nydus-ts snapshotter, its daemon without connection reuse (NYDUS_TS_HTTP_REUSE=0: a new connection per request)', snapshotter: 'nydus-ts', tag: 'nydus', daemonUp: true, env: { NYDUS_TS_HTTP_REUSE: '0' } },
  'nydus-ts-first-mount': { label: 'nydus-ts snapshotter --daemon-start first-mount, nydus image (lazy; the daemon started on the first mount, inside the clock)', snapshotter: 'nydus-ts', tag: 'nydus', snapshotterArgs: ['--daemon-start', 'first-mount'] },
  'nydus-ts-prefetch-all': { label: 'nydus-ts snapshotter --prefetch-all, nydus image (lazy; whole blobs fetched in the background)', snapshotter: 'nydus-ts', tag: 'nydus', daemonUp: true, snapshotterArgs: ['--prefetch-all'] },
  'nydus-ts-optimized': { label: 'nydus-ts snapshotter --prefetch, `nydus-ts optimize`d image (its prefetch table fetched in the background)', snapshotter: 'nydus-ts', tag: 'nydus-optimized', daemonUp: true, snapshotterArgs: ['--prefetch'], setup: optimizeImage },
  'nydus-ts-optimized-1-thread': { label: 'nydus-ts snapshotter --prefetch --prefetch-threads 1, `nydus-ts optimize`d image (nydusd prefetch_config.threads_count 1 instead of 8)', snapshotter: 'nydus-ts', tag: 'nydus-optimized', daemonUp: true, snapshotterArgs: ['--prefetch', '--prefetch-threads', '1'], setup: optimizeImage },
  'nydus-ts-optimized-merge-16m': { label: 'nydus-ts snapshotter --prefetch --prefetch-merge-size 16777216, `nydus-ts optimize`d image (prefetch requests merged up to 16 MiB instead of 1 MiB)', snapshotter: 'nydus-ts', tag: 'nydus-optimized', daemonUp: true, snapshotterArgs: ['--prefetch', '--prefetch-merge-size', String(16 << 20)], setup: optimizeImage },
  'nydus-ts-prefetch-all-paced': { label: 'nydus-ts snapshotter --prefetch-all --prefetch-bandwidth 6250000, nydus image (whole blobs in the background at most 50 Mbit/s)', snapshotter: 'nydus-ts', tag: 'nydus', daemonUp: true, snapshotterArgs: ['--prefetch-all', '--prefetch-bandwidth', '6250000'] },
  'nydus-ts-optimized-no-prefetch': { label: 'nydus-ts snapshotter, `nydus-ts optimize`d image without --prefetch (its start-up chunks first and contiguous, fetched on demand)', snapshotter: 'nydus-ts', tag: 'nydus-optimized', daemonUp: true, setup: optimizeImage },
} satisfies Record<string, VariantDef>;
type Variant = keyof typeof VARIANTS;
const VARIANT_NAMES = Object.keys(VARIANTS) as Variant[];

const SPEC = {
  images: opt.list('--images', IMAGE_NAMES, 'images to start', IMAGE_NAMES),
  rates: opt.list('--rates', ['100m'], 'link rates, e.g. 100m, 1g, unlimited'),
  rttMs: opt.num('--rtt-ms', 0, 'added round-trip time through the userspace delay relay, ms', 'MS'),
  rounds: opt.int('--rounds', 3, 'rounds; medians are reported'),
  variants: opt.list('--variants', ['overlayfs', 'nydus-ts'] as Variant[], `contenders (${VARIANT_NAMES.join(', ')}); overlayfs is the peer every ratio is against`, VARIANT_NAMES),
  json: opt.path('--json', `write every measurement as JSON (default ${path.join(CACHE_DIR, 'bench', 'start-bench.json')})`),
  rootfsTar: opt.path('--rootfs-tar', 'the rootfs tar the images are built from (default: scripts/make-rootfs.sh --cache-only)', 'TAR'),
  rebuildImages: opt.flag('--rebuild-images', 'rebuild the cached images'),
  optimizeArgs: opt.repeat('--optimize-arg', 'extra argument for `nydus-ts optimize` (nydus-ts-optimized)'),
  convertArgs: opt.repeat('--convert-arg', 'extra argument for `nydus-ts convert` of every image (tuning, e.g. --chunk-size 0x40000)'),
  snapshotterArgs: opt.repeat('--snapshotter-arg', 'extra argument for every `nydus-ts snapshotter` (tuning, e.g. --amplify-io 131072)'),
  waitQuiet: opt.num('--wait-quiet', 0, 'before each run, wait up to S seconds for other processes to leave the CPUs idle', 'S'),
  dropCaches: opt.off('--no-drop-caches', 'keep the page cache (development only)'),
  keep: opt.flag('--keep', 'keep the work directory'),
};

const USAGE = usageText(`usage: node dist/bench/start-bench.js [options]      (as root; or: npm run bench:start -- [options])

Time to a real container's start, first output and end: containerd's overlayfs snapshotter with
the OCI image (CRI pull: download + unpack) against nydus-ts snapshotter with its nydus
conversion (lazy), the registry behind a link of a known rate (a network namespace, veth, tbf);
cold caches per run; bytes over the link from the veth counters.`, SPEC, `Environment: NYDUS_TS_CACHE (cache dir: rootfs tar, images), NYDUS_TS_TMP (work dir base; must be
ext4/xfs/btrfs for the daemon's cache).`);

type Args = ReturnType<typeof parseArgs<typeof SPEC>>;

/** The registry as clients reach it: straight over the link, or through the delay relay. */
interface Endpoint { host: string; relay?: DelayRelay }

// ---------------------------------------------------------------------------------------------
// variant set-up: the optimized image

/**
 * `nydus-ts optimize` once per image (untimed): it records what the workload reads from a lazy
 * mount of REG/NAME:nydus (its own daemon and cache, in the work dir), rebuilds the image with
 * those chunks first and its files in the prefetch table, and pushes REG/NAME:nydus-optimized.
 */
async function optimizeImage(img: ImageSetup, ctx: SetupCtx): Promise<void> {
  if (img.optimized) return; // made for another variant already
  const help = await run(process.execPath, [CLI, 'optimize', '--help']);
  if (help.code !== 0) throw new UsageError(`--variants nydus-ts-optimized: this build has no \`nydus-ts optimize\` (${(help.stderr.trim() || help.stdout.trim()).split('\n')[0]})`);
  const dir = path.join(ctx.work, `optimize-${img.name}`);
  const sock = path.join(dir, 'daemon', 'api.sock');
  const reportFile = path.join(dir, 'report.json');
  fs.mkdirSync(path.join(dir, 'scratch'), { recursive: true });
  const target = ctx.reg.ref(img.name, 'nydus-optimized');
  const t = now();
  try {
    await must(process.execPath, [CLI, 'optimize', '--image', ctx.reg.ref(img.name, 'nydus'), '--target', target, '--insecure', '-A', sock, '--cache-dir', path.join(dir, 'cache'),
      '--work-dir', path.join(dir, 'scratch'), '--bootstrap-cache', path.join(dir, 'bootstraps'), '-J', reportFile, ...ctx.optimizeArgs, '--', ...img.workload], { timeoutMs: 1_800_000 });
  } finally {
    await stopDaemon(sock, dir);
  }
  const rep = JSON.parse(fs.readFileSync(reportFile, 'utf8')) as { record?: { stats?: { read_bytes?: number; files_read?: number } }; rebuild?: { relayout?: { startup_chunks?: number; startup_compressed_bytes?: number; prefetch_files?: number } } };
  img.optimized = {
    read_bytes: rep.record?.stats?.read_bytes ?? NaN, files_read: rep.record?.stats?.files_read ?? NaN,
    startup_compressed_bytes: rep.rebuild?.relayout?.startup_compressed_bytes ?? NaN, prefetch_files: rep.rebuild?.relayout?.prefetch_files ?? NaN,
  };
  log(`${img.name}: nydus-ts optimize → ${target} in ${(now() - t).toFixed(1)} s: the workload read ${(img.optimized.read_bytes / MiB).toFixed(1)} MiB of ${img.optimized.files_read} files; start-up chunks ${(img.optimized.startup_compressed_bytes / MiB).toFixed(1)} MiB compressed`);
}

// ---------------------------------------------------------------------------------------------
// one measurement

/** State of the run being measured: torn down after it, also on failure and on signals. */
interface RunState { dir: string; ctd?: Ctd; snap?: SnapshotterProcess; snapRoot?: string; watch?: { stop(): void } }

async function teardown(s: RunState, keep: boolean): Promise<void> {
  s.watch?.stop();
  await s.ctd?.stop().catch((e) => log(`containerd stop: ${(e as Error).message}`));
  await s.snap?.stop().catch(() => undefined);
  if (s.snapRoot) await stopDaemon(path.join(s.snapRoot, 'daemon', 'api.sock'), s.snapRoot);
  removeWorkDir(s.dir, keep, log);
}

/** Unmount what the daemon on `sock` serves under `root`, then stop it (supervisor, then server). */
async function stopDaemon(sock: string, root: string): Promise<void> {
  if (!fs.existsSync(sock)) return;
  const m = await apiRequest(sock, 'GET', '/api/v1/metrics').catch(() => undefined);
  for (const x of ((m?.body?.mounts ?? []) as Array<{ mountpoint: string }>).filter((x) => x.mountpoint.startsWith(root + '/'))) {
    await apiRequest(sock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(x.mountpoint)}`).catch(() => undefined);
  }
  const info = await apiRequest(sock, 'GET', '/api/v1/daemon').catch(() => undefined);
  const pids = [info?.body?.supervisor_pid, info?.body?.pid].filter((p): p is number => typeof p === 'number' && p > 0);
  const running = (p: number): boolean => {
    try {
      return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${p}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  try {
    process.kill(pids[0], 'SIGTERM'); // the supervisor stops its server
  } catch {
    // gone
  }
  for (let i = 0; i < 200 && pids.some(running); i++) await new Promise((r) => setTimeout(r, 100));
  for (const p of pids.filter(running)) process.kill(p, 'SIGKILL');
}

/** Our daemon's per-blob metrics, summed. */
async function daemonMetrics(sock: string): Promise<{ backend_bytes: number; backend_requests: number; chunks_fetched: number } | null> {
  if (!fs.existsSync(sock)) return null;
  const r = await apiRequest(sock, 'GET', '/api/v1/metrics').catch(() => undefined);
  if (!r || r.status !== 200) return null;
  const blobs = (r.body?.blobs ?? []) as Array<Record<string, number>>;
  const sum = (k: string): number => blobs.reduce((n, b) => n + (Number(b[k]) || 0), 0);
  return { backend_bytes: sum('backend_bytes'), backend_requests: sum('backend_requests'), chunks_fetched: sum('chunks_fetched') };
}

/** Wait until the daemon on `sock` (the one the snapshotter starts) answers RUNNING. */
async function daemonRunning(sock: string, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await apiRequest(sock, 'GET', '/api/v1/daemon').catch(() => undefined);
    if (r?.status === 200 && r.body?.state === 'RUNNING') return;
    if (Date.now() > end) throw new Error(`the snapshotter's daemon on ${sock} did not come up in ${timeoutMs / 1000} s`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

/** `nydus-ts convert --chunk-size 0x40000` of REG/NAME:oci to REG/NAME:nydus-256k (untimed, link unlimited). */
async function convert256k(img: ImageSetup, ctx: SetupCtx): Promise<void> {
  const t = now();
  await must(process.execPath, [CLI, 'convert', '--source', ctx.reg.ref(img.name, 'oci'), '--target', ctx.reg.ref(img.name, 'nydus-256k'), '--insecure', '--chunk-size', '0x40000',
    '--work-dir', path.join(ctx.work, `convert-256k-${img.name}`)], { timeoutMs: 1_800_000 });
  log(`${img.name}: nydus-ts convert --chunk-size 0x40000 → ${ctx.reg.ref(img.name, 'nydus-256k')} in ${(now() - t).toFixed(1)} s`);
}

/** Seconds since `t0Wall` (ms) of the first line of `text` matching `re` (ISO timestamp first on the line). */
function logTime(text: string, re: RegExp, t0Wall: number): number {
  for (const line of text.split('\n')) {
    if (!re.test(line)) continue;
    const t = Date.parse(line.slice(0, line.indexOf(' ')));
    if (Number.isFinite(t)) return (t - t0Wall) / 1000;
  }
  return NaN;
}

/**
 * Our start-up from the logs: the container's snapshot prepared (keys are `NS/N/ID`) → the
 * daemon's supervisor logs → its serving process logs "serving" → the snapshotter sees it
 * RUNNING → the image is registered and mounted.
 */
function breakdownOf(snapLog: string, daemonLog: string, id: string, t0Wall: number): Breakdown {
  return {
    prepare_s: logTime(snapLog, new RegExp(` prepared \\S*/${id}( |$)`), t0Wall),
    daemon_first_log_s: logTime(daemonLog, /./, t0Wall),
    daemon_serving_s: logTime(daemonLog, / serving: /, t0Wall),
    // a daemon started before the clock (with the snapshotter) is no part of this run
    daemon_up_s: ((t) => (t >= 0 ? t : NaN))(logTime(snapLog, /started a daemon on /, t0Wall)),
    mounted_s: logTime(snapLog, /mounted nydus image /, t0Wall),
  };
}

async function measure(a: Args, v: Variant, img: ImageSetup, round: number, rate: number | null, work: string, reg: TestRegistry, ep: Endpoint, link: ShapedLink): Promise<StartRun> {
  const def: VariantDef = VARIANTS[v];
  const s: RunState = { dir: fs.mkdtempSync(path.join(work, `${img.name}-${v}-r${round}-`)) };
  const undo = onCleanup(`run ${v}`, () => teardown(s, a.keep));
  try {
    const snapSock = path.join(s.dir, 'sn.sock');
    const ours = def.snapshotter === 'nydus-ts';
    if (ours) {
      s.snapRoot = path.join(s.dir, 'sn');
      const daemonStart = def.daemonUp ? ['--daemon-start', 'startup'] : [];
      s.snap = await startSnapshotter(s.snapRoot, snapSock, ['--insecure-registry', ep.host, ...daemonStart, ...(def.snapshotterArgs ?? []), ...a.snapshotterArgs], 60_000, def.env);
      if (def.daemonUp) await daemonRunning(path.join(s.snapRoot, 'daemon', 'api.sock'), 60_000);
    }
    // the overlayfs variant's containerd names a snapshotter socket nobody serves: never dialled
    s.ctd = await startContainerd(path.join(s.dir, 'ctd'), { criSnapshotter: def.snapshotter, nydusSock: snapSock, plainHttpRegistries: [ep.host] });
    const ctd = s.ctd;
    if (a.dropCaches) dropCaches();
    // the tools as they would be resident on a node: ctr, runc, node + the CLI's modules
    await must('ctr', ['-a', ctd.sock, 'version']);
    await run('runc', ['--version']);
    await must(process.execPath, [CLI, 'pull', '--help']);
    const load = await otherLoad(a.waitQuiet);
    const id = `sb-${img.name}-${v}-${round}`;
    const ref = `${ep.host}/${img.name}:${def.tag}`;
    const watch = ctd.watchStarts();
    s.watch = watch;
    await new Promise((r) => setTimeout(r, 100)); // the event stream is subscribed
    const off = logOffset(path.join(reg.dir, 'registry.log'));
    const c0: LinkCounters = link.counters();
    const t0Wall = Date.now();
    const t0 = now();
    await must(process.execPath, [CLI, 'pull', '--address', ctd.sock, ref], { timeoutMs: 1_800_000 });
    const tPull = now();
    const out = await new Promise<{ code: number; first: number; end: number; bytes: number; sha: string; stderr: string }>((resolve, reject) => {
      const p = spawn('ctr', ['-a', ctd.sock, '-n', NS, 'run', '--snapshotter', def.snapshotter, ref, id, ...img.workload], { stdio: ['ignore', 'pipe', 'pipe'] });
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
      const t = setTimeout(() => p.kill('SIGKILL'), 1_800_000);
      p.once('error', reject);
      p.once('close', (code, sig) => {
        clearTimeout(t);
        resolve({ code: code ?? (sig ? 128 : -1), first, end: now(), bytes, sha: h.digest('hex'), stderr });
      });
    });
    const link1 = countersDelta(c0, link.counters());
    if (out.code !== 0) throw new Error(`ctr run (${v}, ${img.name}) exited ${out.code}:\n${out.stderr}${s.snap ? `\n--- snapshotter log tail ---\n${s.snap.log().split('\n').slice(-20).join('\n')}` : ''}`);
    const started = watch.starts.get(id) ?? NaN;
    watch.stop();
    s.watch = undefined;
    const registry: Egress = egressSince(path.join(reg.dir, 'registry.log'), off, t0Wall);
    const daemonSock = s.snapRoot ? path.join(s.snapRoot, 'daemon', 'api.sock') : '';
    const daemon = ours ? await daemonMetrics(daemonSock) : null;
    const daemonLogFile = s.snapRoot ? path.join(s.snapRoot, 'daemon', 'daemon.log') : '';
    const breakdown = ours ? breakdownOf(s.snap!.log(), def.daemonUp || !fs.existsSync(daemonLogFile) ? '' : fs.readFileSync(daemonLogFile, 'utf8'), id, t0Wall) : undefined;
    await ctd.ctr(['containers', 'rm', id]);
    const r: StartRun = {
      image: img.name, variant: v, rate_mbit: rate, rtt_ms: a.rttMs, round,
      pull_s: tPull - t0, started_s: started - t0, first_output_s: out.first - t0, end_s: out.end - t0,
      link: link1, registry: { requests: registry.requests, blob_gets: registry.blob_gets, blob_bytes: registry.blob_bytes, total_bytes: registry.total_bytes },
      daemon, breakdown, output_bytes: out.bytes, output_sha256: out.sha, cpu_load_before: load,
    };
    log(`${rateLabel(rate)} ${img.name} round ${round} ${v}: pull ${r.pull_s.toFixed(2)} s, started ${r.started_s.toFixed(2)} s, first output ${r.first_output_s.toFixed(2)} s, end ${r.end_s.toFixed(2)} s; link ${(link1.rx_bytes / MiB).toFixed(2)} MiB in, ${registry.requests} registry requests${daemon ? `, daemon fetched ${(daemon.backend_bytes / MiB).toFixed(2)} MiB in ${daemon.backend_requests} requests` : ''}${load > 0.25 ? ` (other load ${(load * 100).toFixed(0)}%)` : ''}`);
    return r;
  } finally {
    undo();
    await teardown(s, a.keep);
  }
}

// ---------------------------------------------------------------------------------------------
// set-up

/** Push the OCI layout to REG/NAME:oci and convert it to REG/NAME:nydus (link unlimited). */
async function publish(name: ImageName, layout: LayoutInfo, reg: TestRegistry, work: string, convertArgs: string[]): Promise<ImageSetup> {
  let t = now();
  const ociRef = reg.ref(name, 'oci');
  await must('skopeo', ['--insecure-policy', 'copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests', `oci:${layout.dir}:latest`, `docker://${ociRef}`], { env: { ...process.env, TMPDIR: work } });
  log(`${name}: skopeo copy → ${ociRef} in ${(now() - t).toFixed(1)} s`);
  t = now();
  const convJson = path.join(work, `convert-${name}.json`);
  await must(process.execPath, [CLI, 'convert', '--source', ociRef, '--target', reg.ref(name, 'nydus'), '--insecure', '--work-dir', path.join(work, `convert-${name}`), '-J', convJson, ...convertArgs], { timeoutMs: 1_800_000 });
  const conv = JSON.parse(fs.readFileSync(convJson, 'utf8')) as { blobs?: Array<{ size?: number }> };
  const nydusBlobBytes = (conv.blobs ?? []).reduce((n, b) => n + (b.size ?? 0), 0);
  log(`${name}: nydus-ts convert → ${reg.ref(name, 'nydus')} in ${(now() - t).toFixed(1)} s (data blobs ${(nydusBlobBytes / MiB).toFixed(1)} MiB)`);
  return {
    name, title: IMAGES[name].title, workload: IMAGES[name].workload,
    oci_layers: layout.layers.map((l) => ({ size: l.size, uncompressed: l.uncompressed, created_by: l.created_by ?? '' })),
    oci_bytes: layout.layers.reduce((n, l) => n + l.size, 0), uncompressed_bytes: layout.layers.reduce((n, l) => n + l.uncompressed, 0), nydus_blob_bytes: nydusBlobBytes,
  };
}

/** The relay's rate against the link's own, for a 16 MiB range of the largest blob (does it keep up?). */
async function relayCheck(reg: TestRegistry, ep: Endpoint, img: ImageSetup, layout: LayoutInfo): Promise<{ direct_mbit: number; relay_mbit: number }> {
  const big = [...layout.layers].sort((x, y) => y.size - x.size)[0];
  const n = Math.min(16 * MiB, big.size);
  const get = async (host: string): Promise<number> => {
    const t = now();
    const r = await must('curl', ['-sf', '-o', '/dev/null', '-r', `0-${n - 1}`, '-w', '%{size_download}', `http://${host}/v2/${img.name}/blobs/${big.digest}`]);
    return (Number(r.stdout) * 8) / (now() - t) / 1e6;
  };
  return { direct_mbit: await get(reg.host), relay_mbit: await get(ep.host) };
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2), SPEC, { usage: USAGE });
  const rates = a.rates.map(parseRate);
  if (a.variants[0] !== 'overlayfs' || a.variants.length < 2) throw new UsageError('--variants: overlayfs first, and at least one nydus-ts variant');
  requireRoot('containerd, mounts, network namespaces, drop_caches');
  requireCommands([['containerd', 'containerd'], ['ctr', 'containerd'], ['runc', 'runc'], ['containerd-shim-runc-v2', 'containerd'], ['docker-registry', 'docker-registry'],
    ['skopeo', 'skopeo'], ['ip', 'iproute2'], ['tc', 'iproute2'], ['curl', 'curl']]);
  const tar = a.rootfsTar ?? execFileSync('bash', [path.join(REPO, 'scripts', 'make-rootfs.sh'), '--cache-only'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim().split('\n').pop()!;
  const layouts = new Map<ImageName, LayoutInfo>();
  for (const n of a.images as ImageName[]) layouts.set(n, await ensureImage(IMAGES[n], tar, { rebuild: a.rebuildImages, log }));

  const work = workDir('nydus-start-bench');
  onCleanup('work dir', () => removeWorkDir(work, a.keep, log));
  onCleanup('leftover snapshotters', () => killLeftovers());
  // no Docker credentials: the registry is anonymous
  process.env.DOCKER_CONFIG = path.join(work, 'docker-empty');
  fs.mkdirSync(process.env.DOCKER_CONFIG);
  const link = createLink({ tag: 'start', subnet: 1, rateMbit: null });
  onCleanup('link', () => link.destroy());
  const reg = await startRegistry({ listenHost: link.nsAddr, spawnPrefix: link.prefix });
  onCleanup('registry', () => reg.stop());
  log(`docker-registry in namespace ${link.netns} on ${reg.host}, reached over ${link.hostIf} (${link.hostAddr} ↔ ${link.nsAddr})`);
  const ep: Endpoint = { host: reg.host };
  if (a.rttMs > 0) {
    ep.relay = await startDelayRelay({ listenHost: link.hostAddr, targetHost: link.nsAddr, targetPort: reg.port, rttMs: a.rttMs });
    onCleanup('relay', () => ep.relay!.stop());
    ep.host = `${link.hostAddr}:${ep.relay.port}`;
    log(`delay relay (RTT ${a.rttMs} ms) on ${ep.host}`);
  }

  const images: ImageSetup[] = [];
  for (const n of a.images as ImageName[]) images.push(await publish(n, layouts.get(n)!, reg, work, a.convertArgs));
  const setupCtx: SetupCtx = { reg, work, optimizeArgs: a.optimizeArgs };
  for (const v of a.variants) {
    const setup = (VARIANTS[v] as VariantDef).setup;
    if (setup) for (const img of images) await setup(img, setupCtx);
  }

  const runs: StartRun[] = [];
  const relayChecks: Array<{ rate_mbit: number | null; direct_mbit: number; relay_mbit: number }> = [];
  for (const rate of rates) {
    link.setRate(rate);
    if (ep.relay) {
      const c = await relayCheck(reg, ep, images[0], layouts.get(images[0].name as ImageName)!);
      relayChecks.push({ rate_mbit: rate, ...c });
      log(`${rateLabel(rate)}: a 16 MiB GET carried ${c.direct_mbit.toFixed(0)} Mbit/s straight over the link, ${c.relay_mbit.toFixed(0)} Mbit/s through the relay${c.relay_mbit < 0.9 * c.direct_mbit ? ': the relay does NOT keep up' : ''}`);
    }
    for (const img of images) {
      for (let r = 0; r < a.rounds; r++) {
        for (const v of roundOrder(a.variants, r)) runs.push(await measure(a, v, img, r + 1, rate, work, reg, ep, link));
      }
    }
  }
  link.setRate(null);
  const cliStart = [];
  for (let i = 0; i < 3; i++) cliStart.push((await must(process.execPath, [CLI, '--version'])).seconds);
  const labels = Object.fromEntries(a.variants.map((v) => [v, VARIANTS[v].label]));
  const { text, json } = report({ runs, images, variants: a.variants, labels, rates, rttMs: a.rttMs, rounds: a.rounds, dropCaches: a.dropCaches, cliStartS: median(cliStart), relayChecks });
  process.stdout.write(text + '\n');
  const jsonFile = a.json ?? path.join(CACHE_DIR, 'bench', 'start-bench.json');
  fs.mkdirSync(path.dirname(jsonFile), { recursive: true });
  fs.writeFileSync(jsonFile, JSON.stringify(json, null, 2) + '\n');
  log(`wrote ${jsonFile}`);
}

if (require.main === module) benchMain('start-bench', main);
