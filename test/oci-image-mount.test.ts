/**
 * Issue #4, `mount --image`: the parts that run without the kernel, against the REAL
 * docker-registry (anonymous and htpasswd Basic auth).
 *
 * - the registration body built for a reference (legacy snapshotter shape and config_v2) passes
 *   the daemon's own validation, and the daemon's registry backend made from it reads the blobs
 *   from the registry (anonymous; Basic from DOCKER_CONFIG, from $NYDUS_TS_REGISTRY_CREDS);
 * - `--insecure` → http; Docker Hub → index.docker.io;
 * - index resolution: the nydus alternative, a plain platform manifest, a missing platform;
 * - a non-nydus image, a missing tag / repository, missing credentials: clear errors naming the
 *   reference, from the CLI too, and no daemon is started for them;
 * - the bootstrap cache: content-addressed by the bootstrap layer digest, reused without a
 *   fetch, written atomically (concurrent writers; a full disk leaves nothing behind).
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { CLI, sh } from './helpers/mount';
import { startRegistry, seedImage, TestRegistry, SeededImage } from './helpers/registry';
import { convert, ConvertSummary } from '../src/oci/convert';
import { openSink, openSource } from '../src/oci/open';
import { RegistryClient, RegistryImageSink, RegistryImageSource } from '../src/oci/registry-client';
import { extractBootstrap } from '../src/oci/nydus-image';
import { parseReference } from '../src/oci/reference';
import { ImageIndex, MediaTypes } from '../src/oci/types';
import { NYDUS_OS_FEATURE, sha256Digest } from '../src/oci/layout';
import {
  prepareImage, buildRegistration, registryBackendFor, resolveCredentials, bootstrapCachePath, defaultFsid, redactRegistration, PreparedImage,
} from '../src/oci/image-mount';
import { parseBlobCacheEntry } from '../src/daemon/config';
import { makeBackend } from '../src/daemon/daemon';
import { NydusError } from '../src/errors';

let work: string;
let anon: TestRegistry;
let basic: TestRegistry;
let plain: SeededImage;
let nydusRef: string;
let summary: ConvertSummary;
let basicRef: string;
let basicSummary: ConvertSummary;
let emptyDockerConfig: string;

function rejectsWith(code: string, re: RegExp): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof NydusError, `expected a NydusError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, re);
    return true;
  };
}

/** Run the CLI with a private run dir; never throws. */
function cli(args: string[], env: Record<string, string> = {}): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8', maxBuffer: 64 << 20,
    env: { ...process.env, NYDUS_TS_RUN_DIR: path.join(work, 'run'), DOCKER_CONFIG: emptyDockerConfig, ...env },
  });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** GET requests the registry logged for a blob digest. */
function blobGets(reg: TestRegistry, digest: string): number {
  return reg.log().split('\n').filter((l) => l.includes(`"GET /v2/`) && l.includes(`/blobs/${digest}`)).length;
}

function tmpLeftovers(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    if (!fs.existsSync(d)) return;
    for (const n of fs.readdirSync(d)) {
      const p = path.join(d, n);
      if (fs.statSync(p).isDirectory()) walk(p);
      else if (n.endsWith('.tmp')) out.push(p);
    }
  };
  walk(dir);
  return out;
}

/** The registration the daemon would get, validated by the daemon's parser; its backend reads blob 0. */
async function checkRegistration(p: PreparedImage, format: 'legacy' | 'v2', dockerConfig: string = emptyDockerConfig): Promise<void> {
  const workDir = path.join(work, 'fscache-work', format);
  fs.mkdirSync(workDir, { recursive: true });
  const body = buildRegistration({ fsid: p.defaultFsid, workDir, bootstrapPath: p.bootstrap.path, backend: p.backend, format });
  const entry = parseBlobCacheEntry(JSON.parse(JSON.stringify(body)));
  assert.equal(entry.format, format);
  assert.equal(entry.id, p.defaultFsid);
  assert.equal(entry.bootstrapPath, p.bootstrap.path);
  assert.equal(entry.workDir, workDir);
  assert.equal(entry.backend.type, 'registry');
  const cfg = entry.backend.config as { scheme: string; host: string; repo: string; auth?: string };
  assert.deepEqual({ scheme: cfg.scheme, host: cfg.host, repo: cfg.repo, auth: cfg.auth }, { scheme: p.backend.scheme, host: p.backend.host, repo: p.backend.repo, auth: p.backend.auth });
  // the daemon's backend made from this registration reads the blob from the registry; the
  // Docker config it would fall back to is empty, so only the registration's auth counts
  const saved = process.env.DOCKER_CONFIG;
  process.env.DOCKER_CONFIG = dockerConfig;
  const backend = makeBackend(entry);
  try {
    const src = new RegistryImageSource(p.reference, { auth: p.backend.auth, dockerConfig: false });
    const blob = await src.blob({ mediaType: MediaTypes.nydusBlob, digest: `sha256:${p.blobIds[0]}`, size: p.blobs[0].size });
    await src.close();
    const got = await backend.readRange(p.blobIds[0], 1000, 5000);
    assert.ok(got.equals(blob.subarray(1000, 6000)), 'registry backend bytes differ from the blob');
  } finally {
    await backend.close?.();
    if (saved === undefined) delete process.env.DOCKER_CONFIG;
    else process.env.DOCKER_CONFIG = saved;
  }
}

