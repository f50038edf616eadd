/**
 * A PRIVATE containerd for tests (Debian's containerd 1.6 + runc): its own config, root, state
 * dir and sockets in a temp dir, never the system's, with `[proxy_plugins.nydus-ts]` pointing
 * at a snapshotter socket and `disable_snapshot_annotations = false` (what part 2's CRI pulls
 * need). stop() kills our tasks and shims, stops containerd, unmounts whatever is left under
 * its dirs and removes them.
 *
 * Also: our snapshotter as a real child process (`nydus-ts snapshotter`), and a small plain OCI
 * image built from this host's own binaries (dash, cat, ls, rm, sleep and their libraries) in two
 * layers, the second with a whiteout.
 *
 * Missing prerequisites (containerd, ctr, runc, tar) throw a clear error; tests never skip.
 */
import { ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { CLI } from './mount';
import { requireCommand } from './registry';

const execFileP = promisify(execFile);

/** children still running: killed if the test process exits without stopping them */
const live = new Set<ChildProcess>();
process.on('exit', () => killLeftovers());

/** SIGKILL every snapshotter and containerd a test left running (call from an `after` hook: a live child keeps the test process up). */
export function killLeftovers(): void {
  for (const p of live) p.kill('SIGKILL');
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Poll `check` until it returns a truthy value; fail with `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 15_000): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await sleep(20);
  }
}

function socketAccepts(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect({ path: sock });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Processes whose command line mentions `needle` (our own temp paths: never someone else's). */
export function pidsMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(needle)) out.push(Number(name));
    } catch {
      // gone
    }
  }
  return out;
}

/** Mount points at or under `dir`, deepest first (octal escapes of /proc/self/mountinfo decoded). */
export function mountsUnder(dir: string): string[] {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean)
    .map((l) => unescape(l.split(' ')[4]))
    .filter((m) => m === dir || m.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
}

/** Unmount everything at or under `dir` (what a failed test may leave). */
export function unmountUnder(dir: string): void {
  for (let round = 0; round < 3; round++) {
    const ms = mountsUnder(dir);
    if (!ms.length) return;
    for (const m of ms) {
      try {
        execFileSync('umount', [m], { stdio: 'ignore' });
      } catch {
        try {
          execFileSync('umount', ['-l', m], { stdio: 'ignore' }); // last resort in cleanup only
        } catch {
          // reported by the caller's mount check
        }
      }
    }
  }
}

// ---------------------------------------------------------------- the snapshotter process

export interface SnapshotterProcess {
  root: string;
  sock: string;
  logFile: string;
  pid: number;
  log(): string;
  /** SIGTERM (or another signal) and wait for the exit; returns the exit code or signal */
  stop(signal?: NodeJS.Signals): Promise<number | string>;
}

/**
 * Start `nydus-ts snapshotter` and wait until its socket accepts connections (up to
 * `startTimeoutMs`: a node start takes tens of seconds in the TCG test VM). Unless `extra` says
 * otherwise (--daemon-start, --daemon-apisock), its own daemon starts on the first nydus mount:
 * a test that starts the daemon (the default, `startup`) says so and stops it.
 * `env` is added to the environment it (and so the daemon it starts) runs with.
 */
export async function startSnapshotter(root: string, sock: string, extra: string[] = [], startTimeoutMs = 15_000, env: Record<string, string> = {}): Promise<SnapshotterProcess> {
  const logFile = path.join(path.dirname(root), `snapshotter-${path.basename(sock)}.log`);
  const out = fs.openSync(logFile, 'a');
  const daemonArgs = extra.includes('--daemon-start') || extra.includes('--daemon-apisock') ? [] : ['--daemon-start', 'first-mount'];
  const child = spawn(process.execPath, [CLI, 'snapshotter', '--root', root, '--address', sock, '--log-level', 'debug', ...daemonArgs, ...extra], { stdio: ['ignore', out, out], env: { ...process.env, ...env } });
  fs.closeSync(out);
  live.add(child);
  const exited = new Promise<number | string>((resolve) => child.once('exit', (code, sig) => {
    live.delete(child);
    resolve(code ?? sig ?? -1);
  }));
  const log = (): string => (fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '');
  let gone = false;
  void exited.then(() => (gone = true));
  await waitFor(`the snapshotter on ${sock}`, async () => {
    if (gone) throw new Error(`it exited:\n${log()}`);
    return (await socketAccepts(sock)) && /serving containerd snapshots/.test(log().split('\n').slice(-5).join('\n'));
  }, startTimeoutMs);
  return {
    root, sock, logFile, pid: child.pid!, log,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (!gone) child.kill(signal);
      return exited;
    },
  };
}

// ---------------------------------------------------------------- containerd

export interface PrivateContainerd {
  dir: string;
  sock: string;
  namespace: string;
  snapshotter: string;
  /** `ctr -a SOCK -n NS ARGS…`; throws with ctr's output on a non-zero exit */
  ctr(args: string[], timeoutMs?: number): Promise<string>;
  /**
   * ctr() retried while containerd reports the snapshotter unreachable: containerd's proxy
   * client reconnects to a restarted snapshotter with a backoff of up to 3 s, and calls in
   * between fail with UNAVAILABLE.
   */
  ctrReconnecting(args: string[], timeoutMs?: number): Promise<string>;
  /**
   * Run a synchronous garbage collection (a throwaway lease deleted with --sync). containerd
   * 1.6's GC scheduler drops a deletion event whose timestamp falls just before the end of a
   * collection already running, so a removal can wait for the next unrelated GC; this one
   * cleans whatever the metadata store marked dirty, the backend snapshotter included.
   */
  collectGarbage(): Promise<void>;
  /** the same, never throws */
  ctrResult(args: string[], timeoutMs?: number): Promise<{ code: number; stdout: string; stderr: string }>;
  log(): string;
  stop(): Promise<void>;
}

export async function startContainerd(dir: string, snapshotterSock: string, snapshotterName = 'nydus-ts', opts: { namespace?: string; startTimeoutMs?: number } = {}): Promise<PrivateContainerd> {
  for (const [cmd, pkg] of [['containerd', 'containerd'], ['ctr', 'containerd'], ['runc', 'runc'], ['containerd-shim-runc-v2', 'containerd']]) requireCommand(cmd, pkg);
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
    `[proxy_plugins.${snapshotterName}]`,
    '  type = "snapshot"',
    `  address = ${JSON.stringify(snapshotterSock)}`,
    '[plugins."io.containerd.grpc.v1.cri"]',
    '  stream_server_address = "127.0.0.1"',
    '  stream_server_port = "0"',
    '[plugins."io.containerd.grpc.v1.cri".containerd]',
    `  snapshotter = ${JSON.stringify(snapshotterName)}`,
    '  disable_snapshot_annotations = false',
    '[plugins."io.containerd.grpc.v1.cri".cni]',
    `  conf_dir = ${JSON.stringify(path.join(dir, 'cni-conf'))}`,
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${JSON.stringify(path.join(dir, 'opt'))}`,
    '',
  ].join('\n'));
  const logFile = path.join(dir, 'containerd.log');
  const out = fs.openSync(logFile, 'a');
  const child = spawn('containerd', ['-c', config], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  live.add(child);
  let exitCode: number | string | undefined;
  const exited = new Promise<void>((resolve) => child.once('exit', (code, sig) => {
    live.delete(child);
    exitCode = code ?? sig ?? -1;
    resolve();
  }));
  const log = (): string => (fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '');
  // CRI pulls land in k8s.io: tests of them pass { namespace: 'k8s.io' }
  const namespace = opts.namespace ?? 'nydus-ts-test';
  const ctrResult = async (args: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> => {
    try {
      const r = await execFileP('ctr', ['-a', sock, '-n', namespace, ...args], { timeout: timeoutMs, maxBuffer: 64 << 20 });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (e) {
      const err = e as { code?: number; stdout?: string; stderr?: string; message: string };
      return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? err.message };
    }
  };
  const ctr = async (args: string[], timeoutMs?: number): Promise<string> => {
    const r = await ctrResult(args, timeoutMs);
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')} exited ${r.code}:\n${r.stderr}${r.stdout}`);
    return r.stdout;
  };
  const ctrReconnecting = async (args: string[], timeoutMs = 15_000): Promise<string> => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const r = await ctrResult(args);
      if (r.code === 0) return r.stdout;
      const transient = /unavailable|connection (closed|refused)|transport/i.test(r.stderr);
      if (!transient || Date.now() > end) throw new Error(`ctr ${args.join(' ')} exited ${r.code}:\n${r.stderr}${r.stdout}`);
      await sleep(200);
    }
  };
  let leases = 0;
  const collectGarbage = async (): Promise<void> => {
    const id = `nydus-ts-gc-${++leases}`;
    await ctr(['leases', 'create', '--id', id]);
    await ctr(['leases', 'delete', '--sync', id]);
  };
  await waitFor(`containerd on ${sock}`, async () => {
    if (exitCode !== undefined) throw new Error(`containerd exited (${exitCode}):\n${log().split('\n').slice(-20).join('\n')}`);
    return (await socketAccepts(sock)) && (await ctrResult(['version'], 5000)).code === 0;
  }, opts.startTimeoutMs ?? 30_000);

  const stop = async (): Promise<void> => {
    if (exitCode === undefined) {
      // tasks first: their shims would outlive containerd
      const tasks = await ctrResult(['tasks', 'ls', '-q'], 10_000);
      for (const id of tasks.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) {
        await ctrResult(['tasks', 'kill', '-s', 'SIGKILL', id], 10_000);
        await waitFor(`task ${id} to stop`, async () => !(await ctrResult(['tasks', 'ls'], 10_000)).stdout.includes('RUNNING'), 10_000).catch(() => undefined);
        await ctrResult(['tasks', 'rm', '-f', id], 10_000);
      }
      const containers = await ctrResult(['containers', 'ls', '-q'], 10_000);
      for (const id of containers.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) await ctrResult(['containers', 'rm', id], 10_000);
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(killer);
    }
    // shims (and their containers) that survived: ours name our socket on their command line
    for (const pid of pidsMentioning(sock)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    unmountUnder(dir);
    removeNamespaceCgroups(namespace);
  };
  return { dir, sock, namespace, snapshotter: snapshotterName, ctr, ctrReconnecting, collectGarbage, ctrResult, log, stop };
}

