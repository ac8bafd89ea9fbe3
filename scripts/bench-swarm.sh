#!/usr/bin/env bash
# Swarm benchmark (issue 16, benchmark 1): real `shoal daemon`s, each in its own network
# namespace, joined by a bridge with every veth shaped by tc tbf to RATE Mbit/s each way, so the
# links and not the CPU are the bottleneck. Scenarios on fresh daemons:
#   seeded: host 1 reads the image from the origin, the origin stops, hosts 2..N run
#           `shoal prefetch --wait` together (by digest: resolved from peers);
#   cold:   the origin (its own namespace, same link rate) serves, all N hosts prefetch together;
#   kubo:   the same namespaces and links, one kubo (IPFS) daemon per host with its own repo, no
#           bootstrap peers, no DHT (Routing.Type none), peered as the Shoal daemons are; host 1
#           `ipfs add`s a file of the image's data (the same bytes: the image's files, one after
#           the other) and hosts 2..N `ipfs cat` its CID together. kubo has no origin, so it runs
#           the seeded start only. Runs when KUBO names an ipfs binary; skipped, saying so, if not.
# For each: per-host completion time (p50 and max over the hosts that read) against the lower
# bound (image / link rate), the most any host uploaded / image and what the seed (host 1)
# uploaded / image (Shoal: bytes served to peers; kubo: `ipfs stats bw` TotalOut; and, for both,
# "wire": bytes sent on the host's veth, headers and all), origin bytes / image (cold start), and
# the CPU the daemons used (cores, over the measured phase) and how busy the seed's (host 1's)
# uplink was (its wire bytes against the link rate over the phase), to show that the links and
# not the CPU were the bottleneck. A host whose read fails is reported with its last line of
# output, and the run goes on.
#
# Environment: SHOAL_SWARM_HOSTS (default "8 16"), SHOAL_SWARM_MBIT (default 20),
# SHOAL_SWARM_MIB (image size, default 32), SHOAL_SWARM_RUNS (runs per scenario, default 1),
# SHOAL (a shoal binary to use instead of building one), KUBO (an ipfs binary: kubo runs).
# Needs root, ip, tc, jq and curl; skips (exit 0) with a reason otherwise. Namespaces are
# shoal-swarm-* (veths sw-*/b-* live only inside them); every one, and every process in them and
# every process started here, is removed at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

HOSTS_LIST=${SHOAL_SWARM_HOSTS:-8 16}
MBIT=${SHOAL_SWARM_MBIT:-20}
MIB=${SHOAL_SWARM_MIB:-32}
RUNS=${SHOAL_SWARM_RUNS:-1}
NS=shoal-swarm
BR=$NS-br
ORIGIN_IP=10.77.0.2
PORT=5000

if [ "$(id -u)" != 0 ]; then
	echo "bench-swarm: skipped (needs root for network namespaces and shaped links)"
	exit 0
fi
for c in ip tc jq curl; do
	command -v "$c" >/dev/null || { echo "bench-swarm: skipped (needs $c)"; exit 0; }
done

WORK=$(mktemp -d /tmp/shoal-swarm.XXXXXX)
MAXN=0
for h in $HOSTS_LIST; do [ "$h" -gt "$MAXN" ] && MAXN=$h; done

