/**
 * Issue #4, nydusify half: `convert` (OCI image → nydus image, streamed layer by layer) and
 * `check-image`, against OCI layout directories and the REAL docker-registry.
 *
 * The converted image is judged by the kernel: its merged bootstrap and blobs are exported to a
 * plain EROFS image, loop-mounted, and compared entry by entry with a real overlayfs mount of
 * the source layers.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { compress as zstdCompress } from 'zstd-napi';
import { snapshotTree, diffTrees } from './helpers/tree-compare';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { cli, sh, Mounts, ociWhiteoutsToOverlay, dirMtimesFromTar } from './helpers/mount';
import { startRegistry, seedImage, skopeoInspect, TestRegistry } from './helpers/registry';
import { lsetxattr, mknod } from '../src/sys/native';
import { convert, checkConversion, ConvertProgress, ConvertSummary } from '../src/oci/convert';
import { validateNydusManifest, extractBootstrapLayer, readNydusManifest } from '../src/oci/nydus-image';
import { OciLayoutSource, OciLayoutSink, sha256Digest } from '../src/oci/layout';
import { parseImageRef, openSink } from '../src/oci/open';
import { RegistryImageSource } from '../src/oci/registry-client';
import { Descriptor, ImageConfig, ImageManifest, ImageSink, MediaTypes, NydusAnnotations } from '../src/oci/types';
import { exportImage } from '../src/tools/export';
import { checkImage } from '../src/tools/check';
import { readBootstrap } from '../src/format/bootstrap-reader';
import { NydusError } from '../src/errors';

let work: string;
const mounts = new Mounts();
let reg: TestRegistry | undefined;

before(() => {
  work = makeTmpDir('nydus-oci-convert-');
});
after(async () => {
  mounts.cleanup();
  await reg?.stop();
  if (!process.env.NYDUS_TS_KEEP_TMP) removeTmpDir(work);
});

// ---------------------------------------------------------------------------------------------
// a source image of our own: four layers (gzip, zstd, plain tar, gzip) in an OCI layout

type Spec = Record<string, string | Buffer | { dir: true } | { link: string } | { hardlink: string } | { opaque: true } | { chr: [number, number] } | { fifo: true } | { mode: number; data: string } | { xattr: [string, string]; data: string } | { owner: [number, number]; data: string }>;

function writeLayer(dir: string, spec: Spec): void {
  fs.mkdirSync(dir, { recursive: true });
  for (const [p, v] of Object.entries(spec)) {
    const full = path.join(dir, p);
    fs.mkdirSync(path.dirname(full), { recursive: true });
    if (typeof v === 'string' || Buffer.isBuffer(v)) fs.writeFileSync(full, v);
    else if ('dir' in v) fs.mkdirSync(full, { recursive: true });
    else if ('link' in v) fs.symlinkSync(v.link, full);
    else if ('hardlink' in v) fs.linkSync(path.join(dir, v.hardlink), full);
    else if ('opaque' in v) {
      fs.mkdirSync(full, { recursive: true });
      fs.writeFileSync(path.join(full, '.wh..wh..opq'), '');
    } else if ('chr' in v) mknod(full, 0o020000 | 0o640, v.chr[0], v.chr[1]);
    else if ('fifo' in v) mknod(full, 0o010000 | 0o600, 0, 0);
    else if ('mode' in v) {
      fs.writeFileSync(full, v.data);
      fs.chmodSync(full, v.mode);
    } else if ('xattr' in v) {
      fs.writeFileSync(full, v.data);
      lsetxattr(full, v.xattr[0], Buffer.from(v.xattr[1]));
    } else if ('owner' in v) {
      fs.writeFileSync(full, v.data);
      fs.chownSync(full, v.owner[0], v.owner[1]);
    }
  }
}

const TAR_FLAGS = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--format=pax', '--sort=name'];

/**
 * Extract an OCI layer tar as an overlayfs lower directory (char 0:0 whiteouts, opaque xattr).
 * Directory mtimes are then set from the archive's directory entries, as containerd's unpacker
 * does once all entries are in: GNU tar restores them as it leaves a directory, which is wrong
 * for archives that come back to a directory later (parents listed first, as real layers do).
 */
async function toOverlayLayer(tarFile: string, out: string): Promise<void> {
  fs.mkdirSync(out, { recursive: true });
  sh('tar', [...TAR_FLAGS, '-xpf', tarFile, '-C', out]);
  ociWhiteoutsToOverlay(out);
  await dirMtimesFromTar(tarFile, out);
}

