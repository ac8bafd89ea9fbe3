package daemon

// Fakes for the service's parts: the store, resolver and node (what the registry, the reports and
// prefetch need of them), the image loader and the frontends. They record what was asked of them
// so tests can check that the four registrations agree. No root, no kernel, no network.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/multiformats/go-multihash"
	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/demand"
	"github.com/shoal-p2p/shoal/mount"
	"github.com/shoal-p2p/shoal/p2p"
)

// testBlob makes a blob manifest of n 4 KiB chunks named after name.
func testBlob(name string, n int) bootstrap.Blob {
	d := digest.FromString("blob " + name)
	m := &chunk.Manifest{SchemaVersion: 1, Blob: d, BlobSize: int64(n) * 4096, Chunking: chunk.ChunkingFixed, ChunkSize: 4096}
	for i := range n {
		h, _ := multihash.Sum([]byte(fmt.Sprintf("%s/%d", name, i)), multihash.SHA2_256, -1)
		m.Chunks = append(m.Chunks, chunk.Chunk{Offset: int64(i) * 4096, Length: 4096, CID: cid.NewCidV1(cid.Raw, h)})
	}
	return bootstrap.Blob{Digest: d, Size: m.BlobSize, Device: 1, Manifest: m}
}

// testImage makes an image named ref with the given blobs; its origin answers with the ref, so a
// test can tell which image's origin a blob is registered with.
func testImage(ref string, blobs ...bootstrap.Blob) *image {
	im := &bootstrap.Image{Digest: digest.FromString("manifest " + ref),
		Bootstrap: bootstrap.Descriptor{Digest: digest.FromString("bootstrap " + ref), Size: 4096}, Blobs: blobs}
	return &image{Ref: ref, Image: im, Manifest: []byte(`{"ref":"` + ref + `"}`), BootPath: "/nonexistent/" + ref, origin: namedOrigin(ref)}
}

// namedOrigin is an origin whose every read returns its name, padded with spaces to the length
// asked for (chunks are decoded to exactly their length on the way).
type namedOrigin string

func (o namedOrigin) ReadRange(_ context.Context, _ digest.Digest, _, n int64) ([]byte, error) {
	b := bytes.Repeat([]byte{' '}, int(n))
	copy(b, o)
	return b, nil
}

// originName asks an origin func which namedOrigin it reads from.
func originName(fn func(context.Context, chunk.Chunk) ([]byte, error)) string {
	b, _ := fn(context.Background(), chunk.Chunk{Length: 64})
	return strings.TrimRight(string(b), " ")
}

type fakeStore struct {
	mu      sync.Mutex
	blobs   map[digest.Digest]*chunk.Manifest
	pins    map[digest.Digest]map[string]bool
	present map[digest.Digest]int // chunks present, from the start of the blob
	failAdd map[digest.Digest]error

	verifyFailures int64 // what Stats reports
}

func newFakeStore() *fakeStore {
	return &fakeStore{blobs: map[digest.Digest]*chunk.Manifest{}, pins: map[digest.Digest]map[string]bool{},
		present: map[digest.Digest]int{}, failAdd: map[digest.Digest]error{}}
}

func (s *fakeStore) AddBlob(_ context.Context, m *chunk.Manifest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failAdd[m.Blob]; err != nil {
		return err
	}
	s.blobs[m.Blob] = m
	return nil
}

func (s *fakeStore) Missing(blob digest.Digest, off, length int64) ([]chunk.Chunk, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.blobs[blob]
	if m == nil {
		return nil, chunkstore.ErrNotFound
	}
	return m.Chunks[min(s.present[blob], len(m.Chunks)):], nil
}

func (s *fakeStore) Pin(blob digest.Digest, image string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pins[blob] == nil {
		s.pins[blob] = map[string]bool{}
	}
	s.pins[blob][image] = true
	return nil
}

