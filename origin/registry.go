package origin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Docker media types still served by many registries; accepted when resolving.
const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// manifestAccept is the Accept header of manifest requests.
var manifestAccept = strings.Join([]string{
	ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex, mediaTypeDockerManifest, mediaTypeDockerManifestList,
}, ", ")

// Registry is a Source that reads one repository of an OCI Distribution registry.
type Registry struct {
	ref     Reference
	base    string // scheme://host
	cfg     Config
	client  *http.Client
	auth    *authenticator
	sem     chan struct{}
	retry   retrier
	log     *slog.Logger
	metrics *clientMetrics
}

var _ Source = (*Registry)(nil)

// NewRegistry returns a Source for the repository named by ref. It reads the Docker config for
// credentials (when cfg has none) but sends no request.
func NewRegistry(ref Reference, cfg Config) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	client, err := newHTTPClient(&cfg)
	if err != nil {
		return nil, err
	}
	log := cfg.logger().With("registry", ref.Registry, "repository", ref.Repository)
	creds := credentials{Username: cfg.Username, Password: cfg.Password}
	var credHelper string
	if creds.empty() {
		c, helper, err := dockerCredentials(cfg.dockerConfigPath(), ref.Registry)
		if err != nil {
			return nil, err
		}
		creds = c
		if helper != "" {
			log.Debug("credentials from a docker credential helper", "helper", helper)
		}
		credHelper = helper
	}
	scheme := "https"
	if cfg.isInsecure(ref.Registry) {
		scheme = "http"
	}
	m := newClientMetrics(cfg.Registerer)
	r := &Registry{
		ref:     ref,
		base:    scheme + "://" + ref.Registry,
		cfg:     cfg,
		client:  client,
		auth:    newAuthenticator(ref.Registry, creds, client, cfg.UserAgent),
		sem:     make(chan struct{}, cfg.MaxConcurrent),
		log:     log,
		metrics: m,
	}
	r.auth.helper = credHelper
	image := ref.Registry + "/" + ref.Repository
	if ps := cfg.PullSecrets; ps != nil {
		r.auth.secret = func() (credentials, time.Time, bool) { return ps.get(image) }
	}
	// A provider that matches is asked before this host's own credentials (docs/privacy.md); a
	// provider with no answer for the image leaves them.
	if cfg.CredentialProviders.match(image) {
		kp := cfg.CredentialProviders
		log.Debug("credentials from a kubelet credential provider")
		r.auth.provider = func(ctx context.Context) credentials {
			c, _, err := kp.credentials(ctx, image)
			if err != nil {
				// The plugin's error (never its output, which holds secrets) is logged; the
				// request goes on without credentials, and the registry's refusal says so.
				log.Warn("kubelet credential provider failed", "err", err)
			}
			return c
		}
	}
	r.retry = retrier{retries: cfg.Retries, base: cfg.RetryBase, maxWait: cfg.RetryMax, log: log, onRetry: m.retries.Inc}
	return r, nil
}

// Reference returns the reference this Source reads.
func (r *Registry) Reference() Reference { return r.ref }

func (r *Registry) pullScope() []string { return []string{"repository:" + r.ref.Repository + ":pull"} }
func (r *Registry) pushScope() []string {
	return []string{"repository:" + r.ref.Repository + ":pull,push"}
}

func (r *Registry) describe(obj string) string {
	return fmt.Sprintf("registry %s repository %s %s", r.ref.Registry, r.ref.Repository, obj)
}

// request is one HTTP exchange with the registry.
type request struct {
	method string
	url    string // absolute, or a path starting with "/"
	scopes []string
	header http.Header
	body   func() (io.ReadCloser, error) // nil: no body
	size   int64                         // body length when body is set
	what   string                        // for error messages
}

