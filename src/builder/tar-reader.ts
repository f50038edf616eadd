/**
 * Streaming tar reader for the image builder.
 *
 * Reads a (optionally gzip-compressed) tar stream entry by entry without extracting anything
 * to disk and without buffering whole file bodies. Supported: v7, POSIX ustar (prefix field),
 * GNU ('L'/'K' long names, base-256 numbers, old GNU sparse 'S' with extension blocks), POSIX
 * pax ('x' local and 'g' global extended headers, GNU.sparse.* formats 0.0, 0.1 and 1.0,
 * SCHILY.* and LIBARCHIVE.* xattrs, SCHILY.acl.* text ACLs).
 *
 * Written from the format descriptions (POSIX.1-2001 pax/ustar, GNU tar manual "Basic Tar
 * Format" and "Sparse Formats"). Every input is treated as hostile: every length is bounded,
 * every header consumes at least one block (so parsing always progresses), and every failure
 * is a BadTarError whose message names the archive, the entry and the byte offset.
 *
 * Behaviour worth knowing:
 * - the end of the archive is the first zero block; a missing trailer (clean EOF at a header
 *   boundary) and a 0-byte input are accepted; up to 16 MiB after the end are read and ignored
 *   (so a piping writer is not cut off and the gzip CRC of the last member is checked);
 * - body bytes of non-file entries (hardlinks with data, GNU dumpdirs) are skipped;
 * - unknown type flags read as regular files (POSIX); 'V' labels are skipped; 'M'/'N' fail;
 * - text ACLs (SCHILY.acl.*) become system.posix_acl_* xattrs unless they name users or groups
 *   without a numeric id (then they are left out); xattr records win over text ACLs;
 * - gzip: concatenated members are read; trailing zero bytes are fine, other garbage fails.
 */
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { BadTarError, invalidArgument } from '../errors';

export type TarEntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'chardev' | 'blockdev' | 'fifo';

export interface TarEntry {
  /** Normalized relative path: no leading '/', no '.', '..' or empty components, no trailing '/'. Empty = the root. */
  path: Buffer;
  /** The path exactly as the archive spells it (for messages). */
  rawPath: Buffer;
  type: TarEntryType;
  /** Permission bits including setuid/setgid/sticky (& 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  uname?: string;
  gname?: string;
  mtime: number;
  mtimeNsec: number;
  /** Logical (apparent) size for files, 0 for everything else. */
  size: number;
  /** Symlink target (raw bytes) or hardlink target (normalized like `path`). */
  linkTarget?: Buffer;
  devMajor: number;
  devMinor: number;
  xattrs: Map<string, Buffer>;
  /** Byte offset of the entry's first header (extended headers included) in the uncompressed stream. */
  headerOffset: number;
  /** File content in pieces; holes of sparse files come as zero buffers of at most 1 MiB. Files only. */
  body(): AsyncIterable<Buffer>;
}

export interface TarReadOptions {
  /** Archive name used in error messages (file path, '-' for stdin, a digest...). */
  name: string;
  /** true: input is gzip; false/undefined: plain tar; 'auto': detect the 1f 8b magic. */
  gzip?: boolean | 'auto';
  /** Upper bound for the data of one entry's extended headers ('x', 'L', 'K') and for the global pax state. Default 1 MiB. */
  maxPaxHeaderSize?: number;
  /** Upper bound for a normalized path or link target in bytes. Default 4096. Components are limited to 255 bytes. */
  maxNameLength?: number;
}

const BLOCK = 512;
const MAX_PIECE = 1 << 20;
const MAX_COMPONENT = 255;
/** Upper bound on sparse map segments of one file (keeps the map in memory bounded, ~16 MiB). */
const MAX_SPARSE_SEGMENTS = 1 << 20;
/** Trailing bytes after the end-of-archive marker that are read (and ignored) before the input is closed. */
const MAX_TRAILING = 16 << 20;
const EMPTY = Buffer.alloc(0);

// ---------------------------------------------------------------------------------------------
// Byte source: pull-based reader over an async iterator of chunks, tracking the absolute offset.
// ---------------------------------------------------------------------------------------------

function toBuffer(v: unknown): Buffer {
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw invalidArgument(`tar input must yield Buffer/Uint8Array chunks, got ${typeof v} (is an encoding set on the stream?)`);
}

class ByteSource {
  /** Absolute offset of the next unread byte. */
  pos = 0;
  private cur: Buffer = EMPTY;
  private ended = false;
  private busy = false;
  constructor(private readonly it: AsyncIterator<unknown>) {}

  private async more(): Promise<boolean> {
    while (this.cur.length === 0) {
      if (this.ended) return false;
      const r = await this.it.next();
      if (r.done) {
        this.ended = true;
        return false;
      }
      this.cur = toBuffer(r.value);
    }
    return true;
  }

  private enter(): void {
    if (this.busy) {
      throw invalidArgument('tar reader used concurrently: wait for body() reads before asking for the next entry');
    }
    this.busy = true;
  }

  /** Exactly n bytes, or fewer only at end of input. */
  async read(n: number): Promise<Buffer> {
    this.enter();
    try {
      if (n === 0 || !(await this.more())) return EMPTY;
      if (this.cur.length >= n) {
        const b = this.cur.subarray(0, n);
        this.cur = this.cur.subarray(n);
        this.pos += n;
        return b;
      }
      const out = Buffer.allocUnsafe(n);
      let got = 0;
      while (got < n && (await this.more())) {
        const k = Math.min(n - got, this.cur.length);
        this.cur.copy(out, got, 0, k);
        this.cur = this.cur.subarray(k);
        got += k;
        this.pos += k;
      }
      return got === n ? out : out.subarray(0, got);
    } finally {
      this.busy = false;
    }
  }

  /** Up to max bytes without copying; null at end of input. */
  async some(max: number): Promise<Buffer | null> {
    this.enter();
    try {
      if (!(await this.more())) return null;
      const k = Math.min(max, this.cur.length);
      const b = this.cur.subarray(0, k);
      this.cur = this.cur.subarray(k);
      this.pos += k;
      return b;
    } finally {
      this.busy = false;
    }
  }

  /** Skips up to n bytes; returns how many were skipped (less only at end of input). */
  async skip(n: number): Promise<number> {
    this.enter();
    try {
      let left = n;
      while (left > 0 && (await this.more())) {
        const k = Math.min(left, this.cur.length);
        this.cur = this.cur.subarray(k);
        this.pos += k;
        left -= k;
      }
      return n - left;
    } finally {
      this.busy = false;
    }
  }

