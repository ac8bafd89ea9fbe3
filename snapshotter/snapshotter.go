package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/bootstrap"
)

// Errors of this package; containerd's own (errdefs) are returned where the snapshots API
// defines them.
var (
	// ErrBadLabels: a Prepare's Shoal labels are malformed.
	ErrBadLabels = errors.New("bad Shoal snapshot labels")
	// ErrNoImageRef: a Shoal image's layer came without a label naming the image.
	ErrNoImageRef = errors.New("no image reference for a Shoal layer")
)

// Daemon is what the snapshotter needs of the Shoal daemon: mount an image at a directory (in
// the best mode the host has, or the configured one), unmount it, and tell whether it has
// finished restoring the mounts of its last run (it mounts the images it had at their old
// mount points itself, which are this snapshotter's). DaemonClient adapts the daemon's control
// API client.
type Daemon interface {
	Mount(ctx context.Context, ref, mountpoint, mode string) error
	Umount(ctx context.Context, mountpoint string) error
	Restored(ctx context.Context) (bool, error)
}

// restoreWait bounds how long a mount waits for the daemon to finish restoring its last run's
// mounts (it has the image's manifests locally: seconds at most, unless it is stuck).
const restoreWait = time.Minute

// Config holds the optional settings.
type Config struct {
	// Mode is the mount mode asked of the daemon: "" or auto (the best this host has),
	// fscache, fanotify, fuse or fusetree (the image's tree served over FUSE from its
	// bootstrap, no EROFS: any kernel with FUSE).
	Mode string
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
}

// Validate checks the settings.
func (c Config) Validate() error {
	switch c.Mode {
	case "", "auto", "fscache", "fanotify", "fuse", "fusetree":
		return nil
	}
	return fmt.Errorf("snapshotter mode %q: want auto, fscache, fanotify, fuse or fusetree", c.Mode)
}

// Snapshotter is containerd's snapshots.Snapshotter over overlayfs, with the layers of Shoal
// images presented from the daemon's mount of the image instead of unpacked tars.
type Snapshotter struct {
	root    string
	ms      *storage.MetaStore
	daemon  Daemon
	mode    string
	log     *slog.Logger
	options []string // overlay options every overlay mount gets (index=off, userxattr)

	// mounted reports whether a directory is a mount point (mountinfo.Mounted; tests without
	// root replace it).
	mounted func(string) (bool, error)

	imagesMu sync.Mutex
	images   map[digest.Digest]*sync.Mutex // one lock per image: its mount, check and unmount
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// New opens (or creates) a snapshotter rooted at root: root/metadata.db holds the snapshots
// (containerd's bbolt MetaStore, as its overlayfs snapshotter keeps them), root/snapshots/ID the
// upper and work directories, root/images/DIGEST the mount point of each Shoal image in use.
// Nothing is mounted or unmounted here: images are mounted again, if they are not, when a
// snapshot over them is next mounted (Recover does it for all at once).
func New(root string, d Daemon, cfg Config) (*Snapshotter, error) {
	if d == nil {
		return nil, errors.New("snapshotter: no daemon")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	for _, dir := range []string{root, filepath.Join(root, "snapshots"), filepath.Join(root, "images")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("snapshotter root: %w", err)
		}
	}
	if ok, err := fs.SupportsDType(root); err != nil {
		return nil, fmt.Errorf("snapshotter root %s: %w", root, err)
	} else if !ok {
		return nil, fmt.Errorf("snapshotter root %s: the filesystem lacks d_type, which overlayfs needs (xfs: ftype=1)", root)
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("snapshotter metadata %s: %w", filepath.Join(root, "metadata.db"), err)
	}
	s := &Snapshotter{
		root:    root,
		ms:      ms,
		daemon:  d,
		mode:    cfg.Mode,
		log:     cfg.Logger,
		mounted: mountinfo.Mounted,
		images:  map[digest.Digest]*sync.Mutex{},
	}
	if ux, err := overlayutils.NeedsUserXAttr(root); err != nil {
		s.log.Warn("cannot tell whether overlayfs needs userxattr here; assuming not", "err", err)
	} else if ux {
		s.options = append(s.options, "userxattr")
	}
	if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil {
		s.options = append(s.options, "index=off")
	}
	return s, nil
}

// Close closes the metadata store. Mounts stay: running containers keep their image mounts
// across a restart of the snapshotter.
func (s *Snapshotter) Close() error { return s.ms.Close() }

// Stat returns the info of a snapshot by key or name.
func (s *Snapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	var info snapshots.Info
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update changes a snapshot's labels. The Shoal labels this snapshotter relies on (the layer's
// role, its image's bootstrap and reference) are kept whatever the update says.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	var out snapshots.Info
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, cur, _, err := storage.GetInfo(ctx, info.Name)
		if err != nil {
			return err
		}
		whole := len(fieldpaths) == 0 || containsString(fieldpaths, "labels")
		for k, v := range cur.Labels {
			if !strings.HasPrefix(k, labelOwnPrefix) && k != snapshots.LabelSnapshotRef {
				continue
			}
			if whole {
				if info.Labels == nil {
					info.Labels = map[string]string{}
				}
				info.Labels[k] = v
			} else if containsString(fieldpaths, "labels."+k) {
				info.Labels[k] = v
			}
		}
		out, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	return out, err
}

func containsString(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// Usage is what a snapshot takes on disk: an active snapshot's upper directory is measured; a
// committed one's figure was taken at commit (zero for a Shoal layer, whose data is the daemon's).
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return snapshots.Usage{}, err
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return snapshots.Usage{}, err
		}
		usage = snapshots.Usage(du)
	}
	return usage, nil
}

