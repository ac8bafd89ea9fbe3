#!/bin/sh
# Pull rights (issue 19, docs/privacy.md): what the check costs a host reading an image from a
# peer's cache, a private image beside a public one of the same size (32 MiB, 256 KiB chunks)
# in one run: first-chunk-ms (registering the blob to its first chunk, including the token's
# presentation and the holder's one registry check for the private image) and MB/s (the rest
# of the image, 8 workers, after the grant). Real libp2p hosts on 127.0.0.1 and the real
# distribution registry with token auth, in one process. BENCHTIME (default 10x) iterations.
set -eu
cd "$(dirname "$0")/.."
go test -run '^$' -bench BenchmarkPullRights -benchtime "${BENCHTIME:-10x}" ./p2p/ 2>&1 | grep -v 'level='
