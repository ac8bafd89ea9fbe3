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
	"sort"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

var errNoHolders = errors.New("no peer holds the chunk")

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
}

// Fetch returns the verified bytes of chunk c of blob. It asks, in order: the peers whose
// presence maps hold the chunk (fastest first, hedged to a second holder past the first's p90);
// the peer the cluster's rendezvous hash picks to fetch the chunk from the origin for everyone
// (fetch-through); and fromOrigin itself (nil: the OriginFunc given to RegisterBlob). Concurrent
// calls for one CID share one fetch. The returned slice may be shared with other callers: do not
// modify it. The caller stores the data and then calls Announce.
func (n *Node) Fetch(ctx context.Context, blob digest.Digest, c chunk.Chunk, fromOrigin func(context.Context) ([]byte, error)) (chunk.Verified, chunk.Source, error) {
	if c.Length <= 0 || c.Length > MaxChunkSize {
		return chunk.Verified{}, "", fmt.Errorf("fetch chunk %s of %s: length %d out of (0, %d]", c.CID, blob, c.Length, MaxChunkSize)
	}
	start := time.Now()
	ch := n.sf.DoChan(c.CID.KeyString(), func() (any, error) {
		fctx, cancel := n.flightContext(ctx, 2*n.cfg.CoalesceTimeout+time.Duration(n.cfg.MaxAttempts)*n.cfg.RequestTimeout)
		defer cancel()
		return n.fetch(fctx, blob, c, fromOrigin)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			n.met.fetches.WithLabelValues("failed").Inc()
			return chunk.Verified{}, "", r.Err
		}
		f := r.Val.(fetched)
		n.met.fetches.WithLabelValues(string(f.src)).Inc()
		n.met.fetchBytes.WithLabelValues(string(f.src)).Add(float64(f.data.Len()))
		n.met.fetchSeconds.Observe(time.Since(start).Seconds())
		return f.data, f.src, nil
	case <-ctx.Done():
		return chunk.Verified{}, "", ctx.Err()
	}
}

// flightContext is the context of a shared fetch: it outlives the caller that started it (others
// wait on it) but not the node.
func (n *Node) flightContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return n.scope.Detach(ctx, d)
}

func (n *Node) fetch(ctx context.Context, blob digest.Digest, c chunk.Chunk, fromOrigin func(context.Context) ([]byte, error)) (fetched, error) {
	n.mu.Lock()
	h := n.host
	lb := n.blobs[blob]
	n.mu.Unlock()
	if data, src := n.recent.get(c.CID); !data.IsZero() {
		return fetched{data, src}, nil
	}
	if fromOrigin == nil && lb != nil && lb.origin != nil {
		fromOrigin = func(ctx context.Context) ([]byte, error) { return lb.origin(ctx, c) }
	}
	if h != nil {
		data, err := n.fromHolders(ctx, h, blob, c)
		if err == nil {
			n.recent.add(c.CID, data, chunk.SourcePeer)
			return fetched{data, chunk.SourcePeer}, nil
		}
		if ctx.Err() != nil {
			return fetched{}, fmt.Errorf("fetch chunk %s of %s: %w", c.CID, blob, ctx.Err())
		}
		if owner := n.rendezvous(blob, c.CID); owner != n.id {
			req := Request{Flags: FlagFetchThrough, Blob: blob, CID: c.CID, Offset: c.Offset, Length: c.Length}
			data, err := n.request(ctx, h, owner, req, n.cfg.CoalesceTimeout)
			if err == nil {
				n.recent.add(c.CID, data, chunk.SourceCoalesced)
				return fetched{data, chunk.SourceCoalesced}, nil
			}
			n.log.Debug("fetch-through failed, going to the origin", "chunk", c.CID, "peer", owner, "err", err)
		}
	}
	return n.ownedFetch(ctx, h, blob, c, fromOrigin, false)
}

