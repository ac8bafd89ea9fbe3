package chunkstore

import (
	"errors"
	"fmt"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/chunk"
)

// reconcileAll checks every blob's backing file against the index. A file whose identity and
// change time match what Close recorded is trusted as is (the common case after a clean
// shutdown: one stat per blob). Any other file is checked with SEEK_DATA/SEEK_HOLE: a chunk the
// index calls present whose range is not all data (hole, or past a truncated end) is dropped.
// Data that is present in the file but not in the index is ignored: those chunks are fetched and
// written again.
func (s *Store) reconcileAll() (reconciled int, dropped int64, err error) {
	for _, b := range s.blobs {
		n, checked, err := s.reconcile(b)
		if err != nil {
			return reconciled, dropped, err
		}
		if checked {
			reconciled++
		}
		dropped += n
	}
	return reconciled, dropped, nil
}

func (s *Store) reconcile(b *blobState) (dropped int64, checked bool, err error) {
	var st unix.Stat_t
	statErr := unix.Stat(b.path, &st)
	if statErr == nil && b.sig != (fileSig{}) && sigOf(&st) == b.sig {
		return 0, false, nil
	}
	if err := s.ensureBacking(b.path, b.size); err != nil {
		return 0, true, fmt.Errorf("chunkstore: reconcile blob %s: %w", b.digest, err)
	}
	var ext []chunk.Range
	if statErr == nil {
		fd, err := unix.Open(b.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, true, fmt.Errorf("chunkstore: reconcile blob %s: open %s: %w", b.digest, b.path, classify(err))
		}
		ext, err = dataExtents(fd)
		unix.Close(fd)
		if err != nil {
			return 0, true, fmt.Errorf("chunkstore: reconcile blob %s: %s: %w", b.digest, b.path, classify(err))
		}
	} // a missing file (now recreated, empty) has no data: everything goes.
	var drop []chunk.Chunk
	var bytes, chunks int64
	err = s.forPresent(b, func(off, length int64, id cid.Cid) bool {
		if covered(ext, off, length) {
			bytes += length
			chunks++
		} else {
			drop = append(drop, chunk.Chunk{Offset: off, Length: length, CID: id})
		}
		return true
	})
	if err != nil {
		return 0, true, fmt.Errorf("chunkstore: reconcile blob %s: %w", b.digest, err)
	}
	wb := s.db.NewWriteBatch()
	for _, c := range drop {
		_ = wb.Delete(presentKey(b.digest, c.Offset))
		_ = wb.Delete(cidKey(c.CID, b.digest, c.Offset))
	}
	s.used.Add(bytes - b.presentBytes.Load())
	b.presentBytes.Store(bytes)
	b.presentChunks.Store(chunks)
	_ = wb.Set(blobKey(b.digest), encodeBlobRecord(b.record()))
	if err := wb.Flush(); err != nil {
		return 0, true, fmt.Errorf("chunkstore: reconcile blob %s: index: %w", b.digest, err)
	}
	if len(drop) > 0 {
		s.log.Warn("index named chunks the backing file does not hold; dropped them", "blob", b.digest, "path", b.path, "chunks", len(drop))
	}
	return int64(len(drop)), true, nil
}

// dataExtents lists the data (non-hole) ranges of a file with SEEK_DATA/SEEK_HOLE.
func dataExtents(fd int) ([]chunk.Range, error) {
	var out []chunk.Range
	var off int64
	for {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("seek data at %d: %w", off, err)
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole at %d: %w", d, err)
		}
		if h <= d {
			return out, nil
		}
		out = append(out, chunk.Range{Offset: d, Length: h - d})
		off = h
	}
}

// covered reports whether [off, off+length) lies inside the union of the sorted extents.
func covered(ext []chunk.Range, off, length int64) bool {
	end := off + length
	for _, e := range ext {
		if e.End() <= off {
			continue
		}
		if e.Offset > off {
			return false
		}
		off = e.End()
		if off >= end {
			return true
		}
	}
	return false
}
