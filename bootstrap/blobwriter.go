package bootstrap

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/ipfs/go-cid"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

// ChunkSink stores the chunks of file data that make up one data blob. Put is called in blob
// order, one chunk at a time, with the chunk's bytes padded with zeros to the block size and
// their CID; it returns where the file's chunk index must point. A sink may store a chunk it has
// seen before only once (dedup) and return the first copy's place.
//
// BlobWriter is the sink of uncompressed blobs; a compressing sink (a later format) slots in
// behind the same interface, its manifest recording each chunk's stored offset and length while
// the CID stays the hash of the uncompressed bytes.
type ChunkSink interface {
	Put(id cid.Cid, data []byte) (ChunkRef, error)
}

// BlobWriter is a ChunkSink writing an uncompressed data blob to a file: chunks one after the
// other, each at a block-aligned offset, identical chunks stored once. It computes the blob's
// sha256 and chunk manifest as it goes.
type BlobWriter struct {
	f         *os.File
	device    int
	chunkSize int64
	off       int64
	h         hash.Hash
	byCID     map[cid.Cid]int64
	chunks    []chunk.Chunk
	saved     int64 // bytes identical chunks did not store again
}

var _ ChunkSink = (*BlobWriter)(nil)

// NewBlobWriter creates the blob file at path (which must not exist) for extra device device.
func NewBlobWriter(path string, device int, chunkSize int64) (*BlobWriter, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	return &BlobWriter{f: f, device: device, chunkSize: chunkSize, h: sha256.New(), byCID: map[cid.Cid]int64{}}, nil
}

// Put appends data (a multiple of the block size) unless a chunk with the same CID is stored.
func (b *BlobWriter) Put(id cid.Cid, data []byte) (ChunkRef, error) {
	if len(data)%chunk.BlockSize != 0 || int64(len(data)) > b.chunkSize {
		return ChunkRef{}, fmt.Errorf("blob %s: chunk of %d bytes is not block-padded or larger than %d", b.f.Name(), len(data), b.chunkSize)
	}
	if off, ok := b.byCID[id]; ok {
		b.saved += int64(len(data))
		return ChunkRef{Device: b.device, Offset: off}, nil
	}
	if _, err := b.f.Write(data); err != nil {
		return ChunkRef{}, fmt.Errorf("blob %s: %w", b.f.Name(), err)
	}
	b.h.Write(data)
	off := b.off
	b.off += int64(len(data))
	b.byCID[id] = off
	b.chunks = append(b.chunks, chunk.Chunk{Offset: off, Length: int64(len(data)), CID: id})
	return ChunkRef{Device: b.device, Offset: off}, nil
}

// Size is the number of bytes written so far.
func (b *BlobWriter) Size() int64 { return b.off }

// DedupSaved is the number of bytes identical chunks did not store again.
func (b *BlobWriter) DedupSaved() int64 { return b.saved }

// Finish syncs and closes the file and returns the blob's digest and chunk manifest.
func (b *BlobWriter) Finish() (digest.Digest, *chunk.Manifest, error) {
	err := b.f.Sync()
	if cerr := b.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", nil, fmt.Errorf("blob %s: %w", b.f.Name(), err)
	}
	d := digest.NewDigest(digest.SHA256, b.h)
	m := &chunk.Manifest{SchemaVersion: chunk.ManifestSchemaVersion, Blob: d, BlobSize: b.off,
		Chunking: chunk.ChunkingEROFS, ChunkSize: b.chunkSize, Chunks: b.chunks}
	if m.Chunks == nil {
		m.Chunks = []chunk.Chunk{}
	}
	if err := m.Validate(); err != nil {
		return "", nil, fmt.Errorf("blob %s: %w", b.f.Name(), err)
	}
	return d, m, nil
}

// Abort closes and removes the blob file.
func (b *BlobWriter) Abort() {
	b.f.Close()
	os.Remove(b.f.Name())
}

// ErrRead is wrapped by Chunker errors that come from reading a file's content (not from the
// sink).
var ErrRead = errors.New("reading file data")

