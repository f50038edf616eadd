/**
 * Nydus images through the snapshotter (issue #10, part 2): the SnapshotHooks that make a nydus
 * image's layers cheap and its containers lazy.
 *
 *   data layer   (label containerd.io/snapshot/nydus-blob + containerd.io/snapshot.ref = T)
 *                → the committed snapshot T (an empty directory), ALREADY_EXISTS: containerd never
 *                  downloads the blob
 *   bootstrap    (label containerd.io/snapshot/nydus-bootstrap) → a plain rw directory (bind)
 *                  containerd unpacks the layer into: it then holds image/image.boot
 *   rootfs       (an active snapshot or view whose committed ancestry holds a bootstrap layer)
 *                → the image registered with our daemon (`PUT /api/v2/blobs`, registry backend)
 *                  and mounted once at <root>/images/<bootstrap snapshot id>/mnt (fanotify: the
 *                  daemon mounts, `POST /api/v1/mount`; fscache: `mount -t erofs -o fsid=`);
 *                  overlay lowerdir=<that mount>, upper/work in the snapshot's dir (view: a
 *                  read-only bind of the mount)
 *
 * Reference counting is derived from the metadata, never kept in memory: the users of an image
 * are the active snapshots and views whose ancestry holds its bootstrap snapshot. When a Remove
 * leaves none (or removes the bootstrap snapshot itself), the image is unmounted and
 * unregistered. What is mounted is recorded in <root>/images/<id>/state.json, so a restarted
 * snapshotter finds and releases the mounts its predecessor made.
 *
 * The image reference comes from the bootstrap snapshot's `containerd.io/snapshot/cri.image-ref`
 * label (CRI pulls with disable_snapshot_annotations = false); loopback registries and those
 * named by --insecure-registry are spoken to over plain HTTP; credentials come from the Docker
 * config (resolveCredentials), and go into the registration (the daemon may have another env).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { NydusError } from '../errors';
import { failedPrecondition, SnapshotError } from './errors';
import type { Mount } from './mounts';
import { parseReference } from '../oci/reference';
import { resolveCredentials, registryBackendFor, RegistryBackendJson } from '../oci/image-mount';
import type { MountContext, SnapshotHooks, Snapshotter, SnapshotRecord } from './snapshotter';

const execFileP = promisify(execFile);

export const LABEL_NYDUS_BLOB = 'containerd.io/snapshot/nydus-blob';
export const LABEL_NYDUS_BOOTSTRAP = 'containerd.io/snapshot/nydus-bootstrap';
export const LABEL_TARGET = 'containerd.io/snapshot.ref';
export const LABEL_IMAGE_REF = 'containerd.io/snapshot/cri.image-ref';
const LABEL_STARGZ_REF = 'containerd.io/snapshot/remote/stargz.reference';
export const BOOTSTRAP_IN_LAYER = path.join('image', 'image.boot');

export interface NydusHooksOptions {
  root: string;
  /** a running daemon's API socket; none = start our own on the first image */
  daemonApiSock?: string;
  /** registries (HOST[:PORT]) spoken to over plain HTTP besides loopback ones */
  insecureRegistries?: string[];
  /** background prefetch of each image mounted (the registration's prefetch_config; default off) */
  prefetch?: import('../oci/image-mount').RegistrationPrefetch;
  /** each image's amplification window, bytes (the registration's rafs.batch_size; default 1 MiB) */
  amplifyIo?: number;
  /** fanotify: read_ahead_kb of each image's mount (the daemon's default when absent) */
  readaheadKb?: number;
  /**
   * when our own daemon starts: 'startup' (with the snapshotter, as nydus-snapshotter starts its
   * shared daemon, so no container waits for it; the default) or 'first-mount'
   */
  daemonStart?: 'startup' | 'first-mount';
  log: (level: 'debug' | 'info' | 'warn', msg: string, ctx?: Record<string, unknown>) => void;
}