// roundTrip makes one attempt: it waits for a concurrency slot, authorizes (answering up to two
// 401 challenges), and returns a response with status < 400 whose body is watched for stalls.
// Closing the body frees the slot. Errors worth retrying are marked retryable.
func (r *Registry) roundTrip(ctx context.Context, q *request) (*http.Response, error) {
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", q.what, context.Cause(ctx))
	}
	actx, cancel := context.WithCancel(ctx)
	wd := newWatchdog(r.cfg.Timeout, cancel)
	done := func() { wd.stop(); cancel(); <-r.sem }
	fail := func(err error) (*http.Response, error) { done(); return nil, err }
	u := q.url
	if strings.HasPrefix(u, "/") {
		u = r.base + u
	}
	for round := 0; ; round++ {
		wd.kick()
		var body io.ReadCloser
		if q.body != nil {
			b, err := q.body()
			if err != nil {
				return fail(fmt.Errorf("%s: %w", q.what, err))
			}
			// Sending a large body is progress too.
			body = &kickReader{rc: b, w: wd}
		}
		req, err := http.NewRequestWithContext(actx, q.method, u, body)
		if err != nil {
			if body != nil {
				body.Close()
			}
			return fail(fmt.Errorf("%s: %w", q.what, err))
		}
		if body != nil {
			req.ContentLength = q.size
		}
		for k, v := range q.header {
			req.Header[k] = v
		}
		req.Header.Set("User-Agent", r.cfg.UserAgent)
		sent, err := r.auth.authorize(actx, req, q.scopes)
		if err != nil {
			if body != nil {
				body.Close()
			}
			return fail(r.attemptError(ctx, wd, q.what, err))
		}
		resp, err := r.client.Do(req)
		if err != nil {
			r.metrics.requests.WithLabelValues("error").Inc()
			return fail(r.attemptError(ctx, wd, q.what, err))
		}
		r.metrics.requests.WithLabelValues(strconv.Itoa(resp.StatusCode)).Inc()
		if resp.StatusCode == http.StatusUnauthorized && round < 2 && r.auth.challenged(resp, q.scopes, sent) {
			drain(resp.Body)
			continue
		}
		if resp.StatusCode >= 400 {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			drain(resp.Body)
			return fail(statusError(q.what, resp, bytes.TrimSpace(msg), r.auth.now()))
		}
		resp.Body = &watchedBody{rc: resp.Body, w: wd, what: q.what, release: done}
		return resp, nil
	}
}

// attemptError classifies an error of a request that got no response.
func (r *Registry) attemptError(ctx context.Context, wd *watchdog, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, context.Cause(ctx))
	}
	if wd.stalled.Load() {
		return retryable(fmt.Errorf("%s: no response for %v", what, wd.d), 0)
	}
	var re *retryableError
	if errors.As(err, &re) {
		return err
	}
	var (
		unknownCA x509.UnknownAuthorityError
		verifyErr *tls.CertificateVerificationError
		hostErr   x509.HostnameError
		certErr   x509.CertificateInvalidError
		recErr    tls.RecordHeaderError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &verifyErr) || errors.As(err, &hostErr) || errors.As(err, &certErr) || errors.As(err, &recErr) ||
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return fmt.Errorf("%s: TLS: %w (for a plain-HTTP registry, mark it insecure)", what, err)
	}
	if errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrBadResponse) {
		return err
	}
	return retryable(fmt.Errorf("%s: %w", what, err), 0)
}

// kickReader is a request body whose reads count as progress for the watchdog.
type kickReader struct {
	rc io.ReadCloser
	w  *watchdog
}

func (k *kickReader) Read(p []byte) (int, error) {
	n, err := k.rc.Read(p)
	if n > 0 {
		k.w.kick()
	}
	return n, err
}

func (k *kickReader) Close() error { return k.rc.Close() }

func drain(rc io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, rc, 64<<10)
	rc.Close()
}

// Resolve fetches the image manifest named by the reference and verifies its digest. When the
// reference names an index, the manifest chosen is the Shoal image for this host's platform
// (marked by Shoal's artifact type or PlatformFeature), or the index's only manifest.
func (r *Registry) Resolve(ctx context.Context) (ocispec.Descriptor, []byte, error) {
	desc, body, err := r.fetchManifest(ctx, r.ref.manifestRef(), r.ref.Digest)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if !isIndex(desc.MediaType) {
		return desc, body, nil
	}
	child, err := chooseManifest(body, "")
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%s: %w", r.describe("index "+desc.Digest.String()), err)
	}
	desc, body, err = r.fetchManifest(ctx, child.Digest.String(), child.Digest)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if isIndex(desc.MediaType) {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%s: nested index: %w", r.describe("manifest "+desc.Digest.String()), ErrUnsupported)
	}
	return desc, body, nil
}

