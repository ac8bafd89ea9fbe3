// Package registrytest runs the real CNCF distribution registry, with token authentication, in
// a test process, behind a token server whose access rules a test changes as it goes: users,
// per-repository pull grants, public repositories, revocation and token lifetime. It is for
// tests only (it links the registry): no command imports it.
//
//	reg := registrytest.Start(t)
//	reg.AddUser("alice", "pw")
//	reg.Grant("alice", "team/app") // pull
//	reg.SetPublic("team/base")     // anonymous pull
//	d := reg.PushBlob(t, "team/app", data) // with a manifest tagged "latest", so the repository exists
//	reg.Revoke("alice", "team/app")        // new tokens for alice lack team/app
//	reg.BlobBytes()                        // blob bytes the registry has served
package registrytest

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
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	_ "github.com/distribution/distribution/v3/registry/auth/token"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

const (
	service = "shoal-test-registry"
	issuer  = "shoal-test-issuer"
	admin   = "registrytest-admin"
)

// Registry is a running distribution registry with token auth.
type Registry struct {
	// Host is the registry's host:port (plain HTTP on 127.0.0.1).
	Host string
	// TokenHost is the token server's host:port.
	TokenHost string

	key       *ecdsa.PrivateKey
	blobBytes atomic.Int64
	tokens    atomic.Int64

	mu       sync.Mutex
	users    map[string]string          // name -> password
	grants   map[string]map[string]bool // user -> repositories it may pull
	public   map[string]bool
	life     time.Duration
	adminPwd string
}

// Start runs the registry and its token server until the test ends.
func Start(t testing.TB) *Registry {
	t.Helper()
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(logrus.ErrorLevel)
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r := &Registry{key: key, users: map[string]string{}, grants: map[string]map[string]bool{}, public: map[string]bool{},
		life: 5 * time.Minute, adminPwd: fmt.Sprint(time.Now().UnixNano())}
	r.users[admin] = r.adminPwd
	pad := func(b *big.Int) string { return base64.RawURLEncoding.EncodeToString(b.FillBytes(make([]byte, 32))) }
	jwks := fmt.Sprintf(`{"keys":[{"kty":"EC","crv":"P-256","kid":"registrytest","x":%q,"y":%q}]}`, pad(key.X), pad(key.Y))
	jwksPath := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwksPath, []byte(jwks), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(http.HandlerFunc(r.serveToken))
	t.Cleanup(ts.Close)
	r.TokenHost = strings.TrimPrefix(ts.URL, "http://")

	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{
		"inmemory":    configuration.Parameters{},
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	cfg.HTTP.Secret = "registrytest-secret"
	cfg.Auth = configuration.Auth{"token": {
		"realm": ts.URL + "/token", "service": service, "issuer": issuer, "jwks": jwksPath,
	}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	app := handlers.NewApp(ctx, cfg)
	rs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			w = &countingWriter{ResponseWriter: w, n: &r.blobBytes}
		}
		app.ServeHTTP(w, req)
	}))
	t.Cleanup(rs.Close)
	r.Host = strings.TrimPrefix(rs.URL, "http://")
	return r
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	// Counted before the write: the client may have read the bytes before Write returns.
	c.n.Add(int64(len(b)))
	return c.ResponseWriter.Write(b)
}

// AddUser creates a user (no rights yet).
func (r *Registry) AddUser(name, password string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.users[name] = password
}

// Grant lets user pull repo (a repository name, without the host).
func (r *Registry) Grant(user, repo string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.grants[user] == nil {
		r.grants[user] = map[string]bool{}
	}
	r.grants[user][repo] = true
}

// Revoke takes repo from user: tokens issued from now on lack it. Tokens already issued stay
// valid until they expire, as at any token-auth registry.
func (r *Registry) Revoke(user, repo string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.grants[user], repo)
}

// SetPublic lets anyone, without credentials, pull repo.
func (r *Registry) SetPublic(repo string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.public[repo] = true
}

// SetTokenLife sets the lifetime of the tokens issued from now on (5 minutes at start).
func (r *Registry) SetTokenLife(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.life = d
}

// Admin returns the credentials of the user that may push and pull everything.
func (r *Registry) Admin() (user, password string) { return admin, r.adminPwd }

// BlobBytes is how many blob bytes the registry has served (GET .../blobs/...).
func (r *Registry) BlobBytes() int64 { return r.blobBytes.Load() }

// TokensIssued counts the tokens the token server has issued.
func (r *Registry) TokensIssued() int64 { return r.tokens.Load() }

