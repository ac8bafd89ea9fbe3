package cachefiles

// THIS IS AN EMULATION of the kernel side of /dev/cachefiles, for fast unit tests of the Server.
// It is not the kernel and proves nothing about it (kernel_test.go and vm_test.go do that under
// qemu). What it emulates, following fs/cachefiles/ondemand.c:
//   - the device: one end of a SOCK_SEQPACKET socketpair, so each read returns one message and each
//     command write arrives as one packet; the Server's end is non-blocking, so an idle device
//     reads as EAGAIN (the real one returns 0; the Server takes both as "nothing pending");
//   - an anonymous fd: an fd of a temp file opened in this process, its number put into OPEN;
//   - the READ_COMPLETE ioctl and pwrite: hooks (kernelOps) that check what the kernel checks
//     (the msg id is a pending READ of that very object; offsets, lengths and buffers page-aligned
//     for direct I/O) and record which pages were written;
//   - the reader: it gets EIO if the page at the READ's offset is still a hole after completion.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

var errEmuEIO = errors.New("emulated reader: EIO")

type emuObject struct {
	id      uint32
	fd      int
	file    *os.File // the backing file, read by the emulated reader
	written map[int64]bool
}

type emuKernel struct {
	t    *testing.T
	kfd  int // kernel end of the socketpair
	dev  *Device
	dir  string
	mu   sync.Mutex
	objs map[int]*emuObject // by fd (numbers are reused once the Server closes them)
	all  []*emuObject
	// pending requests, by msg id
	copens  map[uint32]chan int64
	reads   map[uint32]*emuRead
	closed  map[int]bool // fds the Server closed
	cmds    []string
	nextMsg uint32
	nextObj uint32
	done    chan struct{}
}

type emuRead struct {
	obj  *emuObject
	done chan struct{}
}

func newEmuKernel(t *testing.T) *emuKernel {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fds[1], true); err != nil {
		t.Fatal(err)
	}
	k := &emuKernel{
		t: t, kfd: fds[0], dev: NewDevice(fds[1], "emulated /dev/cachefiles"), dir: t.TempDir(),
		objs: map[int]*emuObject{}, copens: map[uint32]chan int64{}, reads: map[uint32]*emuRead{},
		closed: map[int]bool{}, nextMsg: 100, nextObj: 1, done: make(chan struct{}),
	}
	go k.commands()
	t.Cleanup(func() {
		_ = unix.Shutdown(k.kfd, unix.SHUT_RDWR)
		<-k.done
		unix.Close(k.kfd)
		k.dev.Close()
		k.mu.Lock()
		defer k.mu.Unlock()
		for fd := range k.objs {
			if !k.closed[fd] {
				unix.Close(fd)
			}
		}
		for _, o := range k.all {
			o.file.Close()
		}
	})
	return k
}

