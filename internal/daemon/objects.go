package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/mirror"
	"github.com/shoal-p2p/shoal/origin"
	"github.com/shoal-p2p/shoal/p2p"
)

// objectStore keeps the content-addressed objects this host resolved its images from (OCI
// manifests and indexes, chunk manifests; bootstraps live beside it in <data>/bootstraps), and
// which digest each tag named at the registry. Kept, they let a restart, and peers through
// p2p.ObjectProtocol, do without the registry: everything after the tag is named by its digest.
type objectStore struct {
	dir   string // <data>/objects/<sha256 hex>
	boots string // <data>/bootstraps/<sha256 hex>, written by the loader
	log   *slog.Logger

	mu   sync.Mutex
	tags map[string]digest.Digest // canonical host/name:tag → digest; saved in <dir>/tags.json
	// private: kept objects of private repositories (digest → "host/name"s), saved in
	// <dir>/private.json so that a restart marks them again before the node serves anything.
	private map[digest.Digest][]string
	// mark tells the node (p2p.Node.SetPrivate); set once in New before the node runs.
	mark func(d digest.Digest, repos ...string)
}

func openObjectStore(dataDir string, log *slog.Logger) (*objectStore, error) {
	o := &objectStore{dir: filepath.Join(dataDir, "objects"), boots: filepath.Join(dataDir, "bootstraps"), log: log,
		tags: map[string]digest.Digest{}, private: map[digest.Digest][]string{}}
	if err := os.MkdirAll(o.dir, 0o700); err != nil {
		return nil, fmt.Errorf("object store: %w", err)
	}
	b, err := os.ReadFile(o.tagsPath())
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("object store: %w", err)
	default:
		if err := json.Unmarshal(b, &o.tags); err != nil {
			// Only a cache of what the registry said: start without it.
			log.Warn("object store: unreadable tags file, starting without it", "path", o.tagsPath(), "err", err)
			o.tags = map[string]digest.Digest{}
		}
	}
	b, err = os.ReadFile(o.privatePath())
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("object store: %w", err)
	default:
		if err := json.Unmarshal(b, &o.private); err != nil {
			// Unlike tags, the marks keep private objects from peers: without them, no kept
			// object can be told public, so none is served until its image is added again.
			return nil, fmt.Errorf("object store: %s is unreadable (remove it and the objects directory's other files to start afresh): %w", o.privatePath(), err)
		}
	}
	return o, nil
}

func (o *objectStore) tagsPath() string    { return filepath.Join(o.dir, "tags.json") }
func (o *objectStore) privatePath() string { return filepath.Join(o.dir, "private.json") }

// attach hands the kept marks to the node and sends it every mark from now on.
func (o *objectStore) attach(mark func(d digest.Digest, repos ...string)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.mark = mark
	for d, repos := range o.private {
		mark(d, repos...)
	}
}

// setPrivate marks kept object d as content of private repository repo, or (repo "") public.
// It is called before the object is written, so that no peer is served it unmarked. A mark for
// a second repository adds to the first.
func (o *objectStore) setPrivate(d digest.Digest, repo string) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	old := o.private[d]
	var repos []string
	switch {
	case repo == "" && old == nil:
		return
	case repo == "":
	case slices.Contains(old, repo):
		return
	default:
		repos = append(slices.Clone(old), repo)
		slices.Sort(repos)
	}
	if repos == nil {
		delete(o.private, d)
	} else {
		o.private[d] = repos
	}
	if o.mark != nil {
		o.mark(d, repos...)
	}
	b, err := json.MarshalIndent(o.private, "", "  ")
	if err == nil {
		err = writeFileAtomic(o.privatePath(), b)
	}
	if err != nil {
		// In memory the mark holds; a restart before the next successful save loses it.
		o.log.Error("object store: saving private marks; after a restart this object may be served to peers without pull rights", "object", d, "err", err)
	}
}

// Object returns a kept object or bootstrap (p2p.LocalObjects); the node verifies it before
// serving it.
func (o *objectStore) Object(d digest.Digest) ([]byte, bool, error) {
	if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
		return nil, false, nil
	}
	for _, dir := range []string{o.dir, o.boots} {
		p := filepath.Join(dir, d.Encoded())
		st, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		if st.Size() > p2p.MaxObjectSize {
			return nil, false, nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, false, err
		}
		return b, true, nil
	}
	return nil, false, nil
}