func (s *fakeStore) Unpin(blob digest.Digest, image string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pins[blob], image)
	return nil
}

// pinned lists the blobs that carry a pin.
func (s *fakeStore) pinned() []digest.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []digest.Digest
	for b, ps := range s.pins {
		if len(ps) > 0 {
			out = append(out, b)
		}
	}
	return out
}

func (s *fakeStore) Stats() chunkstore.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return chunkstore.Stats{Blobs: len(s.blobs), VerifyFailures: s.verifyFailures}
}

func (s *fakeStore) PresentTotals(blob digest.Digest) (int64, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blobs[blob] == nil {
		return 0, 0, chunkstore.ErrNotFound
	}
	n := int64(s.present[blob])
	return n * 4096, n, nil
}

type fakeResolver struct {
	mu        sync.Mutex
	blobs     map[digest.Digest]demand.OriginFunc
	prefetch  func(ctx context.Context, blob digest.Digest) error // nil: completes at once
	prefetchN int                                                 // prefetches running

	originCorrupt int64 // what Stats reports
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{blobs: map[digest.Digest]demand.OriginFunc{}}
}

func (r *fakeResolver) AddBlob(m *chunk.Manifest, origin demand.OriginFunc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.blobs[m.Blob] = origin
}

func (r *fakeResolver) RemoveBlob(blob digest.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.blobs, blob)
}

// origin returns what the origin a blob is registered with reads ("" if not registered).
func (r *fakeResolver) origin(blob digest.Digest) string {
	r.mu.Lock()
	fn := r.blobs[blob]
	r.mu.Unlock()
	if fn == nil {
		return ""
	}
	return originName(fn)
}

func (r *fakeResolver) has(blob digest.Digest) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blobs[blob] != nil
}

func (r *fakeResolver) Prefetch(ctx context.Context, blob digest.Digest, _ []chunk.Range, _ *rate.Limiter, _ demand.Progress) (demand.PrefetchResult, error) {
	r.mu.Lock()
	fn := r.prefetch
	r.prefetchN++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.prefetchN--
		r.mu.Unlock()
	}()
	if fn == nil {
		return demand.PrefetchResult{Blob: blob}, nil
	}
	if err := fn(ctx, blob); err != nil {
		if errors.Is(err, demand.ErrIncomplete) {
			// What a prefetch of an image larger than the cache reports: one chunk evicted again.
			res := demand.PrefetchResult{Blob: blob, Total: 2 << 20, Present: 1 << 20,
				Missing: []demand.MissingChunk{{Chunk: chunk.Chunk{Offset: 0, Length: 1 << 20}, Err: errors.New("fetched, then evicted")}}}
			return res, fmt.Errorf("%w: %s", err, res.Summary())
		}
		return demand.PrefetchResult{Blob: blob}, err
	}
	return demand.PrefetchResult{Blob: blob}, nil
}

func (r *fakeResolver) running() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.prefetchN
}

func (r *fakeResolver) ReadOrder(digest.Digest) []chunk.Range { return nil }
func (r *fakeResolver) Stats() demand.Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return demand.Stats{Sources: map[chunk.Source]demand.SourceStats{}, OriginCorrupt: r.originCorrupt}
}

type fakeNode struct {
	mu        sync.Mutex
	private   map[digest.Digest][]string
	blobs     map[digest.Digest]p2p.OriginFunc
	announced map[digest.Digest]int
	failReg   map[digest.Digest]error
	peers     []p2p.PeerStats
}

func newFakeNode() *fakeNode {
	return &fakeNode{blobs: map[digest.Digest]p2p.OriginFunc{}, announced: map[digest.Digest]int{}, failReg: map[digest.Digest]error{}}
}

func (n *fakeNode) RegisterBlob(m *chunk.Manifest, origin p2p.OriginFunc) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.failReg[m.Blob]; err != nil {
		return err
	}
	n.blobs[m.Blob] = origin
	return nil
}

