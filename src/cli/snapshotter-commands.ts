/**
 * CLI for the containerd side: `snapshotter`, a containerd proxy snapshotter plugin
 * (`[proxy_plugins.nydus-ts]` in containerd's config) on a unix socket.
 */
import { Command } from 'commander';
import * as path from 'node:path';
import { NydusError } from '../errors';
import { positiveInt, prefetchFlags } from './daemon-commands';
// The gRPC stack and the snapshotter load inside the action, so `--help` and other commands
// start without them.

export const DEFAULT_SNAPSHOTTER_ROOT = '/var/lib/nydus-ts/snapshotter';
export const DEFAULT_SNAPSHOTTER_ADDRESS = '/run/nydus-ts/snapshotter.sock';

/** A decimal integer option within [min, max], or an ERR_INVALID_ARGUMENT naming the flag. */
function intInRange(flag: string, v: string, min: number, max: number, unit: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < min || n > max) throw new NydusError('ERR_INVALID_ARGUMENT', `${flag} ${v}: must be an integer from ${min} to ${max} (${unit})`);
  return n;
}

export function addSnapshotterCommands(program: Command): void {
  program
    .command('snapshotter')
    .description('containerd proxy snapshotter (gRPC containerd.services.snapshots.v1.Snapshots on a unix socket): plain OCI layers as directories + overlayfs, like containerd\'s overlayfs snapshotter; nydus images lazily (data layers never downloaded, the rootfs an overlay on the daemon\'s EROFS mount of the image under <root>/images); runs until SIGTERM/SIGINT')
    .option('--root <dir>', 'state directory: metadata.json, snapshots/<id>/{fs,work}, images/<id>/mnt (nydus image mounts), daemon/ and cache/ (our own daemon)', DEFAULT_SNAPSHOTTER_ROOT)
    .option('--address <sock>', 'unix socket containerd dials (proxy_plugins address)', DEFAULT_SNAPSHOTTER_ADDRESS)
    .option('--daemon-apisock <sock>', 'API socket of the nydus-ts daemon that serves nydus images lazily (default: start our own daemon, --frontend auto, cache under --root; see --daemon-start)')
    .option('--daemon-start <when>', 'when our own daemon starts: startup (with the snapshotter, as nydus-snapshotter starts its shared daemon, so no container waits for it) or first-mount (on the first nydus image)', 'startup')
    .option('--insecure-registry <host[:port]>', 'a registry reached over plain HTTP (repeatable; loopback registries always are)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--prefetch', "nydus images: after mounting one, fetch the files of its prefetch table in the background (reads go first; default off, as nydusd)")
    .option('--prefetch-all', 'nydus images: prefetch the listed files, then the whole blobs (implies --prefetch)')
    .option('--prefetch-threads <n>', 'concurrent prefetch requests (default 8)', (v) => positiveInt('--prefetch-threads', v))
    .option('--prefetch-merge-size <bytes>', 'the largest merged prefetch request (default 1048576)', (v) => positiveInt('--prefetch-merge-size', v))
    .option('--prefetch-bandwidth <bytes/s>', 'prefetch bandwidth limit (default 0 = unlimited)', (v) => positiveInt('--prefetch-bandwidth', v, true))
    .option('--amplify-io <bytes>', 'nydus images: the window a small read is widened to, bytes, 4096..268435456 (nydusd rafs.batch_size / amplify_io, whose default is 1048576; ours is measured on container start-up, bench/README.md)', '131072')
    .option('--read-ahead-kb <kb>', 'nydus images on the fanotify front end: read_ahead_kb of each image\'s EROFS mount, 0..65536 (the size of its reads of blob files and of mmap read-around; 0 keeps the kernel\'s 128)', '128')
    .option('-l, --log-level <level>', 'trace|debug|info|warn|error', 'info')
    .action(async (o) => {
      const { runSnapshotter } = await import('../containerd/service');
      const daemonApiSock = o.daemonApisock === undefined ? undefined : path.resolve(o.daemonApisock);
      if (o.daemonStart !== 'startup' && o.daemonStart !== 'first-mount') throw new NydusError('ERR_INVALID_ARGUMENT', `--daemon-start ${o.daemonStart}: must be startup or first-mount`);
      const amplifyIo = intInRange('--amplify-io', o.amplifyIo, 4096, 256 * 1024 * 1024, 'bytes');
      const readaheadKb = intInRange('--read-ahead-kb', o.readAheadKb, 0, 65536, 'KiB');
      await runSnapshotter({ root: o.root, address: o.address, daemonApiSock, insecureRegistries: o.insecureRegistry, logLevel: o.logLevel,
        prefetch: prefetchFlags(o), amplifyIo, readaheadKb, daemonStart: o.daemonStart,
      });
      await new Promise(() => undefined); // serves until a signal
    });

  program
    .command('pull')
    .description('pull an image through containerd\'s CRI image service (runtime.v1.ImageService/PullImage, namespace k8s.io): the path that passes the image reference to snapshotters, so nydus images are pulled lazily; then `ctr -n k8s.io run --snapshotter nydus-ts REF ID CMD`')
    .option('--address <sock>', 'containerd\'s socket', '/run/containerd/containerd.sock')
    .option('--creds <user:password>', 'registry credentials for this pull')
    .argument('<ref>')
    .action(async (ref: string, o) => {
      const { criPull } = await import('../containerd/cri-pull');
      const id = await criPull(ref, { address: o.address, creds: o.creds });
      process.stdout.write(`${id}\n`);
    });
}
