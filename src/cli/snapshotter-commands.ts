/**
 * CLI for the containerd side: `snapshotter`, a containerd proxy snapshotter plugin
 * (`[proxy_plugins.nydus-ts]` in containerd's config) on a unix socket.
 */
import { Command } from 'commander';
import * as path from 'node:path';
// The gRPC stack and the snapshotter load inside the action, so `--help` and other commands
// start without them.

export const DEFAULT_SNAPSHOTTER_ROOT = '/var/lib/nydus-ts/snapshotter';
export const DEFAULT_SNAPSHOTTER_ADDRESS = '/run/nydus-ts/snapshotter.sock';

export function addSnapshotterCommands(program: Command): void {
  program
    .command('snapshotter')
    .description('containerd proxy snapshotter (gRPC containerd.services.snapshots.v1.Snapshots on a unix socket): plain OCI layers as directories + overlayfs, like containerd\'s overlayfs snapshotter; runs until SIGTERM/SIGINT')
    .option('--root <dir>', 'state directory: metadata.json and snapshots/<id>/{fs,work}', DEFAULT_SNAPSHOTTER_ROOT)
    .option('--address <sock>', 'unix socket containerd dials (proxy_plugins address)', DEFAULT_SNAPSHOTTER_ADDRESS)
    .option('--daemon-apisock <sock>', 'API socket of the nydus-ts daemon that will serve nydus images lazily (recorded; nydus image support is not in this version)')
    .option('-l, --log-level <level>', 'trace|debug|info|warn|error', 'info')
    .action(async (o) => {
      const { runSnapshotter } = await import('../containerd/service');
      const daemonApiSock = o.daemonApisock === undefined ? undefined : path.resolve(o.daemonApisock);
      await runSnapshotter({ root: o.root, address: o.address, daemonApiSock, logLevel: o.logLevel });
      await new Promise(() => undefined); // serves until a signal
    });
}
