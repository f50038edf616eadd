/**
 * Pull benchmark (issue 4; a benchmark, not a test). Runs INSIDE the test VM
 * (bench/pull-bench-host.ts boots it; scripts/bench-pull.sh does everything): how long a
 * container needs from "image in a registry" to "its commands have run", for a full pull against
 * a lazy nydus-ts mount of the same image, and how much of the image the lazy mount fetches.
 *
 *   node dist/bench/pull-bench.js (--oci-layout DIR | --rootfs-tar TAR [--layers 1|2] [--slim])
 *        [--rounds 3] [--variants full,nydus] [--output-json FILE] [--keep]
 *
 * Setup (timed for information only):
 *  1. the OCI image of a Debian bookworm minbase rootfs (scripts/make-rootfs.sh), gzip layers, in
 *     an OCI layout on the ext4 scratch disk ($NYDUS_VM_CACHE_DIR): copied from --oci-layout (the
 *     host builds and caches it) or built here from --rootfs-tar;
 *  2. docker-registry (Debian's distribution 2.8) on 127.0.0.1, storage on the scratch disk;
 *  3. `skopeo copy oci:LAYOUT docker://127.0.0.1:PORT/bookworm-minbase:oci`;
 *  4. `nydus-ts convert` to `127.0.0.1:PORT/bookworm-minbase:nydus` in the same registry.
 * Then per round (medians are reported; the variants are interleaved and their order alternates),
 * each variant after `sync` + drop_caches (the registry's storage is cold; the tools' own binaries
 * are read once right after the drop, as they would be resident on a real host):
 *  - full:  `skopeo copy docker://… dir:DIR`, then `tar -xzf` of every layer into ROOT (what a
 *           container runtime does), an overlay (tmpfs upper) on ROOT, the workload in a chroot;
 *  - nydus: a fresh `nydus-ts daemon` on a fresh cache dir (started before the clock), then
 *           `nydus-ts mount --image REF --insecure MNT`, an overlay (tmpfs upper) on MNT, the
 *           workload in a chroot; the daemon's per-blob backend_bytes give the bytes fetched.
 * Workload (in order, each `chroot ROOT …`): `/bin/bash -c true`, `dpkg -l`, `apt-cache policy`.
 * Their output is compared between the variants. Registry egress of every variant is also taken
 * from the registry's access log.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as http from 'node:http';
import * as crypto from 'node:crypto';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { DaemonApiClient } from '../src/daemon/api-client';
import { freePort } from '../test/helpers/registry';
import {
  benchMain, fmtMiB, fmtS, isMounted, logger, median, MiB, must, now, opt, usageText, parseArgs, REPO, requireCommands, requireRoot, run, UsageError,
} from './lib/harness';
import { buildRootfsLayout, LayoutInfo, readLayout, ROOT_PATH, TAR_X } from './lib/oci-layout';
import { egressSince, Egress, logOffset } from './lib/registry-log';

/** the CLI that is measured: a copy on the guest's tmpfs (see installCli), else the repository's */
let CLI = path.join(REPO, 'dist', 'src', 'cli', 'main.js');
const IMAGE_REPO = 'bookworm-minbase';
const CHROOT_ENV = { PATH: ROOT_PATH, HOME: '/root', LANG: 'C', TERM: 'dumb' };
const log = logger('pull-bench');

export const WORKLOADS: Array<{ name: string; argv: string[] }> = [
  { name: 'bash -c true', argv: ['/bin/bash', '-c', 'true'] },
  { name: 'dpkg -l', argv: ['dpkg', '-l'] },
  { name: 'apt-cache policy', argv: ['apt-cache', 'policy'] },
];

type VariantName = 'full' | 'nydus';

const SPEC = {
  ociLayout: opt.path('--oci-layout', 'the OCI layout of the rootfs image (tag latest), built by the host; copied to the scratch disk before use', 'DIR'),
  rootfsTar: opt.path('--rootfs-tar', 'or build the layout here from this rootfs tar (scripts/make-rootfs.sh)', 'TAR'),
  layers: opt.choice('--layers', ['1', '2'] as const, '1', 'with --rootfs-tar: one gzip layer (the tar as is) or two (everything but /var, then /var)'),
  slim: opt.flag('--slim', "with --rootfs-tar: leave out apt's package lists and downloaded .debs (var/lib/apt/lists/*_*, var/cache/apt/archives/*.deb), as Docker's debian images do"),
  rounds: opt.int('--rounds', 3, 'measured rounds, interleaved; medians are reported'),
  variants: opt.list('--variants', ['full', 'nydus'] as VariantName[], 'one alone is for development', ['full', 'nydus']),
  workDir: opt.path('--work-dir', 'where everything lives (default $NYDUS_VM_CACHE_DIR, the ext4 disk)', 'DIR'),
  convertArgs: opt.repeat('--convert-arg', 'extra argument for `nydus-ts convert`'),
  mountArgs: opt.repeat('--mount-arg', 'extra argument for `nydus-ts mount --image`'),
  daemonEnv: opt.env('--daemon-env', "extra environment for the daemon, e.g. the blob session's NYDUS_TS_READAHEAD=BYTES (0 = no readahead)"),
  outputJson: opt.path('--output-json', 'machine-readable results'),
  keep: opt.flag('--keep', 'keep the work directory'),
  cliFrom9p: opt.flag('--cli-from-9p', "run nydus-ts from the repository over the VM's 9p root instead of a copy on the guest's tmpfs (9p with cache=mmap does not cache reads, so every node start-up reads its modules from the host again)"),
  dropCaches: opt.off('--no-drop-caches', 'do not drop the page cache before each run (development outside the VM, where dropping would hurt everybody else on the machine)'),
};