// commands reads what the Server writes to the device and answers copen.
func (k *emuKernel) commands() {
	defer close(k.done)
	buf := make([]byte, CommandMaxSize+1)
	for {
		n, err := unix.Read(k.kfd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		cmd := string(buf[:n])
		k.mu.Lock()
		k.cmds = append(k.cmds, cmd)
		if args, ok := strings.CutPrefix(cmd, "copen "); ok {
			id, size, _ := strings.Cut(args, ",")
			mid, _ := strconv.ParseUint(id, 10, 32)
			sz, err := strconv.ParseInt(size, 10, 64)
			if ch := k.copens[uint32(mid)]; ch != nil && err == nil {
				ch <- sz
				delete(k.copens, uint32(mid))
			}
		}
		k.mu.Unlock()
	}
}

func (k *emuKernel) send(m *Msg) {
	k.t.Helper()
	b, err := AppendMsg(nil, m)
	if err != nil {
		k.t.Fatal(err)
	}
	k.sendRaw(b)
}

func (k *emuKernel) sendRaw(b []byte) {
	k.t.Helper()
	if _, err := unix.Write(k.kfd, b); err != nil {
		k.t.Fatalf("emulated kernel: send: %v", err)
	}
}

// ops are the anonymous-fd hooks the Server uses instead of the real pwrite and ioctl.
func (k *emuKernel) ops() kernelOps {
	return kernelOps{
		pwrite: func(fd int, p []byte, off int64) (int, error) {
			if off%pageSize != 0 || len(p)%pageSize != 0 || uintptr(unsafe.Pointer(unsafe.SliceData(p)))%pageSize != 0 {
				return 0, fmt.Errorf("emulated direct I/O: unaligned pwrite off %d len %d: %w", off, len(p), unix.EINVAL)
			}
			k.mu.Lock()
			o := k.objs[fd]
			if o != nil {
				for pg := off; pg < off+int64(len(p)); pg += pageSize {
					o.written[pg] = true
				}
			}
			k.mu.Unlock()
			if o == nil {
				return 0, unix.EBADF
			}
			return unix.Pwrite(fd, p, off)
		},
		complete: func(fd int, id uint32) error {
			k.mu.Lock()
			defer k.mu.Unlock()
			r := k.reads[id]
			if r == nil || r.obj.fd != fd {
				return unix.EINVAL // like the kernel: not a pending READ of this object
			}
			delete(k.reads, id)
			close(r.done)
			return nil
		},
		closeFd: func(fd int) error {
			k.mu.Lock()
			k.closed[fd] = true
			k.mu.Unlock()
			return unix.Close(fd)
		},
	}
}

// open sends OPEN for cookie and returns the object and the size the Server answered.
func (k *emuKernel) open(volume, cookie string) (*emuObject, int64) {
	k.t.Helper()
	f, err := os.CreateTemp(k.dir, "backing")
	if err != nil {
		k.t.Fatal(err)
	}
	// The "anonymous fd" the kernel installs in the daemon's fd table, without close-on-exec.
	fd, err := unix.Open(f.Name(), unix.O_WRONLY, 0)
	if err != nil {
		k.t.Fatal(err)
	}
	k.mu.Lock()
	k.nextMsg++
	k.nextObj++
	id := k.nextMsg
	o := &emuObject{id: k.nextObj, fd: fd, file: f, written: map[int64]bool{}}
	k.objs[fd] = o
	k.all = append(k.all, o)
	delete(k.closed, fd)
	ch := make(chan int64, 1)
	k.copens[id] = ch
	k.mu.Unlock()
	k.send(&Msg{ID: id, Op: OpOpen, ObjectID: o.id, VolumeKey: volume, CookieKey: cookie, Fd: fd})
	select {
	case size := <-ch:
		return o, size
	case <-time.After(10 * time.Second):
		k.t.Fatalf("emulated kernel: no copen for OPEN msg %d", id)
	}
	return nil, 0
}

// startRead sends READ and returns a channel closed when the Server completes it.
func (k *emuKernel) startRead(o *emuObject, off, n uint64) (uint32, chan struct{}) {
	k.mu.Lock()
	k.nextMsg++
	id := k.nextMsg
	r := &emuRead{obj: o, done: make(chan struct{})}
	k.reads[id] = r
	k.mu.Unlock()
	k.send(&Msg{ID: id, Op: OpRead, ObjectID: o.id, Off: off, Len: n})
	return id, r.done
}

// read is the emulated reader: READ, wait for completion, then the bytes or EIO.
func (k *emuKernel) read(o *emuObject, off, n uint64) ([]byte, error) {
	k.t.Helper()
	id, done := k.startRead(o, off, n)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		k.t.Fatalf("emulated kernel: READ msg %d never completed (the reader would hang)", id)
	}
	k.mu.Lock()
	hole := !o.written[int64(off)&^(pageSize-1)]
	k.mu.Unlock()
	if hole {
		return nil, errEmuEIO
	}
	b := make([]byte, n)
	m, err := o.file.ReadAt(b, int64(off))
	return b[:m], err
}

func (k *emuKernel) isClosed(o *emuObject) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.closed[o.fd] && k.objs[o.fd] == o
}

// fakeResolver serves blobs from memory, a page at a time. gate, if set, is received from before
// each ReadRange.
type fakeResolver struct {
	blobs    map[string][]byte
	fail     map[string]error
	gate     chan struct{}
	inflight atomic.Int32
	maxSeen  atomic.Int32
}

func (r *fakeResolver) Lookup(volumeKey, cookieKey string) (int64, bool) {
	b, ok := r.blobs[cookieKey]
	return int64(len(b)), ok && volumeKey == testVolumeKey
}

func (r *fakeResolver) Fill(ctx context.Context, cookieKey string, off, length int64, write func([]byte, int64) error) error {
	return fillInSteps(ctx, cookieKey, off, length, int64(len(r.blobs[cookieKey])), pageSize, r.ReadRange, write)
}

