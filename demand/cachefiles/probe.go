package cachefiles

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Probe reports whether cachefiles on-demand mode works here with a cache directory on the
// filesystem of cacheDir: it opens /dev/cachefiles and binds a scratch cache in on-demand mode,
// and closing the device unbinds it. The device is exclusive, so do not probe while this host's
// supervisor or worker holds it. nil means it works; otherwise the error says why.
func Probe(cacheDir string) error {
	fd, err := unix.Open("/dev/cachefiles", unix.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENODEV):
		return fmt.Errorf("no /dev/cachefiles (kernel without CONFIG_CACHEFILES, or module not loaded): %w", err)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("/dev/cachefiles is in use (cachefilesd or another Shoal supervisor holds it): %w", err)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("open /dev/cachefiles: %w (needs CAP_SYS_ADMIN)", err)
	case err != nil:
		return fmt.Errorf("open /dev/cachefiles: %w", err)
	}
	defer unix.Close(fd)
	scratch, err := os.MkdirTemp(cacheDir, ".shoal-fscache-probe-")
	if err != nil {
		return fmt.Errorf("cache directory %s: %w", cacheDir, err)
	}
	defer os.RemoveAll(scratch)
	for _, cmd := range []string{"dir " + scratch, "tag shoal-probe", "bind ondemand"} {
		if _, err := unix.Write(fd, []byte(cmd)); err != nil {
			reason := ""
			if errors.Is(err, unix.EOPNOTSUPP) {
				reason = fmt.Sprintf(" (kernel without CONFIG_CACHEFILES_ONDEMAND, or the filesystem of %s lacks tmpfile/xattr/sync_fs support: tmpfs does)", cacheDir)
			}
			return fmt.Errorf("/dev/cachefiles %q: %w%s", cmd, err, reason)
		}
	}
	return nil
}
