#!/usr/bin/env bash
# Swarm benchmark (issue 16, benchmark 1): real `shoal daemon`s, each in its own network
# namespace, joined by a bridge with every veth shaped by tc tbf to RATE Mbit/s each way, so the
# links and not the CPU are the bottleneck. Two scenarios on fresh daemons:
#   seeded: host 1 reads the image from the origin, the origin stops, hosts 2..N run
#           `shoal prefetch --wait` together (by digest: resolved from peers);
#   cold:   the origin (its own namespace, same link rate) serves, all N hosts prefetch together.
# For each: completion time against the lower bound (image / link rate), the most any host
# uploaded / image, and origin bytes / image (cold start).
#
# Environment: SHOAL_SWARM_HOSTS (default "8"; e.g. "8 16"), SHOAL_SWARM_MBIT (default 50),
# SHOAL_SWARM_MIB (image size, default 64), SHOAL_SWARM_RUNS (runs per scenario, default 1).
# Needs root, ip and tc; skips (exit 0) with a reason otherwise. Namespaces are shoal-swarm-*,
# removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

HOSTS_LIST=${SHOAL_SWARM_HOSTS:-8}
MBIT=${SHOAL_SWARM_MBIT:-50}
MIB=${SHOAL_SWARM_MIB:-64}
RUNS=${SHOAL_SWARM_RUNS:-1}
NS=shoal-swarm
BR=$NS-br
ORIGIN_IP=10.77.0.2
PORT=5000

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
	echo "bench-swarm: skipped (needs root, ip and tc for network namespaces and shaped links)"
	exit 0
fi

WORK=$(mktemp -d /tmp/shoal-swarm.XXXXXX)
SHOAL=$WORK/shoal
PIDS=()
MAXN=0
for h in $HOSTS_LIST; do [ "$h" -gt "$MAXN" ] && MAXN=$h; done

cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	for ns in $(ip netns list | awk '{print $1}' | grep "^$NS-"); do ip netns del "$ns"; done
	rm -rf "$WORK"
}
trap cleanup EXIT

go build -o "$SHOAL" ./cmd/shoal

# The image: MIB of incompressible files.
mkdir -p "$WORK/tree"
for i in $(seq 1 $((MIB / 4))); do head -c $((4 << 20)) /dev/urandom >"$WORK/tree/f$i"; done
"$SHOAL" image build "$WORK/tree" "$WORK/img" --quiet
IMG_BYTES=$("$SHOAL" image inspect "$WORK/img" --json | jq '.dataBytes')
DIGEST=$(jq -r '.manifests[0].digest' "$WORK/img/index.json")
REF=$ORIGIN_IP:$PORT/img@$DIGEST
LB=$(awk -v b="$IMG_BYTES" -v m="$MBIT" 'BEGIN { printf "%.1f", b * 8 / (m * 1e6) }')

# The network: a bridge in $BR; namespace $NS-o (the origin) and $NS-h1..N (hosts), each on a
# veth whose both ends are shaped: the namespace side caps its upload, the bridge side its download.
ip netns add "$BR"
ip -n "$BR" link add br0 type bridge
ip -n "$BR" link set br0 up
ip -n "$BR" link set lo up
shape() { # ns dev
	ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "${MBIT}mbit" burst 64kb latency 200ms
}
join() { # name ip
	local ns=$NS-$1
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	ip link add "sw-$1" netns "$ns" type veth peer name "b-$1" netns "$BR"
	ip -n "$ns" addr add "$2/16" dev "sw-$1"
	ip -n "$ns" link set "sw-$1" up
	ip -n "$BR" link set "b-$1" master br0 up
	shape "$ns" "sw-$1"
	shape "$BR" "b-$1"
}
join o "$ORIGIN_IP"
for i in $(seq 1 "$MAXN"); do join "h$i" "10.77.1.$i"; done

origin_start() {
	ip netns exec "$NS-o" "$SHOAL" origin serve "$WORK/img" --listen "$ORIGIN_IP:$PORT" --stats-interval 0 >"$WORK/origin.log" 2>&1 &
	ORIGIN_PID=$!
	PIDS+=("$ORIGIN_PID")
	for _ in $(seq 1 100); do ip netns exec "$NS-o" curl -sf "$ORIGIN_IP:$PORT/v2/" >/dev/null && return; sleep 0.1; done
	echo "origin did not start"; cat "$WORK/origin.log"; exit 1
}
origin_stop() {
	kill "$ORIGIN_PID" 2>/dev/null || true
	wait "$ORIGIN_PID" 2>/dev/null || true
}
origin_bytes() { ip netns exec "$NS-o" curl -s "$ORIGIN_IP:$PORT/shoal/stats" | jq '.bytesServed'; }

