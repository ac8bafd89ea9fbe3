# In-VM hook (sourced by /init): mounts the ext4 cache image and runs the cachefiles kernel test.
# Expects /data (images and sums from kernel-test.sh) and /bin/cachefiles.test in the initramfs.
set -e
mkdir -p /cache
mount -o loop -t ext4 /data/cache.ext4 /cache
export SHOAL_IN_VM=1 SHOAL_VM_DATA=/data SHOAL_VM_CACHE=/cache
/bin/cachefiles.test -test.run '^TestKernelInVM$' -test.v -test.timeout 300s
