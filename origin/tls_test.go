package origin

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestCustomCA reads over HTTPS from a server whose certificate only the CA file vouches for.
func TestCustomCA(t *testing.T) {
	im := makeLayout(t, t.TempDir(), 40, "")
	srv, err := NewServer(map[string]string{"img": im.dir}, ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv)
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshakes refused below
	ts.StartTLS()
	defer ts.Close()
	host := strings.TrimPrefix(ts.URL, "https://")
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.CAFile = ca
	src, err := Open(host+"/img", cfg)
	if err != nil {
		t.Fatal(err)
	}
	testSource(t, src, im)

	// Without the CA: a TLS error at once, not retries.
	src, _ = Open(host+"/img", testConfig())
	if _, _, err := src.Resolve(context.Background()); err == nil || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("unknown CA: %v", err)
	}
}

// TestDockerConfigCredentials reads Basic credentials from a Docker config.json.
func TestDockerConfigCredentials(t *testing.T) {
	env := startDistribution(t, authBasic)
	im := makeLayout(t, t.TempDir(), 41, "")
	cfg := testConfig(env.host)
	cfg.DockerConfig = filepath.Join(t.TempDir(), "config.json")
	auth := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPass))
	if err := os.WriteFile(cfg.DockerConfig, []byte(`{"auths":{"https://other.example/v1/":{"auth":"eDp5"},"http://`+env.host+`/v2/":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Push(context.Background(), im.dir, env.host+"/img:latest", cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	src, err := Open(env.host+"/img", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if d, _, err := src.Resolve(context.Background()); err != nil || d.Digest != im.desc.Digest {
		t.Fatalf("Resolve: %s, %v", d.Digest, err)
	}
	// Flags win over the file.
	cfg.Username, cfg.Password = testUser, "wrong"
	src, _ = Open(env.host+"/img", cfg)
	if _, _, err := src.Resolve(context.Background()); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong password from flags: %v", err)
	}
}

// TestMaxConcurrent: no more requests in flight to one origin than the limit.
func TestMaxConcurrent(t *testing.T) {
	im := makeLayout(t, t.TempDir(), 42, "")
	srv, err := NewServer(map[string]string{"img": im.dir}, ServerConfig{Rate: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var inflight, peak atomic.Int64
	host := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		srv.ServeHTTP(w, r)
	}))
	cfg := testConfig(host)
	cfg.MaxConcurrent = 3
	src, _ := Open(host+"/img", cfg)
	big := im.biggest()
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			if _, err := src.ReadRange(context.Background(), big.Digest, int64(i)*65536, 65536); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > 3 {
		t.Fatalf("peak of %d requests in flight, limit 3", p)
	}
}

// TestDockerCredentialHelper: credentials held by a Docker credential helper (credsStore) are
// fetched with the helper protocol when the registry asks for them. The helper here is a small
// script that speaks the protocol, as docker-credential-ecr-login or -gcloud would.
func TestDockerCredentialHelper(t *testing.T) {
	env := startDistribution(t, authBasic)
	im := makeLayout(t, t.TempDir(), 43, "")
	bin := t.TempDir()
	calls := filepath.Join(bin, "calls")
	helper := "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread host\necho \"$host\" >> " + calls + "\n" +
		"if [ \"$host\" = \"" + env.host + "\" ]; then printf '{\"ServerURL\":\"%s\",\"Username\":\"" + testUser + "\",\"Secret\":\"" + testPass + "\"}' \"$host\"; " +
		"else echo 'credentials not found in native keychain'; exit 1; fi\n"
	if err := os.WriteFile(filepath.Join(bin, "docker-credential-shoaltest"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	cfg := testConfig(env.host)
	cfg.DockerConfig = filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfg.DockerConfig, []byte(`{"credsStore":"shoaltest"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Push(context.Background(), im.dir, env.host+"/img:latest", cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	src, err := Open(env.host+"/img", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if d, _, err := src.Resolve(context.Background()); err != nil || d.Digest != im.desc.Digest {
		t.Fatalf("Resolve with helper credentials: %s, %v", d.Digest, err)
	}
	if b, _ := os.ReadFile(calls); !strings.Contains(string(b), env.host) {
		t.Fatalf("helper was not asked for %s: %q", env.host, b)
	}
	// A helper that has nothing for the host: anonymous, and the registry says no.
	if err := os.WriteFile(cfg.DockerConfig, []byte(`{"credHelpers":{"`+env.host+`":"none"},"credsStore":"missing"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "docker-credential-none"), []byte("#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	src, _ = Open(env.host+"/img", cfg)
	if _, _, err := src.Resolve(context.Background()); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("no credentials from the helper: %v, want ErrUnauthorized", err)
	}
}
