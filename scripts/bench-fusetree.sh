#!/usr/bin/env bash
# fusetree mode (Shoal serves the image's tree over FUSE) against the same tree on local ext4,
# and against FUSE mode (EROFS file-backed on Shoal's FUSE blob files) where the kernel has it,
# in one run, alternating, median of ROUNDS:
#   - sequential cold-cache reads of SIZE_MB MiB in 4 files (page cache dropped before each;
#     the image's data is already in the local store: the same bytes on the same disk);
#   - the same reads warm (page cache), twice: the first re-read after a cold read also pays
#     for moving every folio to the active LRU list, which costs per folio (FUSE's are small);
#   - find/stat (find -printf of mode, size, mtime: one lstat per entry) over FILES small files
#     in directories of 1000, cold (dentries and inodes dropped) and warm;
#   - the daemon's CPU time over each cold read pass (steadier than wall time on a busy machine);
#   - "blob": the first SIZE_MB MiB of the store's backing blob file read directly on ext4, the
#     disk blocks the mounts read. The source tree was written minutes before the store, so on a
#     VM whose host caches the virtual disk, local and blob can see different host-cache states:
#     tree vs blob compares the same blocks.
# Also the first read through fusetree, which fetches every chunk from the local layout.
# Needs root (mounts, drop_caches). SHOAL_BENCH_DIR picks the disk (default /var/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "bench-fusetree: needs root (mounts, drop_caches); skipped"; exit 0; fi
SIZE_MB=${SIZE_MB:-512}
FILES=${FILES:-100000}
ROUNDS=${ROUNDS:-3}
W=$(mktemp -d "${SHOAL_BENCH_DIR:-/var/tmp}/bench-fusetree.XXXXXX")
S="$W/shoal"
API="$W/api.sock"
DPID=
cleanup() {
	for m in "$W/mnt-tree" "$W/mnt-fuse"; do
		if mountpoint -q "$m" 2>/dev/null; then "$S" umount "$m" --api "$API" >/dev/null 2>&1 || umount -l "$m" || true; fi
	done
	if [ -n "$DPID" ]; then kill -INT "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true; fi
	rm -rf "$W"
}
trap cleanup EXIT

go build -o "$S" ./cmd/shoal
src="$W/src" # on the disk under test: this is the "local ext4" tree
mkdir -p "$src/big"
for i in 1 2 3 4; do head -c $((SIZE_MB / 4))M /dev/urandom >"$src/big/f$i"; done
python3 - "$src/small" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%04d" % (i % 1000)), "wb") as f:
        f.write(b"x" * (i % 200))
PY
t0=$(date +%s%N)
"$S" image build "$src" "$W/img" --quiet
echo "image build: $(( ($(date +%s%N) - t0) / 1000000 )) ms ($FILES small files, $SIZE_MB MiB in 4 large)"

"$S" daemon --data "$W/data" --api "$API" --listen /ip4/127.0.0.1/tcp/0 --prefetch=false --log-level warn >"$W/daemon.log" 2>&1 &
DPID=$!
for _ in $(seq 100); do "$S" status --api "$API" >/dev/null 2>&1 && break; sleep 0.1; done
mkdir -p "$W/mnt-tree" "$W/mnt-fuse"
"$S" mount "$W/img" "$W/mnt-tree" --mode fusetree --api "$API"
targets="local:$src tree:$W/mnt-tree"
if "$S" mount "$W/img" "$W/mnt-fuse" --mode fuse --api "$API" 2>/dev/null; then
	targets="$targets fuse:$W/mnt-fuse"
else
	echo "fuse mode unavailable here: compared with local only"
fi

blob=$(find "$W/data/cache" -type f -size +$((SIZE_MB - 1))M | head -1)
[ -n "$blob" ] && targets="$targets blob:$blob"

