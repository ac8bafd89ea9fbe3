package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/mirror"
	"github.com/shoal-p2p/shoal/mount"
)

// errBadRequest marks errors that are the caller's to fix (HTTP 400).
var errBadRequest = errors.New("bad request")

// errNotFound marks requests for things that do not exist (HTTP 404).
var errNotFound = errors.New("not found")

// errStopping refuses operations once the daemon has begun to stop.
var errStopping = errors.New("the daemon is stopping")

// pinner keeps a mounted image's blobs from eviction (*chunkstore.Store).
type pinner interface {
	Pin(blob digest.Digest, image string) error
	Unpin(blob digest.Digest, image string) error
}

// service is what the control API does: it adds, mounts, unmounts, prefetches and removes images,
// over the registry (images, blobs, mounts), the frontends and the prefetcher, and keeps
// state.json up to date. It is built from narrow interfaces (serviceDeps), so that unit tests run
// it on fakes without root.
type service struct {
	cfg         serviceConfig
	log         *slog.Logger
	reg         *registry
	loader      imageLoader
	mirrorStats func() *mirror.Stats // nil: mirror off
	fronts      *frontendSet
	probe       func(mount.Mode) error
	pins        pinner
	prefetch    *prefetcher
	cluster     *clusterPrefetcher
	orders      readOrders
	readOrder   prefetchResolver // the resolver's read orders, saved at unmount and stop
	cleanStale  func(mountpoint string)
	peers       hostPeers
	storeStats  storeCounters
	resStats    resolverCounters
	started     time.Time
	restored    atomic.Bool // restore has run (StatusReport.Restored)

	pinMu   sync.Mutex // serializes pin updates, so the last one sees the last mount count
	stateMu sync.Mutex // serializes state.json writes, so the last one written is the newest

	opsMu    sync.Mutex
	stopping bool
	ops      sync.WaitGroup // operations in progress, waited for at shutdown
}

// serviceConfig is the service's share of Config.
type serviceConfig struct {
	DataDir    string
	Mode       string // default mount mode
	Prefetch   bool   // prefetch the rest of an image once mounted
	Supervised bool   // a worker of the cachefiles supervisor: fscache mounts outlive it
	PullRights bool   // pull_rights: reported in stats
}

// serviceDeps are the parts the service works with: the daemon's real ones, or fakes.
type serviceDeps struct {
	Store interface {
		blobStore
		pinner
		storeCounters
	}
	Resolver interface {
		blobResolver
		prefetchResolver
		resolverCounters
	}
	Node interface {
		swarm
		hostPeers
	}
	Loader imageLoader
	// Frontend builds the frontend of a mode; images finds bootstraps (the fscache frontend).
	Frontend func(ctx context.Context, m mount.Mode, images bootstrapLookup) (frontend, error)
	// Probe says whether a mode can run here (nil) or why not.
	Probe func(mount.Mode) error
	// CleanStale unmounts whatever a killed daemon left at a mountpoint about to be restored.
	CleanStale   func(mountpoint string)
	PrefetchRate int64
	// Preheat asks peers to warm images (cluster prefetch); nil: refused.
	Preheat preheatPeers
	// Mirror returns the registry mirror's counters; nil when the mirror is off.
	Mirror func() *mirror.Stats
	Log    *slog.Logger
}

func newService(cfg serviceConfig, deps serviceDeps) *service {
	s := &service{cfg: cfg, log: deps.Log, loader: deps.Loader, pins: deps.Store, readOrder: deps.Resolver,
		cleanStale: deps.CleanStale, peers: deps.Node, mirrorStats: deps.Mirror, storeStats: deps.Store, resStats: deps.Resolver, started: time.Now()}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.cleanStale == nil {
		s.cleanStale = func(string) {}
	}
	s.orders = readOrders{dir: filepath.Join(cfg.DataDir, "readorder"), log: s.log}
	s.prefetch = newPrefetcher(deps.Resolver, s.orders, deps.PrefetchRate, s.log)
	s.cluster = &clusterPrefetcher{svc: s, peers: deps.Preheat, log: s.log}
	// The registry tells the frontends when a blob is gone; the frontends look bootstraps up in
	// the registry.
	var fronts *frontendSet
	s.reg = newRegistry(deps.Store, deps.Resolver, deps.Node, func(b digest.Digest) { fronts.ForgetBlob(b) }, s.log)
	fronts = newFrontendSet(func(ctx context.Context, m mount.Mode) (frontend, error) { return deps.Frontend(ctx, m, s.reg) })
	s.fronts = fronts
	// A mode whose frontend is running or starting is available: probing fscache again would
	// open /dev/cachefiles, which the running frontend holds.
	s.probe = func(m mount.Mode) error {
		if fronts.Started(m) {
			return nil
		}
		return deps.Probe(m)
	}
	return s
}

