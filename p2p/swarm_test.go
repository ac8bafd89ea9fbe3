package p2p

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shoal-p2p/shoal/chunk"
)

// readShuffled reads every chunk of m through n in a random order, as a prefetch with a cluster
// does (demand's swarmOrder), with no origin: the origin is gone.
func readShuffled(ctx context.Context, n *testNode, m *chunk.Manifest, workers int) error {
	order := rand.Perm(len(m.Chunks))
	next := make(chan chunk.Chunk)
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for c := range next {
				data, _, err := n.Fetch(ctx, m.Blob, c, nil)
				if err == nil {
					err = n.store.PutChunk(ctx, m.Blob, c, data)
				}
				if err != nil {
					errc <- fmt.Errorf("node %s chunk %d: %w", n.ID(), c.Offset/m.ChunkSize, err)
					return
				}
			}
		})
	}
	go func() {
		defer close(next)
		for _, i := range order {
			select {
			case next <- m.Chunks[i]:
			case <-ctx.Done():
				return
			}
		}
	}()
	wg.Wait()
	close(errc)
	return <-errc
}

// seededStart: one host holds the image, the origin is gone, and size-1 hosts read it at once.
// It returns each host's upload ÷ image, the seed's first.
func seededStart(t testing.TB, size, chunks int, chunkSize int64) []float64 {
	m, o := makeImage(t, chunks, chunkSize, uint64(size)+100)
	nodes := startCluster(t, size, nil)
	seed := nodes[0]
	for i, n := range nodes {
		var fn OriginFunc
		if i == 0 {
			fn = o.fetch
		}
		if err := n.RegisterBlob(m, fn); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range m.Chunks {
		if err := seed.store.PutChunk(t.Context(), m.Blob, c, mustVerify(t, c, o.chunks[c.CID])); err != nil {
			t.Fatal(err)
		}
	}
	o.chunks = nil // the origin is gone
	last := m.Chunks[len(m.Chunks)-1].CID
	for i, n := range nodes[1:] {
		waitFor(t, 60*time.Second, fmt.Sprintf("node %d to see the seed", i+1), func() bool { return len(n.Lookup(last)) >= 1 })
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, size)
	for i, n := range nodes[1:] {
		wg.Go(func() { errs[i] = readShuffled(ctx, n, m, 4) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	up := make([]float64, size)
	var hedges, fallbacks, announced, timeouts float64
	for _, n := range nodes {
		hedges += testutil.ToFloat64(n.met.hedges)
		fallbacks += testutil.ToFloat64(n.met.hedgeFallback)
		announced += testutil.ToFloat64(n.met.holderWaits.WithLabelValues("announced"))
		timeouts += testutil.ToFloat64(n.met.holderWaits.WithLabelValues("timeout"))
	}
	t.Logf("hedges to another holder %v, to the owner or origin %v; waits for a new holder: announced %v, timed out %v; seed's answers: ok %v, busy %v",
		hedges, fallbacks, announced, timeouts,
		testutil.ToFloat64(seed.met.servedRequests.WithLabelValues(StatusOK.String())), testutil.ToFloat64(seed.met.servedRequests.WithLabelValues(StatusBusy.String())))
	for i, n := range nodes {
		if got := n.Holding(m.Blob); got != len(m.Chunks) {
			t.Errorf("node %d holds %d of %d chunks", i, got, len(m.Chunks))
		}
		up[i] = testutil.ToFloat64(n.met.servedBytes) / float64(m.DataBytes())
	}
	return up
}

// TestSeededStartSwarm (issue 16): one host holds an image, the origin is gone, and the other
// hosts read it together in a random order. Super-seeding and load-aware peer choice make the
// hosts serve each other: the seed uploads about one image, not one per reader, and no host
// uploads much more than that. (Main, before: the seed uploaded 5.3-6.3 images to 7 readers.)
func TestSeededStartSwarm(t *testing.T) {
	size := 12
	if raceEnabled || testing.Short() {
		size = 8
	}
	up := seededStart(t, size, 64, 32<<10)
	most := 0.0
	for _, u := range up {
		most = max(most, u)
	}
	t.Logf("%d hosts, seeded start: seed uploaded %.2f× the image, most by any host %.2f×; all %.2f", size, up[0], most, up)
	// A star uploads size-1 (11×) from the seed. With FlagCanWait (the seed refuses a chunk it
	// has just sent another host, and the asker waits for that host's announcement) runs
	// measured 1.11–1.28× at 12 hosts and 1.23× at 8 under the race detector (before it:
	// 1.9–2.8×). The bound leaves margin for a loaded 2-core machine, where slow presence
	// frames let a few more repeats through, and still fails on any return towards a star.
	if bound := 2.0; most > bound {
		t.Errorf("a host uploaded %.2f× the image to %d readers, want ≤ %.1f× (a swarm, not a star)", most, size-1, bound)
	}
}

// TestChunkV1Compat: a host of the previous release speaks only /shoal/chunk/1. This host still
// fetches from it, and answers its V1 requests in V1.
func TestChunkV1Compat(t *testing.T) {
	m, o := makeImage(t, 4, 8<<10, 21)
	reader := startNode(t, testConfig())
	if err := reader.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	for _, c := range m.Chunks[2:] {
		if err := reader.store.PutChunk(t.Context(), m.Blob, c, mustVerify(t, c, o.chunks[c.CID])); err != nil {
			t.Fatal(err)
		}
	}
	old, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = old.Close() })
	old.SetStreamHandler(ChunkProtocol, func(s network.Stream) {
		req, err := ReadRequest(bufio.NewReader(s))
		if err != nil {
			_ = s.Reset()
			return
		}
		data := o.chunks[req.CID]
		_, _ = s.Write(AppendResponseHeader(nil, StatusOK, len(data), ""))
		_, _ = s.Write(data)
		_ = s.Close()
	})
	if err := old.Connect(t.Context(), peer.AddrInfo{ID: reader.ID(), Addrs: reader.Addrs()}); err != nil {
		t.Fatal(err)
	}
	s, err := old.NewStream(t.Context(), reader.ID(), PresenceProtocol)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := AppendPresence(nil, Presence{Seq: 1, Blob: m.Blob, NChunks: 4, Bitmap: []byte{0b11}})
	if _, err := s.Write(b); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the old host's presence", func() bool { return len(reader.Lookup(m.Chunks[0].CID)) == 1 })
	before := o.requests.Load()
	for _, c := range m.Chunks[:2] {
		data, src, err := reader.Fetch(t.Context(), m.Blob, c, nil)
		if err != nil || src != chunk.SourcePeer || data.Len() != c.Length {
			t.Fatalf("fetch from a V1 host: source %v, err %v", src, err)
		}
	}
	if o.requests.Load() != before {
		t.Fatal("went to the origin though the V1 host holds the chunks")
	}
	// The old host asks this one, in V1, for a chunk it holds.
	c := m.Chunks[3]
	cs, err := old.NewStream(t.Context(), reader.ID(), ChunkProtocol)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := AppendRequest(nil, Request{Blob: m.Blob, CID: c.CID, Offset: c.Offset, Length: c.Length})
	if _, err := cs.Write(req); err != nil {
		t.Fatal(err)
	}
	_ = cs.CloseWrite()
	st, data, msg, err := ReadResponse(bufio.NewReader(cs), c.Length)
	if err != nil || st != StatusOK {
		t.Fatalf("V1 request answered %v %q, err %v", st, msg, err)
	}
	if _, err := chunk.Verify(c.CID, data); err != nil {
		t.Fatal(err)
	}
}

// TestSuperSeedCanWait: a host refuses a chunk it has just sent another connected host to a
// requester that can wait (FlagCanWait), and serves it again once that upload failed, to the
// recipient itself, when the recipient has gone, or without the flag.
func TestSuperSeedCanWait(t *testing.T) {
	m, _ := makeImage(t, 4, 4096, 31)
	n, err := New(testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	if err := n.RegisterBlob(m, nil); err != nil {
		t.Fatal(err)
	}
	c := m.Chunks[1]
	if err := n.Announce(m.Blob, m.Chunks...); err != nil {
		t.Fatal(err)
	}
	a, b := peer.ID("host-a"), peer.ID("host-b")
	n.mu.Lock()
	n.peerLocked(a).connected = true
	n.peerLocked(b).connected = true
	n.mu.Unlock()
	req := func(flags byte) Request {
		return Request{Flags: flags, Blob: m.Blob, CID: c.CID, Offset: c.Offset, Length: c.Length}
	}
	gone := func(p peer.ID) func() {
		return func() {
			n.mu.Lock()
			n.peers[p].connected = false
			n.mu.Unlock()
		}
	}
	steps := []struct {
		name   string
		before func()
		from   peer.ID
		flags  byte
		v2     bool
		want   int
	}{
		{"first upload, to a", nil, a, FlagCanWait, true, seedServe},
		{"b can wait: a is receiving it", nil, b, FlagCanWait, true, seedRefuseWait},
		{"a asks again (it lost it)", nil, a, FlagCanWait, true, seedServe},
		{"b, after a's upload ended", func() { n.uploaded(req(0), a, true) }, b, FlagCanWait, true, seedRefuseWait},
		{"b, once a's upload failed", func() { n.uploaded(req(0), a, false) }, b, FlagCanWait, true, seedServe},
		{"a can wait while b receives it", nil, a, FlagCanWait, true, seedRefuseWait},
		{"a without the flag", nil, a, 0, true, seedServe},
		{"b, a V1 request (no flags there)", nil, b, FlagCanWait, false, seedServe},
		{"a, once b has gone", gone(b), a, FlagCanWait, true, seedServe},
		{"b has others: a repeat past the average is refused", nil, b, FlagHaveOthers, true, seedRefuseRepeat},
	}
	for i, s := range steps {
		if s.before != nil {
			s.before()
		}
		if got := n.superSeed(req(s.flags), s.from, s.v2); got != s.want {
			t.Fatalf("step %d (%s): verdict %d, want %d", i, s.name, got, s.want)
		}
	}
}
