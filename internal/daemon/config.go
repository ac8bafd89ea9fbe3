package daemon

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/shoal-p2p/shoal/internal/units"
)

// Config is every setting of `shoal daemon`. Each field has a YAML key (config file), a flag and
// an environment variable (SHOAL_<KEY> in upper case); flags beat the environment, which beats
// the file, which beats the defaults.
type Config struct {
	DataDir   string   `yaml:"data_dir" flag:"data" help:"directory for the cache, index, identity key and state"`
	APISocket string   `yaml:"api_socket" flag:"api" env:"SHOAL_API" help:"unix socket of the control API (the CLI's --api)"`
	Listen    []string `yaml:"listen" flag:"listen" help:"libp2p listen multiaddr (repeatable)"`
	Peers     []string `yaml:"peers" flag:"peer" help:"static peer multiaddr ending in /p2p/<peer ID> (repeatable)"`
	PeerDNS   string   `yaml:"peer_dns" flag:"peer-dns" help:"DNS name whose _dnsaddr TXT records list peers"`
	Discover  string   `yaml:"discover_dns" flag:"discover-dns" help:"NAME:PORT: a DNS name with an A/AAAA record per host (a Kubernetes headless Service over the daemons) and the port of their identity endpoint (identity_listen); re-resolved every minute, each new IP asked for its peer ID"`
	Identity  string   `yaml:"identity_listen" flag:"identity-listen" help:"address serving this host's peer ID and libp2p addresses over HTTP for other hosts' discover_dns, e.g. 0.0.0.0:7481 (empty: off)"`
	MDNS      bool     `yaml:"mdns" flag:"mdns" help:"discover peers on the LAN with multicast DNS"`
	DHT       bool     `yaml:"dht" flag:"dht" help:"run the Kademlia DHT (LAN mode, /shoal prefix) for blob provider records"`
	PSKFile   string   `yaml:"psk_file" flag:"psk-file" help:"file with a 32-byte pre-shared key (64 hex digits): a private network"`
	AllowPeer []string `yaml:"allow_peers" flag:"allow-peer" help:"peer ID allowed to connect (repeatable; empty: any)"`
	WireZstd  int      `yaml:"wire_compression" flag:"wire-compression" help:"zstd level (1-22) at which chunks that their image stores compressed are sent to peers; 0: send every chunk raw"`

	Domain     string `yaml:"domain" flag:"domain" help:"fscache domain: volume key erofs,<domain> and domain_id of fscache mounts"`
	CacheMax   string `yaml:"cache_max" flag:"cache-max" help:"cap on cached chunk bytes, e.g. 50G (0: no cap); least recently used unpinned data is evicted"`
	CacheResv  string `yaml:"cache_reserve" flag:"cache-reserve" help:"free space kept on the cache filesystem for the index, e.g. 64M (0: a sixteenth of the filesystem, 4M to 64M); chunks are evicted or refused before it is used"`
	Workers    int    `yaml:"workers" flag:"workers" help:"chunk fetches in flight at once"`
	DirectIO   bool   `yaml:"direct_writes" flag:"direct-writes" help:"write prefetched chunks to the cache with direct I/O, around the page cache (less CPU per byte; the first read of such a chunk goes to the disk); chunks a reader waits for always go through the page cache"`
	Prefetch   bool   `yaml:"prefetch" flag:"prefetch" help:"after mounting an image, fetch the rest of it in the background"`
	PrefetchBW string `yaml:"prefetch_rate" flag:"prefetch-rate" help:"bandwidth cap of background prefetch per second, e.g. 100M (0: none)"`
	Mode       string `yaml:"mode" flag:"mode" help:"default mount mode: auto, fscache, fanotify, fuse or fusetree"`
	Supervise  bool   `yaml:"supervise" flag:"supervise" help:"hold /dev/cachefiles in a small supervisor process that runs the daemon as its worker, so fscache mounts survive a daemon crash or upgrade (SIGHUP restarts the worker)"`

	Insecure        []string `yaml:"insecure_registries" flag:"insecure-registry" help:"registry host[:port] reached over plain HTTP (repeatable)"`
	RegistryCA      string   `yaml:"registry_ca" flag:"registry-ca" help:"PEM file of extra CAs trusted for registries"`
	DockerConfig    string   `yaml:"docker_config" flag:"docker-config" help:"Docker config.json with registry credentials (default: ~/.docker/config.json)"`
	RegistryUser    string   `yaml:"registry_username" flag:"registry-username" help:"registry user name for every registry (the password comes from registry_password_file)"`
	RegistryPass    string   `yaml:"registry_password_file" flag:"registry-password-file" help:"file holding the password of registry_username"`
	KubeletCPConfig string   `yaml:"kubelet_credential_provider_config" flag:"kubelet-credential-provider-config" help:"the kubelet's CredentialProviderConfig file (its --image-credential-provider-config): credential provider plugins, asked before registry_username and Docker config for the images they match"`
	KubeletCPBinDir string   `yaml:"kubelet_credential_provider_bin_dir" flag:"kubelet-credential-provider-bin-dir" help:"directory of the credential provider plugins (the kubelet's --image-credential-provider-bin-dir)"`
	CRIListen       string   `yaml:"cri_listen" flag:"cri-listen" help:"unix socket of the CRI image-service proxy, for the kubelet's --image-service-endpoint: it forwards every call to cri_upstream and keeps the credentials of pods' image pull secrets for this daemon (empty: off)"`
	CRIUpstream     string   `yaml:"cri_upstream" flag:"cri-upstream" help:"containerd's CRI socket, where the CRI proxy forwards calls"`
	PullSecretTTL   string   `yaml:"pull_secret_ttl" flag:"pull-secret-ttl" help:"how long the credentials a pod's image pull secret brought (through the CRI proxy) are kept after its last pull of the repository, e.g. 24h"`
	PullRights      bool     `yaml:"pull_rights" flag:"pull-rights" help:"serve a private repository's content (its registry refuses anonymous pulls) only to peers that prove they may pull it (docs/privacy.md); false: serve every chunk to any peer"`
	RightsTTL       string   `yaml:"rights_ttl" flag:"rights-ttl" help:"how long a peer's proven pull rights are trusted before the registry is asked again (never past its token's expiry), e.g. 5m"`
	ObjectKeep      string   `yaml:"object_retention" flag:"object-retention" help:"how long manifests, chunk manifests and bootstraps no registered image uses stay under <data>/objects and <data>/bootstraps for peers and restarts, e.g. 24h (0: forever)"`
	PeerTags        bool     `yaml:"peer_tags" flag:"peer-tags" help:"while a registry is unreachable, resolve tags from what peers say they name (not verifiable; references by digest resolve from peers without it)"`

	MirrorListen   string   `yaml:"mirror_listen" flag:"mirror-listen" help:"address of the node-local registry mirror for containerd's hosts.toml, e.g. 127.0.0.1:5005 (empty: off)"`
	MirrorMax      string   `yaml:"mirror_max" flag:"mirror-max" help:"cap on the blobs the registry mirror keeps under <data>/mirror, e.g. 20G (0: no cap); least recently used are removed"`
	MirrorUpstream string   `yaml:"mirror_upstream" flag:"mirror-upstream" help:"registry host[:port] for mirror requests that carry no ?ns= (containerd always sends it)"`
	MirrorPeerUps  []string `yaml:"mirror_peer_upstreams" flag:"mirror-peer-upstream" help:"registry host[:port] this node's mirror fetches from for peers that ask it as a blob's rendezvous owner (repeatable; none: any)"`

	AdminListen string `yaml:"admin_listen" flag:"admin" help:"address for /metrics and /debug/pprof, e.g. 127.0.0.1:9480 (empty: off)"`
	LogFormat   string `yaml:"log_format" flag:"log-format" help:"log format: text or json"`
	LogLevel    string `yaml:"log_level" flag:"log-level" help:"log level: debug, info, warn or error"`
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		DataDir:       "/var/lib/shoal",
		APISocket:     DefaultAPISocket,
		Listen:        []string{"/ip4/0.0.0.0/tcp/7480", "/ip4/0.0.0.0/udp/7480/quic-v1"},
		Domain:        "shoal",
		CacheMax:      "0",
		CacheResv:     "0",
		Workers:       16,
		DirectIO:      true,
		WireZstd:      1,
		Prefetch:      true,
		DHT:           true,
		Mode:          "auto",
		MirrorMax:     "10G",
		ObjectKeep:    "24h",
		PullRights:    true,
		RightsTTL:     "5m",
		CRIUpstream:   "/run/containerd/containerd.sock",
		PullSecretTTL: "24h",
		LogFormat:     "text",
		LogLevel:      "info",
	}
}

