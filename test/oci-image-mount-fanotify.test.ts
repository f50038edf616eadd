/**
 * `nydus-ts mount --image REF MNT` on this host (no VM), served by the fanotify pre-content
 * front end (file-backed EROFS): the host port of kernel-tests/image.test.ts. A REAL
 * docker-registry on loopback (anonymous, and htpasswd Basic auth through DOCKER_CONFIG) holds a
 * multi-layer OCI image seeded with skopeo and converted with the library `nydus-ts convert` runs.
 *
 * - one `mount --image --insecure` starts the daemon (`--frontend auto` picks fanotify here) and
 *   mounts; nothing of the blobs is fetched to mount, the first read takes ≤ 2 round trips, a few
 *   files cost a small fraction of the blob bytes (`status --json` metrics and the bytes the
 *   registry logged); the whole tree equals an overlayfs mount of the source layers; umount;
 * - Basic auth from DOCKER_CONFIG with a config_v2 registration: the daemon (whose own
 *   DOCKER_CONFIG is empty) reads the blobs from that registry with the registration's creds;
 * - a blob the registry answers 404 for: EIO on its file only, every other file is served,
 *   the daemon stays up.
 *
 * fanotify caches blobs per blob id for the whole cache dir (fscache: per fsid volume), so
 * between cases the tests delete the (released) cache files to start cold again.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { startRegistry, seedImage, skopeo, TestRegistry, SeededImage } from './helpers/registry';
import { snapshotTree, diffTrees, EntrySnapshot } from './helpers/tree-compare';
import { Mounts, cli, sh } from './helpers/mount';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { overlayOfImage } from './helpers/oci-overlay';
import { waitUntil } from './conformance/daemon-suite';
import { DaemonApiClient } from '../src/daemon/api-client';
import type { BlobMetrics } from '../src/daemon/interfaces';
import { RegistryClient } from '../src/oci/registry-client';
import { MediaTypes } from '../src/oci/types';
import { convert, ConvertSummary } from '../src/oci/convert';
import { openSink, openSource } from '../src/oci/open';
import { fsTypeOf } from '../src/kernel/fanotify-group';

/** The VM test's real-rootfs slice (whiteouts of Arctic and CET, bash an opaque dir, os-release a symlink → file). */
const ROOTFS = ['/usr/share/zoneinfo/Europe', '/usr/share/zoneinfo/Pacific', '/usr/share/zoneinfo/Arctic', '/usr/share/zoneinfo/CET', '/usr/lib/os-release', '/etc/os-release', '/usr/share/doc/bash', '/usr/share/doc/tar'];

let work: string, runDir: string, sock: string, cacheDir: string, stateDir: string, payloadDir: string, source: string;
let anon: TestRegistry | undefined, basicReg: TestRegistry | undefined, api: DaemonApiClient | undefined;
let seeded: SeededImage;
let converted: ConvertSummary;
let want: Map<string, EntrySnapshot>;
const overlays = new Mounts();
const mounted: string[] = [];

/** what `mount --image -J` writes (the fields checked here) */
interface MountJson {
  reference: string; manifest_digest: string; frontend: string; fsid: string; registration: string; daemon_started: boolean;
  blob_ids: string[]; blobs: Array<{ id: string; size: number }>; bootstrap: { path: string }; timings_ms: Record<string, number>;
  backend: { scheme: string; host: string; repo: string; auth: string; credentials: string };
}

const say = (msg: string): void => void process.stderr.write(`image-fanotify [${process.uptime().toFixed(1)} s]: ${msg}\n`);

const daemonLog = (): string => (fs.existsSync(path.join(runDir, 'daemon.log')) ? fs.readFileSync(path.join(runDir, 'daemon.log'), 'utf8') : '');
const daemonLogTail = (): string => `\n--- daemon log tail ---\n${daemonLog().split('\n').slice(-30).join('\n')}`;

