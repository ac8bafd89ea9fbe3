package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/bootstrap"
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

// TestMetadataSimultaneousStart: four peered hosts pull the image in the same instant, so none
// has registered it and none can serve its metadata yet. Each asks every metadata object's
// rendezvous owner, which fetches it from the origin once for all (p2p.ObjectThroughProtocol):
// the origin serves the bootstrap and chunk manifests (the whole-blob GETs; chunks are ranged)
// about once each, not once per host.
func TestMetadataSimultaneousStart(t *testing.T) {
	const hosts = 4
	c := newCluster(t, hosts)
	objects := metadataObjects(t, filepath.Join(c.dir, "img"))
	// Every host must see every other before they start: the owner is agreed among connected
	// peers.
	deadline := time.Now().Add(30 * time.Second)
	for _, d := range c.daemons {
		for len(c.stats(d).Peers) != hosts-1 {
			if time.Now().After(deadline) {
				t.Fatalf("host %d never connected to all %d others: %+v", d.n, hosts-1, c.stats(d).Peers)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	before := c.originStats()
	errs := make(chan error, hosts)
	start := make(chan struct{})
	for _, d := range c.daemons {
		go func() {
			<-start
			out, err := exec.Command(shoalBin, "prefetch", c.ref, "--wait", "--api", d.sock).CombinedOutput()
			if err != nil {
				err = fmt.Errorf("host %d: prefetch: %v: %s", d.n, err, out)
			}
			errs <- err
		}()
	}
	close(start)
	for range hosts {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	after := c.originStats()
	for _, d := range c.daemons {
		if s := c.stats(d); len(s.Images) != 1 || s.Images[0].BytesPresent != c.image {
			t.Fatalf("host %d after prefetch: %+v", d.n, s.Images)
		}
	}
	whole := (after.Blobs - after.Ranges) - (before.Blobs - before.Ranges)
	// Without coalescing each host fetches each object itself: hosts × objects. A host whose
	// owner reached the manifest late (objectThroughWait) fetches one itself: some slack.
	if whole > objects+hosts/2 {
		t.Errorf("the origin served %d whole blobs (metadata objects) to %d hosts starting together, want about %d: each of the image's %d metadata objects once, by its owner", whole, hosts, objects, objects)
	}
	t.Logf("origin: %d whole-blob GETs for %d metadata objects and %d hosts; %d bytes in all (image data %d bytes)", whole, objects, hosts, after.BytesServed-before.BytesServed, c.image)
}

// metadataObjects counts the metadata objects (chunk manifests, bootstrap) a host fetches to
// load the image in the OCI layout dir: every layer of its manifest but the data blobs, less the
// plain forms of those that have a compressed form (which the host fetches instead).
func metadataObjects(t *testing.T, dir string) int64 {
	var index ocispec.Index
	readJSON(t, filepath.Join(dir, "index.json"), &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("%s: %d manifests", dir, len(index.Manifests))
	}
	var m ocispec.Manifest
	readJSON(t, filepath.Join(dir, "blobs", "sha256", index.Manifests[0].Digest.Encoded()), &m)
	var n int64
	for _, l := range m.Layers {
		switch {
		case l.MediaType == bootstrap.MediaTypeBlob:
		case l.Annotations[bootstrap.AnnotationUncompressed] != "":
			// A compressed form: fetched instead of the plain one it names.
		default:
			n++
		}
	}
	return n
}

func readJSON(t *testing.T, path string, v any) {
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		t.Fatal(err)
	}
}
