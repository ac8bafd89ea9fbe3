package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-p2p/shoal/mount"
)

// frontend is one kernel demand-read frontend: it mounts an image so that the kernel's reads of
// missing data reach the resolver. Its background work runs until Close, which waits for it.
type frontend interface {
	Mount(ctx context.Context, im *image, mountpoint string) error
	Unmount(mountpoint string) error
	Close() error
}

// adopter is a frontend whose mounts outlive the daemon (fscache under the supervisor, whose
// cache lives on): Adopt reports whether mountpoint is such a mount of im, left by the previous
// worker, and if so takes it over as if it had mounted it.
type adopter interface {
	Adopt(im *image, mountpoint string) bool
}

// blobForgetter is a frontend that keeps something of a blob beyond its mounts (FUSE's blob
// files): ForgetBlob drops it once no image uses the blob.
type blobForgetter interface {
	ForgetBlob(blob digest.Digest)
}

// ensurer makes a range of a blob present (*demand.Resolver): what every frontend needs of the
// resolver.
type ensurer interface {
	Ensure(ctx context.Context, blob digest.Digest, off, length int64) error
}

// frontendStore is the union of what the frontends need of the chunk store (*chunkstore.Store);
// each frontend takes only its own part.
type frontendStore interface {
	fuseStore
	fanotifyStore
	fscacheStore
}

// frontendDeps is everything a frontend may be built from.
type frontendDeps struct {
	dataDir    string
	domain     string // fscache domain
	handover   string // the cachefiles supervisor's socket, when this daemon is its worker
	workers    int
	log        *slog.Logger
	metrics    prometheus.Registerer
	resolver   ensurer
	store      frontendStore
	bootstraps bootstrapLookup
}

// newFrontend builds the frontend of mode m. ctx bounds the construction only (the fscache
// handover waits on it); a frontend's background work runs until its Close. A new mode is one
// file with its constructor and one case here.
func newFrontend(ctx context.Context, m mount.Mode, deps frontendDeps) (frontend, error) {
	switch m {
	case mount.Fscache:
		return newFscacheFrontend(ctx, fscacheDeps{dataDir: deps.dataDir, domain: deps.domain, handover: deps.handover,
			workers: deps.workers, log: deps.log, metrics: deps.metrics,
			resolver: deps.resolver, store: deps.store, bootstraps: deps.bootstraps})
	case mount.Fanotify:
		return newFanotifyFrontend(ctx, deps.resolver, deps.store, 2*deps.workers, deps.log)
	case mount.FUSE:
		return newFuseFrontend(filepath.Join(deps.dataDir, "fuse"), deps.resolver, deps.store, deps.log)
	case mount.FUSETree:
		return newFusetreeFrontend(deps.resolver, deps.store, deps.log), nil
	}
	return nil, fmt.Errorf("%w: unknown mount mode %q", errBadRequest, m)
}

// frontendBuilder builds a frontend of one mode; newFrontend in the daemon, fakes in tests.
type frontendBuilder func(ctx context.Context, m mount.Mode) (frontend, error)

// frontendSet starts one frontend per mode on first use and stops them all at Close. A frontend
// is built outside any lock: constructing the fscache frontend can wait up to 30 s for the
// supervisor's handover, and meanwhile calls for other modes, and everything else the daemon
// does, go on. Callers wanting the mode being built wait for that one construction.
type frontendSet struct {
	build frontendBuilder

	mu     sync.Mutex
	slots  map[mount.Mode]*frontendSlot
	closed bool
}

// frontendSlot is one mode's frontend: being built until ready is closed, then fe or err.
type frontendSlot struct {
	ready  chan struct{}
	cancel context.CancelFunc // stops a construction in progress (Close)
	fe     frontend
	err    error
}

var errFrontendsClosed = errors.New("the daemon is stopping")

func newFrontendSet(build frontendBuilder) *frontendSet {
	return &frontendSet{build: build, slots: map[mount.Mode]*frontendSlot{}}
}

// Get returns the running frontend of mode m, building it on first use. A failed construction is
// not kept: the next call tries again.
func (s *frontendSet) Get(ctx context.Context, m mount.Mode) (frontend, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, errFrontendsClosed
		}
		sl := s.slots[m]
		if sl == nil {
			bctx, cancel := context.WithCancel(ctx)
			sl = &frontendSlot{ready: make(chan struct{}), cancel: cancel}
			s.slots[m] = sl
			s.mu.Unlock()
			fe, err := s.build(bctx, m)
			cancel()
			if err != nil {
				err = fmt.Errorf("starting %s frontend: %w", m, err)
			}
			s.mu.Lock()
			sl.fe, sl.err = fe, err
			if err != nil {
				delete(s.slots, m)
			}
			close(sl.ready)
			s.mu.Unlock()
			return fe, err
		}
		s.mu.Unlock()
		select {
		case <-sl.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		// A construction that failed because its own caller gave up says nothing about this
		// caller's: try again.
		if sl.err != nil && errors.Is(sl.err, context.Canceled) && ctx.Err() == nil {
			continue
		}
		return sl.fe, sl.err
	}
}

// Running returns the frontend of mode m if it is built, else nil. It never builds or waits.
func (s *frontendSet) Running(m mount.Mode) frontend {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl := s.slots[m]; sl != nil {
		select {
		case <-sl.ready:
			return sl.fe
		default:
		}
	}
	return nil
}

// Started reports whether the frontend of mode m is built or being built.
func (s *frontendSet) Started(m mount.Mode) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.slots[m] != nil
}

// ForgetBlob tells every running frontend that keeps per-blob state that no image uses blob.
func (s *frontendSet) ForgetBlob(blob digest.Digest) {
	var fs []blobForgetter
	s.mu.Lock()
	for _, sl := range s.slots {
		select {
		case <-sl.ready:
			if f, ok := sl.fe.(blobForgetter); ok {
				fs = append(fs, f)
			}
		default: // being built: it has no blob yet
		}
	}
	s.mu.Unlock()
	for _, f := range fs {
		f.ForgetBlob(blob)
	}
}

// Close stops constructions in progress and every frontend, and waits for them. Images must be
// unmounted first.
func (s *frontendSet) Close(log *slog.Logger) {
	s.mu.Lock()
	s.closed = true
	slots := s.slots
	s.slots = map[mount.Mode]*frontendSlot{}
	s.mu.Unlock()
	for _, sl := range slots {
		sl.cancel()
	}
	for m, sl := range slots {
		<-sl.ready
		if sl.fe == nil {
			continue
		}
		if err := sl.fe.Close(); err != nil {
			log.Warn("stopping frontend", "mode", m, "err", err)
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

func unmountErofs(mp string) error {
	err := mount.Unmount(mp)
	if errors.Is(err, mount.ErrNotMounted) {
		return nil // already gone (unmounted by hand): nothing to do
	}
	return err
}

// unmountStale unmounts an image mount a killed daemon left at a mountpoint about to be reused.
// Only an EROFS mount: whatever else someone mounted there since is theirs.
func unmountStale(log *slog.Logger, mp string) {
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
