package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"

	"github.com/shoal-p2p/shoal/origin"
)

// countingRegistry is the real distribution registry behind a handler that counts the GETs of
// each blob and manifest path, as an upstream's egress would.
type countingRegistry struct {
	host string
	srv  *httptest.Server
	mu   sync.Mutex
	gets map[string]int // path → GETs
}

func (c *countingRegistry) count(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets[path]
}

func startRegistry(t *testing.T) *countingRegistry {
	t.Helper()
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
	c := &countingRegistry{gets: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			c.mu.Lock()
			c.gets[r.URL.Path]++
			c.mu.Unlock()
		}
		app.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c.host, c.srv = strings.TrimPrefix(srv.URL, "http://"), srv
	return c
}

// testImage is an ordinary (non-Shoal) image of random layers pushed to the registry.
type testImage struct {
	repo, tag string
	manifest  []byte
	digest    digest.Digest
	blobs     map[digest.Digest][]byte // config and layers
	layers    []digest.Digest
}

func pushImage(t *testing.T, reg *countingRegistry, repo, tag string, layerSizes ...int) *testImage {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(len(layerSizes)), 7))
	im := &testImage{repo: repo, tag: tag, blobs: map[digest.Digest][]byte{}}
	put := func(b []byte) ocispec.Descriptor {
		d := digest.FromBytes(b)
		resp, err := http.Post(fmt.Sprintf("http://%s/v2/%s/blobs/uploads/", reg.host, repo), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, err := resp.Location()
		if err != nil {
			t.Fatal(err)
		}
		q := loc.Query()
		q.Set("digest", d.String())
		loc.RawQuery = q.Encode()
		req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(b))
		if resp, err = http.DefaultClient.Do(req); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("upload %s: %s", d, resp.Status)
		}
		im.blobs[d] = b
		return ocispec.Descriptor{Digest: d, Size: int64(len(b))}
	}
	cfg := put([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`))
	cfg.MediaType = ocispec.MediaTypeImageConfig
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfg}
	m.SchemaVersion = 2
	for _, n := range layerSizes {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		l := put(b)
		l.MediaType = ocispec.MediaTypeImageLayerGzip
		m.Layers = append(m.Layers, l)
		im.layers = append(im.layers, l.Digest)
	}
	mb, _ := json.Marshal(m)
	req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("http://%s/v2/%s/manifests/%s", reg.host, repo, tag), bytes.NewReader(mb))
	req.Header.Set("Content-Type", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("put manifest: %s", resp.Status)
	}
	im.manifest, im.digest = mb, digest.FromBytes(mb)
	return im
}

func newTestMirror(t *testing.T, reg *countingRegistry, peers Peers) (*Mirror, *httptest.Server) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.Origin.Insecure = []string{reg.host}
	cfg.Origin.DockerConfig = "-"
	cfg.Origin.Retries = 1
	cfg.Registerer = prometheus.NewRegistry()
	m, err := New(cfg, peers)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m)
	t.Cleanup(func() { srv.Close(); _ = m.Close() })
	return m, srv
}

func get(t *testing.T, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// pull reads the image through a mirror as containerd does: the tag, the manifest by digest,
// then every blob, the layers concurrently and each several times at once.
func pull(t *testing.T, srv *httptest.Server, reg *countingRegistry, im *testImage) {
	t.Helper()
	ns := "?ns=" + reg.host
	resp, body := get(t, srv.URL+"/v2/"+im.repo+"/manifests/"+im.tag+ns, "Accept", ocispec.MediaTypeImageManifest)
	if resp.StatusCode != 200 || !bytes.Equal(body, im.manifest) || resp.Header.Get("Docker-Content-Digest") != im.digest.String() {
		t.Fatalf("manifest by tag: %s, digest header %q, %d bytes", resp.Status, resp.Header.Get("Docker-Content-Digest"), len(body))
	}
	if ct := resp.Header.Get("Content-Type"); ct != ocispec.MediaTypeImageManifest {
		t.Fatalf("manifest by tag: Content-Type %q", ct)
	}
	resp, body = get(t, srv.URL+"/v2/"+im.repo+"/manifests/"+im.digest.String()+ns)
	if resp.StatusCode != 200 || !bytes.Equal(body, im.manifest) {
		t.Fatalf("manifest by digest: %s", resp.Status)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for d, want := range im.blobs {
		for range 4 {
			wg.Go(func() {
				resp, err := http.Get(srv.URL + "/v2/" + im.repo + "/blobs/" + d.String() + ns)
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				got, err := io.ReadAll(resp.Body)
				if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, want) {
					errs <- fmt.Errorf("blob %s: %s, %d bytes (want %d), err %v", d, resp.Status, len(got), len(want), err)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestMirrorPullThroughRealRegistry: one node pulls an ordinary image through its mirror from
// the real distribution registry; concurrent requests for a blob share one upstream GET, and
// ranges and HEAD are answered from the verified copy.
func TestMirrorPullThroughRealRegistry(t *testing.T) {
	reg := startRegistry(t)
	im := pushImage(t, reg, "team/app", "v1", 3<<20, 700<<10, 10)
	m, srv := newTestMirror(t, reg, nil)
	pull(t, srv, reg, im)
	for d := range im.blobs {
		if n := reg.count("/v2/" + im.repo + "/blobs/" + d.String()); n != 1 {
			t.Errorf("blob %s: %d upstream GETs for 4 concurrent requests, want 1", d, n)
		}
	}
	// The manifest by digest was kept when the tag was resolved.
	if n := reg.count("/v2/" + im.repo + "/manifests/" + im.digest.String()); n != 0 {
		t.Errorf("manifest by digest: %d upstream GETs, want 0", n)
	}
	big := im.blobs[im.layers[0]]
	resp, body := get(t, srv.URL+"/v2/"+im.repo+"/blobs/"+im.layers[0].String()+"?ns="+reg.host, "Range", "bytes=1000-1999")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, big[1000:2000]) {
		t.Fatalf("range: %s, %d bytes", resp.Status, len(body))
	}
	req, _ := http.NewRequest(http.MethodHead, srv.URL+"/v2/"+im.repo+"/blobs/"+im.layers[0].String()+"?ns="+reg.host, nil)
	hr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	hr.Body.Close()
	if hr.StatusCode != 200 || hr.ContentLength != int64(len(big)) || hr.Header.Get("Docker-Content-Digest") != im.layers[0].String() {
		t.Fatalf("HEAD: %s, length %d", hr.Status, hr.ContentLength)
	}
	st := m.Stats()
	var size int64
	for _, b := range im.blobs {
		size += int64(len(b))
	}
	if st.UpstreamBytes != size+int64(len(im.manifest)) || st.PeerBytes != 0 || st.LocalHits == 0 {
		t.Errorf("stats %+v: want upstream bytes %d", st, size+int64(len(im.manifest)))
	}
	// The Prometheus series read the same counters.
	if got := m.gatheredBytes(t, "upstream"); int64(got) != st.UpstreamBytes {
		t.Errorf("shoal_mirror_bytes_total{source=upstream} = %v, stats say %d", got, st.UpstreamBytes)
	}
	// Missing content is a 404, a bad name a 404 with NAME_INVALID, a write a 405.
	resp, _ = get(t, srv.URL+"/v2/"+im.repo+"/blobs/"+digest.FromString("nope").String()+"?ns="+reg.host)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("missing blob: %s", resp.Status)
	}
	resp, _ = get(t, srv.URL+"/v2/Bad..Name/blobs/"+im.layers[0].String())
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("bad name: %s", resp.Status)
	}
	pr, err := http.Post(srv.URL+"/v2/"+im.repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	pr.Body.Close()
	if pr.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %s", pr.Status)
	}
}

// storePeer serves another mirror's kept blobs, as the p2p exchange does; corrupt flips a byte
// of each to play a peer that lies.
type storePeer struct {
	from    *Mirror
	corrupt bool
	calls   int
	mu      sync.Mutex
}

func (p *storePeer) FetchBlob(ctx context.Context, d digest.Digest, max int64, w io.Writer) (string, error) {
	p.mu.Lock()
	p.calls++
	p.mu.Unlock()
	f, size, ok, err := p.from.OpenBlob(d)
	if err != nil || !ok {
		return "", fmt.Errorf("no peer has %s", d)
	}
	defer f.Close()
	if size > max {
		return "", errTooLarge
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return "", err
	}
	if p.corrupt {
		b[len(b)/2] ^= 1
	}
	_, err = w.Write(b)
	return "peer-a", err
}

// TestMirrorPeersThenUpstream: a second node's mirror gets every blob from a peer that has it,
// adding no upstream GET; a third whose peer sends wrong bytes refuses them and serves the
// upstream's verified copy.
func TestMirrorPeersThenUpstream(t *testing.T) {
	reg := startRegistry(t)
	im := pushImage(t, reg, "library/base", "latest", 1<<20, 300<<10)
	a, srvA := newTestMirror(t, reg, nil)
	pull(t, srvA, reg, im)

	b, srvB := newTestMirror(t, reg, &storePeer{from: a})
	pull(t, srvB, reg, im)
	for d := range im.blobs {
		if n := reg.count("/v2/" + im.repo + "/blobs/" + d.String()); n != 1 {
			t.Errorf("blob %s: %d upstream GETs after two nodes pulled, want 1", d, n)
		}
	}
	if st := b.Stats(); st.PeerBytes == 0 || st.UpstreamBytes != int64(len(im.manifest)) {
		t.Errorf("second node: %+v: want blob bytes from peers, only the tag's manifest from upstream", st)
	}

	liar := &storePeer{from: a, corrupt: true}
	c, srvC := newTestMirror(t, reg, liar)
	pull(t, srvC, reg, im) // asserts every byte served is the image's
	st := c.Stats()
	if st.PeerBytes != 0 || st.PeerRejected < int64(len(im.blobs)) {
		t.Errorf("third node: %+v: want every peer answer rejected", st)
	}
	for d := range im.blobs {
		if n := reg.count("/v2/" + im.repo + "/blobs/" + d.String()); n != 2 {
			t.Errorf("blob %s: %d upstream GETs, want 2 (the first node, and the node whose peer lied)", d, n)
		}
	}
}

// TestMirrorUpstreamDownByDigest: with the registry gone, a node whose peer pulled the image
// still serves its manifest by digest and its blobs (verified, from the peer); a tag cannot be
// resolved and says so with a 502, and content no peer has is an error, not a hang.
func TestMirrorUpstreamDownByDigest(t *testing.T) {
	reg := startRegistry(t)
	im := pushImage(t, reg, "team/offline", "v1", 400<<10, 20)
	a, srvA := newTestMirror(t, reg, nil)
	pull(t, srvA, reg, im)
	reg.srv.Close()

	_, srvB := newTestMirror(t, reg, &storePeer{from: a})
	ns := "?ns=" + reg.host
	resp, body := get(t, srvB.URL+"/v2/"+im.repo+"/manifests/"+im.digest.String()+ns)
	if resp.StatusCode != 200 || !bytes.Equal(body, im.manifest) || resp.Header.Get("Content-Type") != ocispec.MediaTypeImageManifest {
		t.Fatalf("manifest by digest, registry down: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	for d, want := range im.blobs {
		resp, body := get(t, srvB.URL+"/v2/"+im.repo+"/blobs/"+d.String()+ns)
		if resp.StatusCode != 200 || !bytes.Equal(body, want) {
			t.Fatalf("blob %s, registry down: %s", d, resp.Status)
		}
	}
	if resp, _ := get(t, srvB.URL+"/v2/"+im.repo+"/manifests/"+im.tag+ns); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("tag, registry down: %s, want 502", resp.Status)
	}
	if resp, _ := get(t, srvB.URL+"/v2/"+im.repo+"/blobs/"+digest.FromString("nobody").String()+ns); resp.StatusCode < 500 {
		t.Fatalf("unknown blob, registry down: %s, want a 5xx", resp.Status)
	}
	// No ?ns= and no default upstream: what is kept is still served (a digest names the same
	// bytes at every registry); anything else is refused with a reason.
	if resp, body := get(t, srvB.URL+"/v2/"+im.repo+"/blobs/"+im.layers[0].String()); resp.StatusCode != 200 || !bytes.Equal(body, im.blobs[im.layers[0]]) {
		t.Fatalf("kept blob, no ns: %s", resp.Status)
	}
	if resp, body := get(t, srvB.URL+"/v2/"+im.repo+"/blobs/"+digest.FromString("elsewhere").String()); resp.StatusCode != http.StatusBadRequest || !bytes.Contains(body, []byte("no upstream")) {
		t.Fatalf("no ns: %s %s", resp.Status, body)
	}
	if resp, _ := get(t, srvB.URL+"/v2/"+im.repo+"/manifests/"+im.tag); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("tag, no ns: %s", resp.Status)
	}
}

// gatheredBytes returns shoal_mirror_bytes_total{source} as gathered from the mirror's registry.
func (m *Mirror) gatheredBytes(t *testing.T, source string) float64 {
	t.Helper()
	g := m.cfg.Registerer.(*prometheus.Registry)
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "shoal_mirror_bytes_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "source" && l.GetValue() == source {
					return mt.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no shoal_mirror_bytes_total{source=%q}", source)
	return 0
}

// TestMirrorFetchForPeer: the owner's side of a fetch-through, on the real registry. Concurrent
// fetches for peers and this host's own client share one upstream GET and leave a verified blob
// that is served; an upstream outside PeerUpstreams, a bad repository or digest is refused
// without contacting anything; a blob the upstream lacks is its not-found.
func TestMirrorFetchForPeer(t *testing.T) {
	reg := startRegistry(t)
	im := pushImage(t, reg, "team/app", "v1", 2<<20)
	m, srv := newTestMirror(t, reg, nil)
	layer := im.layers[0]
	path := "/v2/team/app/blobs/" + layer.String()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := m.FetchForPeer(t.Context(), layer, false, reg.host, "team/app", 1<<30); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Go(func() {
		if resp, body := get(t, srv.URL+path+"?ns="+reg.host); resp.StatusCode != 200 || !bytes.Equal(body, im.blobs[layer]) {
			t.Errorf("own client: %s, %d bytes", resp.Status, len(body))
		}
	})
	wg.Wait()
	if n := reg.count(path); n != 1 {
		t.Fatalf("%d upstream GETs of the layer, want 1", n)
	}
	if f, size, ok, err := m.OpenBlob(layer); err != nil || !ok || size != int64(len(im.blobs[layer])) {
		t.Fatalf("kept: %v %v %d", ok, err, size)
	} else {
		f.Close()
	}
	if err := m.FetchForPeer(t.Context(), im.digest, true, reg.host, "team/app", 1<<20); err != nil {
		t.Fatalf("manifest for a peer: %v", err)
	}

	mcfg := DefaultConfig()
	mcfg.Dir = t.TempDir()
	mcfg.PeerUpstreams = []string{"ghcr.io"}
	mcfg.Origin.Insecure = []string{reg.host}
	limited, err := New(mcfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer limited.Close()
	other := im.layers[0]
	for _, c := range []struct {
		host, repo string
		d          digest.Digest
	}{
		{reg.host, "team/app", other},      // not in PeerUpstreams
		{"ghcr.io", "Team/App", other},     // invalid repository
		{"ghcr.io", "team/app", "md5:abc"}, // not sha256
		{"ghcr.io/x", "team/app", other},   // not a host
	} {
		if err := limited.FetchForPeer(t.Context(), c.d, false, c.host, c.repo, 1<<20); !errors.Is(err, origin.ErrInvalidReference) {
			t.Errorf("%+v: %v, want refused", c, err)
		}
	}
	before := reg.count("/v2/team/app/blobs/" + digest.FromString("absent").String())
	if err := m.FetchForPeer(t.Context(), digest.FromString("absent"), false, reg.host, "team/app", 1<<20); !errors.Is(err, origin.ErrNotFound) {
		t.Errorf("absent blob: %v, want origin.ErrNotFound", err)
	}
	if reg.count("/v2/team/app/blobs/"+digest.FromString("absent").String()) == before {
		t.Errorf("absent blob: the registry was not asked")
	}
	bad := DefaultConfig()
	bad.Dir, bad.PeerUpstreams = t.TempDir(), []string{"not a host"}
	if err := bad.Validate(); err == nil {
		t.Errorf("PeerUpstreams %q accepted", bad.PeerUpstreams)
	}
}
