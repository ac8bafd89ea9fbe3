#!/usr/bin/env bash
# Registry-mirror benchmark (issue 20): N real `shoal daemon --mirror-listen`s on 127.0.0.1 pull
# one ordinary (unconverted) OCI image of MIB MiB at the same moment, against the same N pullers
# going straight to the registry, in one run. The registry is `shoal origin serve --rate`, a
# read-only OCI distribution server whose egress to all clients together is capped at RATE:
# the registry, not the CPU, is meant to be the bottleneck of a direct pull.
#
# The puller on each node does what containerd does with hosts.toml pointing the registry at
# the node's mirror: GET the manifest by tag (with containerd's ?ns=), then the config and
# layers, three at a time, each piped through sha256sum and checked against its digest
# (containerd checks digests too). It is curl, not containerd: the containerd path is what
# e2e's TestMirrorContainerdThreeNodes and TestMirrorConcurrentFirstPull run; here it would add
# N containerds unpacking N × MIB on a 2-core machine, the same in both scenarios.
#
# Reported: wall time until every node has the whole image (direct, then mirror), the
# lower bound N × image / RATE (direct) and image / RATE (mirror, one upstream copy), and
# upstream bytes / image size from the registry's own counter.
#
# Environment: SHOAL_MIRROR_NODES (default 8), SHOAL_MIRROR_MIB (default 500),
# SHOAL_MIRROR_RATE (registry egress cap, default 50M bytes/s), SHOAL_MIRROR_LAYERS (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${SHOAL_MIRROR_NODES:-8}
MIB=${SHOAL_MIRROR_MIB:-500}
RATE=${SHOAL_MIRROR_RATE:-50M}
LAYERS=${SHOAL_MIRROR_LAYERS:-5}
for b in jq curl sha256sum tar; do
	command -v "$b" >/dev/null || { echo "bench-mirror: skipped (needs $b)"; exit 0; }
done

WORK=$(mktemp -d /tmp/shoal-bench-mirror.XXXXXX)
SHOAL=$WORK/shoal
PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

go build -o "$SHOAL" ./cmd/shoal

# The image: an ordinary OCI layout, LAYERS uncompressed tar layers of random bytes.
L=$WORK/img
mkdir -p "$L/blobs/sha256" "$WORK/tree"
echo '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"
put() { # file: moves it into the layout, prints its digest
	local h
	h=$(sha256sum "$1" | cut -d' ' -f1)
	mv "$1" "$L/blobs/sha256/$h"
	echo "sha256:$h"
}
layers=() diffs=()
per=$((MIB / LAYERS))
for i in $(seq 1 "$LAYERS"); do
	head -c $((per << 20)) /dev/urandom >"$WORK/tree/layer$i.bin"
	tar -cf "$WORK/l$i.tar" -C "$WORK/tree" "layer$i.bin"
	rm "$WORK/tree/layer$i.bin"
	size=$(stat -c %s "$WORK/l$i.tar")
	d=$(put "$WORK/l$i.tar")
	diffs+=("\"$d\"")
	layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$d\",\"size\":$size}")
