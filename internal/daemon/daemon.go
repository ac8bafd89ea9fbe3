package daemon

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/demand"
	"github.com/shoal-p2p/shoal/origin"
	"github.com/shoal-p2p/shoal/p2p"
)

// Daemon is one running `shoal daemon`.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	reg      *prometheus.Registry
	store    *chunkstore.Store
	node     *p2p.Node
	resolver *demand.Resolver
	originCf origin.Config
	started  time.Time

	// handover is the cachefiles supervisor's socket when this daemon runs as its worker
	// (EnvHandover): the fscache frontend takes the device from it instead of opening it.
	handover string

	mu        sync.Mutex
	images    map[digest.Digest]*image // by manifest digest
	frontends map[string]frontend      // by mode, started on first use
	ctx       context.Context          // Run's
}

// image is an image this host knows: added by mount or prefetch.
type image struct {
	Ref       string
	Image     *bootstrap.Image
	Manifest  []byte // the OCI manifest, kept so a restart needs no origin
	BootPath  string // the bootstrap, local and verified
	src       origin.Source
	mounts    map[string]string // mountpoint → mode
	prefetch  prefetchState
	cancelPre context.CancelFunc
}

type prefetchState struct {
	State   string // "", "running", "done", "failed"
	Err     string
	Present int64
	Total   int64
}

// New builds the daemon's parts from a validated Config. It opens the chunk store (which
// reconciles its index with the files) and creates the node, but starts nothing: call Run.
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
	d := &Daemon{cfg: cfg, log: log, reg: reg, images: map[digest.Digest]*image{}, frontends: map[string]frontend{},
		started: time.Now(), handover: os.Getenv(EnvHandover)}

	scfg := chunkstore.DefaultConfig()
	scfg.Domain = cfg.Domain
	scfg.MaxBytes = cfg.CacheMaxBytes()
	scfg.Logger = log
	scfg.Registerer = reg
	store, err := chunkstore.Open(cfg.DataDir, scfg)
	if err != nil {
		return nil, err
	}
	d.store = store

	pcfg := p2p.DefaultConfig()
	pcfg.ListenAddrs = cfg.Listen
	pcfg.IdentityKeyPath = filepath.Join(cfg.DataDir, "identity.key")
	pcfg.StaticPeers = cfg.Peers
	pcfg.DNSAddr = cfg.PeerDNS
	pcfg.MDNS = cfg.MDNS
	pcfg.DHT = cfg.DHT
	pcfg.Logger = log
	pcfg.Registerer = reg
	if cfg.PSKFile != "" {
		psk, err := readPSK(cfg.PSKFile)
		if err != nil {
			store.Close()
			return nil, err
		}
		pcfg.PSK = psk
	}
	for _, s := range cfg.AllowPeer {
		id, err := p2pPeerID(s)
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("allow_peers: %w", err)
		}
		pcfg.Allowlist = append(pcfg.Allowlist, id)
	}
	node, err := p2p.New(pcfg, storeChunks{store})
	if err != nil {
		store.Close()
		return nil, err
	}
	d.node = node

	rcfg := demand.DefaultConfig()
	rcfg.Workers = cfg.Workers
	rcfg.PrefetchWorkers = max(1, cfg.Workers/4)
	rcfg.Logger = log
	rcfg.Registerer = reg
	d.resolver, err = demand.New(store, node, rcfg)
	if err != nil {
		store.Close()
		return nil, err
	}
	d.originCf = origin.DefaultConfig()
	d.originCf.Insecure = cfg.Insecure
	d.originCf.CAFile = cfg.RegistryCA
	d.originCf.DockerConfig = cfg.DockerConfig
	d.originCf.Logger = log
	if cfg.RegistryUser != "" {
		pw, err := os.ReadFile(cfg.RegistryPass)
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("registry_password_file: %w", err)
		}
		d.originCf.Username, d.originCf.Password = cfg.RegistryUser, strings.TrimRight(string(pw), "\r\n")
	}
	return d, nil
}

// storeChunks is the chunk store as package p2p sees it: what it serves, and where chunks it
// fetches for the cluster (fetch-through) are kept.
type storeChunks struct{ *chunkstore.Store }

