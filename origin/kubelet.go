package origin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// Kubelet credential provider plugins (https://kubernetes.io/docs/tasks/administer-cluster/kubelet-credential-provider/):
// the way a cluster hands out short-lived registry credentials (ECR, GCR, ACR). The kubelet's
// CredentialProviderConfig names each plugin, the images it serves (matchImages) and a default
// cache duration; a plugin is an executable in a bin directory that reads a
// CredentialProviderRequest (the image) on stdin and writes a CredentialProviderResponse (auth
// per registry or repository, a cache key type and duration) on stdout. Shoal runs the same
// plugins with the same files, so a node's daemon pulls what its kubelet may.

// ErrProviderConfig: a credential provider config file that cannot be used.
var ErrProviderConfig = errors.New("bad kubelet credential provider config")

const (
	// maxProviderOutput bounds what a plugin may write on stdout.
	maxProviderOutput = 1 << 20
	// providerTimeout bounds one plugin run.
	providerTimeout = 30 * time.Second
)

// providerAPIVersions are the credentialprovider.kubelet.k8s.io versions whose request and
// response Shoal speaks (the fields it uses are the same in all three).
var providerAPIVersions = map[string]bool{
	"credentialprovider.kubelet.k8s.io/v1":       true,
	"credentialprovider.kubelet.k8s.io/v1beta1":  true,
	"credentialprovider.kubelet.k8s.io/v1alpha1": true,
}

