package demand

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-p2p/shoal/internal/metrics"
	"github.com/shoal-p2p/shoal/internal/scope"

	"github.com/ipfs/go-cid"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/shoal-p2p/shoal/chunk"
)

// Store is what the resolver needs of the local chunk store (*chunkstore.Store).
type Store interface {
	// Missing returns the chunks overlapping [off, off+length) of blob that are not present.
	Missing(blob digest.Digest, off, length int64) ([]chunk.Chunk, error)
	// Put writes verified bytes of c durably and marks the chunk present. It does not hash.
	Put(ctx context.Context, blob digest.Digest, c chunk.Chunk, v chunk.Verified) error
	// HasCID reports whether any blob holds a chunk with this CID; an error means the store
	// could not tell.
	HasCID(id cid.Cid) (bool, error)
	// ReadChunk reads a present chunk by CID from whichever blob holds it, verified.
	ReadChunk(ctx context.Context, id cid.Cid) (chunk.Verified, error)
}

// ColdStore is an optional capability of Store (package chunkstore's Store): Put for a chunk
// nobody is about to read, which the store may write around the page cache. A prefetch's chunks
// go through it; a chunk a reader waits for goes through Put, so the reads after it hit the cache.
type ColdStore interface {
	PutCold(ctx context.Context, blob digest.Digest, c chunk.Chunk, v chunk.Verified) error
}

// Peers fetches a chunk from the cluster (package p2p's Node): holders first, then the peer
// chosen to fetch it from the origin for everyone, then fromOrigin itself (whose bytes it
// verifies), and says where the bytes came from and, for bytes from a peer, what they took on
// the network (less than the chunk where it came compressed).
type Peers interface {
	FetchWire(ctx context.Context, blob digest.Digest, c chunk.Chunk, fromOrigin func(context.Context) ([]byte, error)) (data chunk.Verified, src chunk.Source, peerWire int64, err error)
}

// ProgressivePeers is an optional capability of Peers (package p2p's Node): FetchWire that hands
// prog the sub-blocks of prog's wanted range as they arrive from a peer, each verified against
// its digest, before the whole chunk (still verified against its CID) is returned.
type ProgressivePeers interface {
	FetchProgressive(ctx context.Context, blob digest.Digest, c chunk.Chunk, prog *chunk.Progress, fromOrigin func(context.Context) ([]byte, error)) (data chunk.Verified, src chunk.Source, peerWire int64, err error)
}

// OriginFunc reads one chunk's bytes of a blob from the origin (unverified).
type OriginFunc func(ctx context.Context, c chunk.Chunk) ([]byte, error)

// Sources lists the sources the resolver's stats count, in display order. Chunks fetched through
// a peer (coalesced) count as SourcePeer: for this host they came over the LAN.
var Sources = []chunk.Source{chunk.SourceLocal, chunk.SourceDedup, chunk.SourcePeer, chunk.SourceOrigin}

// ErrUnknownBlob is returned for a blob that was never added.
var ErrUnknownBlob = errors.New("demand: unknown blob")

// Config tunes the resolver.
type Config struct {
	// Workers bounds chunk fetches in flight (demand and prefetch together).
	Workers int
	// PrefetchWorkers bounds the prefetch share of Workers; demand reads always keep the rest.
	PrefetchWorkers int
	// PrefetchWriteBehind is how many chunks a prefetch may hold fetched and still being
	// written and synced by the store, beside its PrefetchWorkers fetches: a chunk's store
	// write (pwrite and a share of an fdatasync, milliseconds on a slow disk) does not hold a
	// fetch slot, so the network stays busy while the disk syncs. It bounds a prefetch's chunk
	// buffers to (PrefetchWorkers + PrefetchWriteBehind) chunks. 0: each fetch waits for its write.
	PrefetchWriteBehind int
	// FetchTimeout bounds one chunk fetch, all sources included.
	FetchTimeout time.Duration
	// CorruptAttempts is how many times a chunk whose bytes did not match its CID is asked for
	// in one fetch (a bad proxy or a flaky disk on the way gives wrong bytes now and then).
	CorruptAttempts int
	// PrefetchAttempts is how many rounds a prefetch gives a failing chunk; PrefetchRetryBase is
	// the wait before the second round, doubling for each one after.
	PrefetchAttempts  int
	PrefetchRetryBase time.Duration
	Logger            *slog.Logger
	Registerer        prometheus.Registerer // nil: metrics are not registered
}

