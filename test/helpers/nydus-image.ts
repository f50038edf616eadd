/**
 * The rootfs slice of the nydus test image that containers run from (shared by the host's
 * containerd test, test/containerd-nydus.test.ts, and the VM's, kernel-tests/containerd.test.ts):
 * a few binaries of this host with their libraries, the merged-/usr symlinks, os-release.
 */
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';

/** The programs in the image's /usr/bin (exactly these). */
export const BINS = ['dash', 'sh', 'cat', 'ls', 'wc', 'sleep', 'touch', 'rm'];

/** The rootfs slice: merged-/usr symlinks, BINS, their libraries (symlinks and files), os-release. */
export function rootfsPaths(): string[] {
  const out = new Set<string>(['/bin', '/lib', '/lib64', '/usr/lib/os-release', '/etc/os-release', '/usr/share/zoneinfo/Europe']);
  for (const b of BINS) {
    out.add(`/usr/bin/${b}`);
    const real = fs.realpathSync(`/usr/bin/${b}`);
    out.add(real);
    for (const m of execFileSync('ldd', [real], { encoding: 'utf8' }).matchAll(/(\/\S+) \(0x/g)) {
      const lib = m[1].replace(/^\/(lib|lib64)\//, '/usr/$1/');
      out.add(lib);
      out.add(fs.realpathSync(lib));
    }
  }
  return [...out].sort();
}
