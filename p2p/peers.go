package p2p

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"
)

// How a peer was found, as shown by `shoal peers`.
const (
	FoundStatic  = "static"
	FoundDNS     = "dns"
	FoundMDNS    = "mdns"
	FoundDHT     = "dht"
	FoundInbound = "inbound"
)

// PeerStats is what this host knows about one peer.
type PeerStats struct {
	ID        peer.ID
	Addrs     []ma.Multiaddr
	FoundBy   []string // FoundStatic, FoundDNS, FoundMDNS, FoundDHT, FoundInbound
	Connected bool
	// Blobs is how many blobs the peer has sent presence maps for.
	Blobs int
	// BytesDown is verified chunk data received from the peer, BytesUp data sent to it.
	BytesDown, BytesUp int64
	// RequestsOut are chunk requests sent to the peer, RequestsIn requests it sent us.
	RequestsOut, RequestsIn int64
	// Errors counts failed requests to the peer (timeouts, resets, refusals); Corrupt those that
	// returned wrong or truncated data.
	Errors, Corrupt int64
	// LatencyP50 and LatencyP99 are over the recent successful requests.
	LatencyP50, LatencyP99 time.Duration
	Banned                 bool
	BannedUntil            time.Time
}

const latencySamples = 64

// remoteBlob is a peer's presence map of one blob.
type remoteBlob struct {
	seq      uint64
	canFetch bool
	n        int
	bits     []byte
}

func (r *remoteBlob) has(i int) bool {
	return r != nil && i >= 0 && i < r.n && r.bits[i/8]&(1<<(i%8)) != 0
}

// peerState is everything about one peer; guarded by Node.mu.
type peerState struct {
	id        peer.ID
	found     map[string]bool
	connected bool

	blobs map[digest.Digest]*remoteBlob // presence received

	// Presence sending: blobs whose state must be sent, and the sender goroutine's wake-up.
	dirty   map[digest.Digest]bool
	wake    chan struct{}
	sending bool

	// Client side.
	inflight int
	lat      [latencySamples]time.Duration
	nlat     int
	// Server side.
	reqLimit *rate.Limiter
	upLimit  *rate.Limiter // nil: unlimited
	sem      chan struct{}

	bytesDown, bytesUp      int64
	requestsOut, requestsIn int64
	errors, corrupt         int64
	strikes, refused        int
	stalls                  int // consecutive requests that ran out of time with nothing to show
	refusedSince            time.Time
	bannedUntil             time.Time
}

func (n *Node) newPeerState(p peer.ID) *peerState {
	ps := &peerState{
		id:       p,
		found:    map[string]bool{},
		blobs:    map[digest.Digest]*remoteBlob{},
		dirty:    map[digest.Digest]bool{},
		wake:     make(chan struct{}, 1),
		reqLimit: rate.NewLimiter(rate.Limit(n.cfg.PeerRequestRate), n.cfg.PeerRequestBurst),
		sem:      make(chan struct{}, n.cfg.PeerConcurrency),
	}
	if n.cfg.PeerUploadRate > 0 {
		// Burst one max chunk so a single WaitN of a whole chunk is always possible.
		ps.upLimit = rate.NewLimiter(rate.Limit(n.cfg.PeerUploadRate), MaxChunkSize)
	}
	return ps
}

// peerLocked returns the state of p, creating it; n.mu must be held.
func (n *Node) peerLocked(p peer.ID) *peerState {
	ps := n.peers[p]
	if ps == nil {
		ps = n.newPeerState(p)
		n.peers[p] = ps
	}
	return ps
}

// noteFound records how p was found.
func (n *Node) noteFound(p peer.ID, how string) {
	n.mu.Lock()
	n.peerLocked(p).found[how] = true
	n.mu.Unlock()
}

func (ps *peerState) addLatency(d time.Duration) {
	ps.lat[ps.nlat%latencySamples] = d
	ps.nlat++
}