func (s storeChunks) PutChunk(ctx context.Context, blob digest.Digest, c chunk.Chunk, data chunk.Verified) error {
	return s.Put(ctx, blob, c, data)
}

var _ p2p.ChunkWriter = storeChunks{}

var _ demand.Peers = (*p2p.Node)(nil)

// Run serves until ctx ends: the p2p node, the control API, the admin listener, and the images
// and mounts restored from the last run. On return everything is unmounted and closed.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.store.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.mu.Lock()
	d.ctx = ctx
	d.mu.Unlock()

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
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.node.Run(gctx) })
	g.Go(func() error {
		select {
		case <-d.node.Ready():
		case <-gctx.Done():
			return nil
		}
		for _, a := range d.selfAddrs() {
			d.log.Info("listening", "addr", a)
		}
		// Mounts a killed daemon left under the data directory (its FUSE filesystem) would block
		// this one; image mountpoints it recorded are cleaned as they are restored.
		if gone, err := cleanupDataDirMounts(d.cfg.DataDir); len(gone) > 0 || err != nil {
			d.log.Info("cleaned up stale mounts", "count", len(gone), "err", err)
		}
		d.restore(gctx)
		return nil
	})
	srv := &http.Server{Handler: d.apiHandler(), ReadHeaderTimeout: 10 * time.Second}
	g.Go(func() error {
		if err := srv.Serve(api); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("control API: %w", err)
		}
		return nil
	})
	if d.cfg.AdminListen != "" {
		admin, err := d.adminServer()
		if err != nil {
			api.Close()
			return err
		}
		g.Go(func() error {
			if err := admin.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("admin listener %s: %w", d.cfg.AdminListen, err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			return admin.Close()
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
		return nil
	})
	d.log.Info("shoal daemon started", "data", d.cfg.DataDir, "api", d.cfg.APISocket, "peer_id", d.node.ID())
	err = g.Wait()
	d.saveReadOrders()
	d.shutdown(errors.Is(context.Cause(ctx), ErrRestart))
	_ = d.node.Close()
	_ = os.Remove(d.cfg.APISocket)
	return err
}

// ErrRestart, as the cause of Run's context, asks for a restart by a supervisor: fscache mounts
// stay mounted (the supervisor keeps the kernel's cache alive and the next worker adopts them);
// everything else is unmounted as at any stop.
var ErrRestart = errors.New("restarting under the cachefiles supervisor")

// EnvHandover names the environment variable through which the supervisor tells its worker
// where to get the /dev/cachefiles fd.
const EnvHandover = "SHOAL_CACHEFILES_HANDOVER"

// shutdown unmounts every image and stops the frontends. The state file keeps the mounts, so
// the next start mounts them again. On a supervised restart fscache mounts are left in place.
func (d *Daemon) shutdown(restart bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, im := range d.images {
		if im.cancelPre != nil {
			im.cancelPre()
		}
		for mp, mode := range im.mounts {
			if restart && mode == "fscache" && d.handover != "" {
				d.log.Info("restart: leaving the fscache mount for the next worker", "mountpoint", mp)
				continue
			}
			if fe := d.frontends[mode]; fe != nil {
				if err := fe.Unmount(mp); err != nil {
					d.log.Warn("unmount at shutdown", "mountpoint", mp, "err", err)
				}
			}
		}
	}
	for mode, fe := range d.frontends {
		if err := fe.Close(); err != nil {
			d.log.Warn("stopping frontend", "mode", mode, "err", err)
		}
	}
	d.frontends = map[string]frontend{}
}

func (d *Daemon) selfAddrs() []string {
	var out []string
	for _, a := range d.node.Addrs() {
		s := a.String()
		if !strings.Contains(s, "/p2p/") {
			s += "/p2p/" + d.node.ID().String()
		}
		out = append(out, s)
	}
	return out
}

// listenAPI opens the control socket, root-only. A socket left by a killed daemon is removed;
// one a live daemon answers on is an error.
func (d *Daemon) listenAPI() (net.Listener, error) {
	path := d.cfg.APISocket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control API: %w", err)
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

func (d *Daemon) adminServer() (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &http.Server{Addr: d.cfg.AdminListen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}, nil
}

// addImage resolves ref, fetches its bootstrap and chunk manifests, and registers its blobs with
// the store, the resolver and the node. Adding a known image again refreshes its origin.
func (d *Daemon) addImage(ctx context.Context, ref string) (*image, error) {
	src, err := origin.Open(ref, d.originCf)
	if err != nil {
		return nil, err
	}
	_, mb, err := src.Resolve(ctx)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", ref, err)
	}
	return d.registerImage(ctx, ref, src, mb)
}

func (d *Daemon) registerImage(ctx context.Context, ref string, src origin.Source, mb []byte) (*image, error) {
	im, err := bootstrap.ParseImage(mb, func(desc ocispecDescriptor) ([]byte, error) {
		return fetchAll(ctx, src, desc.Digest, bootstrap.MaxMetadataSize)
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	boot, err := d.fetchBootstrap(ctx, src, im)
	if err != nil {
		return nil, fmt.Errorf("image %s: bootstrap: %w", ref, err)
	}
	for _, b := range im.Blobs {
		if err := d.store.AddBlob(ctx, b.Manifest); err != nil {
			return nil, fmt.Errorf("image %s: %w", ref, err)
		}
		blob := b.Digest
		fromOrigin := func(ctx context.Context, c chunk.Chunk) ([]byte, error) {
			return src.ReadRange(ctx, blob, c.Offset, c.Length)
		}
		if err := d.node.RegisterBlob(b.Manifest, p2p.OriginFunc(fromOrigin)); err != nil {
			return nil, err
		}
		d.resolver.AddBlob(b.Manifest, fromOrigin)
		// Tell peers what this host already holds (from an earlier run or another image).
		if present := d.presentChunks(b.Manifest); len(present) > 0 {
			_ = d.node.Announce(blob, present...)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if old := d.images[im.Digest]; old != nil {
		old.src, old.Ref = src, ref
		return old, nil
	}
	entry := &image{Ref: ref, Image: im, Manifest: mb, BootPath: boot, src: src, mounts: map[string]string{}}
	d.images[im.Digest] = entry
	return entry, nil
}

// pinImage pins (or unpins) an image's blobs in the store: a mounted image's data is never
// evicted; an image that is only prefetched, or no longer mounted, is evicted least recently used
// first when the cache is full.
func (d *Daemon) pinImage(im *image, on bool) {
	for _, b := range im.Image.Blobs {
		var err error
		if on {
			err = d.store.Pin(b.Digest, im.Image.Digest.String())
		} else {
			err = d.store.Unpin(b.Digest, im.Image.Digest.String())
		}
		if err != nil {
			d.log.Warn("pinning", "blob", b.Digest, "pin", on, "err", err)
		}
	}
}

func (d *Daemon) presentChunks(m *chunk.Manifest) []chunk.Chunk {
	missing, err := d.store.Missing(m.Blob, 0, m.BlobSize)
	if err != nil {
		return nil
	}
	miss := map[int64]bool{}
	for _, c := range missing {
		miss[c.Offset] = true
	}
	var out []chunk.Chunk
	for _, c := range m.Chunks {
		if !miss[c.Offset] {
			out = append(out, c)
		}
	}
	return out
}

// fetchBootstrap keeps the bootstrap as a local, verified file: EROFS metadata never leaves the
// host once fetched (file-backed and FUSE mounts read it directly; fscache serves it).
func (d *Daemon) fetchBootstrap(ctx context.Context, src origin.Source, im *bootstrap.Image) (string, error) {
	desc := im.Bootstrap
	dir := filepath.Join(d.cfg.DataDir, "bootstraps")
	path := filepath.Join(dir, desc.Digest.Encoded())
	if st, err := os.Stat(path); err == nil && st.Size() == desc.Size {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	rc, err := src.Open(ctx, desc.Digest)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(dir, ".fetch-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	h := digest.SHA256.Digester()
	n, err := io.Copy(io.MultiWriter(tmp, h.Hash()), io.LimitReader(rc, desc.Size+1))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	if n != desc.Size || h.Digest() != desc.Digest {
		return "", fmt.Errorf("bootstrap %s: got %d bytes with digest %s: %w", desc.Digest, n, h.Digest(), chunk.ErrCorrupt)
	}
	f, err := os.Open(tmp.Name())
	if err != nil {
		return "", err
	}
	// A bootstrap that is not a well-formed EROFS image of these blobs is refused before any
	// mount: the kernel never sees it.
	var sizes []int64
	for _, b := range im.Blobs {
		sizes = append(sizes, b.Size)
	}
	fsys, err := bootstrap.Open(f, n)
	if err == nil {
		err = fsys.Check(sizes)
	}
	f.Close()
	if err != nil {
		return "", fmt.Errorf("bootstrap %s: %w", desc.Digest, err)
	}
	return path, os.Rename(tmp.Name(), path)
}

func fetchAll(ctx context.Context, src origin.Source, d digest.Digest, limit int64) ([]byte, error) {
	rc, err := src.Open(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return bootstrap.ReadAllLimited(rc, limit, d.String())
}

// startPrefetch fetches the rest of an image in the background (idempotent while one runs).
func (d *Daemon) startPrefetch(im *image) {
	d.mu.Lock()
	if im.prefetch.State == "running" || im.prefetch.State == "done" {
		d.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(d.ctx)
	im.cancelPre = cancel
	im.prefetch = prefetchState{State: "running", Total: im.Image.DataBytes()}
	d.mu.Unlock()
	go func() {
		defer cancel()
		lim := newLimiter(d.cfg.PrefetchRate())
		var done int64
		var err error
		for _, b := range im.Image.Blobs {
			base := done
			first := d.loadReadOrder(b.Digest)
			_, err = d.resolver.Prefetch(ctx, b.Digest, first, lim, func(present, total int64) {
				d.mu.Lock()
				im.prefetch.Present = base + present
				d.mu.Unlock()
			})
			if err != nil {
				break
			}
			done += b.Manifest.DataBytes()
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		switch {
		case err == nil:
			im.prefetch.State, im.prefetch.Present = "done", im.prefetch.Total
			d.log.Info("prefetch complete", "image", im.Ref, "bytes", im.prefetch.Total)
		case ctx.Err() != nil:
			im.prefetch.State = "stopped"
		default:
			im.prefetch.State, im.prefetch.Err = "failed", err.Error()
			d.log.Warn("prefetch failed", "image", im.Ref, "err", err)
		}
	}()
}

// Read orders: the chunks the first run of an image read, in the order it read them, kept per
// blob in <data>/readorder/<hex>.json. A later prefetch of the blob (a restart, another mount,
// `shoal prefetch`) fetches those first, so a host warming an image gets its start-up working set
// before the rest. The first recording is kept: later runs read mostly from the cache.

func (d *Daemon) readOrderPath(blob digest.Digest) string {
	return filepath.Join(d.cfg.DataDir, "readorder", blob.Encoded()+".json")
}

func (d *Daemon) loadReadOrder(blob digest.Digest) []chunk.Range {
	b, err := os.ReadFile(d.readOrderPath(blob))
	if err != nil {
		return nil
	}
	var order []chunk.Range
	if err := json.Unmarshal(b, &order); err != nil {
		d.log.Warn("ignoring a damaged read order", "blob", blob, "err", err)
		return nil
	}
	return order
}

// saveReadOrders records the read order of every blob that has one and no recording yet.
func (d *Daemon) saveReadOrders() {
	d.mu.Lock()
	var blobs []digest.Digest
	for _, im := range d.images {
		for _, b := range im.Image.Blobs {
			blobs = append(blobs, b.Digest)
		}
	}
	d.mu.Unlock()
	for _, blob := range blobs {
		path := d.readOrderPath(blob)
		if _, err := os.Stat(path); err == nil {
			continue
		}
		order := d.resolver.ReadOrder(blob)
		if len(order) == 0 {
			continue
		}
		b, err := json.Marshal(order)
		if err == nil {
			err = os.MkdirAll(filepath.Dir(path), 0o700)
		}
		if err == nil {
			err = writeFileAtomic(path, b)
		}
		if err != nil {
			d.log.Warn("saving the read order", "blob", blob, "err", err)
		}
	}
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
