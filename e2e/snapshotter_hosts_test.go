package e2e

import (
	"crypto/md5"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"context"
	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
)

// byteCounter is the real distribution registry behind a handler that counts the body bytes it
// sends for blob GETs (what an upstream registry's egress bill counts).
type byteCounter struct{ blobBytes atomic.Int64 }

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

func startByteCountingRegistry(t *testing.T) (string, *byteCounter) {
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
	c := &byteCounter{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			w = countingWriter{ResponseWriter: w, n: &c.blobBytes}
		}
		app.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), c
}

// shoalManifest fetches the converted image's manifest from the registry.
func shoalManifest(t *testing.T, host, repo, tag string) ocispec.Manifest {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+host+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m ocispec.Manifest
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestContainerd16ThreeHosts: three hosts on one machine, each a containerd 1.6 + shoal daemon
// + snapshotter stack with its own roots and sockets, the daemons' libp2p hosts on 127.0.0.2,
// .3 and .4, each peered with the hosts started before it. The image is converted once and
// pushed to a real registry; each host pulls it through CRI (kubelet's path) and runs a
// container that reads every file of it, host 1 first, then 2, then 3. Hosts 2 and 3 take the
// image's chunks from peers, and the registry serves about one copy of the image's data in all.
func TestContainerd16ThreeHosts(t *testing.T) {
	containerd16Skips(t)
	host, reg := startByteCountingRegistry(t)
	ref, layers := busyboxImage(t, host)
	m := shoalManifest(t, host, "bb", "shoal")
	// What the registry may serve beyond one copy of the data blobs: each host fetches the
	// config, the chunk manifests and the bootstrap itself.
	var data, meta int64
	for _, l := range m.Layers {
		if strings.HasSuffix(l.MediaType, ".shoal.erofs.blob") {
			data += l.Size
		} else {
			meta += l.Size
		}
	}
	meta = 3 * (meta + m.Config.Size)
	if data == 0 {
		t.Fatalf("no data blob among the converted layers %+v", m.Layers)
	}
	converted := reg.blobBytes.Load() // the conversion read the source image

	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%x  /bin/busybox\n", md5.Sum(bb)) + coldSum() + fmt.Sprintf("%x  /data/hello.txt\n", md5.Sum([]byte(helloText)))

	var stacks []*stack
	var peers []string
	for i := range 3 {
		s := newStackWith(t, stackOpts{host: host, listenIP: fmt.Sprintf("127.0.0.%d", i+2), peers: append([]string(nil), peers...)})
		if ip := fmt.Sprintf("/ip4/127.0.0.%d/", i+2); !strings.HasPrefix(s.daemon.addr, ip) {
			t.Fatalf("host %d's daemon is at %s, want %s...", i+1, s.daemon.addr, ip)
		}
		peers = append(peers, s.daemon.addr)
		stacks = append(stacks, s)
	}
	for i, s := range stacks {
		s.criPull(ref)
		stdout, stderr, err := s.ctrRun("run", "--rm", "--snapshotter", "shoal", ref, fmt.Sprintf("read-all-%d", i+1),
			"/bin/md5sum", "/bin/busybox", "/data/cold.bin", "/data/hello.txt")
		if err != nil || stdout != want {
			t.Fatalf("host %d: the container printed %q (%v), want %q; ctr's stderr:\n%s", i+1, stdout, err, want, stderr)
		}
		s.checkNoLayerContent(layers)
		st := s.cluster.stats(s.daemon)
		if len(st.Images) != 1 || st.VerifyFailures != 0 {
			t.Fatalf("host %d: images %+v, %d verify failures", i+1, st.Images, st.VerifyFailures)
		}
		img := st.Images[0].Bytes
		t.Logf("host %d: image %d bytes, %d present; from peers %d, from the origin %d (wire %d), served to peers %d",
			i+1, img, st.Images[0].BytesPresent, st.Bytes.Peers, st.Bytes.Origin, st.WireBytes.Origin, st.Bytes.ServedToPeers)
		if st.Images[0].BytesPresent < img*9/10 {
			t.Errorf("host %d holds %d of the image's %d bytes after reading every file", i+1, st.Images[0].BytesPresent, img)
		}
		if i == 0 {
			if st.Bytes.Origin == 0 || st.Bytes.Peers != 0 {
				t.Errorf("host 1: %d bytes from the origin, %d from peers; want everything from the origin", st.Bytes.Origin, st.Bytes.Peers)
			}
			continue
		}
		if st.Bytes.Peers == 0 || st.Bytes.Origin > img/10 {
			t.Errorf("host %d: %d bytes from peers, %d from the origin (image %d): want the image from peers", i+1, st.Bytes.Peers, st.Bytes.Origin, img)
		}
	}
	var served int64
	for _, s := range stacks[:2] {
		served += s.cluster.stats(s.daemon).Bytes.ServedToPeers
	}
	if served == 0 {
		t.Error("hosts 1 and 2 report serving nothing to peers")
	}
	got := reg.blobBytes.Load() - converted
	t.Logf("registry served %d blob bytes to the three hosts: data blobs %d (%.2fx), metadata allowance %d",
		got, data, float64(got)/float64(data), meta)
	if got > data*13/10+meta {
		t.Errorf("the registry served %d blob bytes to three hosts for %d bytes of image data (+%d of metadata): want about one copy", got, data, meta)
	}
	if got < data/2 {
		t.Errorf("the registry served %d blob bytes for %d bytes of image data: the hosts read the image from somewhere else", got, data)
	}
}
