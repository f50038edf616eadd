/**
 * The one module of nydus-ts that calls syscalls Node lacks (through koffi → libc).
 *
 * Layout, so later calls (poll, ioctl, mount/umount2, fanotify_*) fit the same way:
 *  - `libc()` loads koffi and libc.so.6 once, on first use: importing this module costs nothing;
 *  - `fn(proto)` binds (and caches) one libc function from a C prototype string;
 *  - every wrapper calls, reads `koffi.errno()` right away on failure and throws `sysError()`,
 *    a NydusError('ERR_IO') whose message names the path, the call and the errno name.
 *
 * Paths and xattr names are raw bytes: a string path is encoded as UTF-8 (Node's convention),
 * a Buffer is passed as is (non-UTF-8 names). See `xattrNameBytes` for xattr names.
 */
import { NydusError } from '../errors';
import * as util from 'node:util';

// Type-only import: erased at compile time, so koffi itself is required lazily in libc().
type Koffi = typeof import('koffi');
type LibraryHandle = ReturnType<Koffi['load']>;
type NativeFn = (...args: unknown[]) => unknown;

export type RawPath = string | Buffer;
export type XattrName = string | Buffer;

let koffiMod: Koffi | undefined;
let libcHandle: LibraryHandle | undefined;
const bound = new Map<string, NativeFn>();

/** koffi, loaded on first use. */
function koffi(): Koffi {
  if (!koffiMod) koffiMod = require('koffi') as Koffi;
  return koffiMod;
}

/** libc.so.6, loaded on first use. */
export function libc(): LibraryHandle {
  if (!libcHandle) {
    try {
      libcHandle = koffi().load('libc.so.6');
    } catch (e) {
      throw new NydusError('ERR_UNSUPPORTED', `cannot load libc.so.6 through koffi: ${(e as Error).message}`, {}, { cause: e });
    }
  }
  return libcHandle;
}

/** Bind one libc function from a C prototype (cached by prototype text). */
function fn(proto: string): NativeFn {
  let f = bound.get(proto);
  if (!f) {
    f = libc().func(proto) as unknown as NativeFn;
    bound.set(proto, f);
  }
  return f;
}

/** The errno of a failed call: a sysError's context.errno or a Node fs error's errno (0 if none). */
export function errnoOf(e: unknown): number {
  const ctx = (e as NydusError | undefined)?.context?.errno;
  const n = typeof ctx === 'number' ? ctx : (e as NodeJS.ErrnoException | undefined)?.errno;
  return typeof n === 'number' ? Math.abs(n) : 0;
}

/** The thread's errno: read it right after the failing call, before other native work. */
function lastErrno(): number {
  return koffi().errno();
}

