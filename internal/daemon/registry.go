package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/bootstrap"
	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/demand"
	"github.com/shoal-p2p/shoal/mount"
	"github.com/shoal-p2p/shoal/p2p"
)

// image is an image this host knows, as loaded from its origin (loader.go). It never changes once
// made: adding a known image again (another ref, a refreshed origin) registers a new *image in
// its place, so frontends and prefetches may keep the one they were handed.
type image struct {
	Ref      string
	Image    *bootstrap.Image
	Manifest []byte // the OCI manifest, kept so a restart needs no origin
	BootPath string // the bootstrap, local and verified
	// Repo is the image's repository ("host/name", origin.Repository) and Private says that its
	// registry refuses anonymous pulls (or could not be asked): its blobs are served only to
	// peers that prove pull rights to Repo (docs/privacy.md). Local layouts are public.
	Repo    string
	Private bool
	origin  rangeReader
}

// rangeReader reads blob bytes from an image's origin (origin.Source).
type rangeReader interface {
	ReadRange(ctx context.Context, blob digest.Digest, off, length int64) ([]byte, error)
}

func (im *image) digest() digest.Digest { return im.Image.Digest }

// blobs lists the image's blobs once each (an image may name a blob twice).
func (im *image) blobs() []bootstrap.Blob {
	seen := map[digest.Digest]bool{}
	var out []bootstrap.Blob
	for _, b := range im.Image.Blobs {
		if !seen[b.Digest] {
			seen[b.Digest] = true
			out = append(out, b)
		}
	}
	return out
}

// blobStore is what the registry needs of the chunk store (*chunkstore.Store).
type blobStore interface {
	AddBlob(ctx context.Context, m *chunk.Manifest) error
	Missing(blob digest.Digest, off, length int64) ([]chunk.Chunk, error)
}

// blobResolver is what the registry needs of the demand resolver (*demand.Resolver).
type blobResolver interface {
	AddBlob(m *chunk.Manifest, origin demand.OriginFunc)
	RemoveBlob(blob digest.Digest)
}

// swarm is what the registry needs of the p2p node (*p2p.Node).
type swarm interface {
	RegisterBlob(m *chunk.Manifest, origin p2p.OriginFunc) error
	Announce(blob digest.Digest, chunks ...chunk.Chunk) error
	Forget(blob digest.Digest)
	// SetPrivate marks a blob as content of private repositories (none: public).
	SetPrivate(d digest.Digest, repos ...string)
}

// registry owns the images this host knows, their blobs and their mounts. It is the one place a
// blob is registered with the store, the resolver and the swarm and unregistered from them (and
// from the frontends, through forget), so that the four never disagree. Blobs shared by several
// images are reference-counted: removing one image leaves a blob another image uses registered.
type registry struct {
	store    blobStore
	resolver blobResolver
	swarm    swarm
	forget   func(blob digest.Digest) // frontends drop what they keep of a blob no image uses
	log      *slog.Logger

	// regMu serializes Add and Remove: a blob's registration with store, resolver and swarm is
	// a sequence of calls that another Add or Remove of the same blob must not interleave with.
	// It is held across those calls (fast, local: no origin or network I/O happens under it);
	// queries never take it.
	regMu sync.Mutex

	mu     sync.Mutex // guards the maps below; held for map access only, never across a call out
	images map[digest.Digest]*image
	blobs  map[digest.Digest]*blobEntry
	mounts map[string]*mountRecord // by mountpoint
}

type blobEntry struct {
	m      *chunk.Manifest
	origin demand.OriginFunc // the origin of the image that registered it last
	refs   int               // images using it
}

// mountState is where a mount is in its life. A mount is recorded (pending) before the frontend
// mounts it, so that a second mount at the same place, or removing the image, is refused while
// the first is under way; likewise while it is being unmounted.
type mountState int

const (
	mountPending mountState = iota
	mountActive
	mountUnmounting
)

type mountRecord struct {
	image digest.Digest
	mode  mount.Mode
	state mountState
}

// mountInfo is one mount as the registry reports it.
type mountInfo struct {
	Mountpoint string
	Mode       mount.Mode
	Image      *image
}

func newRegistry(store blobStore, res blobResolver, sw swarm, forget func(digest.Digest), log *slog.Logger) *registry {
	if forget == nil {
		forget = func(digest.Digest) {}
	}
	return &registry{store: store, resolver: res, swarm: sw, forget: forget, log: log,
		images: map[digest.Digest]*image{}, blobs: map[digest.Digest]*blobEntry{}, mounts: map[string]*mountRecord{}}
}

