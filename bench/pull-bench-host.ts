/**
 * Host side of the pull benchmark: makes (and caches) the OCI layout of the Debian rootfs, boots
 * the test VM once (kernel-tests/vm.ts, the same kernel and QEMU setup as the kernel tests) and
 * runs bench/pull-bench.ts inside it, streaming the guest's progress and report. Options not
 * listed below go to the guest benchmark.
 *
 *   node dist/bench/pull-bench-host.js [--rootfs-tar TAR] [--layers 1|2] [--slim] [--rebuild-layout]
 *        [--timeout SECONDS] [--memory-mb N] [--disk-mb N] [--verbose] [GUEST OPTIONS…]
 *
 * The layout is built natively here (gzip is slow under TCG) into
 * ${NYDUS_TS_CACHE:-<repo>/.cache}/bench/pull-oci-<layers>l[-slim], reused while the rootfs tar
 * is unchanged; the guest copies it to its ext4 scratch disk before pushing it. The rootfs tar
 * comes from scripts/make-rootfs.sh --cache-only unless --rootfs-tar is given. --output-json is a
 * host path the guest writes over 9p (not under /run, /proc, /sys or /dev).
 */
import * as path from 'node:path';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { runInVm, findKernel, guestVisible, repoRoot } from '../kernel-tests/vm';
import { USAGE as GUEST_USAGE, buildRootfsLayout, LayoutInfo } from './pull-bench';

const HOST_USAGE = `usage: node dist/bench/pull-bench-host.js [host options] [guest options]
Boots the test VM once and runs the pull benchmark in it (bench/pull-bench.ts).

Host options:
  --rootfs-tar TAR      the rootfs tar (default: scripts/make-rootfs.sh --cache-only, which
                        bootstraps it from the Debian mirror the first time)
  --layers 1|2          one gzip layer (the rootfs tar as is, default) or two (everything but
                        /var, then /var)
  --slim                leave apt's package lists and downloaded .debs out of the image
  --rebuild-layout      rebuild the cached OCI layout
  --timeout S           kill the VM after S seconds (default 3600)
  --memory-mb N         guest RAM (default 2048)
  --disk-mb N           guest ext4 scratch disk, sparse (default 4096)
  --verbose             show the kernel's and the VM init's console lines too

Guest options (--oci-layout is set by the host):
`;

function log(msg: string): void {
  process.stderr.write(`pull-bench-host: ${msg}\n`);
}

