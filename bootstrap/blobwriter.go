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
	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

// ChunkSink stores the chunks of file data that make up one data blob. Put is called in blob
// order, one chunk at a time, with the chunk's bytes padded with zeros to the block size and
// their CID; it returns where the file's chunk index must point. A sink may store a chunk it has
// seen before only once (dedup) and return the first copy's place.
//
// BlobWriter is both: uncompressed (schema 1 manifests) or, with an encoder, each chunk stored
// compressed or raw (schema 2), the manifest recording each chunk's stored offset and length
// while the CID stays the hash of the uncompressed bytes.
type ChunkSink interface {
	Put(id cid.Cid, data []byte) (ChunkRef, error)
}

// StoredSink is a ChunkSink that stores chunks in an encoded form. The Chunker encodes on its
// hashing workers (every core) and hands the sink both forms in order through PutStored.
type StoredSink interface {
	ChunkSink
	// Encoder is what chunks are encoded with; nil if the sink stores them as they are.
	Encoder() *zchunk.Encoder
	// PutStored is Put with data's stored form already computed by Encoder().Encode.
	PutStored(id cid.Cid, data, stored []byte, codec chunk.Codec) (ChunkRef, error)
}

// Compression names for BuildOptions and convert.Options.
const (
	CompressionNone = "none"
	CompressionZstd = "zstd"
)

// ChunkEncoder returns the encoder for a compression name ("" or CompressionNone: nil, blobs
// stored uncompressed; CompressionZstd at level, 0 meaning zchunk.DefaultLevel).
func ChunkEncoder(compression string, level int) (*zchunk.Encoder, error) {
	switch compression {
	case "", CompressionNone:
		if level != 0 {
			return nil, fmt.Errorf("compression level %d given without compression", level)
		}
		return nil, nil
	case CompressionZstd:
		if level == 0 {
			level = zchunk.DefaultLevel
		}
		return zchunk.NewEncoder(level)
	}
	return nil, fmt.Errorf("compression %q: want %q or %q", compression, CompressionZstd, CompressionNone)
}

// BlobWriter is a ChunkSink writing a data blob to a file, identical chunks stored once. Without
// an encoder the blob is the EROFS device itself: chunks one after the other, each at a
// block-aligned offset (schema 1). With one, the chunks keep those offsets in the device (the
// EROFS chunk indexes point there, the store's backing file holds them there) while the file
// holds their stored forms one after the other, each a zstd frame where that pays and raw
// otherwise (schema 2). It computes the file's sha256 and the chunk manifest as it goes.
type BlobWriter struct {
	f         *os.File
	device    int
	chunkSize int64
	enc       *zchunk.Encoder // nil: uncompressed
	off       int64           // device bytes so far
	storedOff int64           // file bytes so far
	h         hash.Hash
	byCID     map[cid.Cid]int64
	chunks    []chunk.Chunk
	saved     int64 // bytes identical chunks did not store again
	buf       []byte
	// sub is the sub-block size of the chunks' digests (chunk.Chunk.SubHashes), 0 if the
	// chunks fit in one.
	sub int64
}

var _ StoredSink = (*BlobWriter)(nil)

// NewBlobWriter creates the blob file at path (which must not exist) for extra device device,
// uncompressed.
func NewBlobWriter(path string, device int, chunkSize int64) (*BlobWriter, error) {
	return NewStoredBlobWriter(path, device, chunkSize, nil)
}

// NewStoredBlobWriter is NewBlobWriter storing each chunk through enc (nil: uncompressed).
func NewStoredBlobWriter(path string, device int, chunkSize int64, enc *zchunk.Encoder) (*BlobWriter, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	b := &BlobWriter{f: f, device: device, chunkSize: chunkSize, enc: enc, h: sha256.New(), byCID: map[cid.Cid]int64{}}
	if chunkSize > chunk.DefaultSubBlockSize {
		b.sub = chunk.DefaultSubBlockSize
	}
	return b, nil
}

// SubBlockSize is the sub-block size of the chunks' digests in the manifest, 0 for none.
func (b *BlobWriter) SubBlockSize() int64 { return b.sub }

