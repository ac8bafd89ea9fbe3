package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/origin"
	"github.com/shoal-p2p/shoal/p2p"
)

// imageLoader makes an image from its reference: the origin to read it from, its chunk manifests
// and a verified local bootstrap. The daemon's is originLoader; tests use fakes.
type imageLoader interface {
	// Load resolves ref at its origin.
	Load(ctx context.Context, ref string) (*image, error)
	// Reload makes the image from a manifest saved earlier (a restart): no resolving.
	Reload(ctx context.Context, ref string, manifest []byte) (*image, error)
}

// originLoader loads images from registries and local layouts (package origin) and keeps their
// bootstraps in dir, and their manifests and chunk manifests in objects. When a registry is
// unreachable (origin.ErrUnavailable), what it would have served comes from the kept objects
// and from peers (p2p.ObjectProtocol), verified by digest: a reference by digest resolves and
// mounts from peers; a tag does only with peerTags, since a peer's word for a tag cannot be
// checked.
type originLoader struct {
	cfg      origin.Config
	dir      string       // <data>/bootstraps
	objects  *objectStore // nil: nothing kept (tests)
	peers    objectPeers  // nil: no fallback
	peerTags bool         // --peer-tags
	// rights tells private repositories from public ones (origin.PullRights); nil: every image
	// is public (pull_rights off, tests).
	rights publicProber
	// flights share metadata fetches with peers that load the image at the same moment
	// (objectflight.go); nil: none (tests).
	flights *metaFlights
	log     *slog.Logger
}

// publicProber says whether a repository ("host/name") can be pulled anonymously.
type publicProber interface {
	Public(ctx context.Context, repo string) (bool, error)
}

var _ publicProber = (*origin.PullRights)(nil)

var _ imageLoader = originLoader{}

func (l originLoader) Load(ctx context.Context, ref string) (*image, error) {
	defer l.flights.beginLoad()()
	src, err := origin.Open(ref, l.cfg)
	if err != nil {
		return nil, err
	}
	f := l.newFetcher(ctx, src)
	mb, err := f.resolve(ctx, ref)
	if err != nil {
		return nil, missingCredentials(err, f.repo)
	}
	im, err := l.load(ctx, ref, f, mb)
	return im, missingCredentials(err, f.repo)
}

func (l originLoader) Reload(ctx context.Context, ref string, manifest []byte) (*image, error) {
	defer l.flights.beginLoad()()
	src, err := origin.Open(ref, l.cfg)
	if err != nil {
		return nil, err
	}
	f := l.newFetcher(ctx, src)
	im, err := l.load(ctx, ref, f, manifest)
	if err == nil {
		f.markIndex(ref, im.Image.Digest)
	}
	return im, missingCredentials(err, f.repo)
}

// markIndex marks, on a reload (a restart), the kept index the image was resolved through, as
// Load's resolve marked it: the state keeps only the manifest, so the index is the one the
// reference names by digest, or that its tag named at the registry last, if it is kept and
// lists the manifest. Without it an index would keep the privacy of an earlier run (a
// repository made private since would have its index served to any peer).
func (f *fetcher) markIndex(ref string, manifest digest.Digest) {
	rr, err := origin.ParseReference(ref)
	if err != nil || f.l.objects == nil {
		return
	}
	root := rr.Digest
	if root == "" {
		var ok bool
		if root, ok = f.l.objects.Tag(tagKey(rr)); !ok {
			return
		}
	}
	if root == manifest {
		return
	}
	b, ok := f.l.objects.get(root, f.l.cfg.MaxManifestSize)
	if !ok || !isIndexJSON(b) {
		return
	}
	var idx ocispec.Index
	if json.Unmarshal(b, &idx) != nil || !slices.ContainsFunc(idx.Manifests, func(d ocispec.Descriptor) bool { return d.Digest == manifest }) {
		return
	}
	f.mark(root)
}

// missingCredentials says what to do about a registry's refusal: a private image that peers
// hold is not theirs to give to a host the registry would refuse (docs/privacy.md).
func missingCredentials(err error, repo string) error {
	if err == nil || repo == "" || !errors.Is(err, origin.ErrUnauthorized) {
		return err
	}
	return fmt.Errorf("%w (this host has no credentials that may pull %s, and peers share a private repository's content only with hosts that may: "+
		"give credentials in docker_config, a credential helper, kubelet_credential_provider_config or registry_username, "+
		"or have the kubelet pull through this daemon's CRI proxy (cri_listen, the kubelet's --image-service-endpoint) so that pods' image pull secrets reach it)", err, repo)
}

