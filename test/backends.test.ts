/**
 * Network backends (http-proxy, registry) against in-process node:http servers.
 */
import { test, describe, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as http from 'node:http';
import * as https from 'node:https';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { AddressInfo } from 'node:net';
import { HttpProxyBackend, HttpTuning } from '../src/backends/http';
import { RegistryBackend } from '../src/backends/registry';
import { parseWwwAuthenticate, dockerConfigAuth } from '../src/backends/auth';
import { HttpProxyBackendConfig, RegistryBackendConfig, ProxyConfig } from '../src/daemon/config';
import { NydusError } from '../src/errors';

const BLOB = crypto.randomBytes(10000);
const BLOB_ID = crypto.createHash('sha256').update(BLOB).digest('hex');
const FAST: HttpTuning = { backoffBaseMs: 5, backoffMaxMs: 20, timeoutMs: 2000, connectTimeoutMs: 2000 };

interface Srv {
  url: string;
  host: string;
  requests: http.IncomingMessage[];
  close(): Promise<void>;
}

const servers: Srv[] = [];
after(async () => {
  for (const s of servers) await s.close();
});

async function startServer(handler: (req: http.IncomingMessage, res: http.ServerResponse) => void, listenOn?: string): Promise<Srv> {
  const requests: http.IncomingMessage[] = [];
  const server = http.createServer((req, res) => {
    requests.push(req);
    handler(req, res);
  });
  await new Promise<void>((r) => (listenOn ? server.listen(listenOn, r) : server.listen(0, '127.0.0.1', r)));
  const port = listenOn ? 0 : (server.address() as AddressInfo).port;
  const srv: Srv = {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
  servers.push(srv);
  return srv;
}

/** serve a ranged GET of `blob` the way a well-behaved server does */
function serveRange(req: http.IncomingMessage, res: http.ServerResponse, blob = BLOB): void {
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  if (!m) {
    res.writeHead(200, { 'content-length': blob.length });
    res.end(blob);
    return;
  }
  const start = Number(m[1]);
  const end = Math.min(Number(m[2]), blob.length - 1);
  if (start >= blob.length) {
    res.writeHead(416, { 'content-range': `bytes */${blob.length}` });
    res.end();
    return;
  }
  res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${blob.length}`, 'content-length': end - start + 1 });
  res.end(blob.subarray(start, end + 1));
}

const PROXY: ProxyConfig = { url: '', ping_url: '', fallback: true, check_interval: 5, use_http: false, check_pause_elapsed: 300 };
function proxyCfg(addr: string, extra: Partial<HttpProxyBackendConfig> = {}): HttpProxyBackendConfig {
  return { addr, path: '', skip_verify: false, ca_cert_files: [], timeout: 5, connect_timeout: 5, retry_limit: 0, proxy: PROXY, ...extra };
}
function regCfg(host: string, extra: Partial<RegistryBackendConfig> = {}): RegistryBackendConfig {
  return { scheme: 'http', host, repo: 'library/demo', skip_verify: false, ca_cert_files: [], timeout: 5, connect_timeout: 5, retry_limit: 0, proxy: PROXY, ...extra };
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

describe('http-proxy backend', () => {
  test('range edge cases: first byte, last byte, middle, whole blob, empty', async () => {
    const s = await startServer((req, res) => serveRange(req, res));
    const b = new HttpProxyBackend(proxyCfg(s.url, { path: '/blobs/' }), FAST);
    try {
      assert.deepEqual(await b.readRange(BLOB_ID, 0, 1), BLOB.subarray(0, 1));
      assert.deepEqual(await b.readRange(BLOB_ID, BLOB.length - 1, 1), BLOB.subarray(BLOB.length - 1));
      assert.deepEqual(await b.readRange(BLOB_ID, 1234, 4321), BLOB.subarray(1234, 1234 + 4321));
      assert.deepEqual(await b.readRange(BLOB_ID, 0, BLOB.length), BLOB);
      assert.equal((await b.readRange(BLOB_ID, 5, 0)).length, 0);
      assert.equal(s.requests[0].url, `/blobs/${BLOB_ID}`);
      assert.equal(s.requests[0].headers.range, 'bytes=0-0');
      assert.equal(s.requests[1].headers.range, `bytes=${BLOB.length - 1}-${BLOB.length - 1}`);
      assert.equal(s.requests.length, 4);
      // a range past the end: 416, not retried, names URL and status
      const e = await rejects(b.readRange(BLOB_ID, BLOB.length, 10), /416/);
      assert.match(e.message, new RegExp(BLOB_ID));
      // a range the server clamps (end beyond the blob) → wrong Content-Range
      await rejects(b.readRange(BLOB_ID, BLOB.length - 5, 10), /Content-Range/);
    } finally {
      await b.close();
    }
  });

  test('200 with the whole blob instead of 206 is sliced', async () => {
    const s = await startServer((_req, res) => {
      res.writeHead(200, { 'content-length': BLOB.length });
      res.end(BLOB);
    });
    const b = new HttpProxyBackend(proxyCfg(s.url), FAST);
    try {
      assert.deepEqual(await b.readRange(BLOB_ID, 100, 200), BLOB.subarray(100, 300));
      assert.deepEqual(await b.readRange(BLOB_ID, BLOB.length - 1, 1), BLOB.subarray(BLOB.length - 1));
      await rejects(b.readRange(BLOB_ID, BLOB.length - 1, 2), /HTTP 200.*does not cover/);
    } finally {
      await b.close();
    }
  });

  test('oversized bodies are rejected; connections are reused', async () => {
    let conns = 0;
    const s = await startServer((req, res) => {
      if (req.url!.endsWith('long')) {
        // right Content-Range, but (chunked) more bytes than asked
        res.writeHead(206, { 'content-range': 'bytes 0-4095/10000' });
        res.write(BLOB.subarray(0, 4096));
        res.end(BLOB.subarray(4096, 5000));
      } else if (req.url!.endsWith('whole')) {
        res.writeHead(200, { 'content-length': BLOB.length });
        res.end(BLOB);
      } else serveRange(req, res);
    });
    const b = new HttpProxyBackend(proxyCfg(s.url, { retry_limit: 2 }), { ...FAST, maxWholeBody: 5000 });
    try {
      await rejects(b.readRange('long', 0, 4096), /body longer than the 4096 bytes expected/);
      await rejects(b.readRange('whole', 0, 10), /10000-byte body, more than the 5000 bytes expected/);
      const before = s.requests.length;
      assert.equal(before, 2, 'not retried');
      for (let i = 0; i < 10; i++) await b.readRange(BLOB_ID, i * 10, 10);
      conns = new Set(s.requests.slice(before).map((r) => r.socket)).size;
      assert.ok(conns <= 2, `sequential reads reuse keep-alive connections (${conns} for 10 reads)`);
    } finally {
      await b.close();
    }
  });

  test('wrong Content-Range is an error and not retried', async () => {
    const s = await startServer((_req, res) => {
      res.writeHead(206, { 'content-range': `bytes 1-10/${BLOB.length}`, 'content-length': 10 });
      res.end(BLOB.subarray(1, 11));
    });
    const b = new HttpProxyBackend(proxyCfg(s.url, { retry_limit: 3 }), FAST);
    try {
      const e = await rejects(b.readRange(BLOB_ID, 0, 10), /HTTP 206 with Content-Range "bytes 1-10\/10000", expected bytes 0-9/);
      assert.match(e.message, new RegExp(`${s.url}/${BLOB_ID}`));
      assert.equal(s.requests.length, 1);
    } finally {
      await b.close();
    }
  });

  test('short bodies are retried, then reported', async () => {
    // (a) consistent headers but fewer bytes than asked; (b) Content-Length promised, connection cut
    let n = 0;
    const s = await startServer((req, res) => {
      n++;
      if (req.url!.endsWith('cut')) {
        res.writeHead(206, { 'content-range': 'bytes 0-99/10000', 'content-length': 100 });
        res.write(BLOB.subarray(0, 40));
        setTimeout(() => res.socket?.destroy(), 10);
        return;
      }
      if (n < 3) {
        res.writeHead(206, { 'content-range': 'bytes 0-99/10000', 'content-length': 50 });
        res.end(BLOB.subarray(0, 50));
        return;
      }
      serveRange(req, res);
    });
    const b = new HttpProxyBackend(proxyCfg(s.url, { retry_limit: 2 }), FAST);
    try {
      assert.deepEqual(await b.readRange('a', 0, 100), BLOB.subarray(0, 100));
      assert.equal(n, 3);
      const e = await rejects(b.readRange('cut', 0, 100), /body cut short.*after 3 attempts/);
      assert.equal(e.context.attempts, 3);
      assert.equal(n, 6);
    } finally {
      await b.close();
    }
  });

  test('500s then success within retry_limit; beyond it an error; 404 not retried; 429 retried', async () => {
    let fails = 2;
    const s = await startServer((req, res) => {
      if (req.url!.endsWith('missing')) {
        res.writeHead(404);
        res.end('no such blob');
      } else if (req.url!.endsWith('busy') && fails-- > 0) {
        res.writeHead(429);
        res.end();
      } else if (fails-- > 0) {
        res.writeHead(500);
        res.end('boom');
      } else serveRange(req, res);
    });
    const ok = new HttpProxyBackend(proxyCfg(s.url, { retry_limit: 2 }), FAST);
    const strict = new HttpProxyBackend(proxyCfg(s.url, { retry_limit: 1 }), FAST);
    try {
      assert.deepEqual(await ok.readRange(BLOB_ID, 10, 10), BLOB.subarray(10, 20));
      assert.equal(s.requests.length, 3);
      fails = 2;
      const e = await rejects(strict.readRange(BLOB_ID, 10, 10), /HTTP 500 unexpected status: boom \(after 2 attempts\)/);
      assert.equal(e.context.status, 500);
      fails = 0;
      const before = s.requests.length;
      await rejects(ok.readRange('missing', 0, 10), /HTTP 404 blob not found/);
      assert.equal(s.requests.length, before + 1);
      fails = 2;
      assert.deepEqual(await ok.readRange('busy', 0, 10), BLOB.subarray(0, 10));
    } finally {
      await ok.close();
      await strict.close();
    }
  });

  test('connection reset is retried; connection refused is reported', async () => {
    let n = 0;
    const s = await startServer((req, res) => {
      if (n++ === 0) {
        req.socket.destroy();
        return;
      }
      serveRange(req, res);
    });
    const b = new HttpProxyBackend(proxyCfg(s.url, { retry_limit: 1 }), FAST);
    const noRetry = new HttpProxyBackend(proxyCfg(s.url), FAST);
    try {
      assert.deepEqual(await b.readRange(BLOB_ID, 0, 10), BLOB.subarray(0, 10));
      n = 0;
      await rejects(noRetry.readRange(BLOB_ID, 0, 10), /other side closed|socket|reset/i);
    } finally {
      await b.close();
      await noRetry.close();
    }
    const dead = await startServer(() => undefined);
    await dead.close();
    const r = new HttpProxyBackend(proxyCfg(dead.url, { retry_limit: 1 }), FAST);
    try {
      await rejects(r.readRange(BLOB_ID, 0, 10), /ECONNREFUSED/);
    } finally {
      await r.close();
    }
  });

  test('stalled server: timeout error (headers and body)', async () => {
    const s = await startServer((req, res) => {
      if (req.url!.endsWith('body')) {
        res.writeHead(206, { 'content-range': 'bytes 0-99/10000', 'content-length': 100 });
        res.write(BLOB.subarray(0, 10));
      }
      // never finish
    });
    const b = new HttpProxyBackend(proxyCfg(s.url, { retry_limit: 1 }), { ...FAST, timeoutMs: 200 });
    try {
      const t0 = Date.now();
      await rejects(b.readRange('head', 0, 100), /timeout waiting for response headers.*after 2 attempts/);
      const dt = Date.now() - t0;
      assert.ok(dt >= 380 && dt < 1500, `both attempts waited for the 200 ms timeout (${dt} ms)`);
      await rejects(b.readRange('body', 0, 100), /timeout waiting for response body/);
    } finally {
      await b.close();
    }
  });

  test('timeout from the config in seconds', async () => {
    const s = await startServer(() => undefined);
    const b = new HttpProxyBackend(proxyCfg(s.url, { timeout: 1 }), { backoffBaseMs: 5 });
    try {
      const t0 = Date.now();
      await rejects(b.readRange(BLOB_ID, 0, 1), /timeout/);
      const dt = Date.now() - t0;
      assert.ok(dt >= 900 && dt < 1900, `took ${dt} ms`);
    } finally {
      await b.close();
    }
  });

  test('unix socket addr with a path prefix', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-http-'));
    const sock = path.join(dir, 'proxy.sock');
    const s = await startServer((req, res) => serveRange(req, res), sock);
    const b = new HttpProxyBackend(proxyCfg(sock, { path: 'v1/blobs' }), FAST);
    try {
      assert.deepEqual(await b.readRange(BLOB_ID, 9000, 1000), BLOB.subarray(9000));
      assert.equal(s.requests[0].url, `/v1/blobs/${BLOB_ID}`);
      await Promise.all(Array.from({ length: 20 }, (_, i) => b.readRange(BLOB_ID, i * 100, 100).then((d) => assert.deepEqual(d, BLOB.subarray(i * 100, i * 100 + 100)))));
      const e = await rejects(b.readRange(BLOB_ID, 20000, 1), /416/);
      assert.match(e.message, /unix socket/);
    } finally {
      await b.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('bounded connections per host', async () => {
    const s = await startServer((req, res) => setTimeout(() => serveRange(req, res), 5));
    const b = new HttpProxyBackend(proxyCfg(s.url), { ...FAST, maxConnections: 3 });
    try {
      await Promise.all(Array.from({ length: 30 }, (_, i) => b.readRange(BLOB_ID, i * 10, 10)));
      assert.equal(s.requests.length, 30);
      assert.ok(new Set(s.requests.map((r) => r.socket)).size <= 3);
    } finally {
      await b.close();
    }
  });

  test('invalid arguments', async () => {
    assert.throws(() => new HttpProxyBackend(proxyCfg('relative/sock')), /addr/);
    const b = new HttpProxyBackend(proxyCfg('http://127.0.0.1:9'), FAST);
    await assert.rejects(b.readRange('../etc', 0, 1), /not valid/);
    await assert.rejects(b.readRange(BLOB_ID, -1, 1), /invalid range/);
    await b.close();
  });
});

describe('TLS', () => {
  test('https: verified against ca_cert_files, rejected without, accepted with skip_verify', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-tls-'));
    const key = path.join(dir, 'key.pem');
    const cert = path.join(dir, 'cert.pem');
    try {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    } catch {
      t.skip('openssl not available');
      return;
    }
    const server = https.createServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert) }, (req, res) => serveRange(req, res));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const withCa = new HttpProxyBackend(proxyCfg(url, { ca_cert_files: [cert] }), FAST);
    const plain = new HttpProxyBackend(proxyCfg(url, { retry_limit: 3 }), FAST);
    const skip = new HttpProxyBackend(proxyCfg(url, { skip_verify: true }), FAST);
    const reg = new RegistryBackend({ ...regCfg(url.slice('https://'.length), { ca_cert_files: [cert] }), scheme: 'https' }, { ...FAST, dockerConfig: false });
    try {
      assert.deepEqual(await withCa.readRange(BLOB_ID, 0, 100), BLOB.subarray(0, 100));
      assert.deepEqual(await skip.readRange(BLOB_ID, 0, 100), BLOB.subarray(0, 100));
      assert.deepEqual(await reg.readRange(BLOB_ID, 0, 100), BLOB.subarray(0, 100));
      const e = await rejects(plain.readRange(BLOB_ID, 0, 100), /self[- ]signed|certificate/i);
      assert.equal(e.context.retryable, false, 'certificate errors are not retried');
      assert.equal(e.context.attempts, undefined);
      assert.throws(() => new HttpProxyBackend(proxyCfg(url, { ca_cert_files: [path.join(dir, 'missing.pem')] })), /ca_cert_files: cannot read/);
    } finally {
      await Promise.all([withCa.close(), plain.close(), skip.close(), reg.close()]);
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('registry auth helpers', () => {
  test('parseWwwAuthenticate', () => {
    assert.deepEqual(parseWwwAuthenticate('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull"'), [
      { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/ubuntu:pull' } },
    ]);
    assert.deepEqual(parseWwwAuthenticate('Basic realm="Registry Realm", Bearer realm="http://x/t", service=reg, error="invalid_token"'), [
      { scheme: 'basic', params: { realm: 'Registry Realm' } },
      { scheme: 'bearer', params: { realm: 'http://x/t', service: 'reg', error: 'invalid_token' } },
    ]);
    assert.deepEqual(parseWwwAuthenticate('bearer realm="a\\"b,c"'), [{ scheme: 'bearer', params: { realm: 'a"b,c' } }]);
    assert.deepEqual(parseWwwAuthenticate(undefined), []);
  });

  test('dockerConfigAuth', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-dc-'));
    const f = path.join(dir, 'config.json');
    fs.writeFileSync(f, JSON.stringify({ auths: { 'reg.example:5000': { auth: 'dTpw' }, 'https://other.example': { username: 'a', password: 'b' } } }));
    assert.equal(dockerConfigAuth('reg.example:5000', f), 'dTpw');
    assert.equal(dockerConfigAuth('other.example', f), Buffer.from('a:b').toString('base64'));
    assert.equal(dockerConfigAuth('nope.example', f), undefined);
    assert.equal(dockerConfigAuth('reg.example:5000', path.join(dir, 'missing.json')), undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

const basic = (u: string, p: string) => Buffer.from(`${u}:${p}`).toString('base64');
const BLOB_PATH = `/v2/library/demo/blobs/sha256:${BLOB_ID}`;

describe('registry backend', () => {
  test('anonymous pull; blob URL layout', async () => {
    const s = await startServer((req, res) => {
      if (req.url !== BLOB_PATH) {
        res.writeHead(404);
        res.end();
      } else serveRange(req, res);
    });
    const b = new RegistryBackend(regCfg(s.host), { ...FAST, dockerConfig: false });
    try {
      assert.equal(b.blobUrl(BLOB_ID), `${s.url}${BLOB_PATH}`);
      assert.deepEqual(await b.readRange(BLOB_ID, 0, 1), BLOB.subarray(0, 1));
      assert.deepEqual(await b.readRange(BLOB_ID, 0, BLOB.length), BLOB);
      assert.equal(s.requests[0].headers.authorization, undefined);
      await rejects(b.readRange('00', 0, 1), /registry: GET .*sha256:00.*HTTP 404/);
    } finally {
      await b.close();
    }
  });

  test('Basic auth: configured, from docker config, missing, wrong', async () => {
    const good = basic('alice', 's3cret');
    const s = await startServer((req, res) => {
      if (req.headers.authorization !== `Basic ${good}`) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="test"' });
        res.end('unauthorized');
      } else serveRange(req, res);
    });
    const b = new RegistryBackend(regCfg(s.host, { auth: good }), { ...FAST, dockerConfig: false });
    const anon = new RegistryBackend(regCfg(s.host), { ...FAST, dockerConfig: false });
    const wrong = new RegistryBackend(regCfg(s.host, { auth: basic('alice', 'nope'), retry_limit: 3 }), { ...FAST, dockerConfig: false });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-dc-'));
    const dc = path.join(dir, 'config.json');
    fs.writeFileSync(dc, JSON.stringify({ auths: { [s.host]: { auth: good } } }));
    const fromDocker = new RegistryBackend(regCfg(s.host), { ...FAST, dockerConfig: dc });
    try {
      assert.deepEqual(await b.readRange(BLOB_ID, 5, 5), BLOB.subarray(5, 10));
      assert.deepEqual(await fromDocker.readRange(BLOB_ID, 5, 5), BLOB.subarray(5, 10));
      await rejects(anon.readRange(BLOB_ID, 0, 1), /HTTP 401 unauthorized \(no credentials configured\)/);
      const before = s.requests.length;
      await rejects(wrong.readRange(BLOB_ID, 0, 1), /HTTP 401 unauthorized \(credentials or token rejected\)/);
      assert.equal(s.requests.length, before + 1, '401 with wrong credentials is not retried');
    } finally {
      await Promise.all([b.close(), anon.close(), wrong.close(), fromDocker.close()]);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  /** a registry with a token server: tokens live `life` seconds; `revoke()` invalidates all */
  async function bearerRegistry(life: number, creds?: string) {
    const tokens = new Map<string, number>(); // token → expiry (ms)
    const tokenReqs: http.IncomingMessage[] = [];
    let seq = 0;
    let unauthorized = 0;
    const auth = await startServer((req, res) => {
      tokenReqs.push(req);
      const u = new URL(req.url!, 'http://x');
      if (creds && req.headers.authorization !== `Basic ${creds}`) {
        res.writeHead(401);
        res.end('bad creds');
        return;
      }
      if (u.searchParams.get('scope') !== 'repository:library/demo:pull' || u.searchParams.get('service') !== 'test-registry') {
        res.writeHead(400);
        res.end('bad scope/service');
        return;
      }
      const t = `tok${++seq}`;
      tokens.set(t, Date.now() + life * 1000);
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ token: t, expires_in: life }));
      }, 20);
    });
    const reg = await startServer((req, res) => {
      const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
      const exp = m ? tokens.get(m[1]) : undefined;
      if (exp === undefined || exp < Date.now()) {
        unauthorized++;
        res.writeHead(401, { 'www-authenticate': `Bearer realm="${auth.url}/token",service="test-registry",scope="repository:library/demo:pull"` });
        res.end('{"errors":[{"code":"UNAUTHORIZED"}]}');
        return;
      }
      serveRange(req, res);
    });
    return { auth, reg, tokenReqs, tokens, revoke: () => tokens.clear(), unauthorized: () => unauthorized };
  }

  test('Bearer flow: one token request for many concurrent reads, Basic creds sent to the realm', async () => {
    const creds = basic('bob', 'pw');
    const r = await bearerRegistry(60, creds);
    const b = new RegistryBackend(regCfg(r.reg.host, { auth: creds }), { ...FAST, dockerConfig: false });
    try {
      const reads = await Promise.all(Array.from({ length: 25 }, (_, i) => b.readRange(BLOB_ID, i * 400, 400)));
      reads.forEach((d, i) => assert.deepEqual(d, BLOB.subarray(i * 400, i * 400 + 400)));
      assert.equal(r.tokenReqs.length, 1);
      assert.equal(r.tokenReqs[0].headers.authorization, `Basic ${creds}`);
      // later reads reuse the cached token without a 401 round trip
      const u = r.unauthorized();
      await b.readRange(BLOB_ID, 0, 10);
      assert.equal(r.unauthorized(), u);
      assert.equal(r.tokenReqs.length, 1);
    } finally {
      await b.close();
    }
  });

  test('Bearer: token refreshed before expiry, and a 401 (revoked token) forces one refresh', async () => {
    const r = await bearerRegistry(1);
    const b = new RegistryBackend(regCfg(r.reg.host), { ...FAST, dockerConfig: false });
    try {
      await b.readRange(BLOB_ID, 0, 10);
      assert.equal(r.tokenReqs.length, 1);
      const u = r.unauthorized();
      // within the last 20–25% of the 1 s lifetime the token is renewed proactively
      await new Promise((res) => setTimeout(res, 850));
      await Promise.all(Array.from({ length: 10 }, () => b.readRange(BLOB_ID, 10, 10)));
      assert.equal(r.tokenReqs.length, 2);
      assert.equal(r.unauthorized(), u, 'no 401 from an expired token');
      // revoke: every concurrent read gets a 401, exactly one token request follows
      r.revoke();
      const reads = await Promise.all(Array.from({ length: 30 }, (_, i) => b.readRange(BLOB_ID, i * 300, 300)));
      reads.forEach((d, i) => assert.deepEqual(d, BLOB.subarray(i * 300, i * 300 + 300)));
      assert.equal(r.tokenReqs.length, 3);
      assert.ok(r.unauthorized() > u);
    } finally {
      await b.close();
    }
  });

  test('Bearer: token server refusing credentials is reported', async () => {
    const r = await bearerRegistry(60, basic('bob', 'pw'));
    const b = new RegistryBackend(regCfg(r.reg.host, { auth: basic('bob', 'wrong') }), { ...FAST, dockerConfig: false });
    try {
      await rejects(b.readRange(BLOB_ID, 0, 1), /token GET .*\/token\?…: HTTP 401 \(credentials rejected\)/);
    } finally {
      await b.close();
    }
  });

  test('registry_token is used as a ready Bearer token', async () => {
    const s = await startServer((req, res) => {
      if (req.headers.authorization !== 'Bearer static-token') {
        res.writeHead(401, { 'www-authenticate': 'Bearer realm="http://127.0.0.1:9/token"' });
        res.end();
      } else serveRange(req, res);
    });
    const b = new RegistryBackend(regCfg(s.host, { registry_token: 'static-token' }), { ...FAST, dockerConfig: false });
    try {
      assert.deepEqual(await b.readRange(BLOB_ID, 0, 100), BLOB.subarray(0, 100));
      assert.equal(b.auth.tokenRequests, 0);
    } finally {
      await b.close();
    }
  });

  test('redirect to another host drops Authorization; same-host redirect keeps it', async () => {
    let expired = false;
    const storage = await startServer((req, res) => {
      if (!req.url!.startsWith('/bucket/blob?sig=') || (expired && req.url!.endsWith('abc'))) {
        res.writeHead(403);
        res.end('bad signature');
      } else serveRange(req, res);
    });
    const creds = basic('carol', 'pw');
    const s = await startServer((req, res) => {
      if (req.headers.authorization !== `Basic ${creds}`) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' });
        res.end();
      } else if (req.url === BLOB_PATH) {
        res.writeHead(307, { location: `/v2/library/demo/blobs/moved/sha256:${BLOB_ID}` });
        res.end();
      } else {
        res.writeHead(302, { location: `${storage.url}/bucket/blob?sig=${expired ? 'def' : 'abc'}` });
        res.end();
      }
    });
    const b = new RegistryBackend(regCfg(s.host, { auth: creds }), { ...FAST, dockerConfig: false });
    try {
      assert.deepEqual(await b.readRange(BLOB_ID, 4000, 2000), BLOB.subarray(4000, 6000));
      assert.equal(s.requests.length, 2);
      assert.equal(s.requests[1].headers.authorization, `Basic ${creds}`);
      assert.equal(storage.requests.length, 1);
      assert.equal(storage.requests[0].headers.authorization, undefined);
      assert.equal(storage.requests[0].headers.range, 'bytes=4000-5999');
      // the pre-signed target is reused for the next range of the same blob …
      assert.deepEqual(await b.readRange(BLOB_ID, 0, 10), BLOB.subarray(0, 10));
      assert.equal(s.requests.length, 2);
      assert.equal(storage.requests.length, 2);
      assert.equal(b.redirectCacheHits, 1);
      // … until it fails (expired signature): then the registry is asked again, transparently
      expired = true;
      assert.deepEqual(await b.readRange(BLOB_ID, 10, 10), BLOB.subarray(10, 20));
      assert.equal(s.requests.length, 4);
      assert.equal(storage.requests.length, 4);
      assert.equal(storage.requests[3].url, '/bucket/blob?sig=def');
    } finally {
      await b.close();
    }
  });

  test('redirect loops and errors behind a redirect are reported', async () => {
    const storage = await startServer((_req, res) => {
      res.writeHead(503);
      res.end('slow down');
    });
    const s = await startServer((req, res) => {
      if (req.url!.includes('loop')) {
        res.writeHead(302, { location: req.url! });
      } else {
        res.writeHead(302, { location: `${storage.url}/obj` });
      }
      res.end();
    });
    const b = new RegistryBackend(regCfg(s.host, { retry_limit: 1 }), { ...FAST, dockerConfig: false });
    try {
      await rejects(b.readRange('loop', 0, 1), /more than 5 redirects/);
      const e = await rejects(b.readRange(BLOB_ID, 0, 1), /\/obj.*HTTP 503.*slow down.*after 2 attempts/);
      assert.equal(e.context.status, 503);
      assert.equal(storage.requests.length, 2);
    } finally {
      await b.close();
    }
  });
});

test('undici-core: the deep entry points are the classes undici exports, and request() works on them', async () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const core = require('../src/backends/undici-core') as typeof import('../src/backends/undici-core');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const full = require('undici') as typeof import('undici');
  assert.equal(core.Agent, full.Agent);
  assert.equal(core.Pool, full.Pool);
  assert.equal(core.ProxyAgent, full.ProxyAgent);
  const server = http.createServer((req, res) => res.end(`${req.method} ${req.url}`));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const agent = new core.Agent();
  try {
    const res = await core.request(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v2/x/blobs/sha256:ab?n=1`, { dispatcher: agent, method: 'GET', headers: { range: 'bytes=0-1' } });
    assert.equal(res.statusCode, 200);
    assert.equal(await res.body.text(), 'GET /v2/x/blobs/sha256:ab?n=1');
  } finally {
    await agent.close();
    server.close();
  }
});