const pseudo = (seed: number, n: number): Buffer => {
  const out = Buffer.alloc(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = 0x61 + ((x >>> 16) % 26);
  }
  return out;
};

interface SourceImage {
  dir: string;
  tag: string;
  tars: string[];
  manifest: ImageManifest;
  config: ImageConfig;
  manifestDigest: string;
}

type Compression = 'gzip' | 'zstd' | 'none';

function compressLayer(tar: Buffer, c: Compression): { data: Buffer; mediaType: string } {
  if (c === 'gzip') return { data: zlib.gzipSync(tar), mediaType: MediaTypes.ociLayerGzip };
  if (c === 'zstd') return { data: zstdCompress(tar), mediaType: MediaTypes.ociLayerZstd };
  return { data: tar, mediaType: MediaTypes.ociLayer };
}

async function buildSource(name: string, layers: Array<{ spec: Spec; compression: Compression }>, tag = 'v1'): Promise<SourceImage> {
  const dir = path.join(work, `${name}-oci`);
  const sink = new OciLayoutSink(dir);
  const tars: string[] = [];
  const descs: Descriptor[] = [];
  const diffIds: string[] = [];
  for (let i = 0; i < layers.length; i++) {
    const ld = path.join(work, `${name}-layer${i}`);
    writeLayer(ld, layers[i].spec);
    const tarFile = path.join(work, `${name}-layer${i}.tar`);
    sh('tar', [...TAR_FLAGS, '-cf', tarFile, '-C', ld, '.']);
    tars.push(tarFile);
    const tar = fs.readFileSync(tarFile);
    const { data, mediaType } = compressLayer(tar, layers[i].compression);
    const d: Descriptor = { mediaType, digest: sha256Digest(data), size: data.length };
    await sink.pushBlob(d, data);
    descs.push(d);
    diffIds.push(sha256Digest(tar));
  }
  const config: ImageConfig = {
    created: '2024-05-06T07:08:09Z', architecture: 'amd64', os: 'linux',
    config: { Env: ['PATH=/usr/bin:/bin'], Entrypoint: ['/usr/bin/tool'], Labels: { 'org.example': 'yes' } },
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: layers.map((_, i) => ({ created_by: `layer ${i}` })),
  };
  const cfgRaw = Buffer.from(JSON.stringify(config));
  const cfgDesc: Descriptor = { mediaType: MediaTypes.ociConfig, digest: sha256Digest(cfgRaw), size: cfgRaw.length };
  await sink.pushBlob(cfgDesc, cfgRaw);
  const manifest: ImageManifest = { schemaVersion: 2, mediaType: MediaTypes.ociManifest, config: cfgDesc, layers: descs };
  const raw = Buffer.from(JSON.stringify(manifest));
  const manifestDigest = await sink.pushManifest(raw, MediaTypes.ociManifest, tag);
  return { dir, tag, tars, manifest, config, manifestDigest };
}

const BASE_LAYERS: Array<{ spec: Spec; compression: Compression }> = [
  {
    compression: 'gzip',
    spec: {
      'etc/passwd': 'root:x:0:0\n', 'etc/hosts': '127.0.0.1 localhost\n', 'usr/bin/tool': pseudo(1, 300_000),
      'usr/bin/tool-hard': { hardlink: 'usr/bin/tool' }, 'usr/bin/suid': { mode: 0o4755, data: '#!/bin/sh\n' },
      'var/cache/a': 'a', 'var/cache/b': 'b', 'opt/keep/x': 'x', 'opt/gone/y': 'y', 'lib/link': { link: '../usr/bin/tool' },
      'home/user/.profile': { owner: [1000, 1000], data: 'p' }, 'data/big': pseudo(2, 2_500_000),
      'data/zeros': Buffer.alloc(1 << 20), 'dev/null': { chr: [1, 3] }, 'run/fifo': { fifo: true },
      'etc/xattr-file': { xattr: ['user.nydus.test', 'hello'], data: 'has an xattr' },
    },
  },
  {
    compression: 'zstd',
    spec: {
      'etc/.wh.hosts': '', 'etc/passwd': 'root:x:0:0\nuser:x:1000:1000\n', 'var/cache': { opaque: true },
      'var/cache/c': 'c', 'opt/.wh.gone': '', 'lib/.wh.link': '', 'lib/link2': { link: 'x' }, 'new/dir/file': 'n',
      'usr/bin/.wh.tool-hard': '', 'data/copy-of-tool': pseudo(1, 300_000),
    },
  },
  {
    compression: 'none',
    spec: {
      'var/.wh.cache': '', 'opt/keep': { opaque: true }, 'opt/keep/z': 'z', 'etc/hosts': 'back\n',
      'home/user/.profile': 'p2', 'new/.wh.dir': '', 'data/big': pseudo(3, 1_100_000),
    },
  },
  {
    // adds no file data: whiteouts and a directory only -> no blob
    compression: 'gzip',
    spec: { 'data/.wh.zeros': '', 'emptydir': { dir: true } },
  },
];