// newFetcher starts one load from src, having asked whether its repository is private: before
// anything is fetched, so that every object is marked before it is kept (and servable).
func (l originLoader) newFetcher(ctx context.Context, src origin.Source) *fetcher {
	f := &fetcher{l: l, src: src}
	reg, ok := src.(*origin.Registry)
	if !ok || l.rights == nil {
		return f
	}
	f.repo = origin.Repository(reg.Reference())
	pub, err := l.rights.Public(ctx, f.repo)
	if err != nil {
		// Fail closed: a repository that could not be probed is private until it is.
		l.logger().Warn("could not tell whether a repository is public; treating it as private", "repository", f.repo, "err", err)
	}
	f.private = !pub
	return f
}

func (l originLoader) load(ctx context.Context, ref string, f *fetcher, mb []byte) (*image, error) {
	// The layers, read once for both (ParseImage says what is wrong with a bad manifest).
	var m ocispec.Manifest
	_ = json.Unmarshal(mb, &m)
	f.peersFirst = l.metadataFromPeers(m.Layers)
	defer f.expect(m.Layers)()
	im, err := bootstrap.ParseImage(mb, func(desc ocispec.Descriptor) ([]byte, error) {
		return f.object(ctx, desc.Digest, bootstrap.MaxMetadataSize, func(ctx context.Context) ([]byte, error) {
			return fetchAll(ctx, f.src, desc.Digest, bootstrap.MaxMetadataSize)
		})
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	f.keep(im.Digest, mb)
	f.mark(im.Bootstrap.Digest)
	boot, err := l.fetchBootstrap(ctx, f, im)
	if err != nil {
		return nil, fmt.Errorf("image %s: bootstrap: %w", ref, err)
	}
	return &image{Ref: ref, Image: im, Manifest: mb, BootPath: boot, origin: f.src, Repo: f.repo, Private: f.private}, nil
}

func (l originLoader) logger() *slog.Logger {
	if l.log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.log
}

// metadataFromPeers reports whether some connected peer registered one of an image's layers:
// it then holds the image's chunk manifests and bootstrap, and serves them, so
// a cluster's hosts take them from the origin about once rather than once each (the bootstrap
// and chunk manifests of a large tree are megabytes). Peers are asked only then, so a host whose
// peers do not have the image pays no round trip.
func (l originLoader) metadataFromPeers(layers []ocispec.Descriptor) bool {
	if l.peers == nil {
		return false
	}
	for _, layer := range layers {
		if layer.Digest.Validate() == nil && l.peers.BlobPeers(layer.Digest) > 0 {
			return true
		}
	}
	return false
}

// expect marks the image's metadata objects (every one of its layers but the data blobs)
// private or public, and makes them known to the metadata flights until release, so that a peer
// that loads the image at the same moment and asks this host as an object's owner shares this
// host's origin fetch of it.
func (f *fetcher) expect(layers []ocispec.Descriptor) (release func()) {
	var rels []func()
	for _, l := range layers {
		if l.MediaType == bootstrap.MediaTypeBlob || l.Digest.Validate() != nil || l.Digest.Algorithm() != digest.SHA256 {
			continue
		}
		d, size := l.Digest, l.Size
		// Every object the image names is marked, kept or not, fetched or not (a plain form
		// whose compressed form is fetched instead may be kept from an earlier run).
		f.mark(d)
		if f.l.flights == nil || size <= 0 || size > p2p.MaxObjectSize {
			continue
		}
		rels = append(rels, f.l.flights.expect(d, size, func(ctx context.Context) ([]byte, error) {
			return fetchAll(ctx, f.src, d, size)
		}))
	}
	return func() {
		for _, r := range rels {
			r()
		}
	}
}

// fromOrigin returns object d, at most max bytes, from the origin: through the metadata flight
// when d is one of the image's metadata objects (shared with peers that ask this host as its
// owner), after asking d's owner when that is another host; else by fetch.
func (f *fetcher) fromOrigin(ctx context.Context, d digest.Digest, max int64, fetch func(context.Context) ([]byte, error)) ([]byte, error) {
	if b := f.fromOwner(ctx, d, max); b != nil {
		return b, nil
	}
	b, known, err := f.l.flights.get(ctx, d)
	switch {
	case known:
		return b, err
	case fetch == nil:
		return nil, fmt.Errorf("object %s: not one of the image's metadata objects", d)
	}
	return fetch(ctx)
}

// fromOwner returns metadata object d from its rendezvous owner (p2p.ObjectThroughProtocol), if
// another host owns it and answers with the right bytes; otherwise nil, and the caller fetches
// it from the origin. A private image's objects are not asked for: the owner would serve them
// only to a host that has presented pull rights, which a host does only once it has the image.
func (f *fetcher) fromOwner(ctx context.Context, d digest.Digest, max int64) []byte {
	if f.l.peers == nil || f.peersFirst || f.private || max > p2p.MaxObjectSize || !f.l.flights.knows(d) {
		return nil
	}
	b, owner, delegated, err := f.l.peers.FetchObjectThrough(ctx, d, max)
	if !delegated {
		return nil // this host owns it
	}
	if err != nil {
		f.l.logger().Debug("object not from its owner; fetching it from the origin", "object", d, "owner", owner, "err", err)
		return nil
	}
	f.l.logger().Debug("object from its owner", "object", d, "owner", owner, "bytes", len(b))
	return b
}

// peerObjectWait bounds asking peers for an object before the origin, while it is reachable.
const peerObjectWait = 3 * time.Second

// fetcher gets the objects of one load: kept ones first, then (when peers hold the image,
// peersFirst) peers, then the origin, then, once the origin has proven unreachable, peers
// (without asking the origin again: each attempt at a registry that is down costs its retries).
type fetcher struct {
	l          originLoader
	src        origin.Source
	down       error // the origin's failure, once seen
	peersFirst bool  // peers hold the image: ask them before the origin
	// repo is the registry repository loaded from ("" for a local layout); private, that the
	// objects kept are marked as its content.
	repo    string
	private bool
}

// fromPeersFirst returns object d from peers that hold the image, if peersFirst and one answers
// with the right bytes within peerObjectWait; otherwise nil, and the caller goes on to the origin.
func (f *fetcher) fromPeersFirst(ctx context.Context, d digest.Digest, max int64) []byte {
	if !f.peersFirst || f.down != nil || max > p2p.MaxObjectSize {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, peerObjectWait)
	defer cancel()
	b, err := f.l.peers.FetchObject(pctx, d, max)
	if err != nil {
		f.l.logger().Debug("object not from peers; asking the origin", "object", d, "err", err)
		return nil
	}
	return b
}

// mark records whether kept object d is private content of f.repo: before it is kept, so that
// a peer is never served it unmarked.
func (f *fetcher) mark(d digest.Digest) {
	if f.repo == "" {
		return
	}
	repo := ""
	if f.private {
		repo = f.repo
	}
	f.l.objects.setPrivate(d, repo)
}

// fallBack reports whether err means the origin cannot be reached and peers may be asked.
func (f *fetcher) fallBack(ctx context.Context, err error) bool {
	return f.l.peers != nil && ctx.Err() == nil && errors.Is(err, origin.ErrUnavailable)
}

func (f *fetcher) keep(d digest.Digest, b []byte) {
	f.mark(d)
	if err := f.l.objects.put(d, b); err != nil {
		f.l.logger().Warn("keeping an object", "object", d, "err", err)
	}
}

// object returns the content with digest d, at most max bytes: kept, else fromOrigin, else (the
// origin unreachable) from peers. Whatever it returns matches d and is kept.
func (f *fetcher) object(ctx context.Context, d digest.Digest, max int64, fromOrigin func(context.Context) ([]byte, error)) ([]byte, error) {
	if b, ok := f.l.objects.get(d, max); ok {
		f.mark(d)
		return b, nil
	}
	if b := f.fromPeersFirst(ctx, d, max); b != nil {
		f.keep(d, b)
		return b, nil
	}
	if f.down == nil {
		b, err := f.fromOrigin(ctx, d, max, fromOrigin)
		if err == nil {
			f.keep(d, b)
			return b, nil
		}
		if !f.fallBack(ctx, err) {
			return nil, err
		}
		f.down = err
	}
	b, err := f.l.peers.FetchObject(ctx, d, max)
	if err != nil {
		return nil, fmt.Errorf("the origin is unreachable (%w), and from peers: %w", f.down, err)
	}
	f.keep(d, b)
	return b, nil
}

// resolve returns the image manifest ref names. A registry is asked first; if it cannot be
// reached, a digest reference is resolved from kept objects and peers, and a tag is too when
// the operator trusts peers for tags (--peer-tags).
func (f *fetcher) resolve(ctx context.Context, ref string) ([]byte, error) {
	reg, ok := f.src.(*origin.Registry)
	if !ok { // a local layout
		_, mb, err := f.src.Resolve(ctx)
		if err != nil {
			return nil, fmt.Errorf("resolving %s: %w", ref, err)
		}
		return mb, nil
	}
	rr := reg.Reference()
	maxMan := f.l.cfg.MaxManifestSize
	manifest := func(d digest.Digest) func(context.Context) ([]byte, error) {
		return func(ctx context.Context) ([]byte, error) {
			_, b, err := reg.Manifest(ctx, d)
			return b, err
		}
	}
	desc, root, err := reg.Root(ctx)
	switch {
	case err == nil:
		f.keep(desc.Digest, root)
		if rr.Digest == "" {
			f.l.objects.setTag(tagKey(rr), desc.Digest)
		}
	case !f.fallBack(ctx, err):
		return nil, fmt.Errorf("resolving %s: %w", ref, err)
	default:
		f.down = err
		d := rr.Digest
		if d == "" {
			if !f.l.peerTags {
				return nil, fmt.Errorf("resolving %s: registry %s is unreachable and %s is a tag, which only the registry can resolve (a peer's answer for a tag cannot be verified): "+
					"give the image by digest (%s/%s@sha256:...), which peers can serve, or start the daemon with --peer-tags to trust peers for tags: %w",
					ref, rr.Registry, ref, rr.Registry, rr.Repository, err)
			}
			if d, err = f.peerTag(ctx, tagKey(rr)); err != nil {
				return nil, fmt.Errorf("resolving %s: registry %s is unreachable (%w), and %w", ref, rr.Registry, f.down, err)
			}
		}
		if root, err = f.object(ctx, d, maxMan, manifest(d)); err != nil {
			return nil, fmt.Errorf("resolving %s: %w", ref, err)
		}
	}
	if !isIndexJSON(root) {
		return root, nil
	}
	child, err := origin.ChooseManifest(root)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", ref, err)
	}
	mb, err := f.object(ctx, child.Digest, maxMan, manifest(child.Digest))
	if err != nil {
		return nil, fmt.Errorf("resolving %s: manifest %s: %w", ref, child.Digest, err)
	}
	if isIndexJSON(mb) {
		return nil, fmt.Errorf("resolving %s: manifest %s is itself an index: %w", ref, child.Digest, origin.ErrUnsupported)
	}
	return mb, nil
}

// peerTag resolves a tag without its registry: what this host's registry said last, else what a
// peer's did. Either may be stale; the operator accepted that with --peer-tags.
func (f *fetcher) peerTag(ctx context.Context, tag string) (digest.Digest, error) {
	if f.l.objects != nil {
		if d, ok := f.l.objects.Tag(tag); ok {
			f.l.logger().Warn("registry unreachable: tag resolved from this host's last answer from it (--peer-tags)", "ref", tag, "digest", d)
			return d, nil
		}
	}
	d, p, err := f.l.peers.ResolveTag(ctx, tag)
	if err != nil {
		return "", err
	}
	f.l.logger().Warn("registry unreachable: tag resolved by a peer, unverified (--peer-tags)", "ref", tag, "digest", d, "peer", p)
	return d, nil
}

// isIndexJSON reports whether b is an image index (or Docker manifest list) rather than a
// manifest.
func isIndexJSON(b []byte) bool {
	var v struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Layers    json.RawMessage `json:"layers"`
	}
	if json.Unmarshal(b, &v) != nil {
		return false
	}
	if v.MediaType != "" {
		return origin.IsIndex(v.MediaType)
	}
	return v.Manifests != nil && v.Layers == nil
}

