/**
 * The fanotify front end's event thread (a worker): poll(2) the group fd and a wake pipe, read()
 * batches of events, answer reads of present ranges at once (the fast path: the presence map,
 * shared as SharedArrayBuffers, covers the range and SEEK_HOLE on the event fd finds no hole),
 * and post everything else to the main thread (src/kernel/fanotify.ts), which fills and answers.
 * Blocking reads stay off the main thread, so signals and the API keep working (spec §9).
 */
import * as fs from 'node:fs';
import { MessagePort, isMainThread, parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { PAGE } from './blob-cache-file';
import { FanotifyEvent, parseEvents, respond, FAN_ALLOW, FAN_CLOSE_WRITE, FAN_DENY, FAN_MODIFY, FAN_PRE_ACCESS_MASK, FAN_Q_OVERFLOW } from './fanotify-group';
import { lseek, poll, POLLIN, POLLNVAL, SEEK_HOLE } from '../sys/native';
import { FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM } from './access-trace';

export const READER_ROLE = 'nydus-ts:fanotify-reader';
export const now = (): number => performance.timeOrigin + performance.now();

/** A read the event thread could not answer from the presence map. */
export interface SlowEvent {
  fd: number;
  /** `<dev>:<ino>` of the file read, '' if fstat failed */
  key: string;
  offset: number;
  count: number;
  pid: number;
  /** when the event was read (ms since the epoch, µs resolution) */
  t0: number;
  /** position in the group's event stream (access traces order reads and opens by it) */
  seq: number;
}

/** An open of a file on a traced mount (access-trace.ts), already allowed. */
export interface OpenEvent {
  seq: number;
  key: string;
  pid: number;
  exec: boolean;
}

export type ToReader = { t: 'blob'; key: string; slot: number; bits: SharedArrayBuffer; size: number } | { t: 'drop'; key: string };
export type FromReader =
  | { t: 'slow'; evs: SlowEvent[] }
  /** fast-path answers: slot and latency (µs) per event, and what was read (for access traces) */
  | { t: 'fast'; slots: number[]; us: number[]; seq: number[]; off: number[]; cnt: number[]; pid: number[] }
  | { t: 'open'; evs: OpenEvent[] }
  | { t: 'modify'; keys: string[] }
  | { t: 'overflow' }
  | { t: 'log'; level: 'debug' | 'info' | 'warn' | 'error'; msg: string }
  | { t: 'dead'; msg: string };

export interface ReaderInit {
  role: typeof READER_ROLE;
  group: number;
  wakeFd: number;
  stop: SharedArrayBuffer;
  port: MessagePort;
  pollTimeoutMs: number;
}

function runReader(init: ReaderInit): void {
  const out = parentPort!;
  const stop = new Int32Array(init.stop);
  const blobs = new Map<string, { slot: number; bits: Uint8Array; size: number }>();
  const buf = Buffer.alloc(64 << 10);
  const wakeBuf = Buffer.alloc(64);
  const evs: FanotifyEvent[] = [];
  let seq = 0;
  const keyOf = (fd: number): string => {
    try {
      const st = fs.fstatSync(fd, { bigint: true });
      return `${st.dev}:${st.ino}`;
    } catch {
      return '';
    }
  };
  const covered = (b: { bits: Uint8Array; size: number }, a: number, e: number): boolean => {
    for (let p = Math.floor(a / PAGE); p * PAGE < e; p++) if ((Atomics.load(b.bits, p >> 3) & (1 << (p & 7))) === 0) return false;
    return true;
  };
  while (Atomics.load(stop, 0) === 0) {
    for (let m = receiveMessageOnPort(init.port); m; m = receiveMessageOnPort(init.port)) {
      const msg = m.message as ToReader;
      if (msg.t === 'blob') blobs.set(msg.key, { slot: msg.slot, bits: new Uint8Array(msg.bits), size: msg.size });
      else blobs.delete(msg.key);
    }
    let n = 0;
    try {
      n = fs.readSync(init.group, buf, 0, buf.length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EBADF') {
        out.postMessage({ t: 'dead', msg: 'fanotify group fd is closed (EBADF)' } satisfies FromReader);
        return;
      }
      if (code !== 'EAGAIN' && code !== 'EINTR') {
        // EMFILE/ENFILE: no fd for the event; the kernel keeps it queued — back off briefly
        out.postMessage({ t: 'log', level: 'error', msg: `fanotify: read() of the group failed: ${code} (EMFILE/ENFILE: too many open fds; raise RLIMIT_NOFILE)` } satisfies FromReader);
        Atomics.wait(stop, 0, 0, 20);
      }
    }
    if (n > 0) {
      const t0 = now();
      evs.length = 0;
      try {
        parseEvents(buf, n, evs);
      } catch (e) {
        out.postMessage({ t: 'log', level: 'error', msg: `${(e as Error).message}; the rest of this batch is dropped` } satisfies FromReader);
      }
      const slow: SlowEvent[] = [];
      const fastSlots: number[] = [];
      const fastUs: number[] = [];
      const fastSeq: number[] = [];
      const fastOff: number[] = [];
      const fastCnt: number[] = [];
      const fastPid: number[] = [];
      const opens: OpenEvent[] = [];
      const modified: string[] = [];
      for (const ev of evs) {
        if (ev.mask & FAN_Q_OVERFLOW) {
          out.postMessage({ t: 'overflow' } satisfies FromReader);
          continue;
        }
        if (ev.fd < 0) continue;
        if (ev.mask & (FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM)) {
          // an access trace's mark on a traced mount (access-trace.ts): never refused, only noted
          respond(init.group, ev.fd, FAN_ALLOW);
          opens.push({ seq: seq++, key: keyOf(ev.fd), pid: ev.pid, exec: (ev.mask & FAN_OPEN_EXEC_PERM) !== 0 });
          fs.closeSync(ev.fd);
          continue;
        }
        if (!(ev.mask & FAN_PRE_ACCESS_MASK)) {
          if (ev.mask & (FAN_MODIFY | FAN_CLOSE_WRITE)) modified.push(keyOf(ev.fd));
          else respond(init.group, ev.fd, FAN_DENY); // a permission event we never asked for
          fs.closeSync(ev.fd);
          continue;
        }
        const key = keyOf(ev.fd);
        const evSeq = seq++;
        const b = blobs.get(key);
        if (b && ev.offset !== undefined && ev.count !== undefined) {
          const a = ev.offset - (ev.offset % PAGE);
          const e = Math.min(ev.offset + ev.count, b.size);
          let ok = a >= e; // past the end: nothing to fill
          if (!ok && covered(b, a, e)) {
            try {
              const hole = lseek(ev.fd, a, SEEK_HOLE);
              ok = hole >= e;
            } catch {
              ok = false;
            }
          }
          if (ok && respond(init.group, ev.fd, FAN_ALLOW) === 0) {
            fs.closeSync(ev.fd);
            fastSlots.push(b.slot);
            fastUs.push(Math.round((now() - t0) * 1000));
            fastSeq.push(evSeq);
            fastOff.push(ev.offset);
            fastCnt.push(ev.count);
            fastPid.push(ev.pid);
            continue;
          }
        }
        slow.push({ fd: ev.fd, key, offset: ev.offset ?? -1, count: ev.count ?? -1, pid: ev.pid, t0, seq: evSeq });
      }
      if (slow.length) out.postMessage({ t: 'slow', evs: slow } satisfies FromReader);
      if (opens.length) out.postMessage({ t: 'open', evs: opens } satisfies FromReader);
      if (fastSlots.length) out.postMessage({ t: 'fast', slots: fastSlots, us: fastUs, seq: fastSeq, off: fastOff, cnt: fastCnt, pid: fastPid } satisfies FromReader);
      if (modified.length) out.postMessage({ t: 'modify', keys: modified } satisfies FromReader);
      continue; // read again until EAGAIN
    }
    let r;
    try {
      r = poll([{ fd: init.group, events: POLLIN }, { fd: init.wakeFd, events: POLLIN }], init.pollTimeoutMs);
    } catch (e) {
      out.postMessage({ t: 'log', level: 'error', msg: `fanotify: ${(e as Error).message}` } satisfies FromReader);
      Atomics.wait(stop, 0, 0, 100);
      continue;
    }
    if (r.revents[0] & POLLNVAL) {
      out.postMessage({ t: 'dead', msg: 'fanotify group fd is not open (POLLNVAL)' } satisfies FromReader);
      return;
    }
    if (r.revents[1]) {
      try {
        while (fs.readSync(init.wakeFd, wakeBuf, 0, wakeBuf.length, null) > 0) {
          /* drain */
        }
      } catch {
        // EAGAIN: drained
      }
    }
  }
}

if (!isMainThread && (workerData as ReaderInit | undefined)?.role === READER_ROLE) {
  runReader(workerData as ReaderInit);
}
