// Host-side library that boots the test kernel under QEMU with the host's root
// filesystem as the guest root (9p), runs one command in the guest and returns
// its exit status and console output. See kernel-tests/README.md.

import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { StringDecoder } from "node:string_decoder";

export interface RunInVmOptions {
  /** Path of the bzImage to boot (see findKernel()). */
  kernel: string;
  /** argv (quoted for the guest shell) or a shell command line (run with sh). */
  command: string[] | string;
  /** Kill QEMU after this long; the result then has timedOut: true. */
  timeoutMs: number;
  /** Guest RAM, default 2048. */
  memoryMB?: number;
  /** Guest CPUs, default min(2, host CPUs). */
  cpus?: number;
  /** Size of the (sparse) ext4 scratch disk mounted at /run/nydus-cache, default 2048. */
  diskMB?: number;
  /** Extra environment for the command (on top of PATH, HOME, TMPDIR, NYDUS_VM*). */
  env?: Record<string, string>;
  /** Working directory of the command in the guest (a host path), default process.cwd(). */
  cwd?: string;
  /** Called for every console line (guest serial console and QEMU's stderr, the latter prefixed "[qemu] "). */
  onConsole?: (line: string) => void;
}

export interface RunInVmResult {
  /** The command's exit status; -1 if the guest never reported one (timeout, crash, boot failure). */
  exitCode: number;
  /** Whole console transcript (serial console + "[qemu] " stderr lines), "\n" line endings. */
  console: string;
  timedOut: boolean;
}

/** Where the guest mounts the ext4 scratch disk (also exported as $NYDUS_VM_CACHE_DIR). */
export const GUEST_CACHE_DIR = "/run/nydus-cache";
/** TMPDIR in the guest: a guest-private tmpfs. */
export const GUEST_TMPDIR = "/run/tmp";

/** Host paths the guest mounts over; anything the guest must see cannot live under them. */
const GUEST_SHADOWED = ["/run", "/proc", "/sys", "/dev"];

function isUnder(p: string, dir: string): boolean {
  return p === dir || p.startsWith(dir + "/");
}

function shadowedBy(p: string): string | undefined {
  const abs = path.resolve(p);
  return GUEST_SHADOWED.find((d) => isUnder(abs, d));
}

/** True if the guest sees host path `p` at the same path (it is not under a directory the guest mounts over). */
export function guestVisible(p: string): boolean {
  return shadowedBy(p) === undefined;
}

