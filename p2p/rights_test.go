package p2p

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/internal/registrytest"
	"github.com/shoal-p2p/shoal/origin"
)

func TestRightsWireBytes(t *testing.T) {
	b, err := AppendRightsRequest(nil, RightsRequest{Repo: "r/x", Token: "ab"})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{8, 1, 3, 'r', '/', 'x', 2, 'a', 'b'}
	if !bytes.Equal(b, want) {
		t.Fatalf("request bytes %v, want %v", b, want)
	}
	got, err := ReadRightsRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil || got.Repo != "r/x" || got.Token != "ab" {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	rb := AppendRightsResponse(nil, RightsResponse{Status: StatusOK, TTL: 1500 * time.Millisecond})
	if want := []byte{4, 0, 0xdc, 0x0b, 0}; !bytes.Equal(rb, want) {
		t.Fatalf("response bytes %v, want %v", rb, want)
	}
	resp, err := ReadRightsResponse(bufio.NewReader(bytes.NewReader(rb)))
	if err != nil || resp.Status != StatusOK || resp.TTL != 1500*time.Millisecond {
		t.Fatalf("round trip: %+v, %v", resp, err)
	}
	for name, r := range map[string]RightsRequest{
		"no repo": {Token: "x"}, "no token": {Repo: "r/x"},
		"long token": {Repo: "r/x", Token: strings.Repeat("a", maxTokenLen+1)},
	} {
		if _, err := AppendRightsRequest(nil, r); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: encoded: %v", name, err)
		}
	}
	for name, frame := range map[string][]byte{
		"version":  {8, 2, 3, 'r', '/', 'x', 2, 'a', 'b'},
		"trailing": {9, 1, 3, 'r', '/', 'x', 2, 'a', 'b', 0},
		"short":    {8, 1, 3, 'r'},
		"huge":     {0xff, 0xff, 0x03},
	} {
		if _, err := ReadRightsRequest(bufio.NewReader(bytes.NewReader(frame))); err == nil {
			t.Errorf("request %s: accepted", name)
		}
	}
	// A response claiming more than a day of grant is malformed.
	long := []byte{0}
	long = append(long, 0x80, 0xd8, 0xf0, 0x29, 0) // 88 000 000 ms: over 24 h
	frame := append([]byte{byte(len(long))}, long...)
	if _, err := ReadRightsResponse(bufio.NewReader(bytes.NewReader(frame))); !errors.Is(err, ErrMalformed) {
		t.Errorf("over-long grant: %v", err)
	}
}

func FuzzRightsRequest(f *testing.F) {
	b, _ := AppendRightsRequest(nil, RightsRequest{Repo: "127.0.0.1:5000/team/app", Token: "eyJ.eyJ.sig"})
	f.Add(b)
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := ReadRightsRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		out, err := AppendRightsRequest(nil, r)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", r, err)
		}
		if again, err := ReadRightsRequest(bufio.NewReader(bytes.NewReader(out))); err != nil || again != r {
			t.Fatalf("re-decode: %+v, %v; want %+v", again, err, r)
		}
	})
}

func FuzzRightsResponse(f *testing.F) {
	f.Add(AppendRightsResponse(nil, RightsResponse{Status: StatusDenied, Msg: "no"}))
	f.Add(AppendRightsResponse(nil, RightsResponse{Status: StatusOK, TTL: time.Minute}))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := ReadRightsResponse(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		if r.TTL < 0 || r.TTL > maxGrantTTL || len(r.Msg) > maxMsgLen {
			t.Fatalf("decoded out of bounds: %+v", r)
		}
		again, err := ReadRightsResponse(bufio.NewReader(bytes.NewReader(AppendRightsResponse(nil, r))))
		if err != nil || again != r {
			t.Fatalf("re-decode: %+v, %v; want %+v", again, err, r)
		}
	})
}

func TestTagRepository(t *testing.T) {
	for ref, want := range map[string]string{
		"127.0.0.1:5000/team/app:latest":                   "127.0.0.1:5000/team/app",
		"127.0.0.1:5000/team/app":                          "127.0.0.1:5000/team/app",
		"ghcr.io/a/b:v1@sha256:" + strings.Repeat("0", 64): "ghcr.io/a/b",
	} {
		if got := tagRepository(ref); got != want {
			t.Errorf("tagRepository(%q) = %q, want %q", ref, got, want)
		}
	}
}

