#!/usr/bin/env bash
# The host read benchmark for the fanotify front end (issue #9): one file read through native
# file-backed EROFS, a naive C fanotify daemon (bench/naive-fanotify.c) and nydus-ts' fanotify
# daemon, cold / warm / after remount / parallel, on this machine's kernel (>= 6.14, as root).
# Not a test: it prints a table with the issue's ratios and, with --json FILE, writes JSON.
#
# usage: bash scripts/bench-read-host.sh [OPTIONS]      (npm run bench:read -- [OPTIONS])
#   e.g. bash scripts/bench-read-host.sh --rounds 5 --size 256 --json .cache/bench/read-host.json
#        bash scripts/bench-read-host.sh --variants native,naive-c
#
# Installs and builds what it needs (scripts/setup.sh); the benchmark compiles the C daemon
# itself with gcc -O2 into .cache/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  -h|--help)
    sed -n '2,12s/^# \{0,1\}//p' "$0"
    echo
    if [ -f dist/bench/read-host-bench.js ]; then node dist/bench/read-host-bench.js --help; fi
    exit 0 ;;
esac

bash scripts/setup.sh
exec node dist/bench/read-host-bench.js "$@"
