/**
 * The nydusd-compatible HTTP API: registration parsing (legacy snapshotter `config` and
 * `config_v2`), the server on a real unix socket and the client, against a fake controller that
 * records calls. Also talks to the server with curl to prove a non-Node client works.
 */
import { test, before, after, describe } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { NydusError } from '../src/errors';
import {
  parseBlobCacheEntry, parseBlobCacheConfig, readBlobCacheConfigFile, NormalizedEntry, DEFAULT_AMPLIFY_IO,
} from '../src/daemon/config';
import { ApiServer, DaemonController, DaemonStateName, notReady, buildInfo } from '../src/daemon/api-server';
import { DaemonApiClient, DaemonApiError, isCacheEntryNotFound } from '../src/daemon/api-client';

const execFileP = promisify(execFile);

let work: string;
let bootPath: string;
let workDir: string;
const F = 'f'.repeat(64);

/** the snapshotter's legacy body of spec §4.4, with real paths */
function snapshotterBody(): Record<string, any> {
  return {
    type: 'bootstrap',
    id: F,
    domain_id: F,
    config: {
      id: F,
      backend_type: 'registry',
      backend_config: { readahead: false, host: 'index.docker.io', repo: 'library/nginx', auth: 'dXNlcjpwYXNz', proxy: { fallback: false } },
      cache_type: 'fscache',
      cache_config: { work_dir: workDir },
      prefetch_config: { enable: true, threads_count: 8, merging_size: 1048576, bandwidth_rate: 0, prefetch_all: false },
      metadata_path: bootPath,
    },
  };
}

function v2Body(): Record<string, any> {
  return {
    type: 'bootstrap',
    id: 'img1',
    config_v2: {
      version: 2,
      id: 'cfg-img1',
      backend: { type: 'localfs', localfs: { dir: path.join(work, 'blobs') } },
      cache: { type: 'fscache', fscache: { work_dir: workDir }, validate: true, prefetch: { enable: false } },
      metadata_path: bootPath,
    },
  };
}

function invalid(f: () => unknown, field: string, reason?: RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof NydusError, `expected NydusError, got ${String(e)}`);
    assert.equal(e.code, 'ERR_INVALID_ARGUMENT');
    assert.ok(e.message.includes(field), `message "${e.message}" should name ${field}`);
    if (reason) assert.match(e.message, reason);
    return true;
  });
}

before(() => {
  work = makeTmpDir('nydus-api-');
  workDir = path.join(work, 'snapshots', '12', 'fs');
  fs.mkdirSync(path.join(workDir, 'image'), { recursive: true });
  fs.mkdirSync(path.join(work, 'blobs'));
  bootPath = path.join(workDir, 'image', 'image.boot');
  fs.writeFileSync(bootPath, Buffer.alloc(4096));
});

after(() => removeTmpDir(work));

