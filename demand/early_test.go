package demand

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

// slowPeers is a cluster that sends the wanted sub-blocks of a chunk at once and the whole
// chunk only when released (a peer with the rest of a 1 MiB chunk still on the wire).
type slowPeers struct {
	data    []byte
	release chan struct{}
	bad     bool // send a wrong sub-block first
}

func (p *slowPeers) FetchWire(ctx context.Context, blob digest.Digest, c chunk.Chunk, fromOrigin func(context.Context) ([]byte, error)) (chunk.Verified, chunk.Source, int64, error) {
	return p.FetchProgressive(ctx, blob, c, nil, fromOrigin)
}

func (p *slowPeers) FetchProgressive(ctx context.Context, blob digest.Digest, c chunk.Chunk, prog *chunk.Progress, fromOrigin func(context.Context) ([]byte, error)) (chunk.Verified, chunk.Source, int64, error) {
	data := p.data[c.Offset:c.End()]
	if first, n := prog.Wanted(); n > 0 {
		for i := first; i < first+n; i++ {
			r := chunk.SubBlock(c.Length, prog.SubBlockSize(), i)
			sub := bytes.Clone(data[r.Offset:r.End()])
			if p.bad {
				sub[0] ^= 1
			}
			if err := prog.PutSubBlock(i, sub); err != nil {
				if !errors.Is(err, chunk.ErrCorrupt) {
					return chunk.Verified{}, "", 0, err
				}
				break // p2p strikes the peer and goes on to the next source
			}
		}
	}
	select {
	case <-p.release:
	case <-ctx.Done():
		return chunk.Verified{}, "", 0, ctx.Err()
	}
	v, err := chunk.Verify(c.CID, bytes.Clone(data))
	return v, chunk.SourcePeer, c.Length, err
}

func TestEnsureReadEarly(t *testing.T) {
	tb := newTestBlob(t, 4)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tb.m.SetSubHashes(bytes.NewReader(tb.data), 4*chunk.BlockSize))
	for _, bad := range []bool{false, true} {
		s := openStore(t)
		peers := &slowPeers{data: tb.data, release: make(chan struct{}), bad: bad}
		o := &countingOrigin{data: tb.data}
		r := newResolver(t, s, peers, tb, o)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		c := tb.m.Chunks[2]
		off := c.Offset + 5*chunk.BlockSize + 100
		p := make([]byte, 2*chunk.BlockSize)
		done := make(chan error, 1)
		wait := 10 * time.Second // the good case returns at once
		if bad {
			wait = 300 * time.Millisecond
		}
		var filled bool
		go func() {
			var err error
			filled, err = r.EnsureRead(ctx, tb.m.Blob, p, off)
			done <- err
		}()
		select {
		case err := <-done:
			if bad {
				t.Fatalf("answered from a wrong sub-block (err %v)", err)
			}
			must(err)
			if !filled || !bytes.Equal(p, tb.data[off:off+int64(len(p))]) {
				t.Fatalf("filled %v, bytes match %v", filled, bytes.Equal(p, tb.data[off:off+int64(len(p))]))
			}
			if miss, _ := s.Missing(tb.m.Blob, c.Offset, c.Length); len(miss) != 1 {
				t.Fatal("the chunk was stored before its whole bytes were verified")
			}
		case <-time.After(wait):
			if !bad {
				t.Fatal("the read waited for the whole chunk")
			}
		}
		close(peers.release)
		if bad {
			// A wrong sub-block never reaches the reader: it gets the bytes with the whole
			// chunk, verified against its CID.
			must(<-done)
			if !bytes.Equal(p, tb.data[off:off+int64(len(p))]) {
				t.Fatal("wrong bytes after a bad sub-block")
			}
		}
		// The chunk is stored once complete.
		deadline := time.Now().Add(10 * time.Second)
		for {
			miss, err := s.Missing(tb.m.Blob, c.Offset, c.Length)
			must(err)
			if len(miss) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("chunk never stored")
			}
			time.Sleep(5 * time.Millisecond)
		}
		// A present range, and one across two chunks, are the store's to read.
		for _, rg := range []chunk.Range{{Offset: off, Length: 10}, {Offset: tb.m.Chunks[0].End() - 10, Length: 20}} {
			filled, err := r.EnsureRead(ctx, tb.m.Blob, make([]byte, rg.Length), rg.Offset)
			must(err)
			if filled {
				t.Fatalf("range %+v filled by the resolver, want it present in the store", rg)
			}
			if miss, _ := s.Missing(tb.m.Blob, rg.Offset, rg.Length); len(miss) != 0 {
				t.Fatalf("range %+v not present after EnsureRead", rg)
			}
		}
		cancel()
	}
}