kill_in_namespaces() { # sig: every process in a shoal-swarm-* namespace
	local ns
	for ns in $(ip netns list | awk '{print $1}' | grep "^$NS-"); do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill "-$1" 2>/dev/null
	done
}
del_namespaces() { # every shoal-swarm-* namespace, after killing what runs in it
	local ns
	kill_in_namespaces TERM
	sleep 0.5
	kill_in_namespaces KILL
	for ns in $(ip netns list | awk '{print $1}' | grep "^$NS-"); do ip netns del "$ns"; done
}
cleanup() {
	set +e
	trap - INT TERM
	# The daemons first (they run in the namespaces), so clients waiting on them return; then the
	# jobs still running and their children (a finished job's id may since belong to someone
	# else's process, so only live jobs), then the namespaces with their veths.
	kill_in_namespaces TERM
	for p in $(jobs -p); do
		pgrep -P "$p" | xargs -r kill 2>/dev/null
		kill "$p" 2>/dev/null
	done
	wait 2>/dev/null
	del_namespaces
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
set +e; del_namespaces; set -e # left by an earlier run killed with -9

if [ -n "${SHOAL:-}" ]; then
	cp "$SHOAL" "$WORK/shoal"
else
	go build -o "$WORK/shoal" ./cmd/shoal
fi
SHOAL=$WORK/shoal
if [ -n "${KUBO:-}" ] && [ ! -x "$KUBO" ]; then
	echo "bench-swarm: KUBO=$KUBO is not an executable; kubo skipped"
	KUBO=
fi

# The image: MIB of incompressible files.
mkdir -p "$WORK/tree"
for i in $(seq 1 $((MIB / 4))); do head -c $((4 << 20)) /dev/urandom >"$WORK/tree/f$i"; done
"$SHOAL" image build "$WORK/tree" "$WORK/img" --quiet
IMG_BYTES=$("$SHOAL" image inspect "$WORK/img" --json | jq '.dataBytes')
DIGEST=$(jq -r '.manifests[0].digest' "$WORK/img/index.json")
REF=$ORIGIN_IP:$PORT/img@$DIGEST
LB=$(awk -v b="$IMG_BYTES" -v m="$MBIT" 'BEGIN { printf "%.2f", b * 8 / (m * 1e6) }')

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

# wire name: bytes sent on the veth of host name (h1..hN, o).
wire() { ip -n "$NS-$1" -j -s link show "sw-$1" | jq '.[0].stats64.tx.bytes'; }
# cpu pids...: CPU seconds (user + system) the processes have used.
cpu() {
	local t=0 p v
	for p in "$@"; do
		v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
		t=$((t + v))
	done
	awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

origin_start() {
	ip netns exec "$NS-o" "$SHOAL" origin serve "$WORK/img" --listen "$ORIGIN_IP:$PORT" --stats-interval 0 >"$WORK/origin.log" 2>&1 &
	ORIGIN_PID=$!
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
		local ok=
		for _ in $(seq 1 300); do
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
	DPIDS=()
}
# metric host name: the sum of a Prometheus series of a host's /metrics (all label values).
metric() {
	ip netns exec "$NS-h$1" curl -s "10.77.1.$1:9480/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d", s }'
}
# p2p_summary n: what super-seeding and hedging did, over hosts 1..n (host 1 is the seed).
p2p_summary() {
	local w=0 hd=0 fb=0
	for i in $(seq 1 "$1"); do
		w=$((w + $(metric "$i" shoal_p2p_holder_waits_total)))
		hd=$((hd + $(metric "$i" shoal_p2p_hedged_requests_total)))
		fb=$((fb + $(metric "$i" shoal_p2p_hedged_fallback_total)))
	done
	echo "        host 1 answered $(ip netns exec "$NS-h1" curl -s 10.77.1.1:9480/metrics | grep '^shoal_p2p_served_requests_total' | tr '\n' ' '); waits for a new holder $w, hedges $hd, to the fallback $fb"
}
served() { "$SHOAL" stats --json --api "$WORK/d$1.sock" | jq '.bytes.servedToPeers'; }

# run_all first last cmd...: runs "cmd... i" for hosts first..last at once, each in its own
# background job that writes its end time to $WORK/end$i. The start time is in $WORK/start;
# FAILED is how many failed (each printed with its last line of output), and the run goes on.
run_all() {
	local first=$1 last=$2 pids=() fail=0 i p
	shift 2
	rm -f "$WORK"/end*
	date +%s.%N >"$WORK/start"
	for i in $(seq "$first" "$last"); do
		( if "$@" "$i" >"$WORK/p$i.log" 2>&1; then touch "$WORK/end$i.ok"; fi; date +%s.%N >"$WORK/end$i" ) &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || fail=1; done
	ELAPSED=$(elapsed)
	CORES=$(awk -v a="$CPU0" -v b="$(cpu "${CPUPIDS[@]}")" -v t="$ELAPSED" 'BEGIN { printf "%.2f", (b - a) / t }')
	FAILED=0
	for i in $(seq "$first" "$last"); do
		[ -f "$WORK/end$i.ok" ] && continue
		FAILED=$((FAILED + 1))
		echo "        host $i failed after $(awk -v a="$(cat "$WORK/start")" '{ printf "%.1f", $1 - a }' "$WORK/end$i") s: $(tail -n 1 "$WORK/p$i.log" | cut -c1-400)"
	done
}
# durations first last: p50 and max of the hosts' completion times, "p50 max".
durations() {
	local i s
	s=$(cat "$WORK/start")
	for i in $(seq "$1" "$2"); do
		[ -f "$WORK/end$i.ok" ] && awk -v a="$s" '{ printf "%.3f\n", $1 - a }' "$WORK/end$i"
	done |
		sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { printf "0 0" } else { printf "%.2f %.2f", v[int((NR + 1) / 2)], v[NR] } }'
}
shoal_prefetch() { "$SHOAL" prefetch "$REF" --wait --api "$WORK/d$1.sock"; }

