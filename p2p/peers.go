package p2p

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"
)

// How a peer was found, as shown by `shoal peers`.
const (
	FoundStatic = "static"
	FoundDNS    = "dns"
	// FoundDiscoverDNS: the DiscoverDNS name resolved to its IP, and it told its peer ID.
	FoundDiscoverDNS = "discover-dns"
	FoundMDNS        = "mdns"
	FoundDHT         = "dht"
	FoundInbound     = "inbound"
)

// PeerStats is what this host knows about one peer.
type PeerStats struct {
	ID        peer.ID
	Addrs     []ma.Multiaddr
	FoundBy   []string // FoundStatic, FoundDNS, FoundDiscoverDNS, FoundMDNS, FoundDHT, FoundInbound
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
	// Standing is StandingGood, StandingDemoted or StandingBanned; SlowShare and BadShare are
	// the shares of its recent requests (Config.StandingWindow) that were slow or bad.
	Standing            string
	SlowShare, BadShare float64
	Banned              bool
	BannedUntil         time.Time
}

// A peer's standing, as shown by `shoal peers`.
const (
	StandingGood    = "good"
	StandingDemoted = "demoted"
	StandingBanned  = "banned"
)

// outcome of one request to a peer, for its standing.
type outcome uint8

const (
	outcomeGood outcome = iota
	outcomeSlow         // answered, but past the slow threshold
	outcomeBad          // timed out, or lost a race after running past the slow threshold
)

const latencySamples = 64

