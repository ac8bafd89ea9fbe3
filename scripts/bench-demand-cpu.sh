#!/usr/bin/env bash
# The demand path's CPU cost, through real daemons and a real mount: an origin serves an image,
# host 1 mounts it and reads every file cold (every chunk from the origin), then host 2 does the
# same with host 1 as its peer (every chunk from the peer). For each host it prints the daemon's
# CPU time (user+sys, from /proc/PID/stat) per MiB of image data it made local, and the wall time.
#
#   scripts/bench-demand-cpu.sh                    # bin/shoal, FUSE and fanotify modes where available
#   SHOAL=/tmp/shoal-old MODES=fuse scripts/bench-demand-cpu.sh
#   SHOAL_VS=/tmp/shoal-old ROUNDS=3 scripts/bench-demand-cpu.sh   # two binaries in turn, A B A B ...
#
# Needs root (mounts). The tree is the Go toolchain's sources on this machine (about 150 MiB),
# or TREE=DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
SHOAL=${SHOAL:-$PWD/bin/shoal}
MODES=${MODES:-fuse fanotify}
TREE=${TREE:-/usr/local/go/src}
if [ "$(id -u)" != 0 ]; then echo "bench-demand-cpu: needs root (mounts); skipped"; exit 0; fi
if [ -n "${SHOAL_VS:-}" ]; then
	# Side by side: the two binaries in turn, each round on a fresh setup; then medians.
	out=$(mktemp)
	for r in $(seq 1 "${ROUNDS:-3}"); do
		for b in "$SHOAL" "$SHOAL_VS"; do
			SHOAL_VS= SHOAL=$b "$0" | grep -E '^(fuse|fanotify) ' | sed "s|^|$(basename "$b") |" | tee -a "$out"
		done
	done
	echo "medians (ms of daemon CPU per MiB):"
	sed -E 's/^([^ ]+) +([^ ]+) +([^ ]+) .*= *([0-9.]+) ms\/MiB.*/\1 \2 \3 \4/' "$out" | sort -k1,3 -k4,4n |
		awk '{k=$1" "$2" "$3; n[k]++; v[k,n[k]]=$4} END {for (k in n) printf "  %-36s %6.1f (of %d runs)\n", k, v[k,int((n[k]+1)/2)], n[k]}' | sort
	rm -f "$out"
	exit 0
fi
if [ ! -d "$TREE" ]; then echo "bench-demand-cpu: no tree at $TREE; skipped"; exit 0; fi

WORK=$(mktemp -d /tmp/shoal-bench-cpu.XXXXXX)
PIDS=()
MOUNTS=()
cleanup() {
	set +e
	for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	for m in "${MOUNTS[@]}"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
	rm -rf "$WORK"
}
trap cleanup EXIT

# cpu_ticks PID: utime+stime in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

"$SHOAL" image build "$TREE" "$WORK/img" --quiet
DATA=$("$SHOAL" image inspect "$WORK/img" --json | sed -n 's/.*"dataBytes": \([0-9]*\).*/\1/p' | head -1)
free_port() {
	local p=$1
	while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
	echo "$p"
}
ORIGIN=127.0.0.1:$(free_port 5177)
"$SHOAL" origin serve "$WORK/img" --listen "$ORIGIN" --stats-interval 0 >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "$ORIGIN/v2/" >/dev/null && break; sleep 0.1; done
REF=$ORIGIN/img:latest

start_daemon() { # name [peer]
	local n=$1 peer=${2:-}
	local args=(daemon --data "$WORK/$n" --api "$WORK/$n.sock" --listen /ip4/127.0.0.1/tcp/0
		--insecure-registry "$ORIGIN" --prefetch=false --dht=false --log-level warn)
	[ -n "$peer" ] && args+=(--peer "$peer")
	"$SHOAL" "${args[@]}" >"$WORK/$n.log" 2>&1 &
	PIDS+=($!)
	LAST_PID=$!
	for _ in $(seq 1 100); do "$SHOAL" peers --self --api "$WORK/$n.sock" >/dev/null 2>&1 && return; sleep 0.1; done
	echo "daemon $n did not start:"; cat "$WORK/$n.log"; exit 1
}

# read_host name pid mode: mount, read every file, report CPU per MiB.
read_host() {
	local n=$1 pid=$2 mode=$3 mp=$WORK/mnt-$1
	mkdir -p "$mp"
	"$SHOAL" mount "$REF" "$mp" --mode "$mode" --api "$WORK/$n.sock" >/dev/null
	MOUNTS+=("$mp")
	sync
	echo 3 >/proc/sys/vm/drop_caches
	local t0 c0 t1 c1
	c0=$(cpu_ticks "$pid")
	t0=$(date +%s.%N)
	(cd "$mp" && find . -type f -print0 | xargs -0 -P 4 -n 64 cat >/dev/null)
	t1=$(date +%s.%N)
	c1=$(cpu_ticks "$pid")
	"$SHOAL" umount "$mp" --api "$WORK/$n.sock"
	awk -v c=$((c1 - c0)) -v hz="$TICK" -v b="$DATA" -v t0="$t0" -v t1="$t1" -v n="$n" -v m="$mode" 'BEGIN {
		printf "%-8s %-8s %7.1f MiB  daemon CPU %6.2f s = %6.2f ms/MiB  wall %5.2f s\n", m, n, b/1048576, c/hz, 1000*c/hz/(b/1048576), t1-t0 }'
}

echo "shoal: $SHOAL ($("$SHOAL" version 2>/dev/null | head -1))"
for mode in $MODES; do
	rm -rf "$WORK/h1" "$WORK/h2"
	start_daemon h1
	p1=$LAST_PID
	P1=$("$SHOAL" peers --self --api "$WORK/h1.sock" | head -1)
	mkdir -p "$WORK/probe-$mode"
	if ! "$SHOAL" mount "$REF" "$WORK/probe-$mode" --mode "$mode" --api "$WORK/h1.sock" >/dev/null 2>"$WORK/probe.err"; then
		echo "$mode: not available here ($(tr -d '\n' <"$WORK/probe.err")); skipped"
		kill "$p1"; wait "$p1" 2>/dev/null || true
		continue
	fi
	"$SHOAL" umount "$WORK/probe-$mode" --api "$WORK/h1.sock"
	start_daemon h2 "$P1"
	p2=$LAST_PID
	read_host h1 "$p1" "$mode" # from the origin
	read_host h2 "$p2" "$mode" # from host 1
	kill "$p1" "$p2"
	wait "$p1" "$p2" 2>/dev/null || true
done
