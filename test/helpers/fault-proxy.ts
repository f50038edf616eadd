/**
 * A fault-injecting HTTP proxy for tests: a node:http server on loopback that forwards every
 * request to a real upstream (the docker-registry) and, on demand, breaks some of them.
 *
 * It answers both request forms:
 * - origin form (`GET /v2/... HTTP/1.1`): forwarded to `upstream` (point a registry backend's
 *   `host` at the proxy: a "reverse proxy" in front of the registry);
 * - absolute form (`GET http://host:port/v2/... HTTP/1.1`): forwarded to that URL (a backend's
 *   `proxy.url` section pointing here: what undici's ProxyAgent sends for http:// targets).
 *
 * Faults are rules: `inject({ fault, match, skip, count })` breaks the next `count` requests
 * (default 1; Infinity = until `clear()`) matching `match` (default: blob GETs), after letting
 * `skip` matching requests through. Kinds:
 * - `status`:        answer `status` (500, 503 …) without asking the upstream
 * - `unauthorized`:  a 401 carrying the last Bearer challenge the upstream sent (a revoked token)
 * - `reset-before`:  TCP RST as soon as the request arrives
 * - `stall-headers`: accept the request, send nothing (until the client gives up)
 * - `reset-mid`:     upstream headers + `afterBytes` of the body, then RST
 * - `stall-body`:    upstream headers + `afterBytes` of the body, then nothing
 * - `truncate`:      upstream headers + `afterBytes` of the body, then FIN (Content-Length kept,
 *                    or with `fixLength` shortened to match: a "clean" reply with a short body)
 * - `corrupt`:       the whole body with `flips` distinct bytes (spread evenly), or with `every`
 *                    n-th byte, XORed with 0xff
 * - `drip`:          upstream headers, then the body `bytes` at a time every `intervalMs` (a
 *                    slow-loris server: never idle for long, but practically never done)
 * `fault` may also be a function choosing a fault (or none) per matching request.
 * Body faults (`reset-mid` … `drip`) only apply to 2xx upstream replies; a request whose
 * upstream answered otherwise (e.g. a 401 of the token flow) passes and the rule keeps its count.
 * `afterBytes` defaults to half the body.
 *
 * `kill()` makes the proxy die: every connection is reset and the port refuses new ones; a new
 * proxy can be started on the same `port` later. With `proxyTokenRealm`, Bearer challenges name
 * the proxy as their realm, so token requests (path `/__token__?…`) pass through it as well.
 * Every request is logged (`log`), with the fault applied, for assertions.
 */
import * as http from 'node:http';
import * as net from 'node:net';

export type Fault =
  | { kind: 'status'; status: number; headers?: Record<string, string>; body?: string }
  | { kind: 'unauthorized' }
  | { kind: 'reset-before' }
  | { kind: 'stall-headers' }
  | { kind: 'reset-mid'; afterBytes?: number }
  | { kind: 'stall-body'; afterBytes?: number }
  | { kind: 'truncate'; afterBytes?: number; fixLength?: boolean }
  | { kind: 'corrupt'; flips?: number; every?: number }
  | { kind: 'drip'; bytes: number; intervalMs: number };

export type FaultKind = Fault['kind'];

export interface RequestInfo {
  method: string;
  /** path + query (also for absolute-form requests) */
  path: string;
  /** the full URL forwarded to */
  target: string;
  range?: string;
  /** the request came in absolute form (through a backend's proxy section) */
  forwardProxy: boolean;
  authorization?: string;
}

export interface FaultRule {
  /** the fault, or a function choosing one per matching request (`n` counts from 0; undefined = let it pass) */
  fault: Fault | ((r: RequestInfo, n: number) => Fault | undefined);
  /** which requests the rule applies to (default: GET of a blob, `/v2/…/blobs/sha256:…`) */
  match?: RegExp | ((r: RequestInfo) => boolean);
  /** matching requests let through before the fault starts (default 0) */
  skip?: number;
  /** faulty answers to give (default 1; Infinity = until clear()) */
  count?: number;
}

export interface LoggedRequest extends RequestInfo {
  /** the status the client saw (0 = none: reset / stalled / killed) */
  status: number;
  /** the upstream's status (undefined when the upstream was not asked) */
  upstreamStatus?: number;
  fault?: FaultKind;
  at: number;
}

interface LiveRule {
  choose: (r: RequestInfo, n: number) => Fault | undefined;
  match: (r: RequestInfo) => boolean;
  skip: number;
  left: number;
  seen: number;
}

const BLOB_GET = /\/v2\/.+\/blobs\/sha256:[0-9a-f]{64}$/;
const BODY_FAULTS = new Set<FaultKind>(['reset-mid', 'stall-body', 'truncate', 'corrupt', 'drip']);

