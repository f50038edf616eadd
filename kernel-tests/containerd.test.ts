/**
 * Issue #10 on the real kernel path (runs inside the test VM, Linux 6.12, fscache front end):
 * one `ctr run` of a nydus image through `nydus-ts snapshotter`.
 *
 * In the guest: a REAL docker-registry on loopback holds a multi-layer image (binaries of this
 * host and their libraries, os-release; test/helpers/nydus-image.ts, shared with the host's
 * test/containerd-nydus.test.ts) seeded with skopeo and converted with `nydus-ts convert`; a
 * PRIVATE containerd (test/helpers/containerd.ts) and our snapshotter, both rooted on the ext4
 * scratch disk ($NYDUS_VM_CACHE_DIR: overlay upper dirs, containerd's state and the cachefiles
 * cache cannot live on 9p or tmpfs). The snapshotter starts its own daemon (`--frontend auto`,
 * which picks fscache here: /dev/cachefiles exists); on the first container it registers the
 * image and mounts it with `mount -t erofs -o fsid=…` (the fscache branch of
 * src/containerd/nydus.ts). Checked: `nydus-ts pull` (CRI PullImage) fetches no data blob; the
 * image is an EROFS-over-fscache mount while a container runs; a real program's output read from
 * the lazy rootfs; the daemon says frontend fscache and fetched only part of the blobs; removing
 * the container unmounts and unregisters the image, removing the image removes its snapshots.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startRegistry, seedImage, TestRegistry } from '../test/helpers/registry';
import { startContainerd, startSnapshotter, killLeftovers, mountsUnder, unmountUnder, waitFor, PrivateContainerd, SnapshotterProcess } from '../test/helpers/containerd';
import { BINS, rootfsPaths } from '../test/helpers/nydus-image';
import { CLI } from '../test/helpers/mount';
import { convert, ConvertSummary } from '../src/oci/convert';
import { openSink, openSource } from '../src/oci/open';
import { apiRequest } from '../src/cli/daemon-commands';
import { NOT_IN_VM } from './helpers';

const execFileP = promisify(execFile);
const t0 = performance.now();
const say = (msg: string): void => void process.stderr.write(`containerd-test [${((performance.now() - t0) / 1000).toFixed(1)} s]: ${msg}\n`);

let work: string; // guest tmpfs: registry, convert scratch, Docker config
let disk: string; // on the ext4 disk: containerd and snapshotter roots
let root: string;
let daemonSock: string;
let reg: TestRegistry | undefined;
let snap: SnapshotterProcess | undefined;
let ctd: PrivateContainerd | undefined;
let converted: ConvertSummary;
let nydusRef: string;

const imageMounts = (): string[] => mountsUnder(path.join(root, 'images'));

/** fstype and super options of the mount at `mnt` (/proc/self/mountinfo). */
function mountInfo(mnt: string): { fstype: string; source: string; superOptions: string } | undefined {
  for (const l of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = l.split(' ');
    if (f[4] !== mnt) continue;
    const rest = l.slice(l.indexOf(' - ') + 3).split(' ');
    return { fstype: rest[0], source: rest[1], superOptions: rest[2] };
  }
  return undefined;
}

interface Meta { snapshots: Record<string, { id: string; kind: string; parent: string; labels: Record<string, string> }> }
const meta = (): Meta => JSON.parse(fs.readFileSync(path.join(root, 'metadata.json'), 'utf8')) as Meta;

function logs(): string {
  const tail = (s: string | undefined): string => (s ?? '').split('\n').slice(-25).join('\n');
  let daemon = '';
  try {
    daemon = fs.readFileSync(path.join(root, 'daemon', 'daemon.log'), 'utf8');
  } catch {
    // not started
  }
  return `\n--- snapshotter log tail ---\n${tail(snap?.log())}\n--- daemon log tail ---\n${tail(daemon)}\n--- containerd log tail ---\n${tail(ctd?.log())}`;
}

async function ctrK8s(args: string[], timeoutMs = 300_000): Promise<string> {
  const t = performance.now();
  const r = await ctd!.ctrResult(args, timeoutMs);
  say(`ctr ${args.slice(0, 2).join(' ')}: ${((performance.now() - t) / 1000).toFixed(1)} s`);
  if (r.code !== 0) throw new Error(`ctr -n k8s.io ${args.join(' ')} exited ${r.code}:\n${r.stderr}${r.stdout}${logs()}`);
  return r.stdout;
}

