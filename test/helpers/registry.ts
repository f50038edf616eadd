/**
 * A REAL registry for tests: the Debian `docker-registry` (distribution 2.8) on a free loopback
 * port, with its storage and a generated config.yml in a temp dir, in three modes:
 *
 * - `none`:  anonymous pull and push;
 * - `basic`: htpasswd (bcrypt, made with `htpasswd -Bbn`);
 * - `token`: distribution's `auth.token` with an in-process token server (plain http on
 *   loopback) that issues RS256 JWTs signed by a key whose self-signed certificate (made with
 *   the `openssl` CLI) is the registry's `rootcertbundle`. Token requests need Basic auth
 *   (anonymous ones are refused unless `anonymousPull`), and the token lifetime can be made
 *   short (and the advertised `expires_in` can lie) for expiry tests.
 *
 * Plus image seeding: buildOciImage() makes a multi-layer OCI image in an OCI layout directory
 * from a slice of the real rootfs (/usr/share/zoneinfo, a few /usr/share/doc packages,
 * os-release) and a second layer with OCI whiteouts (`.wh.<name>`, an opaque `.wh..wh..opq`
 * dir, a file replacing a symlink, a hardlink), gzip layers and a config with diff_ids; an
 * optional third layer of incompressible bytes exercises chunked uploads. seedImage() pushes it
 * with `skopeo copy` (an independent client).
 *
 * Missing prerequisites (docker-registry, htpasswd, openssl, skopeo, tar) throw a clear error;
 * tests never skip.
 */
import { ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { makeTmpDir, removeTmpDir } from './tmp';
import { OciLayoutSink, sha256Digest } from '../../src/oci/layout';
import { Descriptor, ImageConfig, ImageIndex, ImageManifest, MediaTypes, Platform } from '../../src/oci/types';

export type RegistryAuthMode = 'none' | 'basic' | 'token';

export interface StartRegistryOptions {
  auth?: RegistryAuthMode;
  username?: string;
  password?: string;
  /** token mode: how long tokens are valid at the registry (seconds, default 300) */
  tokenTtlSec?: number;
  /** token mode: `expires_in` the token server reports (default: tokenTtlSec) */
  tokenAdvertisedSec?: number;
  /** token mode: anonymous token requests get pull access instead of a 401 */
  anonymousPull?: boolean;
  /** registry log level (default info) */
  logLevel?: 'error' | 'warn' | 'info' | 'debug';
  /** listen on this address instead of 127.0.0.1 (e.g. inside a network namespace) */
  listenHost?: string;
  /** argv that starts docker-registry elsewhere, e.g. `ip netns exec NS` */
  spawnPrefix?: string[];
}

export interface TokenServerStats {
  /** all token requests */
  requests: number;
  /** tokens issued */
  issued: number;
  /** requests refused (bad / missing credentials) */
  rejected: number;
  /** scope parameters per request */
  scopes: string[][];
  /** accounts per issued token ('' = anonymous) */
  accounts: string[];
}

export interface TokenServer {
  url: string;
  realm: string;
  service: string;
  issuer: string;
  stats: TokenServerStats;
  /** change token lifetimes for later requests */
  setTtl(ttlSec: number, advertisedSec?: number): void;
  close(): Promise<void>;
}

export interface Creds {
  username: string;
  password: string;
  /** base64 user:password (RegistryClientOptions.auth) */
  basic: string;
  /** `user:password` for skopeo --creds */
  skopeo: string;
}

export interface TestRegistry {
  auth: RegistryAuthMode;
  /** `127.0.0.1:PORT` */
  host: string;
  /** `http://127.0.0.1:PORT` */
  url: string;
  port: number;
  /** temp dir with config.yml, storage (`data/`), log, certs */
  dir: string;
  /** undefined in `none` mode */
  creds?: Creds;
  tokenServer?: TokenServer;
  /** the registry's stdout/stderr so far */
  log(): string;
  /** write the tail of the registry log (and token-server stats) to stderr */
  dumpLog(label?: string, lines?: number): void;
  /** run `fn`; on failure dump the log, then rethrow */
  logOnFailure<T>(fn: () => Promise<T>): Promise<T>;
  /** `host/repo:tag` */
  ref(repo: string, tag?: string): string;
  stop(): Promise<void>;
}

/** registries still running: killed if the test process exits without stopping them */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

const JWT_LEEWAY_SEC = 60; // distribution's token verification accepts tokens up to 60 s past exp

/** Throw a clear error unless `cmd` is on PATH. */
export function requireCommand(cmd: string, pkg = cmd): string {
  for (const d of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const f = path.join(d, cmd);
    try {
      fs.accessSync(f, fs.constants.X_OK);
      return f;
    } catch {
      // next
    }
  }
  throw new Error(`test prerequisite missing: \`${cmd}\` is not on PATH (install the Debian package "${pkg}")`);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString('base64url');
}

function makeCert(dir: string): { keyPem: string; certPem: string; certDer: Buffer; certFile: string } {
  requireCommand('openssl');
  const keyFile = path.join(dir, 'token.key');
  const certFile = path.join(dir, 'token.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=nydus-ts test token issuer'], { stdio: 'pipe' });
  const certPem = fs.readFileSync(certFile, 'utf8');
  const certDer = new crypto.X509Certificate(certPem).raw;
  return { keyPem: fs.readFileSync(keyFile, 'utf8'), certPem, certDer, certFile };
}