/** Overlay-mount the source layers and snapshot the result. */
async function overlaySnapshot(tars: string[], name: string): Promise<Awaited<ReturnType<typeof snapshotTree>>> {
  const lowers: string[] = [];
  for (const [i, t] of tars.entries()) {
    const d = path.join(work, `${name}-ovl${i}`);
    await toOverlayLayer(t, d);
    lowers.unshift(d);
  }
  const mnt = mounts.overlay(lowers, path.join(work, `${name}-overlay.mnt`));
  return snapshotTree(mnt);
}

/** Read a nydus image from an OCI layout, export it to EROFS, loop-mount it, snapshot it. */
async function mountNydus(layoutDir: string, tag: string, name: string): Promise<{ snap: Awaited<ReturnType<typeof snapshotTree>>; manifest: ImageManifest; config: ImageConfig; bootFile: string }> {
  const src = new OciLayoutSource(layoutDir, { tag });
  const m = await src.manifest({ nydus: true });
  const config = JSON.parse((await src.blob(m.manifest.config)).toString()) as ImageConfig;
  const parts = readNydusManifest(m.manifest, name, config);
  const { bootstrap } = await extractBootstrapLayer(await src.blob(parts.bootstrap));
  const bootFile = path.join(work, `${name}.boot`);
  fs.writeFileSync(bootFile, bootstrap);
  const blobDir = path.join(layoutDir, 'blobs', 'sha256'); // blob files are named by their blob id
  const rep = await checkImage(bootFile, blobDir);
  assert.deepEqual(rep.errors, [], `${name}: nydus-ts check`);
  const img = path.join(work, `${name}.erofs`);
  await exportImage(bootFile, blobDir, img);
  sh('fsck.erofs', [img]);
  const mnt = mounts.erofs(img, path.join(work, `${name}.mnt`), ['loop']);
  return { snap: await snapshotTree(mnt), manifest: m.manifest, config, bootFile };
}

/** An ImageSink that counts what it is asked to upload. */
class CountingSink implements ImageSink {
  readonly name: string;
  pushedBlobs: string[] = [];
  manifests: string[] = [];
  constructor(private readonly inner: ImageSink) {
    this.name = inner.name;
  }
  hasBlob(d: Descriptor): Promise<boolean> {
    return this.inner.hasBlob(d);
  }
  async pushBlob(d: Descriptor, data: { path: string } | Buffer, onProgress?: (n: number) => void): Promise<void> {
    this.pushedBlobs.push(d.digest);
    await this.inner.pushBlob(d, data, onProgress);
  }
  async pushManifest(raw: Buffer, mediaType: string): Promise<string> {
    const d = await this.inner.pushManifest(raw, mediaType);
    this.manifests.push(d);
    return d;
  }
}

function assertWorkDirEmpty(dir: string): void {
  assert.deepEqual(fs.readdirSync(dir), [], `work dir ${dir} must be left empty`);
}

let base: SourceImage;
let baseTarget: string;
let firstSummary: ConvertSummary;

