package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/demand/cachefiles"
	"github.com/shoal-p2p/shoal/mount"
)

func init() {
	frontendFactories["fscache"] = newFscacheFrontend
	probeFuncs["fscache"] = func(d *Daemon) error {
		fd, err := unix.Open(cachefiles.DefaultDevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
		switch {
		case errors.Is(err, unix.ENOENT):
			return errors.New("no /dev/cachefiles (kernel without CACHEFILES_ONDEMAND)")
		case errors.Is(err, unix.EBUSY):
			return errors.New("/dev/cachefiles is held by another process (cachefilesd?)")
		case err != nil:
			return fmt.Errorf("/dev/cachefiles: %w", err)
		}
		unix.Close(fd) // the device is exclusive: let the frontend open it for real
		return nil
	}
}

// fscacheFrontend answers the kernel's cachefiles on-demand requests: EROFS mounted with fsid=
// reads its bootstrap and blobs through /dev/cachefiles, bound to the store's own directory so
// the kernel's backing files are the store's. Hits never leave the kernel.
type fscacheFrontend struct {
	d      *Daemon
	dev    *cachefiles.Device
	srv    *cachefiles.Server
	cancel context.CancelFunc
	done   chan struct{}
}

func newFscacheFrontend(d *Daemon) (frontend, error) {
	dev, err := cachefiles.OpenDevice(cachefiles.DefaultDevicePath)
	if err != nil {
		return nil, err
	}
	if err := dev.Bind(d.cfg.DataDir, "shoal"); err != nil {
		dev.Close()
		return nil, err
	}
	cfg := cachefiles.DefaultConfig()
	cfg.Workers = d.cfg.Workers
	cfg.Logger = d.log
	srv, err := cachefiles.NewServer(dev, fscacheResolver{d}, cfg)
	if err != nil {
		dev.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(d.ctx)
	f := &fscacheFrontend{d: d, dev: dev, srv: srv, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		if err := srv.Run(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("cachefiles server stopped", "err", err)
		}
	}()
	return f, nil
}

func (f *fscacheFrontend) Mount(ctx context.Context, im *image, mp string) error {
	var blobs []string
	for _, b := range im.Image.Blobs {
		blobs = append(blobs, b.Digest.String())
	}
	return mount.MountFscache(im.Image.Bootstrap.Digest.String(), f.d.cfg.Domain, blobs, mp)
}

func (f *fscacheFrontend) Unmount(mp string) error { return unmountErofs(mp) }

func (f *fscacheFrontend) Close() error {
	f.cancel()
	err := f.srv.Close()
	<-f.done
	return errors.Join(err, f.dev.Close())
}

// fscacheResolver maps cookie keys (digest strings) to bootstraps (local files) and blobs (the
// demand resolver and the store).
type fscacheResolver struct{ d *Daemon }

func (r fscacheResolver) bootstrap(key string) (string, int64, bool) {
	r.d.mu.Lock()
	defer r.d.mu.Unlock()
	for _, im := range r.d.images {
		if im.Image.Bootstrap.Digest.String() == key {
			return im.BootPath, im.Image.Bootstrap.Size, true
		}
	}
	return "", 0, false
}

func (r fscacheResolver) Lookup(volumeKey, cookieKey string) (int64, bool) {
	if volumeKey != cachefiles.VolumeKey(r.d.cfg.Domain) {
		return 0, false
	}
	if _, size, ok := r.bootstrap(cookieKey); ok {
		return size, true
	}
	if m, ok := r.d.store.Blob(digest.Digest(cookieKey)); ok {
		return m.BlobSize, true
	}
	return 0, false
}

func (r fscacheResolver) ReadRange(ctx context.Context, cookieKey string, p []byte, off int64) error {
	if path, _, ok := r.bootstrap(cookieKey); ok {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := f.ReadAt(p, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		clear(p[n:]) // past the end: zeros, never a reused buffer's old bytes
		return nil
	}
	blob := digest.Digest(cookieKey)
	if err := r.d.resolver.Ensure(ctx, blob, off, int64(len(p))); err != nil {
		return err
	}
	n, err := r.d.store.ReadAt(blob, p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	clear(p[n:])
	return nil
}