async function ensureLayout(tar: string, layers: number, slim: boolean, rebuild: boolean): Promise<string> {
  const cache = process.env.NYDUS_TS_CACHE || path.join(repoRoot(), '.cache');
  const dir = path.join(cache, 'bench', `pull-oci-${layers}l${slim ? '-slim' : ''}`);
  const st = fs.statSync(tar);
  const source = { tar: path.resolve(tar), size: st.size, mtime_ms: Math.floor(st.mtimeMs) };
  const stampFile = path.join(dir, 'pull-bench-source.json');
  if (!rebuild && fs.existsSync(path.join(dir, 'pull-bench-layout.json')) && fs.existsSync(stampFile)) {
    const old = JSON.parse(fs.readFileSync(stampFile, 'utf8')) as typeof source;
    if (old.tar === source.tar && old.size === source.size && old.mtime_ms === source.mtime_ms) {
      log(`using the cached OCI layout ${dir}`);
      return dir;
    }
  }
  log(`building the OCI layout ${dir} from ${tar} (${layers} layer(s)${slim ? ', slim' : ''})`);
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const t0 = Date.now();
  const info: LayoutInfo = await buildRootfsLayout(tar, dir, { layers, slim, log: (m) => log(m) });
  fs.writeFileSync(stampFile, JSON.stringify(source, null, 2) + '\n');
  log(`OCI layout ready in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${info.layers.map((l) => `${l.digest.slice(7, 19)} ${(l.size / (1 << 20)).toFixed(1)} MiB`).join(', ')}`);
  return dir;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  let timeoutS = 3600;
  let memoryMB = 2048;
  let diskMB = 4096;
  let verbose = false;
  let rootfsTar: string | undefined;
  let layers = 1;
  let slim = false;
  let rebuild = false;
  const guest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${k} needs a value`);
      return v;
    };
    switch (k) {
      case '--timeout': timeoutS = Number(val()); break;
      case '--memory-mb': memoryMB = Number(val()); break;
      case '--disk-mb': diskMB = Number(val()); break;
      case '--verbose': verbose = true; break;
      case '--rootfs-tar': rootfsTar = path.resolve(val()); break;
      case '--layers': layers = Number(val()); break;
      case '--slim': slim = true; break;
      case '--rebuild-layout': rebuild = true; break;
      case '-h':
      case '--help':
        // --help must not boot a VM, build a kernel or a rootfs
        process.stdout.write(HOST_USAGE + GUEST_USAGE);
        return 0;
      case '--oci-layout':
        throw new Error(`${k}: the host sets the guest's image itself (use --rootfs-tar, --layers, --slim)`);
      case '--output-json': {
        const p = path.resolve(val());
        if (!guestVisible(p)) throw new Error(`${k} ${p}: the guest cannot write there (under /run, /proc, /sys or /dev)`);
        fs.mkdirSync(path.dirname(p), { recursive: true });
        guest.push(k, p);
        break;
      }
      default:
        guest.push(k);
    }
  }
  if (layers !== 1 && layers !== 2) throw new Error('--layers must be 1 or 2');
  if (!(timeoutS > 0) || !(memoryMB >= 512) || !(diskMB >= 1024)) throw new Error('--timeout > 0, --memory-mb ≥ 512 and --disk-mb ≥ 1024 please');
  const root = repoRoot();
  const script = path.join(root, 'dist', 'bench', 'pull-bench.js');
  if (!fs.existsSync(script)) throw new Error(`${script} is missing: build first (npx tsc -p .)`);
  if (!rootfsTar) {
    log('scripts/make-rootfs.sh --cache-only');
    const out = execFileSync('bash', [path.join(root, 'scripts', 'make-rootfs.sh'), '--cache-only'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    rootfsTar = out.trim().split('\n').pop()!;
  }
  if (!fs.existsSync(rootfsTar)) throw new Error(`rootfs tar ${rootfsTar} does not exist`);
  const layout = await ensureLayout(rootfsTar, layers, slim, rebuild);
  if (!guestVisible(layout)) throw new Error(`${layout}: the guest cannot see it (under /run, /proc, /sys or /dev); set NYDUS_TS_CACHE`);
  const kernel = findKernel();
  const t0 = Date.now();
  log(`booting the VM (kernel ${kernel}, ${memoryMB} MiB, ${diskMB} MiB scratch disk); the whole run takes 10–20 minutes under TCG`);
  const r = await runInVm({
    kernel,
    command: [process.execPath, script, '--oci-layout', layout, ...guest],
    timeoutMs: timeoutS * 1000,
    memoryMB,
    diskMB,
    cwd: root,
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('NYDUS_TS_') && k !== 'NYDUS_TS_RUN_DIR' && k !== 'NYDUS_TS_FSCACHE') as [string, string][]),
    onConsole: (raw) => {
      // SeaBIOS clears the screen: drop terminal escapes so that the kernel's first line is seen as one
      const line = raw.replace(/\x1b(?:\[[0-9;?]*[A-Za-z]|c)/g, '');
      const boot = /^(SeaBIOS|Booting from ROM)/.test(line) || (raw !== line && !line.trim());
      if (verbose || (!boot && !/^\[\s*\d+\.\d+\]/.test(line) && !line.startsWith('[qemu]') && !line.startsWith('nydus-vm-init:') && !line.startsWith('@@nydus-vm-exit'))) {
        process.stdout.write(line + '\n');
      }
    },
  });
  log(`VM run ${((Date.now() - t0) / 1000).toFixed(0)} s, guest exit status ${r.exitCode}`);
  if (r.timedOut) log(`the VM timed out after ${timeoutS} s`);
  if (r.exitCode !== 0 && !verbose) {
    const tail = r.console.split('\n').filter((l) => /^\[\s*\d+\.\d+\]/.test(l)).slice(-30);
    if (tail.length) process.stderr.write(`last kernel messages:\n${tail.join('\n')}\n`);
  }
  return r.exitCode < 0 ? 1 : r.exitCode;
}

main().then((c) => (process.exitCode = c), (e) => {
  process.stderr.write(`pull-bench-host: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
