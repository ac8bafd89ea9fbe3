package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/shoal-p2p/shoal/internal/units"
	"github.com/shoal-p2p/shoal/origin"
)

func init() {
	register(&command{name: "origin serve", summary: "serve image layouts as a read-only OCI registry", run: runOriginServe})
}

func runOriginServe(ctx context.Context, args []string) error {
	fs := newFlags("origin serve", "[NAME=]LAYOUT_DIR... [--listen ADDR] [--rate BYTES_PER_SECOND]",
		"Serves each OCI image layout as repository NAME (default: the directory's base name) with tag\n"+
			"\"latest\" and the layout's ref names, over the read side of the OCI Distribution API.\n"+
			"Counters are at GET "+origin.StatsPath+".")
	listen := fs.String("listen", "127.0.0.1:5000", "address to listen on")
	rateFlag := fs.String("rate", "0", "cap on the bytes per second sent to all clients (suffixes K, M, G); 0 for none")
	every := fs.Duration("stats-interval", origin.DefaultServerConfig().StatsInterval, "how often to log the bytes served; 0 for never")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return errUsage
	}
	layouts := map[string]string{}
	for _, p := range pos {
		name, dir, ok := strings.Cut(p, "=")
		if !ok {
			name, dir = origin.LayoutName(p), p
		}
		if prev, dup := layouts[name]; dup {
			return fmt.Errorf("repository %s named twice (%s and %s)", name, prev, dir)
		}
		layouts[name] = dir
	}
	cfg := origin.DefaultServerConfig()
	if cfg.Rate, err = units.ParseBytes(*rateFlag); err != nil {
		return fmt.Errorf("--rate: %w", err)
	}
	cfg.StatsInterval = *every
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	srv, err := origin.NewServer(layouts, cfg)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	for name := range layouts {
		fmt.Printf("serving %s/%s:latest\n", l.Addr(), name)
	}
	return srv.Run(ctx, l)
}

// registryFlags adds the registry client flags shared by commands that talk to registries and
// returns a function that builds the Config once the flags are parsed.
func registryFlags(fs *flag.FlagSet) func() (origin.Config, error) {
	def := origin.DefaultConfig()
	var insecure multiFlag
	fs.Var(&insecure, "insecure", "registry host[:port] to reach over plain HTTP (repeatable)")
	ca := fs.String("ca-file", "", "PEM file of extra certificate authorities for HTTPS registries")
	user := fs.String("username", "", "registry user name (password from $SHOAL_REGISTRY_PASSWORD)")
	dockerCfg := fs.String("docker-config", "", "Docker config.json with credentials (default $DOCKER_CONFIG/config.json or ~/.docker/config.json; - for none)")
	timeout := fs.Duration("timeout", def.Timeout, "how long a request may make no progress before it is retried")
	retries := fs.Int("retries", def.Retries, "retries of a failed request")
	conc := fs.Int("max-concurrent", def.MaxConcurrent, "requests in flight to one registry")
	return func() (origin.Config, error) {
		c := def
		c.Insecure = insecure
		c.CAFile = *ca
		c.Username = *user
		if c.Username != "" {
			c.Password = os.Getenv("SHOAL_REGISTRY_PASSWORD")
			if c.Password == "" {
				return c, errors.New("--username needs the password in $SHOAL_REGISTRY_PASSWORD")
			}
		}
		c.DockerConfig = *dockerCfg
		c.Timeout = *timeout
		c.Retries = *retries
		c.MaxConcurrent = *conc
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		return c, c.Validate()
	}
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
