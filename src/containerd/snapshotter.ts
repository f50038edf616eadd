/**
 * The snapshotter core, with the semantics of containerd's overlayfs snapshotter (and its
 * snapshots/storage metastore): what Prepare, View, Mounts, Commit, Remove, Stat, Update,
 * List, Usage and Cleanup do, and which errdefs they answer with. No gRPC here (grpc-server.ts).
 *
 * Changes are serialised: one mutation at a time runs its directory work and its metadata
 * write, so a Cleanup never sees a half-created snapshot. Reads use the last durable state.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { alreadyExists, badArgument, failedPrecondition, notFound } from './errors';
import { MetadataStore, SnapshotKind, SnapshotRecord } from './metadata-store';
import { SnapshotLayout, Mount, defaultMounts, checkMountable } from './mounts';
import { compileFilters } from './filters';
import { diskUsage, DiskUsage } from './disk-usage';

export type { Mount } from './mounts';
export type { SnapshotKind, SnapshotRecord } from './metadata-store';

export interface SnapshotInfo {
  name: string;
  parent: string;
  kind: SnapshotKind;
  labels: Record<string, string>;
  createdMs: number;
  updatedMs: number;
}

/** What a mount hook is told about an active snapshot or view. */
export interface MountContext {
  key: string;
  record: SnapshotRecord;
  /** committed ancestors, nearest first (their labels tell what kind of layer each is) */
  ancestors: { name: string; record: SnapshotRecord }[];
  layout: SnapshotLayout;
  /** what the snapshotter mounts by default (bind or overlay of the directories) */
  defaultMounts: Mount[];
}

/**
 * Extension points for image formats that are not plain directories (nydus, part 2 of issue
 * #10). The same hook answers Prepare, View and Mounts, so containerd gets the same mounts
 * however it asks; it decides from persisted labels and ancestry only.
 */
export interface SnapshotHooks {
  /** Mounts for an active snapshot or view; undefined = the default mounts. A throw fails the Prepare/View (the snapshot is removed again). */
  mounts?(ctx: MountContext): Promise<Mount[] | undefined>;
  /** After a snapshot is gone from the metadata, before its directory is removed (release what mounts() set up). */
  removed?(key: string, record: SnapshotRecord): Promise<void>;
  /**
   * First thing a Prepare does: `{ commitAs }` makes the committed snapshot `commitAs` (with the
   * labels, an empty directory) instead and answers ALREADY_EXISTS (a remote layer: containerd
   * skips its download).
   */
  prepare?(key: string, parent: string, labels: Record<string, string>): { commitAs: string } | undefined;
}

export interface SnapshotterOptions {
  /** absolute; holds metadata.json and snapshots/ */
  root: string;
  hooks?: SnapshotHooks;
  log?: (level: 'debug' | 'info' | 'warn', msg: string, ctx?: Record<string, unknown>) => void;
}

// containerd refuses labels whose key and value together pass 4096 bytes (labels.Validate)
const MAX_LABEL_BYTES = 4096;
const LIST_BATCH = 100;

export class Snapshotter {
  readonly layout: SnapshotLayout;
  private readonly store: MetadataStore;
  private readonly hooks: SnapshotHooks;
  private readonly log: NonNullable<SnapshotterOptions['log']>;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(opts: SnapshotterOptions, store: MetadataStore) {
    this.layout = new SnapshotLayout(opts.root);
    this.store = store;
    this.hooks = opts.hooks ?? {};
    this.log = opts.log ?? (() => undefined);
  }

  /** Open (or create) the snapshotter state in `root`. */
  static open(opts: SnapshotterOptions): Snapshotter {
    fs.mkdirSync(path.join(opts.root, 'snapshots'), { recursive: true, mode: 0o700 });
    return new Snapshotter(opts, MetadataStore.open(opts.root));
  }