// DefaultConfig returns the settings the daemon uses unless told otherwise.
func DefaultConfig() Config {
	return Config{Workers: 16, PrefetchWorkers: 4, PrefetchWriteBehind: 12, FetchTimeout: 2 * time.Minute, CorruptAttempts: 3,
		PrefetchAttempts: 4, PrefetchRetryBase: time.Second}
}

// Validate checks ranges and cross-field rules.
func (c Config) Validate() error {
	switch {
	case c.Workers < 1 || c.Workers > 1024:
		return fmt.Errorf("demand: Workers %d out of range 1..1024", c.Workers)
	case c.PrefetchWorkers < 1 || c.PrefetchWorkers >= c.Workers && c.Workers > 1:
		return fmt.Errorf("demand: PrefetchWorkers %d must be at least 1 and less than Workers (%d), so demand reads always have a worker", c.PrefetchWorkers, c.Workers)
	case c.PrefetchWriteBehind < 0 || c.PrefetchWriteBehind > 1024:
		return fmt.Errorf("demand: PrefetchWriteBehind %d out of range 0..1024", c.PrefetchWriteBehind)
	case c.FetchTimeout <= 0:
		return fmt.Errorf("demand: FetchTimeout must be positive")
	case c.CorruptAttempts < 1 || c.CorruptAttempts > 10:
		return fmt.Errorf("demand: CorruptAttempts %d out of range 1..10", c.CorruptAttempts)
	case c.PrefetchAttempts < 1 || c.PrefetchAttempts > 100:
		return fmt.Errorf("demand: PrefetchAttempts %d out of range 1..100", c.PrefetchAttempts)
	case c.PrefetchRetryBase <= 0:
		return fmt.Errorf("demand: PrefetchRetryBase must be positive")
	}
	return nil
}

type blobEntry struct {
	m      *chunk.Manifest
	origin OriginFunc
}

// Resolver makes byte ranges of blobs present in the local store, chunk by chunk: local store,
// then peers (with the cluster-wide origin coalescing of package p2p), then the origin. One fetch
// runs per chunk however many readers wait on it; demand reads take precedence over prefetch.
type Resolver struct {
	cfg   Config
	log   *slog.Logger
	store Store
	peers Peers // nil: no cluster, origin only

	mu    sync.RWMutex
	blobs map[digest.Digest]*blobEntry

	flight   singleflight.Group
	slots    chan struct{} // all fetches
	prefetch chan struct{} // prefetch's share
	demand   atomic.Int64  // demand fetches waiting or running: prefetch yields while > 0

	stats *stats
	met   *resolverMetrics

	readsMu sync.Mutex
	reads   map[digest.Digest]*readLog

	// progs holds the bytes of each chunk fetch in flight as they become verified (keyed like
	// flight), for readers that need only part of the chunk (EnsureRead).
	progMu sync.Mutex
	progs  map[string]*chunk.Progress

	// scope owns the shared fetches: they outlive the reader that started them (others wait on
	// them) but not the resolver. Close ends and waits for them.
	scope *scope.Scope
}

// maxRecordedChunks bounds the read order kept per blob.
const maxRecordedChunks = 1 << 16

// readLog is the order in which demand reads first touched a blob's chunks.
type readLog struct {
	seen  map[int64]bool
	order []chunk.Range
}

