package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore/layout"
	"github.com/shoal-p2p/shoal/demand/cachefiles"
	"github.com/shoal-p2p/shoal/mount"
)

// fscacheStore is what the fscache frontend reads of the chunk store: a blob's size, and its
// present bytes.
type fscacheStore interface {
	Blob(d digest.Digest) (*chunk.Manifest, bool)
}

// bootstrapLookup finds a registered image's bootstrap by its digest string (the registry).
type bootstrapLookup interface {
	Bootstrap(key string) (path string, size int64, ok bool)
}

// fscacheDeps is what the fscache frontend is built from.
type fscacheDeps struct {
	dataDir, domain string
	handover        string // the supervisor's socket; empty: open /dev/cachefiles here
	workers         int
	log             *slog.Logger
	metrics         prometheus.Registerer
	resolver        ensurer
	store           fscacheStore
	bootstraps      bootstrapLookup
}

// handoverTimeout bounds the wait for the supervisor's device.
const handoverTimeout = 30 * time.Second

// fscacheFrontend answers the kernel's cachefiles on-demand requests: EROFS mounted with fsid=
// reads its bootstrap and blobs through /dev/cachefiles, bound to the store's own directory so
// the kernel's backing files are the store's. Hits never leave the kernel.
type fscacheFrontend struct {
	domain string
	dev    *cachefiles.Device
	srv    *cachefiles.Server
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	mounts map[digest.Digest]map[string]bool // bootstrap → its fscache mountpoints
}

var (
	_ frontend = (*fscacheFrontend)(nil)
	_ adopter  = (*fscacheFrontend)(nil)
)

