package mount

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Mode is a demand-read frontend: how the kernel asks the daemon for blob data. Whether a mode
// works on this machine is each frontend's own probe (cachefiles.Probe, fanotify.Probe,
// fusefs.Probe, fusetree.Probe) plus ProbeFileBacked for the file-backed modes; the daemon
// combines them.
type Mode string

// The modes, in order of preference.
const (
	// Fscache: EROFS over cachefiles on-demand mode (/dev/cachefiles, fsid= mounts).
	Fscache Mode = "fscache"
	// Fanotify: file-backed EROFS on the store's backing files, fanotify pre-content events.
	Fanotify Mode = "fanotify"
	// FUSE: file-backed EROFS on the files of Shoal's FUSE server.
	FUSE Mode = "fuse"
	// FUSETree: no EROFS at all: Shoal serves the image's tree over FUSE (demand/fusetree),
	// one FUSE mount per image. Works on any kernel with FUSE; the fallback of every other mode.
	FUSETree Mode = "fusetree"
)

// ProbeFileBacked checks for EROFS and a kernel new enough for file-backed mounts (6.12), which
// the fanotify and FUSE modes mount on. nil means both are there.
func ProbeFileBacked() error {
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
