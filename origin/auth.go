package origin

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"
)

// credentials for one registry.
type credentials struct {
	Username, Password string
	// IdentityToken is an OAuth2 refresh token (Docker config "identitytoken").
	IdentityToken string
	// RegistryToken is a Bearer token for the registry itself (a CRI pull's registry_token),
	// sent as it is instead of one from the token server.
	RegistryToken string
}

func (c credentials) empty() bool {
	return c.Username == "" && c.IdentityToken == "" && c.RegistryToken == ""
}

// dockerConfig is the part of ~/.docker/config.json that Shoal reads.
type dockerConfig struct {
	Auths map[string]struct {
		Auth          string `json:"auth"`
		Username      string `json:"username"`
		Password      string `json:"password"`
		IdentityToken string `json:"identitytoken"`
	} `json:"auths"`
	CredsStore  string            `json:"credsStore"`
	CredHelpers map[string]string `json:"credHelpers"`
}

// dockerCredentials finds the credentials for host in a Docker config file, or the credential
// helper that holds them (credHelpers, then credsStore), which the authenticator runs when
// needed. A missing file is no credentials, not an error.
func dockerCredentials(path, host string) (credentials, string, error) {
	if path == "" {
		return credentials{}, "", nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return credentials{}, "", nil
	}
	if err != nil {
		return credentials{}, "", fmt.Errorf("docker config: %w", err)
	}
	var cfg dockerConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return credentials{}, "", fmt.Errorf("docker config %s: %w", path, err)
	}
	for key, a := range cfg.Auths {
		if normalizeAuthKey(key) != host {
			continue
		}
		c := credentials{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return credentials{}, "", fmt.Errorf("docker config %s: auth for %s is not base64", path, key)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok {
				return credentials{}, "", fmt.Errorf("docker config %s: auth for %s is not user:password", path, key)
			}
			c.Username, c.Password = u, p
		}
		return c, "", nil
	}
	helper := cfg.CredHelpers[host]
	if helper == "" {
		helper = cfg.CredsStore
	}
	return credentials{}, helper, nil
}

// normalizeAuthKey turns "https://host:port/v1/" into "host:port".
func normalizeAuthKey(k string) string {
	if i := strings.Index(k, "://"); i >= 0 {
		k = k[i+3:]
	}
	k, _, _ = strings.Cut(k, "/")
	return k
}

// bearerToken is a token from a token server, valid for one set of scopes.
type bearerToken struct {
	value  string
	expiry time.Time
}

// authenticator holds what one registry's clients know about its authentication: the scheme it
// asked for, the credentials, and the Bearer tokens fetched so far (one per set of scopes).
// Tokens are refreshed shortly before they expire and whenever the registry rejects one, so a
// mount that lives for days keeps reading.
type authenticator struct {
	host  string
	creds credentials // guarded by mu when helper is set
	// helper is a Docker credential helper ("ecr-login" runs docker-credential-ecr-login) asked
	// for creds when none were configured: at first use, every helperTTL (helpers hand out
	// short-lived credentials) and after the registry refuses the ones it gave.
	helper    string
	helperAt  time.Time
	runHelper func(ctx context.Context, helper, host string) (credentials, error)
	// secret, if set, gives the credentials a pod's image pull secret brought for this
	// repository (secrets.go), with their expiry; asked first.
	secret func() (credentials, time.Time, bool)
	// provider, if set, asks kubelet credential provider plugins (kubelet.go), which keep
	// their answers for as long as the plugin says; asked when no pull secret is kept.
	provider func(ctx context.Context) credentials
	client   *http.Client // for the token server; no redirect-following quirks needed
	ua       string
	now      func() time.Time

	fetching chan struct{} // one token fetch at a time

	mu     sync.Mutex
	scheme string // "", "basic" or "bearer"
	realm  string
	svc    string
	tokens map[string]bearerToken
}

func newAuthenticator(host string, creds credentials, client *http.Client, ua string) *authenticator {
	return &authenticator{host: host, creds: creds, client: client, ua: ua, now: time.Now, tokens: map[string]bearerToken{},
		fetching: make(chan struct{}, 1), runHelper: runCredentialHelper}
}

// helperTTL is how long credentials from a helper are used before it is asked again.
const helperTTL = 10 * time.Minute

