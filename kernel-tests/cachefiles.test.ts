// Guest test of the cachefiles on-demand front end (src/kernel/cachefiles.ts) against the real
// 6.12 kernel: bind a cache on the ext4 scratch disk, serve EROFS-over-fscache mounts of images
// built with the real builder from a local test resolver (kernel-tests/helpers.ts), and check
// contents, metadata, persistence, error paths and shared domains. Runs inside the VM
// (test/kernel-vm.test.ts); on the host it fails on purpose (no /dev/cachefiles).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createImage } from "../src/builder/build";
import { CachefilesFrontend, cookieFanout, cookieFileName } from "../src/kernel/cachefiles";
import { NydusError } from "../src/errors";
import { mountAsync, socketpair, AF_UNIX, SOCK_SEQPACKET, SOCK_NONBLOCK, SOCK_CLOEXEC } from "../src/sys/native";
import {
  NOT_IN_VM, TestResolver, diffSnapshots, hashFileAsync, isMounted, mountFscache, mountFscacheOk,
  run, snapshotAsync, umount, waitFor, Entry,
} from "./helpers";

const EXT4_SUPER_MAGIC = 0xef53;
const MiB = 1 << 20;

let work = "";
let cacheDir = "";
let blobDir = "";
let srcA = "";
let srcB = "";
let bootA = "";
let bootB = "";
let blobX = ""; // image A's blob (shared with B)
let blobY = ""; // B's own blob
let fe: CachefilesFrontend | undefined;
const resolver = new TestResolver();
const mounted = new Set<string>();
const t0 = Date.now();
let bigSha = "";

function frontend(): CachefilesFrontend {
  assert.ok(fe, `the cachefiles front end is not running (see the first test): ${NOT_IN_VM}`);
  return fe;
}

async function doMount(mnt: string, fsid: string, domain?: string): Promise<number> {
  const r = await mountFscacheOk(mnt, fsid, domain);
  mounted.add(mnt);
  return r.ms;
}
async function doUmount(mnt: string): Promise<void> {
  await umount(mnt);
  mounted.delete(mnt);
}

function writeTree(root: string, files: Record<string, Buffer | string>): void {
  for (const [rel, data] of Object.entries(files)) {
    const p = path.join(root, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, data);
  }
}

/** The union of two source snapshots: what a mount of a layered image (A + layer B) shows. */
function merge(a: Map<string, Entry>, b: Map<string, Entry>): Map<string, Entry> {
  const out = new Map(a);
  for (const [p, e] of b) if (p !== "/" && !(e.type === "dir" && out.has(p))) out.set(p, e);
  return out;
}

function fmtRate(bytes: number, ms: number): string {
  return `${(bytes / MiB / (ms / 1000)).toFixed(1)} MiB/s (${(bytes / MiB).toFixed(1)} MiB in ${ms.toFixed(0)} ms)`;
}

function histogram(sizes: number[]): string {
  const h = new Map<number, number>();
  for (const s of sizes) h.set(s, (h.get(s) ?? 0) + 1);
  return [...h.entries()].sort((x, y) => x[0] - y[0]).map(([s, n]) => `${s / 1024}KiB×${n}`).join(" ");
}

