package fusetree

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Probe reports whether this package can serve here: /dev/fuse opens and the process is root
// (the server mounts with mount(2) directly, without fusermount). Nothing else of the kernel is
// needed: no EROFS, no cachefiles, no fanotify. nil means it can.
func Probe() error {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/fuse: %w", err)
	}
	_ = unix.Close(fd)
	if os.Geteuid() != 0 {
		return errors.New("not root: the tree server mounts with mount(2) directly")
	}
	return nil
}
