/**
 * OCI Distribution client (src/oci/registry-client.ts) and OCI layouts (src/oci/layout.ts):
 * - unit tests against in-process node:http servers (digest mismatch in a streamed blob,
 *   platform selection errors, nydus alternatives, upload Location handling, chunk resume);
 * - the REAL docker-registry (distribution 2.8) in anonymous, htpasswd and token-auth modes,
 *   with images seeded and checked by skopeo.
 */
import { test, describe, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { execFileSync } from 'node:child_process';
import { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { RegistryClient, RegistryImageSink, RegistryImageSource, RegistryClientOptions } from '../src/oci/registry-client';
import { OciLayoutSink, OciLayoutSource, readAll, selectManifest, sha256Digest, REF_NAME_ANNOTATION, parsePlatform } from '../src/oci/layout';
import { Descriptor, ImageIndex, ImageSink, ImageSource, MediaTypes } from '../src/oci/types';
import { NydusError } from '../src/errors';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { TestRegistry, buildOciImage, seedImage, skopeoInspect, skopeoPull, startRegistry, SeededImage } from './helpers/registry';

const FAST: RegistryClientOptions = { dockerConfig: false, backoffBaseMs: 5, backoffMaxMs: 20, timeoutMs: 10_000, retryLimit: 2 };

const tmpDirs: string[] = [];
function tmp(prefix: string): string {
  const d = makeTmpDir(prefix);
  tmpDirs.push(d);
  return d;
}
after(() => {
  if (!process.env.NYDUS_TS_KEEP_TMP) for (const d of tmpDirs) removeTmpDir(d);
});

function isErr(code: string, re?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof NydusError, `NydusError expected, got ${(e as Error)?.stack ?? e}`);
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    return true;
  };
}

async function sha256Stream(s: Readable): Promise<{ digest: string; size: number }> {
  const h = crypto.createHash('sha256');
  let size = 0;
  for await (const c of s) {
    h.update(c as Buffer);
    size += (c as Buffer).length;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

/** copy one image (config, layers, manifest) from a source to a sink, as convert/copy would */
async function copyImage(src: ImageSource, sink: ImageSink, blobFile?: (d: Descriptor) => string): Promise<string> {
  const m = await src.manifest();
  for (const d of [m.manifest.config, ...m.manifest.layers]) {
    await sink.pushBlob(d, blobFile ? { path: blobFile(d) } : await src.blob(d));
  }
  return sink.pushManifest(m.raw, m.descriptor.mediaType);
}

// ---------------------------------------------------------------------------------------------
// in-process fake registries

interface Fake {
  url: string;
  host: string;
  log: string[];
  close(): Promise<void>;
}
const fakes: Fake[] = [];
after(async () => {
  for (const f of fakes) await f.close();
});

async function fake(handler: (req: http.IncomingMessage, body: Buffer, res: http.ServerResponse, self: Fake) => void): Promise<Fake> {
  const self = { log: [] as string[] } as unknown as Fake;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      self.log.push(`${req.method} ${req.url}`);
      handler(req, Buffer.concat(chunks), res, self);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  self.url = `http://127.0.0.1:${port}`;
  self.host = `127.0.0.1:${port}`;
  self.close = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  fakes.push(self);
  return self;
}

function json(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  const b = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(b.length), ...headers });
  res.end(b);
}