before(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), "cachefiles-test-"));
  blobDir = path.join(work, "blobs");
  srcA = path.join(work, "srcA");
  srcB = path.join(work, "srcB");
  fs.mkdirSync(blobDir);
  const big = crypto.randomBytes(8 * MiB); // 8 chunks of 1 MiB, incompressible
  bigSha = crypto.createHash("sha256").update(big).digest("hex");
  const text = Array.from({ length: 4000 }, (_, i) => `line ${i}: the quick brown fox jumps over the lazy dog\n`).join("");
  writeTree(srcA, {
    "hello.txt": "hello, fscache\n",
    "empty": Buffer.alloc(0),
    "big.bin": big,
    "zeros.bin": Buffer.alloc(3 * MiB + 100), // identical zero chunks: deduplicated inside the blob
    "text.txt": text,
    "dir/mid.bin": crypto.randomBytes(MiB + MiB / 2 + 17),
    "dir/sub/small.bin": crypto.randomBytes(5000),
    "dir/sub/private": "secret\n",
  });
  fs.chmodSync(path.join(srcA, "dir/sub/private"), 0o600);
  fs.chmodSync(path.join(srcA, "text.txt"), 0o755);
  fs.symlinkSync("hello.txt", path.join(srcA, "link"));
  fs.symlinkSync("/etc/hostname", path.join(srcA, "dir/abs-link"));
  fs.utimesSync(path.join(srcA, "hello.txt"), new Date("2020-01-02T03:04:05.678Z"), new Date("2021-02-03T04:05:06.789Z"));
  writeTree(srcB, {
    "layer2/new.bin": crypto.randomBytes(2 * MiB + 4096 * 3),
    "layer2/same-as-big-chunk0.bin": big.subarray(0, MiB), // deduplicated against blob X
    "layer2/note.txt": "layer two\n",
  });
  bootA = path.join(work, "a.boot");
  bootB = path.join(work, "b.boot");
  const tb = Date.now();
  const ra = await createImage({ type: "dir", source: srcA, bootstrap: bootA, blobDir });
  const rb = await createImage({ type: "dir", source: srcB, bootstrap: bootB, blobDir, parentBootstrap: bootA });
  assert.ok(ra.blob_id && rb.blob_id, "both builds wrote a blob");
  blobX = ra.blob_id;
  blobY = rb.blob_id;
  assert.deepEqual(rb.blobs, [blobX, blobY], "image B references A's blob and its own");
  console.log(`# built images A (${ra.stats.blob_uncompressed_size} B blob) and B in ${Date.now() - tb} ms`);

  resolver.add("imgA", "", bootA, blobDir); // plain fsid mounts
  resolver.add("imgF", "", bootA, blobDir); // failure injection (its own volume, fresh cache)
  resolver.add("dA", "dom", bootA, blobDir); // shared domain "dom"
  resolver.add("dB", "dom", bootB, blobDir);
});

after(async () => {
  for (const m of mounted) {
    const r = await umount(m).catch((e: Error) => e);
    if (r instanceof Error) await run("umount", ["-l", m]);
  }
  const stopped = Date.now();
  await fe?.stop();
  if (fe) console.log(`# front end stopped in ${Date.now() - stopped} ms; stats ${JSON.stringify(fe.stats())}`);
  if (cacheDir) fs.rmSync(cacheDir, { recursive: true, force: true });
  if (work) fs.rmSync(work, { recursive: true, force: true });
  console.log(`# cachefiles guest tests took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
});

test("front end binds an on-demand cache on the ext4 disk and starts polling", () => {
  const disk = process.env.NYDUS_VM_CACHE_DIR;
  assert.ok(fs.existsSync("/dev/cachefiles"), `/dev/cachefiles does not exist: ${NOT_IN_VM}`);
  assert.ok(disk, `NYDUS_VM_CACHE_DIR is not set: ${NOT_IN_VM}`);
  assert.equal(fs.statfsSync(disk).type, EXT4_SUPER_MAGIC, `${disk} is not ext4`);
  cacheDir = fs.mkdtempSync(path.join(disk, "fe-"));
  fe = CachefilesFrontend.open({
    dir: cacheDir,
    tag: "nydus-ts-test",
    log: (level, msg, ctx) => {
      if (level !== "debug") console.log(`# [${level}] ${msg}${ctx ? " " + JSON.stringify(ctx) : ""}`);
    },
  });
  assert.ok(fe.fd >= 0);
  fe.start(resolver);
  assert.ok(fs.statSync(path.join(cacheDir, "cache")).isDirectory(), "bind created cache/");
  // Only one cache instance may exist: a second open must say why it cannot.
  assert.throws(
    () => CachefilesFrontend.open({ dir: cacheDir }),
    (e: NydusError) => e.code === "ERR_KERNEL" && /EBUSY/.test(e.message) && /another daemon/.test(e.message),
  );
});

