#!/usr/bin/env bash
# One peer stream through two real daemons against the least work a verified transfer does, in
# one run (issue 17): an image of one SIZE_MB MiB file of random bytes (1 MiB chunks, stored raw);
# daemon h1 makes it local from `shoal origin serve` (`shoal prefetch --wait`), then, each round,
# a fresh daemon h2 with h1 as its only peer runs `shoal prefetch --wait` (timed: MiB/s of chunk
# data, made local and durable), and right after it internal/tcpsha sends the same file over a
# loopback TCP connection whose receiver sha256-hashes every 1 MiB piece (no disk). Prints both
# rates, their ratio, each daemon's CPU per MiB during the peer transfer, and what h2 took from
# the origin (should be 0).
#
#   scripts/bench-peer-stream.sh
#   ROUNDS=5 SIZE_MB=128 PROFILE=/tmp/prof scripts/bench-peer-stream.sh   # + CPU/alloc profiles
#   SHOAL_OLD=/tmp/shoal-main scripts/bench-peer-stream.sh                # A/B: rounds alternate
#
# SHOAL=path uses that binary (default: built from this tree); SHOAL_OLD=path adds a second
# binary, with its own h1, and each round runs both, old first. PROFILE=DIR saves CPU profiles
# of both daemons during each transfer, their allocation profiles and metrics after it
# (go tool pprof -top DIR/shoal-new DIR/cpu-new-h2-1.prof). The daemons' data directories are
# removed at the end, not between rounds: deleting 256 MiB on a filesystem mounted with
# `discard` slows the next round's fdatasyncs. Needs no root: nothing is mounted.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-256}
ROUNDS=${ROUNDS:-3}
if ! command -v jq >/dev/null; then echo "bench-peer-stream: needs jq; skipped"; exit 0; fi
W=$(mktemp -d "${SHOAL_BENCH_DIR:-/var/tmp}/bench-peer-stream.XXXXXX")
PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$W"
}
trap cleanup EXIT
if [ -z "${SHOAL:-}" ]; then SHOAL=$W/shoal; go build -o "$SHOAL" ./cmd/shoal; fi
declare -A BIN=([new]=$SHOAL)
NAMES=(new)
if [ -n "${SHOAL_OLD:-}" ]; then BIN[old]=$SHOAL_OLD; NAMES=(old new); fi
go build -o "$W/tcpsha" ./internal/tcpsha
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
minflt() { awk '{print $10}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start_daemon() { # binary dir admin-port [peer]
	local bin=$1 d=$2 admin=$3 peer=${4:-}
	local args=(daemon --data "$d" --api "$d.sock" --listen /ip4/127.0.0.1/tcp/0 --admin "127.0.0.1:$admin"
		--insecure-registry "$ORIGIN" --prefetch=false --dht=false --log-level warn ${DAEMON_FLAGS:-})
	[ -n "$peer" ] && args+=(--peer "$peer")
	"$bin" "${args[@]}" >"$d.log" 2>&1 &
	PIDS+=($!)
	LAST_PID=$!
	for _ in $(seq 1 100); do "$bin" peers --self --api "$d.sock" >/dev/null 2>&1 && return; sleep 0.1; done
	echo "daemon $d did not start:"; cat "$d.log"; exit 1
}

mkdir -p "$W/tree"
head -c "${SIZE_MB}M" /dev/urandom >"$W/tree/f"
"$SHOAL" image build --quiet "$W/tree" "$W/img" --compression none >/dev/null
ORIGIN=127.0.0.1:$(port)
"$SHOAL" origin serve "img=$W/img" --listen "$ORIGIN" --stats-interval 0 >"$W/origin.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "$ORIGIN/v2/" >/dev/null && break; sleep 0.1; done
REF=$ORIGIN/img:latest
declare -A H1PID H1ADDR H1ADMIN
for n in "${NAMES[@]}"; do
	H1ADMIN[$n]=$(port)
	start_daemon "${BIN[$n]}" "$W/h1-$n" "${H1ADMIN[$n]}"
	H1PID[$n]=$LAST_PID
	"${BIN[$n]}" prefetch "$REF" --wait --api "$W/h1-$n.sock" >/dev/null 2>&1
	H1ADDR[$n]=$("${BIN[$n]}" peers --self --api "$W/h1-$n.sock" | head -1)