async function daemonMetrics(): Promise<{ images: { id: string }[]; blobs: { blob_id: string; backend_bytes: number }[] }> {
  const r = await apiRequest(daemonSock, 'GET', '/api/v1/metrics');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

const running = (p: number): boolean => {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${p}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

before(async () => {
  const cacheDisk = process.env.NYDUS_VM_CACHE_DIR;
  assert.ok(cacheDisk && fs.existsSync('/dev/cachefiles'), `/dev/cachefiles or the ext4 cache disk is missing: ${NOT_IN_VM}`);
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-ctd-'));
  disk = fs.mkdtempSync(path.join(cacheDisk, 'ctd-'));
  process.env.DOCKER_CONFIG = path.join(work, 'docker-empty'); // anonymous registry, no credentials
  fs.mkdirSync(process.env.DOCKER_CONFIG);
  reg = await startRegistry();
  const seeded = await seedImage(reg, 'library/app', 'v1', { rootfsPaths: rootfsPaths(), bigLayerBytes: 1_000_000 });
  nydusRef = reg.ref('nydus/app', 'v1');
  converted = await reg.logOnFailure(() => convert(openSource(seeded.reference), openSink(nydusRef), { workDir: path.join(work, 'convert'), threads: 1 }));
  say(`registry up, image seeded (${seeded.layers.length} layers) and converted (${converted.blobs.length} blobs)`);
  root = path.join(disk, 'sn');
  daemonSock = path.join(root, 'daemon', 'api.sock');
  let t = performance.now();
  snap = await startSnapshotter(root, path.join(disk, 'sn.sock'), [], 180_000);
  say(`snapshotter up: ${((performance.now() - t) / 1000).toFixed(1)} s`);
  t = performance.now();
  ctd = await startContainerd(path.join(disk, 'ctd'), snap.sock, 'nydus-ts', { namespace: 'k8s.io', startTimeoutMs: 180_000 });
  say(`containerd up: ${((performance.now() - t) / 1000).toFixed(1)} s`);
});

after(async () => {
  const problems: string[] = [];
  await ctd?.stop().catch((e: Error) => problems.push(`containerd stop: ${e.message}`));
  await snap?.stop().catch(() => undefined);
  if (root) {
    // images a failed test left mounted, then the daemon the snapshotter started (SIGTERM its supervisor)
    unmountUnder(root);
    const info = await apiRequest(daemonSock, 'GET', '/api/v1/daemon').catch(() => undefined);
    const pids = [info?.body?.supervisor_pid, info?.body?.pid].filter((p): p is number => typeof p === 'number' && p > 0);
    if (pids.length) {
      process.kill(pids[0], 'SIGTERM');
      await waitFor('the daemon to exit', () => !pids.some(running), 30_000).catch((e: Error) => {
        problems.push(e.message);
        for (const p of pids) if (running(p)) process.kill(p, 'SIGKILL');
      });
    }
  }
  await reg?.stop();
  killLeftovers();
  if (disk && mountsUnder(disk).length) problems.push(`mounts left under ${disk}: ${mountsUnder(disk).join(', ')}`);
  else if (disk) fs.rmSync(disk, { recursive: true, force: true });
  if (work) fs.rmSync(work, { recursive: true, force: true });
  assert.deepEqual(problems, []);
});

test('fscache: nydus-ts pull, ctr run from the lazy EROFS-over-fscache rootfs, removal unmounts and unregisters', async () => {
  // 1. pull through CRI: manifest, config and the bootstrap layer; no data blob
  let t = performance.now();
  const pulled = await execFileP(process.execPath, [CLI, 'pull', '--address', ctd!.sock, nydusRef], { timeout: 300_000 }).catch((e: { stderr?: string; message: string }) => {
    throw new Error(`nydus-ts pull: ${e.message}\n${e.stderr ?? ''}${logs()}`);
  });
  say(`nydus-ts pull: ${((performance.now() - t) / 1000).toFixed(1)} s`);
  assert.match(pulled.stdout.trim(), /^sha256:[0-9a-f]{64}$/, 'the image id');
  const blobHexes = converted.blobs.map((b) => b.blob_id.replace(/^sha256:/, ''));
  const gets = reg!.log().split('\n').filter((l) => new RegExp(`"GET /v2/nydus/app/blobs/sha256:(${blobHexes.join('|')}) `).test(l));
  assert.deepEqual(gets, [], 'no data blob was downloaded by the pull');
  assert.equal(imageMounts().length, 0, 'nothing is mounted before a container');

  // 2. a container: the snapshotter starts its daemon, registers the image and mounts it by fsid
  t = performance.now();
  const run = await ctd!.ctrResult(['run', '-d', '--snapshotter', 'nydus-ts', nydusRef, 'c1', 'sleep', '600'], 300_000);
  if (/bpf_prog_query\(BPF_CGROUP_DEVICE\) failed: function not implemented/.test(run.stderr)) {
    // runc (1.1, cgroup v2) installs every container's device rules as a BPF_PROG_TYPE_CGROUP_DEVICE
    // program and cannot skip that (its implicit "mknod any device" rules are not rwm), even with
    // --privileged; the VM kernel has no bpf(2) (CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF unset)
    throw new Error(`runc cannot create a container in this VM: the test kernel lacks bpf(2) (CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF are not set; kernel-tests/config.fragment), which runc needs for the cgroup v2 device controller. The image itself was mounted (fscache):\n${run.stderr}${logs()}`);
  }
  if (run.code !== 0) throw new Error(`ctr run -d c1 exited ${run.code}:\n${run.stderr}${run.stdout}${logs()}`);
  say(`ctr run -d c1: ${((performance.now() - t) / 1000).toFixed(1)} s`);
  const mounts = imageMounts();
  assert.equal(mounts.length, 1, `one image mount: ${mounts.join(', ')}`);
  const mi = mountInfo(mounts[0]);
  assert.equal(mi?.fstype, 'erofs', `the image mount is EROFS: ${JSON.stringify(mi)}`);
  const fsid = /(?:^|,)fsid=([^,]+)/.exec(mi!.superOptions)?.[1];
  assert.ok(fsid, `mounted by fsid (fscache): ${JSON.stringify(mi)}`);
  const info = await apiRequest(daemonSock, 'GET', '/api/v1/daemon');
  assert.equal(info.status, 200);
  assert.equal(info.body?.frontend, 'fscache', `--frontend auto picks fscache in the VM: ${JSON.stringify(info.body)}`);
  assert.ok((await daemonMetrics()).images.some((i) => i.id === fsid), 'the daemon serves that fsid');
  assert.match(snap!.log(), /mounted nydus image .*"frontend":"fscache"/, 'the snapshotter took the fscache branch');

  // 3. a real program from the lazy rootfs
  t = performance.now();
  const out = await ctrK8s(['tasks', 'exec', '--exec-id', 'e1', 'c1', 'sh', '-c', 'cat /etc/os-release; ls /usr/bin | wc -l; wc -c < /usr/bin/dash']);
  say(`ctr tasks exec: ${((performance.now() - t) / 1000).toFixed(1)} s; output:\n${out}`);
  assert.match(out, /NAME="nydus-ts test image"/, out);
  assert.match(out, new RegExp(`^${BINS.length}$`, 'm'), `ls /usr/bin | wc -l: ${out}`);
  assert.match(out, new RegExp(`^${fs.statSync('/usr/bin/dash').size}$`, 'm'), `wc -c < /usr/bin/dash: ${out}`);
  const fetched = (await daemonMetrics()).blobs.filter((b) => blobHexes.includes(b.blob_id)).reduce((n, b) => n + b.backend_bytes, 0);
  const total = converted.blobs.reduce((n, b) => n + b.size, 0);
  say(`fetched ${fetched} of ${total} blob bytes`);
  assert.ok(fetched > 0 && fetched < total, `lazy: ${fetched} of ${total} blob bytes fetched`);

  // 4. the container gone → the image unmounted and unregistered
  await ctd!.ctrResult(['tasks', 'kill', '-s', 'SIGKILL', 'c1']);
  await waitFor('c1 to stop', async () => !(await ctrK8s(['tasks', 'ls'])).split('\n').some((l) => l.startsWith('c1 ') && l.includes('RUNNING')), 60_000);
  await ctrK8s(['tasks', 'rm', '-f', 'c1']);
  await ctrK8s(['containers', 'rm', 'c1']);
  await ctd!.collectGarbage();
  await waitFor('the image to be unmounted', () => imageMounts().length === 0, 60_000);
  assert.equal(mountInfo(mounts[0]), undefined);
  const m = await daemonMetrics();
  assert.equal(m.images.length, 0, `no image registered: ${JSON.stringify(m.images)}`);

  // 5. the image gone (all the names CRI gave it) → its snapshots gone
  const names = (await ctrK8s(['images', 'ls', '-q'])).split('\n').map((s) => s.trim()).filter(Boolean);
  assert.ok(names.includes(nydusRef), names.join(', '));
  await ctrK8s(['images', 'rm', '--sync', ...names]);
  await ctd!.collectGarbage();
  await waitFor('the image snapshots to be removed', () => Object.keys(meta().snapshots).length === 0, 60_000);
  assert.deepEqual(fs.readdirSync(path.join(root, 'images')), []);
});