// Prepare creates an active snapshot. For a layer of a Shoal image being unpacked (its labels
// carry the role and containerd.io/snapshot.ref), the layer is committed at once under the
// target name, its image mounted by the daemon first for the bootstrap layer, and the answer is
// errdefs.ErrAlreadyExists: containerd then fetches and applies nothing for it.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	l, err := parseLayer(base.Labels)
	if err != nil {
		return nil, err
	}
	if l.shoal() && l.target != "" {
		return nil, s.prepareShoal(ctx, key, parent, l, base.Labels)
	}
	return s.create(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only snapshot of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindView, key, parent, opts)
}

// prepareShoal commits a Shoal layer under l.target and returns ErrAlreadyExists.
func (s *Snapshotter) prepareShoal(ctx context.Context, key, parent string, l layer, labels map[string]string) error {
	if info, err := s.Stat(ctx, l.target); err == nil {
		if info.Kind == snapshots.KindCommitted && info.Parent == parent {
			return fmt.Errorf("target snapshot %q: %w", l.target, errdefs.ErrAlreadyExists)
		}
		return fmt.Errorf("target snapshot %q exists with parent %q, not %q: %w", l.target, info.Parent, parent, errdefs.ErrFailedPrecondition)
	}
	if l.role == bootstrap.RoleBootstrap {
		if l.ref == "" {
			return fmt.Errorf("%w: layer %s of the Shoal image with bootstrap %s has neither %s nor %s; pull it through CRI (disable_snapshot_annotations = false) or containerd 2.x's transfer service with enable_remote_snapshot_annotations (docs/snapshotter.md)",
				ErrNoImageRef, l.target, l.bootstrap, LabelImageRef, LabelShoalRef)
		}
		if err := s.ensureImage(ctx, l.bootstrap, l.ref); err != nil {
			return err
		}
	}
	lb := make(map[string]string, len(labels)+1)
	for k, v := range labels {
		lb[k] = v
	}
	if l.ref != "" {
		lb[LabelShoalRef] = l.ref // what Recover mounts the image from
	}
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		if _, err := storage.CreateSnapshot(ctx, snapshots.KindActive, key, parent, snapshots.WithLabels(lb)); err != nil {
			return err
		}
		_, err := storage.CommitActive(ctx, key, l.target, snapshots.Usage{}, snapshots.WithLabels(lb))
		return err
	})
	if errdefs.IsAlreadyExists(err) {
		// Another Prepare committed the same target in the meantime: the layer is there.
		return fmt.Errorf("target snapshot %q: %w", l.target, errdefs.ErrAlreadyExists)
	}
	if err != nil {
		// A bootstrap whose image was just mounted for nothing is unmounted by Cleanup.
		return fmt.Errorf("commit Shoal layer %s: %w", l.target, err)
	}
	s.log.Info("Shoal layer ready", "name", l.target, "role", l.role, "bootstrap", l.bootstrap, "ref", l.ref)
	return fmt.Errorf("target snapshot %q: %w", l.target, errdefs.ErrAlreadyExists)
}