// credentials returns the credentials to present, in this order (docs/privacy.md): a pod's
// image pull secret for this repository, kubelet credential provider plugins, then this host's
// own (Config.Username, the Docker config's auths, its credential helper, asked when its last
// answer is stale; a helper that fails leaves the previous answer, or none).
func (a *authenticator) credentials(ctx context.Context) credentials {
	if a.secret != nil {
		if c, _, ok := a.secret(); ok {
			return c
		}
	}
	if a.provider != nil {
		if c := a.provider(ctx); !c.empty() {
			return c
		}
	}
	a.mu.Lock()
	if a.helper == "" || (!a.helperAt.IsZero() && a.now().Sub(a.helperAt) < helperTTL) {
		c := a.creds
		a.mu.Unlock()
		return c
	}
	helper := a.helper
	a.mu.Unlock()
	c, err := a.runHelper(ctx, helper, a.host)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.helperAt = a.now()
	if err == nil {
		a.creds = c
	}
	return a.creds
}

// runCredentialHelper runs `docker-credential-<helper> get` with the registry host on stdin, as
// the Docker credential helper protocol says, and reads {"Username", "Secret"}. A username of
// "<token>" makes the secret an identity (refresh) token. "not found" is no credentials.
func runCredentialHelper(ctx context.Context, helper, host string) (credentials, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker-credential-"+helper, "get")
	cmd.Stdin = strings.NewReader(host)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if strings.Contains(string(out), "credentials not found") {
			return credentials{}, nil
		}
		return credentials{}, fmt.Errorf("credential helper docker-credential-%s for %s: %w: %s", helper, host, err, strings.TrimSpace(stderr.String()+string(out)))
	}
	var r struct {
		Username string `json:"Username"`
		Secret   string `json:"Secret"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return credentials{}, fmt.Errorf("credential helper docker-credential-%s for %s: %w", helper, host, err)
	}
	if r.Username == "<token>" {
		return credentials{IdentityToken: r.Secret}, nil
	}
	return credentials{Username: r.Username, Password: r.Secret}, nil
}

func scopeKey(scopes []string) string {
	s := append([]string(nil), scopes...)
	sort.Strings(s)
	return strings.Join(s, " ")
}

// authorize sets the Authorization header the registry is known to want, fetching a token if
// needed. It returns the header value set, to recognise a rejected token later.
func (a *authenticator) authorize(ctx context.Context, req *http.Request, scopes []string) (string, error) {
	a.mu.Lock()
	scheme := a.scheme
	tok, ok := a.tokens[scopeKey(scopes)]
	a.mu.Unlock()
	var h string
	switch scheme {
	case "basic":
		creds := a.credentials(ctx)
		if creds.Username == "" {
			return "", nil
		}
		h = "Basic " + base64.StdEncoding.EncodeToString([]byte(creds.Username+":"+creds.Password))
	case "bearer":
		if a.secret != nil {
			if c, _, found := a.secret(); found && c.RegistryToken != "" {
				h = "Bearer " + c.RegistryToken
				break
			}
		}
		if !ok || !a.now().Before(tok.expiry) {
			var err error
			if tok, err = a.token(ctx, scopes); err != nil {
				return "", err
			}
		}
		h = "Bearer " + tok.value
	default:
		return "", nil
	}
	req.Header.Set("Authorization", h)
	return h, nil
}

// challenged handles a 401: it learns the scheme from the WWW-Authenticate header and drops a
// rejected token. It reports whether a retry with new authorization can succeed.
func (a *authenticator) challenged(resp *http.Response, scopes []string, sent string) bool {
	chs := parseChallenges(resp.Header.Values("WWW-Authenticate"))
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range chs {
		switch c.Scheme {
		case "bearer":
			realm := c.Params["realm"]
			if realm == "" {
				continue
			}
			a.scheme, a.realm, a.svc = "bearer", realm, c.Params["service"]
			key := scopeKey(scopes)
			if tok, ok := a.tokens[key]; ok && "Bearer "+tok.value == sent {
				delete(a.tokens, key) // rejected: expired early or revoked
			}
			// Retry: with a token fetched anew, or with one another request fetched meanwhile.
			// The caller bounds the number of rounds.
			return true
		case "basic":
			a.scheme = "basic"
			if a.helper != "" && strings.HasPrefix(sent, "Basic ") && !a.helperAt.IsZero() {
				a.helperAt = time.Time{} // refused: ask the helper again, once
				return true
			}
			// Retry unless these very credentials were just refused.
			have := a.creds.Username != "" || a.helper != "" || a.provider != nil
			if a.secret != nil && !have {
				_, _, have = a.secret()
			}
			return have && !strings.HasPrefix(sent, "Basic ")
		}
	}
	return false
}

// token returns a valid token for scopes, fetching one if none is cached. Fetches are serialised
// so that the requests waiting on an expired token share one new token.
func (a *authenticator) token(ctx context.Context, scopes []string) (bearerToken, error) {
	select {
	case a.fetching <- struct{}{}:
	case <-ctx.Done():
		return bearerToken{}, context.Cause(ctx)
	}
	defer func() { <-a.fetching }()
	// A pull secret's registry token is the token, for whatever scope it grants.
	if a.secret != nil {
		if c, exp, ok := a.secret(); ok && c.RegistryToken != "" {
			return bearerToken{value: c.RegistryToken, expiry: exp}, nil
		}
	}
	a.mu.Lock()
	tok, ok := a.tokens[scopeKey(scopes)]
	a.mu.Unlock()
	if ok && a.now().Before(tok.expiry) {
		return tok, nil
	}
	return a.fetchToken(ctx, scopes)
}

// tokenResponse is the token server's answer (distribution token spec; OAuth2 uses access_token).
type tokenResponse struct {
	Token       string    `json:"token"`
	AccessToken string    `json:"access_token"`
	ExpiresIn   int64     `json:"expires_in"`
	IssuedAt    time.Time `json:"issued_at"`
}

// fetchToken gets a token for scopes from the realm named by the registry's challenge.
func (a *authenticator) fetchToken(ctx context.Context, scopes []string) (bearerToken, error) {
	a.mu.Lock()
	realm, svc := a.realm, a.svc
	a.mu.Unlock()
	u, err := url.Parse(realm)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return bearerToken{}, fmt.Errorf("registry %s: token realm %q is not an http(s) URL: %w", a.host, realm, ErrBadResponse)
	}
	creds := a.credentials(ctx)
	var req *http.Request
	if creds.IdentityToken != "" {
		form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {creds.IdentityToken}, "service": {svc}, "client_id": {"shoal"}, "scope": {strings.Join(scopes, " ")}}
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, u.String(), strings.NewReader(form.Encode()))
		if err != nil {
			return bearerToken{}, err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		q := u.Query()
		if svc != "" {
			q.Set("service", svc)
		}
		for _, s := range scopes {
			q.Add("scope", s)
		}
		u.RawQuery = q.Encode()
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return bearerToken{}, err
		}
		if creds.Username != "" {
			req.SetBasicAuth(creds.Username, creds.Password)
		}
	}
	req.Header.Set("User-Agent", a.ua)
	start := a.now()
	resp, err := a.client.Do(req)
	if err != nil {
		return bearerToken{}, retryable(fmt.Errorf("registry %s: token from %s: %w", a.host, u.Host, err), 0)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return bearerToken{}, retryable(fmt.Errorf("registry %s: token from %s: %w", a.host, u.Host, err), 0)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return bearerToken{}, fmt.Errorf("registry %s: token server %s refused the credentials (%s): %w", a.host, u.Host, resp.Status, ErrUnauthorized)
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return bearerToken{}, retryable(fmt.Errorf("registry %s: token server %s: %s", a.host, u.Host, resp.Status), retryAfter(resp.Header, a.now()))
	case resp.StatusCode != http.StatusOK:
		return bearerToken{}, fmt.Errorf("registry %s: token server %s: %s: %w", a.host, u.Host, resp.Status, ErrBadResponse)
	}
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return bearerToken{}, fmt.Errorf("registry %s: token server %s: %v: %w", a.host, u.Host, err, ErrBadResponse)
	}
	tok := tr.Token
	if tok == "" {
		tok = tr.AccessToken
	}
	if tok == "" {
		return bearerToken{}, fmt.Errorf("registry %s: token server %s sent no token: %w", a.host, u.Host, ErrBadResponse)
	}
	life := time.Duration(tr.ExpiresIn) * time.Second
	if life <= 0 {
		life = 60 * time.Second // the spec's default
	}
	// Refresh a little early so a request never leaves with a token about to lapse.
	life -= min(life/5, 30*time.Second)
	bt := bearerToken{value: tok, expiry: start.Add(life)}
	// A JWT's exp claim (whole seconds, so up to a second before expires_in says) bounds it
	// too: a token presented to a peer as pull rights (rights.go) must not have lapsed.
	if exp := jwtExpiry(tok); !exp.IsZero() {
		if left := exp.Sub(start); left > 0 {
			if e := start.Add(left - min(left/5, 30*time.Second)); e.Before(bt.expiry) {
				bt.expiry = e
			}
		} else {
			bt.expiry = start
		}
	}
	a.mu.Lock()
	a.tokens[scopeKey(scopes)] = bt
	a.mu.Unlock()
	return bt, nil
}
