package daemon

import (
	"context"
	"log/slog"
	"os"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/demand/fusefs"
	"github.com/shoal-p2p/shoal/mount"
)

// fuseStore is what the FUSE frontend reads of the chunk store: present bytes of a blob.
type fuseStore interface {
	fusefs.BlobReader
}

// fuseFrontend serves blobs as files of one FUSE filesystem at <data>/fuse and mounts EROFS
// file-backed on them: works on any kernel with FUSE and EROFS file-backed mounts.
type fuseFrontend struct {
	log *slog.Logger
	srv *fusefs.Server
}

var (
	_ frontend      = (*fuseFrontend)(nil)
	_ blobForgetter = (*fuseFrontend)(nil)
)

func newFuseFrontend(dir string, res ensurer, store fuseStore, log *slog.Logger) (*fuseFrontend, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	_ = mount.Unmount(dir) // a FUSE mount left by a killed daemon would block this one
	cfg := fusefs.DefaultConfig()
	cfg.Logger = log
	srv, err := fusefs.Mount(dir, res, store, cfg)
	if err != nil {
		return nil, err
	}
	return &fuseFrontend{log: log, srv: srv}, nil
}

func (f *fuseFrontend) Mount(ctx context.Context, im *image, mp string) error {
	var devices []string
	for _, b := range im.Image.Blobs {
		if err := f.srv.AddBlob(ctx, b.Digest, b.Manifest.BlobSize); err != nil {
			return err
		}
		devices = append(devices, f.srv.Path(b.Digest))
	}
	return mountFileBacked(f.log, im.BootPath, devices, mp)
}

func (f *fuseFrontend) Unmount(mp string) error { return unmountErofs(mp) }

// ForgetBlob removes the blob's file; mounts still using it (none: its image is removed only
// when unmounted) would keep reading.
func (f *fuseFrontend) ForgetBlob(blob digest.Digest) {
	if err := f.srv.RemoveBlob(blob); err != nil {
		f.log.Warn("removing a blob's FUSE file", "blob", blob, "err", err)
	}
}

func (f *fuseFrontend) Close() error { return f.srv.Close() }