// get returns kept object d if it is there, at most max bytes, and still matches d.
func (o *objectStore) get(d digest.Digest, max int64) ([]byte, bool) {
	if o == nil {
		return nil, false
	}
	b, ok, err := o.Object(d)
	if err != nil || !ok || int64(len(b)) > max {
		return nil, false
	}
	if digest.SHA256.FromBytes(b) != d {
		o.log.Warn("kept object does not match its digest: fetching it again", "object", d)
		return nil, false
	}
	now := time.Now()
	_ = os.Chtimes(filepath.Join(o.dir, d.Encoded()), now, now) // used again: see sweep
	return b, true
}

// put keeps b as object d, if it is d.
func (o *objectStore) put(d digest.Digest, b []byte) error {
	if o == nil {
		return nil
	}
	if d.Algorithm() != digest.SHA256 || digest.SHA256.FromBytes(b) != d {
		return fmt.Errorf("keep object %s: content does not match: %w", d, chunk.ErrCorrupt)
	}
	p := filepath.Join(o.dir, d.Encoded())
	if st, err := os.Stat(p); err == nil && st.Size() == int64(len(b)) {
		return nil
	}
	return writeFileAtomic(p, b)
}

// Tag returns the digest the registry gave for a canonical tag reference (p2p.LocalObjects).
func (o *objectStore) Tag(ref string) (digest.Digest, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	d, ok := o.tags[ref]
	return d, ok
}

// setTag records what the registry said ref names.
func (o *objectStore) setTag(ref string, d digest.Digest) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.tags[ref] == d {
		return
	}
	o.tags[ref] = d
	b, err := json.MarshalIndent(o.tags, "", "  ")
	if err == nil {
		err = writeFileAtomic(o.tagsPath(), b)
	}
	if err != nil {
		o.log.Warn("object store: saving tags", "err", err)
	}
}

// tagKey is the canonical form of a reference that names a tag (no digest), as peers are asked.
func tagKey(r origin.Reference) string {
	return origin.Reference{Registry: r.Registry, Repository: r.Repository, Tag: r.Tag}.String()
}

// objectPeers is what the loader needs of the p2p node: objects when the registry is
// unreachable, and, while it is reachable, from peers that hold the image (metadataFromPeers).
type objectPeers interface {
	FetchObject(ctx context.Context, d digest.Digest, max int64) ([]byte, error)
	ResolveTag(ctx context.Context, ref string) (digest.Digest, peer.ID, error)
	// BlobPeers counts the connected peers that registered blob: they hold its image's objects.
	BlobPeers(blob digest.Digest) int
	// FetchObjectThrough asks object d's rendezvous owner, if another host, for it
	// (p2p.ObjectThroughProtocol): hosts loading one image at once fetch its metadata once.
	FetchObjectThrough(ctx context.Context, d digest.Digest, max int64) (data []byte, owner peer.ID, delegated bool, err error)
}

var _ objectPeers = (*p2p.Node)(nil)

// nodeLocal is what the p2p node serves: the chunk store's chunks and the kept objects.
type nodeLocal struct {
	storeChunks
	objects *objectStore
	blobs   *mirrorBlobs
	flights *metaFlights // the loader's metadata fetches, shared with peers that ask
}

func (n nodeLocal) Object(d digest.Digest) ([]byte, bool, error) { return n.objects.Object(d) }
func (n nodeLocal) Tag(ref string) (digest.Digest, bool)         { return n.objects.Tag(ref) }

// OpenBlob serves the registry mirror's verified blobs to peers (p2p.LocalBlobs): with pull
// rights on, only those it has served from a public repository, or from a private one (marked
// with the node, which serves them only to peers with a grant for it), since it started; the
// others are "not found", and the asker goes to its upstream (docs/privacy.md).
func (n nodeLocal) OpenBlob(d digest.Digest) (io.ReadCloser, int64, bool, error) {
	if n.blobs == nil || n.blobs.m == nil || !n.blobs.shareable(d) {
		return nil, 0, false, nil
	}
	f, size, ok, err := n.blobs.m.OpenBlob(d)
	if !ok || err != nil {
		return nil, 0, false, err
	}
	return f, size, true, nil
}

