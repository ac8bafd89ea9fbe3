package origin

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config holds the optional settings of a registry or layout Source and of Push.
type Config struct {
	// Insecure lists registry hosts ("host" or "host:port") reached over plain HTTP. Every other
	// registry is reached over HTTPS.
	Insecure []string
	// CAFile is a PEM bundle of extra certificate authorities trusted for HTTPS registries.
	CAFile string
	// Username and Password are credentials for every registry this Source talks to, after
	// PullSecrets and CredentialProviders. When empty, DockerConfig is consulted.
	Username, Password string
	// DockerConfig is the path of a Docker config.json with an "auths" section. Empty means
	// $DOCKER_CONFIG/config.json or ~/.docker/config.json, if present. Use "-" for none.
	DockerConfig string
	// PullSecrets, if set, holds credentials that pods' image pull secrets brought for
	// repositories (through the CRI proxy, package criproxy): asked first, for the repository
	// itself only.
	PullSecrets *PullSecrets
	// CredentialProviders, if set, are kubelet credential provider plugins
	// (LoadKubeletProviders), asked for a repository's credentials when no pull secret is kept
	// for it, before Username and the Docker config (auths, credential helpers).
	CredentialProviders *KubeletProviders
	// Timeout bounds how long one request may make no progress: waiting for response headers or
	// between reads of a body. A stalled request is retried.
	Timeout time.Duration
	// MaxConcurrent is the number of requests in flight to one registry at a time.
	MaxConcurrent int
	// Retries is how many times a failed request is retried (5xx, 429, connection errors,
	// truncated bodies). 0 means no retry.
	Retries int
	// RetryBase and RetryMax bound the exponential backoff between retries (with full jitter).
	// A Retry-After header is honoured up to RetryMax.
	RetryBase, RetryMax time.Duration
	// MaxManifestSize bounds the manifests read.
	MaxManifestSize int64
	// UserAgent is sent with every request.
	UserAgent string
	// Logger receives the package's logs; nil means slog.Default(). A "subsystem"="origin"
	// attribute is added.
	Logger *slog.Logger
	// Registerer receives the client's Prometheus metrics; nil registers none.
	Registerer prometheus.Registerer
}

// DefaultConfig returns the settings Shoal uses unless told otherwise.
func DefaultConfig() Config {
	return Config{
		Timeout:         30 * time.Second,
		MaxConcurrent:   16,
		Retries:         5,
		RetryBase:       200 * time.Millisecond,
		RetryMax:        10 * time.Second,
		MaxManifestSize: 4 << 20,
		UserAgent:       "shoal",
	}
}

// Validate checks ranges and cross-field rules.
func (c *Config) Validate() error {
	var errs []error
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout %v must be positive", c.Timeout))
	}
	if c.MaxConcurrent < 1 {
		errs = append(errs, fmt.Errorf("max concurrent requests %d must be at least 1", c.MaxConcurrent))
	}
	if c.Retries < 0 || c.Retries > 100 {
		errs = append(errs, fmt.Errorf("retries %d must be between 0 and 100", c.Retries))
	}
	if c.RetryBase <= 0 || c.RetryMax < c.RetryBase {
		errs = append(errs, fmt.Errorf("retry backoff base %v must be positive and at most the max %v", c.RetryBase, c.RetryMax))
	}
	if c.MaxManifestSize < 1024 {
		errs = append(errs, fmt.Errorf("max manifest size %d must be at least 1024 bytes", c.MaxManifestSize))
	}
	if (c.Username == "") != (c.Password == "") {
		errs = append(errs, errors.New("username and password must be given together"))
	}
	if c.CAFile != "" {
		if _, err := os.Stat(c.CAFile); err != nil {
			errs = append(errs, fmt.Errorf("CA file: %w", err))
		}
	}
	for _, h := range c.Insecure {
		if h == "" || !hostPattern.MatchString(h) {
			errs = append(errs, fmt.Errorf("insecure registry %q is not a host[:port]", h))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("origin config: %w", err)
	}
	return nil
}

func (c *Config) logger() *slog.Logger {
	l := c.Logger
	if l == nil {
		l = slog.Default()
	}
	return l.With("subsystem", "origin")
}

func (c *Config) dockerConfigPath() string {
	switch {
	case c.DockerConfig == "-":
		return ""
	case c.DockerConfig != "":
		return c.DockerConfig
	case os.Getenv("DOCKER_CONFIG") != "":
		return filepath.Join(os.Getenv("DOCKER_CONFIG"), "config.json")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".docker", "config.json")
}

func (c *Config) isInsecure(host string) bool {
	for _, h := range c.Insecure {
		if h == host {
			return true
		}
	}
	return false
}
