/**
 * The source image as a container runtime sees it (root on the host): each OCI layer tar of a
 * built image extracted as an overlayfs lower dir (0:0 char whiteouts, opaque xattr, directory
 * mtimes from the archive), all of them overlay-mounted read-only. Reference trees for checks of
 * lazily mounted nydus images.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Mounts, ociWhiteoutsToOverlay, dirMtimesFromTar, sh } from './mount';
import type { BuiltImage } from './registry';

const TAR_FLAGS = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--format=pax', '--sort=name'];

/** Overlay-mount `img`'s layers at `<dir>/overlay` (lowers in `<dir>/lowerN`); `mounts` unmounts it. */
export async function overlayOfImage(img: Pick<BuiltImage, 'layers'>, dir: string, mounts: Mounts): Promise<string> {
  const lowers: string[] = [];
  for (const [i, l] of img.layers.entries()) {
    const out = path.join(dir, `lower${i}`);
    fs.mkdirSync(out, { recursive: true });
    sh('tar', [...TAR_FLAGS, '-xpf', l.tarFile, '-C', out]);
    ociWhiteoutsToOverlay(out);
    await dirMtimesFromTar(l.tarFile, out);
    lowers.unshift(out);
  }
  return mounts.overlay(lowers, path.join(dir, 'overlay'));
}
