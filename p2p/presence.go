package p2p

import (
	"bufio"
	"context"
	"errors"
	"io"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"
	"github.com/opencontainers/go-digest"
)

// maxForeignBlobs bounds the presence maps kept per peer for blobs this host has not registered,
// so a peer cannot fill our memory with maps of made-up blobs.
const maxForeignBlobs = 256

const presenceWriteTimeout = 10 * time.Second

// markDirtyLocked queues blob's current state for every connected peer; n.mu must be held.
func (n *Node) markDirtyLocked(blob digest.Digest) {
	for _, ps := range n.peers {
		if ps.connected {
			ps.dirty[blob] = true
			wake(ps.wake)
		}
	}
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (n *Node) onConnected(_ network.Network, c network.Conn) {
	p := c.RemotePeer()
	n.mu.Lock()
	ps := n.peerLocked(p)
	ps.connected = true
	if len(ps.found) == 0 {
		switch {
		case c.Stat().Direction == network.DirInbound:
			ps.found[FoundInbound] = true
		case n.cfg.DHT: // the DHT is the only dialer of peers no mechanism reported
			ps.found[FoundDHT] = true
		}
	}
	for b := range n.blobs {
		ps.dirty[b] = true
	}
	start := !ps.sending
	ps.sending = true
	n.mu.Unlock()
	wake(ps.wake)
	if start && !n.goFn(func() { n.sendPresence(ps) }) {
		n.mu.Lock()
		ps.sending = false
		n.mu.Unlock()
	}
}

func (n *Node) onDisconnected(nw network.Network, c network.Conn) {
	p := c.RemotePeer()
	if nw.Connectedness(p) == network.Connected {
		return
	}
	n.mu.Lock()
	if ps := n.peers[p]; ps != nil {
		ps.connected = false
		clear(ps.blobs) // a peer that left holds nothing for us
		wake(ps.wake)
	}
	for _, c := range n.lost {
		wake(c)
	}
	n.mu.Unlock()
}

// snapshotLocked is the frame that tells a peer this host's state for blob.
func (n *Node) snapshotLocked(blob digest.Digest) Presence {
	pr := Presence{Seq: n.seq.Add(1), Blob: blob}
	lb := n.blobs[blob]
	if lb == nil {
		pr.Flags = PresenceGone
		return pr
	}
	if lb.origin != nil {
		pr.Flags |= PresenceCanFetch
	}
	pr.NChunks = len(lb.m.Chunks)
	pr.Bitmap = slices.Clone(lb.have)
	return pr
}

// sendPresence is the one goroutine that writes presence frames to ps, over one long-lived
// stream. It sends each dirty blob's full state, so a burst of Announce calls while a write is in
// progress goes out as one frame per blob.
func (n *Node) sendPresence(ps *peerState) {
	ctx := n.scope.Context()
	var s network.Stream
	defer func() {
		if s != nil {
			_ = s.Reset()
		}
	}()
	var buf []byte
	for {
		select {
		case <-ps.wake:
		case <-ctx.Done():
			return
		}
		n.mu.Lock()
		if !ps.connected || ps.banned(time.Now()) {
			ps.sending = false
			n.mu.Unlock()
			return
		}
		buf = buf[:0]
		var sent []digest.Digest
		for b := range ps.dirty {
			var err error
			pr := n.snapshotLocked(b)
			n.maskPresenceLocked(ps.id, &pr) // pull rights (rights.go)
			if buf, err = AppendPresence(buf, pr); err == nil {
				sent = append(sent, b)
			}
		}
		clear(ps.dirty)
		h := n.host
		n.mu.Unlock()
		if len(sent) == 0 {
			continue
		}
		err := func() error {
			if s == nil {
				octx, cancel := context.WithTimeout(ctx, presenceWriteTimeout)
				defer cancel()
				var err error
				if s, err = h.NewStream(octx, ps.id, PresenceProtocol); err != nil {
					return err
				}
			}
			_ = s.SetWriteDeadline(time.Now().Add(presenceWriteTimeout))
			_, err := s.Write(buf)
			return err
		}()
		if err == nil {
			n.met.presenceOut.Add(float64(len(sent)))
			continue
		}
		if s != nil {
			_ = s.Reset()
			s = nil
		}
		var nse msmux.ErrNotSupported[protocol.ID]
		if errors.As(err, &nse) || errors.Is(err, context.Canceled) {
			n.mu.Lock()
			ps.sending = false
			n.mu.Unlock()
			return
		}
		n.log.Debug("sending presence failed", "peer", ps.id, "err", err)
		// The stream may have died before this write: frames written to it earlier, which
		// the writer took as sent, can be lost too. The next stream starts with the full
		// state of every blob, as a new connection does.
		n.mu.Lock()
		for b := range n.blobs {
			ps.dirty[b] = true
		}
		for _, b := range sent {
			ps.dirty[b] = true
		}
		n.mu.Unlock()
		select {
		case <-time.After(500 * time.Millisecond):
			wake(ps.wake)
		case <-ctx.Done():
			return
		}
	}
}

// handlePresence reads a peer's presence frames until the stream ends.
func (n *Node) handlePresence(s network.Stream) {
	done, ok := n.scope.Track()
	if !ok {
		_ = s.Reset()
		return
	}
	defer done()
	p := s.Conn().RemotePeer()
	if !n.allowed(p) {
		_ = s.Reset()
		return
	}
	r := bufio.NewReader(s)
	for {
		pr, err := ReadPresence(r)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				n.log.Debug("presence stream ended", "peer", p, "err", err)
			}
			_ = s.Reset()
			return
		}
		if !n.applyPresence(p, pr) {
			_ = s.Reset()
			return
		}
	}
}

// presenceChangedLocked returns a channel closed at the next change of any peer's presence map;
// n.mu is held.
func (n *Node) presenceChangedLocked() <-chan struct{} {
	if n.presenceChanged == nil {
		n.presenceChanged = make(chan struct{})
	}
	return n.presenceChanged
}

// applyPresence records pr from p; false if p is banned.
func (n *Node) applyPresence(p peer.ID, pr Presence) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps := n.peerLocked(p)
	if ps.banned(time.Now()) {
		return false
	}
	n.met.presenceIn.Inc()
	old := ps.blobs[pr.Blob]
	if old != nil && pr.Seq <= old.seq {
		return true // stale
	}
	if pr.Flags&PresenceGone != 0 {
		delete(ps.blobs, pr.Blob)
		return true
	}
	lb := n.blobs[pr.Blob]
	if lb == nil && old == nil {
		foreign := 0
		for b := range ps.blobs {
			if n.blobs[b] == nil {
				foreign++
			}
		}
		if foreign >= maxForeignBlobs {
			return true
		}
	}
	if lb != nil && pr.NChunks != len(lb.m.Chunks) {
		n.log.Debug("presence map size disagrees with manifest", "peer", p, "blob", pr.Blob, "chunks", pr.NChunks, "want", len(lb.m.Chunks))
		return true
	}
	ps.blobs[pr.Blob] = &remoteBlob{seq: pr.Seq, canFetch: pr.Flags&PresenceCanFetch != 0, private: pr.Flags&PresencePrivate != 0, n: pr.NChunks, bits: pr.Bitmap}
	if pr.Flags&PresencePrivate != 0 {
		n.wantRightsLocked(p, pr.Blob) // pull rights (rights.go): present ours to a holder
	}
	if n.presenceChanged != nil {
		close(n.presenceChanged)
		n.presenceChanged = nil
	}
	if lb != nil && n.host != nil {
		n.host.ConnManager().Protect(p, "shoal-blob")
	}
	return true
}
