package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/demand/fusetree"
	"github.com/shoal-p2p/shoal/mount"
)

// fusetreeFrontend serves each image's tree itself, one FUSE mount per mountpoint
// (demand/fusetree): no EROFS, cachefiles or fanotify needed, so it works on any kernel with
// FUSE. Its mounts end with the daemon (the server is in this process); state.json remounts
// them at the next start.
type fusetreeFrontend struct {
	log   *slog.Logger
	res   ensurer
	store fusetree.BlobReader

	mu      sync.Mutex
	servers map[string]*fusetree.Server // mountpoint → its server
	closed  bool
}

var _ frontend = (*fusetreeFrontend)(nil)

func newFusetreeFrontend(res ensurer, store fusetree.BlobReader, log *slog.Logger) *fusetreeFrontend {
	return &fusetreeFrontend{log: log, res: res, store: store, servers: map[string]*fusetree.Server{}}
}

func (f *fusetreeFrontend) Mount(ctx context.Context, im *image, mp string) error {
	f.unmountStale(mp)
	blobs := make([]digest.Digest, len(im.Image.Blobs))
	for i, b := range im.Image.Blobs {
		blobs[i] = b.Digest
	}
	cfg := fusetree.DefaultConfig()
	cfg.Logger = f.log
	// The registry reserved mp for this call: no other Mount or Unmount of it runs meanwhile.
	srv, err := fusetree.Mount(mp, fusetree.Image{Bootstrap: im.BootPath, Blobs: blobs}, f.res, f.store, cfg)
	if err != nil {
		return err
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return errors.Join(errFrontendsClosed, srv.Close())
	}
	f.servers[mp] = srv
	f.mu.Unlock()
	return nil
}

// unmountStale unmounts a tree mount a killed daemon left at mp: its server is gone, so every
// access would fail with ENOTCONN.
func (f *fusetreeFrontend) unmountStale(mp string) {
	all, err := mount.ParseMountinfoFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, m := range all {
		if m.Mountpoint == mp && m.IsShoalTree() {
			if err := mount.Unmount(mp); err == nil {
				f.log.Info("unmounted a stale fusetree mount left by an earlier daemon", "mountpoint", mp)
			}
			return
		}
	}
}

func (f *fusetreeFrontend) Unmount(mp string) error {
	f.mu.Lock()
	srv := f.servers[mp]
	delete(f.servers, mp)
	f.mu.Unlock()
	if srv == nil {
		return unmountErofs(mp) // not ours (any more): whatever is left there, gone if it is
	}
	if err := srv.Close(); err != nil {
		return fmt.Errorf("fusetree: %w", err)
	}
	return nil
}

// Close unmounts what is still mounted (the service unmounts first; this is the backstop).
func (f *fusetreeFrontend) Close() error {
	f.mu.Lock()
	f.closed = true
	servers := f.servers
	f.servers = map[string]*fusetree.Server{}
	f.mu.Unlock()
	var errs []error
	for _, srv := range servers {
		errs = append(errs, srv.Close())
	}
	return errors.Join(errs...)
}