// fetchBootstrap keeps the bootstrap as a local, verified file: EROFS metadata never leaves the
// host once fetched (file-backed and FUSE mounts read it directly; fscache serves it).
func (l originLoader) fetchBootstrap(ctx context.Context, f *fetcher, im *bootstrap.Image) (string, error) {
	desc := im.Bootstrap
	path := filepath.Join(l.dir, desc.Digest.Encoded())
	if st, err := os.Stat(path); err == nil && st.Size() == desc.Size {
		now := time.Now()
		_ = os.Chtimes(path, now, now) // used again: the object sweep keeps it for its retention
		return path, nil
	}
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return "", err
	}
	var rc io.Reader
	b := l.bootstrapZstd(ctx, f, im) // decoded and checked already, and checked again below
	if b == nil {
		b = f.fromPeersFirst(ctx, desc.Digest, desc.Size)
	}
	if b != nil {
		rc = bytes.NewReader(b) // checked below against the digest, as the origin's would be
	}
	if rc == nil && f.down == nil && f.l.flights.knows(desc.Digest) {
		// Through its owner or this host's flight, shared with peers loading the image.
		b, err := f.fromOrigin(ctx, desc.Digest, desc.Size, nil)
		switch {
		case err == nil:
			rc = bytes.NewReader(b)
		case !f.fallBack(ctx, err):
			return "", err
		default:
			f.down = err
		}
	}
	if rc == nil && f.down == nil {
		orc, err := f.src.Open(ctx, desc.Digest)
		switch {
		case err == nil:
			defer orc.Close()
			rc = orc
		case !f.fallBack(ctx, err):
			return "", err
		default:
			f.down = err
		}
	}
	if rc == nil {
		if desc.Size > p2p.MaxObjectSize {
			return "", fmt.Errorf("the origin is unreachable (%w), and a bootstrap of %d bytes is more than peers serve (%d)", f.down, desc.Size, p2p.MaxObjectSize)
		}
		b, err := f.l.peers.FetchObject(ctx, desc.Digest, desc.Size)
		if err != nil {
			return "", fmt.Errorf("the origin is unreachable (%w), and from peers: %w", f.down, err)
		}
		rc = bytes.NewReader(b)
	}
	tmp, err := os.CreateTemp(l.dir, ".fetch-*")
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
	bf, err := os.Open(tmp.Name())
	if err != nil {
		return "", err
	}
	// A bootstrap that is not a well-formed EROFS image of these blobs is refused before any
	// mount: the kernel never sees it.
	var sizes []int64
	for _, b := range im.Blobs {
		sizes = append(sizes, b.Manifest.BlobSize) // the devices: uncompressed
	}
	fsys, err := bootstrap.Open(bf, n)
	if err == nil {
		err = fsys.Check(sizes)
	}
	bf.Close()
	if err != nil {
		return "", fmt.Errorf("bootstrap %s: %w", desc.Digest, err)
	}
	return path, os.Rename(tmp.Name(), path)
}

// bootstrapZstd returns the bootstrap from its compressed form (kept, from peers or from the
// origin, as other image objects), decoded and checked against the bootstrap's digest and size;
// nil if the image has none or it cannot be had, and the plain bootstrap is fetched instead.
func (l originLoader) bootstrapZstd(ctx context.Context, f *fetcher, im *bootstrap.Image) []byte {
	z := im.BootstrapZstd
	if z.Digest == "" || z.Size > bootstrap.MaxMetadataSize {
		return nil
	}
	zb, err := f.object(ctx, z.Digest, z.Size, func(ctx context.Context) ([]byte, error) {
		return fetchAll(ctx, f.src, z.Digest, z.Size)
	})
	if err == nil {
		var b []byte
		if b, err = bootstrap.DecompressMeta(zb, im.Bootstrap); err == nil {
			return b
		}
	}
	l.logger().Warn("compressed bootstrap unusable; fetching it plain", "bootstrap", im.Bootstrap.Digest, "compressed", z.Digest, "err", err)
	return nil
}

func fetchAll(ctx context.Context, src origin.Source, d digest.Digest, limit int64) ([]byte, error) {
	rc, err := src.Open(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return bootstrap.ReadAllLimited(rc, limit, d.String())
}
