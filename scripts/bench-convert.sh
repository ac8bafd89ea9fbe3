#!/bin/sh
# shoal image convert: throughput on an image of 600 MiB of file data (4 gzip layers) against
# decompressing and untarring the same layers (GNU tar; Go gzip + archive/tar), shoal image build
# of the extracted tree by both engines, and how much of a second image on the same base a host
# already holds. Runs on the disk (SHOAL_BENCH_DIR, default the Go temp dir) and, where there is
# one, on /dev/shm (no disk: the CPU cost alone). SIZE=<bytes> changes the image size.
set -eu
cd "$(dirname "$0")/.."
size="${SIZE:-629145600}"
echo "-- on ${SHOAL_BENCH_DIR:-the temp dir}"
go run ./convert/internal/convertbench -size "$size"
if [ -d /dev/shm ] && [ -z "${SHOAL_BENCH_DIR:-}" ]; then
	echo "-- on /dev/shm"
	SHOAL_BENCH_DIR=/dev/shm go run ./convert/internal/convertbench -size "$size"
fi
