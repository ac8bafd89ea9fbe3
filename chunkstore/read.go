package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

// HasChunk reports whether chunk c of the blob is present. An unknown blob or a chunk that is not
// the blob's is simply not present; an index that cannot be read is an error, never "absent".
func (s *Store) HasChunk(blob digest.Digest, c chunk.Chunk) (bool, error) {
	b, err := s.blob(blob)
	if err != nil {
		return false, nil
	}
	return s.hasChunk(b, c)
}

func (s *Store) hasChunk(b *blobState, c chunk.Chunk) (bool, error) {
	i, err := s.chunkIndex(b, c)
	if errors.Is(err, ErrInvalid) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	have, err := s.presence(b)
	if err != nil {
		return false, err
	}
	return have.has(i), nil
}

// PresentTotals returns the bytes and chunks of blob that are present, from counters the store
// keeps as chunks land and leave: O(1), for stats and progress.
func (s *Store) PresentTotals(blob digest.Digest) (bytes, chunks int64, err error) {
	b, err := s.blob(blob)
	if err != nil {
		return 0, 0, err
	}
	return b.presentBytes.Load(), b.presentChunks.Load(), nil
}

// Missing returns the chunks of the blob overlapping [off, off+length) that are not present, in
// offset order.
func (s *Store) Missing(blob digest.Digest, off, length int64) ([]chunk.Chunk, error) {
	b, err := s.blob(blob)
	if err != nil {
		return nil, err
	}
	m, err := s.manifest(b)
	if err != nil {
		return nil, err
	}
	return s.missing(b, m, off, length)
}

func (s *Store) missing(b *blobState, m *chunk.Manifest, off, length int64) ([]chunk.Chunk, error) {
	want := m.ChunksIn(off, length)
	if len(want) == 0 {
		return nil, nil
	}
	have, err := s.presence(b)
	if err != nil {
		return nil, fmt.Errorf("missing chunks of blob %s: %w", b.digest, err)
	}
	first := indexAt(m, want[0].Offset)
	var out []chunk.Chunk
	for k, c := range want {
		if !have.has(first + k) {
			out = append(out, c)
		}
	}
	return out, nil
}

// Present returns the byte ranges of the blob covered by present chunks, merged and in order.
func (s *Store) Present(blob digest.Digest) ([]chunk.Range, error) {
	b, err := s.blob(blob)
	if err != nil {
		return nil, err
	}
	var out []chunk.Range
	err = s.forPresent(b, func(off, length int64, _ cid.Cid) bool {
		if n := len(out); n > 0 && out[n-1].End() == off {
			out[n-1].Length += length
		} else {
			out = append(out, chunk.Range{Offset: off, Length: length})
		}
		return true
	})
	return out, err
}

// forPresent calls fn for each present chunk of b in offset order until fn returns false.
func (s *Store) forPresent(b *blobState, fn func(off, length int64, id cid.Cid) bool) error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: presentPrefix(b.digest)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			off, err := decodePresentKey(it.Item().Key(), b.digest)
			if err != nil {
				s.log.Warn("bad present key in index", "blob", b.digest, "err", err)
				continue
			}
			var l int64
			var id cid.Cid
			err = it.Item().Value(func(v []byte) error {
				var err error
				l, id, err = decodePresent(v)
				return err
			})
			if err != nil {
				s.log.Warn("bad present record in index", "blob", b.digest, "offset", off, "err", err)
				continue
			}
			if !fn(off, l, id) {
				return nil
			}
		}
		return nil
	})
}

type location struct {
	blob   digest.Digest
	off    int64
	length int64
}

// locations lists where a CID is present (at most max).
func (s *Store) locations(id cid.Cid, max int) ([]location, error) {
	var out []location
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: cidPrefix(id)})
		defer it.Close()
		for it.Rewind(); it.Valid() && len(out) < max; it.Next() {
			_, d, off, err := decodeCIDKey(it.Item().Key())
			if err != nil {
				continue
			}
			var l int64
			_ = it.Item().Value(func(v []byte) error {
				l, err = decodeBE64(v)
				return err
			})
			if err == nil && l > 0 {
				out = append(out, location{d, off, l})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index lookup of chunk %s: %w: %w", id, ErrIO, err)
	}
	return out, nil
}

