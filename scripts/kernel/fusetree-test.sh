#!/usr/bin/env bash
# fusetree-test.sh: "fusetree needs only FUSE", proven on a kernel without EROFS. Boots the
# fuse-only variant of the test kernel (SHOAL_KERNEL_VARIANT=fuse-only: config.fragment without
# EROFS, fscache, cachefiles and netfs) under qemu with the real static `shoal` binary; in the VM
# (vm-fusetree.sh) the daemon is started, `shoal mount --mode auto` must pick fusetree and say
# why the other modes were passed over, and every file must read back byte-identical (sha256)
# with its modes, a symlink and a hard link intact. Prints the SHOAL-VM: lines; demand/fusetree's
# TestNoEROFSKernelVM parses them. WORKDIR keeps everything; SHOAL_KERNEL_NOBUILD=1 never builds
# (the build takes 6-17 minutes on 2 cores, so only `make kernel-test-fusetree` builds it).
set -euo pipefail
export SHOAL_KERNEL_VARIANT=fuse-only
. "$(dirname "$0")/lib.sh"
vm_test_setup fusetree-vm
grep -q '^# CONFIG_EROFS_FS is not set' "$(dirname "$kernel")/config" || die "$kernel has EROFS: not the fuse-only variant"

log "building a static shoal"
(cd "$repo" && run_logged "$work/go-build.log" env CGO_ENABLED=0 GOFLAGS= go build -o "$work/shoal" ./cmd/shoal)

log "building the image with shoal image build"
data="$work/data"
t="$work/tree"
rm -rf "$data" "$t"
mkdir -p "$data" "$t/sub/deeper" "$t/bin"
echo "hello from shoal on a kernel without EROFS" >"$t/hello.txt"
: >"$t/empty"
head -c 5000 /dev/urandom >"$t/odd-5000"
head -c 3145728 /dev/urandom >"$t/sub/random-3M"
head -c 1048577 /dev/urandom >"$t/sub/deeper/1M-plus-1"
head -c 9437184 /dev/urandom >"$t/big-9M"
seq 1 200000 >"$t/sub/numbers"
printf '#!/bin/sh\necho ran-from-the-image\n' >"$t/bin/tool"
chmod 0755 "$t/bin/tool"
chmod 0640 "$t/odd-5000"
ln -s sub/numbers "$t/link-to-numbers"
ln "$t/sub/random-3M" "$t/hard-3M"
run_logged "$work/image-build.log" "$work/shoal" image build "$t" "$data/img" --quiet
(cd "$t" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$data/sums"
run_logged "$work/mkfs-ext4.log" mkfs.ext4 -q -F "$data/cache.ext4" 64M

log "packing the initramfs"
root="$work/root"
initramfs_init "$root"
initramfs_add "$root" "$work/shoal" /bin/shoal
initramfs_add "$root" "$data" /data
initramfs_hook "$root" "$KERNEL_SCRIPTS_DIR/vm-fusetree.sh" 50-fusetree.sh
initramfs_pack "$root" "$work/initrd.gz"

VM_MEM=${VM_MEM:-768} vm_run "$kernel" "$work/initrd.gz" "$work/vm.log" "${VM_TIMEOUT:-300}"
grep '^SHOAL-VM:' "$work/vm.log"