let errnoNames: Map<number, string> | undefined;
/** Symbolic name of an errno value: ENOTSUP, ENODATA, EPERM, ... ('E<n>' if unknown). */
export function errnoName(errno: number): string {
  // libuv knows the common ones and prefers ENOTSUP over EOPNOTSUPP, EAGAIN over EWOULDBLOCK.
  const uv = util.getSystemErrorMap().get(-errno);
  if (uv) return uv[0];
  if (!errnoNames) {
    errnoNames = new Map();
    for (const [name, value] of Object.entries(koffi().os.errno)) if (!errnoNames.has(value)) errnoNames.set(value, name);
  }
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** strerror(3) text for an errno value. */
function strerror(errno: number): string {
  try {
    return String(fn('const char *strerror(int errnum)')(errno));
  } catch {
    return 'unknown error';
  }
}

/** A printable form of a raw path (UTF-8 where valid, \xNN escapes elsewhere). */
export function showPath(p: RawPath): string {
  if (typeof p === 'string') return p;
  const s = p.toString('utf8');
  if (Buffer.from(s, 'utf8').equals(p)) return s;
  let out = '';
  for (const b of p) out += b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
  return out;
}

/**
 * The one errno → error helper: NydusError('ERR_IO', "<call> <path>[ <detail>]: <ENAME> (<strerror>)",
 * { errno, code, syscall, path, ...extra }); `extra.detail` goes into the message only.
 */
export function sysError(call: string, path: RawPath | undefined, errno: number, extra: Record<string, unknown> = {}): NydusError {
  const code = errnoName(errno);
  const { detail, ...rest } = extra;
  const where = path !== undefined ? ` ${showPath(path)}` : '';
  const more = detail !== undefined ? ` ${String(detail)}` : '';
  return new NydusError('ERR_IO', `${call}${where}${more}: ${code} (${strerror(errno)})`, {
    errno,
    code,
    syscall: call,
    ...(path !== undefined ? { path: showPath(path) } : {}),
    ...rest,
  });
}

/** A NUL-terminated copy of a path or name, as raw bytes. */
function cstr(p: RawPath, what: string, encoding: BufferEncoding = 'utf8'): Buffer {
  const b = typeof p === 'string' ? Buffer.from(p, encoding) : p;
  if (b.includes(0)) throw new NydusError('ERR_INVALID_ARGUMENT', `${what} contains a NUL byte: ${showPath(b)}`, { [what]: showPath(b) });
  const out = Buffer.allocUnsafe(b.length + 1);
  b.copy(out);
  out[b.length] = 0;
  return out;
}

/**
 * Bytes of an xattr name. A string whose characters are all ≤ U+00FF is taken as latin1, so
 * names returned by `llistxattr` (latin1 of the raw bytes) round-trip exactly; a string with
 * wider characters is encoded as UTF-8; a Buffer is taken as is.
 */
export function xattrNameBytes(name: XattrName): Buffer {
  if (typeof name !== 'string') return name;
  return /^[\u0000-\u00ff]*$/.test(name) ? Buffer.from(name, 'latin1') : Buffer.from(name, 'utf8');
}

const ERANGE = 34;
const ENODATA = 61;
const ENOTSUP = 95;

// ---------------------------------------------------------------------------------------------
// Extended attributes (l* variants: never follow a final symlink)
// ---------------------------------------------------------------------------------------------

/** flags of lsetxattr */
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

/**
 * Names of the xattrs of `path` (not following a final symlink), as latin1 strings of the raw
 * bytes, in the order the filesystem lists them. ENOTSUP/ENODATA mean "no xattrs": [].
 */
export function llistxattr(path: RawPath): string[] {
  const f = fn('intptr_t llistxattr(const void *path, _Out_ void *list, size_t size)');
  const p = cstr(path, 'path');
  for (let attempt = 0; ; attempt++) {
    const size = Number(f(p, null, 0));
    if (size < 0) {
      const e = lastErrno();
      if (e === ENOTSUP || e === ENODATA) return [];
      throw sysError('llistxattr', path, e);
    }
    if (size === 0) return [];
    const buf = Buffer.alloc(size);
    const n = Number(f(p, buf, size));
    if (n < 0) {
      const e = lastErrno();
      if (e === ERANGE && attempt < 8) continue; // list grew between the two calls
      if (e === ENOTSUP || e === ENODATA) return [];
      throw sysError('llistxattr', path, e);
    }
    return buf
      .subarray(0, n)
      .toString('latin1')
      .split('\0')
      .filter((s) => s.length > 0);
  }
}

/** Value of xattr `name` of `path` (not following a final symlink). */
export function lgetxattr(path: RawPath, name: XattrName): Buffer {
  const f = fn('intptr_t lgetxattr(const void *path, const void *name, _Out_ void *value, size_t size)');
  const p = cstr(path, 'path');
  const nb = xattrNameBytes(name);
  const n0 = cstr(nb, 'name');
  for (let attempt = 0; ; attempt++) {
    const size = Number(f(p, n0, null, 0));
    if (size < 0) throw sysError('lgetxattr', path, lastErrno(), { detail: `"${nb.toString('latin1')}"`, name: nb.toString('latin1') });
    if (size === 0) return Buffer.alloc(0);
    const buf = Buffer.alloc(size);
    const n = Number(f(p, n0, buf, size));
    if (n < 0) {
      const e = lastErrno();
      if (e === ERANGE && attempt < 8) continue; // value grew between the two calls
      throw sysError('lgetxattr', path, e, { detail: `"${nb.toString('latin1')}"`, name: nb.toString('latin1') });
    }
    return buf.subarray(0, n);
  }
}

/** Set xattr `name` of `path` to `value` (not following a final symlink). */
export function lsetxattr(path: RawPath, name: XattrName, value: Buffer, flags = 0): void {
  const f = fn('int lsetxattr(const void *path, const void *name, const void *value, size_t size, int flags)');
  const nb = xattrNameBytes(name);
  // An empty Buffer may be passed as a NULL pointer, which the kernel accepts for size 0.
  const r = Number(f(cstr(path, 'path'), cstr(nb, 'name'), value.length ? value : Buffer.alloc(1), value.length, flags));
  if (r < 0) throw sysError('lsetxattr', path, lastErrno(), { detail: `"${nb.toString('latin1')}"`, name: nb.toString('latin1') });
}

/** Remove xattr `name` of `path` (not following a final symlink). */
export function lremovexattr(path: RawPath, name: XattrName): void {
  const f = fn('int lremovexattr(const void *path, const void *name)');
  const nb = xattrNameBytes(name);
  const r = Number(f(cstr(path, 'path'), cstr(nb, 'name')));
  if (r < 0) throw sysError('lremovexattr', path, lastErrno(), { detail: `"${nb.toString('latin1')}"`, name: nb.toString('latin1') });
}

// ---------------------------------------------------------------------------------------------
// Device numbers and mknod
// ---------------------------------------------------------------------------------------------

/** glibc's makedev(): 12+20 bit major, 8+24 bit minor, split around each other in a 64-bit dev_t. */
export function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major >>> 0);
  const mi = BigInt(minor >>> 0);
  return ((ma & 0xfffn) << 8n) | ((ma & 0xfffff000n) << 32n) | (mi & 0xffn) | ((mi & 0xffffff00n) << 12n);
}
/** glibc's major() of a dev_t. */
export function devMajor(dev: bigint | number): number {
  const d = BigInt(dev);
  return Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & 0xfffff000n));
}
/** glibc's minor() of a dev_t. */
export function devMinor(dev: bigint | number): number {
  const d = BigInt(dev);
  return Number((d & 0xffn) | ((d >> 12n) & 0xffffff00n));
}

