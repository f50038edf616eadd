/**
 * From a daemon access trace (blob ranges and opened nids, in kernel order — see
 * src/kernel/access-trace.ts) to what a workload read from an image: files and byte ranges, in
 * access order. Written two ways:
 *   - the prefetch list: one absolute path per line, the files whose data was read, in the order
 *     of their first read (what `create --prefetch-patterns` and `merge --prefetch-patterns` take);
 *   - the access trace JSON (`AccessList`): every file opened or read with its merged ranges, and
 *     the reads in order (what `create|convert --prefetch-list` and `optimize --trace` take to
 *     put exactly those chunks first, in that order).
 * Both are read back by `readAccessOrder`, which also accepts a plain path list (whole files).
 *
 * Paths: tree paths are raw name bytes as latin1 strings (src/tree/node.ts). In the list file
 * they are the raw bytes; in JSON `path` is their UTF-8 decoding, and names that are not valid
 * UTF-8 carry `path_hex` (the raw bytes) as well.
 */
import * as fs from 'node:fs';
import * as crypto from 'node:crypto';
import type { MountTrace } from '../kernel/access-trace';
import type { RafsBootstrap } from '../format/bootstrap-reader';
import { Inode, TreeNode, isDir, isReg, lookupPath, walkTree } from '../tree/node';
import { EROFS_BLOCK_SIZE, alignUp } from '../format/constants';
import { NydusError, invalidArgument } from '../errors';
import { writeFileAtomic } from '../util/atomic-file';

export const ACCESS_LIST_FORMAT = 'nydus-ts-access-trace';

export interface AccessedFile {
  path: string;
  /** raw name bytes, hex; only for paths that are not valid UTF-8 */
  path_hex?: string;
  size: number;
  /** opened during the trace (an open raises an event even when no data is read) */
  opened: boolean;
  /** opened for execution (execve, the ELF interpreter) */
  exec: boolean;
  /** bytes of the file read (merged ranges; as the kernel asked for them, readahead included) */
  bytes: number;
  /** [offset, length], merged and sorted */
  ranges: Array<[number, number]>;
}

export interface AccessRead {
  path: string;
  path_hex?: string;
  offset: number;
  length: number;
}

export interface AccessList {
  format: typeof ACCESS_LIST_FORMAT;
  version: 1;
  /** the image the trace was recorded on */
  image: { bootstrap_sha256: string; blob_ids: string[]; reference?: string };
  /** files in the order of their first access (open or read) */
  files: AccessedFile[];
  /** reads in access order, consecutive pieces of one file merged */
  reads: AccessRead[];
  stats: {
    events: number;
    opens: number;
    read_events: number;
    files_opened: number;
    files_read: number;
    read_bytes: number;
    /** read events (or parts) that no file's chunk covers (blob padding, metadata-only reads) */
    unmapped_reads: number;
    /** opens of inodes that are not regular files (directories …) */
    other_opens: number;
    /** events the daemon did not keep (its per-trace limit) */
    dropped: number;
  };
}

/** One read as the relayout consumes it: a latin1 tree path and a byte range. */
export interface OrderedRead {
  path: string;
  offset: number;
  length: number;
}

/** What `readAccessOrder` returns: reads in order and the files for the prefetch table. */
export interface AccessOrder {
  reads: OrderedRead[];
  /** latin1 tree paths, in first-read order (files with data) */
  prefetchPaths: string[];
  /** where it came from, for messages */
  source: string;
  kind: 'trace' | 'list';
}

function jsonPath(latin1: string): { path: string; path_hex?: string } {
  const raw = Buffer.from(latin1, 'latin1');
  const utf8 = raw.toString('utf8');
  return Buffer.from(utf8, 'utf8').equals(raw) ? { path: utf8 } : { path: utf8, path_hex: raw.toString('hex') };
}

function latin1Path(p: { path: string; path_hex?: string }, where: string): string {
  if (p.path_hex !== undefined) {
    if (typeof p.path_hex !== 'string' || !/^([0-9a-f]{2})*$/.test(p.path_hex)) throw invalidArgument(`${where}: path_hex ${JSON.stringify(p.path_hex)} is not hex`);
    return Buffer.from(p.path_hex, 'hex').toString('latin1');
  }
  if (typeof p.path !== 'string' || !p.path.startsWith('/')) throw invalidArgument(`${where}: path ${JSON.stringify(p.path)} is not an absolute path`);
  return Buffer.from(p.path, 'utf8').toString('latin1');
}