  /**
   * Runs mutations one after another. Each waits for a turn of the event loop first: the work is
   * mostly synchronous (mkdir, fsync), and without the turn a burst of calls would run back to
   * back in microtasks and hold every reply until the last one is done.
   */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const turn = async (): Promise<T> => {
      await new Promise((r) => setImmediate(r));
      return fn();
    };
    const run = this.queue.then(turn, turn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Wait for in-flight changes (shutdown). */
  idle(): Promise<void> {
    return this.exclusive(async () => undefined);
  }

  prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.create('active', key, parent, labels);
  }

  view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.create('view', key, parent, labels);
  }

  private async create(kind: 'active' | 'view', key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    if (!key) throw badArgument(`${kind === 'active' ? 'Prepare' : 'View'}: empty snapshot key`);
    const cleanLabels = checkLabels(key, labels);
    const remote = kind === 'active' ? this.hooks.prepare?.(key, parent, cleanLabels) : undefined;
    if (remote) return this.createRemoteLayer(key, remote.commitAs, parent, cleanLabels);
    const record = await this.exclusive(async () => {
      if (this.store.get(key)) throw alreadyExists(`snapshot ${key}: already exists`, { key });
      let parentIds: string[] = [];
      if (parent) {
        const p = this.store.get(parent);
        if (!p) throw notFound(`snapshot ${key}: parent ${parent} does not exist`, { key, parent });
        if (p.kind !== 'committed') throw badArgument(`snapshot ${key}: parent ${parent} is not a committed snapshot (it is ${p.kind})`, { key, parent });
        parentIds = [p.id, ...this.store.ancestors(parent).map((a) => a.record.id)];
      }
      const id = this.allocateId();
      checkMountable(this.layout, key, kind, id, parentIds);
      // build the directory under a temporary name, then rename: a crash leaves an orphan that Cleanup removes
      const tmp = fs.mkdtempSync(path.join(this.layout.snapshotsDir, 'new-'));
      try {
        fs.mkdirSync(path.join(tmp, 'fs'), { mode: 0o755 });
        if (kind === 'active') fs.mkdirSync(path.join(tmp, 'work'), { mode: 0o711 });
        if (parentIds.length) {
          // the upper dir's owner shows as the root's owner: take the nearest layer's (as containerd)
          const st = fs.statSync(this.layout.fs(parentIds[0]));
          fs.lchownSync(path.join(tmp, 'fs'), st.uid, st.gid);
        }
        fs.renameSync(tmp, this.layout.dir(id));
      } catch (e) {
        fs.rmSync(tmp, { recursive: true, force: true });
        throw e;
      }
      const now = Date.now();
      const rec: SnapshotRecord = { id, kind, parent, labels: cleanLabels, createdMs: now, updatedMs: now };
      try {
        this.store.update((m) => {
          m.snapshots[key] = rec;
          m.nextId = Math.max(m.nextId, Number(id) + 1);
        });
      } catch (e) {
        fs.rmSync(this.layout.dir(id), { recursive: true, force: true });
        throw e;
      }
      this.log('debug', `${kind === 'active' ? 'prepared' : 'viewed'} ${key}`, { id, parent });
      return rec;
    });
    try {
      return await this.mountsOf(key, record);
    } catch (e) {
      // a hook refused: the snapshot must not stay behind half-usable
      await this.remove(key).catch(() => undefined);
      throw e;
    }
  }

  /** The committed snapshot `name` of a remote layer (empty directory), then ALREADY_EXISTS for `key`. */
  private async createRemoteLayer(key: string, name: string, parent: string, labels: Record<string, string>): Promise<never> {
    await this.exclusive(async () => {
      if (this.store.get(name)) return; // made by an earlier pull: same answer
      if (parent) {
        const p = this.store.get(parent);
        if (!p) throw notFound(`snapshot ${key}: parent ${parent} does not exist`, { key, parent });
        if (p.kind !== 'committed') throw badArgument(`snapshot ${key}: parent ${parent} is not a committed snapshot (it is ${p.kind})`, { key, parent });
      }
      const id = this.allocateId();
      const tmp = fs.mkdtempSync(path.join(this.layout.snapshotsDir, 'new-'));
      try {
        fs.mkdirSync(path.join(tmp, 'fs'), { mode: 0o755 });
        fs.renameSync(tmp, this.layout.dir(id));
      } catch (e) {
        fs.rmSync(tmp, { recursive: true, force: true });
        throw e;
      }
      const now = Date.now();
      try {
        this.store.update((m) => {
          m.snapshots[name] = { id, kind: 'committed', parent, labels, createdMs: now, updatedMs: now, usage: { size: 0, inodes: 0 } };
          m.nextId = Math.max(m.nextId, Number(id) + 1);
        });
      } catch (e) {
        fs.rmSync(this.layout.dir(id), { recursive: true, force: true });
        throw e;
      }
      this.log('debug', `remote layer ${name} committed for ${key}`, { id, parent });
    });
    throw alreadyExists(`snapshot ${key}: target ${name} already exists (remote layer, fetched lazily)`, { key, target: name });
  }

  /** The next id whose directory is free (a crash after the rename and before the metadata write leaves one taken). */
  private allocateId(): string {
    const live = this.store.liveIds();
    let n = this.store.nextId();
    while (live.has(String(n)) || fs.existsSync(this.layout.dir(String(n)))) n++;
    return String(n);
  }

  async mounts(key: string): Promise<Mount[]> {
    const record = this.store.get(key);
    if (!record) throw notFound(`snapshot ${key}: does not exist`, { key });
    if (record.kind === 'committed') throw failedPrecondition(`snapshot ${key}: is committed, only active snapshots and views have mounts`, { key });
    return this.mountsOf(key, record);
  }

  private async mountsOf(key: string, record: SnapshotRecord): Promise<Mount[]> {
    const ancestors = this.store.ancestors(key);
    const mounts = defaultMounts(this.layout, record.kind, record.id, ancestors.map((a) => a.record.id));
    if (!this.hooks.mounts) return mounts;
    return (await this.hooks.mounts({ key, record, ancestors, layout: this.layout, defaultMounts: mounts })) ?? mounts;
  }

  async commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    if (!name) throw badArgument(`Commit of ${key}: empty snapshot name`, { key });
    const cleanLabels = checkLabels(name, labels);
    await this.exclusive(async () => {
      const active = this.store.get(key);
      if (!active) throw notFound(`snapshot ${key}: does not exist`, { key });
      if (active.kind !== 'active') throw failedPrecondition(`snapshot ${key}: is not active (it is ${active.kind}), only active snapshots can be committed`, { key });
      if (this.store.get(name)) throw alreadyExists(`committed snapshot ${name}: already exists`, { name, key });
      const usage = await diskUsage(this.layout.fs(active.id));
      const now = Date.now();
      this.store.update((m) => {
        delete m.snapshots[key];
        // committed labels replace the active's, they are not inherited (containerd)
        m.snapshots[name] = { id: active.id, kind: 'committed', parent: active.parent, labels: cleanLabels, createdMs: now, updatedMs: now, usage };
      });
      this.log('debug', `committed ${key} as ${name}`, { id: active.id, ...usage });
    });
  }

  async remove(key: string): Promise<void> {
    const removed = await this.exclusive(async () => {
      const record = this.store.get(key);
      if (!record) throw notFound(`snapshot ${key}: does not exist`, { key });
      const children = this.store.children(key);
      if (children.length) {
        throw failedPrecondition(`snapshot ${key}: cannot remove a snapshot with children (${children.length}: ${children.slice(0, 3).join(', ')}${children.length > 3 ? ', …' : ''})`, { key, children });
      }
      this.store.update((m) => {
        delete m.snapshots[key];
      });
      return record;
    });
    if (this.hooks.removed) await this.hooks.removed(key, removed);
    // the metadata no longer names the directory: a failure here only leaves work for Cleanup
    await this.exclusive(async () => {
      try {
        await fs.promises.rm(this.layout.dir(removed.id), { recursive: true, force: true });
      } catch (e) {
        this.log('warn', `removing ${this.layout.dir(removed.id)} of ${key}: ${(e as Error).message}; Cleanup retries`);
      }
    });
    this.log('debug', `removed ${key}`, { id: removed.id });
  }

  /** The stored record of `key` (its directory id), if any. */
  record(key: string): SnapshotRecord | undefined {
    return this.store.get(key);
  }

  stat(key: string): SnapshotInfo {
    const record = this.store.get(key);
    if (!record) throw notFound(`snapshot ${key}: does not exist`, { key });
    return infoOf(key, record);
  }

  /**
   * Update the labels (the only mutable field). Paths: `labels.<key>` sets or (given no or an
   * empty value) removes one label, `labels` replaces all; no paths replaces all.
   */
  async update(name: string, labels: Record<string, string>, paths: string[]): Promise<SnapshotInfo> {
    if (!name) throw badArgument('Update: empty snapshot name');
    return this.exclusive(async () => {
      const record = this.store.get(name);
      if (!record) throw notFound(`snapshot ${name}: does not exist`, { key: name });
      let next: Record<string, string> = { ...record.labels };
      if (paths.length === 0) next = { ...labels };
      for (const p of paths) {
        if (p.startsWith('labels.')) {
          const k = p.slice('labels.'.length);
          if (Object.hasOwn(labels, k)) next[k] = labels[k];
          else delete next[k];
        } else if (p === 'labels') next = { ...labels };
        else throw badArgument(`snapshot ${name}: cannot update field ${JSON.stringify(p)} (only labels and labels.<key>)`, { key: name, path: p });
      }
      const cleanLabels = checkLabels(name, next);
      const updatedMs = Date.now();
      this.store.update((m) => {
        m.snapshots[name] = { ...record, labels: cleanLabels, updatedMs };
      });
      return infoOf(name, { ...record, labels: cleanLabels, updatedMs });
    });
  }

  /** Matching snapshots in batches of LIST_BATCH (a List response each). */
  *list(filters: string[]): Generator<SnapshotInfo[]> {
    const match = compileFilters(filters);
    let batch: SnapshotInfo[] = [];
    for (const [name, record] of this.store.entries()) {
      const info = infoOf(name, record);
      if (!match(info)) continue;
      batch.push(info);
      if (batch.length === LIST_BATCH) {
        yield batch;
        batch = [];
      }
    }
    if (batch.length) yield batch;
  }

  /** Active: what its upper dir uses now; committed: what it used at commit; view: nothing of its own. */
  async usage(key: string): Promise<DiskUsage> {
    const record = this.store.get(key);
    if (!record) throw notFound(`snapshot ${key}: does not exist`, { key });
    if (record.kind === 'active') return diskUsage(this.layout.fs(record.id));
    return record.usage ?? { size: 0, inodes: 0 };
  }

  /** Remove every directory under snapshots/ that no snapshot owns (removed, or left by a crash). */
  cleanup(): Promise<string[]> {
    return this.exclusive(async () => {
      const live = this.store.liveIds();
      const removed: string[] = [];
      for (const name of await fs.promises.readdir(this.layout.snapshotsDir)) {
        if (live.has(name)) continue;
        const dir = path.join(this.layout.snapshotsDir, name);
        try {
          await fs.promises.rm(dir, { recursive: true, force: true });
          removed.push(name);
        } catch (e) {
          this.log('warn', `cleanup: ${dir}: ${(e as Error).message}`);
        }
      }
      if (removed.length) this.log('info', `cleanup removed ${removed.length} directories`, { dirs: removed });
      return removed;
    });
  }
}

function infoOf(name: string, r: SnapshotRecord): SnapshotInfo {
  return { name, parent: r.parent, kind: r.kind, labels: { ...r.labels }, createdMs: r.createdMs, updatedMs: r.updatedMs };
}

/** containerd's label rules: key + value ≤ 4096 bytes; an empty value means "no label". */
function checkLabels(key: string, labels: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels ?? {})) {
    if (!k) throw badArgument(`snapshot ${key}: empty label key`, { key });
    const bytes = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (bytes > MAX_LABEL_BYTES) throw badArgument(`snapshot ${key}: label ${k.slice(0, 64)}: key and value are ${bytes} bytes, more than ${MAX_LABEL_BYTES}`, { key, label: k });
    if (v !== '') out[k] = v;
  }
  return out;
}
