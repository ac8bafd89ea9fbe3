package fanotify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/shoal-p2p/shoal/internal/scope"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Resolver makes [off, off+length) of blob present in its backing file (chunk by chunk: local
// store, peers, origin). Ranges not covered by any chunk are not file data and read as zeros.
type Resolver interface {
	Ensure(ctx context.Context, blob digest.Digest, off, length int64) error
}

// Config holds the Listener's optional settings.
type Config struct {
	// Workers bounds the events resolved at once. Events of the daemon itself are answered by
	// the reading loop and never wait for a worker.
	Workers int
	// EnsureTimeout bounds one event's Ensure: a read that cannot be served in time fails with
	// EIO instead of hanging.
	EnsureTimeout time.Duration
	// Logger receives the listener's logs; nil means slog.Default().
	Logger *slog.Logger
	// SelfPID is the process whose accesses are allowed at once (its own pwrite of chunks into
	// marked files raises events too). 0 means os.Getpid().
	SelfPID int
}

// DefaultConfig returns the settings used when nothing else is said.
func DefaultConfig() Config {
	return Config{Workers: 16, EnsureTimeout: 2 * time.Minute}
}

// Validate checks the settings and says what to change.
func (c Config) Validate() error {
	var errs []error
	if c.Workers < 1 || c.Workers > 4096 {
		errs = append(errs, fmt.Errorf("Config.Workers %d: must be 1..4096", c.Workers))
	}
	if c.EnsureTimeout <= 0 {
		errs = append(errs, fmt.Errorf("EnsureTimeout %v: must be positive (a reader must never wait forever)", c.EnsureTimeout))
	}
	if c.SelfPID < 0 {
		errs = append(errs, fmt.Errorf("SelfPID %d: must be 0 (this process) or a pid", c.SelfPID))
	}
	return errors.Join(errs...)
}

type fileKey struct{ dev, ino uint64 }

type watch struct {
	blob digest.Digest
	path string
	fd   int // the file the mark was placed through; pins the inode
	key  fileKey
}

// Listener is one fanotify group of class FAN_CLASS_PRE_CONTENT with a FAN_PRE_ACCESS inode mark
// on each watched blob file. It answers each event after Resolver.Ensure has made the range
// present.
type Listener struct {
	res  Resolver
	cfg  Config
	log  *slog.Logger
	self int32
	fd   int      // the group, for fanotify_mark (never f.Fd(): it would make f blocking)
	f    *os.File // the group; nonblocking, so reads park in the runtime poller

	mu      sync.Mutex
	byBlob  map[digest.Digest]*watch
	byFile  map[fileKey]*watch
	running bool
	runDone chan struct{} // closed when Run has returned
	closed  bool

	// life ends when Close is called: Run stops reading and in-flight Ensure calls give up.
	life *scope.Scope
}

