package p2p

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

var errNoHolders = errors.New("no peer holds the chunk")

// maxOwnerTries is how many rendezvous owners, in order, a fetch asks to fetch through before
// this host goes to the origin itself.
const maxOwnerTries = 2

// originCause is why a host fetched a chunk from the origin (shoal_p2p_origin_fetches_total).
type originCause string

const (
	causeOwner            originCause = "owner"             // this host is the rendezvous owner; no holder answered
	causeOwnerHedge       originCause = "owner_hedge"       // this host is the owner; a holder ran past the slow threshold
	causeForPeer          originCause = "for_peer"          // a peer's fetch-through
	causeOwnerUnreachable originCause = "owner_unreachable" // the owner could not be dialled
	causeOwnerBusy        originCause = "owner_busy"        // the owner stayed busy and its holders failed
	causeOwnerFailed      originCause = "owner_failed"      // the owner's fetch-through failed or timed out
	causeNoNetwork        originCause = "no_network"        // the node is not running
)

// statusError is a peer's non-OK answer.
type statusError struct {
	st  Status
	msg string
}

func (e *statusError) Error() string {
	if e.msg == "" {
		return "peer answered " + e.st.String()
	}
	return "peer answered " + e.st.String() + ": " + e.msg
}

type fetched struct {
	data chunk.Verified
	src  chunk.Source
	// frame is the zstd frame the chunk came in from a peer (V3), nil if it came raw.
	frame []byte
	// wire is what the chunk took on the network from a peer: len(frame), or its length raw; 0
	// from the origin (counted by whoever reads it) or from the recent buffer.
	wire int64
}

// Fetch returns the verified bytes of chunk c of blob. It asks, in order: the peers whose
// presence maps hold the chunk (fastest first, hedged to a second holder past the first's p90);
// the peer the cluster's rendezvous hash picks to fetch the chunk from the origin for everyone
// (fetch-through); and fromOrigin itself (nil: the OriginFunc given to RegisterBlob). Concurrent
// calls for one CID share one fetch. The returned slice may be shared with other callers: do not
// modify it. The caller stores the data and then calls Announce.
func (n *Node) Fetch(ctx context.Context, blob digest.Digest, c chunk.Chunk, fromOrigin func(context.Context) ([]byte, error)) (chunk.Verified, chunk.Source, error) {
	data, src, _, err := n.FetchWire(ctx, blob, c, fromOrigin)
	return data, src, err
}

// FetchWire is Fetch that also says what the chunk took on the network from a peer: the zstd
// frame's length where it came compressed (ChunkProtocolV3), else its length; 0 for a chunk
// from the origin (its bytes are the origin reader's to count) or one fetched moments ago.
func (n *Node) FetchWire(ctx context.Context, blob digest.Digest, c chunk.Chunk, fromOrigin func(context.Context) ([]byte, error)) (chunk.Verified, chunk.Source, int64, error) {
	return n.FetchProgressive(ctx, blob, c, nil, fromOrigin)
}

