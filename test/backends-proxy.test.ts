/**
 * The `proxy` section of the network backends against a real proxy process: nginx on loopback
 * (test/helpers/nginx.ts) standing in for a Dragonfly peer: a forward HTTP proxy in front of
 * in-process origins (a blob server answering both the http-proxy and the registry URL forms, and
 * s3rver for s3). The origin counts proxied hits by nginx's `Via` header; nginx logs every
 * proxied request line and every ping.
 *
 * Covered: reads go through the proxy in forward-proxy form with Host, Range and Authorization
 * kept; the proxy is pinged every check_interval; SIGKILL mid-run → reads continue through the
 * origin with correct bytes and bounded latency, the proxy is not asked again until a ping to
 * the restarted nginx is answered, then traffic returns to it; SIGSTOP (a hung proxy) → reads
 * fall back after the timeout; fallback=false → clear retryable errors and an untouched origin;
 * no ping_url → one request re-probes after check_interval; use_http; makeBackend wiring.
 */
import { test, describe, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as http from 'node:http';
import * as crypto from 'node:crypto';
import { AddressInfo } from 'node:net';
import { NetworkTuning, ProxiedBackend, makeNetworkBackend } from '../src/backends/proxy';
import { awsUriEncode } from '../src/backends/object-storage';
import { BackendConfig, HttpProxyBackendConfig, ProxyConfig, RegistryBackendConfig, S3BackendConfig, parseBlobCacheEntry } from '../src/daemon/config';
import { makeBackend } from '../src/daemon/daemon';
import { BlobBackend } from '../src/daemon/interfaces';
import { NydusError } from '../src/errors';
import { Nginx, VIA, nginxBinary } from './helpers/nginx';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';

const BLOB = crypto.randomBytes(256 * 1024);
const BLOB_ID = crypto.createHash('sha256').update(BLOB).digest('hex');
const REPO = 'library/demo';
const AUTH = Buffer.from('alice:s3cret').toString('base64');
const FAST: NetworkTuning = { backoffBaseMs: 5, backoffMaxMs: 20, timeoutMs: 1500, connectTimeoutMs: 1000 };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

// ------------------------------------------------------------------------------------------------
// fixtures, cleaned up after the file whatever happens

const cleanups: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function startNginx(): Promise<Nginx> {
  const dir = makeTmpDir('nydus-ts-nginx-');
  const n = await Nginx.start(dir);
  cleanups.push(async () => {
    await n.stop();
    removeTmpDir(dir);
  });
  return n;
}

interface Origin {
  host: string;
  /** requests that came through nginx / directly */
  proxied: number;
  direct: number;
  /** delay before each blob reply, to keep requests in flight */
  delayMs: number;
}

/** Serves BLOB at /blobs/<id> (http-proxy form) and /v2/<repo>/blobs/sha256:<id> (registry, Basic auth). */
async function startOrigin(delayMs = 0): Promise<Origin> {
  const o: Origin = { host: '', proxied: 0, direct: 0, delayMs };
  const server = http.createServer((req, res) => {
    const url = req.url ?? '';
    const viaProxy = req.headers.via === VIA;
    const m = /^\/blobs\/([0-9a-f]{64})$/.exec(url) ?? new RegExp(`^/v2/${REPO}/blobs/sha256:([0-9a-f]{64})$`).exec(url);
    if (!m || m[1] !== BLOB_ID) {
      res.writeHead(404).end('no such blob');
      return;
    }
    if (url.startsWith('/v2/') && req.headers.authorization !== `Basic ${AUTH}`) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="test"' }).end();
      return;
    }
    if (viaProxy) o.proxied++;
    else o.direct++;
    const r = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    const send = () => {
      if (!r) {
        res.writeHead(200, { 'content-length': BLOB.length }).end(BLOB);
        return;
      }
      const start = Number(r[1]);
      const end = Math.min(Number(r[2]), BLOB.length - 1);
      res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${BLOB.length}`, 'content-length': end - start + 1 });
      res.end(BLOB.subarray(start, end + 1));
    };
    if (o.delayMs > 0) setTimeout(send, o.delayMs);
    else send();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  o.host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return o;
}

function proxyCfg(n: Nginx, extra: Partial<ProxyConfig> = {}): ProxyConfig {
  return { url: n.url, ping_url: n.pingUrl, fallback: true, check_interval: 1, use_http: false, check_pause_elapsed: 300, ...extra };
}
const common = { skip_verify: false, ca_cert_files: [], timeout: 5, connect_timeout: 5, retry_limit: 0 };

function httpProxyBackend(o: Origin, proxy: ProxyConfig, extra: Partial<HttpProxyBackendConfig> = {}, tuning: NetworkTuning = FAST): ProxiedBackend {
  const b = makeNetworkBackend({ type: 'http-proxy', config: { ...common, addr: `http://${o.host}`, path: '/blobs', proxy, ...extra } }, tuning);
  assert.ok(b instanceof ProxiedBackend);
  cleanups.push(() => b.close());
  return b;
}

function registryBackend(o: Origin, proxy: ProxyConfig, extra: Partial<RegistryBackendConfig> = {}): ProxiedBackend {
  const b = makeNetworkBackend({ type: 'registry', config: { ...common, scheme: 'http', host: o.host, repo: REPO, auth: AUTH, proxy, ...extra } }, { ...FAST, dockerConfig: false });
  assert.ok(b instanceof ProxiedBackend);
  cleanups.push(() => b.close());
  return b;
}

async function readOk(b: BlobBackend, offset: number, length: number): Promise<void> {
  const d = await b.readRange(BLOB_ID, offset, length);
  assert.ok(d.equals(BLOB.subarray(offset, offset + length)), `wrong bytes for ${offset}+${length}`);
}

async function rejects(p: Promise<unknown>, re: RegExp): Promise<NydusError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof NydusError, `expected NydusError, got ${e}`);
    assert.equal(e.code, 'ERR_BACKEND');
    assert.match(e.message, re);
    return e;
  }
  assert.fail(`expected rejection matching ${re}`);
}

