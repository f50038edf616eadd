#!/usr/bin/env bash
# The container start benchmark (issue #10), on this host as root: time to a real container's
# first output and end (`apt-cache policy` in a Debian bookworm minbase image) for containerd's
# overlayfs snapshotter with the OCI image (CRI pull: download + unpack) against
# `nydus-ts snapshotter` with its nydus conversion, from one docker-registry on loopback, cold
# caches per run. Not a test: it prints a table and the ratios (see bench/README.md).
#
# usage: bash scripts/bench-start.sh [--rounds N] [--json FILE] [--help]
#
# Needs the rootfs tar of scripts/make-rootfs.sh (debootstrap the first time, needs the Debian
# mirror and the debootstrap package: `npm run bench` installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
node dist/bench/start-bench.js "$@"
