/**
 * Issue #4, the user story on the real kernel path (runs inside the test VM):
 *
 *   nydus-ts mount --image 127.0.0.1:PORT/repo:tag --insecure MNT
 *
 * One command: resolve the reference at a REAL docker-registry (started in the guest, anonymous
 * and htpasswd Basic auth with a DOCKER_CONFIG config.json), fetch and cache the bootstrap,
 * start our daemon (none runs yet), register the image with a `registry` backend, mount EROFS
 * by fsid. The image is a multi-layer OCI image seeded with skopeo and converted with
 * `nydus-ts convert` into the same registry. Checked:
 *
 * - the mounted tree equals an overlayfs mount of the source layers, byte for byte;
 * - laziness: after mounting nothing of the blobs was fetched; the first small file's first
 *   byte took at most two backend round trips (ci array + its chunks); reading a few files
 *   fetched a small fraction of the blobs;
 * - a blob the registry answers 404 for: EIO on the files in that blob only, the daemon serves
 *   every other file and stays up;
 * - `nydus-ts umount` unmounts and unregisters.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { execFile } from 'node:child_process';
import { startRegistry, seedImage, TestRegistry, SeededImage } from '../test/helpers/registry';
import { snapshotTree, diffTrees } from '../test/helpers/tree-compare';
import { DaemonApiClient } from '../src/daemon/api-client';
import type { BlobMetrics } from '../src/daemon/interfaces';
import { RegistryClient } from '../src/oci/registry-client';
import { MediaTypes } from '../src/oci/types';
import { convert } from '../src/oci/convert';
import { openSink, openSource } from '../src/oci/open';
import { NOT_IN_VM, isMounted, run } from './helpers';
import { ociWhiteoutsToOverlay, dirMtimesFromTar } from '../test/helpers/mount';

const REPO = path.resolve(__dirname, '..', '..');
const CLI = path.join(REPO, 'dist', 'src', 'cli', 'main.js');

/**
 * The layers' real-rootfs slice, kept small (every process start and file access is slow under
 * TCG): a few zoneinfo dirs (Arctic and CET are whited out by layer 2), docs (bash becomes an
 * opaque dir), os-release (a symlink replaced by a file).
 */
const ROOTFS = ['/usr/share/zoneinfo/Europe', '/usr/share/zoneinfo/Pacific', '/usr/share/zoneinfo/Arctic', '/usr/share/zoneinfo/CET', '/usr/lib/os-release', '/etc/os-release', '/usr/share/doc/bash', '/usr/share/doc/tar'];
const TAR_FLAGS = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--format=pax', '--sort=name'];

let work: string;
let runDir: string;
let sock: string;
let cacheDir: string;
let stateDir: string;
let payloadDir: string;
let anon: TestRegistry | undefined;
let basicReg: TestRegistry | undefined;
let seeded: SeededImage;
let converted: ConvertJson;
let want: Map<string, unknown>;
let api: DaemonApiClient | undefined;
const mounted: string[] = [];
const overlays: string[] = [];

interface ConvertJson {
  target_manifest_digest: string;
  layers: Array<{ index: number; blob_id: string | null }>;
  blobs: Array<{ blob_id: string; size: number; from_layer: number | null }>;
}

interface MountJson {
  reference: string;
  manifest_digest: string;
  fsid: string;
  mountpoint: string;
  blob_ids: string[];
  blobs: Array<{ id: string; size: number }>;
  bootstrap: { path: string; layer_digest: string; size: number; cached: boolean };
  backend: { scheme: string; host: string; repo: string; auth: string; credentials: string };
  daemon_started: boolean;
  registration: string;
  timings_ms: Record<string, number>;
}


function say(msg: string): void {
  process.stderr.write(`image-test: ${msg}\n`);
}

/** Run the CLI (asynchronously: the registry and our mounts must keep being served). */
function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string; ms: number }> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, NYDUS_TS_RUN_DIR: runDir, ...env }, maxBuffer: 64 << 20, encoding: 'utf8', timeout: 180_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ code, stdout, stderr: stderr + (err && code === -1 ? ` [${err.message}]` : ''), ms: performance.now() - t0 });
    });
  });
}

async function cliOk(args: string[], env: Record<string, string> = {}): Promise<{ stdout: string; stderr: string; ms: number }> {
  const r = await cli(args, env);
  if (r.code !== 0) throw new Error(`nydus-ts ${args.join(' ')} exited ${r.code}:\n${r.stderr}${r.stdout}${daemonLogTail()}`);
  return r;
}