// DefaultAPISocket is where the daemon listens and the CLI looks unless told otherwise.
const DefaultAPISocket = "/run/shoal/shoal.sock"

// EnvAPISocket names the environment variable the CLI reads for the API socket.
const EnvAPISocket = "SHOAL_API"

// Validate checks every setting and says, for each problem, what to change.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.DataDir == "" {
		bad("data_dir (--data)", "must be set")
	} else if !filepath.IsAbs(c.DataDir) {
		if abs, err := filepath.Abs(c.DataDir); err == nil {
			c.DataDir = abs
		}
	}
	if c.APISocket == "" {
		bad("api_socket (--api)", "must be set")
	} else if len(c.APISocket) > 107 {
		bad("api_socket (--api)", "%q is longer than the 107 bytes a unix socket path may have", c.APISocket)
	}
	if len(c.Listen) == 0 {
		bad("listen (--listen)", "give at least one multiaddr, e.g. /ip4/0.0.0.0/tcp/7480")
	}
	for _, p := range c.Peers {
		if !strings.Contains(p, "/p2p/") {
			bad("peers (--peer)", "%q has no /p2p/<peer ID> part; copy it from `shoal peers --self` on that host", p)
		}
	}
	if c.Discover != "" {
		if h, p, err := net.SplitHostPort(c.Discover); err != nil || h == "" || p == "" {
			bad("discover_dns (--discover-dns)", "%q is not NAME:PORT, e.g. shoal-peers.kube-system.svc.cluster.local:7481", c.Discover)
		}
	}
	if c.Identity != "" {
		if _, _, err := net.SplitHostPort(c.Identity); err != nil {
			bad("identity_listen (--identity-listen)", "%q is not host:port, e.g. 0.0.0.0:7481", c.Identity)
		}
	}
	if c.Domain == "" || strings.ContainsAny(c.Domain, "/,") {
		bad("domain (--domain)", "%q must be non-empty and contain no '/' or ','", c.Domain)
	}
	if _, err := units.ParseBytes(c.CacheMax); err != nil {
		bad("cache_max (--cache-max)", "%v", err)
	}
	if n, err := units.ParseBytes(c.CacheResv); err != nil || (n != 0 && n < 1<<20) {
		bad("cache_reserve (--cache-reserve)", "%q: give 0 (automatic) or a size of at least 1M, e.g. 64M (the index needs room to start and compact)", c.CacheResv)
	}
	if _, err := units.ParseBytes(c.PrefetchBW); c.PrefetchBW != "" && err != nil {
		bad("prefetch_rate (--prefetch-rate)", "%v", err)
	}
	if c.WireZstd < 0 || c.WireZstd > 22 {
		bad("wire_compression (--wire-compression)", "%d is out of range: give 0 (send raw) or a zstd level 1..22", c.WireZstd)
	}
	if d, err := time.ParseDuration(c.ObjectKeep); err != nil || (d != 0 && d < 10*time.Minute) {
		bad("object_retention", "%q: want a duration of at least 10m (objects of an image being loaded must outlive one sweep), or 0 to keep them forever", c.ObjectKeep)
	}
	if _, err := units.ParseBytes(c.MirrorMax); err != nil {
		bad("mirror_max (--mirror-max)", "%v", err)
	}
	if c.MirrorListen != "" {
		if _, _, err := net.SplitHostPort(c.MirrorListen); err != nil {
			bad("mirror_listen (--mirror-listen)", "%q is not host:port, e.g. 127.0.0.1:5005", c.MirrorListen)
		}
	}
	if d, err := time.ParseDuration(c.RightsTTL); err != nil || d <= 0 || d > time.Hour {
		bad("rights_ttl (--rights-ttl)", "%q: give a duration in (0, 1h], e.g. 5m", c.RightsTTL)
	}
	if c.CRIListen != "" {
		if !filepath.IsAbs(c.CRIListen) || len(c.CRIListen) > 107 {
			bad("cri_listen (--cri-listen)", "%q: give the absolute path of a unix socket (at most 107 bytes), e.g. /run/shoal/cri.sock", c.CRIListen)
		}
		if strings.TrimPrefix(c.CRIUpstream, "unix://") == "" {
			bad("cri_upstream (--cri-upstream)", "must be containerd's CRI socket, e.g. /run/containerd/containerd.sock")
		}
	}
	if d, err := time.ParseDuration(c.PullSecretTTL); err != nil || d < time.Minute {
		bad("pull_secret_ttl (--pull-secret-ttl)", "%q: give a duration of at least 1m, e.g. 24h", c.PullSecretTTL)
	}
	if c.Workers < 2 || c.Workers > 1024 {
		bad("workers (--workers)", "%d is out of range 2..1024", c.Workers)
	}
	switch c.Mode {
	case "auto", "fscache", "fanotify", "fuse", "fusetree":
	default:
		bad("mode (--mode)", "%q: use auto, fscache, fanotify, fuse or fusetree", c.Mode)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("log_format (--log-format)", "%q: use text or json", c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level (--log-level)", "%q: use debug, info, warn or error", c.LogLevel)
	}
	if (c.RegistryUser == "") != (c.RegistryPass == "") {
		bad("registry_username (--registry-username)", "and registry_password_file (--registry-password-file) go together")
	} else if c.RegistryPass != "" {
		if _, err := os.Stat(c.RegistryPass); err != nil {
			bad("registry_password_file (--registry-password-file)", "%v", err)
		}
	}
	if (c.KubeletCPConfig == "") != (c.KubeletCPBinDir == "") {
		bad("kubelet_credential_provider_config (--kubelet-credential-provider-config)", "and kubelet_credential_provider_bin_dir (--kubelet-credential-provider-bin-dir) go together")
	} else if c.KubeletCPConfig != "" {
		if _, err := os.Stat(c.KubeletCPConfig); err != nil {
			bad("kubelet_credential_provider_config (--kubelet-credential-provider-config)", "%v", err)
		}
	}
	if c.PSKFile != "" {
		if _, err := os.Stat(c.PSKFile); err != nil {
			bad("psk_file (--psk-file)", "%v", err)
		}
	}
	return errors.Join(errs...)
}

