package chunkstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-p2p/shoal/chunkstore/layout"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/ipfs/go-cid"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/chunk"
)

// EventKind says what happened to a chunk.
type EventKind int

const (
	// ChunkAdded: the chunk became present (written and made durable).
	ChunkAdded EventKind = iota + 1
	// ChunkEvicted: the chunk is no longer present (evicted, or dropped after failing
	// verification or reconciliation). Peers should stop being told we have it.
	ChunkEvicted
)

func (k EventKind) String() string {
	switch k {
	case ChunkAdded:
		return "added"
	case ChunkEvicted:
		return "evicted"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event reports a change of a chunk's presence. It is delivered after the index records it.
type Event struct {
	Kind  EventKind
	Blob  digest.Digest
	Chunk chunk.Chunk
}

// Stats are the store's counters. The cumulative ones persist across restarts (they may lag by
// the last batch after a crash).
type Stats struct {
	BytesWritten   int64 // chunk bytes written by WriteChunk
	ChunksWritten  int64
	ChunksEvicted  int64
	BytesEvicted   int64
	VerifyFailures int64 // chunks whose bytes did not match their CID (on WriteChunk or read)
	ChunksRead     int64 // chunks served by ReadChunk
	BytesRead      int64 // bytes served by ReadChunk and ReadAt

	PresentBytes  int64 // now present
	PresentChunks int64
	Blobs         int
	MaxBytes      int64
	OpenFiles     int
}

var statNames = []string{"bytes_written", "chunks_written", "chunks_evicted", "bytes_evicted", "verify_failures", "chunks_read", "bytes_read"}

type counters struct {
	bytesWritten, chunksWritten, chunksEvicted, bytesEvicted, verifyFailures, chunksRead, bytesRead atomic.Int64
}

func (c *counters) all() []*atomic.Int64 {
	return []*atomic.Int64{&c.bytesWritten, &c.chunksWritten, &c.chunksEvicted, &c.bytesEvicted, &c.verifyFailures, &c.chunksRead, &c.bytesRead}
}

// Store is the local chunk store. Its methods are safe for concurrent use.
type Store struct {
	dir   string
	cfg   Config
	log   *slog.Logger
	db    *badger.DB
	files *fdCache
	space *space
	ctr   counters
	used  atomic.Int64 // bytes of present chunks
	resv  atomic.Int64 // bytes reserved by writes in progress (only with MaxBytes)
	// overflowWarned: the PinnedOverflow warning was logged (once per run).
	overflowWarned atomic.Bool

	mu     sync.RWMutex // guards blobs, closed and pins
	blobs  map[digest.Digest]*blobState
	closed bool
	ops    sync.WaitGroup

	addMu   sync.Mutex // serializes AddBlob
	idxMu   sync.Mutex // serializes index writes that change blob records and counters
	evictMu sync.Mutex // one evictor at a time

	flightMu sync.Mutex
	flight   map[flightKey]*flight

	manifests *manifestCache

	subsMu  sync.RWMutex
	subs    map[int]func(Event)
	nextSub int

	commitCh   chan *commitReq
	committerW sync.WaitGroup
	metrics    *storeMetrics
}

type blobState struct {
	digest         digest.Digest
	path           string
	size           int64
	manifestDigest digest.Digest
	// lock is held shared by writes and reads of chunk data and exclusively by eviction, so a
	// hole is never punched under a chunk being written or read.
	lock          sync.RWMutex
	presentBytes  atomic.Int64 // changed only under Store.idxMu
	presentChunks atomic.Int64
	lastAccess    atomic.Int64
	sig           fileSig         // guarded by Store.idxMu
	pins          map[string]bool // guarded by Store.mu
	have          presenceMap     // in-memory mirror of the index's P keys
}

func (b *blobState) record() blobRecord {
	return blobRecord{Size: b.size, ManifestDigest: b.manifestDigest, PresentBytes: b.presentBytes.Load(),
		PresentChunks: b.presentChunks.Load(), LastAccess: b.lastAccess.Load(), Sig: b.sig}
}

func (b *blobState) touch() { b.lastAccess.Store(time.Now().UnixNano()) }

type flightKey struct {
	blob digest.Digest
	off  int64
}

type flight struct {
	done chan struct{}
	err  error
}

// Open opens (creating if needed) the store whose cachefiles cache directory is dir: backing
// files go to dir/cache/..., the index to cfg.IndexDir (default dir/index). It reconciles the
// index with the backing files before returning, and starts the store's group-commit goroutine,
// which Close stops.
func Open(dir string, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.IndexDir == "" {
		cfg.IndexDir = filepath.Join(dir, "index")
	}
	s := &Store{
		dir:       dir,
		cfg:       cfg,
		log:       cfg.Logger.With("subsystem", "chunkstore"),
		blobs:     make(map[digest.Digest]*blobState),
		flight:    make(map[flightKey]*flight),
		manifests: newManifestCache(cfg.ManifestCache, cfg.ManifestCacheChunks),
		subs:      make(map[int]func(Event)),
		commitCh:  make(chan *commitReq, cfg.SyncBatch),
	}
	s.files = newFDCache(cfg.MaxOpenFiles, func(p string) (int, error) {
		return unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0)
	})
	if cfg.DirectWrites { // for PutCold
		s.files.openDirect = func(p string) (int, error) {
			return unix.Open(p, unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
		}
	}
	if err := s.prepareDirs(); err != nil {
		return nil, err
	}
	sp, err := newSpace(dir, cfg.IndexDir, cfg.ReserveBytes)
	if err != nil {
		return nil, err
	}
	s.space = sp
	opts := s.badgerOptions()
	if err := s.prepareSpace(opts); err != nil {
		return nil, err
	}
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: open index %s: %w", cfg.IndexDir, err)
	}
	s.db = db
	start := time.Now()
	if err := s.load(); err != nil {
		db.Close()
		return nil, err
	}
	reconciled, dropped, err := s.reconcileAll()
	if err != nil {
		db.Close()
		return nil, err
	}
	s.restoreHeadroom()
	s.log.Info("chunk store open", "dir", dir, "blobs", len(s.blobs), "present_bytes", s.used.Load(),
		"reconciled_blobs", reconciled, "dropped_chunks", dropped, "took", time.Since(start))
	if cfg.Registerer != nil {
		m, err := newMetrics(s, cfg.Registerer)
		if err != nil {
			db.Close()
			return nil, err
		}
		s.metrics = m
	}
	s.committerW.Add(1)
	go s.committer()
	return s, nil
}

// badgerOptions are the index's settings, chosen for bounded memory (BENCHMARKS.md, chunkstore
// scale): two small memtables; block and table-index caches bounded by IndexCacheBytes (with an
// index cache, table indexes and bloom filters are loaded on demand, not all kept in memory);
// tables of one size at every level; and no block compression. Badger's compaction builds up to
// 8 + splits tables at once per compactor, each in a buffer of twice its table size, so with the
// default growth (2 MiB doubling per level) compacting a large index held hundreds of MB; fixed
// 2 MiB tables bound it to tens. Without compression a table builder needs no compression
// goroutines and buffers, and a block-cache miss no decompression buffer; the keys of a blob
// share its digest as a prefix, which badger's block format already stores once.
func (s *Store) badgerOptions() badger.Options {
	opts := badger.DefaultOptions(s.cfg.IndexDir)
	opts.TableSizeMultiplier = 1 // no With method for it
	opts.Compression = options.None
	return opts.
		WithLogger(badgerLogger{s.log}).
		WithLoggingLevel(badger.WARNING).
		WithBlockCacheSize(s.cfg.IndexCacheBytes).
		WithIndexCacheSize(s.cfg.IndexCacheBytes).
		WithMemTableSize(memTableBytes).
		WithNumMemtables(2).
		WithNumLevelZeroTables(4).
		WithNumLevelZeroTablesStall(8).
		WithBaseTableSize(2 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2). // badger's minimum
		WithDetectConflicts(false)
}

func (s *Store) prepareDirs() error {
	vol := layout.VolumeDir(s.dir, s.cfg.Domain)
	for _, d := range []string{filepath.Join(s.dir, "graveyard"), vol, s.cfg.IndexDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("chunkstore: %w", err)
		}
	}
	buf := make([]byte, 64)
	n, err := unix.Getxattr(vol, layout.XattrName, buf)
	if err == nil && n == 4 && string(buf[:4]) == string(layout.VolumeXattr()) {
		return nil
	}
	if err := unix.Setxattr(vol, layout.XattrName, layout.VolumeXattr(), 0); err != nil {
		return fmt.Errorf("chunkstore: set %s on volume directory %s (the cache filesystem needs user xattrs): %w", layout.XattrName, vol, err)
	}
	return nil
}