export const USAGE = usageText('usage: node dist/bench/pull-bench.js [options]     (inside the test VM, as root)', SPEC);

type Args = ReturnType<typeof parseArgs<typeof SPEC>>;

function parse(argv: string[]): Args {
  const a = parseArgs(argv, SPEC, { usage: USAGE });
  if (!a.ociLayout && !a.rootfsTar) throw new UsageError('--oci-layout or --rootfs-tar is required');
  return a;
}

// ---------------------------------------------------------------------------------------------
// Helpers

let dropEnabled = true;
function dropCaches(): void {
  spawnSync('sync');
  if (!dropEnabled) return;
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

/**
 * After a drop: read the tools once (node with the CLI's modules, skopeo, tar, gzip, chroot), as
 * they would be resident on a real host. Otherwise both variants would pay for reading their
 * tools over the VM's 9p root, which is no part of either pull.
 */
async function warmTools(): Promise<void> {
  await run(process.execPath, [CLI, 'mount', '--help']);
  await run('skopeo', ['--version']);
  await run('tar', ['--version']);
  await run('gzip', ['--version']);
  await run('chroot', ['--version']);
  await run('mount', ['--version']);
}

/**
 * Copy the CLI (package.json, dist/src, the runtime node_modules) to the guest's tmpfs, as if
 * installed on a local disk. Run from the repository, every node start-up (the mount command,
 * the daemon and its worker threads) would read its ~300 modules over 9p, which the VM's
 * cache=mmap root does not cache: seconds of VM artifact per start under TCG.
 */
function installCli(dest: string): string {
  fs.mkdirSync(dest, { recursive: true });
  fs.copyFileSync(path.join(REPO, 'package.json'), path.join(dest, 'package.json'));
  const noMaps = (f: string): boolean => !f.endsWith('.map') && !f.endsWith('.d.ts') && !f.endsWith('.md');
  fs.cpSync(path.join(REPO, 'dist', 'src'), path.join(dest, 'dist', 'src'), { recursive: true, filter: noMaps });
  // the runtime dependency closure (dependencies + optionalDependencies that are installed)
  const nm = path.join(REPO, 'node_modules');
  const pkg = (dir: string): { dependencies?: Record<string, string>; optionalDependencies?: Record<string, string> } =>
    JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  const deps = (p: ReturnType<typeof pkg>): string[] => Object.keys({ ...(p.dependencies ?? {}), ...(p.optionalDependencies ?? {}) });
  const todo = deps(pkg(REPO));
  const seen = new Set<string>();
  while (todo.length) {
    const name = todo.pop()!;
    if (seen.has(name)) continue;
    seen.add(name);
    const dir = path.join(nm, name);
    if (!fs.existsSync(path.join(dir, 'package.json'))) continue; // an optional dependency for another platform
    fs.cpSync(dir, path.join(dest, 'node_modules', name), { recursive: true, filter: noMaps });
    todo.push(...deps(pkg(dir)));
  }
  return path.join(dest, 'dist', 'src', 'cli', 'main.js');
}

async function umountIf(mnt: string): Promise<void> {
  if (isMounted(mnt)) await must('umount', [mnt]);
}

function httpGet(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts) }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${url}: timeout`)));
  });
}

const ACCEPT_MANIFEST = 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json';

interface Manifest { config: { digest: string; size: number }; layers: Array<{ mediaType: string; digest: string; size: number; annotations?: Record<string, string> }> }

/** stat + read of the first 4 KiB of a file in ROOT (symlinks are relative in this rootfs). */
function firstByte(root: string, rel: string): number {
  const f = path.join(root, rel);
  fs.statSync(f);
  const fd = fs.openSync(f, 'r');
  try {
    const b = Buffer.alloc(4096);
    return fs.readSync(fd, b, 0, b.length, 0);
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// The registry

interface Registry {
  proc: ChildProcess;
  host: string;
  dir: string;
  logFile: string;
}

async function startRegistry(dir: string): Promise<Registry> {
  fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
  const logFile = path.join(dir, 'registry.log');
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    fs.writeFileSync(path.join(dir, 'config.yml'), `version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${dir}/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:${port}
  secret: ${crypto.randomBytes(16).toString('hex')}
