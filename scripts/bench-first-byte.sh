#!/usr/bin/env bash
# First bytes through real daemons and a FUSE mount (issue 17): the latency of a cold 4 KiB
# random read of an image whose chunks (default 1 MiB) another host holds. Per run: an origin
# serves an image of 4 random files; daemon h1 makes it local (`shoal prefetch --wait`); daemon
# h2, with h1 as its one peer and no prefetch, mounts it in FUSE mode; readlat
# (demand/internal/readlat) reads 4 KiB at a random block of READS distinct chunks of each file,
# in random order, timing each pread and checking its bytes against the source file. Old and new
# binaries run in turn on fresh daemons, A B A B ..., ROUNDS times, on the same image.
#
#   scripts/bench-first-byte.sh                       # new = this tree, old = the fork point from main
#   SHOAL_OLD=/tmp/shoal-old ROUNDS=5 scripts/bench-first-byte.sh
#   OLD_REF=32d59ba SIZE_MB=256 READS=60 scripts/bench-first-byte.sh
#   GAP=0 scripts/bench-first-byte.sh      # back to back: a read may share the CPU with the last one's tail
#
# Needs root (FUSE and EROFS mounts). The holder has just made the image local; since
# chunkstore's DirectWrites (2026-12-04) its chunks are on disk, not in its page cache, unless its
# filesystem refuses O_DIRECT, so each first read also costs the holder a disk read. The reader's
# side is cold (a fresh daemon, a fresh mount).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "bench-first-byte: needs root (mounts); skipped"; exit 0; fi
SIZE_MB=${SIZE_MB:-128}
READS=${READS:-30}
ROUNDS=${ROUNDS:-3}
CHUNK=${CHUNK:-1048576}
GAP=${GAP:-50ms} # pause between reads; with 0 a read may also wait for the previous chunk's tail work
W=$(mktemp -d /tmp/shoal-bench-firstbyte.XXXXXX)
PIDS=()
MOUNTS=()
cleanup() {
	set +e
	for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	for m in "${MOUNTS[@]}"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
	rm -rf "$W"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

NEW=$W/shoal-new
go build -o "$NEW" ./cmd/shoal
go build -o "$W/readlat" ./demand/internal/readlat
OLD=${SHOAL_OLD:-}
if [ -z "$OLD" ]; then
	ref=${OLD_REF:-$(git merge-base HEAD main)}
	mkdir -p "$W/old-src"
	git archive "$ref" | tar -x -C "$W/old-src"
	(cd "$W/old-src" && go build -o "$W/shoal-old" ./cmd/shoal)
	OLD=$W/shoal-old
	echo "old: $ref ($(git log -1 --format=%s "$ref" | cut -c1-60))"
fi
echo "new: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"

mkdir -p "$W/tree"
for i in 1 2 3 4; do head -c $((SIZE_MB / 4))M /dev/urandom >"$W/tree/f$i"; done
"$NEW" image build --quiet --chunk-size "$CHUNK" "$W/tree" "$W/img" >/dev/null
OP=$(port)
"$NEW" origin serve "img=$W/img" --listen "127.0.0.1:$OP" >"$W/origin.log" 2>&1 &
PIDS+=($!)
REF="127.0.0.1:$OP/img:latest"
for _ in $(seq 100); do curl -sf "127.0.0.1:$OP/v2/" >/dev/null && break; sleep 0.1; done

wait_api() { for _ in $(seq 200); do "$1" status --api "$2" >/dev/null 2>&1 && return; sleep 0.1; done; echo "daemon on $2 did not start" >&2; exit 1; }
daemon() { # binary name [flags...]
	local s=$1 n=$2
	shift 2
	"$s" daemon --data "$W/data-$n" --api "$W/$n.sock" --listen /ip4/127.0.0.1/tcp/0 --dht=false \
		--prefetch=false --insecure-registry "127.0.0.1:$OP" --log-level warn "$@" >"$W/$n.log" 2>&1 &
	PIDS+=($!)
	LAST=$!
	wait_api "$s" "$W/$n.sock"
}

one() { # binary label round
	local s=$1 label=$2 r=$3
	rm -rf "$W/data-h1" "$W/data-h2"
	daemon "$s" h1
	local p1=$LAST
	"$s" prefetch "$REF" --wait --api "$W/h1.sock" >/dev/null 2>&1
	local addr
	addr=$("$s" status --api "$W/h1.sock" | awk '/^addr/ {print $2; exit}')
	local ap
	ap=$(port)
	daemon "$s" h2 --peer "$addr" --admin "127.0.0.1:$ap"
	local p2=$LAST
	local mp=$W/mnt
	mkdir -p "$mp"
	"$s" mount "$REF" "$mp" --mode fuse --api "$W/h2.sock" >/dev/null
	MOUNTS+=("$mp")
	sleep 1 # h1's presence map reaches h2
	for f in 1 2 3 4; do
		"$W/readlat" -file "$mp/f$f" -ref "$W/tree/f$f" -chunk "$CHUNK" -n "$READS" -gap "$GAP" -seed $((r * 10 + f)) -out "$W/lat-$label" | sed "s/^/$label round $r f$f: /"
	done | tee -a "$W/results"
	local origin early
	origin=$("$s" stats --json --api "$W/h2.sock" 2>/dev/null | jq '.bytes.origin' 2>/dev/null || echo '?')
	early=$(curl -s "127.0.0.1:$ap/metrics" | awk '/^shoal_demand_early_reads_total/ {printf "%s ", $0}')
	echo "$label round $r: h2 chunk bytes from the origin: $origin; ${early:-no early reads (old binary)}"
	"$s" umount "$mp" --api "$W/h2.sock" >/dev/null 2>&1 || umount "$mp"
	kill "$p1" "$p2"
	wait "$p1" "$p2" 2>/dev/null || true
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); image: 4 files of $((SIZE_MB / 4)) MiB, chunks of $CHUNK bytes; $READS reads per file, $GAP apart"
for r in $(seq 1 "$ROUNDS"); do
	one "$OLD" old "$r"
	one "$NEW" new "$r"
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
# Over every read of each binary, all rounds together.
for label in old new; do
	sort -n "$W/lat-$label" | awk -v l="$label" '{ v[NR] = $1; s += $1 } END {
		printf "%s: %d reads  p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms  mean %.2f ms\n", l, NR, v[int(NR*0.5)+1], v[int(NR*0.9)+1], v[int(NR*0.99)+1], v[NR], s/NR }'
done
