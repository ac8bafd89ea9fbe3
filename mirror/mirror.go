package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/shoal-p2p/shoal/origin"
)

// ErrCorrupt: bytes from a peer or the upstream that do not hash to the digest they were asked
// for. They are never served.
var ErrCorrupt = errors.New("content does not match its digest")

// Peers is where a blob is looked for after the local store and before the upstream: the p2p
// node's blob exchange. FetchBlob writes the blob with digest d from some peer to w, at most max
// bytes, and returns the peer that sent it. It should verify what it sends (and strike a peer
// whose bytes do not match); the mirror verifies again before serving anything, so a Peers that
// does not is still safe. An error means no peer could supply it.
type Peers interface {
	FetchBlob(ctx context.Context, d digest.Digest, max int64, w io.Writer) (from string, err error)
}

// Coalescer is an optional capability of Peers: the cluster's rendezvous owner of a blob
// (package p2p's BlobThroughProtocol). FetchBlobThrough asks the owner of d to fetch it from
// upstream (repository repo) once for every host that asks and writes it to w; delegated false,
// with nothing written, means this host is the owner and fetches it itself. The owner's side is
// FetchForPeer.
type Coalescer interface {
	FetchBlobThrough(ctx context.Context, d digest.Digest, manifest bool, upstream, repo string, max int64, w io.Writer) (from string, delegated bool, err error)
}

// Config holds the mirror's settings.
type Config struct {
	// Dir is where verified blobs and manifests are kept (<data>/mirror).
	Dir string
	// MaxBytes caps the bytes kept in Dir; least recently used content is removed past it.
	// 0: no cap.
	MaxBytes int64
	// MaxBlobSize bounds one blob fetched through the mirror.
	MaxBlobSize int64
	// DefaultUpstream is the registry for requests without containerd's ?ns= parameter
	// (host[:port]). Empty: such requests are refused.
	DefaultUpstream string
	// PeerUpstreams, if not empty, are the only registries (host[:port]) this host fetches
	// from for peers that ask it as a blob's rendezvous owner; empty: any a peer names (peers
	// are the cluster's own daemons, admitted by its PSK or allowlist).
	PeerUpstreams []string
	// Origin configures the upstream registry client (credentials, TLS, insecure hosts).
	Origin origin.Config
	// FetchTimeout bounds one shared fetch of a blob from peers and the upstream, which
	// outlives the request that started it.
	FetchTimeout time.Duration
	// Served, if set, is told of each manifest by digest and blob served for a request that
	// names its upstream, with the repository ("host/name") it was asked from: the daemon
	// shares with peers only what it has seen served from a public repository
	// (docs/privacy.md). It is called before the body is sent and should be quick.
	Served func(ctx context.Context, repo string, d digest.Digest)
	// Fetching, if set, is told of each manifest by digest and blob about to be fetched for a
	// request that names its upstream, with its repository, before peers are asked: the daemon
	// marks a private repository's content so that this host presents its pull rights to the
	// peers that hold it (docs/privacy.md).
	Fetching func(ctx context.Context, repo string, d digest.Digest)
	// Logger receives the mirror's logs; nil: slog.Default().
	Logger *slog.Logger
	// Registerer receives the shoal_mirror_* metrics; nil registers none.
	Registerer prometheus.Registerer
}

// DefaultConfig returns the settings used unless told otherwise.
func DefaultConfig() Config {
	return Config{MaxBlobSize: 64 << 30, Origin: origin.DefaultConfig(), FetchTimeout: time.Hour}
}

// Validate checks the settings.
func (c *Config) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("mirror: a directory must be set"))
	}
	if c.MaxBytes < 0 {
		errs = append(errs, fmt.Errorf("mirror: size cap %d must not be negative", c.MaxBytes))
	}
	if c.MaxBlobSize <= 0 {
		errs = append(errs, fmt.Errorf("mirror: max blob size %d must be positive", c.MaxBlobSize))
	}
	if c.FetchTimeout <= 0 {
		errs = append(errs, fmt.Errorf("mirror: fetch timeout %v must be positive", c.FetchTimeout))
	}
	if c.DefaultUpstream != "" {
		if _, err := upstreamHost("", c.DefaultUpstream); err != nil {
			errs = append(errs, fmt.Errorf("mirror: default upstream: %w", err))
		}
	}
	for _, u := range c.PeerUpstreams {
		if _, err := upstreamHost("", u); err != nil {
			errs = append(errs, fmt.Errorf("mirror: peer upstream: %w", err))
		}
	}
	if err := c.Origin.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Stats are the mirror's counters since start.
