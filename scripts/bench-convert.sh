#!/bin/sh
# shoal image convert: throughput on an image of 600 MiB of file data (4 gzip layers) against
# decompressing and untarring the same layers (GNU tar; Go gzip + archive/tar), and how much of a
# second image on the same base a host already holds. SIZE=<bytes> changes the image size;
# SHOAL_BENCH_DIR picks the disk (default: the Go temp dir).
set -eu
cd "$(dirname "$0")/.."
go run ./convert/internal/convertbench -size "${SIZE:-629145600}"
