/**
 * Nydus images through `nydus-ts snapshotter` (issue #10, part 2), on this host with the fanotify
 * front end: a REAL docker-registry on loopback holds a multi-layer image (binaries of this host
 * and their libraries, os-release, a random 3rd layer) seeded with skopeo and converted with
 * `nydus-ts convert`; a PRIVATE containerd (CRI plugin: snapshotter nydus-ts,
 * disable_snapshot_annotations = false) pulls it with `nydus-ts pull` (CRI PullImage) and runs
 * it with `ctr -n k8s.io run --snapshotter nydus-ts`. The snapshotter starts its own daemon
 * (no --daemon-apisock).
 *
 * - convert writes the bootstrap layer last (containerd downloads every layer after the first
 *   one it has to fetch);
 * - the pull fetches the manifest, the config and the bootstrap layer only (registry access log);
 * - a container runs a real program from the lazy rootfs; its writes land in its upper dir;
 *   a second container shares the one EROFS mount and the daemon's cache (a repeat fetches
 *   nothing); removing the containers and the image unmounts and unregisters the image;
 * - a snapshotter restart under a running container; a daemon killed under a running container;
 * - bad input: a bootstrap layer without image/image.boot, a blob the registry lost;
 * - Basic auth (`pull --creds` for containerd, the Docker config for the snapshotter);
 * - the gRPC protocol alone with --daemon-apisock (remote layers, bootstrap dir, rootfs + view,
 *   concurrent Prepares, release on the last Remove).
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { startRegistry, seedImage, TestRegistry, SeededImage } from './helpers/registry';
import { startContainerd, startSnapshotter, killLeftovers, mountsUnder, unmountUnder, waitFor, PrivateContainerd, SnapshotterProcess, } from './helpers/containerd';
import { CLI } from './helpers/mount';
import { BINS, rootfsPaths } from './helpers/nydus-image';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { convert, ConvertSummary } from '../src/oci/convert';
import { openSink, openSource } from '../src/oci/open';
import { fsTypeOf } from '../src/kernel/fanotify-group';
import { apiRequest, ensureDaemon } from '../src/cli/daemon-commands';
import * as grpc from '@grpc/grpc-js';
import { loadSnapshotsProto, WireMount } from '../src/containerd/proto';

const execFileP = promisify(execFile);
const say = (msg: string): void => void process.stderr.write(`containerd-nydus [${process.uptime().toFixed(1)} s]: ${msg}\n`);

let work: string, root: string, sock: string, daemonSock: string;
let reg: TestRegistry | undefined, basicReg: TestRegistry | undefined;
let snap: SnapshotterProcess | undefined, snap2: SnapshotterProcess | undefined;
let root2: string | undefined, extSock: string | undefined;
let ctd: PrivateContainerd | undefined;
let seeded: SeededImage;
let converted: ConvertSummary;
let nydusRef: string;

async function ctrK8s(args: string[], timeoutMs = 120_000): Promise<string> {
  const r = await ctd!.ctrResult(args, timeoutMs);
  if (r.code !== 0) throw new Error(`ctr -n k8s.io ${args.join(' ')} exited ${r.code}:\n${r.stderr}${r.stdout}\n--- snapshotter log tail ---\n${snap?.log().split('\n').slice(-30).join('\n')}`);
  return r.stdout;
}

async function nydus(args: string[]): Promise<string> {
  try {
    return (await execFileP(process.execPath, [CLI, ...args], { maxBuffer: 64 << 20, timeout: 300_000 })).stdout;
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`nydus-ts ${args.join(' ')}: ${err.message}\n${err.stderr ?? ''}${err.stdout ?? ''}`);
  }
}

/** Blob GETs of `repo` the registry logged for these digests (hex). */
function blobGets(repo: string, hexes: string[]): number {
  const re = new RegExp(`"GET /v2/${repo}/blobs/sha256:(${hexes.join('|')}) HTTP/[\\d.]+" (\\d{3})`);
  return reg!.log().split('\n').filter((l) => re.test(l)).length;
}

interface Meta { snapshots: Record<string, { id: string; kind: string; parent: string; labels: Record<string, string> }> }
const meta = (): Meta => JSON.parse(fs.readFileSync(path.join(root, 'metadata.json'), 'utf8')) as Meta;

const imageMounts = (): string[] => mountsUnder(path.join(root, 'images'));