/** The repository root (the directory holding nydus-ts's package.json). */
export function repoRoot(): string {
  let dir = __dirname;
  for (;;) {
    const pj = path.join(dir, "package.json");
    if (fs.existsSync(pj)) {
      try {
        if (JSON.parse(fs.readFileSync(pj, "utf8")).name === "nydus-ts") return dir;
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`cannot find the nydus-ts repository root above ${__dirname}`);
    dir = up;
  }
}

/**
 * Path of a usable test kernel: runs scripts/get-test-kernel.sh (honours
 * $NYDUS_TS_TEST_KERNEL and $NYDUS_TS_CACHE; may build the kernel, which takes
 * 10-15 minutes). Its progress goes to our stderr. Throws if it fails.
 */
export function findKernel(): string {
  const script = path.join(repoRoot(), "scripts", "get-test-kernel.sh");
  let out: string;
  try {
    out = execFileSync("bash", [script], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  } catch (e) {
    const err = e as { status?: number | null; message?: string };
    throw new Error(`${script} failed (exit ${err.status ?? "?"}): no test kernel available`);
  }
  const lines = out.split("\n").map((l) => l.trim()).filter((l) => l.length > 0);
  const kernel = lines[lines.length - 1];
  if (!kernel || !fs.existsSync(kernel)) {
    throw new Error(`${script} did not print an existing kernel path (stdout: ${JSON.stringify(out)})`);
  }
  return kernel;
}

/** Quote for POSIX sh. */
export function shQuote(s: string): string {
  if (/^[A-Za-z0-9_\/.,:=+@%-]+$/.test(s)) return s;
  return "'" + s.replace(/'/g, `'\\''`) + "'";
}

function tmpBase(): string {
  const t = os.tmpdir();
  if (!shadowedBy(t) && !/\s/.test(t)) return t;
  return "/var/tmp";
}

/** Live QEMU processes, killed if the host process exits while they run. */
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const c of live) {
      try {
        c.kill("SIGKILL");
      } catch {
        /* ignore */
      }
    }
  });
}

function qemuBinary(): string {
  return process.env.NYDUS_TS_QEMU || "qemu-system-x86_64";
}

export async function runInVm(opts: RunInVmOptions): Promise<RunInVmResult> {
  const kernel = path.resolve(opts.kernel);
  if (!fs.existsSync(kernel)) throw new Error(`kernel not found: ${kernel}`);
  const cwd = path.resolve(opts.cwd ?? process.cwd());
  const sh = shadowedBy(cwd);
  if (sh) throw new Error(`cwd ${cwd} is under ${sh}, which the guest mounts over`);
  const memoryMB = opts.memoryMB ?? 2048;
  const cpus = opts.cpus ?? Math.max(1, Math.min(2, os.cpus().length));
  const diskMB = opts.diskMB ?? 2048;
  const onConsole = opts.onConsole;

  const runDir = fs.mkdtempSync(path.join(tmpBase(), "nydus-vm-"));
  if (/\s/.test(runDir)) throw new Error(`run dir has whitespace: ${runDir}`);
  const consoleLines: string[] = [];
  const emit = (line: string): void => {
    consoleLines.push(line);
    if (onConsole) {
      try {
        onConsole(line);
      } catch {
        /* a broken callback must not break the run */
      }
    }
  };

  try {
    // --- scratch disk (sparse ext4) ---
    const disk = path.join(runDir, "disk.img");
    fs.closeSync(fs.openSync(disk, "w"));
    fs.truncateSync(disk, diskMB * 1024 * 1024);
    execFileSync("mke2fs", ["-F", "-t", "ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", disk], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` },
    });

    // --- init script, environment, command ---
    const initSrc = path.join(repoRoot(), "kernel-tests", "guest-init.sh");
    const init = path.join(runDir, "init");
    fs.copyFileSync(initSrc, init);
    fs.chmodSync(init, 0o755);

    const nonce = randomBytes(8).toString("hex");
    fs.writeFileSync(path.join(runDir, "nonce"), nonce + "\n");

    const hostPath = process.env.PATH ?? "";
    const guestPath = [path.dirname(process.execPath), ...hostPath.split(":"), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
      .filter((p, i, a) => p && a.indexOf(p) === i)
      .join(":");
    const env: Record<string, string> = {
      PATH: guestPath,
      HOME: "/root",
      TMPDIR: GUEST_TMPDIR,
      LANG: "C.UTF-8",
      TERM: "dumb",
      NYDUS_VM: "1",
      NYDUS_VM_CACHE_DIR: GUEST_CACHE_DIR,
      NYDUS_VM_RUN_DIR: runDir,
      ...(opts.env ?? {}),
    };
    let envSh = "# generated by kernel-tests/vm.ts\n";
    for (const [k, v] of Object.entries(env)) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`invalid environment variable name: ${k}`);
      envSh += `export ${k}=${shQuote(v)}\n`;
    }
    fs.writeFileSync(path.join(runDir, "env.sh"), envSh);

    const cmdLine = Array.isArray(opts.command) ? opts.command.map(shQuote).join(" ") : opts.command;
    if (cmdLine.trim() === "") throw new Error("empty command");
    fs.writeFileSync(
      path.join(runDir, "command.sh"),
      `# generated by kernel-tests/vm.ts\ncd ${shQuote(cwd)} || exit 125\n${cmdLine}\n`,
    );

    // --- QEMU ---
    installExitHook();
    const marker = new RegExp(`@@nydus-vm-exit:${nonce}:(\\d+)@@`);
    let markerStatus: number | undefined;
    let timedOut = false;
    const deadline = Date.now() + opts.timeoutMs;

    const boot = (accel: string): Promise<{ code: number | null; signal: string | null; guestLines: number; bootHung: boolean }> =>
      new Promise((resolve, reject) => {
        const append = [
          "console=ttyS0",
          "root=hostroot",
          "rootfstype=9p",
          `rootflags=trans=virtio,version=9p2000.L,msize=524288${ninepCache()}`,
          "rw",
          `init=${init}`,
          "panic=-1",
        ].join(" ");
        const args = [
          "-machine", "q35",
          ...accelArgs(accel),
          "-cpu", "max",
          "-m", `${memoryMB}M`,
          "-smp", String(cpus),
          "-nographic",
          "-no-reboot",
          "-nic", "none",
          "-kernel", kernel,
          "-append", append,
          "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,id=hostroot,multidevs=remap",
          "-drive", `file=${disk},if=virtio,format=raw`,
        ];
        const child = spawn(qemuBinary(), args, { stdio: ["ignore", "pipe", "pipe"] });
        live.add(child);
        let settled = false;
        let guestLines = 0;
        let kernelStarted = false;
        let bootHung = false;
        // A hung KVM guest (see chooseAccel) never prints a kernel line: give up on it early.
        const bootTimer = accel === "tcg" ? undefined : setTimeout(() => {
          if (kernelStarted) return;
          bootHung = true;
          emit(`[nydus-vm] no kernel output ${KVM_BOOT_WATCHDOG_MS / 1000} s after starting QEMU with ${accel}, killing it`);
          child.kill("SIGKILL");
        }, KVM_BOOT_WATCHDOG_MS);

        const handle = (line: string, fromGuest: boolean): void => {
          if (fromGuest) {
            guestLines++;
            if (!kernelStarted && /^\[\s*\d+\.\d+\]/.test(line)) {
              kernelStarted = true;
              clearTimeout(bootTimer);
            }
            const m = marker.exec(line);
            if (m) markerStatus = Number(m[1]);
          }
          emit(line);
        };
        const lineSplitter = (prefix: string, fromGuest: boolean) => {
          let buf = "";
          const decoder = new StringDecoder("utf8");
          return {
            push(chunk: Buffer): void {
              buf += decoder.write(chunk);
              let i: number;
              while ((i = buf.indexOf("\n")) >= 0) {
                const line = buf.slice(0, i).replace(/\r/g, "");
                buf = buf.slice(i + 1);
                handle(prefix + line, fromGuest);
              }
            },
            flush(): void {
              buf += decoder.end();
              if (buf.length > 0) handle(prefix + buf.replace(/\r/g, ""), fromGuest);
              buf = "";
            },
          };
        };
        const out = lineSplitter("", true);
        const err = lineSplitter("[qemu] ", false);
        child.stdout!.on("data", (c: Buffer) => out.push(c));
        child.stderr!.on("data", (c: Buffer) => err.push(c));

        const timer = setTimeout(() => {
          timedOut = true;
          emit(`[nydus-vm] timeout after ${opts.timeoutMs} ms, killing QEMU`);
          child.kill("SIGKILL");
        }, Math.max(0, deadline - Date.now()));

        child.on("error", (e) => {
          clearTimeout(timer);
          clearTimeout(bootTimer);
          live.delete(child);
          if (!settled) {
            settled = true;
            reject(new Error(`cannot start ${qemuBinary()}: ${e.message}`));
          }
        });
        child.on("close", (code, signal) => {
          clearTimeout(timer);
          clearTimeout(bootTimer);
          live.delete(child);
          out.flush();
          err.flush();
          if (code !== 0 || signal) emit(`[nydus-vm] QEMU exited with ${signal ? "signal " + signal : "status " + code}`);
          if (!settled) {
            settled = true;
            resolve({ code, signal, guestLines, bootHung });
          }
        });
      });

    const accel = chooseAccel();
    let res = await boot(accel);
    if (accel !== "tcg" && !timedOut && (res.bootHung || (res.guestLines === 0 && (res.code !== 0 || res.signal)))) {
      // /dev/kvm can exist yet be unusable (e.g. nested virtualisation without
      // the MSRs QEMU wants); fall back to TCG once.
      emit("[nydus-vm] KVM did not work; retrying with TCG");
      kvmBroken = true;
      res = await boot("tcg");
    }

    let exitCode = -1;
    const statusFile = path.join(runDir, "exit-status");
    if (fs.existsSync(statusFile)) {
      const n = Number.parseInt(fs.readFileSync(statusFile, "utf8").trim(), 10);
      if (Number.isFinite(n)) exitCode = n;
    }
    if (exitCode === -1 && markerStatus !== undefined) exitCode = markerStatus;
    if (exitCode === -1 && !timedOut) emit("[nydus-vm] the guest did not report an exit status");

    return { exitCode, console: consoleLines.join("\n") + (consoleLines.length ? "\n" : ""), timedOut };
  } finally {
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}

