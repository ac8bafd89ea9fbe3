package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/chunkstore/storetest"
)

// TestRottedChunkIsDropped: bytes that change on disk under a present chunk are never served. The
// read's check fails, the chunk is counted as a verification failure and dropped (so the resolver
// fetches it again), and the store's other chunks are untouched. docs/failure-model.md cites it.
func TestRottedChunkIsDropped(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir, testConfig())
	defer func() { _ = s.Close() }()
	b := storetest.NewBlob(t, 7, 3*4096, 4096)
	if err := s.AddBlob(ctx, b.Manifest); err != nil {
		t.Fatal(err)
	}
	writeAll(t, s, b)
	bad, good := b.Manifest.Chunks[1], b.Manifest.Chunks[2]

	f, err := os.OpenFile(s.BackingPath(b.Digest()), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	flipped := []byte{b.Bytes(bad)[0]}
	flipped[0] ^= 0xff
	if _, err := f.WriteAt(flipped, bad.Offset); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	// The unverified read returns the rotted bytes as they are (its caller verifies them, and
	// calls ReadChunk when they fail, as p2p's V4 sender does); the good chunk's are intact.
	if raw, err := s.ReadChunkUnverified(ctx, bad.CID); err != nil || raw[0] != flipped[0] || int64(len(raw)) != bad.Length {
		t.Fatalf("unverified read of the rotted chunk: %v", err)
	}
	if raw, err := s.ReadChunkUnverified(ctx, good.CID); err != nil || !bytes.Equal(raw, b.Bytes(good)) {
		t.Fatalf("unverified read of a good chunk: %v", err)
	}
	if _, err := s.ReadChunk(ctx, bad.CID); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("ReadChunk of a rotted chunk: %v, want ErrNotFound (dropped)", err)
	}
	if got := s.Stats().VerifyFailures; got != 1 {
		t.Fatalf("VerifyFailures = %d, want 1", got)
	}
	if has, err := s.HasChunk(b.Digest(), bad); err != nil || has {
		t.Fatalf("rotted chunk still present (%v, %v)", has, err)
	}
	if v, err := s.ReadChunk(ctx, good.CID); err != nil || v.Len() != good.Length {
		t.Fatalf("neighbouring chunk: %v", err)
	}
	if _, err := s.ReadChunkUnverified(ctx, bad.CID); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("unverified read of the dropped chunk: %v, want ErrNotFound", err)
	}
}
