package e2e

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"
)

// TestMetadataFromPeers: host A pulls the image; host B, peered with A, then pulls it with the
// registry up. B asks the registry only what names the image (the tag's manifest): its chunk
// manifests and bootstrap come from A, which registered a layer of it, and its chunks too, so
// the origin serves B less than the bootstrap alone weighs.
func TestMetadataFromPeers(t *testing.T) {
	c := newCluster(t, 1)
	a := c.daemons[0]
	run(t, "prefetch", c.ref, "--wait", "--api", a.sock)
	var inspect struct {
		Bootstrap struct {
			Size int64 `json:"size"`
		} `json:"bootstrap"`
	}
	if err := json.Unmarshal([]byte(run(t, "image", "inspect", filepath.Join(c.dir, "img"), "--json")), &inspect); err != nil {
		t.Fatal(err)
	}
	boot := inspect.Bootstrap.Size
	if boot < 4096 {
		t.Fatalf("image inspect: bootstrap of %d bytes", boot)
	}

	b := c.startDaemon(2, []string{a.addr})
	// B asks peers for metadata only once one has told it that it holds a layer of the image.
	deadline := time.Now().Add(30 * time.Second)
	for {
		sb := c.stats(b)
		if len(sb.Peers) == 1 && sb.Peers[0].Blobs > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host B never got host A's presence maps: %+v", sb.Peers)
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := c.originBytes()
	run(t, "prefetch", c.ref, "--wait", "--api", b.sock)
	served := c.originBytes() - before
	sb := c.stats(b)
	if len(sb.Images) != 1 || sb.Images[0].BytesPresent != c.image {
		t.Fatalf("host B after prefetch: %+v", sb.Images)
	}
	// Chunks B took from the origin (a request to A hedged under load) are not metadata.
	if meta := served - sb.WireBytes.Origin; meta >= boot {
		t.Errorf("the origin served host B %d bytes besides chunks, want less than the %d-byte bootstrap (it and the chunk manifests come from host A)", meta, boot)
	}
	t.Logf("origin served host B %d bytes, %d of them chunks (bootstrap %d bytes; chunk data %d bytes from peers)", served, sb.WireBytes.Origin, boot, sb.Bytes.Peers)
}