describe('registry client against in-process servers', () => {
  test('scheme: https by default, http with insecure or for loopback registries, explicit scheme wins', async () => {
    const origin = (ref: string, o: RegistryClientOptions = {}) => {
      const c = new RegistryClient(ref, { ...o, dockerConfig: false });
      void c.close();
      return c.origin;
    };
    assert.equal(origin('ubuntu'), 'https://registry-1.docker.io');
    assert.equal(origin('ghcr.io/a/b:1'), 'https://ghcr.io');
    assert.equal(origin('registry.local:5000/a', { insecure: true }), 'http://registry.local:5000');
    assert.equal(origin('localhost:5000/a'), 'http://localhost:5000');
    assert.equal(origin('127.0.0.1:5000/a'), 'http://127.0.0.1:5000');
    assert.equal(origin('[::1]:5000/a'), 'http://[::1]:5000');
    assert.equal(origin('localhost:5000/a', { scheme: 'https' }), 'https://localhost:5000');
    const c = new RegistryClient('ghcr.io/a/b:1', { dockerConfig: false });
    assert.equal(c.url('blobs', sha256Digest('x')), `https://ghcr.io/v2/a/b/blobs/${sha256Digest('x')}`);
    await c.close();
  });

  test('a streamed blob with wrong bytes errors with ERR_DIGEST_MISMATCH at the end; a short one too', async () => {
    const good = crypto.randomBytes(300_000);
    const desc: Descriptor = { mediaType: MediaTypes.ociLayerGzip, digest: sha256Digest(good), size: good.length };
    const evil = Buffer.from(good);
    evil[123_456] ^= 0xff;
    let serve = evil;
    const f = await fake((_req, _b, res) => {
      res.writeHead(200, { 'content-length': String(serve.length), 'content-type': 'application/octet-stream' });
      res.end(serve);
    });
    const src = new RegistryImageSource(`${f.host}/x/y:1`, FAST);
    try {
      const s = await src.blobStream(desc);
      let seen = 0;
      await assert.rejects(
        (async () => {
          for await (const c of s) seen += (c as Buffer).length;
        })(),
        isErr('ERR_DIGEST_MISMATCH', /digest mismatch: expected sha256:[0-9a-f]{64}, got sha256:[0-9a-f]{64}/),
      );
      assert.ok(seen > 0 && seen <= good.length, `bytes flow through before the check at the end (${seen})`);
      await assert.rejects(src.blob(desc), isErr('ERR_DIGEST_MISMATCH'));
      serve = good.subarray(0, 1000);
      await assert.rejects(readAll(await src.blobStream(desc)), isErr('ERR_DIGEST_MISMATCH', /has 1000 bytes, its descriptor says 300000/));
      serve = Buffer.concat([good, Buffer.from('x')]);
      await assert.rejects(readAll(await src.blobStream(desc)), isErr('ERR_DIGEST_MISMATCH', /longer than its descriptor size/));
      serve = good;
      assert.ok((await src.blob(desc)).equals(good));
      assert.deepEqual(await sha256Stream(await src.blobStream(desc)), { digest: desc.digest, size: good.length });
    } finally {
      await src.close();
    }
  });

  test('index platform selection: default linux/amd64, nydus alternatives only when asked, errors list platforms', async () => {
    const man = (n: string) => Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociManifest, config: { mediaType: MediaTypes.ociConfig, digest: sha256Digest(n), size: n.length }, layers: [] }));
    const bodies = new Map<string, Buffer>();
    const entry = (name: string, platform: Descriptor['platform'], extra: Partial<Descriptor> = {}): Descriptor => {
      const raw = man(name);
      bodies.set(sha256Digest(raw), raw);
      return { mediaType: MediaTypes.ociManifest, digest: sha256Digest(raw), size: raw.length, platform, ...extra };
    };
    const amd = entry('amd64', { os: 'linux', architecture: 'amd64' });
    const arm = entry('arm64', { os: 'linux', architecture: 'arm64', variant: 'v8' });
    const nydusAmd = entry('nydus-amd64', { os: 'linux', architecture: 'amd64', 'os.features': ['nydus.remoteimage.v1'] });
    const att = entry('attestation', { os: 'unknown', architecture: 'unknown' });
    const index: ImageIndex = { schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [nydusAmd, amd, arm, att] };
    const indexRaw = Buffer.from(JSON.stringify(index));
    const f = await fake((req, _b, res) => {
      const ref = req.url!.split('/manifests/')[1];
      const raw = ref === 'multi' ? indexRaw : bodies.get(ref);
      if (!raw) return json(res, 404, { errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }] });
      res.writeHead(200, { 'content-type': ref === 'multi' ? MediaTypes.ociIndex : MediaTypes.ociManifest, 'docker-content-digest': sha256Digest(raw) });
      res.end(req.method === 'HEAD' ? undefined : raw);
    });
    const src = new RegistryImageSource(`${f.host}/r:multi`, FAST);
    try {
      assert.equal((await src.manifest()).descriptor.digest, amd.digest);
      assert.equal((await src.manifest({ nydus: true })).descriptor.digest, nydusAmd.digest);
      const a = await src.manifest({ platform: parsePlatform('linux/arm64') });
      assert.equal(a.descriptor.digest, arm.digest);
      assert.deepEqual(a.descriptor.platform, arm.platform);
      assert.equal((await src.manifest({ platform: parsePlatform('linux/arm64/v8') })).descriptor.digest, arm.digest);
      await assert.rejects(src.manifest({ platform: parsePlatform('linux/s390x') }), (e: unknown) => {
        isErr('ERR_NOT_FOUND', /no manifest for platform linux\/s390x; available: linux\/amd64 \(nydus\), linux\/amd64, linux\/arm64\/v8, unknown\/unknown/)(e);
        assert.deepEqual((e as NydusError).context.available, ['linux/amd64 (nydus)', 'linux/amd64', 'linux/arm64/v8', 'unknown/unknown']);
        return true;
      });
      await assert.rejects(src.manifest({ platform: parsePlatform('linux/arm64'), nydus: true }), isErr('ERR_NOT_FOUND', /no nydus manifest for platform linux\/arm64/));
      // artifactType marks a nydus alternative too
      const idx2: ImageIndex = { schemaVersion: 2, manifests: [{ ...amd, artifactType: MediaTypes.nydusManifestArtifact, digest: nydusAmd.digest }, amd] };
      assert.equal(selectManifest(idx2, { nydus: true }).digest, nydusAmd.digest);
      assert.equal(selectManifest(idx2).digest, amd.digest);
      // a manifest fetched by digest is checked against it
      bodies.set(arm.digest, man('tampered'));
      await assert.rejects(src.manifest({ platform: parsePlatform('linux/arm64') }), isErr('ERR_DIGEST_MISMATCH'));
      const missing = new RegistryImageSource(`${f.host}/r:nope`, FAST);
      await assert.rejects(missing.manifest(), isErr('ERR_NOT_FOUND', /MANIFEST_UNKNOWN manifest unknown/));
      await missing.close();
    } finally {
      await src.close();
    }
  });

  test('upload protocol: relative and absolute Location headers, chunked PATCH with resume, monolithic PUT, HEAD skip', async () => {
    const uploads = new Map<string, Buffer>();
    const stored = new Map<string, Buffer>();
    let failNextPatch = false;
    let n = 0;
    const f = await fake((req, body, res, self) => {
      const u = new URL(req.url!, self.url);
      const state = u.searchParams.get('_state');
      const m = /^\/v2\/r\/blobs\/(sha256:[0-9a-f]+)$/.exec(u.pathname);
      if (m && req.method === 'HEAD') {
        const b = stored.get(m[1]);
        res.writeHead(b ? 200 : 404, b ? { 'content-length': String(b.length) } : {});
        return res.end();
      }
      if (req.method === 'POST' && u.pathname === '/v2/r/blobs/uploads/') {
        const id = `u${++n}`;
        uploads.set(id, Buffer.alloc(0));
        // relative Location with its own query
        res.writeHead(202, { location: `/v2/r/blobs/uploads/${id}?_state=s0`, range: '0-0', 'content-length': '0' });
        return res.end();
      }
      const um = /\/uploads\/(u\d+)$/.exec(u.pathname);
      if (um && uploads.has(um[1])) {
        const id = um[1];
        let have = uploads.get(id)!;
        if (!state) return json(res, 400, { errors: [{ code: 'BLOB_UPLOAD_INVALID', message: 'lost _state' }] });
        if (req.method === 'GET') {
          res.writeHead(204, { location: `${self.url}/other/uploads/${id}?_state=g`, range: `0-${have.length - 1}` });
          return res.end();
        }
        if (req.method === 'PATCH') {
          const cr = /^(\d+)-(\d+)$/.exec(String(req.headers['content-range']));
          if (!cr || Number(cr[1]) !== have.length) return json(res, 416, { errors: [{ code: 'BLOB_UPLOAD_INVALID', message: `range ${req.headers['content-range']} at ${have.length}` }] });
          if (failNextPatch) {
            // keep half of the chunk, then fail
            failNextPatch = false;
            uploads.set(id, Buffer.concat([have, body.subarray(0, body.length >> 1)]));
            return json(res, 503, { errors: [{ code: 'UNAVAILABLE', message: 'try again' }] });
          }
          have = Buffer.concat([have, body]);
          uploads.set(id, have);
          // absolute Location on another path
          res.writeHead(202, { location: `${self.url}/other/uploads/${id}?_state=p${have.length}`, range: `0-${have.length - 1}`, 'content-length': '0' });
          return res.end();
        }
        if (req.method === 'PUT') {
          const digest = u.searchParams.get('digest')!;
          const all = Buffer.concat([have, body]);
          if (sha256Digest(all) !== digest) return json(res, 400, { errors: [{ code: 'DIGEST_INVALID', message: 'provided digest did not match uploaded content' }] });
          stored.set(digest, all);
          uploads.delete(id);
          res.writeHead(201, { location: `/v2/r/blobs/${digest}`, 'docker-content-digest': digest, 'content-length': '0' });
          return res.end();
        }
      }
      json(res, 404, { errors: [{ code: 'NOT_FOUND', message: `${req.method} ${req.url}` }] });
    });
    const dir = tmp('nydus-ts-upload-');
    const big = crypto.randomBytes(2_500_000);
    const bigFile = path.join(dir, 'big');
    fs.writeFileSync(bigFile, big);
    const bigDesc: Descriptor = { mediaType: MediaTypes.ociLayerGzip, digest: sha256Digest(big), size: big.length };
    const sink = new RegistryImageSink(`${f.host}/r:t`, { ...FAST, monolithicMax: 1_000_000, chunkSize: 1_000_000 });
    try {
      // chunked, from a file, with a failure in the middle resumed from the registry's Range
      failNextPatch = false;
      const progress: number[] = [];
      f.log.length = 0;
      await sink.pushBlob(bigDesc, { path: bigFile }, (b) => progress.push(b));
      assert.ok(stored.get(bigDesc.digest)!.equals(big));
      assert.deepEqual(f.log.map((l) => l.replace(/\?.*/, '').replace(/u\d+/, 'U').replace(/sha256:\w+/, 'D')), [
        'HEAD /v2/r/blobs/D',
        'POST /v2/r/blobs/uploads/',
        'PATCH /v2/r/blobs/uploads/U',
        'PATCH /other/uploads/U',
        'PATCH /other/uploads/U',
        'PUT /other/uploads/U',
      ]);
      assert.match(f.log[5], /_state=p2500000&digest=sha256%3A|_state=p2500000&digest=sha256:/);
      assert.equal(progress[progress.length - 1], big.length);
      assert.equal(sink.stats.chunkedUploads, 1);

      const big2 = crypto.randomBytes(2_200_000);
      const f2 = path.join(dir, 'big2');
      fs.writeFileSync(f2, big2);
      f.log.length = 0;
      failNextPatch = true;
      await sink.pushBlob({ mediaType: MediaTypes.ociLayerGzip, digest: sha256Digest(big2), size: big2.length }, { path: f2 });
      assert.ok(stored.get(sha256Digest(big2))!.equals(big2));
      assert.ok(f.log.some((l) => l.startsWith('GET /v2/r/blobs/uploads/')), `upload status asked after the failure: ${f.log.join(', ')}`);

      // monolithic from memory: POST (relative Location) then PUT ?_state=…&digest=
      const small = crypto.randomBytes(5000);
      f.log.length = 0;
      await sink.pushBlob({ mediaType: MediaTypes.ociConfig, digest: sha256Digest(small), size: small.length }, small);
      assert.ok(stored.get(sha256Digest(small))!.equals(small));
      assert.equal(f.log.length, 3);
      assert.match(f.log[2], /^PUT \/v2\/r\/blobs\/uploads\/u\d+\?_state=s0&digest=sha256/);

      // existing blob: HEAD only
      f.log.length = 0;
      await sink.pushBlob({ mediaType: MediaTypes.ociConfig, digest: sha256Digest(small), size: small.length }, small);
      assert.deepEqual(f.log.map((l) => l.split(' ')[0]), ['HEAD']);
      assert.equal(sink.stats.skippedBlobs, 1);

      // wrong data for a digest: the registry's DIGEST_INVALID becomes ERR_DIGEST_MISMATCH
      const other = crypto.randomBytes(100);
      await assert.rejects(sink.pushBlob({ mediaType: MediaTypes.ociConfig, digest: sha256Digest(crypto.randomBytes(100)), size: 100 }, other), isErr('ERR_DIGEST_MISMATCH', /DIGEST_INVALID/));
      // size mismatch is caught before uploading
      await assert.rejects(sink.pushBlob({ ...bigDesc, size: 7 }, { path: bigFile }), isErr('ERR_DIGEST_MISMATCH', /data has 2500000 bytes, its descriptor says 7/));
    } finally {
      await sink.close();
    }
  });

  test('blob GET redirects are followed; the Authorization header is not sent to another host', async () => {
    const data = crypto.randomBytes(5000);
    const desc: Descriptor = { mediaType: MediaTypes.ociLayerGzip, digest: sha256Digest(data), size: data.length };
    const seenAuth: Array<string | undefined> = [];
    const storage = await fake((req, _b, res) => {
      seenAuth.push(req.headers.authorization);
      res.writeHead(200, { 'content-length': String(data.length) });
      res.end(data);
    });
    const f = await fake((req, _b, res) => {
      if (req.headers.authorization !== `Basic ${Buffer.from('u:p').toString('base64')}`) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="x"' });
        return res.end();
      }
      res.writeHead(307, { location: `${storage.url}/bucket/blob?X-Signature=abc` });
      res.end();
    });
    const src = new RegistryImageSource(`${f.host}/r:1`, { ...FAST, username: 'u', password: 'p' });
    try {
      assert.ok((await src.blob(desc)).equals(data));
      assert.deepEqual(seenAuth, [undefined]);
      assert.deepEqual(storage.log, ['GET /bucket/blob?X-Signature=abc']);
    } finally {
      await src.close();
    }
  });

  test('401 without credentials, Basic with wrong ones, and push token scopes', async () => {
    const scopes: string[][] = [];
    const tokenSrv = await fake((req, _b, res) => {
      const u = new URL(req.url!, 'http://x');
      scopes.push(u.searchParams.getAll('scope'));
      json(res, 200, { token: 'tok', expires_in: 300 });
    });
    const f = await fake((req, _b, res) => {
      if (req.url!.startsWith('/v2/basic/')) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="x"', 'content-type': 'application/json' });
        return res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
      }
      if (req.headers.authorization !== 'Bearer tok') {
        res.writeHead(401, { 'www-authenticate': `Bearer realm="${tokenSrv.url}/token",service="svc",scope="repository:tok/repo:pull"` });
        return res.end();
      }
      res.writeHead(404, { 'content-length': '0' });
      res.end();
    });
    const anon = new RegistryClient(`${f.host}/basic/repo:1`, FAST);
    await assert.rejects(anon.getManifest(), isErr('ERR_BACKEND', /HTTP 401 unauthorized \(no credentials configured\): UNAUTHORIZED authentication required/));
    const wrong = new RegistryClient(`${f.host}/basic/repo:1`, { ...FAST, username: 'u', password: 'bad' });
    await assert.rejects(wrong.getManifest(), (e: unknown) => {
      isErr('ERR_BACKEND', /credentials or token rejected/)(e);
      assert.equal((e as NydusError).context.status, 401);
      assert.equal((e as NydusError).context.reference, `${f.host}/basic/repo:1`);
      return true;
    });
    const pusher = new RegistryClient(`${f.host}/tok/repo:1`, { ...FAST, push: true });
    assert.equal(await pusher.headBlob(sha256Digest('x')), undefined);
    assert.deepEqual(scopes, [['repository:tok/repo:pull,push', 'repository:tok/repo:pull']]);
    for (const c of [anon, wrong, pusher]) await c.close();
  });
});

