package chunkstore

import (
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

func TestIndexEncodingRoundTrip(t *testing.T) {
	d := digest.FromString("blob")
	r := blobRecord{Size: 1 << 33, ManifestDigest: digest.FromString("m"), PresentBytes: 4096, PresentChunks: 1, LastAccess: 1700000000000000000, Sig: fileSig{Ino: 12, Size: 1 << 33, CtimeNs: -5}}
	got, err := decodeBlobRecord(encodeBlobRecord(r))
	if err != nil || got != r {
		t.Fatalf("blob record round trip: %+v, %v", got, err)
	}
	c := chunk.CID([]byte("x"))
	l, gc, err := decodePresent(encodePresent(8192, c))
	if err != nil || l != 8192 || !gc.Equals(c) {
		t.Fatalf("present round trip: %d %s %v", l, gc, err)
	}
	off, err := decodePresentKey(presentKey(d, 1<<40), d)
	if err != nil || off != 1<<40 {
		t.Fatalf("present key: %d %v", off, err)
	}
	kc, kd, koff, err := decodeCIDKey(cidKey(c, d, 4096))
	if err != nil || !kc.Equals(c) || kd != d || koff != 4096 {
		t.Fatalf("cid key: %s %s %d %v", kc, kd, koff, err)
	}
}

// FuzzIndexDecoders feeds arbitrary bytes to every index decoder: they must return an error or a
// value that encodes back to the same bytes, never panic.
func FuzzIndexDecoders(f *testing.F) {
	d := digest.FromString("blob")
	c := chunk.CID([]byte("x"))
	f.Add(encodeBlobRecord(blobRecord{Size: 10, ManifestDigest: d, LastAccess: 3}))
	f.Add(encodePresent(4096, c))
	f.Add(cidKey(c, d, 8192))
	f.Add(presentKey(d, 4096))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeBlobRecord(b); err == nil {
			if string(encodeBlobRecord(r)) != string(b) {
				// Varints have one canonical form per value only when minimal; accept a
				// non-minimal input but require a stable re-decode.
				r2, err := decodeBlobRecord(encodeBlobRecord(r))
				if err != nil || r2 != r {
					t.Fatalf("blob record not stable: %+v vs %+v (%v)", r, r2, err)
				}
			}
		}
		if l, c, err := decodePresent(b); err == nil {
			if l2, c2, err := decodePresent(encodePresent(l, c)); err != nil || l2 != l || !c2.Equals(c) {
				t.Fatalf("present value not stable")
			}
		}
		if c, d, off, err := decodeCIDKey(b); err == nil {
			if string(cidKey(c, d, off)) != string(b) {
				t.Fatalf("cid key does not round trip: %q", b)
			}
		}
		_, _ = decodePresentKey(b, d)
		_, _ = decodeBE64(b)
	})
}

// TestManifestCacheBounds: the cache holds at most max manifests and maxChunks chunks over all,
// dropping the least recently used, but always keeps the last one put.
func TestManifestCacheBounds(t *testing.T) {
	mk := func(n int) *chunk.Manifest { return &chunk.Manifest{Chunks: make([]chunk.Chunk, n)} }
	c := newManifestCache(3, 100)
	c.put("a", mk(40))
	c.put("b", mk(40))
	if c.get("a") == nil { // a is now the most recent
		t.Fatal("a dropped under both bounds")
	}
	c.put("c", mk(40)) // 120 chunks: b, the least recent, goes
	if c.get("b") != nil || c.get("a") == nil || c.get("c") == nil || c.chunks != 80 {
		t.Fatalf("after c: b %v, a %v, c %v, %d chunks", c.get("b") != nil, c.get("a") != nil, c.get("c") != nil, c.chunks)
	}
	c.put("big", mk(500)) // over the bound alone: kept, everything else goes
	if c.get("big") == nil || c.get("a") != nil || c.get("c") != nil || c.chunks != 500 {
		t.Fatalf("after big: %d entries, %d chunks", c.lru.Len(), c.chunks)
	}
	c.put("big", mk(10)) // replaced: the count follows
	for _, d := range []digest.Digest{"x", "y", "z"} {
		c.put(d, mk(1))
	}
	if c.lru.Len() != 3 || c.get("big") != nil || c.chunks != 3 {
		t.Fatalf("count bound: %d entries, %d chunks", c.lru.Len(), c.chunks)
	}
}