# report scenario system n p50 max most mosthost seed origin wiremost wireseed cores
report() {
	awk -v sc="$1" -v sys="$2" -v n="$3" -v p50="$4" -v mx="$5" -v lb="$LB" -v m="$6" -v mh="$7" -v sd="$8" -v o="$9" \
		-v wm="${10}" -v ws="${11}" -v c="${12}" -v f="$FAILED" -v el="$ELAPSED" -v mbit="$MBIT" -v i="$IMG_BYTES" 'BEGIN {
		printf "%-6s %-5s %3d hosts  %s p50 %6.1f s %5.2fx  max %6.1f s %5.2fx (bound %.1f s)  most uploaded %.2fx (host %d)  seed %.2fx  wire most %.2fx seed %.2fx (seed link busy %.0f%%)  origin %s  cpu %.2f cores\n",
			sc, sys, n, (f > 0 ? sprintf("(%d FAILED, times of the rest)", f) : ""), p50, p50 / lb, mx, mx / lb, lb, m / i, mh, sd / i, wm / i, ws / i, 100 * ws * 8 / (mbit * 1e6 * el),
			(o == "" ? "-" : sprintf("%.3fx", o / i)), c }'
}
# shoal_report scenario n origin: the report line for hosts 1..n after a Shoal run.
shoal_report() {
	local most=0 mosthost=0 wm=0 s w i first=1
	[ "$1" = seeded ] && first=2
	for i in $(seq 1 "$2"); do
		s=$(served "$i")
		if [ "$s" -gt "$most" ]; then most=$s; mosthost=$i; fi
		w=$(($(wire "h$i") - WIRE0[i]))
		[ "$w" -gt "$wm" ] && wm=$w
	done
	# shellcheck disable=SC2046
	report "$1" shoal "$2" $(durations "$first" "$2") "$most" "$mosthost" "$(served 1)" "${3:-}" \
		"$wm" $(($(wire h1) - WIRE0[1])) "$CORES"
}
declare -a WIRE0
# cpu_mark pids...: the processes whose CPU the next run_all reports (CORES: cores used on average).
CPUPIDS=()
CPU0=0
cpu_mark() { CPUPIDS=("$@"); CPU0=$(cpu "$@"); }
wire_mark() { local i; for i in $(seq 1 "$1"); do WIRE0[i]=$(wire "h$i"); done; }
elapsed() { awk -v a="$(cat "$WORK/start")" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }'; }

