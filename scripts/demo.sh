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

# The lazy mount: EROFS over fscache with our daemon. This host kernel may lack on-demand
# fscache (it was removed upstream in 7.2); then the same steps run in the test VM (6.12 kernel).
if [ -c /dev/cachefiles ] && grep -q ondemand /proc/kallsyms 2>/dev/null && [ -z "${NYDUS_TS_DEMO_VM:-}" ]; then
  mkdir -p /var/lib/nydus-ts/cache
  bash scripts/demo-lazy.sh "$W" /var/lib/nydus-ts/cache
else
  echo "== this kernel has no /dev/cachefiles on-demand mode: running the lazy mount in the test VM"
  if [ -z "${NYDUS_TS_TEST_KERNEL:-}" ] && [ -f ../shared/kernel/bzImage-6.12.117 ]; then
    export NYDUS_TS_TEST_KERNEL="$(realpath ../shared/kernel/bzImage-6.12.117)"
  fi
  node dist/kernel-tests/vm-cli.js --timeout 900 -- bash scripts/demo-lazy.sh "$W" /run/nydus-cache/cache /run/nydus-demo
fi
echo "demo done: image in $W"