test('convert: 4 layers (gzip, zstd, tar; whiteouts, opaque dirs) → a nydus image whose EROFS mount equals the overlay of the source', async () => {
  base = await buildSource('base', BASE_LAYERS);
  baseTarget = path.join(work, 'nydus-oci');
  const wd = path.join(work, 'wd1');
  const events: ConvertProgress[] = [];
  const sink = new CountingSink(new OciLayoutSink(baseTarget, { tag: 'v1' }));
  const summary = await convert(new OciLayoutSource(base.dir, { tag: 'v1' }), sink, { workDir: wd, onProgress: (p) => events.push(p) });
  firstSummary = summary;
  assertWorkDirEmpty(wd);

  // summary
  assert.equal(summary.source_manifest_digest, base.manifestDigest);
  assert.equal(summary.layers.length, 4);
  assert.deepEqual(summary.layers.map((l) => l.source_digest), base.manifest.layers.map((l) => l.digest));
  assert.ok(summary.layers.slice(0, 3).every((l) => l.blob_id !== null), 'layers with file data make a blob');
  assert.equal(summary.layers[3].blob_id, null, 'a layer adding no chunk yields no blob');
  assert.equal(summary.blobs.length, 3);
  assert.deepEqual(summary.blobs.map((b) => b.blob_id), summary.layers.slice(0, 3).map((l) => l.blob_id));
  assert.ok(summary.blobs.every((b) => b.pushed && !b.reference));
  assert.equal(sink.manifests.length, 1);
  assert.equal(sink.manifests[0], summary.target_manifest_digest);
  // 3 blobs + bootstrap layer + config
  assert.equal(sink.pushedBlobs.length, 5);

  // per-layer progress reaches each layer's size
  for (let i = 0; i < 4; i++) {
    const mine = events.filter((e): e is Extract<ConvertProgress, { phase: 'layer' }> => e.phase === 'layer' && e.index === i);
    assert.ok(mine.length >= 2, `progress events for layer ${i}`);
    const last = mine[mine.length - 1];
    assert.ok(last.done && last.bytes === base.manifest.layers[i].size && last.total === base.manifest.layers[i].size);
  }

  // the pushed manifest and config
  const { snap, manifest, config } = await mountNydus(baseTarget, 'v1', 'base-nydus');
  assert.deepEqual(validateNydusManifest(manifest, config), []);
  assert.equal(manifest.mediaType, MediaTypes.ociManifest);
  assert.equal(manifest.layers.length, 4);
  for (const [i, b] of summary.blobs.entries()) {
    assert.deepEqual(manifest.layers[i], { mediaType: MediaTypes.nydusBlob, digest: `sha256:${b.blob_id}`, size: b.size, annotations: { [NydusAnnotations.blob]: 'true' } });
    const file = path.join(baseTarget, 'blobs', 'sha256', b.blob_id);
    assert.equal(sha256Digest(fs.readFileSync(file)), `sha256:${b.blob_id}`, 'blob id = sha256 of the blob');
  }
  const bl = manifest.layers[3];
  assert.equal(bl.mediaType, MediaTypes.ociLayerGzip);
  assert.deepEqual(bl.annotations, { [NydusAnnotations.bootstrap]: 'true', [NydusAnnotations.fsVersion]: '6' });
  assert.deepEqual(config.rootfs.diff_ids.slice(0, 3), summary.blobs.map((b) => `sha256:${b.blob_id}`));
  assert.equal(config.rootfs.diff_ids[3], summary.bootstrap.diff_id);
  assert.deepEqual(config.history, [...base.config.history!, { created_by: 'Nydus Converter', comment: 'Nydus Bootstrap Layer' }]);
  assert.deepEqual(config.config, base.config.config);
  assert.equal(config.created, base.config.created);

  // the content, judged by the kernel
  const want = await overlaySnapshot(base.tars, 'base');
  assert.deepEqual(diffTrees(want, snap, { ignore: ['nlink'] }), []);
  for (const p of snap.keys()) assert.ok(!path.basename(p).startsWith('.wh.'), `whiteout ${p} in the result`);
  assert.ok(!snap.has('/var/cache') && !snap.has('/opt/gone') && snap.has('/opt/keep/z') && !snap.has('/opt/keep/x'));
  assert.ok(!snap.has('/usr/bin/tool-hard') && snap.has('/usr/bin/tool') && !snap.has('/data/zeros') && snap.has('/emptydir'));
  assert.equal(snap.get('/etc/xattr-file')!.xattrs['user.nydus.test'], Buffer.from('hello').toString('hex'));
});

test('convert: a second conversion of the same image uploads nothing and gives the same manifest', async () => {
  assert.ok(firstSummary, 'needs the first conversion');
  const wd = path.join(work, 'wd2');
  const sink = new CountingSink(new OciLayoutSink(baseTarget, { tag: 'v1' }));
  const s = await convert(new OciLayoutSource(base.dir, { tag: 'v1' }), sink, { workDir: wd, concurrency: 3 });
  assertWorkDirEmpty(wd);
  assert.deepEqual(sink.pushedBlobs, [], 'no blob, bootstrap layer or config uploaded again');
  assert.ok(s.blobs.every((b) => !b.pushed) && !s.bootstrap.pushed);
  assert.equal(s.bytes.pushed, 0);
  assert.equal(s.target_manifest_digest, firstSummary.target_manifest_digest, 'conversion is reproducible');
});

