package chunkstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Disk space. Badger writes its memtable logs, value logs and new tables through shared
// mappings of files it has just extended with ftruncate (sparse). On a full filesystem the
// kernel cannot allocate a block when such a page is first written and delivers SIGBUS, which
// kills the process: badger cannot be trusted to fail cleanly on ENOSPC. So the store never lets
// the filesystem get that full:
//
//   - Chunk writes keep ReserveBytes plus the index's own size free on the cache filesystem
//     (evicting unpinned data first, then failing with ErrNoSpace), so the index always has room
//     to grow and compact. MaxBytes counts the index's tables and value logs too.
//   - A preallocated reserve file (reserveFileName in the index directory) holds the space the
//     index needs to start. When something else fills the filesystem, Open deletes it so badger
//     can start, evicts unpinned chunks to get the headroom back and then makes it again.
//   - When even that is not enough, Open opens the index read-only (which writes nothing),
//     punches the backing files of unpinned blobs, least recently used first, and only then
//     opens it for writing (reconciliation drops the punched chunks). If nothing can be freed,
//     Open fails with an error that says how much space is missing, instead of crashing.

// reserveFileName is the reserve file in the index directory (badger ignores files it does not
// know).
const reserveFileName = "shoal-reserve"

// memTableBytes is badger's memtable size: each memtable has a log of up to this size.
const memTableBytes = 8 << 20

// startBytes is the free space the index needs to open and run until the store's first headroom
// check: a memtable log, a value log header, the LOCK and MANIFEST files and the table a replayed
// memtable flushes to. It is also the size of the reserve file.
func (s *Store) startBytes() int64 {
	return min(s.space.reserve, 2*memTableBytes+(1<<20))
}

// space tracks the filesystems under the store.
type space struct {
	dataDir, indexDir string
	reserve           int64        // Config.ReserveBytes, or what 0 (auto) came to
	sameFS            bool         // index and backing files share a filesystem
	inflight          atomic.Int64 // chunk bytes being written, not yet committed or failed
	reserveHeld       atomic.Bool  // the reserve file exists at its full size

	idxMu      sync.Mutex
	idxBytes   atomic.Int64 // allocated bytes of the index's tables and value logs
	idxAllocd  atomic.Int64 // allocated bytes of everything in the index directory but the reserve
	idxChecked atomic.Int64 // unix nanoseconds of the last measurement
}

func newSpace(dataDir, indexDir string, reserve int64) (*space, error) {
	var a, b unix.Stat_t
	if err := unix.Stat(dataDir, &a); err != nil {
		return nil, fmt.Errorf("chunkstore: %s: %w", dataDir, err)
	}
	if err := unix.Stat(indexDir, &b); err != nil {
		return nil, fmt.Errorf("chunkstore: %s: %w", indexDir, err)
	}
	sp := &space{dataDir: dataDir, indexDir: indexDir, sameFS: a.Dev == b.Dev, reserve: reserve}
	if reserve == 0 {
		var st unix.Statfs_t
		if err := unix.Statfs(dataDir, &st); err != nil {
			return nil, fmt.Errorf("chunkstore: statfs %s: %w", dataDir, err)
		}
		sp.reserve = autoReserve(int64(st.Blocks) * int64(st.Bsize))
	}
	return sp, nil
}

// autoReserve is ReserveBytes 0: a sixteenth of the filesystem, at least 4 MiB and at most
// 64 MiB (what a large index needs to start and compact).
func autoReserve(fsBytes int64) int64 {
	return min(max(fsBytes/16, 4<<20), 64<<20)
}

// freeBytes is what this process can still allocate on the filesystem of dir.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if isRoot {
		// Root may use the blocks the filesystem keeps back for it, and so may badger.
		return int64(st.Bfree) * int64(st.Bsize), nil
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

var isRoot = os.Geteuid() == 0

// indexBytes measures (at most once a second) the allocated size of the index: tables and value
// logs (what MaxBytes counts), and everything in its directory but the reserve file (what the
// headroom counts). Allocated, not apparent: badger's logs are large sparse files.
func (sp *space) indexBytes() (durable, all int64) {
	now := time.Now().UnixNano()
	if now-sp.idxChecked.Load() < int64(time.Second) || !sp.idxMu.TryLock() {
		return sp.idxBytes.Load(), sp.idxAllocd.Load()
	}
	defer sp.idxMu.Unlock()
	var d, a int64
	_ = filepath.WalkDir(sp.indexDir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || e.Name() == reserveFileName {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil {
			return nil
		}
		n := st.Blocks * 512
		a += n
		switch {
		case strings.HasSuffix(p, ".sst"):
			d += n
		case strings.HasSuffix(p, ".vlog"):
			d += max(0, n-4096) // every value log has a header block, even with no values in it
		}
		return nil
	})
	sp.idxBytes.Store(d)
	sp.idxAllocd.Store(a)
	sp.idxChecked.Store(now)
	return d, a
}