// remoteBlob is a peer's presence map of one blob.
type remoteBlob struct {
	seq      uint64
	canFetch bool
	private  bool // sent with PresencePrivate: masked until this host holds a grant there
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
	// load is the peer's uploads in progress (to every host) as its last V2 response said, at
	// loadAt.
	load   int
	loadAt time.Time
	lat    [latencySamples]time.Duration
	nlat   int
	// Server side.
	reqLimit *rate.Limiter
	upLimit  *rate.Limiter // nil: unlimited
	sem      chan struct{}

	bytesDown, bytesUp      int64
	requestsOut, requestsIn int64
	errors, corrupt         int64
	strikes, refused        int
	stalls                  int // consecutive bad outcomes (timeouts, races lost past the slow threshold)
	// Standing: the outcomes of the last StandingWindow requests (a ring), and the verdict.
	outcomes     []outcome
	nout         int
	demoted      bool
	refusedSince time.Time
	bannedUntil  time.Time
	// slowBan: the ban is for slowness alone (record), not for bad data: the peer stays
	// connected and keeps its presence maps, is passed over like any banned peer, and is asked
	// only as a last resort (lastResort), so an honest seed whose uplink every reader
	// shares is never a chunk's lost only copy.
	slowBan bool
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

// score orders holders: lower is better. Expected wait = (uploads queued at the peer + 1) ×
// typical latency, where the queue is what this host has in flight to it or, if more, what the
// peer last said it is uploading to everyone (so a seed busy serving the swarm loses to a host
// that has just received the chunk); a peer without samples is assumed fast so new peers get
// tried. A demoted peer comes after every peer in good standing.
func (ps *peerState) score(now time.Time) time.Duration {
	est, ok := ps.quantile(0.5, 1)
	if !ok || est < time.Millisecond {
		est = time.Millisecond
	}
	s := time.Duration(holderQueue(ps.inflight, ps.load, now.Sub(ps.loadAt))+1) * est
	if ps.demoted {
		s += time.Hour
	}
	return s
}

// holderQueue is the uploads ahead of a new request at a holder: ours in flight to it, or the
// load it reported age ago if more; a report older than loadTTL has drained.
func holderQueue(inflight, load int, age time.Duration) int {
	const loadTTL = time.Second
	if age > loadTTL || load <= inflight {
		return inflight
	}
	return load
}

// queueScaled stretches a latency threshold d for a holder with queue uploads ahead of a
// request: a holder serves UploadSlots (this host's setting, taken as the cluster's) at a time,
// so each full round of them ahead adds d. A seed answering a swarm is then neither hedged to
// the fallback (which would ask it again through the rendezvous owner) nor demoted for its queue.
// The stretch is capped (three rounds, and half the request timeout) because the queue is the
// peer's word: a peer claiming a huge load to answer late unjudged is still demoted.
func (n *Node) queueScaled(d time.Duration, queue int) time.Duration {
	slots := n.cfg.UploadSlots
	if slots == 0 {
		slots = 8
	}
	s := d + time.Duration(min(queue/slots, 3))*d
	return max(d, min(s, n.cfg.RequestTimeout/2))
}

// shares are the slow and bad shares of ps's recent outcomes, and how many there are.
func (ps *peerState) shares() (slow, bad float64, k int) {
	k = min(ps.nout, len(ps.outcomes))
	if k == 0 {
		return 0, 0, 0
	}
	var ns, nb int
	for _, o := range ps.outcomes[:k] {
		switch o {
		case outcomeSlow:
			ns++
		case outcomeBad:
			nb++
		}
	}
	return float64(ns) / float64(k), float64(nb) / float64(k), k
}

// record adds one outcome to p's standing and demotes, restores or bans it. A peer is judged
// only once it has a quarter of a window of outcomes (demotion) or half a window (ban), so one
// unlucky request is never a verdict.
func (n *Node) record(p peer.ID, o outcome) {
	n.mu.Lock()
	ps := n.peerLocked(p)
	if ps.outcomes == nil {
		ps.outcomes = make([]outcome, n.cfg.StandingWindow)
	}
	ps.outcomes[ps.nout%len(ps.outcomes)] = o
	ps.nout++
	if o == outcomeBad {
		ps.stalls++
	} else {
		ps.stalls = 0
	}
	stalls := ps.stalls
	slow, bad, k := ps.shares()
	was := ps.demoted
	ps.demoted = k >= max(2, len(ps.outcomes)/4) && slow+bad >= n.cfg.DemoteRate
	demoted := ps.demoted
	ban := n.cfg.SlowBanRate > 0 && k >= len(ps.outcomes)/2 && bad >= n.cfg.SlowBanRate
	n.mu.Unlock()
	switch {
	case n.cfg.StallBanAfter > 0 && stalls >= n.cfg.StallBanAfter:
		n.met.standing.WithLabelValues(StandingBanned).Inc()
		n.banFor(p, fmt.Sprintf("%d requests in a row timed out or lost to a hedge after running past the slow threshold", stalls), true)
	case ban:
		n.met.standing.WithLabelValues(StandingBanned).Inc()
		n.banFor(p, fmt.Sprintf("%.0f%% of its last %d requests timed out or ran %v× past the cluster's p99", 100*bad, k, n.cfg.HedgeFactor), true)
	case demoted && !was:
		n.met.standing.WithLabelValues(StandingDemoted).Inc()
		n.log.Info("demoting slow peer", "peer", p, "slow", slow, "bad", bad, "requests", k)
	case was && !demoted:
		n.met.standing.WithLabelValues(StandingGood).Inc()
		n.log.Info("peer back in good standing", "peer", p, "slow", slow, "bad", bad, "requests", k)
	}
}

// normalLatencyLocked is what the cluster normally takes for one chunk: the lower median, over
// connected peers in good standing with at least 8 samples, of each peer's recent p99 (a median
// over peers, so a minority of slow peers cannot make slowness normal). Without such a peer it
// is HedgeDelay. Recomputed at most every 100 ms; n.mu must be held.
func (n *Node) normalLatencyLocked(now time.Time) time.Duration {
	if now.Sub(n.normalAt) < 100*time.Millisecond && n.normal > 0 {
		return n.normal
	}
	var p99s []time.Duration
	for _, ps := range n.peers {
		if !ps.connected || ps.demoted || ps.banned(now) {
			continue
		}
		if d, ok := ps.quantile(0.99, 8); ok {
			p99s = append(p99s, d)
		}
	}
	d := n.cfg.HedgeDelay
	if len(p99s) > 0 {
		slices.Sort(p99s)
		d = p99s[(len(p99s)-1)/2]
	}
	n.normal, n.normalAt = d, now
	return d
}

// slowAfterLocked is the slow threshold: HedgeFactor × the cluster's normal latency, within
// [MinHedgeDelay, RequestTimeout]; n.mu must be held.
func (n *Node) slowAfterLocked(now time.Time) time.Duration {
	d := time.Duration(n.cfg.HedgeFactor * float64(n.normalLatencyLocked(now)))
	return min(max(d, n.cfg.MinHedgeDelay), n.cfg.RequestTimeout)
}

// ban bans p for BanDuration and drops its connections; n.mu must not be held.
func (n *Node) ban(p peer.ID, why string) { n.banFor(p, why, false) }

// banFor bans p for BanDuration. A ban for bad data (slow false) drops its connections and
// presence maps and refuses it; a ban for slowness (slow) only passes it over: it stays
// connected, with its maps, for the last resort (lastResort), and a later ban for bad data
// replaces it. n.mu must not be held.
func (n *Node) banFor(p peer.ID, why string, slow bool) {
	n.mu.Lock()
	ps := n.peerLocked(p)
	now := time.Now()
	already := ps.banned(now) && (slow || !ps.slowBan)
	ps.bannedUntil = now.Add(n.cfg.BanDuration)
	ps.strikes, ps.refused, ps.stalls = 0, 0, 0 // a peer back from a ban starts afresh
	ps.nout, ps.demoted = 0, false
	ps.slowBan = slow
	if !slow {
		ps.blobs = map[digest.Digest]*remoteBlob{}
	}
	h := n.host
	n.mu.Unlock()
	if already {
		return
	}
	n.met.bans.Inc()
	n.log.Warn("banning peer", "peer", p, "reason", why, "for", n.cfg.BanDuration, "slowness_only", slow)
	if h != nil && !slow {
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

// allowed reports whether p may connect and exchange with this host.
func (n *Node) allowed(p peer.ID) bool {
	if n.allow != nil && !n.allow[p] {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := n.peers[p]
	return ps == nil || !ps.banned(time.Now()) || ps.slowBan
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
		st.SlowShare, st.BadShare, _ = ps.shares()
		switch {
		case st.Banned:
			st.BannedUntil = ps.bannedUntil
			st.Standing = StandingBanned
		case ps.demoted:
			st.Standing = StandingDemoted
		default:
			st.Standing = StandingGood
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

// bestOf is the peer of ps with the lowest score (expected wait) now.
func (n *Node) bestOf(ps []peer.ID) peer.ID {
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	best, bestScore := ps[0], n.peerLocked(ps[0]).score(now)
	for _, p := range ps[1:] {
		if s := n.peerLocked(p).score(now); s < bestScore {
			best, bestScore = p, s
		}
	}
	return best
}

// awaitNewHolder waits for a connected peer outside known to announce chunk c, and returns the
// new holders; nil once the slow threshold has passed or ctx has ended. A holder that has just
// sent c to another host refuses it to a requester that can wait (FlagCanWait), and this is the
// wait: about one chunk's transfer to that host plus a presence frame.
func (n *Node) awaitNewHolder(ctx context.Context, c cid.Cid, known []peer.ID) []peer.ID {
	n.mu.Lock()
	timer := time.NewTimer(n.slowAfterLocked(time.Now()))
	n.mu.Unlock()
	defer timer.Stop()
	for {
		n.mu.Lock()
		more := slices.DeleteFunc(n.holdersLocked(c, time.Now()), func(p peer.ID) bool { return slices.Contains(known, p) })
		if len(more) > 0 {
			n.mu.Unlock()
			n.met.holderWaits.WithLabelValues("announced").Inc()
			return more
		}
		changed := n.presenceChangedLocked()
		n.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			n.met.holderWaits.WithLabelValues("timeout").Inc()
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}