// Encoder is the writer's encoder, nil for an uncompressed blob.
func (b *BlobWriter) Encoder() *zchunk.Encoder { return b.enc }

// Put appends data (a multiple of the block size) unless a chunk with the same CID is stored,
// encoding it first if the writer compresses.
func (b *BlobWriter) Put(id cid.Cid, data []byte) (ChunkRef, error) {
	if b.enc == nil {
		return b.PutStored(id, data, data, chunk.CodecNone)
	}
	if _, ok := b.byCID[id]; ok {
		return b.PutStored(id, data, nil, chunk.CodecNone)
	}
	var codec chunk.Codec
	b.buf, codec = b.enc.Encode(b.buf[:0], data)
	return b.PutStored(id, data, b.buf, codec)
}

// PutStored is Put with data's stored form given (stored is data itself for an uncompressed
// writer).
func (b *BlobWriter) PutStored(id cid.Cid, data, stored []byte, codec chunk.Codec) (ChunkRef, error) {
	if _, ok := b.byCID[id]; ok {
		return b.PutStoredSubs(id, data, stored, codec, "")
	}
	return b.PutStoredSubs(id, data, stored, codec, chunk.SubHashes(data, b.sub))
}

// PutStoredSubs is PutStored with the chunk's sub-block digests already computed
// (chunk.SubHashes of data at SubBlockSize), as the Chunker does on its workers.
func (b *BlobWriter) PutStoredSubs(id cid.Cid, data, stored []byte, codec chunk.Codec, subs string) (ChunkRef, error) {
	if len(data)%chunk.BlockSize != 0 || int64(len(data)) > b.chunkSize {
		return ChunkRef{}, fmt.Errorf("blob %s: chunk of %d bytes is not block-padded or larger than %d", b.f.Name(), len(data), b.chunkSize)
	}
	if off, ok := b.byCID[id]; ok {
		b.saved += int64(len(data))
		return ChunkRef{Device: b.device, Offset: off}, nil
	}
	if b.enc == nil && (codec != chunk.CodecNone || len(stored) != len(data)) {
		return ChunkRef{}, fmt.Errorf("blob %s: an encoded chunk given to an uncompressed writer", b.f.Name())
	}
	if _, err := b.f.Write(stored); err != nil {
		return ChunkRef{}, fmt.Errorf("blob %s: %w", b.f.Name(), err)
	}
	b.h.Write(stored)
	off := b.off
	c := chunk.Chunk{Offset: off, Length: int64(len(data)), CID: id, SubHashes: subs}
	if b.enc != nil {
		c.StoredOffset, c.StoredLength, c.Codec = b.storedOff, int64(len(stored)), codec
	}
	b.off += int64(len(data))
	b.storedOff += int64(len(stored))
	b.byCID[id] = off
	b.chunks = append(b.chunks, c)
	return ChunkRef{Device: b.device, Offset: off}, nil
}

// Size is the number of device bytes written so far (the uncompressed blob's size).
func (b *BlobWriter) Size() int64 { return b.off }

// StoredSize is the number of bytes written to the file so far.
func (b *BlobWriter) StoredSize() int64 { return b.storedOff }

// DedupSaved is the number of bytes identical chunks did not store again.
func (b *BlobWriter) DedupSaved() int64 { return b.saved }

// Finish syncs and closes the file and returns the digest of the file (the blob as stored) and
// the chunk manifest.
func (b *BlobWriter) Finish() (digest.Digest, *chunk.Manifest, error) {
	if err := b.SyncClose(); err != nil {
		return "", nil, err
	}
	return b.Seal()
}

// Seal returns the digest of the file and the chunk manifest of what has been written, without
// syncing: a caller that has other work may run SyncClose beside it (Finish does both in turn).
// Nothing may be Put after Seal.
func (b *BlobWriter) Seal() (digest.Digest, *chunk.Manifest, error) {
	d := digest.NewDigest(digest.SHA256, b.h)
	m := &chunk.Manifest{SchemaVersion: chunk.ManifestSchemaVersion, Blob: d, BlobSize: b.off,
		Chunking: chunk.ChunkingEROFS, ChunkSize: b.chunkSize, SubBlockSize: b.sub, Chunks: b.chunks}
	if b.enc != nil {
		m.SchemaVersion, m.StoredSize = chunk.ManifestSchemaStored, b.storedOff
		m.Dict = dictOf(b.enc, m.Chunks)
	}
	if m.Chunks == nil {
		m.Chunks = []chunk.Chunk{}
	}
	if err := m.Validate(); err != nil {
		return "", nil, fmt.Errorf("blob %s: %w", b.f.Name(), err)
	}
	return d, m, nil
}