type Stats struct {
	Requests      int64 `json:"requests"`
	LocalHits     int64 `json:"localHits"`     // requests for content already kept
	UpstreamBytes int64 `json:"upstreamBytes"` // blob and manifest bytes fetched from upstream registries
	PeerBytes     int64 `json:"peerBytes"`     // blob and manifest bytes fetched from peers, verified
	PeerRejected  int64 `json:"peerRejected"`  // fetches from peers that failed verification or broke off
	ThroughBytes  int64 `json:"throughBytes"`  // of PeerBytes, those the blob's rendezvous owner fetched for us
	ForPeers      int64 `json:"forPeers"`      // fetches this host made as a blob's owner for peers that asked
	ServedBytes   int64 `json:"servedBytes"`   // body bytes sent to clients
	KeptBytes     int64 `json:"keptBytes"`
	KeptFiles     int   `json:"keptFiles"`
}

// Mirror is the node-local, read-only registry mirror: an http.Handler for the distribution API.
type Mirror struct {
	cfg   Config
	store *store
	peers Peers // may be nil
	log   *slog.Logger

	// flights: one per digest (store, peers, the owner, then direct); direct: one per digest
	// fetched from the upstream, shared by this host's flight and the peers it owns the blob for.
	flights, direct singleflight.Group

	unregister func()
	closeOnce  sync.Once

	mu         sync.Mutex
	registries map[string]*origin.Registry // host/repository → client, keeping its tokens
	cancels    map[*int]context.CancelFunc // shared fetches in progress, ended by Close
	growing    map[digest.Digest]*growing  // upstream downloads peers may read as they land
	closed     bool

	requests, localHits, upstreamBytes, peerBytes, peerRejected, served, throughBytes, forPeers atomic.Int64
}

var _ http.Handler = (*Mirror)(nil)

// New opens the mirror's store. peers may be nil (no peer exchange).
func New(cfg Config, peers Peers) (*Mirror, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	st, err := openStore(cfg.Dir, cfg.MaxBytes)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	m := &Mirror{cfg: cfg, store: st, peers: peers, log: log.With("subsystem", "mirror"),
		registries: map[string]*origin.Registry{}, cancels: map[*int]context.CancelFunc{}, growing: map[digest.Digest]*growing{}}
	if m.unregister, err = m.registerMetrics(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	return m, nil
}

// Stats returns the counters.
func (m *Mirror) Stats() Stats {
	b, n := m.store.usage()
	return Stats{Requests: m.requests.Load(), LocalHits: m.localHits.Load(), UpstreamBytes: m.upstreamBytes.Load(),
		PeerBytes: m.peerBytes.Load(), PeerRejected: m.peerRejected.Load(), ServedBytes: m.served.Load(), KeptBytes: b, KeptFiles: n,
		ThroughBytes: m.throughBytes.Load(), ForPeers: m.forPeers.Load()}
}

// OpenBlob opens a kept, verified blob or manifest for a peer (the p2p blob exchange's local
// side); ok is false when it is not kept.
func (m *Mirror) OpenBlob(d digest.Digest) (f *os.File, size int64, ok bool, err error) {
	return m.store.open(d)
}

// Serve answers HTTP on ln until ctx ends, then closes the mirror.
func (m *Mirror) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	stop := context.AfterFunc(ctx, func() {
		_ = srv.Close()
		_ = m.Close()
	})
	defer stop()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("mirror: %w", err)
}

// Close ends the shared fetches in progress and unregisters the metrics.
func (m *Mirror) Close() error {
	m.closeOnce.Do(m.unregister)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for _, c := range m.cancels {
		c()
	}
	return nil
}

// registry returns the client of one upstream repository, made once so its tokens are reused.
func (m *Mirror) registry(host, repo string) (*origin.Registry, error) {
	key := host + "/" + repo
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.registries[key]; r != nil {
		return r, nil
	}
	r, err := origin.NewRegistry(origin.Reference{Registry: host, Repository: repo, Tag: "latest"}, m.cfg.Origin)
	if err != nil {
		return nil, err
	}
	if len(m.registries) >= 1024 {
		clear(m.registries) // bounded; tokens are fetched again
	}
	m.registries[key] = r
	return r, nil
}

