/**
 * A real nginx on loopback standing in for a Dragonfly peer (dfdaemon's proxy) in tests: an HTTP
 * forward proxy that routes each request by its Host to the origin it names (loopback IP:port
 * only: no resolver is configured), keeps Host and every request header, adds
 * `Via: 1.1 nginx-test-proxy` so the origin can tell proxied hits from direct ones, and answers
 * `GET /ping` itself.
 *
 * Everything lives in a temp dir: config, pid, lock, logs, temp paths (`-p DIR -c CONF -e LOG`).
 * `daemon off` + `master_process off`: one process, so SIGKILL / SIGSTOP act on the whole proxy
 * (with a master, killed workers would be respawned and a killed master would leave its workers
 * serving). Logs: `access.log` (proxied requests) and `ping.log` (pings), one line each:
 * `<msec> <status> "<request line>" host=<Host> range=<Range> auth=<yes|-> conn=<connection serial>`.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

export const VIA = '1.1 nginx-test-proxy';

/** The nginx binary, or a thrown Error that says how to get it (tests must not skip). */
export function nginxBinary(): string {
  for (const p of [process.env.NYDUS_TS_NGINX, '/usr/sbin/nginx', '/usr/bin/nginx', '/usr/local/sbin/nginx'].filter(Boolean) as string[]) {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  throw new Error('nginx not found (looked for $NYDUS_TS_NGINX, /usr/sbin/nginx, /usr/bin/nginx): install the Debian package nginx-light (scripts/setup.sh does)');
}

/** A free loopback TCP port (bound and released; nginx re-binds it with SO_REUSEADDR). */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export interface LogLine {
  /** seconds since the epoch, millisecond resolution */
  msec: number;
  status: number;
  /** the request line, e.g. `GET http://127.0.0.1:123/blobs/x HTTP/1.1` */
  request: string;
  host: string;
  range: string;
  auth: boolean;
  /** nginx's serial number of the client connection */
  connection: number;
}

function parseLog(file: string): LogLine[] {
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const out: LogLine[] = [];
  for (const line of text.split('\n')) {
    const m = /^(\d+\.\d+) (\d+) "([^"]*)" host=(\S*) range=(\S*) auth=(\S*) conn=(\d+)$/.exec(line);
    if (m) out.push({ msec: Number(m[1]), status: Number(m[2]), request: m[3], host: m[4], range: m[5], auth: m[6] !== '-', connection: Number(m[7]) });
  }
  return out;
}

export class Nginx {
  private child?: ChildProcess;
  private exited?: Promise<void>;
  readonly url: string;
  readonly pingUrl: string;
  readonly conf: string;
  readonly errorLog: string;
  readonly accessLog: string;
  readonly pingLog: string;

  private constructor(readonly dir: string, readonly port: number, private readonly bin: string) {
    this.url = `http://127.0.0.1:${port}`;
    this.pingUrl = `${this.url}/ping`;
    this.conf = path.join(dir, 'nginx.conf');
    this.errorLog = path.join(dir, 'error.log');
    this.accessLog = path.join(dir, 'access.log');
    this.pingLog = path.join(dir, 'ping.log');
  }

  /** Write the config into `dir` (created if needed) and start nginx; resolves once it answers /ping. */
  static async start(dir: string, port?: number): Promise<Nginx> {
    const bin = nginxBinary();
    fs.mkdirSync(path.join(dir, 'tmp'), { recursive: true });
    const n = new Nginx(dir, port ?? (await freePort()), bin);
    fs.writeFileSync(n.conf, n.config());
    await n.launch();
    return n;
  }

