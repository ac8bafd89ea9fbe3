package daemon

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/criproxy"
	"github.com/shoal-p2p/shoal/demand"
	"github.com/shoal-p2p/shoal/internal/memtrim"
	"github.com/shoal-p2p/shoal/mirror"
	"github.com/shoal-p2p/shoal/mount"
	"github.com/shoal-p2p/shoal/origin"
	"github.com/shoal-p2p/shoal/p2p"
)

// Daemon is one running `shoal daemon`: the parts it assembles (chunk store, p2p node, demand
// resolver) and the service that the control API drives. Run owns every goroutine it starts.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	reg      *prometheus.Registry
	store    *chunkstore.Store
	node     *p2p.Node
	resolver *demand.Resolver
	svc      *service
	mirror   *mirror.Mirror  // nil unless --mirror-listen
	cri      *criproxy.Proxy // nil unless --cri-listen
	objects  *objectStore    // <data>/objects and <data>/bootstraps
}

// New builds the daemon's parts from a validated Config. It opens the chunk store (which
// reconciles its index with the files) and creates the node, but starts nothing: call Run, which
// closes everything on return.
func New(cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d := &Daemon{cfg: cfg, log: log, reg: reg}

	scfg := chunkstore.DefaultConfig()
	scfg.Domain = cfg.Domain
	scfg.MaxBytes = cfg.CacheMaxBytes()
	scfg.ReserveBytes = cfg.CacheReserveBytes()
	scfg.DirectWrites = cfg.DirectIO
	scfg.Logger = log
	scfg.Registerer = reg
	store, err := chunkstore.Open(cfg.DataDir, scfg)
	if err != nil {
		return nil, err
	}
	d.store = store
	fail := func(err error) (*Daemon, error) {
		store.Close()
		return nil, err
	}

	pcfg := p2p.DefaultConfig()
	pcfg.ListenAddrs = cfg.Listen
	pcfg.IdentityKeyPath = filepath.Join(cfg.DataDir, "identity.key")
	pcfg.StaticPeers = cfg.Peers
	pcfg.DNSAddr = cfg.PeerDNS
	pcfg.DiscoverDNS = cfg.Discover
	pcfg.IdentityListen = cfg.Identity
	pcfg.MDNS = cfg.MDNS
	pcfg.DHT = cfg.DHT
	pcfg.WireCompression = cfg.WireZstd
	pcfg.Logger = log
	pcfg.Registerer = reg
	if cfg.PSKFile != "" {
		psk, err := readPSK(cfg.PSKFile)
		if err != nil {
			return fail(err)
		}
		pcfg.PSK = psk
	}
	for _, s := range cfg.AllowPeer {
		id, err := peer.Decode(s)
		if err != nil {
			return fail(fmt.Errorf("allow_peers: %w", err))
		}
		pcfg.Allowlist = append(pcfg.Allowlist, id)
	}
	objects, err := openObjectStore(cfg.DataDir, log)
	if err != nil {
		return fail(err)
	}
	d.objects = objects
	ocfg := origin.DefaultConfig()
	ocfg.Insecure = cfg.Insecure
	ocfg.CAFile = cfg.RegistryCA
	ocfg.DockerConfig = cfg.DockerConfig
	ocfg.Logger = log
	ocfg.Registerer = reg // shoal_origin_*: what this host asks of registries
	if cfg.KubeletCPConfig != "" {
		kp, err := origin.LoadKubeletProviders(cfg.KubeletCPConfig, cfg.KubeletCPBinDir)
		if err != nil {
			return fail(err)
		}
		ocfg.CredentialProviders = kp
	}
	// Pods' image pull secrets, from the CRI proxy: kept even with the proxy off (none come).
	if ocfg.PullSecrets, err = origin.NewPullSecrets(cfg.PullSecretLifetime()); err != nil {
		return fail(err)
	}
	if cfg.CRIListen != "" {
		if d.cri, err = criproxy.New(criproxy.Config{Upstream: cfg.CRIUpstream, Logger: log, Registerer: reg}, ocfg.PullSecrets); err != nil {
			return fail(err)
		}
	}
	if cfg.RegistryUser != "" {
		pw, err := os.ReadFile(cfg.RegistryPass)
		if err != nil {
			return fail(fmt.Errorf("registry_password_file: %w", err))
		}
		ocfg.Username, ocfg.Password = cfg.RegistryUser, strings.TrimRight(string(pw), "\r\n")
	}

	// Pull rights (docs/privacy.md): the same registry access as the loader's, so that the token
	// this host presents is the one its own pulls use, and a peer's is checked at the registry
	// this host pulled the repository from.
	var rights *origin.PullRights
	if cfg.PullRights {
		if rights, err = origin.NewPullRights(ocfg); err != nil {
			return fail(err)
		}
		pcfg.Rights, pcfg.RightsTTL = rights, cfg.RightsTTLDuration()
	}
	blobs := &mirrorBlobs{rights: proberOrNil(rights), log: log, public: map[digest.Digest]bool{}, private: map[digest.Digest]bool{}}
	pcfg.BlobThrough = cfg.MirrorListen != ""
	flights := newMetaFlights()
	node, err := p2p.New(pcfg, nodeLocal{storeChunks{store}, objects, blobs, flights})
	if err != nil {
		return fail(err)
	}
	d.node = node
	// The kept objects' marks reach the node before it serves anything (Run starts it).
	objects.attach(node.SetPrivate)
	blobs.mark, blobs.repos = node.SetPrivate, node.PrivateRepos
	if cfg.MirrorListen != "" {
		mcfg := mirror.DefaultConfig()
		mcfg.Dir = filepath.Join(cfg.DataDir, "mirror")
		mcfg.MaxBytes = cfg.MirrorMaxBytes()
		mcfg.DefaultUpstream = cfg.MirrorUpstream
		mcfg.PeerUpstreams = cfg.MirrorPeerUps
		mcfg.Origin = ocfg
		mcfg.Served, mcfg.Fetching = blobs.served, blobs.fetching
		mcfg.Logger = log
		mcfg.Registerer = reg
		m, err := mirror.New(mcfg, node)
		if err != nil {
			return fail(err)
		}
		d.mirror, blobs.m = m, m
	}

	rcfg := demand.DefaultConfig()
	rcfg.Workers = cfg.Workers
	rcfg.PrefetchWorkers = max(1, cfg.Workers/4)
	rcfg.Logger = log
	rcfg.Registerer = reg
	d.resolver, err = demand.New(store, node, rcfg)
	if err != nil {
		return fail(err)
	}
	handover := os.Getenv(EnvHandover)
	fdeps := frontendDeps{dataDir: cfg.DataDir, domain: cfg.Domain, handover: handover, workers: cfg.Workers,
		log: log, metrics: reg, resolver: d.resolver, store: store}
	d.svc = newService(serviceConfig{DataDir: cfg.DataDir, Mode: cfg.Mode, Prefetch: cfg.Prefetch, Supervised: handover != "", PullRights: cfg.PullRights},
		serviceDeps{
			Store:    store,
			Resolver: d.resolver,
			Node:     node,
			Loader: originLoader{cfg: ocfg, dir: filepath.Join(cfg.DataDir, "bootstraps"),
				objects: objects, peers: node, peerTags: cfg.PeerTags, rights: proberOrNil(rights), flights: flights, log: log},
			Frontend: func(ctx context.Context, m mount.Mode, images bootstrapLookup) (frontend, error) {
				deps := fdeps
				deps.bootstraps = images
				return newFrontend(ctx, m, deps)
			},
			Probe: func(m mount.Mode) error {
				if m == mount.Fscache && handover != "" {
					return nil // the supervisor holds the device for us
				}
				return probeMode(cfg.DataDir, m) // fscache: opens /dev/cachefiles and binds a scratch cache
			},
			CleanStale:   func(mp string) { unmountStale(log, mp) },
			PrefetchRate: cfg.PrefetchRate(),
			Preheat:      node,
			Mirror:       mirrorStatser(d.mirror),
			Log:          log,
		})
	node.SetPreheater(d.svc) // peers' cluster prefetches (Run starts the node)
	return d, nil
}

