package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/chunk"
)

// WriteChunk verifies data against c.CID and stores it (Put). It is for bytes from a source the
// caller has not verified itself; code that holds a chunk.Verified calls Put, which hashes
// nothing.
func (s *Store) WriteChunk(ctx context.Context, blob digest.Digest, c chunk.Chunk, data []byte) error {
	if int64(len(data)) != c.Length {
		return fmt.Errorf("write chunk %s at %d of blob %s: %d bytes, want %d: %w", c.CID, c.Offset, blob, len(data), c.Length, ErrInvalid)
	}
	v, err := chunk.Verify(c.CID, data)
	if err != nil {
		s.ctr.verifyFailures.Add(1)
		return fmt.Errorf("write chunk at %d of blob %s: %w: %w", c.Offset, blob, ErrCorrupt, err)
	}
	return s.Put(ctx, blob, c, v)
}

// Put writes verified bytes of chunk c at c.Offset of the blob's backing file, makes them
// durable and then marks the chunk present. It does not hash: v was verified against c.CID
// (only chunk.Verify makes a Verified). A chunk already present is a no-op, and concurrent
// writers of one chunk do the work once. On any error nothing is marked present.
//
// This is the only way chunk data enters the store, in every mount mode: in fscache mode the
// kernel's backing files are the store's, so the kernel reads what Put wrote.
func (s *Store) Put(ctx context.Context, blob digest.Digest, c chunk.Chunk, v chunk.Verified) error {
	return s.put(ctx, blob, c, v, false)
}

// PutCold is Put for a chunk nobody is about to read (a background prefetch): where
// Config.DirectWrites allows, it is written with direct I/O, around the page cache, which costs
// the writer no page-cache copy and the fdatasync no writeback; its first read then goes to the
// disk. A chunk a reader waits for goes through Put, so the reads that follow find it cached.
func (s *Store) PutCold(ctx context.Context, blob digest.Digest, c chunk.Chunk, v chunk.Verified) error {
	return s.put(ctx, blob, c, v, s.cfg.DirectWrites)
}

func (s *Store) put(ctx context.Context, blob digest.Digest, c chunk.Chunk, v chunk.Verified, direct bool) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	b, err := s.blob(blob)
	if err != nil {
		return fmt.Errorf("write chunk %s: %w", c.CID, err)
	}
	idx, err := s.chunkIndex(b, c)
	if err != nil {
		return fmt.Errorf("write chunk: %w", err)
	}
	if !v.CID().Equals(c.CID) || v.Len() != c.Length {
		return fmt.Errorf("write chunk %s at %d of blob %s: given %d bytes verified as %s: %w", c.CID, c.Offset, blob, v.Len(), v.CID(), ErrInvalid)
	}
	return s.once(ctx, b, c, idx, func() error {
		release, err := s.reserve(ctx, c.Length)
		if err != nil {
			return fmt.Errorf("write chunk %s at %d of blob %s: %w", c.CID, c.Offset, blob, err)
		}
		defer release()
		b.lock.RLock()
		defer b.lock.RUnlock()
		f, err := s.files.get(b.path)
		if err != nil {
			return fmt.Errorf("write chunk %s of blob %s: open %s: %w", c.CID, blob, b.path, classify(err))
		}
		defer s.files.put(f)
		buf, put := alignedCopy(v.Bytes())
		fd := f.fd
		if dfd := s.files.direct(f); direct && dfd >= 0 {
			fd = dfd // page-aligned buffer, 4 KiB-aligned offset and length: what O_DIRECT needs
		}
		err = pwriteFull(fd, buf, c.Offset)
		if errors.Is(err, unix.EINVAL) && fd != f.fd {
			err = pwriteFull(f.fd, buf, c.Offset) // a device with larger blocks than 4 KiB
		}
		put()
		if err != nil {
			// Give back whatever blocks the failed write allocated.
			_ = punch(f.fd, c.Offset, c.Length)
			return fmt.Errorf("write chunk %s at %d of blob %s to %s: %w", c.CID, c.Offset, blob, b.path, classify(err))
		}
		return s.commit(b, f, c, idx)
	})
}

