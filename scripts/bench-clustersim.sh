#!/usr/bin/env bash
# Cluster simulator (issue 16, benchmark 2): real p2p Nodes in one process over go-libp2p's mock
# network (p2p/clustersim_test.go): 100, 300 and 1000 hosts, each connected to about 16 others,
# hosts' NICs capped each way, a rate-limited origin model. For each size, owners among
# connected peers (before membership) and among members (hashicorp/memberlist): cold start,
# seeded start, and cold start with 10% of hosts leaving mid-transfer. Prints one Markdown
# table (BENCHMARKS.md, "Cluster simulator").
#
# Environment: SHOAL_CLUSTERSIM_HOSTS (default "100,300,1000"), SHOAL_CLUSTERSIM_OWNERS
# (default "connected,members"), SHOAL_CLUSTERSIM_DEGREE (links each host opens, default 8),
# SHOAL_CLUSTERSIM_CHUNKS (32), SHOAL_CLUSTERSIM_CHUNK_KIB (8), SHOAL_CLUSTERSIM_HOST_KIBS (NIC
# rate each way, 16), SHOAL_CLUSTERSIM_ORIGIN_LINKS (origin egress in NICs, 4),
# SHOAL_CLUSTERSIM_PROGRESS (non-empty: print membership's progress to stderr while it
# converges). With membership each size prints how long memberlist took to converge and the
# origin fetches by cause (shoal_p2p_origin_fetches_total). The 1000-host run takes about
# 4 GiB of heap and tens of minutes on 2 shared cores (BENCHMARKS.md used
# SHOAL_CLUSTERSIM_CHUNKS=16 for it).
set -euo pipefail
cd "$(dirname "$0")/.."
exec go test -run '^$' -bench '^BenchmarkClusterSim$' -benchtime 1x -timeout 180m ./p2p/
