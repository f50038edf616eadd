#!/usr/bin/env bash
# The read benchmark (issue #3), end to end: nydus-ts' EROFS-over-fscache daemon against native
# EROFS (the same image exported and loop-mounted), cold / warm / remount-from-cache, inside the
# QEMU test VM with the 6.12 test kernel. Not a test: it prints a table and writes JSON.
#
# usage: bash scripts/bench-read.sh [HOST OPTIONS] [GUEST OPTIONS]
#   e.g. bash scripts/bench-read.sh --rounds 5 --size-mib 128
#        bash scripts/bench-read.sh --storage tmpfs
#        bash scripts/bench-read.sh --cpu-prof .cache/bench/prof
#
# Installs what it needs (scripts/setup.sh: Debian packages, npm ci, the TypeScript build),
# finds the kernel (scripts/get-test-kernel.sh: $NYDUS_TS_TEST_KERNEL, the cache, or a build),
# boots the VM once (bench/read-bench-host.ts) and runs bench/read-bench.ts in it.
#
# Environment:
#   NYDUS_TS_TEST_KERNEL     the bzImage (e.g. /work/shared/kernel/bzImage-6.12.117)
#   NYDUS_TS_BENCH_READ_JSON results file (default .cache/bench/read-bench.json); an
#                            --output-json option on the command line wins
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"

case "${1:-}" in
  -h|--help)
    sed -n '2,18s/^# \{0,1\}//p' "$0"
    echo
    if [ -f dist/bench/read-bench-host.js ]; then node dist/bench/read-bench-host.js --help; fi
    exit 0 ;;
esac

bash scripts/setup.sh

JSON="${NYDUS_TS_BENCH_READ_JSON:-$REPO/.cache/bench/read-bench.json}"
args=("$@")
have_json=0
for a in "${args[@]}"; do [ "$a" = "--output-json" ] && have_json=1; done
if ((!have_json)); then args+=(--output-json "$JSON"); fi
mkdir -p "$(dirname "$JSON")"
exec node dist/bench/read-bench-host.js "${args[@]}"
