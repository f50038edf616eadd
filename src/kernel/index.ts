/**
 * Choosing and opening a kernel front end. Two steps, because of failover: the supervisor opens
 * the kernel handle once and holds it (`openKernelHandle`: the bound /dev/cachefiles fd, or the
 * fanotify group with its marked bind mount); each serving child builds its front end on the
 * inherited fd (`createFrontend`).
 */
import * as fs from 'node:fs';
import type { FrontendMount, KernelFrontend } from '../daemon/interfaces';
import { NydusError } from '../errors';
import { CACHEFILES_DEVICE, CachefilesFrontend, openCachefilesDevice } from './cachefiles';
import { openFanotifyCache } from './fanotify-group';
import type { CachefilesLimits } from './cachefiles-cache';
import { FanotifyFrontend } from './fanotify';

export type FrontendKind = 'fscache' | 'fanotify';
export type FrontendChoice = FrontendKind | 'auto';

export interface KernelHandle {
  kind: FrontendKind;
  /** fds the serving child inherits, from fd 4 on */
  fds: number[];
  /** release the kernel side (after the last child stopped cleanly) */
  close(): void;
}

type Log = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, ctx?: Record<string, unknown>) => void;

/**
 * Open the kernel side for `choice`. `auto`: fscache where /dev/cachefiles binds in on-demand
 * mode, else fanotify where the kernel has pre-content events; otherwise an error naming what
 * each lacks.
 */
export function openKernelHandle(choice: FrontendChoice, cacheDir: string, opts: { tag?: string; log?: Log; limits?: CachefilesLimits } = {}): KernelHandle {
  const fscache = (): KernelHandle => {
    const fd = openCachefilesDevice({ dir: cacheDir, tag: opts.tag, limits: opts.limits });
    return { kind: 'fscache', fds: [fd], close: () => fs.closeSync(fd) };
  };
  const fanotify = (): KernelHandle => {
    const c = openFanotifyCache(cacheDir);
    return { kind: 'fanotify', fds: [c.group], close: () => c.close() };
  };
  if (choice === 'fscache') return fscache();
  if (choice === 'fanotify') return fanotify();
  const why: string[] = [];
  if (fs.existsSync(CACHEFILES_DEVICE)) {
    try {
      return fscache();
    } catch (e) {
      why.push(`fscache: ${(e as Error).message}`);
    }
  } else why.push(`fscache: ${CACHEFILES_DEVICE} does not exist (no CONFIG_CACHEFILES_ONDEMAND / EROFS over fscache)`);
  try {
    const h = fanotify();
    opts.log?.('info', `front end: fanotify pre-content events (${why[0]})`);
    return h;
  } catch (e) {
    if (e instanceof NydusError && e.code === 'ERR_INVALID_ARGUMENT') throw e; // a bad cache dir, not a kernel gap
    why.push(`fanotify: ${(e as Error).message}`);
  }
  throw new NydusError('ERR_KERNEL', `no kernel front end works here — ${why.join('; ')}`);
}

export interface CreateFrontendOptions {
  kind: FrontendKind;
  /** the inherited kernel fd (fd 4 in a serving child) */
  fd: number;
  cacheDir: string;
  tag?: string;
  /** a replacement child: restore (fscache) / deny stale events and adopt mounts (fanotify) */
  restore: boolean;
  mounts?: FrontendMount[];
  onMountsChanged?: (mounts: FrontendMount[]) => void;
  log: Log;
}

export function createFrontend(o: CreateFrontendOptions): KernelFrontend {
  if (o.kind === 'fscache') {
    return CachefilesFrontend.open({ dir: o.cacheDir, tag: o.tag, inheritedFd: o.fd, restore: o.restore, log: o.log });
  }
  return new FanotifyFrontend({ cacheDir: o.cacheDir, group: o.fd, restore: o.restore, mounts: o.mounts, onMountsChanged: o.onMountsChanged, log: o.log });
}
