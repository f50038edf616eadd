/**
 * `nydus-ts optimize`, recording: mount the image lazily through a daemon (started when none
 * answers, as `mount` does), start an access trace of that mount, run the workload in a chroot
 * of it (chroot-run.ts), stop the trace, unmount. The trace is the daemon's (src/kernel/
 * access-trace.ts); access-list.ts turns it into files and ranges.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { NydusError } from '../errors';
import { DaemonApiClient } from '../daemon/api-client';
import type { MountTrace } from '../kernel/access-trace';
import { mountRegistered, unmountImage } from '../cli/daemon-commands';
import { runWorkload, WorkloadOptions, WorkloadResult } from './chroot-run';

export type RecordSource =
  | { kind: 'local'; bootstrap: string; blobDir: string }
  | { kind: 'image'; reference: string; insecure?: boolean; platform?: string; creds?: string; registryToken?: string; bootstrapCache?: string };

export interface RecordOptions {
  source: RecordSource;
  /** daemon API socket (a daemon is started on it when none answers) and its cache dir */
  sock: string;
  cacheDir: string;
  /** scratch space for the mount point and the workload's tmpfs */
  scratchDir: string;
  workload: Omit<WorkloadOptions, 'root' | 'workDir'>;
  /** keep the trace of a workload that exits non-zero (default: an error, nothing written) */
  allowFailure?: boolean;
  log?: (msg: string) => void;
}

export interface RecordResult {
  trace: MountTrace;
  /** the bootstrap the image was mounted from (to map the trace onto) */
  bootstrap: string;
  /** `--image`: the fully qualified reference and the manifest digest */
  reference?: string;
  manifestDigest?: string;
  workload: WorkloadResult;
  timings_ms: { mount: number; workload: number; total: number };
}

const interrupted = (): NydusError => new NydusError('ERR_INVALID_ARGUMENT', 'interrupted: the workload was stopped; nothing is written');

export async function recordWorkload(o: RecordOptions): Promise<RecordResult> {
  const t0 = performance.now();
  fs.mkdirSync(o.scratchDir, { recursive: true });
  const mnt = fs.mkdtempSync(path.join(o.scratchDir, '.nydus-optimize-mnt-'));
  // a fresh registration each time: a fresh EROFS superblock, nothing in its page cache
  const fsid = `optimize-${crypto.randomBytes(8).toString('hex')}`;
  let bootstrap: string;
  let reference: string | undefined;
  let manifestDigest: string | undefined;
  let mounted = false;
  let trace: MountTrace | undefined;
  const client = new DaemonApiClient(o.sock, { timeoutMs: 0 });
  // Ctrl-C / SIGTERM: stop the workload, then unmount as usual; nothing is written
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    let frontend: string;
    if (o.source.kind === 'local') {
      const { bootstrap: boot, blobDir } = o.source;
      bootstrap = path.resolve(boot);
      if (!fs.existsSync(bootstrap)) throw new NydusError('ERR_INVALID_ARGUMENT', `--bootstrap ${boot}: no such file`);
      if (!fs.existsSync(blobDir) || !fs.statSync(blobDir).isDirectory()) throw new NydusError('ERR_INVALID_ARGUMENT', `--blob-dir ${blobDir}: not a directory`);
      const r = await mountRegistered({
        mountpoint: mnt, sock: o.sock, fscache: o.cacheDir, fsid, domainId: '', record: { bootstrap },
        registration: (workDir) => ({
          type: 'bootstrap', id: fsid, domain_id: '',
          config_v2: {
            version: 2, id: fsid, backend: { type: 'localfs', localfs: { dir: path.resolve(blobDir) } },
            cache: { type: 'fscache', fscache: { work_dir: workDir } }, metadata_path: bootstrap,
          },
        }),
      });
      frontend = r.frontend;
    } else {
      const { prepareImage, buildRegistration } = await import('../oci/image-mount');
      const s = o.source;
      const img = await prepareImage(s.reference, { insecure: s.insecure, platform: s.platform, creds: s.creds, registryToken: s.registryToken, workDir: s.bootstrapCache });
      bootstrap = img.bootstrap.path;
      reference = img.reference;
      manifestDigest = img.manifestDigest;
      const r = await mountRegistered({
        mountpoint: mnt, sock: o.sock, fscache: o.cacheDir, fsid, domainId: '',
        record: { bootstrap, image: img.reference, manifestDigest: img.manifestDigest },
        registration: (workDir) => buildRegistration({ fsid, domainId: '', workDir, bootstrapPath: bootstrap, backend: img.backend, format: 'v2' }),
      });
      frontend = r.frontend;
    }
    mounted = true;
    if (frontend !== 'fanotify') throw new NydusError('ERR_UNSUPPORTED', `the daemon on ${o.sock} serves the ${frontend} front end, which cannot record access traces; optimize needs the fanotify front end (Linux ≥ 6.14)`);
    const tMount = performance.now();
    o.log?.(`mounted ${reference ?? bootstrap} lazily on ${mnt}; running the workload`);
    if (stop.signal.aborted) throw interrupted();
    await client.startTrace(mnt);
    let workload: WorkloadResult;
    try {
      workload = await runWorkload({ ...o.workload, root: mnt, workDir: o.scratchDir, signal: stop.signal });
    } finally {
      trace = await client.stopTrace(mnt);
    }
    const tRun = performance.now();
    if (workload.aborted) throw interrupted();
    if (workload.exit_code !== 0 && !workload.timed_out && !o.allowFailure) {
      throw new NydusError('ERR_INVALID_ARGUMENT', `the workload (${o.workload.argv.join(' ')}) exited with status ${workload.exit_code}: nothing is written (--allow-failure keeps the trace of a failing workload)`, { exitCode: workload.exit_code });
    }
    return {
      trace, bootstrap, reference, manifestDigest, workload,
      timings_ms: { mount: Math.round(tMount - t0), workload: Math.round(tRun - tMount), total: Math.round(performance.now() - t0) },
    };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    client.close();
    if (mounted) {
      await unmountImage(mnt).catch((e) => o.log?.(`warning: unmounting ${mnt}: ${(e as Error).message}`));
    }
    try {
      fs.rmdirSync(mnt);
    } catch {
      // still mounted (reported above) or gone
    }
  }
}
