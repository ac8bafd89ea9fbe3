package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	"github.com/shoal-p2p/shoal/convert/converttest"
	"github.com/shoal-p2p/shoal/origin"
)

// blobCounter is the real distribution registry behind a handler that counts the GETs of each
// blob, as an upstream's egress would.
type blobCounter struct {
	mu    sync.Mutex
	gets  map[string]int // digest → GETs of /v2/…/blobs/<digest>
	delay time.Duration  // before answering each blob GET: a slow upstream, so pulls overlap
	// stopAfterTag: the registry stops (closes its listener and connections) once it has
	// answered the next GET of a manifest by tag.
	stopAfterTag bool
	stopped      chan struct{}
}

func (c *blobCounter) get(d string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets[d]
}

func startCountingRegistry(t *testing.T) (string, *blobCounter) {
	logrus.SetOutput(io.Discard)
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{
		"inmemory":    configuration.Parameters{},
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	cfg.HTTP.Secret = "shoal-test-secret"
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	app := handlers.NewApp(ctx, cfg)
	c := &blobCounter{gets: map[string]int{}, stopped: make(chan struct{})}
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if i := strings.LastIndex(r.URL.Path, "/blobs/"); i >= 0 && r.Method == http.MethodGet {
			c.mu.Lock()
			c.gets[r.URL.Path[i+len("/blobs/"):]]++
			delay := c.delay
			c.mu.Unlock()
			time.Sleep(delay)
		}
		app.ServeHTTP(w, r)
		if i := strings.LastIndex(r.URL.Path, "/manifests/"); i >= 0 && r.Method == http.MethodGet && !strings.Contains(r.URL.Path[i:], ":") {
			c.mu.Lock()
			stop := c.stopAfterTag
			c.stopAfterTag = false
			c.mu.Unlock()
			if stop {
				go func() { srv.Close(); close(c.stopped) }() // Close waits for this request
			}
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), c
}

// TestMirrorContainerdThreeNodes: real daemons with --mirror-listen, each with its own real
// containerd (Debian's 1.6) whose hosts.toml points the registry at its node's mirror.
// `ctr images pull --hosts-dir` on node 1 makes the registry serve each blob once (node 1
// fetches the blobs it owns, node 2 those it owns for node 1); node 2 then gets the rest from
// node 1, and node 3, added afterwards, every blob from peers (the registry's counts do not move). Then both holders' copies of
// one layer rot on disk: node 3's pull still succeeds (containerd checks digests too, so a
// wrong byte would fail it), the holders refuse to send the rotted copy and node 3 takes that
// layer from the registry. Finally the image runs with ctr run.
func TestMirrorContainerdThreeNodes(t *testing.T) {
	containerdSkips(t)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("no static busybox (apt-get install busybox-static)")
	}
	host, counts := startCountingRegistry(t)
	ref, m, mb := pushMirrorImage(t, host, bb, 3<<20)
	blobs := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest.String())
	}
	c := &cluster{t: t, dir: t.TempDir(), origin: host}
	// Two nodes first; the third joins after their pulls (else it would own, and so fetch and
	// keep, some of the blobs during node 1's pull).
	nodes := startMirrorNodes(t, c, host, 2)
	ctr := func(n mirrorNode, args ...string) string { t.Helper(); return n.ctr(t, args...) }
	statsOf := func(n mirrorNode) mirrorStats { t.Helper(); return n.stats(t) }

	start := time.Now()
	ctr(nodes[0], "images", "pull", "--hosts-dir", nodes[0].hostsDir, ref)
	t.Logf("node 1 pull (registry): %v", time.Since(start))
	for _, b := range blobs {
		if n := counts.get(b); n != 1 {
			t.Errorf("after node 1: blob %s: %d registry GETs, want 1", b, n)
		}
	}
	// Node 1 found no holder of any blob: it fetched those it owns from the registry and had
	// node 2 fetch the others for it (each blob's rendezvous owner).
	s1, s2before := statsOf(nodes[0]), statsOf(nodes[1])
	if s1.Mirror.UpstreamBytes == 0 || s1.Mirror.PeerBytes != s1.Mirror.ThroughBytes || s1.Mirror.ThroughBytes != s2before.Mirror.UpstreamBytes {
		t.Errorf("node 1 mirror: %+v, node 2 (before its pull) %+v: want node 1's peer bytes all through node 2, which fetched them", *s1.Mirror, *s2before.Mirror)
	}
	start = time.Now()
	ctr(nodes[1], "images", "pull", "--hosts-dir", nodes[1].hostsDir, ref)
	t.Logf("node 2 pull (peers): %v", time.Since(start))
	for _, b := range blobs {
		if n := counts.get(b); n != 1 {
			t.Errorf("after node 2: blob %s: %d registry GETs, want 1 (node 2 should get it from node 1)", b, n)
		}
	}
	s2 := statsOf(nodes[1])
	var blobBytes int64 = m.Config.Size
	for _, l := range m.Layers {
		blobBytes += l.Size
	}
	// Everything but the tag (the index, resolved at the registry) comes from node 1, or was
	// kept here already as its owner: the platform manifest by digest, the config and the layers.
	if s2.Mirror.PeerBytes+s2before.Mirror.UpstreamBytes != blobBytes+int64(len(mb)) {
		t.Errorf("node 2 mirror: %+v: want peer bytes %d (every blob and the manifest but those it fetched as owner, %d)",
			*s2.Mirror, blobBytes+int64(len(mb))-s2before.Mirror.UpstreamBytes, s2before.Mirror.UpstreamBytes)
	}
	nodes = append(nodes, addMirrorNode(t, c, host, nodes))
	waitConnected(t, nodes[2].d, 2)

	// Both holders' copies of the data layer rot on disk (same size, one byte flipped).
	rotted := m.Layers[1].Digest
	for _, n := range nodes[:2] {
		p := filepath.Join(c.dir, fmt.Sprintf("d%d", n.d.n), "mirror", "blobs", rotted.Encoded())
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctr(nodes[2], "images", "pull", "--hosts-dir", nodes[2].hostsDir, ref)
	for _, b := range blobs {
		want := 1
		if b == rotted.String() {
			want = 2
		}
		if n := counts.get(b); n != want {
			t.Errorf("after node 3: blob %s: %d registry GETs, want %d", b, n, want)
		}
	}
	s3 := statsOf(nodes[2])
	t.Logf("mirror counters: node 2 %+v, node 3 %+v", *s2.Mirror, *s3.Mirror)
	if s3.Mirror.PeerBytes != blobBytes+int64(len(mb))-m.Layers[1].Size || s3.Mirror.UpstreamBytes < m.Layers[1].Size || s3.Mirror.PeerRejected != 1 {
		t.Errorf("node 3 mirror: %+v: want every blob but the rotted one from peers", *s3.Mirror)
	}
	out := ctr(nodes[2], "run", "--rm", ref, "mirror-run")
	if out != "hello through the mirror\n" {
		t.Errorf("ctr run printed %q", out)
	}
}