func (n *fakeNode) Announce(blob digest.Digest, chunks ...chunk.Chunk) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.blobs[blob] == nil {
		return p2p.ErrUnknownBlob
	}
	n.announced[blob] += len(chunks)
	return nil
}

func (n *fakeNode) SetPrivate(d digest.Digest, repos ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.private == nil {
		n.private = map[digest.Digest][]string{}
	}
	if len(repos) == 0 {
		delete(n.private, d)
		return
	}
	n.private[d] = repos
}

func (n *fakeNode) privateTo(d digest.Digest) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.private[d]
}

func (n *fakeNode) Forget(blob digest.Digest) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.blobs, blob)
}

func (n *fakeNode) has(blob digest.Digest) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.blobs[blob] != nil
}

func (n *fakeNode) origin(blob digest.Digest) string {
	n.mu.Lock()
	fn := n.blobs[blob]
	n.mu.Unlock()
	if fn == nil {
		return ""
	}
	return originName(fn)
}

func (n *fakeNode) ID() peer.ID            { return peer.ID("fake-peer") }
func (n *fakeNode) Addrs() []ma.Multiaddr  { return nil }
func (n *fakeNode) Served() (int64, int64) { return 0, 0 }
func (n *fakeNode) RightsStats() p2p.RightsStats {
	return p2p.RightsStats{}
}
func (n *fakeNode) Peers() []p2p.PeerStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.peers
}
func (n *fakeNode) setFail(b digest.Digest, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.failReg[b] = err
}

// fakeLoader serves images by ref.
type fakeLoader struct {
	mu     sync.Mutex
	images map[string]*image
	loads  int
}

func (l *fakeLoader) Load(_ context.Context, ref string) (*image, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loads++
	if im := l.images[ref]; im != nil {
		return im, nil
	}
	return nil, fmt.Errorf("%w: no image %s at the fake origin", errNotFound, ref)
}

func (l *fakeLoader) Reload(ctx context.Context, ref string, manifest []byte) (*image, error) {
	im, err := l.Load(ctx, ref)
	if err == nil && !bytes.Equal(im.Manifest, manifest) {
		return nil, fmt.Errorf("image %s: saved manifest differs", ref)
	}
	return im, err
}

// fakeFrontend records mounts; mountErr fails them; adopt lists mountpoints it adopts.
type fakeFrontend struct {
	mode mount.Mode

	mu       sync.Mutex
	mounted  map[string]digest.Digest
	mountErr error
	adopt    map[string]bool
	mounts   int // Mount calls
	closed   bool
}

func (f *fakeFrontend) Mount(_ context.Context, im *image, mp string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mounts++
	if f.closed {
		return errors.New("frontend closed")
	}
	if f.mountErr != nil {
		return f.mountErr
	}
	f.mounted[mp] = im.digest()
	return nil
}

func (f *fakeFrontend) Unmount(mp string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mounted, mp)
	return nil
}

func (f *fakeFrontend) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeFrontend) mountpoints() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for mp := range f.mounted {
		out = append(out, mp)
	}
	sort.Strings(out)
	return out
}

// adoptingFrontend is a fakeFrontend that adopts the mountpoints in adopt (as fscache does).
type adoptingFrontend struct{ *fakeFrontend }

func (f adoptingFrontend) Adopt(im *image, mp string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.adopt[mp] {
		f.mounted[mp] = im.digest()
		return true
	}
	return false
}

// fixture is a service on fakes with its control API on an httptest server.
type fixture struct {
	t        *testing.T
	dir      string
	store    *fakeStore
	resolver *fakeResolver
	node     *fakeNode
	loader   *fakeLoader
	svc      *service
	srv      *httptest.Server

	mu       sync.Mutex
	fronts   map[mount.Mode]*fakeFrontend
	builds   map[mount.Mode]int
	probes   map[mount.Mode]error
	block    map[mount.Mode]chan struct{} // construction waits for it to close
	building chan mount.Mode              // told when a construction starts
	stale    []string                     // mountpoints CleanStale was asked about
}

