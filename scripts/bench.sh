#!/usr/bin/env bash
# The build benchmark (`npm run bench`): nydus-ts create against mkfs.erofs on a real Debian
# rootfs. Not a test: it prints a table and writes JSON; see bench/README.md.
#
# usage: npm run bench [-- BUILD-BENCH OPTIONS]     e.g. npm run bench -- --runs 5 --cache cold
#
# Installs what it needs (debootstrap, erofs-utils, GNU time; then scripts/setup.sh for npm
# and the TypeScript build), makes the tree with scripts/make-rootfs.sh (cached as a tar under
# .cache/ after the first run, which needs the Debian mirror), and runs bench/build-bench.ts.
#
# Environment:
#   NYDUS_TS_BENCH_SOURCE  build this directory instead of the Debian rootfs
#   NYDUS_TS_BENCH_DIR     work directory (kept; the unpacked rootfs is reused); default: a
#                          temporary one, removed at the end
#   NYDUS_TS_BENCH_JSON    results file (default .cache/bench/build-bench.json); an
#                          --output-json option given on the command line wins
#   NYDUS_TS_CACHE         cache directory for the rootfs tar (default .cache)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"

case "${1:-}" in
  -h|--help)
    sed -n '2,18s/^# \{0,1\}//p' "$0"
    echo
    echo "build-bench options:"
    if [ -f dist/bench/build-bench.js ]; then node dist/bench/build-bench.js --help | sed 1,2d; fi
    exit 0 ;;
esac

# Debian packages the benchmark needs beyond scripts/setup.sh's.
PKGS=(debootstrap erofs-utils time tar)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bench: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash scripts/setup.sh

own_work=0
WORK="${NYDUS_TS_BENCH_DIR:-}"
if [ -z "$WORK" ]; then
  WORK="$(mktemp -d /tmp/nydus-ts-bench.XXXXXX)"
  own_work=1
fi
mkdir -p "$WORK"
cleanup() { if ((own_work)); then rm -rf "$WORK"; fi; }
trap cleanup EXIT

SRC="${NYDUS_TS_BENCH_SOURCE:-}"
if [ -z "$SRC" ]; then
  SRC="$WORK/rootfs"
  if [ -d "$SRC" ] && [ -n "$(ls -A "$SRC")" ]; then
    echo "bench: reusing $SRC" >&2
  else
    bash scripts/make-rootfs.sh "$SRC" >/dev/null
  fi
fi

JSON="${NYDUS_TS_BENCH_JSON:-$REPO/.cache/bench/build-bench.json}"
mkdir -p "$(dirname "$JSON")"
node dist/bench/build-bench.js --source "$SRC" --work "$WORK/out" --output-json "$JSON" "$@"