// SyncClose makes the file durable and closes it. It touches only the file, so it may run on
// another goroutine than Seal.
func (b *BlobWriter) SyncClose() error {
	err := b.f.Sync()
	if cerr := b.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("blob %s: %w", b.f.Name(), err)
	}
	return nil
}

// Abort closes and removes the blob file.
func (b *BlobWriter) Abort() {
	b.f.Close()
	os.Remove(b.f.Name())
}

// EncodeBlob writes the stored form of the uncompressed blob r, which m (schema 1) describes, to
// a new file at path: every chunk of m in order, each encoded by enc, and returns the schema 2
// manifest. Chunks are not deduplicated here (each one m lists keeps its device offset). Bytes of
// r that no chunk covers are not stored: they are not file data and read as zeros.
func EncodeBlob(r io.ReaderAt, m *chunk.Manifest, path string, enc *zchunk.Encoder) (*chunk.Manifest, error) {
	if m.SchemaVersion != chunk.ManifestSchemaVersion || enc == nil {
		return nil, fmt.Errorf("encode blob %s: want a schema %d manifest and an encoder", m.Blob, chunk.ManifestSchemaVersion)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("blob: %w", err)
	}
	out := *m
	out.SchemaVersion = chunk.ManifestSchemaStored
	out.Chunks = make([]chunk.Chunk, len(m.Chunks))
	h := sha256.New()
	w := io.MultiWriter(f, h)
	buf := make([]byte, m.ChunkSize)
	var z []byte
	var off int64
	for i, c := range m.Chunks {
		if k, rerr := r.ReadAt(buf[:c.Length], c.Offset); int64(k) < c.Length {
			err = fmt.Errorf("encode blob %s: reading chunk at %d: %w", m.Blob, c.Offset, orUnexpectedEOF(rerr))
			break
		}
		var codec chunk.Codec
		z, codec = enc.Encode(z[:0], buf[:c.Length])
		if _, err = w.Write(z); err != nil {
			err = fmt.Errorf("encode blob %s: %w", path, err)
			break
		}
		c.StoredOffset, c.StoredLength, c.Codec = off, int64(len(z)), codec
		out.Chunks[i] = c
		off += int64(len(z))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		out.StoredSize = off
		out.Blob = digest.NewDigest(digest.SHA256, h)
		out.Dict = dictOf(enc, out.Chunks)
		err = out.Validate()
	}
	if err != nil {
		_ = os.Remove(path)
		return nil, err
	}
	return &out, nil
}

// dictOf is the dictionary a manifest of chunks encoded by enc carries: enc's, if any chunk's
// frame uses it (else the manifest has none to pay for).
func dictOf(enc *zchunk.Encoder, chunks []chunk.Chunk) []byte {
	if enc.Dict() == nil {
		return nil
	}
	for _, c := range chunks {
		if c.Codec == chunk.CodecZstdDict {
			return enc.Dict().Bytes()
		}
	}
	return nil
}

// ErrRead is wrapped by Chunker errors that come from reading a file's content (not from the
// sink).
var ErrRead = errors.New("reading file data")