// load reads blob records, pins and counters into memory: O(blobs), not O(chunks).
func (s *Store) load() error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false})
		defer it.Close()
		for it.Seek([]byte{pfxBlob}); it.ValidForPrefix([]byte{pfxBlob}); it.Next() {
			d := digest.Digest(it.Item().Key()[1:])
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("chunkstore: read index record of %s: %w", d, err)
			}
			r, err := decodeBlobRecord(v)
			if err != nil {
				return fmt.Errorf("chunkstore: index record of %s: %w", d, err)
			}
			path, err := layout.BackingPath(s.dir, s.cfg.Domain, d)
			if err != nil {
				s.log.Warn("skipping index record with bad digest", "blob", d, "err", err)
				continue
			}
			b := &blobState{digest: d, path: path, size: r.Size, manifestDigest: r.ManifestDigest, sig: r.Sig, pins: map[string]bool{}}
			b.presentBytes.Store(r.PresentBytes)
			b.presentChunks.Store(r.PresentChunks)
			b.lastAccess.Store(r.LastAccess)
			s.blobs[d] = b
			s.used.Add(r.PresentBytes)
		}
		for it.Seek([]byte{pfxPin}); it.ValidForPrefix([]byte{pfxPin}); it.Next() {
			k := it.Item().Key()[1:]
			for i, c := range k {
				if c == 0 {
					if b := s.blobs[digest.Digest(k[:i])]; b != nil {
						b.pins[string(k[i+1:])] = true
					}
					break
				}
			}
		}
		for i, name := range statNames {
			item, err := txn.Get(statKey(name))
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			} else if err != nil {
				return fmt.Errorf("chunkstore: read counter %s: %w", name, err)
			}
			v, _ := item.ValueCopy(nil)
			n, err := decodeBE64(v)
			if err != nil {
				s.log.Warn("bad counter in index, starting it at 0", "counter", name, "err", err)
				continue
			}
			s.ctr.all()[i].Store(n)
		}
		return nil
	})
}

