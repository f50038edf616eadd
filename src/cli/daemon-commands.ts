/**
 * CLI for the daemon side: `daemon` (nydusd `singleton` flags), `mount`, `umount`, `status`.
 */
import { Command, Option } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as http from 'node:http';
import * as crypto from 'node:crypto';
import type { Socket } from 'node:net';
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { NydusError } from '../errors';
import { DEFAULT_IMAGE_WORK_DIR } from '../oci/defaults';
import { human, emitJson } from './progress';
import { mountPoints } from '../sys/mount-table';
// The daemon (../daemon/*) and `mount --image` (../oci/image-mount) load inside the actions that
// use them, so that `mount`, `umount`, `status` and `--help` start without them.

const execFileP = promisify(execFile);
export const DEFAULT_RUN_DIR = process.env.NYDUS_TS_RUN_DIR ?? '/run/nydus-ts';
export const DEFAULT_APISOCK = path.join(DEFAULT_RUN_DIR, 'api.sock');
export const DEFAULT_FSCACHE = process.env.NYDUS_TS_CACHE_DIR ?? process.env.NYDUS_TS_FSCACHE ?? '/var/lib/nydus-ts/cache';

/** One HTTP request to the daemon API over its unix socket. */
export function apiRequest(sock: string, method: string, p: string, body?: unknown): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = http.request({ socketPath: sock, method, path: p, headers: data ? { 'content-type': 'application/json', 'content-length': data.length } : {} }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString();
        let parsed: unknown = text;
        try {
          parsed = text ? JSON.parse(text) : null;
        } catch {
          /* keep text */
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on('error', (e) => reject(new NydusError('ERR_DAEMON', `daemon API ${sock}: ${e.message}`, { sock })));
    req.end(data);
  });
}

async function apiOk(sock: string, method: string, p: string, body?: unknown): Promise<any> {
  const r = await apiRequest(sock, method, p, body);
  if (r.status >= 300) throw new NydusError('ERR_DAEMON', `daemon API ${method} ${p}: HTTP ${r.status}: ${r.body?.message ?? JSON.stringify(r.body)}`, { status: r.status });
  return r.body;
}

async function daemonAlive(sock: string): Promise<boolean> {
  if (!fs.existsSync(sock)) return false;
  try {
    const r = await apiRequest(sock, 'GET', '/api/v1/daemon');
    return r.status === 200;
  } catch {
    return false;
  }
}

/**
 * Start a daemon in the background unless one answers on `sock`; wait until RUNNING. It picks its
 * front end itself (`--frontend auto`: fscache where /dev/cachefiles works, else fanotify).
 */
export async function ensureDaemon(sock: string, cacheDir: string, logFile: string): Promise<boolean> {
  if (await daemonAlive(sock)) return false;
  fs.mkdirSync(path.dirname(sock), { recursive: true });
  fs.mkdirSync(cacheDir, { recursive: true });
  const out = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [path.join(__dirname, 'main.js'), 'daemon', '--cache-dir', cacheDir, '--apisock', sock], {
    detached: true,
    stdio: ['ignore', out, out],
  });
  child.unref();
  fs.closeSync(out);
  for (let i = 0; i < 200; i++) {
    await new Promise((r) => setTimeout(r, 100));
    if (child.exitCode !== null) break;
    try {
      const r = await apiRequest(sock, 'GET', '/api/v1/daemon');
      if (r.status === 200 && r.body?.state === 'RUNNING') return true;
    } catch {
      /* not up yet */
    }
  }
  const tail = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').split('\n').slice(-8).join('\n') : '';
  throw new NydusError('ERR_DAEMON', `the daemon did not come up on ${sock} (log ${logFile}):\n${tail}`);
}