done
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$(IFS=,; echo "${diffs[*]}")" >"$WORK/config.json"
csize=$(stat -c %s "$WORK/config.json")
cd_=$(put "$WORK/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[%s]}' \
	"$cd_" "$csize" "$(IFS=,; echo "${layers[*]}")" >"$WORK/manifest.json"
msize=$(stat -c %s "$WORK/manifest.json")
md=$(put "$WORK/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' "$md" "$msize" >"$L/index.json"
IMG_BYTES=$(du -cb "$L"/blobs/sha256/* | tail -1 | cut -f1)

REG_PORT=$(free_port)
REG=127.0.0.1:$REG_PORT
"$SHOAL" origin serve "img=$L" --listen "$REG" --rate "$RATE" --stats-interval 0 >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.1; done
reg_bytes() { curl -s "http://$REG/shoal/stats" | jq '.bytesServed'; }
RATE_BPS=$(python3 -c "
s='$RATE'.upper(); m={'K':1<<10,'M':1<<20,'G':1<<30}
print(int(float(s[:-1])*m[s[-1]]) if s[-1] in m else int(s))")

# pull BASE QUERY: one node's pull of img:latest; fails on any digest mismatch.
pull() {
	local base=$1 q=$2 m
	m=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json' "$base/v2/img/manifests/latest$q")
	jq -r '.config.digest, .layers[].digest' <<<"$m" | xargs -P 3 -I{} sh -c '
		got=$(curl -sf "$1/v2/img/blobs/$2$3" | sha256sum | cut -d" " -f1)
		[ "sha256:$got" = "$2" ] || { echo "blob $2: got sha256:$got" >&2; exit 255; }' _ "$base" {} "$q"
}
# pull_all: every node's puller at once (bases in MIRRORS or the registry); prints seconds.
pull_all() { # query base...
	local q=$1 t0 t1 pids=() fail=0
	shift
	t0=$(date +%s.%N)
	for b in "$@"; do pull "$b" "$q" & pids+=($!); done
	for p in "${pids[@]}"; do wait "$p" || fail=1; done
	t1=$(date +%s.%N)
	[ "$fail" = 0 ] || { echo "a pull failed"; exit 1; }
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }'
}

echo "image: $LAYERS layers, $IMG_BYTES bytes; registry egress cap $RATE ($RATE_BPS B/s); $N nodes on 127.0.0.1"

# Direct: N pullers against the registry.
bases=()
for _ in $(seq 1 "$N"); do bases+=("http://$REG"); done
b0=$(reg_bytes)
tdirect=$(pull_all "" "${bases[@]}")
b1=$(reg_bytes)
ddirect=$((b1 - b0))

# Mirror: N fresh daemons, a full mesh, each puller against its node's mirror.
peers=() mirrors=() DPIDS=()
for i in $(seq 1 "$N"); do
	mp=$(free_port)
	args=(daemon --data "$WORK/d$i" --api "$WORK/d$i.sock" --listen "/ip4/127.0.0.1/tcp/$(free_port)" --dht=false --mdns=false
		--insecure-registry "$REG" --prefetch=false --log-level warn --mirror-listen "127.0.0.1:$mp" --mirror-max 0)
	for p in "${peers[@]}"; do args+=(--peer "$p"); done
	"$SHOAL" "${args[@]}" >"$WORK/d$i.log" 2>&1 &
	PIDS+=($!)
	DPIDS+=($!)
	ok=
	for _ in $(seq 1 200); do
		if "$SHOAL" peers --self --api "$WORK/d$i.sock" >/dev/null 2>&1; then ok=1; break; fi
		sleep 0.1
	done
	[ -n "$ok" ] || { echo "daemon $i did not start:"; cat "$WORK/d$i.log"; exit 1; }
	peers+=("$("$SHOAL" peers --self --api "$WORK/d$i.sock" | head -1)")
	mirrors+=("http://127.0.0.1:$mp")
done
for _ in $(seq 1 100); do
	all=1
	for i in $(seq 1 "$N"); do
		c=$("$SHOAL" stats --json --api "$WORK/d$i.sock" | jq '[.peers[] | select(.connected)] | length')
		[ "$c" -ge $((N - 1)) ] || all=
	done
	[ -n "$all" ] && break
	sleep 0.2
done
[ -n "$all" ] || echo "warning: not every node sees all $((N - 1)) others"
# cpu_of pids...: user + system seconds so far.
cpu_of() {
	local t=0
	for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
	awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }'
}
c0=$(cpu_of "${DPIDS[@]}")
b0=$(reg_bytes)
tmirror=$(pull_all "?ns=$REG" "${mirrors[@]}")
b1=$(reg_bytes)
dmirror=$((b1 - b0))
cpu=$(awk -v a="$c0" -v b="$(cpu_of "${DPIDS[@]}")" 'BEGIN { printf "%.1f", b - a }')
up=0 peer=0 through=0
for i in $(seq 1 "$N"); do
	s=$("$SHOAL" stats --json --api "$WORK/d$i.sock")
	up=$((up + $(jq '.mirror.upstreamBytes' <<<"$s")))
	peer=$((peer + $(jq '.mirror.peerBytes' <<<"$s")))
	through=$((through + $(jq '.mirror.throughBytes' <<<"$s")))
done

awk -v n="$N" -v img="$IMG_BYTES" -v rate="$RATE_BPS" -v td="$tdirect" -v tm="$tmirror" -v dd="$ddirect" -v dm="$dmirror" \
	-v up="$up" -v peer="$peer" -v th="$through" -v cpu="$cpu" 'BEGIN {
	printf "%-8s %10s %14s %16s %18s\n", "pull", "time (s)", "bound (s)", "upstream bytes", "upstream / image"
	printf "%-8s %10.1f %14.1f %16.0f %18.2f\n", "direct", td, n * img / rate, dd, dd / img
	printf "%-8s %10.1f %14.1f %16.0f %18.2f\n", "mirror", tm, img / rate, dm, dm / img
	printf "mirror: %.2fx the time of direct; nodes fetched %.0f bytes from the registry, %.0f from peers (%.0f through blob owners); daemons used %.1f s of CPU\n", tm / td, up, peer, th, cpu
}'