export const S_IFIFO = 0o010000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
export const S_IFREG = 0o100000;
export const S_IFSOCK = 0o140000;

/**
 * mknod(2): create a node of `mode` (type bits S_IFCHR/S_IFBLK/S_IFIFO/S_IFSOCK/S_IFREG and
 * permission bits, subject to umask) at `path`; major/minor are used for devices.
 */
export function mknod(path: RawPath, mode: number, major = 0, minor = 0): void {
  const f = fn('int mknod(const void *path, uint32_t mode, uint64_t dev)');
  const r = Number(f(cstr(path, 'path'), mode >>> 0, makedev(major, minor)));
  if (r < 0) {
    const detail = `mode 0${mode.toString(8)}${major || minor ? ` dev ${major}:${minor}` : ''}`;
    throw sysError('mknod', path, lastErrno(), { detail, mode, major, minor });
  }
}

// ---------------------------------------------------------------------------------------------
// Timestamps with nanoseconds (Node's utimes/lutimes round to microseconds)
// ---------------------------------------------------------------------------------------------

const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const NS_PER_SEC = 1_000_000_000n;

/** Split ns since the epoch into a normalized (sec, nsec ∈ [0, 1e9)) timespec. */
export function nsToTimespec(ns: bigint): { sec: bigint; nsec: bigint } {
  let sec = ns / NS_PER_SEC;
  let nsec = ns % NS_PER_SEC;
  if (nsec < 0n) {
    nsec += NS_PER_SEC;
    sec -= 1n;
  }
  return { sec, nsec };
}

/**
 * utimensat(AT_FDCWD, path, [atime, mtime], AT_SYMLINK_NOFOLLOW): set atime/mtime with full
 * nanosecond precision, on the link itself for a symlink. Times are ns since the epoch
 * (negative before 1970).
 */
export function lutimens(path: RawPath, atimeNs: bigint, mtimeNs: bigint): void {
  const f = fn('int utimensat(int dirfd, const void *path, const void *times, int flags)');
  const ts = Buffer.alloc(32); // struct timespec[2] on LP64: { int64 tv_sec; int64 tv_nsec }
  const a = nsToTimespec(atimeNs);
  const m = nsToTimespec(mtimeNs);
  ts.writeBigInt64LE(a.sec, 0);
  ts.writeBigInt64LE(a.nsec, 8);
  ts.writeBigInt64LE(m.sec, 16);
  ts.writeBigInt64LE(m.nsec, 24);
  const r = Number(f(AT_FDCWD, cstr(path, 'path'), ts, AT_SYMLINK_NOFOLLOW));
  if (r < 0) throw sysError('utimensat', path, lastErrno(), { detail: `mtime ${m.sec}.${m.nsec.toString().padStart(9, '0')}` });
}

