package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoal-p2p/shoal/internal/registrytest"
)

// TestMirrorPrivateBlobRights: the registry mirror shares a private repository's blobs between
// peers that prove pull rights, by the rule of chunks (docs/privacy.md). The real distribution
// registry with token auth; three real daemons with their mirrors: A and B may pull the private
// repository, C may not. A's mirror fetches a private blob from the registry; B's gets it from A
// (the registry serves it once); C's gets none of it from A or B (refused, counted) and fails
// as its registry refuses it. A public blob is shared with C as before. The test plays
// containerd: it GETs blobs from each node's mirror with containerd's ?ns= parameter.
func TestMirrorPrivateBlobRights(t *testing.T) {
	reg := registrytest.Start(t)
	for _, u := range []string{"alice", "bob", "carol"} {
		reg.AddUser(u, "pw-"+u)
	}
	reg.Grant("alice", "team/secret")
	reg.Grant("bob", "team/secret")
	reg.SetPublic("pub/app")
	data := make([]byte, 3<<20)
	rand.New(rand.NewSource(19)).Read(data)
	priv := reg.PushBlob(t, "team/secret", data)
	pubData := append([]byte("public "), data[:1<<20]...)
	pub := reg.PushBlob(t, "pub/app", pubData)

	c := &cluster{t: t, dir: t.TempDir(), origin: reg.Host}
	noCreds := filepath.Join(c.dir, "no-docker-config.json")
	type node struct {
		d      *daemonProc
		mirror string
	}
	var nodes []node
	start := func(user string) node {
		mirror := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		pw := filepath.Join(c.dir, user+".pw")
		if err := os.WriteFile(pw, []byte("pw-"+user+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c.extra = []string{"--mirror-listen", mirror, "--dht=false", "--docker-config", noCreds,
			"--registry-username", user, "--registry-password-file", pw}
		var peers []string
		for _, n := range nodes {
			peers = append(peers, n.d.addr)
		}
		n := node{d: c.startDaemon(len(nodes)+1, peers), mirror: mirror}
		waitHTTP(t, "http://"+mirror+"/v2/")
		nodes = append(nodes, n)
		return n
	}
	a, b, cn := start("alice"), start("bob"), start("carol")
	for _, n := range nodes {
		waitConnected(t, n.d, 2)
	}
	get := func(n node, repo string, d fmt.Stringer) (int, []byte) {
		t.Helper()
		resp, err := http.Get("http://" + n.mirror + "/v2/" + repo + "/blobs/" + d.String() + "?ns=" + reg.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}
	peerBytes := func(n node) int64 {
		return mirrorNode{d: n.d}.stats(t).Mirror.PeerBytes
	}

	if st, body := get(a, "team/secret", priv); st != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("A's mirror, private blob: %d, %d bytes", st, len(body))
	}
	afterA := reg.BlobBytes()
	if st, body := get(b, "team/secret", priv); st != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("B's mirror, private blob: %d, %d bytes", st, len(body))
	}
	if got := peerBytes(b); got != int64(len(data)) {
		t.Errorf("B's mirror took %d bytes from peers, want the blob's %d (from A)", got, len(data))
	}
	if more := reg.BlobBytes() - afterA; more != 0 {
		t.Errorf("the registry served %d more blob bytes for B's pull, want 0 (B gets the blob from A)", more)
	}
	if sa := c.rightsStats(a.d); sa.Rights.Granted == 0 {
		t.Errorf("A granted no pull rights: %+v", sa.Rights)
	}

	deniedBefore := c.rightsStats(a.d).Rights.Denied + c.rightsStats(b.d).Rights.Denied
	if st, body := get(cn, "team/secret", priv); st == http.StatusOK || bytes.Contains(body, data[:4096]) {
		t.Errorf("C's mirror, private blob, without rights: %d, %d bytes; want a refusal", st, len(body))
	}
	if got := peerBytes(cn); got != 0 {
		t.Errorf("C's mirror took %d bytes of the private blob from peers", got)
	}
	if d := c.rightsStats(a.d).Rights.Denied + c.rightsStats(b.d).Rights.Denied - deniedBefore; d == 0 {
		t.Error("A and B counted no refusal of C's requests for the private blob")
	}

	// A public blob goes to C from a peer, as before: the registry serves it once. When C is
	// its rendezvous owner, C fetched it from the registry for A's pull and already holds it.
	beforePub := reg.BlobBytes()
	if st, _ := get(a, "pub/app", pub); st != http.StatusOK {
		t.Fatalf("A's mirror, public blob: %d", st)
	}
	hits := mirrorNode{d: cn.d}.stats(t).Mirror.LocalHits
	if st, body := get(cn, "pub/app", pub); st != http.StatusOK || !bytes.Equal(body, pubData) {
		t.Fatalf("C's mirror, public blob: %d, %d bytes", st, len(body))
	}
	held := mirrorNode{d: cn.d}.stats(t).Mirror.LocalHits > hits
	if got := peerBytes(cn); got != int64(len(pubData)) && !held {
		t.Errorf("C's mirror took %d bytes of the public blob from peers, want %d (or to hold it as the blob's owner)", got, len(pubData))
	}
	// (A few hundred bytes more are the registry's answers to the repositories' probes.)
	if more := reg.BlobBytes() - beforePub; more < int64(len(pubData)) || more >= int64(len(pubData))*3/2 {
		t.Errorf("the registry served %d bytes for the public blob's two pulls, want about %d (once)", more, len(pubData))
	}
}