// New creates the fanotify group. It needs CAP_SYS_ADMIN and Linux 6.14+ (see Probe).
func New(res Resolver, cfg Config) (*Listener, error) {
	if res == nil {
		return nil, errors.New("fanotify: nil Resolver")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("fanotify config: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	self := cfg.SelfPID
	if self == 0 {
		self = os.Getpid()
	}
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_PRE_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK|unix.FAN_UNLIMITED_QUEUE,
		unix.O_RDWR|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init(FAN_CLASS_PRE_CONTENT): %w", err)
	}
	return &Listener{
		res:    res,
		cfg:    cfg,
		log:    cfg.Logger.With("subsystem", "fanotify"),
		self:   int32(self),
		fd:     fd,
		f:      os.NewFile(uintptr(fd), "fanotify"),
		byBlob: map[digest.Digest]*watch{},
		byFile: map[fileKey]*watch{},
		life:   scope.New(),
	}, nil
}

// Watch places a FAN_PRE_ACCESS mark on the inode of path, the backing file of blob. It must be
// called before EROFS opens the file (before the mount): the kernel decides at open time whether
// a file raises pre-content events, and an unmarked backing file reads holes as zeros. The mark is
// on this one inode, never on a mount or filesystem. Watching a watched blob again is a no-op if
// path is the same file.
func (l *Listener) Watch(blob digest.Digest, path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("watch blob %s: open %s: %w", blob, path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return fmt.Errorf("watch blob %s: stat %s: %w", blob, path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return fmt.Errorf("watch blob %s: %s is not a regular file", blob, path)
	}
	key := fileKey{st.Dev, st.Ino}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		unix.Close(fd)
		return fmt.Errorf("watch blob %s: listener closed", blob)
	}
	if w, ok := l.byBlob[blob]; ok {
		unix.Close(fd)
		if w.key == key {
			return nil
		}
		return fmt.Errorf("watch blob %s: already watched at %s, a different file from %s", blob, w.path, path)
	}
	if w, ok := l.byFile[key]; ok {
		unix.Close(fd)
		return fmt.Errorf("watch blob %s: %s is already watched as blob %s", blob, path, w.blob)
	}
	// Mark through the fd (pathname NULL): the marked inode is exactly the one just checked.
	if err := unix.FanotifyMark(l.fd, unix.FAN_MARK_ADD, unix.FAN_PRE_ACCESS, fd, ""); err != nil {
		unix.Close(fd)
		return fmt.Errorf("watch blob %s: fanotify_mark(FAN_PRE_ACCESS) on %s: %w", blob, path, err)
	}
	w := &watch{blob: blob, path: path, fd: fd, key: key}
	l.byBlob[blob], l.byFile[key] = w, w
	l.log.Debug("watching", "blob", blob, "path", path)
	return nil
}

// Unwatch removes the blob's mark. Call it when the blob is complete in the store, so reads stop
// reaching the daemon, and when the last image using it is unmounted. Unwatching a blob that is
// not watched is a no-op.
func (l *Listener) Unwatch(blob digest.Digest) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	w, ok := l.byBlob[blob]
	if !ok {
		return nil
	}
	delete(l.byBlob, blob)
	delete(l.byFile, w.key)
	var err error
	if !l.closed {
		if e := unix.FanotifyMark(l.fd, unix.FAN_MARK_REMOVE, unix.FAN_PRE_ACCESS, w.fd, ""); e != nil && !errors.Is(e, unix.ENOENT) {
			err = fmt.Errorf("unwatch blob %s: fanotify_mark(FAN_MARK_REMOVE) on %s: %w", blob, w.path, e)
		}
	}
	unix.Close(w.fd)
	return err
}

// Watched reports whether blob has a mark.
func (l *Listener) Watched(blob digest.Digest) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.byBlob[blob]
	return ok
}

// Run reads and answers events until ctx is done or Close is called, then waits for the events in
// hand to be answered. Every event gets an answer: FAN_ALLOW once its range is present,
// FAN_DENY_ERRNO(EIO) if Ensure fails or times out.
func (l *Listener) Run(ctx context.Context) error {
	l.mu.Lock()
	if l.running || l.closed {
		l.mu.Unlock()
		return errors.New("fanotify: Run called twice or after Close")
	}
	l.running = true
	l.runDone = make(chan struct{})
	l.mu.Unlock()
	defer close(l.runDone)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopClose := context.AfterFunc(l.life.Context(), cancel) // Close ends Run
	defer stopClose()
	stop := context.AfterFunc(ctx, func() { _ = l.f.SetReadDeadline(time.Now()) })
	defer stop()

	// A fixed pool of workers answers events from a queue. The reading loop never waits for a
	// worker: the daemon's own accesses (the store's pwrite of a chunk a worker is fetching) raise
	// events too, and they must be answered while every worker is busy, or the workers would
	// wait on themselves.
	q := newEventQueue()
	var workers sync.WaitGroup
	for range l.cfg.Workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for {
				ev, ok := q.pop()
				if !ok {
					return
				}
				l.handle(ctx, ev)
			}
		}()
	}
	defer func() {
		q.close() // workers answer what is queued (Ensure fails fast once ctx is done), then exit
		workers.Wait()
	}()

	buf := make([]byte, 64<<10)
	for {
		n, err := l.f.Read(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("fanotify: read events: %w", err)
		}
		evs, perr := ParseEvents(buf[:n])
		if perr != nil {
			l.log.Error("odd event stream from the kernel", "err", perr)
		}
		for _, ev := range evs {
			l.dispatch(q, ev, perr == nil)
		}
	}
}