async function startTokenServer(
  dir: string,
  o: { service: string; issuer: string; users: Map<string, string>; ttl: number; advertised: number; anonymousPull: boolean },
): Promise<TokenServer & { certFile: string }> {
  const cert = makeCert(dir);
  const key = crypto.createPrivateKey(cert.keyPem);
  let ttl = o.ttl;
  let advertised = o.advertised;
  const stats: TokenServerStats = { requests: 0, issued: 0, rejected: 0, scopes: [], accounts: [] };
  const server = http.createServer((req, res) => {
    stats.requests++;
    const u = new URL(req.url ?? '/', 'http://x');
    const deny = (status: number, why: string) => {
      stats.rejected++;
      res.writeHead(status, { 'content-type': 'application/json', 'www-authenticate': 'Basic realm="nydus-ts token server"' });
      res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: why }] }));
    };
    if (u.pathname !== '/token') {
      res.writeHead(404).end();
      return;
    }
    let account = '';
    const authz = req.headers.authorization;
    if (authz) {
      const m = /^Basic\s+(.+)$/i.exec(authz);
      if (!m) return deny(401, 'unsupported authorization scheme');
      const text = Buffer.from(m[1], 'base64').toString('utf8');
      const colon = text.indexOf(':');
      const user = text.slice(0, colon);
      const pass = text.slice(colon + 1);
      if (colon < 0 || o.users.get(user) !== pass) return deny(401, 'invalid username or password');
      account = user;
    } else if (!o.anonymousPull) {
      return deny(401, 'authentication required');
    }
    if (u.searchParams.get('service') !== o.service) return deny(400, `unknown service ${u.searchParams.get('service')}`);
    const scopes = u.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean);
    stats.scopes.push(scopes);
    const access = scopes.map((s) => {
      const first = s.indexOf(':');
      const last = s.lastIndexOf(':');
      const type = s.slice(0, first);
      const name = s.slice(first + 1, last);
      let actions = s.slice(last + 1).split(',').filter(Boolean);
      if (!account) actions = actions.filter((a) => a === 'pull');
      return { type, name, actions };
    });
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'RS256', x5c: [cert.certDer.toString('base64')] };
    const claims = {
      iss: o.issuer,
      sub: account,
      aud: o.service,
      // the registry allows JWT_LEEWAY_SEC past exp: shift exp so that the token dies after `ttl`
      exp: now + ttl - JWT_LEEWAY_SEC,
      nbf: now - 10,
      iat: now,
      jti: crypto.randomBytes(12).toString('hex'),
      access,
    };
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig = crypto.sign('sha256', Buffer.from(signingInput), key);
    const token = `${signingInput}.${b64url(sig)}`;
    stats.issued++;
    stats.accounts.push(account);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token, access_token: token, expires_in: advertised, issued_at: new Date(now * 1000).toISOString() }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    realm: `${url}/token`,
    service: o.service,
    issuer: o.issuer,
    stats,
    certFile: cert.certFile,
    setTtl(t: number, adv?: number) {
      ttl = t;
      advertised = adv ?? t;
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

function registryConfig(o: { dir: string; host: string; port: number; level: string; auth: string }): string {
  return `version: 0.1
log:
  level: ${o.level}
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: ${o.dir}/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: ${o.host}:${o.port}
  secret: ${crypto.randomBytes(16).toString('hex')}
  headers:
    X-Content-Type-Options: [nosniff]
${o.auth}`;
}

async function waitReady(url: string, proc: ChildProcess, logFile: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited: string | undefined;
  proc.once('exit', (code, sig) => (exited = `exited with ${code ?? sig}`));
  for (;;) {
    if (exited) throw new Error(`docker-registry ${exited} during startup; log:\n${readTail(logFile, 40)}`);
    const status = await new Promise<number>((resolve) => {
      const req = http.get(`${url}/v2/`, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', () => resolve(0));
      req.setTimeout(1000, () => req.destroy());
    });
    if (status === 200 || status === 401) return;
    if (Date.now() > deadline) throw new Error(`docker-registry did not answer ${url}/v2/ within ${timeoutMs} ms; log:\n${readTail(logFile, 40)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function readTail(file: string, lines: number): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines - 1).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Start a docker-registry on 127.0.0.1:<free port>. */
export async function startRegistry(opts: StartRegistryOptions = {}): Promise<TestRegistry> {
  requireCommand('docker-registry', 'docker-registry');
  const mode = opts.auth ?? 'none';
  const listenHost = opts.listenHost ?? '127.0.0.1';
  const dir = makeTmpDir('nydus-ts-registry-');
  const username = opts.username ?? 'nydus';
  const password = opts.password ?? `pw-${crypto.randomBytes(6).toString('hex')}`;
  const creds: Creds | undefined = mode === 'none' ? undefined : { username, password, basic: Buffer.from(`${username}:${password}`).toString('base64'), skopeo: `${username}:${password}` };
  let tokenServer: (TokenServer & { certFile: string }) | undefined;
  let proc: ChildProcess | undefined;
  try {
    let authYaml = '';
    if (mode === 'basic') {
      requireCommand('htpasswd', 'apache2-utils');
      const line = execFileSync('htpasswd', ['-Bbn', username, password], { encoding: 'utf8' }).trim();
      fs.writeFileSync(path.join(dir, 'htpasswd'), line + '\n');
      authYaml = `auth:\n  htpasswd:\n    realm: nydus-ts-test\n    path: ${dir}/htpasswd\n`;
    } else if (mode === 'token') {
      const ttl = opts.tokenTtlSec ?? 300;
      tokenServer = await startTokenServer(dir, {
        service: 'nydus-ts-registry',
        issuer: 'nydus-ts-token-issuer',
        users: new Map([[username, password]]),
        ttl,
        advertised: opts.tokenAdvertisedSec ?? ttl,
        anonymousPull: !!opts.anonymousPull,
      });
      authYaml = `auth:\n  token:\n    realm: ${tokenServer.realm}\n    service: ${tokenServer.service}\n    issuer: ${tokenServer.issuer}\n    rootcertbundle: ${tokenServer.certFile}\n`;
    }
    const logFile = path.join(dir, 'registry.log');
    let port = 0;
    for (let attempt = 0; ; attempt++) {
      port = await freePort();
      fs.writeFileSync(path.join(dir, 'config.yml'), registryConfig({ dir, host: listenHost, port, level: opts.logLevel ?? 'info', auth: authYaml }));
      const fd = fs.openSync(logFile, 'a');
      const [cmd, ...pre] = [...(opts.spawnPrefix ?? []), 'docker-registry'];
      const child = spawn(cmd, [...pre, 'serve', path.join(dir, 'config.yml')], { stdio: ['ignore', fd, fd] });
      proc = child;
      live.add(child);
      child.once('exit', () => live.delete(child));
      fs.closeSync(fd);
      try {
        await waitReady(`http://${listenHost}:${port}`, proc, logFile, 15_000);
        break;
      } catch (e) {
        proc.kill('SIGKILL');
        if (attempt < 2 && /address already in use/.test(readTail(logFile, 20))) continue;
        throw e;
      }
    }
    const p = proc!;
    const host = `${listenHost}:${port}`;
    const reg: TestRegistry = {
      auth: mode,
      host,
      url: `http://${host}`,
      port,
      dir,
      creds,
      tokenServer,
      log: () => {
        try {
          return fs.readFileSync(logFile, 'utf8');
        } catch {
          return '';
        }
      },
      dumpLog(label = 'registry', lines = 60) {
        process.stderr.write(`\n----- ${label} (${mode}) log tail: ${logFile} -----\n${readTail(logFile, lines)}\n`);
        if (tokenServer) process.stderr.write(`----- token server stats: ${JSON.stringify(tokenServer.stats)}\n`);
      },
      async logOnFailure<T>(fn: () => Promise<T>): Promise<T> {
        try {
          return await fn();
        } catch (e) {
          reg.dumpLog();
          throw e;
        }
      },
      ref: (repo: string, tag = 'latest') => `${host}/${repo}:${tag}`,
      async stop() {
        if (p.exitCode === null && p.signalCode === null) {
          const exited = new Promise<void>((r) => p.once('exit', () => r()));
          p.kill('SIGTERM');
          const t = setTimeout(() => p.kill('SIGKILL'), 5000);
          await exited;
          clearTimeout(t);
        }
        await tokenServer?.close();
        if (!process.env.NYDUS_TS_KEEP_TMP) removeTmpDir(dir);
      },
    };
    return reg;
  } catch (e) {
    proc?.kill('SIGKILL');
    await tokenServer?.close();
    removeTmpDir(dir);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// skopeo

/**
 * Run skopeo (with --insecure-policy), returning stdout; rejects with stderr on failure.
 * Asynchronous on purpose: the token server lives in this process and must keep answering.
 */
export function skopeo(args: string[], timeoutMs = 60_000): Promise<string> {
  requireCommand('skopeo');
  return new Promise((resolve, reject) => {
    execFile('skopeo', ['--insecure-policy', ...args], { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`skopeo ${args.join(' ')} failed (${(err as { code?: unknown }).code ?? err.signal ?? '?'}): ${stderr || err.message}`));
      else resolve(stdout);
    });
  });
}

function credArgs(reg: TestRegistry, flag: '--creds' | '--src-creds' | '--dest-creds'): string[] {
  return reg.creds ? [flag, reg.creds.skopeo] : [];
}

/** `skopeo inspect [--raw] docker://host/repo:tag`, parsed */
export async function skopeoInspect(reg: TestRegistry, ref: string, raw = false): Promise<Record<string, unknown>> {
  const out = await skopeo(['inspect', '--tls-verify=false', ...credArgs(reg, '--creds'), ...(raw ? ['--raw'] : []), `docker://${ref}`]);
  return JSON.parse(out) as Record<string, unknown>;
}

/** `skopeo copy docker://ref oci:dir:tag` (all platforms with `all`) */
export async function skopeoPull(reg: TestRegistry, ref: string, dir: string, tag = 'latest', all = false): Promise<void> {
  await skopeo(['copy', '--src-tls-verify=false', ...credArgs(reg, '--src-creds'), ...(all ? ['--all'] : []), `docker://${ref}`, `oci:${dir}:${tag}`]);
}

/** `skopeo copy oci:dir:tag docker://ref` preserving digests */
export async function skopeoPush(reg: TestRegistry, dir: string, tag: string, ref: string, all = false): Promise<void> {
  await skopeo(['copy', '--dest-tls-verify=false', '--preserve-digests', ...credArgs(reg, '--dest-creds'), ...(all ? ['--all'] : []), `oci:${dir}:${tag}`, `docker://${ref}`]);
}

// ---------------------------------------------------------------------------------------------
// image building

export interface BuiltLayer {
  descriptor: Descriptor;
  /** sha256 of the uncompressed tar */
  diffId: string;
  /** the gzip blob inside the layout */
  file: string;
  /** the uncompressed tar (kept next to the layout) */
  tarFile: string;
  /** entry names in the tar, as written (`./usr/share/...`) */
  entries: string[];
}

export interface BuiltManifest {
  platform: Platform;
  manifest: ImageManifest;
  raw: Buffer;
  descriptor: Descriptor;
  config: ImageConfig;
  configRaw: Buffer;
  configDescriptor: Descriptor;
}

export interface BuiltImage {
  layoutDir: string;
  /** scratch dir next to layoutDir holding the uncompressed layer tars (remove it with the layout) */
  workDir: string;
  tag: string;
  layers: BuiltLayer[];
  /** the first platform's image (linux/amd64 unless told otherwise) */
  manifest: ImageManifest;
  manifestRaw: Buffer;
  manifestDescriptor: Descriptor;
  config: ImageConfig;
  configDescriptor: Descriptor;
  /** one per platform */
  manifests: BuiltManifest[];
  /** set when several platforms were asked for: the index tagged `tag` */
  index?: { index: ImageIndex; raw: Buffer; descriptor: Descriptor };
  /** what the whiteout layer removes / replaces (for checks of merged trees) */
  whiteouts: { removed: string[]; opaqueDirs: string[]; added: string[] };
  /** the descriptor tagged in index.json (the index or the single manifest) */
  rootDescriptor: Descriptor;
}

export interface BuildImageOptions {
  tag?: string;
  /** default ['linux/amd64'] */
  platforms?: string[];
  /** a third layer with one file of this many random bytes (chunked-upload tests) */
  bigLayerBytes?: number;
  /** the real-rootfs slice of layer 1 (absolute paths); default: zoneinfo + a few doc dirs + os-release */
  rootfsPaths?: string[];
}

const DEFAULT_ROOTFS = ['/usr/share/zoneinfo', '/usr/lib/os-release', '/etc/os-release', '/usr/share/doc/bash', '/usr/share/doc/apt', '/usr/share/doc/base-files', '/usr/share/doc/git', '/usr/share/doc/tar', '/usr/share/doc/gzip'];

const TAR_ARGS = ['--format=pax', '--sort=name', '--owner=0', '--group=0', '--numeric-owner', '--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime'];

/** tar `members` (relative to `cwd`) into `tarFile`; returns the entry list */
function gnuTar(cwd: string, members: string[], tarFile: string): string[] {
  requireCommand('tar');
  // parent directories get their own entries (without their other contents), like a real layer
  const parents = new Set<string>();
  for (const m of members) for (let d = path.posix.dirname(m); d !== '.' && d !== '/'; d = path.posix.dirname(d)) parents.add(d);
  const parentArgs = parents.size ? ['--no-recursion', ...[...parents].sort(), '--recursion'] : [];
  execFileSync('tar', ['-cf', tarFile, ...TAR_ARGS, '-C', cwd, ...parentArgs, ...members], { stdio: 'pipe', maxBuffer: 64 * 1024 * 1024 });
  return execFileSync('tar', ['-tf', tarFile], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }).split('\n').filter(Boolean);
}