// ServeHTTP answers GET and HEAD of the read-only distribution API.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.requests.Add(1)
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		apiError(w, r, http.StatusMethodNotAllowed, "UNSUPPORTED", "this mirror is read-only")
		return
	}
	ap, err := parsePath(r.URL.Path)
	if err != nil {
		apiError(w, r, http.StatusNotFound, "NAME_INVALID", err.Error())
		return
	}
	if ap.kind == kindBase {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}")
		return
	}
	// Content by digest is the same whatever registry it came from: it is served from the
	// store or peers even when no upstream can be named; only a fetch from the upstream needs it.
	host, herr := upstreamHost(r.URL.Query().Get("ns"), m.cfg.DefaultUpstream)
	switch {
	case ap.kind == kindManifest && ap.tag != "":
		if herr != nil {
			apiError(w, r, http.StatusBadRequest, "NAME_INVALID", herr.Error())
			return
		}
		m.serveTag(w, r, host, ap)
	case ap.kind == kindManifest:
		m.serveContent(w, r, upstream{host, herr}, ap, true)
	default:
		m.serveContent(w, r, upstream{host, herr}, ap, false)
	}
}

// serveTag resolves a tag at the upstream and passes the manifest through, keeping it by digest
// so the GET by digest that follows is local.
func (m *Mirror) serveTag(w http.ResponseWriter, r *http.Request, host string, ap apiPath) {
	reg, err := m.registry(host, ap.name)
	if err != nil {
		upstreamError(w, r, err)
		return
	}
	desc, body, err := reg.ManifestByTag(r.Context(), ap.tag)
	if err != nil {
		m.log.Debug("tag at upstream", "upstream", host, "repository", ap.name, "tag", ap.tag, "err", err)
		upstreamError(w, r, err)
		return
	}
	m.upstreamBytes.Add(int64(len(body)))
	if _, err := m.store.ingest(desc.Digest, int64(len(body)), func(w io.Writer) error { _, err := w.Write(body); return err }); err != nil {
		m.log.Warn("keeping a manifest", "manifest", desc.Digest, "err", err)
	}
	writeManifest(w, r, desc.MediaType, desc.Digest, body)
	m.served.Add(int64(len(body)))
}

func writeManifest(w http.ResponseWriter, r *http.Request, mediaType string, d digest.Digest, body []byte) {
	h := w.Header()
	h.Set("Content-Type", mediaType)
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Etag", `"`+d.String()+`"`)
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(body)
}

// serveContent serves a manifest by digest or a blob: from the store, else fetched (peers, then
// the upstream) into the store, verified, then served from there.
func (m *Mirror) serveContent(w http.ResponseWriter, r *http.Request, up upstream, ap apiPath, manifest bool) {
	d := ap.digest
	f, size, ok, err := m.store.open(d)
	if err != nil {
		apiError(w, r, http.StatusInternalServerError, "UNKNOWN", err.Error())
		return
	}
	if ok {
		m.localHits.Add(1)
	} else {
		if err := m.fetch(r.Context(), up, ap.name, d, manifest); err != nil {
			m.log.Debug("fetch", "digest", d, "repository", ap.name, "upstream", up.host, "err", err)
			upstreamError(w, r, err)
			return
		}
		if f, size, ok, err = m.store.open(d); err != nil || !ok {
			apiError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", fmt.Sprintf("%s: fetched but no longer kept (cache too small?)", d))
			return
		}
	}
	defer f.Close()
	if m.cfg.Served != nil && up.err == nil {
		m.cfg.Served(r.Context(), up.host+"/"+ap.name, d)
	}
	if manifest {
		if size > m.cfg.Origin.MaxManifestSize {
			apiError(w, r, http.StatusNotFound, "MANIFEST_UNKNOWN", fmt.Sprintf("%s is %d bytes, not a manifest", d, size))
			return
		}
		body, err := io.ReadAll(f)
		if err != nil {
			apiError(w, r, http.StatusInternalServerError, "UNKNOWN", err.Error())
			return
		}
		desc, err := origin.DescribeManifest(body, "")
		if err != nil {
			apiError(w, r, http.StatusNotFound, "MANIFEST_UNKNOWN", fmt.Sprintf("%s: %v", d, err))
			return
		}
		writeManifest(w, r, desc.MediaType, d, body)
		m.served.Add(int64(len(body)))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000")
	// ServeContent answers Range, If-Range and HEAD from the verified file.
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, "", time.Time{}, f)
	m.served.Add(cw.n)
}

