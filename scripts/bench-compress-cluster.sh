#!/usr/bin/env bash
# Origin bytes for a cluster to make a tree local, compressed Shoal image against the ordinary
# image layer (issue 14's benchmark): the same tree as a tar layer with `gzip -1` and `zstd -3`
# (what `docker pull` would move per host), and as a Shoal image built with --compression zstd
# (with its default trained dictionary), zstd-nodict (--dict-size 0: the image format before
# dictionaries) and none, and with SHOAL_BEFORE=<an older shoal binary> the image that binary
# builds (before: --compression zstd, its defaults), all served by a real `shoal origin serve`
# and read by $SHOAL's daemons. HOSTS real daemons (127.0.0.1, each peered with
# the ones started before it) run `shoal prefetch --wait` of the image at the same time; the
# origin's bytes are what it counted sending (GET /shoal/stats: manifests, chunk manifests,
# bootstrap and chunk ranges). One host alone is the first row.
#
#   scripts/bench-compress-cluster.sh                    # /usr/local/go (~270 MiB), 1 and 8 hosts
#   TREE=/usr/local/go/src HOSTS=4 LEVELS= scripts/bench-compress-cluster.sh
#   IMAGES=zstd LEVELS= SHOAL_VS=/tmp/shoal-main scripts/bench-compress-cluster.sh
#
# IMAGES: which of the images to run (default "zstd zstd-nodict none"; zstdN: level N with the
# dictionary, at every host count, unlike LEVELS). SHOAL_VS: a second shoal
# binary (an earlier build): every row then runs again right after with its daemons and origin
# (the images are built by SHOAL; an older binary must be able to read them: use zstd-nodict).
#
# Needs no root: nothing is mounted.
set -euo pipefail
cd "$(dirname "$0")/.."
SHOAL=${SHOAL:-$PWD/bin/shoal}
TREE=${TREE:-/usr/local/go}
HOSTS=${HOSTS:-8}
LEVELS=${LEVELS-3 9} # zstd levels besides the default (1), one host each
SHOAL_VS=${SHOAL_VS:-}
if [ ! -d "$TREE" ]; then echo "bench-compress-cluster: no tree at $TREE; skipped"; exit 0; fi
for t in jq zstd gzip; do
	command -v $t >/dev/null || { echo "bench-compress-cluster: needs $t; skipped"; exit 0; }
done

WORK=$(mktemp -d /tmp/shoal-bench-zc.XXXXXX)
PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$WORK"
}
trap cleanup EXIT
free_port() {
	local p=$1
	while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
	echo "$p"
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

echo "shoal: $SHOAL; tree $TREE ($(du -sh "$TREE" | cut -f1)); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
tar -C "$TREE" -cf "$WORK/layer.tar" .
gz=$(gzip -1 -c "$WORK/layer.tar" | wc -c)
zs=$(zstd -3 -q -c "$WORK/layer.tar" | wc -c)
tarb=$(stat -c %s "$WORK/layer.tar")
rm "$WORK/layer.tar"
echo "ordinary layer: tar $(mib "$tarb") MiB, gzip -1 $(mib "$gz") MiB, zstd -3 $(mib "$zs") MiB"
IMAGES=${IMAGES-zstd zstd-nodict none}
if [ -n "${SHOAL_BEFORE:-}" ]; then IMAGES="before $IMAGES"; fi
for comp in $IMAGES; do
	bin=$SHOAL
	case $comp in
	zstd-nodict) args=(--compression zstd --dict-size 0) ;;
	zstd[0-9]*) args=(--compression zstd --compression-level "${comp#zstd}") ;; # e.g. zstd9: level 9, with the dictionary
	before) bin=$SHOAL_BEFORE args=(--compression zstd) ;;
	*) args=(--compression "$comp") ;;
	esac
	"$bin" image build --quiet "$TREE" "$WORK/img-$comp" "${args[@]}" | grep -E 'took|dictionary' | sed "s/^ */build $comp: /"
done
for level in $LEVELS; do
	"$SHOAL" image build --quiet "$TREE" "$WORK/img-zstd$level" --compression zstd --compression-level "$level" >/dev/null
	"$SHOAL" image build --quiet "$TREE" "$WORK/img-zstd${level}-nodict" --compression zstd --compression-level "$level" --dict-size 0 >/dev/null