interface Owner {
  inode: Inode;
  fileOffset: number;
}
interface ChunkSpan {
  start: number;
  /** uncompressed size (the 4 KiB padding after it belongs to no file) */
  size: number;
  owners: Owner[];
}

/** Per blob: the chunks files use, by uncompressed offset, and which files use each. */
function chunkSpans(boot: RafsBootstrap, inodes: Inode[]): ChunkSpan[][] {
  const byStart: Map<number, ChunkSpan>[] = boot.blobs.map(() => new Map());
  for (const inode of inodes) {
    for (const c of inode.chunks) {
      const m = byStart[c.blobIndex];
      if (!m) continue;
      let s = m.get(c.uncompressedOffset);
      if (!s) m.set(c.uncompressedOffset, (s = { start: c.uncompressedOffset, size: c.uncompressedSize, owners: [] }));
      s.owners.push({ inode, fileOffset: c.fileOffset });
    }
  }
  return byStart.map((m) => [...m.values()].sort((a, b) => a.start - b.start));
}

/** index of the first span that ends after `off` */
function firstSpanAfter(spans: ChunkSpan[], off: number): number {
  let lo = 0;
  let hi = spans.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (spans[mid].start + alignUp(Math.max(spans[mid].size, 1), EROFS_BLOCK_SIZE) <= off) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Add [off, off+len) to sorted, merged ranges. */
function addRange(ranges: Array<[number, number]>, off: number, len: number): void {
  let s = off;
  let e = off + len;
  const out: Array<[number, number]> = [];
  let placed = false;
  for (const [o, l] of ranges) {
    if (o + l < s) out.push([o, l]);
    else if (e < o) {
      if (!placed) {
        out.push([s, e - s]);
        placed = true;
      }
      out.push([o, l]);
    } else {
      s = Math.min(s, o);
      e = Math.max(e, o + l);
    }
  }
  if (!placed) out.push([s, e - s]);
  ranges.splice(0, ranges.length, ...out);
}

/**
 * Map a daemon trace onto the image it was recorded on. A chunk that several files share
 * (identical content) is attributed to the one the reading process opened last, else to the one
 * any process opened last, else to the first in tree order.
 */
export function resolveTrace(trace: MountTrace, boot: RafsBootstrap, bootstrapBytes: Buffer, reference?: string): AccessList {
  const pathOf = new Map<Inode, string>();
  const byNid = new Map<number, TreeNode>();
  for (const { node, path } of walkTree(boot.root)) {
    if (pathOf.has(node.inode)) continue;
    pathOf.set(node.inode, path);
    const nid = boot.nidOf.get(node.inode);
    if (nid !== undefined) byNid.set(nid, node);
  }
  const regular = [...pathOf.keys()].filter(isReg);
  const spans = chunkSpans(boot, regular);
  const blobIndex = new Map(boot.blobs.map((b, i) => [b.blobId, i]));
  for (const id of trace.blob_ids) {
    if (!blobIndex.has(id)) throw invalidArgument(`the trace of ${trace.mountpoint} names blob ${id}, which bootstrap ${trace.bootstrap} does not have (a trace of another image?)`);
  }

  const files = new Map<Inode, AccessedFile>();
  const fileOf = (inode: Inode): AccessedFile => {
    let f = files.get(inode);
    if (!f) files.set(inode, (f = { ...jsonPath(pathOf.get(inode)!), size: inode.size, opened: false, exec: false, bytes: 0, ranges: [] }));
    return f;
  };
  const lastOpen = new Map<Inode, { seq: number; pid: number }>();
  const reads: AccessRead[] = [];
  let last: { inode: Inode; read: AccessRead } | undefined;
  const st = { events: trace.events.length, opens: 0, read_events: 0, files_opened: 0, files_read: 0, read_bytes: 0, unmapped_reads: 0, other_opens: 0, dropped: trace.dropped };

  const pick = (owners: Owner[], pid: number): Owner => {
    if (owners.length === 1) return owners[0];
    let best: Owner | undefined;
    let bestKey = -1;
    for (const o of owners) {
      const lo = lastOpen.get(o.inode);
      if (!lo) continue;
      // an open by the reading process beats any other open
      const key = (lo.pid === pid ? 2 ** 40 : 0) + lo.seq;
      if (key > bestKey) {
        bestKey = key;
        best = o;
      }
    }
    return best ?? owners[0];
  };

  for (const ev of trace.events) {
    if (ev.t === 'open') {
      st.opens++;
      const node = byNid.get(ev.ino);
      if (!node || !isReg(node.inode)) {
        st.other_opens++;
        continue;
      }
      lastOpen.set(node.inode, { seq: ev.seq, pid: ev.pid });
      const f = fileOf(node.inode);
      f.opened = true;
      f.exec ||= ev.exec;
      continue;
    }
    st.read_events++;
    const bi = blobIndex.get(ev.blob);
    const list = bi === undefined ? [] : spans[bi];
    const end = ev.offset + ev.length;
    let mapped = false;
    for (let i = firstSpanAfter(list, ev.offset); i < list.length && list[i].start < end; i++) {
      const s = list[i];
      const a = Math.max(ev.offset, s.start);
      const b = Math.min(end, s.start + s.size);
      if (a >= b) continue;
      mapped = true;
      const o = pick(s.owners, ev.pid);
      const off = o.fileOffset + (a - s.start);
      const len = b - a;
      const f = fileOf(o.inode);
      addRange(f.ranges, off, len);
      if (last && last.inode === o.inode && off >= last.read.offset && off <= last.read.offset + last.read.length) {
        last.read.length = Math.max(last.read.length, off + len - last.read.offset);
      } else {
        const r: AccessRead = { ...jsonPath(pathOf.get(o.inode)!), offset: off, length: len };
        reads.push(r);
        last = { inode: o.inode, read: r };
      }
    }
    if (!mapped) st.unmapped_reads++;
  }
  const out = [...files.values()];
  for (const f of out) {
    f.bytes = f.ranges.reduce((n, [, l]) => n + l, 0);
    if (f.opened) st.files_opened++;
    if (f.bytes > 0) st.files_read++;
    st.read_bytes += f.bytes;
  }
  return {
    format: ACCESS_LIST_FORMAT,
    version: 1,
    image: { bootstrap_sha256: crypto.createHash('sha256').update(bootstrapBytes).digest('hex'), blob_ids: boot.blobs.map((b) => b.blobId), ...(reference ? { reference } : {}) },
    files: out,
    reads,
    stats: st,
  };
}

/** The files whose data was read, in the order of their first read (latin1 tree paths). */
export function prefetchPathsOf(list: Pick<AccessList, 'reads'>): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  list.reads.forEach((r, i) => {
    const p = latin1Path(r, `reads[${i}]`);
    if (!seen.has(p)) {
      seen.add(p);
      out.push(p);
    }
  });
  return out;
}

