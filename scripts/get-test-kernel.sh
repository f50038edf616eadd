#!/usr/bin/env bash
# Print the path of a bzImage usable for the kernel tests (kernel-tests/).
#
# The last line on stdout is the path; everything else (progress, warnings,
# errors) goes to stderr. See --help.
set -euo pipefail

KVER=6.12.117
DEB_PKG=linux-source-6.12
DEB_VERSION=6.12.117-1~deb12u1
BUILD_DEPS=(bc bison flex libelf-dev libssl-dev make gcc xz-utils perl)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FRAGMENT="$REPO/kernel-tests/config.fragment"
CACHE_ROOT=${NYDUS_TS_CACHE:-$REPO/.cache}
CACHED="$CACHE_ROOT/kernel/bzImage-$KVER"

usage() {
  cat <<EOF
Usage: scripts/get-test-kernel.sh [--force-build] [--build-dir DIR] [--keep-build] [--verbose]

Prints (last line of stdout) the path of a Linux $KVER bzImage with EROFS
on-demand (fscache), cachefiles on-demand, 9p root, virtio and fanotify, as
needed by the kernel tests. Lookup order:

  1. \$NYDUS_TS_TEST_KERNEL, if set and the file exists
  2. the cached build \${NYDUS_TS_CACHE:-<repo>/.cache}/kernel/bzImage-$KVER
  3. otherwise it is built from Debian's $DEB_PKG package
     (apt-get installs $DEB_PKG and the build dependencies; needs root or sudo):
     make defconfig && make kvm_guest.config, apply kernel-tests/config.fragment
     with scripts/config, make olddefconfig, check every fragment option is =y,
     make bzImage, copy it into the cache. About 10-15 minutes on 2 cores.

Options:
  --force-build     ignore \$NYDUS_TS_TEST_KERNEL and the cache; always build
                    (the result still replaces the cached copy)
  --build-dir DIR   build in DIR (default: a fresh mktemp dir under \${TMPDIR:-/tmp},
                    removed after a successful build)
  --keep-build      do not delete the build dir after a successful build
  --verbose         stream the full kernel build output to stderr
                    (default: log to <build dir>/build.log with a heartbeat)
  --no-deps         do not check/install the VM runtime tools (see below)
  -h, --help        this help

Before anything else it makes sure the tools the VM tests need are present
(qemu-system-x86_64, mke2fs, mkfs.erofs, ip; Debian packages qemu-system-x86,
e2fsprogs, erofs-utils, iproute2) and apt-get installs missing ones when
running as root (or with sudo); otherwise it only warns.

Environment:
  NYDUS_TS_TEST_KERNEL   path of a prebuilt bzImage to use
  NYDUS_TS_CACHE         cache root (default <repo>/.cache)
  JOBS                   make -j value (default: nproc)
EOF
}

log() { printf 'get-test-kernel: %s\n' "$*" >&2; }
die() { printf 'get-test-kernel: ERROR: %s\n' "$*" >&2; exit 1; }

FORCE=0
BUILD_DIR=""
KEEP=0
VERBOSE=0
NO_DEPS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --force-build) FORCE=1 ;;
    --build-dir) [ $# -ge 2 ] || die "--build-dir needs an argument"; BUILD_DIR=$2; shift ;;
    --build-dir=*) BUILD_DIR=${1#--build-dir=} ;;
    --keep-build) KEEP=1 ;;
    --verbose|-v) VERBOSE=1 ;;
    --no-deps) NO_DEPS=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
can_apt() { command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; }
apt_get() {
  can_apt || die "need apt-get and root (or sudo) to run: apt-get $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get "$@" >&2
}