// once runs fn for a chunk unless it is present already; concurrent callers for the same chunk
// wait for the first one and share its result.
func (s *Store) once(ctx context.Context, b *blobState, c chunk.Chunk, idx int, fn func() error) error {
	key := flightKey{b.digest, c.Offset}
	s.flightMu.Lock()
	if f, ok := s.flight[key]; ok {
		s.flightMu.Unlock()
		select {
		case <-f.done:
			return f.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	s.flight[key] = f
	s.flightMu.Unlock()
	defer func() {
		s.flightMu.Lock()
		delete(s.flight, key)
		s.flightMu.Unlock()
		close(f.done)
	}()
	// Checked after becoming the only writer: a writer that finished just before us has
	// already committed.
	if have, err := s.presence(b); err == nil && have.has(idx) {
		return nil
	}
	if err := ctx.Err(); err != nil {
		f.err = err
		return err
	}
	f.err = fn()
	return f.err
}

// commitReq asks the committer to make a written chunk durable and mark it present.
type commitReq struct {
	b    *blobState
	f    *openFile
	c    chunk.Chunk
	idx  int // c's index in the blob's manifest
	done chan error
}

// commit hands a written chunk to the group committer and waits for the index to record it.
// The caller holds a reference on f and b.lock shared.
func (s *Store) commit(b *blobState, f *openFile, c chunk.Chunk, idx int) error {
	req := &commitReq{b: b, f: f, c: c, idx: idx, done: make(chan error, 1)}
	s.commitCh <- req
	return <-req.done
}

// committer batches commits: one fdatasync per distinct file, then one index batch for all, so
// concurrent writers share the cost of syncing.
func (s *Store) committer() {
	defer s.committerW.Done()
	for req := range s.commitCh {
		batch := []*commitReq{req}
	drain:
		for len(batch) < s.cfg.SyncBatch {
			select {
			case r, ok := <-s.commitCh:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		s.commitBatch(batch)
	}
}

func (s *Store) commitBatch(batch []*commitReq) {
	var files []*openFile
	seen := make(map[*openFile]bool)
	for _, r := range batch {
		if !seen[r.f] {
			seen[r.f] = true
			files = append(files, r.f)
		}
	}
	errs := make([]error, len(files))
	var wg sync.WaitGroup
	for i, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = syncData(f.fd)
		}()
	}
	wg.Wait()
	synced := make(map[*openFile]error, len(files))
	for i, f := range files {
		synced[f] = errs[i]
	}
	ok := batch[:0:0]
	for _, r := range batch {
		if err := synced[r.f]; err != nil {
			r.done <- fmt.Errorf("sync chunk %s at %d of blob %s in %s: %w", r.c.CID, r.c.Offset, r.b.digest, r.b.path, classify(err))
			continue
		}
		ok = append(ok, r)
	}
	if len(ok) == 0 {
		return
	}
	s.idxMu.Lock()
	type delta struct{ bytes, chunks int64 }
	deltas := map[*blobState]*delta{}
	var wBytes, wChunks int64
	wb := s.db.NewWriteBatch()
	for _, r := range ok {
		_ = wb.Set(presentKey(r.b.digest, r.c.Offset), encodePresent(r.c.Length, r.c.CID))
		_ = wb.Set(cidKey(r.c.CID, r.b.digest, r.c.Offset), be64(r.c.Length))
		d := deltas[r.b]
		if d == nil {
			d = &delta{}
			deltas[r.b] = d
		}
		d.bytes += r.c.Length
		d.chunks++
		wBytes += r.c.Length
		wChunks++
	}
	for b, d := range deltas {
		rec := b.record()
		rec.PresentBytes += d.bytes
		rec.PresentChunks += d.chunks
		_ = wb.Set(blobKey(b.digest), encodeBlobRecord(rec))
	}
	s.ctr.bytesWritten.Add(wBytes)
	s.ctr.chunksWritten.Add(wChunks)
	s.setCounters(wb)
	err := wb.Flush()
	if err == nil {
		for b, d := range deltas {
			b.presentBytes.Add(d.bytes)
			b.presentChunks.Add(d.chunks)
			b.touch()
			s.used.Add(d.bytes)
		}
		for _, r := range ok {
			r.b.have.set(r.idx) // the in-memory mirror follows the index (a no-op until loaded)
		}
	} else {
		s.ctr.bytesWritten.Add(-wBytes)
		s.ctr.chunksWritten.Add(-wChunks)
	}
	s.idxMu.Unlock()
	if err != nil {
		err = fmt.Errorf("index: %w: %w", ErrIO, err)
		for _, r := range ok {
			r.done <- fmt.Errorf("mark chunk %s at %d of blob %s present: %w", r.c.CID, r.c.Offset, r.b.digest, err)
		}
		return
	}
	evs := make([]Event, len(ok))
	for i, r := range ok {
		evs[i] = Event{Kind: ChunkAdded, Blob: r.b.digest, Chunk: r.c}
	}
	s.emit(evs)
	for _, r := range ok {
		r.done <- nil
	}
}

// alignedCopy returns data in a page-aligned buffer whose length is padded with zeros to a
// multiple of the block size (the form direct I/O and the kernel's anonymous fds need), and a
// function that returns the buffer to the pool.
func alignedCopy(data []byte) ([]byte, func()) {
	n := (len(data) + chunk.BlockSize - 1) &^ (chunk.BlockSize - 1)
	if n == len(data) && len(data) > 0 && uintptr(unsafe.Pointer(&data[0]))%chunk.BlockSize == 0 {
		return data, func() {}
	}
	var buf []byte
	var bp *[]byte
	if n <= poolBufSize {
		bp = bufPool.Get().(*[]byte)
		buf = (*bp)[:n]
	} else {
		buf = alignedBuf(n)
	}
	copy(buf, data)
	clear(buf[len(data):])
	return buf, func() {
		if bp != nil {
			bufPool.Put(bp)
		}
	}
}

const poolBufSize = 1 << 20

var bufPool = sync.Pool{New: func() any { b := alignedBuf(poolBufSize); return &b }}

func alignedBuf(n int) []byte {
	b := make([]byte, n+chunk.BlockSize)
	off := (chunk.BlockSize - int(uintptr(unsafe.Pointer(&b[0]))%chunk.BlockSize)) % chunk.BlockSize
	return b[off : off+n : off+n]
}

func pwriteFull(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(fd, b, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.EIO
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// preadFull reads len(b) bytes at off; bytes past the end of the file read as zeros.
func preadFull(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pread(fd, b, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			clear(b)
			return nil
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// syncData is fdatasync; a variable so tests can inject failures.
var syncData = func(fd int) error {
	for {
		err := unix.Fdatasync(fd)
		if err != unix.EINTR {
			return err
		}
	}
}

func punch(fd int, off, length int64) error {
	length = (length + chunk.BlockSize - 1) &^ (chunk.BlockSize - 1)
	return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}
