#!/usr/bin/env bash
# Run every test (unit, real-kernel host tests, and the kernel tests in a QEMU VM).
# Installs what it needs first. Extra arguments are passed to `node --test` (e.g. a file list).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The kernel tests boot the shared test kernel when it is beside the repo (a cache; the script
# builds the same kernel from Debian's linux-source-6.12 when it is absent).
if [ -z "${NYDUS_TS_TEST_KERNEL:-}" ] && [ -f ../shared/kernel/bzImage-6.12.117 ]; then
  export NYDUS_TS_TEST_KERNEL="$(realpath ../shared/kernel/bzImage-6.12.117)"
fi
if (($#)); then
  exec node --test --test-concurrency=1 "$@"
fi
exec node --test --test-concurrency=1 dist/test/
