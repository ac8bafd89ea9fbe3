package origin

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Pull rights, for sharing a private repository's content with peers (docs/privacy.md): a host
// proves it may pull a repository by presenting a Bearer token its registry issued to it for
// repository:NAME:pull; the serving host checks that token against the same registry. This file
// is the registry side of both, and the probe that tells a private repository from a public one.

// ErrNoToken: the registry does not use Bearer tokens for the repository (no authentication, or
// Basic), so there is no scoped credential to prove pull rights with.
var ErrNoToken = errors.New("registry issues no bearer token")

// maxPresentedToken bounds a token presented by a peer; real registry tokens are a few KiB.
const maxPresentedToken = 8 << 10

// PullToken returns a Bearer token this host's credentials obtain for pulling the repository
// (scope repository:NAME:pull), from the token cache when a valid one is there, and when it
// expires (a little early, as the cache refreshes it). The token is a secret: never log it.
func (r *Registry) PullToken(ctx context.Context) (string, time.Time, error) {
	what := r.describe("pull token")
	// One request that needs pull rights, with this host's credentials: it learns the scheme,
	// fetches the token when the registry wants one, and proves the token grants the pull. A
	// host the registry refuses has no token to present (the same answer every time, rather
	// than a cached token that grants nothing on the second call).
	resp, err := r.roundTrip(ctx, &request{method: http.MethodGet, url: r.tagsURL(), scopes: r.pullScope(), what: what})
	if err != nil {
		return "", time.Time{}, err
	}
	drain(resp.Body)
	r.auth.mu.Lock()
	scheme := r.auth.scheme
	r.auth.mu.Unlock()
	if scheme != "bearer" {
		return "", time.Time{}, fmt.Errorf("%s: the registry authenticates with %q: %w", what, cmpOr(scheme, "nothing"), ErrNoToken)
	}
	tok, err := r.auth.token(ctx, r.pullScope())
	if err != nil {
		return "", time.Time{}, fmt.Errorf("%s: %w", what, err)
	}
	return tok.value, tok.expiry, nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// tagsURL is the cheapest request that needs pull rights on the repository.
func (r *Registry) tagsURL() string { return "/v2/" + r.ref.Repository + "/tags/list?n=1" }

// CheckPullToken asks the registry whether token (presented by a peer) grants pull of this
// repository: one GET of the repository's tag list with that token and nothing else (never this
// host's own credentials). It returns the token's expiry when the token is a JWT that says (the
// registry has just verified its signature), else the zero time. A refusal wraps ErrUnauthorized;
// any other failure means the check could not be made, which callers treat as a refusal too.
func (r *Registry) CheckPullToken(ctx context.Context, token string) (time.Time, error) {
	what := r.describe("check of a peer's pull token")
	if token == "" || len(token) > maxPresentedToken || !isToken68(token) {
		return time.Time{}, fmt.Errorf("%s: not a bearer token: %w", what, ErrUnauthorized)
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+r.tagsURL(), nil)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: %w", what, err)
	}
	req.Header.Set("User-Agent", r.cfg.UserAgent)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := r.client.Do(req)
	if err != nil {
		r.metrics.requests.WithLabelValues("error").Inc()
		return time.Time{}, fmt.Errorf("%s: %w", what, err)
	}
	drain(resp.Body)
	r.metrics.requests.WithLabelValues(fmt.Sprint(resp.StatusCode)).Inc()
	switch {
	case resp.StatusCode == http.StatusOK:
		return jwtExpiry(token), nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return time.Time{}, fmt.Errorf("%s: %s: %w", what, resp.Status, ErrUnauthorized)
	default:
		return time.Time{}, statusError(what, resp, nil, r.auth.now())
	}
}

// AnonymousPull reports whether the repository can be pulled with no credentials at all (a
// public repository): one anonymous request for its tag list, through the registry's anonymous
// token flow when it has one. false with a nil error means the registry refused; an error means
// it could not tell (callers treat the repository as private).
func (r *Registry) AnonymousPull(ctx context.Context) (bool, error) {
	cfg := r.cfg
	cfg.Username, cfg.Password, cfg.DockerConfig = "", "", "-"
	anon := &Registry{ref: r.ref, base: r.base, cfg: cfg, client: r.client, sem: make(chan struct{}, 1), log: r.log, metrics: r.metrics,
		auth: newAuthenticator(r.ref.Registry, credentials{}, r.client, cfg.UserAgent)}
	resp, err := anon.roundTrip(ctx, &request{method: http.MethodGet, url: anon.tagsURL(), scopes: anon.pullScope(), what: r.describe("anonymous pull probe")})
	if err == nil {
		drain(resp.Body)
		return true, nil
	}
	if errors.Is(err, ErrUnauthorized) {
		return false, nil
	}
	return false, err
}