done
echo "image $SIZE_MB MiB (1 MiB chunks, raw); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
for n in "${NAMES[@]}"; do echo "$n: ${BIN[$n]}"; done
printf '%5s %4s %11s %13s %6s %10s %10s %9s %9s %10s %s\n' round bin shoal-MiB/s tcp+sha-MiB/s ratio h1-ms/MiB h2-ms/MiB h1-flt/MiB h2-flt/MiB origin-MiB load
for round in $(seq 1 "$ROUNDS"); do
	for n in "${NAMES[@]}"; do
		bin=${BIN[$n]}
		d=$W/h2-$n-$round
		A2=$(port)
		start_daemon "$bin" "$d" "$A2" "${H1ADDR[$n]}"
		P2PID=$LAST_PID
		for _ in $(seq 1 100); do [ "$("$bin" peers --api "$d.sock" 2>/dev/null | grep -c .)" -gt 0 ] && break; sleep 0.1; done
		if [ -n "${PROFILE:-}" ]; then
			mkdir -p "$PROFILE"
			cp "$bin" "$PROFILE/shoal-$n"
			secs=$((SIZE_MB / 50 + 1))
			curl -s "http://127.0.0.1:${H1ADMIN[$n]}/debug/pprof/profile?seconds=$secs" >"$PROFILE/cpu-$n-h1-$round.prof" &
			c1=$!
			curl -s "http://127.0.0.1:$A2/debug/pprof/profile?seconds=$secs" >"$PROFILE/cpu-$n-h2-$round.prof" &
			c2=$!
		fi
		p1=${H1PID[$n]}
		c10=$(cpu_ticks "$p1") c20=$(cpu_ticks "$P2PID") f10=$(minflt "$p1") f20=$(minflt "$P2PID")
		t0=$(date +%s.%N)
		"$bin" prefetch "$REF" --wait --api "$d.sock" >/dev/null 2>"$W/prefetch.err" || { cat "$W/prefetch.err"; exit 1; }
		t1=$(date +%s.%N)
		c11=$(cpu_ticks "$p1") c21=$(cpu_ticks "$P2PID") f11=$(minflt "$p1") f21=$(minflt "$P2PID")
		tcp=$("$W/tcpsha" -file "$W/tree/f")
		if [ -n "${PROFILE:-}" ]; then
			wait "$c1" "$c2"
			curl -s "http://127.0.0.1:${H1ADMIN[$n]}/debug/pprof/allocs" >"$PROFILE/allocs-$n-h1-$round.prof"
			curl -s "http://127.0.0.1:$A2/debug/pprof/allocs" >"$PROFILE/allocs-$n-h2-$round.prof"
			curl -s "http://127.0.0.1:${H1ADMIN[$n]}/metrics" >"$PROFILE/metrics-$n-h1-$round.txt"
			curl -s "http://127.0.0.1:$A2/metrics" >"$PROFILE/metrics-$n-h2-$round.txt"
		fi
		s2=$("$bin" stats --json --api "$d.sock")
		data=$(jq '.bytes.peers + .bytes.origin' <<<"$s2")
		orig=$(jq '.bytes.origin' <<<"$s2")
		awk -v r="$round" -v n="$n" -v d="$data" -v o="$orig" -v t0="$t0" -v t1="$t1" -v tcp="$tcp" -v c1=$((c11 - c10)) -v c2=$((c21 - c20)) -v f1=$((f11 - f10)) -v f2=$((f21 - f20)) \
			-v hz="$TICK" -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
			mib = d / 1048576; rate = mib / (t1 - t0)
			printf "%5d %4s %11.1f %13.1f %6.2f %10.2f %10.2f %9.0f %9.0f %10.1f %s\n", r, n, rate, tcp, rate / tcp, 1000 * c1 / hz / mib, 1000 * c2 / hz / mib, f1 / mib, f2 / mib, o / 1048576, load }'
		kill "$P2PID"
		wait "$P2PID" 2>/dev/null || true
	done
done
