package chunkstore

import (
	"context"
	"fmt"

	"github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"

	"github.com/shoal-p2p/shoal/chunk"
)

// reserve makes room for n more bytes of chunk data: on the disk (reserveDisk: the index's
// headroom stays free) and under MaxBytes (reserveCap). The returned function gives the
// reservation back once the chunk is committed or has failed.
func (s *Store) reserve(ctx context.Context, n int64) (func(), error) {
	releaseDisk, err := s.reserveDisk(n)
	if err != nil {
		return nil, err
	}
	releaseCap, err := s.reserveCap(ctx, n)
	if err != nil {
		releaseDisk()
		return nil, err
	}
	return func() { releaseCap(); releaseDisk() }, nil
}

// reserveCap makes room for n more bytes under MaxBytes, evicting if needed. The cap counts the
// index's tables and value logs as well as present chunks.
func (s *Store) reserveCap(ctx context.Context, n int64) (func(), error) {
	max := s.cfg.MaxBytes
	if max == 0 {
		return func() {}, nil
	}
	idx, _ := s.space.indexBytes()
	if n+idx > max {
		return nil, fmt.Errorf("chunk of %d bytes does not fit in the cache (%d bytes, %d of them taken by the index): %w", n, max, idx, ErrNoSpace)
	}
	for {
		r := s.resv.Add(n)
		if s.used.Load()+r+idx <= max {
			return func() { s.resv.Add(-n) }, nil
		}
		s.resv.Add(-n)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		target := int64(float64(max)*s.cfg.LowWatermark) - n - idx
		freed, err := s.evict(target)
		if err != nil {
			return nil, err
		}
		if freed == 0 && s.used.Load()+s.resv.Load()+n+idx > max {
			if s.cfg.PinnedOverflow {
				if s.overflowWarned.CompareAndSwap(false, true) {
					s.log.Warn("cache cap passed: everything evictable is gone and the rest is pinned by mounted images; raise the cap or unmount images (the filesystem's headroom still stops writes)",
						"max_bytes", max, "present_bytes", s.used.Load(), "index_bytes", idx)
				}
				s.resv.Add(n)
				return func() { s.resv.Add(-n) }, nil
			}
			return nil, fmt.Errorf("cache full: %d of %d bytes present (plus %d of index) and nothing evictable (all pinned or in use): %w", s.used.Load(), max, idx, ErrNoSpace)
		}
	}
}

// evict evicts unpinned blobs' chunks, least recently used blob first, until present plus
// reserved bytes are at most target. It returns the bytes freed.
func (s *Store) evict(target int64) (int64, error) {
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	var freed int64
	tried := map[*blobState]bool{}
	for s.used.Load()+s.resv.Load() > target {
		b := s.lruVictim(tried)
		if b == nil {
			break
		}
		tried[b] = true
		want := s.used.Load() + s.resv.Load() - target
		var chunks []chunk.Chunk
		var sum int64
		if err := s.forPresent(b, func(off, length int64, id cid.Cid) bool {
			chunks = append(chunks, chunk.Chunk{Offset: off, Length: length, CID: id})
			sum += length
			return sum < want
		}); err != nil {
			return freed, fmt.Errorf("evict from blob %s: %w", b.digest, err)
		}
		n, err := s.removeChunks(b, chunks, true)
		freed += n
		if err != nil {
			return freed, err
		}
	}
	return freed, nil
}

// lruVictim picks the least recently used unpinned blob with present data, skipping tried ones.
func (s *Store) lruVictim(tried map[*blobState]bool) *blobState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var best *blobState
	for _, b := range s.blobs {
		if tried[b] || len(b.pins) > 0 || b.presentBytes.Load() == 0 {
			continue
		}
		if best == nil || b.lastAccess.Load() < best.lastAccess.Load() {
			best = b
		}
	}
	return best
}

// removeChunks clears the presence of chunks of b and punches their holes. The index change is
// made durable before any hole is punched, so a crash never leaves the index naming zeros as a
// present chunk. ChunkEvicted events follow. If evicted, they count as evictions.
func (s *Store) removeChunks(b *blobState, chunks []chunk.Chunk, evicted bool) (int64, error) {
	if len(chunks) == 0 {
		return 0, nil
	}
	b.lock.Lock()
	defer b.lock.Unlock()
	s.idxMu.Lock()
	// Only chunks still present (with the same CID) are removed.
	var gone []chunk.Chunk
	var sum int64
	err := s.db.View(func(txn *badger.Txn) error {
		for _, c := range chunks {
			item, err := txn.Get(presentKey(b.digest, c.Offset))
			if err != nil {
				continue
			}
			_ = item.Value(func(v []byte) error {
				l, id, err := decodePresent(v)
				if err == nil && l == c.Length && id.Equals(c.CID) {
					gone = append(gone, c)
					sum += l
				}
				return nil
			})
		}
		return nil
	})
	if err != nil || len(gone) == 0 {
		s.idxMu.Unlock()
		return 0, err
	}
	wb := s.db.NewWriteBatch()
	for _, c := range gone {
		_ = wb.Delete(presentKey(b.digest, c.Offset))
		_ = wb.Delete(cidKey(c.CID, b.digest, c.Offset))
	}
	rec := b.record()
	rec.PresentBytes -= sum
	rec.PresentChunks -= int64(len(gone))
	_ = wb.Set(blobKey(b.digest), encodeBlobRecord(rec))
	if evicted {
		s.ctr.chunksEvicted.Add(int64(len(gone)))
		s.ctr.bytesEvicted.Add(sum)
	}
	s.setCounters(wb)
	err = wb.Flush()
	if err == nil {
		err = s.db.Sync()
	}
	if err != nil {
		if evicted {
			s.ctr.chunksEvicted.Add(-int64(len(gone)))
			s.ctr.bytesEvicted.Add(-sum)
		}
		s.idxMu.Unlock()
		return 0, fmt.Errorf("remove %d chunks of blob %s from the index: %w: %w", len(gone), b.digest, ErrIO, err)
	}
	b.presentBytes.Add(-sum)
	b.presentChunks.Add(-int64(len(gone)))
	s.used.Add(-sum)
	if m, err := s.manifest(b); err == nil {
		for _, c := range gone {
			if i := indexAt(m, c.Offset); i >= 0 {
				b.have.clear(i)
			}
		}
	} else {
		b.have.p.Store(nil) // reloaded from the (already updated) index on next use
	}
	s.idxMu.Unlock()

	if f, err := s.files.get(b.path); err == nil {
		for _, c := range gone {
			if err := punch(f.fd, c.Offset, c.Length); err != nil {
				s.log.Warn("cannot punch hole", "blob", b.digest, "path", b.path, "offset", c.Offset, "err", err)
			}
		}
		s.files.put(f)
	}
	evs := make([]Event, len(gone))
	for i, c := range gone {
		evs[i] = Event{Kind: ChunkEvicted, Blob: b.digest, Chunk: c}
	}
	s.emit(evs)
	if evicted {
		s.log.Debug("evicted", "blob", b.digest, "chunks", len(gone), "bytes", sum)
	}
	return sum, nil
}