// FetchBlobFor fetches a blob from the upstream for a peer that asked this host as the blob's
// rendezvous owner (p2p.BlobFetcher).
func (n nodeLocal) FetchBlobFor(ctx context.Context, d digest.Digest, manifest bool, upstream, repo string, max int64) error {
	if n.blobs == nil || n.blobs.m == nil {
		return fmt.Errorf("no registry mirror here: %w", p2p.ErrObjectNotFound)
	}
	// With pull rights on, this host fetches for peers only from public repositories: with its
	// own credentials it would hand a private repository's blob to a peer that never proved it
	// may pull it, and OpenBlob would refuse to serve it anyway. The asker fetches a private
	// blob from its own upstream, with its own credentials (docs/privacy.md).
	full := upstream + "/" + repo
	if b := n.blobs; b.rights != nil {
		if pub, err := b.rights.Public(ctx, full); !pub {
			return fmt.Errorf("repository %s is not public here (%v): a peer fetches its blobs from its own upstream: %w", full, err, p2p.ErrObjectNotFound)
		}
	}
	err := n.blobs.m.FetchForPeer(ctx, d, manifest, upstream, repo, max)
	if errors.Is(err, origin.ErrNotFound) {
		return fmt.Errorf("%w: %w", err, p2p.ErrObjectNotFound)
	}
	if err == nil {
		n.blobs.served(ctx, full, d) // fetched from a public repository: peers may have it
	}
	return err
}

// OpenGrowing lets a peer that asked this host as a blob's owner read it while the mirror
// downloads it (p2p.GrowingBlobs): with pull rights on, only a download from a public
// repository, as FetchBlobFor fetches for peers only from those.
func (n nodeLocal) OpenGrowing(ctx context.Context, d digest.Digest) (io.ReadCloser, int64, bool) {
	if n.blobs == nil || n.blobs.m == nil {
		return nil, 0, false
	}
	rc, size, from, ok := n.blobs.m.OpenGrowing(ctx, d)
	if !ok {
		return nil, 0, false
	}
	if b := n.blobs; b.rights != nil {
		if pub, _ := b.rights.Public(ctx, from); !pub {
			rc.Close()
			return nil, 0, false
		}
	}
	return rc, size, true
}

// mirrorBlobs is the registry mirror as the node's local side sees it; m, mark and repos are set
// once, in New, before the node runs (the mirror is built after the node, which it fetches
// through).
type mirrorBlobs struct {
	m *mirror.Mirror
	// rights tells public repositories from private ones; nil: pull rights off, every blob
	// is shared.
	rights publicProber
	// mark and repos are the node's private marks (p2p.Node.SetPrivate, PrivateRepos).
	mark  func(d digest.Digest, repos ...string)
	repos func(d digest.Digest) []string
	log   *slog.Logger

	markMu  sync.Mutex // one change of a digest's marks at a time (read, then set)
	mu      sync.Mutex
	public  map[digest.Digest]bool // seen served from a public repository
	private map[digest.Digest]bool // marked private with the node by this mirror
}

// maxPublicBlobs bounds the mirror's public set; past it, it starts again (blobs are shared
// again once served again). It bounds the private set too: past it, further private blobs
// are not shared (fail closed).
const maxPublicBlobs = 1 << 16

func (b *mirrorBlobs) shareable(d digest.Digest) bool {
	if b.rights == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.public[d] || b.private[d]
}

// served is the mirror's Served hook: content served from a public repository may go to any
// peer; from a private one (or one that could not be probed: fail closed), to peers that prove
// pull rights to it, by the rule of chunks (p2p/rights.go).
func (b *mirrorBlobs) served(ctx context.Context, repo string, d digest.Digest) {
	if b.rights == nil {
		return
	}
	b.mu.Lock()
	known := b.public[d]
	b.mu.Unlock()
	if known {
		return
	}
	pub, err := b.rights.Public(ctx, repo)
	if err != nil {
		b.log.Debug("mirror: could not tell whether a repository is public; sharing its blob only with peers that may pull it", "repository", repo, "blob", d, "err", err)
	}
	if !pub {
		b.markPrivate(d, repo)
		return
	}
	b.markMu.Lock()
	defer b.markMu.Unlock()
	b.mu.Lock()
	if len(b.public) >= maxPublicBlobs {
		clear(b.public)
	}
	b.public[d] = true
	wasPrivate := b.private[d]
	delete(b.private, d)
	b.mu.Unlock()
	if wasPrivate && b.mark != nil {
		b.mark(d) // anyone may pull these bytes
	}
}