// isToken68 reports the characters a Bearer token may hold (RFC 6750 b64token): a token with
// anything else (a CR or LF above all) never reaches a header.
func isToken68(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-._~+/=", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// jwtExpiry reads the exp claim of a JWT, unverified (the registry verified it); zero if the
// token is not a JWT or has none.
func jwtExpiry(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}
	}
	var c struct {
		Exp json.Number `json:"exp"`
	}
	if json.Unmarshal(b, &c) != nil {
		return time.Time{}
	}
	sec, err := c.Exp.Int64()
	if err != nil || sec <= 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0)
}

// PullRights answers, per repository ("host/name"), the questions of sharing with peers: this
// host's pull token (PullToken), whether a peer's token grants pull (CheckPull), and whether the
// repository is public (Public). It keeps one Registry per repository, with its token cache, and
// the answers of Public for PublicTTL. Safe for concurrent use.
type PullRights struct {
	cfg Config
	// PublicTTL is how long an answer of Public is kept. A repository made private at the
	// registry stops being shared freely within it.
	PublicTTL time.Duration

	mu     sync.Mutex
	regs   map[string]*Registry
	public map[string]publicAnswer
}

type publicAnswer struct {
	public bool
	at     time.Time
}

// NewPullRights returns a PullRights that reaches registries with cfg (its credentials are this
// host's). It sends no request.
func NewPullRights(cfg Config) (*PullRights, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &PullRights{cfg: cfg, PublicTTL: 10 * time.Minute, regs: map[string]*Registry{}, public: map[string]publicAnswer{}}, nil
}

// Repository returns the "host/name" that PullRights keys a reference's repository by.
func Repository(ref Reference) string { return ref.Registry + "/" + ref.Repository }

func (p *PullRights) registry(repo string) (*Registry, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r := p.regs[repo]; r != nil {
		return r, nil
	}
	ref, err := ParseReference(repo)
	if err != nil || ref.Tag != "latest" || ref.Digest != "" || strings.Contains(repo, ":latest") {
		return nil, fmt.Errorf("repository %q is not host/name: %w", truncate(repo, 100), ErrInvalidReference)
	}
	r, err := NewRegistry(ref, p.cfg)
	if err != nil {
		return nil, err
	}
	p.regs[repo] = r
	return r, nil
}

// PullToken returns this host's pull token for repo and its expiry (Registry.PullToken).
func (p *PullRights) PullToken(ctx context.Context, repo string) (string, time.Time, error) {
	r, err := p.registry(repo)
	if err != nil {
		return "", time.Time{}, err
	}
	return r.PullToken(ctx)
}

// CheckPull checks a peer's token for repo at repo's registry (Registry.CheckPullToken).
func (p *PullRights) CheckPull(ctx context.Context, repo, token string) (time.Time, error) {
	r, err := p.registry(repo)
	if err != nil {
		return time.Time{}, err
	}
	return r.CheckPullToken(ctx, token)
}

// Public reports whether repo can be pulled anonymously (Registry.AnonymousPull), from a cached
// answer younger than PublicTTL when there is one. An error (the registry could not be asked)
// is not cached.
func (p *PullRights) Public(ctx context.Context, repo string) (bool, error) {
	p.mu.Lock()
	a, ok := p.public[repo]
	p.mu.Unlock()
	if ok && time.Since(a.at) < p.PublicTTL {
		return a.public, nil
	}
	r, err := p.registry(repo)
	if err != nil {
		return false, err
	}
	pub, err := r.AnonymousPull(ctx)
	if err != nil {
		return false, err
	}
	p.mu.Lock()
	p.public[repo] = publicAnswer{pub, time.Now()}
	p.mu.Unlock()
	return pub, nil
}