// FetchProgressive is FetchWire for a reader that needs part of the chunk first: where the chunk
// comes from a holder that speaks ChunkProtocolV4 and prog has sub-block digests, the holder is
// asked for the sub-blocks covering prog's wanted range first, and each of them is handed to
// prog (which verifies it against its digest) as soon as it has arrived, before the rest of the
// chunk; a sub-block that does not match is a strike against the holder, as wrong bytes are, and
// the chunk is asked of the next source. The whole chunk is still verified against its CID
// before it is returned. prog may be nil (FetchWire). A call that joins a fetch of the same CID
// already running shares its result, not its sub-blocks.
func (n *Node) FetchProgressive(ctx context.Context, blob digest.Digest, c chunk.Chunk, prog *chunk.Progress, fromOrigin func(context.Context) ([]byte, error)) (chunk.Verified, chunk.Source, int64, error) {
	if c.Length <= 0 || c.Length > MaxChunkSize {
		return chunk.Verified{}, "", 0, fmt.Errorf("fetch chunk %s of %s: length %d out of (0, %d]", c.CID, blob, c.Length, MaxChunkSize)
	}
	start := time.Now()
	ch := n.sf.DoChan(c.CID.KeyString(), func() (any, error) {
		fctx, cancel := n.flightContext(ctx, 2*n.cfg.CoalesceTimeout+time.Duration(n.cfg.MaxAttempts)*n.cfg.RequestTimeout)
		defer cancel()
		return n.fetch(fctx, blob, c, fromOrigin, prog)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			n.met.fetches.WithLabelValues("failed").Inc()
			return chunk.Verified{}, "", 0, r.Err
		}
		f := r.Val.(fetched)
		n.met.fetches.WithLabelValues(string(f.src)).Inc()
		n.met.fetchBytes.WithLabelValues(string(f.src)).Add(float64(f.data.Len()))
		if f.src != chunk.SourceOrigin {
			n.met.fetchWireBytes.WithLabelValues(string(f.src)).Add(float64(f.wire))
		}
		n.met.fetchSeconds.Observe(time.Since(start).Seconds())
		return f.data, f.src, f.wire, nil
	case <-ctx.Done():
		return chunk.Verified{}, "", 0, ctx.Err()
	}
}

// flightContext is the context of a shared fetch: it outlives the caller that started it (others
// wait on it) but not the node.
func (n *Node) flightContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return n.scope.Detach(ctx, d)
}

func (n *Node) fetch(ctx context.Context, blob digest.Digest, c chunk.Chunk, fromOrigin func(context.Context) ([]byte, error), prog *chunk.Progress) (fetched, error) {
	n.mu.Lock()
	h := n.host
	lb := n.blobs[blob]
	n.mu.Unlock()
	if data, src := n.recent.get(c.CID); !data.IsZero() {
		return fetched{data: data, src: src}, nil
	}
	if fromOrigin == nil && lb != nil && lb.origin != nil {
		fromOrigin = func(ctx context.Context) ([]byte, error) { return lb.origin(ctx, c) }
	}
	if h == nil {
		return n.ownedFetch(ctx, h, blob, c, fromOrigin, false, false, causeNoNetwork)
	}
	// The fallback, after the holders or as a hedge against a slow last one (hedge): the
	// rendezvous owner fetches through for the cluster, else (or if it fails) the origin.
	fallback := func(ctx context.Context, hedge bool) (fetched, error) {
		cause := causeOwner
		if hedge {
			cause = causeOwnerHedge
		}
		// An owner that cannot be reached or fails (it left, it restarted, its connection
		// broke mid-answer, its origin fetch failed) is passed over for the next in
		// rendezvous order, once: every
		// host that saw it fail picks the same next owner, so the chunk still leaves the
		// origin about once rather than once per asker.
		var failed []peer.ID
		for len(failed) < maxOwnerTries {
			owner := n.rendezvous(blob, c.CID, failed...)
			if owner == n.id {
				break
			}
			req := Request{Flags: FlagFetchThrough, Blob: blob, CID: c.CID, Offset: c.Offset, Length: c.Length}
			err := n.dialMember(ctx, h, owner)
			cause = causeOwnerUnreachable
			if err == nil {
				cause = causeOwnerFailed
				var f fetched
				if f, err = n.throughOwner(ctx, h, owner, req); err == nil {
					return f, nil
				}
			}
			if ctx.Err() != nil {
				return fetched{}, err
			}
			var st *statusError
			if errors.As(err, &st) && st.st == StatusBusy {
				cause = causeOwnerBusy
				f, err := n.whileOwnerBusy(ctx, h, blob, c, owner, req, prog, err)
				if err == nil || ctx.Err() != nil {
					return f, err
				}
				if errors.As(err, &st) && st.st == StatusBusy {
					break
				}
			}
			n.log.Debug("fetch-through failed", "chunk", c.CID, "peer", owner, "err", err)
			if errors.As(err, &st) && st.st != StatusError {
				// It answered: it has not registered the blob or has no origin for it
				// (not found), or refuses this host (denied). The next owner is no likelier
				// to, and a dial to it costs a connection.
				break
			}
			failed = append(failed, owner)
		}
		return n.ownedFetch(ctx, h, blob, c, fromOrigin, false, len(failed) == 0, cause)
	}
	n.awaitRights(ctx, blob, c)
	f, err := n.fromHolders(ctx, h, blob, c, fallback, prog)
	if err != nil && ctx.Err() == nil {
		if lf, lerr := n.lastResort(ctx, h, blob, c, prog); lerr == nil {
			n.log.Info("chunk from a slow holder as a last resort, every other source having failed", "chunk", c.CID, "blob", blob, "err", err)
			return lf, nil
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return fetched{}, fmt.Errorf("fetch chunk %s of %s: %w", c.CID, blob, ctx.Err())
		}
		return fetched{}, err
	}
	if f.src == chunk.SourcePeer {
		n.recent.add(c.CID, f.data, f.frame, chunk.SourcePeer)
	}
	return f, nil
}