  private config(): string {
    const d = this.dir;
    const t = (x: string) => path.join(d, 'tmp', x);
    return `daemon off;
master_process off;
worker_processes 1;
pid ${path.join(d, 'nginx.pid')};
lock_file ${path.join(d, 'nginx.lock')};
error_log ${this.errorLog} info;
events { worker_connections 512; }
http {
  log_format probe '$msec $status "$request" host=$http_host range=$http_range auth=$auth_seen conn=$connection';
  map $http_authorization $auth_seen { default yes; "" -; }
  access_log ${this.accessLog} probe;
  client_body_temp_path ${t('body')};
  proxy_temp_path ${t('proxy')};
  fastcgi_temp_path ${t('fastcgi')};
  uwsgi_temp_path ${t('uwsgi')};
  scgi_temp_path ${t('scgi')};
  server {
    listen 127.0.0.1:${this.port};
    location = /ping {
      access_log ${this.pingLog} probe;
      default_type text/plain;
      return 200 "pong\\n";
    }
    location / {
      # forward proxy: route by the Host of the request (an IP:port of the test's origins)
      proxy_pass http://$http_host;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header Via "${VIA}";
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_buffering off;
      proxy_connect_timeout 5s;
    }
  }
}
`;
  }

  private async launch(): Promise<void> {
    if (this.child) throw new Error('nginx is already running');
    const child = spawn(this.bin, ['-e', this.errorLog, '-p', this.dir, '-c', this.conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    this.child = child;
    this.exited = new Promise<void>((r) => child.once('exit', () => r()));
    let spawnError: Error | undefined;
    child.once('error', (e) => (spawnError = e));
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (spawnError || child.exitCode !== null || child.signalCode !== null) {
        const log = fs.existsSync(this.errorLog) ? fs.readFileSync(this.errorLog, 'utf8').split('\n').slice(-10).join('\n') : '';
        this.child = undefined;
        throw new Error(`nginx failed to start (${spawnError?.message ?? `exit ${child.exitCode ?? child.signalCode}`}): ${stderr}${log}`);
      }
      if (await this.answersPing()) return;
      if (Date.now() > deadline) {
        await this.kill();
        throw new Error(`nginx did not answer ${this.pingUrl} within 10 s: ${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  private answersPing(): Promise<boolean> {
    return new Promise((resolve) => {
      const s = net.connect(this.port, '127.0.0.1');
      s.setTimeout(1000);
      let buf = '';
      s.on('connect', () => s.write(`GET /ping?ready HTTP/1.1\r\nHost: 127.0.0.1:${this.port}\r\nUser-Agent: nginx-helper\r\nConnection: close\r\n\r\n`));
      s.on('data', (b) => (buf += b.toString()));
      s.on('end', () => resolve(/^HTTP\/1\.1 200/.test(buf)));
      s.on('timeout', () => s.destroy());
      s.on('error', () => resolve(false));
      s.on('close', () => resolve(/^HTTP\/1\.1 200/.test(buf)));
    });
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  /** Send a signal; SIGKILL/SIGTERM wait for the process to be gone. */
  async signal(sig: NodeJS.Signals): Promise<void> {
    const c = this.child;
    if (!c) return;
    c.kill(sig);
    if (sig === 'SIGKILL' || sig === 'SIGTERM' || sig === 'SIGQUIT') {
      await this.exited;
      this.child = undefined;
    }
  }

  kill(): Promise<void> {
    return this.signal('SIGKILL');
  }

  /** Start again on the same port with the same config (after kill). */
  async restart(): Promise<void> {
    await this.launch();
  }

  /** proxied requests, oldest first (the helper's own readiness pings are in pingLog only) */
  requests(): LogLine[] {
    return parseLog(this.accessLog);
  }

  /** the access log once it has at least `min` lines: nginx logs a request after answering it */
  async settledRequests(min = 1, ms = 5000): Promise<LogLine[]> {
    const end = Date.now() + ms;
    let lines = this.requests();
    while (lines.length < min && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 20));
      lines = this.requests();
    }
    return lines;
  }

  /** answered pings from others than this helper (whose readiness checks ask /ping?ready) */
  pings(): LogLine[] {
    return parseLog(this.pingLog).filter((l) => l.status === 200 && !l.request.includes('?ready'));
  }

  async stop(): Promise<void> {
    if (this.child) {
      this.child.kill('SIGCONT'); // in case a test left it stopped
      await this.signal('SIGKILL');
    }
  }
}