`);
    const fd = fs.openSync(logFile, 'a');
    const proc = spawn('docker-registry', ['serve', path.join(dir, 'config.yml')], { stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    const url = `http://127.0.0.1:${port}/v2/`;
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (proc.exitCode !== null) break;
      const st = await httpGet(url).then((r) => r.status, () => 0);
      if (st === 200) return { proc, host: `127.0.0.1:${port}`, dir, logFile };
      if (Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    proc.kill('SIGKILL');
    const tail = fs.readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n');
    if (attempt < 2 && /address already in use/.test(tail)) continue;
    throw new Error(`docker-registry did not come up on 127.0.0.1:${port}:\n${tail}`);
  }
}

async function stopProc(p: ChildProcess, graceMs = 10_000): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise((r) => p.once('exit', r));
  p.kill('SIGTERM');
  const t = setTimeout(() => p.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}

// ---------------------------------------------------------------------------------------------
// The variants

interface WorkloadRun { name: string; seconds: number; end_s: number; output_sha256: string; output_lines: number }

interface RoundResult {
  variant: VariantName;
  round: number;
  /** seconds since the start of the pull / mount */
  fetched_s?: number; // full: skopeo done
  ready_s: number; // full: layers extracted; nydus: mount --image returned
  overlay_s: number;
  first_byte_s: number;
  end_s: number;
  workloads: WorkloadRun[];
  egress: Egress;
  /** nydus: from the daemon's metrics */
  backend_bytes?: number;
  blobs?: Array<Record<string, unknown>>;
  daemon_start_s?: number;
  /** registry blob GETs per phase (mount, first byte, each workload command) */
  phases?: Array<{ name: string; end_s: number; gets: number; bytes: number; registry_s: number }>;
  /** nydus: `mount --image -J`'s timings (resolve, bootstrap, daemon, register, mount, total) */
  mount_timings_ms?: Record<string, number>;
}

async function runWorkload(root: string, t0: number): Promise<WorkloadRun[]> {
  const out: WorkloadRun[] = [];
  for (const w of WORKLOADS) {
    const r = await run('chroot', [root, ...w.argv], { env: CHROOT_ENV, cwd: '/' });
    if (r.code !== 0) throw new Error(`chroot ${root} ${w.argv.join(' ')} failed (${r.code ?? r.signal}): ${r.stderr.trim()}`);
    out.push({ name: w.name, seconds: r.seconds, end_s: now() - t0, output_sha256: crypto.createHash('sha256').update(r.stdoutBytes).digest('hex'), output_lines: r.stdout.split('\n').filter(Boolean).length });
  }
  return out;
}

/** overlay with a tmpfs upper on `lower`, at `merged` (as a container runtime's rootfs) */
async function overlay(lower: string, upperTmpfs: string, merged: string): Promise<void> {
  fs.mkdirSync(upperTmpfs, { recursive: true });
  fs.mkdirSync(merged, { recursive: true });
  await must('mount', ['-t', 'tmpfs', '-o', 'size=512m', 'pull-bench-upper', upperTmpfs]);
  fs.mkdirSync(path.join(upperTmpfs, 'upper'));
  fs.mkdirSync(path.join(upperTmpfs, 'work'));
  await must('mount', ['-t', 'overlay', 'pull-bench-root', '-o', `lowerdir=${lower},upperdir=${upperTmpfs}/upper,workdir=${upperTmpfs}/work`, merged]);
}

/** The container part of both variants: an overlay on `lower`, the first byte of bash, the workload (seconds since t0). */
async function runContainer(lower: string, upper: string, merged: string, t0: number): Promise<{ overlay_s: number; first_byte_s: number; end_s: number; workloads: WorkloadRun[] }> {
  await overlay(lower, upper, merged);
  const ov = now() - t0;
  firstByte(merged, 'bin/bash');
  const fb = now() - t0;
  const workloads = await runWorkload(merged, t0);
  return { overlay_s: ov, first_byte_s: fb, end_s: now() - t0, workloads };
}

