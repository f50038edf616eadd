/**
 * A small POSIX (pax) tar writer: ustar headers, with a pax 'x' record whenever a field does not
 * fit (long or non-ASCII names, big ids/sizes, sub-second mtimes, xattrs, big device numbers).
 */
import { TAR_BLOCK } from '../format/constants';

export interface TarHeaderFields {
  path: Buffer;
  type: '0' | '1' | '2' | '3' | '4' | '5' | '6';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  mtimeNsec: number;
  linkpath?: Buffer;
  devMajor?: number;
  devMinor?: number;
  xattrs?: Map<string, Buffer>;
}

const MAX_OCTAL7 = 0o7777777;
const MAX_OCTAL11 = 0o77777777777;

function octal(b: Buffer, off: number, len: number, v: number): void {
  b.write(v.toString(8).padStart(len - 1, '0') + '\0', off, len, 'latin1');
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'latin1'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function isAscii(b: Buffer): boolean {
  return b.every((x) => x > 0 && x < 0x80);
}

function ustarHeader(name: Buffer, type: string, mode: number, uid: number, gid: number, size: number, mtime: number, linkname: Buffer, devMajor: number, devMinor: number): Buffer {
  const h = Buffer.alloc(TAR_BLOCK);
  name.copy(h, 0, 0, Math.min(100, name.length));
  octal(h, 100, 8, mode & 0o7777);
  octal(h, 108, 8, Math.min(uid, MAX_OCTAL7));
  octal(h, 116, 8, Math.min(gid, MAX_OCTAL7));
  octal(h, 124, 12, Math.min(size, MAX_OCTAL11));
  octal(h, 136, 12, Math.max(0, Math.min(mtime, MAX_OCTAL11)));
  h.write(type, 156, 1, 'latin1');
  linkname.copy(h, 157, 0, Math.min(100, linkname.length));
  h.write('ustar\0', 257, 6, 'latin1');
  h.write('00', 263, 2, 'latin1');
  octal(h, 329, 8, Math.min(devMajor, MAX_OCTAL7));
  octal(h, 337, 8, Math.min(devMinor, MAX_OCTAL7));
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of h) sum += x;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return h;
}

/**
 * Header block(s) for one entry: an optional pax header + data, then the ustar header.
 * `sparse` writes a PAX 1.0 sparse file header: the caller then writes `sparse.mapBlock`
 * followed by the data regions (the ustar size covers both).
 */
export function tarHeader(f: TarHeaderFields, sparse?: { dataBytes: number; mapBlock: Buffer }): Buffer {
  const recs: Buffer[] = [];
  const link = f.linkpath ?? Buffer.alloc(0);
  let headerPath = f.path;
  if (sparse) {
    recs.push(paxRecord('GNU.sparse.major', Buffer.from('1')), paxRecord('GNU.sparse.minor', Buffer.from('0')));
    recs.push(paxRecord('GNU.sparse.name', f.path), paxRecord('GNU.sparse.realsize', Buffer.from(String(f.size))));
    const slash = f.path.lastIndexOf(0x2f, f.path.length - 1);
    headerPath = Buffer.concat([f.path.subarray(0, slash + 1), Buffer.from('GNUSparseFile.0/'), f.path.subarray(slash + 1)]);
    if (headerPath.length > 100 || !isAscii(headerPath)) headerPath = Buffer.from('GNUSparseFile.0/long-name');
  } else if (f.path.length > 100 || !isAscii(f.path)) recs.push(paxRecord('path', f.path));
  if (link.length > 100 || (link.length && !isAscii(link))) recs.push(paxRecord('linkpath', link));
  if (f.uid > MAX_OCTAL7) recs.push(paxRecord('uid', Buffer.from(String(f.uid))));
  if (f.gid > MAX_OCTAL7) recs.push(paxRecord('gid', Buffer.from(String(f.gid))));
  if (!sparse && f.size > MAX_OCTAL11) recs.push(paxRecord('size', Buffer.from(String(f.size))));
  if (f.mtimeNsec !== 0 || f.mtime < 0 || f.mtime > MAX_OCTAL11) {
    // pax mtime is a decimal with an optional fraction; negative times keep the sign on the whole value
    const ns = BigInt(f.mtime) * 1_000_000_000n + BigInt(f.mtimeNsec);
    const neg = ns < 0n;
    const a = neg ? -ns : ns;
    const txt = `${neg ? '-' : ''}${a / 1_000_000_000n}.${String(a % 1_000_000_000n).padStart(9, '0')}`;
    recs.push(paxRecord('mtime', Buffer.from(txt)));
  }
  if ((f.devMajor ?? 0) > MAX_OCTAL7) recs.push(paxRecord('SCHILY.devmajor', Buffer.from(String(f.devMajor))));
  if ((f.devMinor ?? 0) > MAX_OCTAL7) recs.push(paxRecord('SCHILY.devminor', Buffer.from(String(f.devMinor))));
  for (const [k, v] of [...(f.xattrs ?? new Map<string, Buffer>())].sort(([a], [b]) => (a < b ? -1 : 1))) {
    recs.push(Buffer.concat([paxRecord(`SCHILY.xattr.${Buffer.from(k, 'latin1').toString('latin1')}`, v)]));
  }
  const stored0 = sparse ? sparse.mapBlock.length + sparse.dataBytes : f.type === '0' ? f.size : 0;
  if (sparse && stored0 > MAX_OCTAL11) recs.push(paxRecord('size', Buffer.from(String(stored0))));
  const parts: Buffer[] = [];
  if (recs.length) {
    const data = Buffer.concat(recs);
    const paxName = Buffer.from('PaxHeaders/' + f.path.subarray(Math.max(0, f.path.length - 80)).toString('latin1').replace(/[^\x20-\x7e]/g, '_'), 'latin1');
    parts.push(ustarHeader(paxName.subarray(0, 100), 'x', 0o644, 0, 0, data.length, Math.max(0, f.mtime), Buffer.alloc(0), 0, 0));
    parts.push(data, Buffer.alloc(padLen(data.length)));
  }
  parts.push(ustarHeader(headerPath, f.type, f.mode, f.uid, f.gid, stored0, f.mtime, link, f.devMajor ?? 0, f.devMinor ?? 0));
  return Buffer.concat(parts);
}

/** The PAX 1.0 sparse map that precedes the data: count, then offset/size pairs, 512-padded. */
export function sparseMapBlock(regions: { offset: number; length: number }[]): Buffer {
  const text = [String(regions.length), ...regions.flatMap((r) => [String(r.offset), String(r.length)])].join('\n') + '\n';
  const b = Buffer.from(text, 'latin1');
  return Buffer.concat([b, Buffer.alloc(padLen(b.length))]);
}

export function padLen(n: number): number {
  return (TAR_BLOCK - (n % TAR_BLOCK)) % TAR_BLOCK;
}

export const TAR_TRAILER = Buffer.alloc(TAR_BLOCK * 2);