interface MountRecord {
  /** the front end that serves it: 'fscache' (the kernel mounted by fsid) or 'fanotify' (the daemon mounted) */
  frontend?: string;
  fsid: string;
  domainId: string;
  apisock: string;
  bootstrap: string;
  /** `mount --image`: the fully qualified reference and the manifest digest */
  image?: string;
  manifestDigest?: string;
}
function stateFile(): string {
  return path.join(DEFAULT_RUN_DIR, 'mounts.json');
}
function readMounts(): Record<string, MountRecord> {
  try {
    return JSON.parse(fs.readFileSync(stateFile(), 'utf8'));
  } catch {
    return {};
  }
}
/** Mount points in /proc/self/mounts (octal escapes decoded). */
function mountedPaths(): Set<string> {
  try {
    return new Set(mountPoints().keys());
  } catch {
    return new Set();
  }
}
function writeMounts(m: Record<string, MountRecord>): void {
  fs.mkdirSync(DEFAULT_RUN_DIR, { recursive: true });
  const tmp = stateFile() + '.tmp';
  fs.writeFileSync(tmp, JSON.stringify(m, null, 2));
  fs.renameSync(tmp, stateFile());
}

export interface MountRegisteredRequest {
  mountpoint: string;
  /** daemon API socket; a daemon is started on it (with `fscache`) when none answers */
  sock: string;
  fscache: string;
  fsid: string;
  domainId: string;
  /** the PUT /api/v2/blobs body, given the registration's fscache work dir */
  registration: (workDir: string) => unknown;
  /** what the mount table keeps besides fsid/domain/socket */
  record: { bootstrap: string; image?: string; manifestDigest?: string };
}

export interface MountRegisteredResult {
  mountpoint: string;
  frontend: string;
  daemonStarted: boolean;
  timingsMs: { daemon: number; register: number; mount: number };
}

/**
 * The common tail of every `mount`: make sure a daemon serves `sock`, register the image, mount
 * EROFS by fsid (unregistering again if the kernel refuses), record the mount for `umount` and
 * `status`.
 */
export async function mountRegistered(req: MountRegisteredRequest): Promise<MountRegisteredResult> {
  const mnt = path.resolve(req.mountpoint);
  const { fsid, domainId, sock } = req;
  const table = readMounts();
  // records of mounts that are gone (unmounted behind our back, a reboot) do not count
  const live = mountedPaths();
  for (const k of Object.keys(table)) if (!live.has(k)) delete table[k];
  if (table[mnt]) throw new NydusError('ERR_INVALID_ARGUMENT', `${req.mountpoint}: already mounted by nydus-ts (fsid ${table[mnt].fsid}); \`nydus-ts umount ${req.mountpoint}\` first`, { mountpoint: mnt });
  const clash = Object.entries(table).find(([, r]) => r.fsid === fsid && r.domainId === domainId && r.apisock === sock);
  if (clash) throw new NydusError('ERR_INVALID_ARGUMENT', `fsid ${fsid}: already mounted on ${clash[0]}; pass another --fsid to mount the image twice`, { fsid, mountpoint: clash[0] });
  const t0 = performance.now();
  const started = await ensureDaemon(sock, req.fscache, path.join(path.dirname(sock), 'daemon.log'));
  const t1 = performance.now();
  const workDir = path.join(path.dirname(sock), 'work', fsid);
  fs.mkdirSync(workDir, { recursive: true });
  await apiOk(sock, 'PUT', '/api/v2/blobs', req.registration(workDir));
  const t2 = performance.now();
  fs.mkdirSync(mnt, { recursive: true });
  const unregister = (): Promise<unknown> =>
    apiRequest(sock, 'DELETE', `/api/v2/blobs?domain_id=${encodeURIComponent(domainId || fsid)}&blob_id=${encodeURIComponent(fsid)}`).catch(() => undefined);
  const frontend: string = (await apiOk(sock, 'GET', '/api/v1/daemon')).frontend ?? 'fscache';
  if (frontend === 'fanotify') {
    // the daemon mounts file-backed EROFS itself, with its marked cache files as devices
    try {
      await apiOk(sock, 'POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt)}`, { id: fsid, domain_id: domainId });
    } catch (e) {
      await unregister();
      throw e;
    }
  } else {
    const opts = domainId ? `domain_id=${domainId},fsid=${fsid}` : `fsid=${fsid}`;
    try {
      await execFileP('mount', ['-t', 'erofs', '-o', opts, 'none', mnt]);
    } catch (e) {
      await unregister();
      throw new NydusError('ERR_KERNEL', `mount -t erofs -o ${opts} none ${mnt}: ${(e as { stderr?: string }).stderr?.trim() || (e as Error).message}`, { mountpoint: mnt, fsid });
    }
  }
  const t3 = performance.now();
  const m = readMounts();
  m[mnt] = { frontend, fsid, domainId, apisock: sock, ...req.record };
  writeMounts(m);
  return { mountpoint: mnt, frontend, daemonStarted: started, timingsMs: { daemon: Math.round(t1 - t0), register: Math.round(t2 - t1), mount: Math.round(t3 - t2) } };
}

export function positiveInt(flag: string, v: string, zeroOk = false): number {
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || (n === 0 && !zeroOk)) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `${flag} ${JSON.stringify(v)}: expected ${zeroOk ? 'a non-negative' : 'a positive'} integer`);
  }
  return n;
}

