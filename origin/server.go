package origin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// ServerConfig holds the optional settings of the embedded origin server.
type ServerConfig struct {
	// Rate caps the body bytes per second sent to all clients together; 0 means no cap. It
	// models a constrained origin in demos and benchmarks.
	Rate int64
	// StatsInterval is how often Run logs the bytes served; 0 disables the log line.
	StatsInterval time.Duration
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the server's Prometheus metrics; nil registers none.
	Registerer prometheus.Registerer
}

// DefaultServerConfig returns the server's default settings.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{StatsInterval: time.Minute}
}

// Validate checks the settings.
func (c *ServerConfig) Validate() error {
	if c.Rate < 0 {
		return fmt.Errorf("origin server config: rate %d bytes/s must not be negative", c.Rate)
	}
	if c.StatsInterval < 0 {
		return fmt.Errorf("origin server config: stats interval %v must not be negative", c.StatsInterval)
	}
	return nil
}

// Stats are the server's counters since it started, as served at GET /shoal/stats.
type Stats struct {
	BytesServed int64 `json:"bytesServed"` // body bytes sent (manifests and blobs)
	Requests    int64 `json:"requests"`    // every request
	Manifests   int64 `json:"manifests"`   // successful manifest GETs
	Blobs       int64 `json:"blobs"`       // successful blob GETs (whole or ranged)
	Ranges      int64 `json:"ranges"`      // blob GETs answered with 206
	NotFound    int64 `json:"notFound"`
	Rate        int64 `json:"rateBytesPerSecond"` // the configured cap; 0 for none
}

// StatsPath is the URL path of the server's JSON counters.
const StatsPath = "/shoal/stats"

// Server is a read-only OCI Distribution server over local image layouts: the embedded origin.
// Each layout is a repository whose tags are "latest" and the ref names in its index.json.
type Server struct {
	repos   map[string]*servedRepo
	cfg     ServerConfig
	log     *slog.Logger
	limiter *rate.Limiter
	chunk   int
	metrics *serverMetrics

	bytes, requests, manifests, blobs, ranges, notFound atomic.Int64
}

var _ http.Handler = (*Server)(nil)

type servedRepo struct {
	dir       string
	tags      map[string]ocispec.Descriptor
	manifests map[digest.Digest]ocispec.Descriptor
}

// NewServer serves each layout directory of layouts (repository name → directory). It reads each
// layout's index.json to learn its tags.
func NewServer(layouts map[string]string, cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(layouts) == 0 {
		return nil, errors.New("origin server: no layout to serve")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{repos: map[string]*servedRepo{}, cfg: cfg, log: log.With("subsystem", "origin-server"), metrics: newServerMetrics(cfg.Registerer)}
	for name, dir := range layouts {
		for _, c := range strings.Split(name, "/") {
			if !repoComponent.MatchString(c) {
				return nil, fmt.Errorf("origin server: repository name %q for %s: lower-case letters, digits and separators only", name, dir)
			}
		}
		r, err := loadServedRepo(dir)
		if err != nil {
			return nil, fmt.Errorf("origin server: repository %s: %w", name, err)
		}
		s.repos[name] = r
	}
	if cfg.Rate > 0 {
		// A burst of 1/20 s keeps the rate close to the cap over any second.
		burst := int(min(max(cfg.Rate/20, 1024), 1<<20))
		s.limiter = rate.NewLimiter(rate.Limit(cfg.Rate), burst)
		s.chunk = min(burst, 32<<10)
	}
	return s, nil
}

func loadServedRepo(dir string) (*servedRepo, error) {
	if err := checkLayout(dir); err != nil {
		return nil, err
	}
	b, err := readIndex(dir)
	if err != nil {
		return nil, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("layout %s: index.json: %w", dir, err)
	}
	r := &servedRepo{dir: dir, tags: map[string]ocispec.Descriptor{}, manifests: map[digest.Digest]ocispec.Descriptor{}}
	for _, d := range idx.Manifests {
		if d.Digest.Validate() != nil {
			continue
		}
		r.manifests[d.Digest] = d
		if n := d.Annotations[ocispec.AnnotationRefName]; n != "" && tagPattern.MatchString(n) {
			r.tags[n] = d
		}
	}
	if _, ok := r.tags["latest"]; !ok {
		if d, err := chooseManifest(b, ""); err == nil {
			r.tags["latest"] = d
		}
	}
	if len(r.manifests) == 0 {
		return nil, fmt.Errorf("layout %s: index.json lists no manifest: %w", dir, ErrNotFound)
	}
	return r, nil
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{
		BytesServed: s.bytes.Load(), Requests: s.requests.Load(), Manifests: s.manifests.Load(),
		Blobs: s.blobs.Load(), Ranges: s.ranges.Load(), NotFound: s.notFound.Load(), Rate: s.cfg.Rate,
	}
}

// Run serves on l until ctx is done, logging the bytes served every StatsInterval.
func (s *Server) Run(ctx context.Context, l net.Listener) error {
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 30 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	s.log.Info("origin server listening", "addr", l.Addr().String(), "repositories", s.names(), "rate", s.cfg.Rate)
	var tick <-chan time.Time
	if s.cfg.StatsInterval > 0 {
		t := time.NewTicker(s.cfg.StatsInterval)
		defer t.Stop()
		tick = t.C
	}
	var last int64
	for {
		select {
		case err := <-errc:
			return fmt.Errorf("origin server: %w", err)
		case <-tick:
			st := s.Stats()
			if st.BytesServed != last {
				s.log.Info("origin server stats", "bytesServed", st.BytesServed, "bytesSinceLast", st.BytesServed-last, "requests", st.Requests)
				last = st.BytesServed
			}
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			err := hs.Shutdown(sctx)
			cancel()
			if err != nil {
				_ = hs.Close()
			}
			if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Debug("origin server stopped", "err", err)
			}
			return nil
		}
	}
}

