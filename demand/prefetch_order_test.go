package demand

import (
	"context"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

// availPeers is a cluster whose chunk availability is fixed: holders[offset].
type availPeers struct{ holders map[int64]int }

func (availPeers) FetchWire(context.Context, digest.Digest, chunk.Chunk, func(context.Context) ([]byte, error)) (chunk.Verified, chunk.Source, int64, error) {
	panic("not fetched in this test")
}

func (a availPeers) Holders(_ digest.Digest, cs []chunk.Chunk) []int {
	out := make([]int, len(cs))
	for i, c := range cs {
		out[i] = a.holders[c.Offset]
	}
	return out
}

// TestSwarmOrder: with a cluster, the chunks after the priority ranges come rarest first, in a
// random order among equals (so hosts prefetching together start on different chunks); without
// one they stay in offset order.
func TestSwarmOrder(t *testing.T) {
	tb := newTestBlob(t, 40)
	holders := map[int64]int{}
	for i, c := range tb.m.Chunks {
		holders[c.Offset] = 3 - i%4 // 3, 2, 1, 0, 3, ...
	}
	firsts := map[int64]bool{}
	for try := 0; try < 8; try++ {
		r := &Resolver{peers: availPeers{holders}}
		cs := append([]chunk.Chunk(nil), tb.m.Chunks...)
		r.swarmOrder(tb.m.Blob, cs)
		if len(cs) != len(tb.m.Chunks) {
			t.Fatalf("%d chunks after ordering, want %d", len(cs), len(tb.m.Chunks))
		}
		seen := map[int64]bool{}
		for i, c := range cs {
			if seen[c.Offset] {
				t.Fatalf("chunk at %d twice", c.Offset)
			}
			seen[c.Offset] = true
			if i > 0 && holders[c.Offset] < holders[cs[i-1].Offset] {
				t.Fatalf("chunk %d (%d holders) after one with %d: not rarest first", i, holders[c.Offset], holders[cs[i-1].Offset])
			}
		}
		firsts[cs[0].Offset] = true
	}
	if len(firsts) < 2 {
		t.Errorf("8 orderings all start with the same chunk: not randomised among equals")
	}
	r := &Resolver{}
	cs := append([]chunk.Chunk(nil), tb.m.Chunks...)
	r.swarmOrder(tb.m.Blob, cs)
	for i := range cs {
		if cs[i].Offset != tb.m.Chunks[i].Offset {
			t.Fatal("without a cluster the order changed")
		}
	}
}
