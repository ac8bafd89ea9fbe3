package fanotify

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrUnsupported is wrapped by Probe's errors: this machine cannot run the fanotify frontend.
var ErrUnsupported = errors.New("fanotify pre-content events unavailable")

// Probe checks that this machine can serve demand reads of backing files under cacheDir through
// fanotify pre-content events: Linux 6.14+, CAP_SYS_ADMIN, and a filesystem that takes
// FAN_PRE_ACCESS marks (ext4, xfs, btrfs; not tmpfs). It creates a group, marks a temporary file
// in cacheDir and removes both. The error says which condition failed.
func Probe(cacheDir string) error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		rel := unix.ByteSliceToString(uts.Release[:])
		if maj, min, ok := kernelVersion(rel); ok && (maj < 6 || maj == 6 && min < 14) {
			return fmt.Errorf("%w: kernel %s is older than 6.14", ErrUnsupported, rel)
		}
	}
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_PRE_CONTENT|unix.FAN_CLOEXEC, unix.O_RDWR|unix.O_LARGEFILE)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w: fanotify_init: %w (needs CAP_SYS_ADMIN)", ErrUnsupported, err)
		}
		return fmt.Errorf("%w: fanotify_init(FAN_CLASS_PRE_CONTENT): %w", ErrUnsupported, err)
	}
	defer unix.Close(fd)
	f, err := os.CreateTemp(cacheDir, ".shoal-fanotify-probe-")
	if err != nil {
		return fmt.Errorf("%w: cache directory %s: %w", ErrUnsupported, cacheDir, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD, unix.FAN_PRE_ACCESS, unix.AT_FDCWD, f.Name()); err != nil {
		reason := ""
		switch {
		case errors.Is(err, unix.EOPNOTSUPP):
			reason = fmt.Sprintf(" (the filesystem of %s does not support pre-content events: use ext4, xfs or btrfs)", cacheDir)
		case errors.Is(err, unix.EINVAL):
			reason = " (kernel without FAN_PRE_ACCESS: needs Linux 6.14+ with CONFIG_FANOTIFY_ACCESS_PERMISSIONS)"
		}
		return fmt.Errorf("%w: fanotify_mark(FAN_PRE_ACCESS) on %s: %w%s", ErrUnsupported, f.Name(), err, reason)
	}
	return nil
}

// kernelVersion parses the major and minor numbers of a release string such as
// "6.18.44-fc-v769".
func kernelVersion(rel string) (major, minor int, ok bool) {
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	m := parts[1]
	if i := strings.IndexFunc(m, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		m = m[:i]
	}
	minor, err2 := strconv.Atoi(m)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return major, minor, true
}
