package p2p

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

func TestBlobThroughRequestRoundTrip(t *testing.T) {
	req := BlobThroughRequest{Digest: digest.FromString("x"), Max: 1 << 30, Flags: BlobThroughManifest, Upstream: "ghcr.io", Repository: "team/app"}
	b, err := AppendBlobThroughRequest(nil, req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadBlobThroughRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil || got != req {
		t.Fatalf("decode: %+v, %v", got, err)
	}
	for _, bad := range []BlobThroughRequest{
		{Digest: req.Digest, Max: 1, Upstream: "ghcr.io"},                      // no repository
		{Digest: req.Digest, Max: 1, Repository: "a"},                          // no upstream
		{Digest: req.Digest, Max: 0, Upstream: "h", Repository: "a"},           // no max
		{Digest: req.Digest, Max: 1, Flags: 2, Upstream: "h", Repository: "a"}, // unknown flag
		{Digest: req.Digest, Max: 1, Upstream: string(make([]byte, 300)), Repository: "a"},
	} {
		if _, err := AppendBlobThroughRequest(nil, bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("encode %+v: %v, want ErrMalformed", bad, err)
		}
	}
	// A digest that is not sha256 does not decode.
	b, _ = AppendBlobThroughRequest(nil, BlobThroughRequest{Digest: "md5:abc", Max: 1, Upstream: "h", Repository: "a"})
	if _, err := ReadBlobThroughRequest(bufio.NewReader(bytes.NewReader(b))); err == nil {
		t.Fatal("md5 digest accepted")
	}
}

// FuzzBlobThroughRequest: any frame decodes to a valid request or an error, and what decodes
// encodes back to the same request.
func FuzzBlobThroughRequest(f *testing.F) {
	b, _ := AppendBlobThroughRequest(nil, BlobThroughRequest{Digest: digest.FromString("x"), Max: 1 << 30, Upstream: "ghcr.io", Repository: "a/b"})
	f.Add(b[1:])
	f.Add([]byte{0x01, 0x61, 0x01, 0x00, 0x01, 0x61, 0x01, 0x61})
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := parseBlobThroughRequest(body)
		if err != nil {
			return
		}
		enc, err := AppendBlobThroughRequest(nil, req)
		if err != nil {
			t.Fatalf("%+v decoded but does not encode: %v", req, err)
		}
		back, err := ReadBlobThroughRequest(bufio.NewReader(bytes.NewReader(enc)))
		if err != nil || back != req {
			t.Fatalf("round trip %+v: %+v, %v", req, back, err)
		}
	})
}

// throughStore is a blobStore whose FetchBlobFor plays the mirror: after delay it "fetches"
// the blob from upstream (a map), once however many ask at the same time, and keeps it.
type throughStore struct {
	*blobStore
	upstream map[digest.Digest][]byte
	delay    time.Duration

	mu      sync.Mutex
	fetches int
	flight  map[digest.Digest]chan struct{}
	asked   []string // upstream/repository of each call
}