async function daemonMetrics(): Promise<{ images: { id: string }[]; mounts: { mountpoint: string }[]; blobs: { blob_id: string; backend_bytes: number; backend_requests: number }[] }> {
  const r = await apiRequest(daemonSock, 'GET', '/api/v1/metrics');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

/** SIGTERM the supervisor of the daemon on `sock` (it stops the serving child) and wait for both. */
async function stopDaemon(sock: string, problems: string[]): Promise<void> {
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
  process.kill(pids[0], 'SIGTERM');
  await waitFor(`the daemon on ${sock} to exit`, () => !pids.some(running), 20_000).catch((e) => {
    problems.push((e as Error).message);
    for (const p of pids) if (running(p)) process.kill(p, 'SIGKILL');
  });
}

before(async () => {
  assert.equal(process.getuid?.(), 0, 'containerd, overlayfs and EROFS mounts need root');
  const [maj, min] = os.release().split('.').map(Number);
  assert.ok(maj > 6 || (maj === 6 && min >= 14), `kernel ${os.release()} has no fanotify pre-content events (needs ≥ 6.14)`);
  assert.ok(!fs.existsSync('/dev/cachefiles'), '/dev/cachefiles exists: `--frontend auto` would pick fscache; this test is about the fanotify front end');
  work = makeTmpDir('nydus-ctd-nydus-');
  assert.ok(['ext4', 'xfs', 'btrfs'].includes(fsTypeOf(work)), `${work} is on ${fsTypeOf(work)}: the daemon's cache dir must be on ext4, xfs or btrfs (set NYDUS_TS_TMP)`);
  // no Docker credentials anywhere: the registry is anonymous
  process.env.DOCKER_CONFIG = path.join(work, 'docker-empty');
  fs.mkdirSync(process.env.DOCKER_CONFIG);
  reg = await startRegistry();
  seeded = await seedImage(reg, 'library/app', 'v1', { rootfsPaths: rootfsPaths(), bigLayerBytes: 3_000_000 });
  nydusRef = reg.ref('nydus/app', 'v1');
  converted = await reg.logOnFailure(() => convert(openSource(seeded.reference), openSink(nydusRef), { workDir: path.join(work, 'convert') }));
  say(`image seeded (${seeded.layers.length} layers) and converted (${converted.blobs.length} blobs)`);
  root = path.join(work, 'sn');
  sock = path.join(work, 'sn.sock');
  daemonSock = path.join(root, 'daemon', 'api.sock');
  snap = await startSnapshotter(root, sock, ['--daemon-start', 'startup']); // the default, said so: after() stops the daemon
  ctd = await startContainerd(path.join(work, 'ctd'), sock, 'nydus-ts', { namespace: 'k8s.io' });
});

after(async () => {
  const problems: string[] = [];
  try {
    await ctd?.stop();
  } catch (e) {
    problems.push(`containerd stop: ${(e as Error).message}`);
  }
  await snap?.stop().catch(() => undefined);
  await snap2?.stop().catch(() => undefined);
  if (root2 && extSock) {
    for (const m of mountsUnder(path.join(root2, 'images'))) await apiRequest(extSock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(m)}`).catch(() => undefined);
    unmountUnder(root2);
  }
  if (extSock) await stopDaemon(extSock, problems);
  // the daemon the snapshotter started: unmount its images, then SIGTERM its supervisor
  if (root) {
    for (const m of imageMounts()) await apiRequest(daemonSock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(m)}`).catch(() => undefined);
    unmountUnder(root);
  }
  if (daemonSock) await stopDaemon(daemonSock, problems);
  await reg?.stop();
  await basicReg?.stop();
  killLeftovers();
  if (root && mountsUnder(work).length) problems.push(`mounts left under ${work}: ${mountsUnder(work).join(', ')}`);
  if (work && !mountsUnder(work).length) removeTmpDir(work);
  assert.deepEqual(problems, []);
});

