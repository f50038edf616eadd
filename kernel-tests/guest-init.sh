#!/bin/sh
# PID 1 of the kernel-test VM (see kernel-tests/vm.ts and kernel-tests/README.md).
#
# vm.ts copies this script into a per-run directory on the host (visible in the
# guest through the 9p root) and boots the kernel with init=<run dir>/init.
# The run directory also holds:
#   env.sh       sourced: exports the caller's environment (PATH, HOME, ...)
#   command.sh   the test command (cd <cwd> && <command>), run with sh
#   nonce        a random token used in the console exit marker
# and receives:
#   exit-status  the command's exit status (written by this script)
#
# Guest layout:
#   /proc /sys /dev (devtmpfs) /dev/pts /dev/shm   as usual
#   /run                tmpfs (shadows the host's /run)
#   /run/tmp            TMPDIR for the command (tmpfs, guest-private)
#   /run/nydus-cache    the ext4 scratch disk (/dev/vda); $NYDUS_VM_CACHE_DIR
#   everything else     the host's root filesystem over 9p (read-write)
# Networking: only `lo`, up, with 127.0.0.1.

RUN_DIR=${0%/*}
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { echo "nydus-vm-init: $*"; }

poweroff_now() {
  sync
  # Power-off via sysrq is asynchronous and tears down 9p under us, so nothing
  # may be exec'ed after it (an exec fails with EIO, PID 1 exits, the kernel
  # panics). Block on a FIFO on tmpfs instead (shell builtins only).
  mkfifo /run/nydus-vm-halt 2>/dev/null
  echo o >/proc/sysrq-trigger
  if [ -p /run/nydus-vm-halt ]; then
    read -r _ </run/nydus-vm-halt
  fi
  while :; do :; done
}

mounted() { grep -q " $1 " /proc/mounts 2>/dev/null; }

mount -t proc proc /proc || say "mount /proc failed"
mounted /sys || mount -t sysfs sysfs /sys || say "mount /sys failed"
mounted /dev || mount -t devtmpfs devtmpfs /dev || say "mount /dev failed"
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mounted /dev/shm || mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mount -t tmpfs -o mode=755,nosuid,nodev run /run || say "mount /run failed"
mkdir -p /run/tmp /run/nydus-cache
chmod 1777 /run/tmp
# cgroup v1 hierarchies, like the host (cgroup v1 hybrid): on cgroup2, runc applies device rules
# as a BPF program, and the test kernel has no bpf(2) (CONFIG_BPF_SYSCALL off), so no container
# could start; v1's devices controller needs no BPF.
if [ -d /sys/fs/cgroup ]; then
  mount -t tmpfs -o mode=755,nosuid,nodev,noexec cgroup /sys/fs/cgroup 2>/dev/null
  for c in devices freezer pids cpu,cpuacct cpuset blkio perf_event hugetlb rdma misc; do
    mkdir -p "/sys/fs/cgroup/$c"
    mount -t cgroup -o "$c" "cgroup-$c" "/sys/fs/cgroup/$c" 2>/dev/null || rmdir "/sys/fs/cgroup/$c"
  done
  mkdir -p /sys/fs/cgroup/unified
  mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified 2>/dev/null || rmdir /sys/fs/cgroup/unified
fi
ln -sf /proc/self/fd /dev/fd 2>/dev/null

ip link set lo up || say "ip link set lo up failed"
hostname nydus-vm 2>/dev/null

if [ -b /dev/vda ]; then
  mount -t ext4 /dev/vda /run/nydus-cache || say "mount /dev/vda failed"
else
  say "no /dev/vda (scratch disk)"
fi

NONCE=$(cat "$RUN_DIR/nonce" 2>/dev/null)

if [ -f "$RUN_DIR/env.sh" ]; then
  # shellcheck disable=SC1091
  . "$RUN_DIR/env.sh"
fi

say "running command"
sh "$RUN_DIR/command.sh" </dev/null
status=$?
say "command exited with status $status"

echo "$status" >"$RUN_DIR/exit-status.tmp" && mv "$RUN_DIR/exit-status.tmp" "$RUN_DIR/exit-status"
echo "@@nydus-vm-exit:$NONCE:$status@@"
umount /run/nydus-cache 2>/dev/null
poweroff_now