// Close waits for writes in progress, records the backing files' state for a cheap next Open,
// and closes the index and files.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	s.ops.Wait()
	close(s.commitCh)
	s.committerW.Wait()
	if s.metrics != nil {
		s.metrics.unregister()
	}
	// Record each file's identity so the next Open can skip reconciling unchanged files.
	s.idxMu.Lock()
	wb := s.db.NewWriteBatch()
	for _, b := range s.blobs {
		var st unix.Stat_t
		if err := unix.Stat(b.path, &st); err == nil {
			b.sig = sigOf(&st)
		}
		_ = wb.Set(blobKey(b.digest), encodeBlobRecord(b.record()))
	}
	s.setCounters(wb)
	err := wb.Flush()
	s.idxMu.Unlock()
	s.files.closeAll()
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("chunkstore: close: %w", err)
	}
	return nil
}

func sigOf(st *unix.Stat_t) fileSig {
	return fileSig{Ino: int64(st.Ino), Size: st.Size, CtimeNs: st.Ctim.Nano()}
}

// setCounters adds the persistent counters to a batch. Callers hold idxMu.
func (s *Store) setCounters(wb *badger.WriteBatch) {
	for i, c := range s.ctr.all() {
		_ = wb.Set(statKey(statNames[i]), be64(c.Load()))
	}
}

// enter registers an operation; Close waits for operations to finish.
func (s *Store) enter() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	s.ops.Add(1)
	return nil
}

func (s *Store) leave() { s.ops.Done() }