/** `mount|snapshotter --prefetch…` as the registration's prefetch settings (nydusd's defaults where not given). */
export function prefetchFlags(o: { prefetch?: boolean; prefetchAll?: boolean; prefetchThreads?: number; prefetchMergeSize?: number; prefetchBandwidth?: number }): {
  enable: boolean; all: boolean; threads: number; mergingSize: number; bandwidthRate: number;
} {
  const enable = o.prefetch === true || o.prefetchAll === true;
  if (!enable && (o.prefetchThreads !== undefined || o.prefetchMergeSize !== undefined || o.prefetchBandwidth !== undefined)) {
    throw new NydusError('ERR_INVALID_ARGUMENT', '--prefetch-threads, --prefetch-merge-size and --prefetch-bandwidth need --prefetch or --prefetch-all');
  }
  if ((o.prefetchThreads ?? 8) > 1024) throw new NydusError('ERR_INVALID_ARGUMENT', `--prefetch-threads ${o.prefetchThreads}: at most 1024`);
  if ((o.prefetchMergeSize ?? 0) > 256 << 20) throw new NydusError('ERR_INVALID_ARGUMENT', `--prefetch-merge-size ${o.prefetchMergeSize}: at most ${256 << 20}`);
  return { enable, all: o.prefetchAll === true, threads: o.prefetchThreads ?? 8, mergingSize: o.prefetchMergeSize ?? 1 << 20, bandwidthRate: o.prefetchBandwidth ?? 0 };
}

