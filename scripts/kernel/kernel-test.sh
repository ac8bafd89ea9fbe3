#!/usr/bin/env bash
# kernel-test.sh: runs demand/cachefiles' kernel test in a VM with a real Linux 6.12.
#
# Builds the kernel if it is not cached (build-kernel.sh), a static test binary of the package,
# two EROFS images with mkfs.erofs (a: several files; b: one large file for the failover test), an
# ext4 image for the cache dir, and an initramfs with busybox; boots it under qemu and checks the
# `SHOAL-VM:` lines. Every step logs to a file in $WORKDIR (default: a new temp dir); on failure
# the tail of that log is printed. Set SHOAL_KERNEL_NOBUILD=1 to fail instead of building.
#
# Reuse: source lib.sh and call initramfs_init/initramfs_add/initramfs_hook/initramfs_pack/vm_run
# with your own binaries and hooks (EXTRA_FILES="src:dest ..." and EXTRA_HOOKS="script ..." add
# to this test's VM as well).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
vm_test_setup kernel-test

log "building the static test binary"
(cd "$repo" && run_logged "$work/go-build.log" env CGO_ENABLED=0 GOFLAGS= go test -c -o "$work/cachefiles.test" ./demand/cachefiles)

log "making EROFS images"
data="$work/data"
rm -rf "$data" "$work/tree-a" "$work/tree-b"
mkdir -p "$data" "$work/tree-a/sub/deeper" "$work/tree-b"
ta="$work/tree-a"
echo "hello from shoal" >"$ta/hello.txt"
: >"$ta/empty"
head -c 5000 /dev/urandom >"$ta/odd-5000"
head -c 3145728 /dev/urandom >"$ta/sub/random-3M"
cp "$ta/sub/random-3M" "$ta/sub/deeper/same-as-random-3M"
head -c 1048577 /dev/urandom >"$ta/sub/deeper/1M-plus-1"
seq 1 200000 >"$ta/sub/numbers"
head -c 16777216 /dev/urandom >"$work/tree-b/big-16M"
head -c 8388608 /dev/urandom >"$work/tree-b/upgrade-8M"
head -c 4194304 /dev/urandom >"$work/tree-b/signalled-4M"
for img in a b; do
	run_logged "$work/mkfs-$img.log" mkfs.erofs --chunksize=1048576 --blobdev="$data/$img.blob.img" \
		-Eforce-chunk-indexes "$data/$img.boot.img" "$work/tree-$img"
	(cd "$work/tree-$img" && find . -type f -print0 | xargs -0 sha256sum) >"$data/$img.sums"
done
run_logged "$work/mkfs-ext4.log" mkfs.ext4 -q -F "$data/cache.ext4" 48M

log "packing the initramfs"
root="$work/root"
initramfs_init "$root"
initramfs_add "$root" "$work/cachefiles.test" /bin/cachefiles.test
initramfs_add "$root" "$data" /data
for f in ${EXTRA_FILES:-}; do initramfs_add "$root" "${f%%:*}" "${f#*:}"; done
initramfs_hook "$root" "$KERNEL_SCRIPTS_DIR/vm-cachefiles.sh" 50-cachefiles.sh
for h in ${EXTRA_HOOKS:-}; do initramfs_hook "$root" "$h"; done
initramfs_pack "$root" "$work/initrd.gz"

vm_run "$kernel" "$work/initrd.gz" "$work/vm.log" "${VM_TIMEOUT:-600}"
grep '^SHOAL-VM:' "$work/vm.log"
