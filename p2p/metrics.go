package p2p

import (
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	shoalmetrics "github.com/shoal-p2p/shoal/internal/metrics"
)

// metrics are the shoal_p2p_* series. They exist whether or not a Registerer is configured, so
// code never checks for nil.
type metrics struct {
	fetches        *prometheus.CounterVec // by source: peer, coalesced, origin, failed
	fetchBytes     *prometheus.CounterVec // by source
	fetchSeconds   prometheus.Histogram
	servedRequests *prometheus.CounterVec // by status
	servedBytes    prometheus.Counter
	peerFailures   *prometheus.CounterVec // by kind: corrupt, truncated, error, timeout
	hedges         prometheus.Counter
	hedgeFallback  prometheus.Counter
	holderWaits    *prometheus.CounterVec // waits for a chunk's next holder, by end: announced, timeout
	standing       *prometheus.CounterVec // changes of standing, by new standing
	bans           prometheus.Counter
	lastResort     prometheus.Counter // chunks from slow holders as a last resort (lastResort)
	presenceIn     prometheus.Counter
	presenceOut    prometheus.Counter
	peers          prometheus.GaugeFunc
	// Upload slots (Config.UploadSlots): how many there are, how many are taken and how many
	// requests wait for one; busy near slots with a queue means this host's uplink is the limit.
	slots, slotsBusy, slotsQueued prometheus.GaugeFunc
	memberDials                   *prometheus.CounterVec // dials of rendezvous owners known through membership, by result
	ownerBusy                     prometheus.Counter     // fetch-throughs the owner answered busy (it holds the chunk)
	originFetches                 *prometheus.CounterVec // chunk fetches from the origin, by why this host made them (originCause)

	// Wire bytes: what chunk transfers took on the network (compressed or raw), beside the
	// data bytes above.
	fetchWireBytes  *prometheus.CounterVec // by source
	servedWireBytes prometheus.Counter
	compressSeconds prometheus.Counter // CPU time compressing chunks for V3 peers
	// served and servedWire are servedBytes and servedWireBytes, readable (Node.Served).
	served, servedWire atomic.Int64
}

// nodeGauges are the node's live values the gauges read.
type nodeGauges struct {
	connected, slots, slotsBusy, slotsQueued func() float64
}

func newMetrics(reg prometheus.Registerer, g nodeGauges) (*metrics, func(), error) {
	m := &metrics{
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_fetches_total", Help: "Chunk fetches by where the data came from (peer, coalesced, origin) or failed.",
		}, []string{"source"}),
		fetchBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_fetch_bytes_total", Help: "Verified chunk bytes fetched, by source.",
		}, []string{"source"}),
		fetchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "shoal_p2p_fetch_seconds", Help: "Time to fetch one chunk, any source.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		servedRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_served_requests_total", Help: "Chunk requests answered to peers, by status.",
		}, []string{"status"}),
		servedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_p2p_served_bytes_total", Help: "Chunk bytes uploaded to peers.",
		}),
		fetchWireBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_fetch_wire_bytes_total", Help: "Bytes the fetched chunks took on the network from peers (zstd frames or raw), by source (peer, coalesced); less than shoal_p2p_fetch_bytes_total where they came compressed.",
		}, []string{"source"}),
		servedWireBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_p2p_served_wire_bytes_total", Help: "Bytes of chunk data uploaded to peers as sent on the network (zstd frames or raw).",
		}),
		compressSeconds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_p2p_compress_seconds_total", Help: "Time spent compressing chunks for ChunkProtocolV3 peers.",
		}),
		peerFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_peer_failures_total", Help: "Failed chunk requests to peers, by kind (corrupt, truncated, error).",
		}, []string{"kind"}),
		hedges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_p2p_hedged_requests_total", Help: "Requests sent to a second holder because the first was slower than its p90.",
		}),
		hedgeFallback: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_p2p_hedged_fallback_total", Help: "Requests to the last holder hedged to the rendezvous owner or the origin because they ran past HedgeFactor × the cluster's p99.",
		}),
		holderWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_holder_waits_total", Help: "Waits for another host to announce a chunk a holder had just sent it (super-seeding), by how they ended (announced, timeout).",
		}, []string{"end"}),
		standing: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_standing_changes_total", Help: "Peers whose standing changed, by new standing (good, demoted, banned).",
		}, []string{"standing"}),
		bans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_p2p_bans_total", Help: "Peers banned for corrupt or truncated data, flooding, or slowness (those stay connected, asked only as a last resort).",
		}),
		lastResort: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_p2p_last_resort_chunks_total", Help: "Chunks fetched from a slow holder (given lastResortTimeouts × the request timeout; peers banned for slowness alone included) once every other holder, the rendezvous owner and the origin had failed.",
		}),
		presenceIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_p2p_presence_received_total", Help: "Presence maps received from peers.",
		}),
		presenceOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_p2p_presence_sent_total", Help: "Presence maps sent to peers.",
		}),
		memberDials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_member_dials_total", Help: "Connections opened on demand to rendezvous owners known through membership, by result (ok, failed).",
		}, []string{"result"}),
		ownerBusy: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_p2p_owner_busy_total", Help: "Fetch-through requests the rendezvous owner answered busy (it holds the chunk, every upload slot stayed full); the holders are asked again before the origin.",
		}),
		originFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_origin_fetches_total", Help: "Chunks this host fetched from the origin, by cause: owner (it is the chunk's rendezvous owner and no holder answered), owner_hedge (it is the owner and a holder ran past the slow threshold), for_peer (a peer's fetch-through), owner_unreachable, owner_busy, owner_failed (the owner could not be dialled, stayed busy, or failed or timed out), no_network.",
		}, []string{"cause"}),
		peers: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shoal_p2p_connected_peers", Help: "Peers with an open connection.",
		}, g.connected),
		slots: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shoal_p2p_upload_slots", Help: "Held chunks this host uploads at once, to all peers together (0: no limit).",
		}, g.slots),
		slotsBusy: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shoal_p2p_upload_slots_busy", Help: "Upload slots taken by uploads running now.",
		}, g.slotsBusy),
		slotsQueued: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shoal_p2p_upload_queued_requests", Help: "Chunk requests waiting for an upload slot.",
		}, g.slotsQueued),
	}
	// The gauge reads this node's peers, and the counters are its own: registered for the
	// node's lifetime (Close unregisters them), not shared with another node.
	unregister, err := shoalmetrics.RegisterOwned(reg, m.fetches, m.fetchBytes, m.fetchSeconds, m.servedRequests, m.servedBytes,
		m.fetchWireBytes, m.servedWireBytes, m.compressSeconds,
		m.peerFailures, m.hedges, m.hedgeFallback, m.holderWaits, m.standing, m.bans, m.lastResort, m.presenceIn, m.presenceOut, m.peers,
		m.slots, m.slotsBusy, m.slotsQueued, m.memberDials, m.ownerBusy, m.originFetches)
	if err != nil {
		return nil, nil, fmt.Errorf("p2p: %w", err)
	}
	return m, unregister, nil
}

// Served returns the chunk bytes this host has uploaded to peers since it started, as data and as
// they took on the network (zstd frames to V3 peers, raw to others).
func (n *Node) Served() (data, wire int64) {
	return n.met.served.Load(), n.met.servedWire.Load()
}
