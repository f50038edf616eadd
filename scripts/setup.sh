#!/usr/bin/env bash
# Install everything nydus-ts needs on a fresh Debian bookworm machine (run as root):
# Debian packages (erofs-utils, qemu, e2fsprogs, …), npm dependencies, and the TypeScript build.
# Idempotent: packages already present are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(erofs-utils e2fsprogs qemu-system-x86 attr acl tar gzip zstd lz4 util-linux kmod iproute2
      docker-registry skopeo umoci apache2-utils nginx-light containerd runc curl)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi
echo "setup: building" >&2
npx tsc -p tsconfig.json
chmod +x dist/src/cli/main.js
