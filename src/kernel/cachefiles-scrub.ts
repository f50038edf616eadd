/**
 * Scrub targets of the fscache front end: cachefiles' backing files, `<dir>/cache/I<volume>/@xx/
 * D<blob id>` (spec kernel.md §1.14). The daemon may read and punch them: the kernel reads them
 * with O_DIRECT, checks presence with SEEK_DATA/SEEK_HOLE on each read and keeps no other map
 * (§1.9, §1.13), so a punched range is a hole that the next read turns into a READ request. The
 * spec's warning is about creating, renaming, deleting files and changing xattrs, none of which
 * this does.
 *
 * What cannot be scrubbed: an object created during this mount lives in an unlinked O_TMPFILE
 * until its cookie is withdrawn (unmount), so no path reaches it (the anonymous fd is write-only);
 * a file whose xattr does not match the blob is stale (cachefiles replaces it on the next OPEN).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NydusError } from '../errors';
import type { BlobSession, CacheWriter, ScrubTarget } from '../daemon/interfaces';
import { cookieFanout, cookieFileName } from './cachefiles';
import { lgetxattr, lseek, punchHole, SEEK_DATA, SEEK_HOLE } from '../sys/native';

const PAGE = 4096;
const OBJECT_XATTR = 'user.CacheFiles.cache';
/** cachefiles' `content` value that marks a file stale */
const CONTENT_DIRTY = 4;

export interface CachefilesScrubContext {
  /** `<dir>/cache` */
  cacheRoot: string;
  /** the open blob objects of (volume, cookie): their anonymous fd and session */
  openObjects(volume: string, cookie: string): Array<{ fd: number; session: BlobSession }>;
  /** a session for a blob no object has open (chunk index and digests only) */
  openBlob?(blobId: string, writer: CacheWriter): BlobSession;
}

/** Data ranges by SEEK_DATA/SEEK_HOLE, at most `limit` of them (a fingerprint of the file). */
function dataRanges(fd: number, size: number, limit: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let pos = 0;
  while (pos < size && out.length < limit) {
    const d = lseek(fd, pos, SEEK_DATA);
    if (d < 0 || d >= size) break;
    const h = lseek(fd, d, SEEK_HOLE);
    const e = h < 0 ? size : Math.min(h, size);
    out.push([d, e]);
    pos = e;
  }
  return out;
}

/** Why the file's object xattr does not describe a current cache file of `size` bytes, or undefined. */
function xattrProblem(file: string, size: number): string | undefined {
  let x: Buffer;
  try {
    x = lgetxattr(file, OBJECT_XATTR);
  } catch {
    return `it has no ${OBJECT_XATTR} xattr`;
  }
  if (x.length < 18) return `its ${OBJECT_XATTR} xattr is ${x.length} bytes`;
  const objectSize = x.readBigUInt64BE(0);
  if (objectSize !== BigInt(size)) return `its xattr names object size ${objectSize}, the blob's is ${size} (stale)`;
  if (x[16] !== 1) return `its xattr type is ${x[16]}, not data`;
  if (x[17] === CONTENT_DIRTY) return 'its xattr marks it dirty (stale)';
  return undefined;
}

const noWrites: CacheWriter = {
  write: async () => {
    throw new NydusError('ERR_DAEMON', 'a scrub session writes nothing');
  },
};

export async function cachefilesScrubTargets(
  blobs: Array<{ blobId: string; volumes: string[] }>, ctx: CachefilesScrubContext,
): Promise<{ targets: ScrubTarget[]; skipped: Array<{ blob_id: string; reason: string }> }> {
  const targets: ScrubTarget[] = [];
  const skipped: Array<{ blob_id: string; reason: string }> = [];
  for (const { blobId, volumes } of blobs) {
    for (const vol of new Set(volumes)) {
      const volumeKey = `erofs,${vol}`;
      const skip = (reason: string): void => {
        skipped.push({ blob_id: blobId, reason: `volume ${volumeKey}: ${reason}` });
      };
      let file: string;
      try {
        file = path.join(ctx.cacheRoot, `I${volumeKey}`, cookieFanout(volumeKey, blobId), cookieFileName(blobId));
      } catch (e) {
        skip((e as Error).message);
        continue;
      }
      const open = ctx.openObjects(vol, blobId);
      if (!fs.existsSync(file)) {
        skip(open.length
          ? 'cachefiles keeps an object created during this mount in an unlinked temporary file until the image is unmounted; it can be scrubbed after a remount'
          : 'nothing cached (no cache file)');
        continue;
      }
      let session = open[0]?.session;
      let own: BlobSession | undefined;
      if (!session) {
        if (!ctx.openBlob) {
          skip('no session can be opened for it');
          continue;
        }
        try {
          session = own = ctx.openBlob(blobId, noWrites);
        } catch (e) {
          skip((e as Error).message);
          continue;
        }
      }
      let fd = -1;
      let wfd = -1;
      const closeAll = async (): Promise<void> => {
        for (const f of [fd, wfd]) if (f >= 0) fs.closeSync(f);
        fd = wfd = -1;
        await own?.close();
      };
      try {
        const bad = xattrProblem(file, session.size);
        if (bad) throw new NydusError('ERR_DAEMON', `${file}: ${bad}`);
        fd = fs.openSync(file, fs.constants.O_RDONLY);
        if (open.length) {
          // the object in use must be this file, not a replacement in a temporary file (a fill
          // between the two looks may change the ranges: look again before deciding)
          const same = (): boolean => JSON.stringify(dataRanges(fd, session!.size, 64)) === JSON.stringify(dataRanges(open[0].fd, session!.size, 64));
          if (!same() && !same() && !same()) {
            throw new NydusError('ERR_DAEMON', `${file} is not the file the open object uses (cachefiles replaced it)`);
          }
        }
      } catch (e) {
        await closeAll();
        skip((e as Error).message);
        continue;
      }
      const size = session.size;
      targets.push({
        blobId, path: file, session,
        present: (a, b) => {
          if (fd < 0) return false;
          const end = Math.min(b, size);
          return lseek(fd, a, SEEK_DATA) === a && (() => {
            const h = lseek(fd, a, SEEK_HOLE);
            return h < 0 || h >= end;
          })();
        },
        evict: async (a, b) => {
          if (wfd < 0) wfd = fs.openSync(file, fs.constants.O_RDWR);
          const start = a - (a % PAGE);
          const end = Math.ceil(b / PAGE) * PAGE;
          punchHole(wfd, start, end - start, file);
          // in the same turn: no READ can be handled between the punch and these
          for (const o of ctx.openObjects(vol, blobId)) o.session.forget?.(a, b - a);
          own?.forget?.(a, b - a);
        },
        release: closeAll,
      });
    }
  }
  return { targets, skipped };
}
