package cachefiles

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Resolver is what the Server needs from the rest of Shoal: which objects exist and how to fill
// their backing files. The daemon implements it over the chunk store; tests use fakes.
type Resolver interface {
	// Lookup maps an OPEN's (volume key, cookie key) to a blob or bootstrap and returns its size in
	// bytes. ok=false answers the OPEN with -ENOENT. It must be fast: it runs on the request loop.
	// The size must be the same every time for the same key, or the kernel discards its cache file.
	Lookup(volumeKey, cookieKey string) (size int64, ok bool)
	// Fill makes every page of [off, off+length) of the object's backing file hold data before
	// it returns; off is page-aligned and the range ends on a page boundary or at the page
	// holding the object's last byte. There are two ways, and a resolver may mix them within one
	// range:
	//   - write the bytes into the backing file itself. The chunk store does this for blobs: the
	//     kernel's backing files are the store's, so a chunk the store has written (pwrite +
	//     fdatasync) is what the kernel reads, and nothing is copied again;
	//   - hand bytes to write, which copies them into the backing file through the kernel's
	//     anonymous fd (for a bootstrap kept as a plain file, or zeros for bytes no chunk covers).
	//     write takes a page-aligned offset; a length that is not a multiple of the page size is
	//     padded with zeros.
	// The kernel checks for data at the READ's offset when the READ completes: a page Fill
	// leaves as a hole fails the reader with EIO.
	Fill(ctx context.Context, cookieKey string, off, length int64, write func(p []byte, off int64) error) error
}

const pageSize = 4096

