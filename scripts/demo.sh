#!/usr/bin/env bash
# The main job on an embedded default: generate the sample tree (images/tree-gen.ts), build it
# into a RAFS v6 image, verify every chunk, and show it mounted by the kernel with no daemon
# (flattened export + loop mount), compared entry by entry with its source.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
N="node dist/src/cli/main.js"
W="${NYDUS_TS_DEMO_DIR:-$(mktemp -d /tmp/nydus-ts-demo.XXXXXX)}"
mkdir -p "$W"
cleanup() { umount "$W/mnt" 2>/dev/null || true; }
export NYDUS_TS_DEMO_DIR="$W"
trap cleanup EXIT

echo "== 1. sample tree (every inode type, xattrs, hardlinks, sparse files) in $W/src"
node dist/images/tree-gen.js "$W/src" >/dev/null
echo "== 2. nydus-ts create"
$N create -B "$W/image.boot" -D "$W/blobs" -J "$W/build.json" "$W/src"
echo "== 3. nydus-ts check (every chunk decompressed and its digest verified)"
$N check "$W/image.boot" -D "$W/blobs"
echo "== 4. nydus-ts inspect stats"
$N inspect "$W/image.boot" stats
echo "== 5. export to a plain EROFS image and mount it with the kernel"
$N export -B "$W/image.boot" -D "$W/blobs" -O "$W/disk.img"
mkdir -p "$W/mnt"
mount -t erofs -o loop,ro "$W/disk.img" "$W/mnt"
ls -la "$W/mnt" | head -20
echo "== 6. compare the mount with the source"
node dist/images/compare-trees.js --save "$W/src.snapshot.json" "$W/src" >/dev/null
node dist/images/compare-trees.js "$W/src.snapshot.json" "$W/mnt"
umount "$W/mnt"

# The lazy mount with our daemon, natively where the kernel can: fanotify pre-content events on
# file-backed EROFS (Linux ≥ 6.14), or EROFS over fscache on-demand. Otherwise (or with
# NYDUS_TS_DEMO_VM=1) the same steps run in the test VM (6.12 kernel, fscache).
kver="$(uname -r | grep -o '^[0-9]*\.[0-9]*')"
if [ -z "${NYDUS_TS_DEMO_VM:-}" ] && [ "$(printf '%s\n6.14\n' "$kver" | sort -V | head -1)" = "6.14" ]; then
  echo "== kernel $(uname -r) has fanotify pre-content events: the lazy mount runs natively (fanotify front end)"
  mkdir -p /var/lib/nydus-ts/cache
  NYDUS_TS_FRONTEND=fanotify bash scripts/demo-lazy.sh "$W" /var/lib/nydus-ts/cache
elif [ -z "${NYDUS_TS_DEMO_VM:-}" ] && [ -c /dev/cachefiles ] && grep -q ondemand /proc/kallsyms 2>/dev/null; then
  echo "== kernel $(uname -r) has EROFS over fscache on-demand: the lazy mount runs natively (fscache front end)"
  mkdir -p /var/lib/nydus-ts/cache
  NYDUS_TS_FRONTEND=fscache bash scripts/demo-lazy.sh "$W" /var/lib/nydus-ts/cache
else
  echo "== this kernel has neither fanotify pre-content events nor /dev/cachefiles on-demand mode: running the lazy mount in the test VM (fscache front end)"
  if [ -z "${NYDUS_TS_TEST_KERNEL:-}" ] && [ -f ../shared/kernel/bzImage-6.12.117 ]; then
    export NYDUS_TS_TEST_KERNEL="$(realpath ../shared/kernel/bzImage-6.12.117)"
  fi
  node dist/kernel-tests/vm-cli.js --timeout 900 -- bash scripts/demo-lazy.sh "$W" /run/nydus-cache/cache /run/nydus-demo
fi
echo "demo done: image in $W"
