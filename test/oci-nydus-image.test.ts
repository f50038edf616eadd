/**
 * Issue #4: the nydus image format on OCI (rafs-v6.md §4.1): the bootstrap layer, the manifest
 * and config a conversion produces, and the reverse (validation, bootstrap extraction).
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import * as crypto from 'node:crypto';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { sh } from './helpers/mount';
import { createImage } from '../src/builder/build';
import {
  makeBootstrapLayer, makeNydusConfig, makeNydusManifest, nydusBlobDescriptor, validateNydusManifest,
  readNydusManifest, extractBootstrap, extractBootstrapLayer, isNydusManifest, jsonBytes, NYDUS_HISTORY,
} from '../src/oci/nydus-image';
import { MediaTypes, NydusAnnotations, ImageConfig, ImageManifest } from '../src/oci/types';
import { readBootstrap } from '../src/format/bootstrap-reader';
import { NydusError } from '../src/errors';

let work: string;
let boot: Buffer;
let blobId: string;
let blobSize: number;

const sha = (b: Buffer): string => 'sha256:' + crypto.createHash('sha256').update(b).digest('hex');

before(async () => {
  work = makeTmpDir('nydus-oci-image-');
  const dir = path.join(work, 'rootfs');
  fs.mkdirSync(path.join(dir, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'etc', 'hostname'), 'box\n');
  fs.writeFileSync(path.join(dir, 'data'), crypto.randomBytes(200_000));
  const r = await createImage({ type: 'dir', source: dir, bootstrap: path.join(work, 'img.boot'), blobDir: path.join(work, 'blobs') });
  boot = fs.readFileSync(path.join(work, 'img.boot'));
  blobId = r.blob_id!;
  blobSize = fs.statSync(path.join(work, 'blobs', blobId)).size;
});
after(() => {
  if (!process.env.NYDUS_TS_KEEP_TMP) removeTmpDir(work);
});

function sampleConfig(): ImageConfig {
  return {
    architecture: 'amd64', os: 'linux', created: '2024-01-02T03:04:05Z',
    config: { Env: ['PATH=/usr/bin'], Cmd: ['/bin/sh'], Labels: { a: 'b' } },
    rootfs: { type: 'layers', diff_ids: ['sha256:' + '1'.repeat(64), 'sha256:' + '2'.repeat(64)] },
    history: [{ created_by: 'ADD rootfs' }, { created_by: 'RUN x' }],
    'moby.extra': { keep: true },
  };
}

function sampleImage(): { manifest: ImageManifest; config: ImageConfig } {
  const bl = makeBootstrapLayer(boot);
  const config = makeNydusConfig(sampleConfig(), ['sha256:' + blobId], bl.diffId);
  const cfg = jsonBytes(config);
  const { manifest } = makeNydusManifest({
    config: { mediaType: MediaTypes.ociConfig, digest: cfg.digest, size: cfg.raw.length },
    blobs: [nydusBlobDescriptor(blobId, blobSize)],
    bootstrap: bl.descriptor,
  });
  return { manifest, config };
}

test('bootstrap layer: gzip tar with image/ 0755 and image/image.boot 0444, root-owned, fixed mtime, reproducible', async () => {
  const a = makeBootstrapLayer(boot);
  const b = makeBootstrapLayer(Buffer.from(boot));
  assert.equal(a.digest, b.digest, 'same bootstrap, same layer digest');
  assert.ok(a.gzip.equals(b.gzip));
  assert.equal(a.digest, sha(a.gzip));
  assert.equal(a.diffId, sha(zlib.gunzipSync(a.gzip)));
  assert.deepEqual(a.descriptor, {
    mediaType: MediaTypes.ociLayerGzip, digest: a.digest, size: a.gzip.length,
    annotations: { [NydusAnnotations.bootstrap]: 'true', [NydusAnnotations.fsVersion]: '6' },
  });
  // GNU tar's view of it
  const f = path.join(work, 'bootstrap-layer.tar.gz');
  fs.writeFileSync(f, a.gzip);
  const listing = sh('tar', ['--numeric-owner', '--full-time', '-tvzf', f]).trim().split('\n');
  assert.equal(listing.length, 2);
  assert.match(listing[0], /^drwxr-xr-x 0\/0 +0 1970-01-01 00:00:00 image\/$/);
  assert.match(listing[1], new RegExp(`^-r--r--r-- 0/0 +${boot.length} 1970-01-01 00:00:00 image/image.boot$`));
  const out = path.join(work, 'x');
  fs.mkdirSync(out);
  sh('tar', ['-xzf', f, '-C', out]);
  assert.ok(fs.readFileSync(path.join(out, 'image', 'image.boot')).equals(boot));
  // and our own reader
  const ex = await extractBootstrapLayer(a.gzip);
  assert.ok(ex.bootstrap.equals(boot));
  assert.equal(ex.path, 'image/image.boot');
  assert.equal(ex.diffId, a.diffId);
  readBootstrap(ex.bootstrap);
});

test('bootstrap layer: reference blob ids annotation is a JSON array of hex ids', () => {
  const l = makeBootstrapLayer(boot, { referenceBlobIds: ['sha256:' + 'a'.repeat(64), 'b'.repeat(64)] });
  assert.equal(l.descriptor.annotations![NydusAnnotations.referenceBlobIds], JSON.stringify(['a'.repeat(64), 'b'.repeat(64)]));
  assert.throws(() => makeBootstrapLayer(Buffer.alloc(8192)), (e: NydusError) => e.code === 'ERR_BAD_BOOTSTRAP');
});

test('extractBootstrap accepts the legacy image.boot at the tar root and names what is missing', async () => {
  const d = path.join(work, 'legacy');
  fs.mkdirSync(d);
  fs.writeFileSync(path.join(d, 'image.boot'), boot);
  const tgz = path.join(work, 'legacy.tar.gz');
  sh('tar', ['-czf', tgz, '-C', d, 'image.boot']);
  const ex = await extractBootstrapLayer(fs.readFileSync(tgz));
  assert.equal(ex.path, 'image.boot');
  assert.ok(ex.bootstrap.equals(boot));
  // './image/image.boot' spelled with a leading ./ works too
  const d2 = path.join(work, 'dotted');
  fs.mkdirSync(path.join(d2, 'image'), { recursive: true });
  fs.writeFileSync(path.join(d2, 'image', 'image.boot'), boot);
  const tgz2 = path.join(work, 'dotted.tar.gz');
  sh('tar', ['-czf', tgz2, '-C', d2, '.']);
  assert.ok((await extractBootstrap(fs.readFileSync(tgz2))).equals(boot));

  // no bootstrap in it
  const d3 = path.join(work, 'none');
  fs.mkdirSync(d3);
  fs.writeFileSync(path.join(d3, 'other'), 'x');
  const tgz3 = path.join(work, 'none.tar.gz');
  sh('tar', ['-czf', tgz3, '-C', d3, 'other']);
  await assert.rejects(extractBootstrap(fs.readFileSync(tgz3), 'layer X'), (e: NydusError) => e.code === 'ERR_BAD_TAR' && /layer X: neither image\/image\.boot nor image\.boot/.test(e.message));
  // not a bootstrap
  fs.writeFileSync(path.join(d3, 'image.boot'), Buffer.alloc(4096, 7));
  sh('tar', ['-czf', tgz3, '-C', d3, 'image.boot']);
  await assert.rejects(extractBootstrap(fs.readFileSync(tgz3)), (e: NydusError) => e.code === 'ERR_BAD_BOOTSTRAP' && /not a RAFS v6 bootstrap/.test(e.message));
  // broken gzip
  const broken = Buffer.from(makeBootstrapLayer(boot).gzip.subarray(0, 100));
  await assert.rejects(extractBootstrap(broken, 'layer Y'), (e: NydusError) => e.code === 'ERR_BAD_TAR' && /layer Y/.test(e.message));
});

test('config: diff_ids = blob digests + bootstrap diff_id, history appended, other fields kept, source untouched', () => {
  const src = sampleConfig();
  const before = JSON.stringify(src);
  const c = makeNydusConfig(src, ['sha256:' + 'a'.repeat(64), 'b'.repeat(64)], 'sha256:' + 'c'.repeat(64));
  assert.equal(JSON.stringify(src), before);
  assert.deepEqual(c.rootfs, { type: 'layers', diff_ids: ['sha256:' + 'a'.repeat(64), 'sha256:' + 'b'.repeat(64), 'sha256:' + 'c'.repeat(64)] });
  assert.deepEqual(c.history, [{ created_by: 'ADD rootfs' }, { created_by: 'RUN x' }, { ...NYDUS_HISTORY }]);
  assert.deepEqual(c.history![2], { created_by: 'Nydus Converter', comment: 'Nydus Bootstrap Layer' });
  assert.deepEqual(c.config, src.config);
  assert.deepEqual(c['moby.extra'], { keep: true });
  assert.equal(c.created, src.created);
  // no history in the source: just the nydus entry
  const bare = makeNydusConfig({ rootfs: { type: 'layers', diff_ids: [] } }, [], 'sha256:' + 'c'.repeat(64));
  assert.deepEqual(bare.history, [{ ...NYDUS_HISTORY }]);
});

test('manifest: blob layers then the bootstrap layer; it validates and reads back', () => {
  const { manifest, config } = sampleImage();
  assert.equal(manifest.mediaType, MediaTypes.ociManifest);
  assert.equal(manifest.layers.length, 2);
  assert.deepEqual(manifest.layers[0], {
    mediaType: MediaTypes.nydusBlob, digest: 'sha256:' + blobId, size: blobSize,
    annotations: { [NydusAnnotations.blob]: 'true' },
  });
  assert.equal(manifest.layers[1].annotations![NydusAnnotations.bootstrap], 'true');
  assert.deepEqual(validateNydusManifest(manifest, config), []);
  assert.ok(isNydusManifest(manifest));
  const parts = readNydusManifest(manifest, 'm', config);
  assert.deepEqual(parts.blobIds, [blobId]);
  assert.equal(parts.bootstrap, manifest.layers[1]);
  assert.deepEqual(parts.referenceBlobIds, []);
  const bl = makeBootstrapLayer(boot, { referenceBlobIds: ['d'.repeat(64)] });
  const withRef = makeNydusManifest({ config: manifest.config, blobs: [manifest.layers[0]], bootstrap: bl.descriptor }).manifest;
  assert.deepEqual(readNydusManifest(withRef).referenceBlobIds, ['d'.repeat(64)]);
  assert.ok(!isNydusManifest({ schemaVersion: 2, config: manifest.config, layers: [{ mediaType: MediaTypes.ociLayerGzip, digest: 'sha256:' + '0'.repeat(64), size: 3 }] }));
});

test('validateNydusManifest names every problem', () => {
  const clone = (): { manifest: ImageManifest; config: ImageConfig } => JSON.parse(JSON.stringify(sampleImage()));
  const cases: Array<[string, (x: { manifest: ImageManifest; config: ImageConfig }) => void, RegExp]> = [
    ['blob media type', (x) => { x.manifest.layers[0].mediaType = MediaTypes.ociLayerGzip; }, /layer 0: mediaType application\/vnd\.oci\.image\.layer\.v1\.tar\+gzip, expected application\/vnd\.oci\.image\.layer\.nydus\.blob\.v1/],
    ['blob annotation', (x) => { delete x.manifest.layers[0].annotations; }, /layer 0: annotation containerd\.io\/snapshot\/nydus-blob is undefined, expected "true"/],
    ['bootstrap not last', (x) => { x.manifest.layers.reverse(); }, /layer 1 \(bootstrap\): annotation containerd\.io\/snapshot\/nydus-bootstrap .*must be last/],
    ['fs version', (x) => { delete x.manifest.layers[1].annotations![NydusAnnotations.fsVersion]; }, /layer 1 \(bootstrap\): annotation containerd\.io\/snapshot\/nydus-fs-version is undefined, expected "6"/],
    ['bootstrap media type', (x) => { x.manifest.layers[1].mediaType = MediaTypes.nydusBlob; }, /layer 1 \(bootstrap\): mediaType .*expected application\/vnd\.oci\.image\.layer\.v1\.tar\+gzip/],
    ['bad digest', (x) => { x.manifest.layers[0].digest = 'sha256:xyz'; }, /layer 0: digest "sha256:xyz" is not sha256:<64 hex>/],
    ['zero size', (x) => { x.manifest.layers[0].size = 0; }, /layer 0: size 0 is not a positive integer/],
    ['duplicate', (x) => { x.manifest.layers.unshift({ ...x.manifest.layers[0] }); x.config.rootfs.diff_ids.unshift(x.config.rootfs.diff_ids[0]); }, /layer 1: digest sha256:[0-9a-f]{64} appears twice/],
    ['diff_ids count', (x) => { x.config.rootfs.diff_ids.pop(); }, /config: 1 diff_ids for 2 layers/],
    ['diff_id of a blob', (x) => { x.config.rootfs.diff_ids[0] = 'sha256:' + 'e'.repeat(64); }, /config: diff_ids\[0\] sha256:e+ differs from the blob layer digest/],
    ['config media type', (x) => { x.manifest.config.mediaType = 'text/plain'; }, /config: mediaType text\/plain is not an image config/],
    ['reference ids', (x) => { x.manifest.layers[1].annotations![NydusAnnotations.referenceBlobIds] = 'nope'; }, /nydus-reference-blob-ids is not JSON/],
    ['no layers', (x) => { x.manifest.layers = []; }, /manifest: no layers/],
    ['schema', (x) => { (x.manifest as { schemaVersion: number }).schemaVersion = 1; }, /schemaVersion 1, expected 2/],
  ];
  for (const [what, mutate, re] of cases) {
    const x = clone();
    mutate(x);
    const problems = validateNydusManifest(x.manifest, x.config);
    assert.ok(problems.some((p) => re.test(p)), `${what}: ${JSON.stringify(problems)}`);
    assert.throws(() => readNydusManifest(x.manifest, 'reg/x:nydus', x.config), (e: NydusError) => e.code === 'ERR_BAD_MANIFEST' && e.message.startsWith('reg/x:nydus: not a valid nydus (RAFS v6) image: ') && re.test(e.message), what);
  }
});

test('nydusBlobDescriptor rejects ids that are not sha256 hex', () => {
  assert.throws(() => nydusBlobDescriptor('abc', 1), (e: NydusError) => e.code === 'ERR_INVALID_ARGUMENT' && /blob id "abc"/.test(e.message));
  assert.equal(nydusBlobDescriptor('sha256:' + 'f'.repeat(64), 5).digest, 'sha256:' + 'f'.repeat(64));
});