/** The CLI with our run dir (process.env, set in before) and, for one call, another DOCKER_CONFIG. */
function nydus(args: string[], dockerConfig?: string): { stdout: string; stderr: string } {
  const saved = process.env.DOCKER_CONFIG;
  if (dockerConfig) process.env.DOCKER_CONFIG = dockerConfig;
  try {
    const r = cli(args);
    if (r.status !== 0) throw new Error(`nydus-ts ${args.join(' ')} exited ${r.status}:\n${r.stderr}${r.stdout}${daemonLogTail()}`);
    return r;
  } finally {
    process.env.DOCKER_CONFIG = saved;
  }
}

function mountImage(ref: string, name: string, extra: string[] = [], dockerConfig?: string): { mnt: string; json: MountJson; stderr: string } {
  const mnt = path.join(work, 'mnt', name);
  const jsonFile = path.join(work, `${name}.mount.json`);
  const r = nydus(['mount', '--image', ref, '--insecure', '--apisock', sock, '--cache-dir', cacheDir, '--work-dir', stateDir, '-J', jsonFile, ...extra, mnt], dockerConfig);
  mounted.push(mnt);
  return { mnt, json: JSON.parse(fs.readFileSync(jsonFile, 'utf8')) as MountJson, stderr: r.stderr };
}

function umountImage(mnt: string): void {
  nydus(['umount', mnt]);
  mounted.splice(mounted.indexOf(mnt), 1);
}

function mountsTable(): Record<string, { fsid: string; frontend?: string; image?: string }> {
  return JSON.parse(fs.readFileSync(path.join(runDir, 'mounts.json'), 'utf8'));
}

/** Mount points (with fs type) at or under `dir`, from /proc/self/mounts. */
function mountsUnder(dir: string): Array<{ mnt: string; type: string }> {
  return fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').filter(Boolean).map((l) => l.split(' '))
    .map((f) => ({ mnt: f[1].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))), type: f[2] }))
    .filter((m) => m.mnt === dir || m.mnt.startsWith(dir + '/'));
}

/** `nydus-ts status --json`: the daemon info and the metrics of these blobs. */
function status(ids: string[] = []): { daemon: any; metrics: any; blobs: BlobMetrics[] } {
  const s = JSON.parse(nydus(['status', '-A', sock, '--json']).stdout);
  return { ...s, blobs: s.metrics.blobs.filter((b: BlobMetrics) => ids.includes(b.blob_id)) };
}

const sum = (xs: BlobMetrics[], k: 'backend_bytes' | 'backend_requests' | 'chunks_fetched'): number => xs.reduce((n, b) => n + b[k], 0);

/** Blob GETs of `repo` the registry logged (access log: `"GET /v2/REPO/blobs/sha256:ID HTTP/1.1" STATUS BYTES`). */
function registryBlobGets(reg: TestRegistry, repo: string, ids: string[]): { requests: number; bytes: number; statuses: number[] } {
  const re = new RegExp(`"GET /v2/${repo}/blobs/sha256:(${ids.join('|')}) HTTP/[\\d.]+" (\\d{3}) (\\d+)`);
  const hits = reg.log().split('\n').map((l) => re.exec(l)).filter((m): m is RegExpExecArray => !!m);
  return { requests: hits.length, bytes: hits.reduce((n, m) => n + Number(m[3]), 0), statuses: hits.map((m) => Number(m[2])) };
}

/**
 * Unmount what an earlier (maybe failed) case left, then delete the cache files of these blobs:
 * released by the daemon once no mount uses them, and fetched again by the next mount.
 */
function coldCache(ids: string[]): void {
  for (const m of [...mounted].reverse()) umountImage(m);
  for (const id of ids) for (const d of ['blobs', 'presence']) fs.rmSync(path.join(cacheDir, d, id), { force: true });
}