// PullSecretLifetime is PullSecretTTL parsed (Validate has checked it).
func (c *Config) PullSecretLifetime() time.Duration {
	d, _ := time.ParseDuration(c.PullSecretTTL)
	return d
}

// RightsTTLDuration is RightsTTL parsed (Validate has checked it).
func (c *Config) RightsTTLDuration() time.Duration { d, _ := time.ParseDuration(c.RightsTTL); return d }

// CacheReserveBytes is CacheResv parsed (Validate has checked it).
func (c *Config) CacheReserveBytes() int64 { n, _ := units.ParseBytes(c.CacheResv); return n }

// CacheMaxBytes is CacheMax parsed (Validate has checked it).
func (c *Config) CacheMaxBytes() int64 { n, _ := units.ParseBytes(c.CacheMax); return n }

// ObjectRetention is ObjectKeep parsed (Validate has checked it); 0 keeps objects forever.
func (c *Config) ObjectRetention() time.Duration { d, _ := time.ParseDuration(c.ObjectKeep); return d }

// MirrorMaxBytes is MirrorMax parsed (Validate has checked it).
func (c *Config) MirrorMaxBytes() int64 { n, _ := units.ParseBytes(c.MirrorMax); return n }

// PrefetchRate is PrefetchBW parsed; 0 means unlimited.
func (c *Config) PrefetchRate() int64 {
	if c.PrefetchBW == "" {
		return 0
	}
	n, _ := units.ParseBytes(c.PrefetchBW)
	return n
}

