package e2e

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/internal/registrytest"
	"github.com/shoal-p2p/shoal/origin"
	"github.com/shoal-p2p/shoal/p2p"
)

// rightsStats is the part of `shoal stats --json` this test reads.
type rightsStats struct {
	Bytes struct {
		Peers, Origin int64
	} `json:"bytes"`
	Images []struct {
		Ref string `json:"ref"`
	} `json:"images"`
	Rights struct {
		Enabled                                                bool
		Denied, Granted, Refused, PresentedOK, PresentedDenied int64
	} `json:"rights"`
}

func (c *cluster) rightsStats(d *daemonProc) rightsStats {
	var s rightsStats
	if err := json.Unmarshal([]byte(run(c.t, "stats", "--json", "--api", d.sock)), &s); err != nil {
		c.t.Fatal(err)
	}
	return s
}

// TestPrivateImageRights runs the real distribution registry with token authentication and
// three real daemons: A and B may pull a private repository, C has no credentials. B gets the
// private image from A's cache (the registry serves its chunk data once); C is refused it with
// an error naming the missing credentials, and a peer without rights (a real p2p node in this
// process, standing in for a host that learned the image's CIDs elsewhere) gets none of its
// bytes from A or B by a direct request, fetch-through, object or tag request, or presence map;
// the public image is shared with C from peers as before; and a peer whose rights are revoked
// at the registry stops being served within the token's lifetime and the daemons' rights TTL.
func TestPrivateImageRights(t *testing.T) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed (erofs-utils)")
	}
	reg := registrytest.Start(t)
	const tokenLife, rightsTTL = 4 * time.Second, 3 * time.Second
	reg.SetTokenLife(tokenLife)
	for _, u := range []string{"alice", "bob", "dave", "carol"} {
		reg.AddUser(u, "pw-"+u)
	}
	for _, u := range []string{"alice", "bob", "dave"} {
		reg.Grant(u, "team/secret")
	}
	reg.SetPublic("pub/app")
	privRepo, pubRepo := reg.Host+"/team/secret", reg.Host+"/pub/app"
	privRef, pubRef := privRepo+":v1", pubRepo+":v1"

	c := &cluster{t: t, dir: t.TempDir(), origin: reg.Host}
	c.src = filepath.Join(c.dir, "src")
	c.sums = makeTree(t, c.src, 42, 16)
	privImg, pubImg := filepath.Join(c.dir, "priv"), filepath.Join(c.dir, "pub")
	run(t, "image", "build", c.src, privImg, "--quiet")
	pubSrc := filepath.Join(c.dir, "pubsrc")
	makeTree(t, pubSrc, 7, 8)
	run(t, "image", "build", pubSrc, pubImg, "--quiet")

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	admin := origin.DefaultConfig()
	admin.Insecure, admin.DockerConfig = []string{reg.Host}, "-"
	admin.Username, admin.Password = reg.Admin()
	for img, ref := range map[string]string{privImg: privRef, pubImg: pubRef} {
		if _, err := origin.Push(ctx, img, ref, admin, origin.PushOptions{}); err != nil {
			t.Fatalf("pushing %s: %v", ref, err)
		}
	}
	priv := layoutBlobs(t, privImg)
	pub := layoutBlobs(t, pubImg)
	var privData, pubData int64
	for _, m := range priv.manifests {
		privData += m.DataBytes()
	}
	for _, m := range pub.manifests {
		pubData += m.DataBytes()
	}

	noCreds := filepath.Join(c.dir, "no-docker-config.json") // absent: no credentials
	creds := func(user string) []string {
		args := []string{"--rights-ttl", rightsTTL.String(), "--docker-config", noCreds}
		if user == "" {
			return args
		}
		pw := filepath.Join(c.dir, user+".pw")
		if err := os.WriteFile(pw, []byte("pw-"+user+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return append(args, "--registry-username", user, "--registry-password-file", pw)
	}
	c.extra = creds("alice")
	a := c.startDaemon(1, nil)
	run(t, "prefetch", privRef, "--wait", "--api", a.sock)
	run(t, "prefetch", pubRef, "--wait", "--api", a.sock)
	afterA := reg.BlobBytes()
	if afterA < priv.stored+pub.stored {
		t.Fatalf("the registry served %d bytes for A's pulls of %d", afterA, priv.stored+pub.stored)
	}

	// B, with rights, gets the private image from A's cache.
	c.extra = creds("bob")
	b := c.startDaemon(2, []string{a.addr})
	run(t, "prefetch", privRef, "--wait", "--api", b.sock)
	sb := c.rightsStats(b)
	// The chunks B asks for in the moment before A has checked its token may come from B's own
	// origin (B has rights there too); the rest come from A.
	if sb.Bytes.Origin+sb.Bytes.Peers != privData || float64(sb.Bytes.Origin) > 0.05*float64(privData) {
		t.Errorf("B's private pull: %d bytes from its origin, %d from peers; want %d, nearly all from A", sb.Bytes.Origin, sb.Bytes.Peers, privData)
	}
	t.Logf("B's private pull: %d bytes from A, %d from its origin; registry served %.3fx the images' layers in all",
		sb.Bytes.Peers, sb.Bytes.Origin, float64(reg.BlobBytes())/float64(priv.stored+pub.stored))
	if got := float64(reg.BlobBytes()-afterA) / float64(priv.stored); got > 0.1 {
		t.Errorf("the registry served B %.2fx the private image's data, want only its metadata and a few chunks", got)
	}
	if total := float64(reg.BlobBytes()) / float64(priv.stored+pub.stored); total > 1.15 {
		t.Errorf("the registry served %.2fx the images in all, want about 1x", total)
	}
	if sa := c.rightsStats(a); !sa.Rights.Enabled || sa.Rights.Granted == 0 || c.rightsStats(b).Rights.PresentedOK == 0 {
		t.Errorf("A granted %d, B presented %d: want a grant", sa.Rights.Granted, c.rightsStats(b).Rights.PresentedOK)
	}

	// C, without credentials: refused by the registry, and so by the peers, with an error that
	// says what is missing.
	c.extra = creds("")
	cd := c.startDaemon(3, []string{a.addr, b.addr})
	out, err := exec.Command(shoalBin, "prefetch", privRef, "--wait", "--api", cd.sock).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no credentials that may pull "+privRepo) {
		t.Errorf("C's prefetch of the private image: err %v, output:\n%s\nwant a failure naming the missing credentials", err, out)
	}
	run(t, "prefetch", pubRef, "--wait", "--api", cd.sock)
	sc := c.rightsStats(cd)
	if sc.Bytes.Origin != 0 || sc.Bytes.Peers != pubData {
		t.Errorf("C's public pull: %d bytes from its origin, %d from peers; want 0 and %d", sc.Bytes.Origin, sc.Bytes.Peers, pubData)
	}
	if len(sc.Images) != 1 || sc.Images[0].Ref != pubRef {
		t.Errorf("C's images: %+v, want only the public one", sc.Images)
	}

	// A peer without rights that knows the private image's CIDs (real libp2p, this process):
	// nothing from A or B by any path.
	rogue := startRightsNode(t, reg, "carol", []string{a.addr, b.addr})
	m := priv.manifests[0]
	if err := rogue.RegisterBlob(m, nil); err != nil {
		t.Fatal(err)
	}
	// It asks for rights as a host with them would; carol's registry gives her no token for
	// the repository, so she has none to present.
	rogue.SetPrivate(m.Blob, privRepo)
	waitUntil(t, 15*time.Second, "the rogue peer to see A and B in the private blob's swarm", func() bool { return rogue.SwarmSize(m.Blob) == 2 })
	if h := rogue.Holders(m.Blob, m.Chunks); sum(h) != 0 {
		t.Errorf("the rogue peer sees holders of private chunks through presence maps: %v", h)
	}
	deniedBefore := c.rightsStats(a).Rights.Denied + c.rightsStats(b).Rights.Denied
	for i, ch := range m.Chunks[:min(4, len(m.Chunks))] {
		// With no holder known, Fetch asks the rendezvous owner (A or B) to fetch through, and
		// then every swarm member directly.
		if data, _, err := rogue.Fetch(ctx, m.Blob, ch, nil); err == nil || data.Len() != 0 {
			t.Errorf("rogue fetch of private chunk %d: %d bytes, %v", i, data.Len(), err)
		}
	}
	if d := c.rightsStats(a).Rights.Denied + c.rightsStats(b).Rights.Denied - deniedBefore; d == 0 {
		t.Error("A and B counted no denial of the rogue peer's chunk requests")
	}
	for _, d := range append([]string{priv.manifest.Digest.String(), priv.bootstrap.String()}, priv.chunkManifests...) {
		if b, err := rogue.FetchObject(ctx, digestOf(t, d), 1<<20); err == nil {
			t.Errorf("the rogue peer fetched private object %s (%d bytes)", d, len(b))
		}
	}
	if d, p, err := rogue.ResolveTag(ctx, privRef); err == nil {
		t.Errorf("the rogue peer resolved the private tag to %s from %s", d, p)
	}
	if !strings.Contains(a.log.String(), "refused a peer without pull rights") || !strings.Contains(a.log.String(), rogue.ID().String()) ||
		!strings.Contains(a.log.String(), privRepo) {
		t.Errorf("A's log does not name the refused peer %s and repository %s", rogue.ID(), privRepo)
	}

	// Revocation: dave (a real node in this process) reads from A while he may; once his
	// rights are revoked at the registry, A stops serving him within his token's lifetime and
	// the rights TTL.
	dave := startRightsNode(t, reg, "dave", []string{a.addr})
	if err := dave.RegisterBlob(m, nil); err != nil {
		t.Fatal(err)
	}
	dave.SetPrivate(m.Blob, privRepo)
	waitUntil(t, 15*time.Second, "dave to see A's chunks (a grant at A)", func() bool { return dave.Holders(m.Blob, m.Chunks[:1])[0] > 0 })
	if _, src, err := dave.Fetch(ctx, m.Blob, m.Chunks[0], nil); err != nil || src != chunk.SourcePeer {
		t.Fatalf("dave, with rights, fetching from A: %v, %v", src, err)
	}
	reg.Revoke("dave", "team/secret")
	revoked := time.Now()
	// A masks its map to dave once his grant lapses; then a chunk he has not fetched (not in his
	// memory) is refused.
	waitUntil(t, tokenLife+rightsTTL+5*time.Second, "A to stop announcing its chunks to dave", func() bool {
		return sum(dave.Holders(m.Blob, m.Chunks)) == 0
	})
	// His registry gives him no token any more, so he has none to present; whoever he asks (A
	// refuses, and he has no origin), he gets nothing.
	if _, src, err := dave.Fetch(ctx, m.Blob, m.Chunks[len(m.Chunks)-1], nil); err == nil {
		t.Errorf("dave, revoked, still fetched a private chunk (from %v)", src)
	}
	if d := time.Since(revoked); d > tokenLife+rightsTTL+time.Second {
		t.Errorf("A served dave for %v after the revocation, want at most the token life %v plus the rights TTL %v", d, tokenLife, rightsTTL)
	}
}