function daemonLogTail(): string {
  try {
    return `\n--- daemon log tail ---\n${fs.readFileSync(path.join(runDir, 'daemon.log'), 'utf8').split('\n').slice(-30).join('\n')}`;
  } catch {
    return '';
  }
}

/** `mount --image REF --insecure -J FILE MNT` with our socket, cache and state dirs. */
async function mountImage(ref: string, name: string, extra: string[] = [], env: Record<string, string> = {}): Promise<{ mnt: string; json: MountJson; ms: number; stderr: string }> {
  const mnt = path.join(work, 'mnt', name);
  const jsonFile = path.join(work, `${name}.mount.json`);
  const r = await cliOk(['mount', '--image', ref, '--insecure', '--apisock', sock, '--fscache', cacheDir, '--work-dir', stateDir, '-J', jsonFile, ...extra, mnt], env);
  mounted.push(mnt);
  return { mnt, json: JSON.parse(fs.readFileSync(jsonFile, 'utf8')) as MountJson, ms: r.ms, stderr: r.stderr };
}

async function umountImage(mnt: string): Promise<void> {
  await cliOk(['umount', mnt]);
  mounted.splice(mounted.indexOf(mnt), 1);
}

async function blobMetrics(ids: string[]): Promise<BlobMetrics[]> {
  const m = (await api!.metrics()) as { blobs: BlobMetrics[] };
  return m.blobs.filter((b) => ids.includes(b.blob_id));
}

const sum = (xs: BlobMetrics[], k: 'backend_bytes' | 'backend_requests' | 'chunks_fetched'): number => xs.reduce((n, b) => n + b[k], 0);

/**
 * Extract an OCI layer tar as an overlayfs lower directory (char 0:0 whiteouts, opaque xattr),
 * directory mtimes from the archive's entries (as containerd's unpacker leaves them).
 */
async function toOverlayLayer(tarFile: string, out: string): Promise<void> {
  fs.mkdirSync(out, { recursive: true });
  const r = await run('tar', [...TAR_FLAGS, '-xpf', tarFile, '-C', out]);
  if (r.code !== 0) throw new Error(`tar -x ${tarFile}: ${r.stderr}`);
  ociWhiteoutsToOverlay(out);
  await dirMtimesFromTar(tarFile, out);
}

/** Overlay-mount the seeded layers (the source image as a container runtime would see it). */
async function overlayOf(img: SeededImage, name: string): Promise<string> {
  const lowers: string[] = [];
  for (const [i, l] of img.layers.entries()) {
    const d = path.join(work, `${name}-lower${i}`);
    await toOverlayLayer(l.tarFile, d);
    lowers.unshift(d);
  }
  const mnt = path.join(work, `${name}-overlay`);
  fs.mkdirSync(mnt, { recursive: true });
  const r = await run('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${lowers.join(':')}`, mnt]);
  if (r.code !== 0) throw new Error(`overlay mount: ${r.stderr}`);
  overlays.push(mnt);
  return mnt;
}

/** Convert with the library `nydus-ts convert` runs (in this process: a CLI start costs seconds under TCG). */
async function convertImage(reg: TestRegistry, source: string, target: string): Promise<ConvertJson> {
  const t0 = performance.now();
  const s = await reg.logOnFailure(() => convert(openSource(source), openSink(target), { workDir: path.join(work, 'convert'), threads: 1 }));
  say(`convert ${source} → ${target}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return s as unknown as ConvertJson;
}

/** Copy an image between registries (blobs and manifest), e.g. into the Basic-auth registry. */
async function copyImage(from: string, to: string, toAuth?: string): Promise<void> {
  const src = new RegistryClient(from);
  const dst = new RegistryClient(to, { push: true, auth: toAuth });
  try {
    const m = await src.getManifest();
    for (const d of [m.parsed.manifest!.config, ...m.parsed.manifest!.layers]) await dst.uploadBlob(d, await src.blob(d));
    await dst.putManifest(m.raw, m.parsed.mediaType);
  } finally {
    await src.close();
    await dst.close();
  }
}

before(async () => {
  const disk = process.env.NYDUS_VM_CACHE_DIR;
  assert.ok(disk && fs.existsSync('/dev/cachefiles'), `/dev/cachefiles or the ext4 cache disk is missing: ${NOT_IN_VM}`);
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-image-'));
  runDir = path.join(work, 'run');
  sock = path.join(runDir, 'api.sock');
  stateDir = path.join(work, 'state');
  cacheDir = fs.mkdtempSync(path.join(disk, 'cache-image-'));
  api = new DaemonApiClient(sock);
  // ≥ 8 MiB of incompressible data in several files, next to the real-rootfs slice: laziness
  // is measured against this
  payloadDir = path.join(work, 'payload');
  fs.mkdirSync(payloadDir);
  const sizes = [60_000, 250_000, ...Array.from({ length: 7 }, (_, i) => 1_250_000 + i * 65_537)];
  sizes.forEach((n, i) => fs.writeFileSync(path.join(payloadDir, `f${String(i).padStart(2, '0')}.bin`), crypto.randomBytes(n)));
  const t0 = performance.now();
  anon = await startRegistry();
  seeded = await seedImage(anon, 'library/app', 'v1', { rootfsPaths: [...ROOTFS, payloadDir], bigLayerBytes: 600_000 });
  say(`registry up, image seeded (${seeded.layers.length} layers): ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  converted = await convertImage(anon, seeded.reference, anon.ref('nydus/app', 'v1'));
  const t1 = performance.now();
  want = (await snapshotTree(await overlayOf(seeded, 'anon'))) as Map<string, unknown>;
  say(`source overlay snapshot: ${want.size} entries, ${((performance.now() - t1) / 1000).toFixed(1)} s`);
});

after(async () => {
  for (const m of [...mounted].reverse()) await run('umount', [m]);
  for (const m of overlays) await run('umount', [m]);
  // the daemon `mount --image` started: stop its supervisor (it stops the serving child)
  const info = (await api?.daemonInfo().catch(() => undefined)) as { supervisor_pid?: number | null; pid?: number } | undefined;
  const pid = info?.supervisor_pid ?? info?.pid;
  if (pid) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // gone already
    }
    for (let i = 0; i < 100 && (await api!.isAlive()); i++) await new Promise((r) => setTimeout(r, 50));
  }
  api?.close();
  await anon?.stop();
  await basicReg?.stop();
  if (process.env.NYDUS_TS_KERNEL_VERBOSE) process.stderr.write(daemonLogTail());
});