// fetchManifest GETs one manifest and checks its digest: against want when set, else against the
// Docker-Content-Digest header when the registry sends one.
func (r *Registry) fetchManifest(ctx context.Context, ref string, want digest.Digest) (ocispec.Descriptor, []byte, error) {
	what := r.describe("manifest " + ref)
	var (
		desc ocispec.Descriptor
		body []byte
	)
	err := r.retry.run(ctx, what, func(ctx context.Context) error {
		resp, err := r.roundTrip(ctx, &request{
			method: http.MethodGet, url: "/v2/" + r.ref.Repository + "/manifests/" + ref, scopes: r.pullScope(),
			header: http.Header{"Accept": {manifestAccept}}, what: what,
		})
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: status %s: %w", what, resp.Status, ErrBadResponse)
		}
		if resp.ContentLength > r.cfg.MaxManifestSize {
			return fmt.Errorf("%s: %d bytes, more than the %d allowed: %w", what, resp.ContentLength, r.cfg.MaxManifestSize, ErrUnsupported)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, r.cfg.MaxManifestSize+1))
		if err != nil {
			return err
		}
		if int64(len(b)) > r.cfg.MaxManifestSize {
			return fmt.Errorf("%s: more than the %d bytes allowed: %w", what, r.cfg.MaxManifestSize, ErrUnsupported)
		}
		if resp.ContentLength >= 0 && int64(len(b)) != resp.ContentLength {
			return retryable(fmt.Errorf("%s: %d bytes, Content-Length %d: %w", what, len(b), resp.ContentLength, ErrCorrupt), 0)
		}
		got := digest.SHA256.FromBytes(b)
		expect := want
		if expect == "" {
			if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
				d, err := digest.Parse(h)
				if err != nil {
					return fmt.Errorf("%s: Docker-Content-Digest %q: %w", what, truncate(h, 100), ErrBadResponse)
				}
				expect = d
			}
		}
		if expect != "" && expect.Algorithm() != digest.SHA256 {
			return fmt.Errorf("%s: digest algorithm %s: %w", what, expect.Algorithm(), ErrUnsupported)
		}
		if expect != "" && got != expect {
			// Possibly damaged on the way: worth another try.
			return retryable(fmt.Errorf("%s: body hashes to %s, want %s: %w", what, got, expect, ErrCorrupt), 0)
		}
		d, err := describeManifest(b, resp.Header.Get("Content-Type"))
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		d.Digest = got
		r.metrics.bytes.Add(float64(len(b)))
		desc, body = d, b
		return nil
	})
	return desc, body, err
}

// ReadRange returns exactly length bytes of the blob from offset off. A registry that ignores
// the Range header is read from its full response; a body of the wrong length or a range other
// than the one asked for is retried and never returned. The bytes are not verified (a range has
// no digest): callers verify them against their chunk CIDs.
func (r *Registry) ReadRange(ctx context.Context, dgst digest.Digest, off, length int64) ([]byte, error) {
	what := r.describe(fmt.Sprintf("blob %s range [%d,%d)", dgst, off, off+length))
	if err := checkRange(dgst, off, length); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if length == 0 {
		return []byte{}, nil
	}
	var out []byte
	err := r.retry.run(ctx, what, func(ctx context.Context) error {
		resp, err := r.roundTrip(ctx, &request{
			method: http.MethodGet, url: "/v2/" + r.ref.Repository + "/blobs/" + dgst.String(), scopes: r.pullScope(),
			header: http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, off+length-1)}}, what: what,
		})
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body := io.Reader(resp.Body)
		switch resp.StatusCode {
		case http.StatusPartialContent:
			got, size, err := parseContentRange(resp.Header.Get("Content-Range"))
			if err != nil {
				return retryable(fmt.Errorf("%s: %v: %w", what, err, ErrBadResponse), 0)
			}
			if got.Start == off && got.End < off+length && size == got.End {
				return fmt.Errorf("%s: blob is only %d bytes: %w", what, size, ErrRange)
			}
			if got.Start != off || got.End != off+length {
				return retryable(fmt.Errorf("%s: server sent range [%d,%d): %w", what, got.Start, got.End, ErrBadResponse), 0)
			}
			if resp.ContentLength >= 0 && resp.ContentLength != length {
				return retryable(fmt.Errorf("%s: Content-Length %d for %d bytes: %w", what, resp.ContentLength, length, ErrBadResponse), 0)
			}
		case http.StatusOK:
			// The server ignored Range: skip to the range in the whole blob.
			if resp.ContentLength >= 0 && resp.ContentLength < off+length {
				return fmt.Errorf("%s: blob is only %d bytes: %w", what, resp.ContentLength, ErrRange)
			}
			r.log.Debug("registry ignored Range; reading the whole blob", "blob", dgst)
			if n, err := io.CopyN(io.Discard, body, off); err != nil {
				if err == io.EOF {
					return fmt.Errorf("%s: blob is only %d bytes: %w", what, n, ErrRange)
				}
				return err
			}
		default:
			return fmt.Errorf("%s: status %s: %w", what, resp.Status, ErrBadResponse)
		}
		buf := make([]byte, length)
		n, err := io.ReadFull(body, buf)
		if err != nil {
			if resp.StatusCode == http.StatusOK && (err == io.EOF || err == io.ErrUnexpectedEOF) && resp.ContentLength < 0 {
				return fmt.Errorf("%s: blob ended after %d bytes: %w", what, off+int64(n), ErrRange)
			}
			return retryable(fmt.Errorf("%s: got %d of %d bytes: %w", what, n, length, err), 0)
		}
		if resp.StatusCode == http.StatusPartialContent {
			// More bytes than the range holds means the response is not what it claims.
			var one [1]byte
			if k, _ := io.ReadFull(body, one[:]); k > 0 {
				return retryable(fmt.Errorf("%s: body longer than %d bytes: %w", what, length, ErrBadResponse), 0)
			}
		}
		r.metrics.bytes.Add(float64(length))
		out = buf
		return nil
	})
	return out, err
}

