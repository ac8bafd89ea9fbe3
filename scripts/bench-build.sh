#!/usr/bin/env bash
# shoal image build against mkfs.erofs with the same flags (--chunksize, --blobdev,
# -Eforce-chunk-indexes; mkfs.erofs 1.5 cannot compress), side by side in one run, alternating
# (A B A B ...), on two trees: a copy of the Go distribution (real files: 15 000 of them, 222 MiB,
# most compressible) and 4 files of random data plus the Go tree's src/ (what zstd cannot shrink).
# Each shoal build is timed with the CLI's default compression (zstd) and with --compression
# none. Uses farm-bench where it is installed (paired ratios), else a plain alternating loop.
# SHOAL_BENCH_DIR picks the disk (default /var/tmp); RUNS the runs per command (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mkfs.erofs >/dev/null; then echo "bench-build: no mkfs.erofs (erofs-utils); skipped"; exit 0; fi
RUNS=${RUNS:-5}
W=$(mktemp -d "${SHOAL_BENCH_DIR:-/var/tmp}/bench-build.XXXXXX")
trap 'rm -rf "$W"' EXIT
go build -o "$W/shoal" ./cmd/shoal
cp -a "$(go env GOROOT)" "$W/go"
mkdir -p "$W/rand/big"
for i in 1 2 3 4; do head -c 56M /dev/urandom >"$W/rand/big/f$i"; done
cp -a "$W/go/src" "$W/rand/src"

# pair A B: median wall seconds of each and of A/B.
pair() {
	local a=$1 b=$2
	if command -v farm-bench >/dev/null; then
		farm-bench -n "$RUNS" --timeout 1200 --vs "$b" -- sh -c "$a" | grep -E '^(A|B) (cpu|wall)|^A/B (cpu|wall)|^farm-bench'
		return
	fi
	local i ta tb
	for i in $(seq "$RUNS"); do
		ta=$(date +%s%N); sh -c "$a" >/dev/null 2>&1; tb=$(date +%s%N)
		echo "A $(( (tb - ta) / 1000000 )) ms"
		ta=$(date +%s%N); $b >/dev/null 2>&1; tb=$(date +%s%N)
		echo "B $(( (tb - ta) / 1000000 )) ms"
	done
}

for tree in go rand; do
	src="$W/$tree"
	echo "-- tree $tree: $(du -s --apparent-size -m "$src" | cut -f1) MiB, $(find "$src" -type f | wc -l) files"
	mkfs="sh -c 'rm -f $W/m.boot $W/m.blob; exec mkfs.erofs --quiet --chunksize=1048576 --blobdev=$W/m.blob -Eforce-chunk-indexes $W/m.boot $src'"
	for comp in zstd none; do
		echo "A = shoal image build --compression $comp $src OUT; B = mkfs.erofs --chunksize=1048576 --blobdev=BLOB -Eforce-chunk-indexes BOOT $src"
		pair "rm -rf $W/o; exec $W/shoal image build --quiet --compression $comp $src $W/o" "$mkfs"
		rm -rf "$W/o"
		"$W/shoal" image build --quiet --compression "$comp" "$src" "$W/o" | grep -E 'blobs'
		rm -rf "$W/o"
	done
done