before(async () => {
  work = makeTmpDir('nydus-image-mount-');
  emptyDockerConfig = path.join(work, 'docker-empty');
  fs.mkdirSync(emptyDockerConfig);
  anon = await startRegistry();
  plain = await seedImage(anon, 'library/app', 'v1');
  nydusRef = anon.ref('library/app', 'v1-nydus');
  summary = await convert(openSource(plain.reference), openSink(nydusRef), { workDir: path.join(work, 'convert') });
  basic = await startRegistry({ auth: 'basic' });
  const seededBasic = await seedImage(basic, 'team/app', 'v1');
  basicRef = basic.ref('team/app', 'v1-nydus');
  const reg = { auth: basic.creds!.basic };
  basicSummary = await convert(openSource(seededBasic.reference, { registry: reg }), openSink(basicRef, { registry: reg }), { workDir: path.join(work, 'convert') });
});

after(async () => {
  await anon?.stop();
  await basic?.stop();
  if (!process.env.NYDUS_TS_KEEP_TMP) removeTmpDir(work);
});

test('anonymous: resolves the nydus image, caches its bootstrap by layer digest, and builds registrations the daemon accepts (legacy and v2)', async () => {
  const wd = path.join(work, 'wd-anon');
  const p = await prepareImage(nydusRef, { workDir: wd, dockerConfig: false });
  assert.equal(p.reference, nydusRef);
  assert.equal(p.manifestDigest, summary.target_manifest_digest);
  assert.equal(p.via, 'manifest');
  assert.equal(p.platform, 'linux/amd64');
  assert.deepEqual(p.blobIds, summary.blobs.map((b) => b.blob_id));
  assert.deepEqual(p.blobs.map((b) => b.size), summary.blobs.map((b) => b.size));
  assert.equal(p.defaultFsid, summary.target_manifest_digest.slice(7));
  assert.equal(p.defaultFsid, defaultFsid(p.manifestDigest));
  assert.deepEqual(p.backend, { scheme: 'http', host: anon.host, repo: 'library/app' });
  assert.equal(p.credentials, 'none');
  // the cache file: named by the bootstrap layer digest, the exact bootstrap of that layer
  assert.equal(p.bootstrap.layerDigest, summary.bootstrap.digest);
  assert.equal(p.bootstrap.path, path.join(wd, 'bootstraps', 'sha256', `${summary.bootstrap.digest.slice(7)}.boot`));
  assert.equal(p.bootstrap.path, bootstrapCachePath(wd, summary.bootstrap.digest));
  assert.equal(p.bootstrap.cached, false);
  const src = new RegistryImageSource(nydusRef);
  const layer = await src.blob({ mediaType: MediaTypes.ociLayerGzip, digest: summary.bootstrap.digest, size: summary.bootstrap.size });
  await src.close();
  assert.ok(fs.readFileSync(p.bootstrap.path).equals(await extractBootstrap(layer)));
  assert.equal(p.bootstrap.size, summary.bootstrap.bootstrap_size);
  assert.deepEqual(tmpLeftovers(wd), []);

  // the legacy body is the snapshotter's (rafs-v6.md §4.4)
  const legacy = buildRegistration({ fsid: 'F', domainId: 'D', workDir: '/w', bootstrapPath: '/b', backend: p.backend });
  assert.deepEqual(Object.keys(legacy), ['type', 'id', 'domain_id', 'config']);
  assert.deepEqual(Object.keys(legacy.config!).sort(), ['backend_config', 'backend_type', 'cache_config', 'cache_type', 'id', 'metadata_path', 'prefetch_config'].sort());
  assert.equal(legacy.config!.backend_type, 'registry');
  const v2 = buildRegistration({ fsid: 'F', workDir: '/w', bootstrapPath: '/b', backend: p.backend, format: 'v2' });
  assert.deepEqual((v2.config_v2 as { backend: unknown }).backend, { type: 'registry', registry: p.backend });
  assert.equal(v2.domain_id, '');
  // an amplification window (the snapshotter's --amplify-io) is carried by the v2 shape only
  const narrow = buildRegistration({ fsid: 'F', workDir: wd, bootstrapPath: p.bootstrap.path, backend: p.backend, amplifyIo: 131072 });
  assert.ok(narrow.config_v2 && !narrow.config, 'amplifyIo picks the v2 shape');
  const parsed = parseBlobCacheEntry(JSON.parse(JSON.stringify(narrow)));
  assert.equal(parsed.amplifyIo, 131072, 'the daemon takes the window from rafs.batch_size');
  const wide = buildRegistration({ fsid: 'F', workDir: wd, bootstrapPath: p.bootstrap.path, backend: p.backend, format: 'v2' });
  assert.equal(parseBlobCacheEntry(JSON.parse(JSON.stringify(wide))).amplifyIo, 1 << 20, 'default 1 MiB');
  assert.throws(() => buildRegistration({ fsid: 'F', workDir: '/w', bootstrapPath: '/b', backend: p.backend, format: 'legacy', amplifyIo: 4096 }), /needs the v2 registration shape/);

  await checkRegistration(p, 'legacy');
  await checkRegistration(p, 'v2');
});