let kvmBroken = false;
const KVM_BOOT_WATCHDOG_MS = 30_000;

/**
 * $NYDUS_TS_VM_9P_CACHE: 9p cache mode of the guest root (none, readahead, mmap, loose).
 * Default mmap: page cache only for mmap'ed files (binaries, shared libraries),
 * otherwise uncached like none; about 25% faster than none for the smoke run.
 */
function ninepCache(): string {
  const c = process.env.NYDUS_TS_VM_9P_CACHE || "mmap";
  if (!/^(none|readahead|mmap|loose)$/.test(c)) throw new Error(`invalid NYDUS_TS_VM_9P_CACHE: ${c}`);
  return `,cache=${c}`;
}

function accelArgs(accel: string): string[] {
  if (accel === "kvm") return ["-accel", "kvm"];
  const thread = (process.env.NYDUS_TS_VM_TCG_THREAD ?? "single").toLowerCase() === "multi" ? "multi" : "single";
  return ["-accel", `tcg,thread=${thread}`];
}

/**
 * $NYDUS_TS_VM_ACCEL = tcg | kvm | auto (auto: KVM if /dev/kvm is usable, else TCG).
 * Default tcg: on this workplace /dev/kvm exists but is kvm-pvm (nested, in a container), whose
 * guests can hang at boot without QEMU exiting ("kvm-pvm: INTERNAL_ERROR in batch emul" in the
 * host's dmesg), so KVM is opt-in.
 */
function chooseAccel(): string {
  const want = (process.env.NYDUS_TS_VM_ACCEL ?? "tcg").toLowerCase();
  if (want === "kvm" || want === "tcg") return want;
  if (!kvmBroken && fs.existsSync("/dev/kvm") && canAccess("/dev/kvm")) return "kvm";
  return "tcg";
}

function canAccess(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}
