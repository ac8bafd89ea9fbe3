#!/usr/bin/env bash
# Daemon memory after an image becomes local, through real daemons: an origin (shoal origin
# serve) holds a SIZE_MB MiB image (random data, 1 MiB chunks); daemon A makes it local with
# `shoal prefetch --wait` from the origin, then daemon B, with A as its one peer, does the same
# (from A and the origin, as its resolver picks). Prints each daemon's anonymous memory (RssAnon of /proc/PID/status) when
# the prefetch returns and SETTLE seconds later (steady state), and the idle figure before.
# HEAPPROF=DIR also saves both daemons' heap profiles (go tool pprof -top DIR/heap-A.prof).
# SHOAL=path measures that binary instead of one built from this tree; SEEDS=N (below) has A seed
# N more hosts at once.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-256}
SETTLE=${SETTLE:-6}
W=$(mktemp -d "${SHOAL_BENCH_DIR:-/var/tmp}/bench-memory.XXXXXX")
S="$W/shoal"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$W"
}
trap cleanup EXIT
anon() { awk '/^RssAnon/ {printf "%.1f MiB", $2 / 1024}' "/proc/$1/status"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_api() { for _ in $(seq 100); do "$S" status --api "$1" >/dev/null 2>&1 && return; sleep 0.1; done; echo "daemon on $1 did not start" >&2; exit 1; }

if [ -n "${SHOAL:-}" ]; then cp "$SHOAL" "$S"; else go build -o "$S" ./cmd/shoal; fi
mkdir -p "$W/tree"
for i in 1 2 3 4; do head -c $((SIZE_MB / 4))M /dev/urandom >"$W/tree/f$i"; done
"$S" image build --quiet "$W/tree" "$W/img" >/dev/null
OP=$(port)
"$S" origin serve "img=$W/img" --listen "127.0.0.1:$OP" >"$W/origin.log" 2>&1 &
PIDS+=($!)
REF="127.0.0.1:$OP/img:latest"
daemon() { # name [flags...]
	local n=$1; shift
	local admin=()
	if [ -n "${HEAPPROF:-}" ]; then admin=(--admin "127.0.0.1:$(port)"); fi
	"$S" daemon --data "$W/data-$n" --api "$W/$n.sock" --listen /ip4/127.0.0.1/tcp/0 --dht=false \
		--insecure-registry "127.0.0.1:$OP" --log-level warn "${admin[@]}" "$@" >"$W/$n.log" 2>&1 &
	PIDS+=($!)
	eval "PID_$n=$!"
	eval "ADMIN_$n=${admin[1]:-}"
	wait_api "$W/$n.sock"
}
daemon A
echo "A idle: $(anon "$PID_A")"
"$S" prefetch "$REF" --wait --api "$W/A.sock" 2>/dev/null | tail -1
echo "A, the image local from the origin: $(anon "$PID_A")"
ADDR=$("$S" status --api "$W/A.sock" | awk '/^addr/ {print $2; exit}')
daemon B --peer "$ADDR"
sleep 1
"$S" prefetch "$REF" --wait --api "$W/B.sock" 2>/dev/null | tail -1
echo "B, the image local from A: $(anon "$PID_B"); A after serving it: $(anon "$PID_A")"
sleep "$SETTLE"
echo "steady state, $SETTLE s later: A $(anon "$PID_A"), B $(anon "$PID_B")"
if [ -n "${HEAPPROF:-}" ]; then
	mkdir -p "$HEAPPROF"
	curl -s "http://$ADMIN_A/debug/pprof/heap" >"$HEAPPROF/heap-A.prof"
	curl -s "http://$ADMIN_B/debug/pprof/heap" >"$HEAPPROF/heap-B.prof"
	echo "heap profiles in $HEAPPROF"
fi
# SEEDS=N: then N more daemons, each with A as its one peer, prefetch the image at the same time
# (A seeds them all), and A's memory is printed when they are done and SETTLE s later.
if [ "${SEEDS:-0}" -gt 0 ]; then
	pids=()
	for i in $(seq 1 "$SEEDS"); do daemon "C$i" --peer "$ADDR"; done
	sleep 1
	for i in $(seq 1 "$SEEDS"); do "$S" prefetch "$REF" --wait --api "$W/C$i.sock" >/dev/null 2>&1 & pids+=($!); done
	for p in "${pids[@]}"; do wait "$p"; done
	echo "A after seeding $SEEDS more hosts at once: $(anon "$PID_A"); C1 $(anon "$PID_C1")"
	sleep "$SETTLE"
	echo "steady state, $SETTLE s later: A $(anon "$PID_A"), C1 $(anon "$PID_C1")"
fi
