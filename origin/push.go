package origin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// PushState says what became of one blob during a push.
type PushState string

// States reported by Push's progress callback.
const (
	PushExists    PushState = "exists"    // the registry had it already
	PushMounted   PushState = "mounted"   // mounted from another repository of the registry
	PushUploading PushState = "uploading" // Done bytes sent so far
	PushUploaded  PushState = "uploaded"
	PushManifest  PushState = "manifest" // the manifest was put
)

// PushProgress reports one step of a push.
type PushProgress struct {
	Digest digest.Digest
	Size   int64
	Done   int64
	State  PushState
}

// PushOptions are Push's optional settings.
type PushOptions struct {
	// RefName picks the manifest of the layout by ref name; empty picks the Shoal image for this
	// host's platform or the only manifest.
	RefName string
	// Manifest, when set, picks the layout's manifest by digest instead.
	Manifest digest.Digest
	// MountFrom lists repositories of the same registry to mount blobs from before uploading
	// them (cross-repository blob mount). A registry that cannot mount is sent the bytes.
	MountFrom []string
	// Progress, if set, is called (from several goroutines, one at a time) as blobs go.
	Progress func(PushProgress)
	// Parallel is the number of blobs uploaded at once; 0 means 4.
	Parallel int
}

// Push uploads the image in the OCI layout dir to the registry reference ref: every blob the
// manifest names that the registry lacks, then the manifest under ref's tag (or digest). It
// returns the manifest's descriptor.
func Push(ctx context.Context, dir, ref string, cfg Config, opts PushOptions) (ocispec.Descriptor, error) {
	if err := cfg.Validate(); err != nil {
		return ocispec.Descriptor{}, err
	}
	rref, err := ParseReference(ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	for _, m := range opts.MountFrom {
		if _, err := ParseReference(rref.Registry + "/" + m); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("push: mount-from repository %q: %w", m, ErrInvalidReference)
		}
	}
	src, err := NewLayout(dir, opts.RefName, cfg)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var (
		desc ocispec.Descriptor
		body []byte
	)
	if opts.Manifest != "" {
		desc, body, err = src.Manifest(ctx, opts.Manifest)
	} else {
		desc, body, err = src.Resolve(ctx)
	}
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if IsIndex(desc.MediaType) {
		return ocispec.Descriptor{}, fmt.Errorf("push: layout %s: %s is an index (use PushIndex): %w", dir, desc.Digest, ErrUnsupported)
	}
	if rref.Digest != "" && rref.Digest != desc.Digest {
		return ocispec.Descriptor{}, fmt.Errorf("push %s: the layout's manifest is %s: %w", rref, desc.Digest, ErrInvalidReference)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push: layout %s: manifest %s: %w", dir, desc.Digest, err)
	}
	reg, err := NewRegistry(rref, cfg)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	report := progressReporter(opts.Progress)
	if err := reg.pushContent(ctx, src, m, opts, report); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push %s: %w", rref, err)
	}
	tag := rref.Tag
	if tag == "" {
		tag = desc.Digest.String()
	}
	if err := reg.putManifest(ctx, tag, desc, body); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push %s: %w", rref, err)
	}
	report(PushProgress{Digest: desc.Digest, Size: desc.Size, Done: desc.Size, State: PushManifest})
	return desc, nil
}

func progressReporter(fn func(PushProgress)) func(PushProgress) {
	var mu sync.Mutex
	return func(p PushProgress) {
		if fn != nil {
			mu.Lock()
			fn(p)
			mu.Unlock()
		}
	}
}

// pushContent uploads the config and layers of manifest m that the registry lacks, a few at once.
func (r *Registry) pushContent(ctx context.Context, src *Layout, m ocispec.Manifest, opts PushOptions, report func(PushProgress)) error {
	blobs := append([]ocispec.Descriptor{m.Config}, m.Layers...)
	seen := map[digest.Digest]bool{}
	g, gctx := errgroup.WithContext(ctx)
	parallel := opts.Parallel
	if parallel <= 0 {
		parallel = 4
	}
	g.SetLimit(parallel)
	for _, b := range blobs {
		if seen[b.Digest] {
			continue
		}
		seen[b.Digest] = true
		g.Go(func() error { return r.pushBlob(gctx, src, b, opts.MountFrom, report) })
	}
	return g.Wait()
}

