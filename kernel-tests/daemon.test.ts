/**
 * The daemon conformance suite (test/conformance/daemon-suite.ts) on the fscache front end: the
 * real 6.12 kernel path inside the test VM — `nydus-ts daemon` (supervisor + serving child) on
 * /dev/cachefiles, images registered by `nydus-ts mount` and mounted by fsid. The same cases run
 * on the host against the fanotify front end (test/frontend-fanotify.test.ts).
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { defineDaemonConformance } from '../test/conformance/daemon-suite';

const IN_VM = 'kernel tests must run inside the test VM (node dist/test/kernel-vm.test.js)';

defineDaemonConformance({
  frontend: 'fscache',
  // the > 4 GiB sparse file takes minutes to read back under emulation; the host suite covers it
  largeTree: false,
  check: () => {
    assert.ok(process.env.NYDUS_VM_CACHE_DIR && fs.existsSync('/dev/cachefiles'), `/dev/cachefiles or the ext4 cache disk is missing: ${IN_VM}`);
  },
  cacheDir: () => fs.mkdtempSync(path.join(process.env.NYDUS_VM_CACHE_DIR!, 'cache-')),
  daemonArgs: (dir) => ['--fscache', dir],
});