test('the bootstrap cache: a second prepare fetches nothing; concurrent prepares write one whole file; a broken file is replaced', async () => {
  const wd = path.join(work, 'wd-cache');
  const layer = summary.bootstrap.digest;
  const first = await prepareImage(nydusRef, { workDir: wd, dockerConfig: false });
  const gets = blobGets(anon, layer);
  assert.ok(gets >= 1, 'the registry log shows the bootstrap layer GET');
  const st = fs.statSync(first.bootstrap.path);
  const again = await prepareImage(nydusRef, { workDir: wd, dockerConfig: false });
  assert.equal(again.bootstrap.cached, true);
  assert.equal(again.bootstrap.path, first.bootstrap.path);
  assert.equal(fs.statSync(again.bootstrap.path).mtimeMs, st.mtimeMs, 'a cached bootstrap is not rewritten');
  assert.equal(blobGets(anon, layer), gets, 'a cached bootstrap is not fetched again');

  // concurrent writers into an empty cache: one file, whole, no temporary files left
  const wd2 = path.join(work, 'wd-concurrent');
  const all = await Promise.all([0, 1, 2, 3].map(() => prepareImage(nydusRef, { workDir: wd2, dockerConfig: false })));
  assert.equal(new Set(all.map((x) => x.bootstrap.path)).size, 1);
  assert.deepEqual(fs.readdirSync(path.dirname(all[0].bootstrap.path)), [path.basename(all[0].bootstrap.path)]);
  assert.ok(fs.readFileSync(all[0].bootstrap.path).equals(fs.readFileSync(first.bootstrap.path)));

  // a file at the cache path that is not a bootstrap (e.g. left by a broken tool) is replaced
  fs.writeFileSync(first.bootstrap.path, 'garbage');
  const fixed = await prepareImage(nydusRef, { workDir: wd, dockerConfig: false });
  assert.equal(fixed.bootstrap.cached, false);
  assert.ok(fs.readFileSync(fixed.bootstrap.path).equals(fs.readFileSync(all[0].bootstrap.path)));
  assert.deepEqual(tmpLeftovers(wd), []);
});