// ================================================================================================
describe('registration parsing', () => {
  test('legacy config exactly as nydus-snapshotter sends it', () => {
    const e = parseBlobCacheEntry(snapshotterBody());
    assert.equal(e.id, F);
    assert.equal(e.domainId, F);
    assert.equal(e.configId, F);
    assert.equal(e.format, 'legacy');
    assert.equal(e.bootstrapPath, bootPath);
    assert.equal(e.workDir, workDir);
    assert.equal(e.amplifyIo, DEFAULT_AMPLIFY_IO);
    assert.equal(e.validate, false);
    assert.deepEqual(e.prefetch, { enable: true, threads: 8, batchSize: 1048576, bandwidthLimit: 0, prefetchAll: false });
    assert.equal(e.backend.type, 'registry');
    if (e.backend.type !== 'registry') return;
    assert.deepEqual(e.backend.config, {
      scheme: 'https', host: 'index.docker.io', repo: 'library/nginx', auth: 'dXNlcjpwYXNz',
      skip_verify: false, ca_cert_files: [], timeout: 5, connect_timeout: 5, retry_limit: 0,
      proxy: { url: '', ping_url: '', fallback: false, check_interval: 5, use_http: false, check_pause_elapsed: 300 },
    });
    assert.ok(!('readahead' in e.backend.config), 'unknown keys are ignored');
    assert.deepEqual(e.raw, snapshotterBody());
  });

  test('JSON text, defaults, and a missing domain_id', () => {
    const b = snapshotterBody();
    delete b.domain_id;
    delete b.config.prefetch_config;
    b.config.backend_config = { host: 'r.example', repo: 'a/b', scheme: 'http', registry_token: 'tok', auth: '' };
    const e = parseBlobCacheEntry(JSON.stringify(b));
    assert.equal(e.domainId, '');
    assert.deepEqual(e.prefetch, { enable: false, threads: 8, batchSize: 1048576, bandwidthLimit: 0, prefetchAll: true });
    assert.ok(e.backend.type === 'registry');
    if (e.backend.type === 'registry') {
      assert.equal(e.backend.config.scheme, 'http');
      assert.equal(e.backend.config.registry_token, 'tok');
      assert.equal(e.backend.config.auth, undefined, 'an empty auth means none');
      assert.equal(e.backend.config.proxy.fallback, true);
    }
  });

  test('config_v2 with localfs, validate, prefetch and rafs batch', () => {
    const b = v2Body();
    b.config_v2.cache.prefetch = { enable: true, threads: 4, batch_size: 2 * 1048576, bandwidth_limit: 1000 };
    b.config_v2.rafs = { batch_size: 4 * 1048576 };
    b.config = { this_is: 'ignored when config_v2 is present' };
    const e = parseBlobCacheEntry(b);
    assert.equal(e.format, 'v2');
    assert.equal(e.configId, 'cfg-img1');
    assert.equal(e.domainId, '');
    assert.equal(e.validate, true);
    assert.equal(e.amplifyIo, 4 * 1048576);
    assert.deepEqual(e.prefetch, { enable: true, threads: 4, batchSize: 2 * 1048576, bandwidthLimit: 1000, prefetchAll: false });
    assert.deepEqual(e.backend, { type: 'localfs', config: { dir: path.join(work, 'blobs'), alt_dirs: [] } });
  });

  test('config_v2 backends: registry, http-proxy, s3, oss, localdisk', () => {
    const mk = (backend: Record<string, unknown>): NormalizedEntry => {
      const b = v2Body();
      b.config_v2.backend = backend;
      return parseBlobCacheEntry(b);
    };
    const r = mk({ type: 'registry', registry: { host: 'h', repo: 'r', timeout: 30, proxy: { url: 'http://p', check_interval: 10 } } });
    assert.ok(r.backend.type === 'registry' && r.backend.config.timeout === 30 && r.backend.config.proxy.url === 'http://p' && r.backend.config.proxy.check_interval === 10);
    const hp = mk({ type: 'http-proxy', 'http-proxy': { addr: '/run/p.sock', path: '/namespace/blobs' } });
    assert.deepEqual(hp.backend.type === 'http-proxy' && [hp.backend.config.addr, hp.backend.config.path, hp.backend.config.retry_limit], ['/run/p.sock', '/namespace/blobs', 0]);
    const hp2 = mk({ type: 'http-proxy', http_proxy: { addr: 'http://127.0.0.1:9000' } });
    assert.ok(hp2.backend.type === 'http-proxy' && hp2.backend.config.path === '');
    const s3 = mk({ type: 's3', s3: { bucket_name: 'b', region: 'us-east-1' } });
    assert.ok(s3.backend.type === 's3' && s3.backend.config.region === 'us-east-1' && s3.backend.config.endpoint === '' && s3.backend.config.scheme === 'https');
    const oss = mk({ type: 'oss', oss: { endpoint: 'oss.example', bucket_name: 'b', object_prefix: 'p/' } });
    assert.ok(oss.backend.type === 'oss' && oss.backend.config.object_prefix === 'p/' && oss.backend.config.access_key_id === '');
    const ld = mk({ type: 'localdisk', localdisk: { device_path: '/dev/vdb' } });
    assert.deepEqual(ld.backend, { type: 'localdisk', config: { device_path: '/dev/vdb', disable_gpt: false } });
  });

  test('validation errors name the field and the reason', () => {
    const legacy = (f: (b: Record<string, any>) => void) => () => {
      const b = snapshotterBody();
      f(b);
      return parseBlobCacheEntry(b);
    };
    const v2 = (f: (b: Record<string, any>) => void) => () => {
      const b = v2Body();
      f(b);
      return parseBlobCacheEntry(b);
    };
    invalid(legacy((b) => (b.type = 'datablob')), 'type', /datablob/);
    invalid(legacy((b) => delete b.type), 'type', /required/);
    invalid(legacy((b) => (b.type = 'blob')), 'type', /bootstrap/);
    invalid(legacy((b) => (b.id = 'a/b')), 'id', /'\/'/);
    invalid(legacy((b) => (b.id = '')), 'id', /required/);
    invalid(legacy((b) => (b.domain_id = 'x/y')), 'domain_id', /'\/'/);
    invalid(legacy((b) => (b.domain_id = 7)), 'domain_id', /string/);
    invalid(legacy((b) => delete b.config), 'config', /config_v2/);
    invalid(legacy((b) => (b.config = 'x')), 'config', /JSON object/);
    invalid(legacy((b) => (b.config.metadata_path = path.join(work, 'nope'))), 'config.metadata_path', /does not exist/);
    invalid(legacy((b) => (b.config.metadata_path = workDir)), 'config.metadata_path', /not a regular file/);
    invalid(legacy((b) => (b.config.metadata_file = b.config.metadata_path, delete b.config.metadata_path)), 'config.metadata_path', /metadata_file/);
    invalid(legacy((b) => (b.config.cache_config.work_dir = path.join(work, 'nope'))), 'config.cache_config.work_dir', /does not exist/);
    invalid(legacy((b) => (b.config.cache_config.work_dir = bootPath)), 'config.cache_config.work_dir', /not a directory/);
    invalid(legacy((b) => delete b.config.cache_config), 'config.cache_config.work_dir', /required/);
    invalid(legacy((b) => (b.config.backend_type = 'ftp')), 'config.backend_type', /unknown backend type "ftp"/);
    invalid(legacy((b) => (b.config.backend_type = 'http-proxy')), 'config.backend_type', /config_v2/);
    invalid(legacy((b) => delete b.config.backend_config.host), 'config.backend_config.host', /required/);
    invalid(legacy((b) => (b.config.backend_config.timeout = '5')), 'config.backend_config.timeout', /non-negative integer/);
    invalid(legacy((b) => (b.config.backend_config.proxy.fallback = 'no')), 'config.backend_config.proxy.fallback', /true or false/);
    invalid(legacy((b) => (b.config.backend_config.scheme = 'ftp')), 'config.backend_config.scheme', /http/);
    invalid(legacy((b) => (b.config.cache_type = 'blobcache')), 'config.cache_type', /fscache/);
    invalid(legacy((b) => (b.config.prefetch_config.threads_count = 0)), 'config.prefetch_config.threads_count', /between 1/);
    invalid(v2((b) => (b.config_v2.cache.compressed = true)), 'config_v2.cache.compressed', /fscache/);
    invalid(v2((b) => (b.config_v2.version = 1)), 'config_v2.version', /must be 2/);
    invalid(v2((b) => (b.config_v2.backend = { type: 'registry' })), 'config_v2.backend.registry', /required/);
    invalid(v2((b) => (b.config_v2.backend = { type: 'nfs', nfs: {} })), 'config_v2.backend.type', /unknown backend type/);
    invalid(v2((b) => (b.config_v2.backend = { type: 'localfs', localfs: {} })), 'config_v2.backend.localfs.dir', /localfs/);
    invalid(v2((b) => (b.config_v2.backend = { type: 's3', s3: { bucket_name: 'b' } })), 'config_v2.backend.s3.region', /required/);
    invalid(v2((b) => (b.config_v2.backend = { type: 'http-proxy', 'http-proxy': { addr: 'relative.sock' } })), 'config_v2.backend.http-proxy.addr', /absolute/);
    invalid(v2((b) => (b.config_v2.backend.localfs.alt_dirs = ['a', 3])), 'config_v2.backend.localfs.alt_dirs[1]', /string/);
    invalid(v2((b) => delete b.config_v2.cache.fscache), 'config_v2.cache.fscache', /JSON object/);
    invalid(v2((b) => (b.config_v2.cache.type = 'blobcache')), 'config_v2.cache.type', /fscache/);
    invalid(v2((b) => (b.config_v2.metadata_path = path.join(work, 'missing.boot'))), 'config_v2.metadata_path', /does not exist/);
    invalid(v2((b) => (b.config_v2.cache.fscache.work_dir = path.join(work, 'missing'))), 'config_v2.cache.fscache.work_dir', /does not exist/);
    invalid(() => parseBlobCacheEntry('{"type":'), 'registration', /malformed JSON/);
    invalid(() => parseBlobCacheEntry([1]), 'registration', /JSON object/);
    // the path checks can be skipped (e.g. to inspect a saved registration)
    const b = snapshotterBody();
    b.config.metadata_path = '/nonexistent/image.boot';
    assert.equal(parseBlobCacheEntry(b, { checkPaths: false }).bootstrapPath, '/nonexistent/image.boot');
  });

  test('relative paths are made absolute', () => {
    const b = v2Body();
    b.config_v2.metadata_path = path.relative(process.cwd(), bootPath);
    b.config_v2.cache.fscache.work_dir = path.relative(process.cwd(), workDir);
    const e = parseBlobCacheEntry(b);
    assert.equal(e.bootstrapPath, bootPath);
    assert.equal(e.workDir, workDir);
  });

  test('--config {"blobs": [...]} file form', () => {
    const file = path.join(work, 'nydusd.json');
    fs.writeFileSync(file, JSON.stringify({ blobs: [snapshotterBody(), v2Body()], other: 'ignored' }));
    const entries = readBlobCacheConfigFile(file);
    assert.deepEqual(entries.map((e) => [e.id, e.format]), [[F, 'legacy'], ['img1', 'v2']]);
    assert.deepEqual(parseBlobCacheConfig({}), []);
    const bad = v2Body();
    bad.id = 'x/y';
    invalid(() => parseBlobCacheConfig({ blobs: [snapshotterBody(), bad] }), 'blobs[1].id', /'\/'/);
    invalid(() => parseBlobCacheConfig({ blobs: {} }), 'config.blobs', /array/);
    fs.writeFileSync(file, '{nope');
    invalid(() => readBlobCacheConfigFile(file), file, /malformed JSON/);
  });
});