/** gzip a tar into the layout's blob store; returns descriptor + diff_id */
async function gzipLayer(tarFile: string, layoutDir: string): Promise<{ descriptor: Descriptor; diffId: string; file: string }> {
  const tmp = path.join(layoutDir, `layer-${crypto.randomBytes(4).toString('hex')}.tmp`);
  const diff = crypto.createHash('sha256');
  const comp = crypto.createHash('sha256');
  let size = 0;
  await pipeline(
    fs.createReadStream(tarFile),
    new Transform({
      transform(c: Buffer, _e, cb) {
        diff.update(c);
        cb(null, c);
      },
    }),
    zlib.createGzip({ level: 6 }),
    new Transform({
      transform(c: Buffer, _e, cb) {
        comp.update(c);
        size += c.length;
        cb(null, c);
      },
    }),
    fs.createWriteStream(tmp),
  );
  const digest = `sha256:${comp.digest('hex')}`;
  const file = path.join(layoutDir, 'blobs', 'sha256', digest.slice(7));
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.renameSync(tmp, file);
  return { descriptor: { mediaType: MediaTypes.ociLayerGzip, digest, size }, diffId: `sha256:${diff.digest('hex')}`, file };
}

/**
 * Build a multi-layer OCI image into the OCI layout `layoutDir` (created), tagged `tag`
 * (default `latest`). Layer 1: a slice of the real rootfs; layer 2: whiteouts, an opaque dir, a
 * symlink replaced by a file, a hardlink; optional layer 3: `opt/big.bin` random bytes.
 * Several platforms → one manifest per platform (same layers, own config) and an index.
 */