// headroom is the free space chunk writes must leave on the cache filesystem.
func (s *Store) headroom() int64 {
	h := s.space.reserve
	if s.space.sameFS {
		durable, _ := s.space.indexBytes()
		h += durable // room to rewrite the whole index in a compaction
		if !s.space.reserveHeld.Load() {
			h += s.startBytes() // and to make the reserve file again
		}
	}
	return h
}

// reserveDisk makes sure n more bytes of chunk data leave the headroom free, evicting unpinned
// chunks (least recently used blob first) if they would not. It fails with ErrNoSpace when
// nothing evictable is left. The returned function ends the reservation.
func (s *Store) reserveDisk(n int64) (func(), error) {
	sp := s.space
	for {
		free, err := freeBytes(sp.dataDir)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrIO, err)
		}
		s.maybeReleaseReserve(free)
		need := s.headroom()
		r := sp.inflight.Add(n)
		if free-r >= need {
			s.maybeMakeReserve(free - r - need)
			return func() { sp.inflight.Add(-n) }, nil
		}
		sp.inflight.Add(-n)
		short := need - (free - r)
		// Free a little more than this write needs, so the next writes do not each evict.
		slack := max(16*n, s.space.reserve/8)
		freed, err := s.evict(s.used.Load() - short - slack)
		if err != nil {
			return nil, err
		}
		if freed == 0 {
			return nil, fmt.Errorf("cache filesystem nearly full: %s has %d bytes free and the store keeps %d for its index and state; nothing unpinned is left to evict (mounted images pin %d bytes): %w",
				sp.dataDir, free, need, s.used.Load(), ErrNoSpace)
		}
	}
}

// maybeReleaseReserve deletes the reserve file when the filesystem is so full (filled by
// something else) that the index could not keep working.
func (s *Store) maybeReleaseReserve(free int64) {
	if !s.space.sameFS && s.space.dataDir != s.space.indexDir {
		var err error
		if free, err = freeBytes(s.space.indexDir); err != nil {
			return
		}
	}
	if free >= s.startBytes()/2 || !s.space.reserveHeld.CompareAndSwap(true, false) {
		return
	}
	p := filepath.Join(s.space.indexDir, reserveFileName)
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("cannot release the index's reserve file", "path", p, "err", err)
		return
	}
	s.log.Warn("filesystem of the index nearly full: released its reserve file", "path", p, "free_bytes", free, "released_bytes", s.startBytes())
}

// maybeMakeReserve makes the reserve file again once there is room for it beyond the headroom.
func (s *Store) maybeMakeReserve(spare int64) {
	if s.space.reserveHeld.Load() || spare < 0 || !s.space.idxMu.TryLock() {
		return
	}
	defer s.space.idxMu.Unlock()
	if err := makeReserve(s.space.indexDir, s.startBytes()); err != nil {
		s.log.Debug("cannot make the index's reserve file yet", "err", err)
		return
	}
	s.space.reserveHeld.Store(true)
}

// makeReserve creates (or completes) the reserve file with its blocks allocated.
func makeReserve(dir string, n int64) error {
	p := filepath.Join(dir, reserveFileName)
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("reserve file %s: %w", p, err)
	}
	defer unix.Close(fd)
	if err := unix.Fallocate(fd, 0, 0, n); err != nil {
		_ = unix.Ftruncate(fd, 0)
		return fmt.Errorf("reserve file %s: allocate %d bytes: %w", p, n, err)
	}
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("reserve file %s: %w", p, err)
	}
	return nil
}

// reserveAllocated reports whether the reserve file exists with at least n bytes allocated.
func reserveAllocated(dir string, n int64) bool {
	var st unix.Stat_t
	return unix.Stat(filepath.Join(dir, reserveFileName), &st) == nil && st.Blocks*512 >= n
}

