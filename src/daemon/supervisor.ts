/**
 * Failover without a failed read: the supervisor process opens the kernel handle (the bound
 * /dev/cachefiles fd, or the fanotify group with its marked bind mount) and the API socket once
 * and keeps both for its whole life; the serving daemon runs as its child and inherits them
 * (from fd 4 on). If the child dies (even `kill -9`), the kernel keeps the outstanding requests
 * because the handle is still open here — for fanotify this is what keeps readers blocked
 * instead of handing them zeros — and a new child is started with the same fds, the saved
 * registrations and the front end's saved state (its mounts); it takes over the pending work.
 *
 * Stopping: the child stops its front end first (the fanotify front end unmounts; a busy mount
 * keeps it serving and it retries) and reports `stopped`; only then is the handle closed.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import { fork, ChildProcess } from 'node:child_process';
import { Logger } from './log';
import { listenUnixSocket } from './api-server';
import { MetricsAddress, listenMetricsTcp } from './metrics-listener';

/** The kernel side as the supervisor holds it (src/kernel/index.ts openKernelHandle). */
export interface SupervisedHandle {
  kind: string;
  fds: number[];
  close(): void;
}

export interface SupervisorOptions {
  apiSock: string;
  /** open the kernel handle (throws a NydusError saying what the kernel or cache dir lacks) */
  openKernel: () => SupervisedHandle;
  /** CLI arguments for the serving child (after the script path) */
  childArgs: string[];
  cliPath: string;
  log: Logger;
  /** registrations from --config, applied by the first child */
  initialEntries?: unknown[];
  /** `--metrics-listen`: a loopback TCP port for Prometheus (metrics-listener.ts) */
  metricsListen?: MetricsAddress;
}

export interface ChildMessage {
  type: 'registrations' | 'mounts' | 'ready' | 'stopped' | 'exit';
  entries?: unknown[];
  mounts?: unknown[];
}

/** What a serving child gets first: what to serve and what to take over. */
export interface ChildInit {
  type: 'init';
  /** the front end the supervisor opened ('fscache' | 'fanotify') */
  kind: string;
  /** registrations to restore */
  entries: unknown[];
  /** the front end's mounts (fanotify) */
  mounts: unknown[];
  /** a replacement child: take over pending work */
  restore: boolean;
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
  let metrics: net.Server | undefined;
  let handle: SupervisedHandle;
  try {
    if (opts.metricsListen) metrics = await listenMetricsTcp(opts.metricsListen);
    handle = opts.openKernel();
  } catch (e) {
    metrics?.close();
    api.close();
    fs.rmSync(opts.apiSock, { force: true });
    throw e;
  }
  log.info(`front end: ${handle.kind}`);
  let entries: unknown[] = opts.initialEntries ?? [];
  let mounts: unknown[] = [];
  let child: ChildProcess | null = null;
  let stopping = false;
  let restarts: number[] = [];
  let generation = 0;
  let readyChild: ChildProcess | null = null;
  const cleanlyStopped = new WeakSet<ChildProcess>();
  const waiting: net.Socket[] = [];
  const handOver = (sock: net.Socket): void => {
    const c = readyChild;
    if (c && c.connected) c.send({ type: 'conn' }, sock, {}, (err) => err && sock.destroy());
    else waiting.push(sock);
  };
  api.on('connection', handOver);
  // metrics connections go to the current child too; without one they are dropped (a scrape retries)
  metrics?.on('connection', (sock: net.Socket) => {
    const c = readyChild;
    if (c && c.connected) c.send({ type: 'metrics-conn' }, sock, {}, (err) => err && sock.destroy());
    else sock.destroy();
  });
  if (metrics) log.info(`Prometheus metrics on http://${opts.metricsListen!.host.includes(':') ? `[${opts.metricsListen!.host}]` : opts.metricsListen!.host}:${opts.metricsListen!.port}/metrics`);

  const finish = (): void => {
    metrics?.close();
    api.close();
    fs.rmSync(opts.apiSock, { force: true });
    handle.close();
    log.info('supervisor: stopped (kernel handle closed)');
    process.exit(0);
  };

  const spawnChild = (): void => {
    const restore = generation > 0;
    generation++;
    const c = fork(opts.cliPath, [...opts.childArgs, '--serve-child'], {
      stdio: ['inherit', 'inherit', 'inherit', 'ipc', ...handle.fds],
      serialization: 'advanced',
    });
    child = c;
    c.on('message', (m: ChildMessage) => {
      if (m.type === 'registrations') entries = m.entries ?? [];
      if (m.type === 'mounts') mounts = m.mounts ?? [];
      if (m.type === 'stopped') cleanlyStopped.add(c);
      if (m.type === 'exit') void stop('exit requested through the API');
      if (m.type === 'ready') {
        log.info(`daemon process ${c.pid} serving (generation ${generation})`);
        readyChild = c;
        for (const s of waiting.splice(0)) handOver(s);
        if (stopping) c.kill('SIGTERM'); // a replacement started while stopping: stop it too
      }
    });
    c.once('spawn', () => {
      c.send({ type: 'init', kind: handle.kind, entries, mounts, restore } satisfies ChildInit);
    });
    c.once('exit', (code, signal) => {
      if (child === c) child = null;
      if (readyChild === c) readyChild = null;
      if (stopping && (cleanlyStopped.has(c) || mounts.length === 0)) return finish();
      if (stopping) log.error(`daemon process ${c.pid} died while stopping with ${mounts.length} mount(s) left; starting a new one to unmount them`);
      else log.error(`daemon process ${c.pid} died (${signal ?? `exit ${code}`}); starting a new one that takes over`);
      const now = Date.now();
      restarts = restarts.filter((t) => now - t < 10_000);
      restarts.push(now);
      const delay = restarts.length > 5 ? 2000 : 50;
      setTimeout(spawnChild, delay);
    });
  };

  const stop = async (why: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info(`supervisor: ${why}, stopping`);
    const c = child as ChildProcess | null;
    if (!c || c.exitCode !== null) return finish();
    c.kill('SIGTERM');
    // A child that holds no mounts and does not answer is killed after 5 s; one that still
    // unmounts busy mounts is waited for (closing the handle would serve zeros to its readers).
    setTimeout(() => {
      if (child === c && c.exitCode === null && mounts.length === 0) c.kill('SIGKILL');
    }, 5000).unref();
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  spawnChild();
}