// create makes an active or view snapshot with its directories and returns its mounts.
func (s *Snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (_ []mount.Mount, err error) {
	snapDir := filepath.Join(s.root, "snapshots")
	td, err := os.MkdirTemp(snapDir, "new-")
	if err != nil {
		return nil, fmt.Errorf("snapshot directory: %w", err)
	}
	defer func() {
		if td != "" {
			_ = os.RemoveAll(td)
		}
	}()
	if err := os.Mkdir(filepath.Join(td, "fs"), 0o755); err != nil {
		return nil, err
	}
	if kind == snapshots.KindActive {
		if err := os.Mkdir(filepath.Join(td, "work"), 0o711); err != nil {
			return nil, err
		}
	}
	var snap storage.Snapshot
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		snap, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...)
		if err != nil {
			return err
		}
		if len(snap.ParentIDs) > 0 {
			// The upper directory takes the owner of the parent's, as overlayfs's snapshotter does
			// (a Shoal parent has no directory of its own: root's is kept).
			if st, err := os.Stat(s.upperPath(snap.ParentIDs[0])); err == nil {
				if sys, ok := st.Sys().(*syscall.Stat_t); ok {
					if err := os.Lchown(filepath.Join(td, "fs"), int(sys.Uid), int(sys.Gid)); err != nil {
						return fmt.Errorf("chown upper directory: %w", err)
					}
				}
			}
		}
		if err := os.Rename(td, s.snapshotDir(snap.ID)); err != nil {
			return fmt.Errorf("snapshot directory: %w", err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	td = ""
	return s.mountsOf(ctx, key)
}

// Mounts returns the mounts of an active or view snapshot.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	return s.mountsOf(ctx, key)
}

// lower is one lower directory of an overlay mount: a snapshot's upper directory or a Shoal
// image's mount point (with what is needed to mount it again).
type lower struct {
	path  string
	image digest.Digest // set for a Shoal image
	ref   string
}

// mountsOf builds a snapshot's mounts: overlay with the parents as lowers, where a Shoal image's
// blob and chunk layers are left out (they are empty) and its bootstrap layer stands for the
// image's mount point, mounted again first if it is not mounted (after a reboot, say).
func (s *Snapshotter) mountsOf(ctx context.Context, key string) ([]mount.Mount, error) {
	var (
		snap   storage.Snapshot
		lowers []lower
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		snap, err = storage.GetSnapshot(ctx, key)
		if err != nil {
			return fmt.Errorf("snapshot %q: %w", key, err)
		}
		if len(snap.ParentIDs) == 0 {
			return nil
		}
		names, err := storage.IDMap(ctx)
		if err != nil {
			return err
		}
		for _, id := range snap.ParentIDs {
			_, info, _, err := storage.GetInfo(ctx, names[id])
			if err != nil {
				return fmt.Errorf("parent %s of snapshot %q: %w", names[id], key, err)
			}
			l, err := parseLayer(info.Labels)
			if err != nil {
				return fmt.Errorf("parent %s of snapshot %q: %w", info.Name, key, err)
			}
			switch {
			case !l.shoal():
				lowers = append(lowers, lower{path: s.upperPath(id)})
			case l.role == bootstrap.RoleBootstrap:
				lowers = append(lowers, lower{path: s.imagePath(l.bootstrap), image: l.bootstrap, ref: l.ref})
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	for _, l := range lowers {
		if l.image != "" {
			if err := s.ensureImage(ctx, l.image, l.ref); err != nil {
				return nil, fmt.Errorf("snapshot %q: %w", key, err)
			}
		}
	}
	return s.overlay(snap, lowers), nil
}

func (s *Snapshotter) overlay(snap storage.Snapshot, lowers []lower) []mount.Mount {
	ro := snap.Kind == snapshots.KindView
	bind := func(src string, ro bool) []mount.Mount {
		flag := "rw"
		if ro {
			flag = "ro"
		}
		return []mount.Mount{{Type: "bind", Source: src, Options: []string{flag, "rbind"}}}
	}
	if len(lowers) == 0 {
		return bind(s.upperPath(snap.ID), ro)
	}
	var opts []string
	if ro {
		if len(lowers) == 1 {
			return bind(lowers[0].path, true)
		}
	} else {
		opts = append(opts, "workdir="+s.workPath(snap.ID), "upperdir="+s.upperPath(snap.ID))
	}
	paths := make([]string, len(lowers))
	for i, l := range lowers {
		paths[i] = l.path
	}
	opts = append(opts, "lowerdir="+strings.Join(paths, ":"))
	opts = append(opts, s.options...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: opts}}
}

// Commit turns an active snapshot into a committed one named name, measuring its upper
// directory.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, _, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return err
		}
		_, err = storage.CommitActive(ctx, key, name, snapshots.Usage(du), opts...)
		return err
	})
}