// ================================================================================================
/** A controller that records every call; behaviour switches per test. */
class FakeController implements DaemonController {
  calls: Array<[string, ...unknown[]]> = [];
  state: DaemonStateName = 'RUNNING';
  registered = new Map<string, NormalizedEntry>();
  infoThrows = false;
  startError: unknown = null;
  info() {
    this.calls.push(['info']);
    if (this.infoThrows) throw new Error('boom in info');
    return { id: 'daemon-1', supervisor: null, state: this.state };
  }
  async register(entry: NormalizedEntry) {
    this.calls.push(['register', entry]);
    const key = `${entry.domainId}/${entry.id}`;
    if (this.registered.has(key)) throw new NydusError('ERR_INVALID_ARGUMENT', `image ${entry.id} is already registered`);
    this.registered.set(key, entry);
  }
  async unregister(domainId: string | undefined, blobId: string | undefined) {
    this.calls.push(['unregister', domainId, blobId]);
    const keys = [...this.registered.keys()].filter((k) => k.startsWith(`${domainId}/`) && (blobId === undefined || k === `${domainId}/${blobId}`));
    if (keys.length === 0) throw new NydusError('ERR_NOT_FOUND', `no entry ${domainId}/${blobId ?? '*'}`);
    for (const k of keys) this.registered.delete(k);
  }
  async cull(blobId: string) {
    this.calls.push(['cull', blobId]);
    if (blobId === 'busy') throw new NydusError('ERR_DAEMON', `cull ${blobId}: Device or resource busy`);
  }
  async start() {
    this.calls.push(['start']);
    if (this.startError) throw this.startError;
    this.state = 'RUNNING';
  }
  async exit() {
    this.calls.push(['exit']);
    this.state = 'STOPPED';
  }
  async sendfd() {
    this.calls.push(['sendfd']);
  }
  async takeover() {
    this.calls.push(['takeover']);
    throw new NydusError('ERR_UNSUPPORTED', 'takeover is automatic here');
  }
  setLogLevel(level: string) {
    this.calls.push(['setLogLevel', level]);
  }
  metrics(id?: string) {
    this.calls.push(['metrics', id]);
    if (id !== undefined && id !== F) throw new NydusError('ERR_NOT_FOUND', `no blobcache metrics for ${id}`);
    return { id: id ?? F, partial_hits: 1, whole_hits: 2 };
  }
  events() {
    this.calls.push(['events']);
    return [{ kind: 'error', message: 'x' }];
  }
  last(name: string): unknown[] | undefined {
    return [...this.calls].reverse().find((c) => c[0] === name);
  }
}

