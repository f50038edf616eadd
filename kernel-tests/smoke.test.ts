// Guest smoke tests: the kernel-test VM has what the fscache on-demand daemon
// needs. These run inside the VM (test/kernel-vm.test.ts boots it); run on the
// host they fail, on purpose, with a message saying so.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";

const NOT_IN_VM =
  "kernel tests must run inside the test VM (node dist/test/kernel-vm.test.js, see kernel-tests/README.md)";
const EXT4_SUPER_MAGIC = 0xef53;
const TMPFS_MAGIC = 0x01021994;
const EOPNOTSUPP = os.constants.errno.EOPNOTSUPP; // 95 on Linux (== ENOTSUP)

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** The ext4 scratch disk the VM mounts for the cachefiles cache. */
function cacheDisk(): string {
  const dir = process.env.NYDUS_VM_CACHE_DIR;
  assert.ok(dir, `NYDUS_VM_CACHE_DIR is not set: ${NOT_IN_VM}`);
  assert.equal(fs.statfsSync(dir).type, EXT4_SUPER_MAGIC, `${dir} is not on ext4`);
  return dir;
}

function openCachefiles(): number {
  try {
    return fs.openSync("/dev/cachefiles", "r+");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    assert.fail(`cannot open /dev/cachefiles (${err.code}): ${NOT_IN_VM}`);
  }
}

function writeCmd(fd: number, cmd: string): void {
  const n = fs.writeSync(fd, cmd);
  assert.equal(n, Buffer.byteLength(cmd), `short write of cachefiles command ${JSON.stringify(cmd)}`);
}

test("kernel is Linux 6.12.x with erofs", () => {
  assert.match(os.release(), /^6\.12\.\d+/, `running on kernel ${os.release()}, expected 6.12.x: ${NOT_IN_VM}`);
  const fss = fs.readFileSync("/proc/filesystems", "utf8");
  assert.match(fss, /\berofs\b/, "erofs missing from /proc/filesystems");
});

test("/dev/cachefiles exists and is a character device", () => {
  let st: fs.Stats;
  try {
    st = fs.statSync("/dev/cachefiles");
  } catch {
    assert.fail(`/dev/cachefiles does not exist: ${NOT_IN_VM}`);
  }
  assert.ok(st.isCharacterDevice(), "/dev/cachefiles is not a character device");
});

test("cachefiles: dir on ext4 + bind ondemand succeeds", () => {
  const disk = cacheDisk();
  const dir = fs.mkdtempSync(path.join(disk, "smoke-bind-"));
  const fd = openCachefiles();
  try {
    writeCmd(fd, `dir ${dir}`);
    writeCmd(fd, "tag smoke");
    try {
      writeCmd(fd, "bind ondemand");
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      assert.fail(`"bind ondemand" failed: ${err.code} ${err.message} (CONFIG_CACHEFILES_ONDEMAND missing?)`);
    }
    // A bound cache has created its index and graveyard directories.
    assert.ok(fs.statSync(path.join(dir, "cache")).isDirectory(), "bound cache has no cache/ directory");
    assert.ok(fs.statSync(path.join(dir, "graveyard")).isDirectory(), "bound cache has no graveyard/ directory");
  } finally {
    fs.closeSync(fd); // unbinds the cache
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test("cachefiles: binding a dir on tmpfs fails with EOPNOTSUPP", () => {
  const fd = openCachefiles();
  const base = fs.mkdtempSync(path.join(os.tmpdir(), "smoke-tmpfs-"));
  let mounted = false;
  try {
    if (fs.statfsSync(base).type !== TMPFS_MAGIC) {
      sh("mount", ["-t", "tmpfs", "smoke", base]);
      mounted = true;
    }
    assert.equal(fs.statfsSync(base).type, TMPFS_MAGIC, `${base} is not on tmpfs`);
    writeCmd(fd, `dir ${base}`);
    writeCmd(fd, "tag smoke-tmpfs");
    assert.throws(
      () => writeCmd(fd, "bind ondemand"),
      (e: NodeJS.ErrnoException) => {
        assert.equal(e.errno, -EOPNOTSUPP, `expected EOPNOTSUPP, got ${e.code} (${e.errno})`);
        return true;
      },
      "bind on tmpfs unexpectedly succeeded",
    );
  } finally {
    fs.closeSync(fd);
    if (mounted) sh("umount", [base]);
    fs.rmSync(base, { recursive: true, force: true });
  }
});

test("mkfs.erofs image loop-mounts and reads back byte-exact", () => {
  assert.match(os.release(), /^6\.12\./, NOT_IN_VM);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "smoke-erofs-"));
  const src = path.join(work, "src");
  const mnt = path.join(work, "mnt");
  const img = path.join(work, "test.erofs");
  const files: Record<string, Buffer> = {
    "hello.txt": Buffer.from("hello, erofs\n"),
    "empty": Buffer.alloc(0),
    "sub/dir/random.bin": randomBytes(3 * 4096 + 123),
    "sub/big.bin": randomBytes(300 * 1024),
    "sub/zeros.bin": Buffer.alloc(70000),
  };
  let mounted = false;
  try {
    for (const [rel, data] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(src, rel)), { recursive: true });
      fs.writeFileSync(path.join(src, rel), data);
    }
    fs.symlinkSync("hello.txt", path.join(src, "link"));
    fs.mkdirSync(mnt);
    sh("mkfs.erofs", ["--quiet", img, src]);
    sh("mount", ["-t", "erofs", "-o", "loop,ro", img, mnt]);
    mounted = true;
    assert.match(fs.readFileSync("/proc/mounts", "utf8"), new RegExp(` ${mnt} erofs `), "not mounted as erofs");
    for (const [rel, data] of Object.entries(files)) {
      const got = fs.readFileSync(path.join(mnt, rel));
      assert.equal(got.length, data.length, `${rel}: size`);
      assert.ok(got.equals(data), `${rel}: content differs`);
    }
    assert.equal(fs.readlinkSync(path.join(mnt, "link")), "hello.txt");
    assert.deepEqual(fs.readdirSync(mnt).sort(), ["empty", "hello.txt", "link", "sub"]);
  } finally {
    if (mounted) sh("umount", [mnt]);
    fs.rmSync(work, { recursive: true, force: true });
  }
});

test("loopback is up and a node http server on 127.0.0.1 answers", async () => {
  const link = sh("ip", ["-o", "link", "show", "dev", "lo"]);
  assert.match(link, /<[^>]*\bUP\b[^>]*>/, `lo is not up: ${link}`);
  const addr = sh("ip", ["-o", "-4", "addr", "show", "dev", "lo"]);
  assert.match(addr, /inet 127\.0\.0\.1\//, `lo has no 127.0.0.1: ${addr}`);

  const body = `pong ${randomBytes(8).toString("hex")}`;
  const server = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`${body} ${req.url}`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  try {
    const { port } = server.address() as AddressInfo;
    const got = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = http.get({ host: "127.0.0.1", port, path: "/ping", timeout: 10_000 }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
        res.on("error", reject);
      });
      req.on("timeout", () => req.destroy(new Error("request timed out")));
      req.on("error", reject);
    });
    assert.equal(got.status, 200);
    assert.equal(got.text, `${body} /ping`);
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});
