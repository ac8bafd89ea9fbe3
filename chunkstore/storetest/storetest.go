// Package storetest is a conformance suite for chunk stores: Run checks the behaviour every
// frontend relies on (verify before present, idempotent writes, reads by CID across blobs,
// presence queries, events). chunkstore's own tests run it against the real store.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/ipfs/go-cid"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore"
)

// Store is what the suite needs of a chunk store.
type Store interface {
	AddBlob(ctx context.Context, m *chunk.Manifest) error
	Blob(d digest.Digest) (*chunk.Manifest, bool)
	BackingPath(d digest.Digest) string
	WriteChunk(ctx context.Context, blob digest.Digest, c chunk.Chunk, data []byte) error
	Put(ctx context.Context, blob digest.Digest, c chunk.Chunk, v chunk.Verified) error
	HasChunk(blob digest.Digest, c chunk.Chunk) (bool, error)
	HasCID(id cid.Cid) (bool, error)
	Missing(blob digest.Digest, off, length int64) ([]chunk.Chunk, error)
	Present(blob digest.Digest) ([]chunk.Range, error)
	ReadChunk(ctx context.Context, id cid.Cid) (chunk.Verified, error)
	ReadAt(blob digest.Digest, p []byte, off int64) (int, error)
	Subscribe(fn func(chunkstore.Event)) (cancel func())
}

// Blob is generated test content with its fixed-chunking manifest.
type Blob struct {
	Data     []byte
	Manifest *chunk.Manifest
}

// Digest is the blob's digest.
func (b Blob) Digest() digest.Digest { return b.Manifest.Blob }

// Bytes returns the chunk's content.
func (b Blob) Bytes(c chunk.Chunk) []byte { return b.Data[c.Offset:c.End()] }

// NewBlob makes a blob of size random bytes (seeded) cut into chunkSize chunks.
func NewBlob(t testing.TB, seed uint64, size, chunkSize int64) Blob {
	t.Helper()
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	return blobOf(t, data, chunkSize)
}