done
# What the origin serves besides chunk frames, per image, from its OCI manifest: the plain chunk
# manifests (with the dictionary, if any) and bootstrap, and their compressed forms, of which a
# new daemon fetches only the latter; chunks-MiB is the stored chunk bytes (every chunk once).
meta() {
	local d=$WORK/img-$1 man stored
	man=$(jq -r '.manifests[0].digest | ltrimstr("sha256:")' "$d/index.json")
	stored=$("$SHOAL" image inspect --json "$d" | jq '[.blobs[].chunks[] | (.storedLength // .length)] | add')
	jq -r --arg s "$stored" --arg n "$1" '
		def mib(t): ([.layers[] | select(.mediaType | endswith(t)) | .size] | add // 0) / 1048576;
		"\($n)\tchunks \($s | tonumber / 1048576 * 100 | round / 100) MiB; chunk manifests \(mib("chunks+json") * 100 | round / 100) MiB (compressed \(mib("chunks+json+zstd") * 100 | round / 100));" +
		" bootstrap \(mib("erofs.bootstrap") * 100 | round / 100) MiB (compressed \(mib("erofs.bootstrap+zstd") * 100 | round / 100))"' "$d/blobs/sha256/$man"
}
for comp in $IMAGES; do meta "$comp"; done

# run COMP N: N hosts prefetch the COMP image together; prints origin bytes summed over hosts.
run() { # comp n [bin label]
	local comp=$1 n=$2 SHOAL=${3:-$SHOAL} peers=() pids=()
	ORIGIN=127.0.0.1:$(free_port 5377)
	"$SHOAL" origin serve "$WORK/img-$comp" --listen "$ORIGIN" --stats-interval 0 >"$WORK/origin.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 1 100); do curl -sf "$ORIGIN/v2/" >/dev/null && break; sleep 0.1; done
	for i in $(seq 1 "$n"); do
		rm -rf "$WORK/h$i"
		local args=(daemon --data "$WORK/h$i" --api "$WORK/h$i.sock" --listen /ip4/127.0.0.1/tcp/0
			--insecure-registry "$ORIGIN" --prefetch=false --dht=false --log-level warn)
		for p in "${peers[@]}"; do args+=(--peer "$p"); done
		"$SHOAL" "${args[@]}" >"$WORK/h$i.log" 2>&1 &
		PIDS+=($!)
		local ok=
		for _ in $(seq 1 150); do "$SHOAL" peers --self --api "$WORK/h$i.sock" >/dev/null 2>&1 && { ok=1; break; }; sleep 0.1; done
		[ -n "$ok" ] || { echo "daemon h$i did not start:"; cat "$WORK/h$i.log"; exit 1; }
		peers+=("$("$SHOAL" peers --self --api "$WORK/h$i.sock" | head -1)")
	done
	sleep 1 # connections settle, so owners agree
	local t0 t1
	t0=$(date +%s.%N)
	for i in $(seq 1 "$n"); do
		"$SHOAL" prefetch "$ORIGIN/img-$comp:latest" --wait --api "$WORK/h$i.sock" >/dev/null 2>"$WORK/prefetch$i.err" &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || { cat "$WORK"/prefetch*.err; exit 1; }; done
	t1=$(date +%s.%N)
	# Counted where it leaves: the origin's own counter (a host's wireBytes.origin leaves out what
	# it fetched from the origin on a peer's behalf as the chunk's rendezvous owner).
	local origin data
	origin=$(curl -sf "$ORIGIN/shoal/stats" | jq '.bytesServed')
	data=$("$SHOAL" stats --json --api "$WORK/h$n.sock" | jq '.bytes.peers + .bytes.origin + .bytes.dedup')
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	PIDS=()
	# per-host ordinary pull for the same hosts: n x gzip, n x zstd
	awk -v comp="$comp${4:-}" -v n="$n" -v o="$origin" -v d="$data" -v gz="$gz" -v zs="$zs" -v t0="$t0" -v t1="$t1" 'BEGIN {
		printf "%-18s %5d %9.1f %9.1f %10.3f %10.3f %12.1f %12.1f %7.1f\n", comp, n, d / 1048576, o / 1048576, o / zs, o / (n * gz), n * gz / 1048576, n * zs / 1048576, t1 - t0 }'
}

printf '%-18s %5s %9s %9s %10s %10s %12s %12s %7s\n' image hosts data-MiB origin-MiB origin/zstd3 origin/pulls gzip-pulls zstd-pulls secs
for n in $(printf '%s\n' 1 "$HOSTS" | sort -un); do
	for comp in $IMAGES; do
		run "$comp" "$n"
		if [ -n "$SHOAL_VS" ]; then run "$comp" "$n" "$SHOAL_VS" " (vs)"; fi
	done
done
for level in $LEVELS; do run "zstd$level" 1; run "zstd${level}-nodict" 1; done
echo "origin/zstd3: origin bytes ÷ one zstd -3 layer; origin/pulls: ÷ what HOSTS ordinary gzip -1 pulls would move"