func (r *fakeResolver) ReadRange(ctx context.Context, cookieKey string, p []byte, off int64) error {
	n := r.inflight.Add(1)
	defer r.inflight.Add(-1)
	for {
		m := r.maxSeen.Load()
		if n <= m || r.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	if r.gate != nil {
		select {
		case <-r.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := r.fail[cookieKey]; err != nil {
		return err
	}
	b := r.blobs[cookieKey]
	if off < 0 || off+int64(len(p)) > int64(len(b)) {
		return fmt.Errorf("fake resolver: [%d,+%d) outside %s (%d bytes)", off, len(p), cookieKey, len(b))
	}
	copy(p, b[off:])
	return nil
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

// startServer runs a Server on the emulated device until the test ends.
func startServer(t *testing.T, k *emuKernel, res Resolver, cfg Config) (*Server, context.CancelFunc) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	srv, err := NewServer(k.dev, res, cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.ops = k.ops()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			srv.Close()
		})
	}
	t.Cleanup(stop)
	return srv, stop
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

const (
	blobA = "sha256:aaaa"
	blobB = "sha256:bbbb"
)

func TestEmulatedOpenReadClose(t *testing.T) {
	k := newEmuKernel(t)
	a := pattern(3*pageSize+100, 1) // the tail is not page-aligned
	res := &fakeResolver{blobs: map[string][]byte{blobA: a}}
	srv, _ := startServer(t, k, res, Config{Workers: 2, StepSize: pageSize})

	o, size := k.open(testVolumeKey, blobA)
	if size != int64(len(a)) {
		t.Fatalf("copen size %d, want %d", size, len(a))
	}
	if flags, err := unix.FcntlInt(uintptr(o.fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("anonymous fd %d: flags %#x, %v: want close-on-exec", o.fd, flags, err)
	}
	for _, r := range []struct{ off, n uint64 }{{0, 10}, {100, 5000}, {2 * pageSize, pageSize + 100}, {0, uint64(len(a))}} {
		got, err := k.read(o, r.off, r.n)
		if err != nil {
			t.Fatalf("read [%d,+%d): %v", r.off, r.n, err)
		}
		if !bytes.Equal(got, a[r.off:r.off+r.n]) {
			t.Fatalf("read [%d,+%d): wrong bytes", r.off, r.n)
		}
	}
	// The backing file holds whole pages, zero-padded past the blob's end.
	st, _ := o.file.Stat()
	if st.Size() != 4*pageSize {
		t.Errorf("backing file is %d bytes, want %d (page-padded)", st.Size(), 4*pageSize)
	}

	miss, size := k.open(testVolumeKey, "sha256:unknown")
	if size != -int64(unix.ENOENT) {
		t.Errorf("unknown cookie: copen %d, want -2", size)
	}
	waitFor(t, "fd of the unknown cookie closed", func() bool { return k.isClosed(miss) })
	wrongVolume, size := k.open("erofs,otherdomain", blobA)
	if size != -int64(unix.ENOENT) {
		t.Errorf("unknown volume: copen %d, want -2", size)
	}
	waitFor(t, "fd of the unknown volume closed", func() bool { return k.isClosed(wrongVolume) })

	k.send(&Msg{ID: 999, Op: OpClose, ObjectID: o.id})
	waitFor(t, "fd closed after CLOSE", func() bool { return k.isClosed(o) })
	st2 := srv.Stats()
	if st2.Opens != 3 || st2.OpenMisses != 2 || st2.Closes != 1 || st2.Reads != 4 || st2.ReadErrors != 0 {
		t.Errorf("stats %+v", st2)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestEmulatedFailedReadStillCompletes(t *testing.T) {
	k := newEmuKernel(t)
	res := &fakeResolver{
		blobs: map[string][]byte{blobA: pattern(8*pageSize, 2)},
		fail:  map[string]error{blobA: errors.New("no peer has this chunk")},
	}
	srv, _ := startServer(t, k, res, Config{})
	o, _ := k.open(testVolumeKey, blobA)
	if _, err := k.read(o, 0, pageSize); !errors.Is(err, errEmuEIO) {
		t.Fatalf("read of a failing blob: %v, want EIO (and no hang)", err)
	}
	if st := srv.Stats(); st.ReadErrors != 1 {
		t.Errorf("ReadErrors %d, want 1", st.ReadErrors)
	}
}

func TestEmulatedConcurrentReadsBounded(t *testing.T) {
	k := newEmuKernel(t)
	const workers, reads = 4, 12
	a := pattern(reads*pageSize, 3)
	gate := make(chan struct{})
	res := &fakeResolver{blobs: map[string][]byte{blobA: a}, gate: gate}
	startServer(t, k, res, Config{Workers: workers})
	o, _ := k.open(testVolumeKey, blobA)
	var dones []chan struct{}
	for i := range reads {
		_, d := k.startRead(o, uint64(i*pageSize), pageSize)
		dones = append(dones, d)
	}
	waitFor(t, "all workers busy", func() bool { return res.inflight.Load() == workers })
	time.Sleep(20 * time.Millisecond) // a fifth concurrent ReadRange would show up here
	if n := res.inflight.Load(); n != workers {
		t.Fatalf("%d READs in flight, want exactly %d (bounded pool)", n, workers)
	}
	close(gate)
	for i, d := range dones {
		select {
		case <-d:
		case <-time.After(10 * time.Second):
			t.Fatalf("READ %d never completed", i)
		}
	}
	if m := res.maxSeen.Load(); m != workers {
		t.Errorf("max concurrent ReadRange %d, want %d", m, workers)
	}
	got := make([]byte, len(a))
	if _, err := o.file.ReadAt(got, 0); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("backing file differs from the blob (%v)", err)
	}
}

func TestEmulatedCloseWaitsForInflightRead(t *testing.T) {
	k := newEmuKernel(t)
	gate := make(chan struct{})
	res := &fakeResolver{blobs: map[string][]byte{blobA: pattern(pageSize, 4)}, gate: gate}
	startServer(t, k, res, Config{Workers: 2})
	o, _ := k.open(testVolumeKey, blobA)
	_, done := k.startRead(o, 0, pageSize)
	waitFor(t, "READ in flight", func() bool { return res.inflight.Load() == 1 })
	k.send(&Msg{ID: 500, Op: OpClose, ObjectID: o.id})
	time.Sleep(20 * time.Millisecond)
	if k.isClosed(o) {
		t.Fatal("fd closed while a READ still writes into it (its number could be reused)")
	}
	close(gate)
	<-done
	waitFor(t, "fd closed after the READ", func() bool { return k.isClosed(o) })
}

func TestEmulatedBadMessagesAreDropped(t *testing.T) {
	k := newEmuKernel(t)
	res := &fakeResolver{blobs: map[string][]byte{blobA: pattern(pageSize, 5)}}
	srv, _ := startServer(t, k, res, Config{})
	k.sendRaw(openWire[:20])                                // truncated
	k.sendRaw(cat(le32(1), le32(7), le32(16), le32(1)))     // unknown opcode
	k.send(&Msg{ID: 1, Op: OpRead, ObjectID: 4242, Len: 1}) // unknown object
	o, size := k.open(testVolumeKey, blobA)
	if size != pageSize {
		t.Fatalf("size %d", size)
	}
	if _, err := k.read(o, 0, 1); err != nil {
		t.Fatalf("read after bad messages: %v", err)
	}
	st := srv.Stats()
	if st.Malformed != 1 || st.UnknownRequests != 1 || st.ReadErrors != 1 {
		t.Errorf("stats %+v: want 1 malformed, 1 unknown opcode, 1 READ for an unknown object", st)
	}
}

func TestEmulatedShutdownLeavesReadsForRestore(t *testing.T) {
	k := newEmuKernel(t)
	gate := make(chan struct{}) // never opened: the READ is in flight at shutdown
	res := &fakeResolver{blobs: map[string][]byte{blobA: pattern(pageSize, 6)}, gate: gate}
	_, stop := startServer(t, k, res, Config{})
	o, _ := k.open(testVolumeKey, blobA)
	_, done := k.startRead(o, 0, pageSize)
	waitFor(t, "READ in flight", func() bool { return res.inflight.Load() == 1 })
	stop()
	select {
	case <-done:
		t.Fatal("READ completed at shutdown; it must stay pending for the next worker's restore")
	default:
	}
	if !k.isClosed(o) {
		t.Fatal("Close left the anonymous fd open: the kernel would not reopen the object for the next worker")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{Workers: -1}, {StepSize: 100}, {StepSize: 128 << 20}} {
		if _, err := NewServer(NewDevice(-1, "x"), &fakeResolver{}, c); err == nil {
			t.Errorf("NewServer accepted %+v", c)
		}
	}
}

// TestHandover runs a Supervisor on an emulated device (a socketpair end) and hands it to a worker
// in the same process: the worker gets an fd for the same device and writes "restore" on it.
func TestHandover(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	dev := NewDevice(fds[1], "emulated /dev/cachefiles")
	defer dev.Close()
	sock := filepath.Join(t.TempDir(), "s")
	sup, err := NewSupervisor(dev, SupervisorConfig{Socket: sock, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() { cancel(); <-done }()

	for i := range 2 { // two successive workers
		hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
		got, err := Handover(hctx, sock)
		hcancel()
		if err != nil {
			t.Fatalf("worker %d: %v", i, err)
		}
		if got.Fd() == dev.Fd() {
			t.Fatal("handover returned the supervisor's own fd number")
		}
		if flags, _ := unix.FcntlInt(uintptr(got.Fd()), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC == 0 {
			t.Error("handed-over fd is not close-on-exec")
		}
		buf := make([]byte, 64)
		n, err := unix.Read(fds[0], buf)
		if err != nil || string(buf[:n]) != CmdRestore {
			t.Fatalf("worker %d: device got %q, %v; want %q", i, buf[:n], err, CmdRestore)
		}
		got.Close()
	}
	nctx, ncancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer ncancel()
	if _, err := Handover(nctx, filepath.Join(t.TempDir(), "nobody")); !errors.Is(err, ErrHandover) {
		t.Fatalf("handover from no supervisor: %v", err)
	}
}

func TestSupervisorRestartsWorker(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	dev := NewDevice(fds[1], "emulated /dev/cachefiles")
	defer dev.Close()
	var starts atomic.Int32
	sup, err := NewSupervisor(dev, SupervisorConfig{
		Socket:       filepath.Join(t.TempDir(), "s"),
		RestartDelay: time.Millisecond,
		Logger:       testLogger(t),
		Worker: func(ctx context.Context) *exec.Cmd {
			starts.Add(1)
			return exec.CommandContext(ctx, "true")
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	waitFor(t, "three worker starts", func() bool { return starts.Load() >= 3 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestEmulatedMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	k := newEmuKernel(t)
	a := pattern(2*pageSize, 7)
	res := &fakeResolver{blobs: map[string][]byte{blobA: a}, fail: map[string]error{blobB: errors.New("gone")}}
	res.blobs[blobB] = pattern(pageSize, 8)
	srv, _ := startServer(t, k, res, Config{Registerer: reg})
	o, _ := k.open(testVolumeKey, blobA)
	if _, err := k.read(o, 0, uint64(len(a))); err != nil {
		t.Fatal(err)
	}
	ob, _ := k.open(testVolumeKey, blobB)
	if _, err := k.read(ob, 0, 1); !errors.Is(err, errEmuEIO) {
		t.Fatal(err)
	}
	k.open(testVolumeKey, "sha256:nothere")
	for _, c := range []struct {
		name, op string
		want     float64
	}{
		{"shoal_cachefiles_requests_total", "OPEN", 3},
		{"shoal_cachefiles_requests_total", "READ", 2},
		{"shoal_cachefiles_open_misses_total", "", 1},
		{"shoal_cachefiles_read_failures_total", "", 1},
		{"shoal_cachefiles_read_bytes_total", "", 2 * pageSize},
		{"shoal_cachefiles_open_objects", "", 2},
	} {
		if got := metricValue(t, reg, c.name, c.op); got != c.want {
			t.Errorf("%s{op=%q}: %v, want %v", c.name, c.op, got, c.want)
		}
	}
	// A second Server on the same registry (a restarted loop in one process) shares the series.
	srv2, err := NewServer(k.dev, res, Config{Registerer: reg})
	if err != nil {
		t.Fatalf("second server on the same registry: %v", err)
	}
	if srv2.met.requests != srv.met.requests {
		t.Error("second server did not reuse the registered series")
	}
}

// metricValue returns the value of a counter or gauge in reg, the series with label op=op if op
// is set.
func metricValue(t *testing.T, reg *prometheus.Registry, name, op string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := op == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "op" && l.GetValue() == op {
					match = true
				}
			}
			if !match {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s{op=%q}", name, op)
	return 0
}

// testVolumeKey is the volume key the kernel sends for images mounted with domain_id=shoal.
const testVolumeKey = "erofs,shoal"