async function sameTree(mnt: string, what: string): Promise<void> {
  const t0 = performance.now();
  const got = await snapshotTree(mnt);
  const diffs = diffTrees(want, got, { ignore: ['nlink', 'rootMeta'] });
  say(`${what}: ${got.size} entries compared in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  assert.deepEqual(diffs.slice(0, 20), [], `${what}: ${diffs.length} differences`);
}

async function sameBytes(mnt: string, rel: string): Promise<number> {
  const got = await fs.promises.readFile(path.join(mnt, rel));
  assert.ok(got.equals(await fs.promises.readFile(path.join(source, rel))), `${rel}: bytes differ from the source`);
  return got.length;
}

before(async () => {
  // a test that cannot run fails, with the reason
  assert.equal(process.getuid?.(), 0, 'mounting EROFS and overlayfs needs root');
  const [maj, min] = os.release().split('.').map(Number);
  assert.ok(maj > 6 || (maj === 6 && min >= 14), `kernel ${os.release()} has no fanotify pre-content events (needs ≥ 6.14)`);
  assert.ok(!fs.existsSync('/dev/cachefiles'), '/dev/cachefiles exists: `--frontend auto` would pick fscache, and this test is about the fanotify front end (see kernel-tests/image.test.ts)');
  work = makeTmpDir('nydus-image-fanotify-');
  assert.ok(['ext4', 'xfs', 'btrfs'].includes(fsTypeOf(work)), `${work} is on ${fsTypeOf(work)}: the fanotify cache dir must be on ext4, xfs or btrfs (set NYDUS_TS_TMP)`);
  runDir = path.join(work, 'run');
  sock = path.join(runDir, 'api.sock');
  stateDir = path.join(work, 'state');
  cacheDir = path.join(work, 'cache');
  // mount state under the temp dir, and no Docker credentials for the daemon `mount` starts
  process.env.NYDUS_TS_RUN_DIR = runDir;
  process.env.DOCKER_CONFIG = path.join(work, 'docker-empty');
  fs.mkdirSync(process.env.DOCKER_CONFIG);
  api = new DaemonApiClient(sock);
  // ≥ 8 MiB of incompressible data in several files: laziness is measured against it
  payloadDir = path.join(work, 'payload');
  fs.mkdirSync(payloadDir);
  const sizes = [60_000, 250_000, ...Array.from({ length: 7 }, (_, i) => 1_250_000 + i * 65_537)];
  sizes.forEach((n, i) => fs.writeFileSync(path.join(payloadDir, `f${String(i).padStart(2, '0')}.bin`), crypto.randomBytes(n)));
  anon = await startRegistry();
  seeded = await seedImage(anon, 'library/app', 'v1', { rootfsPaths: [...ROOTFS, payloadDir], bigLayerBytes: 600_000 });
  converted = await anon.logOnFailure(() => convert(openSource(seeded.reference), openSink(anon!.ref('nydus/app', 'v1')), { workDir: path.join(work, 'convert') }));
  source = await overlayOfImage(seeded, path.join(work, 'source'), overlays);
  want = await snapshotTree(source);
  say(`image seeded (${seeded.layers.length} layers), converted (${converted.blobs.length} blobs), source overlay: ${want.size} entries`);
});

after(async () => {
  const problems: string[] = [];
  for (const m of [...mounted].reverse()) {
    try {
      umountImage(m);
    } catch (e) {
      problems.push(`nydus-ts umount ${m}: ${(e as Error).message.split('\n')[0]}`);
      try {
        sh('umount', [m]);
      } catch {
        // reported below if it stays
      }
    }
  }
  // stop the daemon `mount --image` started: SIGTERM its supervisor, which stops the serving child
  const info = (await api?.daemonInfo().catch(() => undefined)) as { pid?: number; supervisor_pid?: number | null } | undefined;
  if (info) {
    const pids = [info.supervisor_pid, info.pid].filter((p): p is number => typeof p === 'number' && p > 0);
    const alive = (pid: number): boolean => {
      try {
        return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
      } catch {
        return false;
      }
    };
    const kill = (pid: number, sig: NodeJS.Signals): void => void (alive(pid) && process.kill(pid, sig));
    kill(pids[0], 'SIGTERM');
    await waitUntil('the daemon to exit after SIGTERM', () => !pids.some(alive), 20_000).catch((e) => {
      problems.push(`${(e as Error).message}${daemonLogTail()}`);
      for (const p of pids) kill(p, 'SIGKILL');
    });
  }
  api?.close();
  overlays.cleanup();
  const left = work ? mountsUnder(work) : [];
  for (const m of left.reverse()) {
    problems.push(`left mounted: ${m.mnt} (${m.type})`);
    try {
      sh('umount', [m.mnt]);
    } catch {
      // reported
    }
  }
  await anon?.stop();
  await basicReg?.stop();
  if (work && mountsUnder(work).length === 0 && !process.env.NYDUS_TS_KEEP_TMP) removeTmpDir(work);
  assert.deepEqual(problems, [], 'cleanup');
});

test('mount --image (anonymous, --insecure): one command starts the daemon (fanotify) and mounts; lazy first reads; the whole tree equals the source; umount', async () => {
  const ref = anon!.ref('nydus/app', 'v1');
  const { mnt, json, stderr } = mountImage(ref, 'app');
  say(`mount --image ${ref}: ${JSON.stringify(json.timings_ms)}`);
  assert.match(stderr, new RegExp(`mounted ${ref.replace(/[.]/g, '\\.')} \\(sha256:[0-9a-f]{64}\\) on ${mnt} in \\d+\\.\\d\\d s: fsid [0-9a-f]{64}, \\d+ blobs`));
  assert.deepEqual(mountsUnder(mnt), [{ mnt, type: 'erofs' }], 'an EROFS mount on the mount point');
  assert.equal(json.frontend, 'fanotify');
  assert.equal(json.daemon_started, true, 'no daemon ran: mount --image starts one');
  assert.equal(json.reference, ref);
  assert.equal(json.manifest_digest, converted.target_manifest_digest);
  assert.equal(json.fsid, converted.target_manifest_digest.slice(7), 'the default fsid is the manifest digest');
  assert.deepEqual(json.blob_ids, converted.blobs.map((b) => b.blob_id));
  assert.equal(json.registration, 'legacy');
  assert.deepEqual({ scheme: json.backend.scheme, host: json.backend.host, repo: json.backend.repo, auth: json.backend.auth }, { scheme: 'http', host: anon!.host, repo: 'nydus/app', auth: 'none' });
  assert.ok(fs.existsSync(json.bootstrap.path) && json.bootstrap.path.startsWith(path.join(stateDir, 'bootstraps', 'sha256') + '/'));
  assert.deepEqual(mountsTable()[mnt], { ...mountsTable()[mnt], fsid: json.fsid, frontend: 'fanotify', image: ref });

  const ids = json.blob_ids;
  const total = json.blobs.reduce((n, b) => n + b.size, 0);
  assert.ok(total >= 8 << 20, `the image's blobs hold ${total} bytes; the laziness check needs ≥ 8 MiB`);
  const s0 = status(ids);
  assert.equal(s0.daemon.frontend, 'fanotify');
  assert.equal(s0.daemon.state, 'RUNNING');
  assert.ok(s0.daemon.supervisor_pid > 0 && s0.daemon.pid !== s0.daemon.supervisor_pid, JSON.stringify(s0.daemon));
  assert.ok(s0.metrics.mounts.some((m: { mountpoint: string }) => m.mountpoint === mnt), 'the daemon made the mount');
  // laziness: mounting opened the blobs and loaded their chunk indexes (a few KiB), no chunk
  assert.equal(sum(s0.blobs, 'chunks_fetched'), 0, 'blob data was fetched before any read');
  for (const b of s0.blobs) assert.ok(b.backend_requests <= 1 && b.backend_bytes <= 64 << 10, `blob ${b.blob_id}: more than its chunk index was fetched to mount: ${JSON.stringify(b)}`);
  assert.ok(registryBlobGets(anon!, 'nydus/app', ids).bytes <= ids.length * (64 << 10), 'the registry sent more than chunk indexes to mount');

  // the first byte of the first file: at most two backend round trips (ci array + the chunks)
  const fh = await fs.promises.open(path.join(mnt, 'etc/nydus-layer2.txt'), 'r');
  const one = Buffer.alloc(1);
  const t0 = performance.now();
  assert.equal((await fh.read(one, 0, 1, 0)).bytesRead, 1);
  const ttfb = performance.now() - t0;
  await fh.close();
  assert.equal(one.toString(), 'w');
  const touched = status(ids).blobs.filter((b) => b.chunks_fetched > 0);
  say(`first byte after ${ttfb.toFixed(1)} ms; backend: ${JSON.stringify(touched.map((b) => ({ blob: b.blob_id.slice(0, 12), requests: b.backend_requests, bytes: b.backend_bytes })))}`);
  assert.equal(touched.length, 1, `one blob holds the file; touched: ${JSON.stringify(touched)}`);
  assert.ok(touched[0].backend_requests <= 2, `the first read took ${touched[0].backend_requests} backend requests`);

  // a few files, a few % of the data: the daemon's count and the registry's agree
  const files = ['etc/nydus-layer2.txt', 'usr/share/zoneinfo/Europe/Berlin', 'usr/share/zoneinfo/Pacific/Auckland', 'usr/share/doc/tar/copyright', `${payloadDir.slice(1)}/f01.bin`];
  let readBytes = 0;
  for (const f of files) readBytes += await sameBytes(mnt, f);
  const few = status(ids).blobs;
  const fetched = sum(few, 'backend_bytes');
  const requests = sum(few, 'backend_requests');
  const served = registryBlobGets(anon!, 'nydus/app', ids);
  say(`read ${files.length} files (${readBytes} bytes): fetched ${fetched} of ${total} blob bytes (${((100 * fetched) / total).toFixed(1)} %) in ${requests} requests; the registry sent ${served.bytes} bytes in ${served.requests} blob GETs`);
  assert.ok(readBytes < total * 0.05, `the file set (${readBytes} bytes) must be a few % of the data`);
  assert.ok(fetched > 0 && fetched < total * 0.25, `fetched ${fetched} of ${total} blob bytes for ${readBytes} bytes read`);
  assert.ok(served.bytes >= fetched && served.bytes < total * 0.25, `the registry sent ${served.bytes} blob bytes (daemon: ${fetched}) of ${total}`);
  assert.ok(requests <= 2 * files.length + ids.length, `${requests} backend requests for ${files.length} files`);
  assert.ok(served.statuses.every((c) => c === 206 || c === 200), `blob GET statuses: ${served.statuses}`);

  // everything, compared with the overlay of the source layers
  await sameTree(mnt, 'whole tree');
  const all = status(ids).blobs;
  assert.ok(all.every((b) => b.digest_failures === 0 && b.chunks_verified > 0), JSON.stringify(all));
  assert.ok(sum(all, 'backend_bytes') <= total * 1.01, `fetched ${sum(all, 'backend_bytes')} bytes, more than the blobs hold (${total})`);

  umountImage(mnt);
  assert.deepEqual(mountsUnder(mnt), []);
  const after1 = status();
  assert.ok(!after1.metrics.images.some((i: { id: string }) => i.id === json.fsid), 'umount unregistered the image');
  assert.ok(!after1.metrics.mounts.some((m: { mountpoint: string }) => m.mountpoint === mnt), 'the daemon forgot the mount');
  assert.equal(mountsTable()[mnt], undefined);
});