DPIDS=()
daemons_start() { # n: fresh daemons on hosts 1..n, host k peered with hosts 1..k-1 (a full mesh)
	local n=$1
	DPIDS=()
	local peers=()
	for i in $(seq 1 "$n"); do
		rm -rf "$WORK/d$i"
		local args=(daemon --data "$WORK/d$i" --api "$WORK/d$i.sock" --listen "/ip4/10.77.1.$i/tcp/7480"
			--insecure-registry "$ORIGIN_IP:$PORT" --prefetch=false --log-level warn --admin "10.77.1.$i:9480")
		for p in "${peers[@]}"; do args+=(--peer "$p"); done
		ip netns exec "$NS-h$i" "$SHOAL" "${args[@]}" >"$WORK/d$i.log" 2>&1 &
		DPIDS+=($!)
		PIDS+=($!)
		local ok=
		for _ in $(seq 1 200); do
			if "$SHOAL" peers --self --api "$WORK/d$i.sock" >/dev/null 2>&1; then ok=1; break; fi
			sleep 0.1
		done
		[ -n "$ok" ] || { echo "daemon $i did not start:"; cat "$WORK/d$i.log"; exit 1; }
		peers+=("$("$SHOAL" peers --self --api "$WORK/d$i.sock" | grep 10.77.1 | head -1)")
	done
	# Every host connected to the others before the clock starts.
	for _ in $(seq 1 100); do
		local all=1
		for i in $(seq 1 "$n"); do
			c=$("$SHOAL" stats --json --api "$WORK/d$i.sock" | jq '[.peers[] | select(.connected)] | length')
			[ "$c" -ge $((n - 1)) ] || all=
		done
		[ -n "$all" ] && return
		sleep 0.2
	done
	echo "warning: not every host sees all $((n - 1)) others"
}
daemons_stop() {
	for p in "${DPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${DPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
# metric host name: the sum of a Prometheus series of a host's /metrics (all label values).
metric() {
	ip netns exec "$NS-h$1" curl -s "10.77.1.$1:9480/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d", s }'
}
# p2p_summary n: what super-seeding and hedging did, over hosts 1..n (host 1 is the seed).
p2p_summary() {
	local w=0 to=0 hd=0 fb=0
	for i in $(seq 1 "$1"); do
		w=$((w + $(metric "$i" shoal_p2p_holder_waits_total)))
		hd=$((hd + $(metric "$i" shoal_p2p_hedged_requests_total)))
		fb=$((fb + $(metric "$i" shoal_p2p_hedged_fallback_total)))
	done
	echo "        host 1 answered $(ip netns exec "$NS-h1" curl -s 10.77.1.1:9480/metrics | grep '^shoal_p2p_served_requests_total' | tr '\n' ' '); waits for a new holder $w, hedges $hd, to the fallback $fb"
}
served() { "$SHOAL" stats --json --api "$WORK/d$1.sock" | jq '.bytes.servedToPeers'; }

prefetch_all() { # first last: prefetch on hosts first..last at once; prints the seconds taken
	local t0 t1 pids=()
	t0=$(date +%s.%N)
	for i in $(seq "$1" "$2"); do
		"$SHOAL" prefetch "$REF" --wait --api "$WORK/d$i.sock" >"$WORK/p$i.log" 2>&1 &
		pids+=($!)
	done
	local fail=0
	for p in "${pids[@]}"; do wait "$p" || fail=1; done
	t1=$(date +%s.%N)
	if [ "$fail" = 1 ]; then
		echo "a prefetch failed:" >&2
		tail -n 3 "$WORK"/p*.log >&2
		exit 1
	fi
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }'
}

report() { # scenario n seconds origin_bytes: one line
	local most=0 mosthost=0
	for i in $(seq 1 "$2"); do
		s=$(served "$i")
		if [ "$s" -gt "$most" ]; then most=$s; mosthost=$i; fi
	done
	awk -v sc="$1" -v n="$2" -v t="$3" -v lb="$LB" -v m="$most" -v mh="$mosthost" -v o="$4" -v i="$IMG_BYTES" 'BEGIN {
		printf "%-7s %3d hosts  %6.1f s  (lower bound %.1f s: %.2fx)  most uploaded by one host %.2fx the image (host %d)  origin %s\n",
			sc, n, t, lb, t / lb, m / i, mh, (o == "" ? "-" : sprintf("%.3fx the image", o / i)) }'
}

echo "swarm: image $((IMG_BYTES >> 20)) MiB of data ($IMG_BYTES bytes), links ${MBIT} Mbit/s each way (tc tbf), lower bound ${LB} s"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for n in $HOSTS_LIST; do
	for run in $(seq 1 "$RUNS"); do
		# Seeded start: host 1 holds the image, the origin is gone.
		origin_start
		daemons_start "$n"
		prefetch_all 1 1 >/dev/null
		origin_stop
		base=$(served 1)
		[ "$base" = 0 ] || echo "note: host 1 served $base bytes while seeding"
		t=$(prefetch_all 2 "$n")
		report seeded "$n" "$t" ""
		p2p_summary "$n"
		daemons_stop
		# Cold start: everyone reads from the origin at once.
		origin_start
		daemons_start "$n"
		t=$(prefetch_all 1 "$n")
		report cold "$n" "$t" "$(origin_bytes)"
		daemons_stop
		origin_stop
	done
done