ms() { local s; s=$(date +%s%N); "$@" >/dev/null; echo $(( ($(date +%s%N) - s) / 1000000 )); }
readall() {
	if [ -f "$1" ]; then dd if="$1" of=/dev/null bs=1M count="$SIZE_MB" status=none; return; fi
	for f in "$1"/big/*; do dd if="$f" of=/dev/null bs=1M status=none; done
}
findstat() { find "$1/small" -printf '%m %s %T@\n'; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "first read through fusetree (every chunk fetched from the local layout): $(ms readall "$W/mnt-tree") ms for $SIZE_MB MiB"
for t in $targets; do readall "${t#*:}"; if [ -d "${t#*:}" ]; then findstat "${t#*:}" >/dev/null; fi; done # everything local, every mount populated

# The daemon's CPU (user+system clock ticks) over one cold pass: what serving costs, which the
# machine's load does not change as much as it changes wall time.
ticks() { awk '{print $14 + $15}' "/proc/$DPID/stat"; }
hz=$(getconf CLK_TCK)
declare -A cold warm warm2 fcold fwarm dcpu
for _ in $(seq "$ROUNDS"); do
	for t in $targets; do
		n=${t%%:*} d=${t#*:}
		drop; a=$(ticks); cold[$n]+="$(ms readall "$d") "; dcpu[$n]+="$(( ($(ticks) - a) * 1000 / hz )) "
		warm[$n]+="$(ms readall "$d") "
		warm2[$n]+="$(ms readall "$d") "
		[ -d "$d" ] || continue
		drop; fcold[$n]+="$(ms findstat "$d") "
		fwarm[$n]+="$(ms findstat "$d") "
	done
done
printf '%-8s %14s %14s %14s %14s %14s %18s\n' "" "cold read" "warm read" "warm again" "find cold" "find warm" "daemon CPU cold"
for t in $targets; do
	n=${t%%:*}
	c=$(echo "${cold[$n]}" | median) w=$(echo "${warm[$n]}" | median) fc=$(echo "${fcold[$n]:-0}" | median) fw=$(echo "${fwarm[$n]:-0}" | median)
	dc=$(echo "${dcpu[$n]}" | median) w2=$(echo "${warm2[$n]}" | median)
	eval "m_$n='$c $w $fc $fw $w2'"
	printf '%-8s %9d MB/s %9d MB/s %9d MB/s %11d ms %11d ms %15d ms\n' "$n" $((SIZE_MB * 1049 / (c + 1))) $((SIZE_MB * 1049 / (w + 1))) $((SIZE_MB * 1049 / (w2 + 1))) "$fc" "$fw" "$dc"
done
# shellcheck disable=SC2154
read -r lc lw lfc lfw lw2 <<<"$m_local"
for n in tree fuse; do
	v="m_$n"; [ -n "${!v:-}" ] || continue
	read -r c w fc fw w2 <<<"${!v}"
	awk -v n="$n" -v lc="$lc" -v lw="$lw" -v lw2="$lw2" -v lfc="$lfc" -v lfw="$lfw" -v c="$c" -v w="$w" -v w2="$w2" -v fc="$fc" -v fw="$fw" 'BEGIN {
		printf "%s vs local ext4: cold read %.2fx, warm read %.2fx, again %.2fx (throughput); find cold %.2fx, warm %.2fx (time)\n", n, lc/c, lw/w, lw2/w2, fc/lfc, fw/lfw }'
done
if [ -n "${m_blob:-}" ]; then
	read -r bc _ <<<"$m_blob"
	for n in tree fuse; do
		v="m_$n"; [ -n "${!v:-}" ] || continue
		read -r c _ <<<"${!v}"
		awk -v n="$n" -v bc="$bc" -v c="$c" 'BEGIN { printf "%s vs the store'"'"'s blob file read directly (the same disk blocks): cold read %.2fx\n", n, bc/c }'
	done
fi
echo "rounds: $ROUNDS (median); raw ms: cold ${cold[*]} | warm ${warm[*]} | warm again ${warm2[*]} | find cold ${fcold[*]} | find warm ${fwarm[*]}"