// Remove deletes a snapshot (one with children is refused by the store) and its directory.
// When the last committed bootstrap layer of a Shoal image goes, the image is unmounted: no
// snapshot can still be above it.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var (
		id      string
		l       layer
		orphan  bool
		removed bool
	)
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if l, err = parseLayer(info.Labels); err != nil {
			l = layer{} // a snapshot with bad labels is still removable
		}
		if id, _, err = storage.Remove(ctx, key); err != nil {
			return fmt.Errorf("remove snapshot %q: %w", key, err)
		}
		removed = true
		if l.role == bootstrap.RoleBootstrap {
			n, err := s.imageUsers(ctx, l.bootstrap)
			if err != nil {
				return err
			}
			orphan = n == 0
		}
		return nil
	})
	if err != nil {
		return err
	}
	if removed {
		if err := os.RemoveAll(s.snapshotDir(id)); err != nil {
			s.log.Warn("removing snapshot directory (Cleanup retries)", "dir", s.snapshotDir(id), "err", err)
		}
	}
	if orphan {
		if err := s.releaseImage(ctx, l.bootstrap); err != nil {
			s.log.Warn("unmounting image (Cleanup retries)", "bootstrap", l.bootstrap, "err", err)
		}
	}
	return nil
}

// imageUsers counts the committed bootstrap layers of the image (one per namespace that holds it).
func (s *Snapshotter) imageUsers(ctx context.Context, b digest.Digest) (int, error) {
	n := 0
	err := storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
		if l, err := parseLayer(info.Labels); err == nil && l.role == bootstrap.RoleBootstrap && l.bootstrap == b {
			n++
		}
		return nil
	})
	return n, err
}