func (s *throughStore) FetchBlobFor(ctx context.Context, d digest.Digest, manifest bool, upstream, repo string, max int64) error {
	s.mu.Lock()
	s.asked = append(s.asked, upstream+"/"+repo)
	ch, joined := s.flight[d]
	if !joined {
		ch = make(chan struct{})
		s.flight[d] = ch
		s.fetches++
	}
	s.mu.Unlock()
	if !joined {
		if _, ok := s.upstream[d]; ok {
			time.Sleep(s.delay)
		}
		s.blobStore.mu.Lock()
		if b, ok := s.upstream[d]; ok {
			s.blobs[d] = b
		}
		s.blobStore.mu.Unlock()
		close(ch)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.blobStore.mu.Lock()
	defer s.blobStore.mu.Unlock()
	if _, ok := s.blobs[d]; !ok {
		return fmt.Errorf("upstream has no %s: %w", d, ErrObjectNotFound)
	}
	return nil
}

func startThroughNode(t *testing.T, through bool, upstream map[digest.Digest][]byte, peers ...*Node) (*Node, *throughStore) {
	t.Helper()
	st := &throughStore{blobStore: &blobStore{memStore: newMemStore(), blobs: map[digest.Digest][]byte{}},
		upstream: upstream, delay: 5 * time.Second, flight: map[digest.Digest]chan struct{}{}}
	cfg := testConfig()
	cfg.RequestTimeout = 2 * time.Second // the owner's fetch outlasts it: wait bytes keep the streams
	cfg.BlobThrough = through
	cfg.StaticPeers = append(cfg.StaticPeers, peerAddrs(peers)...)
	n := runNode(t, cfg, st, st.memStore)
	return n, st
}

// TestFetchBlobThroughOwner: real libp2p hosts. Three fetch-through hosts and one without agree
// on each blob's owner (never the one without); the others ask the owner at the same moment,
// its one fetch (longer than RequestTimeout: StatusWait bytes keep the streams) serves them
// all, verified; the owner itself is told to fetch. A blob the upstream lacks is "not found".
func TestFetchBlobThroughOwner(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	upstream := map[digest.Digest][]byte{}
	var ds []digest.Digest
	for range 1 {
		b := make([]byte, 2<<20+rng.IntN(1000))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		d := digest.FromBytes(b)
		upstream[d] = b
		ds = append(ds, d)
	}
	a, sa := startThroughNode(t, true, upstream)
	b, sb := startThroughNode(t, true, upstream, a)
	c, sc := startThroughNode(t, true, upstream, a, b)
	plain, _ := startThroughNode(t, false, upstream, a, b, c)
	nodes := []*Node{a, b, c}
	stores := map[peer.ID]*throughStore{a.ID(): sa, b.ID(): sb, c.ID(): sc}
	for _, n := range append(nodes, plain) {
		var others []peer.ID
		for _, o := range append(nodes, plain) {
			if o != n {
				others = append(others, o.ID())
			}
		}
		waitFor(t, 10*time.Second, "connected", connectedTo(n, others...))
	}
	// Identify has told each host which peers speak BlobThroughProtocol.
	waitFor(t, 5*time.Second, "owners agreed", func() bool {
		for _, d := range ds {
			o, _ := plain.BlobOwner(d)
			for _, n := range nodes {
				if p, _ := n.BlobOwner(d); p != o {
					return false
				}
			}
		}
		return true
	})
	for _, d := range ds {
		owner, _ := a.BlobOwner(d)
		if owner == plain.ID() || stores[owner] == nil {
			t.Fatalf("blob %s: owner %s is not a fetch-through host", d, owner)
		}
		var wg sync.WaitGroup
		for _, n := range append(nodes, plain) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var buf bytes.Buffer
				from, delegated, err := n.FetchBlobThrough(t.Context(), d, false, "registry.test:5000", "team/app", 1<<30, &buf)
				if n.ID() == owner {
					if delegated || err != nil || buf.Len() != 0 {
						t.Errorf("owner asked itself: delegated %v, %d bytes, %v", delegated, buf.Len(), err)
					}
					return
				}
				if err != nil || !delegated || from != owner.String() || !bytes.Equal(buf.Bytes(), upstream[d]) {
					t.Errorf("through %s: from %s, delegated %v, %d bytes, %v", owner, from, delegated, buf.Len(), err)
				}
			}()
		}
		wg.Wait()
		st := stores[owner]
		st.mu.Lock()
		if st.fetches != 1 || len(st.asked) != 3 || st.asked[0] != "registry.test:5000/team/app" {
			t.Errorf("owner of %s: %d fetches for %v, want 1 for the 3 askers", d, st.fetches, st.asked)
		}
		st.fetches, st.asked = 0, nil
		st.mu.Unlock()
	}
	absent := digest.FromString("not upstream")
	owner, _ := a.BlobOwner(absent)
	asker := a
	if owner == a.ID() {
		asker = b
	}
	var se *statusError
	if _, delegated, err := asker.FetchBlobThrough(t.Context(), absent, false, "h", "r", 1<<20, &bytes.Buffer{}); !delegated || !errors.As(err, &se) || se.st != StatusNotFound {
		t.Fatalf("absent blob: delegated %v, %v", delegated, err)
	}
}

// TestFetchBlobThroughLiarStruck: an owner that sends other bytes of the right length is struck
// (chunk.ErrCorrupt) and banned after BanAfter such answers, and then no longer an owner.
func TestFetchBlobThroughLiarStruck(t *testing.T) {
	blob := bytes.Repeat([]byte("through"), 100000)
	d := digest.FromBytes(blob)
	bad := bytes.Clone(blob)
	bad[9] ^= 1
	liar, _ := startThroughNode(t, true, nil)
	liar.host.SetStreamHandler(BlobThroughProtocol, func(s network.Stream) {
		if _, err := ReadBlobThroughRequest(bufio.NewReader(s)); err != nil {
			_ = s.Reset()
			return
		}
		_, _ = s.Write([]byte{byte(StatusWait)})
		_, _ = s.Write(AppendResponseHeader(nil, StatusOK, len(bad), ""))
		_, _ = s.Write(bad)
		_ = s.Close()
	})
	asker, _ := startThroughNode(t, false, nil, liar) // not an owner itself: the liar owns every blob
	waitFor(t, 10*time.Second, "connected", connectedTo(asker, liar.ID()))
	waitFor(t, 5*time.Second, "liar is the owner", func() bool { o, _ := asker.BlobOwner(d); return o == liar.ID() })
	cfg := testConfig()
	for i := range cfg.BanAfter {
		_, delegated, err := asker.FetchBlobThrough(t.Context(), d, false, "h", "r", 1<<30, &bytes.Buffer{})
		if i == 0 && (!delegated || !errors.Is(err, chunk.ErrCorrupt)) {
			t.Fatalf("wrong bytes: delegated %v, %v, want chunk.ErrCorrupt", delegated, err)
		}
	}
	waitFor(t, 5*time.Second, "liar banned", func() bool { o, _ := asker.BlobOwner(d); return o == "" })
}