/** The order a relayout follows: the trace's reads, and its files for the prefetch table. */
export function accessOrderOf(list: Pick<AccessList, 'reads'>, source: string): AccessOrder {
  const reads = list.reads.map((r, i) => ({ path: latin1Path(r, `${source}: reads[${i}]`), offset: r.offset, length: r.length }));
  return { reads, prefetchPaths: prefetchPathsOf(list), source, kind: 'trace' };
}

/** The prefetch list file: raw path bytes, one per line. */
export function writePrefetchList(file: string, list: AccessList): void {
  const lines = prefetchPathsOf(list).map((p) => Buffer.concat([Buffer.from(p, 'latin1'), Buffer.from('\n')]));
  writeFileAtomic(file, Buffer.concat(lines));
}

/** The trace JSON: one file and one read per line (readable, diffable, still one JSON document). */
export function formatAccessList(list: AccessList): string {
  const rows = (xs: unknown[]): string => (xs.length ? `[\n  ${xs.map((x) => JSON.stringify(x)).join(',\n  ')}\n ]` : '[]');
  const { files, reads, ...head } = list;
  const top = Object.entries(head).map(([k, v]) => ` ${JSON.stringify(k)}: ${JSON.stringify(v)}`);
  return `{\n${[...top, ` "files": ${rows(files)}`, ` "reads": ${rows(reads)}`].join(',\n')}\n}\n`;
}

export function writeAccessList(file: string, list: AccessList): void {
  writeFileAtomic(file, formatAccessList(list));
}