// prepareSpace runs before the index opens: it makes sure the index's filesystem has the room
// badger needs to start, releasing the reserve file and then, if that is not enough, punching
// unpinned blobs' backing files found through a read-only view of the index.
func (s *Store) prepareSpace(opts badger.Options) error {
	need := s.startBytes()
	dir := s.space.indexDir
	free, err := freeBytes(dir)
	if err != nil {
		return fmt.Errorf("chunkstore: %w", err)
	}
	held := reserveAllocated(dir, need)
	if free >= need {
		s.space.reserveHeld.Store(held)
		return nil
	}
	if held || fileExists(filepath.Join(dir, reserveFileName)) {
		if err := os.Remove(filepath.Join(dir, reserveFileName)); err != nil {
			return fmt.Errorf("chunkstore: release reserve file: %w", err)
		}
		s.log.Warn("filesystem of the index is full: released the reserve file to open it", "index", dir, "free_bytes", free)
		if free, err = freeBytes(dir); err != nil {
			return fmt.Errorf("chunkstore: %w", err)
		}
	}
	if free >= need {
		return nil
	}
	if !s.space.sameFS {
		return fmt.Errorf("chunkstore: the filesystem of the index %s has %d bytes free and the index needs %d to open safely: free space on it: %w", dir, free, need, ErrNoSpace)
	}
	// Free enough for the headroom and the reserve file too, not just for starting.
	freed, err := s.punchUnpinned(opts, s.space.reserve+2*need-free)
	if err != nil {
		return fmt.Errorf("chunkstore: the cache filesystem of %s is full (%d bytes free, the index needs %d to open safely) and the index cannot be read without writing to it to find unpinned data to evict (%w); free space on the filesystem: %w",
			dir, free, need, err, ErrNoSpace)
	}
	if free, err = freeBytes(dir); err != nil {
		return fmt.Errorf("chunkstore: %w", err)
	}
	if free < need {
		return fmt.Errorf("chunkstore: the cache filesystem of %s is full: %d bytes free, the index needs %d to open safely, and evicting every unpinned blob freed only %d bytes; free space on it or unpin images: %w",
			dir, free, need, freed, ErrNoSpace)
	}
	s.log.Warn("cache filesystem was full: evicted unpinned blobs before opening the index", "freed_bytes", freed, "free_bytes", free)
	return nil
}

func fileExists(p string) bool { _, err := os.Lstat(p); return err == nil }

// punchUnpinned opens the index read-only (no writes, so no new mappings to fault on), and
// punches the whole backing files of unpinned blobs, least recently used first, until about
// want bytes are freed. The index still calls their chunks present; the next open reconciles
// them away (each punched file's change time no longer matches its record).
func (s *Store) punchUnpinned(opts badger.Options, want int64) (int64, error) {
	db, err := badger.Open(opts.WithReadOnly(true))
	if err != nil {
		return 0, fmt.Errorf("chunkstore: open index %s read-only to free space: %w", opts.Dir, err)
	}
	s.db = db
	err = s.load()
	s.db = nil
	if cerr := db.Close(); err == nil && cerr != nil {
		err = cerr
	}
	blobs := s.blobs
	s.blobs = make(map[digest.Digest]*blobState)
	s.used.Store(0)
	for _, c := range s.ctr.all() {
		c.Store(0)
	}
	if err != nil {
		return 0, err
	}
	var victims []*blobState
	for _, b := range blobs {
		if len(b.pins) == 0 && b.presentBytes.Load() > 0 {
			victims = append(victims, b)
		}
	}
	sort.Slice(victims, func(i, j int) bool { return victims[i].lastAccess.Load() < victims[j].lastAccess.Load() })
	var freed int64
	for _, b := range victims {
		if freed >= want {
			break
		}
		fd, err := unix.Open(b.path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var before, after unix.Stat_t
		_ = unix.Fstat(fd, &before)
		err = unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, max(before.Size, b.size))
		_ = unix.Fstat(fd, &after)
		unix.Close(fd)
		if err != nil {
			s.log.Warn("cannot punch backing file to free space", "blob", b.digest, "path", b.path, "err", err)
			continue
		}
		freed += (before.Blocks - after.Blocks) * 512
		s.log.Warn("evicted unpinned blob to free space for the index", "blob", b.digest, "bytes", b.presentBytes.Load())
	}
	return freed, nil
}

// restoreHeadroom runs once the index is open: it evicts unpinned chunks until the headroom is
// free again and makes the reserve file if it is missing. When everything left is pinned it only
// warns: the store serves what it has and new chunk writes fail with ErrNoSpace.
func (s *Store) restoreHeadroom() {
	release, err := s.reserveDisk(0)
	if err != nil {
		s.log.Warn("cache filesystem nearly full and nothing unpinned to evict: serving what is present, new chunks cannot be stored until space is freed", "err", err)
		return
	}
	release()
}