// Chunker cuts file contents into chunks (from each file's first byte, at the chunk size, so that
// identical content gives identical chunks in every image), hashes them on several goroutines and
// hands them to a ChunkSink in file order. All-zero chunks become holes and are not stored.
//
// Per chunk: one read into a pooled buffer, one scan for zeros, one sha256, one write by the sink
// (plus the sink's own blob hash). Memory is bounded by the chunks in flight (about 64 MiB).
//
// AddFile is called from one goroutine; the refs it fills are final once Wait has returned.
type Chunker struct {
	sink      ChunkSink
	chunkSize int64
	pool      sync.Pool
	work      chan *chunkJob
	order     chan *chunkJob
	wg        sync.WaitGroup
	seqDone   chan struct{}
	errMu     sync.Mutex
	err       error
	closed    bool
	// Bytes counts file bytes read (for progress); only the AddFile goroutine touches it.
	Bytes int64
}

type chunkJob struct {
	buf  []byte
	bufp *[]byte // what goes back to the pool
	n    int     // padded length
	id   cid.Cid
	dst  *ChunkRef
	done chan struct{}
}

// NewChunker starts the hashing workers and the sequencer; Wait stops them.
func NewChunker(sink ChunkSink, chunkSize int64) *Chunker {
	workers := max(1, runtime.GOMAXPROCS(0))
	inflight := max(2*workers, int(32<<20/chunkSize))
	c := &Chunker{sink: sink, chunkSize: chunkSize, work: make(chan *chunkJob, inflight),
		order: make(chan *chunkJob, inflight), seqDone: make(chan struct{})}
	c.pool.New = func() any { b := make([]byte, chunkSize); return &b }
	for range workers {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for j := range c.work {
				j.id = chunk.CID(j.buf[:j.n])
				close(j.done)
			}
		}()
	}
	go c.sequence()
	return c
}

func (c *Chunker) sequence() {
	defer close(c.seqDone)
	for j := range c.order {
		<-j.done
		if c.failed() == nil {
			ref, err := c.sink.Put(j.id, j.buf[:j.n])
			if err != nil {
				c.fail(err)
			} else {
				*j.dst = ref
			}
		}
		c.pool.Put(j.bufp)
	}
}

func (c *Chunker) fail(err error) {
	c.errMu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.errMu.Unlock()
}

func (c *Chunker) failed() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.err
}

// AddFile reads exactly size bytes of r and returns the file's chunk refs, which the sequencer
// fills in as the chunks reach the sink (final after Wait). what names the file in errors.
func (c *Chunker) AddFile(r io.Reader, size int64, what string) ([]ChunkRef, error) {
	if c.closed {
		return nil, errors.New("chunker: AddFile after Wait")
	}
	if err := c.failed(); err != nil {
		return nil, err
	}
	if size <= 0 {
		return nil, nil
	}
	refs := make([]ChunkRef, (size+c.chunkSize-1)/c.chunkSize)
	for i := range refs {
		n := min(c.chunkSize, size-int64(i)*c.chunkSize)
		bufp := c.pool.Get().(*[]byte)
		buf := *bufp
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			c.pool.Put(bufp)
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("%s: reading bytes [%d,%d): %w: %w", what, int64(i)*c.chunkSize, int64(i)*c.chunkSize+n, ErrRead, err)
		}
		c.Bytes += n
		if allZero(buf[:n]) {
			refs[i] = ChunkRef{Hole: true}
			c.pool.Put(bufp)
			continue
		}
		padded := roundUp(n, chunk.BlockSize)
		clear(buf[n:padded])
		j := &chunkJob{buf: buf, bufp: bufp, n: int(padded), dst: &refs[i], done: make(chan struct{})}
		c.work <- j
		c.order <- j
	}
	return refs, c.failed()
}

// Wait stops the workers after the last chunk has reached the sink and returns the first error.
func (c *Chunker) Wait() error {
	if !c.closed {
		c.closed = true
		close(c.work)
		close(c.order)
		c.wg.Wait()
		<-c.seqDone
	}
	return c.failed()
}

var zeroBlock [64 << 10]byte

// allZero compares against a block of zeros (memequal is vectorised; a byte loop is not).
func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