// ---------------------------------------------------------------------------------------------
// Sparse files: lseek(SEEK_DATA / SEEK_HOLE)
// ---------------------------------------------------------------------------------------------

export const SEEK_SET = 0;
export const SEEK_CUR = 1;
export const SEEK_END = 2;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
const ENXIO = 6;

/**
 * lseek(2) on an open fd. For SEEK_DATA/SEEK_HOLE, ENXIO (offset at or past the last data /
 * end of file) is returned as -1 instead of thrown. `what` names the file in errors.
 */
export function lseek(fd: number, offset: number, whence: number, what: RawPath = `fd ${fd}`): number {
  const f = fn('int64_t lseek(int fd, int64_t offset, int whence)');
  const r = Number(f(fd, offset, whence));
  if (r < 0) {
    const e = lastErrno();
    if (e === ENXIO && (whence === SEEK_DATA || whence === SEEK_HOLE)) return -1;
    throw sysError('lseek', what, e, { detail: `offset ${offset} whence ${whence}`, fd, offset, whence });
  }
  return r;
}

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;

/**
 * fallocate(2) on an open fd; `punchHole` frees [offset, offset+length) (the size is kept), so
 * the range reads as zeros and SEEK_HOLE reports it. `what` names the file in errors.
 */
export function fallocate(fd: number, mode: number, offset: number, length: number, what: RawPath = `fd ${fd}`): void {
  const f = fn('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
  if ((f(fd, mode, offset, length) as number) < 0) {
    throw sysError('fallocate', what, lastErrno(), { detail: `mode ${mode} offset ${offset} length ${length}`, fd, offset, length });
  }
}

export function punchHole(fd: number, offset: number, length: number, what: RawPath = `fd ${fd}`): void {
  fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length, what);
}

// ---------------------------------------------------------------------------------------------
// poll(2), ioctl(2), pipe2(2), fcntl(FD_CLOEXEC)
// ---------------------------------------------------------------------------------------------

export const POLLIN = 0x001;
export const POLLPRI = 0x002;
export const POLLOUT = 0x004;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const POLLNVAL = 0x020;

export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;

const EINTR = 4;
const POLL_PROTO = 'int poll(void *fds, uint64_t nfds, int timeout)';

export interface PollFd {
  fd: number;
  /** POLLIN | POLLOUT | … */
  events: number;
}
export interface PollResult {
  /** number of fds with non-zero revents; 0 on timeout or EINTR */
  ready: number;
  /** revents per input fd, in input order */
  revents: number[];
  /** the call was interrupted by a signal (EINTR): nothing is ready, call again */
  interrupted: boolean;
}

/** struct pollfd[] on Linux: { int fd; short events; short revents } = 8 bytes each. */
function pollFds(fds: PollFd[]): Buffer {
  const b = Buffer.alloc(8 * fds.length);
  fds.forEach((p, i) => {
    b.writeInt32LE(p.fd, i * 8);
    b.writeInt16LE(p.events, i * 8 + 4);
  });
  return b;
}
function pollResult(b: Buffer, n: number, r: number, errno: number): PollResult {
  if (r < 0 && errno !== EINTR) throw sysError('poll', undefined, errno, { detail: `(${n} fds)` });
  const revents: number[] = [];
  for (let i = 0; i < n; i++) revents.push(r > 0 ? b.readUInt16LE(i * 8 + 6) : 0);
  return { ready: Math.max(0, r), revents, interrupted: r < 0 };
}

/**
 * poll(2), blocking the calling thread for up to `timeoutMs` (-1: forever). Call it from a worker
 * thread (or with timeout 0): it never yields to the event loop. EINTR is returned as
 * `interrupted`, other errors are thrown.
 */
export function poll(fds: PollFd[], timeoutMs: number): PollResult {
  const b = pollFds(fds);
  const r = Number(fn(POLL_PROTO)(b, fds.length, Math.trunc(timeoutMs)));
  return pollResult(b, fds.length, r, r < 0 ? lastErrno() : 0);
}