// ReadChunk returns the bytes of a present chunk with this CID from whichever blob holds it,
// verified against the CID (what is on disk may have rotted since it was written). A copy that
// fails verification is dropped (and reported as evicted) and the next is tried.
func (s *Store) ReadChunk(ctx context.Context, id cid.Cid) (chunk.Verified, error) {
	if err := s.enter(); err != nil {
		return chunk.Verified{}, err
	}
	defer s.leave()
	locs, err := s.locations(id, 16)
	if err != nil {
		return chunk.Verified{}, err
	}
	var lastErr error
	for _, loc := range locs {
		if err := ctx.Err(); err != nil {
			return chunk.Verified{}, err
		}
		b, err := s.blob(loc.blob)
		if err != nil {
			continue
		}
		c := chunk.Chunk{Offset: loc.off, Length: loc.length, CID: id}
		v, err := s.readChunk(b, c)
		if err == nil {
			s.ctr.chunksRead.Add(1)
			s.ctr.bytesRead.Add(v.Len())
			b.touch()
			return v, nil
		}
		lastErr = err
		if errors.Is(err, ErrCorrupt) {
			s.ctr.verifyFailures.Add(1)
			s.log.Warn("present chunk failed verification, dropping it", "blob", b.digest, "cid", id, "offset", c.Offset, "err", err)
			if _, derr := s.removeChunks(b, []chunk.Chunk{c}, false); derr != nil {
				s.log.Warn("cannot drop corrupt chunk", "blob", b.digest, "cid", id, "err", derr)
			}
		}
	}
	if lastErr != nil && !errors.Is(lastErr, ErrNotFound) && !errors.Is(lastErr, ErrCorrupt) {
		return chunk.Verified{}, fmt.Errorf("read chunk %s: %w", id, lastErr)
	}
	return chunk.Verified{}, fmt.Errorf("read chunk %s: %w", id, ErrNotFound)
}

// ReadChunkUnverified returns the bytes of a present chunk with this CID as they are on disk,
// not verified: for a sender that verifies them itself while it sends them (package p2p's
// ChunkProtocolV4 sends the sub-blocks a reader waits for before it hashes the whole chunk, and
// calls ReadChunk, which drops a rotten copy, if the hash then fails).
func (s *Store) ReadChunkUnverified(ctx context.Context, id cid.Cid) ([]byte, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	locs, err := s.locations(id, 16)
	if err != nil {
		return nil, err
	}
	for _, loc := range locs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		b, err := s.blob(loc.blob)
		if err != nil {
			continue
		}
		buf, err := s.readChunkBytes(b, chunk.Chunk{Offset: loc.off, Length: loc.length, CID: id})
		if err == nil {
			s.ctr.chunksRead.Add(1)
			s.ctr.bytesRead.Add(int64(len(buf)))
			b.touch()
			return buf, nil
		}
	}
	return nil, fmt.Errorf("read chunk %s: %w", id, ErrNotFound)
}

func (s *Store) readChunk(b *blobState, c chunk.Chunk) (chunk.Verified, error) {
	buf, err := s.readChunkBytes(b, c)
	if err != nil {
		return chunk.Verified{}, err
	}
	v, err := chunk.Verify(c.CID, buf)
	if err != nil {
		return chunk.Verified{}, fmt.Errorf("read chunk at %d of blob %s from %s: %w: %w", c.Offset, b.digest, b.path, ErrCorrupt, err)
	}
	return v, nil
}

func (s *Store) readChunkBytes(b *blobState, c chunk.Chunk) ([]byte, error) {
	b.lock.RLock()
	defer b.lock.RUnlock()
	if ok, err := s.hasChunk(b, c); err != nil {
		return nil, fmt.Errorf("chunk %s at %d of blob %s: %w", c.CID, c.Offset, b.digest, err)
	} else if !ok {
		return nil, fmt.Errorf("chunk %s at %d of blob %s: %w", c.CID, c.Offset, b.digest, ErrNotFound)
	}
	f, err := s.files.get(b.path)
	if err != nil {
		return nil, fmt.Errorf("read chunk %s of blob %s: %w", c.CID, b.digest, classify(err))
	}
	defer s.files.put(f)
	buf := make([]byte, c.Length)
	if err := preadFull(f.fd, buf, c.Offset); err != nil {
		return nil, fmt.Errorf("read chunk %s at %d of blob %s from %s: %w", c.CID, c.Offset, b.digest, b.path, classify(err))
	}
	return buf, nil
}

// ReadAt reads len(p) bytes of the blob at off, like io.ReaderAt. Every chunk overlapping the
// range must be present (bytes between chunks are not file data and read as zeros); otherwise
// nothing is read and the error wraps ErrNotFound (use Missing to learn which chunks to fetch).
// Reading past the blob's size returns io.EOF.
func (s *Store) ReadAt(blob digest.Digest, p []byte, off int64) (int, error) {
	if err := s.enter(); err != nil {
		return 0, err
	}
	defer s.leave()
	b, err := s.blob(blob)
	if err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("read blob %s at %d: %w", blob, off, ErrInvalid)
	}
	if off >= b.size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), b.size)
	m, err := s.manifest(b)
	if err != nil {
		return 0, err
	}
	b.lock.RLock()
	defer b.lock.RUnlock()
	miss, err := s.missing(b, m, off, end-off)
	if err != nil {
		return 0, err
	}
	if len(miss) > 0 {
		return 0, fmt.Errorf("read blob %s [%d,%d): %d chunks not present, first %s at %d: %w", blob, off, end, len(miss), miss[0].CID, miss[0].Offset, ErrNotFound)
	}
	f, err := s.files.get(b.path)
	if err != nil {
		return 0, fmt.Errorf("read blob %s: %w", blob, classify(err))
	}
	defer s.files.put(f)
	if err := preadFull(f.fd, p[:end-off], off); err != nil {
		return 0, fmt.Errorf("read blob %s [%d,%d) from %s: %w", blob, off, end, b.path, classify(err))
	}
	n := int(end - off)
	s.ctr.bytesRead.Add(int64(n))
	b.touch()
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