/** `workers` concurrent random reads, each checked, until stop(); latency and errors recorded. */
function readLoop(b: BlobBackend, workers = 4) {
  let stopped = false;
  const st = { reads: 0, maxMs: 0, errors: [] as string[] };
  const worker = async () => {
    while (!stopped) {
      const offset = crypto.randomInt(0, BLOB.length - 1);
      const length = Math.min(BLOB.length - offset, crypto.randomInt(1, 16 * 1024));
      const t0 = performance.now();
      try {
        await readOk(b, offset, length);
      } catch (e) {
        st.errors.push((e as Error).message);
      }
      st.maxMs = Math.max(st.maxMs, performance.now() - t0);
      st.reads++;
    }
  };
  const all = Promise.all(Array.from({ length: workers }, worker));
  return {
    st,
    stop: async () => {
      stopped = true;
      await all;
      return st;
    },
  };
}

// ------------------------------------------------------------------------------------------------

describe('backend proxy (nginx standing in for a Dragonfly peer)', () => {
  test('nginx is installed (a missing prerequisite fails, never skips)', () => {
    assert.ok(nginxBinary());
  });

  test('reads go through the proxy: forward-proxy request line, Host, Range, Authorization kept; pinged every check_interval', async () => {
    const n = await startNginx();
    const o = await startOrigin();
    const reg = registryBackend(o, proxyCfg(n));
    const hp = httpProxyBackend(o, proxyCfg(n));
    for (let i = 0; i < 5; i++) await readOk(reg, i * 1000, 777);
    await readOk(hp, 0, BLOB.length);
    await readOk(hp, BLOB.length - 1, 1);
    assert.equal(o.proxied, 7);
    assert.equal(o.direct, 0);
    const lines = await n.settledRequests(7);
    assert.equal(lines.length, 7);
    const regLine = lines[0];
    assert.equal(regLine.request, `GET http://${o.host}/v2/${REPO}/blobs/sha256:${BLOB_ID} HTTP/1.1`, 'absolute URL in the request line (forward proxy)');
    assert.equal(regLine.host, o.host);
    assert.equal(regLine.range, 'bytes=0-776');
    assert.equal(regLine.auth, true);
    assert.equal(lines[5].request, `GET http://${o.host}/blobs/${BLOB_ID} HTTP/1.1`);
    assert.deepEqual(reg.stats(), { healthy: true, proxyReads: 5, originReads: 0, fallbacks: 0, proxyFailures: 0, pings: reg.stats().pings, pingFailures: 0 });
    // a first ping at once, then one per check_interval (1 s), from each backend
    await until('a second round of pings', () => n.pings().length >= 4, 3000);
    assert.ok(reg.stats().pings >= 2 && hp.stats().pings >= 2);
    assert.ok(n.pings().every((l) => l.request === 'GET /ping HTTP/1.1'), 'pings go to ping_url directly, not through the proxy');
  });

  test('connections to the proxy are reused and bounded per host (HttpClient maxConnections)', async () => {
    const n = await startNginx();
    const o = await startOrigin(2);
    const b = httpProxyBackend(o, proxyCfg(n), {}, { ...FAST, maxConnections: 3 });
    await Promise.all(Array.from({ length: 40 }, (_, i) => readOk(b, i * 1000, 1000)));
    assert.equal(o.proxied, 40);
    const conns = new Set(n.requests().map((l) => l.connection));
    assert.ok(conns.size >= 1 && conns.size <= 3, `40 reads used ${conns.size} connections to the proxy, expected 1..3`);
  });

  test('SIGKILL mid-run: reads continue via the origin (correct bytes, no hung read); the proxy is not asked again until the restarted nginx answers a ping; then traffic returns', async () => {
    const n = await startNginx();
    const o = await startOrigin(5);
    const b = httpProxyBackend(o, proxyCfg(n));
    const loop = readLoop(b, 4);
    await until('40 reads through the proxy', () => o.proxied >= 40);
    await n.kill();
    const directAtKill = o.direct;
    await until('40 reads served by the origin after the kill', () => o.direct >= directAtKill + 40);
    const s1 = b.stats();
    assert.equal(s1.healthy, false);
    assert.ok(s1.fallbacks >= 1, 'the reads in flight at the kill fell back');
    assert.ok(s1.proxyFailures <= 8, `only the reads in flight or started before the first failure tried the dead proxy, got ${s1.proxyFailures}`);
    // well past check_interval: pings keep failing and no read tries the proxy
    await sleep(1300);
    const s2 = b.stats();
    assert.equal(s2.proxyFailures, s1.proxyFailures, 'no read tried the proxy while it was down');
    assert.ok(s2.pingFailures >= 1);
    assert.equal(s2.healthy, false);

    const restartedAt = Date.now() / 1000;
    await n.restart();
    await until('the backend sees the proxy healthy again', () => b.stats().healthy, 4000);
    const proxiedAtRecovery = o.proxied;
    await until('20 reads through the restarted proxy', () => o.proxied >= proxiedAtRecovery + 20);
    const st = await loop.stop();
    assert.deepEqual(st.errors, [], 'every read returned the right bytes');
    assert.ok(st.maxMs < 1500, `slowest read took ${Math.round(st.maxMs)} ms`);
    // the restarted nginx answered a ping before it was sent any blob request
    const firstPing = n.pings().find((l) => l.msec >= restartedAt - 0.002);
    const firstBlob = n.requests().find((l) => l.msec >= restartedAt - 0.002);
    assert.ok(firstPing && firstBlob, 'a ping and blob requests reached the restarted nginx');
    assert.ok(firstPing.msec <= firstBlob.msec, `first blob request (${firstBlob.msec}) came before the first ping (${firstPing.msec})`);
    const s3 = b.stats();
    assert.equal(s3.healthy, true);
    assert.equal(s3.proxyReads + s3.originReads, st.reads);
  });

  test('SIGSTOP (a hung proxy): the read in flight falls back after the timeout, later reads go straight to the origin; SIGCONT → back through the proxy', async () => {
    const n = await startNginx();
    const o = await startOrigin();
    const b = httpProxyBackend(o, proxyCfg(n), {}, { ...FAST, timeoutMs: 600, proxy: { pingTimeoutMs: 400 } });
    await readOk(b, 0, 4096);
    assert.equal(o.proxied, 1);
    await n.signal('SIGSTOP');
    try {
      let t0 = performance.now();
      await readOk(b, 4096, 4096);
      const first = performance.now() - t0;
      assert.ok(first >= 500 && first < 1500, `the read in flight waited for the timeout and fell back: ${Math.round(first)} ms`);
      assert.equal(o.direct, 1);
      assert.equal(b.stats().healthy, false);
      t0 = performance.now();
      for (let i = 0; i < 10; i++) await readOk(b, i * 100, 100);
      assert.ok(performance.now() - t0 < 500, 'unhealthy: no more waiting on the proxy');
      assert.equal(o.direct, 11);
    } finally {
      await n.signal('SIGCONT');
    }
    await until('the proxy answers its ping again', () => b.stats().healthy, 4000);
    await readOk(b, 10, 10);
    assert.equal(o.proxied, 2);
  });

  test('fallback=false: clear retryable errors while the proxy is down, the origin is never asked; recovery after a ping', async () => {
    const n = await startNginx();
    const o = await startOrigin();
    const b = httpProxyBackend(o, proxyCfg(n, { fallback: false }), { retry_limit: 1 });
    await readOk(b, 0, 100);
    await n.kill();
    // the request through the dead proxy: retried (retry_limit 1), then an error naming the proxy
    const e1 = await rejects(b.readRange(BLOB_ID, 0, 100), /^proxy http:\/\/127\.0\.0\.1:\d+: http-proxy: GET http:\/\/127\.0\.0\.1:\d+\/blobs\/[0-9a-f]{64}: .*\(after 2 attempts\)$/);
    assert.equal(e1.context.retryable, true);
    assert.equal(e1.context.proxy, n.url);
    // then: unhealthy, failing at once without touching the proxy or the origin
    const t0 = performance.now();
    const e2 = await rejects(b.readRange(BLOB_ID, 0, 100), /^proxy http:\/\/127\.0\.0\.1:\d+ is unhealthy \(.+\); proxy\.fallback is false, so the origin is not asked/);
    assert.ok(performance.now() - t0 < 100);
    assert.equal(e2.context.retryable, true);
    assert.equal(o.direct, 0, 'the origin was never asked');
    await n.restart();
    await until('a ping answered', () => b.stats().healthy, 4000);
    await readOk(b, 50, 50);
    assert.equal(o.proxied, 2);
    assert.equal(o.direct, 0);
  });

  test('no ping_url: after a failure, one request probes the proxy again after check_interval', async () => {
    const n = await startNginx();
    const o = await startOrigin();
    const b = httpProxyBackend(o, proxyCfg(n, { ping_url: '' }), {}, { ...FAST, proxy: { checkIntervalMs: 400 } });
    await readOk(b, 0, 10);
    await n.kill();
    await readOk(b, 0, 10); // fails through the proxy, served by the origin
    for (let i = 0; i < 5; i++) await readOk(b, i, 10); // straight to the origin
    assert.deepEqual([b.stats().proxyFailures, b.stats().fallbacks, o.direct, o.proxied], [1, 1, 6, 1]);
    await n.restart();
    await sleep(450);
    await readOk(b, 20, 10);
    assert.equal(o.proxied, 2);
    assert.equal(b.stats().healthy, true);
    assert.equal(n.pings().length, 0);
  });

  test('use_http: an https source URL is asked as http:// through the proxy', async () => {
    const n = await startNginx();
    const o = await startOrigin();
    // the origin speaks plain http only: directly, https would fail; through the proxy the
    // rewritten http:// URL works
    const b = makeNetworkBackend({ type: 'registry', config: { ...common, scheme: 'https', host: o.host, repo: REPO, auth: AUTH, proxy: proxyCfg(n, { use_http: true }) } }, { ...FAST, dockerConfig: false });
    cleanups.push(() => b.close());
    await readOk(b, 123, 456);
    assert.equal(o.proxied, 1);
    assert.equal((await n.settledRequests())[0].request, `GET http://${o.host}/v2/${REPO}/blobs/sha256:${BLOB_ID} HTTP/1.1`);
  });

  test('s3 through the proxy: Host and the SigV4 signature survive (s3rver verifies it)', async () => {
    const n = await startNginx();
    const dir = makeTmpDir('nydus-ts-s3p-');
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const S3rver = require('@20minutes/s3rver') as new (o: Record<string, unknown>) => { run(): Promise<AddressInfo>; close(): Promise<void>; httpServer: http.Server };
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    require('@20minutes/s3rver/lib/models/account').DUMMY_ACCOUNT.createKeyPair('AKIDPROXYTEST', 'proxy/secret+key');
    const s3 = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory: dir, configureBuckets: [{ name: 'bkt' }] });
    const port = (await s3.run()).port;
    cleanups.push(async () => {
      s3.httpServer.closeAllConnections();
      await s3.close();
      removeTmpDir(dir);
    });
    const put = await fetch(`http://127.0.0.1:${port}/bkt/${awsUriEncode('blobs/' + BLOB_ID, true)}`, { method: 'PUT', body: BLOB });
    assert.equal(put.status, 200);
    const cfg: S3BackendConfig = { ...common, scheme: 'http', endpoint: `127.0.0.1:${port}`, region: 'us-east-1', bucket_name: 'bkt', object_prefix: 'blobs/', access_key_id: 'AKIDPROXYTEST', access_key_secret: 'proxy/secret+key', proxy: proxyCfg(n, { fallback: false }) };
    const b = makeNetworkBackend({ type: 's3', config: cfg }, FAST) as ProxiedBackend;
    cleanups.push(() => b.close());
    await readOk(b, 1000, 64 * 1024);
    assert.equal(b.stats().proxyReads, 1);
    const line = (await n.settledRequests())[0];
    assert.equal(line.request, `GET http://127.0.0.1:${port}/bkt/blobs/${BLOB_ID} HTTP/1.1`);
    assert.equal(line.status, 206);
    assert.equal(line.auth, true);
    // a wrong secret through the proxy is refused by s3rver: the proxy is not what passes it
    const bad = makeNetworkBackend({ type: 's3', config: { ...cfg, access_key_secret: 'wrong' } }, FAST);
    cleanups.push(() => bad.close());
    await rejects(bad.readRange(BLOB_ID, 0, 10), /^proxy .*HTTP 403 .*SignatureDoesNotMatch/);
  });

  test('makeBackend wires the proxy section of a registration; invalid proxy settings are refused', async () => {
    const n = await startNginx();
    const o = await startOrigin();
    const entry = (backend: Record<string, unknown>) =>
      parseBlobCacheEntry({ type: 'bootstrap', id: 'img', config: { backend_type: 'registry', backend_config: backend, cache_type: 'fscache', cache_config: { work_dir: '/x' }, metadata_path: '/x/i.boot' } }, { checkPaths: false });
    const b = makeBackend(entry({ scheme: 'http', host: o.host, repo: REPO, auth: AUTH, proxy: { url: n.url, ping_url: n.pingUrl, check_interval: 1 } }));
    cleanups.push(() => b.close());
    assert.ok(b instanceof ProxiedBackend);
    assert.equal(b.kind, 'registry');
    await readOk(b, 0, 1000);
    assert.equal(o.proxied, 1);
    // no proxy url: the plain backend
    const plain = makeBackend(entry({ scheme: 'http', host: o.host, repo: REPO, auth: AUTH, proxy: { fallback: false } }));
    assert.ok(!(plain instanceof ProxiedBackend));
    await plain.close();
    const invalid = (cfg: BackendConfig, re: RegExp) => assert.throws(() => makeNetworkBackend(cfg), (e: unknown) => e instanceof NydusError && e.code === 'ERR_INVALID_ARGUMENT' && re.test(e.message));
    invalid({ type: 'http-proxy', config: { ...common, addr: `http://${o.host}`, path: '', proxy: proxyCfg(n, { url: 'ftp://x' }) } }, /proxy\.url: must be an http\(s\) URL/);
    invalid({ type: 'http-proxy', config: { ...common, addr: `http://${o.host}`, path: '', proxy: proxyCfg(n, { ping_url: 'nope' }) } }, /proxy\.ping_url: must be an http\(s\) URL/);
    invalid({ type: 'http-proxy', config: { ...common, addr: '/run/blobs.sock', path: '', proxy: proxyCfg(n) } }, /cannot be used with a unix socket/);
  });
});