# ---- tools the VM tests need at run time --------------------------------------
ensure_runtime_deps() {
  local missing=() pair cmd pkg
  for pair in qemu-system-x86_64:qemu-system-x86 mke2fs:e2fsprogs mkfs.erofs:erofs-utils ip:iproute2; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if ! can_apt; then
    log "warning: missing VM test tools (packages: ${missing[*]}); install them (needs root)"
    return 0
  fi
  log "installing VM test tools: ${missing[*]}"
  if ! apt_get install -y -q --no-install-recommends "${missing[@]}"; then
    apt_get update -q
    apt_get install -y -q --no-install-recommends "${missing[@]}"
  fi
}
[ "$NO_DEPS" = 1 ] || ensure_runtime_deps

if [ "$FORCE" = 0 ]; then
  if [ -n "${NYDUS_TS_TEST_KERNEL:-}" ]; then
    if [ -f "$NYDUS_TS_TEST_KERNEL" ]; then
      log "using \$NYDUS_TS_TEST_KERNEL"
      echo "$NYDUS_TS_TEST_KERNEL"
      exit 0
    fi
    log "warning: \$NYDUS_TS_TEST_KERNEL=$NYDUS_TS_TEST_KERNEL does not exist; falling back to the cache/build"
  fi
  if [ -s "$CACHED" ]; then
    log "using cached kernel"
    echo "$CACHED"
    exit 0
  fi
fi

[ -f "$FRAGMENT" ] || die "config fragment not found: $FRAGMENT"

# ---- serialise concurrent builds into the same cache -------------------------
mkdir -p "$CACHE_ROOT/kernel"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_ROOT/kernel/.build.lock"
  if ! flock -n 9; then
    log "another build into $CACHE_ROOT/kernel is running; waiting for it"
    flock 9
    if [ "$FORCE" = 0 ] && [ -s "$CACHED" ]; then
      log "using kernel built by the other process"
      echo "$CACHED"
      exit 0
    fi
  fi
fi

# ---- build dependencies ------------------------------------------------------
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: building the test kernel needs Debian's $DEB_PKG (or set NYDUS_TS_TEST_KERNEL)"

candidate() { apt-cache policy "$DEB_PKG" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
if [ -z "$(candidate)" ] || [ "$(candidate)" = "(none)" ]; then
  log "$DEB_PKG unknown to apt; running apt-get update"
  apt_get update -q
fi
CAND=$(candidate)
if [ -z "$CAND" ] || [ "$CAND" = "(none)" ]; then
  die "$DEB_PKG is not available from this machine's apt sources (it is in Debian bookworm-security / bookworm-backports); add them or set NYDUS_TS_TEST_KERNEL"
fi

PKG_SPEC="$DEB_PKG"
if apt-cache madison "$DEB_PKG" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep -qxF "$DEB_VERSION"; then
  PKG_SPEC="$DEB_PKG=$DEB_VERSION"
else
  log "warning: $DEB_PKG $DEB_VERSION is no longer offered; using $CAND (the result is still cached as bzImage-$KVER)"
fi

need=()
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
installed_src=$(dpkg-query -W -f='${Status} ${Version}' "$DEB_PKG" 2>/dev/null || true)
case "$PKG_SPEC" in
  *=*) want_ver=${PKG_SPEC#*=} ;;
  *) want_ver=$CAND ;;
esac
if [ "$installed_src" != "install ok installed $want_ver" ] || [ ! -f /usr/src/linux-source-6.12.tar.xz ]; then
  need+=("$PKG_SPEC")
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing: ${need[*]}"
  apt_get install -y -q --no-install-recommends "${need[@]}"
fi
TARBALL=/usr/src/linux-source-6.12.tar.xz
[ -f "$TARBALL" ] || die "$TARBALL missing after installing $PKG_SPEC"

# ---- build -------------------------------------------------------------------
CREATED_BUILD_DIR=0
if [ -z "$BUILD_DIR" ]; then
  BUILD_DIR=$(mktemp -d "${TMPDIR:-/tmp}/nydus-ts-kbuild.XXXXXX")
  CREATED_BUILD_DIR=1
