/**
 * `nydus-ts snapshotter`: check the root and the socket, serve the Snapshots service until
 * SIGTERM/SIGINT, then finish in-flight changes and remove the socket.
 *
 * Mounts handed to containerd are made by containerd and its shims, not by us, so running
 * containers never depend on this process: it can be restarted at any time.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { NydusError } from '../errors';
import { Logger } from '../daemon/log';
import { writeFileAtomic } from '../util/atomic-file';
import { Snapshotter } from './snapshotter';
import { NydusHooks } from './nydus';
import { createSnapshotsServer, bindUnix, shutdown } from './grpc-server';

export interface RunSnapshotterOptions {
  root: string;
  address: string;
  /** the nydus-ts daemon serving lazy images; none = the snapshotter starts its own (nydus.ts) */
  daemonApiSock?: string;
  /** registries (HOST[:PORT]) reached over plain HTTP besides loopback ones */
  insecureRegistries?: string[];
  /** background prefetch of each nydus image mounted (default off, as nydusd) */
  prefetch?: import('../oci/image-mount').RegistrationPrefetch;
  /** each nydus image's amplification window, bytes */
  amplifyIo?: number;
  /** fanotify: read_ahead_kb of each nydus image's mount */
  readaheadKb?: number;
  /** when our own daemon starts (nydus.ts; default 'startup') */
  daemonStart?: 'startup' | 'first-mount';
  logLevel?: string;
}

const SUN_PATH_MAX = 107; // sockaddr_un.sun_path is 108 bytes with the NUL
const OVERLAYFS_MAGIC = 0x794c7630;

/** Create `--root` if needed and make sure overlay upper dirs can live there. */
export function prepareRoot(rootArg: string): string {
  const root = path.resolve(rootArg);
  const unusable = (e: unknown): NydusError => new NydusError('ERR_INVALID_ARGUMENT', `--root ${rootArg}: not a usable directory: ${(e as Error).message}`, { root });
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(root, { throwIfNoEntry: false });
  } catch (e) {
    throw unusable(e); // e.g. ENOTDIR: a file on the way
  }
  if (st && !st.isDirectory()) throw new NydusError('ERR_INVALID_ARGUMENT', `--root ${rootArg}: exists and is not a directory`, { root });
  try {
    fs.mkdirSync(root, { recursive: true, mode: 0o700 });
    fs.accessSync(root, fs.constants.W_OK);
  } catch (e) {
    throw unusable(e);
  }
  if (fs.statfsSync(root).type === OVERLAYFS_MAGIC) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `--root ${rootArg}: is on overlayfs, which cannot hold overlay upper dirs; use a directory on ext4, xfs, btrfs or tmpfs`, { root });
  }
  return root;
}

/** Does something accept connections on the unix socket `sock`? */
function socketAnswers(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect({ path: sock });
    const done = (alive: boolean): void => {
      c.destroy();
      resolve(alive);
    };
    c.setTimeout(2000, () => done(true)); // connected but silent still means someone holds it
    c.once('connect', () => done(true));
    c.once('error', () => done(false));
  });
}

/** Make `--address` free to bind: refuse a live server, remove a stale socket. */
export async function prepareSocket(addressArg: string): Promise<string> {
  const sock = path.resolve(addressArg);
  if (Buffer.byteLength(sock) > SUN_PATH_MAX) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `--address ${addressArg}: a unix socket path can have at most ${SUN_PATH_MAX} bytes, this one has ${Buffer.byteLength(sock)}`, { sock });
  }
  try {
    fs.mkdirSync(path.dirname(sock), { recursive: true, mode: 0o755 });
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `--address ${addressArg}: cannot create its directory: ${(e as Error).message}`, { sock });
  }
  const st = fs.lstatSync(sock, { throwIfNoEntry: false });
  if (st && !st.isSocket()) throw new NydusError('ERR_INVALID_ARGUMENT', `--address ${addressArg}: exists and is not a socket`, { sock });
  if (st) {
    if (await socketAnswers(sock)) throw new NydusError('ERR_INVALID_ARGUMENT', `--address ${addressArg}: a server already answers there (another snapshotter?); stop it first`, { sock });
    fs.rmSync(sock, { force: true }); // stale: its server is gone
  }
  return sock;
}

/** One snapshotter per root: `<root>/snapshotter.pid` names the live one. */
function lockRoot(root: string): () => void {
  const pidFile = path.join(root, 'snapshotter.pid');
  const other = Number(fs.existsSync(pidFile) ? fs.readFileSync(pidFile, 'utf8').trim() : NaN);
  if (Number.isInteger(other) && other > 0 && other !== process.pid) {
    let cmdline = '';
    try {
      cmdline = fs.readFileSync(`/proc/${other}/cmdline`, 'utf8');
    } catch {
      // not running
    }
    if (cmdline.includes('snapshotter')) throw new NydusError('ERR_INVALID_ARGUMENT', `--root ${root}: in use by the snapshotter with pid ${other}`, { root, pid: other });
  }
  writeFileAtomic(pidFile, `${process.pid}\n`);
  return () => {
    try {
      if (fs.readFileSync(pidFile, 'utf8').trim() === String(process.pid)) fs.rmSync(pidFile);
    } catch {
      // already gone
    }
  };
}

export async function runSnapshotter(o: RunSnapshotterOptions): Promise<void> {
  const logger = new Logger('info', 2, '[snapshotter] ');
  try {
    logger.setLevel(o.logLevel ?? 'info');
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `--log-level: ${(e as Error).message}`);
  }
  const log = (level: 'debug' | 'info' | 'warn', msg: string, ctx?: Record<string, unknown>): void => logger[level](msg, ctx);
  const root = prepareRoot(o.root);
  const sock = await prepareSocket(o.address);
  const unlock = lockRoot(root);
  let server: import('@grpc/grpc-js').Server | undefined;
  let bound = false;
  try {
    // nydus images: remote data layers, bootstrap directories, lazy rootfs mounts (nydus.ts)
    const hooks = new NydusHooks({ root, daemonApiSock: o.daemonApiSock, insecureRegistries: o.insecureRegistries, prefetch: o.prefetch, amplifyIo: o.amplifyIo, readaheadKb: o.readaheadKb, daemonStart: o.daemonStart, log });
    const sn = Snapshotter.open({ root, log, hooks });
    hooks.bind(sn);
    await hooks.sweep();
    server = createSnapshotsServer(sn, log);
    await bindUnix(server, sock).catch((e: Error) => {
      throw new NydusError('ERR_INVALID_ARGUMENT', `--address ${o.address}: cannot listen: ${e.message}`, { sock });
    });
    bound = true;
    fs.chmodSync(sock, 0o600); // containerd runs as root; nobody else may create or remove snapshots
    let stopping = false;
    const stop = async (signal: string): Promise<void> => {
      if (stopping) return;
      stopping = true;
      log('info', `${signal}: stopping`);
      await shutdown(server!, 3000);
      await sn.idle();
      fs.rmSync(sock, { force: true });
      unlock();
      log('info', 'stopped');
      process.exit(0);
    };
    process.on('SIGTERM', () => void stop('SIGTERM'));
    process.on('SIGINT', () => void stop('SIGINT'));
    log('info', `serving containerd snapshots on ${sock}`, { root, daemonApiSock: o.daemonApiSock ?? null, snapshots: [...sn.list([])].flat().length });
    hooks.startDaemonEarly();
  } catch (e) {
    server?.forceShutdown();
    if (bound) fs.rmSync(sock, { force: true }); // never a socket someone else bound meanwhile
    unlock();
    throw e;
  }
}
