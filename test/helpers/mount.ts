/** Real mounts for tests (root on the host): loop-mounted EROFS images and overlayfs. */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { lsetxattr, mknod, lutimens } from '../../src/sys/native';
import { readTar } from '../../src/builder/tar-reader';

export const REPO = path.resolve(__dirname, '..', '..', '..');
export const CLI = path.join(REPO, 'dist', 'src', 'cli', 'main.js');
export const SHARED = process.env.NYDUS_TS_SHARED ?? path.resolve(REPO, '..', 'shared');

export interface CliResult { status: number; stdout: string; stderr: string }

/** Run the nydus-ts CLI; returns status and output (never throws on a non-zero exit). */
export function cli(args: string[], opts: { input?: Buffer | string } = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], { input: opts.input, maxBuffer: 256 << 20, encoding: 'utf8' });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Run the CLI and fail with its stderr unless it exits 0. */
export function cliOk(args: string[], opts: { input?: Buffer | string } = {}): CliResult {
  const r = cli(args, opts);
  if (r.status !== 0) throw new Error(`nydus-ts ${args.join(' ')} exited ${r.status}:\n${r.stderr}${r.stdout}`);
  return r;
}

export function sh(cmd: string, args: string[], opts: { input?: Buffer | string; cwd?: string } = {}): string {
  return execFileSync(cmd, args, { input: opts.input, cwd: opts.cwd, maxBuffer: 256 << 20, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
}

export class Mounts {
  private stack: (() => void)[] = [];
  /** mount -t erofs with the given options; returns the mount point */
  erofs(source: string, mnt: string, options: string[]): string {
    fs.mkdirSync(mnt, { recursive: true });
    sh('mount', ['-t', 'erofs', '-o', ['ro', ...options].join(','), source, mnt]);
    this.stack.push(() => sh('umount', [mnt]));
    return mnt;
  }
  /** attach a loop device (read-only) and return its path */
  loop(file: string): string {
    const dev = sh('losetup', ['-r', '-f', '--show', file]).trim();
    this.stack.push(() => sh('losetup', ['-d', dev]));
    return dev;
  }
  overlay(lowers: string[], mnt: string): string {
    fs.mkdirSync(mnt, { recursive: true });
    sh('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${lowers.join(':')}`, mnt]);
    this.stack.push(() => sh('umount', [mnt]));
    return mnt;
  }
  cleanup(): void {
    while (this.stack.length) {
      const f = this.stack.pop()!;
      try {
        f();
      } catch {
        // keep unwinding; a stuck mount shows up in the next assertion anyway
      }
    }
  }
}

/**
 * Turn the OCI whiteout markers of an extracted layer into overlayfs form: `.wh.NAME` becomes a
 * 0:0 character device NAME, `.wh..wh..opq` the `trusted.overlay.opaque` xattr of its directory.
 * Directory mtimes are kept (removing a marker touches its directory).
 */
export function ociWhiteoutsToOverlay(dir: string): void {
  const st = fs.lstatSync(dir, { bigint: true });
  for (const name of fs.readdirSync(dir)) {
    const p = path.join(dir, name);
    if (name === '.wh..wh..opq') {
      fs.rmSync(p);
      lsetxattr(dir, 'trusted.overlay.opaque', Buffer.from('y'));
    } else if (name.startsWith('.wh.')) {
      fs.rmSync(p);
      mknod(path.join(dir, name.slice(4)), 0o020000 | 0o644, 0, 0);
    } else if (fs.lstatSync(p).isDirectory()) ociWhiteoutsToOverlay(p);
  }
  lutimens(dir, st.atimeNs, st.mtimeNs);
}

/**
 * Set the directory mtimes of an extracted layer from the archive's directory entries, as
 * containerd's unpacker does once all entries are in: GNU tar restores them as it leaves a
 * directory, which is wrong for archives that come back to a directory later.
 */
export async function dirMtimesFromTar(tarFile: string, out: string): Promise<void> {
  for await (const e of readTar(fs.createReadStream(tarFile), { name: tarFile })) {
    if (e.type !== 'dir') continue;
    const ns = BigInt(e.mtime) * 1_000_000_000n + BigInt(e.mtimeNsec);
    lutimens(Buffer.concat([Buffer.from(out + '/'), e.path]), ns, ns);
  }
}
