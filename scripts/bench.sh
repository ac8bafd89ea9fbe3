#!/usr/bin/env bash
# make bench: every benchmark whose figures BENCHMARKS.md records, in one run on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
for s in scripts/bench-*.sh; do
	[ -x "$s" ] || continue
	echo "== $s"
	"$s"
done
echo "== p2p: origin offload, latency, throughput (go run ./p2p/internal/p2pbench)"
go run ./p2p/internal/p2pbench
echo "== origin: embedded server --rate accuracy over 10 s (BenchmarkServerRate)"
go test -run '^$' -bench BenchmarkServerRate -benchtime 1x ./origin/