// PushIndex uploads every image manifest of the layout dir's index.json with its blobs (each
// manifest put by digest, untagged, once its blobs are there), then an image index under ref's
// tag listing before (manifests already in ref's repository, such as the original image's
// platforms for `shoal image convert --into-index`) followed by the layout's manifests, with
// their platforms. The tag is the last thing written: a push that fails leaves no tag naming an
// incomplete image. It returns the index's descriptor.
func PushIndex(ctx context.Context, dir, ref string, before []ocispec.Descriptor, cfg Config, opts PushOptions) (ocispec.Descriptor, error) {
	if err := cfg.Validate(); err != nil {
		return ocispec.Descriptor{}, err
	}
	rref, err := ParseReference(ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if rref.Tag == "" || rref.Digest != "" {
		return ocispec.Descriptor{}, fmt.Errorf("push %s: an index is pushed under a tag: %w", rref, ErrInvalidReference)
	}
	src, err := NewLayout(dir, "", cfg)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	ib, err := readIndex(dir)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(ib, &idx); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push: layout %s: index.json: %v: %w", dir, err, ErrUnsupported)
	}
	reg, err := NewRegistry(rref, cfg)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	report := progressReporter(opts.Progress)
	out := ocispec.Index{Versioned: idx.Versioned, MediaType: ocispec.MediaTypeImageIndex}
	out.SchemaVersion = 2
	out.Manifests = append(out.Manifests, before...)
	for _, d := range idx.Manifests {
		if d.MediaType != ocispec.MediaTypeImageManifest {
			return ocispec.Descriptor{}, fmt.Errorf("push: layout %s: %s is a %s, want image manifests: %w", dir, d.Digest, d.MediaType, ErrUnsupported)
		}
		body, err := readVerified(dir, d.Digest, cfg.MaxManifestSize)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(body, &m); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("push: layout %s: manifest %s: %w", dir, d.Digest, err)
		}
		if err := reg.pushContent(ctx, src, m, opts, report); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("push %s: %w", rref, err)
		}
		if err := reg.putManifest(ctx, d.Digest.String(), d, body); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("push %s: %w", rref, err)
		}
		report(PushProgress{Digest: d.Digest, Size: d.Size, Done: d.Size, State: PushManifest})
		delete(d.Annotations, ocispec.AnnotationRefName)
		if len(d.Annotations) == 0 {
			d.Annotations = nil
		}
		out.Manifests = append(out.Manifests, d)
	}
	body, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(body), Size: int64(len(body))}
	if err := reg.putManifest(ctx, rref.Tag, desc, body); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push %s: %w", rref, err)
	}
	report(PushProgress{Digest: desc.Digest, Size: desc.Size, Done: desc.Size, State: PushManifest})
	return desc, nil
}

// pushBlob makes sure the registry has blob b.
func (r *Registry) pushBlob(ctx context.Context, src *Layout, b ocispec.Descriptor, mountFrom []string, report func(PushProgress)) error {
	p, err := blobPath(src.dir, b.Digest)
	if err != nil {
		return err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("layout %s: blob %s: %w", src.dir, b.Digest, err)
	}
	size := fi.Size()
	if b.Size != 0 && b.Size != size {
		return fmt.Errorf("layout %s: blob %s is %d bytes, the manifest says %d: %w", src.dir, b.Digest, size, b.Size, ErrCorrupt)
	}
	exists, err := r.blobExists(ctx, b.Digest)
	if err != nil {
		return err
	}
	if exists {
		report(PushProgress{Digest: b.Digest, Size: size, Done: size, State: PushExists})
		return nil
	}
	for _, from := range mountFrom {
		mounted, err := r.mountBlob(ctx, b.Digest, from)
		if err != nil {
			return err
		}
		if mounted {
			report(PushProgress{Digest: b.Digest, Size: size, Done: size, State: PushMounted})
			return nil
		}
	}
	what := r.describe("upload of blob " + b.Digest.String())
	err = r.retry.run(ctx, what, func(ctx context.Context) error {
		loc, err := r.startUpload(ctx, what)
		if err != nil {
			return err
		}
		u, err := url.Parse(loc)
		if err != nil {
			return fmt.Errorf("%s: bad Location: %w", what, ErrBadResponse)
		}
		q := u.Query()
		q.Set("digest", b.Digest.String())
		u.RawQuery = q.Encode()
		resp, err := r.roundTrip(ctx, &request{
			method: http.MethodPut, url: u.String(), scopes: r.pushScope(), what: what, size: size,
			header: http.Header{"Content-Type": {"application/octet-stream"}},
			body: func() (io.ReadCloser, error) {
				f, err := os.Open(p)
				if err != nil {
					return nil, err
				}
				return &progressReader{rc: f, fn: func(done int64) {
					report(PushProgress{Digest: b.Digest, Size: size, Done: done, State: PushUploading})
				}}, nil
			},
		})
		if err != nil {
			return err
		}
		drain(resp.Body)
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("%s: status %s, want 201: %w", what, resp.Status, ErrBadResponse)
		}
		return nil
	})
	if err != nil {
		return err
	}
	report(PushProgress{Digest: b.Digest, Size: size, Done: size, State: PushUploaded})
	return nil
}