// TestMirrorConcurrentFirstPull: four real daemons with --mirror-listen, each with its own
// real containerd, pull one ordinary image at the same moment, none holding any of it, from a
// real registry that takes half a second to answer each blob GET (so the pulls overlap). Each
// blob's rendezvous owner fetches it from the registry and the others wait on the owner:
// the registry serves every blob exactly once. Without the owner each node would go to the
// registry for every blob it found no holder of (up to 4 GETs a blob).
func TestMirrorConcurrentFirstPull(t *testing.T) {
	containerdSkips(t)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("no static busybox (apt-get install busybox-static)")
	}
	host, counts := startCountingRegistry(t)
	ref, m, mb := pushMirrorImage(t, host, bb, 4<<20)
	c := &cluster{t: t, dir: t.TempDir(), origin: host}
	nodes := startMirrorNodes(t, c, host, 4)
	counts.mu.Lock()
	counts.delay = 500 * time.Millisecond
	counts.mu.Unlock()

	start := time.Now()
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Not n.ctr: t.Fatal belongs to the test's goroutine.
			if out, err := execOut("ctr", "-a", n.ctrSock, "-n", "mirrortest", "images", "pull", "--hosts-dir", n.hostsDir, ref); err != nil {
				t.Errorf("node %d: ctr images pull: %v\n%s", n.d.n, err, out)
			}
		}()
	}
	wg.Wait()
	t.Logf("4 concurrent pulls: %v", time.Since(start))
	blobs := append([]ocispec.Descriptor{m.Config}, m.Layers...)
	var size, upstream, through int64
	for _, b := range blobs {
		size += b.Size
		if n := counts.get(b.Digest.String()); n != 1 {
			t.Errorf("blob %s: %d registry GETs, want 1", b.Digest, n)
		}
	}
	for i, n := range nodes {
		s := n.stats(t)
		t.Logf("node %d mirror: %+v", i+1, *s.Mirror)
		upstream += s.Mirror.UpstreamBytes
		through += s.Mirror.ThroughBytes
		if s.Mirror.PeerRejected != 0 {
			t.Errorf("node %d: %d peer fetches rejected", i+1, s.Mirror.PeerRejected)
		}
	}
	// Upstream: each blob and the platform manifest once, and the index (by tag) on every node.
	t.Logf("upstream bytes %d for %d bytes of blobs and a %d-byte manifest; %d through owners", upstream, size, len(mb), through)
	if upstream < size+int64(len(mb)) || upstream > size+int64(len(mb))+4*(64<<10) {
		t.Errorf("upstream bytes %d, want the blobs and manifest once (%d) plus four indexes", upstream, size+int64(len(mb)))
	}
	if through == 0 {
		t.Errorf("no bytes came through a blob's owner")
	}
	if out := nodes[3].ctr(t, "run", "--rm", ref, "mirror-run"); out != "hello through the mirror\n" {
		t.Errorf("ctr run printed %q", out)
	}
}