function validateAccessList(j: unknown, where: string): AccessList {
  const l = j as AccessList;
  if (!l || typeof l !== 'object' || l.format !== ACCESS_LIST_FORMAT) throw invalidArgument(`${where}: not a nydus-ts access trace (no "format": "${ACCESS_LIST_FORMAT}")`);
  if (l.version !== 1) throw invalidArgument(`${where}: access trace version ${JSON.stringify(l.version)} (this nydus-ts reads version 1)`);
  if (!Array.isArray(l.reads)) throw invalidArgument(`${where}: "reads" is not an array`);
  l.reads.forEach((r, i) => {
    if (!r || typeof r !== 'object' || !Number.isSafeInteger(r.offset) || r.offset < 0 || !Number.isSafeInteger(r.length) || r.length <= 0) {
      throw invalidArgument(`${where}: reads[${i}] must be {"path", "offset" ≥ 0, "length" > 0}`);
    }
  });
  return l;
}

/**
 * Read `--prefetch-list` / `--trace` input: an access trace JSON (ranges in order) or a plain
 * list of absolute paths, one per line ('#' comments; each path read whole, in list order; a
 * directory stands for the files under it). Paths are checked against the image by the caller.
 */
export function readAccessOrder(file: string): AccessOrder {
  let raw: Buffer;
  try {
    raw = fs.readFileSync(file === '-' ? 0 : file);
  } catch (e) {
    throw invalidArgument(`prefetch list ${file}: ${(e as Error).message}`, { path: file });
  }
  const text = raw.toString('utf8');
  if (text.trimStart().startsWith('{')) {
    let j: unknown;
    try {
      j = JSON.parse(text);
    } catch (e) {
      throw invalidArgument(`prefetch list ${file}: not valid JSON (${(e as Error).message})`, { path: file });
    }
    const l = validateAccessList(j, `prefetch list ${file}`);
    if (l.reads.length === 0) throw invalidArgument(`prefetch list ${file}: the trace holds no reads (the workload read nothing from the image)`, { path: file });
    return accessOrderOf(l, `prefetch list ${file}`);
  }
  const paths: string[] = [];
  let lineNo = 0;
  for (const line of raw.toString('latin1').split('\n')) {
    lineNo++;
    const p = line.replace(/\r$/, '').trim();
    if (!p || p.startsWith('#')) continue;
    if (!p.startsWith('/')) throw invalidArgument(`prefetch list ${file}:${lineNo}: "${p}" must be an absolute path`, { path: file });
    paths.push(p);
  }
  if (paths.length === 0) throw invalidArgument(`prefetch list ${file}: no paths in it`, { path: file });
  return { reads: paths.map((p) => ({ path: p, offset: 0, length: Number.MAX_SAFE_INTEGER })), prefetchPaths: paths, source: file, kind: 'list' };
}

/**
 * Expand an order onto one tree: a path naming a directory becomes the regular files under it
 * (tree order); reads of paths the tree lacks are reported, not fatal (the image may differ a
 * little from the one traced). Returns the reads of regular files, clipped to their sizes.
 */
export function expandOrder(order: AccessOrder, root: TreeNode): { reads: Array<{ inode: Inode; path: string; offset: number; length: number }>; missing: string[] } {
  const out: Array<{ inode: Inode; path: string; offset: number; length: number }> = [];
  const missing: string[] = [];
  for (const r of order.reads) {
    const node = lookupPath(root, r.path);
    if (!node) {
      if (!missing.includes(r.path)) missing.push(r.path);
      continue;
    }
    if (isDir(node.inode)) {
      const base = r.path.replace(/\/+$/, '') || '/';
      for (const { node: n, path } of walkTree(node, base)) if (isReg(n.inode) && n.inode.size > 0) out.push({ inode: n.inode, path, offset: 0, length: n.inode.size });
      continue;
    }
    if (!isReg(node.inode) || r.offset >= node.inode.size) continue;
    out.push({ inode: node.inode, path: r.path, offset: r.offset, length: Math.min(r.length, node.inode.size - r.offset) });
  }
  return { reads: out, missing };
}

/** A trace with no read is no basis for a prefetch list. */
export function assertNotEmpty(list: AccessList, what: string): void {
  if (list.reads.length === 0) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `${what}: the workload read nothing from the image (${list.stats.opens} opens, ${list.stats.read_events} read events): nothing to prefetch; was the mount used before the trace started (cached pages raise no events)?`, { stats: list.stats });
  }
}