// Add registers an image and its blobs: each blob with the store (its manifest and backing file),
// the resolver and the swarm (with this image's origin), and announces to peers the chunks this
// host already holds. Adding a known image again refreshes its ref and origin. It returns the
// registered image.
//
// On failure nothing of this Add stays registered with the resolver or the swarm: blobs it
// registered first are unregistered, and blobs that were already registered (by another image, or
// an earlier Add of this one) get their previous origin back. Blobs it added to the store stay
// there: AddBlob is idempotent, an unused blob costs a sparse file and is evictable, and undoing
// it could race with another image's use of the same blob. Announcements are not withdrawn: they
// state what the host holds, which stays true.
func (r *registry) Add(ctx context.Context, im *image) (*image, error) {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	blobs := im.blobs()
	// Every manifest into the store first: a blob whose manifest differs from the one the store
	// has fails here, before anything is registered.
	for _, b := range blobs {
		if err := r.store.AddBlob(ctx, b.Manifest); err != nil {
			return nil, fmt.Errorf("image %s: blob %s: %w", im.Ref, b.Digest, err)
		}
	}
	r.mu.Lock()
	prev := map[digest.Digest]demand.OriginFunc{}
	for _, b := range blobs {
		if e := r.blobs[b.Digest]; e != nil {
			prev[b.Digest] = e.origin
		}
	}
	r.mu.Unlock()

	// Privacy first: a blob is never registered with the swarm (announced, served) before it is
	// marked. A blob that another registered image has too is private only if every image
	// holding it is (content of a public image is public), and then to each one's repository.
	privacy := r.privacy(im, blobs)
	for _, b := range blobs {
		r.swarm.SetPrivate(b.Digest, privacy[b.Digest]...)
	}

	origins := make([]demand.OriginFunc, len(blobs))
	for i, b := range blobs {
		origins[i] = originFunc(im.origin, b.Manifest)
		r.resolver.AddBlob(b.Manifest, origins[i])
		if err := r.swarm.RegisterBlob(b.Manifest, p2p.OriginFunc(origins[i])); err != nil {
			// The swarm refused this blob: give the resolver back what it had, then undo the
			// blobs registered before it.
			if old := prev[b.Digest]; old != nil {
				r.resolver.AddBlob(b.Manifest, old)
			} else {
				r.resolver.RemoveBlob(b.Digest)
			}
			for _, done := range blobs[:i] {
				r.undo(done.Manifest, prev[done.Digest])
			}
			r.restorePrivacy(blobs)
			return nil, fmt.Errorf("image %s: blob %s: joining its swarm: %w", im.Ref, b.Digest, err)
		}
	}

	r.mu.Lock()
	_, known := r.images[im.digest()]
	r.images[im.digest()] = im
	for i, b := range blobs {
		e := r.blobs[b.Digest]
		if e == nil {
			e = &blobEntry{m: b.Manifest}
			r.blobs[b.Digest] = e
		}
		if !known {
			e.refs++
		}
		e.origin = origins[i]
	}
	r.mu.Unlock()

	// Tell peers what this host already holds (from an earlier run or another image).
	for _, b := range blobs {
		if present := r.presentChunks(b.Manifest); len(present) > 0 {
			if err := r.swarm.Announce(b.Digest, present...); err != nil {
				r.log.Debug("announcing present chunks", "blob", b.Digest, "err", err)
			}
		}
	}
	return im, nil
}

// privacy returns, for each of blobs, the private repositories it is content of once im is
// registered (nil: public), from im and the registered images other than im's digest.
func (r *registry) privacy(im *image, blobs []bootstrap.Blob) map[digest.Digest][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	images := []*image{im}
	for d, other := range r.images {
		if d != im.digest() {
			images = append(images, other)
		}
	}
	return blobPrivacy(images, blobs)
}

// blobPrivacy computes privacy over a set of images: a blob is public if any image of them that
// holds it is public, else private to the repositories of those that hold it.
func blobPrivacy(images []*image, blobs []bootstrap.Blob) map[digest.Digest][]string {
	out := make(map[digest.Digest][]string, len(blobs))
	for _, b := range blobs {
		public := false
		var repos []string
		for _, im := range images {
			if !im.holds(b.Digest) {
				continue
			}
			if !im.Private {
				public = true
				break
			}
			if !slices.Contains(repos, im.Repo) {
				repos = append(repos, im.Repo)
			}
		}
		if !public {
			sort.Strings(repos)
			out[b.Digest] = repos
		}
	}
	return out
}