// TestMirrorUpstreamStopsMidPull: three real daemons and containerds. Node 1 pulls with the
// registry up. The registry then stops right after answering node 2's tag: node 2's pull goes
// on by digest (the platform manifest, config and layers) from peers and succeeds. With the
// registry gone, node 3 pulls the image by its index digest from peers and runs it; by tag it
// fails (a tag is resolved at the upstream, which is down, and containerd's fallback to the
// server fails too).
func TestMirrorUpstreamStopsMidPull(t *testing.T) {
	containerdSkips(t)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("no static busybox (apt-get install busybox-static)")
	}
	host, counts := startCountingRegistry(t)
	ref, _, _ := pushMirrorImage(t, host, bb, 1<<20)
	c := &cluster{t: t, dir: t.TempDir(), origin: host}
	nodes := startMirrorNodes(t, c, host, 3)
	nodes[0].ctr(t, "images", "pull", "--hosts-dir", nodes[0].hostsDir, ref)
	var index string
	for _, f := range strings.Split(nodes[0].ctr(t, "images", "ls"), "\n") {
		if fs := strings.Fields(f); len(fs) > 2 && fs[0] == ref {
			index = fs[2]
		}
	}
	if !strings.HasPrefix(index, "sha256:") {
		t.Fatalf("no digest for %s in ctr images ls", ref)
	}

	counts.mu.Lock()
	counts.stopAfterTag = true
	counts.mu.Unlock()
	nodes[1].ctr(t, "images", "pull", "--hosts-dir", nodes[1].hostsDir, ref)
	select {
	case <-counts.stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the registry did not stop after node 2's tag")
	}
	if resp, err := http.Get("http://" + host + "/v2/"); err == nil {
		resp.Body.Close()
		t.Fatal("the registry still answers")
	}
	if s := nodes[1].stats(t); s.Mirror.PeerBytes == 0 {
		t.Errorf("node 2 mirror: %+v: nothing from peers", *s.Mirror)
	}

	byDigest := strings.TrimSuffix(ref, ":v1") + "@" + index
	nodes[2].ctr(t, "images", "pull", "--hosts-dir", nodes[2].hostsDir, byDigest)
	if out := nodes[2].ctr(t, "run", "--rm", byDigest, "mirror-down-run"); out != "hello through the mirror\n" {
		t.Errorf("ctr run printed %q", out)
	}
	out, err := execOut("ctr", "-a", nodes[2].ctrSock, "-n", "mirrortest", "images", "pull", "--hosts-dir", nodes[2].hostsDir, ref)
	if err == nil {
		t.Fatalf("pull by tag with the registry down succeeded:\n%s", out)
	}
	t.Logf("by tag, registry down: %v: %s", err, bytes.TrimSpace(out))
}