describe('OCI layout source and sink', () => {
  test('round trip: build an image, read it back, copy it to another layout (atomic blob writes)', async () => {
    const dir = tmp('nydus-ts-layout-');
    const built = await buildOciImage(path.join(dir, 'a'), { tag: 'v1', platforms: ['linux/amd64', 'linux/arm64'] });
    const src = new OciLayoutSource(built.layoutDir, { tag: 'v1' });
    const m = await src.manifest();
    assert.equal(m.descriptor.digest, built.manifestDescriptor.digest);
    assert.equal((await src.manifest({ platform: parsePlatform('linux/arm64') })).descriptor.digest, built.manifests[1].descriptor.digest);
    await assert.rejects(src.manifest({ platform: parsePlatform('linux/ppc64le') }), isErr('ERR_NOT_FOUND', /available: linux\/amd64, linux\/arm64/));
    await assert.rejects(new OciLayoutSource(built.layoutDir, { tag: 'nope' }).manifest(), isErr('ERR_NOT_FOUND', /tags: v1/));
    const cfg = JSON.parse((await src.blob(m.manifest.config)).toString());
    assert.deepEqual(cfg.rootfs.diff_ids, built.layers.map((l) => l.diffId));
    // diff_ids are the sha256 of the uncompressed layers
    for (const l of built.layers) {
      const gunzipped = await sha256Stream((await src.blobStream(l.descriptor)).pipe(zlib.createGunzip()));
      assert.equal(gunzipped.digest, l.diffId);
    }
    // layer 2 carries the whiteouts
    const names = built.layers[1].entries;
    assert.ok(names.some((e) => /\.wh\.\.wh\.\.opq$/.test(e)), names.join(' '));
    assert.ok(names.some((e) => /zoneinfo\/\.wh\.[^/]+$/.test(e)), names.join(' '));
    const out = new OciLayoutSink(path.join(dir, 'b'), { tag: 'copy' });
    const digest = await copyImage(src, out, (d) => src.blobFile(d));
    assert.equal(digest, built.manifestDescriptor.digest);
    const idx = JSON.parse(fs.readFileSync(path.join(dir, 'b', 'index.json'), 'utf8'));
    assert.equal(idx.manifests.length, 1);
    assert.equal(idx.manifests[0].annotations[REF_NAME_ANNOTATION], 'copy');
    assert.deepEqual(fs.readdirSync(path.join(dir, 'b', 'blobs', 'sha256')).filter((f) => f.includes('.tmp')), []);
    // corrupt a blob: reading it fails
    const victim = out.blobFile(m.manifest.layers[1]);
    fs.writeFileSync(victim, Buffer.concat([fs.readFileSync(victim), Buffer.from('junk')]));
    await assert.rejects(new OciLayoutSource(path.join(dir, 'b'), { tag: 'copy' }).blob(m.manifest.layers[1]), isErr('ERR_DIGEST_MISMATCH'));
    // a wrong blob is not stored under the digest
    const bad: Descriptor = { mediaType: MediaTypes.ociConfig, digest: sha256Digest('something else'), size: 4 };
    await assert.rejects(out.pushBlob(bad, Buffer.from('abcd')), isErr('ERR_DIGEST_MISMATCH'));
    assert.equal(await out.hasBlob(bad), false);
    // skopeo reads what we wrote
    const inspect = JSON.parse(execFileSync('skopeo', ['--insecure-policy', 'inspect', '--raw', `oci:${path.join(dir, 'b')}:copy`], { encoding: 'utf8' }));
    assert.equal(inspect.config.digest, m.manifest.config.digest);
  });
});