// Walk calls fn for every snapshot matching the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Cleanup removes what no snapshot owns: snapshot directories left by a crash or a failed
// removal, and mounts of Shoal images no snapshot uses any more.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	var (
		ids   map[string]string
		inUse = map[string]bool{}
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		if ids, err = storage.IDMap(ctx); err != nil {
			return err
		}
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if l, err := parseLayer(info.Labels); err == nil && l.role == bootstrap.RoleBootstrap {
				inUse[l.bootstrap.Encoded()] = true
			}
			return nil
		})
	}); err != nil {
		return err
	}
	var errs []error
	dirs, err := os.ReadDir(filepath.Join(s.root, "snapshots"))
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if _, ok := ids[d.Name()]; ok {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.root, "snapshots", d.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	imgs, err := os.ReadDir(filepath.Join(s.root, "images"))
	if err != nil {
		return err
	}
	for _, d := range imgs {
		if inUse[d.Name()] {
			continue
		}
		dg := digest.NewDigestFromEncoded(digest.SHA256, d.Name())
		if dg.Validate() != nil {
			continue
		}
		if err := s.releaseImage(ctx, dg); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Recover mounts again every Shoal image some snapshot uses that is not mounted (after a reboot,
// or a daemon that lost its state). It is best effort: an image that cannot be mounted now is
// logged and tried again when a snapshot over it is mounted.
func (s *Snapshotter) Recover(ctx context.Context) {
	refs := map[digest.Digest]string{}
	if err := s.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if l, err := parseLayer(info.Labels); err == nil && l.role == bootstrap.RoleBootstrap {
			refs[l.bootstrap] = l.ref
		}
		return nil
	}); err != nil {
		s.log.Warn("recover: listing snapshots", "err", err)
		return
	}
	for b, ref := range refs {
		if err := s.ensureImage(ctx, b, ref); err != nil {
			s.log.Warn("recover: image not mounted yet (tried again on use)", "bootstrap", b, "ref", ref, "err", err)
		}
	}
}

func (s *Snapshotter) imageLock(b digest.Digest) *sync.Mutex {
	s.imagesMu.Lock()
	defer s.imagesMu.Unlock()
	mu, ok := s.images[b]
	if !ok {
		mu = &sync.Mutex{}
		s.images[b] = mu
	}
	return mu
}

// ensureImage makes sure the image with bootstrap b is mounted at its mount point, asking the
// daemon to mount it from ref if it is not.
func (s *Snapshotter) ensureImage(ctx context.Context, b digest.Digest, ref string) error {
	mu := s.imageLock(b)
	mu.Lock()
	defer mu.Unlock()
	mp := s.imagePath(b)
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return fmt.Errorf("image mount point: %w", err)
	}
	if ok, err := s.mounted(mp); err != nil {
		return fmt.Errorf("image mount point %s: %w", mp, err)
	} else if ok {
		return nil
	}
	// A daemon that has just started mounts its last run's images at their mount points itself:
	// asking it to mount one it is restoring fails ("already a Shoal mount") or, worse, lets a
	// container's overlay be built on the empty directory beneath. Wait for its restore first.
	if restored, err := s.waitRestored(ctx); err != nil {
		return err
	} else if restored {
		if ok, err := s.mounted(mp); err != nil {
			return fmt.Errorf("image mount point %s: %w", mp, err)
		} else if ok {
			s.log.Info("image mounted again by the daemon's restore", "bootstrap", b, "mountpoint", mp)
			return nil
		}
	}
	if ref == "" {
		return fmt.Errorf("%w: the image with bootstrap %s is not mounted at %s and no label says where it comes from", ErrNoImageRef, b, mp)
	}
	if err := s.daemon.Mount(ctx, ref, mp, s.mode); err != nil {
		return fmt.Errorf("daemon: mount %s at %s: %w", ref, mp, err)
	}
	if ok, err := s.mounted(mp); err != nil || !ok {
		return fmt.Errorf("daemon mounted %s, but %s is not a mount point (%v): is the daemon in another mount namespace?", ref, mp, err)
	}
	s.log.Info("image mounted", "ref", ref, "bootstrap", b, "mountpoint", mp)
	return nil
}

// waitRestored waits, up to restoreWait, until the daemon reports that it has restored its last
// run's mounts. It reports whether it saw that; a daemon that does not answer is not waited for
// (the mount that follows then fails with the daemon's own error).
func (s *Snapshotter) waitRestored(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, restoreWait)
	defer cancel()
	for {
		ok, err := s.daemon.Restored(ctx)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return false, fmt.Errorf("waiting for the daemon to restore its mounts: %w", err)
			}
			return false, nil
		case ok:
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("the daemon has not finished restoring its mounts after %s: %w", restoreWait, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// releaseImage unmounts an image no snapshot uses and removes its mount point.
func (s *Snapshotter) releaseImage(ctx context.Context, b digest.Digest) error {
	mu := s.imageLock(b)
	mu.Lock()
	defer mu.Unlock()
	mp := s.imagePath(b)
	if ok, err := s.mounted(mp); err == nil && ok {
		if err := s.daemon.Umount(ctx, mp); err != nil {
			return fmt.Errorf("daemon: unmount %s: %w", mp, err)
		}
		s.log.Info("image unmounted", "bootstrap", b, "mountpoint", mp)
	}
	if err := os.Remove(mp); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("image mount point: %w", err)
	}
	return nil
}

func (s *Snapshotter) snapshotDir(id string) string { return filepath.Join(s.root, "snapshots", id) }
func (s *Snapshotter) upperPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "fs")
}
func (s *Snapshotter) workPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "work")
}

// imagePath is where the image with bootstrap b is mounted.
func (s *Snapshotter) imagePath(b digest.Digest) string {
	return filepath.Join(s.root, "images", b.Encoded())
}