test('check-image: the converted image has 0 differences; library and CLI agree', async () => {
  assert.ok(firstSummary, 'needs the first conversion');
  const r = await checkConversion(new OciLayoutSource(base.dir, { tag: 'v1' }), new OciLayoutSource(baseTarget, { tag: 'v1' }), { workDir: path.join(work, 'wd3') });
  assert.deepEqual(r.errors, []);
  assert.deepEqual(r.differences, []);
  assert.ok(r.ok);
  assert.ok(r.files_compared >= 9, `files compared: ${r.files_compared}`);
  assert.ok(r.bytes_compared > 1_500_000, `bytes compared ${r.bytes_compared}`);
  assertWorkDirEmpty(path.join(work, 'wd3'));
  const json = path.join(work, 'check.json');
  const c = cli(['check-image', '--source', `oci:${base.dir}:v1`, '--target', `oci:${baseTarget}:v1`, '--work-dir', path.join(work, 'wd3'), '-J', json]);
  assert.equal(c.status, 0, c.stderr + c.stdout);
  assert.match(c.stdout, /OK, same as/);
  assert.equal(JSON.parse(fs.readFileSync(json, 'utf8')).ok, true);
});

test('check-image: a tampered target is reported entry by entry and exits 1', async () => {
  assert.ok(firstSummary, 'needs the first conversion');
  // 1. content: the same image with one file changed and one mode changed, converted under another tag
  const changed = BASE_LAYERS.map((l) => ({ ...l, spec: { ...l.spec } }));
  changed[2].spec['etc/hosts'] = 'tampered\n';
  changed[2].spec['opt/keep/z'] = 'Z';
  changed[0].spec['usr/bin/suid'] = { mode: 0o4700, data: '#!/bin/sh\n' };
  const other = await buildSource('tampered', changed);
  await convert(new OciLayoutSource(other.dir, { tag: 'v1' }), new OciLayoutSink(baseTarget, { tag: 'tampered' }), { workDir: path.join(work, 'wd4') });
  const c = cli(['check-image', '--source', `oci:${base.dir}:v1`, '--target', `oci:${baseTarget}:tampered`, '--work-dir', path.join(work, 'wd4')]);
  assert.equal(c.status, 1, c.stderr + c.stdout);
  assert.match(c.stdout, /diff: \/etc\/hosts: size 5 != 9/);
  assert.match(c.stdout, /diff: \/opt\/keep\/z: content sha256 [0-9a-f]{64} != [0-9a-f]{64}/);
  assert.match(c.stdout, /diff: \/usr\/bin\/suid: mode 4755 != 4700/);
  assert.match(c.stdout, /difference\(s\) against/);

  // 2. a manifest that lost an annotation, and a corrupt blob
  const src = new OciLayoutSource(baseTarget, { tag: 'v1' });
  const m = await src.manifest({ nydus: true });
  const bad = JSON.parse(m.raw.toString()) as ImageManifest;
  delete bad.layers[0].annotations;
  const badDir = path.join(work, 'bad-oci');
  fs.cpSync(baseTarget, badDir, { recursive: true });
  await new OciLayoutSink(badDir, { tag: 'bad' }).pushManifest(Buffer.from(JSON.stringify(bad)), MediaTypes.ociManifest);
  const blobFile = path.join(badDir, 'blobs', 'sha256', firstSummary.blobs[1].blob_id);
  const bytes = fs.readFileSync(blobFile);
  bytes[100] ^= 0xff;
  fs.writeFileSync(blobFile, bytes);
  const r = await checkConversion(new OciLayoutSource(base.dir, { tag: 'v1' }), new OciLayoutSource(badDir, { tag: 'bad' }), { workDir: path.join(work, 'wd4') });
  assert.equal(r.ok, false);
  assert.ok(r.errors.some((e) => /layer 0: annotation containerd\.io\/snapshot\/nydus-blob is undefined, expected "true"/.test(e)), r.errors.join('\n'));
  assert.ok(r.errors.some((e) => e.includes(firstSummary.blobs[1].blob_id) && /digest mismatch|does not match/.test(e)), r.errors.join('\n'));
  // files whose data could not be read are reported
  assert.ok(r.differences.some((d) => /content sha256 [0-9a-f]{64} != \(unreadable\)/.test(d)), r.differences.join('\n'));
  assertWorkDirEmpty(path.join(work, 'wd4'));
});

