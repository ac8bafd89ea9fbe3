package daemon

import (
	"context"
	"log/slog"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/demand/fanotify"
)

// fanotifyStore is what the fanotify frontend needs of the chunk store: the backing files it
// marks and mounts, how much of a blob is present, and presence events.
type fanotifyStore interface {
	BackingPath(blob digest.Digest) string
	PresentTotals(blob digest.Digest) (bytes, chunks int64, err error)
	Subscribe(fn func(chunkstore.Event)) (cancel func())
}

// fanotifyFrontend marks the store's backing files for pre-content events and mounts EROFS
// file-backed on them directly: no copy, no FUSE round trip, hits served by the page cache once a
// blob is complete and unmarked.
type fanotifyFrontend struct {
	log   *slog.Logger
	store fanotifyStore
	l     *fanotify.Listener

	cancel context.CancelFunc
	wg     sync.WaitGroup // the listener and the completer
	unsub  func()
	kick   chan struct{} // wakes the completer; capacity 1

	mu       sync.Mutex
	users    map[digest.Digest]map[string]bool // blob → mountpoints using it
	byMP     map[string][]digest.Digest
	missing  map[digest.Digest]int  // watched blobs → chunks not yet present
	complete map[digest.Digest]bool // watched blobs that reached 0 missing, for the completer
}

var _ frontend = (*fanotifyFrontend)(nil)

// newFanotifyFrontend starts the listener. Its goroutines run until Close: ctx is only the
// caller's (a request), so they take its values but not its end.
func newFanotifyFrontend(ctx context.Context, res ensurer, store fanotifyStore, workers int, log *slog.Logger) (*fanotifyFrontend, error) {
	cfg := fanotify.DefaultConfig()
	cfg.Logger = log
	cfg.Workers = workers
	l, err := fanotify.New(res, cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &fanotifyFrontend{log: log, store: store, l: l, cancel: cancel, kick: make(chan struct{}, 1),
		users: map[digest.Digest]map[string]bool{}, byMP: map[string][]digest.Digest{},
		missing: map[digest.Digest]int{}, complete: map[digest.Digest]bool{}}
	f.wg.Add(2)
	go func() {
		defer f.wg.Done()
		if err := l.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("fanotify listener stopped", "err", err)
		}
	}()
	go func() {
		defer f.wg.Done()
		f.completer(ctx)
	}()
	// A blob that becomes complete is unmarked, so its reads stop reaching the daemon. The count
	// of missing chunks per watched blob is kept from the store's events: O(1) per chunk, where
	// asking the store for the whole blob's state at each chunk would be quadratic.
	f.unsub = store.Subscribe(f.onEvent)
	return f, nil
}

// onEvent runs on the store's goroutine: it counts and hands complete blobs to the completer
// (Unwatch takes the listener's lock, which must not be taken here).
func (f *fanotifyFrontend) onEvent(e chunkstore.Event) {
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
	if n == 0 {
		f.complete[e.Blob] = true
	}
	f.mu.Unlock()
	if n == 0 {
		select {
		case f.kick <- struct{}{}:
		default: // already awake
		}
	}
}

// completer drops the marks of blobs that became complete, until ctx ends.
func (f *fanotifyFrontend) completer(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
		}
		f.mu.Lock()
		blobs := f.complete
		f.complete = map[digest.Digest]bool{}
		f.mu.Unlock()
		for b := range blobs {
			f.unmarkComplete(b)
		}
	}
}

// unmarkComplete drops the mark of a blob that has every chunk.
func (f *fanotifyFrontend) unmarkComplete(blob digest.Digest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n, ok := f.missing[blob]; !ok || n != 0 {
		return // evicted again meanwhile, or no longer watched
	}
	delete(f.missing, blob)
	if err := f.l.Unwatch(blob); err != nil {
		f.log.Warn("dropping the fanotify mark of a complete blob", "blob", blob, "err", err)
		return
	}
	f.log.Debug("blob complete: fanotify mark dropped", "blob", blob)
}

func (f *fanotifyFrontend) Mount(ctx context.Context, im *image, mp string) error {
	var devices []string
	var watched []digest.Digest
	for _, b := range im.Image.Blobs {
		path := f.store.BackingPath(b.Digest)
		_, present, err := f.store.PresentTotals(b.Digest)
		if err != nil {
			f.release(watched, "")
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
				f.release(append(watched, b.Digest), "")
				return err
			}
		}
		watched = append(watched, b.Digest)
		devices = append(devices, path)
	}
	if err := mountFileBacked(f.log, im.BootPath, devices, mp); err != nil {
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
			delete(f.complete, b)
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

// Close stops the listener and the completer and waits for them. Images must be unmounted first:
// with the group closed, reads of holes would return zeros.
func (f *fanotifyFrontend) Close() error {
	f.unsub()
	f.cancel()
	f.wg.Wait()
	return f.l.Close()
}