/** What <root>/images/<id>/state.json records of a mounted image. */
interface ImageState {
  bootstrapSnapshot: string;
  reference: string;
  fsid: string;
  mountpoint: string;
  frontend: string;
  apisock: string;
}

/**
 * The daemon's registry backend for an image reference: plain HTTP for loopback registries and
 * those in `insecureRegistries` (HOST[:PORT] as written in references), else HTTPS; credentials
 * from $NYDUS_TS_REGISTRY_CREDS/TOKEN or the Docker config, read now (it may have changed).
 */
export function imageBackend(refText: string, insecureRegistries: string[]): RegistryBackendJson {
  const ref = parseReference(refText);
  const insecure = insecureRegistries.some((r) => r === ref.registry || r === ref.apiHost || r === ref.daemonHost);
  return registryBackendFor(ref, { insecure, credentials: resolveCredentials(ref) });
}

const isBootstrap = (labels: Record<string, string>): boolean => Object.hasOwn(labels, LABEL_NYDUS_BOOTSTRAP);

function mounted(dir: string): boolean {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l && unescape(l.split(' ')[4]) === dir);
}

export class NydusHooks implements SnapshotHooks {
  private sn?: Snapshotter;
  private readonly imagesDir: string;
  /** per image (bootstrap snapshot name): acquire/release run one at a time */
  private readonly locks = new Map<string, Promise<unknown>>();
  private daemonQueue: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: NydusHooksOptions) {
    this.imagesDir = path.join(o.root, 'images');
  }

  /**
   * With --daemon-start startup and no --daemon-apisock: start our daemon now, in the background
   * (the first mount waits for it; a failure is logged, and the first mount tries again).
   */
  startDaemonEarly(): void {
    if (this.o.daemonApiSock || (this.o.daemonStart ?? 'startup') !== 'startup') return;
    this.daemon().catch((e: Error) => this.o.log('warn', `starting the daemon with the snapshotter: ${e.message} (the first nydus mount tries again)`));
  }

  /** The snapshotter whose metadata tells who uses an image (set right after open). */
  bind(sn: Snapshotter): void {
    this.sn = sn;
  }

  prepare(_key: string, _parent: string, labels: Record<string, string>): { commitAs: string } | undefined {
    if (Object.hasOwn(labels, LABEL_NYDUS_BLOB) && labels[LABEL_TARGET]) return { commitAs: labels[LABEL_TARGET] };
    return undefined;
  }

  async mounts(ctx: MountContext): Promise<Mount[] | undefined> {
    if (ctx.record.kind === 'active' && isBootstrap(ctx.record.labels)) {
      // the bootstrap layer: a plain directory to unpack into (the data layers below are empty)
      return [{ type: 'bind', source: ctx.layout.fs(ctx.record.id), options: ['rbind', 'rw'] }];
    }
    const at = ctx.ancestors.findIndex((a) => isBootstrap(a.record.labels));
    if (at < 0) return undefined;
    const boot = ctx.ancestors[at];
    const bootstrapFile = path.join(ctx.layout.fs(boot.record.id), BOOTSTRAP_IN_LAYER);
    if (!fs.existsSync(bootstrapFile)) {
      throw failedPrecondition(`snapshot ${ctx.key}: nydus bootstrap layer ${boot.name} has no ${BOOTSTRAP_IN_LAYER}`, { key: ctx.key, bootstrap: boot.name });
    }
    const state = await this.locked(boot.name, () => this.acquire(ctx.key, boot.name, boot.record, bootstrapFile));
    // layers committed on top of the image (e.g. a container committed as an image) stay above it
    const lowers = [...ctx.ancestors.slice(0, at).map((a) => ctx.layout.fs(a.record.id)), state.mountpoint];
    const options = fs.existsSync('/sys/module/overlay/parameters/index') ? ['index=off'] : [];
    if (ctx.record.kind === 'view') {
      if (lowers.length === 1) return [{ type: 'bind', source: state.mountpoint, options: ['rbind', 'ro'] }];
      return [{ type: 'overlay', source: 'overlay', options: [...options, `lowerdir=${lowers.join(':')}`] }];
    }
    options.push(`workdir=${ctx.layout.work(ctx.record.id)}`, `upperdir=${ctx.layout.fs(ctx.record.id)}`, `lowerdir=${lowers.join(':')}`);
    return [{ type: 'overlay', source: 'overlay', options }];
  }

  async removed(key: string, record: SnapshotRecord): Promise<void> {
    const sn = this.sn;
    if (!sn) return;
    let boot: string | undefined;
    if (record.kind === 'committed' && isBootstrap(record.labels)) boot = key;
    else if (record.kind !== 'committed') boot = this.bootstrapOf(record.parent);
    if (!boot) return;
    const name = boot;
    await this.locked(name, async () => {
      const bootRecord = sn.record(name);
      if (bootRecord && this.users(name).length > 0) return;
      const id = bootRecord?.id ?? (name === key ? record.id : undefined);
      if (id !== undefined) await this.release(id);
    }).catch((e: Error) => {
      // the snapshot is gone either way; the image stays mounted until sweep() (next start) retries
      this.o.log('warn', `removing ${key}: releasing its nydus image failed: ${e.message}`, { key, bootstrap: name });
    });
  }

  /**
   * Release images no snapshot uses any more (a crash between a Remove and its release, a
   * failed unmount): run once at start, after bind().
   */
  async sweep(): Promise<void> {
    let ids: string[];
    try {
      ids = fs.readdirSync(this.imagesDir);
    } catch {
      return;
    }
    for (const id of ids) {
      const st = this.readState(id);
      if (!st) continue;
      await this.locked(st.bootstrapSnapshot, async () => {
        const rec = this.sn?.record(st.bootstrapSnapshot);
        if (rec && rec.id === id && this.users(st.bootstrapSnapshot).length > 0) return;
        await this.release(id);
      }).catch((e: Error) => this.o.log('warn', `releasing the unused nydus image ${st.reference}: ${e.message}`, { mountpoint: st.mountpoint }));
    }
  }

  // ------------------------------------------------------------------------------------------

  /** The nearest committed ancestor (from `parent` up) labelled as a nydus bootstrap. */
  private bootstrapOf(parent: string): string | undefined {
    for (let name = parent; name; ) {
      const info = this.sn!.record(name);
      if (!info) return undefined;
      if (isBootstrap(info.labels)) return name;
      name = info.parent;
    }
    return undefined;
  }

  /** Active snapshots and views whose ancestry holds `boot`. */
  private users(boot: string): string[] {
    const all = new Map<string, { parent: string; kind: string }>();
    for (const batch of this.sn!.list([])) for (const i of batch) all.set(i.name, { parent: i.parent, kind: i.kind });
    const out: string[] = [];
    for (const [name, i] of all) {
      if (i.kind === 'committed') continue;
      for (let p = i.parent; p; p = all.get(p)?.parent ?? '') {
        if (p === boot) {
          out.push(name);
          break;
        }
      }
    }
    return out;
  }

  private locked<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(name) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.locks.set(name, tail);
    void tail.then(() => {
      if (this.locks.get(name) === tail) this.locks.delete(name);
    });
    return run;
  }

  private stateFile(id: string): string {
    return path.join(this.imagesDir, id, 'state.json');
  }

  private readState(id: string): ImageState | undefined {
    try {
      return JSON.parse(fs.readFileSync(this.stateFile(id), 'utf8')) as ImageState;
    } catch {
      return undefined;
    }
  }

  /**
   * The daemon's API socket. Without --daemon-apisock: our own daemon under <root>/daemon, started
   * on first use and again whenever it no longer answers (one at a time: never two daemons).
   */
  private daemon(): Promise<string> {
    if (this.o.daemonApiSock) return Promise.resolve(this.o.daemonApiSock);
    const run = this.daemonQueue.then(async () => {
      const { ensureDaemon } = await import('../cli/daemon-commands');
      const dir = path.join(this.o.root, 'daemon');
      const sock = path.join(dir, 'api.sock');
      const cacheDir = path.join(this.o.root, 'cache');
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      if (await ensureDaemon(sock, cacheDir, path.join(dir, 'daemon.log'))) this.o.log('info', `started a daemon on ${sock}`, { cacheDir });
      return sock;
    });
    this.daemonQueue = run.catch(() => undefined);
    return run;
  }

  /** Mount the image of bootstrap snapshot `boot` unless it is mounted already. */
  private async acquire(key: string, boot: string, bootRecord: SnapshotRecord, bootstrapFile: string): Promise<ImageState> {
    const id = bootRecord.id;
    const known = this.readState(id);
    if (known && mounted(known.mountpoint)) {
      if (await this.served(known)) return known;
      // the daemon that served it is gone (or restarted without it): replace the dead mount
      this.o.log('warn', `the mount of ${known.reference} on ${known.mountpoint} is stale (its daemon no longer serves fsid ${known.fsid}): mounting it again`, { key });
      await execFileP('umount', [known.mountpoint]).catch((e) => {
        throw new SnapshotError('UNAVAILABLE', `snapshot ${key}: image ${known.reference}: its mount ${known.mountpoint} is stale (the daemon that served it is gone) and still in use, e.g. by running containers; stop them, then retry: ${(e as { stderr?: string }).stderr?.trim() || (e as Error).message}`, { key, mountpoint: known.mountpoint });
      });
    }
    const refText = bootRecord.labels[LABEL_IMAGE_REF] ?? bootRecord.labels[LABEL_STARGZ_REF];
    if (!refText) {
      throw failedPrecondition(`snapshot ${key}: nydus bootstrap layer ${boot} has no ${LABEL_IMAGE_REF} label (pull through CRI with disable_snapshot_annotations = false)`, { key, bootstrap: boot });
    }
    const { buildRegistration } = await import('../oci/image-mount');
    const { apiRequest } = await import('../cli/daemon-commands');
    let backend: RegistryBackendJson;
    try {
      backend = imageBackend(refText, this.o.insecureRegistries ?? []);
    } catch (e) {
      throw failedPrecondition(`snapshot ${key}: nydus bootstrap layer ${boot}: image reference ${JSON.stringify(refText)}: ${(e as Error).message}`, { key, bootstrap: boot });
    }
    const sock = await this.daemon();
    const fsid = crypto.createHash('sha256').update(`nydus-ts-snapshot-${this.o.root}-${id}`).digest('hex');
    const dir = path.join(this.imagesDir, id);
    const mnt = path.join(dir, 'mnt');
    const workDir = path.join(dir, 'work');
    fs.mkdirSync(mnt, { recursive: true });
    fs.mkdirSync(workDir, { recursive: true });
    const api = async (method: string, p: string, body?: unknown): Promise<any> => {
      const r = await apiRequest(sock, method, p, body);
      if (r.status >= 300) throw new NydusError('ERR_DAEMON', `snapshot ${key}: image ${refText}: daemon API ${method} ${p.split('?')[0]}: HTTP ${r.status}: ${r.body?.message ?? JSON.stringify(r.body)}`, { key, status: r.status });
      return r.body;
    };
    // a registration left by a crash between register and mount would make PUT fail: drop it first
    const unregister = (): Promise<unknown> => apiRequest(sock, 'DELETE', `/api/v2/blobs?domain_id=${fsid}&blob_id=${fsid}`).catch(() => undefined);
    await unregister();
    await api('PUT', '/api/v2/blobs', buildRegistration({ fsid, workDir, bootstrapPath: bootstrapFile, backend, prefetch: this.o.prefetch, amplifyIo: this.o.amplifyIo }));
    const frontend: string = (await api('GET', '/api/v1/daemon')).frontend ?? 'fscache';
    try {
      if (frontend === 'fanotify') {
        await api('POST', `/api/v1/mount?mountpoint=${encodeURIComponent(mnt)}`, { id: fsid, domain_id: '', ...(this.o.readaheadKb === undefined ? {} : { read_ahead_kb: this.o.readaheadKb }) });
      } else {
        await execFileP('mount', ['-t', 'erofs', '-o', `fsid=${fsid}`, 'none', mnt]).catch((e) => {
          throw new NydusError('ERR_KERNEL', `snapshot ${key}: mount -t erofs -o fsid=${fsid} none ${mnt}: ${(e as { stderr?: string }).stderr?.trim() || (e as Error).message}`, { key });
        });
      }
    } catch (e) {
      await unregister();
      throw e;
    }
    const state: ImageState = { bootstrapSnapshot: boot, reference: refText, fsid, mountpoint: mnt, frontend, apisock: sock };
    const { writeFileAtomic } = await import('../util/atomic-file');
    writeFileAtomic(this.stateFile(id), JSON.stringify(state, null, 2) + '\n');
    this.o.log('info', `mounted nydus image ${refText} on ${mnt}`, { key, bootstrap: boot, fsid, frontend, scheme: backend.scheme });
    return state;
  }

  /** Does the daemon that made this mount still serve it (registration, and for fanotify the mount)? */
  private async served(st: ImageState): Promise<boolean> {
    const { apiRequest } = await import('../cli/daemon-commands');
    try {
      const r = await apiRequest(st.apisock, 'GET', '/api/v1/metrics');
      if (r.status !== 200) return false;
      const body = r.body as { images?: { id: string }[]; mounts?: { mountpoint: string }[] };
      if (!body.images?.some((i) => i.id === st.fsid)) return false;
      return st.frontend !== 'fanotify' || !!body.mounts?.some((m) => m.mountpoint === st.mountpoint);
    } catch {
      return false;
    }
  }

  /** Unmount and unregister the image of bootstrap snapshot id `id` (nothing when not mounted). */
  private async release(id: string): Promise<void> {
    const st = this.readState(id);
    if (!st) return;
    const { apiRequest } = await import('../cli/daemon-commands');
    if (mounted(st.mountpoint)) {
      let done = false;
      if (st.frontend === 'fanotify') {
        const r = await apiRequest(st.apisock, 'DELETE', `/api/v1/mount?mountpoint=${encodeURIComponent(st.mountpoint)}`).catch(() => undefined);
        done = !!r && r.status < 300;
        if (r && !done) this.o.log('warn', `daemon DELETE mount ${st.mountpoint}: HTTP ${r.status}: ${JSON.stringify(r.body)}`);
      }
      if (!done && mounted(st.mountpoint)) {
        await execFileP('umount', [st.mountpoint]).catch((e) => {
          throw new NydusError('ERR_KERNEL', `image ${st.reference}: umount ${st.mountpoint}: ${(e as { stderr?: string }).stderr?.trim() || (e as Error).message}`);
        });
      }
    }
    const r = await apiRequest(st.apisock, 'DELETE', `/api/v2/blobs?domain_id=${st.fsid}&blob_id=${st.fsid}`).catch((e: Error) => ({ status: 0, body: e.message }));
    if (r.status >= 300 || r.status === 0) this.o.log('warn', `unregistering ${st.fsid}: ${r.status}: ${JSON.stringify(r.body)}`);
    fs.rmSync(path.join(this.imagesDir, id), { recursive: true, force: true });
    this.o.log('info', `released nydus image ${st.reference}`, { fsid: st.fsid, mountpoint: st.mountpoint });
  }
}
