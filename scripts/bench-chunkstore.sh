#!/bin/sh
# Chunk store benchmarks: write/read throughput against plain pwrite/pread on the same disk, index
# operations per second, and the index scale measurement over SCALE chunk entries (default
# 10000000: minutes; SCALE=0 skips it).
# SHOAL_BENCH_DIR picks the disk (default: the Go temp dir).
set -eu
cd "$(dirname "$0")/.."
go test -run '^$' -bench . -benchtime "${BENCHTIME:-64x}" ./chunkstore/
SCALE="${SCALE:-10000000}"
if [ "$SCALE" != 0 ]; then
  SHOAL_CHUNKSTORE_SCALE="$SCALE" go test -run '^TestScaleIndex$' -v -timeout 60m ./chunkstore/
fi
