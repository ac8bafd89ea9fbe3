package daemon

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/demand/fanotify"
	"github.com/shoal-p2p/shoal/demand/fusefs"
	"github.com/shoal-p2p/shoal/mount"
)

func init() {
	frontendFactories["fuse"] = newFuseFrontend
	probeFuncs["fuse"] = func(d *Daemon) error { return probeMode(d.cfg.DataDir, mount.FUSE) }
	frontendFactories["fanotify"] = newFanotifyFrontend
	probeFuncs["fanotify"] = func(d *Daemon) error { return probeMode(d.cfg.DataDir, mount.Fanotify) }
	cleanupStaleMount = func(log *slog.Logger, mp string) {
		// Only an image mount: whatever else someone mounted there since is theirs.
		all, err := mount.ParseMountinfoFile("/proc/self/mountinfo")
		if err != nil {
			return
		}
		for _, m := range all {
			if m.Mountpoint == mp && m.IsErofs() {
				if err := mount.Unmount(mp); err == nil {
					log.Info("unmounted a stale mount left by an earlier daemon", "mountpoint", mp)
				}
				return
			}
		}
	}
}

// fileBackedOptions: directio keeps blob data from being cached twice (backing file and EROFS
// page cache).
var fileBackedOptions = mount.FileBackedOptions{DirectIO: true}

// mountFileBacked mounts with directio and, on a kernel that refuses the option, without it.
func mountFileBacked(log *slog.Logger, boot string, devices []string, mp string) error {
	err := mount.MountFileBacked(boot, devices, mp, fileBackedOptions)
	if err != nil && fileBackedOptions.DirectIO {
		if err2 := mount.MountFileBacked(boot, devices, mp, mount.FileBackedOptions{}); err2 == nil {
			log.Warn("EROFS refused directio; mounted without it (blob data is cached twice)", "mountpoint", mp, "err", err)
			return nil
		}
	}
	return err
}

// fuseFrontend serves blobs as files of one FUSE filesystem at <data>/fuse and mounts EROFS
// file-backed on them: works on any kernel with FUSE and EROFS file-backed mounts.
type fuseFrontend struct {
	d   *Daemon
	srv *fusefs.Server
}

func newFuseFrontend(d *Daemon) (frontend, error) {
	dir := filepath.Join(d.cfg.DataDir, "fuse")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	_ = mount.Unmount(dir) // a FUSE mount left by a killed daemon would block this one
	cfg := fusefs.DefaultConfig()
	cfg.Logger = d.log
	srv, err := fusefs.Mount(dir, d.resolver, d.store, cfg)
	if err != nil {
		return nil, err
	}
	return &fuseFrontend{d: d, srv: srv}, nil
}

func (f *fuseFrontend) Mount(ctx context.Context, im *image, mp string) error {
	var devices []string
	for _, b := range im.Image.Blobs {
		if err := f.srv.AddBlob(ctx, b.Digest, b.Size); err != nil {
			return err
		}
		devices = append(devices, f.srv.Path(b.Digest))
	}
	return mountFileBacked(f.d.log, im.BootPath, devices, mp)
}

func (f *fuseFrontend) Unmount(mp string) error { return unmountErofs(mp) }

func (f *fuseFrontend) Close() error { return f.srv.Close() }

// fanotifyFrontend marks the store's backing files for pre-content events and mounts EROFS
// file-backed on them directly: no copy, no FUSE round trip, hits served by the page cache once a
// blob is complete and unmarked.
type fanotifyFrontend struct {
	d      *Daemon
	l      *fanotify.Listener
	cancel context.CancelFunc
	done   chan struct{}
	unsub  func()

	mu      sync.Mutex
	users   map[digest.Digest]map[string]bool // blob → mountpoints using it
	byMP    map[string][]digest.Digest
	missing map[digest.Digest]int // watched blobs → chunks not yet present
}