// ---------------------------------------------------------------------------------------------
// the real registry

for (const mode of ['none', 'basic', 'token'] as const) {
  describe(`real docker-registry, auth=${mode}`, () => {
    let reg: TestRegistry;
    let img: SeededImage;
    let opts: RegistryClientOptions;
    const clients: Array<{ close(): Promise<void> }> = [];
    const track = <T extends { close(): Promise<void> }>(c: T): T => {
      clients.push(c);
      return c;
    };

    before(async () => {
      reg = await startRegistry({ auth: mode });
      try {
        img = await seedImage(reg, 'nydus/seed', 'v1', { platforms: ['linux/amd64', 'linux/arm64'], bigLayerBytes: 3_000_000 });
      } catch (e) {
        reg.dumpLog('seeding');
        throw e;
      }
      opts = { ...FAST, auth: reg.creds?.basic };
    });
    after(async () => {
      for (const c of clients) await c.close();
      await reg?.stop();
    });

    test('pull: index by tag → linux/amd64 (and arm64 when asked), manifest by digest', () =>
      reg.logOnFailure(async () => {
        const src = track(new RegistryImageSource(img.reference, opts));
        const root = await src.root();
        assert.equal(root.parsed.kind, 'index');
        assert.equal(root.descriptor.digest, img.index!.descriptor.digest, 'skopeo --preserve-digests kept the index bytes');
        const m = await src.manifest();
        assert.equal(m.descriptor.digest, img.manifestDescriptor.digest);
        assert.ok(m.raw.equals(img.manifestRaw));
        assert.deepEqual(m.descriptor.platform, { os: 'linux', architecture: 'amd64' });
        assert.equal(m.manifest.layers.length, 3);
        const arm = await src.manifest({ platform: parsePlatform('linux/arm64') });
        assert.equal(arm.descriptor.digest, img.manifests[1].descriptor.digest);
        await assert.rejects(src.manifest({ platform: parsePlatform('windows/amd64') }), isErr('ERR_NOT_FOUND', /available: linux\/amd64, linux\/arm64/));
        const byDigest = track(new RegistryImageSource(`${reg.host}/nydus/seed@${img.manifestDescriptor.digest}`, opts));
        const m2 = await byDigest.manifest();
        assert.ok(m2.raw.equals(img.manifestRaw));
        assert.equal(m2.descriptor.mediaType, MediaTypes.ociManifest);
        const missing = track(new RegistryImageSource(reg.ref('nydus/seed', 'no-such-tag'), opts));
        await assert.rejects(missing.manifest(), isErr('ERR_NOT_FOUND', /MANIFEST_UNKNOWN/));
      }));

    test('blobs: streamed with digest verification, same bytes as the seeded layout', () =>
      reg.logOnFailure(async () => {
        const src = track(new RegistryImageSource(img.reference, opts));
        const m = await src.manifest();
        const cfg = JSON.parse((await src.blob(m.manifest.config)).toString());
        assert.deepEqual(cfg.rootfs.diff_ids, img.layers.map((l) => l.diffId));
        for (const [i, l] of m.manifest.layers.entries()) {
          const got = await sha256Stream(await src.blobStream(l));
          assert.deepEqual(got, { digest: img.layers[i].descriptor.digest, size: img.layers[i].descriptor.size });
        }
        // the whiteout layer, unpacked by GNU tar from what we streamed
        const dir = tmp('nydus-ts-pulled-');
        const tarFile = path.join(dir, 'layer2.tar');
        await pipeline(await src.blobStream(m.manifest.layers[1]), zlib.createGunzip(), fs.createWriteStream(tarFile));
        const listing = execFileSync('tar', ['-tvf', tarFile], { encoding: 'utf8' });
        assert.match(listing, /\.wh\.\.wh\.\.opq/);
        assert.match(listing, /^h.* etc\/nydus-layer2\S* link to etc\/nydus-layer2\S*$/m);
        // a descriptor with the wrong digest for the bytes: the registry says unknown
        const wrong = { ...m.manifest.config, digest: sha256Digest('not there') };
        await assert.rejects(src.blob(wrong), isErr('ERR_NOT_FOUND', /BLOB_UNKNOWN/));
        // a descriptor with the wrong size fails verification
        await assert.rejects(src.blob({ ...m.manifest.config, size: m.manifest.config.size + 1 }), isErr('ERR_DIGEST_MISMATCH'));
      }));

    test('push: blobs (monolithic and chunked from files) + manifest by tag; skopeo sees and copies it back', () =>
      reg.logOnFailure(async () => {
        const src = new OciLayoutSource(img.layoutDir, { tag: img.tag });
        const sink = track(new RegistryImageSink(reg.ref('pushed/app', 'p1'), { ...opts, monolithicMax: 1_000_000, chunkSize: 1_000_000 }));
        const progress = new Map<string, number>();
        const m = await src.manifest();
        for (const d of [m.manifest.config, ...m.manifest.layers]) await sink.pushBlob(d, { path: src.blobFile(d) }, (n) => progress.set(d.digest, n));
        const digest = await sink.pushManifest(m.raw, m.descriptor.mediaType);
        assert.equal(digest, img.manifestDescriptor.digest);
        assert.ok(sink.stats.chunkedUploads >= 2, `big layers went in chunks: ${JSON.stringify(sink.stats)}`);
        assert.ok(sink.stats.monolithicUploads >= 2, JSON.stringify(sink.stats));
        for (const d of [m.manifest.config, ...m.manifest.layers]) assert.equal(progress.get(d.digest), d.size);
        const info = await skopeoInspect(reg, reg.ref('pushed/app', 'p1'));
        assert.equal(info.Digest, digest);
        assert.deepEqual(info.Layers, m.manifest.layers.map((l) => l.digest));
        assert.equal(info.Architecture, 'amd64');
        const back = path.join(tmp('nydus-ts-back-'), 'oci');
        await skopeoPull(reg, reg.ref('pushed/app', 'p1'), back, 'p1');
        const again = await new OciLayoutSource(back, { tag: 'p1' }).manifest();
        assert.equal(again.descriptor.digest, digest);
        for (const l of again.manifest.layers) assert.equal((await sha256Stream(fs.createReadStream(path.join(back, 'blobs', 'sha256', l.digest.slice(7))))).digest, l.digest);

        // the whole index too: children by digest, then the index by tag
        const isink = track(new RegistryImageSink(reg.ref('pushed/multi', 'all'), opts));
        for (const bm of img.manifests) {
          for (const d of [bm.configDescriptor, ...bm.manifest.layers]) await isink.pushBlob(d, { path: src.blobFile(d) });
          assert.equal(await isink.pushManifest(bm.raw, MediaTypes.ociManifest, null), bm.descriptor.digest);
        }
        assert.equal(await isink.pushManifest(img.index!.raw, MediaTypes.ociIndex), img.index!.descriptor.digest);
        const raw = await skopeoInspect(reg, reg.ref('pushed/multi', 'all'), true);
        assert.equal(raw.mediaType, MediaTypes.ociIndex);
        assert.equal((raw.manifests as Descriptor[]).length, 2);
      }));

    test('push again: existing blobs are skipped (HEAD), cross-repo mount from another repository', () =>
      reg.logOnFailure(async () => {
        const src = new OciLayoutSource(img.layoutDir, { tag: img.tag });
        const again = track(new RegistryImageSink(reg.ref('nydus/seed', 'again'), opts));
        assert.equal(await copyImage(src, again, (d) => src.blobFile(d)), img.manifestDescriptor.digest);
        assert.equal(again.stats.skippedBlobs, 4);
        assert.equal(again.stats.uploadedBytes, 0);
        assert.ok(await again.hasBlob(img.layers[0].descriptor));
        assert.equal(await again.hasBlob({ ...img.layers[0].descriptor, digest: sha256Digest('nope') }), false);

        const mounted = track(new RegistryImageSink(reg.ref('mounted/app', 'm1'), opts));
        assert.equal(mounted.mountFromSource(track(new RegistryImageSource(img.reference, opts))), true);
        assert.equal(mounted.mountFromSource(src), false, 'a layout is no mount source');
        assert.equal(await copyImage(src, mounted, (d) => src.blobFile(d)), img.manifestDescriptor.digest);
        assert.equal(mounted.stats.mountedBlobs, 4, JSON.stringify(mounted.stats));
        assert.equal(mounted.stats.uploadedBytes, 0);
        const info = await skopeoInspect(reg, reg.ref('mounted/app', 'm1'));
        assert.equal(info.Digest, img.manifestDescriptor.digest);
        if (reg.tokenServer) {
          // the mount's challenge asked for pull on the source repository
          assert.ok(reg.tokenServer.stats.scopes.some((s) => s.includes('repository:nydus/seed:pull') && s.includes('repository:mounted/app:pull,push')), JSON.stringify(reg.tokenServer.stats.scopes));
        }
      }));

    if (mode !== 'none') {
      test('wrong or missing credentials: a clear 401 error naming the reference', () =>
        reg.logOnFailure(async () => {
          const wrong = track(new RegistryImageSource(img.reference, { ...FAST, username: reg.creds!.username, password: 'wrong-password' }));
          await assert.rejects(wrong.manifest(), (e: unknown) => {
            isErr('ERR_BACKEND', mode === 'basic' ? /HTTP 401 unauthorized \(credentials or token rejected\)/ : /token GET .*HTTP 401 \(credentials rejected\)/)(e);
            assert.ok((e as NydusError).message.startsWith(`${reg.host}/nydus/seed:v1: `), (e as NydusError).message);
            assert.equal((e as NydusError).context.status, 401);
            return true;
          });
          const anon = track(new RegistryImageSource(img.reference, FAST));
          await assert.rejects(anon.manifest(), isErr('ERR_BACKEND', mode === 'basic' ? /no credentials configured/ : /token GET .*HTTP 401/));
          const wrongPush = track(new RegistryImageSink(reg.ref('nydus/seed', 'x'), { ...FAST, username: reg.creds!.username, password: 'nope' }));
          await assert.rejects(wrongPush.pushBlob(img.configDescriptor, fs.readFileSync(new OciLayoutSource(img.layoutDir).blobFile(img.configDescriptor))), isErr('ERR_BACKEND', /401/));
        }));
    } else {
      test('anonymous registry: no Authorization is needed or sent', () =>
        reg.logOnFailure(async () => {
          const src = track(new RegistryImageSource(img.reference, FAST));
          assert.equal((await src.manifest()).descriptor.digest, img.manifestDescriptor.digest);
          assert.equal(src.client.auth.tokenRequests, 0);
        }));
    }

    if (mode === 'token') {
      test('token expiry mid-run: refreshed ahead of time, and after a 401 when the server under-reports', () =>
        reg.logOnFailure(async () => {
          const ts = reg.tokenServer!;
          try {
            // honest short tokens: the client refreshes before they expire
            ts.setTtl(2);
            const src = track(new RegistryImageSource(img.reference, opts));
            const m = await src.manifest();
            const issued0 = ts.stats.issued;
            await new Promise((r) => setTimeout(r, 2300));
            assert.ok((await src.blob(m.manifest.config)).length > 0);
            assert.ok(ts.stats.issued > issued0, 'a new token was fetched');
            // tokens that die long before their advertised expires_in: the registry's 401 triggers a refresh
            ts.setTtl(2, 3600);
            const src2 = track(new RegistryImageSource(img.reference, opts));
            await src2.manifest();
            const before = ts.stats.issued;
            const unauthorizedBefore = (reg.log().match(/invalid token|token expired/gi) ?? []).length;
            await new Promise((r) => setTimeout(r, 2300));
            const got = await sha256Stream(await src2.blobStream(img.layers[0].descriptor));
            assert.equal(got.digest, img.layers[0].descriptor.digest);
            assert.equal(ts.stats.issued, before + 1, 'exactly one refresh');
            assert.ok((reg.log().match(/invalid token|token expired/gi) ?? []).length > unauthorizedBefore, 'the registry did reject the expired token');
            // and pushes survive it too
            ts.setTtl(2, 3600);
            const sink = track(new RegistryImageSink(reg.ref('expiry/app', 'e1'), { ...opts, monolithicMax: 1_000_000, chunkSize: 1_000_000 }));
            const lsrc = new OciLayoutSource(img.layoutDir, { tag: img.tag });
            await sink.pushBlob(img.configDescriptor, { path: lsrc.blobFile(img.configDescriptor) });
            await new Promise((r) => setTimeout(r, 2300));
            assert.equal(await copyImage(lsrc, sink, (d) => lsrc.blobFile(d)), img.manifestDescriptor.digest);
          } finally {
            ts.setTtl(300);
          }
        }));
    }
  });
}
