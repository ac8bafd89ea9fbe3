# In-VM hook (sourced by /init) of fusetree-test.sh: on a kernel without EROFS, the daemon's
# auto mode must fall back to fusetree, say why, and serve the image byte-identical.
pass() { echo "SHOAL-VM: PASS $*"; }
fail() { echo "SHOAL-VM: FAIL $*"; }

if grep -qw erofs /proc/filesystems; then
	fail "no-erofs: this kernel has EROFS ($(grep -w erofs /proc/filesystems))"
elif ! grep -qw fuse /proc/filesystems; then
	fail "no-erofs: this kernel has no FUSE either"
else
	pass "no-erofs: kernel $(uname -r) has fuse and no erofs, no /dev/cachefiles: $(ls /dev/cachefiles 2>&1 | head -1)"
fi

ip link set lo up
mkdir -p /var /mnt/a
mount -o loop -t ext4 /data/cache.ext4 /var
shoal daemon --data /var/d --api /run/d.sock --listen /ip4/127.0.0.1/tcp/7001 --prefetch=false --dht=false >/tmp/d.log 2>&1 &
dpid=$!
i=0
while [ $i -lt 300 ] && ! shoal status --api /run/d.sock >/dev/null 2>&1; do sleep 0.2; i=$((i + 1)); done
if shoal status --api /run/d.sock >/dev/null 2>&1; then pass "daemon: up"; else fail "daemon: no API"; tail -20 /tmp/d.log; fi

if out=$(shoal mount /data/img /mnt/a --mode auto --api /run/d.sock 2>&1); then
	case "$out" in
	*fusetree*fscache:*) pass "auto-picks-fusetree: $out" ;;
	*) fail "auto-picks-fusetree: mounted, but not in fusetree mode or without saying why: $out" ;;
	esac
else
	fail "auto-picks-fusetree: $out"
	tail -30 /tmp/d.log
fi
if grep -q " /mnt/a fuse.shoaltree " /proc/mounts; then
	pass "mount-type: $(grep ' /mnt/a ' /proc/mounts)"
else
	fail "mount-type: $(grep ' /mnt/a ' /proc/mounts || echo 'no mount at /mnt/a')"
fi

if (cd /mnt/a && find . -type f | sort | xargs sha256sum) >/tmp/got.sums 2>/tmp/sums.err && cmp -s /tmp/got.sums /data/sums; then
	pass "bytes: $(wc -l </tmp/got.sums) files byte-identical"
else
	fail "bytes: $(cat /tmp/sums.err; diff /data/sums /tmp/got.sums | head -10)"
fi
m=$(stat -c '%a %h' /mnt/a/odd-5000 /mnt/a/bin/tool /mnt/a/hard-3M | tr '\n' ' ')
l=$(readlink /mnt/a/link-to-numbers)
i1=$(stat -c %i /mnt/a/hard-3M) i2=$(stat -c %i /mnt/a/sub/random-3M)
if [ "$m" = "640 1 755 1 644 2 " ] && [ "$l" = sub/numbers ] && [ "$i1" = "$i2" ]; then
	pass "metadata: modes and link counts '$m', symlink -> $l, hard link inode $i1"
else
	fail "metadata: modes/links '$m' (want '640 1 755 1 644 2 '), symlink '$l', inodes $i1 $i2"
fi
# The mount is MS_NOSUID|MS_NODEV like the EROFS modes' mounts, not noexec: a program in the
# image runs.
if out=$(/mnt/a/bin/tool 2>&1) && [ "$out" = ran-from-the-image ]; then
	pass "exec: a script from the image ran"
else
	fail "exec: /mnt/a/bin/tool: $out"
fi
if out=$(shoal images --api /run/d.sock 2>&1) && echo "$out" | grep -q fusetree; then
	pass "images-shows-mode: $(echo "$out" | tr '\n' ' ' | cut -c1-200)"
else
	fail "images-shows-mode: $out"
fi
if shoal umount /mnt/a --api /run/d.sock >/tmp/umount.out 2>&1 && ! grep -q ' /mnt/a ' /proc/mounts; then
	pass "umount: clean"
else
	fail "umount: $(cat /tmp/umount.out)"
fi
kill -INT $dpid
wait $dpid
umount /var
