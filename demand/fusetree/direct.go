package fusetree

import (
	"errors"
	"sync"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The cold read path. A request that is one run of one blob and whose bytes the backing file's
// page cache does not hold (cachestat(2)) is read from the backing file with O_DIRECT into a
// the kernel's own pipe pages, which go-fuse splices into /dev/fuse (splicedDirect; a file's
// last, partial page goes through a page-aligned buffer instead, readDirect, as O_DIRECT wants
// whole blocks): the disk DMAs into those pages, and the one CPU copy is the kernel's into the
// FUSE page cache. The blob's bytes are then not cached
// twice (the backing file's page cache and the FUSE file's), and the daemon allocates and
// inserts no page-cache folios for the backing file. Splicing (what a cached run and the
// fallback get) also copies once, but through the backing file's page cache: for a cold run
// that meant the read-ahead hint's order-0 folios, allocated and inserted by the daemon, and a
// second cached copy of every byte read.
//
// The disk is kept busy by the kernel's FUSE readahead instead of the server's hints: a window
// of Config.ReadAhead is several MaxRead requests in flight at once, each one O_DIRECT read.
//
// Where cachestat is missing (Linux before 6.5) every run with an O_DIRECT descriptor is read
// that way, cached or not: correct (the store's writes are fdatasync'ed, so the disk has them),
// one disk read more for chunks fetched moments before.

// directBufSize is the largest request the direct path answers (Config.MaxRead is at most 1 MiB).
const directBufSize = 1 << 20

// alignedBufs holds page-aligned buffers of directBufSize for O_DIRECT reads.
var alignedBufs = sync.Pool{New: func() any {
	b := make([]byte, directBufSize+4096)
	if a := int(uintptr(unsafe.Pointer(&b[0])) & 4095); a != 0 {
		b = b[4096-a:]
	}
	b = b[:directBufSize:directBufSize]
	return &b
}}

// directResult is an answer in a pooled buffer, returned to the pool once go-fuse has written it.
type directResult struct {
	buf *[]byte
	n   int
}

func (d *directResult) Bytes([]byte) ([]byte, fuse.Status) { return (*d.buf)[:d.n], fuse.OK }
func (d *directResult) Size() int                          { return d.n }
func (d *directResult) Done()                              { alignedBufs.Put(d.buf) }

// splicedDirect is a run of whole pages that go-fuse splices from the O_DIRECT descriptor: the
// kernel reads into pipe pages of its own (copy_splice_read), so the disk DMAs into them and the
// only copy is /dev/fuse's into the FUSE page cache, without pinning user pages as a write from
// a buffer does. Should go-fuse fall back to Bytes, the run is read into an aligned buffer.
type splicedDirect struct {
	s   *Server
	b   *backingFile
	r   run
	buf *[]byte
}

// Seekable is what go-fuse splices from (its seekableResult).
func (d *splicedDirect) Seekable() (uintptr, int64, int) {
	return uintptr(d.b.direct), d.r.devOff, int(d.r.len)
}
func (d *splicedDirect) Size() int { return int(d.r.len) }
func (d *splicedDirect) Bytes(buf []byte) ([]byte, fuse.Status) {
	rr, ok := d.s.readDirect(d.b, d.r)
	if !ok { // the buffered descriptor reads what O_DIRECT would not
		if len(buf) < int(d.r.len) {
			buf = make([]byte, d.r.len)
		}
		n, err := unix.Pread(int(d.b.f.Fd()), buf[:d.r.len], d.r.devOff)
		if err != nil || n != int(d.r.len) {
			d.s.log.Error("reading a present range failed; reader gets EIO", "offset", d.r.devOff, "length", d.r.len, "read", n, "err", err)
			return nil, fuse.EIO
		}
		return buf[:n], fuse.OK
	}
	d.buf = rr.(*directResult).buf
	return (*d.buf)[:d.r.len], fuse.OK
}
func (d *splicedDirect) Done() {
	if d.buf != nil {
		alignedBufs.Put(d.buf)
	}
}

// pageCached reports whether the backing file's page cache holds every page of run r. Unlike a
// buffered RWF_NOWAIT read it starts no readahead of what is missing.
func pageCached(b *backingFile, r run) bool {
	first, end := r.devOff&^4095, (r.devOff+r.len+4095)&^4095
	var cs unix.Cachestat_t
	if err := unix.Cachestat(uint(b.f.Fd()), &unix.CachestatRange{Off: uint64(first), Len: uint64(end - first)}, &cs, 0); err != nil {
		return false
	}
	return cs.Cache >= uint64((end-first)/4096)
}

// readDirect reads run r (present: Ensure has just made it so) from backing file b with
// O_DIRECT into a pooled buffer; ok is false when it cannot (no O_DIRECT descriptor, an
// unaligned offset, a request larger than the buffers, a failed read), and the caller splices
// from the buffered descriptor instead.
func (s *Server) readDirect(b *backingFile, r run) (fuse.ReadResult, bool) {
	if b.direct < 0 || r.devOff%4096 != 0 || r.len > directBufSize || r.len <= 0 {
		return nil, false
	}
	bp := alignedBufs.Get().(*[]byte)
	buf := *bp
	done := 0
	for done < int(r.len) {
		// O_DIRECT wants whole blocks: the tail is rounded up to a page, and bytes past r.len
		// (the next file's, or past the backing file's end: a short read) are not answered.
		want := (int(r.len) - done + 4095) &^ 4095
		n, err := unix.Pread(b.direct, buf[done:done+want], r.devOff+int64(done))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n <= 0 {
			s.log.Debug("O_DIRECT read failed", "offset", r.devOff+int64(done), "length", want, "err", err)
			alignedBufs.Put(bp)
			return nil, false
		}
		done += n
	}
	s.direct.Add(r.len)
	return &directResult{buf: bp, n: int(r.len)}, true
}