// LoadFile merges a YAML config file into c. Unknown keys are errors, so a typo is not silently
// ignored.
func (c *Config) LoadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) { // an empty file is fine
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// field describes one setting for flags, environment and help.
type field struct {
	key, flag, help, env string
	v                    reflect.Value
}

func (c *Config) fields() []field {
	var out []field
	rv := reflect.ValueOf(c).Elem()
	rt := rv.Type()
	for i := range rt.NumField() {
		f := rt.Field(i)
		key := f.Tag.Get("yaml")
		env := f.Tag.Get("env")
		if env == "" {
			env = "SHOAL_" + strings.ToUpper(key)
		}
		out = append(out, field{key: key, flag: f.Tag.Get("flag"), help: f.Tag.Get("help"), env: env, v: rv.Field(i)})
	}
	return out
}

// ApplyEnv sets fields from SHOAL_* environment variables (lists are comma-separated).
func (c *Config) ApplyEnv(getenv func(string) string) error {
	for _, f := range c.fields() {
		s := getenv(f.env)
		if s == "" {
			continue
		}
		if err := setValue(f.v, s, true); err != nil {
			return fmt.Errorf("%s: %w", f.env, err)
		}
	}
	return nil
}

func setValue(v reflect.Value, s string, replaceList bool) error {
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		v.SetBool(b)
	case reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		v.SetInt(int64(n))
	case reflect.Slice:
		var items []string
		if replaceList {
			for _, it := range strings.Split(s, ",") {
				if it = strings.TrimSpace(it); it != "" {
					items = append(items, it)
				}
			}
		} else {
			items = append(v.Interface().([]string), s)
		}
		v.Set(reflect.ValueOf(items))
	}
	return nil
}