test('the bootstrap cache is written atomically: a full disk leaves neither the file nor a temporary file', async () => {
  const small = path.join(work, 'tiny-fs');
  fs.mkdirSync(small);
  sh('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', small]);
  try {
    assert.ok(summary.bootstrap.bootstrap_size > 128 * 1024, `bootstrap ${summary.bootstrap.bootstrap_size} bytes must not fit into 64 KiB`);
    await assert.rejects(prepareImage(nydusRef, { workDir: small, dockerConfig: false }), rejectsWith('ERR_IO', /bootstraps\/sha256\/[0-9a-f]{64}\.boot: .*ENOSPC/));
    assert.deepEqual(fs.readdirSync(path.join(small, 'bootstraps', 'sha256')), []);
  } finally {
    sh('umount', [small]);
  }
});

test('Basic auth: credentials come from DOCKER_CONFIG (or $NYDUS_TS_REGISTRY_CREDS / --creds) and go into the registration', async () => {
  const creds = basic.creds!;
  // nothing configured: a 401 naming the reference
  await assert.rejects(prepareImage(basicRef, { workDir: path.join(work, 'wd-basic0'), dockerConfig: path.join(emptyDockerConfig, 'config.json') }), rejectsWith('ERR_BACKEND', new RegExp(`${basicRef.replace(/[.]/g, '\\.')}.*401.*no credentials configured`)));

  const dc = path.join(work, 'docker-config');
  fs.mkdirSync(dc);
  fs.writeFileSync(path.join(dc, 'config.json'), JSON.stringify({ auths: { [basic.host]: { auth: creds.basic } } }));
  const saved = process.env.DOCKER_CONFIG;
  process.env.DOCKER_CONFIG = dc;
  let p: PreparedImage;
  try {
    p = await prepareImage(basicRef, { workDir: path.join(work, 'wd-basic') });
  } finally {
    if (saved === undefined) delete process.env.DOCKER_CONFIG;
    else process.env.DOCKER_CONFIG = saved;
  }
  assert.equal(p.credentials, 'docker-config');
  assert.equal(p.manifestDigest, basicSummary.target_manifest_digest);
  assert.deepEqual(p.backend, { scheme: 'http', host: basic.host, repo: 'team/app', auth: creds.basic });
  await checkRegistration(p, 'legacy');
  await checkRegistration(p, 'v2');
  const red = redactRegistration(buildRegistration({ fsid: 'f', workDir: '/w', bootstrapPath: '/b', backend: p.backend }));
  assert.equal((red.config!.backend_config as { auth: string }).auth, '<redacted>');
  assert.ok(!JSON.stringify(red).includes(creds.basic));

  // the environment variable, and explicit credentials (wrong ones are rejected by the registry)
  const e = await prepareImage(basicRef, { workDir: path.join(work, 'wd-basic'), dockerConfig: false, env: { NYDUS_TS_REGISTRY_CREDS: creds.skopeo } });
  assert.equal(e.credentials, 'env');
  assert.equal(e.backend.auth, creds.basic);
  assert.equal(e.bootstrap.cached, true);
  const f = await prepareImage(basicRef, { workDir: path.join(work, 'wd-basic'), creds: creds.skopeo });
  assert.equal(f.credentials, 'flags');
  await assert.rejects(prepareImage(basicRef, { workDir: path.join(work, 'wd-basic'), creds: `${creds.username}:wrong` }), rejectsWith('ERR_BACKEND', /401.*credentials or token rejected/));
  assert.throws(() => resolveCredentials(parseReference(basicRef), { creds: 'no-colon' }), rejectsWith('ERR_INVALID_ARGUMENT', /--creds: expected USER:PASSWORD/));
});

test('scheme and host: --insecure → http, https otherwise, loopback → http; Docker Hub → index.docker.io', async () => {
  const ext = parseReference('registry.example.com/team/app:1');
  assert.equal(registryBackendFor(ext, { insecure: true }).scheme, 'http');
  assert.equal(registryBackendFor(ext).scheme, 'https');
  assert.deepEqual(registryBackendFor(ext), { scheme: 'https', host: 'registry.example.com', repo: 'team/app' });
  assert.equal(registryBackendFor(parseReference('localhost:5000/a:b')).scheme, 'http');
  assert.deepEqual(registryBackendFor(parseReference('ubuntu:22.04')), { scheme: 'https', host: 'index.docker.io', repo: 'library/ubuntu' });
  assert.deepEqual(registryBackendFor(ext, { insecure: true, credentials: { registryToken: 'tok', source: 'flags' } }), { scheme: 'http', host: 'registry.example.com', repo: 'team/app', registry_token: 'tok' });
  const p = await prepareImage(nydusRef, { insecure: true, workDir: path.join(work, 'wd-anon'), dockerConfig: false });
  assert.equal(p.backend.scheme, 'http');
});

