package origin

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/auth/token"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

func init() {
	// The distribution registry logs every request through logrus.
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(logrus.ErrorLevel)
}

// testImage is a small Shoal-like image in an OCI layout.
type testImage struct {
	dir      string
	desc     ocispec.Descriptor // the manifest
	manifest []byte
	blobs    map[digest.Digest][]byte
	layers   []ocispec.Descriptor
}

// biggest returns the largest layer.
func (im *testImage) biggest() ocispec.Descriptor {
	var b ocispec.Descriptor
	for _, l := range im.layers {
		if l.Size > b.Size {
			b = l
		}
	}
	return b
}

// makeLayout writes an OCI layout: a config, a bootstrap, two data blobs and a chunk manifest,
// random but determined by seed, with the manifest named refName in index.json.
func makeLayout(t testing.TB, dir string, seed uint64, refName string) *testImage {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed+1))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	im := &testImage{dir: dir, blobs: map[digest.Digest][]byte{}}
	put := func(b []byte) digest.Digest {
		d := digest.SHA256.FromBytes(b)
		p := filepath.Join(dir, "blobs", "sha256", d.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		im.blobs[d] = b
		return d
	}
	layer := func(mt string, b []byte) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: mt, Digest: put(b), Size: int64(len(b))}
	}
	cfg := []byte("{}")
	im.layers = []ocispec.Descriptor{
		layer("application/vnd.shoal.erofs.bootstrap.v1", random(10<<10)),
		layer("application/vnd.shoal.erofs.blob.v1", random(300<<10+17)),
		layer("application/vnd.shoal.erofs.blob.v1", random(1<<20+123)),
		layer("application/vnd.shoal.chunks.v1+json", []byte(fmt.Sprintf(`{"schemaVersion":1,"seed":%d}`, seed))),
	}
	m := ocispec.Manifest{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       ocispec.Descriptor{MediaType: ArtifactType, Digest: put(cfg), Size: int64(len(cfg))},
		Layers:       im.layers,
	}
	m.SchemaVersion = 2
	mb, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	im.manifest = mb
	im.desc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType, Digest: put(mb), Size: int64(len(mb))}
	idxDesc := im.desc
	if refName != "" {
		idxDesc.Annotations = map[string]string{ocispec.AnnotationRefName: refName}
	}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{idxDesc}}
	idx.SchemaVersion = 2
	ib, _ := json.Marshal(idx)
	if err := os.WriteFile(filepath.Join(dir, "index.json"), ib, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return im
}

// testConfig is a client Config for loopback servers: plain HTTP, quick retries, short timeout.
func testConfig(hosts ...string) Config {
	c := DefaultConfig()
	c.Insecure = hosts
	c.DockerConfig = "-"
	c.RetryBase = 5 * time.Millisecond
	c.RetryMax = 200 * time.Millisecond
	c.Timeout = 2 * time.Second
	c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return c
}

func hostOf(t testing.TB, rawURL string) string {
	t.Helper()
	return strings.TrimPrefix(rawURL, "http://")
}

// serve starts h on 127.0.0.1 for the test's lifetime and returns host:port.
func serve(t testing.TB, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h) // binds 127.0.0.1
	t.Cleanup(srv.Close)
	return hostOf(t, srv.URL)
}

// Auth modes of the test registry.
const (
	authNone  = "none"
	authBasic = "basic"
	authToken = "token"
)

const (
	testUser = "shoal"
	testPass = "s3cret"
)

// registryEnv is a CNCF distribution registry running in the test process.
type registryEnv struct {
	host   string
	tokens *tokenServer // for authToken
}