// begin registers an operation that changes state; false once the daemon is stopping.
func (s *service) begin() bool {
	s.opsMu.Lock()
	defer s.opsMu.Unlock()
	if s.stopping {
		return false
	}
	s.ops.Add(1)
	return true
}

// add loads an image from its origin and registers it. No lock is held while the origin is read.
func (s *service) add(ctx context.Context, ref string) (*image, error) {
	im, err := s.loader.Load(ctx, ref)
	if err != nil {
		return nil, err
	}
	return s.reg.Add(ctx, im)
}

// Mount adds an image and, if a mountpoint is given, mounts it in the requested mode.
func (s *service) Mount(ctx context.Context, req MountRequest) (MountResponse, error) {
	if !s.begin() {
		return MountResponse{}, errStopping
	}
	defer s.ops.Done()
	if req.Ref == "" {
		return MountResponse{}, fmt.Errorf("%w: no image reference", errBadRequest)
	}
	if req.Mode == "" {
		req.Mode = s.cfg.Mode
	}
	if req.Mountpoint != "" {
		mp, err := filepath.Abs(req.Mountpoint)
		if err != nil {
			return MountResponse{}, fmt.Errorf("%w: mountpoint: %v", errBadRequest, err)
		}
		if st, err := os.Stat(mp); err != nil || !st.IsDir() {
			return MountResponse{}, fmt.Errorf("%w: mountpoint %s is not a directory", errBadRequest, mp)
		}
		req.Mountpoint = mp
		if s.reg.MountedAt(mp) { // checked again when the mount is reserved; this saves the fetch
			return MountResponse{}, fmt.Errorf("%w: %s is already a Shoal mount", errBadRequest, mp)
		}
	}
	im, err := s.add(ctx, req.Ref)
	if err != nil {
		return MountResponse{}, err
	}
	resp := MountResponse{Image: im.digest().String()}
	if req.Mountpoint == "" {
		s.saveState()
		return resp, nil
	}
	mode, reason, err := chooseMode(req.Mode, s.probe)
	if err != nil {
		s.saveState()
		return resp, err
	}
	if err := s.mount(ctx, im, req.Mountpoint, mode, false); err != nil {
		s.saveState()
		return resp, err
	}
	s.log.Info("mounted", "image", req.Ref, "digest", im.digest(), "mountpoint", req.Mountpoint, "mode", mode, "reason", reason)
	if s.cfg.Prefetch {
		s.prefetch.Start(ctx, im)
	}
	s.saveState()
	resp.Mountpoint, resp.Mode, resp.Reason = req.Mountpoint, string(mode), reason
	return resp, nil
}

// mount mounts im at mp with mode's frontend: reserved in the registry first, recorded and pinned
// once made; a failure leaves neither record nor pin. With adopt, a mount the previous worker left
// there is taken over instead of mounting again.
func (s *service) mount(ctx context.Context, im *image, mp string, mode mount.Mode, adopt bool) error {
	fe, err := s.fronts.Get(ctx, mode)
	if err != nil {
		return err
	}
	if err := s.reg.ReserveMount(im.digest(), mp, mode); err != nil {
		return err
	}
	if a, ok := fe.(adopter); ok && adopt && a.Adopt(im, mp) {
		s.log.Info("mount adopted from the previous worker", "ref", im.Ref, "mountpoint", mp, "mode", mode)
	} else {
		if adopt {
			s.cleanStale(mp)
		}
		if err := fe.Mount(ctx, im, mp); err != nil {
			s.reg.DropMount(mp)
			return fmt.Errorf("mount %s at %s (%s mode): %w", im.Ref, mp, mode, err)
		}
	}
	s.reg.CommitMount(mp)
	s.syncPins(im)
	return nil
}