// kubeletProvider is one plugin of a kubelet CredentialProviderConfig (kubelet.config.k8s.io).
type kubeletProvider struct {
	Name                 string   `yaml:"name"`
	MatchImages          []string `yaml:"matchImages"`
	DefaultCacheDuration string   `yaml:"defaultCacheDuration"`
	APIVersion           string   `yaml:"apiVersion"`
	Args                 []string `yaml:"args"`
	Env                  []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`

	defaultCache time.Duration
}

// providerResponse is a CredentialProviderResponse.
type providerResponse struct {
	APIVersion    string                       `json:"apiVersion"`
	Kind          string                       `json:"kind"`
	CacheKeyType  string                       `json:"cacheKeyType"`
	CacheDuration *string                      `json:"cacheDuration"`
	Auth          map[string]providerAuthEntry `json:"auth"`
}

type providerAuthEntry struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// KubeletProviders runs kubelet credential provider plugins for the images they match and
// keeps their answers as long as they say (cacheDuration, per image, registry or globally),
// refreshing them a little before they lapse. Credentials are never logged. Safe for concurrent
// use; share one among all registries (NewRegistry does, through Config).
type KubeletProviders struct {
	binDir    string
	providers []kubeletProvider
	now       func() time.Time

	mu    sync.Mutex
	cache map[string]cachedAuth // by provider name + cache key
	runs  map[string]*providerRun
}

type cachedAuth struct {
	auth   map[string]providerAuthEntry
	expiry time.Time
}

type providerRun struct {
	done chan struct{}
	resp providerResponse
	err  error
}

// LoadKubeletProviders reads a kubelet CredentialProviderConfig (YAML or JSON) whose plugins
// are executables in binDir. It runs nothing.
func LoadKubeletProviders(configPath, binDir string) (*KubeletProviders, error) {
	b, err := os.ReadFile(configPath)
	if err != nil {
		return nil, fmt.Errorf("kubelet credential provider config: %w", err)
	}
	k, err := parseKubeletConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", configPath, err)
	}
	if binDir == "" {
		return nil, fmt.Errorf("kubelet credential provider config %s: a bin directory (the kubelet's --image-credential-provider-bin-dir) must be given: %w", configPath, ErrProviderConfig)
	}
	for _, p := range k.providers {
		if st, err := os.Stat(filepath.Join(binDir, p.Name)); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("kubelet credential provider %q: no executable %s: %w", p.Name, filepath.Join(binDir, p.Name), ErrProviderConfig)
		}
	}
	k.binDir = binDir
	return k, nil
}

func parseKubeletConfig(b []byte) (*KubeletProviders, error) {
	var cfg struct {
		APIVersion string            `yaml:"apiVersion"`
		Kind       string            `yaml:"kind"`
		Providers  []kubeletProvider `yaml:"providers"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProviderConfig, err)
	}
	if cfg.Kind != "CredentialProviderConfig" || !strings.HasPrefix(cfg.APIVersion, "kubelet.config.k8s.io/") {
		return nil, fmt.Errorf("%w: kind %q apiVersion %q, want a kubelet.config.k8s.io CredentialProviderConfig", ErrProviderConfig, cfg.Kind, cfg.APIVersion)
	}
	if len(cfg.Providers) == 0 {
		return nil, fmt.Errorf("%w: no providers", ErrProviderConfig)
	}
	seen := map[string]bool{}
	for i := range cfg.Providers {
		p := &cfg.Providers[i]
		switch {
		case p.Name == "" || p.Name == "." || p.Name == ".." || strings.ContainsAny(p.Name, `/\`):
			return nil, fmt.Errorf("%w: provider name %q must be a file name in the bin directory", ErrProviderConfig, p.Name)
		case seen[p.Name]:
			return nil, fmt.Errorf("%w: provider %q is named twice", ErrProviderConfig, p.Name)
		case len(p.MatchImages) == 0:
			return nil, fmt.Errorf("%w: provider %q has no matchImages", ErrProviderConfig, p.Name)
		case !providerAPIVersions[p.APIVersion]:
			return nil, fmt.Errorf("%w: provider %q: apiVersion %q, want credentialprovider.kubelet.k8s.io/v1", ErrProviderConfig, p.Name, p.APIVersion)
		}
		seen[p.Name] = true
		d, err := time.ParseDuration(p.DefaultCacheDuration)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("%w: provider %q: defaultCacheDuration %q is not a duration such as 12h", ErrProviderConfig, p.Name, p.DefaultCacheDuration)
		}
		p.defaultCache = d
		for _, m := range p.MatchImages {
			if _, err := matchImage(m, "example.com/x"); err != nil {
				return nil, fmt.Errorf("%w: provider %q: matchImages %q: %v", ErrProviderConfig, p.Name, m, err)
			}
		}
	}
	return &KubeletProviders{providers: cfg.Providers, now: time.Now, cache: map[string]cachedAuth{}, runs: map[string]*providerRun{}}, nil
}

// match reports whether some provider serves image ("host/name[:tag]"); false for a nil k.
func (k *KubeletProviders) match(image string) bool { return k != nil && k.provider(image) != nil }

func (k *KubeletProviders) provider(image string) *kubeletProvider {
	for i := range k.providers {
		for _, m := range k.providers[i].MatchImages {
			if ok, _ := matchImage(m, image); ok {
				return &k.providers[i]
			}
		}
	}
	return nil
}

// credentials returns the credentials the first matching provider gives for image, from the
// cache while its answer holds (refreshed when a tenth of its life is left). ok is false when
// no provider matches or its answer has no entry for image.
func (k *KubeletProviders) credentials(ctx context.Context, image string) (credentials, bool, error) {
	p := k.provider(image)
	if p == nil {
		return credentials{}, false, nil
	}
	host, _, _ := strings.Cut(image, "/")
	now := k.now()
	k.mu.Lock()
	for _, key := range []string{p.Name + "\x00image\x00" + image, p.Name + "\x00registry\x00" + host, p.Name + "\x00global"} {
		if c, ok := k.cache[key]; ok {
			if now.Before(c.expiry) {
				k.mu.Unlock()
				cr, found := pickAuth(c.auth, image)
				return cr, found, nil
			}
			delete(k.cache, key)
		}
	}
	// One run per provider and image at a time; others wait for its answer.
	runKey := p.Name + "\x00" + image
	run := k.runs[runKey]
	if run == nil {
		run = &providerRun{done: make(chan struct{})}
		k.runs[runKey] = run
		k.mu.Unlock()
		run.resp, run.err = k.run(ctx, p, image)
		k.mu.Lock()
		delete(k.runs, runKey)
		if run.err == nil {
			k.store(p, image, host, run.resp, now)
		}
		close(run.done)
	}
	k.mu.Unlock()
	select {
	case <-run.done:
	case <-ctx.Done():
		return credentials{}, false, context.Cause(ctx)
	}
	if run.err != nil {
		return credentials{}, false, run.err
	}
	cr, found := pickAuth(run.resp.Auth, image)
	return cr, found, nil
}

// store caches a response under its cache key for its duration; k.mu must be held.
func (k *KubeletProviders) store(p *kubeletProvider, image, host string, resp providerResponse, now time.Time) {
	d := p.defaultCache
	if resp.CacheDuration != nil {
		if v, err := time.ParseDuration(*resp.CacheDuration); err == nil {
			d = v
		}
	}
	if d <= 0 {
		return // the plugin asked not to be cached
	}
	key := p.Name + "\x00image\x00" + image
	switch resp.CacheKeyType {
	case "Registry":
		key = p.Name + "\x00registry\x00" + host
	case "Global":
		key = p.Name + "\x00global"
	}
	// Refreshed before it lapses: a request never leaves with credentials about to expire.
	k.cache[key] = cachedAuth{auth: resp.Auth, expiry: now.Add(d - d/10)}
}

// run executes the plugin for image and decodes its answer. Its stderr goes into the error (a
// plugin's own message), never its stdout (which holds secrets).
func (k *KubeletProviders) run(ctx context.Context, p *kubeletProvider, image string) (providerResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, providerTimeout)
	defer cancel()
	req, _ := json.Marshal(map[string]string{"apiVersion": p.APIVersion, "kind": "CredentialProviderRequest", "image": image})
	cmd := exec.CommandContext(ctx, filepath.Join(k.binDir, p.Name), p.Args...)
	cmd.Env = os.Environ()
	for _, e := range p.Env {
		cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
	}
	cmd.Stdin = bytes.NewReader(req)
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxProviderOutput, 4096
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	what := fmt.Sprintf("kubelet credential provider %s for %s", p.Name, image)
	if err := cmd.Run(); err != nil {
		return providerResponse{}, fmt.Errorf("%s: %w: %s", what, err, strings.TrimSpace(stderr.String()))
	}
	if stdout.over {
		return providerResponse{}, fmt.Errorf("%s: more than %d bytes of output: %w", what, maxProviderOutput, ErrBadResponse)
	}
	resp, err := parseProviderResponse(stdout.Bytes(), p.APIVersion)
	if err != nil {
		return providerResponse{}, fmt.Errorf("%s: %w", what, err)
	}
	return resp, nil
}

// parseProviderResponse decodes a CredentialProviderResponse of apiVersion want.
func parseProviderResponse(b []byte, want string) (providerResponse, error) {
	var resp providerResponse
	if err := json.Unmarshal(b, &resp); err != nil {
		return providerResponse{}, fmt.Errorf("response is not JSON: %w", ErrBadResponse)
	}
	if resp.Kind != "CredentialProviderResponse" || resp.APIVersion != want {
		return providerResponse{}, fmt.Errorf("response kind %q apiVersion %q, want CredentialProviderResponse %s: %w", truncate(resp.Kind, 64), truncate(resp.APIVersion, 64), want, ErrBadResponse)
	}
	switch resp.CacheKeyType {
	case "Image", "Registry", "Global":
	default:
		return providerResponse{}, fmt.Errorf("response cacheKeyType %q, want Image, Registry or Global: %w", truncate(resp.CacheKeyType, 64), ErrBadResponse)
	}
	if resp.CacheDuration != nil {
		if d, err := time.ParseDuration(*resp.CacheDuration); err != nil || d < 0 {
			return providerResponse{}, fmt.Errorf("response cacheDuration %q is not a duration: %w", truncate(*resp.CacheDuration, 64), ErrBadResponse)
		}
	}
	for key := range resp.Auth {
		if _, err := matchImage(key, "example.com/x"); err != nil {
			return providerResponse{}, fmt.Errorf("response auth key %q: %v: %w", truncate(key, 100), err, ErrBadResponse)
		}
	}
	return resp, nil
}

// pickAuth chooses the auth entry for image: of the keys that match it, the most specific
// (longest), as the kubelet does.
func pickAuth(auth map[string]providerAuthEntry, image string) (credentials, bool) {
	best := ""
	found := false
	for key := range auth {
		if ok, _ := matchImage(key, image); ok && (!found || len(key) > len(best) || len(key) == len(best) && key < best) {
			best, found = key, true
		}
	}
	if !found {
		return credentials{}, false
	}
	a := auth[best]
	return credentials{Username: a.Username, Password: a.Password}, true
}

// matchImage matches image ("host[:port]/path[:tag]") against a kubelet matchImages pattern:
// the host's dot-separated parts one for one, each a glob ("*.example.com" matches
// "a.example.com", not "example.com" nor "a.b.example.com"); the port, when the pattern has
// one, exactly; the pattern's path, when it has one, as a prefix of the image's path at a '/'.
// An optional scheme is ignored.
func matchImage(pattern, image string) (bool, error) {
	if i := strings.Index(pattern, "://"); i >= 0 {
		pattern = pattern[i+3:]
	}
	if pattern == "" || len(pattern) > 512 {
		return false, errors.New("empty or too long")
	}
	phost, ppath, _ := strings.Cut(pattern, "/")
	ihost, ipath, _ := strings.Cut(image, "/")
	if i := strings.LastIndexByte(ipath, '@'); i >= 0 {
		ipath = ipath[:i]
	}
	if i := strings.LastIndexByte(ipath, ':'); i >= 0 && !strings.Contains(ipath[i:], "/") {
		ipath = ipath[:i]
	}
	pname, pport, pHasPort := strings.Cut(phost, ":")
	iname, iport, _ := strings.Cut(ihost, ":")
	pparts, iparts := strings.Split(pname, "."), strings.Split(iname, ".")
	for _, part := range pparts {
		if _, err := path.Match(part, ""); err != nil {
			return false, err
		}
	}
	if len(pparts) != len(iparts) || (pHasPort && pport != iport) {
		return false, nil
	}
	for i, part := range pparts {
		if ok, _ := path.Match(part, iparts[i]); !ok {
			return false, nil
		}
	}
	if ppath = strings.TrimSuffix(ppath, "/"); ppath != "" && ipath != ppath && !strings.HasPrefix(ipath, ppath+"/") {
		return false, nil
	}
	return true, nil
}

// limitedBuffer keeps at most max bytes and notes whether more came.
type limitedBuffer struct {
	bytes.Buffer
	max  int
	over bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.Len(); room < len(p) {
		l.over = true
		if room > 0 {
			l.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return l.Buffer.Write(p)
}