func (s *Server) names() []string {
	n := make([]string, 0, len(s.repos))
	for k := range s.repos {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// statusRecorder remembers the status for metrics.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// ServeHTTP implements the read side of the OCI Distribution API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	rec := &statusRecorder{ResponseWriter: w}
	defer func() { s.metrics.requests.WithLabelValues(strconv.Itoa(max(rec.code, 200))).Inc() }()
	s.serve(rec, r)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == StatsPath {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Stats())
		return
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		s.apiError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "this origin is read-only")
		return
	}
	p := r.URL.Path
	if p == "/v2/" || p == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}")
		return
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		s.apiError(w, http.StatusNotFound, "NOT_FOUND", "no such endpoint")
		return
	}
	for _, kind := range []string{"/manifests/", "/blobs/", "/tags/"} {
		i := strings.LastIndex(rest, kind)
		if i <= 0 {
			continue
		}
		name, ref := rest[:i], rest[i+len(kind):]
		repo := s.repos[name]
		if repo == nil {
			s.apiError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository "+name+" is not known")
			return
		}
		switch kind {
		case "/manifests/":
			s.serveManifest(w, r, repo, ref)
		case "/blobs/":
			s.serveBlob(w, r, repo, ref)
		default:
			if ref != "list" {
				break
			}
			tags := make([]string, 0, len(repo.tags))
			for t := range repo.tags {
				tags = append(tags, t)
			}
			sort.Strings(tags)
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"name": name, "tags": tags})
			return
		}
		return
	}
	s.apiError(w, http.StatusNotFound, "NOT_FOUND", "no such endpoint")
}

func (s *Server) apiError(w http.ResponseWriter, code int, errCode, msg string) {
	if code == http.StatusNotFound {
		s.notFound.Add(1)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": errCode, "message": msg}}})
}

func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request, repo *servedRepo, ref string) {
	desc, ok := repo.tags[ref]
	if !ok {
		d, err := digest.Parse(ref)
		if err == nil {
			desc, ok = repo.manifests[d]
		}
	}
	if !ok {
		s.apiError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest "+truncate(ref, 100)+" is not known")
		return
	}
	p, err := blobPath(repo.dir, desc.Digest)
	if err != nil {
		s.apiError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", err.Error())
		return
	}
	b, err := os.ReadFile(p)
	if err != nil {
		s.log.Warn("manifest listed in index.json is missing", "layout", repo.dir, "digest", desc.Digest, "err", err)
		s.apiError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest "+desc.Digest.String()+" is missing from the layout")
		return
	}
	mt := desc.MediaType
	if mt == "" {
		if d, err := describeManifest(b, ""); err == nil {
			mt = d.MediaType
		}
	}
	w.Header().Set("Content-Type", mt)
	w.Header().Set("Docker-Content-Digest", desc.Digest.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	if r.Method == http.MethodHead {
		return
	}
	s.manifests.Add(1)
	_, _ = s.writer(r.Context(), w).Write(b)
}

func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, repo *servedRepo, ref string) {
	d, err := digest.Parse(ref)
	if err != nil {
		s.apiError(w, http.StatusBadRequest, "DIGEST_INVALID", "bad digest "+strconv.Quote(truncate(ref, 100)))
		return
	}
	p, _ := blobPath(repo.dir, d)
	f, err := os.Open(p)
	if err != nil {
		s.apiError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob "+d.String()+" is not known")
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		s.apiError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob "+d.String()+" is not known")
		return
	}
	size := fi.Size()
	h := w.Header()
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", "application/octet-stream")
	h.Set("ETag", `"`+d.String()+`"`)
	rng := byteRange{0, size}
	code := http.StatusOK
	if rh := r.Header.Get("Range"); rh != "" && r.Method == http.MethodGet {
		switch got, err := parseRange(rh, size); {
		case err == nil:
			rng, code = got, http.StatusPartialContent
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", got.Start, got.End-1, size))
		case errors.Is(err, ErrRange):
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			s.apiError(w, http.StatusRequestedRangeNotSatisfiable, "BLOB_UNKNOWN", "range outside the blob")
			return
		}
	}
	h.Set("Content-Length", strconv.FormatInt(rng.length(), 10))
	w.WriteHeader(code)
	if r.Method == http.MethodHead {
		return
	}
	s.blobs.Add(1)
	if code == http.StatusPartialContent {
		s.ranges.Add(1)
	}
	if _, err := io.Copy(s.writer(r.Context(), w), io.NewSectionReader(f, rng.Start, rng.length())); err != nil {
		s.log.Debug("blob response cut short", "layout", repo.dir, "digest", d, "err", err)
	}
}

// writer counts the bytes written to w and holds them to the rate cap.
func (s *Server) writer(ctx context.Context, w io.Writer) io.Writer {
	return &limitedWriter{ctx: ctx, w: w, s: s}
}

type limitedWriter struct {
	ctx context.Context
	w   io.Writer
	s   *Server
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := len(p)
		if l.s.limiter != nil {
			k = min(k, l.s.chunk)
			if err := l.s.limiter.WaitN(l.ctx, k); err != nil {
				return written, err
			}
		}
		n, err := l.w.Write(p[:k])
		written += n
		l.s.bytes.Add(int64(n))
		l.s.metrics.bytes.Add(float64(n))
		if err != nil {
			return written, err
		}
		p = p[k:]
	}
	return written, nil
}

// LayoutName is the repository name a layout directory is served as by default: its base name,
// lower-cased.
func LayoutName(dir string) string {
	return strings.ToLower(filepath.Base(filepath.Clean(dir)))
}