// pushMirrorImage pushes an ordinary three-layer image (not converted) to the registry at host:
// busybox, a data layer of random bytes, a config layer; its Cmd prints /etc/hello.txt.
func pushMirrorImage(t *testing.T, host string, bb []byte, dataSize int) (ref string, m ocispec.Manifest, mb []byte) {
	t.Helper()
	big := make([]byte, dataSize)
	rand.New(rand.NewSource(9)).Read(big)
	base := []converttest.Entry{
		{Name: "bin/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "bin/busybox", Type: tar.TypeReg, Mode: 0o755, Data: bb},
		{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
	}
	for _, n := range []string{"sh", "cat", "echo"} {
		base = append(base, converttest.Entry{Name: "bin/" + n, Type: tar.TypeSymlink, Link: "busybox"})
	}
	data := []converttest.Entry{{Name: "data/", Type: tar.TypeDir, Mode: 0o755}, {Name: "data/big.bin", Type: tar.TypeReg, Mode: 0o644, Data: big}}
	hello := []converttest.Entry{{Name: "etc/", Type: tar.TypeDir, Mode: 0o755}, {Name: "etc/hello.txt", Type: tar.TypeReg, Mode: 0o644, Data: []byte("hello through the mirror\n")}}
	ld := filepath.Join(t.TempDir(), "src")
	w := converttest.NewWriter(t, ld)
	w.Index([]ocispec.Descriptor{w.Put(converttest.Image{Platform: origin.HostPlatform(),
		Layers: []converttest.Layer{
			{Compression: "gzip", Tar: converttest.Tar(t, base)},
			{Compression: "gzip", Tar: converttest.Tar(t, data)},
			{Compression: "gzip", Tar: converttest.Tar(t, hello)},
		},
		Config: ocispec.ImageConfig{Cmd: []string{"/bin/cat", "/etc/hello.txt"}, Env: []string{"PATH=/bin"}}})}, false)
	ocfg := origin.DefaultConfig()
	ocfg.Insecure, ocfg.DockerConfig = []string{host}, "-"
	if _, err := origin.PushIndex(t.Context(), ld, host+"/team/app:v1", nil, ocfg, origin.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	ref = host + "/team/app:v1"
	reg, err := origin.NewRegistry(origin.Reference{Registry: host, Repository: "team/app", Tag: "v1"}, ocfg)
	if err != nil {
		t.Fatal(err)
	}
	_, mb, err = reg.Resolve(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatal(err)
	}
	return ref, m, mb
}

// mirrorNode is a real daemon with --mirror-listen and its own real containerd (Debian's 1.6),
// whose hosts.toml points the registry at the node's mirror.
type mirrorNode struct {
	d        *daemonProc
	mirror   string
	ctrSock  string
	hostsDir string
}

// startMirrorNodes starts n mirror nodes, each given the earlier ones as static peers, and
// waits until every daemon is connected to every other (so they agree on blob owners).
func startMirrorNodes(t *testing.T, c *cluster, host string, n int) []mirrorNode {
	t.Helper()
	var nodes []mirrorNode
	for range n {
		nodes = append(nodes, addMirrorNode(t, c, host, nodes))
	}
	for _, nd := range nodes {
		waitConnected(t, nd.d, n-1)
	}
	return nodes
}

// addMirrorNode starts one more mirror node with the others as its static peers.
func addMirrorNode(t *testing.T, c *cluster, host string, nodes []mirrorNode) mirrorNode {
	t.Helper()
	i := len(nodes)
	mirror := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c.extra = []string{"--mirror-listen", mirror, "--dht=false"}
	var peers []string
	for _, n := range nodes {
		peers = append(peers, n.d.addr)
	}
	d := c.startDaemon(i+1, peers)
	waitHTTP(t, "http://"+mirror+"/v2/")
	dir := filepath.Join(c.dir, fmt.Sprintf("ctrd%d", i+1))
	hostsDir := filepath.Join(dir, "certs.d")
	if err := os.MkdirAll(filepath.Join(hostsDir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	hosts := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, mirror)
	if err := os.WriteFile(filepath.Join(hostsDir, host, "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "containerd.sock")
	conf := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\n[grpc]\n  address = %q\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_apparmor = true\n  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = %q\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, hostsDir, filepath.Join(dir, "opt"))
	if err := os.WriteFile(filepath.Join(dir, "containerd.toml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, fmt.Sprintf("containerd %d", i+1), nil, "containerd", "--config", filepath.Join(dir, "containerd.toml"))
	waitSocket(t, p, sock)
	return mirrorNode{d: d, mirror: mirror, ctrSock: sock, hostsDir: hostsDir}
}

// waitConnected waits until d is connected to want peers.
func waitConnected(t *testing.T, d *daemonProc, want int) {
	t.Helper()
	var got int
	for range 200 {
		var peers []struct{ Connected bool }
		if err := json.Unmarshal([]byte(run(t, "peers", "--json", "--api", d.sock)), &peers); err != nil {
			t.Fatal(err)
		}
		got = 0
		for _, p := range peers {
			if p.Connected {
				got++
			}
		}
		if got >= want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("daemon %d: %d peers connected, want %d", d.n, got, want)
}

// ctr runs ctr against the node's containerd.
func (n mirrorNode) ctr(t *testing.T, args ...string) string {
	t.Helper()
	var out []byte
	var err error
	for range 50 { // containerd answers its socket a moment after creating it
		out, err = execOut("ctr", append([]string{"-a", n.ctrSock, "-n", "mirrortest"}, args...)...)
		if err == nil || !strings.Contains(string(out), "connection refused") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type mirrorStats struct {
	Mirror *struct {
		UpstreamBytes int64 `json:"upstreamBytes"`
		PeerBytes     int64 `json:"peerBytes"`
		ThroughBytes  int64 `json:"throughBytes"`
		ForPeers      int64 `json:"forPeers"`
		LocalHits     int64 `json:"localHits"`
		PeerRejected  int64 `json:"peerRejected"`
	} `json:"mirror"`
}

// stats reads the node's mirror counters from `shoal stats --json`.
func (n mirrorNode) stats(t *testing.T) mirrorStats {
	t.Helper()
	var s mirrorStats
	if err := json.Unmarshal([]byte(run(t, "stats", "--json", "--api", n.d.sock)), &s); err != nil || s.Mirror == nil {
		t.Fatalf("stats: %v, %+v", err, s)
	}
	return s
}

func execOut(bin string, args ...string) ([]byte, error) {
	return exec.Command(bin, args...).CombinedOutput()
}