test('mount --image with Basic auth from DOCKER_CONFIG (config_v2 registration): the running daemon gets the credentials in the registration', async () => {
  basicReg = await startRegistry({ auth: 'basic' });
  const reg = basicReg;
  const ref = reg.ref('team/app', 'v1');
  await reg.logOnFailure(() => skopeo(['copy', '--preserve-digests', '--src-tls-verify=false', '--dest-tls-verify=false', '--dest-creds', reg.creds!.skopeo, `docker://${anon!.ref('nydus/app', 'v1')}`, `docker://${ref}`]));
  const dockerConfig = path.join(work, 'docker-config');
  fs.mkdirSync(dockerConfig);
  fs.writeFileSync(path.join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth: reg.creds!.basic } } }));
  const ids = converted.blobs.map((b) => b.blob_id);
  coldCache(ids); // the blobs are cached from the anonymous mount: this one must fetch them here
  const anonGets = registryBlobGets(anon!, 'nydus/app', ids).requests;

  const { mnt, json } = mountImage(ref, 'basic', ['--fsid', 'basic-image', '--registration', 'v2'], dockerConfig);
  say(`mount --image ${ref} (Basic): ${JSON.stringify(json.timings_ms)}`);
  assert.equal(json.daemon_started, false, 'the daemon from the first test serves this mount too');
  assert.equal(json.frontend, 'fanotify');
  assert.equal(json.registration, 'v2');
  assert.deepEqual({ auth: json.backend.auth, credentials: json.backend.credentials, host: json.backend.host }, { auth: 'basic', credentials: 'docker-config', host: reg.host });
  assert.equal(json.manifest_digest, converted.target_manifest_digest);
  await sameTree(mnt, 'whole tree (Basic)');
  const metrics = status(ids).blobs;
  assert.ok(metrics.length === ids.length && metrics.every((b) => b.digest_failures === 0 && b.backend_bytes > 0), JSON.stringify(metrics));
  // the daemon (its own DOCKER_CONFIG is empty) read every blob from this registry, authenticated
  const gets = registryBlobGets(reg, 'team/app', ids);
  assert.ok(gets.statuses.includes(206), `no authenticated range GET of the blobs in the registry log: ${gets.statuses}`);
  assert.ok(gets.bytes >= sum(metrics, 'backend_bytes'), `the Basic registry sent ${gets.bytes} bytes, the daemon counted ${sum(metrics, 'backend_bytes')}`);
  assert.equal(registryBlobGets(anon!, 'nydus/app', ids).requests, anonGets, 'blob reads went to the anonymous registry');
  umountImage(mnt);
});

