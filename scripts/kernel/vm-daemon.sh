# In-VM hook (sourced by /init) of daemon-test.sh: origin + two peered daemons, fscache mode with
# a supervised daemon, a worker killed in the middle of a read, hits that stay in the kernel,
# chunks that reach the second host from the first. Prints SHOAL-VM: PASS|FAIL lines.
pass() { echo "SHOAL-VM: PASS $*"; }
fail() { echo "SHOAL-VM: FAIL $*"; }
wait_api() { # sock
	i=0
	while [ $i -lt 300 ]; do shoal status --api "$1" >/dev/null 2>&1 && return 0; sleep 0.2; i=$((i + 1)); done
	return 1
}
# reads counts the READ requests the fscache frontend has served (its Prometheus counter).
reads() { wget -q -O - http://127.0.0.1:9101/metrics | sed -n 's/^shoal_cachefiles_requests_total{op="READ"} //p'; }

ip link set lo up
mkdir -p /var /mnt/a /mnt/a2 /mnt/b /mnt/c
served() { wget -q -O - http://$O/shoal/stats | sed -n 's/.*"bytesServed":\([0-9]*\).*/\1/p'; }
mount -o loop -t ext4 /data/cache.ext4 /var
O=127.0.0.1:5000
# A slow origin, so that a large first read is still running when the worker is killed.
shoal origin serve /data/img /data/img2 --listen $O --rate 3M >/tmp/origin.log 2>&1 &
origin_pid=$!
shoal daemon --supervise --data /var/d1 --api /run/d1.sock --listen /ip4/127.0.0.1/tcp/7001 \
	--insecure-registry $O --prefetch=false --dht=false --admin 127.0.0.1:9101 >/tmp/d1.log 2>&1 &
sup_pid=$!
if wait_api /run/d1.sock; then pass "daemon-1: supervised daemon up"; else fail "daemon-1: no API"; tail -20 /tmp/d1.log; fi
P1=
i=0
while [ -z "$P1" ] && [ $i -lt 100 ]; do P1=$(shoal peers --self --api /run/d1.sock 2>/dev/null | head -1); [ -n "$P1" ] || sleep 0.2; i=$((i + 1)); done
shoal daemon --data /var/d2 --api /run/d2.sock --listen /ip4/127.0.0.1/tcp/7002 --peer "$P1" \
	--insecure-registry $O --prefetch=false --dht=false >/tmp/d2.log 2>&1 &
d2_pid=$!
wait_api /run/d2.sock || { fail "daemon-2: no API"; tail -20 /tmp/d2.log; }

if out=$(shoal mount $O/img:latest /mnt/a --mode fscache --api /run/d1.sock 2>&1); then
	pass "mount-fscache: $out"
else
	fail "mount-fscache: $out"; tail -30 /tmp/d1.log
fi

# Failover: the first read of the 12 MiB file goes through the slow origin; kill the worker
# (not the supervisor) with SIGKILL while it runs.
(cd /mnt/a && sha256sum big-12M >/tmp/big.got 2>/tmp/big.err; echo $? >/tmp/big.rc) &
reader=$!
sleep 2
w1=$(shoal status --json --api /run/d1.sock | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
kill -9 "$w1"
wait_api /run/d1.sock
w2=$(shoal status --json --api /run/d1.sock | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
wait $reader
if [ "$(cat /tmp/big.rc)" = 0 ] && [ "$(cat /tmp/big.got)" = "$(cat /data/big.sums)" ] && [ -n "$w2" ] && [ "$w1" != "$w2" ]; then
	pass "failover: worker $w1 killed mid-read, worker $w2 took over, big-12M sha256 matches"
else
	fail "failover: rc=$(cat /tmp/big.rc) got=$(cat /tmp/big.got) err=$(cat /tmp/big.err) workers $w1 -> $w2"; tail -40 /tmp/d1.log
fi

if (cd /mnt/a && sha256sum -c /data/rest.sums >/tmp/rest.out 2>&1); then
	pass "read-all: every file matches its source"
else
	fail "read-all: $(grep -v OK /tmp/rest.out | head -5)"
fi

# Hits stay in the kernel: unmount and mount again (no page cache left), read everything: the
# backing files answer, no READ reaches the daemon.
r1=$(reads)
shoal umount /mnt/a --api /run/d1.sock && shoal mount $O/img:latest /mnt/a --mode fscache --api /run/d1.sock >/dev/null
ok=no
(cd /mnt/a && sha256sum -c /data/rest.sums >/dev/null 2>&1 && sha256sum big-12M | cmp -s - /data/big.sums) && ok=yes
r2=$(reads)
if [ "$ok" = yes ] && [ -n "$r1" ] && [ "$r1" = "$r2" ]; then
	pass "hits-in-kernel: remounted and re-read everything; READ requests $r1 -> $r2"
else
	fail "hits-in-kernel: contents ok=$ok; READ requests $r1 -> $r2"
fi

# Several images at once in one domain: the same image mounted a second time shares the first's
# cookies (no READ at all); a second image fetches only the chunks it does not share.
r1=$(reads)
if out=$(shoal mount $O/img:latest /mnt/a2 --mode fscache --api /run/d1.sock 2>&1) &&
	(cd /mnt/a2 && sha256sum -c /data/rest.sums >/dev/null 2>&1) && [ "$(reads)" = "$r1" ]; then
	pass "same-image-twice: /mnt/a2 reads match, READ requests $r1 -> $(reads)"
else
	fail "same-image-twice: $out; READ requests $r1 -> $(reads)"
fi
o1=$(served)
# Background prefetch of the image while the kernel reads it through the same backing files.
if out=$(shoal mount $O/img2:latest /mnt/c --mode fscache --api /run/d1.sock 2>&1); then
	shoal prefetch $O/img2:latest --wait --api /run/d1.sock >/tmp/prefetch2.out 2>&1 &
	pf=$!
	(cd /mnt/c && sha256sum -c /data/img2.sums >/dev/null 2>&1)
	reads_ok=$?
	wait $pf
	pf_rc=$?
	if [ $reads_ok = 0 ] && [ $pf_rc = 0 ] && (cd /mnt/c && sha256sum -c /data/img2.sums >/dev/null 2>&1); then
		pass "prefetch-with-fscache: reads during a prefetch match; $(tail -1 /tmp/prefetch2.out)"
	else
		fail "prefetch-with-fscache: reads rc=$reads_ok prefetch rc=$pf_rc: $(tail -2 /tmp/prefetch2.out)"
	fi
fi
if [ -n "$out" ] && (cd /mnt/c && sha256sum -c /data/img2.sums >/dev/null 2>&1); then
	o2=$(served)
	dedup=$(shoal stats --json --api /run/d1.sock | sed -n '/"bytes"/,/}/s/.*"dedup": \([0-9]*\).*/\1/p' | head -1)
	# The shared 4 MiB come from the local store (dedup), so the origin serves about 2 MiB of
	# chunks plus the image's metadata: well under the image's 6 MiB of data.
	if [ "${dedup:-0}" -ge 4194304 ] && [ $((o2 - o1)) -lt 4194304 ]; then
		pass "second-image: files match; $dedup bytes from the local store, $((o2 - o1)) from the origin"
	else
		fail "second-image: dedup=$dedup origin=$((o2 - o1))"
	fi
else
	fail "second-image: $out"; tail -20 /tmp/d1.log
fi
shoal umount /mnt/a2 --api /run/d1.sock
shoal umount /mnt/c --api /run/d1.sock

# Upgrade: SIGHUP to the supervisor restarts its worker; the fscache mount stays and the new
# worker adopts it.
kill -HUP "$sup_pid"
i=0
w3=$w2
while [ $i -lt 150 ] && { [ -z "$w3" ] || [ "$w3" = "$w2" ]; }; do
	sleep 0.2
	w3=$(shoal status --json --api /run/d1.sock 2>/dev/null | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
	i=$((i + 1))
done
i=0
until shoal images --api /run/d1.sock 2>/dev/null | grep -q '/mnt/a (fscache)' || [ $i -ge 100 ]; do sleep 0.2; i=$((i + 1)); done
if [ -n "$w3" ] && [ "$w3" != "$w2" ] && grep -q ' /mnt/a erofs ' /proc/mounts && shoal images --api /run/d1.sock | grep -q '/mnt/a (fscache)' &&
	(cd /mnt/a && sha256sum -c /data/rest.sums >/dev/null 2>&1); then
	pass "upgrade: SIGHUP restarted worker $w2 as $w3; /mnt/a stayed mounted, was adopted, reads match"
else
	fail "upgrade: workers $w2 -> $w3; $(shoal images --api /run/d1.sock 2>&1 | tail -2)"; tail -20 /tmp/d1.log
fi

# The second host reconnects to the restarted first one (within a second or two); wait for it, so
# that what follows measures where chunks come from, not reconnect timing.
i=0
until shoal peers --api /run/d2.sock 2>/dev/null | grep -q ' connected ' || [ $i -ge 100 ]; do sleep 0.2; i=$((i + 1)); done
if out=$(shoal mount $O/img:latest /mnt/b --mode fuse --api /run/d2.sock 2>&1) && (cd /mnt/b && sha256sum -c /data/rest.sums >/dev/null 2>&1 && sha256sum big-12M | cmp -s - /data/big.sums); then
	st=$(shoal stats --json --api /run/d2.sock)
	peers=$(echo "$st" | sed -n '/"bytes"/,/}/s/.*"peers": \([0-9]*\).*/\1/p' | head -1)
	origin=$(echo "$st" | sed -n '/"bytes"/,/}/s/.*"origin": \([0-9]*\).*/\1/p' | head -1)
	# All of it from the first host, bar a chunk a slow emulated VM might time out on.
	if [ "${peers:-0}" -gt 0 ] && [ "${origin:-1}" -le $((peers / 10)) ]; then
		pass "second-host: all files match; $peers bytes from the first host, $origin from the origin"
	else
		fail "second-host: peers=$peers origin=$origin"
		echo "$st" | head -80
		grep -i -E "warn|error" /tmp/d2.log | tail -20
	fi
else
	fail "second-host: $out"; tail -30 /tmp/d2.log
fi

shoal umount /mnt/b --api /run/d2.sock
shoal umount /mnt/a --api /run/d1.sock
if grep -q ' erofs ' /proc/mounts; then fail "umount: $(grep erofs /proc/mounts)"; else pass "umount: no EROFS mount left"; fi
kill "$d2_pid" "$sup_pid"
wait "$d2_pid" "$sup_pid"
if grep -q ' fuse' /proc/mounts; then fail "stop: $(grep fuse /proc/mounts)"; else pass "stop: daemons stopped, no FUSE mount left"; fi
kill "$origin_pid"
true
