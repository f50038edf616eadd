/**
 * The optional Prometheus TCP listener (`nydus-ts daemon --metrics-listen 127.0.0.1:9110`).
 *
 * Loopback only: anyone who can connect reads the image and blob ids, and a TCP port has no
 * file permissions (the API socket is 0600). To scrape from another host, put an authenticating
 * proxy in front. The supervisor owns the listening socket (like the API socket, so a restarted
 * serving process never leaves the port closed) and hands each connection to the serving
 * process, which answers `GET /metrics` only — nothing of the API is reachable over TCP.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { NydusError } from '../errors';
import { PROMETHEUS_CONTENT_TYPE } from './prometheus';

export interface MetricsAddress {
  host: string;
  port: number;
}

/** Parse `HOST:PORT` / `[::1]:PORT` / `PORT`; only loopback hosts are accepted. */
export function parseMetricsListen(spec: string): MetricsAddress {
  const bad = (why: string): never => {
    throw new NydusError('ERR_INVALID_ARGUMENT', `--metrics-listen ${spec}: ${why}`, { value: spec });
  };
  let host = '127.0.0.1';
  let portText = spec;
  const v6 = /^\[([^\]]+)\]:(\d+)$/.exec(spec);
  if (v6) [, host, portText] = v6;
  else if (spec.includes(':')) {
    const i = spec.lastIndexOf(':');
    host = spec.slice(0, i);
    portText = spec.slice(i + 1);
  }
  if (!/^\d+$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) bad('expected HOST:PORT with a port 1-65535, e.g. 127.0.0.1:9110');
  if (host === 'localhost') host = '127.0.0.1';
  const family = net.isIP(host);
  if (!family) bad(`"${host}" is not an IP address (give 127.0.0.1 or [::1])`);
  const loopback = family === 4 ? host.startsWith('127.') : host === '::1' || /^(0*:){7}0*1$/.test(host) || /^::ffff:127\./i.test(host);
  if (!loopback) bad(`${host} is not a loopback address: the metrics listener binds only to 127.0.0.0/8 or ::1 (the metrics name images and blobs and have no access control; put an authenticating proxy in front to scrape from elsewhere)`);
  return { host, port: Number(portText) };
}

/** Listen (paused connections: the supervisor hands them over). A busy port is a clear error. */
export async function listenMetricsTcp(addr: MetricsAddress): Promise<net.Server> {
  const server = net.createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      reject(new NydusError('ERR_DAEMON', `--metrics-listen ${addr.host}:${addr.port}: cannot listen: ${e.code === 'EADDRINUSE' ? 'the port is in use' : e.message}`, { host: addr.host, port: addr.port }));
    });
    server.listen({ host: addr.host, port: addr.port, exclusive: true }, () => resolve());
  });
  return server;
}

/** The serving process's side: HTTP on handed-over connections, `GET /metrics` only. */
export class MetricsHttpServer {
  private readonly http: http.Server;

  constructor(render: () => string) {
    this.http = http.createServer((req, res) => {
      const p = (req.url ?? '/').split('?')[0];
      const send = (status: number, type: string, body: string): void => {
        const data = Buffer.from(body);
        res.writeHead(status, { 'Content-Type': type, 'Content-Length': data.length });
        res.end(data);
      };
      if (p !== '/metrics') return send(404, 'text/plain; charset=utf-8', `not found: ${p} (the metrics listener serves GET /metrics only)\n`);
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'text/plain; charset=utf-8', 'only GET\n');
      try {
        send(200, PROMETHEUS_CONTENT_TYPE, render());
      } catch (e) {
        send(500, 'text/plain; charset=utf-8', `metrics: ${(e as Error).message}\n`);
      }
    });
    this.http.on('clientError', (_e, socket: net.Socket) => socket.destroy());
  }

  acceptConnection(socket: net.Socket): void {
    socket.on('error', () => undefined);
    this.http.emit('connection', socket);
    socket.resume();
  }

  close(): void {
    this.http.close();
    this.http.closeAllConnections();
  }
}
