package origin

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-p2p/shoal/internal/registrytest"
)

// providerSource is a kubelet credential provider plugin: it answers each
// CredentialProviderRequest with the credentials in its environment for the auth key in its
// environment, and appends each image asked for to $RUNS (so the test sees how often the cache
// let it run). PROVIDER_FAIL makes it fail the way plugins do (exit 1, a message on stderr).
const providerSource = `package main

import (
	"encoding/json"
	"fmt"
	"os"
)

func main() {
	var req struct {
		APIVersion string ` + "`json:\"apiVersion\"`" + `
		Kind       string ` + "`json:\"kind\"`" + `
		Image      string ` + "`json:\"image\"`" + `
	}
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil || req.Kind != "CredentialProviderRequest" {
		fmt.Fprintln(os.Stderr, "bad request", err)
		os.Exit(2)
	}
	f, _ := os.OpenFile(os.Getenv("RUNS"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	fmt.Fprintln(f, req.Image, os.Args[1:])
	f.Close()
	if os.Getenv("PROVIDER_FAIL") != "" {
		fmt.Fprintln(os.Stderr, "metadata service unreachable")
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"apiVersion": req.APIVersion, "kind": "CredentialProviderResponse",
		"cacheKeyType": "Registry", "cacheDuration": os.Getenv("CACHE"),
		"auth": map[string]any{os.Getenv("KEY"): map[string]string{"username": os.Getenv("USER_NAME"), "password": os.Getenv("USER_PASS")}},
	})
}
`

// buildProvider compiles providerSource into dir/name.
func buildProvider(t *testing.T, dir, name string) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "main.go")
	if err := os.WriteFile(src, []byte(providerSource), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), src)
	cmd.Env = append(os.Environ(), "GO111MODULE=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the provider plugin: %v\n%s", err, out)
	}
}

func runsOf(t *testing.T, path string) int {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// TestKubeletCredentialProvider runs a real plugin executable, through a kubelet
// CredentialProviderConfig, against the real distribution registry with token auth: the
// repository it matches is pulled with the plugin's credentials, its answer is cached for the
// cacheDuration it gave (per registry) and asked again after, a repository it does not match
// gets no credentials, and a failing plugin's message reaches the error.
func TestKubeletCredentialProvider(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go toolchain to build the provider plugin")
	}
	reg := registrytest.Start(t)
	reg.AddUser("node", "node-secret")
	reg.Grant("node", "team/app")
	reg.PushBlob(t, "team/app", []byte("a layer"))
	bin := t.TempDir()
	buildProvider(t, bin, "test-provider")
	runs := filepath.Join(t.TempDir(), "runs")
	cfgPath := filepath.Join(t.TempDir(), "providers.yaml")
	conf := `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: test-provider
    matchImages: ["` + reg.Host + `/team", "*.invalid"]
    defaultCacheDuration: 1h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [--flag]
    env:
      - {name: RUNS, value: "` + runs + `"}
      - {name: KEY, value: "` + reg.Host + `"}
      - {name: USER_NAME, value: node}
      - {name: USER_PASS, value: node-secret}
      - {name: CACHE, value: 1500ms}
`
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	kp, err := LoadKubeletProviders(cfgPath, bin)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(reg.Host)
	cfg.CredentialProviders = kp
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	pr, err := NewPullRights(cfg)
	if err != nil {
		t.Fatal(err)
	}
	repo := reg.Host + "/team/app"
	if _, _, err := pr.PullToken(ctx, repo); err != nil {
		t.Fatalf("pull token with the plugin's credentials: %v", err)
	}
	if n := runsOf(t, runs); n != 1 {
		t.Fatalf("plugin ran %d times, want 1", n)
	}
	// Cached per registry: another repository of it, and a new client, do not run it again.
	for range 3 {
		if _, _, err := kp.credentials(ctx, reg.Host+"/team/other"); err != nil {
			t.Fatal(err)
		}
	}
	if n := runsOf(t, runs); n != 1 {
		t.Errorf("plugin ran %d times within its cacheDuration, want 1", n)
	}
	time.Sleep(1500 * time.Millisecond)
	c, ok, err := kp.credentials(ctx, repo)
	if err != nil || !ok || c.Username != "node" || c.Password != "node-secret" {
		t.Fatalf("credentials after the cache lapsed: %v %v %v", c.Username, ok, err)
	}
	if n := runsOf(t, runs); n != 2 {
		t.Errorf("plugin ran %d times after its cacheDuration, want 2", n)
	}
	if b, _ := os.ReadFile(runs); !strings.Contains(string(b), "team/app [--flag]") {
		t.Errorf("plugin's requests: %q, want the image and the configured args", b)
	}

	// A repository no provider matches has no credentials: the registry refuses.
	other, err := NewRegistry(Reference{Registry: reg.Host, Repository: "elsewhere/app", Tag: "latest"}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.PullToken(ctx); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("unmatched repository: %v, want unauthorized", err)
	}

	// A failing plugin: its stderr names the trouble.
	t.Setenv("PROVIDER_FAIL", "1")
	if _, _, err := kp.credentials(ctx, "x.invalid/app"); err == nil || !strings.Contains(err.Error(), "metadata service unreachable") {
		t.Errorf("failing plugin: %v", err)
	}
}