async function fullPull(reg: Registry, work: string, ref: string, round: number): Promise<RoundResult> {
  const dir = path.join(work, `full-${round}`);
  const pulled = path.join(dir, 'pulled');
  const root = path.join(dir, 'rootfs');
  const upper = path.join(dir, 'upper');
  const merged = path.join(dir, 'merged');
  fs.mkdirSync(root, { recursive: true });
  dropCaches();
  await warmTools();
  const off = logOffset(reg.logFile);
  const env = { ...process.env, TMPDIR: dir };
  try {
    const t0 = now();
    const e0 = Date.now();
    await must('skopeo', ['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `dir:${pulled}`], { env });
    const fetched = now() - t0;
    const manifest = JSON.parse(fs.readFileSync(path.join(pulled, 'manifest.json'), 'utf8')) as Manifest;
    for (const l of manifest.layers) {
      const blob = path.join(pulled, l.digest.replace(/^sha256:/, ''));
      const z = /gzip/.test(l.mediaType) ? ['-z'] : /zstd/.test(l.mediaType) ? ['--zstd'] : [];
      await must('tar', ['-x', ...z, '-f', blob, ...TAR_X, '-C', root]);
    }
    const ready = now() - t0;
    const c = await runContainer(root, upper, merged, t0);
    return { variant: 'full', round, fetched_s: fetched, ready_s: ready, ...c, egress: egressSince(reg.logFile, off, e0) };
  } finally {
    await umountIf(merged);
    await umountIf(upper);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

interface Daemon { proc: ChildProcess; api: DaemonApiClient; sock: string; logFile: string }

let daemonEnv: Record<string, string> = {};

async function startDaemon(cacheDir: string, runDir: string): Promise<Daemon> {
  const sock = path.join(runDir, 'api.sock');
  const logFile = path.join(runDir, 'daemon.log');
  const out = fs.openSync(logFile, 'a');
  const proc = spawn(process.execPath, [CLI, 'daemon', '--fscache', cacheDir, '--apisock', sock, '--log-level', 'warn'], { stdio: ['ignore', out, out], env: { ...process.env, ...daemonEnv } });
  fs.closeSync(out);
  const api = new DaemonApiClient(sock);
  for (let i = 0; i < 600 && !(await api.isAlive()); i++) {
    if (proc.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!(await api.isAlive())) throw new Error(`the daemon did not start:\n${fs.readFileSync(logFile, 'utf8')}`);
  return { proc, api, sock, logFile };
}

async function stopDaemon(d: Daemon): Promise<void> {
  d.api.close();
  await stopProc(d.proc, 20_000);
}

async function nydusMount(reg: Registry, work: string, ref: string, round: number, mountArgs: string[]): Promise<RoundResult> {
  const dir = path.join(work, `nydus-${round}`);
  const cacheDir = path.join(dir, 'cache');
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), `pull-bench-${round}-`));
  const mnt = path.join(dir, 'mnt');
  const upper = path.join(dir, 'upper');
  const merged = path.join(dir, 'merged');
  const mountJson = path.join(runDir, 'mount.json');
  fs.mkdirSync(cacheDir, { recursive: true });
  fs.mkdirSync(mnt, { recursive: true });
  let daemon: Daemon | undefined;
  let mounted = false;
  const env = { ...process.env, NYDUS_TS_RUN_DIR: runDir, NYDUS_TS_FSCACHE: cacheDir };
  try {
    const d0 = now();
    daemon = await startDaemon(cacheDir, runDir);
    const daemonStart = now() - d0;
    dropCaches();
    await warmTools();
    const off = logOffset(reg.logFile);
    const t0 = now();
    const e0 = Date.now();
    // --work-dir: where the bootstrap is fetched to (a fresh one: nothing is reused)
    await must(process.execPath, [CLI, 'mount', '--image', ref, '--insecure', '--apisock', daemon.sock, '--fscache', cacheDir, '--work-dir', path.join(dir, 'work'), '-J', mountJson, ...mountArgs, mnt], { env });
    mounted = true;
    const ready = now() - t0;
    const { overlay_s: ov, first_byte_s: fb, end_s: end, workloads } = await runContainer(mnt, upper, merged, t0);
    const egress = egressSince(reg.logFile, off, e0);
    const m = (await daemon.api.metrics()) as { blobs: Array<Record<string, unknown>> };
    const blobs = m.blobs ?? [];
    const backend = blobs.reduce((n, b) => n + Number(b.backend_bytes ?? 0), 0);
    const fl = readFrontend(m);
    if (fl && fl.reads_failed) throw new Error(`${fl.reads_failed} READs failed; see ${daemon.logFile}`);
    let mountTimings: Record<string, number> | undefined;
    try {
      mountTimings = (JSON.parse(fs.readFileSync(mountJson, 'utf8')) as { timings_ms?: Record<string, number> }).timings_ms;
    } catch {
      /* no report */
    }
    const phases = phasesOf(egress, [['mount --image', ready], ['overlay + first byte', fb], ...workloads.map((w): [string, number] => [w.name, w.end_s])]);
    return { variant: 'nydus', round, phases, ready_s: ready, overlay_s: ov, first_byte_s: fb, end_s: end, workloads, egress, backend_bytes: backend, blobs, daemon_start_s: daemonStart, mount_timings_ms: mountTimings };
  } catch (e) {
    if (daemon) {
      const tail = fs.readFileSync(daemon.logFile, 'utf8').split('\n').slice(-30).join('\n');
      if (tail.trim()) log(`daemon log (${daemon.logFile}), last lines:\n${tail}`);
    }
    throw e;
  } finally {
    await umountIf(merged);
    await umountIf(upper);
    if (mounted || isMounted(mnt)) {
      const r = await run(process.execPath, [CLI, 'umount', mnt], { env });
      if (r.code !== 0) {
        log(`nydus-ts umount ${mnt}: ${r.stderr.trim()}`);
        await umountIf(mnt).catch(() => undefined);
      }
    }
    if (daemon) await stopDaemon(daemon);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}

/** Attribute the blob GETs to phases by their completion time (phase i ends at ends[i]). */
function phasesOf(e: Egress, ends: Array<[string, number]>): NonNullable<RoundResult['phases']> {
  const out = ends.map(([name, end_s]) => ({ name, end_s, gets: 0, bytes: 0, registry_s: 0 }));
  for (const g of e.gets) {
    // the log's clock and ours differ by the time it takes to write the line: round to 50 ms
    let i = out.findIndex((p) => g.at_s <= p.end_s + 0.05);
    if (i < 0) i = out.length - 1;
    out[i].gets++;
    out[i].bytes += g.bytes;
    out[i].registry_s += g.ms / 1000;
  }
  return out;
}

function readFrontend(m: unknown): { reads_failed: number } | null {
  const f = (m as { frontend?: { reads_failed?: number } | null }).frontend;
  return f ? { reads_failed: Number(f.reads_failed ?? 0) } : null;
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const a = parse(process.argv.slice(2));
  dropEnabled = a.dropCaches;
  daemonEnv = a.daemonEnv;
  const base = a.workDir ?? process.env.NYDUS_VM_CACHE_DIR;
  requireRoot('chroot, mount, drop_caches');
  if (!base) throw new UsageError('no work directory: run inside the test VM ($NYDUS_VM_CACHE_DIR) or pass --work-dir');
  if (a.variants.includes('nydus') && !fs.existsSync('/dev/cachefiles')) throw new UsageError('/dev/cachefiles is missing: the nydus variant needs the test VM (bench/pull-bench-host.ts)');
  requireCommands([['docker-registry', 'docker-registry'], ['skopeo', 'skopeo'], ['tar', 'tar'], ['gzip', 'gzip'], ['chroot', 'coreutils']]);
  const work = fs.mkdtempSync(path.join(base, 'pull-bench-'));
  let reg: Registry | undefined;
  const setup: Record<string, number> = {};
  const tStart = now();
  let cliDir: string | undefined;
  try {
    if (!a.cliFrom9p) {
      const t = now();
      cliDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-ts-cli-'));
      CLI = installCli(cliDir);
      setup.cli_install_s = now() - t;
      log(`nydus-ts copied to the guest's tmpfs (${cliDir}) in ${fmtS(setup.cli_install_s)}`);
    }
    // what a bare node start and a CLI start cost here (the CLI loads a command's modules only when it runs)
    const startS = async (args: string[]): Promise<number> => {
      const xs: number[] = [];
      for (let i = 0; i < 3; i++) xs.push((await must(process.execPath, args)).seconds);
      return median(xs);
    };
    setup.node_start_s = await startS(['-e', '0']);
    setup.cli_start_s = await startS([CLI, '--version']);
    const repoCli = path.join(REPO, 'dist', 'src', 'cli', 'main.js');
    if (repoCli !== CLI) setup.cli_start_9p_s = await startS([repoCli, '--version']);
    log(`start-up: \`node -e 0\` ${fmtS(setup.node_start_s)}, \`nydus-ts --version\` ${fmtS(setup.cli_start_s)}${repoCli !== CLI ? ` (from the repository over 9p: ${fmtS(setup.cli_start_9p_s)})` : ''} (medians of 3)`);
    // 1. the OCI layout, on the scratch disk
    const layout = path.join(work, 'oci');
    let t = now();
    let info: LayoutInfo;
    if (a.ociLayout) {
      await must('cp', ['-a', a.ociLayout, layout]);
      info = readLayout(layout);
      setup.layout_copy_s = now() - t;
      log(`OCI layout copied to the scratch disk in ${fmtS(setup.layout_copy_s)}: ${info.layers.length} gzip layer(s), ${fmtMiB(info.layers.reduce((n, l) => n + l.size, 0))} (${fmtMiB(info.layers.reduce((n, l) => n + l.uncompressed, 0))} of tar)`);
    } else {
      info = await buildRootfsLayout(a.rootfsTar!, layout, { layers: Number(a.layers), slim: a.slim, log });
      setup.layout_build_s = now() - t;
      log(`OCI layout built in ${fmtS(setup.layout_build_s)}: ${info.layers.length} gzip layer(s), ${fmtMiB(info.layers.reduce((n, l) => n + l.size, 0))}`);
    }

    // 2. the registry
    t = now();
    reg = await startRegistry(path.join(work, 'registry'));
    setup.registry_start_s = now() - t;
    const ociRef = `${reg.host}/${IMAGE_REPO}:oci`;
    const nydusRef = `${reg.host}/${IMAGE_REPO}:nydus`;
    log(`docker-registry on ${reg.host} (started in ${fmtS(setup.registry_start_s)})`);

    // 3. push
    t = now();
    await must('skopeo', ['--insecure-policy', 'copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests', `oci:${layout}:latest`, `docker://${ociRef}`], { env: { ...process.env, TMPDIR: work } });
    setup.push_s = now() - t;
    log(`skopeo copy oci:… docker://${ociRef}: ${fmtS(setup.push_s)}`);
    fs.rmSync(layout, { recursive: true, force: true }); // the registry has it now

    // 4. convert
    t = now();
    const convJson = path.join(work, 'convert.json');
    const conv = await run(process.execPath, [CLI, 'convert', '--source', ociRef, '--target', nydusRef, '--insecure', '--work-dir', work, '-J', convJson, ...a.convertArgs]);
    if (conv.code !== 0) throw new Error(`nydus-ts convert failed (${conv.code ?? conv.signal}): ${conv.stderr.trim()}`);
    setup.convert_s = now() - t;
    const convert = JSON.parse(fs.readFileSync(convJson, 'utf8')) as Record<string, any>;
    log(`nydus-ts convert → ${nydusRef}: ${fmtS(setup.convert_s)}`);

    // the two manifests, as the registry has them
    const getManifest = async (tag: string): Promise<Manifest> => {
      const r = await httpGet(`http://${reg!.host}/v2/${IMAGE_REPO}/manifests/${tag}`, { accept: ACCEPT_MANIFEST });
      if (r.status !== 200) throw new Error(`GET manifest ${tag}: HTTP ${r.status}`);
      return JSON.parse(r.body.toString('utf8')) as Manifest;
    };
    const ociM = await getManifest('oci');
    const nydM = await getManifest('nydus');
    const ociBytes = ociM.layers.reduce((n, l) => n + l.size, 0);
    const isBoot = (l: Manifest['layers'][number]): boolean => l.annotations?.['containerd.io/snapshot/nydus-bootstrap'] === 'true';
    const nydusBlobs = nydM.layers.filter((l) => !isBoot(l));
    const bootLayer = nydM.layers.find(isBoot);
    const blobBytes = nydusBlobs.reduce((n, l) => n + l.size, 0);
    const image = {
      oci: { layers: ociM.layers.map((l) => ({ digest: l.digest, size: l.size })), bytes: ociBytes, uncompressed_bytes: info.layers.reduce((n, l) => n + l.uncompressed, 0) },
      nydus: { blobs: nydusBlobs.map((l) => ({ digest: l.digest, size: l.size })), blob_bytes: blobBytes, bootstrap_layer_bytes: bootLayer?.size ?? NaN },
      convert,
    };
    log(`image: OCI ${ociM.layers.length} gzip layer(s) ${fmtMiB(ociBytes)}; nydus ${nydusBlobs.length} blob(s) ${fmtMiB(blobBytes)} + bootstrap layer ${fmtMiB(bootLayer?.size ?? NaN)}`);

    // 5. rounds
    const results: RoundResult[] = [];
    const outputs = new Map<string, string>();
    for (let r = 0; r < a.rounds; r++) {
      const order = r % 2 === 0 ? a.variants : [...a.variants].reverse();
      for (const v of order) {
        log(`round ${r + 1}/${a.rounds}: ${v === 'full' ? 'full pull (skopeo copy + tar -x)' : 'nydus-ts mount --image'} …`);
        const res = v === 'full' ? await fullPull(reg, work, ociRef, r) : await nydusMount(reg, work, nydusRef, r, a.mountArgs);
        results.push(res);
        for (const w of res.workloads) {
          const prev = outputs.get(w.name);
          if (prev === undefined) outputs.set(w.name, w.output_sha256);
          else if (prev !== w.output_sha256) throw new Error(`${w.name}: the output differs between runs (${v}, round ${r + 1})`);
        }
        const wl = res.workloads.map((w) => `${w.name} ${fmtS(w.seconds)}`).join(', ');
        if (v === 'full') {
          log(`round ${r + 1}/${a.rounds}: full: fetched ${fmtS(res.fetched_s!)}, extracted ${fmtS(res.ready_s)}, first byte ${fmtS(res.first_byte_s)}, end ${fmtS(res.end_s)} (${wl}); registry sent ${fmtMiB(res.egress.total_bytes)}`);
        } else {
          log(`round ${r + 1}/${a.rounds}: nydus: mounted ${fmtS(res.ready_s)}, first byte ${fmtS(res.first_byte_s)}, end ${fmtS(res.end_s)} (${wl}); fetched ${fmtMiB(res.backend_bytes!)} of blobs, registry sent ${fmtMiB(res.egress.total_bytes)} (daemon start ${fmtS(res.daemon_start_s!)}, not counted)`);
        }
      }
    }

    // 6. report
    const of = (v: VariantName): RoundResult[] => results.filter((x) => x.variant === v);
    const med = (v: VariantName, f: (x: RoundResult) => number): number => median(of(v).map(f));
    const wlEnd = (v: VariantName, i: number): number => med(v, (x) => x.workloads[i].end_s);
    const wlDur = (v: VariantName, i: number): number => med(v, (x) => x.workloads[i].seconds);
    const has = (v: VariantName): boolean => of(v).length > 0;
    const ratio = (x: number, y: number): string => (Number.isFinite(x) && Number.isFinite(y) && y > 0 ? `${(x / y).toFixed(1)}×` : '–');
    const fullEnd = med('full', (x) => x.end_s);
    const nydEnd = med('nydus', (x) => x.end_s);
    const backend = med('nydus', (x) => x.backend_bytes ?? NaN);
    const nydEgress = med('nydus', (x) => x.egress.total_bytes);
    const fullEgress = med('full', (x) => x.egress.total_bytes);
    const fraction = backend / blobBytes;
    const speedup = fullEnd / nydEnd;

    const L: string[] = [];
    const row = (c0: string, c1: string, c2: string, c3: string): string => `${c0.padEnd(36)}${c1.padStart(12)}${c2.padStart(12)}  ${c3.padStart(15)}`;
    L.push('');
    L.push(`Pull benchmark: Debian bookworm minbase, ${ociM.layers.length} gzip layer(s) ${fmtMiB(ociBytes)} (${fmtMiB(image.oci.uncompressed_bytes)} tar); nydus: ${nydusBlobs.length} blob(s) ${fmtMiB(blobBytes)} + bootstrap layer ${fmtMiB(bootLayer?.size ?? NaN)}`);
    L.push(`${a.rounds} round(s), medians; kernel ${os.release()}; ${os.cpus().length} vCPU(s); times are seconds since the start of the pull / mount`);
    L.push(row('', 'full pull', 'nydus-ts', 'full / nydus'));
    L.push(row('fetched (skopeo copy)', fmtS(med('full', (x) => x.fetched_s ?? NaN)), '', ''));
    L.push(row('ready (extracted / mounted)', fmtS(med('full', (x) => x.ready_s)), fmtS(med('nydus', (x) => x.ready_s)), ratio(med('full', (x) => x.ready_s), med('nydus', (x) => x.ready_s))));
    L.push(row('first byte (stat + read /bin/bash)', fmtS(med('full', (x) => x.first_byte_s)), fmtS(med('nydus', (x) => x.first_byte_s)), ratio(med('full', (x) => x.first_byte_s), med('nydus', (x) => x.first_byte_s))));
    WORKLOADS.forEach((w, i) => {
      const last = i === WORKLOADS.length - 1;
      L.push(row(`${last ? 'workload end: ' : 'after '}${w.name}`, fmtS(wlEnd('full', i)), fmtS(wlEnd('nydus', i)), ratio(wlEnd('full', i), wlEnd('nydus', i)) + (last ? '' : '')));
    });
    L.push(row('  goal: full / nydus at the end', '', '', `≥ 10×: ${has('full') && has('nydus') ? (speedup >= 10 ? 'met' : 'NOT met') : '–'}`));
    L.push(row('bytes sent by the registry', fmtMiB(fullEgress), fmtMiB(nydEgress), ratio(fullEgress, nydEgress)));
    L.push(row('blob bytes fetched (daemon)', '', fmtMiB(backend), ''));
    L.push(row('  fraction of the nydus blobs', '', Number.isFinite(fraction) ? `${(100 * fraction).toFixed(1)} %` : '–', `≤ 10 %: ${Number.isFinite(fraction) ? (fraction <= 0.1 ? 'met' : 'NOT met') : '–'}`));
    L.push(row('  registry bytes / OCI layers', Number.isFinite(fullEgress) ? `${((100 * fullEgress) / ociBytes).toFixed(1)} %` : '–', Number.isFinite(nydEgress) ? `${((100 * nydEgress) / ociBytes).toFixed(1)} %` : '–', ''));
    L.push('');
    L.push('Workload durations (each command alone, median):');
    WORKLOADS.forEach((w, i) => L.push(row(`  chroot ROOT ${w.name}`, fmtS(wlDur('full', i)), fmtS(wlDur('nydus', i)), '')));
    if (has('full')) L.push(`Full pull: skopeo copy ${fmtS(med('full', (x) => x.fetched_s ?? NaN))}, tar -x ${fmtS(med('full', (x) => x.ready_s - (x.fetched_s ?? NaN)))}, overlay ${fmtS(med('full', (x) => x.overlay_s - x.ready_s))}, workload ${fmtS(med('full', (x) => x.end_s - x.first_byte_s))}`);
    if (has('nydus')) {
      const last = of('nydus')[of('nydus').length - 1];
      const bl = (last.blobs ?? []).map((b) => `${String(b.blob_id).slice(0, 12)}: ${fmtMiB(Number(b.backend_bytes))} in ${b.backend_requests} backend reads, ${b.chunks_fetched}/${b.chunk_count} chunks, ${b.reads} READs`).join('; ');
      L.push(`nydus-ts: mount --image ${fmtS(med('nydus', (x) => x.ready_s))}, overlay ${fmtS(med('nydus', (x) => x.overlay_s - x.ready_s))}, workload ${fmtS(med('nydus', (x) => x.end_s - x.first_byte_s))}; daemon start (before the clock) ${fmtS(med('nydus', (x) => x.daemon_start_s ?? NaN))}`);
      const mt = (k: string): number => med('nydus', (x) => (x.mount_timings_ms?.[k] ?? NaN) / 1000);
      if (Number.isFinite(mt('total'))) {
        L.push(`nydus-ts mount --image inside the CLI: resolve ${fmtS(mt('resolve'))}, bootstrap ${fmtS(mt('bootstrap'))}, daemon check ${fmtS(mt('daemon'))}, register ${fmtS(mt('register'))}, kernel mount ${fmtS(mt('mount'))}; total ${fmtS(mt('total'))} of ${fmtS(med('nydus', (x) => x.ready_s))} (the rest: node start-up and module loading)`);
      }
      const nr = of('nydus');
      const ph = nr[0].phases ?? [];
      L.push('nydus-ts: where the blob bytes were fetched (registry GETs, median over rounds):');
      ph.forEach((p, i) => {
        const b = median(nr.map((x) => x.phases?.[i]?.bytes ?? NaN));
        const g = median(nr.map((x) => x.phases?.[i]?.gets ?? NaN));
        const rs = median(nr.map((x) => x.phases?.[i]?.registry_s ?? NaN));
        L.push(`  ${p.name.padEnd(24)}${fmtMiB(b).padStart(11)} in ${String(g).padStart(3)} GETs (registry busy ${fmtS(rs)})`);
      });
      const extra = ['backend_ms', 'decode_ms', 'write_ms', 'read_latency_ms_total', 'inline_decodes', 'pool_decodes', 'cache_writes', 'readahead_chunks'];
      const dm = (last.blobs ?? []).map((b) => extra.filter((k) => k in b).map((k) => `${k} ${Math.round(Number(b[k]))}`).join(', ')).filter(Boolean);
      if (dm.length) L.push(`nydus-ts daemon, last round: ${dm.join('; ')}`);
      L.push(`nydus-ts, last round: ${bl || 'no blob opened'}; registry: ${last.egress.blob_gets} blob GETs, ${fmtMiB(last.egress.blob_bytes)} of blobs, ${last.egress.requests} requests`);
    }
    L.push(`Start-up in this VM: \`node -e 0\` ${fmtS(setup.node_start_s)}, \`nydus-ts --version\` ${fmtS(setup.cli_start_s)}${setup.cli_start_9p_s !== undefined ? `; from the repository over 9p ${fmtS(setup.cli_start_9p_s)}` : ''}`);
    L.push(`Setup (not timed): ${Object.entries(setup).filter(([k]) => !/_start(_9p)?_s$/.test(k) || k === 'registry_start_s').map(([k, v]) => `${k.replace(/_s$/, '')} ${fmtS(v)}`).join(', ')}`);
    L.push('');
    process.stdout.write(L.join('\n') + '\n');

    if (a.outputJson) {
      const summary = (v: VariantName): Record<string, number> | null => (has(v) ? {
        fetched_s: med(v, (x) => x.fetched_s ?? NaN), ready_s: med(v, (x) => x.ready_s), first_byte_s: med(v, (x) => x.first_byte_s), end_s: med(v, (x) => x.end_s),
        ...Object.fromEntries(WORKLOADS.map((w, i) => [`${w.name.replace(/\W+/g, '_')}_end_s`, wlEnd(v, i)])),
        registry_bytes: med(v, (x) => x.egress.total_bytes),
        ...(v === 'nydus' ? { backend_bytes: backend, daemon_start_s: med(v, (x) => x.daemon_start_s ?? NaN) } : {}),
      } : null);
      const out = {
        benchmark: 'pull', kernel: os.release(), vcpus: os.cpus().length, rounds: a.rounds, layers: ociM.layers.length, workloads: WORKLOADS,
        image, setup, full: summary('full'), nydus: summary('nydus'),
        ratios: { end: speedup, ready: med('full', (x) => x.ready_s) / med('nydus', (x) => x.ready_s), first_byte: med('full', (x) => x.first_byte_s) / med('nydus', (x) => x.first_byte_s) },
        fetched_fraction: fraction,
        goals: {
          speedup: { goal: 10, value: speedup, met: speedup >= 10 },
          fetched_fraction: { goal: 0.1, value: fraction, met: fraction <= 0.1 },
        },
        per_round: results,
        total_s: now() - tStart,
      };
      fs.mkdirSync(path.dirname(a.outputJson), { recursive: true });
      fs.writeFileSync(a.outputJson, JSON.stringify(out, null, 2) + '\n');
      log(`results: ${a.outputJson}`);
    }
  } finally {
    if (reg) await stopProc(reg.proc);
    if (cliDir) fs.rmSync(cliDir, { recursive: true, force: true });
    if (!a.keep) fs.rmSync(work, { recursive: true, force: true });
    else log(`kept ${work}`);
  }
}

if (require.main === module) benchMain('pull-bench', main);