test('a blob the registry answers 404 for: EIO on its files only; the daemon serves the other files and stays up', async () => {
  // the converted image under another name, whose repository then loses the blob of layer 3
  // (only /opt/big.bin): distribution answers 404 BLOB_UNKNOWN for it from then on
  const src = new RegistryClient(anon!.ref('nydus/app', 'v1'));
  const m = await src.getManifest();
  await src.close();
  const dst = new RegistryClient(anon!.ref('nydus/broken', 'v1'), { push: true });
  for (const d of [m.parsed.manifest!.config, ...m.parsed.manifest!.layers]) assert.equal(await dst.mountBlob(d.digest, 'nydus/app'), true);
  await dst.putManifest(m.raw, MediaTypes.ociManifest, 'v1');
  const victim = converted.layers[2].blob_id;
  assert.ok(victim, `layer 3 has a blob: ${JSON.stringify(converted.layers)}`);
  assert.equal((await dst.call('DELETE', dst.url('blobs', `sha256:${victim}`), { ok: [202], what: 'DELETE blob' })).status, 202);
  assert.equal(await dst.headBlob(`sha256:${victim}`), undefined);
  await dst.close();
  const ids = converted.blobs.map((b) => b.blob_id);
  coldCache(ids);

  const { mnt, json } = mountImage(anon!.ref('nydus/broken', 'v1'), 'broken', ['--fsid', 'broken-image']);
  assert.equal(json.fsid, 'broken-image');
  const t0 = performance.now();
  await assert.rejects(fs.promises.readFile(path.join(mnt, 'opt/big.bin')), (e: NodeJS.ErrnoException) => e.code === 'EIO');
  say(`EIO on opt/big.bin after ${(performance.now() - t0).toFixed(0)} ms`);
  for (const f of ['etc/nydus-layer2.txt', `${payloadDir.slice(1)}/f05.bin`, 'usr/share/zoneinfo/Europe/Berlin', 'usr/share/doc/tar/copyright']) await sameBytes(mnt, f);
  // still EIO on a retry (no zeros, no hang), and the daemon is up
  await assert.rejects(fs.promises.readFile(path.join(mnt, 'opt/big.bin')), (e: NodeJS.ErrnoException) => e.code === 'EIO');
  const s = status(ids);
  assert.equal(s.daemon.state, 'RUNNING');
  const v = s.blobs.find((b) => b.blob_id === victim);
  assert.ok(v && v.chunks_ready === 0 && v.digest_failures === 0, `the 404 blob: ${JSON.stringify(v)}`);
  const gets = registryBlobGets(anon!, 'nydus/broken', [victim!]);
  assert.ok(gets.statuses.length > 0 && gets.statuses.every((c) => c === 404), `GETs of the deleted blob: ${gets.statuses}`);
  assert.match(daemonLog(), new RegExp(`${victim}[^\n]*404`));
  // the other files were fetched from this repository, and the tree outside /opt/big.bin is whole
  assert.ok(registryBlobGets(anon!, 'nydus/broken', ids.filter((i) => i !== victim)).statuses.includes(206));
  umountImage(mnt);
});