// layoutInfo is what the test knows of an image from its layout: what a peer could learn.
type layoutInfo struct {
	manifest       ocispec.Descriptor
	bootstrap      digest.Digest
	manifests      []*chunk.Manifest
	chunkManifests []string
	stored         int64 // the layers' bytes as the registry serves them (compressed or not)
}

func layoutBlobs(t *testing.T, dir string) layoutInfo {
	t.Helper()
	src, err := origin.Open(dir, origin.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	desc, mb, err := src.Resolve(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	im, err := bootstrap.ParseImage(mb, func(d ocispec.Descriptor) ([]byte, error) {
		rc, err := src.Open(t.Context(), d.Digest)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	})
	if err != nil {
		t.Fatal(err)
	}
	info := layoutInfo{manifest: desc, bootstrap: im.Bootstrap.Digest}
	for _, b := range im.Blobs {
		info.manifests = append(info.manifests, b.Manifest)
		info.chunkManifests = append(info.chunkManifests, b.ManifestDigest.String())
		info.stored += b.Size
	}
	return info
}

// startRightsNode runs a real p2p node, peered with addrs, that presents user's registry
// tokens as its pull rights.
func startRightsNode(t *testing.T, reg *registrytest.Registry, user string, addrs []string) *p2p.Node {
	t.Helper()
	ocfg := origin.DefaultConfig()
	ocfg.Insecure, ocfg.DockerConfig = []string{reg.Host}, "-"
	ocfg.Username, ocfg.Password = user, "pw-"+user
	pr, err := origin.NewPullRights(ocfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := p2p.DefaultConfig()
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.StaticPeers = addrs
	cfg.DHT = false
	cfg.Rights, cfg.RightsTTL = pr, 3*time.Second
	cfg.RequestTimeout = 3 * time.Second
	logs := &syncBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s's node log:\n%s", user, logs.String())
		}
	})
	n, err := p2p.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- n.Run(t.Context()) }()
	select {
	case <-n.Ready():
	case err := <-errc:
		t.Fatalf("%s's node did not start: %v", user, err)
	}
	t.Cleanup(func() { _ = n.Close(); <-errc })
	return n
}

func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func sum(v []int) int {
	s := 0
	for _, x := range v {
		s += x
	}
	return s
}

func digestOf(t *testing.T, s string) digest.Digest {
	t.Helper()
	d, err := digest.Parse(s)
	if err != nil {
		t.Fatalf("digest %q: %v", s, err)
	}
	return d
}