export async function buildOciImage(layoutDir: string, opts: BuildImageOptions = {}): Promise<BuiltImage> {
  const tag = opts.tag ?? 'latest';
  fs.mkdirSync(layoutDir, { recursive: true });
  const work = fs.mkdtempSync(path.join(path.dirname(path.resolve(layoutDir)), `.${path.basename(layoutDir)}-work-`));
  const sink = new OciLayoutSink(layoutDir);
  const layers: BuiltLayer[] = [];

  // layer 1: real files
  const members = (opts.rootfsPaths ?? DEFAULT_ROOTFS).filter((p) => {
    try {
      fs.lstatSync(p);
      return true;
    } catch {
      return false;
    }
  });
  if (members.length === 0) throw new Error(`buildOciImage: none of the rootfs paths exist: ${(opts.rootfsPaths ?? DEFAULT_ROOTFS).join(', ')}`);
  const tar1 = path.join(work, 'layer1.tar');
  const entries1 = gnuTar('/', members.map((p) => p.replace(/^\/+/, '')), tar1);

  // layer 2: whiteouts against layer 1
  const l2 = path.join(work, 'layer2');
  const removed: string[] = [];
  const opaqueDirs: string[] = [];
  const added: string[] = [];
  const has = (p: string) => entries1.some((e) => e === p || e === `${p}/` || e.startsWith(`${p}/`));
  const put = (rel: string, content: string | null, mode = 0o644) => {
    const f = path.join(l2, rel);
    fs.mkdirSync(path.dirname(f), { recursive: true });
    fs.writeFileSync(f, content ?? '');
    fs.chmodSync(f, mode);
  };
  const zoneDirs = entries1.filter((e) => /^usr\/share\/zoneinfo\/[^/]+\/$/.test(e)).map((e) => e.slice(0, -1));
  const zoneFiles = entries1.filter((e) => /^usr\/share\/zoneinfo\/[^/]+$/.test(e));
  if (zoneDirs.length > 0) {
    const d = zoneDirs.includes('usr/share/zoneinfo/Arctic') ? 'usr/share/zoneinfo/Arctic' : zoneDirs[0];
    put(`${path.dirname(d)}/.wh.${path.basename(d)}`, null, 0o600);
    removed.push(d);
  }
  if (zoneFiles.length > 0) {
    const f = zoneFiles.includes('usr/share/zoneinfo/CET') ? 'usr/share/zoneinfo/CET' : zoneFiles[0];
    put(`${path.dirname(f)}/.wh.${path.basename(f)}`, null, 0o600);
    removed.push(f);
  }
  const docDirs = entries1.filter((e) => /^usr\/share\/doc\/[^/]+\/$/.test(e)).map((e) => e.slice(0, -1));
  if (docDirs.length > 0) {
    const d = docDirs.includes('usr/share/doc/bash') ? 'usr/share/doc/bash' : docDirs[0];
    put(`${d}/.wh..wh..opq`, null, 0o600);
    put(`${d}/REPLACED-BY-LAYER-2`, 'the opaque whiteout hid everything else in this directory\n');
    opaqueDirs.push(d);
    added.push(`${d}/REPLACED-BY-LAYER-2`);
  }
  if (has('etc/os-release')) {
    put('etc/os-release', 'NAME="nydus-ts test image"\nID=nydus-ts\n'); // a symlink in layer 1 becomes a file
    added.push('etc/os-release');
  }
  put('etc/nydus-layer2.txt', 'written by layer 2\n');
  fs.linkSync(path.join(l2, 'etc/nydus-layer2.txt'), path.join(l2, 'etc/nydus-layer2-hardlink'));
  fs.mkdirSync(path.join(l2, 'opt/empty-dir'), { recursive: true });
  fs.symlinkSync('../etc/nydus-layer2.txt', path.join(l2, 'opt/link-to-layer2'));
  added.push('etc/nydus-layer2.txt', 'etc/nydus-layer2-hardlink', 'opt/empty-dir', 'opt/link-to-layer2');
  const tar2 = path.join(work, 'layer2.tar');
  const entries2 = gnuTar(l2, fs.readdirSync(l2).sort(), tar2);

  const tars: Array<{ tar: string; entries: string[]; createdBy: string }> = [
    { tar: tar1, entries: entries1, createdBy: `COPY ${members.join(' ')} /` },
    { tar: tar2, entries: entries2, createdBy: 'RUN whiteouts, opaque dir, symlink→file, hardlink' },
  ];
  if (opts.bigLayerBytes && opts.bigLayerBytes > 0) {
    const l3 = path.join(work, 'layer3');
    fs.mkdirSync(path.join(l3, 'opt'), { recursive: true });
    const fd = fs.openSync(path.join(l3, 'opt/big.bin'), 'w');
    for (let left = opts.bigLayerBytes; left > 0; ) {
      const n = Math.min(left, 1 << 20);
      fs.writeSync(fd, crypto.randomBytes(n));
      left -= n;
    }
    fs.closeSync(fd);
    const tar3 = path.join(work, 'layer3.tar');
    tars.push({ tar: tar3, entries: gnuTar(l3, ['opt'], tar3), createdBy: 'RUN head -c N /dev/urandom > /opt/big.bin' });
  }
  for (const t of tars) {
    const g = await gzipLayer(t.tar, layoutDir);
    layers.push({ ...g, tarFile: t.tar, entries: t.entries });
  }

  const platforms = (opts.platforms ?? ['linux/amd64']).map((s) => {
    const [os, architecture, variant] = s.split('/');
    return variant ? { os, architecture, variant } : { os, architecture };
  });
  const manifests: BuiltManifest[] = [];
  for (const platform of platforms) {
    const config: ImageConfig = {
      created: '2024-01-01T00:00:00Z',
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant ? { variant: platform.variant } : {}),
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      history: tars.map((t) => ({ created: '2024-01-01T00:00:00Z', created_by: t.createdBy })),
    };
    const configRaw = Buffer.from(JSON.stringify(config));
    const configDescriptor: Descriptor = { mediaType: MediaTypes.ociConfig, digest: sha256Digest(configRaw), size: configRaw.length };
    await sink.pushBlob(configDescriptor, configRaw);
    const manifest: ImageManifest = { schemaVersion: 2, mediaType: MediaTypes.ociManifest, config: configDescriptor, layers: layers.map((l) => l.descriptor) };
    const raw = Buffer.from(JSON.stringify(manifest));
    const descriptor: Descriptor = { mediaType: MediaTypes.ociManifest, digest: sha256Digest(raw), size: raw.length, platform };
    manifests.push({ platform, manifest, raw, descriptor, config, configRaw, configDescriptor });
  }
  let index: BuiltImage['index'];
  let rootDescriptor: Descriptor;
  if (manifests.length === 1) {
    const m = manifests[0];
    await sink.pushManifest(m.raw, MediaTypes.ociManifest, tag);
    rootDescriptor = { mediaType: MediaTypes.ociManifest, digest: m.descriptor.digest, size: m.descriptor.size };
  } else {
    for (const m of manifests) await sink.pushBlob({ mediaType: MediaTypes.ociManifest, digest: m.descriptor.digest, size: m.descriptor.size }, m.raw);
    const idx: ImageIndex = { schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: manifests.map((m) => m.descriptor) };
    const raw = Buffer.from(JSON.stringify(idx));
    await sink.pushManifest(raw, MediaTypes.ociIndex, tag);
    rootDescriptor = { mediaType: MediaTypes.ociIndex, digest: sha256Digest(raw), size: raw.length };
    index = { index: idx, raw, descriptor: rootDescriptor };
  }
  // keep only the tars (for content checks); drop the staging trees
  fs.rmSync(path.join(work, 'layer2'), { recursive: true, force: true });
  fs.rmSync(path.join(work, 'layer3'), { recursive: true, force: true });
  const first = manifests[0];
  return {
    layoutDir,
    workDir: work,
    tag,
    layers,
    manifest: first.manifest,
    manifestRaw: first.raw,
    manifestDescriptor: { mediaType: MediaTypes.ociManifest, digest: first.descriptor.digest, size: first.descriptor.size },
    config: first.config,
    configDescriptor: first.configDescriptor,
    manifests,
    index,
    whiteouts: { removed, opaqueDirs, added },
    rootDescriptor,
  };
}

export interface SeededImage extends BuiltImage {
  /** `host/repo:tag` */
  reference: string;
  repo: string;
  registry: TestRegistry;
}

/**
 * Build an image (buildOciImage, in a temp dir of the registry) and push it to `repo:tag` with
 * `skopeo copy --preserve-digests` (all platforms when there are several).
 */
export async function seedImage(reg: TestRegistry, repo: string, tag = 'latest', opts: Omit<BuildImageOptions, 'tag'> = {}): Promise<SeededImage> {
  const layoutDir = fs.mkdtempSync(path.join(reg.dir, `seed-${repo.replace(/[^a-z0-9]+/g, '-')}-`));
  const built = await buildOciImage(path.join(layoutDir, 'oci'), { ...opts, tag });
  const reference = reg.ref(repo, tag);
  await skopeoPush(reg, built.layoutDir, tag, reference, !!built.index);
  return { ...built, reference, repo, registry: reg };
}
