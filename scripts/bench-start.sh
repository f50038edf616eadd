#!/usr/bin/env bash
# The container start-up benchmark (issue #11), on this host as root: time to a real container's
# start, first output and end for containerd's overlayfs snapshotter with an OCI image (CRI pull:
# download + unpack) against `nydus-ts snapshotter` with its nydus conversion (lazy), the
# registry in a network namespace of ours behind a veth link shaped by tbf (100 Mbit/s by
# default), cold caches per run. Images: Python, Node.js and the Debian minbase, built from
# Debian bookworm packages and cached. Not a test: it prints tables and ratios, writes JSON
# (see bench/README.md).
#
# usage: bash scripts/bench-start.sh [OPTIONS]      (npm run bench:start -- [OPTIONS])
#   e.g. bash scripts/bench-start.sh --rates 100m,1g,unlimited
#        bash scripts/bench-start.sh --images python --rounds 1 --variants overlayfs,nydus-ts
#
# Needs the rootfs tar of scripts/make-rootfs.sh (debootstrap the first time) and the Debian
# mirror the first time an image is built (apt-get in a chroot).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  -h|--help)
    sed -n '2,16s/^# \{0,1\}//p' "$0"
    echo
    if [ -f dist/bench/start-bench.js ]; then node dist/bench/start-bench.js --help; fi
    exit 0 ;;
esac

bash scripts/setup.sh
exec node dist/bench/start-bench.js "$@"
