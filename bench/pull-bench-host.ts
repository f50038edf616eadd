/**
 * Host side of the pull benchmark: makes (and caches) the OCI layout of the Debian rootfs, boots
 * the test VM once and runs bench/pull-bench.ts inside it (bench/lib/vm-launch.ts). Options not
 * listed in --help go to the guest benchmark.
 *
 * The layout is built natively here (gzip is slow under TCG) into
 * ${NYDUS_TS_CACHE:-<repo>/.cache}/bench/pull-oci-<layers>l[-slim], reused while the rootfs tar
 * is unchanged; the guest copies it to its ext4 scratch disk before pushing it. The rootfs tar
 * comes from scripts/make-rootfs.sh --cache-only unless --rootfs-tar is given.
 */
import * as path from 'node:path';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { guestVisible } from '../kernel-tests/vm';
import { USAGE as GUEST_USAGE } from './pull-bench';
import { benchMain, CACHE_DIR, opt, REPO, UsageError } from './lib/harness';
import { buildRootfsLayout, cachedLayout, fileStamp } from './lib/oci-layout';
import { launchInVm } from './lib/vm-launch';

benchMain('pull-bench-host', () => launchInVm({
  name: 'pull-bench',
  script: 'dist/bench/pull-bench.js',
  summary: 'Boots the test VM once and runs the pull benchmark in it (bench/pull-bench.ts); the whole run takes 10–20 minutes under TCG.',
  guestUsage: () => GUEST_USAGE,
  defaults: { timeoutS: 3600, memoryMB: 2048, diskMB: 4096 },
  hostSpec: {
    rootfsTar: opt.path('--rootfs-tar', 'the rootfs tar (default: scripts/make-rootfs.sh --cache-only, which bootstraps it from the Debian mirror the first time)', 'TAR'),
    layers: opt.choice('--layers', ['1', '2'] as const, '1', 'one gzip layer (the rootfs tar as is) or two (everything but /var, then /var)'),
    slim: opt.flag('--slim', "leave apt's package lists and downloaded .debs out of the image"),
    rebuildLayout: opt.flag('--rebuild-layout', 'rebuild the cached OCI layout'),
  },
  guestPaths: { '--output-json': 'file' },
  reserved: { '--oci-layout': "the host sets the guest's image itself (use --rootfs-tar, --layers, --slim)" },
  prepare: async (h, log) => {
    const tar = h.rootfsTar ?? execFileSync('bash', [path.join(REPO, 'scripts', 'make-rootfs.sh'), '--cache-only'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim().split('\n').pop()!;
    if (!fs.existsSync(tar)) throw new UsageError(`rootfs tar ${tar} does not exist`);
    const layers = Number(h.layers);
    const dir = path.join(CACHE_DIR, 'bench', `pull-oci-${layers}l${h.slim ? '-slim' : ''}`);
    const info = await cachedLayout(dir, { tar: fileStamp(tar), layers, slim: h.slim }, (d) => buildRootfsLayout(tar, d, { layers, slim: h.slim, log }), { rebuild: h.rebuildLayout, log });
    if (!guestVisible(info.dir)) throw new UsageError(`${info.dir}: the guest cannot see it (under /run, /proc, /sys or /dev); set NYDUS_TS_CACHE`);
    return ['--oci-layout', info.dir];
  },
}, process.argv.slice(2)));