/**
 * runc removes a container's cgroups with its task, but the `/<namespace>` parent that `ctr run`
 * puts them in stays in every hierarchy; rmdir only succeeds on empty cgroups.
 */
function removeNamespaceCgroups(namespace: string): void {
  const base = '/sys/fs/cgroup';
  const candidates = [path.join(base, namespace), ...(fs.existsSync(base) ? fs.readdirSync(base).map((h) => path.join(base, h, namespace)) : [])];
  for (const d of candidates) {
    try {
      fs.rmdirSync(d);
    } catch {
      // absent, or still in use
    }
  }
}

// ---------------------------------------------------------------- a small plain OCI image

export interface TestImage {
  /** OCI archive for `ctr images import` */
  tar: string;
  name: string;
  /** uncompressed layer digests, lowest first */
  diffIds: string[];
}

const sha256 = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');

/** The shared libraries `ldd` names for `bin` (absolute paths on this host). */
function libsOf(bin: string): string[] {
  const out = execFileSync('ldd', [bin], { encoding: 'utf8' });
  return [...out.matchAll(/(\/\S+) \(0x/g)].map((m) => m[1]);
}

/**
 * Two layers: (1) /bin/{dash,sh,cat,ls,rm,sleep} with their libraries, /etc/base.txt and
 * /etc/removed.txt; (2) /etc/hello.txt and a whiteout of /etc/removed.txt. Uncompressed tars,
 * an OCI manifest and config, named `name` through the `io.containerd.image.name` annotation.
 */
export function buildTestImage(dir: string, name = 'docker.io/nydus-ts/plain:1'): TestImage {
  requireCommand('tar');
  requireCommand('ldd', 'libc-bin');
  const l1 = path.join(dir, 'layer1');
  const l2 = path.join(dir, 'layer2');
  const blobs = path.join(dir, 'oci', 'blobs', 'sha256');
  for (const d of [path.join(l1, 'bin'), path.join(l1, 'etc'), path.join(l2, 'etc'), blobs]) fs.mkdirSync(d, { recursive: true });
  const bins = ['dash', 'cat', 'ls', 'rm', 'sleep'].map((b) => execFileSync('sh', ['-c', `command -v ${b}`], { encoding: 'utf8' }).trim());
  const libs = new Set<string>();
  for (const b of bins) {
    fs.copyFileSync(fs.realpathSync(b), path.join(l1, 'bin', path.basename(b)));
    for (const l of libsOf(b)) libs.add(l);
  }
  for (const l of libs) {
    fs.mkdirSync(path.join(l1, path.dirname(l)), { recursive: true });
    fs.copyFileSync(fs.realpathSync(l), path.join(l1, l));
  }
  fs.symlinkSync('dash', path.join(l1, 'bin', 'sh'));
  fs.writeFileSync(path.join(l1, 'etc', 'base.txt'), 'base layer\n');
  fs.writeFileSync(path.join(l1, 'etc', 'removed.txt'), 'removed by layer 2\n');
  fs.writeFileSync(path.join(l2, 'etc', 'hello.txt'), 'hello from layer 2\n');
  fs.writeFileSync(path.join(l2, 'etc', '.wh.removed.txt'), '');
  const blob = (data: Buffer): string => {
    const d = sha256(data);
    fs.writeFileSync(path.join(blobs, d), data);
    return `sha256:${d}`;
  };
  const layers = [l1, l2].map((src) => execFileSync('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '-C', src, '-cf', '-', '.'], { maxBuffer: 256 << 20 }));
  const diffIds = layers.map(blob);
  const config = Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux',
    config: { Env: ['PATH=/bin'], Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: diffIds },
  }));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: blob(config), size: config.length },
    layers: layers.map((l, i) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: diffIds[i], size: l.length })),
  }));
  const index = {
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: blob(manifest), size: manifest.length, annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': name.split(':').pop() } }],
  };
  fs.writeFileSync(path.join(dir, 'oci', 'index.json'), JSON.stringify(index));
  fs.writeFileSync(path.join(dir, 'oci', 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const tar = path.join(dir, 'image.tar');
  execFileSync('tar', ['-C', path.join(dir, 'oci'), '-cf', tar, '.']);
  return { tar, name, diffIds };
}
