#!/usr/bin/env bash
# make demo: one origin, three Shoal daemons on 127.0.0.1, one image read on every host.
# Shows where the bytes came from: the first host pulls the image from the origin, the other two
# mostly from their peers. Everything it starts or mounts is stopped and removed at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
SHOAL=$PWD/bin/shoal
WORK=$(mktemp -d /tmp/shoal-demo.XXXXXX)
# free_port: the first port from $1 up that nothing on 127.0.0.1 listens on.
free_port() {
	local p=$1
	while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
	echo "$p"
}
ORIGIN_PORT=${ORIGIN_PORT:-$(free_port 5077)}
PIDS=()
MOUNTS=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
	set +e
	for m in "${MOUNTS[@]}"; do "$SHOAL" umount "$m" --api "$WORK/d${m##*/m}.sock" >/dev/null 2>&1; done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	for m in "${MOUNTS[@]}"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
	rm -rf "$WORK"
}
trap cleanup EXIT

say "1. An image: a real directory tree (the Go toolchain's binaries and sources on this machine)"
mkdir -p "$WORK/tree"
cp -r /usr/local/go/pkg/tool/linux_amd64 "$WORK/tree/tools" 2>/dev/null || true
cp -r /usr/local/go/src/net "$WORK/tree/net" 2>/dev/null || true
if [ -z "$(ls -A "$WORK/tree")" ]; then # no Go tree here: make one
	for i in $(seq 1 40); do head -c $((i * 400000)) /dev/urandom >"$WORK/tree/file$i"; done
fi
"$SHOAL" image build "$WORK/tree" "$WORK/img" --quiet

say "2. The embedded origin serves it at 127.0.0.1:$ORIGIN_PORT/img:latest"
"$SHOAL" origin serve "$WORK/img" --listen "127.0.0.1:$ORIGIN_PORT" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$ORIGIN_PORT/v2/" >/dev/null && break; sleep 0.1; done

say "3. Three daemons on 127.0.0.1: host 2 peers with host 1, host 3 with both"
start_daemon() { # n [peer...]
	local n=$1
	shift
	local args=(daemon --data "$WORK/d$n" --api "$WORK/d$n.sock" --listen /ip4/127.0.0.1/tcp/0
		--insecure-registry "127.0.0.1:$ORIGIN_PORT" --prefetch=false --log-level warn)
	for p in "$@"; do args+=(--peer "$p"); done
	"$SHOAL" "${args[@]}" >"$WORK/d$n.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 1 100); do "$SHOAL" peers --self --api "$WORK/d$n.sock" >/dev/null 2>&1 && return; sleep 0.1; done
	echo "daemon $n did not start:"; cat "$WORK/d$n.log"; exit 1
}
start_daemon 1
P1=$("$SHOAL" peers --self --api "$WORK/d1.sock" | head -1)
echo "host 1: $P1"
start_daemon 2 "$P1"
P2=$("$SHOAL" peers --self --api "$WORK/d2.sock" | head -1)
echo "host 2: $P2"
start_daemon 3 "$P1" "$P2"
echo "host 3: $("$SHOAL" peers --self --api "$WORK/d3.sock" | head -1)"

REF=127.0.0.1:$ORIGIN_PORT/img:latest
read_on() { # n: mount and read every file, or (not root / no mode) prefetch the whole image
	local n=$1
	local mp=$WORK/m$n
	mkdir -p "$mp"
	if [ "$(id -u)" = 0 ] && "$SHOAL" mount "$REF" "$mp" --api "$WORK/d$n.sock" 2>"$WORK/mount$n.err"; then
		MOUNTS+=("$mp")
		local sum
		sum=$(cd "$mp" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
		local want
		want=$(cd "$WORK/tree" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
		if [ "$sum" = "$want" ]; then echo "host $n: read every file through the mount, checksums match ($sum)"; else echo "host $n: CHECKSUM MISMATCH"; exit 1; fi
	else
		[ -s "$WORK/mount$n.err" ] && echo "host $n: cannot mount here ($(cat "$WORK/mount$n.err")); reading with shoal prefetch"
		"$SHOAL" prefetch "$REF" --wait --api "$WORK/d$n.sock" 2>/dev/null
	fi
}

say "4. Host 1 reads the image: every chunk comes from the origin"
read_on 1
say "5. Hosts 2 and 3 read it at the same time: their chunks come from peers"
read_on 2 &
r2=$!
read_on 3 &
r3=$!
wait $r2 $r3

say "6. shoal stats on host 3"
"$SHOAL" stats --api "$WORK/d3.sock"

say "7. The cluster as a whole"
img_bytes=$("$SHOAL" image inspect "$WORK/img" --json | sed -n 's/.*"dataBytes": \([0-9]*\).*/\1/p')
origin_bytes=$(curl -s "127.0.0.1:$ORIGIN_PORT/shoal/stats" 2>/dev/null | sed -n 's/.*"bytesServed":\([0-9]*\).*/\1/p')
peer_bytes=0
for n in 1 2 3; do
	b=$("$SHOAL" stats --json --api "$WORK/d$n.sock" | sed -n '/"bytes"/,/}/s/.*"peers": \([0-9]*\).*/\1/p' | head -1)
	peer_bytes=$((peer_bytes + b))
done
awk -v i="$img_bytes" -v o="$origin_bytes" -v p="$peer_bytes" 'BEGIN {
	printf "image data %.1f MiB; 3 hosts read %.1f MiB in all\n", i/1048576, 3*i/1048576
	printf "origin served %.1f MiB (%.2fx the image), peers served %.1f MiB\n", o/1048576, o/i, p/1048576
	printf "without Shoal the origin would have served %.1f MiB\n", 3*i/1048576 }'

say "8. Cleaning up"
