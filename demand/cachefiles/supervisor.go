package cachefiles

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// handoverMagic is the payload that carries the device fd; it versions the hand-off protocol.
const handoverMagic = "shoal-cachefiles-handover/1"

// SupervisorConfig configures a Supervisor.
type SupervisorConfig struct {
	// Socket is the path of the unix socket workers connect to for the device fd. Required.
	Socket string
	// Worker, if set, builds the worker command (never nil); the Supervisor starts it and starts a
	// new one whenever it exits, until ctx ends. The worker finds the socket by its own means
	// (flag or environment) and calls Handover. Build it with exec.CommandContext so it is stopped with
	// the Supervisor. Without Worker, workers are started by someone else (systemd, a test).
	Worker func(ctx context.Context) *exec.Cmd
	// RestartDelay is the pause before a worker that exited is started again. Default 200ms.
	RestartDelay time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Validate checks the settings after defaults are applied.
func (c *SupervisorConfig) Validate() error {
	if c.Socket == "" {
		return errors.New("cachefiles supervisor config: Socket is required")
	}
	if len(c.Socket) >= len(unix.RawSockaddrUnix{}.Path) {
		return fmt.Errorf("cachefiles supervisor config: socket path %q is too long for a unix socket", c.Socket)
	}
	if c.RestartDelay < 0 {
		return fmt.Errorf("cachefiles supervisor config: RestartDelay %v is negative", c.RestartDelay)
	}
	return nil
}

// Supervisor keeps the cachefiles device fd alive across worker restarts and upgrades: it holds
// the fd, hands a duplicate to every worker that connects to its socket (SCM_RIGHTS), and can run
// the worker itself. While the Supervisor lives, the kernel's cache and every mount on it survive
// a worker crash: requests wait in the kernel until the next worker writes "restore".
type Supervisor struct {
	dev *Device
	cfg SupervisorConfig
	log *slog.Logger

	mu  sync.Mutex
	cmd *exec.Cmd
	ln  *net.UnixListener
}

// NewSupervisor returns a Supervisor for dev, which the caller has opened and bound (Device.Bind)
// and keeps open for as long as mounts use it. It does no I/O: call Run.
func NewSupervisor(dev *Device, cfg SupervisorConfig) (*Supervisor, error) {
	if dev == nil {
		return nil, errors.New("cachefiles: NewSupervisor needs a device")
	}
	if cfg.RestartDelay == 0 {
		cfg.RestartDelay = 200 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Supervisor{dev: dev, cfg: cfg, log: cfg.Logger.With("subsystem", "cachefiles-supervisor")}, nil
}

// WorkerPID returns the pid of the running worker, or 0.
func (s *Supervisor) WorkerPID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Run listens on the socket, serves hand-offs and (with Worker) keeps a worker running, until ctx
// ends. It does not close the device.
func (s *Supervisor) Run(ctx context.Context) error {
	_ = os.Remove(s.cfg.Socket) // a stale socket from a previous supervisor
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.cfg.Socket, Net: "unix"})
	if err != nil {
		return fmt.Errorf("cachefiles supervisor: listen %s: %w", s.cfg.Socket, err)
	}
	if err := os.Chmod(s.cfg.Socket, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("cachefiles supervisor: chmod %s: %w", s.cfg.Socket, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.serve(ln)
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer func() {
		stop()
		ln.Close()
		wg.Wait()
	}()

	if s.cfg.Worker == nil {
		<-ctx.Done()
		return nil
	}
	for ctx.Err() == nil {
		cmd := s.cfg.Worker(ctx)
		if cmd == nil {
			return errors.New("cachefiles supervisor: Worker returned no command")
		}
		if err := cmd.Start(); err != nil {
			if ctx.Err() != nil {
				break
			}
			s.log.Error("worker did not start", "err", err)
		} else {
			s.mu.Lock()
			s.cmd = cmd
			s.mu.Unlock()
			s.log.Info("worker started", "pid", cmd.Process.Pid)
			err := cmd.Wait()
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			s.log.Info("worker exited", "pid", cmd.Process.Pid, "status", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(s.cfg.RestartDelay):
		}
	}
	return nil
}

func (s *Supervisor) serve(ln *net.UnixListener) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		if err := s.handOver(c); err != nil {
			s.log.Error("handover", "err", err)
		}
		_ = c.Close()
	}
}

func (s *Supervisor) handOver(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("%w: peer credentials: %v", ErrHandover, cerr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("%w: refusing pid %d uid %d", ErrHandover, cred.Pid, cred.Uid)
	}
	fd := s.dev.Fd()
	if fd < 0 {
		return fmt.Errorf("%w: device %s: %w", ErrHandover, s.dev.Name(), ErrClosed)
	}
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.WriteMsgUnix([]byte(handoverMagic), unix.UnixRights(fd), nil); err != nil {
		return fmt.Errorf("%w: send to pid %d: %w", ErrHandover, cred.Pid, err)
	}
	s.log.Info("device handed over", "pid", cred.Pid)
	return nil
}

// Close stops listening; Run returns when its ctx ends. It does not close the device.
func (s *Supervisor) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return s.ln.Close()
	}
	return nil
}

// Handover connects to a Supervisor's socket (waiting for it to appear until ctx ends), receives the device fd (close-on-exec) and writes
// "restore", so the kernel resends every request the previous worker left unanswered. The result
// is ready for NewServer.
func Handover(ctx context.Context, socket string) (*Device, error) {
	var d net.Dialer
	var conn net.Conn
	for {
		var err error
		conn, err = d.DialContext(ctx, "unix", socket)
		if err == nil {
			break
		}
		// A supervisor that is starting (or restarting) has no socket yet, or has bound it but
		// not yet listened: wait for it until ctx ends.
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ECONNREFUSED) {
			return nil, fmt.Errorf("%w: dial %s: %w", ErrHandover, socket, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: dial %s: %w (%w)", ErrHandover, socket, err, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	defer conn.Close()
	c := conn.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, len(handoverMagic)+1)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("%w: receive from %s: %w", ErrHandover, socket, err)
	}
	var fds []int
	if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for i := range cmsgs {
			if f, err := unix.ParseUnixRights(&cmsgs[i]); err == nil {
				fds = append(fds, f...)
			}
		}
	}
	if string(buf[:n]) != handoverMagic || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("%w: %s sent %q with %d fds, want %q with 1", ErrHandover, socket, buf[:n], len(fds), handoverMagic)
	}
	unix.CloseOnExec(fds[0])
	dev := NewDevice(fds[0], DefaultDevicePath+" (handed over)")
	if err := dev.Restore(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("%w: %w", ErrHandover, err)
	}
	return dev, nil
}