/** `umount`: unmount a `nydus-ts mount` (by the daemon or umount(8)) and unregister the image. */
export async function unmountImage(mnt: string): Promise<void> {
  const key = path.resolve(mnt);
  const m = readMounts();
  const rec = m[key];
  if (rec?.frontend === 'fanotify' && (await daemonAlive(rec.apisock))) {
    // the daemon made the mount: it unmounts and releases the blobs' cache files
    await apiOk(rec.apisock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(key)}`);
  } else {
    await execFileP('umount', [key]).catch((e) => {
      throw new NydusError('ERR_KERNEL', `umount ${key}: ${(e as { stderr?: string }).stderr?.trim() || (e as Error).message}`);
    });
  }
  if (rec) {
    await apiOk(rec.apisock, 'DELETE', `/api/v2/blobs?domain_id=${encodeURIComponent(rec.domainId || rec.fsid)}&blob_id=${encodeURIComponent(rec.fsid)}`).catch((e) => process.stderr.write(`warning: ${(e as Error).message}\n`));
    delete m[key];
    writeMounts(m);
  }
}

export function addDaemonCommands(program: Command): void {
  const d = program
    .command('daemon')
    .description('serve RAFS v6 images to the kernel: EROFS over fscache (/dev/cachefiles on-demand) or file-backed EROFS with fanotify pre-content events; nydusd singleton flags')
    .addOption(new Option('--frontend <kind>', 'kernel front end: fscache, fanotify, or auto (fscache where /dev/cachefiles on-demand works, else fanotify where the kernel has pre-content events)').choices(['auto', 'fscache', 'fanotify']).default('auto'))
    .option('--cache-dir <dir>', 'cache directory for either front end (on ext4, xfs or btrfs)')
    .option('-F, --fscache <dir>', 'cachefiles cache directory: the fscache front end (nydusd compatible)')
    .option('--fscache-tag <tag>', 'cachefiles cache tag')
    .option('--fscache-threads <n>', 'worker threads for decompression and digests', (v) => Number(v))
    .option('-A, --apisock <sock>', 'HTTP API unix socket', DEFAULT_APISOCK)
    .option('-C, --config <file>', 'pre-register images: {"blobs": [BlobCacheEntry, …]}')
    .option('--id <id>', 'daemon id (reported by the API)')
    .option('--supervisor <sock>', 'nydusd supervisor socket (reported; failover is built in)')
    .option('--upgrade', 'accepted for nydusd compatibility (failover is built in)')
    .option('-l, --log-level <level>', 'trace|debug|info|warn|error', 'info')
    .option('-L, --log-file <file>', 'log to this file instead of stderr')
    .option('--log-rotation-size <mb>', 'accepted for nydusd compatibility')
    .option('--rlimit-nofile <n>', 'accepted for nydusd compatibility (the fanotify front end raises the limit itself)')
    .option('--cache-high-watermark <pct>', 'cull the cache when more than this share of its filesystem\'s space is in use (default 95%; "off": never for space)')
    .option('--cache-low-watermark <pct>', 'culling frees space down to this share in use (default 90%)')
    .option('--cache-files-high-watermark <pct>', 'cull when more than this share of the filesystem\'s inodes is in use (default 95%; "off")')
    .option('--cache-files-low-watermark <pct>', 'culling frees inodes down to this share (default 90%)')
    .option('--cull-interval <secs>', 'check the watermarks every N seconds (default 10; 0: only when a cache write finds the disk full or cachefiles signals culling)')
    .option('--gc-interval <secs>', 'remove the cached data of blobs no registered image references every N seconds (default 600; 0: never periodically)')
    .option('--gc-grace <secs>', 'automatic GCs keep an unreferenced blob\'s data N seconds after its last read or last reference, whichever is later (default 600; `cache gc` does not wait)')
    .option('--no-gc-on-unregister', 'no automatic GC after an image is unregistered (or its last mount goes)')
    .option('--scrub-interval <secs>', 'scrub the cache every N seconds in the background: re-read cached chunks, verify their digests, evict damaged ones (default 0: off; config "scrub": {"interval_secs": N})')
    .option('--scrub-rate <MB/s>', 'read rate of the background scrub in MB/s (default 10; 0: unlimited)')
    .option('--metrics-listen <addr>', 'also serve Prometheus metrics (GET /metrics) on this loopback TCP address, e.g. 127.0.0.1:9110 (non-loopback addresses are refused)')
    .addOption(new Option('--serve-child').hideHelp())
    .addOption(new Option('--restore').hideHelp());
  d.action(async (o) => {
    const { Logger } = await import('../daemon/log');
    if ((o.id === undefined) !== (o.supervisor === undefined)) throw new NydusError('ERR_INVALID_ARGUMENT', '--id and --supervisor must be given together');
    if (o.fscache !== undefined && o.cacheDir !== undefined) throw new NydusError('ERR_INVALID_ARGUMENT', '--fscache and --cache-dir name the same directory: give one');
    if (o.fscache !== undefined && o.frontend === 'fanotify') throw new NydusError('ERR_INVALID_ARGUMENT', '--fscache selects the fscache front end; use --cache-dir with --frontend fanotify');
    const dirArg: string | undefined = o.fscache ?? o.cacheDir;
    if (dirArg === undefined) throw new NydusError('ERR_INVALID_ARGUMENT', 'no cache directory: give --cache-dir DIR (or --fscache DIR for the fscache front end)');
    const choice = o.fscache !== undefined ? 'fscache' : o.frontend;
    const logFd = o.logFile ? fs.openSync(o.logFile, 'a') : 2;
    const log = new Logger(o.logLevel, logFd, o.serveChild ? `[${process.pid}] ` : '[supervisor] ');
    const cacheDir = path.resolve(dirArg);
    if (!fs.existsSync(cacheDir) || !fs.statSync(cacheDir).isDirectory()) throw new NydusError('ERR_INVALID_ARGUMENT', `${o.fscache !== undefined ? '--fscache' : '--cache-dir'} ${dirArg}: not an existing directory`);
    const logFn = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>): void => log[level](msg, ctx);
    const { resolveCacheConfig, readCacheSection } = await import('../daemon/cache-config');
    const cacheConfig = resolveCacheConfig(o.config ? readCacheSection(o.config) : undefined, o);
    const scrubConfig = (await import('../daemon/scrub-config')).resolveScrubConfig(o.config, o);
    if (!o.serveChild) {
      const { runSupervisor } = await import('../daemon/supervisor');
      const metricsListen = o.metricsListen !== undefined ? (await import('../daemon/metrics-listener')).parseMetricsListen(o.metricsListen) : undefined;
      const { openKernelHandle } = await import('../kernel/index');
      const { limitsForWatermarks } = await import('../kernel/cachefiles-cache');
      const childArgs = process.argv.slice(2);
      const initialEntries = o.config ? (await import('../daemon/daemon')).readConfigEntries(o.config) : [];
      await runSupervisor({
        apiSock: path.resolve(o.apisock), childArgs, cliPath: path.join(__dirname, 'main.js'), log, initialEntries, metricsListen,
        openKernel: () => openKernelHandle(choice, cacheDir, { tag: o.fscacheTag, log: logFn, limits: limitsForWatermarks(cacheConfig.space, cacheConfig.files) }),
      });
      await new Promise(() => undefined); // the supervisor runs until a signal
      return;
    }
    // serving child: fd 4 is the kernel handle; API connections come over IPC
    // (listen for the supervisor's first message before loading the daemon)
    const initMessage = new Promise<import('../daemon/supervisor').ChildInit>((resolve) => {
      process.once('message', (m: import('../daemon/supervisor').ChildInit) => resolve(m));
    });
    const { Daemon } = await import('../daemon/daemon');
    const { createFrontend } = await import('../kernel/index');
    const init = await initMessage;
    const frontend = createFrontend({
      kind: init.kind as 'fscache' | 'fanotify', fd: 4, cacheDir, tag: o.fscacheTag, restore: init.restore, log: logFn,
      mounts: init.mounts as import('../daemon/interfaces').FrontendMount[],
      onMountsChanged: (mounts) => process.send?.({ type: 'mounts', mounts }),
    });
    const daemon = new Daemon({
      frontend, cacheDir, threads: o.fscacheThreads, apiSock: path.resolve(o.apisock),
      externalConnections: true, id: o.id, supervisor: o.supervisor, log, cache: cacheConfig, scrub: scrubConfig,
      initialEntries: init.entries,
      onRegistrationsChanged: (entries) => process.send?.({ type: 'registrations', entries }),
      requestExit: () => process.send?.({ type: 'exit' }),
    });
    process.on('message', (m: { type: string }, handle: unknown) => {
      if (m.type === 'conn' && handle) daemon.acceptConnection(handle as Socket);
      if (m.type === 'metrics-conn' && handle) daemon.acceptMetricsConnection(handle as Socket);
    });
    await daemon.run();
    process.send?.({ type: 'ready' });
    let stopping = false;
    const stop = async (): Promise<void> => {
      if (stopping) return;
      stopping = true;
      // the front end unmounts first; a busy mount keeps everything serving, retried each second
      for (let attempt = 0; ; attempt++) {
        try {
          await daemon.stop();
          break;
        } catch (e) {
          if (attempt % 30 === 0) log.error(`${(e as Error).message}; retrying until it is free`);
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
      process.send?.({ type: 'stopped' });
      process.exit(0);
    };
    process.on('SIGTERM', () => void stop());
    process.on('disconnect', () => void stop()); // the supervisor is gone
    await new Promise(() => undefined);
  });

  program
    .command('mount')
    .description('lazily mount an image: a registry image (--image REF) or local files (--bootstrap/--blob-dir); starts a daemon if needed, registers the image, mount -t erofs -o fsid=…')
    .option('-I, --image <ref>', 'a nydus image in a registry: host[:port]/repo[:tag][@digest] (its bootstrap is fetched, its blobs are read lazily)')
    .option('-B, --bootstrap <file>', 'bootstrap (with --blob-dir)')
    .option('-D, --blob-dir <dir>', 'directory holding the blobs (localfs backend)')
    .option('--insecure', '--image: plain http to the registry (loopback registries use http anyway)')
    .option('--platform <os/arch[/variant]>', '--image: platform to pick from a multi-platform image (default: this machine\'s)')
    .option('--creds <user:password>', '--image: registry credentials (else $NYDUS_TS_REGISTRY_CREDS, $NYDUS_TS_REGISTRY_TOKEN, then $DOCKER_CONFIG/config.json or ~/.docker/config.json)')
    .option('--registry-token <token>', '--image: a ready bearer token for the registry')
    .option('--work-dir <dir>', `--image: where fetched bootstraps are cached (<dir>/bootstraps/sha256/<layer digest>.boot; default $NYDUS_TS_WORK_DIR or ${DEFAULT_IMAGE_WORK_DIR})`)
    .addOption(new Option('--registration <format>', '--image: registration body sent to the daemon: the nydus-snapshotter "legacy" config or "v2"').choices(['legacy', 'v2']).default('legacy'))
    .option('--fsid <id>', 'fscache fsid (default: --image: the manifest digest hex; --bootstrap: derived from the bootstrap path)')
    .option('--domain-id <d>', 'share blobs with other images of this domain (kernel ≥ 6.1)')
    .option('-A, --apisock <sock>', 'daemon API socket', DEFAULT_APISOCK)
    .option('--cache-dir <dir>', 'cache directory for a daemon started by this command (on ext4, xfs or btrfs)', DEFAULT_FSCACHE)
    .addOption(new Option('-F, --fscache <dir>', 'alias of --cache-dir').hideHelp())
    .option('-J, --output-json <file>', "write what was mounted as JSON ('-' = stdout)")
    .option('--prefetch', "after the mount, fetch the files of the image's prefetch table in the background (reads always go first; nydusd prefetch_config.enable, default off)")
    .option('--prefetch-all', 'prefetch the listed files, then the whole blob(s) (implies --prefetch)')
    .option('--prefetch-threads <n>', 'concurrent prefetch requests (default 8)', (v) => positiveInt('--prefetch-threads', v))
    .option('--prefetch-merge-size <bytes>', 'the largest merged prefetch request (default 1048576)', (v) => positiveInt('--prefetch-merge-size', v))
    .option('--prefetch-bandwidth <bytes/s>', 'prefetch bandwidth limit (default 0 = unlimited)', (v) => positiveInt('--prefetch-bandwidth', v, true))
    .argument('<mountpoint>')
    .action(async (mnt: string, o) => {
      const t0 = performance.now();
      const prefetch = prefetchFlags(o);
      const local = o.bootstrap !== undefined || o.blobDir !== undefined;
      if (o.image !== undefined && local) {
        throw new NydusError('ERR_INVALID_ARGUMENT', '--image and --bootstrap/--blob-dir are mutually exclusive: mount either a registry image (--image REF) or local files (--bootstrap FILE --blob-dir DIR)');
      }
      if (o.image === undefined && !local) throw new NydusError('ERR_INVALID_ARGUMENT', 'nothing to mount: give --image REF, or --bootstrap FILE and --blob-dir DIR');
      const sock = path.resolve(o.apisock);
      const fscache = path.resolve(o.fscache ?? o.cacheDir);
      const domainId: string = o.domainId ?? '';
      if (o.image === undefined) {
        for (const f of ['insecure', 'platform', 'creds', 'registryToken', 'workDir'] as const) {
          if (o[f] !== undefined) throw new NydusError('ERR_INVALID_ARGUMENT', `--${f.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())} only applies to --image`);
        }
        if (o.bootstrap === undefined) throw new NydusError('ERR_INVALID_ARGUMENT', '--blob-dir needs --bootstrap FILE');
        if (o.blobDir === undefined) throw new NydusError('ERR_INVALID_ARGUMENT', '--bootstrap needs --blob-dir DIR');
        const bootstrap = path.resolve(o.bootstrap);
        if (!fs.existsSync(bootstrap)) throw new NydusError('ERR_INVALID_ARGUMENT', `--bootstrap ${o.bootstrap}: no such file`);
        const blobDir = path.resolve(o.blobDir);
        const fsid = o.fsid ?? crypto.createHash('sha256').update(bootstrap).digest('hex').slice(0, 32);
        const r = await mountRegistered({
          mountpoint: mnt, sock, fscache, fsid, domainId, record: { bootstrap },
          registration: (workDir) => ({
            type: 'bootstrap', id: fsid, domain_id: domainId,
            config_v2: {
              version: 2, id: fsid, backend: { type: 'localfs', localfs: { dir: blobDir } },
              cache: {
                type: 'fscache', fscache: { work_dir: workDir },
                prefetch: { enable: prefetch.enable, threads: prefetch.threads, batch_size: prefetch.mergingSize, bandwidth_limit: prefetch.bandwidthRate, prefetch_all: prefetch.all },
              },
              metadata_path: bootstrap,
            },
          }),
        });
        const totalMs = Math.round(performance.now() - t0);
        process.stderr.write(`mounted ${bootstrap} on ${mnt} (fsid ${fsid}${domainId ? `, domain ${domainId}` : ''}, ${r.frontend} front end) in ${(totalMs / 1000).toFixed(2)} s\n`);
        emitJson(o.outputJson, { mountpoint: r.mountpoint, frontend: r.frontend, fsid, domain_id: domainId, apisock: sock, bootstrap, blob_dir: blobDir, timings_ms: { ...r.timingsMs, total: totalMs } });
        return;
      }

      const { prepareImage, buildRegistration } = await import('../oci/image-mount');
      const img = await prepareImage(o.image, {
        insecure: o.insecure === true, platform: o.platform, creds: o.creds, registryToken: o.registryToken, workDir: o.workDir,
      });
      const fsid: string = o.fsid ?? img.defaultFsid;
      const r = await mountRegistered({
        mountpoint: mnt, sock, fscache, fsid, domainId,
        record: { bootstrap: img.bootstrap.path, image: img.reference, manifestDigest: img.manifestDigest },
        registration: (workDir) => buildRegistration({ fsid, domainId, workDir, bootstrapPath: img.bootstrap.path, backend: img.backend, format: o.registration, prefetch }),
      });
      const totalMs = Math.round(performance.now() - t0);
      const report = {
        reference: img.reference,
        manifest_digest: img.manifestDigest,
        root_digest: img.root.digest,
        resolved_via: img.via,
        platform: img.platform,
        mountpoint: r.mountpoint,
        frontend: r.frontend,
        fsid,
        domain_id: domainId,
        apisock: sock,
        blob_ids: img.blobIds,
        blobs: img.blobs,
        bootstrap: { path: img.bootstrap.path, layer_digest: img.bootstrap.layerDigest, size: img.bootstrap.size, cached: img.bootstrap.cached },
        backend: { type: 'registry', scheme: img.backend.scheme, host: img.backend.host, repo: img.backend.repo, credentials: img.credentials, auth: img.backend.auth ? 'basic' : img.backend.registry_token ? 'bearer' : 'none' },
        registration: o.registration,
        daemon_started: r.daemonStarted,
        timings_ms: { resolve: img.timingsMs.resolve, bootstrap: img.timingsMs.bootstrap, ...r.timingsMs, total: totalMs },
      };
      const blobBytes = img.blobs.reduce((n, b) => n + b.size, 0);
      process.stderr.write(
        `mounted ${img.reference} (${img.manifestDigest}) on ${mnt} in ${(totalMs / 1000).toFixed(2)} s: fsid ${fsid}${domainId ? `, domain ${domainId}` : ''}, ` +
          `${img.blobs.length} blob${img.blobs.length === 1 ? '' : 's'} (${human(blobBytes)}, read on demand), bootstrap ${human(img.bootstrap.size)} ${img.bootstrap.cached ? 'from the cache' : 'fetched'}\n`,
      );
      if (process.stderr.isTTY) {
        const t = report.timings_ms;
        process.stderr.write(`  resolve ${t.resolve} ms, bootstrap ${t.bootstrap} ms, daemon ${t.daemon} ms${r.daemonStarted ? ' (started)' : ''}, register ${t.register} ms, kernel mount ${t.mount} ms\n`);
      }
      emitJson(o.outputJson, report);
    });

  program
    .command('umount')
    .description('unmount an image mounted with `nydus-ts mount` and unregister it from the daemon (never lazily: a busy mount is an error)')
    .argument('<mountpoint>')
    .action((mnt: string) => unmountImage(mnt));

  program
    .command('status')
    .description('show the daemon (front end, pids), its images, mounts and blobs, and cache usage')
    .option('-A, --apisock <sock>', 'daemon API socket', DEFAULT_APISOCK)
    .option('--json', 'print JSON')
    .action(async (o) => {
      const sock = path.resolve(o.apisock);
      const info = await apiOk(sock, 'GET', '/api/v1/daemon');
      const metrics = await apiOk(sock, 'GET', '/api/v1/metrics');
      const out = { daemon: info, mounts: readMounts(), metrics };
      if (o.json) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
      else {
        process.stdout.write(`daemon ${info.id ?? ''} state ${info.state}, ${info.frontend} front end, cache ${info.cache_dir}, pid ${info.pid}${info.supervisor_pid ? ` (supervisor ${info.supervisor_pid})` : ''}\n`);
        for (const i of metrics.images ?? []) process.stdout.write(`image ${i.id}${i.domain_id ? ` (domain ${i.domain_id})` : ''}: ${i.bootstrap}, ${i.blobs.length} blobs\n`);
        for (const b of metrics.blobs ?? []) {
          let line = `blob ${b.blob_id}: ${b.chunks_ready}/${b.chunk_count} chunks cached, ${human(b.backend_bytes)} fetched, ${b.reads} fills`;
          const pf = b.prefetch;
          if (pf && pf.jobs > 0) {
            line += `; prefetch ${pf.state}: ${pf.chunks} chunks (${human(pf.bytes)}) in ${pf.requests} requests, ${pf.pending_chunks} pending` +
              `${pf.failed_requests ? `, ${pf.failed_requests} failed` : ''}; reads queued behind prefetch: ${b.ondemand_waits_behind_prefetch ?? 0}`;
          }
          if (b.events !== undefined) {
            line += `; ${b.events} events (${b.fast_path} fast, ${b.slow_path} filled, ${b.denials} denied), event p50 ${b.event_latency.p50_ms.toFixed(3)} ms p99 ${b.event_latency.p99_ms.toFixed(3)} ms${b.done ? ', complete: no more events' : ''}`;
          }
          process.stdout.write(line + '\n');
        }
        for (const mt of metrics.mounts ?? []) process.stdout.write(`daemon mount ${mt.mountpoint}: image ${mt.id}${mt.domainId ? ` (domain ${mt.domainId})` : ''}\n`);
        for (const [mp, r] of Object.entries(readMounts())) process.stdout.write(`mount ${mp}: fsid ${r.fsid}${r.image ? `, image ${r.image}@${r.manifestDigest}` : `, bootstrap ${r.bootstrap}`}\n`);
      }
    });
}