/** A raw HTTP/1.1 exchange on one connection: send `req`, read one response. */
function rawExchange(sock: net.Socket, req: string): Promise<{ status: number; headers: Record<string, string>; body: string }> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (d: Buffer): void => {
      buf += d.toString('latin1');
      const he = buf.indexOf('\r\n\r\n');
      if (he < 0) return;
      const lines = buf.slice(0, he).split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
      }
      const len = Number(headers['content-length'] ?? 0);
      if (buf.length < he + 4 + len) return;
      sock.off('data', onData);
      sock.off('error', reject);
      resolve({ status: Number(lines[0].split(' ')[1]), headers, body: buf.slice(he + 4, he + 4 + len) });
    };
    sock.on('data', onData);
    sock.once('error', reject);
    sock.write(req);
  });
}

function connect(p: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(p);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

describe('API server and client', () => {
  let dir: string;
  let sockPath: string;
  let ctl: FakeController;
  let server: ApiServer;
  let client: DaemonApiClient;

  before(async () => {
    dir = makeTmpDir('nydus-apisock-');
    sockPath = path.join(dir, 'api.sock');
    ctl = new FakeController();
    server = new ApiServer(ctl, { socketPath: sockPath });
    await server.listen();
    client = new DaemonApiClient(sockPath);
  });

  after(async () => {
    client.close();
    await server.close();
    removeTmpDir(dir);
  });

  test('socket is created with mode 0600', () => {
    const st = fs.statSync(sockPath);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
  });

  test('GET /api/v1/daemon and /api/v2/daemon', async () => {
    const r = await client.request('GET', '/api/v1/daemon');
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'application/json');
    assert.equal(r.headers.server, 'Nydus API');
    const info = r.body as Record<string, any>;
    assert.deepEqual(Object.keys(info), ['version', 'id', 'supervisor', 'state', 'backend_collection']);
    assert.deepEqual(Object.keys(info.version), ['package_ver', 'git_commit', 'build_time', 'profile', 'rustc']);
    assert.equal(info.version.package_ver, JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')).version);
    assert.equal(info.version.rustc, 'none (TypeScript)');
    assert.equal(info.id, 'daemon-1');
    assert.equal(info.supervisor, null);
    assert.equal(info.state, 'RUNNING');
    assert.equal(info.backend_collection, null);
    const v2 = await client.daemonInfoV2();
    assert.ok(!('backend_collection' in v2));
    assert.equal(v2.state, 'RUNNING');
    assert.deepEqual(v2.version, buildInfo());
    // the query string does not take part in routing; a trailing slash does
    assert.equal((await client.request('GET', '/api/v1/daemon?verbose=1')).status, 200);
    assert.equal((await client.request('GET', '/api/v1/daemon/')).status, 404);
    assert.equal((await client.request('GET', '//api/v1/daemon')).status, 404);
    assert.equal((await client.request('GET', 'http://localhost/api/v1/daemon')).status, 200, 'absolute-form target');
  });

  test('PUT /api/v1/daemon sets the log level', async () => {
    await client.setLogLevel('DEBUG');
    assert.deepEqual(ctl.last('setLogLevel'), ['setLogLevel', 'debug']);
    const r = await client.request('PUT', '/api/v1/daemon', { log_level: 'loud' });
    assert.equal(r.status, 400);
    assert.match((r.body as any).message, /log_level/);
    assert.equal((await client.request('PUT', '/api/v1/daemon', {})).status, 400);
    assert.equal((await client.request('PUT', '/api/v1/daemon')).status, 400);
  });

  test('state transitions and fd hand-over endpoints', async () => {
    for (const [p, name] of [['/api/v1/daemon/start', 'start'], ['/api/v1/daemon/exit', 'exit'], ['/api/v1/daemon/fuse/sendfd', 'sendfd']]) {
      const r = await client.request('PUT', p);
      assert.equal(r.status, 204, p);
      assert.equal(r.text, '');
      assert.equal(r.headers['content-type'], 'application/json');
      assert.equal(r.headers.server, 'Nydus API');
      assert.ok(ctl.last(name), `${name} called`);
    }
    // ERR_UNSUPPORTED from the controller → 501
    const t = await client.request('PUT', '/api/v1/daemon/fuse/takeover');
    assert.equal(t.status, 501);
    assert.deepEqual(Object.keys(t.body as object), ['code', 'message']);
    assert.equal((t.body as any).code, 'UNDEFINED');
    assert.match((t.body as any).message, /takeover is automatic/);
    // a controller's notReady → 503, any other failure → 500
    ctl.startError = notReady('daemon is in INIT, take over first');
    assert.equal((await client.request('PUT', '/api/v1/daemon/start')).status, 503);
    ctl.startError = new NydusError('ERR_DAEMON', 'unexpected event Start in state RUNNING');
    const s = await client.request('PUT', '/api/v1/daemon/start');
    assert.equal(s.status, 500);
    assert.match((s.body as any).message, /unexpected event/);
    ctl.startError = null;
    ctl.state = 'RUNNING';
    // wrong method on a known route
    assert.equal((await client.request('GET', '/api/v1/daemon/start')).status, 400);
  });

  test('GET /api/v1/daemon/events', async () => {
    assert.deepEqual(await client.events(), [{ kind: 'error', message: 'x' }]);
  });

  test('PUT /api/v2/blobs with the snapshotter body and with config_v2', async () => {
    await client.registerBlob(snapshotterBody());
    const e = ctl.last('register')![1] as NormalizedEntry;
    assert.equal(e.id, F);
    assert.equal(e.domainId, F);
    assert.equal(e.format, 'legacy');
    assert.equal(e.bootstrapPath, bootPath);
    assert.deepEqual(e.raw, snapshotterBody());
    await client.registerBlob(v2Body());
    assert.equal((ctl.last('register')![1] as NormalizedEntry).format, 'v2');
    // a controller failure (duplicate) is a 500
    const dup = await client.request('PUT', '/api/v2/blobs', v2Body());
    assert.equal(dup.status, 500);
    assert.match((dup.body as any).message, /already registered/);
  });

  test('PUT /api/v2/blobs rejects bad bodies with 400 naming the field', async () => {
    const n = ctl.calls.filter((c) => c[0] === 'register').length;
    const cases: Array<[unknown, RegExp]> = [
      ['{"type": "bootstrap", ', /malformed JSON/],
      [undefined, /needs a JSON body/],
      [{ ...snapshotterBody(), type: 'datablob' }, /type.*datablob/],
      [{ ...snapshotterBody(), id: 'a/b' }, /id.*'\/'/],
      [{ ...v2Body(), config_v2: { ...v2Body().config_v2, metadata_path: '/nonexistent/x.boot' } }, /config_v2\.metadata_path.*does not exist/],
      [{ ...v2Body(), config_v2: { ...v2Body().config_v2, backend: { type: 'tape', tape: {} } } }, /config_v2\.backend\.type.*unknown backend type/],
    ];
    for (const [body, re] of cases) {
      const r = await client.request('PUT', '/api/v2/blobs', body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal((r.body as any).code, 'UNDEFINED');
      assert.match((r.body as any).message, re);
    }
    assert.equal(ctl.calls.filter((c) => c[0] === 'register').length, n, 'invalid bodies never reach the controller');
    // POST is not routed for blobs, GET is unimplemented
    assert.equal((await client.request('POST', '/api/v2/blobs', v2Body())).status, 400);
    assert.equal((await client.request('GET', '/api/v2/blobs?domain_id=x')).status, 501);
  });

  test('DELETE /api/v2/blobs: unregister, domain, cull and the "not found" 500', async () => {
    ctl.registered.clear();
    await client.registerBlob(snapshotterBody());
    await client.unregisterBlob(F, F);
    assert.deepEqual(ctl.last('unregister'), ['unregister', F, F]);
    // now unknown: nydusd's message that the snapshotter matches
    const r = await client.request('DELETE', `/api/v2/blobs?domain_id=${F}&blob_id=${F}`);
    assert.equal(r.status, 500);
    assert.match((r.body as any).message, /blob_cache: cache entry not found/);
    await assert.rejects(client.unregisterBlob('nodomain'), (e: unknown) => {
      assert.ok(e instanceof DaemonApiError);
      assert.equal(e.code, 'ERR_DAEMON');
      assert.equal(e.status, 500);
      assert.ok(isCacheEntryNotFound(e));
      assert.match(e.message, /HTTP 500/);
      return true;
    });
    // whole domain
    await client.registerBlob(snapshotterBody());
    await client.unregisterBlob(F);
    assert.deepEqual(ctl.last('unregister'), ['unregister', F, undefined]);
    // cull (blob_id only)
    await client.cullBlob('0123abcd');
    assert.deepEqual(ctl.last('cull'), ['cull', '0123abcd']);
    const busy = await client.request('DELETE', '/api/v2/blobs?blob_id=busy');
    assert.equal(busy.status, 500);
    assert.match((busy.body as any).message, /busy/);
    // bad queries
    assert.equal((await client.request('DELETE', '/api/v2/blobs')).status, 400);
    assert.equal((await client.request('DELETE', '/api/v2/blobs?blob_id=..%2Fx')).status, 400);
    assert.equal((await client.request('DELETE', '/api/v2/blobs?domain_id=a%2Fb&blob_id=x')).status, 400);
  });

  test('metrics: ids with and without a leading slash, unknown id → 404', async () => {
    assert.deepEqual(await client.blobcacheMetrics(F), { id: F, partial_hits: 1, whole_hits: 2 });
    assert.deepEqual(ctl.last('metrics'), ['metrics', F]);
    assert.deepEqual(await client.blobcacheMetrics('/' + F), { id: F, partial_hits: 1, whole_hits: 2 });
    assert.deepEqual(ctl.last('metrics'), ['metrics', F]);
    const raw = await client.request('GET', `/api/v1/metrics/blobcache?id=/${F}`); // unencoded slash
    assert.equal(raw.status, 200);
    assert.deepEqual(await client.metrics(), { id: F, partial_hits: 1, whole_hits: 2 });
    assert.deepEqual(ctl.last('metrics'), ['metrics', undefined]);
    const r = await client.request('GET', '/api/v1/metrics/blobcache?id=unknown');
    assert.equal(r.status, 404);
    assert.match((r.body as any).message, /unknown/);
    assert.equal((await client.request('GET', '/api/v1/metrics?id=/nope')).status, 404);
    assert.equal((await client.request('GET', '/api/v1/metrics/backend?id=x')).status, 404, 'no backendMetrics on this controller');
    assert.equal((await client.request('GET', '/api/v1/metrics/files')).status, 404);
    assert.equal((await client.request('GET', '/api/v1/metrics/pattern')).status, 404);
  });

  test('FUSE-only endpoints answer 501, unknown paths 404', async () => {
    for (const [m, p] of [
      ['GET', '/api/v1/metrics/inflight'], ['GET', '/api/v1/daemon/backend'], ['POST', '/api/v1/mount?mountpoint=/x'],
      ['PUT', '/api/v1/mount?mountpoint=/x'], ['DELETE', '/api/v1/mount?mountpoint=/x'], ['GET', '/api/v1/config?id=x'],
    ]) {
      const r = await client.request(m, p);
      assert.equal(r.status, 501, `${m} ${p}`);
      assert.equal((r.body as any).code, 'UNDEFINED');
      assert.match((r.body as any).message, /Unsupported/);
    }
    const r = await client.request('GET', '/api/v3/whatever');
    assert.equal(r.status, 404);
    assert.equal(r.headers.server, 'Nydus API');
    assert.deepEqual(Object.keys(r.body as object), ['code', 'message']);
  });

  test('a throwing handler gives 500 and the server keeps serving', async () => {
    ctl.infoThrows = true;
    const r = await client.request('GET', '/api/v1/daemon');
    assert.equal(r.status, 500);
    assert.match((r.body as any).message, /boom in info/);
    ctl.infoThrows = false;
    assert.equal((await client.daemonInfo()).state, 'RUNNING');
  });

  test('keep-alive: two requests on one connection, idle connections are not dropped', async () => {
    const s = await connect(sockPath);
    let closed = false;
    s.on('close', () => (closed = true));
    const a = await rawExchange(s, 'GET /api/v1/daemon HTTP/1.1\r\nHost: localhost\r\n\r\n');
    assert.equal(a.status, 200);
    const body = JSON.stringify(v2Body()).replace('"img1"', '"img-ka"');
    const b = await rawExchange(s, `PUT /api/v2/blobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    assert.equal(b.status, 204);
    assert.equal(b.headers['content-type'], 'application/json');
    // HTTP/1.1 without a Host header (nydusd accepts it) on the same connection
    const c = await rawExchange(s, 'GET /api/v2/daemon HTTP/1.1\r\n\r\n');
    assert.equal(c.status, 200);
    // a liveness watcher: connects and never sends anything
    const watcher = await connect(sockPath);
    let watcherClosed = false;
    watcher.on('close', () => (watcherClosed = true));
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(closed, false);
    assert.equal(watcherClosed, false);
    const d = await rawExchange(s, 'GET /api/v1/daemon HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal(d.status, 200);
    const inner = (server as unknown as { http: { keepAliveTimeout: number; headersTimeout: number; requestTimeout: number; timeout: number } }).http;
    assert.deepEqual([inner.keepAliveTimeout, inner.headersTimeout, inner.requestTimeout, inner.timeout], [0, 0, 0, 0]);
    s.destroy();
    watcher.destroy();
  });

  test('malformed HTTP gets a JSON 400', async () => {
    const s = await connect(sockPath);
    const r = await rawExchange(s, 'THIS IS NOT HTTP\r\n\r\n');
    assert.equal(r.status, 400);
    assert.equal(r.headers.server, 'Nydus API');
    assert.equal(JSON.parse(r.body).code, 'UNDEFINED');
    s.destroy();
  });

  test('oversized bodies are refused with 413 (declared and chunked)', async () => {
    const big = Buffer.alloc(2 * 1024 * 1024, 0x20);
    const r = await client.request('PUT', '/api/v2/blobs', big);
    assert.equal(r.status, 413);
    assert.match((r.body as any).message, /exceeds the limit of 1048576 bytes/);
    // chunked, no Content-Length
    const s = await connect(sockPath);
    const chunk = Buffer.alloc(256 * 1024, 0x20);
    const head = 'PUT /api/v2/blobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n';
    const resp = new Promise<string>((resolve) => {
      let buf = '';
      s.on('data', (d) => (buf += d.toString()));
      s.on('close', () => resolve(buf));
      s.on('error', () => resolve(buf));
    });
    s.write(head);
    for (let i = 0; i < 8 && !s.destroyed; i++) s.write(`${chunk.length.toString(16)}\r\n${chunk.toString()}\r\n`);
    const text = await resp;
    assert.match(text, /^HTTP\/1\.1 413/);
    assert.match(text, /exceeds the limit/);
    // the server is fine afterwards
    assert.equal((await client.daemonInfo()).state, 'RUNNING');
  });

  test('curl --unix-socket interoperates', async (t) => {
    if (spawnSync('curl', ['--version']).status !== 0) {
      t.skip('curl is not installed');
      return;
    }
    const info = await execFileP('curl', ['-sS', '-i', '--unix-socket', sockPath, 'http://localhost/api/v1/daemon']);
    assert.match(info.stdout, /^HTTP\/1\.1 200/);
    assert.match(info.stdout, /\r\nServer: Nydus API\r\n/i);
    assert.match(info.stdout, /\r\nContent-Type: application\/json\r\n/i);
    const json = JSON.parse(info.stdout.slice(info.stdout.indexOf('\r\n\r\n') + 4));
    assert.equal(json.state, 'RUNNING');
    ctl.registered.clear();
    const file = path.join(dir, 'entry.json');
    fs.writeFileSync(file, JSON.stringify(snapshotterBody()));
    const put = await execFileP('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '--unix-socket', sockPath, '-X', 'PUT', '-H', 'Content-Type: application/json', '--data-binary', `@${file}`, 'http://localhost/api/v2/blobs']);
    assert.equal(put.stdout, '204');
    assert.equal((ctl.last('register')![1] as NormalizedEntry).id, F);
    const del = await execFileP('curl', ['-sS', '-w', '\n%{http_code}', '--unix-socket', sockPath, '-X', 'DELETE', `http://localhost/api/v2/blobs?domain_id=${F}&blob_id=nothere`]);
    const [body, code] = del.stdout.split('\n');
    assert.equal(code, '500');
    assert.match(JSON.parse(body).message, /blob_cache: cache entry not found/);
  });
});

// ================================================================================================
describe('socket lifecycle', () => {
  test('a stale socket file is replaced, a live daemon is not, other files are refused', async () => {
    const dir = makeTmpDir('nydus-apisock-');
    try {
      const sock = path.join(dir, 'api.sock');
      // stale: a socket file nobody listens on (a server that was closed without unlinking)
      const stale = net.createServer();
      await new Promise<void>((r) => stale.listen(sock, r));
      // close the listener but keep the file (libuv unlinks it on close): hard-link it away and back
      fs.linkSync(sock, sock + '.keep');
      await new Promise<void>((r) => stale.close(() => r()));
      fs.renameSync(sock + '.keep', sock);
      assert.ok(fs.lstatSync(sock).isSocket());
      const a = new ApiServer(new FakeController(), { socketPath: sock });
      const saved = process.umask(0); // most permissive: the socket must still be 0600
      try {
        await a.listen();
        assert.equal(process.umask(0), 0, 'the process umask is restored after binding');
      } finally {
        process.umask(saved);
      }
      const c = new DaemonApiClient(sock);
      assert.equal((await c.daemonInfo()).state, 'RUNNING');
      assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
      // a second server on the same socket refuses: a live daemon answers there
      const b = new ApiServer(new FakeController(), { socketPath: sock });
      await assert.rejects(b.listen(), (e: unknown) => e instanceof NydusError && e.code === 'ERR_DAEMON' && /in use/.test(e.message));
      assert.equal((await c.daemonInfo()).state, 'RUNNING', 'the first server is unaffected');
      c.close();
      await a.close();
      assert.ok(!fs.existsSync(sock), 'close() removes the socket file');
      // a regular file at the path is not ours to delete
      fs.writeFileSync(sock, 'not a socket');
      await assert.rejects(new ApiServer(new FakeController(), { socketPath: sock }).listen(), /not a socket/);
      assert.equal(fs.readFileSync(sock, 'utf8'), 'not a socket');
    } finally {
      removeTmpDir(dir);
    }
  });

  test('inherited listening handle in a child process, connections forwarded by the parent', async () => {
    // the supervisor pattern: the parent binds the socket and hands the listening handle to the
    // serving child; it accepts nothing itself (pauseOnConnect) and forwards whatever it does
    // accept, so no connection is ever left hanging in the parent
    const dir = makeTmpDir('nydus-apisock-');
    const { fork } = await import('node:child_process');
    try {
      const sock = path.join(dir, 'inherited.sock');
      const childJs = path.join(dir, 'child.js');
      fs.writeFileSync(childJs, `
        const { ApiServer } = require(${JSON.stringify(path.join(__dirname, '..', 'src', 'daemon', 'api-server.js'))});
        let api;
        process.on('message', async (m, handle) => {
          if (m.type === 'init') {
            api = new ApiServer({ info: () => ({ id: 'child-' + process.pid, supervisor: null, state: 'RUNNING' }) }, { socketPath: ${JSON.stringify(sock)}, server: handle });
            await api.listen();
            process.send({ type: 'ready' });
          } else if (m.type === 'conn') {
            if (handle) api.acceptConnection(handle);
          } else if (m.type === 'close') {
            await api.close();
            process.send({ type: 'closed' });
          }
        });
      `);
      const handle = net.createServer({ pauseOnConnect: true });
      await new Promise<void>((r) => handle.listen(sock, r));
      const child = fork(childJs, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      const next = (type: string) => new Promise<void>((r) => child.on('message', (m: { type: string }) => m.type === type && r()));
      handle.on('connection', (s) => child.send({ type: 'conn' }, s));
      const ready = next('ready');
      child.send({ type: 'init' }, handle);
      await ready;
      const ids = new Set<unknown>();
      for (let i = 0; i < 20; i++) {
        const c = new DaemonApiClient(sock, { timeoutMs: 3000, keepAlive: false });
        ids.add((await c.daemonInfo()).id);
        c.close();
      }
      assert.deepEqual([...ids], [`child-${child.pid}`]);
      const closed = next('closed');
      child.send({ type: 'close' });
      await closed;
      assert.ok(fs.existsSync(sock), 'the child does not remove the inherited socket file');
      child.kill();
      await new Promise<void>((r) => handle.close(() => r()));
      assert.ok(!fs.existsSync(sock), 'the owner (parent) removes it');
    } finally {
      removeTmpDir(dir);
    }
  });

  test('an in-process listening handle: connections counted and kept alive, handle closed on close', async () => {
    const dir = makeTmpDir('nydus-apisock-');
    try {
      const sock = path.join(dir, 'inherited.sock');
      const handle = net.createServer();
      await new Promise<void>((r) => handle.listen(sock, r));
      const a = new ApiServer(new FakeController(), { socketPath: sock, server: handle });
      await a.listen();
      const c = new DaemonApiClient(sock);
      assert.equal((await c.daemonInfo()).id, 'daemon-1');
      assert.equal(a.connectionCount(), 1, 'one kept-alive connection');
      assert.equal((await c.daemonInfoV2()).id, 'daemon-1');
      assert.equal(a.connectionCount(), 1, 'the client reused its connection');
      c.close();
      await a.close();
      assert.equal(a.connectionCount(), 0);
      assert.equal(handle.listening, false, 'a handle nobody serves must not accept connections');
    } finally {
      removeTmpDir(dir);
    }
  });

  test('client: transport errors carry status 0; waitForState polls', async () => {
    const dir = makeTmpDir('nydus-apisock-');
    try {
      const sock = path.join(dir, 'api.sock');
      const c = new DaemonApiClient(sock, { timeoutMs: 2000 });
      await assert.rejects(c.daemonInfo(), (e: unknown) => {
        assert.ok(e instanceof DaemonApiError);
        assert.equal(e.code, 'ERR_DAEMON');
        assert.equal(e.status, 0);
        assert.equal(e.context.errno, 'ENOENT');
        return true;
      });
      assert.equal(await c.isAlive(), false);
      const ctl = new FakeController();
      ctl.state = 'INIT';
      const a = new ApiServer(ctl, { socketPath: sock });
      await a.listen();
      setTimeout(() => (ctl.state = 'RUNNING'), 300);
      const info = await c.waitForState('RUNNING', { timeoutMs: 5000, intervalMs: 50 });
      assert.equal(info.state, 'RUNNING');
      await assert.rejects(c.waitForState('READY', { timeoutMs: 200, intervalMs: 50 }), /timed out waiting for state READY: state is RUNNING/);
      c.close();
      await a.close();
    } finally {
      removeTmpDir(dir);
    }
  });
});
