#!/usr/bin/env bash
# Make a real Debian root filesystem to benchmark the builder on (see bench/README.md).
#
# usage: scripts/make-rootfs.sh [--cache-only] [--rebuild] DIR
#
# DIR receives a Debian bookworm `debootstrap --variant=minbase` tree as debootstrap leaves it:
# about 210 MB in ~6,800 entries (binaries, libraries, text, symlinks, hardlinks, setuid files,
# device nodes, and ~80 MB of already-compressed .debs in var/cache/apt/archives).
# The first run bootstraps it from the Debian mirror apt uses and stores it as a tar (ownership,
# modes, xattrs, ACLs and hardlinks kept) under
#   ${NYDUS_TS_CACHE:-<repo>/.cache}/rootfs-bookworm-minbase.tar
# later runs just unpack that tar (a few seconds).
#
#   --cache-only   make sure the cached tar exists and print its path; DIR is not needed
#   --rebuild      throw the cached tar away and bootstrap again
#
# Environment: NYDUS_TS_CACHE (cache directory), NYDUS_TS_DEBIAN_MIRROR (mirror URL; default:
# the one in this machine's apt sources, else debootstrap's default). Needs root (debootstrap
# chroots and creates files owned by other users). Progress goes to stderr; on success the only
# stdout line is DIR (or the tar with --cache-only).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SUITE=bookworm
CACHE_DIR="${NYDUS_TS_CACHE:-$REPO/.cache}"
TAR="$CACHE_DIR/rootfs-$SUITE-minbase.tar"

usage() { sed -n '2,20s/^# \{0,1\}//p' "$0"; }
log() { echo "make-rootfs: $*" >&2; }
die() { echo "make-rootfs: error: $*" >&2; exit 1; }

cache_only=0
rebuild=0
dir=""
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --cache-only) cache_only=1 ;;
    --rebuild) rebuild=1 ;;
    --) shift; dir="${1:-}"; break ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) [ -z "$dir" ] || die "only one DIR expected (got '$dir' and '$1')"; dir="$1" ;;
  esac
  shift
done
if ((!cache_only)) && [ -z "$dir" ]; then usage >&2; die "DIR is required"; fi
if [ -n "$dir" ] && [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
  die "$dir exists and is not empty"
fi
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and unpacking with ownership need it)"

# The Debian mirror apt already uses (deb822 or one-line sources), unless overridden.
apt_mirror() {
  local f line
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # First URIs: of a stanza whose Suites: has the plain suite (not -security / -updates).
    awk -v s="$SUITE" '
      /^[[:space:]]*$/ { if (u != "" && ok) { print u; exit } u = ""; ok = 0; next }
      /^URIs:/ { u = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
      END { if (u != "" && ok) print u }' "$f" | head -n1
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    while read -r line; do
      # deb [opts] URI SUITE COMPONENTS...
      set -- $line
      [ "${1:-}" = deb ] || continue
      shift
      case "${1:-}" in \[*) while (($#)) && [[ "$1" != *\] ]]; do shift; done; shift ;; esac
      [ "${2:-}" = "$SUITE" ] && { echo "$1"; return; }
    done < "$f"
  done
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null && return
  log "installing debootstrap with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed: the Debian mirror is not reachable"
  apt-get install -y -qq --no-install-recommends debootstrap >&2 || die "cannot install debootstrap"
}

# Remove a debootstrap work directory; a failed debootstrap can leave proc/sys mounted in it.
remove_work() {
  local w="$1" m
  for m in $(awk -v w="$w/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$w"
}

make_cache() {
  ensure_debootstrap
  local mirror="${NYDUS_TS_DEBIAN_MIRROR:-$(apt_mirror | head -n1)}"
  mkdir -p "$CACHE_DIR"
  local work
  work="$(mktemp -d "$CACHE_DIR/.debootstrap.XXXXXX")"
  # shellcheck disable=SC2064
  trap "remove_work '$work'" EXIT
  local log="$CACHE_DIR/debootstrap.log"
  log "debootstrap --variant=minbase $SUITE from ${mirror:-the default mirror} (a minute or more; log in $log)"
  local t0=$SECONDS
  if ! debootstrap --variant=minbase "$SUITE" "$work/root" ${mirror:+"$mirror"} >"$log" 2>&1; then
    tail -n 15 "$log" >&2
    if grep -qE 'Failed getting release file|Couldn.t download|Failure trying to run|Temporary failure resolving|Could not resolve|Connection refused|Network is unreachable|unable to fetch' "$log" \
      || ! grep -q 'Retrieving Release' "$log"; then
      die "debootstrap could not fetch $SUITE from ${mirror:-its default mirror}: the Debian mirror is not reachable from this machine (set NYDUS_TS_DEBIAN_MIRROR to a reachable one)"
    fi
    die "debootstrap failed (see the log above)"
  fi
  log "bootstrapped in $((SECONDS - t0)) s: $(du -sh "$work/root" | cut -f1), $(find "$work/root" | wc -l) entries"
  # Kept exactly as debootstrap leaves it, including the ~80 MB of downloaded .debs in
  # var/cache/apt/archives (already-compressed data, as container layers often carry).
  log "writing $TAR"
  tar --numeric-owner --xattrs --xattrs-include='*' --acls --sort=name \
    -C "$work/root" -cf "$TAR.tmp" .
  mv -f "$TAR.tmp" "$TAR"
  remove_work "$work"
  trap - EXIT
  log "cached $(du -h "$TAR" | cut -f1) in $TAR"
}

if ((rebuild)); then rm -f "$TAR"; fi
if [ -f "$TAR" ]; then
  log "using cached $TAR"
else
  make_cache
fi
if ((cache_only)); then echo "$TAR"; exit 0; fi

mkdir -p "$dir"
log "unpacking into $dir"
tar --numeric-owner --xattrs --xattrs-include='*' --acls --same-permissions --same-owner \
  -C "$dir" -xf "$TAR"
log "$dir: $(du -sh "$dir" | cut -f1), $(find "$dir" | wc -l) entries"
echo "$dir"