// startDistribution runs the distribution registry (in-memory storage) with the given auth.
func startDistribution(t testing.TB, auth string) *registryEnv {
	t.Helper()
	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{
		"inmemory":    configuration.Parameters{},
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	cfg.HTTP.Secret = "shoal-test-secret"
	env := &registryEnv{}
	switch auth {
	case authBasic:
		hash, err := bcrypt.GenerateFromPassword([]byte(testPass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "htpasswd")
		if err := os.WriteFile(p, []byte(testUser+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.Auth = configuration.Auth{"htpasswd": {"realm": "shoal-test", "path": p}}
	case authToken:
		env.tokens = newTokenServer(t)
		cfg.Auth = configuration.Auth{"token": {
			"realm": "http://" + env.tokens.host + "/token", "service": "shoal-registry", "issuer": "shoal-test-issuer",
			"jwks": env.tokens.jwksPath,
		}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	env.host = serve(t, handlers.NewApp(ctx, cfg))
	return env
}

// tokenServer issues ES256 JWTs that the registry's token auth accepts, for testUser only.
type tokenServer struct {
	host     string
	key      *ecdsa.PrivateKey
	jwksPath string
	life     atomic.Int64 // token lifetime in seconds (exp claim)
	claimed  atomic.Int64 // expires_in told to the client; 0: same as life
	issued   atomic.Int64
	dead     atomic.Int64 // this many next tokens are issued already expired (the registry rejects them)
}

func newTokenServer(t testing.TB) *tokenServer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ts := &tokenServer{key: key}
	ts.life.Store(300)
	pad := func(b *big.Int) string { return base64.RawURLEncoding.EncodeToString(b.FillBytes(make([]byte, 32))) }
	jwks := fmt.Sprintf(`{"keys":[{"kty":"EC","crv":"P-256","kid":"shoal-test","x":%q,"y":%q}]}`, pad(key.X), pad(key.Y))
	ts.jwksPath = filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(ts.jwksPath, []byte(jwks), 0o600); err != nil {
		t.Fatal(err)
	}
	ts.host = serve(t, http.HandlerFunc(ts.serveToken))
	return ts
}

func (ts *tokenServer) serveToken(w http.ResponseWriter, r *http.Request) {
	u, p, ok := r.BasicAuth()
	if !ok || u != testUser || p != testPass {
		http.Error(w, "bad credentials", http.StatusUnauthorized)
		return
	}
	type access struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	}
	var acc []access
	for _, s := range r.URL.Query()["scope"] {
		for _, one := range strings.Split(s, " ") {
			parts := strings.Split(one, ":")
			if len(parts) != 3 {
				continue
			}
			acc = append(acc, access{Type: parts[0], Name: parts[1], Actions: strings.Split(parts[2], ",")})
		}
	}
	now := time.Now()
	life := ts.life.Load()
	claimedLife := life
	if ts.dead.Add(-1) >= 0 {
		life = -60 // expired a minute ago, leeway included: refused at once
	} else {
		ts.dead.Store(0)
	}
	claims := map[string]any{
		"iss": "shoal-test-issuer", "sub": u, "aud": r.URL.Query().Get("service"),
		// The registry accepts a token until token.Leeway after its exp: take that off so that
		// the token is refused life seconds from now.
		"exp": now.Unix() + life - int64(token.Leeway/time.Second), "nbf": now.Unix() - 1, "iat": now.Unix(),
		"jti": fmt.Sprint(ts.issued.Add(1)), "access": acc,
	}
	hdr, _ := json.Marshal(map[string]string{"typ": "JWT", "alg": "ES256", "kid": "shoal-test"})
	cl, _ := json.Marshal(claims)
	signing := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(cl)
	sum := sha256.Sum256([]byte(signing))
	rr, ss, err := ecdsa.Sign(crand.Reader, ts.key, sum[:])
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	sig := append(rr.FillBytes(make([]byte, 32)), ss.FillBytes(make([]byte, 32))...)
	tok := signing + "." + base64.RawURLEncoding.EncodeToString(sig)
	claimed := ts.claimed.Load()
	if claimed == 0 {
		claimed = claimedLife
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"token": tok, "expires_in": claimed, "issued_at": now.UTC().Format(time.RFC3339)})
}

// readAll reads a whole blob through Open.
func readAll(ctx context.Context, src Source, d digest.Digest) ([]byte, error) {
	rc, err := src.Open(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var buf bytes.Buffer
	_, err = io.Copy(&buf, rc)
	return buf.Bytes(), err
}

// listen binds a loopback port for Server.Run.
func listen(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}
