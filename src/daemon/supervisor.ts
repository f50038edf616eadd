/**
 * Failover without a failed read: the supervisor process binds /dev/cachefiles and the API
 * socket once and keeps both for its whole life; the serving daemon runs as its child and
 * inherits them. If the child dies (even `kill -9`), its anonymous fds close, the kernel keeps
 * the outstanding requests because the device fd is still open here, and a new child is started
 * with the same fds and the saved registrations; it writes `restore`, so the kernel re-sends the
 * pending OPENs and READs and blocked readers get their data.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { fork, ChildProcess } from 'node:child_process';
import { Logger } from './log';
import { NydusError } from '../errors';
import { openCachefilesDevice } from '../kernel/cachefiles';
import { listenUnixSocket } from './api-server';

export interface SupervisorOptions {
  fscacheDir: string;
  fscacheTag?: string;
  apiSock: string;
  /** CLI arguments for the serving child (after the script path) */
  childArgs: string[];
  cliPath: string;
  log: Logger;
  /** registrations from --config, applied by the first child */
  initialEntries?: unknown[];
}

export interface ChildMessage {
  type: 'registrations' | 'ready';
  entries?: unknown[];
}

/**
 * The supervisor owns the API socket (0600; refused if a live daemon answers there) and accepts
 * connections paused, handing each to the current serving child over IPC; during a child
 * restart they wait here, so the socket never refuses a client.
 */
export async function listenApiSocket(sock: string): Promise<net.Server> {
  const server = net.createServer({ pauseOnConnect: true });
  await listenUnixSocket(server, sock);
  return server;
}

export async function runSupervisor(opts: SupervisorOptions): Promise<void> {
  const log = opts.log;
  const api = await listenApiSocket(opts.apiSock);
  let devFd: number;
  try {
    devFd = openCachefilesDevice({ dir: opts.fscacheDir, tag: opts.fscacheTag });
  } catch (e) {
    api.close();
    fs.rmSync(opts.apiSock, { force: true });
    throw e;
  }
  let entries: unknown[] = opts.initialEntries ?? [];
  let child: ChildProcess | null = null;
  let stopping = false;
  let restarts: number[] = [];
  let generation = 0;
  let readyChild: ChildProcess | null = null;
  const waiting: net.Socket[] = [];
  const handOver = (sock: net.Socket): void => {
    const c = readyChild;
    if (c && c.connected) c.send({ type: 'conn' }, sock, {}, (err) => err && sock.destroy());
    else waiting.push(sock);
  };
  api.on('connection', handOver);

  const spawnChild = (): void => {
    const restore = generation > 0;
    generation++;
    const c = fork(opts.cliPath, [...opts.childArgs, '--serve-child', ...(restore ? ['--restore'] : [])], {
      stdio: ['inherit', 'inherit', 'inherit', 'ipc', devFd],
      serialization: 'advanced',
    });
    child = c;
    c.on('message', (m: ChildMessage) => {
      if (m.type === 'registrations') entries = m.entries ?? [];
      if (m.type === 'ready') {
        log.info(`daemon process ${c.pid} serving (generation ${generation})`);
        readyChild = c;
        for (const s of waiting.splice(0)) handOver(s);
      }
    });
    c.once('spawn', () => {
      // the registrations to restore (after a crash: everything registered so far)
      c.send({ type: 'init', entries });
    });
    c.once('exit', (code, signal) => {
      if (child === c) child = null;
      if (readyChild === c) readyChild = null;
      if (stopping) return;
      log.error(`daemon process ${c.pid} died (${signal ?? `exit ${code}`}); starting a new one that takes over the cache`);
      const now = Date.now();
      restarts = restarts.filter((t) => now - t < 10_000);
      restarts.push(now);
      const delay = restarts.length > 5 ? 2000 : 50;
      setTimeout(() => {
        if (!stopping) spawnChild();
      }, delay);
    });
  };

  const stop = async (sig: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info(`supervisor: ${sig}, stopping`);
    const c = child as ChildProcess | null;
    if (c && c.exitCode === null) {
      c.kill('SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => {
          c.kill('SIGKILL');
          r(undefined);
        }, 5000);
        c.once('exit', () => {
          clearTimeout(t);
          r(undefined);
        });
      });
    }
    api.close();
    fs.rmSync(opts.apiSock, { force: true });
    fs.closeSync(devFd);
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  spawnChild();
}