// quantile of the recent latency samples; ok is false with fewer than need samples.
func (ps *peerState) quantile(q float64, need int) (time.Duration, bool) {
	k := min(ps.nlat, latencySamples)
	if k < need || k == 0 {
		return 0, false
	}
	s := slices.Clone(ps.lat[:k])
	slices.Sort(s)
	return s[int(q*float64(k-1)+0.5)], true
}

func (ps *peerState) banned(now time.Time) bool { return now.Before(ps.bannedUntil) }

// score orders holders: lower is better. Expected wait = (requests in flight + 1) × typical
// latency; a peer without samples is assumed fast so new peers get tried.
func (ps *peerState) score() time.Duration {
	est, ok := ps.quantile(0.5, 1)
	if !ok || est < time.Millisecond {
		est = time.Millisecond
	}
	return time.Duration(ps.inflight+1) * est
}

// ban bans p for BanDuration and drops its connections; n.mu must not be held.
func (n *Node) ban(p peer.ID, why string) {
	n.mu.Lock()
	ps := n.peerLocked(p)
	already := ps.banned(time.Now())
	ps.bannedUntil = time.Now().Add(n.cfg.BanDuration)
	ps.strikes, ps.refused, ps.stalls = 0, 0, 0 // a peer back from a ban starts afresh
	ps.blobs = map[digest.Digest]*remoteBlob{}
	h := n.host
	n.mu.Unlock()
	if already {
		return
	}
	n.met.bans.Inc()
	n.log.Warn("banning peer", "peer", p, "reason", why, "for", n.cfg.BanDuration)
	if h != nil {
		_ = h.Network().ClosePeer(p)
	}
}

// strike records a corrupt or truncated response from p and bans it after BanAfter of them.
func (n *Node) strike(p peer.ID, err error) {
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.corrupt++
	ps.strikes++
	over := ps.strikes >= n.cfg.BanAfter
	n.mu.Unlock()
	n.log.Warn("peer sent bad chunk data", "peer", p, "err", err)
	if over {
		n.ban(p, err.Error())
	}
}

// stalled records a request to p that timed out (the caller still waiting) and bans p after
// StallBanAfter of them in a row: a peer that claims chunks and never sends them costs every
// reader a timeout. Any successful request resets the count.
func (n *Node) stalled(p peer.ID) {
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.stalls++
	over := n.cfg.StallBanAfter > 0 && ps.stalls >= n.cfg.StallBanAfter
	count := ps.stalls
	n.mu.Unlock()
	if over {
		n.ban(p, fmt.Sprintf("%d requests in a row timed out", count))
	}
}

// allowed reports whether p may connect and exchange with this host.
func (n *Node) allowed(p peer.ID) bool {
	if n.allow != nil && !n.allow[p] {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := n.peers[p]
	return ps == nil || !ps.banned(time.Now())
}

// Peers returns the stats of every peer this host has seen, sorted by ID.
func (n *Node) Peers() []PeerStats {
	n.mu.Lock()
	h := n.host
	out := make([]PeerStats, 0, len(n.peers))
	now := time.Now()
	for _, ps := range n.peers {
		st := PeerStats{
			ID: ps.id, Connected: ps.connected, Blobs: len(ps.blobs),
			BytesDown: ps.bytesDown, BytesUp: ps.bytesUp,
			RequestsOut: ps.requestsOut, RequestsIn: ps.requestsIn,
			Errors: ps.errors, Corrupt: ps.corrupt,
			Banned: ps.banned(now),
		}
		if st.Banned {
			st.BannedUntil = ps.bannedUntil
		}
		st.LatencyP50, _ = ps.quantile(0.5, 1)
		st.LatencyP99, _ = ps.quantile(0.99, 1)
		for how := range ps.found {
			st.FoundBy = append(st.FoundBy, how)
		}
		sort.Strings(st.FoundBy)
		out = append(out, st)
	}
	n.mu.Unlock()
	if h != nil {
		for i := range out {
			out[i].Addrs = h.Peerstore().Addrs(out[i].ID)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