test('convert writes the bootstrap layer last, data blobs before it', async () => {
  const r = await fetch(`${reg!.url}/v2/nydus/app/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  assert.equal(r.status, 200);
  const m = (await r.json()) as { layers: { digest: string; mediaType: string; annotations?: Record<string, string> }[] };
  const last = m.layers[m.layers.length - 1];
  assert.equal(last.annotations?.['containerd.io/snapshot/nydus-bootstrap'], 'true', 'the last layer is the bootstrap layer');
  assert.equal(last.digest, converted.bootstrap.digest);
  for (const l of m.layers.slice(0, -1)) {
    assert.equal(l.annotations?.['containerd.io/snapshot/nydus-blob'], 'true', `${l.digest}: a data blob before the bootstrap`);
    assert.equal(l.mediaType, 'application/vnd.oci.image.layer.nydus.blob.v1');
  }
  assert.deepEqual(m.layers.slice(0, -1).map((l) => l.digest.slice(7)), converted.blobs.map((b) => b.blob_id.replace(/^sha256:/, '')));
});

let blobHexes: string[];

test('nydus-ts pull (CRI PullImage) fetches manifest, config and bootstrap layer only', async () => {
  blobHexes = converted.blobs.map((b) => b.blob_id.replace(/^sha256:/, ''));
  const out = await nydus(['pull', '--address', ctd!.sock, nydusRef]);
  assert.match(out.trim(), /^sha256:[0-9a-f]{64}$/, 'the image id');
  assert.equal(blobGets('nydus/app', blobHexes), 0, 'no data blob was downloaded');
  assert.equal(blobGets('nydus/app', [converted.bootstrap.digest.slice(7)]), 1, 'the bootstrap layer was downloaded once');
  const snaps = Object.values(meta().snapshots);
  assert.equal(snaps.filter((s) => s.kind === 'committed' && 'containerd.io/snapshot/nydus-blob' in s.labels).length, blobHexes.length, 'a committed snapshot per data layer');
  const boot = snaps.filter((s) => 'containerd.io/snapshot/nydus-bootstrap' in s.labels);
  assert.equal(boot.length, 1);
  assert.equal(boot[0].kind, 'committed');
  assert.equal(boot[0].labels['containerd.io/snapshot/cri.image-ref'], nydusRef, 'the bootstrap snapshot knows the image reference');
  assert.ok(fs.existsSync(path.join(root, 'snapshots', boot[0].id, 'fs', 'image', 'image.boot')), 'containerd unpacked image/image.boot into it');
  assert.equal(imageMounts().length, 0, 'nothing is mounted before a container');
  // --daemon-start startup: the daemon came up with the snapshotter, before any mount
  const info = await waitFor('the daemon the snapshotter started', async () => {
    const r = await apiRequest(daemonSock, 'GET', '/api/v1/daemon').catch(() => undefined);
    return r?.status === 200 && r.body?.state === 'RUNNING' ? r.body : undefined;
  }, 30_000);
  assert.equal(info.state, 'RUNNING');
  assert.match(snap!.log(), /started a daemon on /, 'the snapshotter logs the start');
  const list = await ctrK8s(['images', 'ls', '-q']);
  assert.ok(list.split('\n').includes(nydusRef), list);
});

test('ctr run from the lazy rootfs; writes land in the upper dir; a second container shares mount and cache; removal releases', async () => {
  // 1. a container in the background: it writes, then sleeps
  await ctrK8s(['run', '-d', '--snapshotter', 'nydus-ts', nydusRef, 'c1', 'sh', '-c', 'echo from-c1 > /etc/written-by-c1; rm -f /etc/nydus-layer2.txt; sleep 600']);
  const mounts1 = imageMounts();
  assert.equal(mounts1.length, 1, `one EROFS mount: ${mounts1.join(', ')}`);
  const mnt = mounts1[0];
  const c1 = Object.entries(meta().snapshots).find(([k]) => k.endsWith('/c1'));
  assert.ok(c1, 'the container snapshot c1');
  const upper = path.join(root, 'snapshots', c1[1].id, 'fs');
  await waitFor('c1 to write its file', () => fs.existsSync(path.join(upper, 'etc', 'written-by-c1')), 30_000);
  assert.equal(fs.readFileSync(path.join(upper, 'etc', 'written-by-c1'), 'utf8'), 'from-c1\n');
  assert.ok(!fs.existsSync(path.join(mnt, 'etc', 'written-by-c1')), 'the image is untouched');
  assert.ok(fs.existsSync(path.join(mnt, 'etc', 'nydus-layer2.txt')), 'a deletion in the container does not reach the image');
  const m1 = await daemonMetrics();
  assert.equal(m1.mounts.filter((m) => m.mountpoint === mnt).length, 1, 'the daemon made the mount');
  const bytes1 = m1.blobs.filter((b) => blobHexes.includes(b.blob_id)).reduce((n, b) => n + b.backend_bytes, 0);
  const total = converted.blobs.reduce((n, b) => n + b.size, 0);
  say(`after c1 started: ${bytes1} of ${total} blob bytes fetched`);
  assert.ok(bytes1 < total, `lazy: ${bytes1} of ${total} blob bytes fetched`);

  // 2. a second container runs a real program and reads what the first did not write
  const expectBins = BINS.length; // /usr/bin holds exactly these
  const out = await ctrK8s(['run', '--rm', '--snapshotter', 'nydus-ts', nydusRef, 'c2', 'sh', '-c', 'cat /etc/os-release; ls /usr/bin | wc -l; cat /etc/written-by-c1 2>&1 || echo absent']);
  assert.match(out, /NAME="nydus-ts test image"/, out);
  assert.match(out, new RegExp(`^${expectBins}$`, 'm'), `ls /usr/bin | wc -l: ${out}`);
  assert.match(out, /absent/, 'c1\'s write is not visible to c2');
  assert.deepEqual(imageMounts(), [mnt], 'c2 used the same mount');
  const m2 = await daemonMetrics();
  assert.equal(m2.images.length, m1.images.length, 'no second registration');
  const bytes2 = m2.blobs.filter((b) => blobHexes.includes(b.blob_id)).reduce((n, b) => n + b.backend_bytes, 0);
  say(`after c2: ${bytes2} of ${total} blob bytes fetched`);
  assert.ok(bytes2 < total, 'still lazy after c2');
  assert.equal(blobGets('nydus/app', [converted.bootstrap.digest.slice(7)]), 1, 'the bootstrap layer was not fetched again');
  // the same reads again in a third container: all from the daemon's cache
  const gets2 = blobGets('nydus/app', blobHexes);
  const again = await ctrK8s(['run', '--rm', '--snapshotter', 'nydus-ts', nydusRef, 'c2b', 'sh', '-c', 'cat /etc/os-release; ls /usr/bin | wc -l; cat /etc/written-by-c1 2>&1 || echo absent']);
  assert.equal(again, out);
  const bytes3 = (await daemonMetrics()).blobs.filter((b) => blobHexes.includes(b.blob_id)).reduce((n, b) => n + b.backend_bytes, 0);
  assert.equal(bytes3, bytes2, 'a repeat of the same reads fetched nothing');
  assert.equal(blobGets('nydus/app', blobHexes), gets2, 'and the registry saw no blob request');
  await ctd!.collectGarbage();
  assert.deepEqual(imageMounts(), [mnt], 'c1 still holds the mount after c2 is gone');

  // 3. c1 gone → unmounted and unregistered
  await removeContainer('c1');
  await waitFor('the image to be unmounted', () => imageMounts().length === 0, 20_000);
  const m3 = await daemonMetrics();
  assert.ok(!m3.mounts.some((m) => m.mountpoint === mnt), 'the daemon forgot the mount');
  assert.equal(m3.images.length, 0, `no image registered: ${JSON.stringify(m3.images)}`);

  // 4. the image gone → its snapshots gone. CRI records the image under three names (the tag,
  // repo@manifest digest and the image id sha256:<config>): all go, as `crictl rmi` does
  const names = (await ctrK8s(['images', 'ls', '-q'])).split('\n').map((s) => s.trim()).filter(Boolean);
  assert.ok(names.includes(nydusRef), names.join(', '));
  await ctrK8s(['images', 'rm', '--sync', ...names]);
  await ctd!.collectGarbage();
  await waitFor('the image snapshots to be removed', () => Object.keys(meta().snapshots).length === 0, 20_000).catch(async (e) => {
    throw new Error(`${(e as Error).message}: left ${JSON.stringify(meta().snapshots, null, 1)}\nimages: ${await ctrK8s(['images', 'ls'])}\nleases: ${await ctrK8s(['leases', 'ls'])}\ncontent: ${await ctrK8s(['content', 'ls'])}`);
  });
});

/** containerd's snapshot key of container `id` in our metadata (`k8s.io/N/id`). */
const containerSnapshot = (id: string): [string, { id: string; kind: string }] | undefined => Object.entries(meta().snapshots).find(([k]) => k.endsWith(`/${id}`));

async function removeContainer(id: string): Promise<void> {
  await ctd!.ctrResult(['tasks', 'kill', '-s', 'SIGKILL', id]);
  await waitFor(`${id} to stop`, async () => !(await ctrK8s(['tasks', 'ls'])).split('\n').some((l) => l.startsWith(`${id} `) && l.includes('RUNNING')), 20_000).catch(() => undefined);
  await ctd!.ctrResult(['tasks', 'rm', '-f', id]);
  await ctrK8s(['containers', 'rm', id]);
  await ctd!.collectGarbage();
}

test('a restarted snapshotter keeps the running container\'s image and releases it afterwards', async () => {
  await nydus(['pull', '--address', ctd!.sock, nydusRef]);
  await ctrK8s(['run', '-d', '--snapshotter', 'nydus-ts', nydusRef, 'c3', 'sleep', '600']);
  const mounts = imageMounts();
  assert.equal(mounts.length, 1);
  assert.equal(await snap!.stop(), 0, 'the snapshotter stopped cleanly');
  snap = await startSnapshotter(root, sock);
  assert.deepEqual(imageMounts(), mounts, 'the restart kept the image mounted (a container uses it)');
  const out = await ctrK8s(['tasks', 'exec', '--exec-id', 'e1', 'c3', 'cat', '/etc/os-release']);
  assert.match(out, /nydus-ts test image/, 'the running container still reads its lazy rootfs');
  // a second container after the restart shares the mount the first process made
  const out2 = await ctd!.ctrReconnecting(['run', '--rm', '--snapshotter', 'nydus-ts', nydusRef, 'c4', 'ls', '/usr/bin']);
  assert.equal(out2.trim().split(/\s+/).length, BINS.length, out2);
  assert.deepEqual(imageMounts(), mounts, 'one mount for both');
  await removeContainer('c3');
  await waitFor('the image to be unmounted by the new snapshotter', () => imageMounts().length === 0, 20_000);
  assert.equal((await daemonMetrics()).images.length, 0, 'and unregistered');
});

test('bad input: a bootstrap layer without image/image.boot fails the container with a message naming the snapshot; the snapshotter keeps serving', async () => {
  // the same image with its bootstrap layer replaced by one that holds image/README only
  const get = async (p: string, accept?: string): Promise<Buffer> => {
    const r = await fetch(`${reg!.url}${p}`, { headers: accept ? { accept } : {} });
    assert.equal(r.status, 200, p);
    return Buffer.from(await r.arrayBuffer());
  };
  const manifest = JSON.parse((await get('/v2/nydus/app/manifests/v1', 'application/vnd.oci.image.manifest.v1+json')).toString());
  const config = JSON.parse((await get(`/v2/nydus/app/blobs/${manifest.config.digest}`)).toString());
  const dir = path.join(work, 'broken');
  fs.mkdirSync(path.join(dir, 'image'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'image', 'README'), 'no bootstrap here\n');
  const tar = execFileSync('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '-C', dir, '-cf', '-', 'image']);
  const gz = (await import('node:zlib')).gzipSync(tar);
  const sha = (b: Buffer): string => `sha256:${(require('node:crypto') as typeof import('node:crypto')).createHash('sha256').update(b).digest('hex')}`;
  config.rootfs.diff_ids[config.rootfs.diff_ids.length - 1] = sha(tar);
  const configRaw = Buffer.from(JSON.stringify(config));
  const last = manifest.layers[manifest.layers.length - 1];
  manifest.layers[manifest.layers.length - 1] = { ...last, digest: sha(gz), size: gz.length };
  manifest.config = { ...manifest.config, digest: sha(configRaw), size: configRaw.length };
  const brokenRef = reg!.ref('nydus/app', 'broken');
  const sink = openSink(brokenRef);
  await sink.pushBlob({ mediaType: last.mediaType, digest: sha(gz), size: gz.length }, gz);
  await sink.pushBlob(manifest.config, configRaw);
  await sink.pushManifest(Buffer.from(JSON.stringify(manifest)), 'application/vnd.oci.image.manifest.v1+json');
  await nydus(['pull', '--address', ctd!.sock, brokenRef]);
  const r = await ctd!.ctrResult(['run', '--rm', '--snapshotter', 'nydus-ts', brokenRef, 'bad1', 'true']);
  assert.notEqual(r.code, 0, 'the container cannot start');
  say(`broken bootstrap: ${r.stderr.trim()}`);
  assert.match(r.stderr, /nydus bootstrap layer \S+ has no image\/image\.boot/, r.stderr);
  assert.ok(!containerSnapshot('bad1'), 'the refused snapshot was removed again');
  await ctd!.ctrResult(['containers', 'rm', 'bad1']);
  // the good image still runs
  const out = await ctrK8s(['run', '--rm', '--snapshotter', 'nydus-ts', nydusRef, 'good1', 'cat', '/etc/os-release']);
  assert.match(out, /nydus-ts test image/);
  await ctd!.collectGarbage();
  await waitFor('the image to be unmounted', () => imageMounts().length === 0, 20_000);
});

test('bad input: a data blob the registry lost gives EIO for its files only; other files and the snapshotter keep working', async () => {
  const lost = await seedImage(reg!, 'library/lost', 'v1', { rootfsPaths: rootfsPaths(), bigLayerBytes: 2_000_000 });
  const lostRef = reg!.ref('nydus/lost', 'v1');
  const conv = await convert(openSource(lost.reference), openSink(lostRef), { workDir: path.join(work, 'convert-lost') });
  const big = conv.blobs.find((b) => b.from_layer === 2);
  assert.ok(big, JSON.stringify(conv.blobs));
  const del = await fetch(`${reg!.url}/v2/nydus/lost/blobs/${big.blob_id.startsWith('sha256:') ? big.blob_id : `sha256:${big.blob_id}`}`, { method: 'DELETE' });
  assert.equal(del.status, 202, 'the registry forgot the blob');
  await nydus(['pull', '--address', ctd!.sock, lostRef]);
  const r = await ctd!.ctrResult(['run', '--rm', '--snapshotter', 'nydus-ts', lostRef, 'lost1', 'sh', '-c', 'cat /etc/os-release; cat /opt/big.bin > /dev/null && echo big-read || echo big-failed'], 120_000);
  say(`lost blob run: code ${r.code}\n${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /nydus-ts test image/, 'files of the other blobs are served');
  assert.match(r.stdout, /big-failed/, 'the lost blob\'s file fails');
  assert.match(r.stdout + r.stderr, /Input\/output error/);
  await ctd!.ctrResult(['containers', 'rm', 'lost1']);
  const out = await ctrK8s(['run', '--rm', '--snapshotter', 'nydus-ts', nydusRef, 'good2', 'cat', '/etc/os-release']);
  assert.match(out, /nydus-ts test image/, 'the snapshotter keeps serving');
  await ctd!.collectGarbage();
  await waitFor('the images to be unmounted', () => imageMounts().length === 0, 20_000);
});

test('Basic auth: `pull --creds` for containerd, the Docker config for the snapshotter; the daemon reads the blobs with those credentials', async () => {
  basicReg = await startRegistry({ auth: 'basic' });
  const img = await seedImage(reg!, 'library/private', 'v1', { rootfsPaths: rootfsPaths(), bigLayerBytes: 1_500_000 });
  const privRef = basicReg.ref('team/private', 'v1');
  const conv = await basicReg.logOnFailure(() => convert(openSource(img.reference), openSink(privRef, { registry: { auth: basicReg!.creds!.basic } }), { workDir: path.join(work, 'convert-private') }));
  const big = conv.blobs.find((b) => b.from_layer === 2)!;
  const bigHex = big.blob_id.replace(/^sha256:/, '');
  // without credentials containerd cannot pull
  const denied = await execFileP(process.execPath, [CLI, 'pull', '--address', ctd!.sock, privRef]).then(() => undefined, (e: { stderr: string }) => e.stderr);
  assert.ok(denied !== undefined, 'an anonymous pull of the private image fails');
  assert.match(denied, /pull .*team\/private/, denied);
  await nydus(['pull', '--address', ctd!.sock, '--creds', basicReg.creds!.skopeo, privRef]);
  // the snapshotter reads the Docker config (DOCKER_CONFIG it was started with) when it mounts
  fs.writeFileSync(path.join(process.env.DOCKER_CONFIG!, 'config.json'), JSON.stringify({ auths: { [basicReg.host]: { auth: basicReg.creds!.basic } } }));
  try {
    const out = await ctrK8s(['run', '--rm', '--snapshotter', 'nydus-ts', privRef, 'priv1', 'sh', '-c', 'cat /opt/big.bin | wc -c']);
    assert.equal(out.trim(), '1500000', out);
  } finally {
    fs.rmSync(path.join(process.env.DOCKER_CONFIG!, 'config.json'), { force: true });
  }
  const gets = basicReg.log().split('\n').filter((l) => l.includes(`GET /v2/team/private/blobs/sha256:${bigHex}`));
  assert.ok(gets.some((l) => /" 20[06] /.test(l)), `the daemon read the big blob from the Basic-auth registry:\n${gets.join('\n')}`);
  await ctd!.collectGarbage();
  await waitFor('the image to be unmounted', () => imageMounts().length === 0, 20_000);
});

// ---------------------------------------------------------------- the gRPC protocol, no containerd

type AnyClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;
function rpc<T = any>(c: AnyClient, method: string, req: object): Promise<T> {
  return new Promise((resolve, reject) => {
    c[method]({ snapshotter: 'nydus-ts', ...req }, { deadline: Date.now() + 60_000 }, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)));
  });
}

test('gRPC, with --daemon-apisock (a daemon started beforehand): remote layers, the bootstrap directory, rootfs and view on one mount, release on the last Remove', async () => {
  extSock = path.join(work, 'ext', 'api.sock');
  await ensureDaemon(extSock, path.join(work, 'ext', 'cache'), path.join(work, 'ext', 'daemon.log'));
  root2 = path.join(work, 'sn2');
  snap2 = await startSnapshotter(root2, path.join(work, 'sn2.sock'), ['--daemon-apisock', extSock]);
  const { Client } = loadSnapshotsProto();
  const c = new Client(`unix:${snap2.sock}`, grpc.credentials.createInsecure()) as unknown as AnyClient;
  const r2 = root2;
  try {
    const blob = (t: string): Record<string, string> => ({ 'containerd.io/snapshot/nydus-blob': 'true', 'containerd.io/snapshot.ref': t });
    let parent = '';
    for (const t of ['t1', 't2', 't3']) {
      await assert.rejects(rpc(c, 'Prepare', { key: `extract-${t}`, parent, labels: blob(t) }), (e: grpc.ServiceError) => {
        assert.equal(e.code, grpc.status.ALREADY_EXISTS, e.details);
        assert.match(e.details, new RegExp(`target ${t} already exists`));
        return true;
      });
      const st = await rpc<{ info: { kind: string; parent: string; labels: Record<string, string> } }>(c, 'Stat', { key: t });
      assert.deepEqual([st.info.kind, st.info.parent, st.info.labels['containerd.io/snapshot/nydus-blob']], ['COMMITTED', parent, 'true']);
      await assert.rejects(rpc(c, 'Stat', { key: `extract-${t}` }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
      parent = t;
    }
    // a second pull of the same layer: the same answer
    await assert.rejects(rpc(c, 'Prepare', { key: 'extract-again', parent: '', labels: blob('t1') }), (e: grpc.ServiceError) => e.code === grpc.status.ALREADY_EXISTS);
    // an unknown parent is refused, naming it
    await assert.rejects(rpc(c, 'Prepare', { key: 'x', parent: 'nope', labels: blob('t9') }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND && /parent nope/.test(e.details));
    const bootLabels = { 'containerd.io/snapshot/nydus-bootstrap': 'true', 'containerd.io/snapshot.ref': 'tb' };
    const bm = (await rpc<{ mounts: WireMount[] }>(c, 'Prepare', { key: 'extract-tb', parent: 't3', labels: bootLabels })).mounts;
    assert.equal(bm.length, 1);
    assert.equal(bm[0].type, 'bind', 'the bootstrap layer is a plain directory');
    assert.ok(bm[0].options.includes('rw'));
    // unpack the bootstrap layer into it, as containerd does
    const gz = Buffer.from(await (await fetch(`${reg!.url}/v2/nydus/app/blobs/${converted.bootstrap.digest}`)).arrayBuffer());
    execFileSync('tar', ['-xzf', '-', '-C', bm[0].source], { input: gz });
    assert.ok(fs.existsSync(path.join(bm[0].source, 'image', 'image.boot')));
    await rpc(c, 'Commit', { name: 'tb', key: 'extract-tb', labels: { ...bootLabels, 'containerd.io/snapshot/cri.image-ref': nydusRef } });

    // two containers at once: one mount
    const [rm, rmB] = await Promise.all(['rootfs1', 'rootfs2'].map(async (key) => (await rpc<{ mounts: WireMount[] }>(c, 'Prepare', { key, parent: 'tb', labels: {} })).mounts));
    assert.equal(rm[0].type, 'overlay');
    assert.equal(rmB[0].options.find((o) => o.startsWith('lowerdir=')), rm[0].options.find((o) => o.startsWith('lowerdir=')));
    await rpc(c, 'Remove', { key: 'rootfs2' });
    const lower = rm[0].options.find((o) => o.startsWith('lowerdir='))!.slice('lowerdir='.length);
    assert.match(lower, new RegExp(`^${r2}/images/\\d+/mnt$`), 'lowerdir is the image mount under the snapshotter root');
    assert.deepEqual(mountsUnder(path.join(r2, 'images')), [lower]);
    const ext = await apiRequest(extSock, 'GET', '/api/v1/mount');
    assert.ok(JSON.stringify(ext.body).includes(lower), `the given daemon made the mount: ${JSON.stringify(ext.body)}`);
    // Mounts answers the same
    assert.deepEqual((await rpc<{ mounts: WireMount[] }>(c, 'Mounts', { key: 'rootfs1' })).mounts.map((m) => m.options), rm.map((m) => m.options));
    // mount it as a shim would and use it
    const target = path.join(work, 'rootfs1');
    fs.mkdirSync(target);
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', rm[0].options.join(','), target]);
    try {
      assert.match(fs.readFileSync(path.join(target, 'etc', 'os-release'), 'utf8'), /nydus-ts test image/);
      fs.writeFileSync(path.join(target, 'etc', 'new.txt'), 'upper\n');
    } finally {
      execFileSync('umount', [target]);
    }
    const upper = rm[0].options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);
    assert.equal(fs.readFileSync(path.join(upper, 'etc', 'new.txt'), 'utf8'), 'upper\n');
    assert.ok(!fs.existsSync(path.join(lower, 'etc', 'new.txt')));

    const vm = (await rpc<{ mounts: WireMount[] }>(c, 'View', { key: 'view1', parent: 'tb', labels: {} })).mounts;
    assert.deepEqual(vm, [{ type: 'bind', source: lower, target: '', options: ['rbind', 'ro'] }], 'a view is the image mount, read-only');
    assert.deepEqual(mountsUnder(path.join(r2, 'images')), [lower], 'one mount for both');

    await rpc(c, 'Remove', { key: 'rootfs1' });
    assert.deepEqual(mountsUnder(path.join(r2, 'images')), [lower], 'the view still uses it');
    await rpc(c, 'Remove', { key: 'view1' });
    assert.deepEqual(mountsUnder(path.join(r2, 'images')), [], 'the last user gone: unmounted');
    const after1 = await apiRequest(extSock, 'GET', '/api/v1/metrics');
    assert.ok(!JSON.stringify(after1.body.mounts).includes(lower), 'the daemon forgot the mount');
    assert.equal(after1.body.images.length, 0, `unregistered: ${JSON.stringify(after1.body.images)}`);
    for (const k of ['tb', 't3', 't2', 't1']) await rpc(c, 'Remove', { key: k });
    assert.deepEqual(fs.readdirSync(path.join(r2, 'images')), []);
  } finally {
    c.close();
  }
});

test('the registry backend of an image reference: loopback and --insecure-registry over HTTP, others HTTPS, Docker Hub as index.docker.io', async () => {
  const { imageBackend } = await import('../src/containerd/nydus');
  assert.deepEqual(imageBackend('127.0.0.1:5000/a/b:v1', []), { scheme: 'http', host: '127.0.0.1:5000', repo: 'a/b' });
  assert.deepEqual(imageBackend('localhost:5000/a/b:v1', []).scheme, 'http');
  assert.deepEqual(imageBackend('reg.example:5000/a/b:v1', ['reg.example:5000']), { scheme: 'http', host: 'reg.example:5000', repo: 'a/b' });
  assert.deepEqual(imageBackend('reg.example:5000/a/b:v1', ['reg.example']).scheme, 'https', 'the port is part of the name');
  assert.deepEqual(imageBackend('ubuntu:22.04', []), { scheme: 'https', host: 'index.docker.io', repo: 'library/ubuntu' });
  assert.throws(() => imageBackend('Bad Ref', []), /invalid image reference/);
});

test('the daemon dies under a running container: the next container gets a new daemon and a fresh mount (overlayfs keeps its own clone of the dead one); removal releases', async () => {
  await ctrK8s(['run', '-d', '--snapshotter', 'nydus-ts', nydusRef, 'd1', 'sleep', '600']);
  const mounts = imageMounts();
  assert.equal(mounts.length, 1);
  const info = await apiRequest(daemonSock, 'GET', '/api/v1/daemon');
  const pids = [info.body?.supervisor_pid, info.body?.pid].filter((p): p is number => typeof p === 'number' && p > 0);
  assert.ok(pids.length > 0, JSON.stringify(info.body));
  for (const p of pids) process.kill(p, 'SIGKILL');
  const running = (p: number): boolean => {
    try {
      return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${p}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  await waitFor('the daemon to die', () => !pids.some(running), 10_000);
  const out = await ctrK8s(['run', '--rm', '--snapshotter', 'nydus-ts', nydusRef, 'd2', 'cat', '/etc/os-release']);
  assert.match(out, /nydus-ts test image/, 'a new daemon serves the image');
  assert.match(snap!.log(), /is stale \(its daemon no longer serves fsid [0-9a-f]{64}\): mounting it again/);
  const info2 = await apiRequest(daemonSock, 'GET', '/api/v1/daemon');
  assert.notEqual(info2.body?.pid, info.body?.pid, 'the snapshotter started a new daemon');
  assert.deepEqual(imageMounts(), mounts, 'one mount, the fresh one, on the same mountpoint');
  assert.match(await ctrK8s(['tasks', 'ls']), /d1\s+\d+\s+RUNNING/, 'd1 still runs');
  await removeContainer('d1');
  await waitFor('the image to be released', () => imageMounts().length === 0, 20_000);
  assert.equal((await daemonMetrics()).images.length, 0, 'unregistered from the new daemon');
});
