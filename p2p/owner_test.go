package p2p

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoal-p2p/shoal/chunk"
)

// TestFailedOwnerPassedOver: a chunk's rendezvous owner fails the fetch-through (its origin
// errs): the asker asks the next owner in rendezvous order, which fetches it, rather than going
// to the origin itself, so every asker that saw the first owner fail still coalesces on one
// host. Real libp2p hosts on loopback, four in a full mesh.
func TestFailedOwnerPassedOver(t *testing.T) {
	m, o := makeImage(t, 1, 4096, 21)
	c := m.Chunks[0]
	nodes := startCluster(t, 4, nil)
	ids := make([]peer.ID, len(nodes))
	for i, n := range nodes {
		ids[i] = n.ID()
	}
	slices.SortFunc(ids, func(a, b peer.ID) int { // rendezvous order, best first
		sa, sb := rendezvousScore(c.CID, a), rendezvousScore(c.CID, b)
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return 0
	})
	byID := map[peer.ID]*testNode{}
	for _, n := range nodes {
		byID[n.ID()] = n
	}
	first, second, asker := byID[ids[0]], byID[ids[1]], byID[ids[3]]
	origins := map[peer.ID]*countingOrigin{}
	for _, n := range nodes {
		co := &countingOrigin{chunks: o.chunks}
		origins[n.ID()] = co
		fetch := co.fetch
		if n == first {
			fetch = func(context.Context, chunk.Chunk) ([]byte, error) {
				co.requests.Add(1)
				return nil, errors.New("registry unreachable from this host")
			}
		}
		if err := n.RegisterBlob(m, fetch); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "every host to see the others' presence", func() bool {
		for _, n := range nodes {
			if n.SwarmSize(m.Blob) != len(nodes)-1 {
				return false
			}
		}
		return true
	})
	if got := asker.rendezvous(m.Blob, c.CID); got != first.ID() {
		t.Fatalf("asker's owner %s, want %s", got, first.ID())
	}
	_, src, err := asker.Fetch(t.Context(), m.Blob, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if src != chunk.SourceCoalesced {
		t.Errorf("source %s, want %s (through the next owner)", src, chunk.SourceCoalesced)
	}
	if got := origins[first.ID()].requests.Load(); got != 1 {
		t.Errorf("the failing owner asked its origin %d times, want 1", got)
	}
	if got := origins[second.ID()].requests.Load(); got != 1 {
		t.Errorf("the next owner asked its origin %d times, want 1", got)
	}
	if got := origins[asker.ID()].requests.Load(); got != 0 {
		t.Errorf("the asker asked its origin %d times, want 0", got)
	}
}
