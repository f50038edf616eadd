// Host test: boots the test kernel in QEMU once, runs every kernel test
// (dist/kernel-tests/**/*.test.js) inside it with node's TAP reporter, and
// reports each guest test as a host subtest. See kernel-tests/README.md.
//
// This test never skips: no kernel, no QEMU, a VM that does not boot or a
// guest that produces no results all fail it.

import { test, type TestContext } from "node:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { findKernel, guestVisible, repoRoot, runInVm } from "../kernel-tests/vm";

// ---------------------------------------------------------------- TAP parsing

export interface TapTest {
  name: string;
  ok: boolean;
  skip?: string;
  todo?: string;
  /** Raw YAML diagnostic block (without the --- / ... lines). */
  diag: string;
  children: TapTest[];
}

export interface TapResult {
  tests: TapTest[];
  plan?: number;
  bailOut?: string;
  summary: Record<string, number>;
}

function unescapeTap(s: string): string {
  return s.replace(/\\([\\#])/g, "$1");
}

/** Split "name # SKIP reason" at the first unescaped " # ". */
function splitDirective(rest: string): { name: string; skip?: string; todo?: string } {
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "\\") {
      i++;
      continue;
    }
    if (rest[i] === "#" && (i === 0 || rest[i - 1] === " ")) {
      const name = unescapeTap(rest.slice(0, i).trimEnd());
      const dir = rest.slice(i + 1).trim();
      const m = /^(SKIP|TODO)\b\s*(.*)$/i.exec(dir);
      if (!m) return { name: unescapeTap(rest) };
      const reason = m[2] || m[1].toUpperCase();
      return m[1].toUpperCase() === "SKIP" ? { name, skip: reason } : { name, todo: reason };
    }
  }
  return { name: unescapeTap(rest) };
}

/** Parse the TAP 13 dialect node's test runner emits (subtests indented 4 spaces per level). */
export function parseTap(text: string): TapResult {
  const lines = text.split(/\r?\n/);
  const pending = new Map<number, TapTest[]>(); // indent -> finished tests not yet claimed by a parent
  const result: TapResult = { tests: [], summary: {} };
  let last: { test: TapTest; indent: number } | undefined;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const indent = line.length - line.trimStart().length;
    const body = line.trimStart();
    const tp = /^(not ok|ok)\b\s*(\d+)?\s*(?:-\s)?(.*)$/.exec(body);
    if (tp) {
      const { name, skip, todo } = splitDirective(tp[3] ?? "");
      const t: TapTest = {
        name: name || `test ${tp[2] ?? "?"}`,
        ok: tp[1] === "ok",
        skip,
        todo,
        diag: "",
        children: pending.get(indent + 4) ?? [],
      };
      pending.delete(indent + 4);
      const list = pending.get(indent) ?? [];
      list.push(t);
      pending.set(indent, list);
      last = { test: t, indent };
      continue;
    }
    if (body === "---" && last && indent === last.indent + 2) {
      const diag: string[] = [];
      for (i++; i < lines.length; i++) {
        const l = lines[i];
        if (l.trim() === "..." && l.length - l.trimStart().length === indent) break;
        diag.push(l.slice(indent));
      }
      last.test.diag = diag.join("\n");
      continue;
    }
    if (indent === 0) {
      const plan = /^1\.\.(\d+)/.exec(body);
      if (plan) result.plan = Number(plan[1]);
      const bail = /^Bail out!\s*(.*)$/.exec(body);
      if (bail) result.bailOut = bail[1] || "Bail out!";
      const sum = /^# (tests|suites|pass|fail|cancelled|skipped|todo) (\d+)$/.exec(body);
      if (sum) result.summary[sum[1]] = Number(sum[2]);
    }
  }
  result.tests = pending.get(0) ?? [];
  return result;
}

// ---------------------------------------------------------------- reporting

function failureMessage(t: TapTest, consoleLog: string): string {
  const diag = t.diag
    .split("\n")
    .filter((l) => !/^duration_ms:/.test(l))
    .join("\n");
  let err = /^error: (.*)$/m.exec(diag)?.[1];
  if (err === "|-" || err === "|" || err === ">-") err = /^error: .*\n {2}(.*)$/m.exec(diag)?.[1];
  return `guest test failed${err ? `: ${err}` : ""}\n${diag}\n(guest console: ${consoleLog})`;
}

async function report(t: TestContext, g: TapTest, consoleLog: string): Promise<void> {
  const name = g.name;
  if (g.skip !== undefined) {
    await t.test(name, { skip: `guest: ${g.skip}` }, () => {});
    return;
  }
  await t.test(name, g.todo !== undefined ? { todo: `guest: ${g.todo}` } : {}, async (st) => {
    for (const c of g.children) await report(st, c, consoleLog);
    if (!g.ok) {
      const e = new Error(failureMessage(g, consoleLog));
      e.stack = e.message;
      throw e;
    }
  });
}

// ---------------------------------------------------------------- the test

function listKernelTests(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && e.name.endsWith(".test.js")) out.push(p);
    }
  };
  walk(dir);
  return out.sort();
}

