#!/bin/busybox sh
# /init of Shoal's test VMs (scripts/kernel/lib.sh builds it). Runs the hooks, then powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
echo "SHOAL-VM: BOOTED $(uname -r)"
rc=0
for hook in /etc/shoal/hooks/*; do
	[ -f "$hook" ] || continue
	echo "SHOAL-VM: BEGIN $(basename "$hook")"
	( . "$hook" )
	r=$?
	echo "SHOAL-VM: END $(basename "$hook") rc=$r"
	[ $r -eq 0 ] || rc=$r
done
echo "SHOAL-VM: DONE rc=$rc"
sync
reboot -f