test('convert: a corrupt or hostile layer fails naming the layer, leaves nothing in the work dir and pushes no manifest', async () => {
  // corrupt: layer 1's bytes do not match its digest
  const corruptDir = path.join(work, 'corrupt-oci');
  fs.cpSync(base.dir, corruptDir, { recursive: true });
  const l1 = base.manifest.layers[1];
  const f = path.join(corruptDir, 'blobs', 'sha256', l1.digest.slice(7));
  const b = fs.readFileSync(f);
  b[b.length >> 1] ^= 0x55;
  fs.writeFileSync(f, b);
  const wd = path.join(work, 'wd5');
  const target = path.join(work, 'never-oci');
  const sink = new CountingSink(new OciLayoutSink(target, { tag: 'x' }));
  await assert.rejects(convert(new OciLayoutSource(corruptDir, { tag: 'v1' }), sink, { workDir: wd }), (e: NydusError) => {
    assert.ok(e instanceof NydusError, String(e));
    assert.ok(e.code === 'ERR_DIGEST_MISMATCH' || e.code === 'ERR_BAD_BLOB' || e.code === 'ERR_BAD_TAR', `${e.code}: ${e.message}`);
    assert.ok(e.message.includes(l1.digest), e.message);
    return true;
  });
  assertWorkDirEmpty(wd);
  assert.deepEqual(sink.manifests, []);
  assert.deepEqual(sink.pushedBlobs, []);

  // hostile: a layer with a ../ escape
  const evil = Buffer.concat([tarEntry('../escape', 'x'), Buffer.alloc(1024)]);
  const hostile = await buildRawSource('hostile', [evil]);
  await assert.rejects(convert(new OciLayoutSource(hostile.dir, { tag: 'v1' }), sink, { workDir: wd }), (e: NydusError) => {
    assert.equal(e.code, 'ERR_BAD_TAR', e.message);
    assert.ok(e.message.includes(hostile.layers[0].digest), e.message);
    return true;
  });
  assertWorkDirEmpty(wd);
  assert.deepEqual(sink.manifests, []);

  // CLI: same failure, `nydus-ts: error: …`, exit 1
  const c = cli(['convert', '--source', `oci:${hostile.dir}:v1`, '--target', `oci:${target}:x`, '--work-dir', wd]);
  assert.equal(c.status, 1, c.stderr);
  assert.match(c.stderr, /^nydus-ts: error: .*\.\.\/escape/m);
  assertWorkDirEmpty(wd);
  // an already-nydus source is refused
  await assert.rejects(convert(new OciLayoutSource(baseTarget, { tag: 'v1' }), sink, { workDir: wd }), (e: NydusError) => e.code === 'ERR_INVALID_ARGUMENT' && /already a nydus image/.test(e.message));
});

/** a minimal ustar entry */
function tarEntry(name: string, data: string): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0);
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(data.length.toString(8).padStart(11, '0') + '\0', 124);
  h.write('00000000000\0', 136);
  h.write('0', 156);
  h.write('ustar\0', 257);
  h.write('00', 263);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of h) sum += x;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  const body = Buffer.alloc(Math.ceil(data.length / 512) * 512);
  body.write(data);
  return Buffer.concat([h, body]);
}

async function buildRawSource(name: string, tars: Buffer[]): Promise<{ dir: string; layers: Descriptor[] }> {
  const dir = path.join(work, `${name}-oci`);
  const sink = new OciLayoutSink(dir);
  const layers: Descriptor[] = [];
  for (const t of tars) {
    const data = zlib.gzipSync(t);
    const d = { mediaType: MediaTypes.ociLayerGzip, digest: sha256Digest(data), size: data.length };
    await sink.pushBlob(d, data);
    layers.push(d);
  }
  const cfg = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: tars.map((t) => sha256Digest(t)) } }));
  const cd = { mediaType: MediaTypes.ociConfig, digest: sha256Digest(cfg), size: cfg.length };
  await sink.pushBlob(cd, cfg);
  await sink.pushManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociManifest, config: cd, layers })), MediaTypes.ociManifest, 'v1');
  return { dir, layers };
}

