package p2p

import (
	"bytes"
	"testing"
	"time"

	"github.com/shoal-p2p/shoal/chunk"
)

// TestRecentLetsStoredChunksGo: once the store holds a chunk (Announce), the recent buffer lets
// its bytes go and keeps only its wire frame, so a host streaming an image holds the chunks
// between fetch and store, not the last recentMaxBytes of them.
func TestRecentLetsStoredChunksGo(t *testing.T) {
	var r recentChunks
	verified := func(s string) chunk.Verified {
		data := bytes.Repeat([]byte(s), 1<<14)
		v, err := chunk.Verify(chunk.CID(data), data)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	framed, plain := verified("framed "), verified("plain ")
	r.add(framed.CID(), framed, []byte("frame"), chunk.SourcePeer)
	r.add(plain.CID(), plain, nil, chunk.SourcePeer)
	if n, b := r.size(); n != 2 || b != int(framed.Len()+plain.Len())+len("frame") {
		t.Fatalf("%d entries of %d bytes before the store has them", n, b)
	}
	r.dropData(framed.CID())
	r.dropData(plain.CID())
	r.dropData(plain.CID()) // twice: a no-op
	if n, b := r.size(); n != 1 || b != len("frame") {
		t.Fatalf("%d entries of %d bytes once stored, want 1 of %d (the frame)", n, b, len("frame"))
	}
	if got, _ := r.get(framed.CID()); !got.IsZero() {
		t.Fatal("a stored chunk's bytes are still held")
	}
	if frame, raw, known := r.wire(framed.CID()); !known || raw || string(frame) != "frame" {
		t.Fatalf("wire form %q raw %v known %v, want the frame kept", frame, raw, known)
	}
	// A chunk fetched again (evicted, then read) is held again until stored.
	r.add(plain.CID(), plain, nil, chunk.SourceOrigin)
	if got, src := r.get(plain.CID()); got.IsZero() || src != chunk.SourceOrigin {
		t.Fatal("a chunk added again is not held")
	}
	if n := r.expire(time.Now().Add(recentMaxAge), recentMaxAge); n != 0 {
		t.Fatalf("%d entries left when idle, want none", n)
	}
	if r.data != nil || r.bytes != 0 {
		t.Fatalf("an empty buffer still holds a map (%v) or %d bytes", r.data != nil, r.bytes)
	}
}
