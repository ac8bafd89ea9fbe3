#!/usr/bin/env bash
# Compressed chunks on the origin and the LAN, through real daemons: the same tree built as an
# image with --compression zstd and with --compression none; host 1 makes it local from the
# origin (`shoal prefetch --wait`), then host 2 from host 1. For each it prints the bytes the
# origin sent, the bytes on the LAN between the hosts (wire) against the data, the peer transfer
# rate, and each daemon's CPU per MiB during the peer transfer. The zstd image is also sent with
# the sender's --wire-compression 0 (chunks raw on the LAN, as before ChunkProtocolV3).
#
#   scripts/bench-peer-compress.sh                 # the Go toolchain tree (/usr/local/go, ~270 MiB)
#   TREE=/usr/local/go/src ROUNDS=3 scripts/bench-peer-compress.sh
#
# Needs no root: nothing is mounted.
set -euo pipefail
cd "$(dirname "$0")/.."
SHOAL=${SHOAL:-$PWD/bin/shoal}
TREE=${TREE:-/usr/local/go}
ROUNDS=${ROUNDS:-1}
if [ ! -d "$TREE" ]; then echo "bench-peer-compress: no tree at $TREE; skipped"; exit 0; fi
if ! command -v jq >/dev/null; then echo "bench-peer-compress: needs jq; skipped"; exit 0; fi

WORK=$(mktemp -d /tmp/shoal-bench-pz.XXXXXX)
PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$WORK"
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
free_port() {
	local p=$1
	while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
	echo "$p"
}
start_daemon() { # name wire-level [peer]
	local n=$1 wire=$2 peer=${3:-}
	local args=(daemon --data "$WORK/$n" --api "$WORK/$n.sock" --listen /ip4/127.0.0.1/tcp/0
		--insecure-registry "$ORIGIN" --prefetch=false --dht=false --log-level warn --wire-compression "$wire")
	[ -n "$peer" ] && args+=(--peer "$peer")
	"$SHOAL" "${args[@]}" >"$WORK/$n.log" 2>&1 &
	PIDS+=($!)
	LAST_PID=$!
	for _ in $(seq 1 100); do "$SHOAL" peers --self --api "$WORK/$n.sock" >/dev/null 2>&1 && return; sleep 0.1; done
	echo "daemon $n did not start:"; cat "$WORK/$n.log"; exit 1
}
stop_daemons() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	PIDS=()
}

echo "shoal: $SHOAL; tree $TREE ($(du -sh "$TREE" | cut -f1)); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for comp in zstd none; do
	"$SHOAL" image build "$TREE" "$WORK/img-$comp" --compression "$comp" >/dev/null
done
# image: --compression; wire: the daemons' --wire-compression; data, origin (what host 1 took from
# the origin), lan (what host 2 took from host 1) in MiB; rate: host 2's prefetch in MiB/s of
# data; send/recv: CPU of host 1 / host 2 per MiB of data during it.
printf '%-5s %-4s %9s %9s %9s %8s %8s %11s %11s\n' image wire data origin lan lan/data rate send-ms/MiB recv-ms/MiB
for round in $(seq 1 "$ROUNDS"); do
	for run in "zstd 1" "zstd 0" "none 1"; do
		set -- $run
		comp=$1 wire=$2
		rm -rf "$WORK/h1" "$WORK/h2"
		ORIGIN=127.0.0.1:$(free_port 5277)
		"$SHOAL" origin serve "$WORK/img-$comp" --listen "$ORIGIN" --stats-interval 0 >"$WORK/origin.log" 2>&1 &
		PIDS+=($!)
		for _ in $(seq 1 100); do curl -sf "$ORIGIN/v2/" >/dev/null && break; sleep 0.1; done
		REF=$ORIGIN/img-$comp:latest
		start_daemon h1 "$wire"
		p1=$LAST_PID
		P1=$("$SHOAL" peers --self --api "$WORK/h1.sock" | head -1)
		start_daemon h2 "$wire" "$P1"
		p2=$LAST_PID
		"$SHOAL" prefetch "$REF" --wait --api "$WORK/h1.sock" >/dev/null 2>"$WORK/prefetch.err" || { cat "$WORK/prefetch.err"; exit 1; }
		s1=$(mktemp -p "$WORK")
		"$SHOAL" stats --json --api "$WORK/h1.sock" >"$s1"
		c10=$(cpu_ticks "$p1") c20=$(cpu_ticks "$p2")
		t0=$(date +%s.%N)
		"$SHOAL" prefetch "$REF" --wait --api "$WORK/h2.sock" >/dev/null 2>"$WORK/prefetch.err" || { cat "$WORK/prefetch.err"; exit 1; }
		t1=$(date +%s.%N)
		c11=$(cpu_ticks "$p1") c21=$(cpu_ticks "$p2")
		s2=$(mktemp -p "$WORK")
		"$SHOAL" stats --json --api "$WORK/h2.sock" >"$s2"
		data=$(jq '.bytes.peers + .bytes.origin' "$s2")
		origin=$(jq '.wireBytes.origin' "$s1")
		h2origin=$(jq '.wireBytes.origin' "$s2")
		lan=$(jq '.wireBytes.peers' "$s2")
		awk -v comp="$comp" -v wire="$wire" -v d="$data" -v o="$origin" -v o2="$h2origin" -v l="$lan" -v t0="$t0" -v t1="$t1" \
			-v c1=$((c11 - c10)) -v c2=$((c21 - c20)) -v hz="$TICK" 'BEGIN {
			mib = d / 1048576
			printf "%-5s %-4s %9.1f %9.1f %9.1f %8.3f %8.1f %11.2f %11.2f", comp, wire, mib, o / 1048576, l / 1048576, l / d, mib / (t1 - t0), 1000 * c1 / hz / mib, 1000 * c2 / hz / mib
			if (o2 > 0) printf "   (host 2 also took %.1f MiB from the origin)", o2 / 1048576
			printf "\n" }'
		stop_daemons
	done
done
