/**
 * The snapshotter's metadata: one JSON file, `<root>/metadata.json`, rewritten whole on every
 * change (temp file + fsync + rename, then fsync of the directory). A crash at any point leaves
 * either the old or the new file, never a torn one; a reply is sent only after the new file is
 * durable, so every snapshot containerd was told about survives. A few hundred snapshots make a
 * file of some 100 KiB: rewriting it is cheaper than a database dependency.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NydusError } from '../errors';
import { writeFileAtomic } from '../util/atomic-file';

export type SnapshotKind = 'active' | 'view' | 'committed';

export interface SnapshotRecord {
  /** directory name under <root>/snapshots (short: it is repeated in every lowerdir option) */
  id: string;
  kind: SnapshotKind;
  /** name of the committed parent; '' for none */
  parent: string;
  labels: Record<string, string>;
  createdMs: number;
  updatedMs: number;
  /** committed snapshots: disk usage of their fs dir, measured at commit */
  usage?: { size: number; inodes: number };
}

export interface Metadata {
  version: 1;
  /** the next directory id to hand out (ids are never reused) */
  nextId: number;
  /** by key (active, view) or name (committed) */
  snapshots: Record<string, SnapshotRecord>;
}

const KINDS: readonly SnapshotKind[] = ['active', 'view', 'committed'];

export class MetadataStore {
  readonly file: string;
  private state: Metadata;

  private constructor(file: string, state: Metadata) {
    this.file = file;
    this.state = state;
  }

  /** Load `<root>/metadata.json` (an absent file is an empty store); leftovers of an interrupted write are removed. */
  static open(root: string): MetadataStore {
    const file = path.join(root, 'metadata.json');
    for (const name of fs.readdirSync(root)) {
      if (name.startsWith('.metadata.json.') && name.endsWith('.tmp')) fs.rmSync(path.join(root, name), { force: true });
    }
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return new MetadataStore(file, { version: 1, nextId: 1, snapshots: {} });
      throw new NydusError('ERR_IO', `${file}: ${(e as Error).message}`, { file });
    }
    return new MetadataStore(file, parseMetadata(file, text));
  }

  get(key: string): SnapshotRecord | undefined {
    return Object.hasOwn(this.state.snapshots, key) ? this.state.snapshots[key] : undefined;
  }

  entries(): [string, SnapshotRecord][] {
    return Object.entries(this.state.snapshots);
  }

  nextId(): number {
    return this.state.nextId;
  }

  /** Ids of every snapshot (the directories that must stay). */
  liveIds(): Set<string> {
    return new Set(Object.values(this.state.snapshots).map((r) => r.id));
  }

  /** Keys of the snapshots whose parent is `name`. */
  children(name: string): string[] {
    return this.entries().filter(([, r]) => r.parent === name).map(([k]) => k);
  }

  /** `key`'s ancestors, nearest first; a missing link is a corrupt store. */
  ancestors(key: string): { name: string; record: SnapshotRecord }[] {
    const out: { name: string; record: SnapshotRecord }[] = [];
    let parent = this.get(key)?.parent ?? '';
    while (parent) {
      const record = this.get(parent);
      if (!record) throw new NydusError('ERR_IO', `${this.file}: snapshot ${key}: ancestor ${parent} is missing`, { key, parent });
      if (out.length > 10_000) throw new NydusError('ERR_IO', `${this.file}: snapshot ${key}: parent chain loops`, { key });
      out.push({ name: parent, record });
      parent = record.parent;
    }
    return out;
  }

  /**
   * Apply `change` to a copy of the metadata and make it durable; only then does the store see
   * it. A failed write leaves the store (and the file) as they were.
   */
  update<T>(change: (draft: Metadata) => T): T {
    const draft = structuredClone(this.state);
    const result = change(draft);
    writeFileAtomic(this.file, JSON.stringify(draft));
    fsyncDir(path.dirname(this.file));
    this.state = draft;
    return result;
  }
}

/** The rename is durable only once the directory entry is. */
function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function parseMetadata(file: string, text: string): Metadata {
  const bad = (why: string): NydusError => new NydusError('ERR_IO', `${file}: not snapshotter metadata: ${why}`, { file });
  let m: Metadata;
  try {
    m = JSON.parse(text) as Metadata;
  } catch (e) {
    throw bad((e as Error).message);
  }
  if (m?.version !== 1) throw bad(`version ${JSON.stringify(m?.version)}, expected 1`);
  if (!Number.isSafeInteger(m.nextId) || m.nextId < 1) throw bad(`nextId ${JSON.stringify(m.nextId)}`);
  if (typeof m.snapshots !== 'object' || m.snapshots === null) throw bad('no snapshots table');
  for (const [key, r] of Object.entries(m.snapshots)) {
    if (!KINDS.includes(r.kind) || typeof r.id !== 'string' || !/^[0-9]+$/.test(r.id) || typeof r.parent !== 'string') throw bad(`snapshot ${key}: bad record ${JSON.stringify(r)}`);
    if (r.parent && !Object.hasOwn(m.snapshots, r.parent)) throw bad(`snapshot ${key}: parent ${r.parent} is missing`);
  }
  return m;
}