/**
 * poll(2) on one of koffi's async workers (a libuv threadpool thread, held for the whole wait):
 * the event loop keeps running. For long waits prefer `poll` in a dedicated worker_thread.
 */
export function pollAsync(fds: PollFd[], timeoutMs: number): Promise<PollResult> {
  const b = pollFds(fds);
  const f = fn(POLL_PROTO) as NativeFn & { async: (...args: unknown[]) => void };
  return new Promise((resolve, reject) => {
    f.async(b, fds.length, Math.trunc(timeoutMs), (err: unknown, res: unknown) => {
      if (err) return reject(err);
      const r = Number(res);
      try {
        resolve(pollResult(b, fds.length, r, r < 0 ? lastErrno() : 0));
      } catch (e) {
        reject(e);
      }
    });
  });
}

/**
 * ioctl(2) with an integer argument passed **by value** (e.g. CACHEFILES_IOC_READ_COMPLETE takes
 * the msg_id itself, not a pointer). Returns the ioctl's result; errors are thrown, with `what`
 * naming the object in the message.
 */
export function ioctl(fd: number, request: number, arg: number | bigint, what: RawPath = `fd ${fd}`): number {
  const f = fn('int ioctl(int fd, unsigned long request, ...)');
  const r = Number(f(fd, request >>> 0, 'unsigned long', typeof arg === 'bigint' ? arg : BigInt(Math.trunc(arg))));
  if (r < 0) {
    const e = lastErrno();
    throw sysError('ioctl', what, e, { detail: `request 0x${(request >>> 0).toString(16)} arg ${arg}`, fd, request, arg: String(arg) });
  }
  return r;
}

/** pipe2(2): [read end, write end]. `flags`: O_CLOEXEC | O_NONBLOCK. */
export function pipe2(flags = O_CLOEXEC): [number, number] {
  const f = fn('int pipe2(_Out_ int *fds, int flags)');
  const out = [0, 0];
  const r = Number(f(out, flags));
  if (r < 0) throw sysError('pipe2', undefined, lastErrno());
  return [out[0], out[1]];
}

const F_GETFD = 1;
const F_SETFD = 2;
const FD_CLOEXEC = 1;

/** Set (or clear) FD_CLOEXEC on an fd, so child processes do (not) inherit it. */
export function setCloexec(fd: number, on = true): void {
  const f = fn('int fcntl(int fd, int cmd, ...)');
  const cur = Number(f(fd, F_GETFD));
  if (cur < 0) throw sysError('fcntl', `fd ${fd}`, lastErrno(), { detail: 'F_GETFD', fd });
  const next = on ? cur | FD_CLOEXEC : cur & ~FD_CLOEXEC;
  if (next === cur) return;
  if (Number(f(fd, F_SETFD, 'int', next)) < 0) throw sysError('fcntl', `fd ${fd}`, lastErrno(), { detail: 'F_SETFD', fd });
}

// ---------------------------------------------------------------------------------------------
// Memory addresses and aligned buffers (O_DIRECT-style I/O)
// ---------------------------------------------------------------------------------------------

/** The address of a Buffer's first byte (koffi.address). */
export function bufferAddress(buf: Uint8Array): bigint {
  return koffi().address(buf);
}

/** Is `buf`'s first byte at an address that is a multiple of `align` (a power of two)? */
export function isAligned(buf: Uint8Array, align: number): boolean {
  return buf.length === 0 || (bufferAddress(buf) & BigInt(align - 1)) === 0n;
}

/**
 * A zero-filled Buffer of `size` bytes whose first byte lies on an `align` boundary (a power of
 * two, e.g. 4096 for O_DIRECT writes). It is a view into a larger, GC-managed ArrayBuffer that
 * lives outside the V8 heap and never moves, so the address stays valid for as long as the
 * Buffer is referenced (Node's fs.write passes the pointer straight to pwrite(2)).
 */
export function alignedBuffer(size: number, align = 4096): Buffer {
  if (!Number.isSafeInteger(size) || size < 0) throw new NydusError('ERR_INVALID_ARGUMENT', `alignedBuffer: bad size ${size}`);
  if (align <= 0 || (align & (align - 1)) !== 0) throw new NydusError('ERR_INVALID_ARGUMENT', `alignedBuffer: alignment ${align} is not a power of two`);
  const backing = Buffer.alloc(size + align); // never from Node's shared 8 KiB pool
  const mis = Number(bufferAddress(backing) & BigInt(align - 1));
  const skip = mis === 0 ? 0 : align - mis;
  const out = backing.subarray(skip, skip + size);
  if (!isAligned(out, align)) throw new NydusError('ERR_UNSUPPORTED', `alignedBuffer: cannot align a ${size}-byte buffer to ${align}`);
  return out;
}