func (s *Store) blob(d digest.Digest) (*blobState, error) {
	s.mu.RLock()
	b := s.blobs[d]
	s.mu.RUnlock()
	if b == nil {
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	return b, nil
}

// BackingPath is the backing file of digest d in this store (whether or not it is registered).
// It returns "" for a digest that cannot be a cookie key.
func (s *Store) BackingPath(d digest.Digest) string {
	p, err := layout.BackingPath(s.dir, s.cfg.Domain, d)
	if err != nil {
		return ""
	}
	return p
}

// Domain is the store's fscache domain (domain_id= of fscache mounts).
func (s *Store) Domain() string { return s.cfg.Domain }

// AddBlob registers a blob (or bootstrap) by its chunk manifest and creates its sparse backing
// file with the cachefiles xattr. Registering the same manifest again is a no-op; a different
// manifest for a registered blob is an error.
func (s *Store) AddBlob(ctx context.Context, m *chunk.Manifest) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if m == nil {
		return fmt.Errorf("add blob: nil manifest: %w", ErrInvalid)
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("add blob %s: %w: %w", m.Blob, ErrInvalid, err)
	}
	path, err := layout.BackingPath(s.dir, s.cfg.Domain, m.Blob)
	if err != nil {
		return fmt.Errorf("add blob: %w", err)
	}
	js, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("add blob %s: encode manifest: %w", m.Blob, err)
	}
	md := digest.FromBytes(js)
	s.addMu.Lock()
	defer s.addMu.Unlock()
	if b, err := s.blob(m.Blob); err == nil {
		if b.manifestDigest != md {
			return fmt.Errorf("add blob %s: already registered with chunk manifest %s, not %s: %w", m.Blob, b.manifestDigest, md, ErrInvalid)
		}
		return s.ensureBacking(b.path, b.size)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.ensureBacking(path, m.BlobSize); err != nil {
		return err
	}
	b := &blobState{digest: m.Blob, path: path, size: m.BlobSize, manifestDigest: md, pins: map[string]bool{}}
	b.touch()
	s.idxMu.Lock()
	err = s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(manifestKey(m.Blob), encodeIndexManifest(m)); err != nil {
			return err
		}
		// Stale presence from an earlier registration must not survive.
		if err := deletePrefix(txn, presentPrefix(m.Blob)); err != nil {
			return err
		}
		return txn.Set(blobKey(m.Blob), encodeBlobRecord(b.record()))
	})
	s.idxMu.Unlock()
	if err != nil {
		return fmt.Errorf("add blob %s: index: %w", m.Blob, err)
	}
	s.manifests.put(m.Blob, m)
	s.mu.Lock()
	s.blobs[m.Blob] = b
	s.mu.Unlock()
	s.log.Debug("blob added", "blob", m.Blob, "size", m.BlobSize, "chunks", len(m.Chunks), "path", path)
	return nil
}

func deletePrefix(txn *badger.Txn, prefix []byte) error {
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: prefix})
	var keys [][]byte
	for it.Rewind(); it.Valid(); it.Next() {
		keys = append(keys, it.Item().KeyCopy(nil))
	}
	it.Close()
	for _, k := range keys {
		if err := txn.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// ensureBacking creates the backing file (and its fan-out directory) if needed, makes it at
// least size bytes (sparse), and sets its cachefiles xattr.
func (s *Store) ensureBacking(path string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("backing file %s: %w", path, classify(err))
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("backing file %s: %w", path, classify(err))
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("backing file %s: %w", path, classify(err))
	}
	if st.Size < size {
		if err := unix.Ftruncate(fd, size); err != nil {
			return fmt.Errorf("backing file %s: set size %d: %w", path, size, classify(err))
		}
	}
	want := layout.DataXattr(size)
	buf := make([]byte, 64)
	if n, err := unix.Fgetxattr(fd, layout.XattrName, buf); err == nil && string(buf[:n]) == string(want) {
		return nil
	}
	if err := unix.Fsetxattr(fd, layout.XattrName, want, 0); err != nil {
		return fmt.Errorf("backing file %s: set %s: %w", path, layout.XattrName, classify(err))
	}
	return nil
}

// Blob returns the chunk manifest of a registered blob.
func (s *Store) Blob(d digest.Digest) (*chunk.Manifest, bool) {
	b, err := s.blob(d)
	if err != nil {
		return nil, false
	}
	m, err := s.manifest(b)
	if err != nil {
		s.log.Warn("cannot load chunk manifest", "blob", d, "err", err)
		return nil, false
	}
	return m, true
}

// Blobs lists the registered blobs.
func (s *Store) Blobs() []digest.Digest {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]digest.Digest, 0, len(s.blobs))
	for d := range s.blobs {
		out = append(out, d)
	}
	return out
}