func (im *image) holds(d digest.Digest) bool {
	for _, b := range im.Image.Blobs {
		if b.Digest == d {
			return true
		}
	}
	return false
}

// restorePrivacy marks blobs as the registered images make them, after a failed Add: the
// blobs of no registered image stay private to the failed image's repository (they are
// registered with the swarm no more, and nothing of theirs is served).
func (r *registry) restorePrivacy(blobs []bootstrap.Blob) {
	r.mu.Lock()
	images := make([]*image, 0, len(r.images))
	for _, im := range r.images {
		images = append(images, im)
	}
	r.mu.Unlock()
	privacy := blobPrivacy(images, blobs)
	for _, b := range blobs {
		if repos, ok := privacy[b.Digest]; !ok || len(repos) > 0 {
			r.swarm.SetPrivate(b.Digest, repos...)
		}
	}
}

// undo reverses one blob's registration by a failed Add: back to its previous origin, or out of
// the resolver and the swarm if it had none.
func (r *registry) undo(m *chunk.Manifest, old demand.OriginFunc) {
	if old == nil {
		r.swarm.Forget(m.Blob)
		r.resolver.RemoveBlob(m.Blob)
		return
	}
	r.resolver.AddBlob(m, old)
	if err := r.swarm.RegisterBlob(m, p2p.OriginFunc(old)); err != nil {
		// It was registered a moment ago, so this should not fail; if it does, the blob keeps
		// the failed image's origin, which reads the same bytes.
		r.log.Warn("restoring a blob's origin after a failed add", "blob", m.Blob, "err", err)
	}
}

// originFunc reads each chunk's stored range (compressed or not) and decodes it, capped at the
// chunk's length, with the manifest's dictionary if it has one (demand.StoredOrigin).
func originFunc(src rangeReader, m *chunk.Manifest) demand.OriginFunc {
	return demand.StoredOrigin(src, m) // a nil src stays nil: "no origin"
}

func (r *registry) presentChunks(m *chunk.Manifest) []chunk.Chunk {
	missing, err := r.store.Missing(m.Blob, 0, m.BlobSize)
	if err != nil {
		return nil
	}
	miss := make(map[int64]bool, len(missing))
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

// Remove forgets an image, named by ref or manifest digest. A mounted image (or one being mounted
// or unmounted) is refused. Its blobs that no other image uses leave the frontends, the swarm and
// the resolver (fetches in flight finish); their chunks stay in the store.
func (r *registry) Remove(ref string) (*image, error) {
	r.regMu.Lock()
	defer r.regMu.Unlock()
	r.mu.Lock()
	im, err := r.findLocked(ref)
	if err != nil {
		r.mu.Unlock()
		return nil, err
	}
	var mps []string
	for mp, rec := range r.mounts {
		if rec.image == im.digest() {
			mps = append(mps, mp)
		}
	}
	if len(mps) > 0 {
		r.mu.Unlock()
		sort.Strings(mps)
		return nil, fmt.Errorf("%w: %s is mounted at %s: unmount it first", errBadRequest, ref, strings.Join(mps, ", "))
	}
	delete(r.images, im.digest())
	var unused []digest.Digest
	for _, b := range im.blobs() {
		if e := r.blobs[b.Digest]; e != nil {
			if e.refs--; e.refs <= 0 {
				delete(r.blobs, b.Digest)
				unused = append(unused, b.Digest)
			}
		}
	}
	var kept []bootstrap.Blob
	for _, b := range im.blobs() {
		if r.blobs[b.Digest] != nil {
			kept = append(kept, b)
		}
	}
	images := make([]*image, 0, len(r.images))
	for _, other := range r.images {
		images = append(images, other)
	}
	r.mu.Unlock()
	for _, b := range unused { // the reverse of Add's order
		r.forget(b)
		r.swarm.Forget(b)
		r.resolver.RemoveBlob(b)
		// Its chunks stay in the store, but a chunk of no registered blob is served to no peer
		// (p2p.Config.Rights): the mark can go.
		r.swarm.SetPrivate(b)
	}
	// A blob the removed image shared with others may now be private to fewer repositories,
	// or still public.
	privacy := blobPrivacy(images, kept)
	for _, b := range kept {
		r.swarm.SetPrivate(b.Digest, privacy[b.Digest]...)
	}
	return im, nil
}

// findLocked finds an image by manifest digest, else by ref. A ref that names several images (a
// tag pushed again) is ambiguous: the caller must name the digest.
func (r *registry) findLocked(ref string) (*image, error) {
	if im := r.images[digest.Digest(ref)]; im != nil {
		return im, nil
	}
	var found []*image
	for _, im := range r.images {
		if im.Ref == ref {
			found = append(found, im)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%w: no image %q (see `shoal images`)", errNotFound, ref)
	case 1:
		return found[0], nil
	}
	var ds []string
	for _, im := range found {
		ds = append(ds, im.digest().String())
	}
	sort.Strings(ds)
	return nil, fmt.Errorf("%w: %q names several images (%s): give the digest", errBadRequest, ref, strings.Join(ds, ", "))
}

// Get returns the registered image with manifest digest d, or nil.
func (r *registry) Get(d digest.Digest) *image {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.images[d]
}

// Images returns every registered image, in no particular order.
func (r *registry) Images() []*image {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*image, 0, len(r.images))
	for _, im := range r.images {
		out = append(out, im)
	}
	return out
}

// Blobs returns the digest of every registered blob.
func (r *registry) Blobs() []digest.Digest {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]digest.Digest, 0, len(r.blobs))
	for d := range r.blobs {
		out = append(out, d)
	}
	return out
}

