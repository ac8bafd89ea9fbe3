package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// wireStats is the part of `shoal stats --json` about bytes on the network.
type wireStats struct {
	Bytes struct {
		Dedup, Peers, Origin int64
	} `json:"bytes"`
	WireBytes struct {
		Peers, Origin int64
	} `json:"wireBytes"`
}

// TestCompressedImages: the same tree (source-like text, random data, empty and odd sizes) built
// with zstd chunks (with a trained dictionary) and uncompressed is served by one origin; two
// peered hosts mount each image (host 1 in fuse mode, host 2 in fusetree mode) and read it back
// byte-identical. The compressed image takes fewer
// bytes from the origin than it has data (the wire stats say so too) and from host 1 to host 2
// (peers send compressed chunks), and the uncompressed one
// (an image as built before compression) still mounts and reads the same. Both have the same
// chunk CIDs, so a host holding one has the other's data already (dedup).
func TestCompressedImages(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed (erofs-utils)")
	}
	c := &cluster{t: t, dir: t.TempDir()}
	c.src = filepath.Join(c.dir, "src")
	c.sums = makeTree(t, c.src, 7, 12)
	for i := range 6 { // text: what most image bytes look like
		var b bytes.Buffer
		for j := 0; b.Len() < 700_000+i*300_000; j++ {
			fmt.Fprintf(&b, "func handler%d_%d(w http.ResponseWriter, r *http.Request) { w.WriteHeader(%d) }\n", i, j, 200+j%5)
		}
		rel := filepath.Join("text", fmt.Sprintf("f%d.go", i))
		if err := os.MkdirAll(filepath.Join(c.src, "text"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.src, rel), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		c.sums[rel] = sha256.Sum256(b.Bytes())
	}
	images := map[string]int64{} // name → chunk data bytes
	stored := map[string]int64{}
	var serve []string
	for _, name := range []string{"zimg", "plain"} {
		dir := filepath.Join(c.dir, name)
		compression := map[string]string{"zimg": "zstd", "plain": "none"}[name]
		// A small dictionary, so that this small tree's sample trains one (128 KiB, the
		// default, needs 512 KiB of compressible sample).
		run(t, "image", "build", c.src, dir, "--quiet", "--compression", compression, "--dict-size", "4K")
		var inspect struct {
			DataBytes   int64 `json:"dataBytes"`
			StoredBytes int64 `json:"storedBytes"`
			Blobs       []struct {
				Chunks []struct {
					Codec string `json:"codec"`
				} `json:"chunks"`
			} `json:"blobs"`
		}
		if err := json.Unmarshal([]byte(run(t, "image", "inspect", dir, "--json")), &inspect); err != nil {
			t.Fatal(err)
		}
		codecs := map[string]int{}
		for _, ch := range inspect.Blobs[0].Chunks {
			codecs[ch.Codec]++
		}
		if name == "zimg" && (codecs["zstd-dict"] == 0 || codecs[""] == 0) {
			t.Fatalf("compressed image's chunk codecs %v: want frames with the dictionary and raw chunks", codecs)
		}
		images[name], stored[name] = inspect.DataBytes, inspect.StoredBytes
		serve = append(serve, name+"="+dir)
	}
	if stored["zimg"] >= images["zimg"]*3/4 || stored["plain"] != images["plain"] || images["zimg"] != images["plain"] {
		t.Fatalf("stored/data bytes: zstd %d/%d, none %d/%d", stored["zimg"], images["zimg"], stored["plain"], images["plain"])
	}
	c.origin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	o := exec.Command(shoalBin, append(append([]string{"origin", "serve"}, serve...), "--listen", c.origin)...)
	if err := o.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Process.Kill(); o.Wait() })
	waitHTTP(t, "http://"+c.origin+"/v2/")

	wire := func(d *daemonProc) wireStats {
		var s wireStats
		if err := json.Unmarshal([]byte(run(t, "stats", "--json", "--api", d.sock)), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	// A reader is answered from a chunk's first verified sub-blocks, before the chunk is stored
	// and counted (the first-byte path): wait until host d has counted want bytes of data since
	// base (every byte of the image, once its tree has been read), or 20 s.
	settle := func(d *daemonProc, base wireStats, want int64) wireStats {
		deadline := time.Now().Add(20 * time.Second)
		for {
			s := wire(d)
			got := s.Bytes.Origin + s.Bytes.Peers + s.Bytes.Dedup - (base.Bytes.Origin + base.Bytes.Peers + base.Bytes.Dedup)
			if got >= want || time.Now().After(deadline) {
				return s
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for i, name := range []string{"zimg", "plain"} {
		// Two fresh hosts per image: nothing local yet.
		h1 := c.startDaemon(2*i+1, nil)
		h2 := c.startDaemon(2*i+2, []string{h1.addr})
		c.daemons = []*daemonProc{h1, h2}
		c.ref = c.origin + "/" + name + ":latest"
		before := c.originBytes()
		w1, w2 := wire(c.daemons[0]), wire(c.daemons[1])
		mp1, mp2 := filepath.Join(c.dir, name+"-mnt1"), filepath.Join(c.dir, name+"-mnt2")
		c.mountOrSkip(c.daemons[0], "fuse", mp1)
		c.checkTree(mp1)
		a1 := settle(c.daemons[0], w1, images[name])
		served := c.originBytes() - before
		data, onWire := a1.Bytes.Origin-w1.Bytes.Origin, a1.WireBytes.Origin-w1.WireBytes.Origin
		t.Logf("%s: %d bytes of data, %d on the wire from the origin, origin served %d", name, data, onWire, served)
		// The origin also served the manifest, the chunk manifest and the bootstrap.
		if onWire > served || served > onWire+256<<10 || data != images[name] {
			t.Errorf("%s host 1: %d data bytes (image %d), %d on the wire, origin served %d", name, data, images[name], onWire, served)
		}
		if name == "zimg" && (served >= data*3/4 || served > stored[name]*11/10) {
			t.Errorf("compressed image: origin served %d bytes for %d of data (%d stored)", served, data, stored[name])
		}
		if name == "plain" && onWire != data {
			t.Errorf("uncompressed image: %d on the wire for %d of data", onWire, data)
		}
		// Host 2 reads from host 1, byte-identical, in the other FUSE mode.
		c.mountOrSkip(c.daemons[1], "fusetree", mp2)
		c.randomReads(mp2, 3)
		c.checkTree(mp2)
		a2 := settle(c.daemons[1], w2, images[name])
		peerData, peerWire := a2.Bytes.Peers-w2.Bytes.Peers, a2.WireBytes.Peers-w2.WireBytes.Peers
		t.Logf("%s host 2: %d bytes of data from its peer, %d on the wire", name, peerData, peerWire)
		if peerData == 0 {
			t.Errorf("%s host 2: nothing from its peer", name)
		}
		// Between hosts of this release (ChunkProtocolV3) a compressed image's chunks cross
		// the LAN compressed, an uncompressed image's raw.
		if name == "zimg" && peerWire >= peerData*3/4 {
			t.Errorf("compressed image: %d bytes on the LAN for %d of data from the peer", peerWire, peerData)
		}
		if name == "plain" && peerWire != peerData {
			t.Errorf("uncompressed image: %d bytes on the LAN for %d of data from the peer", peerWire, peerData)
		}
		run(t, "umount", mp1, "--api", c.daemons[0].sock)
		run(t, "umount", mp2, "--api", c.daemons[1].sock)
		if name == "plain" {
			break
		}
		// The uncompressed image on a host that holds the compressed one: every chunk is
		// already local by CID.
		c.ref = c.origin + "/plain:latest"
		mp3 := filepath.Join(c.dir, "plain-on-zimg-host")
		c.mountOrSkip(c.daemons[0], "fuse", mp3)
		c.checkTree(mp3)
		a3 := settle(c.daemons[0], a1, images["plain"])
		if dedup := a3.Bytes.Dedup - a1.Bytes.Dedup; dedup != images["plain"] || a3.WireBytes.Origin != a1.WireBytes.Origin {
			t.Errorf("uncompressed image on the compressed one's host: %d bytes dedup of %d, %d more on the wire", dedup, images["plain"], a3.WireBytes.Origin-a1.WireBytes.Origin)
		}
		run(t, "umount", mp3, "--api", c.daemons[0].sock)
	}
}