// ---------------------------------------------------------------------------------------------
// mount(2) / umount2(2)
// ---------------------------------------------------------------------------------------------

export const MS_RDONLY = 1;
export const MNT_FORCE = 1;
export const MNT_DETACH = 2;

const MOUNT_PROTO = 'int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)';

function mountDetail(source: string, fstype: string, data: string | null): string {
  return `(-t ${fstype} ${source}${data ? ` -o ${data}` : ''})`;
}

/**
 * mount(2) on one of koffi's async workers, so the event loop keeps running while the kernel
 * works: an EROFS-over-fscache mount blocks until this very process answers the bootstrap OPEN.
 * Rejects with sysError('mount', target, errno) (e.g. ENOBUFS for an fsid nobody serves).
 */
export function mountAsync(source: string, target: RawPath, fstype: string, flags = 0, data: string | null = null): Promise<void> {
  const f = fn(MOUNT_PROTO) as NativeFn & { async: (...args: unknown[]) => void };
  const t = typeof target === 'string' ? target : showPath(target);
  return new Promise((resolve, reject) => {
    f.async(source, t, fstype, flags, data, (err: unknown, res: unknown) => {
      if (err) return reject(err);
      if (Number(res) < 0) return reject(sysError('mount', target, lastErrno(), { detail: mountDetail(source, fstype, data), fstype, source, data }));
      resolve();
    });
  });
}

/** umount2(2) on a koffi async worker (an unmount waits for the daemon to read CLOSE). */
export function umountAsync(target: RawPath, flags = 0): Promise<void> {
  const f = fn('int umount2(const char *target, int flags)') as NativeFn & { async: (...args: unknown[]) => void };
  const t = typeof target === 'string' ? target : showPath(target);
  return new Promise((resolve, reject) => {
    f.async(t, flags, (err: unknown, res: unknown) => {
      if (err) return reject(err);
      if (Number(res) < 0) return reject(sysError('umount2', target, lastErrno(), { flags }));
      resolve();
    });
  });
}

// ---------------------------------------------------------------------------------------------
// socketpair(2) (SOCK_SEQPACKET keeps message boundaries: a stand-in for message devices in tests)
// ---------------------------------------------------------------------------------------------

export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_SEQPACKET = 5;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;

/** socketpair(2): two connected sockets. `type` may include SOCK_NONBLOCK | SOCK_CLOEXEC. */
export function socketpair(domain = AF_UNIX, type = SOCK_SEQPACKET | SOCK_CLOEXEC, protocol = 0): [number, number] {
  const f = fn('int socketpair(int domain, int type, int protocol, _Out_ int *sv)');
  const out = [0, 0];
  if (Number(f(domain, type, protocol, out)) < 0) throw sysError('socketpair', undefined, lastErrno(), { domain, type });
  return [out[0], out[1]];
}

// ---------------------------------------------------------------------------------------------
// fanotify(7) pre-content events (spec fanotify.md §2)
// ---------------------------------------------------------------------------------------------

export const FAN_CLOEXEC = 0x1;
export const FAN_NONBLOCK = 0x2;
export const FAN_CLASS_PRE_CONTENT = 0x8;
export const FAN_UNLIMITED_QUEUE = 0x10;
export const FAN_UNLIMITED_MARKS = 0x20;
export const FAN_MARK_ADD = 0x1;
export const FAN_MARK_REMOVE = 0x2;
export const FAN_MARK_IGNORED_SURV_MODIFY = 0x40;
export const FAN_MARK_FLUSH = 0x80;
export const FAN_MARK_IGNORE = 0x400;
export const FAN_MARK_INODE = 0x0;
export const FAN_MARK_MOUNT = 0x10;
export const FAN_PRE_ACCESS = 0x00100000n;
export const O_RDWR = 2;

