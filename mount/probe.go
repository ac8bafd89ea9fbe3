package mount

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/shoal-p2p/shoal/demand/fanotify"
)

// Mode is a demand-read frontend: how the kernel asks the daemon for blob data.
type Mode string

// The modes, in order of preference.
const (
	// Fscache: EROFS over cachefiles on-demand mode (/dev/cachefiles, fsid= mounts).
	Fscache Mode = "fscache"
	// Fanotify: file-backed EROFS on the store's backing files, fanotify pre-content events.
	Fanotify Mode = "fanotify"
	// FUSE: file-backed EROFS on the files of Shoal's FUSE server.
	FUSE Mode = "fuse"
)

// ModeStatus says whether one mode can run here, and why not.
type ModeStatus struct {
	Mode      Mode
	Available bool
	Reason    string // why it is unavailable; empty when available
}

// ProbeResult is what Probe found.
type ProbeResult struct {
	// Best is the first available mode in order of preference (fscache, fanotify, FUSE), or ""
	// when none is.
	Best  Mode
	Modes []ModeStatus // every mode, in order of preference
}

// String is a one-line summary for logs.
func (p ProbeResult) String() string {
	var parts []string
	for _, m := range p.Modes {
		if m.Available {
			parts = append(parts, string(m.Mode)+": available")
		} else {
			parts = append(parts, string(m.Mode)+": "+m.Reason)
		}
	}
	best := string(p.Best)
	if best == "" {
		best = "none"
	}
	return "mode " + best + " (" + strings.Join(parts, "; ") + ")"
}

// Probe checks which modes can run on this machine with the cache directory cacheDir and picks
// the best: fscache when /dev/cachefiles can be opened and bound in on-demand mode, else fanotify
// when pre-content events work on files in cacheDir, else FUSE. Each unavailable mode comes with
// the reason. Probing fscache opens /dev/cachefiles (exclusive) for a moment and binds a scratch
// cache in cacheDir, so do not probe while a cachefiles daemon of this host is starting.
func Probe(cacheDir string) ProbeResult {
	modes := []ModeStatus{
		status(Fscache, ProbeMode(cacheDir, Fscache)),
		status(Fanotify, ProbeMode(cacheDir, Fanotify)),
		status(FUSE, ProbeMode(cacheDir, FUSE)),
	}
	res := ProbeResult{Modes: modes}
	for _, m := range modes {
		if m.Available {
			res.Best = m.Mode
			break
		}
	}
	return res
}

// ProbeMode checks one mode the way Probe does, without probing the others (the fscache probe
// binds /dev/cachefiles; a daemon asked for FUSE need not touch it). nil means available.
func ProbeMode(cacheDir string, m Mode) error {
	switch m {
	case Fscache:
		return probeFscache(cacheDir)
	case Fanotify:
		return errors.Join(erofsFileBacked(), fanotify.Probe(cacheDir))
	case FUSE:
		return errors.Join(erofsFileBacked(), probeFUSE())
	}
	return fmt.Errorf("unknown mode %q", m)
}

func status(m Mode, err error) ModeStatus {
	if err != nil {
		return ModeStatus{Mode: m, Reason: err.Error()}
	}
	return ModeStatus{Mode: m, Available: true}
}

// erofsFileBacked checks for EROFS and a kernel new enough for file-backed mounts (6.12).
func erofsFileBacked() error {
	fss, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return fmt.Errorf("reading /proc/filesystems: %w", err)
	}
	if !hasFilesystem(fss, "erofs") {
		return errors.New("no erofs in /proc/filesystems (CONFIG_EROFS_FS off or module not loaded)")
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		rel := unix.ByteSliceToString(uts.Release[:])
		if maj, min, ok := kernelVersion(rel); ok && (maj < 6 || maj == 6 && min < 12) {
			return fmt.Errorf("kernel %s is older than 6.12: no file-backed EROFS mounts", rel)
		}
	}
	return nil
}

func hasFilesystem(procFilesystems []byte, name string) bool {
	for _, line := range bytes.Split(procFilesystems, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) > 0 && string(f[len(f)-1]) == name {
			return true
		}
	}
	return false
}

func kernelVersion(rel string) (major, minor int, ok bool) {
	if c, _ := fmt.Sscanf(rel, "%d.%d", &major, &minor); c == 2 {
		return major, minor, true
	}
	return 0, 0, false
}

func probeFUSE() error {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/fuse: %w", err)
	}
	unix.Close(fd)
	if os.Geteuid() != 0 {
		return errors.New("not root: the FUSE server mounts with mount(2) directly")
	}
	return nil
}

// probeFscache opens /dev/cachefiles and binds a scratch cache in on-demand mode; closing the
// device unbinds it.
func probeFscache(cacheDir string) error {
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