// lastResortTimeouts is how many RequestTimeouts a last-resort request (lastResort) may take.
const lastResortTimeouts = 3

// lastResort is the last try for c, once its holders, its owner and the origin have all failed:
// every connected holder of it, those banned for slowness alone (peerState.slowBan) included,
// one at a time, each given lastResortTimeouts × RequestTimeout. A seed that every reader's
// requests queue on answers late, past RequestTimeout, until readers ban it; without this, a
// chunk only it holds could not be had while the origin is down, however long the reader would
// wait.
func (n *Node) lastResort(ctx context.Context, h host.Host, blob digest.Digest, c chunk.Chunk, prog *chunk.Progress) (fetched, error) {
	n.mu.Lock()
	now := time.Now()
	cands := n.holdersWhereLocked(c.CID, func(ps *peerState) bool { return !ps.banned(now) || ps.slowBan })
	n.mu.Unlock()
	err := fmt.Errorf("fetch chunk %s of %s: no connected peer holds it: %w", c.CID, blob, ErrUnknownBlob)
	for _, p := range cands {
		req := Request{Blob: blob, CID: c.CID, Offset: c.Offset, Length: c.Length}
		var f fetched
		if f, err = n.request(ctx, h, p, req, lastResortTimeouts*n.cfg.RequestTimeout, prog); err == nil {
			n.met.lastResort.Inc()
			f.src = chunk.SourcePeer
			return f, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return fetched{}, err
}

// throughOwner asks owner to fetch req's chunk through for this host (FlagFetchThrough), within
// CoalesceTimeout; what it sends is kept in the recent buffer like any fetched chunk.
func (n *Node) throughOwner(ctx context.Context, h host.Host, owner peer.ID, req Request) (fetched, error) {
	f, err := n.request(ctx, h, owner, req, n.cfg.CoalesceTimeout, nil)
	if err != nil {
		return fetched{}, err
	}
	f.src = chunk.SourceCoalesced
	n.recent.add(req.CID, f.data, f.frame, f.src)
	return f, nil
}

// ownerBusyRounds bounds how often a fetch asks the holders and then the owner again while the
// owner answers busy (whileOwnerBusy) before this host goes to the origin itself.
const ownerBusyRounds = 6

// whileOwnerBusy gets c while its rendezvous owner answers busy: the owner holds the chunk and
// its upload slots stayed full, so the chunk is in the cluster, and the origin would serve a
// copy the cluster already has. This host asks the holders it knows (the owner and whoever it
// served are announcing the chunk), waits up to the slow threshold for a new one to announce
// it, asks the owner again, and so on, up to ownerBusyRounds times or until ctx (the shared
// fetch's lifetime) ends. It returns the last busy answer (busy, at first) if every round
// failed, or the owner's error if it failed otherwise.
func (n *Node) whileOwnerBusy(ctx context.Context, h host.Host, blob digest.Digest, c chunk.Chunk, owner peer.ID, req Request, prog *chunk.Progress, busy error) (fetched, error) {
	for range ownerBusyRounds {
		n.met.ownerBusy.Inc()
		f, err := n.fromHolders(ctx, h, blob, c, nil, prog)
		if err == nil || ctx.Err() != nil {
			return f, err
		}
		if more := n.awaitNewHolder(ctx, c.CID, n.Lookup(c.CID)); len(more) > 0 {
			continue // ask the holders again, the new one among them
		}
		if ctx.Err() != nil {
			return fetched{}, ctx.Err()
		}
		if f, err = n.throughOwner(ctx, h, owner, req); err == nil {
			return f, nil
		}
		var st *statusError
		if ctx.Err() != nil || !errors.As(err, &st) || st.st != StatusBusy {
			return fetched{}, err
		}
		busy = err
	}
	return fetched{}, busy
}

// ownedFetch gets a chunk this host is responsible for: from a holder if one appeared, else from
// the origin. It never asks another host to fetch through, so fetch-through requests cannot form
// a cycle. store: write the result through ChunkWriter (a fetch-through for a peer).
//
// skipHolders: the caller has just asked them (a hedge or a fallback): go to the origin. cause
// is why, counted if the origin is asked (shoal_p2p_origin_fetches_total).
func (n *Node) ownedFetch(ctx context.Context, h host.Host, blob digest.Digest, c chunk.Chunk, fromOrigin func(context.Context) ([]byte, error), store, skipHolders bool, cause originCause) (fetched, error) {
	ch := n.owned.DoChan(c.CID.KeyString(), func() (any, error) {
		fctx, cancel := n.flightContext(ctx, n.cfg.CoalesceTimeout+time.Duration(n.cfg.MaxAttempts)*n.cfg.RequestTimeout)
		defer cancel()
		if data, src := n.recent.get(c.CID); !data.IsZero() { // a flight that just ended
			return fetched{data: data, src: src}, nil
		}
		// A fetch-through for a peer may have stored it since the caller looked.
		if n.local != nil {
			if held, err := n.local.HasCID(c.CID); err == nil && held {
				if data, err := n.local.ReadChunk(fctx, c.CID); err == nil {
					return fetched{data: data, src: chunk.SourceLocal}, nil
				}
			}
		}
		if h != nil && !skipHolders {
			if f, err := n.fromHolders(fctx, h, blob, c, nil, nil); err == nil {
				return f, nil
			}
		}
		if fromOrigin == nil {
			return nil, fmt.Errorf("fetch chunk %s of %s: no peer holds it and no origin: %w", c.CID, blob, ErrUnknownBlob)
		}
		n.met.originFetches.WithLabelValues(string(cause)).Inc()
		raw, err := fromOrigin(fctx)
		if err != nil {
			return nil, fmt.Errorf("fetch chunk %s of %s from origin: %w", c.CID, blob, err)
		}
		data, err := chunk.Verify(c.CID, raw) // the one hash of a chunk from the origin
		if err != nil {
			return nil, fmt.Errorf("chunk of %s from origin: %w", blob, err)
		}
		n.recent.add(c.CID, data, nil, chunk.SourceOrigin)
		if w, ok := n.local.(ChunkWriter); ok && store {
			if err := w.PutChunk(fctx, blob, c, data); err != nil {
				n.log.Warn("storing fetched-through chunk", "chunk", c.CID, "blob", blob, "err", err)
			}
		}
		return fetched{data: data, src: chunk.SourceOrigin}, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return fetched{}, r.Err
		}
		return r.Val.(fetched), nil
	case <-ctx.Done():
		return fetched{}, ctx.Err()
	}
}

// rendezvous picks the host that fetches c from the origin for the cluster: the highest
// hash(CID, peer) over this host and the connected peers that can fetch blob. Every host with
// the same view picks the same one, with no coordination; a host joining or leaving moves only
// the chunks it wins or won.
//
// With membership (Config.Membership) the candidates are also every member that says it can
// fetch from an origin, connected or not: hosts that see different peers then still agree, as
// long as their member lists agree, and the asker connects to the owner on demand.
//
// skip are owners that have just failed this host: the next in order is picked instead.
func (n *Node) rendezvous(blob digest.Digest, c cid.Cid, skip ...peer.ID) peer.ID {
	now := time.Now()
	n.mu.Lock()
	cands := n.fetchersLocked(blob, now)
	for p, m := range n.members {
		if ps := n.peers[p]; m.canFetch && (ps == nil || !ps.banned(now)) {
			cands = append(cands, p)
		}
	}
	n.mu.Unlock()
	best, bestScore := n.id, rendezvousScore(c, n.id)
	for _, p := range cands {
		if slices.Contains(skip, p) {
			continue
		}
		if s := rendezvousScore(c, p); s > bestScore {
			best, bestScore = p, s
		}
	}
	return best
}

// dialMember connects to p (a member this host is not connected to: a rendezvous owner chosen
// through membership) within dialTimeout, so that an owner that has left but is still listed
// costs a dial, not CoalesceTimeout.
func (n *Node) dialMember(ctx context.Context, h host.Host, p peer.ID) error {
	if h.Network().Connectedness(p) == network.Connected {
		return nil
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if err := h.Connect(dctx, peer.AddrInfo{ID: p}); err != nil {
		n.met.memberDials.WithLabelValues("failed").Inc()
		return fmt.Errorf("dialling rendezvous owner %s: %w", p, err)
	}
	n.met.memberDials.WithLabelValues("ok").Inc()
	return nil
}

func rendezvousScore(c cid.Cid, p peer.ID) uint64 {
	h := sha256.New()
	h.Write(c.Bytes())
	h.Write([]byte(p))
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// fromHolders asks the holders of c, best first (peers in good standing before demoted ones).
// A request is hedged to the next holder once it runs past min(its peer's p90, the slow
// threshold), and each failure moves on to the next, up to MaxAttempts peers. After the last
// holder, fallback (if not nil) runs: when they have all failed, or as a hedge once the last one
// has run past the slow threshold (HedgeFactor × the cluster's p99), so a reader never waits on
// one bad peer for much longer than the cluster normally takes. The first success wins and the
// others are cancelled.
//
// prog, if not nil, is handed the sub-blocks a V4 holder sends first (FetchProgressive).
func (n *Node) fromHolders(ctx context.Context, h host.Host, blob digest.Digest, c chunk.Chunk, fallback func(ctx context.Context, hedge bool) (fetched, error), prog *chunk.Progress) (fetched, error) {
	now := time.Now()
	n.mu.Lock()
	holders := n.holdersLocked(c.CID, now)
	rand.Shuffle(len(holders), func(i, j int) { holders[i], holders[j] = holders[j], holders[i] })
	scores := make(map[peer.ID]time.Duration, len(holders))
	for _, p := range holders {
		scores[p] = n.peers[p].score(now)
	}
	n.mu.Unlock()
	if len(holders) == 0 {
		if fallback == nil {
			return fetched{}, errNoHolders
		}
		return fallback(ctx, false)
	}
	sort.SliceStable(holders, func(i, j int) bool { return scores[holders[i]] < scores[holders[j]] })
	holders = holders[:min(len(holders), n.cfg.MaxAttempts)]

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		f       fetched
		err     error
		refused peer.ID // answered busy to a flagged request (super-seeding)
		wait    bool    // ... to FlagCanWait: it has just served another host
	}
	req := Request{Blob: blob, CID: c.CID, Offset: c.Offset, Length: c.Length}
	results := make(chan result, len(holders)+2)
	next, inflight := 0, 0
	fellBack, reasked, waited, waitRefused := false, false, false, false
	var refusers []peer.ID // holders that refused a repeat: the least loaded is asked again if all others fail
	hedge := time.NewTimer(time.Hour)
	defer hedge.Stop()
	ask := func(p peer.ID, flags byte) {
		req := req
		req.Flags |= flags
		go func() {
			f, err := n.request(ctx, h, p, req, n.cfg.RequestTimeout, prog)
			var st *statusError
			f.src = chunk.SourcePeer
			r := result{f: f, err: err}
			if flags != 0 && errors.As(err, &st) && st.st == StatusBusy {
				r.refused, r.wait = p, flags&FlagCanWait != 0
			}
			results <- r
		}()
	}
	var launch func()
	launch = func() {
		switch {
		case next < len(holders):
			p := holders[next]
			next++
			inflight++
			// Others to ask after it, or a request still running elsewhere (this is a hedge):
			// it may refuse a repeat. Else it may refuse a chunk it has just sent another host,
			// and this one waits for that host's announcement.
			var flags byte
			switch {
			case next < len(holders) || inflight > 1:
				flags = FlagHaveOthers
			case !waited:
				flags = FlagCanWait
			}
			ask(p, flags)
			hedge.Reset(n.hedgeDelay(p, next < len(holders)))
		case waitRefused && !waited:
			// A holder has just sent the chunk to another host: wait (up to the slow threshold)
			// for that host to announce it, and ask it (without a flag if it is the last: it is
			// not the seed, and may serve a repeat).
			waited = true
			if more := n.awaitNewHolder(ctx, c.CID, holders); len(more) > 0 {
				holders = append(holders, more...)
			}
			launch()
		case len(refusers) > 0 && !reasked:
			// Every holder failed or refused a repeat: ask the least loaded that refused (a
			// recent recipient rather than the seed), without the flag, so super-seeding never
			// makes a chunk unavailable.
			reasked = true
			inflight++
			p := n.bestOf(refusers)
			ask(p, 0)
			hedge.Reset(n.hedgeDelay(p, false))
		default:
			fellBack = true
			inflight++
			go func() {
				f, err := fallback(ctx, false)
				results <- result{f: f, err: err}
			}()
		}
	}
	canLaunch := func() bool {
		return next < len(holders) || waitRefused && !waited || len(refusers) > 0 && !reasked || fallback != nil && !fellBack
	}
	launch()
	var errs []error
	for inflight > 0 {
		select {
		case r := <-results:
			inflight--
			if r.err == nil {
				return r.f, nil
			}
			if r.refused != "" {
				refusers = append(refusers, r.refused)
			}
			waitRefused = waitRefused || r.wait
			errs = append(errs, r.err)
			if inflight == 0 && canLaunch() && ctx.Err() == nil {
				launch()
			}
		case <-hedge.C:
			// A hedge goes to the next holder or to the fallback, never back to a refuser.
			if next < len(holders) || fallback != nil && !fellBack {
				if next == len(holders) {
					n.met.hedgeFallback.Inc()
				} else {
					n.met.hedges.Inc()
				}
				if next == len(holders) {
					fellBack = true
					inflight++
					go func() {
						f, err := fallback(ctx, true)
						results <- result{f: f, err: err}
					}()
				} else {
					launch()
				}
			}
		}
	}
	return fetched{}, errors.Join(errs...)
}

// hedgeDelay is how long a request to p may run before the next candidate is asked too: another
// holder (more: true) after min(p's p90, the slow threshold); the fallback (the rendezvous owner
// or the origin, which cost more than a peer) after the slow threshold. A demoted peer is hedged
// at once, or after MinHedgeDelay.
func (n *Node) hedgeDelay(p peer.ID, more bool) time.Duration {
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := n.peerLocked(p)
	slow := n.queueScaled(n.slowAfterLocked(now), holderQueue(ps.inflight, ps.load, now.Sub(ps.loadAt)))
	if ps.demoted {
		return n.cfg.MinHedgeDelay
	}
	if !more {
		return slow
	}
	d, ok := ps.quantile(0.9, 8)
	if !ok {
		d = n.cfg.HedgeDelay
	}
	return min(max(d, n.cfg.MinHedgeDelay), slow)
}

// isBadData reports errors that show a peer sent wrong or truncated bytes: strikes towards a ban.
func isBadData(err error) bool {
	return errors.Is(err, chunk.ErrCorrupt) || errors.Is(err, ErrMalformed) || errors.Is(err, io.ErrUnexpectedEOF)
}

// request asks p for one chunk and returns its verified bytes (with the frame they came in, and
// what they took on the wire), accounting the outcome to p. A zstd frame is decoded capped at
// the chunk's length: a bomb, a truncated frame or a frame of the wrong codec fails like wrong
// bytes (chunk.ErrCorrupt), a strike against p.
func (n *Node) request(parent context.Context, h host.Host, p peer.ID, req Request, timeout time.Duration, prog *chunk.Progress) (fetched, error) {
	start := time.Now()
	f, err := n.requestOnce(parent, h, p, req, timeout, prog)
	// A holder that has not yet seen this host's pull rights (the blob was registered a moment
	// ago, and the presentation its masked presence started is still under way) refuses: present
	// them now and ask once more, rather than go to the origin for every chunk until the grant
	// arrives.
	if isDenied(err) && parent.Err() == nil && n.presentFor(p, req.Blob, start) {
		return n.requestOnce(parent, h, p, req, timeout, prog)
	}
	return f, err
}

func isDenied(err error) bool {
	var se *statusError
	return errors.As(err, &se) && se.st == StatusDenied
}

func (n *Node) requestOnce(parent context.Context, h host.Host, p peer.ID, req Request, timeout time.Duration, prog *chunk.Progress) (fetched, error) {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.inflight++
	ps.requestsOut++
	n.mu.Unlock()
	start := time.Now()
	codec, stored, load, wire, err := n.exchangeProgressive(ctx, h, p, req, prog)
	var data chunk.Verified
	if err == nil {
		// The one decode (capped at the length asked for) and the one hash of a chunk from a peer.
		data, err = zchunk.DecodeVerified(chunk.Chunk{CID: req.CID, Length: req.Length, Codec: codec}, stored)
	}
	now := time.Now()
	elapsed := now.Sub(start)
	canceled := err != nil && parent.Err() != nil
	// The stream's deadline is ctx's, and yamux's timer may fire before ctx's: either is a timeout.
	timedOut := err != nil && !canceled && (ctx.Err() != nil || isTimeout(err))
	throughOrigin := req.Flags&FlagFetchThrough != 0 // an origin fetch is not the peer's latency

	n.mu.Lock()
	// A holder queueing uploads for the swarm is busy, not slow: its threshold grows with the
	// queue it reported, so load never demotes a seed.
	slow := elapsed > n.queueScaled(n.slowAfterLocked(now), max(load, ps.inflight))
	demoted := ps.demoted
	if load >= 0 {
		ps.load, ps.loadAt = load, now
	}
	ps.inflight--
	switch {
	case err == nil:
		ps.stalls = 0
		ps.bytesDown += data.Len()
		if !throughOrigin {
			ps.addLatency(elapsed)
		}
	case canceled:
		// Lost to a hedge or the caller left: a censored sample that keeps a slow peer's p50 up.
		ps.addLatency(elapsed)
	default:
		ps.errors++
		if timedOut {
			ps.addLatency(elapsed)
		}
	}
	n.mu.Unlock()
	// Standing: what a reader would have noticed of this peer.
	var st *statusError
	switch {
	case throughOrigin || errors.As(err, &st):
		// A fetch-through waits on an origin; a status (busy, not found) came back fast.
	case err == nil && slow:
		n.record(p, outcomeSlow)
	case err == nil:
		n.record(p, outcomeGood)
	case canceled && (slow || demoted) && !n.scope.Closed():
		// Lost a race it had no business losing: it ran past the slow threshold, or it is
		// demoted (hedged at once) and still slower than the fallback. A demoted peer that
		// answers faster than the owner or the origin wins and climbs back.
		n.record(p, outcomeBad)
	case timedOut:
		n.record(p, outcomeBad)
	}
	if err == nil {
		f := fetched{data: data, wire: wire}
		if codec == chunk.CodecZstd {
			f.frame = stored
		}
		return f, nil
	}
	err = fmt.Errorf("chunk %s from %s: %w", req.CID, p, err)
	if canceled {
		return fetched{}, err
	}
	switch {
	case errors.Is(err, chunk.ErrCorrupt):
		n.met.peerFailures.WithLabelValues("corrupt").Inc()
	case isBadData(err):
		n.met.peerFailures.WithLabelValues("truncated").Inc()
	default:
		n.met.peerFailures.WithLabelValues("error").Inc()
	}
	if isBadData(err) {
		n.strike(p, err)
	}
	return fetched{}, err
}

// exchange runs one request/response on a new stream, in the newest chunk protocol p speaks
// (V3, V2, V1; load is p's uploads in progress, -1 in V1), and returns the chunk's stored bytes
// and their codec, not decoded (chunk.CodecNone before V3). The stream's deadline is ctx's, and
// ctx ending resets it.
func (n *Node) exchange(ctx context.Context, h host.Host, p peer.ID, req Request) (codec chunk.Codec, stored []byte, load int, err error) {
	codec, stored, load, _, err = n.exchangeProgressive(ctx, h, p, req, nil)
	return codec, stored, load, err
}

// exchangeProgressive is exchange that, in V4 and with prog's sub-block digests, asks for prog's
// wanted sub-blocks first and hands each to prog as it arrives (prog verifies it: a mismatch
// ends the exchange with chunk.ErrCorrupt). wire is what the chunk took on the network.
func (n *Node) exchangeProgressive(ctx context.Context, h host.Host, p peer.ID, req Request, prog *chunk.Progress) (codec chunk.Codec, stored []byte, load int, wire int64, err error) {
	protos := slices.Clone(chunkProtocols[:n.chunkVersion()])
	slices.Reverse(protos)
	s, err := h.NewStream(ctx, p, protos...)
	if err != nil {
		return "", nil, -1, 0, err
	}
	ver := slices.Index(chunkProtocols, s.Protocol()) + 1
	if ver < 2 {
		req.Flags &^= FlagHaveOthers
	}
	var firstBytes int64
	var onSub func(int, []byte) error
	if first, count := prog.Wanted(); ver >= 4 && count > 0 {
		req.SubSize, req.First, req.Count = prog.SubBlockSize(), first, count
		onSub = func(i int, data []byte) error {
			if i < req.First || i >= req.First+req.Count {
				return nil // verified with the whole chunk, against its CID
			}
			firstBytes += int64(len(data))
			return prog.PutSubBlock(i, data)
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	var buf []byte
	if ver >= 4 {
		buf, err = AppendRequestV4(nil, req)
	} else {
		buf, err = AppendRequest(nil, req)
	}
	if err != nil {
		_ = s.Reset()
		return "", nil, -1, 0, err
	}
	if _, err := s.Write(buf); err != nil {
		_ = s.Reset()
		return "", nil, -1, 0, err
	}
	_ = s.CloseWrite()
	r := bufio.NewReaderSize(s, 32<<10)
	var st Status
	var msg string
	load = -1
	switch {
	case ver >= 4:
		st, load, codec, stored, msg, err = ReadResponseV4(r, req, onSub)
	case ver == 3:
		st, load, codec, stored, msg, err = ReadResponseV3(r, req.Length)
	case ver == 2:
		st, load, stored, msg, err = ReadResponseV2(r, req.Length)
	default:
		st, stored, msg, err = ReadResponse(r, req.Length)
	}
	if err != nil {
		_ = s.Reset()
		if ctx.Err() != nil {
			return "", nil, -1, 0, ctx.Err()
		}
		return "", nil, -1, 0, err
	}
	_ = s.Close()
	if st != StatusOK {
		return "", nil, load, 0, &statusError{st, msg}
	}
	wire = int64(len(stored))
	if codec != chunk.CodecNone {
		wire += firstBytes // the sub-blocks sent raw before the frame
	}
	return codec, stored, load, wire, nil
}