function makeLogDir(root: string): string {
  const base = path.join(process.env.NYDUS_TS_CACHE || path.join(root, ".cache"), "kernel-test-logs");
  fs.mkdirSync(base, { recursive: true });
  // keep the 20 most recent runs
  const old = fs.readdirSync(base).filter((n) => /^\d{8}-\d{6}-\d+$/.test(n)).sort();
  for (const n of old.slice(0, Math.max(0, old.length - 19))) fs.rmSync(path.join(base, n), { recursive: true, force: true });
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  const dir = path.join(base, `${stamp}-${process.pid}`);
  fs.mkdirSync(dir, { recursive: true });
  return path.resolve(dir);
}

test("kernel tests in the VM", async (t) => {
  const root = repoRoot();
  const distDir = path.join(root, "dist", "kernel-tests");
  if (!fs.existsSync(distDir)) throw new Error(`${distDir} does not exist: build first (npx tsc -p .)`);
  let files = listKernelTests(distDir);
  const filter = process.env.NYDUS_TS_KERNEL_TESTS;
  if (filter) {
    const re = new RegExp(filter);
    files = files.filter((f) => re.test(path.relative(distDir, f)));
    if (files.length === 0) throw new Error(`NYDUS_TS_KERNEL_TESTS=${filter} matches no file in ${distDir}`);
  }
  if (files.length === 0) throw new Error(`no kernel tests (*.test.js) in ${distDir}`);

  const logDir = makeLogDir(root);
  const consoleLog = path.join(logDir, "console.log");
  const tapFile = path.join(logDir, "results.tap");
  if (!guestVisible(tapFile)) throw new Error(`log dir ${logDir} is not visible in the guest; set NYDUS_TS_CACHE elsewhere`);
  fs.writeFileSync(consoleLog, "");

  const kernel = findKernel();
  t.diagnostic(`kernel: ${kernel}`);
  t.diagnostic(`guest console log: ${consoleLog}`);

  const nodeArgs = [
    process.execPath,
    "--enable-source-maps",
    "--test",
    "--test-reporter=tap",
    `--test-reporter-destination=${tapFile}`,
    "--test-reporter=spec",
    "--test-reporter-destination=stdout",
  ];
  if (process.env.NYDUS_TS_KERNEL_TEST_NAME) nodeArgs.push(`--test-name-pattern=${process.env.NYDUS_TS_KERNEL_TEST_NAME}`);
  nodeArgs.push(...files);

  const timeoutMs = Number(process.env.NYDUS_TS_KERNEL_TIMEOUT_S || 1200) * 1000;
  const verbose = process.env.NYDUS_TS_KERNEL_VERBOSE === "1";
  const logFd = fs.openSync(consoleLog, "a");
  const started = Date.now();
  let res;
  try {
    res = await runInVm({
      kernel,
      command: nodeArgs,
      cwd: root,
      timeoutMs,
      onConsole: (line) => {
        fs.writeSync(logFd, line + "\n");
        if (verbose) process.stderr.write(`[vm] ${line}\n`);
      },
    });
  } catch (e) {
    throw new Error(`cannot run the VM: ${(e as Error).message} (guest console: ${consoleLog})`);
  } finally {
    fs.closeSync(logFd);
  }
  t.diagnostic(`VM run: ${((Date.now() - started) / 1000).toFixed(1)} s, guest exit status ${res.exitCode}`);

  const problems: string[] = [];
  if (res.timedOut) problems.push(`the VM timed out after ${timeoutMs / 1000} s`);
  const tapText = fs.existsSync(tapFile) ? fs.readFileSync(tapFile, "utf8") : "";
  const tap = parseTap(tapText);
  // node 20's TAP names no file for passing tests, so guest tests keep their own names.
  for (const g of tap.tests) await report(t, g, consoleLog);

  if (tap.tests.length === 0) problems.push(`the guest produced no test results (${tapText ? "unparsable TAP in " + tapFile : "no TAP output"})`);
  if (tap.bailOut) problems.push(`guest bailed out: ${tap.bailOut}`);
  if (tap.tests.length > 0 && tap.plan === undefined) problems.push("guest TAP output has no plan (truncated?)");
  if (tap.plan !== undefined && tap.plan !== tap.tests.length) problems.push(`guest TAP plan 1..${tap.plan} but ${tap.tests.length} results`);
  const guestFailed = (tap.summary.fail ?? 0) > 0 || tap.tests.some((g) => !g.ok && g.todo === undefined);
  const kernelTrouble = res.console
    .split("\n")
    .filter((l) => /^\[\s*\d+\.\d+\] (Oops|BUG:|Kernel panic|WARNING: CPU:|general protection fault)/.test(l));
  if (kernelTrouble.length > 0) problems.push(`the guest kernel reported: ${kernelTrouble.slice(0, 3).join(" | ")}`);
  if (res.exitCode !== 0 && !guestFailed) problems.push(`guest test command exited with status ${res.exitCode}`);

  if (problems.length > 0) {
    const tail = res.console.split("\n").slice(-40).join("\n");
    const e = new Error(`${problems.join("; ")}\nguest console log: ${consoleLog}\n--- last console lines ---\n${tail}`);
    e.stack = e.message;
    throw e;
  }
});