// Bootstrap finds a registered image's bootstrap by its digest string (the fscache cookie key).
func (r *registry) Bootstrap(key string) (path string, size int64, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, im := range r.images {
		if im.Image.Bootstrap.Digest.String() == key {
			return im.BootPath, im.Image.Bootstrap.Size, true
		}
	}
	return "", 0, false
}

// ReserveMount records that image d is about to be mounted at mp in mode: from now on, another
// mount at mp and removing the image are refused. CommitMount or DropMount ends the reservation.
func (r *registry) ReserveMount(d digest.Digest, mp string, mode mount.Mode) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rec := r.mounts[mp]; rec != nil {
		return fmt.Errorf("%w: %s is already a Shoal mount", errBadRequest, mp)
	}
	if r.images[d] == nil {
		return fmt.Errorf("%w: image %s was removed meanwhile", errNotFound, d)
	}
	r.mounts[mp] = &mountRecord{image: d, mode: mode, state: mountPending}
	return nil
}

// CommitMount marks a reserved mount as made.
func (r *registry) CommitMount(mp string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rec := r.mounts[mp]; rec != nil {
		rec.state = mountActive
	}
}

// DropMount forgets the mount at mp (a failed mount's reservation, or one that is gone).
func (r *registry) DropMount(mp string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.mounts, mp)
}

// BeginUnmount marks the mount at mp as being unmounted and returns it. EndUnmount ends that.
func (r *registry) BeginUnmount(mp string) (mountInfo, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.mounts[mp]
	switch {
	case rec == nil:
		return mountInfo{}, fmt.Errorf("%w: %s is not mounted by this daemon (see `shoal images`)", errNotFound, mp)
	case rec.state == mountPending:
		return mountInfo{}, fmt.Errorf("%w: %s is still being mounted", errBadRequest, mp)
	case rec.state == mountUnmounting:
		return mountInfo{}, fmt.Errorf("%w: %s is already being unmounted", errBadRequest, mp)
	}
	rec.state = mountUnmounting
	return mountInfo{Mountpoint: mp, Mode: rec.mode, Image: r.images[rec.image]}, nil
}

// EndUnmount forgets the mount at mp if it was unmounted, else marks it mounted again.
func (r *registry) EndUnmount(mp string, unmounted bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if unmounted {
		delete(r.mounts, mp)
	} else if rec := r.mounts[mp]; rec != nil {
		rec.state = mountActive
	}
}

// Mounts returns image d's mounts (mountpoint → mode) that exist in the kernel: made, or being
// unmounted.
func (r *registry) Mounts(d digest.Digest) map[string]mount.Mode {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]mount.Mode{}
	for mp, rec := range r.mounts {
		if rec.image == d && rec.state != mountPending {
			out[mp] = rec.mode
		}
	}
	return out
}

// MountedAt reports whether mp is a mount of this daemon's, in any state.
func (r *registry) MountedAt(mp string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mounts[mp] != nil
}

// ActiveMounts returns every mount that is made, sorted by mountpoint.
func (r *registry) ActiveMounts() []mountInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []mountInfo
	for mp, rec := range r.mounts {
		if rec.state == mountActive {
			out = append(out, mountInfo{Mountpoint: mp, Mode: rec.mode, Image: r.images[rec.image]})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Mountpoint < out[j].Mountpoint })
	return out
}