// dispatch answers the daemon's own accesses and malformed events at once and queues the others
// for the workers.
func (l *Listener) dispatch(q *eventQueue, ev Event, wellFormed bool) {
	if ev.FD < 0 {
		if ev.Mask&QueueOverflow != 0 {
			l.log.Error("fanotify queue overflowed")
		}
		return
	}
	if ev.Pid == l.self {
		l.respond(ev, Allow)
		return
	}
	if !wellFormed || ev.Mask&PreAccess == 0 {
		// Deny rather than guess: a reader of a half-decoded event gets EIO, not zeros.
		l.respond(ev, DenyErrno(uint8(unix.EIO)))
		return
	}
	q.push(ev)
}

// eventQueue is the FIFO between the reading loop and the workers. It is unbounded, like the
// kernel's own queue (FAN_UNLIMITED_QUEUE): each entry is an event already read, holding its fd.
type eventQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	evs    []Event
	closed bool
}

func newEventQueue() *eventQueue {
	q := &eventQueue{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *eventQueue) push(ev Event) {
	q.mu.Lock()
	q.evs = append(q.evs, ev)
	q.mu.Unlock()
	q.cond.Signal()
}

// pop returns the oldest event, waiting for one; ok is false once the queue is closed and empty.
func (q *eventQueue) pop() (Event, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.evs) == 0 && !q.closed {
		q.cond.Wait()
	}
	if len(q.evs) == 0 {
		return Event{}, false
	}
	ev := q.evs[0]
	q.evs[0] = Event{}
	q.evs = q.evs[1:]
	return ev, true
}

func (q *eventQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (l *Listener) handle(ctx context.Context, ev Event) {
	var st unix.Stat_t
	if err := unix.Fstat(int(ev.FD), &st); err != nil {
		l.log.Error("stat of event fd failed; denying", "pid", ev.Pid, "err", err)
		l.respond(ev, DenyErrno(uint8(unix.EIO)))
		return
	}
	l.mu.Lock()
	w := l.byFile[fileKey{st.Dev, st.Ino}]
	l.mu.Unlock()
	if w == nil {
		// Unwatched since the event was queued: the blob is complete or no longer ours.
		l.respond(ev, Allow)
		return
	}
	off, length := int64(0), st.Size
	if ev.HasRange {
		if ev.Offset > 1<<62 || ev.Count > 1<<62 {
			l.log.Error("range out of bounds; denying", "blob", w.blob, "offset", ev.Offset, "count", ev.Count)
			l.respond(ev, DenyErrno(uint8(unix.EIO)))
			return
		}
		off, length = int64(ev.Offset), int64(ev.Count)
	}
	if length == 0 {
		l.respond(ev, Allow)
		return
	}
	ectx, cancel := context.WithTimeout(ctx, l.cfg.EnsureTimeout)
	err := l.res.Ensure(ectx, w.blob, off, length)
	cancel()
	if err != nil {
		l.log.Warn("demand read failed; reader gets EIO", "blob", w.blob, "offset", off, "length", length, "pid", ev.Pid, "err", err)
		l.respond(ev, DenyErrno(uint8(unix.EIO)))
		return
	}
	l.respond(ev, Allow)
}

// respond answers a permission event and closes its fd.
func (l *Listener) respond(ev Event, response uint32) {
	b := EncodeResponse(ev.FD, response)
	if _, err := l.f.Write(b[:]); err != nil && !errors.Is(err, os.ErrClosed) {
		l.log.Error("answering fanotify event failed", "fd", ev.FD, "pid", ev.Pid, "err", err)
	}
	unix.Close(int(ev.FD))
}

// Close stops Run, waits for events in hand to be answered, removes every mark and closes the
// group. Unmount the images first: once the group is gone the kernel lets reads of holes through
// and EROFS returns zeros for data not yet fetched.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	running, done := l.running, l.runDone
	l.mu.Unlock()
	l.life.Cancel()
	_ = l.f.SetReadDeadline(time.Now())
	if running {
		<-done // Run answers what it holds before returning
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for b, w := range l.byBlob {
		unix.Close(w.fd)
		delete(l.byBlob, b)
		delete(l.byFile, w.key)
	}
	return l.f.Close()
}