fi
mkdir -p "$BUILD_DIR"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
SRC="$BUILD_DIR/linux-source-6.12"
LOG="$BUILD_DIR/build.log"
: >"$LOG"
JOBS=${JOBS:-$(nproc)}
START=$(date +%s)

log "build dir: $BUILD_DIR"
if [ -d "$SRC" ]; then
  log "removing previous source tree $SRC"
  rm -rf "$SRC"
fi
log "extracting $TARBALL"
tar -xf "$TARBALL" -C "$BUILD_DIR"
[ -d "$SRC" ] || die "expected $SRC after extracting $TARBALL"

run_make() {
  # run_make <label> <make args...>
  local label=$1; shift
  log "make $* ($label)"
  if [ "$VERBOSE" = 1 ]; then
    make -C "$SRC" "$@" 2>&1 | tee -a "$LOG" >&2
    return "${PIPESTATUS[0]}"
  fi
  make -C "$SRC" "$@" >>"$LOG" 2>&1 &
  local pid=$! rc=0 n=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    n=$((n + 1))
    if [ $((n % 60)) = 0 ]; then
      log "  ... $label: $((n / 60)) min, $(grep -c '^  CC ' "$LOG" || true) objects compiled so far"
    fi
  done
  wait "$pid" || rc=$?
  if [ "$rc" != 0 ]; then
    log "make $* failed (exit $rc); last lines of $LOG:"
    tail -n 60 "$LOG" >&2
    return "$rc"
  fi
}

run_make config defconfig
run_make config kvm_guest.config

enable=()
disable=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=y) opt=${line%%=*}; enable+=("${opt#CONFIG_}") ;;
    "# disabled"*:*) for o in ${line#*:}; do disable+=("$o"); done ;;
  esac
done <"$FRAGMENT"
[ ${#enable[@]} -gt 0 ] || die "no CONFIG_*=y lines in $FRAGMENT"
args=()
for o in "${enable[@]}"; do args+=(-e "$o"); done
for o in "${disable[@]}"; do args+=(-d "$o"); done
log "applying fragment: ${#enable[@]} enabled, ${#disable[@]} disabled (${disable[*]})"
(cd "$SRC" && scripts/config "${args[@]}")
run_make config olddefconfig

bad=()
for o in "${enable[@]}"; do
  grep -qx "CONFIG_$o=y" "$SRC/.config" || bad+=("CONFIG_$o ($(grep -E "^(# )?CONFIG_$o[= ]" "$SRC/.config" || echo 'absent'))")
done
if [ ${#bad[@]} -gt 0 ]; then
  die "these fragment options are not =y after olddefconfig (missing dependencies?): ${bad[*]}"
fi
log "all ${#enable[@]} fragment options are =y"

KREL=$(make -s -C "$SRC" kernelversion 2>/dev/null || echo unknown)
log "kernel version: $KREL; building bzImage with -j$JOBS (log: $LOG)"
run_make bzImage -j"$JOBS" bzImage
IMG="$SRC/arch/x86/boot/bzImage"
[ -s "$IMG" ] || die "build finished but $IMG is missing"

tmp="$CACHED.tmp.$$"
cp "$IMG" "$tmp"
cp "$SRC/.config" "$CACHE_ROOT/kernel/config-$KVER.tmp.$$"
mv -f "$CACHE_ROOT/kernel/config-$KVER.tmp.$$" "$CACHE_ROOT/kernel/config-$KVER"
mv -f "$tmp" "$CACHED"
END=$(date +%s)
log "built $KREL in $(( (END - START) / 60 ))m$(( (END - START) % 60 ))s -> $CACHED"

if [ "$KEEP" = 0 ]; then
  if [ "$CREATED_BUILD_DIR" = 1 ]; then
    rm -rf "$BUILD_DIR"
  else
    rm -rf "$SRC"
  fi
else
  log "keeping build dir $BUILD_DIR"
fi
echo "$CACHED"