func blobOf(t testing.TB, data []byte, chunkSize int64) Blob {
	t.Helper()
	m, err := chunk.FixedManifest(bytes.NewReader(data), digest.FromBytes(data), int64(len(data)), chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	return Blob{Data: data, Manifest: m}
}

// Run runs the suite; newStore returns a fresh, empty store (closed by the caller's cleanup).
func Run(t *testing.T, newStore func(t *testing.T) Store) {
	ctx := context.Background()
	t.Run("WriteReadVerify", func(t *testing.T) {
		s := newStore(t)
		b := NewBlob(t, 1, 10*4096+100, 4*4096) // 3 chunks, the last unaligned
		mustAdd(t, s, b)
		for _, c := range b.Manifest.Chunks {
			if Has(t, s, b.Digest(), c) || HasCID(t, s, c.CID) {
				t.Fatalf("chunk at %d present before writing", c.Offset)
			}
			if err := s.WriteChunk(ctx, b.Digest(), c, b.Bytes(c)); err != nil {
				t.Fatalf("WriteChunk at %d: %v", c.Offset, err)
			}
			if !Has(t, s, b.Digest(), c) || !HasCID(t, s, c.CID) {
				t.Fatalf("chunk at %d not present after writing", c.Offset)
			}
			gotv, err := s.ReadChunk(ctx, c.CID)
			got := gotv.Bytes()
			if err != nil || !bytes.Equal(got, b.Bytes(c)) {
				t.Fatalf("ReadChunk at %d: %d bytes, %v", c.Offset, len(got), err)
			}
		}
		all := make([]byte, len(b.Data)+10)
		n, err := s.ReadAt(b.Digest(), all, 0)
		if n != len(b.Data) || !errors.Is(err, io.EOF) || !bytes.Equal(all[:n], b.Data) {
			t.Fatalf("ReadAt whole blob: %d, %v", n, err)
		}
		part := make([]byte, 5000)
		if n, err := s.ReadAt(b.Digest(), part, 4000); n != 5000 || err != nil || !bytes.Equal(part, b.Data[4000:9000]) {
			t.Fatalf("ReadAt across chunks: %d, %v", n, err)
		}
		if _, err := s.ReadAt(b.Digest(), part, int64(len(b.Data))); !errors.Is(err, io.EOF) {
			t.Fatalf("ReadAt at end: %v, want EOF", err)
		}
	})

	t.Run("RejectsBadInput", func(t *testing.T) {
		s := newStore(t)
		b := NewBlob(t, 2, 8*4096, 4096)
		mustAdd(t, s, b)
		c := b.Manifest.Chunks[1]
		other := b.Manifest.Chunks[2]
		tests := []struct {
			name string
			blob digest.Digest
			c    chunk.Chunk
			data []byte
			want error
		}{
			{"wrong bytes", b.Digest(), c, b.Bytes(other), chunkstore.ErrCorrupt},
			{"flipped bit", b.Digest(), c, flip(b.Bytes(c)), chunk.ErrCorrupt},
			{"short data", b.Digest(), c, b.Bytes(c)[:100], chunkstore.ErrInvalid},
			{"chunk not in manifest", b.Digest(), chunk.Chunk{Offset: c.Offset, Length: c.Length, CID: other.CID}, b.Bytes(other), chunkstore.ErrInvalid},
			{"unknown blob", digest.FromString("nope"), c, b.Bytes(c), chunkstore.ErrNotFound},
		}
		for _, tt := range tests {
			err := s.WriteChunk(ctx, tt.blob, tt.c, tt.data)
			if !errors.Is(err, tt.want) {
				t.Errorf("%s: WriteChunk error %v, want %v", tt.name, err, tt.want)
			}
		}
		if Has(t, s, b.Digest(), c) || HasCID(t, s, c.CID) {
			t.Fatal("a rejected write left the chunk present")
		}
		if _, err := s.ReadChunk(ctx, c.CID); !errors.Is(err, chunkstore.ErrNotFound) {
			t.Fatalf("ReadChunk of absent chunk: %v", err)
		}
		if _, err := s.ReadAt(b.Digest(), make([]byte, 10), c.Offset); !errors.Is(err, chunkstore.ErrNotFound) {
			t.Fatalf("ReadAt of absent range: %v", err)
		}
		if err := s.AddBlob(ctx, nil); err == nil {
			t.Fatal("AddBlob(nil) accepted")
		}
		bad := *b.Manifest
		bad.ChunkSize = 8192
		if err := s.AddBlob(ctx, &bad); !errors.Is(err, chunkstore.ErrInvalid) {
			t.Fatalf("AddBlob with a different manifest for a registered blob: %v", err)
		}
	})

	t.Run("IdempotentAndOnce", func(t *testing.T) {
		s := newStore(t)
		b := NewBlob(t, 3, 4*4096, 4096)
		mustAdd(t, s, b)
		mustAdd(t, s, b)
		var mu sync.Mutex
		added := map[int64]int{}
		defer s.Subscribe(func(e chunkstore.Event) {
			if e.Kind == chunkstore.ChunkAdded {
				mu.Lock()
				added[e.Chunk.Offset]++
				mu.Unlock()
			}
		})()
		var wg sync.WaitGroup
		for range 8 {
			for _, c := range b.Manifest.Chunks {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := s.WriteChunk(ctx, b.Digest(), c, b.Bytes(c)); err != nil {
						t.Errorf("concurrent WriteChunk at %d: %v", c.Offset, err)
					}
				}()
			}
		}
		wg.Wait()
		for _, c := range b.Manifest.Chunks {
			if err := s.WriteChunk(ctx, b.Digest(), c, b.Bytes(c)); err != nil {
				t.Fatalf("rewrite at %d: %v", c.Offset, err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for _, c := range b.Manifest.Chunks {
			if added[c.Offset] != 1 {
				t.Errorf("chunk at %d: %d ChunkAdded events, want 1", c.Offset, added[c.Offset])
			}
		}
	})

	t.Run("PresenceQueries", func(t *testing.T) {
		s := newStore(t)
		b := NewBlob(t, 4, 10*4096, 2*4096) // chunks at 0, 8K, 16K, 24K, 32K
		mustAdd(t, s, b)
		ch := b.Manifest.Chunks
		for _, i := range []int{0, 1, 3} {
			if err := s.WriteChunk(ctx, b.Digest(), ch[i], b.Bytes(ch[i])); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.Present(b.Digest())
		want := []chunk.Range{{Offset: 0, Length: 4 * 4096}, {Offset: 6 * 4096, Length: 2 * 4096}}
		if err != nil || !equalRanges(got, want) {
			t.Fatalf("Present = %v, %v; want %v", got, err, want)
		}
		tests := []struct {
			off, length int64
			want        []int
		}{
			{0, 10 * 4096, []int{2, 4}},
			{0, 1, nil},
			{4 * 4096, 1, []int{2}},
			{5*4096 + 10, 4096, []int{2, 3}[:1]},
			{7 * 4096, 3 * 4096, []int{4}},
			{0, 0, nil},
		}
		for _, tt := range tests {
			miss, err := s.Missing(b.Digest(), tt.off, tt.length)
			if err != nil {
				t.Fatal(err)
			}
			var offs []int
			for _, c := range miss {
				for i := range ch {
					if ch[i].Offset == c.Offset {
						offs = append(offs, i)
					}
				}
			}
			if !equalInts(offs, tt.want) {
				t.Errorf("Missing(%d, %d) = chunks %v, want %v", tt.off, tt.length, offs, tt.want)
			}
		}
		if _, err := s.Missing(digest.FromString("nope"), 0, 1); !errors.Is(err, chunkstore.ErrNotFound) {
			t.Errorf("Missing of unknown blob: %v", err)
		}
	})

	t.Run("ReadByCIDAcrossBlobs", func(t *testing.T) {
		s := newStore(t)
		shared := NewBlob(t, 5, 2*4096, 4096)
		// b2's second chunk has the same bytes as b1's first: one CID, two locations.
		b1 := blobOf(t, append(append([]byte{}, shared.Data[:4096]...), make([]byte, 4096)...), 4096)
		b2 := blobOf(t, append(append([]byte{}, shared.Data[4096:]...), shared.Data[:4096]...), 4096)
		mustAdd(t, s, b1)
		mustAdd(t, s, b2)
		c := b2.Manifest.Chunks[1]
		if !c.CID.Equals(b1.Manifest.Chunks[0].CID) {
			t.Fatal("test setup: chunks should share a CID")
		}
		if err := s.WriteChunk(ctx, b2.Digest(), c, b2.Bytes(c)); err != nil {
			t.Fatal(err)
		}
		gotv, err := s.ReadChunk(ctx, c.CID)
		if got := gotv.Bytes(); err != nil || !bytes.Equal(got, shared.Data[:4096]) {
			t.Fatalf("ReadChunk via the other blob: %v", err)
		}
		if Has(t, s, b1.Digest(), b1.Manifest.Chunks[0]) {
			t.Fatal("presence leaked from one blob to another")
		}
	})

	t.Run("Put", func(t *testing.T) {
		s := newStore(t)
		b := NewBlob(t, 6, 4*4096, 2*4096)
		mustAdd(t, s, b)
		c0, c1 := b.Manifest.Chunks[0], b.Manifest.Chunks[1]
		v0, err := chunk.Verify(c0.CID, b.Bytes(c0))
		if err != nil {
			t.Fatal(err)
		}
		// Verified bytes of another chunk are refused: Put trusts the hash, not the caller.
		if err := s.Put(ctx, b.Digest(), c1, v0); !errors.Is(err, chunkstore.ErrInvalid) {
			t.Fatalf("Put of another chunk's bytes: %v, want ErrInvalid", err)
		}
		if err := s.Put(ctx, b.Digest(), c0, chunk.Verified{}); !errors.Is(err, chunkstore.ErrInvalid) {
			t.Fatalf("Put of an unverified zero value: %v, want ErrInvalid", err)
		}
		if Has(t, s, b.Digest(), c1) {
			t.Fatal("refused Put marked a chunk present")
		}
		if err := s.Put(ctx, b.Digest(), c0, v0); err != nil {
			t.Fatalf("Put: %v", err)
		}
		if !Has(t, s, b.Digest(), c0) || Has(t, s, b.Digest(), c1) {
			t.Fatal("wrong presence after Put")
		}
		got := make([]byte, c0.Length)
		if _, err := s.ReadAt(b.Digest(), got, c0.Offset); err != nil || !bytes.Equal(got, b.Bytes(c0)) {
			t.Fatalf("ReadAt after Put: %v", err)
		}
	})
}

func mustAdd(t *testing.T, s Store, b Blob) {
	t.Helper()
	if err := s.AddBlob(context.Background(), b.Manifest); err != nil {
		t.Fatalf("AddBlob: %v", err)
	}
	if m, ok := s.Blob(b.Digest()); !ok || m.BlobSize != b.Manifest.BlobSize || len(m.Chunks) != len(b.Manifest.Chunks) {
		t.Fatalf("Blob after AddBlob: %v", ok)
	}
}

func flip(b []byte) []byte {
	c := append([]byte(nil), b...)
	c[len(c)/2] ^= 1
	return c
}

func equalRanges(a, b []chunk.Range) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Has is s.HasChunk for tests: an index error fails the test.
func Has(t testing.TB, s interface {
	HasChunk(digest.Digest, chunk.Chunk) (bool, error)
}, blob digest.Digest, c chunk.Chunk) bool {
	t.Helper()
	ok, err := s.HasChunk(blob, c)
	if err != nil {
		t.Fatalf("HasChunk %s at %d of %s: %v", c.CID, c.Offset, blob, err)
	}
	return ok
}

// HasCID is s.HasCID for tests: an index error fails the test.
func HasCID(t testing.TB, s interface{ HasCID(cid.Cid) (bool, error) }, id cid.Cid) bool {
	t.Helper()
	ok, err := s.HasCID(id)
	if err != nil {
		t.Fatalf("HasCID %s: %v", id, err)
	}
	return ok
}