// fetch brings d into the store, sharing one fetch among concurrent requests for it: from
// peers that hold it, else through the blob's rendezvous owner (which fetches it from the
// upstream once for the cluster), else from the upstream itself.
func (m *Mirror) fetch(ctx context.Context, up upstream, repo string, d digest.Digest, manifest bool) error {
	return m.shared(ctx, &m.flights, d, func(ctx context.Context) error { return m.fetchNow(ctx, up, repo, d, manifest) })
}

// shared runs fn once for concurrent callers with one key in g. The shared run has its own
// context (bounded by FetchTimeout and Close) so that a client that leaves does not fail the
// others; each waiter leaves when its own ctx ends.
func (m *Mirror) shared(ctx context.Context, g *singleflight.Group, d digest.Digest, fn func(context.Context) error) error {
	ch := g.DoChan(d.String(), func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.FetchTimeout)
		defer cancel()
		key := new(int)
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, errors.New("mirror closed")
		}
		m.cancels[key] = cancel
		m.mu.Unlock()
		defer func() { m.mu.Lock(); delete(m.cancels, key); m.mu.Unlock() }()
		if m.store.has(d) {
			return nil, nil // a flight that ended just before this one began
		}
		return nil, fn(fctx)
	})
	select {
	case res := <-ch:
		return res.Err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// upstream is the registry a request names, or why it names none.
type upstream struct {
	host string
	err  error
}

// errNotDelegated: this host is the blob's owner; nothing was fetched through a peer.
var errNotDelegated = errors.New("this host owns the blob")

// fetchNow tries the peers that hold d, then its rendezvous owner, then the upstream.
func (m *Mirror) fetchNow(ctx context.Context, up upstream, repo string, d digest.Digest, manifest bool) error {
	max := m.maxSize(manifest)
	if m.peers != nil {
		if m.cfg.Fetching != nil && up.err == nil {
			m.cfg.Fetching(ctx, up.host+"/"+repo, d)
		}
		var from string
		n, err := m.store.ingest(d, max, func(w io.Writer) error {
			var err error
			from, err = m.peers.FetchBlob(ctx, d, max, w)
			return err
		})
		if err == nil {
			m.peerBytes.Add(n)
			m.log.Debug("from a peer", "digest", d, "peer", from, "bytes", n)
			return nil
		}
		held := n > 0 || errors.Is(err, ErrCorrupt)
		if held {
			m.peerRejected.Add(1)
			m.log.Info("peer fetch failed; trying the upstream", "digest", d, "peer", from, "err", err)
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		// Nobody holds it yet: the first fetch of it in the cluster goes to its owner. (A
		// holder that failed means it was fetched before; the owner would only repeat that.)
		if c, ok := m.peers.(Coalescer); ok && !held && up.err == nil {
			n, err := m.store.ingest(d, max, func(w io.Writer) error {
				var delegated bool
				var err error
				from, delegated, err = c.FetchBlobThrough(ctx, d, manifest, up.host, repo, max, w)
				if err == nil && !delegated {
					return errNotDelegated
				}
				return err
			})
			switch {
			case err == nil:
				m.peerBytes.Add(n)
				m.throughBytes.Add(n)
				m.log.Debug("through its owner", "digest", d, "peer", from, "bytes", n)
				return nil
			case errors.Is(err, errNotDelegated):
			default:
				if n > 0 || errors.Is(err, ErrCorrupt) {
					m.peerRejected.Add(1)
				}
				m.log.Info("fetch through the blob's owner failed; trying the upstream", "digest", d, "peer", from, "err", err)
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
			}
		}
	}
	return m.fromUpstream(ctx, up, repo, d, manifest)
}

// FetchForPeer fetches d from upstream (repository repo) for a peer that asked this host as
// the blob's rendezvous owner, sharing the fetch with this host's own clients and every other
// peer that asks. With Config.PeerUpstreams set it fetches only from those; it never asks
// another peer to fetch through (two owners could wait on each other).
func (m *Mirror) FetchForPeer(ctx context.Context, d digest.Digest, manifest bool, host, repo string, _ int64) error {
	if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("%q: not a sha256 digest: %w", d, origin.ErrInvalidReference)
	}
	if ap, err := parsePath("/v2/" + repo + "/blobs/" + d.String()); err != nil || ap.name != repo {
		return fmt.Errorf("repository %q: %w", truncate(repo, 80), origin.ErrInvalidReference)
	}
	h, err := upstreamHost(host, "")
	if err != nil || h != host || !m.knows(host) {
		return fmt.Errorf("upstream %q: not one this host fetches from for peers: %w", truncate(host, 80), origin.ErrInvalidReference)
	}
	if m.store.has(d) {
		return nil
	}
	m.forPeers.Add(1)
	return m.fromUpstream(ctx, upstream{host: host}, repo, d, manifest)
}

// knows reports whether host is an upstream this host fetches from for peers.
func (m *Mirror) knows(host string) bool {
	if len(m.cfg.PeerUpstreams) == 0 {
		return true
	}
	for _, u := range m.cfg.PeerUpstreams {
		if h, err := upstreamHost("", u); err == nil && h == host {
			return true
		}
	}
	return false
}

func (m *Mirror) maxSize(manifest bool) int64 {
	if manifest {
		return m.cfg.Origin.MaxManifestSize
	}
	return m.cfg.MaxBlobSize
}

// fromUpstream fetches d from the upstream into the store, once for concurrent callers (this
// host's flight and the peers it owns d for).
func (m *Mirror) fromUpstream(ctx context.Context, up upstream, repo string, d digest.Digest, manifest bool) error {
	if up.err != nil {
		return fmt.Errorf("%s: no peer has it, and %w: %w", d, up.err, origin.ErrInvalidReference)
	}
	return m.shared(ctx, &m.direct, d, func(ctx context.Context) error {
		max := m.maxSize(manifest)
		reg, err := m.registry(up.host, repo)
		if err != nil {
			return err
		}
		if manifest {
			_, body, err := reg.Manifest(ctx, d)
			if err != nil {
				return err
			}
			m.upstreamBytes.Add(int64(len(body)))
			_, err = m.store.ingest(d, max, func(w io.Writer) error { _, err := w.Write(body); return err })
			return err
		}
		rc, err := reg.Open(ctx, d)
		if err != nil {
			return err
		}
		defer rc.Close()
		size := int64(-1)
		if s, ok := rc.(sizer); ok {
			size = s.Size()
		}
		var g *growing
		n, err := m.store.ingestNamed(d, max, func(w io.Writer, tmp string) error {
			if size >= 0 && size <= max {
				// Peers may read it as it lands (stream.go).
				g = &growing{tmp: tmp, size: size, upstream: up.host + "/" + repo, changed: make(chan struct{})}
				m.mu.Lock()
				m.growing[d] = g
				m.mu.Unlock()
				w = growingWriter{w: w, g: g}
			}
			_, err := io.Copy(w, rc)
			return err
		})
		if g != nil {
			m.mu.Lock()
			delete(m.growing, d)
			m.mu.Unlock()
			g.end(err)
		}
		m.upstreamBytes.Add(n)
		return err
	})
}

// countingWriter counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// apiError writes a distribution-spec error body.
func apiError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	b, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = io.Copy(w, bytes.NewReader(b))
	}
}

// upstreamError maps an error of the fetch path to a status containerd acts on.
func upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, origin.ErrNotFound):
		apiError(w, r, http.StatusNotFound, "NOT_FOUND", err.Error())
	case errors.Is(err, origin.ErrUnauthorized):
		apiError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", err.Error())
	case errors.Is(err, origin.ErrInvalidReference), errors.Is(err, origin.ErrUnsupported):
		apiError(w, r, http.StatusBadRequest, "UNSUPPORTED", err.Error())
	case errors.Is(err, errTooLarge):
		apiError(w, r, http.StatusRequestEntityTooLarge, "SIZE_INVALID", err.Error())
	default:
		apiError(w, r, http.StatusBadGateway, "UNAVAILABLE", err.Error())
	}
}