func (r *Registry) blobExists(ctx context.Context, d digest.Digest) (bool, error) {
	what := r.describe("blob " + d.String())
	var exists bool
	err := r.retry.run(ctx, what, func(ctx context.Context) error {
		resp, err := r.roundTrip(ctx, &request{method: http.MethodHead, url: "/v2/" + r.ref.Repository + "/blobs/" + d.String(), scopes: r.pushScope(), what: what})
		if errors.Is(err, ErrNotFound) {
			exists = false
			return nil
		}
		if err != nil {
			return err
		}
		drain(resp.Body)
		exists = resp.StatusCode == http.StatusOK
		return nil
	})
	return exists, err
}

// mountBlob asks the registry to mount d from another repository. A registry that cannot answers
// 202 with an upload session, which is abandoned here (the upload opens its own).
func (r *Registry) mountBlob(ctx context.Context, d digest.Digest, from string) (bool, error) {
	what := r.describe("mount of blob " + d.String() + " from " + from)
	var mounted bool
	err := r.retry.run(ctx, what, func(ctx context.Context) error {
		q := url.Values{"mount": {d.String()}, "from": {from}}
		resp, err := r.roundTrip(ctx, &request{
			method: http.MethodPost, url: "/v2/" + r.ref.Repository + "/blobs/uploads/?" + q.Encode(),
			scopes: append(r.pushScope(), "repository:"+from+":pull"), what: what,
			body: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(nil)), nil },
		})
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnauthorized) {
			mounted = false // no such source repository, or no right to read it: upload instead
			return nil
		}
		if err != nil {
			return err
		}
		drain(resp.Body)
		mounted = resp.StatusCode == http.StatusCreated
		return nil
	})
	return mounted, err
}

// startUpload opens an upload session and returns its absolute URL.
func (r *Registry) startUpload(ctx context.Context, what string) (string, error) {
	resp, err := r.roundTrip(ctx, &request{
		method: http.MethodPost, url: "/v2/" + r.ref.Repository + "/blobs/uploads/", scopes: r.pushScope(), what: what,
		body: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(nil)), nil },
	})
	if err != nil {
		return "", err
	}
	drain(resp.Body)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		return "", fmt.Errorf("%s: starting upload: status %s, Location %q: %w", what, resp.Status, truncate(loc, 100), ErrBadResponse)
	}
	return r.resolveLocation(loc)
}

func (r *Registry) putManifest(ctx context.Context, tag string, desc ocispec.Descriptor, body []byte) error {
	what := r.describe("manifest " + tag)
	return r.retry.run(ctx, what, func(ctx context.Context) error {
		resp, err := r.roundTrip(ctx, &request{
			method: http.MethodPut, url: "/v2/" + r.ref.Repository + "/manifests/" + tag, scopes: r.pushScope(), what: what,
			header: http.Header{"Content-Type": {desc.MediaType}}, size: int64(len(body)),
			body: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil },
		})
		if err != nil {
			return err
		}
		drain(resp.Body)
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("%s: status %s, want 201: %w", what, resp.Status, ErrBadResponse)
		}
		if h := resp.Header.Get("Docker-Content-Digest"); h != "" && h != desc.Digest.String() {
			return fmt.Errorf("%s: registry stored it as %s, want %s: %w", what, h, desc.Digest, ErrCorrupt)
		}
		return nil
	})
}

// progressReader reports the bytes read so far, at most every 1 MiB and at the end.
type progressReader struct {
	rc       io.ReadCloser
	n, last  int64
	fn       func(int64)
	finished bool
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.rc.Read(b)
	p.n += int64(n)
	if p.n-p.last >= 1<<20 || (err == io.EOF && !p.finished) {
		p.last = p.n
		p.finished = err == io.EOF
		p.fn(p.n)
	}
	return n, err
}

func (p *progressReader) Close() error { return p.rc.Close() }