// rightsHost is one host of the rights test: a node whose origin is the test registry with one
// user's credentials, and whose Rights are origin.PullRights with them.
type rightsHost struct {
	n      *Node
	st     *objStore
	ocfg   origin.Config
	rights *origin.PullRights
}

func startRightsHost(t testing.TB, reg *registrytest.Registry, user, pass string, ttl time.Duration, peers ...*Node) *rightsHost {
	t.Helper()
	return startRightsHostWith(t, reg, user, pass, ttl, nil, peers...)
}

// forgedRights presents a token the registry did not issue (a host with no token of its own
// that tries anyway): the holder's registry check must refuse it.
type forgedRights struct{ Rights }

func (forgedRights) PullToken(context.Context, string) (string, time.Time, error) {
	return "eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjE5MDAwMDAwMDB9.c2ln", time.Now().Add(time.Minute), nil
}

func startRightsHostWith(t testing.TB, reg *registrytest.Registry, user, pass string, ttl time.Duration, wrap func(Rights) Rights, peers ...*Node) *rightsHost {
	t.Helper()
	ocfg := origin.DefaultConfig()
	ocfg.Insecure = []string{reg.Host}
	ocfg.DockerConfig = "-"
	ocfg.Username, ocfg.Password = user, pass
	ocfg.Timeout = 5 * time.Second
	ocfg.Retries = 1
	ocfg.RetryBase, ocfg.RetryMax = 5*time.Millisecond, 50*time.Millisecond
	ocfg.Logger = testLogger()
	pr, err := origin.NewPullRights(ocfg)
	if err != nil {
		t.Fatal(err)
	}
	var rights Rights = pr
	if wrap != nil {
		rights = wrap(pr)
	}
	n, st := startObjNode(t, func(c *Config) { c.Rights, c.RightsTTL = rights, ttl }, peers...)
	return &rightsHost{n: n, st: st, ocfg: ocfg, rights: pr}
}

