/**
 * What to prefetch for an image: the bootstrap's prefetch table (rafs-v6.md §1.7, a list of nids
 * in pattern order) resolved to chunks, per blob, in table order. A directory entry stands for
 * its whole subtree (depth first, entries in name order), as nydusd's RAFS prefetch treats it;
 * a file contributes its chunks in file order; each chunk is listed once. An entry equal to the
 * root nid means "everything": every chunk of every blob in blob order (one sequential sweep,
 * the cheapest way to fetch a whole blob).
 *
 * Only the inodes the table reaches are decoded, so resolving costs O(listed files), not
 * O(image). A bad entry (a nid outside the inode area, an inode that does not decode) is an
 * error naming the image and the nid; the other entries are still resolved.
 */
import type { RafsBootstrapTables } from '../format/bootstrap-reader';
import {
  EROFS_BLOCK_SIZE as BLK, EROFS_DIRENT_SIZE, Layout, S_IFDIR, S_IFMT, S_IFREG, CHUNK_FORMAT_INDEXES, RAFS_CHUNK_INDEX_SIZE, alignUp,
} from '../format/constants';
import { decodeInode, decodeDirent, decodeChunkIndex, chunkIndexFields, inodeSizeOf, xattrAreaSize, InodeHeader } from '../format/layout';

export interface PrefetchPlan {
  /** ci indices to fetch, per blob index, in table order (no duplicates) */
  chunks: number[][];
  /** every blob in blob order (the table names the root) */
  everything: boolean;
  /** regular files the table resolved to */
  files: number;
  /** one message per bad table entry (naming the image and the nid) */
  errors: string[];
}

/** the most inodes one plan may visit: a loop or a hostile table cannot make it run forever */
const MAX_VISITS = 4_000_000;

class BadEntry extends Error {}