test("mount by fsid: bootstrap and blob are served, every file and its metadata match the source", async () => {
  const f = frontend();
  const mnt = path.join(work, "mntA");
  const mountMs = await doMount(mnt, "imgA");
  assert.equal(resolver.count("open", { domain: "imgA", cookie: "imgA" }), 1, "one OPEN for the bootstrap");
  assert.equal(resolver.count("open", { domain: "imgA", cookie: blobX }), 1, "one OPEN for the blob at mount time");
  const s0 = f.stats();
  const bootSize = fs.statSync(bootA).size;
  await waitFor("the bootstrap prefill", () => resolver.events.some((e) => e.kind === "bootstrap-read" && e.domain === "imgA" && e.off === 0 && e.len === bootSize));
  assert.equal(s0.bootstrap_objects, 1);
  assert.equal(s0.blob_objects, 1);

  // cold sequential read of a multi-MiB file (8 chunks)
  const tr = performance.now();
  const { sha256, bytes } = await hashFileAsync(path.join(mnt, "big.bin"));
  const coldMs = performance.now() - tr;
  assert.equal(bytes, 8 * MiB);
  assert.equal(sha256, bigSha, "big.bin content");
  const bigEnsures = resolver.events.filter((e) => e.kind === "ensure" && e.domain === "imgA").map((e) => e.len!);
  console.log(`# mount ${mountMs} ms; cold sequential read of big.bin: ${fmtRate(bytes, coldMs)}; blob READs ${bigEnsures.length}: ${histogram(bigEnsures)}`);

  const want = await snapshotAsync(srcA);
  const got = await snapshotAsync(mnt);
  assert.deepEqual(diffSnapshots(want, got), [], "mounted tree equals the source");

  const s = f.stats();
  assert.ok(s.blob_reads > 0, "blob READs arrived");
  assert.equal(s.reads_failed, 0);
  assert.equal(s.reads_in_flight, 0);
  const ensures = resolver.events.filter((e) => e.kind === "ensure" && e.domain === "imgA");
  for (const e of ensures) assert.equal(e.off! % 4096, 0, `READ offset ${e.off} is page aligned`);
  console.log(`# first mount: ${s.reads} READs (${s.bootstrap_reads} bootstrap, ${s.blob_reads} blob), sizes ${JSON.stringify(s.read_sizes)}`);
});