// Config holds the Server's optional settings. The zero value is usable.
type Config struct {
	// Workers is how many READ requests are served at once. Default 8.
	Workers int
	// StepSize is how many bytes the Resolver hands to write are copied through the kernel's fd
	// at a time (one page-aligned buffer of this size per worker). A multiple of 4096. Default
	// 1 MiB.
	StepSize int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the shoal_cachefiles_* metrics (nil: not registered).
	Registerer prometheus.Registerer
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config { return Config{Workers: 8, StepSize: 1 << 20} }

func (c *Config) setDefaults() {
	d := DefaultConfig()
	if c.Workers == 0 {
		c.Workers = d.Workers
	}
	if c.StepSize == 0 {
		c.StepSize = d.StepSize
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate checks the settings after defaults are applied.
func (c *Config) Validate() error {
	if c.Workers < 1 || c.Workers > 1024 {
		return fmt.Errorf("cachefiles config: Workers %d: want 1..1024", c.Workers)
	}
	if c.StepSize < pageSize || c.StepSize%pageSize != 0 || c.StepSize > 64<<20 {
		return fmt.Errorf("cachefiles config: StepSize %d: want a multiple of %d up to 64 MiB", c.StepSize, pageSize)
	}
	return nil
}

// Stats counts what the Server did since it was created.
type Stats struct {
	Opens, OpenMisses, Closes  uint64
	Reads, ReadErrors          uint64 // READ requests completed; of those, completed without data
	ReadBytes                  uint64 // bytes copied through the kernel's fds (bootstraps, zeros); not what the store wrote itself
	Malformed, UnknownRequests uint64 // messages dropped
}

// kernelOps are the two anonymous-fd operations. Tests of the kernel emulation replace them; the
// real kernel needs nothing but these defaults.
type kernelOps struct {
	pwrite   func(fd int, p []byte, off int64) (int, error)
	complete func(fd int, msgID uint32) error
	closeFd  func(fd int) error
}

var realOps = kernelOps{
	pwrite: unix.Pwrite,
	complete: func(fd int, msgID uint32) error {
		return unix.IoctlSetInt(fd, IocReadComplete, int(msgID))
	},
	closeFd: unix.Close,
}

// object is one anonymous fd: an opened cookie (bootstrap or blob).
type object struct {
	id     uint32
	fd     int
	cookie string
	size   int64
	refs   int  // READs in progress
	gone   bool // CLOSE seen or Server closed: close fd when refs drops to 0
	closed bool
}

// Server answers the requests of one cachefiles device from a Resolver. Many READs are served at
// once by a bounded pool of workers; OPEN and CLOSE are handled in order on the request loop.
type Server struct {
	dev *Device
	res Resolver
	cfg Config
	log *slog.Logger
	ops kernelOps
	met *metrics

	running atomic.Bool
	mu      sync.Mutex
	objects map[uint32]*object
	closed  bool

	opens, openMisses, closes, reads, readErrors, readBytes, malformed, unknown atomic.Uint64
}

// NewServer returns a Server for dev (bound, or taken over and restored) backed by res. It does no
// I/O and starts nothing: call Run.
func NewServer(dev *Device, res Resolver, cfg Config) (*Server, error) {
	if dev == nil || res == nil {
		return nil, errors.New("cachefiles: NewServer needs a device and a resolver")
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Server{
		dev: dev, res: res, cfg: cfg, ops: realOps, met: met,
		log:     cfg.Logger.With("subsystem", "cachefiles"),
		objects: make(map[uint32]*object),
	}, nil
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	return Stats{
		Opens: s.opens.Load(), OpenMisses: s.openMisses.Load(), Closes: s.closes.Load(),
		Reads: s.reads.Load(), ReadErrors: s.readErrors.Load(), ReadBytes: s.readBytes.Load(),
		Malformed: s.malformed.Load(), UnknownRequests: s.unknown.Load(),
	}
}

type readJob struct {
	obj *object
	msg Msg
}

// Run serves requests until ctx is done or the device fails. READs that are still being resolved
// when ctx ends are left unanswered on purpose: the device outlives this worker (Supervisor), and
// the next worker's "restore" makes the kernel send them again. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("cachefiles: Server.Run called twice")
	}
	devfd := s.dev.Fd()
	if devfd < 0 {
		return fmt.Errorf("%s: %w", s.dev.Name(), ErrClosed)
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	defer unix.Close(epfd)
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	// ctx's end wakes epoll_wait through the eventfd. The mutex keeps that write from racing with
	// the close (the fd number could be reused by then).
	var wakeMu sync.Mutex
	wakeOpen := true
	stop := context.AfterFunc(ctx, func() {
		wakeMu.Lock()
		defer wakeMu.Unlock()
		if wakeOpen {
			var one [8]byte
			one[0] = 1
			_, _ = unix.Write(wake, one[:])
		}
	})
	defer func() {
		stop()
		wakeMu.Lock()
		wakeOpen = false
		unix.Close(wake)
		wakeMu.Unlock()
	}()
	for _, fd := range []int{devfd, wake} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return fmt.Errorf("epoll_ctl %d: %w", fd, err)
		}
	}

	jobs := make(chan readJob)
	var wg sync.WaitGroup
	bufs := make([][]byte, 0, s.cfg.Workers)
	defer func() {
		close(jobs)
		wg.Wait()
		for _, b := range bufs {
			_ = unix.Munmap(b)
		}
	}()
	for range s.cfg.Workers {
		// mmap gives page-aligned memory, which direct I/O into the backing file needs.
		buf, err := unix.Mmap(-1, 0, s.cfg.StepSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return fmt.Errorf("cachefiles: mmap %d-byte read buffer: %w", s.cfg.StepSize, err)
		}
		bufs = append(bufs, buf)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				s.serveRead(ctx, j, buf)
			}
		}()
	}

	s.log.Info("serving", "device", s.dev.Name(), "workers", s.cfg.Workers)
	msgBuf := make([]byte, MsgMaxSize)
	events := make([]unix.EpollEvent, 2)
	for {
		// Drain: each read returns one message, 0 when nothing is pending.
		for ctx.Err() == nil {
			n, err := s.dev.read(msgBuf)
			if err != nil {
				return err
			}
			if n == 0 {
				break
			}
			s.handle(ctx, msgBuf[:n], jobs)
		}
		if ctx.Err() != nil {
			return nil
		}
		if _, err := unix.EpollWait(epfd, events, -1); err != nil && err != unix.EINTR {
			return fmt.Errorf("epoll_wait: %w", err)
		}
	}
}