// serveToken issues an ES256 JWT with the access the rules give: pull of public repositories
// for anyone (anonymous requests too), pull of granted repositories for their users, and
// everything for the admin. Bad credentials get a 401. Both flows of the distribution token
// spec are served: GET with Basic credentials, and the OAuth2 POST (grant_type=password, as
// containerd uses with a user name and password).
func (r *Registry) serveToken(w http.ResponseWriter, req *http.Request) {
	user, pass, hasAuth := req.BasicAuth()
	scopes := req.URL.Query()["scope"]
	if req.Method == http.MethodPost {
		if err := req.ParseForm(); err != nil || req.PostForm.Get("grant_type") != "password" {
			http.Error(w, "unsupported grant", http.StatusBadRequest)
			return
		}
		user, pass, hasAuth = req.PostForm.Get("username"), req.PostForm.Get("password"), true
		scopes = req.PostForm["scope"]
	}
	r.mu.Lock()
	if hasAuth && (r.users[user] == "" || r.users[user] != pass) {
		r.mu.Unlock()
		http.Error(w, "bad credentials", http.StatusUnauthorized)
		return
	}
	if !hasAuth {
		user = ""
	}
	type access struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	}
	acc := []access{}
	for _, s := range scopes {
		for _, one := range strings.Split(s, " ") {
			parts := strings.Split(one, ":")
			if len(parts) != 3 || parts[0] != "repository" {
				continue
			}
			repo := parts[1]
			actions := []string{}
			for _, a := range strings.Split(parts[2], ",") {
				switch {
				case user == admin:
					actions = append(actions, a)
				case a == "pull" && (r.public[repo] || user != "" && r.grants[user][repo]):
					actions = append(actions, a)
				}
			}
			acc = append(acc, access{Type: "repository", Name: repo, Actions: actions})
		}
	}
	life := r.life
	r.mu.Unlock()
	now := time.Now()
	claims := map[string]any{
		"iss": issuer, "sub": user, "aud": service,
		"exp": now.Add(life).Unix(), "nbf": now.Unix() - 1, "iat": now.Unix(),
		"jti": fmt.Sprint(r.tokens.Add(1)), "access": acc,
	}
	tok, err := r.sign(claims)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": int64(life / time.Second), "issued_at": now.UTC().Format(time.RFC3339)})
}

func (r *Registry) sign(claims map[string]any) (string, error) {
	hdr, _ := json.Marshal(map[string]string{"typ": "JWT", "alg": "ES256", "kid": "registrytest"})
	cl, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signing := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(cl)
	sum := sha256.Sum256([]byte(signing))
	rr, ss, err := ecdsa.Sign(crand.Reader, r.key, sum[:])
	if err != nil {
		return "", err
	}
	sig := append(rr.FillBytes(make([]byte, 32)), ss.FillBytes(make([]byte, 32))...)
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// PushBlob uploads data as a blob of repo, and a manifest naming it as a layer, tagged
// "latest" (a repository exists at the registry once it has a tag), as the admin. It returns
// the blob's digest.
func (r *Registry) PushBlob(t testing.TB, repo string, data []byte) digest.Digest {
	t.Helper()
	tok, err := r.sign(map[string]any{
		"iss": issuer, "sub": admin, "aud": service, "exp": time.Now().Add(time.Hour).Unix(), "nbf": time.Now().Unix() - 1,
		"iat": time.Now().Unix(), "jti": "push", "access": []map[string]any{{"type": "repository", "name": repo, "actions": []string{"pull", "push"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + r.Host + "/v2/" + repo
	do := func(method, u string, body []byte, ct string, want int) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, u, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %s: %s", method, u, resp.Status, msg)
		}
		return resp
	}
	blob := func(b []byte) digest.Digest {
		d := digest.SHA256.FromBytes(b)
		resp := do(http.MethodPost, base+"/blobs/uploads/", nil, "", http.StatusAccepted)
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil {
			t.Fatal(err)
		}
		if !loc.IsAbs() {
			loc, _ = url.Parse("http://" + r.Host + loc.String())
		}
		q := loc.Query()
		q.Set("digest", d.String())
		loc.RawQuery = q.Encode()
		do(http.MethodPut, loc.String(), b, "application/octet-stream", http.StatusCreated)
		return d
	}
	cfgb := []byte("{}")
	layer := blob(data)
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: blob(cfgb), Size: int64(len(cfgb))},
		Layers:    []ocispec.Descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: layer, Size: int64(len(data))}},
	}
	m.SchemaVersion = 2
	mb, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	do(http.MethodPut, base+"/manifests/latest", mb, ocispec.MediaTypeImageManifest, http.StatusCreated)
	return layer
}