// New makes a resolver. peers may be nil (a host with no cluster fetches from its origin).
func New(store Store, peers Peers, cfg Config) (*Resolver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if store == nil {
		return nil, errors.New("demand: nil store")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Resolver{
		cfg: cfg, log: log.With("subsystem", "demand"), store: store, peers: peers,
		blobs:    map[digest.Digest]*blobEntry{},
		slots:    make(chan struct{}, cfg.Workers),
		prefetch: make(chan struct{}, cfg.PrefetchWorkers),
		stats:    newStats(),
		met:      met,
		reads:    map[digest.Digest]*readLog{},
		progs:    map[string]*chunk.Progress{},
		scope:    scope.New(),
	}, nil
}

// ErrClosed is returned for calls after Close.
var ErrClosed = errors.New("demand: resolver closed")

// Close stops every fetch in flight and waits for them; readers waiting on them get an error.
// Call it before closing the store the fetches write to.
func (r *Resolver) Close() error {
	r.scope.Close()
	return nil
}

// AddBlob makes a blob resolvable: its chunk manifest and how to read it from the origin.
// Adding it again replaces the origin (a new registry token, another image with the same blob).
func (r *Resolver) AddBlob(m *chunk.Manifest, origin OriginFunc) {
	r.mu.Lock()
	r.blobs[m.Blob] = &blobEntry{m: m, origin: origin}
	r.mu.Unlock()
}

// RemoveBlob forgets a blob; fetches in flight finish.
func (r *Resolver) RemoveBlob(blob digest.Digest) {
	r.mu.Lock()
	delete(r.blobs, blob)
	r.mu.Unlock()
}

func (r *Resolver) blob(d digest.Digest) (*blobEntry, error) {
	r.mu.RLock()
	b := r.blobs[d]
	r.mu.RUnlock()
	if b == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownBlob, d)
	}
	return b, nil
}

// Ensure makes [off, off+length) of blob present in its backing file. Bytes of the range that no
// chunk covers are not file data: they stay holes and read as zeros. It returns when every chunk
// is present, or with the first error (the other chunks keep going for the readers that share
// them).
func (r *Resolver) Ensure(ctx context.Context, blob digest.Digest, off, length int64) error {
	return r.ensure(ctx, blob, off, length, false)
}

func (r *Resolver) ensure(ctx context.Context, blob digest.Digest, off, length int64, prefetch bool) error {
	b, err := r.blob(blob)
	if err != nil {
		return err
	}
	missing, err := r.store.Missing(blob, off, length)
	if err != nil {
		return fmt.Errorf("demand: blob %s: %w", blob, err)
	}
	if !prefetch {
		r.countHit(b.m, off, length, missing)
		r.record(b.m, off, length)
	}
	return r.ensureMissing(ctx, b, missing, prefetch)
}

