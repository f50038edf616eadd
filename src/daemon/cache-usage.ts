/**
 * What the cache dir holds: its objects (one sparse file per blob for the fanotify front end,
 * cachefiles' `cache/I<volume>/@xx/D<cookie>` files for fscache), how much of each is present,
 * when each was last read, and how full the cache filesystem is (statfs: space and files).
 *
 * The daemon builds its report from its front end's live view (open blobs, mounts, registered
 * images); `offlineUsage` reads a cache dir no daemon serves (presence maps, SEEK_DATA, atimes).
 * Last access is persisted as the cache file's atime (front ends set it explicitly, so `noatime`
 * mounts do not matter), which is also what cachefiles' own culling tools sort by.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CachedObject } from './interfaces';
import { NydusError } from '../errors';
import { BlobCacheFile, PAGE } from '../kernel/blob-cache-file';
import { fsTypeOf } from '../kernel/fanotify-group';
import { lseek, SEEK_DATA, SEEK_HOLE } from '../sys/native';

export interface FilesystemUsage {
  /** filesystem type name (ext4, xfs …) */
  type: string;
  total_bytes: number;
  free_bytes: number;
  /** what unprivileged writers may still use */
  avail_bytes: number;
  used_bytes: number;
  /** used / (used + avail), as df(1) shows it */
  used_ratio: number;
  files_total: number;
  files_free: number;
  files_used: number;
  files_used_ratio: number;
}

export function filesystemUsage(dir: string): FilesystemUsage {
  const s = fs.statfsSync(dir);
  const used = (s.blocks - s.bfree) * s.bsize;
  const avail = s.bavail * s.bsize;
  const filesUsed = s.files - s.ffree;
  let type: string;
  try {
    type = fsTypeOf(dir);
  } catch {
    type = `0x${s.type.toString(16)}`;
  }
  return {
    type, total_bytes: s.blocks * s.bsize, free_bytes: s.bfree * s.bsize, avail_bytes: avail, used_bytes: used,
    used_ratio: used + avail > 0 ? used / (used + avail) : 0,
    files_total: s.files, files_free: s.ffree, files_used: filesUsed, files_used_ratio: s.files > 0 ? filesUsed / s.files : 0,
  };
}

/** [start, end) byte ranges of the set bits of a page map. */
export function rangesOfBits(bits: Uint8Array, pages: number, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let start = -1;
  for (let p = 0; p <= pages; p++) {
    const on = p < pages && (bits[p >> 3] & (1 << (p & 7))) !== 0;
    if (on && start < 0) start = p;
    else if (!on && start >= 0) {
      out.push([start * PAGE, Math.min(p * PAGE, size)]);
      start = -1;
    }
  }
  return out;
}

/** Data ranges of a file by SEEK_DATA / SEEK_HOLE. */
export function dataRanges(fd: number, size: number, what: string): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let pos = 0;
  while (pos < size) {
    const d = lseek(fd, pos, SEEK_DATA, what);
    if (d < 0 || d >= size) break;
    const h = lseek(fd, d, SEEK_HOLE, what);
    const end = h < 0 ? size : Math.min(h, size);
    out.push([d, end]);
    pos = end;
  }
  return out;
}

const sum = (r: Array<[number, number]>): number => r.reduce((n, [a, b]) => n + (b - a), 0);

/** Objects of a fanotify cache dir that no process has open: `<dir>/blobs/*` + presence maps. */
export function scanFanotifyLayout(dir: string, skip: Set<string> = new Set()): CachedObject[] {
  const blobs = path.join(dir, 'blobs');
  let names: string[];
  try {
    names = fs.readdirSync(blobs);
  } catch {
    return [];
  }
  const out: CachedObject[] = [];
  for (const id of names) {
    if (skip.has(id) || id.startsWith('.')) continue;
    const file = path.join(blobs, id);
    let st: fs.Stats;
    try {
      st = fs.statSync(file);
    } catch {
      continue;
    }
    if (!st.isFile()) continue;
    const map = BlobCacheFile.peekMap(path.join(dir, 'presence', id));
    // a map for another size is not this file's: nothing counts as present
    const ranges = map && map.size === st.size ? rangesOfBits(map.bits, map.pages, map.size) : [];
    out.push({
      id, path: file, size: st.size, diskBytes: st.blocks * 512, presentBytes: sum(ranges), lastAccess: st.atimeMs, inUse: false,
      presentRanges: () => ranges,
    });
  }
  return out;
}

/** Volumes and cookie files of a cachefiles cache dir: `<dir>/cache/I<volume>/@xx/D<cookie>`. */
export function scanCachefilesLayout(dir: string): CachedObject[] {
  const root = path.join(dir, 'cache');
  const out: CachedObject[] = [];
  let vols: string[];
  try {
    vols = fs.readdirSync(root).filter((n) => n.startsWith('I'));
  } catch {
    return out;
  }
  for (const v of vols) {
    const volume = v.slice(1).replace(/^erofs,/, '');
    let fans: string[];
    try {
      fans = fs.readdirSync(path.join(root, v)).filter((n) => n.startsWith('@'));
    } catch {
      continue;
    }
    for (const f of fans) {
      let files: string[];
      try {
        files = fs.readdirSync(path.join(root, v, f));
      } catch {
        continue;
      }
      for (const n of files) {
        if (!n.startsWith('D')) continue; // other key encodings: not names we register
        const file = path.join(root, v, f, n);
        let fd: number;
        try {
          fd = fs.openSync(file, fs.constants.O_RDONLY);
        } catch {
          continue;
        }
        try {
          const st = fs.fstatSync(fd);
          if (!st.isFile()) continue;
          const ranges = dataRanges(fd, st.size, file);
          out.push({
            id: n.slice(1), volume, path: file, size: st.size, diskBytes: st.blocks * 512, presentBytes: sum(ranges), lastAccess: st.atimeMs, inUse: false,
            presentRanges: () => ranges,
          });
        } catch {
          // vanished or unreadable: not counted
        } finally {
          fs.closeSync(fd);
        }
      }
    }
  }
  return out;
}