func checkRange(dgst digest.Digest, off, length int64) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("%v: %w", err, ErrInvalidReference)
	}
	if off < 0 || length < 0 || off > (1<<62) || length > (1<<40) {
		return fmt.Errorf("bad range: %w", ErrRange)
	}
	return nil
}

// Open streams the whole blob. A connection lost part-way is resumed with a Range request from
// where it broke. The digest is checked at the end: the Read that would return io.EOF returns an
// error wrapping ErrCorrupt instead if the bytes do not match, so content must not be used
// before Read has returned io.EOF.
func (r *Registry) Open(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error) {
	what := r.describe("blob " + dgst.String())
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %v: %w", what, err, ErrInvalidReference)
	}
	if dgst.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("%s: %w", what, ErrUnsupported)
	}
	b := &blobReader{r: r, ctx: ctx, dgst: dgst, what: what, size: -1, verifier: dgst.Verifier()}
	// Open the first connection now so that a missing blob is reported by Open.
	if err := r.retry.run(ctx, what, b.connect); err != nil {
		return nil, err
	}
	return b, nil
}

// Size is the blob's size as the registry announced it (Content-Length), -1 if it did not.
func (b *blobReader) Size() int64 { return b.size }

// blobReader reads a blob, resuming after failures, and verifies it at the end.
type blobReader struct {
	r        *Registry
	ctx      context.Context
	dgst     digest.Digest
	what     string
	body     io.ReadCloser
	off      int64 // bytes delivered
	size     int64 // -1 until known
	verifier digest.Verifier
	failures int
	err      error // sticky
}

// connect opens the body at b.off.
func (b *blobReader) connect(ctx context.Context) error {
	h := http.Header{}
	if b.off > 0 {
		h.Set("Range", fmt.Sprintf("bytes=%d-", b.off))
	}
	resp, err := b.r.roundTrip(ctx, &request{
		method: http.MethodGet, url: "/v2/" + b.r.ref.Repository + "/blobs/" + b.dgst.String(), scopes: b.r.pullScope(),
		header: h, what: b.what,
	})
	if err != nil {
		return err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.ContentLength >= 0 {
			b.size = resp.ContentLength
		}
		if b.off > 0 {
			if _, err := io.CopyN(io.Discard, resp.Body, b.off); err != nil {
				resp.Body.Close()
				return retryable(fmt.Errorf("%s: skipping to %d: %w", b.what, b.off, err), 0)
			}
		}
	case http.StatusPartialContent:
		got, size, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || got.Start != b.off {
			resp.Body.Close()
			return retryable(fmt.Errorf("%s: resuming at %d: bad Content-Range %q: %w", b.what, b.off, resp.Header.Get("Content-Range"), ErrBadResponse), 0)
		}
		b.size = size
	default:
		resp.Body.Close()
		return fmt.Errorf("%s: status %s: %w", b.what, resp.Status, ErrBadResponse)
	}
	b.body = resp.Body
	return nil
}