test('an index: the nydus alternative is picked; a plain-only index and a missing platform are clear errors', async () => {
  const src = new RegistryImageSource(nydusRef);
  const nyd = await src.root();
  await src.close();
  const plainDesc = { mediaType: MediaTypes.ociManifest, digest: plain.manifestDescriptor.digest, size: plain.manifestDescriptor.size, platform: { os: 'linux', architecture: 'amd64' } };
  const nydDesc = { mediaType: MediaTypes.ociManifest, digest: nyd.descriptor.digest, size: nyd.descriptor.size, platform: { os: 'linux', architecture: 'amd64', 'os.features': [NYDUS_OS_FEATURE] } };
  const push = async (tag: string, index: ImageIndex): Promise<string> => {
    const sink = new RegistryImageSink(anon.ref('library/app', tag));
    const raw = Buffer.from(JSON.stringify(index));
    const d = await sink.pushManifest(raw, MediaTypes.ociIndex);
    await sink.close();
    assert.equal(d, sha256Digest(raw));
    return d;
  };
  const both = await push('multi', { schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [plainDesc, nydDesc] });
  const p = await prepareImage(anon.ref('library/app', 'multi'), { workDir: path.join(work, 'wd-anon'), platform: 'linux/amd64', dockerConfig: false });
  assert.equal(p.via, 'index-nydus-alternative');
  assert.equal(p.manifestDigest, summary.target_manifest_digest);
  assert.equal(p.root.digest, both);
  assert.deepEqual(p.blobIds, summary.blobs.map((b) => b.blob_id));

  await assert.rejects(
    prepareImage(anon.ref('library/app', 'multi'), { workDir: path.join(work, 'wd-anon'), platform: 'linux/arm64', dockerConfig: false }),
    rejectsWith('ERR_NOT_FOUND', /library\/app:multi: index sha256:[0-9a-f]{64}: no manifest for platform linux\/arm64; available: linux\/amd64, linux\/amd64 \(nydus\) \(choose one with --platform\)/),
  );
  await push('plain-index', { schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [plainDesc] });
  await assert.rejects(
    prepareImage(anon.ref('library/app', 'plain-index'), { workDir: path.join(work, 'wd-anon'), platform: 'linux/amd64', dockerConfig: false }),
    rejectsWith('ERR_INVALID_ARGUMENT', /library\/app:plain-index: not a nydus image \(the index's linux\/amd64 manifest sha256:.*\(the index has no nydus alternative\); convert it first/),
  );
});

test('not a nydus image, no such tag, no such repository, a lost bootstrap layer: errors name the reference (library and CLI, no daemon started)', async () => {
  const wd = path.join(work, 'wd-errors');
  await assert.rejects(
    prepareImage(plain.reference, { workDir: wd, dockerConfig: false }),
    rejectsWith('ERR_INVALID_ARGUMENT', new RegExp(`^${plain.reference.replace(/[.]/g, '\\.')}: not a nydus image \\(manifest sha256:[0-9a-f]{64} has 2 layers of ${MediaTypes.ociLayerGzip.replace(/[.+]/g, '\\$&')} and no nydus bootstrap layer\\); convert it first: nydus-ts convert --source ${plain.reference.replace(/[.]/g, '\\.')} --target .*library/app:v1-nydus$`)),
  );
  await assert.rejects(prepareImage(anon.ref('library/app', 'nope'), { workDir: wd, dockerConfig: false }), rejectsWith('ERR_NOT_FOUND', /library\/app:nope: image not found: the registry has no tag "nope" in library\/app/));
  await assert.rejects(prepareImage(anon.ref('no/such-repo', 'v1'), { workDir: wd, dockerConfig: false }), rejectsWith('ERR_NOT_FOUND', /no\/such-repo:v1: image not found: the registry has no (repository no\/such-repo|tag "v1" in no\/such-repo)/));
  await assert.rejects(prepareImage('Bad/Ref', { workDir: wd }), rejectsWith('ERR_INVALID_ARGUMENT', /invalid image reference "Bad\/Ref"/));
  // a manifest whose bootstrap layer the registry lost
  const from = new RegistryClient(nydusRef);
  const m = await from.getManifest();
  await from.close();
  const broken = new RegistryClient(anon.ref('library/broken', 'v1'), { push: true });
  for (const d of [m.parsed.manifest!.config, ...m.parsed.manifest!.layers]) assert.equal(await broken.mountBlob(d.digest, 'library/app'), true);
  await broken.putManifest(m.raw, MediaTypes.ociManifest, 'v1');
  await broken.call('DELETE', broken.url('blobs', summary.bootstrap.digest), { ok: [202], what: 'DELETE blob' });
  await broken.close();
  await assert.rejects(
    prepareImage(anon.ref('library/broken', 'v1'), { workDir: wd, dockerConfig: false }),
    rejectsWith('ERR_NOT_FOUND', new RegExp(`library/broken:v1: the registry has no bootstrap layer ${summary.bootstrap.digest} \\(a broken or partly deleted image\\)`)),
  );

  assert.ok(!fs.existsSync(path.join(wd, 'bootstraps', 'sha256')) || fs.readdirSync(path.join(wd, 'bootstraps', 'sha256')).length === 0);

  const sock = path.join(work, 'run', 'api.sock');
  const mnt = path.join(work, 'mnt');
  const base = ['mount', '--apisock', sock, '--fscache', path.join(work, 'fscache'), '--work-dir', wd];
  const r1 = cli([...base, '--image', plain.reference, '--insecure', mnt]);
  assert.equal(r1.status, 1, r1.stderr);
  assert.match(r1.stderr, new RegExp(`^nydus-ts: error: ${plain.reference.replace(/[.]/g, '\\.')}: not a nydus image .*nydus-ts convert --source`, 'm'));
  const r2 = cli([...base, '--image', anon.ref('library/app', 'nope'), mnt]);
  assert.equal(r2.status, 1, r2.stderr);
  assert.match(r2.stderr, /nydus-ts: error: 127\.0\.0\.1:\d+\/library\/app:nope: image not found: the registry has no tag "nope"/);
  const r3 = cli([...base, '--image', basicRef, mnt]);
  assert.equal(r3.status, 1, r3.stderr);
  assert.match(r3.stderr, /team\/app:v1-nydus.*HTTP 401 unauthorized \(no credentials configured\)/);
  const r4 = cli([...base, '--image', basicRef, '--creds', `${basic.creds!.username}:wrong`, mnt]);
  assert.equal(r4.status, 1, r4.stderr);
  assert.match(r4.stderr, /credentials or token rejected/);
  assert.ok(!fs.existsSync(sock), 'no daemon was started for a failed resolution');
  assert.ok(!fs.existsSync(mnt), 'no mount point was made');
});

test('CLI: --image and --bootstrap/--blob-dir are mutually exclusive; image flags need --image', () => {
  const mnt = path.join(work, 'mnt2');
  const r1 = cli(['mount', '--image', nydusRef, '--bootstrap', '/x.boot', '--blob-dir', '/b', mnt]);
  assert.equal(r1.status, 1);
  assert.match(r1.stderr, /nydus-ts: error: .*--image and --bootstrap\/--blob-dir are mutually exclusive/);
  const r2 = cli(['mount', mnt]);
  assert.equal(r2.status, 1);
  assert.match(r2.stderr, /nothing to mount: give --image REF, or --bootstrap FILE and --blob-dir DIR/);
  const r3 = cli(['mount', '--bootstrap', '/x.boot', '--blob-dir', '/b', '--insecure', mnt]);
  assert.equal(r3.status, 1);
  assert.match(r3.stderr, /--insecure only applies to --image/);
  const r4 = cli(['mount', '--bootstrap', '/x.boot', mnt]);
  assert.equal(r4.status, 1);
  assert.match(r4.stderr, /--bootstrap needs --blob-dir DIR/);
  const r5 = cli(['mount', '--image', 'localhost:5000/Upper:x', mnt]);
  assert.equal(r5.status, 1);
  assert.match(r5.stderr, /nydus-ts: error: invalid image reference "localhost:5000\/Upper:x": repository name must be lower case/);
  const h = cli(['mount', '--help']);
  assert.equal(h.status, 0);
  assert.match(h.stdout, /--image <ref>/);
  assert.match(h.stdout, /--output-json <file>/);
});
