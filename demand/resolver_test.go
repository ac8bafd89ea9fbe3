package demand

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/chunkstore/storetest"
)

const chunkSz = 64 << 10

// testBlob is a blob with a manifest whose chunks leave gaps (bytes that are not file data), as
// EROFS chunk manifests do.
type testBlob struct {
	data []byte
	m    *chunk.Manifest
}

func newTestBlob(t testing.TB, chunks int) testBlob {
	data := make([]byte, chunks*chunkSz+3*chunk.BlockSize)
	rand.Read(data)
	m := &chunk.Manifest{SchemaVersion: 1, Blob: digest.FromBytes(data), BlobSize: int64(len(data)),
		Chunking: chunk.ChunkingEROFS, ChunkSize: chunkSz}
	off := int64(0)
	for i := range chunks {
		if i == 2 {
			off += chunk.BlockSize // a gap of one block after chunk 1
		}
		m.Chunks = append(m.Chunks, chunk.Chunk{Offset: off, Length: chunkSz, CID: chunk.CID(data[off : off+chunkSz])})
		off += chunkSz
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	return testBlob{data, m}
}

// countingOrigin serves chunk bytes from memory and counts what it served.
type countingOrigin struct {
	data    []byte
	calls   atomic.Int64
	bytes   atomic.Int64
	delay   time.Duration
	corrupt atomic.Bool
}

func (o *countingOrigin) fetch(ctx context.Context, c chunk.Chunk) ([]byte, error) {
	o.calls.Add(1)
	if o.delay > 0 {
		select {
		case <-time.After(o.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	b := append([]byte(nil), o.data[c.Offset:c.End()]...)
	if o.corrupt.Load() {
		b[7] ^= 0xff
	}
	o.bytes.Add(int64(len(b)))
	return b, nil
}

func openStore(t testing.TB) *chunkstore.Store {
	t.Helper()
	s, err := chunkstore.Open(t.TempDir(), chunkstore.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newResolver(t testing.TB, s Store, p Peers, tb testBlob, o *countingOrigin) *Resolver {
	t.Helper()
	cfg := DefaultConfig()
	r, err := New(s, p, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cs, ok := s.(*chunkstore.Store); ok {
		if err := cs.AddBlob(context.Background(), tb.m); err != nil {
			t.Fatal(err)
		}
	}
	r.AddBlob(tb.m, o.fetch)
	return r
}

func readBacking(t testing.TB, s *chunkstore.Store, d digest.Digest, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(s.BackingPath(d))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEnsureFetchesOncePerChunk(t *testing.T) {
	tb := newTestBlob(t, 8)
	s := openStore(t)
	o := &countingOrigin{data: tb.data, delay: 20 * time.Millisecond}
	r := newResolver(t, s, nil, tb, o)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 { // many readers of overlapping ranges at once
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := int64(i%5) * 50000
			errs <- r.Ensure(ctx, tb.m.Blob, off, 3*chunkSz)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	covered := tb.m.ChunksIn(0, 4*50000+3*chunkSz)
	if got := o.calls.Load(); got != int64(len(covered)) {
		t.Fatalf("origin asked %d times for %d chunks", got, len(covered))
	}
	for _, c := range covered {
		if !bytes.Equal(readBacking(t, s, tb.m.Blob, c.Offset, c.Length), tb.data[c.Offset:c.End()]) {
			t.Fatalf("backing file differs at chunk %d", c.Offset)
		}
	}
	// The gap after chunk 1 is not file data: it stays a hole and reads as zeros.
	if gap := readBacking(t, s, tb.m.Blob, 2*chunkSz, chunk.BlockSize); !bytes.Equal(gap, make([]byte, chunk.BlockSize)) {
		t.Fatal("gap between chunks was filled")
	}
	if st := r.Stats(); st.Sources[chunk.SourceOrigin].Chunks != int64(len(covered)) || st.Sources[chunk.SourceOrigin].Bytes != int64(len(covered))*chunkSz {
		t.Fatalf("stats: %+v", st)
	}
	// A second read of a present range asks nobody and counts as a local hit.
	before := o.calls.Load()
	if err := r.Ensure(ctx, tb.m.Blob, 100, chunkSz); err != nil || o.calls.Load() != before {
		t.Fatalf("hit fetched again: %v", err)
	}
	if st := r.Stats(); st.Sources[chunk.SourceLocal].Bytes != chunkSz {
		t.Fatalf("local hit bytes %d, want %d", st.Sources[chunk.SourceLocal].Bytes, chunkSz)
	}
}

func TestEnsureRejectsCorruptOrigin(t *testing.T) {
	tb := newTestBlob(t, 3)
	s := openStore(t)
	o := &countingOrigin{data: tb.data}
	o.corrupt.Store(true)
	r := newResolver(t, s, nil, tb, o)
	err := r.Ensure(context.Background(), tb.m.Blob, 0, 10)
	if !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("corrupt origin bytes: %v", err)
	}
	if storetest.Has(t, s, tb.m.Blob, tb.m.Chunks[0]) {
		t.Fatal("corrupt chunk marked present")
	}
	if r.Stats().Failures != 1 {
		t.Fatalf("failure not counted: %+v", r.Stats())
	}
	// Each refused answer is a verification failure of the origin (issue 12: verifyFailures stayed
	// 0 after corrupt ranges from the origin): CorruptAttempts answers, all wrong.
	if got, want := r.Stats().OriginCorrupt, int64(DefaultConfig().CorruptAttempts); got != want {
		t.Fatalf("origin verification failures %d, want %d", got, want)
	}
	o.corrupt.Store(false) // the origin recovers: the next read succeeds
	if err := r.Ensure(context.Background(), tb.m.Blob, 0, 10); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureUnknownBlob(t *testing.T) {
	r, err := New(openStore(t), nil, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Ensure(context.Background(), digest.FromString("x"), 0, 1); !errors.Is(err, ErrUnknownBlob) {
		t.Fatalf("unknown blob: %v", err)
	}
}

// fakePeers stands in for package p2p (tested on its own with real libp2p hosts): it holds some
// chunks and otherwise calls fromOrigin, as the cluster's fetch does.
type fakePeers struct {
	hold  map[int64][]byte
	calls atomic.Int64
}

func (p *fakePeers) FetchWire(ctx context.Context, blob digest.Digest, c chunk.Chunk, fromOrigin func(context.Context) ([]byte, error)) (chunk.Verified, chunk.Source, int64, error) {
	p.calls.Add(1)
	src := chunk.SourcePeer
	b, ok := p.hold[c.Offset]
	if !ok {
		var err error
		if b, err = fromOrigin(ctx); err != nil {
			return chunk.Verified{}, "", 0, err
		}
		src = chunk.SourceOrigin
	}
	v, err := chunk.Verify(c.CID, b) // as package p2p does, once per chunk
	return v, src, c.Length / 2, err // as if every chunk from a peer came compressed 2:1
}

func TestSourcesDedupPeersOrigin(t *testing.T) {
	tb := newTestBlob(t, 4)
	s := openStore(t)
	o := &countingOrigin{data: tb.data}
	peers := &fakePeers{hold: map[int64][]byte{tb.m.Chunks[1].Offset: tb.data[tb.m.Chunks[1].Offset:tb.m.Chunks[1].End()]}}
	r := newResolver(t, s, peers, tb, o)
	ctx := context.Background()
	if err := r.Ensure(ctx, tb.m.Blob, 0, tb.m.BlobSize); err != nil {
		t.Fatal(err)
	}
	st := r.Stats()
	if st.Sources[chunk.SourcePeer].Chunks != 1 || st.Sources[chunk.SourceOrigin].Chunks != 3 {
		t.Fatalf("sources: %+v", st.Sources)
	}
	// Wire bytes from a peer are what the cluster says the chunk took (a frame), not its length.
	if p := st.Sources[chunk.SourcePeer]; p.WireBytes != tb.m.Chunks[1].Length/2 || p.Bytes != tb.m.Chunks[1].Length {
		t.Fatalf("peer source: %d wire bytes for %d, want %d for %d", p.WireBytes, p.Bytes, tb.m.Chunks[1].Length/2, tb.m.Chunks[1].Length)
	}
	// A second blob holding the same chunk (another image with the same file) takes it from the
	// local store, not from anyone else.
	other := &chunk.Manifest{SchemaVersion: 1, BlobSize: chunkSz, Chunking: chunk.ChunkingEROFS, ChunkSize: chunkSz,
		Chunks: []chunk.Chunk{{Offset: 0, Length: chunkSz, CID: tb.m.Chunks[2].CID}}}
	other.Blob = digest.FromBytes(tb.data[tb.m.Chunks[2].Offset:tb.m.Chunks[2].End()])
	if err := s.AddBlob(ctx, other); err != nil {
		t.Fatal(err)
	}
	r.AddBlob(other, func(context.Context, chunk.Chunk) ([]byte, error) { return nil, errors.New("must not be asked") })
	calls := peers.calls.Load()
	if err := r.Ensure(ctx, other.Blob, 0, chunkSz); err != nil {
		t.Fatal(err)
	}
	if peers.calls.Load() != calls || r.Stats().Sources[chunk.SourceDedup].Chunks != 1 {
		t.Fatalf("dedup: peers asked %d more times, stats %+v", peers.calls.Load()-calls, r.Stats().Sources)
	}
}

func newResolverCfg(t testing.TB, s *chunkstore.Store, cfg Config, tb testBlob, origin OriginFunc) *Resolver {
	t.Helper()
	r, err := New(s, nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if err := s.AddBlob(context.Background(), tb.m); err != nil {
		t.Fatal(err)
	}
	r.AddBlob(tb.m, origin)
	return r
}

// orderOrigin records the order in which chunks are asked of the origin.
type orderOrigin struct {
	*countingOrigin
	mu    sync.Mutex
	order []int64
}

func (o *orderOrigin) fetch(ctx context.Context, c chunk.Chunk) ([]byte, error) {
	o.mu.Lock()
	o.order = append(o.order, c.Offset)
	o.mu.Unlock()
	return o.countingOrigin.fetch(ctx, c)
}

func TestPrefetchCompletesPriorityFirst(t *testing.T) {
	tb := newTestBlob(t, 12)
	s := openStore(t)
	o := &orderOrigin{countingOrigin: &countingOrigin{data: tb.data}}
	cfg := DefaultConfig()
	cfg.PrefetchWorkers = 1 // one worker: the dispatch order is the fetch order
	cfg.PrefetchWriteBehind = 0
	r := newResolverCfg(t, s, cfg, tb, o.fetch)
	// Chunk 3 is present already; chunks 9 and 5 are the priority ranges (5 twice).
	if err := r.Ensure(context.Background(), tb.m.Blob, tb.m.Chunks[3].Offset, 1); err != nil {
		t.Fatal(err)
	}
	o.order = nil
	first := []chunk.Range{{Offset: tb.m.Chunks[9].Offset, Length: 1}, {Offset: tb.m.Chunks[5].Offset, Length: 10}, {Offset: tb.m.Chunks[5].Offset, Length: 1}}
	var last atomic.Int64
	if _, err := r.Prefetch(context.Background(), tb.m.Blob, first, nil, func(p, total int64) { last.Store(p) }); err != nil {
		t.Fatal(err)
	}
	var want []int64
	for _, i := range []int{9, 5, 0, 1, 2, 4, 6, 7, 8, 10, 11} {
		want = append(want, tb.m.Chunks[i].Offset)
	}
	if fmt.Sprint(o.order) != fmt.Sprint(want) {
		t.Fatalf("origin asked for %v, want the priority chunks first, then the rest in offset order, each once: %v", o.order, want)
	}
	if last.Load() != tb.m.DataBytes() {
		t.Fatalf("progress ended at %d of %d", last.Load(), tb.m.DataBytes())
	}
	if missing, _ := s.Missing(tb.m.Blob, 0, tb.m.BlobSize); len(missing) != 0 {
		t.Fatalf("%d chunks missing after prefetch", len(missing))
	}
	// A cancelled prefetch returns promptly with the context's error.
	tb2 := newTestBlob(t, 6)
	o3 := &countingOrigin{data: tb2.data, delay: time.Hour}
	if err := s.AddBlob(context.Background(), tb2.m); err != nil {
		t.Fatal(err)
	}
	r.AddBlob(tb2.m, o3.fetch)
	cctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.Prefetch(cctx, tb2.m.Blob, nil, nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled prefetch: %v, want the context's error", err)
	}
}

// TestPrefetchKeepsToTheRate checks the bandwidth cap from below: a prefetch of N bytes at rate R
// with burst B cannot finish in less than (N-B)/R, whatever the machine's speed.
func TestPrefetchKeepsToTheRate(t *testing.T) {
	tb := newTestBlob(t, 12)
	s := openStore(t)
	o := &countingOrigin{data: tb.data}
	r := newResolverCfg(t, s, DefaultConfig(), tb, o.fetch)
	const perSec, burst = 2 << 20, chunkSz / 2 // burst smaller than a chunk: waitBytes splits
	lim := rate.NewLimiter(rate.Limit(perSec), burst)
	start := time.Now()
	if _, err := r.Prefetch(context.Background(), tb.m.Blob, nil, lim, nil); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	n := tb.m.DataBytes()
	if floor := time.Duration(float64(n-burst) / perSec * float64(time.Second)); elapsed < floor {
		t.Fatalf("prefetched %d bytes in %v at a cap of %d B/s: faster than the cap allows (%v)", n, elapsed, perSec, floor)
	}
	if o.bytes.Load() != n {
		t.Fatalf("origin served %d bytes, want %d", o.bytes.Load(), n)
	}
}

// slowPutStore is a real store whose Put waits until gate is closed: a disk whose syncs are slow.
type slowPutStore struct {
	*chunkstore.Store
	gate chan struct{}
	puts atomic.Int64 // Puts waiting or done
}

func (s *slowPutStore) Put(ctx context.Context, blob digest.Digest, c chunk.Chunk, v chunk.Verified) error {
	s.puts.Add(1)
	select {
	case <-s.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.Store.Put(ctx, blob, c, v)
}

// PutCold (a prefetch's writes) is as slow.
func (s *slowPutStore) PutCold(ctx context.Context, blob digest.Digest, c chunk.Chunk, v chunk.Verified) error {
	return s.Put(ctx, blob, c, v)
}

// TestPrefetchWriteBehind: while the store is still writing and syncing the chunks a prefetch
// fetched, the prefetch goes on fetching, up to PrefetchWriteBehind chunks ahead of the store,
// and no further; when the store catches up, every chunk is present.
func TestPrefetchWriteBehind(t *testing.T) {
	tb := newTestBlob(t, 12)
	st := &slowPutStore{Store: openStore(t), gate: make(chan struct{})}
	o := &countingOrigin{data: tb.data}
	cfg := DefaultConfig()
	cfg.Workers, cfg.PrefetchWorkers, cfg.PrefetchWriteBehind = 4, 1, 3
	r, err := New(st, nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if err := st.AddBlob(context.Background(), tb.m); err != nil {
		t.Fatal(err)
	}
	r.AddBlob(tb.m, o.fetch)
	pre := make(chan error, 1)
	go func() { _, err := r.Prefetch(context.Background(), tb.m.Blob, nil, nil, nil); pre <- err }()
	// One fetch slot, three more chunks held for the store: four fetched while no Put finishes.
	waitUntil(t, func() bool { return o.calls.Load() >= 4 && st.puts.Load() >= 4 })
	time.Sleep(50 * time.Millisecond) // room for a fifth fetch, which must not happen
	if got := o.calls.Load(); got != 4 {
		t.Fatalf("%d chunks fetched while the store wrote none, want 4 (1 fetching + 3 behind)", got)
	}
	close(st.gate)
	if err := <-pre; err != nil {
		t.Fatal(err)
	}
	if missing, _ := st.Missing(tb.m.Blob, 0, tb.m.BlobSize); len(missing) != 0 {
		t.Fatalf("%d chunks missing after prefetch", len(missing))
	}
}

// TestDemandOvertakesPrefetch: a demand read of the chunk a prefetch would fetch last is served
// while the prefetch is still far from done, because demand never waits behind prefetch.
func TestDemandOvertakesPrefetch(t *testing.T) {
	tb := newTestBlob(t, 40)
	s := openStore(t)
	o := &countingOrigin{data: tb.data, delay: 20 * time.Millisecond}
	cfg := DefaultConfig()
	cfg.Workers, cfg.PrefetchWorkers = 4, 2
	r := newResolverCfg(t, s, cfg, tb, o.fetch)
	ctx := context.Background()
	pre := make(chan error, 1)
	go func() { _, err := r.Prefetch(ctx, tb.m.Blob, nil, nil, nil); pre <- err }()
	waitUntil(t, func() bool { return o.calls.Load() >= 2 }) // prefetch is fetching
	lastChunk := tb.m.Chunks[len(tb.m.Chunks)-1]
	if err := r.Ensure(ctx, tb.m.Blob, lastChunk.Offset, 1); err != nil {
		t.Fatal(err)
	}
	_, present, err := s.PresentTotals(tb.m.Blob)
	if err != nil {
		t.Fatal(err)
	}
	if total := int64(len(tb.m.Chunks)); present > total/2 {
		t.Fatalf("the demand read of the last chunk returned with %d of %d chunks present: it waited behind the prefetch", present, total)
	}
	if err := <-pre; err != nil {
		t.Fatal(err)
	}
	if got := o.calls.Load(); got != int64(len(tb.m.Chunks)) {
		t.Fatalf("origin asked %d times for %d chunks", got, len(tb.m.Chunks))
	}
}

func waitUntil(t testing.TB, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []Config{
		{Workers: 0, PrefetchWorkers: 1, FetchTimeout: time.Second},
		{Workers: 4, PrefetchWorkers: 4, FetchTimeout: time.Second},
		{Workers: 4, PrefetchWorkers: 0, FetchTimeout: time.Second},
		{Workers: 4, PrefetchWorkers: 1},
	}
	for _, c := range bad {
		if c.Validate() == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestReadOrderRecorded(t *testing.T) {
	tb := newTestBlob(t, 6)
	s := openStore(t)
	r := newResolver(t, s, nil, tb, &countingOrigin{data: tb.data})
	ctx := context.Background()
	for _, i := range []int{4, 1, 4, 2} { // demand reads in this order; 4 twice
		c := tb.m.Chunks[i]
		if err := r.Ensure(ctx, tb.m.Blob, c.Offset+10, 100); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Prefetch(ctx, tb.m.Blob, nil, nil, nil); err != nil { // prefetch is not recorded
		t.Fatal(err)
	}
	got := r.ReadOrder(tb.m.Blob)
	want := []int64{tb.m.Chunks[4].Offset, tb.m.Chunks[1].Offset, tb.m.Chunks[2].Offset}
	if len(got) != len(want) {
		t.Fatalf("read order %v, want offsets %v", got, want)
	}
	for i := range want {
		if got[i].Offset != want[i] || got[i].Length != chunkSz {
			t.Fatalf("read order %v, want offsets %v", got, want)
		}
	}
}

// flakyOrigin fails chunks in a pattern: each chunk in fail fails its first failures[off] asks with
// err (a 500, or wrong bytes), then serves.
type flakyOrigin struct {
	*countingOrigin
	mu       sync.Mutex
	failures map[int64]int
	corrupt  map[int64]bool
}

func (o *flakyOrigin) fetch(ctx context.Context, c chunk.Chunk) ([]byte, error) {
	o.mu.Lock()
	n := o.failures[c.Offset]
	if n > 0 {
		o.failures[c.Offset] = n - 1
	}
	bad := o.corrupt[c.Offset] && n > 0
	o.mu.Unlock()
	b, err := o.countingOrigin.fetch(ctx, c)
	if err != nil || n == 0 {
		return b, err
	}
	if bad {
		b[0] ^= 1
		return b, nil
	}
	return nil, errors.New("origin: 500 Internal Server Error (test)")
}

func TestPrefetchGoesOnPastFailures(t *testing.T) {
	tb := newTestBlob(t, 10)
	s := openStore(t)
	o := &flakyOrigin{countingOrigin: &countingOrigin{data: tb.data},
		// chunk 2 fails twice with a 500, chunk 5 sends wrong bytes four times (more than one
		// fetch's CorruptAttempts), chunk 7 fails every time.
		failures: map[int64]int{tb.m.Chunks[2].Offset: 2, tb.m.Chunks[5].Offset: 4, tb.m.Chunks[7].Offset: 1 << 30},
		corrupt:  map[int64]bool{tb.m.Chunks[5].Offset: true}}
	cfg := DefaultConfig()
	cfg.PrefetchAttempts, cfg.PrefetchRetryBase = 3, 10*time.Millisecond
	r := newResolverCfg(t, s, cfg, tb, o.fetch)
	res, err := r.Prefetch(context.Background(), tb.m.Blob, nil, nil, nil)
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("Prefetch: %v, want ErrIncomplete", err)
	}
	if len(res.Missing) != 1 || res.Missing[0].Chunk.Offset != tb.m.Chunks[7].Offset {
		t.Fatalf("missing %+v, want only chunk 7", res.Missing)
	}
	if !strings.Contains(res.Missing[0].Err.Error(), "500") || !strings.Contains(err.Error(), "500") {
		t.Fatalf("the reason is lost: %v / %v", res.Missing[0].Err, err)
	}
	if want := tb.m.DataBytes() - tb.m.Chunks[7].Length; res.Present != want || res.Total != tb.m.DataBytes() {
		t.Fatalf("present %d of %d, want %d", res.Present, res.Total, want)
	}
	for _, i := range []int{0, 2, 5, 9} {
		if !storetest.Has(t, s, tb.m.Blob, tb.m.Chunks[i]) {
			t.Errorf("chunk %d not present: a failure elsewhere stopped the prefetch", i)
		}
	}
	// Chunk 7 was asked for once per round, no more.
	if got := int64(cfg.PrefetchAttempts); o.failures[tb.m.Chunks[7].Offset] != 1<<30-int(got) {
		t.Errorf("chunk 7 asked %d times, want %d", 1<<30-o.failures[tb.m.Chunks[7].Offset], got)
	}
}

func TestPrefetchReportsEvictedChunks(t *testing.T) {
	tb := newTestBlob(t, 12)
	cfg := chunkstore.DefaultConfig()
	cfg.MaxBytes = 4 * chunkSz // a third of the blob
	cfg.PinnedOverflow = false
	s, err := chunkstore.Open(t.TempDir(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	o := &countingOrigin{data: tb.data}
	r := newResolverCfg(t, s, DefaultConfig(), tb, o.fetch)
	res, err := r.Prefetch(context.Background(), tb.m.Blob, nil, nil, nil)
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("a prefetch of an image three times the cache: %v, want ErrIncomplete", err)
	}
	if res.Present > cfg.MaxBytes || res.Present+int64(len(res.Missing))*chunkSz != res.Total {
		t.Fatalf("result says %d of %d present with %d missing chunks; the cache holds %d", res.Present, res.Total, len(res.Missing), cfg.MaxBytes)
	}
	if !strings.Contains(res.Summary(), "evicted") {
		t.Fatalf("summary does not say why: %s", res.Summary())
	}
}

func TestCorruptOriginBytesAreAskedAgain(t *testing.T) {
	tb := newTestBlob(t, 3)
	s := openStore(t)
	o := &flakyOrigin{countingOrigin: &countingOrigin{data: tb.data},
		failures: map[int64]int{tb.m.Chunks[1].Offset: 2}, corrupt: map[int64]bool{tb.m.Chunks[1].Offset: true}}
	r := newResolverCfg(t, s, DefaultConfig(), tb, o.fetch)
	if err := r.Ensure(context.Background(), tb.m.Blob, tb.m.Chunks[1].Offset, 1); err != nil {
		t.Fatalf("a chunk whose first two answers were wrong: %v", err)
	}
	if got := o.calls.Load(); got != 3 {
		t.Fatalf("origin asked %d times, want 3", got)
	}
}
