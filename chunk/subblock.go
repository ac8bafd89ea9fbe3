package chunk

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"sync"
)

// DefaultSubBlockSize is the sub-block size `shoal image build` and convert give manifests: a
// 4 KiB read of a cold 1 MiB chunk waits for one 64 KiB sub-block to cross the network and be
// hashed, not for the whole chunk; the digests cost 512 bytes a 1 MiB chunk in the manifest.
const DefaultSubBlockSize = 64 << 10

// SubHashSize is the length of one sub-block digest (sha256).
const SubHashSize = sha256.Size

// NumSubBlocks is how many sub-blocks of size bytes a chunk of length bytes has (the last one
// may be shorter); 0 if size is not positive.
func NumSubBlocks(length, size int64) int {
	if size <= 0 || length <= 0 {
		return 0
	}
	return int((length + size - 1) / size)
}

// SubBlock is the range of sub-block i within a chunk of length bytes (chunk-relative).
func SubBlock(length, size int64, i int) Range {
	off := int64(i) * size
	return Range{Offset: off, Length: min(size, length-off)}
}

// SubHashes returns the sub-block digests of data (a chunk's bytes) for Chunk.SubHashes: ""
// when data fits in one sub-block (its CID already is that sub-block's hash) or size is not
// positive.
func SubHashes(data []byte, size int64) string {
	n := NumSubBlocks(int64(len(data)), size)
	if n <= 1 {
		return ""
	}
	out := make([]byte, 0, n*SubHashSize)
	for i := range n {
		r := SubBlock(int64(len(data)), size, i)
		sum := sha256.Sum256(data[r.Offset:r.End()])
		out = append(out, sum[:]...)
	}
	return string(out)
}

// SetSubHashes gives every chunk of m longer than size its sub-block digests, reading the chunks'
// uncompressed bytes from r (the blob as the kernel reads it), and sets m.SubBlockSize.
func (m *Manifest) SetSubHashes(r io.ReaderAt, size int64) error {
	if size < BlockSize || size%BlockSize != 0 {
		return fmt.Errorf("chunk manifest for %s: sub-block size %d is not a positive multiple of %d", m.Blob, size, BlockSize)
	}
	buf := make([]byte, m.ChunkSize)
	for i := range m.Chunks {
		c := &m.Chunks[i]
		if c.Length <= size || c.Length > int64(len(buf)) {
			c.SubHashes = ""
			continue
		}
		if k, err := r.ReadAt(buf[:c.Length], c.Offset); int64(k) < c.Length {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("sub-blocks of chunk %s at %d of %s: %w", c.CID, c.Offset, m.Blob, err)
		}
		c.SubHashes = SubHashes(buf[:c.Length], size)
	}
	m.SubBlockSize = size
	return nil
}

// VerifySubBlock checks that data is exactly sub-block i of chunk c (sub-blocks of size bytes)
// as c.SubHashes names it. Errors wrap ErrCorrupt; a chunk without sub-block digests, or an
// index or length that does not fit, is an error too.
func VerifySubBlock(c Chunk, size int64, i int, data []byte) error {
	n := NumSubBlocks(c.Length, size)
	if c.SubHashes == "" || len(c.SubHashes) != n*SubHashSize || i < 0 || i >= n {
		return fmt.Errorf("chunk %s: no sub-block %d of %d bytes to verify against: %w", c.CID, i, size, ErrCorrupt)
	}
	if r := SubBlock(c.Length, size, i); int64(len(data)) != r.Length {
		return fmt.Errorf("chunk %s: sub-block %d is %d bytes, want %d: %w", c.CID, i, len(data), r.Length, ErrCorrupt)
	}
	sum := sha256.Sum256(data)
	if string(sum[:]) != c.SubHashes[i*SubHashSize:(i+1)*SubHashSize] {
		return fmt.Errorf("chunk %s: sub-block %d does not match its digest: %w", c.CID, i, ErrCorrupt)
	}
	return nil
}

func (m *Manifest) validateSubBlockSize() error {
	if m.SubBlockSize == 0 {
		return nil
	}
	if m.SubBlockSize < BlockSize || m.SubBlockSize%BlockSize != 0 || m.SubBlockSize > m.ChunkSize {
		return fmt.Errorf("chunk manifest for %s: sub-block size %d is not a multiple of %d up to the chunk size %d", m.Blob, m.SubBlockSize, BlockSize, m.ChunkSize)
	}
	return nil
}

// validateSubHashes: a chunk's sub-block digests, where it has them, are one per sub-block of
// the manifest's size, and only chunks longer than one sub-block have them.
func (m *Manifest) validateSubHashes(i int, c Chunk) error {
	if c.SubHashes == "" {
		return nil
	}
	n := NumSubBlocks(c.Length, m.SubBlockSize)
	if n <= 1 || len(c.SubHashes) != n*SubHashSize {
		return fmt.Errorf("chunk manifest for %s: chunk %d has %d bytes of sub-block digests, want %d sub-blocks of %d bytes (sub-blocks of %d)", m.Blob, i, len(c.SubHashes), n, SubHashSize, m.SubBlockSize)
	}
	return nil
}