func (b *blobReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	for {
		if b.body == nil {
			if err := b.r.retry.run(b.ctx, b.what, b.connect); err != nil {
				b.err = err
				return 0, err
			}
		}
		n, err := b.body.Read(p)
		if n > 0 {
			b.off += int64(n)
			_, _ = b.verifier.Write(p[:n]) // a hash: cannot fail
			b.r.metrics.bytes.Add(float64(n))
		}
		if b.size >= 0 && b.off > b.size {
			b.err = fmt.Errorf("%s: more than the %d bytes announced: %w", b.what, b.size, ErrCorrupt)
			return 0, b.err
		}
		if err == io.EOF && b.size >= 0 && b.off < b.size {
			err = retryable(fmt.Errorf("%s: body ended at %d of %d bytes", b.what, b.off, b.size), 0)
		}
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF:
			b.body.Close()
			b.body = nil
			if !b.verifier.Verified() {
				b.err = fmt.Errorf("%s: %d bytes do not match the digest: %w", b.what, b.off, ErrCorrupt)
				return n, b.err
			}
			b.err = io.EOF
			return n, io.EOF
		}
		b.body.Close()
		b.body = nil
		var re *retryableError
		if b.ctx.Err() != nil || !errors.As(err, &re) || b.failures >= b.r.cfg.Retries {
			b.err = fmt.Errorf("%s: at byte %d: %w", b.what, b.off, err)
			if b.ctx.Err() != nil {
				b.err = fmt.Errorf("%s: %w", b.what, context.Cause(b.ctx))
			}
			return n, b.err
		}
		b.failures++
		b.r.metrics.retries.Inc()
		b.r.log.Debug("resuming blob", "blob", b.dgst, "offset", b.off, "err", err)
		if n > 0 {
			return n, nil
		}
	}
}

func (b *blobReader) Close() error {
	if b.body != nil {
		b.body.Close()
		b.body = nil
	}
	if b.err == nil {
		b.err = errors.New(b.what + ": closed")
	}
	return nil
}

// describeManifest builds the descriptor of a manifest from its bytes. The media type comes from
// the body when it says, else from the Content-Type header.
func describeManifest(b []byte, contentType string) (ocispec.Descriptor, error) {
	var m struct {
		MediaType    string `json:"mediaType"`
		ArtifactType string `json:"artifactType"`
		Config       *struct {
			MediaType string `json:"mediaType"`
		} `json:"config"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("manifest is not JSON: %v: %w", err, ErrBadResponse)
	}
	mt := m.MediaType
	if mt == "" {
		mt, _, _ = strings.Cut(contentType, ";")
		mt = strings.TrimSpace(mt)
	}
	if mt == "" || mt == "application/json" || mt == "application/octet-stream" {
		// The OCI spec lets mediaType be absent: tell index from manifest by shape.
		if m.Manifests != nil {
			mt = ocispec.MediaTypeImageIndex
		} else {
			mt = ocispec.MediaTypeImageManifest
		}
	}
	switch mt {
	case ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex, mediaTypeDockerManifest, mediaTypeDockerManifestList:
	default:
		return ocispec.Descriptor{}, fmt.Errorf("media type %q is not an image manifest or index: %w", mt, ErrUnsupported)
	}
	at := m.ArtifactType
	if at == "" && m.Config != nil && mt == ocispec.MediaTypeImageManifest && m.Config.MediaType != ocispec.MediaTypeImageConfig {
		at = m.Config.MediaType
	}
	return ocispec.Descriptor{MediaType: mt, Size: int64(len(b)), ArtifactType: at, Digest: digest.SHA256.FromBytes(b)}, nil
}

func isIndex(mt string) bool {
	return mt == ocispec.MediaTypeImageIndex || mt == mediaTypeDockerManifestList
}

// ArtifactType is the artifactType of a Shoal image manifest (the same value as
// bootstrap.ArtifactType, repeated so that this package reads any layout without the bootstrap
// package).
const ArtifactType = "application/vnd.shoal.image.v1"

// resolveLocation makes an upload Location header absolute.
func (r *Registry) resolveLocation(loc string) (string, error) {
	base, err := url.Parse(r.base + "/")
	if err != nil {
		return "", err
	}
	u, err := base.Parse(loc)
	if err != nil {
		return "", fmt.Errorf("bad Location %q: %w", truncate(loc, 100), ErrBadResponse)
	}
	return u.String(), nil
}
