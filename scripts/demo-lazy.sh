#!/usr/bin/env bash
# The lazy half of the demo: start the daemon, mount the image lazily, read a little, show how
# few chunks were fetched, then read everything and compare with the source. The daemon picks
# its kernel front end: fanotify pre-content events on file-backed EROFS (Linux ≥ 6.14), or
# EROFS over fscache on-demand (e.g. inside the 6.12 test VM). NYDUS_TS_FRONTEND forces one.
# Usage: demo-lazy.sh WORKDIR CACHEDIR [RUNDIR]   (CACHEDIR on ext4/xfs/btrfs; RUNDIR for the socket)
set -euo pipefail
cd "$(dirname "$0")/.."
W="$1"; CACHE="$2"; RUN="${3:-$W/run}"
N="node dist/src/cli/main.js"
export NYDUS_TS_RUN_DIR="$RUN"
SOCK="$RUN/api.sock"
mkdir -p "$RUN" "$CACHE"
cleanup() { $N umount "$W/lazy" 2>/dev/null || true; [ -n "${DPID:-}" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null || true; }
trap cleanup EXIT
echo "== 7. start the daemon (front end: ${NYDUS_TS_FRONTEND:-auto}; cache dir $CACHE)"
$N daemon --frontend "${NYDUS_TS_FRONTEND:-auto}" --cache-dir "$CACHE" --apisock "$SOCK" --log-file "$RUN/daemon.log" &
DPID=$!
for i in $(seq 100); do [ -S "$SOCK" ] && $N status -A "$SOCK" >/dev/null 2>&1 && break; sleep 0.1; done
$N status -A "$SOCK" | head -1
echo "== 8. nydus-ts mount (registers the image; fanotify: the daemon mounts the bootstrap with its blob cache files as devices; fscache: mount -t erofs -o fsid=…)"
$N mount -A "$SOCK" -B "$W/image.boot" -D "$W/blobs" --fsid demo "$W/lazy"
mount | grep " $W/lazy " || true
echo "== 9. read one file; only the chunks it needs are fetched"
head -c 64 "$W/lazy/files/text-5MiB" | od -c | head -2
$N status -A "$SOCK"
echo "== 10. read everything and compare with the source"
# against the source snapshot taken on the host (the VM sees the source over 9p, without ACLs)
node dist/images/compare-trees.js "$W/src.snapshot.json" "$W/lazy"
$N status -A "$SOCK"
