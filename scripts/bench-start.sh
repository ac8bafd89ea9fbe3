#!/usr/bin/env bash
# Container start time (BENCHMARKS.md "Container start time"): from the start of the pull to the
# entrypoint's first output, for a 513 MiB image whose entrypoint reads 32 MiB of it, on three
# hosts of this machine (each a real containerd 1.6 + runc + shoal daemon + snapshotter):
# containerd's default full pull + unpack (overlayfs) against Shoal (host 1 from the origin,
# hosts 2 and 3 from peers), side by side. Needs root, containerd, runc, mkfs.erofs and
# busybox-static (make deps); e2e's TestStartBench skips, saying why, where they are missing.
# SHOAL_BENCH_START_HOSTS=N changes the number of hosts (at least 2).
set -euo pipefail
cd "$(dirname "$0")/.."
SHOAL_BENCH_START=1 go test -count=1 -run '^TestStartBench$' -v -timeout 40m ./e2e/ 2>&1 |
	grep -v -e '^=== RUN' -e '^PASS$' -e '^ok ' || { echo "bench-start: TestStartBench failed" >&2; exit 1; }