/** fanotify_init(2): the group fd. */
export function fanotifyInit(flags: number, eventFlags: number): number {
  const r = Number(fn('int fanotify_init(unsigned int flags, unsigned int event_f_flags)')(flags >>> 0, eventFlags >>> 0));
  if (r < 0) throw sysError('fanotify_init', undefined, lastErrno(), { detail: `(flags 0x${flags.toString(16)})`, flags });
  return r;
}

/** fanotify_mark(2) on a path (dirfd AT_FDCWD). */
export function fanotifyMark(group: number, flags: number, mask: bigint, path: RawPath): void {
  const f = fn('int fanotify_mark(int fd, unsigned int flags, uint64_t mask, int dirfd, const char *path)');
  const r = Number(f(group, flags >>> 0, mask, AT_FDCWD, cstr(path, 'path')));
  if (r < 0) throw sysError('fanotify_mark', path, lastErrno(), { detail: `(flags 0x${flags.toString(16)} mask 0x${mask.toString(16)})`, flags, mask: `0x${mask.toString(16)}` });
}

// ---------------------------------------------------------------------------------------------
// The new mount API (fsopen/fsconfig/fsmount/move_mount): no one-page cap on options, so an
// image with 64 blob devices and long paths mounts; and the kernel's own error text
// (read from the fs context fd) for a failed mount.
// ---------------------------------------------------------------------------------------------

const FSOPEN_CLOEXEC = 1;
const FSCONFIG_SET_FLAG = 0;
const FSCONFIG_SET_STRING = 1;
const FSCONFIG_CMD_CREATE = 6;
const FSMOUNT_CLOEXEC = 1;
const MOVE_MOUNT_F_EMPTY_PATH = 0x4;
export const MOUNT_ATTR_RDONLY = 0x1;
export const MOUNT_ATTR_NOSUID = 0x2;
export const MOUNT_ATTR_NODEV = 0x4;
/** fsconfig(2) copies at most 256 bytes of a string value (strndup_user) */
export const FSCONFIG_MAX_STRING = 255;

/** The messages the kernel left on an fs context fd ("e erofs: …" lines), best effort. */
function fsContextMessages(fd: number): string {
  const out: string[] = [];
  const b = Buffer.alloc(1024);
  const read = fn('int64_t read(int fd, _Out_ uint8_t *buf, uint64_t count)');
  for (let i = 0; i < 8; i++) {
    const n = Number(read(fd, b, b.length));
    if (n <= 0) break;
    out.push(b.subarray(0, n).toString('utf8').replace(/^[ewi] /, ''));
  }
  return out.join('; ');
}

export interface NewMountOptions {
  /** string parameters in order (repeated keys are allowed: EROFS takes one `device` each) */
  params: Array<[string, string]>;
  /** boolean flags (fsconfig SET_FLAG), e.g. 'ro' */
  flags?: string[];
  /** MOUNT_ATTR_* of the new mount */
  attrs?: number;
}

/**
 * Mount a filesystem with the new mount API: fsopen(fstype), one fsconfig per parameter,
 * FSCONFIG_CMD_CREATE, fsmount, move_mount onto `target`. Errors name the target and carry the
 * kernel's message for the failed step.
 */
export function newMount(fstype: string, target: string, opts: NewMountOptions): void {
  const fsopen = fn('int fsopen(const char *fsname, unsigned int flags)');
  const fsconfig = fn('int fsconfig(int fd, unsigned int cmd, const char *key, const char *value, int aux)');
  const fsmount = fn('int fsmount(int fd, unsigned int flags, unsigned int attr_flags)');
  const moveMount = fn('int move_mount(int from_dirfd, const char *from_path, int to_dirfd, const char *to_path, unsigned int flags)');
  const close = fn('int close(int fd)');
  const fsfd = Number(fsopen(fstype, FSOPEN_CLOEXEC));
  if (fsfd < 0) throw sysError('fsopen', target, lastErrno(), { detail: `(${fstype})`, fstype });
  let mfd = -1;
  try {
    const fail = (call: string, what: string): never => {
      const errno = lastErrno();
      const msg = fsContextMessages(fsfd);
      throw sysError(call, target, errno, { detail: `(-t ${fstype} ${what})${msg ? ` [kernel: ${msg}]` : ''}`, fstype, kernelMessage: msg });
    };
    for (const [key, value] of opts.params) {
      if (Buffer.byteLength(value) > FSCONFIG_MAX_STRING) {
        throw new NydusError('ERR_INVALID_ARGUMENT', `mount ${target}: option ${key}=${value} is longer than ${FSCONFIG_MAX_STRING} bytes (the kernel's limit for one fsconfig value)`, { key, value });
      }
      if (Number(fsconfig(fsfd, FSCONFIG_SET_STRING, key, value, 0)) < 0) fail('fsconfig', `${key}=${value}`);
    }
    for (const flag of opts.flags ?? []) if (Number(fsconfig(fsfd, FSCONFIG_SET_FLAG, flag, null, 0)) < 0) fail('fsconfig', flag);
    if (Number(fsconfig(fsfd, FSCONFIG_CMD_CREATE, null, null, 0)) < 0) fail('fsconfig', `create with ${opts.params.map(([k, v]) => `${k}=${v}`).join(',')}`);
    mfd = Number(fsmount(fsfd, FSMOUNT_CLOEXEC, (opts.attrs ?? 0) >>> 0));
    if (mfd < 0) fail('fsmount', '');
    if (Number(moveMount(mfd, '', AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)) < 0) fail('move_mount', `onto ${target}`);
  } finally {
    if (mfd >= 0) close(mfd);
    close(fsfd);
  }
}