// fetching is the mirror's Fetching hook: a blob about to be fetched for a private repository
// is marked private to it first, so that the node presents this host's rights to the peers
// that hold it (and deny it until then).
func (b *mirrorBlobs) fetching(ctx context.Context, repo string, d digest.Digest) {
	if b.rights == nil {
		return
	}
	if pub, _ := b.rights.Public(ctx, repo); !pub {
		b.markPrivate(d, repo)
	}
}

// markPrivate adds repo to d's private marks with the node, then lets d be shared (the node
// serves it only to peers with a grant for one of its repositories).
func (b *mirrorBlobs) markPrivate(d digest.Digest, repo string) {
	if b.mark == nil {
		return
	}
	b.markMu.Lock()
	defer b.markMu.Unlock()
	b.mu.Lock()
	full := len(b.private) >= maxPublicBlobs && !b.private[d]
	public := b.public[d]
	b.mu.Unlock()
	if full || public {
		return
	}
	repos := b.repos(d)
	if !slices.Contains(repos, repo) {
		b.mark(d, append(repos, repo)...)
	}
	b.mu.Lock()
	b.private[d] = true
	b.mu.Unlock()
}

// mirrorStatser returns the mirror's counters for the stats report; nil when it is off.
func mirrorStatser(m *mirror.Mirror) func() *mirror.Stats {
	if m == nil {
		return nil
	}
	return func() *mirror.Stats { st := m.Stats(); return &st }
}

var (
	_ p2p.LocalBlobs   = nodeLocal{}
	_ p2p.BlobFetcher  = nodeLocal{}
	_ p2p.GrowingBlobs = nodeLocal{}
	_ mirror.Coalescer = (*p2p.Node)(nil)
	_ mirror.Peers     = (*p2p.Node)(nil)
	_ p2p.LocalObjects = nodeLocal{}
	_ p2p.ChunkWriter  = nodeLocal{}
)

// sweep removes kept objects and bootstraps that nothing uses any more: not in inUse (the
// registered images' manifests, chunk manifests and bootstraps) and not what a kept tag names,
// and not used for retention. A file in use has its modification time set to now, so an image's
// objects outlive its removal by retention: long enough for a restart, or a peer during a
// registry outage, to still find them. Temp files a crash left are removed too. Unknown names
// are left alone. It returns how many files went and their bytes.
func (o *objectStore) sweep(inUse map[digest.Digest]bool, retention time.Duration, now time.Time) (files int, bytes int64) {
	if o == nil || retention <= 0 {
		return 0, 0
	}
	o.mu.Lock()
	for _, d := range o.tags {
		inUse[d] = true
	}
	o.mu.Unlock()
	for _, dir := range []string{o.dir, o.boots} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				o.log.Warn("object store: sweeping", "dir", dir, "err", err)
			}
			continue
		}
		for _, e := range entries {
			name := e.Name()
			info, err := e.Info()
			if err != nil || !info.Mode().IsRegular() {
				continue
			}
			p := filepath.Join(dir, name)
			temp := strings.HasPrefix(name, ".state-") || strings.HasPrefix(name, ".fetch-")
			d := digest.NewDigestFromEncoded(digest.SHA256, name)
			switch {
			case temp:
				if now.Sub(info.ModTime()) < time.Hour {
					continue // perhaps still being written
				}
			case d.Validate() != nil:
				continue
			case inUse[d]:
				if err := os.Chtimes(p, now, now); err != nil {
					o.log.Warn("object store: marking in use", "path", p, "err", err)
				}
				continue
			case now.Sub(info.ModTime()) < retention:
				continue
			}
			if err := os.Remove(p); err != nil {
				if !errors.Is(err, fs.ErrNotExist) {
					o.log.Warn("object store: removing unused object", "path", p, "err", err)
				}
				continue
			}
			files++
			bytes += info.Size()
		}
	}
	return files, bytes
}

// objectsInUse is every object and bootstrap the registered images need.
func objectsInUse(ims []*image) map[digest.Digest]bool {
	use := map[digest.Digest]bool{}
	for _, im := range ims {
		use[im.Image.Digest] = true
		use[im.Image.Bootstrap.Digest] = true
		if d := im.Image.BootstrapZstd.Digest; d != "" {
			use[d] = true
		}
		for _, b := range im.Image.Blobs {
			if b.ManifestDigest != "" {
				use[b.ManifestDigest] = true
			}
			if b.ManifestZstd != "" {
				use[b.ManifestZstd] = true
			}
		}
	}
	return use
}