// syncPins pins an image's blobs while it is mounted and unpins them when it is not (or removed):
// a mounted image's data is never evicted; an image that is only prefetched, or no longer
// mounted, is evicted least recently used first when the cache is full. Callers are serialized
// and each reads the current mount count, so concurrent mounts and unmounts end in the right
// state.
func (s *service) syncPins(im *image) {
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	on := s.reg.Get(im.digest()) != nil && len(s.reg.Mounts(im.digest())) > 0
	for _, b := range im.blobs() {
		var err error
		if on {
			err = s.pins.Pin(b.Digest, im.digest().String())
		} else {
			err = s.pins.Unpin(b.Digest, im.digest().String())
		}
		if err != nil {
			s.log.Warn("pinning", "blob", b.Digest, "pin", on, "err", err)
		}
	}
}

// Prefetch adds an image and fetches all of it in the background.
func (s *service) Prefetch(ctx context.Context, req PrefetchRequest) (MountResponse, error) {
	if !s.begin() {
		return MountResponse{}, errStopping
	}
	defer s.ops.Done()
	if req.Cluster {
		id, hosts, err := s.cluster.Start(ctx, req.Ref, req.Percent)
		return MountResponse{Cluster: id, Hosts: hosts}, err
	}
	im, err := s.add(ctx, req.Ref)
	if err != nil {
		return MountResponse{}, err
	}
	s.prefetch.Start(ctx, im)
	s.saveState()
	return MountResponse{Image: im.digest().String()}, nil
}

// Umount unmounts a mountpoint this daemon mounted.
func (s *service) Umount(mountpoint string) error {
	if !s.begin() {
		return errStopping
	}
	defer s.ops.Done()
	mp, err := filepath.Abs(mountpoint)
	if err != nil {
		return fmt.Errorf("%w: %v", errBadRequest, err)
	}
	m, err := s.reg.BeginUnmount(mp)
	if err != nil {
		return err
	}
	if fe := s.fronts.Running(m.Mode); fe != nil {
		if err := fe.Unmount(mp); err != nil {
			s.reg.EndUnmount(mp, false)
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
	}
	s.reg.EndUnmount(mp, true)
	s.syncPins(m.Image)
	s.saveState()
	s.orders.save(s.reg.Blobs(), s.readOrder.ReadOrder)
	s.log.Info("unmounted", "mountpoint", mp)
	return nil
}

// Remove forgets an unmounted image: no more prefetch, its blobs leave the resolver and the swarm
// unless another image uses them. Its chunks stay in the store (unpinned, evictable).
func (s *service) Remove(ref string) error {
	if !s.begin() {
		return errStopping
	}
	defer s.ops.Done()
	im, err := s.reg.Remove(ref)
	if err != nil {
		return err
	}
	s.prefetch.Stop(im.digest())
	s.syncPins(im)
	s.saveState()
	s.log.Info("image removed", "ref", im.Ref, "digest", im.digest())
	return nil
}

// shutdown stops the service: it refuses new operations and waits for those in progress (their
// contexts end with the daemon's), stops every prefetch and waits for it, saves the read orders,
// unmounts every image and stops the frontends. state.json keeps the mounts, so the next start
// mounts them again. On a supervised restart fscache mounts are left for the next worker.
func (s *service) shutdown(restart bool) {
	s.opsMu.Lock()
	s.stopping = true
	s.opsMu.Unlock()
	s.cluster.Close() // its jobs' own prefetches are operations: they end with it
	s.ops.Wait()
	s.prefetch.Close()
	s.orders.save(s.reg.Blobs(), s.readOrder.ReadOrder)
	for _, m := range s.reg.ActiveMounts() {
		if restart && m.Mode == mount.Fscache && s.cfg.Supervised {
			s.log.Info("restart: leaving the fscache mount for the next worker", "mountpoint", m.Mountpoint)
			continue
		}
		if fe := s.fronts.Running(m.Mode); fe != nil {
			if err := fe.Unmount(m.Mountpoint); err != nil {
				s.log.Warn("unmount at shutdown", "mountpoint", m.Mountpoint, "err", err)
			}
		}
	}
	s.fronts.Close(s.log)
}