export function resolvePrefetchPlan(bootstrap: Buffer, tables: RafsBootstrapTables, image: string): PrefetchPlan {
  const nblobs = tables.blobs.length;
  const plan: PrefetchPlan = { chunks: tables.blobs.map(() => []), everything: false, files: 0, errors: [] };
  if (tables.prefetchNids.length === 0) return plan;
  const rootNid = tables.sb.rootNid;
  if (tables.prefetchNids.includes(rootNid)) {
    plan.everything = true;
    tables.blobs.forEach((b, i) => {
      plan.chunks[i] = Array.from({ length: b.chunkCount }, (_, k) => k);
    });
    return plan;
  }
  const metaAddr = tables.sb.metaBlkaddr * BLK;
  const maxNid = Math.floor((bootstrap.length - metaAddr - 32) / 32);
  const seen = tables.blobs.map(() => new Set<number>());
  const visited = new Set<number>();
  const chunkSize = tables.chunkSize;

  const header = (nid: number): { h: InodeHeader; tailAt: number } => {
    if (!Number.isSafeInteger(nid) || nid < 0 || nid > maxNid) throw new BadEntry(`nid ${nid} is out of range (the inode area holds nids 0..${Math.max(0, maxNid)})`);
    const off = metaAddr + nid * 32;
    const extended = (bootstrap.readUInt16LE(off) & 1) === 1;
    if (off + inodeSizeOf(extended) > bootstrap.length) throw new BadEntry(`nid ${nid}: the inode runs past the end of the bootstrap`);
    const h = decodeInode(bootstrap.subarray(off, off + inodeSizeOf(extended)));
    if (h.formatRaw & 0xfff0 || (h.layout !== Layout.FLAT_PLAIN && h.layout !== Layout.FLAT_INLINE && h.layout !== Layout.CHUNK_BASED)) {
      throw new BadEntry(`nid ${nid} is not an inode (i_format 0x${h.formatRaw.toString(16)})`);
    }
    return { h, tailAt: off + inodeSizeOf(extended) + xattrAreaSize(h.xattrIcount) };
  };

  const addFile = (nid: number, h: InodeHeader, tailAt: number): void => {
    plan.files++;
    if (h.layout !== Layout.CHUNK_BASED || h.size === 0) return;
    if (!((h.u & 0xffff) & CHUNK_FORMAT_INDEXES)) throw new BadEntry(`nid ${nid}: chunk format 0x${(h.u & 0xffff).toString(16)} is not the index format`);
    const n = Math.ceil(h.size / chunkSize);
    const at = alignUp(tailAt - metaAddr, RAFS_CHUNK_INDEX_SIZE) + metaAddr;
    if (at + n * RAFS_CHUNK_INDEX_SIZE > bootstrap.length) throw new BadEntry(`nid ${nid}: its ${n} chunk indexes run past the end of the bootstrap`);
    for (let k = 0; k < n; k++) {
      const f = chunkIndexFields(decodeChunkIndex(bootstrap, at + k * RAFS_CHUNK_INDEX_SIZE));
      if (f.blobIndex < 0 || f.blobIndex >= nblobs) throw new BadEntry(`nid ${nid}: chunk ${k} names device ${f.blobIndex + 1}, the image has ${nblobs} blob(s)`);
      if (f.ciIndex >= tables.blobs[f.blobIndex].chunkCount) throw new BadEntry(`nid ${nid}: chunk ${k} has ci index ${f.ciIndex} beyond blob ${tables.blobs[f.blobIndex].blobId}`);
      if (!seen[f.blobIndex].has(f.ciIndex)) {
        seen[f.blobIndex].add(f.ciIndex);
        plan.chunks[f.blobIndex].push(f.ciIndex);
      }
    }
  };

  /** the nids of a directory's entries (without '.' and '..'), in name order */
  const children = (nid: number, h: InodeHeader, tailAt: number): number[] => {
    const size = h.size;
    if (size > 1 << 30) throw new BadEntry(`nid ${nid}: directory size ${size} is implausible`);
    const nblocks = Math.ceil(size / BLK);
    const block = (k: number): Buffer => {
      const len = Math.min(BLK, size - k * BLK);
      // FLAT_INLINE keeps the last block inline after the inode; the others live at u * BLK
      const at = h.layout === Layout.FLAT_INLINE && k === nblocks - 1 ? tailAt : h.u * BLK + k * BLK;
      if (at < 0 || at + len > bootstrap.length) throw new BadEntry(`nid ${nid}: directory block ${k} lies outside the bootstrap`);
      return bootstrap.subarray(at, at + len);
    };
    const out: number[] = [];
    for (let k = 0; k < nblocks; k++) {
      const blk = block(k);
      if (blk.length < EROFS_DIRENT_SIZE) throw new BadEntry(`nid ${nid}: directory block ${k} is too short`);
      const n = blk.readUInt16LE(8) / EROFS_DIRENT_SIZE;
      if (!Number.isInteger(n) || n < 1 || n * EROFS_DIRENT_SIZE > blk.length) throw new BadEntry(`nid ${nid}: directory block ${k} has a bad first name offset`);
      for (let i = 0; i < n; i++) {
        const d = decodeDirent(blk, i * EROFS_DIRENT_SIZE);
        // a name ends where the next begins; the block's last one at a NUL or the block end
        let end = i + 1 < n ? blk.readUInt16LE((i + 1) * EROFS_DIRENT_SIZE + 8) : blk.indexOf(0, d.nameoff);
        if (end < 0) end = blk.length;
        if (d.nameoff >= end || end > blk.length) throw new BadEntry(`nid ${nid}: directory block ${k} entry ${i} has a bad name`);
        const len = end - d.nameoff;
        const dots = blk[d.nameoff] === 0x2e && (len === 1 || (len === 2 && blk[d.nameoff + 1] === 0x2e));
        if (!dots) out.push(d.nid);
      }
    }
    return out;
  };

  const walk = (nid: number): void => {
    // iterative depth-first walk: deep trees cannot overflow the stack
    const stack = [nid];
    while (stack.length) {
      const cur = stack.pop()!;
      if (visited.has(cur)) continue;
      visited.add(cur);
      if (visited.size > MAX_VISITS) throw new BadEntry(`more than ${MAX_VISITS} inodes below nid ${nid} (a loop?)`);
      const { h, tailAt } = header(cur);
      const type = h.mode & S_IFMT;
      if (type === S_IFREG) addFile(cur, h, tailAt);
      else if (type === S_IFDIR) {
        const kids = children(cur, h, tailAt);
        for (let i = kids.length - 1; i >= 0; i--) stack.push(kids[i]);
      }
    }
  };

  tables.prefetchNids.forEach((nid, i) => {
    try {
      walk(nid);
    } catch (e) {
      if (!(e instanceof BadEntry) && !(e instanceof RangeError)) throw e;
      plan.errors.push(`image ${image}: prefetch table entry ${i} (nid ${nid}): ${e.message}`);
    }
  });
  return plan;
}
