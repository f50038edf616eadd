/**
 * A private containerd for benchmarks, like test/helpers/containerd.ts' (private root, state and
 * sockets; `[proxy_plugins.nydus-ts]`; disable_snapshot_annotations = false), with the CRI
 * snapshotter chosen (containerd's own `overlayfs`, or `nydus-ts`) so every contender pulls
 * through the same CRI path, and plain-HTTP registries named (CRI mirrors with an http://
 * endpoint: containerd 1.6 speaks plain HTTP only to localhost by itself). Also a watcher of
 * containerd's task events, to time a container's start.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { pidsMentioning, waitFor } from '../../test/helpers/containerd';
import { must, now, run, unmountAll } from './harness';

export const NS = 'k8s.io';

export interface Ctd {
  dir: string;
  sock: string;
  ctr(args: string[], timeoutMs?: number): Promise<string>;
  /** containerd's /tasks/start events from now on: monotonic seconds (now()) of their arrival, by container id */
  watchStarts(): { starts: Map<string, number>; stop(): void };
  stop(): Promise<void>;
}

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

export async function startContainerd(dir: string, o: { criSnapshotter: string; nydusSock: string; plainHttpRegistries: string[] }): Promise<Ctd> {
  const root = path.join(dir, 'root');
  const state = path.join(dir, 'state');
  const sock = path.join(dir, 'containerd.sock');
  for (const d of [root, state, path.join(dir, 'cni-conf'), path.join(dir, 'opt')]) fs.mkdirSync(d, { recursive: true });
  const config = path.join(dir, 'config.toml');
  fs.writeFileSync(config, [
    'version = 2',
    `root = ${JSON.stringify(root)}`,
    `state = ${JSON.stringify(state)}`,
    '[grpc]',
    `  address = ${JSON.stringify(sock)}`,
    '[ttrpc]',
    `  address = ${JSON.stringify(sock + '.ttrpc')}`,
    '[proxy_plugins.nydus-ts]',
    '  type = "snapshot"',
    `  address = ${JSON.stringify(o.nydusSock)}`,
    '[plugins."io.containerd.grpc.v1.cri"]',
    '  stream_server_address = "127.0.0.1"',
    '  stream_server_port = "0"',
    '[plugins."io.containerd.grpc.v1.cri".containerd]',
    `  snapshotter = ${JSON.stringify(o.criSnapshotter)}`,
    '  disable_snapshot_annotations = false',
    '[plugins."io.containerd.grpc.v1.cri".cni]',
    `  conf_dir = ${JSON.stringify(path.join(dir, 'cni-conf'))}`,
    ...o.plainHttpRegistries.flatMap((h) => [
      `[plugins."io.containerd.grpc.v1.cri".registry.mirrors.${JSON.stringify(h)}]`,
      `  endpoint = [${JSON.stringify(`http://${h}`)}]`,
    ]),
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${JSON.stringify(path.join(dir, 'opt'))}`,
    '',
  ].join('\n'));
  const logFile = path.join(dir, 'containerd.log');
  const out = fs.openSync(logFile, 'a');
  const child = spawn('containerd', ['-c', config], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  children.add(child);
  let exitCode: number | string | undefined;
  const exited = new Promise<void>((resolve) => child.once('exit', (code, sig) => {
    children.delete(child);
    exitCode = code ?? sig ?? -1;
    resolve();
  }));
  const ctr = async (args: string[], timeoutMs?: number): Promise<string> => (await must('ctr', ['-a', sock, '-n', NS, ...args], { timeoutMs })).stdout;
  await waitFor(`containerd on ${sock}`, async () => {
    if (exitCode !== undefined) throw new Error(`containerd exited (${exitCode}):\n${fs.readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n')}`);
    return (await run('ctr', ['-a', sock, 'version'], { timeoutMs: 5000 })).code === 0;
  }, 30_000);
  const watchStarts = (): { starts: Map<string, number>; stop(): void } => {
    const starts = new Map<string, number>();
    const p = spawn('ctr', ['-a', sock, 'events'], { stdio: ['ignore', 'pipe', 'ignore'] });
    children.add(p);
    let buf = '';
    p.stdout!.on('data', (d: Buffer) => {
      const t = now();
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const m = / \/tasks\/start (\{.*\})/.exec(line);
        if (m) starts.set((JSON.parse(m[1]) as { container_id: string }).container_id, t);
      }
    });
    return { starts, stop: () => { p.kill('SIGKILL'); children.delete(p); } };
  };
  const stop = async (): Promise<void> => {
    if (exitCode === undefined) {
      const r = await run('ctr', ['-a', sock, '-n', NS, 'tasks', 'ls', '-q'], { timeoutMs: 10_000 });
      for (const id of r.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) {
        await run('ctr', ['-a', sock, '-n', NS, 'tasks', 'kill', '-s', 'SIGKILL', id], { timeoutMs: 10_000 });
        await run('ctr', ['-a', sock, '-n', NS, 'tasks', 'rm', '-f', id], { timeoutMs: 10_000 });
      }
      const c = await run('ctr', ['-a', sock, '-n', NS, 'containers', 'ls', '-q'], { timeoutMs: 10_000 });
      for (const id of c.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) await run('ctr', ['-a', sock, '-n', NS, 'containers', 'rm', id], { timeoutMs: 10_000 });
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(killer);
    }
    for (const pid of pidsMentioning(sock)) {
      try {
        process.kill(pid, 'SIGKILL'); // a shim that outlived containerd (ours: it names our socket)
      } catch {
        // gone
      }
    }
    unmountAll(dir);
  };
  return { dir, sock, ctr, watchStarts, stop };
}
