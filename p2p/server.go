package p2p

import (
	"bufio"
	"context"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-p2p/shoal/chunk"
)

// floodWindow is the window over which FloodBanAfter refusals ban a peer.
const floodWindow = 10 * time.Second

// handleChunk answers one chunk request. Every stream has deadlines; a peer over its request
// rate or concurrency gets a busy answer at once (it asks another holder), and a peer that keeps
// going over its rate is banned.
func (n *Node) handleChunk(s network.Stream) {
	done, ok := n.scope.Track()
	if !ok {
		_ = s.Reset()
		return
	}
	defer done()
	p := s.Conn().RemotePeer()
	_ = s.SetDeadline(time.Now().Add(n.cfg.RequestTimeout))
	st, data, msg := n.serve(s, p)
	if st == 0xff { // unreadable request: nothing to answer
		_ = s.Reset()
		return
	}
	n.met.servedRequests.WithLabelValues(st.String()).Inc()
	n.mu.Lock()
	ps := n.peerLocked(p)
	up := ps.upLimit
	rctx := n.scope.Context()
	n.mu.Unlock()
	if up != nil && len(data) > 0 {
		if err := up.WaitN(rctx, len(data)); err != nil {
			_ = s.Reset()
			return
		}
	}
	_ = s.SetWriteDeadline(time.Now().Add(n.cfg.RequestTimeout))
	hdr := AppendResponseHeader(nil, st, len(data), msg)
	if _, err := s.Write(hdr); err != nil {
		_ = s.Reset()
		return
	}
	if len(data) > 0 {
		if _, err := s.Write(data); err != nil {
			_ = s.Reset()
			return
		}
		n.met.servedBytes.Add(float64(len(data)))
		n.mu.Lock()
		ps.bytesUp += int64(len(data))
		n.mu.Unlock()
	}
	_ = s.Close()
}

// serve decides the answer to a request on s; status 0xff means the request was unreadable.
func (n *Node) serve(s network.Stream, p peer.ID) (Status, []byte, string) {
	if !n.allowed(p) {
		return StatusRefused, nil, "not allowed"
	}
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.requestsIn++
	ok := ps.reqLimit.Allow()
	flood := false
	if !ok {
		// Refusals count towards a ban within a window, so a busy but honest peer that brushes
		// the limit now and then is never banned.
		if now := time.Now(); now.Sub(ps.refusedSince) > floodWindow {
			ps.refused, ps.refusedSince = 0, now
		}
		ps.refused++
		flood = ps.refused >= n.cfg.FloodBanAfter
	}
	rctx := n.scope.Context()
	n.mu.Unlock()
	if !ok {
		if flood {
			n.ban(p, "request flood")
			return StatusRefused, nil, "banned"
		}
		return StatusBusy, nil, "over request rate"
	}
	select {
	case ps.sem <- struct{}{}:
		defer func() { <-ps.sem }()
	default:
		return StatusBusy, nil, "over concurrency"
	}
	req, err := ReadRequest(bufio.NewReaderSize(s, 512))
	if err != nil {
		n.log.Debug("bad chunk request", "peer", p, "err", err)
		return 0xff, nil, ""
	}
	held := false
	if n.local != nil {
		var err error
		if held, err = n.local.HasCID(req.CID); err != nil {
			n.log.Warn("local store lookup failed", "chunk", req.CID, "peer", p, "err", err)
			return StatusError, nil, "store lookup failed"
		}
	}
	if held {
		ctx, cancel := context.WithTimeout(rctx, n.cfg.RequestTimeout)
		defer cancel()
		data, err := n.local.ReadChunk(ctx, req.CID)
		if err == nil {
			return StatusOK, data.Bytes(), ""
		}
		// Evicted between the check and the read: fall through.
	}
	if data, _ := n.recent.get(req.CID); !data.IsZero() {
		return StatusOK, data.Bytes(), ""
	}
	if req.Flags&FlagFetchThrough == 0 {
		return StatusNotFound, nil, ""
	}
	// Fetch-through: this host was picked to fetch the chunk from its origin for the cluster.
	n.mu.Lock()
	lb := n.blobs[req.Blob]
	h := n.host
	n.mu.Unlock()
	if lb == nil || lb.origin == nil {
		return StatusNotFound, nil, "blob not registered here"
	}
	i := chunkIndex(lb.m, chunk.Chunk{Offset: req.Offset, CID: req.CID})
	if i < 0 {
		return StatusNotFound, nil, "chunk not in the blob's manifest"
	}
	c := lb.m.Chunks[i]
	_ = s.SetDeadline(time.Now().Add(n.cfg.CoalesceTimeout))
	ctx, cancel := context.WithTimeout(rctx, n.cfg.CoalesceTimeout)
	defer cancel()
	f, err := n.ownedFetch(ctx, h, req.Blob, c, func(ctx context.Context) ([]byte, error) { return lb.origin(ctx, c) }, true, false)
	if err != nil {
		return StatusError, nil, err.Error()
	}
	return StatusOK, f.data.Bytes(), ""
}