func (s *Store) manifest(b *blobState) (*chunk.Manifest, error) {
	if m := s.manifests.get(b.digest); m != nil {
		return m, nil
	}
	var m *chunk.Manifest
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(manifestKey(b.digest))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { // decoded in place: no copy of the value
			var derr error
			m, derr = decodeIndexManifest(v)
			if derr != nil {
				derr = fmt.Errorf("chunk manifest of %s in index: %w: %w", b.digest, ErrCorrupt, derr)
			}
			return derr
		})
	})
	if err != nil && !errors.Is(err, ErrCorrupt) {
		err = fmt.Errorf("chunk manifest of %s: %w", b.digest, err)
	}
	if err != nil {
		return nil, err
	}
	s.manifests.put(b.digest, m)
	return m, nil
}

// Pin records that a mounted image uses the blob: pinned blobs are never evicted.
func (s *Store) Pin(d digest.Digest, image string) error {
	return s.setPin(d, image, true)
}

// Unpin removes a pin set by Pin. Unpinning what is not pinned is a no-op.
func (s *Store) Unpin(d digest.Digest, image string) error {
	return s.setPin(d, image, false)
}

func (s *Store) setPin(d digest.Digest, image string, on bool) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	b, err := s.blob(d)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.pins[image] == on {
		return nil
	}
	err = s.db.Update(func(txn *badger.Txn) error {
		if on {
			return txn.Set(pinKey(d, image), nil)
		}
		return txn.Delete(pinKey(d, image))
	})
	if err != nil {
		return fmt.Errorf("pin blob %s for %s: %w", d, image, err)
	}
	if on {
		b.pins[image] = true
	} else {
		delete(b.pins, image)
	}
	return nil
}

// Pins lists the images pinning a blob.
func (s *Store) Pins(d digest.Digest) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b := s.blobs[d]
	if b == nil {
		return nil
	}
	out := make([]string, 0, len(b.pins))
	for p := range b.pins {
		out = append(out, p)
	}
	return out
}

// Subscribe calls fn for every event until the returned cancel is called. fn runs on the goroutine
// that changed the index, so it must return quickly and must not write to the store.
func (s *Store) Subscribe(fn func(Event)) (cancel func()) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = fn
	return func() {
		s.subsMu.Lock()
		delete(s.subs, id)
		s.subsMu.Unlock()
	}
}

func (s *Store) emit(evs []Event) {
	if len(evs) == 0 {
		return
	}
	s.subsMu.RLock()
	defer s.subsMu.RUnlock()
	for _, fn := range s.subs {
		for _, e := range evs {
			fn(e)
		}
	}
}

// Stats returns the counters.
func (s *Store) Stats() Stats {
	st := Stats{
		BytesWritten: s.ctr.bytesWritten.Load(), ChunksWritten: s.ctr.chunksWritten.Load(),
		ChunksEvicted: s.ctr.chunksEvicted.Load(),
		BytesEvicted:  s.ctr.bytesEvicted.Load(), VerifyFailures: s.ctr.verifyFailures.Load(),
		ChunksRead: s.ctr.chunksRead.Load(), BytesRead: s.ctr.bytesRead.Load(),
		PresentBytes: s.used.Load(), MaxBytes: s.cfg.MaxBytes, OpenFiles: s.files.len(),
	}
	s.mu.RLock()
	st.Blobs = len(s.blobs)
	for _, b := range s.blobs {
		st.PresentChunks += b.presentChunks.Load()
	}
	s.mu.RUnlock()
	return st
}

// classify wraps a system error with the store's sentinel for it.
func classify(err error) error {
	switch {
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	case errors.Is(err, unix.EIO), errors.Is(err, unix.EROFS), errors.Is(err, unix.EUCLEAN):
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	return err
}

var _ io.ReaderAt = (*blobReader)(nil)

// blobReader adapts ReadAt of one blob to io.ReaderAt.
type blobReader struct {
	s *Store
	d digest.Digest
}

func (r *blobReader) ReadAt(p []byte, off int64) (int, error) { return r.s.ReadAt(r.d, p, off) }

// ReaderAt returns an io.ReaderAt over the present data of a blob (see ReadAt).
func (s *Store) ReaderAt(d digest.Digest) io.ReaderAt { return &blobReader{s, d} }

// HasCID reports whether any blob holds a present chunk with this CID.
func (s *Store) HasCID(id cid.Cid) (bool, error) {
	found := false
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: cidPrefix(id)})
		defer it.Close()
		it.Rewind()
		found = it.Valid()
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("index lookup of chunk %s: %w: %w", id, ErrIO, err)
	}
	return found, nil
}
