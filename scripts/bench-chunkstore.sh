#!/bin/sh
# Chunk store benchmarks: write/read throughput against plain pwrite/pread on the same disk, index
# operations per second. SCALE=<chunks> also runs the index scale measurement (10000000: minutes).
# SHOAL_BENCH_DIR picks the disk (default: the Go temp dir).
set -eu
cd "$(dirname "$0")/.."
go test -run '^$' -bench . -benchtime "${BENCHTIME:-64x}" ./chunkstore/
if [ -n "${SCALE:-}" ]; then
  SHOAL_CHUNKSTORE_SCALE="$SCALE" go test -run '^TestScaleIndex$' -v -timeout 60m ./chunkstore/
fi
