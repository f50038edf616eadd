/**
 * Host side of the read benchmark: boots the test VM and runs bench/read-bench.ts inside it
 * (bench/lib/vm-launch.ts). Every option not listed in --help goes to the guest benchmark;
 * --output-json FILE and --cpu-prof DIR are host paths the guest writes over 9p. The kernel comes
 * from scripts/get-test-kernel.sh ($NYDUS_TS_TEST_KERNEL, the cache, or a build).
 */
import { USAGE as GUEST_USAGE } from './read-bench';
import { benchMain } from './lib/harness';
import { launchInVm } from './lib/vm-launch';

benchMain('read-bench-host', () => launchInVm({
  name: 'read-bench',
  script: 'dist/bench/read-bench.js',
  summary: 'Boots the test VM and runs the read benchmark in it (bench/read-bench.ts).',
  guestUsage: () => GUEST_USAGE,
  defaults: { timeoutS: 1800, memoryMB: 2048, diskMB: 2048 },
  hostSpec: {},
  guestPaths: { '--output-json': 'file', '--cpu-prof': 'dir' },
}, process.argv.slice(2)));