func TestMatchImage(t *testing.T) {
	for _, tc := range []struct {
		pattern, image string
		want           bool
	}{
		{"*.dkr.ecr.*.amazonaws.com", "123.dkr.ecr.us-east-1.amazonaws.com/app:v1", true},
		{"*.dkr.ecr.*.amazonaws.com", "dkr.ecr.us-east-1.amazonaws.com/app", false},
		{"*.example.com", "a.b.example.com/x", false},
		{"example.com", "example.com:5000/x", true},
		{"example.com:5000", "example.com/x", false},
		{"example.com:5000", "example.com:5000/x", true},
		{"https://example.com/team", "example.com/team/app:v1", true},
		{"example.com/team", "example.com/teams/app", false},
		{"example.com/team/app", "example.com/team/app@sha256:abc", true},
		{"*", "localhost/x", true},
	} {
		if got, err := matchImage(tc.pattern, tc.image); err != nil || got != tc.want {
			t.Errorf("matchImage(%q, %q) = %v, %v; want %v", tc.pattern, tc.image, got, err, tc.want)
		}
	}
	if _, err := matchImage("[bad", "x/y"); err == nil {
		t.Error("a malformed glob was accepted")
	}
}

// TestKubeletConfigErrors: configs a kubelet would refuse are refused with what is wrong.
func TestKubeletConfigErrors(t *testing.T) {
	for name, conf := range map[string]string{
		"kind":     "apiVersion: kubelet.config.k8s.io/v1\nkind: Pod\nproviders: []\n",
		"none":     "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders: []\n",
		"path":     "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n- {name: ../x, matchImages: [a], defaultCacheDuration: 1h, apiVersion: credentialprovider.kubelet.k8s.io/v1}\n",
		"version":  "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n- {name: x, matchImages: [a], defaultCacheDuration: 1h, apiVersion: v9}\n",
		"duration": "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n- {name: x, matchImages: [a], defaultCacheDuration: soon, apiVersion: credentialprovider.kubelet.k8s.io/v1}\n",
		"unknown":  "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n- {name: x, matchImage: [a], defaultCacheDuration: 1h, apiVersion: credentialprovider.kubelet.k8s.io/v1}\n",
		"glob":     "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n- {name: x, matchImages: ['[a'], defaultCacheDuration: 1h, apiVersion: credentialprovider.kubelet.k8s.io/v1}\n",
	} {
		if _, err := parseKubeletConfig([]byte(conf)); !errors.Is(err, ErrProviderConfig) {
			t.Errorf("%s: %v, want ErrProviderConfig", name, err)
		}
	}
}

func FuzzParseProviderResponse(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","cacheDuration":"1h","auth":{"*.example.com":{"username":"u","password":"p"}}}`))
	f.Add([]byte(`{"kind":"CredentialProviderResponse"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		resp, err := parseProviderResponse(b, "credentialprovider.kubelet.k8s.io/v1")
		if err != nil {
			return
		}
		_, _ = pickAuth(resp.Auth, "a.example.com/x:y")
	})
}

func FuzzParseKubeletConfig(f *testing.F) {
	f.Add([]byte("apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n- {name: x, matchImages: ['*.a'], defaultCacheDuration: 1h, apiVersion: credentialprovider.kubelet.k8s.io/v1}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := parseKubeletConfig(b)
		if err == nil {
			_ = k.match("a.a/x")
		}
	})
}