func newFixture(t *testing.T, cfg serviceConfig, images ...*image) *fixture {
	t.Helper()
	f := &fixture{t: t, dir: t.TempDir(), store: newFakeStore(), resolver: newFakeResolver(), node: newFakeNode(),
		loader: &fakeLoader{images: map[string]*image{}}, fronts: map[mount.Mode]*fakeFrontend{}, builds: map[mount.Mode]int{},
		probes: map[mount.Mode]error{}, block: map[mount.Mode]chan struct{}{}, building: make(chan mount.Mode, 16)}
	for _, im := range images {
		f.loader.images[im.Ref] = im
	}
	if cfg.DataDir == "" {
		cfg.DataDir = f.dir
	}
	if cfg.Mode == "" {
		cfg.Mode = "auto"
	}
	f.svc = newService(cfg, serviceDeps{
		Store: f.store, Resolver: f.resolver, Node: f.node, Loader: f.loader,
		Frontend: f.build,
		Probe: func(m mount.Mode) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.probes[m]
		},
		CleanStale: func(mp string) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.stale = append(f.stale, mp)
		},
		Log: slogDiscard(),
	})
	f.srv = httptest.NewServer(apiHandler(f.svc))
	t.Cleanup(func() {
		f.srv.Close()
		f.svc.shutdown(false)
	})
	return f
}

func (f *fixture) build(ctx context.Context, m mount.Mode, _ bootstrapLookup) (frontend, error) {
	f.mu.Lock()
	f.builds[m]++
	block := f.block[m]
	f.mu.Unlock()
	select {
	case f.building <- m:
	default:
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fe := f.fronts[m]
	if fe == nil {
		fe = &fakeFrontend{mode: m, mounted: map[string]digest.Digest{}, adopt: map[string]bool{}}
		f.fronts[m] = fe
	}
	if m == mount.Fscache {
		return adoptingFrontend{fe}, nil
	}
	return fe, nil
}

// frontend returns the fake frontend of mode m, made ahead of its construction if need be.
func (f *fixture) frontend(m mount.Mode) *fakeFrontend {
	f.mu.Lock()
	defer f.mu.Unlock()
	fe := f.fronts[m]
	if fe == nil {
		fe = &fakeFrontend{mode: m, mounted: map[string]digest.Digest{}, adopt: map[string]bool{}}
		f.fronts[m] = fe
	}
	return fe
}

// call does one API request and returns the status and the decoded body (into out if not nil).
func (f *fixture) call(method, path string, in, out any) (int, string) {
	f.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, f.srv.URL+path, body)
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		f.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			f.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e.Error
}

// mount mounts ref at a new directory in mode through the API and returns the mountpoint, the
// status and the error text.
func (f *fixture) mount(ref, mode string) (string, int, string) {
	f.t.Helper()
	mp, err := os.MkdirTemp(f.dir, "mnt")
	if err != nil {
		f.t.Fatal(err)
	}
	code, msg := f.call("POST", "/v1/images", MountRequest{Ref: ref, Mountpoint: mp, Mode: mode}, nil)
	return mp, code, msg
}

func (f *fixture) stats() StatsReport {
	f.t.Helper()
	var st StatsReport
	if code, msg := f.call("GET", "/v1/stats", nil, &st); code != http.StatusOK {
		f.t.Fatalf("stats: %d %s", code, msg)
	}
	return st
}

// savedState reads state.json.
func (f *fixture) savedState() state {
	f.t.Helper()
	var st state
	b, err := os.ReadFile(filepath.Join(f.dir, "state.json"))
	if err != nil {
		f.t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		f.t.Fatal(err)
	}
	return st
}

// eventually waits up to 5 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func slogDiscard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