export interface FaultProxyOptions {
  /** `host:port` of the upstream for origin-form requests */
  upstream: string;
  /** listen on this port (e.g. to come back where a killed proxy was); default: a free one */
  port?: number;
  /**
   * rewrite the realm of the upstream's Bearer challenges to `<proxy>/__token__`, so that token
   * requests come through the proxy too (and can be faulted: match `/__token__`)
   */
  proxyTokenRealm?: boolean;
}

/** path prefix of token requests forwarded to the real realm (proxyTokenRealm) */
export const TOKEN_PATH = '/__token__';

export class FaultProxy {
  readonly log: LoggedRequest[] = [];
  /** faults applied, by kind */
  readonly applied: Record<string, number> = {};
  private rules: LiveRule[] = [];
  private readonly sockets = new Set<net.Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  private lastChallenge: string | undefined;
  /** the upstream's real token realm (proxyTokenRealm) */
  private realm: string | undefined;
  private dead = false;
  private closed = false;

  private constructor(private readonly server: http.Server, readonly port: number, private readonly opts: FaultProxyOptions) {}

  /** Start a proxy on 127.0.0.1:<free port> in front of `upstream`. */
  static async start(opts: FaultProxyOptions): Promise<FaultProxy> {
    let self!: FaultProxy;
    const server = http.createServer({ keepAlive: true } as http.ServerOptions, (req, res) => self.handle(req, res));
    server.on('connection', (s: net.Socket) => {
      self.sockets.add(s);
      s.on('close', () => self.sockets.delete(s));
      s.on('error', () => undefined);
    });
    server.on('clientError', (_e, s) => s.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    self = new FaultProxy(server, (server.address() as net.AddressInfo).port, opts);
    return self;
  }

  /** `127.0.0.1:PORT` */
  get host(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** `http://127.0.0.1:PORT` */
  get url(): string {
    return `http://${this.host}`;
  }

  /** Add a fault rule (rules are tried in the order they were added). */
  inject(rule: FaultRule): void {
    const m = rule.match;
    const match = m === undefined ? (r: RequestInfo) => r.method === 'GET' && BLOB_GET.test(r.path) : m instanceof RegExp ? (r: RequestInfo) => m.test(r.path) : m;
    const f = rule.fault;
    this.rules.push({ choose: typeof f === 'function' ? f : () => f, match, skip: rule.skip ?? 0, left: rule.count ?? 1, seen: 0 });
  }

  /** Drop every rule: from now on requests pass untouched. */
  clear(): void {
    this.rules = [];
  }

  /** faulty answers still to give (Infinity when a rule is unlimited) */
  pending(): number {
    return this.rules.reduce((n, r) => n + r.left, 0);
  }

  /** requests answered with `kind` so far */
  hits(kind: FaultKind): number {
    return this.applied[kind] ?? 0;
  }

  /** logged requests to blob URLs */
  blobRequests(): LoggedRequest[] {
    return this.log.filter((r) => BLOB_GET.test(r.path));
  }

  /** connections currently open from clients */
  openConnections(): number {
    return this.sockets.size;
  }

  /** connections to upstreams: in use, idle, and requests waiting for one */
  upstreamConnections(): { busy: number; idle: number; queued: number } {
    const n = (m: NodeJS.ReadOnlyDict<unknown[]>) => Object.values(m).reduce((a, l) => a + (l?.length ?? 0), 0);
    return { busy: n(this.agent.sockets), idle: n(this.agent.freeSockets), queued: n(this.agent.requests) };
  }

  /** The proxy dies: reset every connection, refuse new ones. */
  async kill(): Promise<void> {
    if (this.dead) return;
    this.dead = true;
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const t of this.timers) clearInterval(t);
    for (const s of this.sockets) s.resetAndDestroy();
    this.agent.destroy();
    await closed;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.kill();
  }

  /** reserve a faulty answer for this request, or undefined */
  private take(info: RequestInfo): { rule: LiveRule; fault: Fault } | undefined {
    for (const r of this.rules) {
      if (r.left <= 0 || !r.match(info)) continue;
      if (r.skip > 0) {
        r.skip--;
        return undefined;
      }
      const fault = r.choose(info, r.seen++);
      if (!fault) return undefined;
      r.left--;
      return { rule: r, fault };
    }
    return undefined;
  }

  private count(kind: FaultKind): void {
    this.applied[kind] = (this.applied[kind] ?? 0) + 1;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    req.on('error', () => undefined);
    res.on('error', () => undefined);
    const absolute = /^https?:\/\//i.test(req.url ?? '');
    let target = new URL(absolute ? req.url! : `http://${this.opts.upstream}${req.url ?? '/'}`);
    if (!absolute && this.realm && target.pathname === TOKEN_PATH) {
      const t = new URL(this.realm);
      t.search = target.search;
      target = t;
    }
    const info: RequestInfo = {
      method: req.method ?? 'GET',
      path: absolute ? target.pathname + target.search : req.url ?? '/',
      target: target.toString(),
      range: req.headers.range,
      forwardProxy: absolute,
      authorization: req.headers.authorization,
    };
    const entry: LoggedRequest = { ...info, status: 0, at: Date.now() };
    this.log.push(entry);
    const taken = this.take(info);
    const rule = taken?.rule;
    const fault = taken?.fault;
    const socket = req.socket;

    if (fault && !BODY_FAULTS.has(fault.kind)) {
      entry.fault = fault.kind;
      this.count(fault.kind);
      switch (fault.kind) {
        case 'status':
          entry.status = fault.status;
          res.writeHead(fault.status, { 'content-type': 'text/plain', ...fault.headers });
          res.end(fault.body ?? `fault proxy: injected HTTP ${fault.status}\n`);
          return;
        case 'unauthorized':
          entry.status = 401;
          res.writeHead(401, {
            'content-type': 'application/json',
            ...(this.lastChallenge ? { 'www-authenticate': this.lastChallenge } : {}),
          });
          res.end('{"errors":[{"code":"UNAUTHORIZED","message":"fault proxy: token revoked"}]}\n');
          return;
        case 'reset-before':
          socket.resetAndDestroy();
          return;
        case 'stall-headers':
          return; // the socket stays open until the client gives up (or kill())
      }
    }

    const headers: http.OutgoingHttpHeaders = { ...req.headers, host: target.host };
    delete headers['proxy-connection'];
    const up = http.request(target, { method: req.method, headers, agent: this.agent }, (ur) => {
      const status = ur.statusCode ?? 502;
      entry.upstreamStatus = status;
      let challenge = ur.headers['www-authenticate'];
      if (typeof challenge === 'string' && /^bearer/i.test(challenge)) {
        if (this.opts.proxyTokenRealm) {
          challenge = challenge.replace(/realm="([^"]*)"/i, (_m, realm: string) => {
            this.realm = realm;
            return `realm="${this.url}${TOKEN_PATH}"`;
          });
          ur.headers['www-authenticate'] = challenge;
        }
        if (status === 401) this.lastChallenge = challenge;
      }
      if (!fault || status < 200 || status >= 300) {
        if (rule) rule.left++; // not a reply to break: give the fault back
        entry.status = status;
        res.writeHead(status, ur.headers);
        ur.pipe(res);
        ur.on('error', () => res.destroy());
        return;
      }
      const parts: Buffer[] = [];
      ur.on('data', (c: Buffer) => parts.push(c));
      ur.on('error', () => res.destroy());
      ur.on('end', () => {
        const body = Buffer.concat(parts);
        entry.fault = fault.kind;
        this.count(fault.kind);
        const cut = Math.min(body.length, Math.max(0, 'afterBytes' in fault && fault.afterBytes !== undefined ? fault.afterBytes : Math.floor(body.length / 2)));
        switch (fault.kind) {
          case 'corrupt': {
            const bad = Buffer.from(body);
            if (fault.every) {
              for (let i = 0; i < bad.length; i += Math.max(1, fault.every)) bad[i] ^= 0xff;
            } else {
              const flips = Math.min(bad.length, Math.max(1, fault.flips ?? 8));
              // distinct positions (flipping one byte twice would undo it)
              for (let i = 0; i < flips; i++) bad[Math.floor(((i + 0.5) * bad.length) / flips)] ^= 0xff;
            }
            entry.status = status;
            res.writeHead(status, ur.headers);
            res.end(bad);
            return;
          }
          case 'truncate': {
            entry.status = status;
            const h = { ...ur.headers };
            if (fault.fixLength) h['content-length'] = String(cut);
            res.writeHead(status, h);
            if (fault.fixLength) res.end(body.subarray(0, cut));
            else res.write(body.subarray(0, cut), () => socket.end()); // FIN before Content-Length bytes
            return;
          }
          case 'reset-mid':
            entry.status = status;
            res.writeHead(status, ur.headers);
            res.write(body.subarray(0, cut), () => setTimeout(() => socket.resetAndDestroy(), 5));
            return;
          case 'stall-body':
            entry.status = status;
            res.writeHead(status, ur.headers);
            res.write(body.subarray(0, cut)); // …and nothing more
            return;
          case 'drip': {
            entry.status = status;
            res.writeHead(status, ur.headers);
            let off = 0;
            const timer = setInterval(() => {
              if (res.destroyed || socket.destroyed) return clearInterval(timer);
              const piece = body.subarray(off, off + Math.max(1, fault.bytes));
              off += piece.length;
              if (off >= body.length) {
                clearInterval(timer);
                res.end(piece);
              } else {
                res.write(piece);
              }
            }, fault.intervalMs);
            this.timers.add(timer);
            res.on('close', () => {
              clearInterval(timer);
              this.timers.delete(timer);
            });
            return;
          }
        }
      });
    });
    // a client that leaves early must not leave the upstream exchange (and its socket) hanging
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    up.on('error', (e) => {
      if (!res.headersSent) {
        entry.status = 502;
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`fault proxy: upstream ${target.host}: ${e.message}\n`);
      } else {
        res.destroy();
      }
    });
    req.pipe(up);
  }
}
