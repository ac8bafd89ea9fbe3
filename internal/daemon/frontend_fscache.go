package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunkstore/layout"
	"github.com/shoal-p2p/shoal/demand/cachefiles"
	"github.com/shoal-p2p/shoal/mount"
)

func init() {
	frontendFactories["fscache"] = newFscacheFrontend
	probeFuncs["fscache"] = func(d *Daemon) error {
		d.mu.Lock()
		running := d.frontends["fscache"] != nil
		d.mu.Unlock()
		if d.handover != "" || running {
			return nil // the supervisor holds the device for us, or we already do
		}
		return probeMode(d.cfg.DataDir, mount.Fscache) // opens /dev/cachefiles and binds a scratch cache
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
	dev, err := openCachefiles(d)
	if err != nil {
		return nil, err
	}
	cfg := cachefiles.DefaultConfig()
	cfg.Workers = d.cfg.Workers
	cfg.Logger = d.log
	cfg.Registerer = d.reg
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

// openCachefiles opens and binds /dev/cachefiles, or, as a supervisor's worker, takes the
// supervisor's bound device (Handover writes "restore": requests the previous worker left
// unanswered are sent again).
func openCachefiles(d *Daemon) (*cachefiles.Device, error) {
	if d.handover != "" {
		ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
		defer cancel()
		return cachefiles.Handover(ctx, d.handover)
	}
	return openBoundDevice(d.cfg.DataDir)
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
	// The kernel takes an fsid once per domain (a second mount fails with EEXIST): mount the
	// image again by binding a mountpoint it already has.
	f.d.mu.Lock()
	var existing string
	for other, mode := range im.mounts {
		if mode == "fscache" && other != mp {
			existing = other
		}
	}
	f.d.mu.Unlock()
	if existing != "" {
		return mount.Bind(existing, mp)
	}
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
	if volumeKey != layout.VolumeKey(r.d.cfg.Domain) {
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

// Fill makes a READ's range present in the backing file. A bootstrap is a local file: its bytes
// go through write. A blob's chunks are written by the chunk store into the very backing file
// the kernel reads (the cachefiles cache is bound to the store's directory), so Ensure is all it
// takes; only bytes that no chunk covers (not file data) are written, as zeros, so the kernel
// finds data at every page of the range.
func (r fscacheResolver) Fill(ctx context.Context, cookieKey string, off, length int64, write func([]byte, int64) error) error {
	if path, size, ok := r.bootstrap(cookieKey); ok {
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
	m, ok := r.d.store.Blob(blob)
	if !ok {
		return fmt.Errorf("fscache READ of unknown blob %s", blob)
	}
	if err := r.d.resolver.Ensure(ctx, blob, off, length); err != nil {
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

// Supervise runs the cachefiles supervisor of `shoal daemon --supervise`: it opens and binds
// /dev/cachefiles on dataDir, keeps it open for as long as it lives, and keeps a worker (the
// daemon itself, started by worker) running, handing it the device over a unix socket. SIGHUP
// (hup) asks the worker to restart, e.g. after an upgrade of the binary; fscache mounts stay
// mounted throughout. It returns when ctx ends, after the worker has stopped.
func Supervise(ctx context.Context, dataDir string, worker func(ctx context.Context, socket string) *exec.Cmd, hup <-chan os.Signal, log *slog.Logger) error {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	dev, err := openBoundDevice(dataDir)
	if err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	defer dev.Close()
	sock := filepath.Join(dataDir, "cachefiles.sock")
	sup, err := cachefiles.NewSupervisor(dev, cachefiles.SupervisorConfig{
		Socket: sock,
		Worker: func(ctx context.Context) *exec.Cmd { return worker(ctx, sock) },
		Logger: log,
	})
	if err != nil {
		return err
	}
	go func() {
		for range hup {
			if pid := sup.WorkerPID(); pid > 0 {
				log.Info("restarting the worker", "pid", pid)
				_ = syscall.Kill(pid, syscall.SIGUSR1)
			}
		}
	}()
	log.Info("cachefiles supervisor holding /dev/cachefiles", "dir", dataDir, "socket", sock)
	return sup.Run(ctx)
}
