package origin

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Auth is the registry credentials of one pull, as a CRI PullImageRequest carries them (a pod's
// image pull secret, chosen by the kubelet): a user name and password (or both as "auth",
// base64 of "user:password"), an identity (OAuth2 refresh) token, or a registry token (a Bearer
// token sent to the registry as it is). It is a secret: never log it.
type Auth struct {
	Username, Password string
	// Auth is base64("user:password"), the Docker config's form; used when Username is empty.
	Auth          string
	IdentityToken string
	RegistryToken string
}

// credentials turns a into what the authenticator presents, as containerd's CRI reads a
// PullImageRequest's auth (user name first, then the identity token, then auth).
func (a Auth) credentials() (credentials, error) {
	c := credentials{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
	if c.Username == "" && a.Auth != "" {
		raw, err := base64.StdEncoding.DecodeString(a.Auth)
		if err != nil {
			return credentials{}, errors.New("auth is not base64")
		}
		u, p, ok := strings.Cut(string(raw), ":")
		if !ok || u == "" {
			return credentials{}, errors.New("auth is not user:password")
		}
		c.Username, c.Password = u, p
	}
	if c.empty() {
		return credentials{}, errors.New("no user name, identity token or registry token")
	}
	return c, nil
}

// PullSecrets keeps the credentials that pods' image pull secrets carry (through the CRI
// image-service proxy, package criproxy), per repository ("host/name"), in memory only, each
// until TTL after the last pull that brought it (a registry token no longer than its own
// expiry). A Source reading a repository asks them before any other credentials (Config.PullSecrets).
// They are never logged or written down. Safe for concurrent use.
type PullSecrets struct {
	ttl time.Duration
	now func() time.Time

	mu sync.Mutex
	m  map[string]*pullSecret
}

type pullSecret struct {
	creds  credentials
	expiry time.Time
}

// NewPullSecrets keeps each repository's credentials for ttl after the pull that brought them.
func NewPullSecrets(ttl time.Duration) (*PullSecrets, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("pull secrets: lifetime %v must be positive", ttl)
	}
	return &PullSecrets{ttl: ttl, now: time.Now, m: map[string]*pullSecret{}}, nil
}

// Set keeps a for repo ("host/name", as Repository gives it), in place of what was kept for it,
// and returns undo, which puts back what was kept before if a is still the repository's
// credentials (a pull whose credentials the registry refused leaves them unused).
func (s *PullSecrets) Set(repo string, a Auth) (undo func(), err error) {
	c, err := a.credentials()
	if err != nil {
		return nil, fmt.Errorf("pull secret for %s: %w", repo, err)
	}
	now := s.now()
	e := &pullSecret{creds: c, expiry: now.Add(s.ttl)}
	if exp := jwtExpiry(c.RegistryToken); !exp.IsZero() && exp.Before(e.expiry) {
		e.expiry = exp
	}
	s.mu.Lock()
	for r, old := range s.m { // expired ones go, so that repositories pulled once do not pile up
		if !now.Before(old.expiry) {
			delete(s.m, r)
		}
	}
	prev := s.m[repo]
	s.m[repo] = e
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.m[repo] != e {
			return
		}
		if prev != nil && s.now().Before(prev.expiry) {
			s.m[repo] = prev
		} else {
			delete(s.m, repo)
		}
	}, nil
}

// Len is the number of repositories whose credentials are kept and not expired.
func (s *PullSecrets) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	now, n := s.now(), 0
	for repo, e := range s.m {
		if now.Before(e.expiry) {
			n++
		} else {
			delete(s.m, repo)
		}
	}
	return n
}

// get returns repo's credentials, if some are kept and not expired; false for a nil s.
func (s *PullSecrets) get(repo string) (credentials, time.Time, bool) {
	if s == nil {
		return credentials{}, time.Time{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[repo]
	if e == nil {
		return credentials{}, time.Time{}, false
	}
	if !s.now().Before(e.expiry) {
		delete(s.m, repo)
		return credentials{}, time.Time{}, false
	}
	return e.creds, e.expiry, true
}
