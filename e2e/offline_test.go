package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRegistryDownByDigest: host A pulls the image by tag while the registry is up; the registry
// (the real `shoal origin serve` process) is then stopped for good. Host B, peered with A, gets
// the image by digest with no registry: its manifest, chunk manifest and bootstrap come from A
// over /shoal/object/1 and its chunks over /shoal/chunk, all checked against their digests; B
// mounts it (as root) and every file reads back with the source's sha256. The tag without
// --peer-tags fails with an error that says the registry is unreachable, that tags need it, and
// what to do; host C, started with --peer-tags, gets the image by tag from A's word for it. B,
// which kept the objects it resolved, then serves them on: host D gets the image by digest with
// B as its only peer.
func TestRegistryDownByDigest(t *testing.T) {
	c := newCluster(t, 1)
	a := c.daemons[0]
	run(t, "prefetch", c.ref, "--wait", "--api", a.sock)
	sa := c.stats(a)
	if len(sa.Images) != 1 || sa.Images[0].BytesPresent != c.image || !strings.HasPrefix(imageDigest(t, a), "sha256:") {
		t.Fatalf("host A after prefetch: %+v", sa.Images)
	}
	digestA := imageDigest(t, a)
	byDigest := c.origin + "/img@" + digestA

	// Stop the registry; nothing answers on its port any more.
	c.originP.Process.Kill()
	c.originP.Wait()

	b := c.startDaemon(2, []string{a.addr})
	c.extra = []string{"--peer-tags"}
	cc := c.startDaemon(3, []string{a.addr})
	c.extra = nil

	// B: by digest, from A.
	if os.Geteuid() == 0 {
		mp := filepath.Join(c.dir, "mnt-b")
		os.MkdirAll(mp, 0o755)
		out, err := exec.Command(shoalBin, "mount", byDigest, mp, "--mode", "fuse", "--api", b.sock).CombinedOutput()
		if err != nil {
			t.Fatalf("host B, mount by digest with the registry down: %v\n%s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", "-l", mp).Run() }) // only if the test failed midway
		c.checkTree(mp)
		c.randomReads(mp, 3)
		run(t, "umount", mp, "--api", b.sock)
	} else {
		t.Log("not root: host B prefetches by digest instead of mounting")
		run(t, "prefetch", byDigest, "--wait", "--api", b.sock)
	}
	sb := c.stats(b)
	if len(sb.Images) != 1 || sb.Images[0].BytesPresent != c.image || imageDigest(t, b) != digestA {
		t.Fatalf("host B: %+v", sb.Images)
	}
	if sb.Bytes.Origin != 0 || sb.Bytes.Peers+sb.Bytes.Dedup != c.image || sb.VerifyFailures != 0 {
		t.Errorf("host B: %d bytes from the origin, %d from peers, %d dedup, %d verify failures (image %d): want all from peers",
			sb.Bytes.Origin, sb.Bytes.Peers, sb.Bytes.Dedup, sb.VerifyFailures, c.image)
	}

	// B: the tag, without --peer-tags.
	out, err := exec.Command(shoalBin, "prefetch", c.ref, "--api", b.sock).CombinedOutput()
	for _, want := range []string{"unreachable", "is a tag", "by digest", "--peer-tags"} {
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("host B, tag with the registry down: err %v, output %q; want an error mentioning %q", err, out, want)
		}
	}

	// C (--peer-tags): the tag, from A's word for it.
	run(t, "prefetch", c.ref, "--wait", "--api", cc.sock)
	sc := c.stats(cc)
	if len(sc.Images) != 1 || sc.Images[0].BytesPresent != c.image || imageDigest(t, cc) != digestA || sc.Bytes.Origin != 0 {
		t.Fatalf("host C with --peer-tags: %+v, %+v", sc.Images, sc.Bytes)
	}
	if !strings.Contains(cc.log.String(), "resolved by a peer") {
		t.Errorf("host C resolved a tag from a peer without warning in its log:\n%s", cc.log.String())
	}

	// D: B's kept objects, served on (A is not D's peer).
	d := c.startDaemon(4, []string{b.addr})
	run(t, "prefetch", byDigest, "--wait", "--api", d.sock)
	if sd := c.stats(d); len(sd.Images) != 1 || sd.Images[0].BytesPresent != c.image || sd.Bytes.Origin != 0 {
		t.Fatalf("host D, by digest from B: %+v, %+v", sd.Images, sd.Bytes)
	}
}

// TestRegistryDownUnknownDigest: with the registry down and no peer holding the image, a
// reference by digest fails, naming both the registry's failure and the peers' answer, in
// bounded time (the registry's retries, then one round of peers).
func TestRegistryDownUnknownDigest(t *testing.T) {
	c := newCluster(t, 2)
	c.originP.Process.Kill()
	c.originP.Wait()
	ref := c.origin + "/img@sha256:" + strings.Repeat("ab", 32)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() {
		out, err = exec.Command(shoalBin, "prefetch", ref, "--api", c.daemons[1].sock).CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("prefetch of an unknown digest with the registry down did not return in 2 minutes")
	}
	for _, want := range []string{"unavailable", "peer"} {
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("unknown digest, registry down: err %v, output %q; want an error mentioning %q", err, out, want)
		}
	}
}

// imageDigest returns the manifest digest of the one image host d holds.
func imageDigest(t *testing.T, d *daemonProc) string {
	var s struct {
		Images []struct {
			Digest string `json:"digest"`
		} `json:"images"`
	}
	if err := json.Unmarshal([]byte(run(t, "stats", "--json", "--api", d.sock)), &s); err != nil || len(s.Images) != 1 {
		t.Fatalf("host %d stats: %v %+v", d.n, err, s)
	}
	return s.Images[0].Digest
}