test('open: oci:DIR[:TAG] and registry references', () => {
  assert.deepEqual(parseImageRef('oci:/a/b:v1'), { kind: 'oci', dir: '/a/b', tag: 'v1' });
  assert.deepEqual(parseImageRef('oci:/a/b'), { kind: 'oci', dir: '/a/b', tag: undefined });
  assert.deepEqual(parseImageRef('oci:./x:y/z'), { kind: 'oci', dir: './x:y/z', tag: undefined });
  const r = parseImageRef('127.0.0.1:5000/app/x:nydus');
  assert.equal(r.kind, 'registry');
  assert.equal(r.kind === 'registry' && r.ref.repository, 'app/x');
  assert.throws(() => parseImageRef('oci:'), (e: NydusError) => e.code === 'ERR_INVALID_ARGUMENT');
  const c = cli(['convert', '--source', 'oci:/nonexistent-dir:v1', '--target', 'oci:/tmp/x:y', '--work-dir', path.join(work, 'wd6')]);
  assert.equal(c.status, 1);
  assert.match(c.stderr, /nydus-ts: error: oci:\/nonexistent-dir: not an OCI image layout/);
});

// ---------------------------------------------------------------------------------------------
// the real registry

test('registry: convert with the CLI from and to a real docker-registry, check-image passes, a second run pushes nothing', async () => {
  reg = await startRegistry();
  const r = reg;
  await r.logOnFailure(async () => {
    const seeded = await seedImage(r, 'library/app', 'v1');
    const target = r.ref('nydus/app', 'v1-nydus');
    const json = path.join(work, 'reg-convert.json');
    const wd = path.join(work, 'wd-reg');
    const c = cli(['convert', '--source', seeded.reference, '--target', target, '--work-dir', wd, '-J', json]);
    assert.equal(c.status, 0, c.stderr + c.stdout);
    assertWorkDirEmpty(wd);
    const s = JSON.parse(fs.readFileSync(json, 'utf8')) as ConvertSummary;
    assert.equal(s.source_manifest_digest, seeded.manifestDescriptor.digest);
    assert.equal(s.layers.length, seeded.layers.length);
    assert.ok(s.blobs.length >= 1 && s.blobs.every((b) => b.pushed));
    assert.match(c.stdout, new RegExp(`${s.target_manifest_digest}`));

    // what the registry now serves, seen by skopeo
    const raw = (await skopeoInspect(r, target, true)) as unknown as ImageManifest;
    const src = new RegistryImageSource(target);
    const config = JSON.parse((await src.blob(raw.config)).toString()) as ImageConfig;
    assert.deepEqual(validateNydusManifest(raw, config), []);
    assert.equal(sha256Digest(Buffer.from(JSON.stringify(raw))), s.target_manifest_digest);
    await src.close();

    // check-image, real registry both sides
    const ck = cli(['check-image', '--source', seeded.reference, '--target', target, '--work-dir', wd, '-J', path.join(work, 'reg-check.json')]);
    assert.equal(ck.status, 0, ck.stderr + ck.stdout);
    const rep = JSON.parse(fs.readFileSync(path.join(work, 'reg-check.json'), 'utf8'));
    assert.deepEqual(rep.differences, []);
    assert.ok(rep.files_compared > 100, `files compared ${rep.files_compared}`);

    // the registry image, mounted, equals the overlay of the seeded layers
    const pulled = path.join(work, 'reg-pulled-oci');
    const pullSink = new OciLayoutSink(pulled, { tag: 'n' });
    const rs = new RegistryImageSource(target);
    const m = await rs.manifest({ nydus: true });
    for (const d of [m.manifest.config, ...m.manifest.layers]) await pullSink.pushBlob(d, await rs.blob(d));
    await pullSink.pushManifest(m.raw, MediaTypes.ociManifest);
    await rs.close();
    const got = await mountNydus(pulled, 'n', 'reg-nydus');
    const want = await overlaySnapshot(seeded.layers.map((l) => l.tarFile), 'reg');
    // no layer of the seeded image has a root entry: the overlay root is our extraction dir
    assert.deepEqual(diffTrees(want, got.snap, { ignore: ['nlink', 'rootMeta'] }), []);

    // again: nothing new to push, same manifest
    const c2 = cli(['convert', '--source', seeded.reference, '--target', target, '--work-dir', wd, '-J', json]);
    assert.equal(c2.status, 0, c2.stderr);
    const s2 = JSON.parse(fs.readFileSync(json, 'utf8')) as ConvertSummary;
    assert.ok(s2.blobs.every((b) => !b.pushed) && !s2.bootstrap.pushed && s2.bytes.pushed === 0);
    assert.equal(s2.target_manifest_digest, s.target_manifest_digest);
  });
});