// handle decodes and dispatches one message. Nothing in a message can make it panic.
func (s *Server) handle(ctx context.Context, b []byte, jobs chan<- readJob) {
	m, err := DecodeMsg(b)
	if err != nil {
		if errors.Is(err, ErrUnknownOpcode) {
			s.unknown.Add(1)
			s.met.requests.WithLabelValues("unknown").Inc()
		} else {
			s.malformed.Add(1)
			s.met.requests.WithLabelValues("malformed").Inc()
		}
		s.log.Error("dropping message", "err", err)
		return
	}
	s.met.requests.WithLabelValues(m.Op.String()).Inc()
	switch m.Op {
	case OpOpen:
		s.open(&m)
	case OpClose:
		s.closes.Add(1)
		if !s.release(m.ObjectID) {
			s.log.Warn("CLOSE for unknown object", "msg", m.ID, "object", m.ObjectID)
		}
	case OpRead:
		obj := s.acquire(m.ObjectID)
		if obj == nil {
			// Without the object's fd there is no way to complete it; the kernel resends it after
			// a "restore" once the object is reopened.
			s.readErrors.Add(1)
			s.met.readFailures.Inc()
			s.log.Error("READ for unknown object", "msg", m.ID, "err", fmt.Errorf("object %d: %w", m.ObjectID, ErrUnknownObject))
			return
		}
		select {
		case jobs <- readJob{obj: obj, msg: m}:
		case <-ctx.Done():
			s.put(obj) // unanswered: the next worker's restore resends it
		}
	}
}