// newFscacheFrontend opens (or, as the supervisor's worker, takes over) the device and starts the
// server. ctx bounds the handover; the server runs until Close.
func newFscacheFrontend(ctx context.Context, deps fscacheDeps) (*fscacheFrontend, error) {
	dev, err := openCachefiles(ctx, deps.dataDir, deps.handover)
	if err != nil {
		return nil, err
	}
	cfg := cachefiles.DefaultConfig()
	cfg.Workers = deps.workers
	cfg.Logger = deps.log
	cfg.Registerer = deps.metrics
	res := fscacheResolver{volumeKey: layout.VolumeKey(deps.domain), boots: deps.bootstraps, store: deps.store, res: deps.resolver}
	srv, err := cachefiles.NewServer(dev, res, cfg)
	if err != nil {
		dev.Close()
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &fscacheFrontend{domain: deps.domain, dev: dev, srv: srv, cancel: cancel, done: make(chan struct{}),
		mounts: map[digest.Digest]map[string]bool{}}
	go func() {
		defer close(f.done)
		if err := srv.Run(rctx); err != nil && rctx.Err() == nil {
			deps.log.Error("cachefiles server stopped", "err", err)
		}
	}()
	return f, nil
}

// openCachefiles opens and binds /dev/cachefiles, or, as a supervisor's worker, takes the
// supervisor's bound device (Handover writes "restore": requests the previous worker left
// unanswered are sent again).
func openCachefiles(ctx context.Context, dataDir, handover string) (*cachefiles.Device, error) {
	if handover != "" {
		ctx, cancel := context.WithTimeout(ctx, handoverTimeout)
		defer cancel()
		return cachefiles.Handover(ctx, handover)
	}
	return openBoundDevice(dataDir)
}

// openBoundDevice opens /dev/cachefiles and binds it, in on-demand mode, to dir: the chunk
// store's directory, so the kernel's backing files are the store's.
func openBoundDevice(dir string) (*cachefiles.Device, error) {
	dev, err := cachefiles.OpenDevice(cachefiles.DefaultDevicePath)
	if err != nil {
		return nil, err
	}
	if err := dev.Bind(dir, "shoal"); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

func (f *fscacheFrontend) Mount(ctx context.Context, im *image, mp string) error {
	boot := im.Image.Bootstrap.Digest
	// The kernel takes an fsid once per domain (a second mount fails with EEXIST): mount the
	// image again by binding a mountpoint it already has.
	f.mu.Lock()
	var existing string
	for other := range f.mounts[boot] {
		if other != mp {
			existing = other
			break
		}
	}
	f.mu.Unlock()
	var err error
	if existing != "" {
		err = mount.Bind(existing, mp)
	} else {
		var blobs []string
		for _, b := range im.Image.Blobs {
			blobs = append(blobs, b.Digest.String())
		}
		err = mount.MountFscache(boot.String(), f.domain, blobs, mp)
	}
	if err == nil {
		f.track(boot, mp)
	}
	return err
}

func (f *fscacheFrontend) track(boot digest.Digest, mp string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mounts[boot] == nil {
		f.mounts[boot] = map[string]bool{}
	}
	f.mounts[boot][mp] = true
}

// Adopt takes over an fscache mount of im the previous worker under the same supervisor left at
// mp: the kernel's cache lived on, so the mount did too.
func (f *fscacheFrontend) Adopt(im *image, mp string) bool {
	if !isFscacheMountOf(mp, im) {
		return false
	}
	f.track(im.Image.Bootstrap.Digest, mp)
	return true
}

func (f *fscacheFrontend) Unmount(mp string) error {
	if err := unmountErofs(mp); err != nil {
		return err
	}
	f.mu.Lock()
	for boot, mps := range f.mounts {
		if delete(mps, mp); len(mps) == 0 {
			delete(f.mounts, boot)
		}
	}
	f.mu.Unlock()
	return nil
}

// Close stops the server, waits for it, and closes the device (the supervisor keeps its own).
func (f *fscacheFrontend) Close() error {
	f.cancel()
	<-f.done
	err := f.srv.Close() // after Run returned, as the server requires
	return errors.Join(err, f.dev.Close())
}

// fscacheResolver maps cookie keys (digest strings) to bootstraps (local files) and blobs (the
// demand resolver and the store).
type fscacheResolver struct {
	volumeKey string
	boots     bootstrapLookup
	store     fscacheStore
	res       ensurer
}

var _ cachefiles.Resolver = fscacheResolver{}

func (r fscacheResolver) Lookup(volumeKey, cookieKey string) (int64, bool) {
	if volumeKey != r.volumeKey {
		return 0, false
	}
	if _, size, ok := r.boots.Bootstrap(cookieKey); ok {
		return size, true
	}
	if m, ok := r.store.Blob(digest.Digest(cookieKey)); ok {
		return m.BlobSize, true
	}
	return 0, false
}

// Fill makes a READ's range present in the backing file. A bootstrap is a local file: its bytes
// go through write. A blob's chunks are written by the chunk store into the very backing file
// the kernel reads (the cachefiles cache is bound to the store's directory), so Ensure is all it
// takes; only bytes that no chunk covers (not file data) are written, as zeros, so the kernel
// finds data at every page of the range.
func (r fscacheResolver) Fill(ctx context.Context, cookieKey string, off, length int64, write func([]byte, int64) error) error {
	if path, size, ok := r.boots.Bootstrap(cookieKey); ok {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		n := max(0, min(length, size-off))
		p := make([]byte, n)
		if _, err := f.ReadAt(p, off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		return write(p, off)
	}
	blob := digest.Digest(cookieKey)
	m, ok := r.store.Blob(blob)
	if !ok {
		return fmt.Errorf("fscache READ of unknown blob %s", blob)
	}
	if err := r.res.Ensure(ctx, blob, off, length); err != nil {
		return err
	}
	return writeGaps(m, off, length, write)
}

// writeGaps writes zeros over the pages of [off, off+length) that no chunk of m covers.
func writeGaps(m *chunk.Manifest, off, length int64, write func([]byte, int64) error) error {
	const page = chunk.BlockSize
	end := min(off+length, (m.BlobSize+page-1)&^(page-1))
	pos := off
	var zeros []byte
	gap := func(from, to int64) error {
		// A page a chunk covers in part is the chunk's: the store writes a chunk padded with
		// zeros to whole blocks. Chunks start on block boundaries, so only from needs rounding.
		from = (from + page - 1) &^ (page - 1)
		for from < to {
			n := min(to-from, 1<<20)
			if int64(len(zeros)) < n {
				zeros = make([]byte, n)
			}
			if err := write(zeros[:n], from); err != nil {
				return err
			}
			from += n
		}
		return nil
	}
	for _, c := range m.ChunksIn(off, length) {
		if c.Offset > pos {
			if err := gap(pos, c.Offset); err != nil {
				return err
			}
		}
		pos = max(pos, c.End())
	}
	if pos < end {
		return gap(pos, end)
	}
	return nil
}

// isFscacheMountOf reports whether mp is an fscache-mode EROFS mount of im's bootstrap.
func isFscacheMountOf(mp string, im *image) bool {
	all, err := mount.ParseMountinfoFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	want := "fsid=" + im.Image.Bootstrap.Digest.String()
	for _, m := range all {
		if m.Mountpoint == mp && m.IsErofs() && strings.Contains(","+m.SuperOptions+",", ","+want+",") {
			return true
		}
	}
	return false
}