// Chunker cuts file contents into chunks (from each file's first byte, at the chunk size, so that
// identical content gives identical chunks in every image), hashes them on several goroutines and
// hands them to a ChunkSink in file order. All-zero chunks become holes and are not stored.
//
// Per chunk: one read into a pooled buffer, one scan for zeros, one sha256, for a StoredSink one
// encode into a second pooled buffer (on the workers, so compression uses every core too), one
// write by the sink (plus the sink's own blob hash, over the stored bytes). Memory is bounded by the chunks in flight (about 64 MiB).
//
// AddFile is called from one goroutine; the refs it fills are final once Wait has returned.
type Chunker struct {
	sink      ChunkSink
	stored    StoredSink // sink, if it encodes
	enc       *zchunk.Encoder
	subs      subSink // sink, if it takes sub-block digests from the workers
	sub       int64
	chunkSize int64
	pool      sync.Pool
	zpool     sync.Pool
	encoded   sync.Map // CIDs a worker has claimed for encoding

	work    chan *chunkJob
	order   chan *chunkJob
	wg      sync.WaitGroup
	seqDone chan struct{}
	errMu   sync.Mutex
	err     error
	closed  bool
	// Bytes counts file bytes read (for progress); only the AddFile goroutine touches it.
	Bytes int64
}

// subSink is a sink that records sub-block digests (BlobWriter): the Chunker computes them on
// its workers beside the CID, and hands them over with PutStoredSubs.
type subSink interface {
	SubBlockSize() int64
	PutStoredSubs(id cid.Cid, data, stored []byte, codec chunk.Codec, subs string) (ChunkRef, error)
}

type chunkJob struct {
	buf    []byte
	bufp   *[]byte // what goes back to the pool
	n      int     // padded length
	id     cid.Cid
	stored *[]byte // the stored form (StoredSink), from storedPool
	codec  chunk.Codec
	subs   string // sub-block digests (subSink)
	dst    *ChunkRef
	done   chan struct{}
}

// NewChunker starts the hashing workers and the sequencer; Wait stops them.
func NewChunker(sink ChunkSink, chunkSize int64) *Chunker {
	workers := max(1, runtime.GOMAXPROCS(0))
	inflight := max(2*workers, int(32<<20/chunkSize))
	c := &Chunker{sink: sink, chunkSize: chunkSize, work: make(chan *chunkJob, inflight),
		order: make(chan *chunkJob, inflight), seqDone: make(chan struct{})}
	c.pool.New = func() any { b := make([]byte, chunkSize); return &b }
	c.zpool.New = func() any { b := make([]byte, 0, chunkSize); return &b }
	if ss, ok := sink.(StoredSink); ok && ss.Encoder() != nil {
		c.stored, c.enc = ss, ss.Encoder()
	}
	if ss, ok := sink.(subSink); ok && ss.SubBlockSize() > 0 {
		c.subs, c.sub = ss, ss.SubBlockSize()
	}
	for range workers {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for j := range c.work {
				j.id = chunk.CID(j.buf[:j.n])
				// Only the first worker to see a CID encodes it: the sink stores a repeat
				// once, and keeps nothing of it. Should a later copy win the race, the
				// earlier one reaches the sink unencoded and is encoded there (Put).
				first := c.enc != nil && c.claim(j.id)
				if first {
					j.stored = c.zpool.Get().(*[]byte)
					*j.stored, j.codec = c.enc.Encode((*j.stored)[:0], j.buf[:j.n])
				}
				if c.subs != nil && (first || c.enc == nil) {
					j.subs = chunk.SubHashes(j.buf[:j.n], c.sub)
				}
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
			var ref ChunkRef
			var err error
			switch {
			case c.subs != nil && (j.stored != nil || c.enc == nil):
				stored, codec := j.buf[:j.n], chunk.CodecNone
				if j.stored != nil {
					stored, codec = *j.stored, j.codec
				}
				ref, err = c.subs.PutStoredSubs(j.id, j.buf[:j.n], stored, codec, j.subs)
			case j.stored != nil:
				ref, err = c.stored.PutStored(j.id, j.buf[:j.n], *j.stored, j.codec)
			default:
				ref, err = c.sink.Put(j.id, j.buf[:j.n])
			}
			if err != nil {
				c.fail(err)
			} else {
				*j.dst = ref
			}
		}
		c.pool.Put(j.bufp)
		if j.stored != nil {
			c.zpool.Put(j.stored)
		}
	}
}

// claim reports whether id is seen for the first time, by any worker.
func (c *Chunker) claim(id cid.Cid) bool {
	_, seen := c.encoded.LoadOrStore(id, struct{}{})
	return !seen
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