// Progress is one chunk's bytes as they arrive, for readers that need only part of the chunk:
// the fetcher hands it sub-blocks (PutSubBlock verifies each against the chunk's sub-block
// digest before keeping it) and at the end the whole chunk verified against its CID (Finish);
// readers (ReadAt, TryRead) get bytes only from verified sub-blocks or the verified chunk, so no
// unverified byte reaches them. Want is the chunk-relative range the first reader asked for,
// which the fetcher asks its source for first.
//
// A Progress is safe for concurrent use: several fetchers (a request and its hedge) may put the
// same sub-block; the first verified copy is kept.
type Progress struct {
	c    Chunk
	size int64 // sub-block size, 0: no sub-blocks
	want Range

	mu      sync.Mutex
	buf     []byte // c.Length bytes, allocated at the first sub-block
	have    []bool
	full    Verified
	err     error
	changed chan struct{} // closed and replaced on every change
}

// NewProgress starts a Progress for chunk c with sub-blocks of size bytes (0, or a chunk without
// sub-block digests: readers wait for the whole chunk) and the range wanted first.
func NewProgress(c Chunk, size int64, want Range) *Progress {
	if c.SubHashes == "" || len(c.SubHashes) != NumSubBlocks(c.Length, size)*SubHashSize {
		size = 0
	}
	want.Offset = max(0, min(want.Offset, c.Length))
	want.Length = max(0, min(want.Length, c.Length-want.Offset))
	return &Progress{c: c, size: size, want: want, changed: make(chan struct{})}
}

// Chunk is the chunk whose bytes these are.
func (p *Progress) Chunk() Chunk { return p.c }

// SubBlockSize is the sub-block size, 0 if the chunk can only be had whole.
func (p *Progress) SubBlockSize() int64 { return p.size }

// Wanted returns the sub-blocks covering the range wanted first: first index and count (0, 0
// without sub-blocks or a wanted range, or for a nil Progress).
func (p *Progress) Wanted() (first, count int) {
	if p == nil || p.size == 0 || p.want.Length == 0 {
		return 0, 0
	}
	first = int(p.want.Offset / p.size)
	last := int((p.want.End() - 1) / p.size)
	return first, last - first + 1
}

// PutSubBlock verifies data as sub-block i and keeps it for readers. An error (wrapping
// ErrCorrupt) means data is not that sub-block: whoever sent it sent wrong bytes.
func (p *Progress) PutSubBlock(i int, data []byte) error {
	if p.size == 0 {
		return fmt.Errorf("chunk %s: sub-block %d for a chunk fetched whole: %w", p.c.CID, i, ErrCorrupt)
	}
	if err := VerifySubBlock(p.c, p.size, i, data); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.full.IsZero() || p.err != nil {
		return nil
	}
	if p.buf == nil {
		p.buf = make([]byte, p.c.Length)
		p.have = make([]bool, NumSubBlocks(p.c.Length, p.size))
	}
	if p.have[i] {
		return nil
	}
	copy(p.buf[int64(i)*p.size:], data)
	p.have[i] = true
	p.signalLocked()
	return nil
}

// Finish hands over the whole chunk, verified against its CID: every reader can now be answered.
func (p *Progress) Finish(v Verified) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !v.CID().Equals(p.c.CID) || v.Len() != p.c.Length || !p.full.IsZero() {
		return
	}
	p.full, p.buf, p.have = v, nil, nil
	p.signalLocked()
}

// Complete reports whether the whole chunk has been handed over (Finish).
func (p *Progress) Complete() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.full.IsZero()
}

// Fail ends the Progress: readers still waiting get err. Sub-blocks already read stay good.
func (p *Progress) Fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.full.IsZero() && p.err == nil {
		p.err = err
		p.signalLocked()
	}
}

func (p *Progress) signalLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// TryRead copies the chunk's bytes at chunk-relative off into dst if all of them are verified
// (ok), else returns a channel that is closed at the next change. err is the fetch's failure
// (Fail), or a range outside the chunk.
func (p *Progress) TryRead(dst []byte, off int64) (ok bool, changed <-chan struct{}, err error) {
	if off < 0 || off+int64(len(dst)) > p.c.Length {
		return false, nil, fmt.Errorf("chunk %s: read [%d,+%d) outside its %d bytes", p.c.CID, off, len(dst), p.c.Length)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.full.IsZero() {
		copy(dst, p.full.Bytes()[off:])
		return true, nil, nil
	}
	if p.err != nil {
		return false, nil, p.err
	}
	if p.have != nil && len(dst) > 0 {
		first, last := int(off/p.size), int((off+int64(len(dst))-1)/p.size)
		all := true
		for i := first; i <= last && all; i++ {
			all = p.have[i]
		}
		if all {
			copy(dst, p.buf[off:])
			return true, nil, nil
		}
	}
	return false, p.changed, nil
}

// ReadAt waits until the bytes at chunk-relative off are verified and copies them into dst.
func (p *Progress) ReadAt(ctx context.Context, dst []byte, off int64) error {
	for {
		ok, changed, err := p.TryRead(dst, off)
		if ok || err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
