package cachefiles

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// DefaultDevicePath is the cachefiles misc device.
const DefaultDevicePath = "/dev/cachefiles"

// Device is an open /dev/cachefiles. The raw fd is kept as an int on purpose: read(2) on it returns
// 0 when nothing is pending, which os.File would take for end of file. Opening needs CAP_SYS_ADMIN
// and is exclusive system-wide; the cache lives as long as any process holds the fd (see
// Supervisor).
type Device struct {
	name string
	mu   sync.Mutex
	fd   int // -1 once closed
}

// OpenDevice opens the cachefiles device at path (DefaultDevicePath if empty), close-on-exec.
func OpenDevice(path string) (*Device, error) {
	if path == "" {
		path = DefaultDevicePath
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("open %s: %w (another cachefiles daemon holds it)", path, err)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Device{name: path, fd: fd}, nil
}

// NewDevice wraps an fd that already refers to the cachefiles device (one received through
// Handover, or inherited) and takes ownership of it.
func NewDevice(fd int, name string) *Device { return &Device{name: name, fd: fd} }

// Fd returns the raw fd (for epoll and for SCM_RIGHTS), or -1 once closed.
func (d *Device) Fd() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fd
}

// Name is the path or description the device was opened with.
func (d *Device) Name() string { return d.name }

// Command writes one command. The kernel takes exactly one command per write(2).
func (d *Device) Command(cmd string) error {
	fd := d.Fd()
	if fd < 0 {
		return fmt.Errorf("%s: command %q: %w", d.name, cmd, ErrClosed)
	}
	if len(cmd) > CommandMaxSize {
		return fmt.Errorf("%w: %d-byte command", ErrBadCommand, len(cmd))
	}
	for {
		_, err := unix.Write(fd, []byte(cmd))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: command %q: %w", d.name, cmd, err)
		}
		return nil
	}
}

// Bind configures a fresh device: "dir <dir>", "tag <tag>" (if tag is not empty) and
// "bind ondemand". dir must be on a filesystem with tmpfile, xattrs and sync_fs (ext4, not tmpfs).
func (d *Device) Bind(dir, tag string) error {
	cmds := make([]string, 0, 3)
	c, err := CmdDir(dir)
	if err != nil {
		return err
	}
	cmds = append(cmds, c)
	if tag != "" {
		if c, err = CmdTag(tag); err != nil {
			return err
		}
		cmds = append(cmds, c)
	}
	cmds = append(cmds, CmdBindOndemand)
	for _, c := range cmds {
		if err := d.Command(c); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				return fmt.Errorf("%w (the cache dir's filesystem needs tmpfile, xattrs and sync_fs; or the kernel lacks CONFIG_CACHEFILES_ONDEMAND)", err)
			}
			return err
		}
	}
	return nil
}

// Restore makes the kernel resend every request that is not answered yet (Linux 6.8+). A worker
// that takes over a bound device writes it before serving.
func (d *Device) Restore() error { return d.Command(CmdRestore) }

// read reads one message into buf. n == 0 with a nil error means nothing is pending.
func (d *Device) read(buf []byte) (int, error) {
	for {
		n, err := unix.Read(d.fd, buf)
		switch err {
		case nil:
			return n, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, nil
		}
		return 0, fmt.Errorf("%s: read: %w", d.name, err)
	}
}

// Close closes the fd. If it is the last reference anywhere, the kernel tears the cache down:
// mounted images then fail every uncached read with EIO.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}
