package chunkstore

import (
	"fmt"
	"sort"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"

	"github.com/shoal-p2p/shoal/chunk"
)

// presenceMap mirrors in memory which chunks of a blob the index calls present: one bit per
// chunk of the blob's manifest, so Missing, ReadAt and the write path's "already present?" are a
// few bit tests instead of an index scan. It is loaded from the index on first use (one scan of
// the blob's P keys) and then kept in step with it: commits set bits after the index batch is
// written, removals clear them after the deletion is synced and before holes are punched, both
// under Store.idxMu. Readers use atomics and take no lock. Memory is one bit per chunk (10
// million chunks: 1.25 MB).
type presenceMap struct {
	p atomic.Pointer[bitset]
}

type bitset struct{ w []atomic.Uint64 }

func newBitset(n int) *bitset { return &bitset{w: make([]atomic.Uint64, (n+63)/64)} }

func (b *bitset) has(i int) bool {
	return i >= 0 && i/64 < len(b.w) && b.w[i/64].Load()&(1<<(i%64)) != 0
}

func (b *bitset) set(i int)   { b.w[i/64].Or(1 << (i % 64)) }
func (b *bitset) clear(i int) { b.w[i/64].And(^uint64(1 << (i % 64))) }

// set marks chunk i present if the map is loaded (a map loaded later reads it from the index).
// Callers hold Store.idxMu.
func (m *presenceMap) set(i int) {
	if b := m.p.Load(); b != nil {
		b.set(i)
	}
}

// clear marks chunk i absent if the map is loaded. Callers hold Store.idxMu.
func (m *presenceMap) clear(i int) {
	if b := m.p.Load(); b != nil {
		b.clear(i)
	}
}

// presence returns b's presence map, loading it from the index on first use. Loading holds
// idxMu, so no commit or removal can fall between the index scan and the map's publication.
func (s *Store) presence(b *blobState) (*bitset, error) {
	if bs := b.have.p.Load(); bs != nil {
		return bs, nil
	}
	m, err := s.manifest(b)
	if err != nil {
		return nil, err
	}
	s.idxMu.Lock()
	defer s.idxMu.Unlock()
	if bs := b.have.p.Load(); bs != nil {
		return bs, nil
	}
	bs := newBitset(len(m.Chunks))
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: presentPrefix(b.digest)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			off, err := decodePresentKey(it.Item().Key(), b.digest)
			if err != nil {
				continue
			}
			i := indexAt(m, off)
			if i < 0 {
				continue
			}
			_ = it.Item().Value(func(v []byte) error {
				l, id, err := decodePresent(v)
				if err == nil && l == m.Chunks[i].Length && id.Equals(m.Chunks[i].CID) {
					bs.set(i)
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("presence of blob %s: %w", b.digest, err)
	}
	b.have.p.Store(bs)
	return bs, nil
}

// indexAt is the index of the chunk of m that starts at off, or -1.
func indexAt(m *chunk.Manifest, off int64) int {
	i := sort.Search(len(m.Chunks), func(i int) bool { return m.Chunks[i].Offset >= off })
	if i < len(m.Chunks) && m.Chunks[i].Offset == off {
		return i
	}
	return -1
}

// chunkIndex checks that c is a chunk of the blob's manifest and returns its index.
func (s *Store) chunkIndex(b *blobState, c chunk.Chunk) (int, error) {
	m, err := s.manifest(b)
	if err != nil {
		return -1, err
	}
	i := indexAt(m, c.Offset)
	if i < 0 || m.Chunks[i].Length != c.Length || !m.Chunks[i].CID.Equals(c.CID) {
		return -1, fmt.Errorf("chunk %s [%d,%d) is not a chunk of blob %s: %w", c.CID, c.Offset, c.End(), b.digest, ErrInvalid)
	}
	return i, nil
}