// register joins blob m of repository repo (host/name), with this host's registry access as
// its origin, and marks it private unless the registry lets anyone pull it: what the daemon
// does for each blob of an image it adds.
func (h *rightsHost) register(t testing.TB, m *chunk.Manifest, repo string) (private bool) {
	t.Helper()
	ref, err := origin.ParseReference(repo)
	if err != nil {
		t.Fatal(err)
	}
	r, err := origin.NewRegistry(ref, h.ocfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.n.RegisterBlob(m, func(ctx context.Context, c chunk.Chunk) ([]byte, error) {
		return r.ReadRange(ctx, m.Blob, c.Offset, c.Length)
	}); err != nil {
		t.Fatal(err)
	}
	public, err := h.rights.Public(t.Context(), repo)
	if err != nil {
		t.Fatalf("probing %s: %v", repo, err)
	}
	if !public {
		h.n.SetPrivate(m.Blob, repo)
	}
	return !public
}

// read fetches every chunk of m the store lacks and stores it; it returns the sources.
func (h *rightsHost) read(ctx context.Context, m *chunk.Manifest) (map[chunk.Source]int, error) {
	srcs := map[chunk.Source]int{}
	for _, c := range m.Chunks {
		if ok, _ := h.st.HasCID(c.CID); ok {
			continue
		}
		data, src, err := h.n.Fetch(ctx, m.Blob, c, nil)
		if err != nil {
			return srcs, err
		}
		if err := h.st.PutChunk(ctx, m.Blob, c, data); err != nil {
			return srcs, err
		}
		srcs[src]++
	}
	return srcs, nil
}

func randomBlob(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestPrivateRepositoryRights runs the real distribution registry with token auth and three
// real nodes: A and B may pull a private repository, C may not. C gets none of the private
// image's bytes, by any path, and a clear error; B gets the image from A with the registry
// serving it about once; a public image is shared with C as before; and B's rights, revoked at
// the registry, stop being honoured within the token's lifetime and the grant's.
func TestPrivateRepositoryRights(t *testing.T) {
	reg := registrytest.Start(t)
	reg.SetTokenLife(3 * time.Second) // revocation below takes effect within this plus the grant TTL
	const ttl = time.Second
	reg.AddUser("alice", "pa")
	reg.AddUser("bob", "pb")
	reg.AddUser("carol", "pc")
	reg.Grant("alice", "team/private")
	reg.Grant("bob", "team/private")
	reg.SetPublic("team/public")
	privRepo, pubRepo := reg.Host+"/team/private", reg.Host+"/team/public"
	const chunkSize = 64 << 10
	privData, pubData := randomBlob(24*chunkSize, 1), randomBlob(8*chunkSize, 2)
	reg.PushBlob(t, "team/private", privData)
	reg.PushBlob(t, "team/public", pubData)
	manifest := func(b []byte) *chunk.Manifest {
		m, err := chunk.FixedManifest(bytes.NewReader(b), digest.SHA256.FromBytes(b), int64(len(b)), chunkSize)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	privM, pubM := manifest(privData), manifest(pubData)
	// A second image of the private repository, which B has not read when its rights are revoked.
	priv2Data := randomBlob(4*chunkSize, 3)
	reg.PushBlob(t, "team/private", priv2Data)
	priv2M := manifest(priv2Data)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	a := startRightsHost(t, reg, "alice", "pa", ttl)
	if !a.register(t, privM, privRepo) {
		t.Fatal("the registry's private repository probed as public")
	}
	if a.register(t, pubM, pubRepo) {
		t.Fatal("the registry's public repository probed as private")
	}
	// A keeps a private object and tag, as the daemon keeps a private image's bootstrap.
	secret := a.st.put([]byte("bootstrap of the private image"))
	a.st.tags[privRepo+":latest"] = secret
	a.n.SetPrivate(secret, privRepo)
	if _, err := a.read(ctx, privM); err != nil {
		t.Fatalf("A reading the private image from its registry: %v", err)
	}
	a.register(t, priv2M, privRepo)
	if _, err := a.read(ctx, priv2M); err != nil {
		t.Fatalf("A reading the second private image: %v", err)
	}
	if _, err := a.read(ctx, pubM); err != nil {
		t.Fatalf("A reading the public image: %v", err)
	}
	afterA := reg.BlobBytes()
	images := int64(len(privData) + len(priv2Data) + len(pubData))
	if afterA < images {
		t.Fatalf("the registry served %d bytes for A's reads of %d", afterA, images)
	}

	// B, with rights: proves them to A when it sees A announce the private blob, then reads the
	// image from A's cache.
	b := startRightsHost(t, reg, "bob", "pb", ttl, a.n)
	b.register(t, privM, privRepo)
	waitFor(t, 10*time.Second, "B to see A's chunks of the private blob (a grant at A)", func() bool {
		return b.n.Holders(privM.Blob, privM.Chunks[:1])[0] > 0
	})
	srcs, err := b.read(ctx, privM)
	if err != nil {
		t.Fatalf("B reading the private image: %v", err)
	}
	if srcs[chunk.SourceOrigin] != 0 {
		t.Errorf("B read %d chunks from its origin, want all from A: %v", srcs[chunk.SourceOrigin], srcs)
	}
	if got := float64(reg.BlobBytes()) / float64(images); got > 1.05 {
		t.Errorf("registry served %.2fx the images after B's read, want about 1x", got)
	}
	if s := a.n.RightsStats(); s.Granted == 0 {
		t.Errorf("A granted nothing: %+v", s)
	}
	obj, err := b.n.FetchObject(ctx, secret, 1<<20)
	if err != nil || !bytes.Equal(obj, []byte("bootstrap of the private image")) {
		t.Errorf("B fetching the private object from A: %q, %v", obj, err)
	}

	// C, without rights (its user exists but has no grant, so its registry gives it no token):
	// it presents a forged one.
	c := startRightsHostWith(t, reg, "carol", "pc", ttl, func(r Rights) Rights { return forgedRights{r} }, a.n, b.n)
	c.register(t, pubM, pubRepo)
	if !c.register(t, privM, privRepo) {
		t.Fatal("C probed the private repository as public")
	}
	waitFor(t, 10*time.Second, "C to see A's and B's maps", func() bool {
		return c.n.Holders(pubM.Blob, pubM.Chunks[:1])[0] >= 1 && c.n.SwarmSize(privM.Blob) == 2
	})
	waitFor(t, 10*time.Second, "C's token to be refused by A", func() bool { return a.n.RightsStats().Refused > 0 })
	if h := c.n.Holders(privM.Blob, privM.Chunks); slicesSum(h) != 0 {
		t.Errorf("C sees holders of private chunks through presence maps: %v", h)
	}
	deniedBefore := a.n.RightsStats().Denied + b.n.RightsStats().Denied
	c.n.mu.Lock()
	ch := c.n.host
	c.n.mu.Unlock()
	pc := privM.Chunks[3]
	for _, target := range []*Node{a.n, b.n} {
		for _, flags := range []byte{0, FlagFetchThrough} {
			req := Request{Flags: flags, Blob: privM.Blob, CID: pc.CID, Offset: pc.Offset, Length: pc.Length}
			_, data, _, err := c.n.exchange(ctx, ch, target.ID(), req)
			var se *statusError
			if !errors.As(err, &se) || se.st != StatusDenied || len(data) != 0 {
				t.Errorf("C asking %s directly for a private chunk (flags %d): %d bytes, %v; want denied", target.ID(), flags, len(data), err)
			}
		}
		for _, req := range []ObjectRequest{{Kind: ObjectByDigest, Name: secret.String(), Max: 1 << 20}, {Kind: ObjectTag, Name: privRepo + ":latest", Max: 200}} {
			data, err := c.n.objectExchange(ctx, ch, target.ID(), req)
			var se *statusError
			if target == a.n && (!errors.As(err, &se) || se.st != StatusDenied || len(data) != 0) {
				t.Errorf("C asking A for private %s: %q, %v; want denied", req.Name, data, err)
			}
		}
	}
	if _, _, err := c.n.Fetch(ctx, privM.Blob, pc, nil); err == nil {
		t.Error("C fetched a private chunk")
	} else if !strings.Contains(err.Error(), "team/private") || !errors.Is(err, origin.ErrUnauthorized) {
		t.Errorf("C's error does not say what is missing: %v", err)
	}
	if _, err := c.n.FetchObject(ctx, secret, 1<<20); err == nil {
		t.Error("C fetched the private object")
	}
	for _, ch := range privM.Chunks {
		if ok, _ := c.st.HasCID(ch.CID); ok {
			t.Fatalf("C holds private chunk %s", ch.CID)
		}
	}
	if d := a.n.RightsStats().Denied + b.n.RightsStats().Denied - deniedBefore; d < 4 {
		t.Errorf("A and B counted %d denials of C's requests, want at least 4", d)
	}

	// The public image is shared with C as before: all from peers.
	before := reg.BlobBytes()
	srcs, err = c.read(ctx, pubM)
	if err != nil {
		t.Fatalf("C reading the public image: %v", err)
	}
	if srcs[chunk.SourcePeer] != len(pubM.Chunks) || reg.BlobBytes() != before {
		t.Errorf("C's public read: sources %v, registry served %d bytes", srcs, reg.BlobBytes()-before)
	}

	// Revocation: B's rights are revoked at the registry. Within the token's lifetime and the
	// grant's, A stops serving B the repository's content, and B's own origin refuses too.
	reg.Revoke("bob", "team/private")
	b.register(t, priv2M, privRepo)
	time.Sleep(3*time.Second + ttl + 500*time.Millisecond)
	lost := priv2M.Chunks[1]
	if h := b.n.Holders(priv2M.Blob, priv2M.Chunks); slicesSum(h) != 0 {
		t.Errorf("revoked B still sees holders of private chunks: %v", h)
	}
	if _, _, err := b.n.Fetch(ctx, priv2M.Blob, lost, nil); err == nil {
		t.Error("B, revoked, still fetched a private chunk")
	} else if !errors.Is(err, origin.ErrUnauthorized) {
		t.Errorf("revoked B's error: %v", err)
	}
	b.n.mu.Lock()
	bh := b.n.host
	b.n.mu.Unlock()
	req := Request{Blob: priv2M.Blob, CID: lost.CID, Offset: lost.Offset, Length: lost.Length}
	if _, data, _, err := b.n.exchange(ctx, bh, a.n.ID(), req); !isDeniedErr(err) || len(data) != 0 {
		t.Errorf("revoked B asking A directly: %d bytes, %v; want denied", len(data), err)
	}
}

func isDeniedErr(err error) bool {
	var se *statusError
	return errors.As(err, &se) && se.st == StatusDenied
}

func slicesSum(v []int) int {
	s := 0
	for _, x := range v {
		s += x
	}
	return s
}
