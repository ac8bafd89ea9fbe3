#!/usr/bin/env bash
# daemon-test.sh: Shoal's fscache mode end to end on a real Linux 6.12 under qemu, with the real
# `shoal` binary: `shoal origin serve`, two `shoal daemon`s peered over 127.0.0.1 inside the VM,
# the first supervised (--supervise) and mounting in fscache mode, the second in FUSE mode (the
# cachefiles device is exclusive, so only one daemon per kernel can use it). The in-VM checks are
# in vm-daemon.sh; they print `SHOAL-VM: PASS|FAIL name: ...` lines, which this script greps and
# e2e's TestDaemonFscacheVM parses. WORKDIR keeps everything; SHOAL_KERNEL_NOBUILD=1 never builds.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
vm_test_setup daemon-vm

log "building a static shoal"
(cd "$repo" && run_logged "$work/go-build.log" env CGO_ENABLED=0 GOFLAGS= go build -o "$work/shoal" ./cmd/shoal)

log "building the image with shoal image build"
data="$work/data"
rm -rf "$data" "$work/tree"
mkdir -p "$data" "$work/tree/sub/deeper"
t="$work/tree"
echo "hello from shoal" >"$t/hello.txt"
: >"$t/empty"
head -c 5000 /dev/urandom >"$t/odd-5000"
head -c 3145728 /dev/urandom >"$t/sub/random-3M"
cp "$t/sub/random-3M" "$t/sub/deeper/same-as-random-3M"
head -c 1048577 /dev/urandom >"$t/sub/deeper/1M-plus-1"
seq 1 200000 >"$t/sub/numbers"
head -c 12582912 /dev/urandom >"$t/big-12M"
run_logged "$work/image-build.log" "$work/shoal" image build "$t" "$data/img" --quiet
# A second image sharing two files with the first: their chunks must not be fetched again.
t2="$work/tree2"
rm -rf "$t2"
mkdir -p "$t2/lib"
cp "$t/sub/random-3M" "$t2/lib/shared-3M"
cp "$t/sub/deeper/1M-plus-1" "$t2/lib/shared-1M-plus-1"
head -c 2097152 /dev/urandom >"$t2/own-2M"
run_logged "$work/image2-build.log" "$work/shoal" image build "$t2" "$data/img2" --quiet
(cd "$t2" && find . -type f -print0 | xargs -0 sha256sum) >"$data/img2.sums"
(cd "$t" && find . -type f ! -name big-12M -print0 | xargs -0 sha256sum) >"$data/rest.sums"
(cd "$t" && sha256sum big-12M) >"$data/big.sums"
run_logged "$work/mkfs-ext4.log" mkfs.ext4 -q -F "$data/cache.ext4" 96M

log "packing the initramfs"
root="$work/root"
initramfs_init "$root"
initramfs_add "$root" "$work/shoal" /bin/shoal
initramfs_add "$root" "$data" /data
initramfs_hook "$root" "$KERNEL_SCRIPTS_DIR/vm-daemon.sh" 50-daemon.sh
initramfs_pack "$root" "$work/initrd.gz"

VM_MEM=${VM_MEM:-1024} vm_run "$kernel" "$work/initrd.gz" "$work/vm.log" "${VM_TIMEOUT:-600}"
grep '^SHOAL-VM:' "$work/vm.log"