// ownedFetch gets a chunk this host is responsible for: from a holder if one appeared, else from
// the origin. It never asks another host to fetch through, so fetch-through requests cannot form
// a cycle. store: write the result through ChunkWriter (a fetch-through for a peer).
func (n *Node) ownedFetch(ctx context.Context, h host.Host, blob digest.Digest, c chunk.Chunk, fromOrigin func(context.Context) ([]byte, error), store bool) (fetched, error) {
	ch := n.owned.DoChan(c.CID.KeyString(), func() (any, error) {
		fctx, cancel := n.flightContext(ctx, n.cfg.CoalesceTimeout+time.Duration(n.cfg.MaxAttempts)*n.cfg.RequestTimeout)
		defer cancel()
		if data, src := n.recent.get(c.CID); !data.IsZero() { // a flight that just ended
			return fetched{data, src}, nil
		}
		if h != nil {
			if data, err := n.fromHolders(fctx, h, blob, c); err == nil {
				return fetched{data, chunk.SourcePeer}, nil
			}
		}
		if fromOrigin == nil {
			return nil, fmt.Errorf("fetch chunk %s of %s: no peer holds it and no origin: %w", c.CID, blob, ErrUnknownBlob)
		}
		raw, err := fromOrigin(fctx)
		if err != nil {
			return nil, fmt.Errorf("fetch chunk %s of %s from origin: %w", c.CID, blob, err)
		}
		data, err := chunk.Verify(c.CID, raw) // the one hash of a chunk from the origin
		if err != nil {
			return nil, fmt.Errorf("chunk of %s from origin: %w", blob, err)
		}
		n.recent.add(c.CID, data, chunk.SourceOrigin)
		if w, ok := n.local.(ChunkWriter); ok && store {
			if err := w.PutChunk(fctx, blob, c, data); err != nil {
				n.log.Warn("storing fetched-through chunk", "chunk", c.CID, "blob", blob, "err", err)
			}
		}
		return fetched{data, chunk.SourceOrigin}, nil
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
func (n *Node) rendezvous(blob digest.Digest, c cid.Cid) peer.ID {
	n.mu.Lock()
	cands := n.fetchersLocked(blob, time.Now())
	n.mu.Unlock()
	best, bestScore := n.id, rendezvousScore(c, n.id)
	for _, p := range cands {
		if s := rendezvousScore(c, p); s > bestScore {
			best, bestScore = p, s
		}
	}
	return best
}

func rendezvousScore(c cid.Cid, p peer.ID) uint64 {
	h := sha256.New()
	h.Write(c.Bytes())
	h.Write([]byte(p))
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// fromHolders asks the holders of c, best first; each request that runs past its peer's p90 is
// hedged to the next holder, and each failure moves on to the next, up to MaxAttempts peers.
func (n *Node) fromHolders(ctx context.Context, h host.Host, blob digest.Digest, c chunk.Chunk) (chunk.Verified, error) {
	n.mu.Lock()
	holders := n.holdersLocked(c.CID, time.Now())
	rand.Shuffle(len(holders), func(i, j int) { holders[i], holders[j] = holders[j], holders[i] })
	scores := make(map[peer.ID]time.Duration, len(holders))
	for _, p := range holders {
		scores[p] = n.peers[p].score()
	}
	n.mu.Unlock()
	if len(holders) == 0 {
		return chunk.Verified{}, errNoHolders
	}
	sort.SliceStable(holders, func(i, j int) bool { return scores[holders[i]] < scores[holders[j]] })
	holders = holders[:min(len(holders), n.cfg.MaxAttempts)]

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		data chunk.Verified
		err  error
	}
	req := Request{Blob: blob, CID: c.CID, Offset: c.Offset, Length: c.Length}
	results := make(chan result, len(holders))
	next, inflight := 0, 0
	hedge := time.NewTimer(time.Hour)
	defer hedge.Stop()
	launch := func() {
		p := holders[next]
		next++
		inflight++
		go func() {
			data, err := n.request(ctx, h, p, req, n.cfg.RequestTimeout)
			results <- result{data, err}
		}()
		hedge.Reset(n.hedgeDelay(p))
	}
	launch()
	var errs []error
	for inflight > 0 {
		select {
		case r := <-results:
			inflight--
			if r.err == nil {
				return r.data, nil
			}
			errs = append(errs, r.err)
			if inflight == 0 && next < len(holders) && ctx.Err() == nil {
				launch()
			}
		case <-hedge.C:
			if next < len(holders) {
				n.met.hedges.Inc()
				launch()
			}
		}
	}
	return chunk.Verified{}, errors.Join(errs...)
}

// hedgeDelay is how long a request to p may run before a second holder is asked too.
func (n *Node) hedgeDelay(p peer.ID) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	d, ok := n.peerLocked(p).quantile(0.9, 8)
	if !ok {
		return n.cfg.HedgeDelay
	}
	return min(max(d, n.cfg.MinHedgeDelay), n.cfg.RequestTimeout)
}

// isBadData reports errors that show a peer sent wrong or truncated bytes: strikes towards a ban.
func isBadData(err error) bool {
	return errors.Is(err, chunk.ErrCorrupt) || errors.Is(err, ErrMalformed) || errors.Is(err, io.ErrUnexpectedEOF)
}

// request asks p for one chunk and returns its verified bytes, accounting the outcome to p.
func (n *Node) request(parent context.Context, h host.Host, p peer.ID, req Request, timeout time.Duration) (chunk.Verified, error) {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.inflight++
	ps.requestsOut++
	n.mu.Unlock()
	start := time.Now()
	raw, err := n.exchange(ctx, h, p, req)
	var data chunk.Verified
	if err == nil {
		data, err = chunk.Verify(req.CID, raw) // the one hash of a chunk from a peer
	}
	elapsed := time.Since(start)
	canceled := err != nil && parent.Err() != nil

	n.mu.Lock()
	ps.inflight--
	switch {
	case err == nil:
		ps.stalls = 0
		ps.bytesDown += data.Len()
		if req.Flags&FlagFetchThrough == 0 { // an origin fetch is not the peer's latency
			ps.addLatency(elapsed)
		}
	case canceled:
		// Lost to a hedge or the caller left: a censored sample that keeps a slow peer's p50 up.
		ps.addLatency(elapsed)
	default:
		ps.errors++
		if ctx.Err() != nil {
			ps.addLatency(elapsed)
		}
	}
	n.mu.Unlock()
	if err == nil {
		return data, nil
	}
	err = fmt.Errorf("chunk %s from %s: %w", req.CID, p, err)
	if canceled {
		return chunk.Verified{}, err
	}
	switch {
	case errors.Is(err, chunk.ErrCorrupt):
		n.met.peerFailures.WithLabelValues("corrupt").Inc()
	case isBadData(err):
		n.met.peerFailures.WithLabelValues("truncated").Inc()
	default:
		n.met.peerFailures.WithLabelValues("error").Inc()
	}
	switch {
	case isBadData(err):
		n.strike(p, err)
	case ctx.Err() != nil && req.Flags&FlagFetchThrough == 0:
		// Our own deadline with the caller still waiting: the peer claimed the chunk and stalled.
		// (A fetch-through may wait on a slow origin: not the peer's fault.)
		n.stalled(p)
	}
	return chunk.Verified{}, err
}

// exchange runs one request/response on a new stream. The stream's deadline is ctx's, and ctx
// ending resets it.
func (n *Node) exchange(ctx context.Context, h host.Host, p peer.ID, req Request) ([]byte, error) {
	s, err := h.NewStream(ctx, p, ChunkProtocol)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	buf, err := AppendRequest(nil, req)
	if err != nil {
		_ = s.Reset()
		return nil, err
	}
	if _, err := s.Write(buf); err != nil {
		_ = s.Reset()
		return nil, err
	}
	_ = s.CloseWrite()
	st, data, msg, err := ReadResponse(bufio.NewReaderSize(s, 32<<10), req.Length)
	if err != nil {
		_ = s.Reset()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	_ = s.Close()
	if st != StatusOK {
		return nil, &statusError{st, msg}
	}
	return data, nil
}