/** mount(2), synchronously (bind mounts, propagation changes: nothing that waits on this process). */
export function mountSync(source: string | null, target: string, fstype: string | null, flags: number, data: string | null = null): void {
  const r = Number(fn(MOUNT_PROTO)(source, target, fstype, flags, data));
  if (r < 0) throw sysError('mount', target, lastErrno(), { detail: mountDetail(source ?? 'none', fstype ?? '(none)', data), flags });
}
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_BIND = 4096;
export const MS_REC = 16384;
export const MS_PRIVATE = 1 << 18;

/** umount2(2), synchronously. */
export function umountSync(target: string, flags = 0): void {
  const r = Number(fn('int umount2(const char *target, int flags)')(target, flags));
  if (r < 0) throw sysError('umount2', target, lastErrno(), { flags });
}

// ---------------------------------------------------------------------------------------------
// pidfd_open / pidfd_getfd, RLIMIT_NOFILE
// ---------------------------------------------------------------------------------------------

/** pidfd_open(2) */
export function pidfdOpen(pid: number): number {
  const r = Number(fn('int pidfd_open(int pid, unsigned int flags)')(pid, 0));
  if (r < 0) throw sysError('pidfd_open', `pid ${pid}`, lastErrno(), { pid });
  return r;
}

/** pidfd_getfd(2): a copy of fd `targetFd` of the process behind `pidfd` (FD_CLOEXEC set). */
export function pidfdGetfd(pidfd: number, targetFd: number): number {
  const r = Number(fn('int pidfd_getfd(int pidfd, int targetfd, unsigned int flags)')(pidfd, targetFd, 0));
  if (r < 0) throw sysError('pidfd_getfd', `fd ${targetFd}`, lastErrno(), { targetFd });
  return r;
}

const RLIMIT_NOFILE = 7;

/** getrlimit(RLIMIT_NOFILE): [soft, hard] */
export function getNofileLimit(): [number, number] {
  const b = Buffer.alloc(16);
  if (Number(fn('int getrlimit(int resource, _Out_ uint8_t *rlim)')(RLIMIT_NOFILE, b)) < 0) throw sysError('getrlimit', undefined, lastErrno());
  return [Number(b.readBigUInt64LE(0)), Number(b.readBigUInt64LE(8))];
}

/** setrlimit(RLIMIT_NOFILE) */
export function setNofileLimit(soft: number, hard: number): void {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(soft), 0);
  b.writeBigUInt64LE(BigInt(hard), 8);
  if (Number(fn('int setrlimit(int resource, const uint8_t *rlim)')(RLIMIT_NOFILE, b)) < 0) throw sysError('setrlimit', undefined, lastErrno(), { detail: `(RLIMIT_NOFILE ${soft}/${hard})` });
}

/**
 * write(2) that reports failure as -errno instead of throwing: for hot loops where failures are
 * expected (answering fanotify events by fd number, where ENOENT means "nothing pending").
 */
export function writeRaw(fd: number, buf: Buffer): number {
  const r = Number(fn('int64_t write(int fd, const uint8_t *buf, uint64_t count)')(fd, buf, buf.length));
  return r < 0 ? -lastErrno() : r;
}
