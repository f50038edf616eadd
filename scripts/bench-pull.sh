#!/usr/bin/env bash
# The pull benchmark (issue #4), end to end: a full pull (skopeo copy + tar -x) of a Debian
# bookworm minbase image against a lazy `nydus-ts mount --image` of its nydus conversion, both
# from a docker-registry on the guest's loopback, up to the end of a small workload run in a
# chroot (bash -c true, dpkg -l, apt-cache policy), inside the QEMU test VM with the 6.12 test
# kernel. Not a test: it prints a table and writes JSON.
#
# usage: bash scripts/bench-pull.sh [HOST OPTIONS] [GUEST OPTIONS]
#   e.g. bash scripts/bench-pull.sh --rounds 5
#        bash scripts/bench-pull.sh --rounds 1 --layers 2 --slim
#
# Installs what it needs (scripts/setup.sh: Debian packages incl. docker-registry and skopeo,
# npm ci, the TypeScript build), makes the rootfs tar (scripts/make-rootfs.sh: debootstrap the
# first time, needs the Debian mirror), finds the kernel (scripts/get-test-kernel.sh), builds
# and caches the OCI layout and boots the VM once (bench/pull-bench-host.ts), which runs
# bench/pull-bench.ts. Takes 10-20 minutes under TCG with the default 3 rounds.
#
# Environment:
#   NYDUS_TS_TEST_KERNEL     the bzImage (e.g. /work/shared/kernel/bzImage-6.12.117)
#   NYDUS_TS_CACHE           cache directory (rootfs tar, OCI layout, kernel; default .cache)
#   NYDUS_TS_BENCH_PULL_JSON results file (default .cache/bench/pull-bench.json); an
#                            --output-json option on the command line wins
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"

case "${1:-}" in
  -h|--help)
    sed -n '2,24s/^# \{0,1\}//p' "$0"
    echo
    if [ -f dist/bench/pull-bench-host.js ]; then node dist/bench/pull-bench-host.js --help; fi
    exit 0 ;;
esac

bash scripts/setup.sh

TAR="$(bash scripts/make-rootfs.sh --cache-only)"
JSON="${NYDUS_TS_BENCH_PULL_JSON:-$REPO/.cache/bench/pull-bench.json}"
args=("$@")
have_json=0
have_tar=0
for a in "${args[@]}"; do
  [ "$a" = "--output-json" ] && have_json=1
  [ "$a" = "--rootfs-tar" ] && have_tar=1
done
if ((!have_json)); then args+=(--output-json "$JSON"); fi
if ((!have_tar)); then args+=(--rootfs-tar "$TAR"); fi
mkdir -p "$(dirname "$JSON")"
exec node dist/bench/pull-bench-host.js "${args[@]}"