# kubo: one repo per host in $WORK/k$i, API and gateway on the namespace's loopback.
KPIDS=()
KADDRS=()
ipfs_in() { # host args...: the ipfs command line in host's namespace and repo
	local i=$1
	shift
	ip netns exec "$NS-h$i" env IPFS_PATH="$WORK/k$i" "$KUBO" "$@"
}
kubo_start() { # n: fresh kubo daemons on hosts 1..n, host k connected to hosts 1..k-1
	local n=$1 i j ok
	KPIDS=()
	KADDRS=()
	for i in $(seq 1 "$n"); do
		rm -rf "$WORK/k$i"
		ipfs_in "$i" init --profile test >"$WORK/k$i.init" 2>&1
		# The test profile empties Bootstrap, turns mDNS off and binds to loopback; bind the swarm
		# to the namespace's address (TCP only, as Shoal), no routing (no DHT, no HTTP routers):
		# bitswap asks connected peers.
		jq --arg a "/ip4/10.77.1.$i/tcp/4001" '.Addresses.Swarm = [$a] | .Addresses.API = "/ip4/127.0.0.1/tcp/5001"
			| .Addresses.Gateway = "/ip4/127.0.0.1/tcp/8080" | .Bootstrap = [] | .Routing.Type = "none"
			| .Discovery.MDNS.Enabled = false | .Swarm.RelayClient.Enabled = false | .Swarm.RelayService.Enabled = false
			| .Swarm.DisableNatPortMap = true | .AutoNAT.ServiceMode = "disabled" | .Swarm.ResourceMgr.Enabled = false' \
			"$WORK/k$i/config" >"$WORK/k$i/config.new"
		mv "$WORK/k$i/config.new" "$WORK/k$i/config"
		KADDRS+=("/ip4/10.77.1.$i/tcp/4001/p2p/$(jq -r .Identity.PeerID "$WORK/k$i/config")")
		# Not through ipfs_in: $! must be kubo's own pid (for its CPU).
		ip netns exec "$NS-h$i" env IPFS_PATH="$WORK/k$i" "$KUBO" daemon --enable-gc=false >"$WORK/k$i.log" 2>&1 &
		KPIDS+=($!)
	done
	for i in $(seq 1 "$n"); do
		ok=
		for _ in $(seq 1 600); do
			if grep -q "Daemon is ready" "$WORK/k$i.log"; then ok=1; break; fi
			sleep 0.1
		done
		[ -n "$ok" ] || { echo "kubo $i did not start:"; cat "$WORK/k$i.log"; exit 1; }
	done
	for i in $(seq 2 "$n"); do
		ipfs_in "$i" swarm connect "${KADDRS[@]:0:$((i - 1))}" >/dev/null
	done
	for _ in $(seq 1 100); do
		local all=1
		for i in $(seq 1 "$n"); do
			c=$(ipfs_in "$i" swarm peers | wc -l)
			[ "$c" -ge $((n - 1)) ] || all=
		done
		[ -n "$all" ] && return
		sleep 0.2
	done
	echo "warning: not every kubo host sees all $((n - 1)) others"
}
kubo_stop() {
	for p in "${KPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${KPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	KPIDS=()
}
# kubo_out host: the host's TotalOut (`ipfs stats bw`, which prints rounded units; its RPC call
# gives the byte count).
kubo_out() { ip netns exec "$NS-h$1" curl -sf -X POST http://127.0.0.1:5001/api/v0/stats/bw | jq '.TotalOut'; }
kubo_cat() { ipfs_in "$1" cat "$CID" >/dev/null; }

echo "swarm: image $((IMG_BYTES >> 20)) MiB of data ($IMG_BYTES bytes), links ${MBIT} Mbit/s each way (tc tbf), lower bound ${LB} s"
if [ -n "${KUBO:-}" ]; then
	cat "$WORK"/tree/f* >"$WORK/image.bin"
	[ "$(stat -c %s "$WORK/image.bin")" = "$IMG_BYTES" ] || echo "note: kubo's file is $(stat -c %s "$WORK/image.bin") bytes, the image's data $IMG_BYTES"
	echo "kubo: $("$KUBO" version --all | head -1) ($KUBO); the file it adds is the image's files one after the other, $(stat -c %s "$WORK/image.bin") bytes, \`ipfs add\` defaults"
else
	echo "kubo: skipped (set KUBO to an ipfs binary to run it side by side)"
fi
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for n in $HOSTS_LIST; do
	for run in $(seq 1 "$RUNS"); do
		# Seeded start: host 1 holds the image, the origin is gone.
		origin_start
		daemons_start "$n"
		cpu_mark "${DPIDS[@]}"
		run_all 1 1 shoal_prefetch
		[ "$FAILED" = 0 ] || { echo "host 1 could not read the image from the origin"; exit 1; }
		origin_stop
		base=$(served 1)
		[ "$base" = 0 ] || echo "note: host 1 served $base bytes while seeding"
		wire_mark "$n"
		cpu_mark "${DPIDS[@]}"
		run_all 2 "$n" shoal_prefetch
		shoal_report seeded "$n" ""
		p2p_summary "$n"
		daemons_stop
		# Cold start: everyone reads from the origin at once.
		origin_start
		daemons_start "$n"
		wire_mark "$n"
		cpu_mark "${DPIDS[@]}" "$ORIGIN_PID"
		run_all 1 "$n" shoal_prefetch
		shoal_report cold "$n" "$(origin_bytes)"
		daemons_stop
		origin_stop
		# kubo, seeded start.
		if [ -n "${KUBO:-}" ]; then
			kubo_start "$n"
			CID=$(ipfs_in 1 add -Q "$WORK/image.bin")
			wire_mark "$n"
			declare -a OUT0
			for i in $(seq 1 "$n"); do OUT0[i]=$(kubo_out "$i"); done
			cpu_mark "${KPIDS[@]}"
			run_all 2 "$n" kubo_cat
			sleep 2 # kubo's bandwidth counters settle (they are metered, not exact at once)
			most=0 mosthost=0 wm=0 seed=0
			for i in $(seq 1 "$n"); do
				s=$(($(kubo_out "$i") - OUT0[i]))
				[ "$i" = 1 ] && seed=$s
				if [ "$s" -gt "$most" ]; then most=$s; mosthost=$i; fi
				w=$(($(wire "h$i") - WIRE0[i]))
				[ "$w" -gt "$wm" ] && wm=$w
			done
			# shellcheck disable=SC2046
			report seeded kubo "$n" $(durations 2 "$n") "$most" "$mosthost" "$seed" "" \
				"$wm" $(($(wire h1) - WIRE0[1])) "$CORES"
			kubo_stop
		fi
	done
done