func newFanotifyFrontend(d *Daemon) (frontend, error) {
	cfg := fanotify.DefaultConfig()
	cfg.Logger = d.log
	cfg.Workers = d.cfg.Workers * 2
	l, err := fanotify.New(d.resolver, cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(d.ctx)
	f := &fanotifyFrontend{d: d, l: l, cancel: cancel, done: make(chan struct{}),
		users: map[digest.Digest]map[string]bool{}, byMP: map[string][]digest.Digest{}, missing: map[digest.Digest]int{}}
	go func() {
		defer close(f.done)
		if err := l.Run(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("fanotify listener stopped", "err", err)
		}
	}()
	// A blob that becomes complete is unmarked, so its reads stop reaching the daemon.
	// A blob that becomes complete is unmarked, so its reads stop reaching the daemon. The count
	// of missing chunks per watched blob is kept from the store's events: O(1) per chunk, where
	// asking the store for the whole blob's state at each chunk would be quadratic.
	f.unsub = d.store.Subscribe(func(e chunkstore.Event) {
		f.mu.Lock()
		n, watched := f.missing[e.Blob]
		if !watched {
			f.mu.Unlock()
			return
		}
		if e.Kind == chunkstore.ChunkAdded {
			n--
		} else {
			n++
		}
		f.missing[e.Blob] = n
		f.mu.Unlock()
		if n == 0 {
			go f.complete(e.Blob) // not on the store's goroutine: Unwatch takes the listener's lock
		}
	})
	return f, nil
}

// complete drops the mark of a blob that has every chunk.
func (f *fanotifyFrontend) complete(blob digest.Digest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n, ok := f.missing[blob]; !ok || n != 0 {
		return // evicted again meanwhile, or no longer watched
	}
	delete(f.missing, blob)
	if err := f.l.Unwatch(blob); err != nil {
		f.d.log.Warn("dropping the fanotify mark of a complete blob", "blob", blob, "err", err)
		return
	}
	f.d.log.Debug("blob complete: fanotify mark dropped", "blob", blob)
}

func (f *fanotifyFrontend) Mount(ctx context.Context, im *image, mp string) error {
	var devices []string
	var watched []digest.Digest
	for _, b := range im.Image.Blobs {
		path := f.d.store.BackingPath(b.Digest)
		_, present, err := f.d.store.PresentTotals(b.Digest)
		if err != nil {
			return err
		}
		if missing := len(b.Manifest.Chunks) - int(present); missing > 0 { // complete blobs need no mark
			// Count first, then mark: a chunk landing in between is counted by the event, and
			// at worst the count is high and the mark stays (reads are still served correctly).
			f.mu.Lock()
			if _, ok := f.missing[b.Digest]; !ok {
				f.missing[b.Digest] = missing
			}
			f.mu.Unlock()
			if err := f.l.Watch(b.Digest, path); err != nil {
				return err
			}
		}
		watched = append(watched, b.Digest)
		devices = append(devices, path)
	}
	if err := mountFileBacked(f.d.log, im.BootPath, devices, mp); err != nil {
		f.release(watched, "")
		return err
	}
	f.mu.Lock()
	for _, b := range watched {
		if f.users[b] == nil {
			f.users[b] = map[string]bool{}
		}
		f.users[b][mp] = true
	}
	f.byMP[mp] = watched
	f.mu.Unlock()
	return nil
}

// release drops mp's use of blobs and unmarks those no mount uses any more.
func (f *fanotifyFrontend) release(blobs []digest.Digest, mp string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range blobs {
		delete(f.users[b], mp)
		if len(f.users[b]) == 0 {
			delete(f.users, b)
			delete(f.missing, b)
			_ = f.l.Unwatch(b)
		}
	}
}

func (f *fanotifyFrontend) Unmount(mp string) error {
	if err := unmountErofs(mp); err != nil {
		return err
	}
	f.mu.Lock()
	blobs := f.byMP[mp]
	delete(f.byMP, mp)
	f.mu.Unlock()
	f.release(blobs, mp)
	return nil
}

// Close stops the listener. Images must be unmounted first: with the group closed, reads of
// holes would return zeros.
func (f *fanotifyFrontend) Close() error {
	f.unsub()
	err := f.l.Close()
	f.cancel()
	<-f.done
	return err
}

func unmountErofs(mp string) error {
	err := mount.Unmount(mp)
	if errors.Is(err, mount.ErrNotMounted) {
		return nil // already gone (unmounted by hand): nothing to do
	}
	return err
}

func cleanupDataDirMounts(dir string) ([]mount.Info, error) { return mount.Cleanup(dir) }