test("umount sends CLOSE; a remount with the same fsid reads everything from the cache file", async () => {
  const f = frontend();
  const mnt = path.join(work, "mntA");
  await doUmount(mnt);
  await waitFor("CLOSE of both objects", () => f.stats().objects_open === 0);
  assert.equal(resolver.count("session-close", { domain: "imgA" }), 1, "the blob session was closed");
  const vol = "erofs,imgA";
  const blobFile = path.join(cacheDir, "cache", `I${vol}`, cookieFanout(vol, blobX), cookieFileName(blobX));
  const bootFile = path.join(cacheDir, "cache", `I${vol}`, cookieFanout(vol, "imgA"), cookieFileName("imgA"));
  assert.ok(fs.existsSync(blobFile), `cache file ${blobFile} persisted after umount`);
  assert.ok(fs.existsSync(bootFile), `cache file ${bootFile} persisted after umount`);

  const ensuresBefore = resolver.count("ensure", { domain: "imgA" });
  const bootReadsBefore = resolver.count("bootstrap-read", { domain: "imgA" });
  const readsBefore = f.stats().reads;
  await doMount(mnt, "imgA");
  const tr = performance.now();
  const { sha256, bytes } = await hashFileAsync(path.join(mnt, "big.bin"));
  const warmMs = performance.now() - tr;
  assert.equal(sha256, bigSha);
  const got = await snapshotAsync(mnt);
  assert.deepEqual(diffSnapshots(await snapshotAsync(srcA), got), [], "remounted tree equals the source");
  assert.equal(resolver.count("ensure", { domain: "imgA" }) - ensuresBefore, 0, "no blob READs after the remount");
  assert.equal(resolver.count("bootstrap-read", { domain: "imgA" }) - bootReadsBefore, 0, "no bootstrap READs (and no prefill) after the remount");
  console.log(`# remount: ${f.stats().reads - readsBefore} READs in total; big.bin from the cache file: ${fmtRate(bytes, warmMs)}`);

  // In use: cull refuses; after umount it removes the cache file.
  await assert.rejects(f.cull(blobX, "imgA"), (e: NydusError) => e.code === "ERR_DAEMON" && /in use/.test(e.message));
  await doUmount(mnt);
  await waitFor("CLOSE after the second umount", () => f.stats().objects_open === 0);
  await waitFor("the blob cache file no longer in use", () => {
    try {
      return !fs.readdirSync("/proc/self/fd").some((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`) === "anon_inode:[cachefiles]";
        } catch {
          return false;
        }
      });
    } catch {
      return true;
    }
  });
  const removed = await f.cull(blobX, "imgA");
  assert.deepEqual(removed, [blobFile]);
  assert.ok(!fs.existsSync(blobFile), "cull removed the blob's cache file");
});

test("mounting an unknown fsid fails (EIO on 6.12.117) and the daemon keeps serving", async () => {
  const f = frontend();
  const before = f.stats().opens_unknown;
  const mnt = path.join(work, "mntX");
  fs.mkdirSync(mnt, { recursive: true });
  // mount(2) itself (on a koffi async worker) to see the errno; mount(8) only says "can't read
  // superblock". kernel.md §2.4 predicts ENOBUFS; 6.12.117 returns EIO ("prepare_ondemand_read
  // failed (source 2)", then "cannot read erofs superblock").
  await assert.rejects(mountAsync("none", mnt, "erofs", 0, "fsid=no-such-image"), (e: NydusError) => {
    assert.ok(e.context.code === "EIO" || e.context.code === "ENOBUFS", `expected EIO/ENOBUFS: ${e.message}`);
    console.log(`# mount(2) of an unknown fsid: ${e.context.code}`);
    return true;
  });
  const r = await mountFscache(mnt, "no-such-image-2");
  assert.notEqual(r.code, 0, "mount(8) of an unknown fsid must fail");
  assert.equal(f.stats().opens_unknown, before + 2);
  assert.equal(resolver.count("unknown", { domain: "no-such-image", cookie: "no-such-image" }), 1);
  assert.ok(!(await isMounted(mnt)));
});

test("a READ whose blob fetch fails gives the reader EIO; the next read is served", async () => {
  const f = frontend();
  const mnt = path.join(work, "mntF");
  await doMount(mnt, "imgF"); // a new fsid after the failed mount: the daemon still serves
  resolver.failing.set(`imgF/${blobX}`, "injected backend failure");
  const failedBefore = f.stats().reads_failed;
  await assert.rejects(hashFileAsync(path.join(mnt, "big.bin")), (e: NodeJS.ErrnoException) => e.code === "EIO");
  assert.ok(f.stats().reads_failed > failedBefore, "the failed READ is counted");
  resolver.failing.clear();
  const { sha256 } = await hashFileAsync(path.join(mnt, "big.bin"));
  assert.equal(sha256, bigSha, "served after the failure");
  await doUmount(mnt);
});

test("domain_id: two images sharing a blob get one OPEN for the shared blob", async () => {
  const f = frontend();
  const mA = path.join(work, "mntDA");
  const mB = path.join(work, "mntDB");
  await doMount(mA, "dA", "dom");
  await doMount(mB, "dB", "dom");
  assert.equal(resolver.count("open", { domain: "dom", cookie: blobX }), 1, "one OPEN for the shared blob");
  assert.equal(resolver.count("open", { domain: "dom", cookie: blobY }), 1, "one OPEN for B's own blob");
  assert.equal(resolver.count("open", { domain: "dom", cookie: "dA" }), 1);
  assert.equal(resolver.count("open", { domain: "dom", cookie: "dB" }), 1);
  assert.equal(f.stats().blob_objects, 2);
  const a = await snapshotAsync(srcA);
  assert.deepEqual(diffSnapshots(a, await snapshotAsync(mA)), [], "image A in the domain");
  assert.deepEqual(diffSnapshots(merge(a, await snapshotAsync(srcB)), await snapshotAsync(mB)), [], "image B (A + layer) in the domain");
  await doUmount(mB);
  await doUmount(mA);
  await waitFor("CLOSE of every domain object", () => f.stats().objects_open === 0);
  const s = f.stats();
  console.log(`# totals: ${JSON.stringify(s)}`);
});

test("stop closes the device; binding a cache on tmpfs fails naming the directory", async () => {
  const f = frontend();
  await f.stop();
  fe = undefined;
  const links = fs.readdirSync("/proc/self/fd").map((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      return "";
    }
  });
  assert.ok(!links.includes("/dev/cachefiles"), "the device fd is closed");
  assert.ok(!links.includes("anon_inode:[cachefiles]"), "no anonymous object fd is left open");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tmpfs-cache-"));
  try {
    assert.equal(fs.statfsSync(tmp).type, 0x01021994, `${tmp} is on tmpfs`);
    assert.throws(
      () => CachefilesFrontend.open({ dir: tmp }),
      (e: NydusError) => e.code === "ERR_KERNEL" && /ENOTSUP|EOPNOTSUPP/.test(e.message) && e.message.includes(tmp) && /tmpfs/.test(e.message),
    );
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

// ------------------------------------------------------------------------------ fake device

function msgHeader(msgId: number, opcode: number, len: number, objectId: number): Buffer {
  const b = Buffer.alloc(len);
  b.writeUInt32LE(msgId, 0);
  b.writeUInt32LE(opcode, 4);
  b.writeUInt32LE(len, 8);
  b.writeUInt32LE(objectId, 12);
  return b;
}
function openMsg(msgId: number, objectId: number, volume: string, cookie: string, fd: number): Buffer {
  const v = Buffer.from(volume + "\0");
  const c = Buffer.from(cookie);
  const b = msgHeader(msgId, 0, 32 + v.length + c.length, objectId);
  b.writeUInt32LE(v.length, 16);
  b.writeUInt32LE(c.length, 20);
  b.writeUInt32LE(fd, 24);
  v.copy(b, 32);
  c.copy(b, 32 + v.length);
  return b;
}
function readMsg(msgId: number, objectId: number, off: number, len: number): Buffer {
  const b = msgHeader(msgId, 2, 32, objectId);
  b.writeBigUInt64LE(BigInt(off), 16);
  b.writeBigUInt64LE(BigInt(len), 24);
  return b;
}
function fdTarget(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return "(closed)";
  }
}

test("fake device (seqpacket socket): malformed messages are counted and never stop the loop", async () => {
  // The protocol side only: messages written into a SOCK_SEQPACKET pair stand in for the kernel
  // (one message per read, EAGAIN when empty), a plain file stands in for the anonymous fd.
  const [dev, peer] = socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC);
  const logs: string[] = [];
  const fake = CachefilesFrontend.open({ dir: os.tmpdir(), inheritedFd: dev, restore: false, prefillBootstrap: false, log: (l, m) => logs.push(`${l} ${m}`) });
  fake.start(resolver);
  const replies: string[] = [];
  const drainReplies = (): void => {
    const b = Buffer.alloc(512);
    for (;;) {
      try {
        const n = fs.readSync(peer, b, 0, b.length, null);
        if (n <= 0) return;
        replies.push(b.toString("utf8", 0, n));
      } catch {
        return; // EAGAIN
      }
    }
  };
  const cacheFile = path.join(os.tmpdir(), `fake-cache-${process.pid}`);
  const objFd = fs.openSync(cacheFile, "w+");
  const strayFd = fs.openSync("/dev/null", "r");
  try {
    fs.writeSync(peer, Buffer.from([1, 2, 3, 4, 5])); // shorter than a header
    const badOpen = openMsg(1, 7, "erofs,imgA", "imgA", strayFd);
    badOpen.writeUInt32LE(99, 16); // key sizes do not add up
    fs.writeSync(peer, badOpen);
    fs.writeSync(peer, msgHeader(2, 9, 16, 1)); // unknown opcode
    fs.writeSync(peer, readMsg(3, 12345, 0, 4096)); // READ for an object nobody opened
    fs.writeSync(peer, openMsg(4, 8, "erofs,imgA", "imgA", objFd));
    await waitFor("copen of the valid OPEN", () => {
      drainReplies();
      return replies.some((r) => r.startsWith("copen 4,"));
    });
    assert.ok(replies.includes("copen 1,-22"), `the malformed OPEN is failed with EINVAL (replies ${JSON.stringify(replies)})`);
    assert.ok(replies.includes(`copen 4,${fs.statSync(bootA).size}`), `bootstrap answered with its size (replies ${JSON.stringify(replies)})`);
    assert.equal(fdTarget(strayFd) === "/dev/null", false, "the fd of the malformed OPEN was closed");

    fs.writeSync(peer, readMsg(5, 8, 4096, 8192));
    await waitFor("the READ to complete", () => fake.stats().reads_completed >= 1);
    const boot = fs.readFileSync(bootA);
    const want = Buffer.alloc(8192);
    boot.copy(want, 0, 4096, Math.min(boot.length, 4096 + 8192));
    assert.ok(fs.readFileSync(cacheFile).subarray(4096, 4096 + 8192).equals(want), "bootstrap bytes written at the READ offset");
    assert.ok(logs.some((l) => /READ_COMPLETE 5: ioctl .*ENOTTY/.test(l)), "READ_COMPLETE was issued on the object's fd");

    fs.writeSync(peer, msgHeader(6, 1, 16, 8)); // CLOSE
    await waitFor("the CLOSE", () => fake.stats().closes === 1 && fake.stats().objects_open === 0);
    await waitFor("the object's fd to be closed", () => fdTarget(objFd) !== cacheFile);
    const st = fake.stats();
    assert.equal(st.bad_messages, 3, JSON.stringify(st));
    assert.equal(st.reads_failed, 1, "the READ for an unknown object");
    assert.equal(st.opens, 1);
  } finally {
    await fake.stop();
    fs.closeSync(peer);
    fs.rmSync(cacheFile, { force: true });
  }
});