// listFlag is a repeatable flag: the first use replaces the default list, later ones append.
type listFlag struct {
	v       reflect.Value
	touched bool
}

func (l *listFlag) String() string {
	if !l.v.IsValid() {
		return ""
	}
	return strings.Join(l.v.Interface().([]string), ",")
}

func (l *listFlag) Set(s string) error {
	if !l.touched {
		l.touched = true
		l.v.Set(reflect.ValueOf([]string{}))
	}
	return setValue(l.v, s, false)
}

type scalarFlag struct {
	v reflect.Value
}

func (f scalarFlag) String() string {
	if !f.v.IsValid() {
		return ""
	}
	return fmt.Sprint(f.v.Interface())
}
func (f scalarFlag) Set(s string) error { return setValue(f.v, s, true) }
func (f scalarFlag) IsBoolFlag() bool   { return f.v.IsValid() && f.v.Kind() == reflect.Bool }

// RegisterFlags defines one flag per setting on fs, writing into c when parsed. The help text of
// each names its config-file key and environment variable; the default shown is the value after
// the config file and environment were applied.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	for _, f := range c.fields() {
		help := fmt.Sprintf("%s (config %s, env %s)", f.help, f.key, f.env)
		if f.v.Kind() == reflect.Slice {
			fs.Var(&listFlag{v: f.v}, f.flag, help)
		} else {
			fs.Var(scalarFlag{v: f.v}, f.flag, help)
		}
	}
}

// Keys lists the config-file keys, for documentation.
func Keys() []string {
	var c Config
	var out []string
	for _, f := range c.fields() {
		out = append(out, f.key)
	}
	sort.Strings(out)
	return out
}