// ensureMissing fetches the missing chunks of a range, in parallel, and returns the first error.
func (r *Resolver) ensureMissing(ctx context.Context, b *blobEntry, missing []chunk.Chunk, prefetch bool) error {
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return r.ensureChunk(ctx, b, missing[0], prefetch)
	}
	errs := make(chan error, len(missing))
	for _, c := range missing {
		go func() { errs <- r.ensureChunk(ctx, b, c, prefetch) }()
	}
	var first error
	for range missing {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// EnsureRead is Ensure for a reader that wants the bytes: it fills p with the bytes of blob at
// off and returns filled true, or returns filled false once [off, off+len(p)) is present in the
// store (read it there). Where the range lies within one missing chunk, it returns as soon as the
// bytes of the range are verified, which can be before the chunk is complete: a peer speaking
// ChunkProtocolV4 sends the sub-blocks covering the range first, each verified against the
// manifest's sub-block digest on arrival, and the rest of the chunk behind them; the chunk is
// verified against its CID and stored after the reader has its bytes. Without sub-block
// digests (older manifests), peers or sources that send the chunk whole, the reader still gets
// its bytes as soon as the whole chunk is verified, without waiting for the store's write and
// sync. No byte reaches p unverified.
func (r *Resolver) EnsureRead(ctx context.Context, blob digest.Digest, p []byte, off int64) (filled bool, err error) {
	b, err := r.blob(blob)
	if err != nil {
		return false, err
	}
	length := int64(len(p))
	missing, err := r.store.Missing(blob, off, length)
	if err != nil {
		return false, fmt.Errorf("demand: blob %s: %w", blob, err)
	}
	r.countHit(b.m, off, length, missing)
	r.record(b.m, off, length)
	if len(missing) != 1 || off < missing[0].Offset || off+length > missing[0].End() {
		// Present already, several chunks, or bytes outside the one missing chunk (present
		// chunks, holes): the store answers once they are all present.
		return false, r.ensureMissing(ctx, b, missing, false)
	}
	c := b.chunk(missing[0])
	r.demand.Add(1)
	defer r.demand.Add(-1)
	key := flightKey(b, c)
	prog := r.progress(key, b, c, chunk.Range{Offset: off - c.Offset, Length: length})
	ch := r.startFlight(ctx, b, c, key, false)
	for {
		ok, changed, err := prog.TryRead(p, off-c.Offset)
		if ok {
			how := "chunk" // the whole chunk verified, not yet stored
			if !prog.Complete() {
				how = "sub-block"
			}
			r.met.early.WithLabelValues(how).Inc()
			return true, nil
		}
		if err != nil {
			return false, err
		}
		select {
		case <-changed:
		case res := <-ch:
			if res.Err != nil {
				return false, res.Err
			}
			// The fetch had another Progress (it started between our lookup and our join):
			// the chunk is in the store now.
			ok, _, _ := prog.TryRead(p, off-c.Offset)
			return ok, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// chunk is the resolver's own manifest entry of c (the store's manifests carry no sub-block
// digests), or c itself.
func (b *blobEntry) chunk(c chunk.Chunk) chunk.Chunk {
	i := sort.Search(len(b.m.Chunks), func(i int) bool { return b.m.Chunks[i].Offset >= c.Offset })
	if i < len(b.m.Chunks) && b.m.Chunks[i].Offset == c.Offset && b.m.Chunks[i].CID.Equals(c.CID) && b.m.Chunks[i].Length == c.Length {
		return b.m.Chunks[i]
	}
	return c
}

func flightKey(b *blobEntry, c chunk.Chunk) string {
	return b.m.Blob.String() + "@" + fmt.Sprint(c.Offset)
}

// progress returns the Progress of the fetch of c (key), making one that wants want first if
// there is none.
func (r *Resolver) progress(key string, b *blobEntry, c chunk.Chunk, want chunk.Range) *chunk.Progress {
	r.progMu.Lock()
	defer r.progMu.Unlock()
	p := r.progs[key]
	if p == nil {
		p = chunk.NewProgress(c, b.m.SubBlockSize, want)
		r.progs[key] = p
	}
	return p
}

// dropProgress forgets p once its fetch has ended; readers holding it keep reading from it.
func (r *Resolver) dropProgress(key string, p *chunk.Progress) {
	r.progMu.Lock()
	defer r.progMu.Unlock()
	if r.progs[key] == p {
		delete(r.progs, key)
	}
}

// record notes the chunks a demand read touched, in first-touch order: what an image reads as it
// starts, which a later prefetch of the same image fetches first.
func (r *Resolver) record(m *chunk.Manifest, off, length int64) {
	r.readsMu.Lock()
	defer r.readsMu.Unlock()
	l := r.reads[m.Blob]
	if l == nil {
		l = &readLog{seen: map[int64]bool{}}
		r.reads[m.Blob] = l
	}
	for _, c := range m.ChunksIn(off, length) {
		if !l.seen[c.Offset] && len(l.order) < maxRecordedChunks {
			l.seen[c.Offset] = true
			l.order = append(l.order, chunk.Range{Offset: c.Offset, Length: c.Length})
		}
	}
}

// ReadOrder returns the chunks demand reads have touched in blob since start, in first-touch
// order: a priority list for Prefetch.
func (r *Resolver) ReadOrder(blob digest.Digest) []chunk.Range {
	r.readsMu.Lock()
	defer r.readsMu.Unlock()
	if l := r.reads[blob]; l != nil {
		return append([]chunk.Range(nil), l.order...)
	}
	return nil
}

// countHit records the bytes of a demand read that were already local.
func (r *Resolver) countHit(m *chunk.Manifest, off, length int64, missing []chunk.Chunk) {
	var hit int64
	mi := 0
	for _, c := range m.ChunksIn(off, length) {
		if mi < len(missing) && missing[mi].Offset == c.Offset {
			mi++
			continue
		}
		hit += min(c.End(), off+length) - max(c.Offset, off)
	}
	if hit > 0 {
		r.stats.add(chunk.SourceLocal, hit, 0, 0)
		r.met.bytes.WithLabelValues(string(chunk.SourceLocal)).Add(float64(hit))
	}
}

// ensureChunk fetches one chunk unless another caller already is; either way it returns when the
// chunk is present or the fetch failed. A caller whose context ends stops waiting; the shared
// fetch goes on for the others under its own timeout.
func (r *Resolver) ensureChunk(ctx context.Context, b *blobEntry, c chunk.Chunk, prefetch bool) error {
	if !prefetch {
		r.demand.Add(1)
		defer r.demand.Add(-1)
	}
	ch := r.startFlight(ctx, b, b.chunk(c), flightKey(b, c), prefetch)
	select {
	case res := <-ch:
		return res.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startFlight starts the fetch of c (key) unless one is running, and returns the channel its
// result comes on. The fetch feeds the key's Progress (making one if no reader did).
func (r *Resolver) startFlight(ctx context.Context, b *blobEntry, c chunk.Chunk, key string, prefetch bool) <-chan singleflight.Result {
	return r.flight.DoChan(key, func() (any, error) {
		done, ok := r.scope.Track()
		if !ok {
			return nil, ErrClosed
		}
		defer done()
		fctx, cancel := r.scope.Detach(ctx, r.cfg.FetchTimeout)
		defer cancel()
		prog := r.progress(key, b, c, chunk.Range{})
		defer r.dropProgress(key, prog)
		err := r.fetchChunk(fctx, b, c, prefetch, prog)
		if err != nil {
			prog.Fail(err)
		}
		return nil, err
	})
}

// fetchChunk runs once per chunk at a time, detached from the caller that started it (others may
// be waiting on it) and bounded by FetchTimeout.
//
// prog receives the chunk's bytes as they are verified (sub-blocks from a V4 peer, then the
// whole chunk), before the chunk is stored: readers waiting on it are answered then.
func (r *Resolver) fetchChunk(fctx context.Context, b *blobEntry, c chunk.Chunk, prefetch bool, prog *chunk.Progress) error {
	release, err := r.acquire(fctx, prefetch)
	if err != nil {
		return err
	}
	released := false
	defer func() {
		if !released {
			release()
		}
	}()
	start := time.Now()
	data, src, peerWire, err := r.fetchBytes(fctx, b, c, prog)
	r.countCorrupt(err)
	for try := 1; err != nil && errors.Is(err, chunk.ErrCorrupt) && try < r.cfg.CorruptAttempts && fctx.Err() == nil; try++ {
		// Wrong bytes are counted where they were found (the peer is struck, the origin's bytes
		// are refused); ask again, perhaps from another source, before failing the read.
		r.log.Info("chunk did not match its CID; asking again", "blob", b.m.Blob, "offset", c.Offset, "cid", c.CID, "attempt", try+1, "err", err)
		if sleepCtx(fctx, time.Duration(try)*50*time.Millisecond) != nil {
			break
		}
		data, src, peerWire, err = r.fetchBytes(fctx, b, c, prog)
		r.countCorrupt(err)
	}
	if err == nil {
		prog.Finish(data) // readers have their bytes now; the store's write and sync follow
	}
	if err != nil {
		r.met.failures.Inc()
		r.stats.fail()
		return fmt.Errorf("demand: chunk %s at %d of blob %s: %w", c.CID, c.Offset, b.m.Blob, err)
	}
	// The fetch slot is for the network: the store's write and sync run without it, so the
	// next fetch starts while this one syncs (a prefetch bounds how many wait here:
	// PrefetchWriteBehind).
	release()
	released = true
	put := r.store.Put
	if cs, ok := r.store.(ColdStore); ok && prefetch {
		put = cs.PutCold // nobody is waiting to read it: around the page cache
	}
	if err := put(fctx, b.m.Blob, c, data); err != nil {
		r.met.failures.Inc()
		r.stats.fail()
		return fmt.Errorf("demand: storing chunk %s at %d of blob %s: %w", c.CID, c.Offset, b.m.Blob, err)
	}
	elapsed := time.Since(start)
	wire := wireBytes(c, src, peerWire)
	r.stats.add(src, c.Length, wire, elapsed)
	r.met.bytes.WithLabelValues(string(src)).Add(float64(c.Length))
	r.met.wire.WithLabelValues(string(src)).Add(float64(wire))
	r.met.seconds.WithLabelValues(string(src)).Observe(elapsed.Seconds())
	r.log.Debug("chunk fetched", "blob", b.m.Blob, "offset", c.Offset, "length", c.Length, "source", src, "elapsed", elapsed, "prefetch", prefetch)
	return nil
}

// countCorrupt counts a fetch that failed on wrong bytes. fetchBytes returns chunk.ErrCorrupt only
// for the origin's bytes: a local copy that fails its check is counted by the store and fetched
// again, and package p2p strikes a peer that answers wrong bytes and asks elsewhere.
func (r *Resolver) countCorrupt(err error) {
	if err != nil && errors.Is(err, chunk.ErrCorrupt) {
		r.stats.corrupt()
	}
}

// wireBytes is what fetching chunk c from src moved over the network to this host: its stored
// length from the origin, what package p2p says it took from a peer (peerWire: a zstd frame's
// length, or the chunk's), nothing from a local copy.
func wireBytes(c chunk.Chunk, src chunk.Source, peerWire int64) int64 {
	switch src {
	case chunk.SourceOrigin:
		return c.Stored().Length
	case chunk.SourcePeer, chunk.SourceCoalesced:
		return peerWire
	}
	return 0
}

// fetchBytes gets a chunk's bytes, verified exactly once on the way: by the store for a local
// copy in another blob (dedup), by package p2p for bytes from a peer or the origin, or here for
// the origin when there is no cluster.
func (r *Resolver) fetchBytes(ctx context.Context, b *blobEntry, c chunk.Chunk, prog *chunk.Progress) (chunk.Verified, chunk.Source, int64, error) {
	held, err := r.store.HasCID(c.CID)
	if err != nil {
		return chunk.Verified{}, "", 0, fmt.Errorf("local store: %w", err)
	}
	if held {
		if v, err := r.store.ReadChunk(ctx, c.CID); err == nil && v.Len() == c.Length {
			return v, chunk.SourceDedup, 0, nil
		}
		// Evicted or damaged meanwhile: fetch it like any other chunk.
	}
	fromOrigin := func(ctx context.Context) ([]byte, error) {
		if b.origin == nil {
			return nil, fmt.Errorf("blob %s has no origin", b.m.Blob)
		}
		return b.origin(ctx, c)
	}
	if r.peers == nil {
		raw, err := fromOrigin(ctx)
		if err != nil {
			return chunk.Verified{}, "", 0, err
		}
		v, err := chunk.Verify(c.CID, raw)
		if err != nil {
			return chunk.Verified{}, "", 0, fmt.Errorf("from origin: %w", err)
		}
		return v, chunk.SourceOrigin, 0, nil
	}
	var data chunk.Verified
	var src chunk.Source
	var peerWire int64
	if pp, ok := r.peers.(ProgressivePeers); ok && prog != nil && prog.SubBlockSize() > 0 {
		data, src, peerWire, err = pp.FetchProgressive(ctx, b.m.Blob, c, prog, fromOrigin)
	} else {
		data, src, peerWire, err = r.peers.FetchWire(ctx, b.m.Blob, c, fromOrigin)
	}
	if err != nil {
		return chunk.Verified{}, "", 0, err
	}
	if src != chunk.SourceOrigin {
		src = chunk.SourcePeer // from a holder or through the cluster's fetcher: over the LAN
	}
	return data, src, peerWire, nil
}

// acquire takes a worker slot. Prefetch takes one of its own share first and then waits while
// demand reads are queued, so a burst of demand never sits behind background work.
func (r *Resolver) acquire(ctx context.Context, prefetch bool) (func(), error) {
	if prefetch {
		select {
		case r.prefetch <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		for r.demand.Load() > int64(cap(r.slots)-cap(r.prefetch)) {
			select {
			case <-time.After(5 * time.Millisecond):
			case <-ctx.Done():
				<-r.prefetch
				return nil, ctx.Err()
			}
		}
	}
	select {
	case r.slots <- struct{}{}:
	case <-ctx.Done():
		if prefetch {
			<-r.prefetch
		}
		return nil, ctx.Err()
	}
	return func() {
		<-r.slots
		if prefetch {
			<-r.prefetch
		}
	}, nil
}

// SourceStats are the totals of one source.
type SourceStats struct {
	Bytes int64 `json:"bytes"` // chunk data made present
	// WireBytes is what those chunks took on the network to this host: less than Bytes for
	// compressed chunks from the origin, 0 for local sources.
	WireBytes int64         `json:"wireBytes"`
	Chunks    int64         `json:"chunks"`
	P50       time.Duration `json:"p50"`
	P99       time.Duration `json:"p99"`
}

// Stats are the resolver's totals since start.
type Stats struct {
	Sources  map[chunk.Source]SourceStats `json:"sources"`
	Failures int64                        `json:"failures"`
	// OriginCorrupt counts answers from the origin whose bytes did not match the chunk's CID
	// (each attempt once). A peer's wrong bytes are counted by package p2p against that peer,
	// and the store counts its own; together they make the daemon's verifyFailures.
	OriginCorrupt int64 `json:"originCorrupt"`
}

// Stats returns the totals by source, with fetch latency percentiles over recent fetches.
func (r *Resolver) Stats() Stats { return r.stats.snapshot() }

type stats struct {
	mu            sync.Mutex
	by            map[chunk.Source]*sourceStats
	failures      int64
	originCorrupt int64
}

type sourceStats struct {
	bytes, wire, chunks int64
	ring                [512]time.Duration // recent latencies
	n                   int
}

func newStats() *stats {
	s := &stats{by: map[chunk.Source]*sourceStats{}}
	for _, src := range Sources {
		s.by[src] = &sourceStats{}
	}
	return s
}

func (s *stats) add(src chunk.Source, n, wire int64, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.by[src]
	st.bytes += n
	st.wire += wire
	if src == chunk.SourceLocal {
		return // hits are byte ranges, not fetches
	}
	st.chunks++
	st.ring[st.n%len(st.ring)] = d
	st.n++
}

func (s *stats) fail() {
	s.mu.Lock()
	s.failures++
	s.mu.Unlock()
}

func (s *stats) corrupt() {
	s.mu.Lock()
	s.originCorrupt++
	s.mu.Unlock()
}

func (s *stats) snapshot() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Stats{Sources: map[chunk.Source]SourceStats{}, Failures: s.failures, OriginCorrupt: s.originCorrupt}
	for src, st := range s.by {
		ss := SourceStats{Bytes: st.bytes, WireBytes: st.wire, Chunks: st.chunks}
		if n := min(st.n, len(st.ring)); n > 0 {
			lat := append([]time.Duration(nil), st.ring[:n]...)
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			ss.P50, ss.P99 = lat[n*50/100], lat[min(n-1, n*99/100)]
		}
		out.Sources[src] = ss
	}
	return out
}

type resolverMetrics struct {
	bytes    *prometheus.CounterVec
	wire     *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
	failures prometheus.Counter
	early    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*resolverMetrics, error) {
	m := &resolverMetrics{
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_demand_bytes_total", Help: "Bytes of chunk data made present, by source (local = demand bytes that were already present).",
		}, []string{"source"}),
		wire: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_demand_wire_bytes_total", Help: "Bytes the fetched chunks took on the network to this host, by source (compressed from the origin: less than shoal_demand_bytes_total).",
		}, []string{"source"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "shoal_demand_fetch_seconds", Help: "Time to fetch, verify and store one chunk, by source.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"source"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_demand_fetch_failures_total", Help: "Chunk fetches that failed from every source.",
		}),
		early: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_demand_early_reads_total", Help: "Demand reads answered before their chunk was stored (EnsureRead), by what they waited for: the covering verified sub-blocks, or the whole verified chunk.",
		}, []string{"how"}),
	}
	var err error
	if m.bytes, err = metrics.Register(reg, m.bytes); err != nil {
		return nil, fmt.Errorf("demand: %w", err)
	}
	if m.wire, err = metrics.Register(reg, m.wire); err != nil {
		return nil, fmt.Errorf("demand: %w", err)
	}
	if m.seconds, err = metrics.Register(reg, m.seconds); err != nil {
		return nil, fmt.Errorf("demand: %w", err)
	}
	if m.failures, err = metrics.Register(reg, m.failures); err != nil {
		return nil, fmt.Errorf("demand: %w", err)
	}
	if m.early, err = metrics.Register(reg, m.early); err != nil {
		return nil, fmt.Errorf("demand: %w", err)
	}
	return m, nil
}