// proberOrNil keeps a nil *origin.PullRights a nil interface.
func proberOrNil(r *origin.PullRights) publicProber {
	if r == nil {
		return nil
	}
	return r
}

// storeChunks is the chunk store as package p2p sees it: what it serves, and where chunks it
// fetches for the cluster (fetch-through) are kept.
type storeChunks struct{ *chunkstore.Store }

func (s storeChunks) PutChunk(ctx context.Context, blob digest.Digest, c chunk.Chunk, data chunk.Verified) error {
	return s.Put(ctx, blob, c, data)
}

var _ p2p.ChunkWriter = storeChunks{}
var _ p2p.RawChunks = storeChunks{} // V4's first sub-blocks go out before the chunk is hashed

var _ demand.Peers = (*p2p.Node)(nil)
var _ demand.Availability = (*p2p.Node)(nil) // rarest-first prefetch

// Run serves until ctx ends: the p2p node, the control API, the admin listener, and the images
// and mounts restored from the last run. On return every goroutine it started has ended, every
// image is unmounted (but fscache ones on a supervised restart), and the node and store are
// closed.
func (d *Daemon) Run(ctx context.Context) error {
	// In reverse: the node stops (no more fetches for peers), then the resolver's shared fetches
	// end (they write to the store), then the store closes.
	defer d.store.Close()
	defer func() { _ = d.resolver.Close() }()
	defer func() { _ = d.node.Close() }()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Presence changes reach peers: chunks that land are announced, evicted ones withdrawn.
	unsub := d.store.Subscribe(func(e chunkstore.Event) {
		var err error
		if e.Kind == chunkstore.ChunkAdded {
			err = d.node.Announce(e.Blob, e.Chunk)
		} else {
			err = d.node.Withdraw(e.Blob, e.Chunk)
		}
		if err != nil && !errors.Is(err, p2p.ErrUnknownBlob) {
			d.log.Debug("presence update", "blob", e.Blob, "kind", e.Kind, "err", err)
		}
	})
	defer unsub()

	api, err := d.listenAPI()
	if err != nil {
		return err
	}
	defer os.Remove(d.cfg.APISocket)
	var admin *http.Server
	if d.cfg.AdminListen != "" {
		admin = d.adminServer()
	}
	trim, err := memtrim.New(memtrim.Config{}, d.log.With("subsystem", "memtrim"))
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.node.Run(gctx) })
	// Free heap goes back to the OS once nothing is fetched or served (BENCHMARKS.md, memory).
	g.Go(func() error { return trim.Run(gctx) })
	g.Go(func() error {
		select {
		case <-d.node.Ready():
		case <-gctx.Done():
			return nil
		}
		for _, a := range d.svc.selfAddrs() {
			d.log.Info("listening", "addr", a)
		}
		// Mounts a killed daemon left under the data directory (its FUSE filesystem) would block
		// this one; image mountpoints it recorded are cleaned as they are restored.
		if gone, err := mount.Cleanup(d.cfg.DataDir); len(gone) > 0 || err != nil {
			d.log.Info("cleaned up stale mounts", "count", len(gone), "err", err)
		}
		d.svc.restore(gctx)
		d.sweepObjects(gctx)
		return nil
	})
	// Requests' contexts derive from Run's: at shutdown, operations in progress (a mount waiting
	// for the cachefiles handover, an image being fetched) are cancelled, and the service waits
	// for them before it unmounts anything.
	srv := &http.Server{Handler: apiHandler(d.svc), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return gctx }}
	g.Go(func() error {
		if err := srv.Serve(api); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("control API: %w", err)
		}
		return nil
	})
	if admin != nil {
		g.Go(func() error {
			if err := admin.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("admin listener %s: %w", d.cfg.AdminListen, err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		sctx, scancel := context.WithTimeout(context.WithoutCancel(gctx), 5*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close() // handlers past the deadline: their connections go, their contexts end
		}
		if admin != nil {
			_ = admin.Close()
		}
		return nil
	})
	if d.mirror != nil {
		ln, err := net.Listen("tcp", d.cfg.MirrorListen)
		if err != nil {
			cancel()
			_ = g.Wait()
			return fmt.Errorf("registry mirror: %w", err)
		}
		d.log.Info("registry mirror listening", "addr", ln.Addr().String())
		g.Go(func() error { return d.mirror.Serve(gctx, ln) })
	}
	if d.cri != nil {
		ln, err := criproxy.Listen(d.cfg.CRIListen)
		if err != nil {
			cancel()
			_ = g.Wait()
			return err
		}
		defer os.Remove(d.cfg.CRIListen)
		g.Go(func() error { return d.cri.Serve(gctx, ln) })
	}
	d.log.Info("shoal daemon started", "data", d.cfg.DataDir, "api", d.cfg.APISocket, "peer_id", d.node.ID())
	err = g.Wait()
	d.svc.shutdown(errors.Is(context.Cause(ctx), ErrRestart))
	return err
}

// objectSweepEvery is how often kept objects no image uses are looked for.
const objectSweepEvery = time.Hour

// sweepObjects removes, now and every objectSweepEvery until ctx ends, the kept objects and
// bootstraps no registered image has used for Config.ObjectRetention (objectStore.sweep).
func (d *Daemon) sweepObjects(ctx context.Context) {
	retention := d.cfg.ObjectRetention()
	if retention <= 0 {
		return
	}
	t := time.NewTicker(objectSweepEvery)
	defer t.Stop()
	for {
		if n, b := d.objects.sweep(objectsInUse(d.svc.reg.Images()), retention, time.Now()); n > 0 {
			d.log.Info("removed objects no image has used", "files", n, "bytes", b, "retention", retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ErrRestart, as the cause of Run's context, asks for a restart by a supervisor: fscache mounts
// stay mounted (the supervisor keeps the kernel's cache alive and the next worker adopts them);
// everything else is unmounted as at any stop.
var ErrRestart = errors.New("restarting under the cachefiles supervisor")

// EnvHandover names the environment variable through which the supervisor tells its worker
// where to get the /dev/cachefiles fd.
const EnvHandover = "SHOAL_CACHEFILES_HANDOVER"

// listenAPI opens the control socket, root-only. A socket left by a killed daemon is removed;
// one a live daemon answers on is an error.
func (d *Daemon) listenAPI() (net.Listener, error) {
	path := d.cfg.APISocket
	// Only the default's directory (/run/shoal) is ours to create: a socket path the operator
	// chose must be in a directory that exists, or a typo would silently make directories.
	if path == DefaultAPISocket {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, fmt.Errorf("control API: %w", err)
		}
	} else if st, err := os.Stat(filepath.Dir(path)); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("control API: directory %s of --api %s does not exist (only the default's, %s, is created)", filepath.Dir(path), path, filepath.Dir(DefaultAPISocket))
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control API: another daemon is listening on %s", path)
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control API: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("control API: %w", err)
	}
	return l, nil
}

func (d *Daemon) adminServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &http.Server{Addr: d.cfg.AdminListen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}

func readPSK(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("psk_file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if k, err := hex.DecodeString(s); err == nil && len(k) == 32 {
		return k, nil
	}
	if len(b) == 32 {
		return b, nil
	}
	return nil, fmt.Errorf("psk_file %s: want 32 bytes or 64 hex digits", path)
}
