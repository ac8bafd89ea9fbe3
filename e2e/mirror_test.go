package e2e

import (
	"archive/tar"
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
	mu   sync.Mutex
	gets map[string]int // digest → GETs of /v2/…/blobs/<digest>
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
	c := &blobCounter{gets: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if i := strings.LastIndex(r.URL.Path, "/blobs/"); i >= 0 && r.Method == http.MethodGet {
			c.mu.Lock()
			c.gets[r.URL.Path[i+len("/blobs/"):]]++
			c.mu.Unlock()
		}
		app.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), c
}

// TestMirrorContainerdThreeNodes: three real daemons with --mirror-listen, each with its own
// real containerd (Debian's 1.6) whose hosts.toml points the registry at its node's mirror.
// `ctr images pull --hosts-dir` on node 1 fetches each blob from the registry once; nodes 2 and 3
// get every blob from peers (the registry's counts do not move). Then both holders' copies of
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

	// An ordinary three-layer image (not converted): busybox, a data layer, a config layer.
	big := make([]byte, 3<<20)
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
	ref := host + "/team/app:v1"
	reg, err := origin.NewRegistry(origin.Reference{Registry: host, Repository: "team/app", Tag: "v1"}, ocfg)
	if err != nil {
		t.Fatal(err)
	}
	_, mb, err := reg.Resolve(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatal(err)
	}
	blobs := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest.String())
	}

	c := &cluster{t: t, dir: t.TempDir(), origin: host}
	type node struct {
		d        *daemonProc
		mirror   string
		ctrSock  string
		hostsDir string
	}
	var nodes []node
	for i := range 3 {
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
		nodes = append(nodes, node{d: d, mirror: mirror, ctrSock: sock, hostsDir: hostsDir})
	}
	ctr := func(n node, args ...string) string {
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
			LocalHits     int64 `json:"localHits"`
			PeerRejected  int64 `json:"peerRejected"`
		} `json:"mirror"`
	}
	statsOf := func(n node) mirrorStats {
		var s mirrorStats
		if err := json.Unmarshal([]byte(run(t, "stats", "--json", "--api", n.d.sock)), &s); err != nil || s.Mirror == nil {
			t.Fatalf("stats: %v, %+v", err, s)
		}
		return s
	}

	start := time.Now()
	ctr(nodes[0], "images", "pull", "--hosts-dir", nodes[0].hostsDir, ref)
	t.Logf("node 1 pull (registry): %v", time.Since(start))
	for _, b := range blobs {
		if n := counts.get(b); n != 1 {
			t.Errorf("after node 1: blob %s: %d registry GETs, want 1", b, n)
		}
	}
	if s := statsOf(nodes[0]); s.Mirror.UpstreamBytes == 0 || s.Mirror.PeerBytes != 0 {
		t.Errorf("node 1 mirror: %+v", *s.Mirror)
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
	// Everything but the tag (the index, resolved at the registry) comes from node 1: the
	// platform manifest by digest, the config and the layers.
	if s2.Mirror.PeerBytes != blobBytes+int64(len(mb)) {
		t.Errorf("node 2 mirror: %+v: want peer bytes %d (every blob and the manifest)", *s2.Mirror, blobBytes+int64(len(mb)))
	}

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

func execOut(bin string, args ...string) ([]byte, error) {
	return exec.Command(bin, args...).CombinedOutput()
}
