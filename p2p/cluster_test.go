package p2p

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

// memStore is a chunk store in memory. Like the real daemon, whatever lands in it is announced.
type memStore struct {
	mu   sync.Mutex
	m    map[cid.Cid][]byte
	node *Node
}

var _ LocalChunks = (*memStore)(nil)
var _ ChunkWriter = (*memStore)(nil)

func newMemStore() *memStore { return &memStore{m: map[cid.Cid][]byte{}} }

func (s *memStore) HasCID(c cid.Cid) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[c]
	return ok, nil
}

func (s *memStore) ReadChunk(_ context.Context, c cid.Cid) (chunk.Verified, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.m[c]
	if !ok {
		return chunk.Verified{}, errors.New("not found")
	}
	return chunk.Verify(c, b) // as the real store does: what is on disk may have rotted
}

func (s *memStore) PutChunk(_ context.Context, blob digest.Digest, c chunk.Chunk, data chunk.Verified) error {
	s.mu.Lock()
	s.m[c.CID] = data.Bytes()
	s.mu.Unlock()
	return s.node.Announce(blob, c) // the store's ChunkAdded event, as the daemon wires it
}

// mustVerify returns a test chunk's bytes as chunk.Verified.
func mustVerify(t testing.TB, c chunk.Chunk, b []byte) chunk.Verified {
	t.Helper()
	v, err := chunk.Verify(c.CID, b)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (s *memStore) evict(blob digest.Digest, c chunk.Chunk) error {
	s.mu.Lock()
	delete(s.m, c.CID)
	s.mu.Unlock()
	return s.node.Withdraw(blob, c)
}

// countingOrigin serves an image's chunks and counts what it serves.
type countingOrigin struct {
	chunks   map[cid.Cid][]byte
	delay    time.Duration
	bytes    atomic.Int64
	requests atomic.Int64
}

func (o *countingOrigin) fetch(ctx context.Context, c chunk.Chunk) ([]byte, error) {
	o.requests.Add(1)
	if o.delay > 0 {
		select {
		case <-time.After(o.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	b, ok := o.chunks[c.CID]
	if !ok {
		return nil, fmt.Errorf("origin: no chunk %s", c.CID)
	}
	o.bytes.Add(int64(len(b)))
	return b, nil
}

// makeImage returns a blob of n random chunks of size bytes with its manifest.
func makeImage(t testing.TB, n int, size int64, seed uint64) (*chunk.Manifest, *countingOrigin) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	blob := make([]byte, int64(n)*size)
	for i := range blob {
		blob[i] = byte(r.Uint32())
	}
	m, err := chunk.FixedManifest(bytes.NewReader(blob), digest.FromBytes(blob), int64(len(blob)), size)
	if err != nil {
		t.Fatal(err)
	}
	o := &countingOrigin{chunks: map[cid.Cid][]byte{}}
	for _, c := range m.Chunks {
		o.chunks[c.CID] = blob[c.Offset:c.End()]
	}
	return m, o
}

func testLogger() *slog.Logger {
	if os.Getenv("SHOAL_P2P_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.MDNS = false
	cfg.DHT = false
	cfg.RedialInterval = 500 * time.Millisecond
	cfg.RequestTimeout = 5 * time.Second
	cfg.CoalesceTimeout = 30 * time.Second
	cfg.HedgeDelay = 250 * time.Millisecond
	cfg.Logger = testLogger()
	return cfg
}

type testNode struct {
	*Node
	store *memStore
}

// startNode runs a node until the test ends.
func startNode(t testing.TB, cfg Config) *testNode {
	t.Helper()
	st := newMemStore()
	n := runNode(t, cfg, st, st)
	return &testNode{n, st}
}

// runNode runs a node over local (whose memStore ms announces what it stores to the node) until
// the test ends.
func runNode(t testing.TB, cfg Config, local LocalChunks, ms *memStore) *Node {
	t.Helper()
	n, err := New(cfg, local)
	if err != nil {
		t.Fatal(err)
	}
	ms.node = n
	errc := make(chan error, 1)
	go func() { errc <- n.Run(t.Context()) }()
	select {
	case <-n.Ready():
	case err := <-errc:
		t.Fatalf("node did not start: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// peerAddrs is each node's first listen address, as static peers.
func peerAddrs(nodes []*Node) []string {
	var out []string
	for _, p := range nodes {
		out = append(out, p.Addrs()[0].String())
	}
	return out
}

// startCluster starts size nodes, each given the earlier ones as static peers: a full mesh.
func startCluster(t testing.TB, size int, mutate func(i int, cfg *Config)) []*testNode {
	t.Helper()
	var nodes []*testNode
	var addrs []string
	for i := range size {
		cfg := testConfig()
		cfg.StaticPeers = append([]string(nil), addrs...)
		if mutate != nil {
			mutate(i, &cfg)
		}
		tn := startNode(t, cfg)
		nodes = append(nodes, tn)
		addrs = append(addrs, tn.Addrs()[0].String())
	}
	return nodes
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readImage reads every chunk of m through n as the demand resolver would: skip what the store
// holds, Fetch the rest, store it (which announces it).
func readImage(ctx context.Context, n *testNode, m *chunk.Manifest, o *countingOrigin, workers int) (map[chunk.Source]int, error) {
	var mu sync.Mutex
	srcs := map[chunk.Source]int{}
	next := make(chan chunk.Chunk)
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range next {
				if ok, _ := n.store.HasCID(c.CID); ok {
					continue
				}
				data, src, err := n.Fetch(ctx, m.Blob, c, func(ctx context.Context) ([]byte, error) { return o.fetch(ctx, c) })
				if err == nil && (!data.CID().Equals(c.CID) || data.Len() != c.Length) {
					err = fmt.Errorf("Fetch returned bytes verified as %s, %d bytes", data.CID(), data.Len())
				}
				if err != nil {
					errc <- fmt.Errorf("node %s chunk %d: %w", n.ID(), c.Offset/m.ChunkSize, err)
					return
				}
				if err := n.store.PutChunk(ctx, m.Blob, c, data); err != nil {
					errc <- err
					return
				}
				mu.Lock()
				srcs[src]++
				mu.Unlock()
			}
		}()
	}
	go func() {
		defer close(next)
		for _, c := range m.Chunks {
			select {
			case next <- c:
			case <-ctx.Done():
				return
			}
		}
	}()
	wg.Wait()
	close(errc)
	return srcs, <-errc
}

// clusterColdRead has size hosts read the same image at the same moment and returns origin
// bytes ÷ image bytes.
func clusterColdRead(t testing.TB, size, chunks int, chunkSize int64) float64 {
	m, o := makeImage(t, chunks, chunkSize, uint64(size))
	o.delay = 5 * time.Millisecond // a registry is further away than a peer
	nodes := startCluster(t, size, nil)
	for _, n := range nodes {
		if err := n.RegisterBlob(m, o.fetch); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range nodes {
		waitFor(t, 60*time.Second, fmt.Sprintf("node %d to see the swarm", i), func() bool { return n.SwarmSize(m.Blob) == size-1 })
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, size)
	total := map[chunk.Source]int{}
	var mu sync.Mutex
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srcs, err := readImage(ctx, n, m, o, 4)
			errs[i] = err
			mu.Lock()
			for k, v := range srcs {
				total[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		if got := n.Holding(m.Blob); got != len(m.Chunks) {
			t.Errorf("node %d holds %d of %d chunks", i, got, len(m.Chunks))
		}
	}
	ratio := float64(o.bytes.Load()) / float64(m.DataBytes())
	t.Logf("%d hosts × %d chunks of %d KiB: origin served %.2f× the image (%d requests); fetches by source %v",
		size, chunks, chunkSize>>10, ratio, o.requests.Load(), total)
	return ratio
}

func TestClusterColdRead(t *testing.T) {
	big := 30
	switch {
	case raceEnabled:
		big = 8
	case testing.Short():
		big = 10
	}
	for _, size := range []int{3, big} {
		t.Run(fmt.Sprintf("hosts=%d", size), func(t *testing.T) {
			if ratio := clusterColdRead(t, size, 48, 64<<10); ratio > 1.1 {
				t.Errorf("origin served %.2f× the image to %d hosts, want ≤ 1.1×", ratio, size)
			}
		})
	}
}