test('registry: check-image on a tampered target reports differences and exits 1', async () => {
  assert.ok(reg, 'needs the registry test');
  const r = reg;
  await r.logOnFailure(async () => {
    const seeded = r.ref('library/app', 'v1');
    // the nydus image of a different source, pushed where the check expects the conversion
    const wrong = r.ref('nydus/app', 'wrong');
    await convert(new OciLayoutSource(base.dir, { tag: 'v1' }), openSink(wrong), { workDir: path.join(work, 'wd-reg2') });
    const ck = cli(['check-image', '--source', seeded, '--target', wrong, '--work-dir', path.join(work, 'wd-reg2')]);
    assert.equal(ck.status, 1, ck.stderr + ck.stdout);
    assert.match(ck.stdout, /diff: \/usr\/share\/zoneinfo: missing in the target/);
    assert.match(ck.stdout, /diff: \/data\/big: not in the source/);
    // a plain OCI image as the "nydus" target: named as not a nydus image
    const ck2 = cli(['check-image', '--source', seeded, '--target', seeded, '--work-dir', path.join(work, 'wd-reg2')]);
    assert.notEqual(ck2.status, 0);
    assert.match(ck2.stderr + ck2.stdout, /nydus/);
  });
});

test('registry: --chunk-dict-ref reuses the chunks of another nydus image and copies its blobs into the target repository', async () => {
  assert.ok(reg, 'needs the registry test');
  const r = reg;
  await r.logOnFailure(async () => {
    // the dictionary: our base image converted into the registry
    const dictRef = r.ref('nydus/dict', 'v1');
    const sDict = await convert(new OciLayoutSource(base.dir, { tag: 'v1' }), openSink(dictRef), { workDir: path.join(work, 'wd-dict') });
    // a new image sharing big files with it
    const shared = await buildSource('shares', [
      { compression: 'gzip', spec: { 'data/big-again': pseudo(3, 1_100_000), 'tool-again': pseudo(1, 300_000), 'own/new': pseudo(77, 900_000) } },
    ]);
    const target = r.ref('nydus/shares', 'v1');
    const json = path.join(work, 'dict.json');
    const c = cli(['convert', '--source', `oci:${shared.dir}:v1`, '--target', target, '--chunk-dict-ref', dictRef, '--work-dir', path.join(work, 'wd-dict'), '-J', json]);
    assert.equal(c.status, 0, c.stderr + c.stdout);
    const s = JSON.parse(fs.readFileSync(json, 'utf8')) as ConvertSummary;
    const refs = s.blobs.filter((b) => b.reference);
    assert.ok(refs.length >= 1, JSON.stringify(s.blobs));
    assert.ok(refs.every((b) => sDict.blobs.some((d) => d.blob_id === b.blob_id) && b.pushed), 'dictionary blobs copied into the new repository');
    assert.ok(s.layers[0].dedup_chunks >= 3, `dedup chunks ${s.layers[0].dedup_chunks}`);
    const raw = (await skopeoInspect(r, target, true)) as unknown as ImageManifest;
    const parts = readNydusManifest(raw, target);
    assert.deepEqual(parts.referenceBlobIds, refs.map((b) => b.blob_id));
    assert.deepEqual(JSON.parse(raw.layers[raw.layers.length - 1].annotations![NydusAnnotations.referenceBlobIds]), refs.map((b) => b.blob_id));
    // and the result is right
    const ck = cli(['check-image', '--source', `oci:${shared.dir}:v1`, '--target', target, '--work-dir', path.join(work, 'wd-dict')]);
    assert.equal(ck.status, 0, ck.stderr + ck.stdout);
    const boot = readBootstrap((await extractBootstrapLayer(await new RegistryImageSource(target).blob(parts.bootstrap))).bootstrap);
    assert.deepEqual(boot.blobs.map((b) => b.blobId).sort(), s.blobs.map((b) => b.blob_id).sort());
  });
});