test('mount --image (anonymous, --insecure): one command starts the daemon and mounts; lazy first reads; the whole tree equals the source; umount', async () => {
  const ref = anon!.ref('nydus/app', 'v1');
  const { mnt, json, ms, stderr } = await mountImage(ref, 'app');
  say(`mount --image ${ref}: ${ms.toFixed(0)} ms wall, ${JSON.stringify(json.timings_ms)}`);
  assert.match(stderr, new RegExp(`mounted ${ref.replace(/[.]/g, '\\.')} \\(sha256:[0-9a-f]{64}\\) on ${mnt} in \\d+\\.\\d\\d s: fsid [0-9a-f]{64}, \\d+ blobs`));
  assert.ok(await isMounted(mnt), `${mnt} is not a mount point`);
  assert.equal(json.reference, ref);
  assert.equal(json.manifest_digest, converted.target_manifest_digest);
  assert.equal(json.fsid, converted.target_manifest_digest.slice(7), 'the default fsid is the manifest digest');
  assert.deepEqual(json.blob_ids, converted.blobs.map((b) => b.blob_id));
  assert.equal(json.daemon_started, true, 'no daemon ran: mount --image starts one');
  assert.equal(json.registration, 'legacy');
  assert.deepEqual({ scheme: json.backend.scheme, host: json.backend.host, repo: json.backend.repo, auth: json.backend.auth }, { scheme: 'http', host: anon!.host, repo: 'nydus/app', auth: 'none' });
  assert.ok(fs.existsSync(json.bootstrap.path) && json.bootstrap.path.startsWith(path.join(stateDir, 'bootstraps', 'sha256') + '/'));
  const state = JSON.parse(fs.readFileSync(path.join(runDir, 'mounts.json'), 'utf8')) as Record<string, { fsid: string; image?: string }>;
  assert.equal(state[mnt]?.fsid, json.fsid);
  assert.equal(state[mnt]?.image, ref);

  // laziness: nothing of the blobs was fetched to mount
  const ids = json.blob_ids;
  const totalCompressed = json.blobs.reduce((n, b) => n + b.size, 0);
  assert.ok(totalCompressed >= 8 << 20, `the image's blobs hold ${totalCompressed} bytes; the laziness check needs ≥ 8 MiB`);
  // the daemon loads each blob's chunk index (a few KiB) when the kernel opens it, no chunk
  const atMount = await blobMetrics(ids);
  assert.equal(sum(atMount, 'chunks_fetched'), 0, 'blob data was fetched before any read');
  for (const b of atMount) assert.ok(b.backend_requests <= 1 && b.backend_bytes <= 64 << 10, `blob ${b.blob_id}: more than its chunk index was fetched to mount: ${JSON.stringify(b)}`);

  // the first byte of the first file: at most two backend round trips (ci array + the chunks)
  const first = path.join(mnt, 'etc/nydus-layer2.txt');
  const tOpen = performance.now();
  const fh = await fs.promises.open(first, 'r');
  const one = Buffer.alloc(1);
  const { bytesRead } = await fh.read(one, 0, 1, 0);
  const ttfb = performance.now() - tOpen;
  await fh.close();
  assert.equal(bytesRead, 1);
  const afterFirst = await blobMetrics(ids);
  const touched = afterFirst.filter((b) => b.chunks_fetched > 0);
  say(`first byte of /etc/nydus-layer2.txt after ${ttfb.toFixed(1)} ms; backend: ${JSON.stringify(touched.map((b) => ({ blob: b.blob_id.slice(0, 12), requests: b.backend_requests, bytes: b.backend_bytes })))}`);
  assert.equal(touched.length, 1, `one blob holds the file; touched: ${JSON.stringify(touched)}`);
  assert.ok(touched[0].backend_requests <= 2, `the first read took ${touched[0].backend_requests} backend requests`);
  assert.equal(one.toString(), 'w');

  // a few files, a few % of the data
  const files = ['etc/nydus-layer2.txt', 'usr/share/zoneinfo/Europe/Berlin', 'usr/share/zoneinfo/Pacific/Auckland', 'usr/share/doc/tar/copyright', `${payloadDir.slice(1)}/f01.bin`];
  let readBytes = 0;
  for (const f of files) {
    const got = await fs.promises.readFile(path.join(mnt, f));
    const exp = await fs.promises.readFile(path.join(work, 'anon-overlay', f));
    assert.ok(got.equals(exp), `${f}: bytes differ`);
    readBytes += got.length;
  }
  const afterFew = await blobMetrics(ids);
  const fetched = sum(afterFew, 'backend_bytes');
  const requests = sum(afterFew, 'backend_requests');
  say(`read ${files.length} files (${readBytes} bytes): fetched ${fetched} of ${totalCompressed} blob bytes (${((100 * fetched) / totalCompressed).toFixed(1)} %) in ${requests} requests`);
  assert.ok(readBytes < totalCompressed * 0.05, `the file set (${readBytes} bytes) must be a few % of the data`);
  assert.ok(fetched < totalCompressed * 0.25, `fetched ${fetched} of ${totalCompressed} blob bytes for ${readBytes} bytes read`);
  assert.ok(requests <= 2 * files.length + ids.length, `${requests} backend requests for ${files.length} files`);

  // everything, compared with the overlay of the source layers
  const t0 = performance.now();
  const got = await snapshotTree(mnt);
  const diffs = diffTrees(want as Awaited<ReturnType<typeof snapshotTree>>, got, { ignore: ['nlink', 'rootMeta'] });
  say(`whole tree: ${got.size} entries compared in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  assert.deepEqual(diffs.slice(0, 20), [], `${diffs.length} differences`);
  const all = await blobMetrics(ids);
  assert.ok(all.every((b) => b.digest_failures === 0 && b.chunks_verified > 0), JSON.stringify(all));
  assert.ok(sum(all, 'backend_bytes') <= totalCompressed * 1.01, `fetched ${sum(all, 'backend_bytes')} bytes, more than the blobs hold (${totalCompressed})`);

  await umountImage(mnt);
  assert.equal(await isMounted(mnt), false);
  const m = (await api!.metrics()) as { images: Array<{ id: string }> };
  assert.ok(!m.images.some((i) => i.id === json.fsid), 'umount unregistered the image');
  assert.ok(!(JSON.parse(fs.readFileSync(path.join(runDir, 'mounts.json'), 'utf8')) as Record<string, unknown>)[mnt]);
});

test('mount --image with Basic auth from DOCKER_CONFIG (config_v2 registration): the running daemon gets the credentials in the registration', async () => {
  basicReg = await startRegistry({ auth: 'basic' });
  const reg = basicReg;
  const ref = reg.ref('team/app', 'v1');
  await reg.logOnFailure(() => copyImage(anon!.ref('nydus/app', 'v1'), ref, reg.creds!.basic));
  const dockerConfig = path.join(work, 'docker-config');
  fs.mkdirSync(dockerConfig);
  fs.writeFileSync(path.join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth: reg.creds!.basic } } }));

  // another fsid than the anonymous mount's (same manifest): nothing comes from that cache;
  // the config_v2 registration body this time (the first mount sent the snapshotter's legacy one)
  const { mnt, json, ms } = await mountImage(ref, 'basic', ['--fsid', 'basic-image', '--registration', 'v2'], { DOCKER_CONFIG: dockerConfig });
  say(`mount --image ${ref} (Basic): ${ms.toFixed(0)} ms wall, ${JSON.stringify(json.timings_ms)}`);
  assert.equal(json.daemon_started, false, 'the daemon from the first test serves this mount too');
  assert.equal(json.registration, 'v2');
  assert.deepEqual({ auth: json.backend.auth, credentials: json.backend.credentials, host: json.backend.host }, { auth: 'basic', credentials: 'docker-config', host: reg.host });
  assert.equal(json.manifest_digest, converted.target_manifest_digest);
  const t0 = performance.now();
  const diffs = diffTrees(want as Awaited<ReturnType<typeof snapshotTree>>, await snapshotTree(mnt), { ignore: ['nlink', 'rootMeta'] });
  say(`whole tree (Basic): compared in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  assert.deepEqual(diffs.slice(0, 20), [], `${diffs.length} differences`);
  const metrics = await blobMetrics(json.blob_ids);
  assert.ok(metrics.length > 0 && metrics.every((b) => b.digest_failures === 0), JSON.stringify(metrics));
  // the daemon's blob reads went to this registry, authenticated (htpasswd: no 401 → 206)
  const gets = reg.log().split('\n').filter((l) => l.includes(`"GET /v2/team/app/blobs/sha256:${json.blob_ids[0]} `));
  assert.ok(gets.some((l) => /" 206 /.test(l)), `no authenticated range GET of blob ${json.blob_ids[0]} in the registry log:\n${gets.join('\n')}`);
  // (unmounted by the after hook: `nydus-ts umount` is covered above, and each CLI start costs seconds here)
});

test('a blob the registry answers 404 for: EIO on its files only; the daemon serves the other files and stays up', async () => {
  // the converted image under another name, whose repository then loses the blob of layer 3
  // (only /opt/big.bin): distribution answers 404 BLOB_UNKNOWN for it from then on
  const from = anon!.ref('nydus/app', 'v1');
  const src = new RegistryClient(from);
  const m = await src.getManifest();
  await src.close();
  const dst = new RegistryClient(anon!.ref('nydus/broken', 'v1'), { push: true });
  for (const d of [m.parsed.manifest!.config, ...m.parsed.manifest!.layers]) assert.equal(await dst.mountBlob(d.digest, 'nydus/app'), true);
  await dst.putManifest(m.raw, MediaTypes.ociManifest, 'v1');
  const victim = converted.layers[2].blob_id;
  assert.ok(victim, `layer 3 has a blob: ${JSON.stringify(converted.layers)}`);
  const del = await dst.call('DELETE', dst.url('blobs', `sha256:${victim}`), { ok: [202], what: 'DELETE blob' });
  assert.equal(del.status, 202);
  assert.equal(await dst.headBlob(`sha256:${victim}`), undefined);
  await dst.close();

  // a fresh fsid: the blobs are not in the cache under this volume
  const { mnt, json } = await mountImage(anon!.ref('nydus/broken', 'v1'), 'broken', ['--fsid', 'broken-image']);
  assert.equal(json.fsid, 'broken-image');
  await assert.rejects(fs.promises.readFile(path.join(mnt, 'opt/big.bin')), (e: NodeJS.ErrnoException) => e.code === 'EIO');
  for (const f of ['etc/nydus-layer2.txt', `${payloadDir.slice(1)}/f05.bin`, 'usr/share/zoneinfo/Europe/Berlin']) {
    const got = await fs.promises.readFile(path.join(mnt, f));
    assert.ok(got.equals(await fs.promises.readFile(path.join(work, 'anon-overlay', f))), `${f}: bytes differ`);
  }
  // still EIO on a retry (no wrong bytes, no hang), and the daemon is up
  await assert.rejects(fs.promises.readFile(path.join(mnt, 'opt/big.bin')), (e: NodeJS.ErrnoException) => e.code === 'EIO');
  assert.equal((await api!.daemonInfo()).state, 'RUNNING');
  assert.match(fs.readFileSync(path.join(runDir, 'daemon.log'), 'utf8'), new RegExp(`${victim}[^\n]*404`));
  // (unmounted by the after hook: `nydus-ts umount` is covered above, and each CLI start costs seconds here)
});