  async close(): Promise<void> {
    this.cur = EMPTY;
    if (!this.ended) {
      this.ended = true;
      await this.it.return?.();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Input plumbing (plain / gzip / auto)
// ---------------------------------------------------------------------------------------------

function iteratorOf(input: NodeJS.ReadableStream | AsyncIterable<Buffer>): AsyncIterator<unknown> {
  const anyInput = input as unknown as { [Symbol.asyncIterator]?: () => AsyncIterator<unknown>; destroy?: () => void };
  let stream: { destroy?: () => void } | null = null;
  let it: AsyncIterator<unknown>;
  if (typeof anyInput[Symbol.asyncIterator] === 'function') {
    it = anyInput[Symbol.asyncIterator]!();
    if (typeof anyInput.destroy === 'function') stream = anyInput;
  } else if (typeof (input as NodeJS.ReadableStream).on === 'function') {
    const r = new Readable().wrap(input as NodeJS.ReadableStream);
    it = r[Symbol.asyncIterator]();
    stream = r;
  } else {
    throw invalidArgument('tar input must be a readable stream or an async iterable of Buffers');
  }
  if (!stream) return it;
  // A stream's own iterator queues return() behind a pending next(), which never settles on a
  // producer that went quiet; destroying the stream first settles it.
  const s = stream;
  return {
    next: () => it.next(),
    return: async () => {
      s.destroy?.();
      void it.return?.()?.catch(() => undefined);
      return { done: true, value: undefined };
    },
  };
}

function isZlibError(e: unknown): e is Error & { code?: string } {
  const code = (e as { code?: unknown } | null)?.code;
  return e instanceof Error && typeof code === 'string' && (code.startsWith('Z_') || code.startsWith('ERR_ZLIB'));
}

const GZ_OUT_CHUNK = 256 * 1024;
const GZ_MAX_QUEUED = 4 << 20;

/**
 * Inflates concatenated gzip members. Output is queued (bounded: the inflater is paused above
 * 4 MiB) so that data produced before an error is delivered before the error itself.
 */
async function* gunzipChunks(prefix: Buffer[], rest: AsyncIterator<unknown>, name: string): AsyncGenerator<Buffer> {
  const gz = createGunzip({ chunkSize: GZ_OUT_CHUNK });
  const queue: Buffer[] = [];
  let queued = 0;
  let ended = false;
  let failure: unknown = null;
  let closed = false;
  let wake: (() => void) | null = null;
  const poke = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  gz.on('data', (b: Buffer) => {
    queue.push(b);
    queued += b.length;
    if (queued > GZ_MAX_QUEUED) gz.pause();
    poke();
  });
  gz.on('end', () => {
    ended = true;
    poke();
  });
  gz.on('error', (e) => {
    if (failure === null) failure = e;
    poke();
  });
  gz.on('close', () => {
    closed = true;
    poke();
  });

  let restDone = false;
  const closeRest = async () => {
    if (!restDone) {
      restDone = true;
      await rest.return?.();
    }
  };
  const waitWritable = () =>
    new Promise<void>((resolve) => {
      const done = () => {
        gz.off('drain', done);
        gz.off('close', done);
        resolve();
      };
      gz.on('drain', done);
      gz.on('close', done);
    });
  const pump = async () => {
    try {
      for (const p of prefix) {
        if (closed || failure) return;
        if (!gz.write(p)) await waitWritable();
      }
      for (;;) {
        if (closed || failure) return;
        const r = await rest.next();
        if (r.done) {
          restDone = true;
          break;
        }
        if (closed || failure) return;
        if (!gz.write(toBuffer(r.value))) await waitWritable();
      }
      if (!closed && !failure) gz.end();
    } catch (e) {
      // the compressed input itself failed (stream error): surface it unchanged
      if (failure === null) failure = e;
      poke();
    } finally {
      await closeRest().catch(() => undefined);
    }
  };
  const pumping = pump();

  try {
    for (;;) {
      if (queue.length) {
        const b = queue.shift()!;
        queued -= b.length;
        if (queued <= GZ_MAX_QUEUED / 2 && gz.isPaused()) gz.resume();
        yield b;
        continue;
      }
      if (failure !== null) {
        const e = failure;
        if (isZlibError(e)) {
          throw new BadTarError(
            `tar archive ${quoteName(name)}: gzip decompression failed after ${gz.bytesWritten} compressed bytes: ${e.message}`,
            { archive: name, compressedOffset: gz.bytesWritten, cause: e.code },
          );
        }
        throw e;
      }
      if (ended) return;
      if (closed) return;
      await new Promise<void>((r) => (wake = r));
    }
  } finally {
    closed = true;
    gz.destroy();
    poke();
    // Not awaited: the pump may be blocked in rest.next() on a slow producer; return() ends that.
    void closeRest().catch(() => undefined);
    void pumping;
  }
}

async function openInput(
  input: NodeJS.ReadableStream | AsyncIterable<Buffer>,
  gzip: boolean | 'auto',
  name: string,
): Promise<AsyncIterator<unknown>> {
  const raw = iteratorOf(input);
  if (gzip === false) return raw;
  if (gzip === true) return gunzipChunks([], raw, name);
  // auto: look at the first two bytes
  const prefix: Buffer[] = [];
  let have = 0;
  while (have < 2) {
    const r = await raw.next();
    if (r.done) break;
    const b = toBuffer(r.value);
    if (b.length === 0) continue;
    prefix.push(b);
    have += b.length;
  }
  const head = Buffer.concat(prefix, Math.min(have, 2));
  if (head.length === 2 && head[0] === 0x1f && head[1] === 0x8b) return gunzipChunks(prefix, raw, name);
  let i = 0;
  let done = false;
  return {
    async next(): Promise<IteratorResult<unknown>> {
      if (i < prefix.length) return { done: false, value: prefix[i++] };
      if (done) return { done: true, value: undefined };
      const r = await raw.next();
      if (r.done) done = true;
      return r;
    },
    async return(): Promise<IteratorResult<unknown>> {
      if (!done) {
        done = true;
        await raw.return?.();
      }
      return { done: true, value: undefined };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

function quoteName(name: string): string {
  return JSON.stringify(name);
}

/** Printable rendering of raw path bytes for messages (bounded length). */
function showPath(b: Buffer): string {
  const s = b.length > 300 ? b.subarray(0, 300).toString('utf8') + '…' : b.toString('utf8');
  return JSON.stringify(s);
}

function cstr(h: Buffer, off: number, len: number): Buffer {
  const f = h.subarray(off, off + len);
  const z = f.indexOf(0);
  return z < 0 ? f : f.subarray(0, z);
}

function isZeroBlock(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

const TWO53 = BigInt(Number.MAX_SAFE_INTEGER);

/** Thrown by the field parsers; converted to BadTarError with entry context by the caller. */
class FieldError extends Error {}

/**
 * Numeric header field: octal ASCII (leading spaces allowed, terminated by NUL or space), or
 * GNU base-256 (top bit of the first byte set; two's complement big-endian over the field).
 */
function parseNumField(h: Buffer, off: number, len: number, field: string, allowNegative: boolean): number {
  const f = h.subarray(off, off + len);
  if (f[0] & 0x80) {
    let v = BigInt(f[0] & 0x7f);
    for (let i = 1; i < f.length; i++) v = (v << 8n) | BigInt(f[i]);
    if (f[0] & 0x40) v -= 1n << BigInt(8 * len - 1);
    if (v < 0n && !allowNegative) throw new FieldError(`${field} field is negative (base-256 value ${v})`);
    if (v > TWO53 || v < -TWO53) throw new FieldError(`${field} field overflows 2^53 (base-256 value ${v})`);
    return Number(v);
  }
  let i = 0;
  while (i < f.length && f[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  for (; i < f.length; i++) {
    const c = f[i];
    if (c >= 0x30 && c <= 0x37) {
      v = v * 8 + (c - 0x30);
      digits++;
      continue;
    }
    if (c === 0 || c === 0x20) break;
    throw new FieldError(`${field} field is not an octal number (${JSON.stringify(f.toString('latin1'))})`);
  }
  for (; i < f.length; i++) {
    if (f[i] !== 0 && f[i] !== 0x20) {
      throw new FieldError(`${field} field has garbage after its number (${JSON.stringify(f.toString('latin1'))})`);
    }
  }
  if (v > Number.MAX_SAFE_INTEGER) throw new FieldError(`${field} field overflows 2^53`);
  return digits === 0 ? 0 : v;
}

function parseDecimal(v: Buffer, key: string): number {
  const s = v.toString('latin1');
  if (!/^[0-9]{1,16}$/.test(s)) {
    throw new FieldError(`pax record ${key}=${JSON.stringify(s.slice(0, 40))} is not a non-negative decimal number`);
  }
  const n = Number(s);
  if (!Number.isSafeInteger(n)) throw new FieldError(`pax record ${key}=${s} overflows 2^53`);
  return n;
}

function parsePaxTime(v: Buffer, key: string): { sec: number; nsec: number } {
  const s = v.toString('latin1');
  const m = /^(-?)([0-9]{1,16})(?:\.([0-9]*))?$/.exec(s);
  if (!m) throw new FieldError(`pax record ${key}=${JSON.stringify(s.slice(0, 40))} is not a decimal time`);
  let sec = Number(m[2]);
  if (!Number.isSafeInteger(sec)) throw new FieldError(`pax record ${key}=${s} overflows 2^53`);
  let nsec = m[3] ? Number((m[3] + '000000000').slice(0, 9)) : 0;
  if (m[1] === '-') {
    sec = -sec;
    if (nsec > 0) {
      sec -= 1;
      nsec = 1e9 - nsec;
    }
  }
  return { sec, nsec };
}

interface PaxRecord {
  key: string;
  value: Buffer;
}

/** Parses "LEN KEY=VALUE\n" records; LEN counts the whole record including itself and the newline. */
function parsePaxRecords(data: Buffer): PaxRecord[] {
  const out: PaxRecord[] = [];
  let i = 0;
  while (i < data.length) {
    if (data[i] === 0) {
      // Some writers pad the extended header data with NULs; anything else after that is garbage.
      for (let j = i; j < data.length; j++) {
        if (data[j] !== 0) throw new FieldError(`extended header has data after NUL padding at byte ${j}`);
      }
      break;
    }
    let j = i;
    let len = 0;
    while (j < data.length && data[j] >= 0x30 && data[j] <= 0x39) {
      len = len * 10 + (data[j] - 0x30);
      if (len > data.length) throw new FieldError(`extended header record at byte ${i} claims a length beyond the header data (${data.length} bytes)`);
      j++;
    }
    if (j === i || j >= data.length || data[j] !== 0x20) {
      throw new FieldError(`extended header record at byte ${i} does not start with "<length> "`);
    }
    // minimum: digits + ' ' + 'k' + '=' + '\n'
    if (len < j - i + 4) throw new FieldError(`extended header record at byte ${i} has an impossible length ${len}`);
    if (i + len > data.length) throw new FieldError(`extended header record at byte ${i} (length ${len}) runs past the header data (${data.length} bytes)`);
    if (data[i + len - 1] !== 0x0a) throw new FieldError(`extended header record at byte ${i} (length ${len}) does not end with a newline`);
    const rec = data.subarray(j + 1, i + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw new FieldError(`extended header record at byte ${i} has no "key=" part`);
    // Keys are kept as latin1 of the raw bytes: xattr names in SCHILY.xattr.<name> may be UTF-8
    // (or anything), and the image stores names as raw bytes.
    out.push({ key: rec.toString('latin1', 0, eq), value: rec.subarray(eq + 1) });
    i += len;
  }
  return out;
}

function percentDecode(s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; ) {
    if (s[i] === '%' && /^[0-9a-fA-F]{2}$/.test(s.slice(i + 1, i + 3))) {
      bytes.push(parseInt(s.slice(i + 1, i + 3), 16));
      i += 3;
    } else {
      for (const b of Buffer.from(s[i], 'latin1')) bytes.push(b);
      i++;
    }
  }
  return Buffer.from(bytes).toString('latin1');
}

// POSIX ACL xattr encoding (linux/posix_acl_xattr.h): version 2, then {u16 tag, u16 perm, u32 id}.
const ACL_TAGS: Record<string, number> = { user: 0x01, group: 0x04, mask: 0x10, other: 0x20 };
const ACL_UNDEFINED_ID = 0xffffffff;

/**
 * Converts a text ACL (SCHILY.acl.access / SCHILY.acl.default, entries separated by ',' or
 * newline, "tag:qualifier:perms[:id]") to the binary system.posix_acl_* xattr value.
 * Returns null when the ACL names users/groups without a numeric id (cannot be resolved here).
 */
function textAclToXattr(text: string): Buffer | null {
  const ents: { tag: number; perm: number; id: number }[] = [];
  for (let line of text.split(/[,\n]/)) {
    const hash = line.indexOf('#');
    if (hash >= 0) line = line.slice(0, hash);
    line = line.trim();
    if (!line) continue;
    const parts = line.split(':');
    if (parts.length < 3) throw new FieldError(`ACL entry ${JSON.stringify(line)} is malformed`);
    let tagName = parts[0];
    if (tagName === 'u') tagName = 'user';
    else if (tagName === 'g') tagName = 'group';
    else if (tagName === 'm') tagName = 'mask';
    else if (tagName === 'o') tagName = 'other';
    const base = ACL_TAGS[tagName];
    if (base === undefined) throw new FieldError(`ACL entry ${JSON.stringify(line)} has an unknown tag`);
    const qual = parts[1];
    const permStr = parts[2];
    if (!/^[rwx-]{1,3}$/.test(permStr)) throw new FieldError(`ACL entry ${JSON.stringify(line)} has bad permissions`);
    const perm = (permStr.includes('r') ? 4 : 0) | (permStr.includes('w') ? 2 : 0) | (permStr.includes('x') ? 1 : 0);
    let tag = base;
    let id = ACL_UNDEFINED_ID;
    if (qual !== '' && (tagName === 'user' || tagName === 'group')) {
      tag = tagName === 'user' ? 0x02 : 0x08;
      const idStr = parts.length >= 4 && /^[0-9]+$/.test(parts[3]) ? parts[3] : qual;
      if (!/^[0-9]{1,10}$/.test(idStr) || Number(idStr) >= ACL_UNDEFINED_ID) return null;
      id = Number(idStr);
    }
    ents.push({ tag, perm, id });
  }
  if (ents.length === 0) return null;
  const has = (t: number) => ents.some((e) => e.tag === t);
  for (const t of [0x01, 0x04, 0x20]) {
    if (!has(t)) throw new FieldError(`ACL ${JSON.stringify(text.slice(0, 200))} lacks a required user::, group:: or other:: entry`);
  }
  const seen = new Set<string>();
  for (const e of ents) {
    const k = `${e.tag}:${e.id}`;
    if (seen.has(k)) throw new FieldError(`ACL ${JSON.stringify(text.slice(0, 200))} has duplicate entries`);
    seen.add(k);
  }
  if ((has(0x02) || has(0x08)) && !has(0x10)) {
    let m = 0;
    for (const e of ents) if (e.tag === 0x02 || e.tag === 0x04 || e.tag === 0x08) m |= e.perm;
    ents.push({ tag: 0x10, perm: m, id: ACL_UNDEFINED_ID });
  }
  ents.sort((a, b) => a.tag - b.tag || a.id - b.id);
  const out = Buffer.alloc(4 + 8 * ents.length);
  out.writeUInt32LE(2, 0);
  ents.forEach((e, k) => {
    out.writeUInt16LE(e.tag, 4 + 8 * k);
    out.writeUInt16LE(e.perm, 6 + 8 * k);
    out.writeUInt32LE(e.id, 8 + 8 * k);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// The reader
// ---------------------------------------------------------------------------------------------

interface BodyState {
  /** Bytes of the entry's data area still unread (excluding padding). */
  remaining: number;
  /** Padding after the data area up to the block boundary. */
  pad: number;
  desc: string;
  headerOffset: number;
  /** Set once the reader moved past this entry. */
  stale: boolean;
  taken: boolean;
}

/** Reads a tar stream entry by entry. See the module comment. */
export async function* readTar(
  input: NodeJS.ReadableStream | AsyncIterable<Buffer>,
  opts: TarReadOptions,
): AsyncGenerator<TarEntry> {
  const name = opts.name;
  const maxPax = opts.maxPaxHeaderSize ?? 1 << 20;
  const maxName = opts.maxNameLength ?? 4096;
  if (!Number.isSafeInteger(maxPax) || maxPax <= 0) throw invalidArgument(`maxPaxHeaderSize must be a positive integer, got ${maxPax}`);
  if (!Number.isSafeInteger(maxName) || maxName <= 0) throw invalidArgument(`maxNameLength must be a positive integer, got ${maxName}`);

  const bad = (msg: string, ctx: Record<string, unknown> = {}): BadTarError =>
    new BadTarError(`tar archive ${quoteName(name)}: ${msg}`, { archive: name, ...ctx });

  const src = new ByteSource(await openInput(input, opts.gzip ?? false, name));

  // Global pax state ('g' headers), applies to every following entry.
  const globals = new Map<string, Buffer>();
  let globalBytes = 0;

  let current: BodyState | null = null;

  /** Reads exactly n bytes of header/meta data or fails with a truncation error. */
  const readFull = async (n: number, what: string, ctx: Record<string, unknown>): Promise<Buffer> => {
    const at = src.pos;
    const b = await src.read(n);
    if (b.length < n) {
      throw bad(`unexpected end of input at offset ${src.pos} while reading ${what} (${n - b.length} of ${n} bytes starting at offset ${at} missing)`, ctx);
    }
    return b;
  };

  const padOf = (n: number): number => (BLOCK - (n % BLOCK)) % BLOCK;

  const finishCurrent = async (): Promise<void> => {
    const bs = current;
    if (!bs) return;
    current = null;
    bs.stale = true;
    const want = bs.remaining + bs.pad;
    const got = await src.skip(want);
    if (got < want) {
      const inBody = got < bs.remaining;
      throw bad(
        `${bs.desc}: unexpected end of input at offset ${src.pos} inside the ${inBody ? 'body' : 'padding after the body'} (${inBody ? bs.remaining - got : want - got} more bytes expected)`,
        { headerOffset: bs.headerOffset, offset: src.pos },
      );
    }
    bs.remaining = 0;
    bs.pad = 0;
  };

  const normalize = (raw: Buffer, what: string, desc: () => string, ctx: Record<string, unknown>): Buffer => {
    const parts: Buffer[] = [];
    let start = 0;
    for (let i = 0; i <= raw.length; i++) {
      if (i < raw.length && raw[i] !== 0x2f) continue;
      const c = raw.subarray(start, i);
      start = i + 1;
      if (c.length === 0 || (c.length === 1 && c[0] === 0x2e)) continue;
      if (c.length === 2 && c[0] === 0x2e && c[1] === 0x2e) {
        if (parts.length === 0) throw bad(`${desc()}: ${what} ${showPath(raw)} escapes the archive root via '..'`, ctx);
        parts.pop();
        continue;
      }
      if (c.length > MAX_COMPONENT) {
        throw bad(`${desc()}: ${what} has a component of ${c.length} bytes (limit ${MAX_COMPONENT})`, ctx);
      }
      parts.push(c);
    }
    const out = parts.length === 0 ? EMPTY : parts.length === 1 ? Buffer.from(parts[0]) : Buffer.concat(joinSlash(parts));
    if (out.length > maxName) throw bad(`${desc()}: ${what} is ${out.length} bytes long (limit ${maxName})`, ctx);
    return out;
  };

  const readEntry = async (): Promise<TarEntry | null> => {
    let headerOffset = src.pos;
    const local: PaxRecord[] = [];
    let longName: Buffer | null = null;
    let longLink: Buffer | null = null;
    let metaBytes = 0;
    let sawMeta = false;

    for (;;) {
      const hOff = src.pos;
      const h = await src.read(BLOCK);
      if (h.length === 0) {
        if (sawMeta) {
          throw bad(`unexpected end of input at offset ${hOff}: the extended header(s) at offset ${headerOffset} are not followed by an entry`, { headerOffset, offset: hOff });
        }
        return null; // clean EOF at a header boundary
      }
      if (h.length < BLOCK) {
        throw bad(`unexpected end of input at offset ${src.pos}: truncated header at offset ${hOff} (${h.length} of 512 bytes)`, { headerOffset: hOff, offset: src.pos });
      }
      if (isZeroBlock(h)) {
        if (sawMeta) {
          throw bad(`end-of-archive block at offset ${hOff} follows the extended header(s) at offset ${headerOffset} instead of an entry`, { headerOffset, offset: hOff });
        }
        // End of archive. The second zero block (or its absence) does not matter.
        return null;
      }
      verifyChecksum(h, hOff);
      const typeflag = h[156];
      const hdrName = cstr(h, 0, 100);
      const metaDesc = () => `header ${showPath(hdrName)} at offset ${hOff}`;
      const ctx = { headerOffset: hOff };
      const fieldNum = (off: number, len: number, field: string, neg = false): number => {
        try {
          return parseNumField(h, off, len, field, neg);
        } catch (e) {
          if (e instanceof FieldError) throw bad(`${metaDesc()}: ${e.message}`, ctx);
          throw e;
        }
      };

      if (typeflag === 0x78 /* x */ || typeflag === 0x58 /* X */ || typeflag === 0x67 /* g */ || typeflag === 0x4c /* L */ || typeflag === 0x4b /* K */) {
        const size = fieldNum(124, 12, 'size');
        const isGlobal = typeflag === 0x67;
        const kind = isGlobal ? 'global extended header' : typeflag === 0x4c ? 'GNU long name header' : typeflag === 0x4b ? 'GNU long link header' : 'extended header';
        const limitLeft = isGlobal ? maxPax : maxPax - metaBytes;
        if (size > limitLeft) {
          throw bad(`${metaDesc()}: ${kind} of ${size} bytes exceeds the limit (maxPaxHeaderSize ${maxPax}${isGlobal ? '' : `, ${metaBytes} bytes already used by this entry`})`, ctx);
        }
        const data = await readFull(size, `the ${kind} data`, ctx);
        await readFull(padOf(size), `the padding after the ${kind}`, ctx);
        if (typeflag === 0x4c || typeflag === 0x4b) {
          const v = cstr(data, 0, data.length);
          if (typeflag === 0x4c) longName = Buffer.from(v);
          else longLink = Buffer.from(v);
          metaBytes += size;
          sawMeta = true;
          continue;
        }
        let recs: PaxRecord[];
        try {
          recs = parsePaxRecords(data);
        } catch (e) {
          if (e instanceof FieldError) throw bad(`${metaDesc()}: bad ${kind}: ${e.message}`, ctx);
          throw e;
        }
        if (isGlobal) {
          for (const r of recs) {
            const old = globals.get(r.key);
            if (old) globalBytes -= r.key.length + old.length;
            if (r.value.length === 0) {
              globals.delete(r.key);
            } else {
              globals.set(r.key, Buffer.from(r.value));
              globalBytes += r.key.length + r.value.length;
            }
          }
          if (globalBytes > maxPax) throw bad(`${metaDesc()}: global extended headers exceed the limit (maxPaxHeaderSize ${maxPax})`, ctx);
          if (!sawMeta) headerOffset = src.pos;
          continue;
        }
        for (const r of recs) local.push({ key: r.key, value: Buffer.from(r.value) });
        metaBytes += size;
        sawMeta = true;
        continue;
      }
      if (typeflag === 0x56 /* V: volume label */) {
        const size = fieldNum(124, 12, 'size');
        const got = await src.skip(size + padOf(size));
        if (got < size + padOf(size)) throw bad(`${metaDesc()}: unexpected end of input at offset ${src.pos} inside a volume label`, ctx);
        if (!sawMeta) headerOffset = src.pos;
        continue;
      }
      return buildEntry(h, hOff, headerOffset, local, longName, longLink);
    }
  };

  const verifyChecksum = (h: Buffer, hOff: number): void => {
    let unsigned = 0;
    let signed = 0;
    for (let i = 0; i < BLOCK; i++) {
      const b = i >= 148 && i < 156 ? 0x20 : h[i];
      unsigned += b;
      signed += b >= 0x80 ? b - 256 : b;
    }
    let stored: number;
    try {
      stored = parseNumField(h, 148, 8, 'checksum', false);
    } catch {
      stored = -1;
    }
    const f = h.subarray(148, 156);
    const empty = f.every((c) => c === 0 || c === 0x20);
    if (empty || (stored !== unsigned && stored !== signed)) {
      throw bad(
        `bad header checksum at offset ${hOff} (header name ${showPath(cstr(h, 0, 100))}: stored ${JSON.stringify(f.toString('latin1'))}, computed ${unsigned.toString(8)}): not a tar archive, or corrupted`,
        { headerOffset: hOff },
      );
    }
  };

  const buildEntry = async (
    h: Buffer,
    hOff: number,
    headerOffset: number,
    local: PaxRecord[],
    longName: Buffer | null,
    longLink: Buffer | null,
  ): Promise<TarEntry> => {
    const typeflag = h[156];
    const magic = h.subarray(257, 263).toString('latin1');
    const isUstar = magic === 'ustar\0';
    const isGnu = magic === 'ustar ' && h[263] === 0x20 && h[264] === 0;

    // Effective pax view: local records (later wins) over globals; empty local value = unset.
    const localMap = new Map<string, Buffer>();
    for (const r of local) localMap.set(r.key, r.value);
    const pax = (k: string): Buffer | undefined => {
      const l = localMap.get(k);
      if (l !== undefined) return l.length ? l : undefined;
      return globals.get(k);
    };

    // --- path
    let rawPath: Buffer = cstr(h, 0, 100);
    if (isUstar) {
      const star = h.subarray(508, 512).toString('latin1') === 'tar\0';
      const prefix = cstr(h, 345, star ? 131 : 155);
      if (prefix.length) rawPath = Buffer.concat([prefix, Buffer.from('/'), rawPath]);
    }
    if (longName) rawPath = longName;
    const paxPath = pax('path');
    const sparseName = pax('GNU.sparse.name');
    const paxName = sparseName ?? paxPath;
    const descFor = (p: Buffer) => `entry ${showPath(p)} (header at offset ${headerOffset})`;
    const ctx = { headerOffset, entryHeaderOffset: hOff };
    if (paxName) {
      if (paxName.includes(0)) throw bad(`${descFor(cstr(h, 0, 100))}: pax path contains a NUL byte`, ctx);
      rawPath = paxName;
    }
    rawPath = Buffer.from(rawPath);
    const desc = () => descFor(rawPath);
    const fail = (msg: string, extra: Record<string, unknown> = {}) => bad(`${desc()}: ${msg}`, { ...ctx, path: rawPath.toString('utf8'), ...extra });
    const wrap = <T>(fn: () => T): T => {
      try {
        return fn();
      } catch (e) {
        if (e instanceof FieldError) throw fail(e.message);
        throw e;
      }
    };
    const num = (off: number, len: number, field: string, neg = false) => wrap(() => parseNumField(h, off, len, field, neg));

    // --- type
    let type: TarEntryType;
    let oldGnuSparse = false;
    switch (typeflag) {
      case 0x30: // '0'
      case 0x00:
        type = rawPath.length > 0 && rawPath[rawPath.length - 1] === 0x2f ? 'dir' : 'file';
        break;
      case 0x37: // '7' contiguous
        type = 'file';
        break;
      case 0x31:
        type = 'hardlink';
        break;
      case 0x32:
        type = 'symlink';
        break;
      case 0x33:
        type = 'chardev';
        break;
      case 0x34:
        type = 'blockdev';
        break;
      case 0x35: // '5'
      case 0x44: // 'D' GNU dumpdir (its data, the directory listing, is skipped)
        type = 'dir';
        break;
      case 0x36:
        type = 'fifo';
        break;
      case 0x53: // 'S' old GNU sparse
        type = 'file';
        oldGnuSparse = true;
        break;
      case 0x4d: // 'M'
        throw fail('GNU multi-volume continuation entries are not supported');
      case 0x4e: // 'N'
        throw fail("old GNU long-name ('N') entries are not supported");
      default:
        // POSIX: an unrecognized type flag is read as a regular file.
        type = 'file';
    }

    // --- numbers
    const mode = num(100, 8, 'mode') & 0o7777;
    const paxUid = pax('uid');
    const paxGid = pax('gid');
    const uid = paxUid ? wrap(() => parseDecimal(paxUid, 'uid')) : num(108, 8, 'uid');
    const gid = paxGid ? wrap(() => parseDecimal(paxGid, 'gid')) : num(116, 8, 'gid');
    const paxSize = pax('size');
    const storedSize = paxSize ? wrap(() => parseDecimal(paxSize, 'size')) : num(124, 12, 'size');
    let mtime: number;
    let mtimeNsec = 0;
    const paxMtime = pax('mtime');
    if (paxMtime) {
      const t = wrap(() => parsePaxTime(paxMtime, 'mtime'));
      mtime = t.sec;
      mtimeNsec = t.nsec;
    } else {
      mtime = num(136, 12, 'mtime', true);
    }
    let uname: string | undefined;
    let gname: string | undefined;
    if (isUstar || isGnu) {
      const u = cstr(h, 265, 32);
      const g = cstr(h, 297, 32);
      if (u.length) uname = u.toString('utf8');
      if (g.length) gname = g.toString('utf8');
    }
    const pu = pax('uname');
    const pg = pax('gname');
    if (pu) uname = pu.toString('utf8');
    if (pg) gname = pg.toString('utf8');
    let devMajor = 0;
    let devMinor = 0;
    if (type === 'chardev' || type === 'blockdev') {
      const pM = pax('SCHILY.devmajor');
      const pm = pax('SCHILY.devminor');
      devMajor = pM ? wrap(() => parseDecimal(pM, 'SCHILY.devmajor')) : isUstar || isGnu ? num(329, 8, 'devmajor') : 0;
      devMinor = pm ? wrap(() => parseDecimal(pm, 'SCHILY.devminor')) : isUstar || isGnu ? num(337, 8, 'devminor') : 0;
    }

    // --- path normalization
    const path = normalize(rawPath, 'path', desc, ctx);
    if (path.length === 0 && type !== 'dir') {
      throw fail(`path resolves to the archive root but the entry is a ${type}, not a directory`);
    }

    // --- link target
    let linkTarget: Buffer | undefined;
    if (type === 'hardlink' || type === 'symlink') {
      let rawLink: Buffer = cstr(h, 157, 100);
      if (longLink) rawLink = longLink;
      const pl = pax('linkpath');
      if (pl) {
        if (pl.includes(0)) throw fail('pax linkpath contains a NUL byte');
        rawLink = pl;
      }
      rawLink = Buffer.from(rawLink);
      if (type === 'hardlink') {
        linkTarget = normalize(rawLink, 'hardlink target', desc, ctx);
        if (linkTarget.length === 0) throw fail(`hardlink target ${showPath(rawLink)} is the archive root`);
      } else {
        if (rawLink.length > maxName) throw fail(`symlink target is ${rawLink.length} bytes long (limit ${maxName})`);
        linkTarget = rawLink;
      }
    }

    // --- xattrs (in record order: globals first, then local records; later wins)
    const xattrs = new Map<string, Buffer>();
    const aclText = new Map<string, Buffer>();
    const takeXattr = (k: string, v: Buffer) => {
      if (k.startsWith('SCHILY.xattr.')) {
        const n = k.slice(13);
        if (n.length === 0 || n.includes('\0')) throw fail(`bad xattr name in pax record ${JSON.stringify(k)}`);
        xattrs.set(n, v);
      } else if (k.startsWith('LIBARCHIVE.xattr.')) {
        const n = percentDecode(k.slice(17));
        if (n.length === 0 || n.includes('\0')) throw fail(`bad xattr name in pax record ${JSON.stringify(k)}`);
        const s = v.toString('latin1').replace(/\s+/g, '');
        if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s)) throw fail(`pax record ${k} is not base64`);
        xattrs.set(n, Buffer.from(s, 'base64'));
      } else if (k === 'SCHILY.acl.access' || k === 'SCHILY.acl.default') {
        aclText.set(k, v);
      }
    };
    for (const [k, v] of globals) if (!localMap.has(k)) takeXattr(k, v);
    for (const r of local) takeXattr(r.key, r.value);
    for (const [k, v] of aclText) {
      const xn = k === 'SCHILY.acl.access' ? 'system.posix_acl_access' : 'system.posix_acl_default';
      if (xattrs.has(xn) || v.length === 0) continue;
      const bin = wrap(() => textAclToXattr(v.toString('utf8')));
      if (bin) xattrs.set(xn, bin);
    }

    // --- body layout
    const bs: BodyState = { remaining: storedSize, pad: padOf(storedSize), desc: desc(), headerOffset, stale: false, taken: false };
    current = bs;
    let size = 0;
    let segs: number[] | null = null; // flat [offset, length, ...]
    if (type === 'file') {
      size = storedSize;
      const sMajor = pax('GNU.sparse.major');
      const sMinor = pax('GNU.sparse.minor');
      const sMap = pax('GNU.sparse.map');
      const hasSparse00 = local.some((r) => r.key === 'GNU.sparse.offset' || r.key === 'GNU.sparse.numbytes');
      if (oldGnuSparse) {
        const r = await readOldGnuSparse(h, num, fail, ctx);
        segs = r.segs;
        size = r.realSize;
      } else if (sMajor || sMinor) {
        const major = sMajor ? wrap(() => parseDecimal(sMajor, 'GNU.sparse.major')) : -1;
        const minor = sMinor ? wrap(() => parseDecimal(sMinor, 'GNU.sparse.minor')) : -1;
        if (major !== 1 || minor !== 0) {
          throw fail(`GNU sparse format ${major}.${minor} is not supported`);
        }
        const rs = pax('GNU.sparse.realsize') ?? pax('GNU.sparse.size');
        if (!rs) throw fail('GNU sparse 1.0 entry without GNU.sparse.realsize');
        size = wrap(() => parseDecimal(rs, 'GNU.sparse.realsize'));
        segs = await readSparse10Map(bs, fail);
      } else if (sMap || hasSparse00) {
        const rs = pax('GNU.sparse.size') ?? pax('GNU.sparse.realsize');
        if (!rs) throw fail('GNU sparse 0.x entry without GNU.sparse.size');
        size = wrap(() => parseDecimal(rs, 'GNU.sparse.size'));
        const nb = pax('GNU.sparse.numblocks');
        const numBlocks = nb ? wrap(() => parseDecimal(nb, 'GNU.sparse.numblocks')) : -1;
        segs = [];
        if (sMap) {
          const s = sMap.toString('latin1');
          if (s.length > 0) {
            const parts = s.split(',');
            if (parts.length % 2 !== 0) throw fail('GNU.sparse.map has an odd number of values');
            for (const p of parts) segs.push(wrap(() => parseDecimal(Buffer.from(p, 'latin1'), 'GNU.sparse.map')));
          }
        } else {
          let expectOffset = true;
          for (const r of local) {
            if (r.key === 'GNU.sparse.offset') {
              if (!expectOffset) throw fail('GNU.sparse.offset record without a matching GNU.sparse.numbytes');
              segs.push(wrap(() => parseDecimal(r.value, 'GNU.sparse.offset')));
              expectOffset = false;
            } else if (r.key === 'GNU.sparse.numbytes') {
              if (expectOffset) throw fail('GNU.sparse.numbytes record without a preceding GNU.sparse.offset');
              segs.push(wrap(() => parseDecimal(r.value, 'GNU.sparse.numbytes')));
              expectOffset = true;
            }
          }
          if (!expectOffset) throw fail('GNU.sparse.offset record without a matching GNU.sparse.numbytes');
        }
        if (numBlocks >= 0 && numBlocks * 2 !== segs.length) {
          throw fail(`GNU.sparse.numblocks=${numBlocks} but the sparse map has ${segs.length / 2} entries`);
        }
      }
      if (segs) validateSparse(segs, size, bs.remaining, fail);
    }

    const entry: TarEntry = {
      path,
      rawPath,
      type,
      mode,
      uid,
      gid,
      uname,
      gname,
      mtime,
      mtimeNsec,
      size,
      linkTarget,
      devMajor,
      devMinor,
      xattrs,
      headerOffset,
      body: () => {
        if (type !== 'file') return emptyIterable;
        if (bs.taken) throw invalidArgument(`tar archive ${quoteName(name)}: body() of ${bs.desc} may be read only once`);
        if (bs.stale) throw invalidArgument(`tar archive ${quoteName(name)}: body() of ${bs.desc} called after the reader moved to the next entry`);
        bs.taken = true;
        return segs ? sparseBody(bs, segs, size) : plainBody(bs);
      },
    };
    return entry;
  };

  const truncatedBody = (bs: BodyState) =>
    bad(`${bs.desc}: unexpected end of input at offset ${src.pos} inside the body (${bs.remaining} more bytes expected)`, {
      headerOffset: bs.headerOffset,
      offset: src.pos,
    });
  const staleBody = (bs: BodyState) =>
    invalidArgument(`tar archive ${quoteName(name)}: body() of ${bs.desc} was read after the reader moved to the next entry`);

  async function* plainBody(bs: BodyState): AsyncGenerator<Buffer> {
    while (bs.remaining > 0) {
      if (bs.stale) throw staleBody(bs);
      const b = await src.some(Math.min(bs.remaining, MAX_PIECE));
      if (!b) throw truncatedBody(bs);
      bs.remaining -= b.length;
      yield b;
    }
  }

  async function* zeros(bs: BodyState, n: number): AsyncGenerator<Buffer> {
    while (n > 0) {
      if (bs.stale) throw staleBody(bs);
      const k = Math.min(n, MAX_PIECE);
      n -= k;
      yield Buffer.alloc(k);
    }
  }

  async function* sparseBody(bs: BodyState, segs: number[], realSize: number): AsyncGenerator<Buffer> {
    let pos = 0;
    for (let i = 0; i < segs.length; i += 2) {
      const off = segs[i];
      let len = segs[i + 1];
      yield* zeros(bs, off - pos);
      while (len > 0) {
        if (bs.stale) throw staleBody(bs);
        const b = await src.some(Math.min(len, MAX_PIECE));
        if (!b) throw truncatedBody(bs);
        len -= b.length;
        bs.remaining -= b.length;
        yield b;
      }
      pos = off + segs[i + 1];
    }
    yield* zeros(bs, realSize - pos);
  }

  const readOldGnuSparse = async (
    h: Buffer,
    num: (off: number, len: number, field: string) => number,
    fail: (msg: string) => BadTarError,
    ctx: Record<string, unknown>,
  ): Promise<{ segs: number[]; realSize: number }> => {
    const segs: number[] = [];
    const take = (blk: Buffer, base: number, count: number, numFn: (off: number, len: number, field: string) => number) => {
      for (let k = 0; k < count; k++) {
        const o = base + 24 * k;
        if (blk[o] === 0 && blk[o + 12] === 0) continue;
        if (segs.length / 2 >= MAX_SPARSE_SEGMENTS) throw fail(`sparse map has more than ${MAX_SPARSE_SEGMENTS} entries`);
        segs.push(numFn(o, 12, 'sparse offset'), numFn(o + 12, 12, 'sparse numbytes'));
      }
    };
    take(h, 386, 4, num);
    let ext = h[482] !== 0;
    while (ext) {
      const blk = await readFull(BLOCK, 'a GNU sparse extension header', ctx);
      take(blk, 0, 21, (off, len, field) => {
        try {
          return parseNumField(blk, off, len, field, false);
        } catch (e) {
          if (e instanceof FieldError) throw fail(`sparse extension header: ${e.message}`);
          throw e;
        }
      });
      ext = blk[504] !== 0;
    }
    let realSize = num(483, 12, 'realsize');
    if (realSize === 0 && segs.length) realSize = segs[segs.length - 2] + segs[segs.length - 1];
    return { segs, realSize };
  };

  /** GNU sparse 1.0: the map is at the start of the data area, decimal numbers one per line, padded to a block. */
  const readSparse10Map = async (bs: BodyState, fail: (msg: string) => BadTarError): Promise<number[]> => {
    const nums: number[] = [];
    let need = -1;
    let cur = 0;
    let digits = 0;
    for (;;) {
      if (bs.remaining < BLOCK) throw fail(`GNU sparse 1.0 map does not fit in the entry's data (${bs.remaining} bytes left)`);
      const at = src.pos;
      const blk = await src.read(BLOCK);
      if (blk.length < BLOCK) {
        throw bad(`${bs.desc}: unexpected end of input at offset ${src.pos} inside the GNU sparse map (block at offset ${at})`, { headerOffset: bs.headerOffset, offset: src.pos });
      }
      bs.remaining -= BLOCK;
      for (let i = 0; i < BLOCK; i++) {
        const c = blk[i];
        if (c >= 0x30 && c <= 0x39) {
          cur = cur * 10 + (c - 0x30);
          if (++digits > 16 || !Number.isSafeInteger(cur)) throw fail('GNU sparse 1.0 map has a number that overflows 2^53');
        } else if (c === 0x0a) {
          if (digits === 0) throw fail('GNU sparse 1.0 map has an empty line');
          nums.push(cur);
          cur = 0;
          digits = 0;
          if (nums.length === 1) {
            if (nums[0] > MAX_SPARSE_SEGMENTS) throw fail(`GNU sparse 1.0 map has ${nums[0]} entries (limit ${MAX_SPARSE_SEGMENTS})`);
            need = 1 + 2 * nums[0];
          }
          if (nums.length === need) return nums.slice(1);
        } else {
          throw fail(`GNU sparse 1.0 map has an unexpected byte 0x${c.toString(16)} at offset ${at + i}`);
        }
      }
    }
  };

  const validateSparse = (segs: number[], realSize: number, dataSize: number, fail: (msg: string) => BadTarError) => {
    let end = 0;
    let sum = 0;
    for (let i = 0; i < segs.length; i += 2) {
      const off = segs[i];
      const len = segs[i + 1];
      if (off < end) throw fail(`sparse map entry ${i / 2} (offset ${off}) overlaps or precedes the previous one (ending at ${end})`);
      if (off + len > realSize) throw fail(`sparse map entry ${i / 2} (offset ${off}, ${len} bytes) extends past the file size ${realSize}`);
      end = off + len;
      sum += len;
    }
    if (sum !== dataSize) throw fail(`sparse map describes ${sum} data bytes but the entry stores ${dataSize}`);
  };

  try {
    for (;;) {
      await finishCurrent();
      const e = await readEntry();
      if (!e) break;
      yield e;
    }
    // Read (and ignore) what follows the end-of-archive marker, so that a writer on the other end
    // of a pipe is not cut off and a gzip trailer gets verified; bounded for endless inputs.
    // For gzip input this also verifies the last member's CRC and length.
    let trailing = 0;
    while (trailing < MAX_TRAILING) {
      const b = await src.some(MAX_PIECE);
      if (!b) break;
      trailing += b.length;
    }
  } finally {
    if (current) (current as BodyState).stale = true;
    await src.close();
  }
}

const emptyIterable: AsyncIterable<Buffer> = {
  [Symbol.asyncIterator]() {
    return {
      next: async () => ({ done: true, value: undefined }),
    };
  },
};

function joinSlash(parts: Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  const slash = Buffer.from('/');
  parts.forEach((p, i) => {
    if (i) out.push(slash);
    out.push(p);
  });
  return out;
}