/** Which layout a cache dir has: cachefiles' `cache/` + `graveyard/`, or our `blobs/`. */
export function detectLayout(dir: string): 'fscache' | 'fanotify' | undefined {
  if (fs.existsSync(path.join(dir, 'cache')) && fs.existsSync(path.join(dir, 'graveyard'))) return 'fscache';
  if (fs.existsSync(path.join(dir, 'blobs'))) return 'fanotify';
  return undefined;
}

export interface BlobUsage {
  blob_id: string;
  /** fscache: the volume (domain or fsid) of the object */
  volume?: string;
  /** 'blob', 'bootstrap' (fscache: an image's bootstrap object), or 'unknown' (offline, or garbage) */
  kind: 'blob' | 'bootstrap' | 'unknown';
  path: string;
  size: number;
  disk_bytes: number;
  present_bytes: number;
  pages_present: number;
  pages: number;
  /** chunks fully present / in the blob (null: not known without the image) */
  chunks_present: number | null;
  chunk_count: number | null;
  /** ISO time of the last read served from the cache file, null if unknown */
  last_access: string | null;
  /** open for a mount */
  mounted: boolean;
  /** referenced by a registered image (GC keeps it) */
  referenced: boolean;
  images: string[];
}

export interface ImageUsage {
  id: string;
  domain_id: string;
  blobs: string[];
  disk_bytes: number;
  chunks_present: number | null;
  chunk_count: number | null;
  last_access: string | null;
  mounted: boolean;
}

export interface CacheUsage {
  cache_dir: string;
  frontend: string | null;
  /** 'daemon': the serving daemon's view; 'offline': read from the dir, no daemon */
  source: 'daemon' | 'offline';
  generated_at: string;
  filesystem: FilesystemUsage;
  totals: { blobs: number; disk_bytes: number; present_bytes: number; unreferenced_blobs: number; unreferenced_bytes: number; mounted_blobs: number };
  blobs: BlobUsage[];
  images: ImageUsage[];
  /** the daemon's culling configuration and state */
  watermarks?: unknown;
}

const iso = (ms: number): string | null => (ms > 0 ? new Date(ms).toISOString() : null);

/** What the usage report needs to know about one object beyond the front end's view. */
export interface ObjectContext {
  kind: BlobUsage['kind'];
  images: string[];
  /** [present, total] chunks, when the image's chunk table tells */
  chunks?: [number, number];
}

export function blobUsage(o: CachedObject, ctx: ObjectContext): BlobUsage {
  return {
    blob_id: o.id, ...(o.volume !== undefined ? { volume: o.volume } : {}), kind: ctx.kind, path: o.path, size: o.size,
    disk_bytes: o.diskBytes, present_bytes: o.presentBytes, pages_present: Math.ceil(o.presentBytes / PAGE), pages: Math.ceil(o.size / PAGE),
    chunks_present: ctx.chunks ? ctx.chunks[0] : null, chunk_count: ctx.chunks ? ctx.chunks[1] : null,
    last_access: iso(o.lastAccess), mounted: o.inUse, referenced: ctx.images.length > 0, images: ctx.images,
  };
}

export function totalsOf(blobs: BlobUsage[]): CacheUsage['totals'] {
  const unref = blobs.filter((b) => !b.referenced);
  return {
    blobs: blobs.length, disk_bytes: blobs.reduce((n, b) => n + b.disk_bytes, 0), present_bytes: blobs.reduce((n, b) => n + b.present_bytes, 0),
    unreferenced_blobs: unref.length, unreferenced_bytes: unref.reduce((n, b) => n + b.disk_bytes, 0), mounted_blobs: blobs.filter((b) => b.mounted).length,
  };
}

/** The usage of a cache dir no daemon serves (nothing is registered, so nothing is referenced). */
export function offlineUsage(dir: string): CacheUsage {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `--cache-dir ${dir}: not an existing directory`, { dir });
  }
  const layout = detectLayout(dir);
  const objs = layout === 'fscache' ? scanCachefilesLayout(dir) : layout === 'fanotify' ? scanFanotifyLayout(dir) : [];
  const blobs = objs.map((o) => blobUsage(o, { kind: 'unknown', images: [] })).sort((a, b) => a.blob_id.localeCompare(b.blob_id));
  return {
    cache_dir: dir, frontend: layout ?? null, source: 'offline', generated_at: new Date().toISOString(), filesystem: filesystemUsage(dir),
    totals: totalsOf(blobs), blobs, images: [],
  };
}
