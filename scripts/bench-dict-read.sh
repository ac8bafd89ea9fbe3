#!/usr/bin/env bash
# Cold 4 KiB reads from the origin, with and without a zstd dictionary (issue 14): does decoding
# with the image's dictionary slow a demand read? The Go distribution's tree is built twice
# (--dict-size 0, and the default dictionary), both served by one `shoal origin serve`. Per round
# and image: a fresh daemon (no peers, no prefetch) mounts the image in FUSE mode and readlat
# (demand/internal/readlat) reads 4 KiB at a random block of each of FILES source files of 8-200
# KiB (one chunk each, so every read is the file's first and cold: fetched from the origin,
# decoded, verified), checking the bytes against the tree. The images alternate, nodict dict
# nodict dict ..., ROUNDS times; the same files and offsets for both.
#
#   scripts/bench-dict-read.sh
#   ROUNDS=5 FILES=300 scripts/bench-dict-read.sh
#
# Needs root (FUSE mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "bench-dict-read: needs root (mounts); skipped"; exit 0; fi
TREE=${TREE:-/usr/local/go}
if [ ! -d "$TREE/src" ]; then echo "bench-dict-read: no tree at $TREE; skipped"; exit 0; fi
ROUNDS=${ROUNDS:-3}
FILES=${FILES:-200}
W=$(mktemp -d /tmp/shoal-bench-dictread.XXXXXX)
PIDS=()
MOUNTS=()
cleanup() {
	set +e
	for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$W"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

S=$W/shoal
go build -o "$S" ./cmd/shoal
go build -o "$W/readlat" ./demand/internal/readlat
"$S" image build --quiet "$TREE" "$W/nodict" --dict-size 0 >/dev/null
"$S" image build --quiet "$TREE" "$W/dict" >/dev/null
(cd "$TREE" && find src -type f -size +8k -size -200k | sort | awk -v n="$FILES" '{ f[NR] = $0 } END { s = NR / n; for (i = 1; i <= n; i++) print f[int((i - 1) * s) + 1] }') >"$W/files"
OP=$(port)
"$S" origin serve "nodict=$W/nodict" "dict=$W/dict" --listen "127.0.0.1:$OP" --stats-interval 0 >"$W/origin.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "127.0.0.1:$OP/v2/" >/dev/null && break; sleep 0.1; done

one() { # image round
	local img=$1 r=$2
	rm -rf "$W/data"
	"$S" daemon --data "$W/data" --api "$W/d.sock" --listen /ip4/127.0.0.1/tcp/0 --dht=false \
		--prefetch=false --insecure-registry "127.0.0.1:$OP" --log-level warn >"$W/d.log" 2>&1 &
	local p=$!
	PIDS+=($p)
	for _ in $(seq 200); do "$S" status --api "$W/d.sock" >/dev/null 2>&1 && break; sleep 0.1; done
	local mp=$W/mnt
	mkdir -p "$mp"
	"$S" mount "127.0.0.1:$OP/$img:latest" "$mp" --mode fuse --api "$W/d.sock" >/dev/null
	MOUNTS+=("$mp")
	local i=0
	while read -r f; do
		i=$((i + 1))
		"$W/readlat" -file "$mp/$f" -ref "$TREE/$f" -chunk 4096 -n 1 -seed $((r * 100000 + i)) -out "$W/lat-$img" >/dev/null
	done <"$W/files"
	"$S" umount "$mp" --api "$W/d.sock" >/dev/null 2>&1 || umount "$mp"
	kill "$p"
	wait "$p" 2>/dev/null || true
	echo "round $r $img: $(tail -n "$FILES" "$W/lat-$img" | sort -n | awk '{ v[NR] = $1 } END { printf "p50 %.2f ms  p90 %.2f ms", v[int(NR*0.5)+1], v[int(NR*0.9)+1] }')"
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); tree $TREE; $FILES files of 8-200 KiB, one cold 4 KiB read each"
for r in $(seq 1 "$ROUNDS"); do
	one nodict "$r"
	one dict "$r"
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
for img in nodict dict; do
	sort -n "$W/lat-$img" | awk -v l="$img" '{ v[NR] = $1; s += $1 } END {
		printf "%-6s: %d reads  p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  mean %.2f ms\n", l, NR, v[int(NR*0.5)+1], v[int(NR*0.9)+1], v[int(NR*0.99)+1], s/NR }'
done