func (s *Server) open(m *Msg) {
	s.opens.Add(1)
	log := s.log.With("msg", m.ID, "object", m.ObjectID, "cookie", m.CookieKey)
	// The kernel installs the fd without close-on-exec; a worker that execs must not leak it, or the
	// object would stay open after the worker is gone.
	if _, err := unix.FcntlInt(uintptr(m.Fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		log.Error("OPEN: anonymous fd is not usable", "fd", m.Fd, "err", err)
		_ = s.dev.Command(CmdCopenError(m.ID, uintptr(unix.EBADF)))
		return
	}
	size, ok := s.res.Lookup(m.VolumeKey, m.CookieKey)
	if !ok || size < 0 {
		s.openMisses.Add(1)
		s.met.openMisses.Inc()
		log.Warn("OPEN of unknown blob", "volume", m.VolumeKey)
		if err := s.dev.Command(CmdCopenError(m.ID, uintptr(unix.ENOENT))); err != nil {
			log.Error("copen failed", "err", err)
		}
		_ = s.ops.closeFd(m.Fd)
		return
	}
	obj := &object{id: m.ObjectID, fd: m.Fd, cookie: m.CookieKey, size: size}
	s.mu.Lock()
	old := s.objects[m.ObjectID]
	s.objects[m.ObjectID] = obj
	closing := s.closed
	s.mu.Unlock()
	s.met.objects.Inc()
	if old != nil {
		s.release1(old)
	}
	if err := s.dev.Command(CmdCopen(m.ID, size)); err != nil {
		log.Error("copen failed", "size", size, "err", err)
		s.release(m.ObjectID)
		return
	}
	if closing {
		// Opened, but this Server is going away: closing the fd makes the kernel reopen the
		// object for the next worker when it is read.
		s.release(m.ObjectID)
		return
	}
	log.Debug("opened", "size", size, "fd", m.Fd)
}

func (s *Server) acquire(id uint32) *object {
	s.mu.Lock()
	defer s.mu.Unlock()
	obj := s.objects[id]
	if obj == nil || obj.gone {
		return nil
	}
	obj.refs++
	return obj
}

// put drops a READ's reference and closes the fd if the object is gone.
func (s *Server) put(obj *object) {
	s.mu.Lock()
	obj.refs--
	closeNow := obj.gone && obj.refs == 0 && !obj.closed
	if closeNow {
		obj.closed = true
	}
	s.mu.Unlock()
	if closeNow {
		s.met.objects.Dec()
		_ = s.ops.closeFd(obj.fd)
	}
}

// release forgets object id and closes its fd once no READ uses it. It reports whether it knew id.
func (s *Server) release(id uint32) bool {
	s.mu.Lock()
	obj := s.objects[id]
	if obj != nil {
		delete(s.objects, id)
	}
	s.mu.Unlock()
	if obj == nil {
		return false
	}
	s.release1(obj)
	return true
}

func (s *Server) release1(obj *object) {
	s.mu.Lock()
	obj.gone = true
	closeNow := obj.refs == 0 && !obj.closed
	if closeNow {
		obj.closed = true
	}
	s.mu.Unlock()
	if closeNow {
		s.met.objects.Dec()
		_ = s.ops.closeFd(obj.fd)
	}
}

// serveRead fills a READ's range and completes it. Any failure still completes it, so the reader
// gets EIO instead of waiting forever; only a shutdown (ctx done) leaves it to the next worker.
func (s *Server) serveRead(ctx context.Context, j readJob, buf []byte) {
	defer s.put(j.obj)
	start := time.Now()
	err := s.fill(ctx, j.obj, &j.msg, buf)
	if err != nil && ctx.Err() != nil {
		s.log.Info("READ left for the next worker", "msg", j.msg.ID, "object", j.obj.id, "cookie", j.obj.cookie)
		return
	}
	s.reads.Add(1)
	if err != nil {
		s.readErrors.Add(1)
		s.met.readFailures.Inc()
		s.log.Error("READ failed; completing without data (reader gets EIO)", "err", err)
	}
	if cerr := s.ops.complete(j.obj.fd, j.msg.ID); cerr != nil {
		s.log.Error("READ_COMPLETE failed", "msg", j.msg.ID, "object", j.obj.id, "cookie", j.obj.cookie, "err", cerr)
	}
	s.met.readSeconds.Observe(time.Since(start).Seconds())
}

// fill has the Resolver fill [Off, Off+Len) of the object, widened to whole pages and clipped to
// the object's size rounded up to a page. Bytes the Resolver hands over are copied in StepSize
// pieces through the page-aligned buf; bytes past the object's size are zeros.
func (s *Server) fill(ctx context.Context, obj *object, m *Msg, buf []byte) error {
	const mask = pageSize - 1
	start := int64(m.Off) &^ mask
	end := (int64(m.Off+m.Len) + mask) &^ mask
	if limit := (obj.size + mask) &^ mask; end > limit {
		end = limit
	}
	if start >= end {
		return nil
	}
	write := func(p []byte, off int64) error {
		if off&mask != 0 || off < start || off+int64(len(p)) > end {
			return fmt.Errorf("READ msg %d object %d cookie %s: resolver wrote [%d,+%d), outside [%d,%d) or not page-aligned", m.ID, obj.id, obj.cookie, off, len(p), start, end)
		}
		for len(p) > 0 {
			if err := ctx.Err(); err != nil {
				return err // shutting down: the next worker serves the rest after restore
			}
			k := copy(buf, p)
			n := (k + mask) &^ mask
			clear(buf[k:n])
			w, err := s.ops.pwrite(obj.fd, buf[:n], off)
			if err == nil && w != n {
				err = fmt.Errorf("short write %d of %d", w, n)
			}
			if err != nil {
				return fmt.Errorf("READ msg %d object %d cookie %s: pwrite [%d,+%d): %w", m.ID, obj.id, obj.cookie, off, n, err)
			}
			s.readBytes.Add(uint64(n))
			s.met.readBytes.Add(float64(n))
			p, off = p[k:], off+int64(n)
		}
		return nil
	}
	if err := s.res.Fill(ctx, obj.cookie, start, end-start, write); err != nil {
		return fmt.Errorf("READ msg %d object %d cookie %s [%d,+%d): %w", m.ID, obj.id, obj.cookie, start, end-start, err)
	}
	return nil
}

// Close closes every anonymous fd the Server holds (those in use by a READ right after it ends), so
// the kernel reopens the objects for whoever serves the device next. Call it after Run returned.
// It does not close the device.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	objs := make([]*object, 0, len(s.objects))
	for id, o := range s.objects {
		objs = append(objs, o)
		delete(s.objects, id)
	}
	s.mu.Unlock()
	for _, o := range objs {
		s.release1(o)
	}
	return nil
}
