package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// FSType is the filesystem type of every Shoal image mount.
const FSType = "erofs"

// ErrNotMounted is wrapped by Unmount when the target is not a mount point.
var ErrNotMounted = errors.New("not a mount point")

// ErrBadOption is wrapped by errors about paths or names that cannot be passed as mount options.
var ErrBadOption = errors.New("bad mount option")

// FileBackedOptions are the optional settings of a file-backed EROFS mount.
type FileBackedOptions struct {
	// DirectIO passes "directio": EROFS reads the device files with direct I/O, so blob data is
	// not cached twice (backing file and EROFS page cache). Linux 6.12+.
	DirectIO bool
}

// FileBackedData returns the data argument of a file-backed EROFS mount: one device= per extra
// device, in device order, and directio if asked.
func FileBackedData(devices []string, opts FileBackedOptions) (string, error) {
	if len(devices) == 0 {
		// Without device= EROFS mounts "flatdev" and reads blob data from the bootstrap: wrong
		// bytes, no error.
		return "", fmt.Errorf("%w: no device paths (a Shoal image has at least one blob)", ErrBadOption)
	}
	var parts []string
	for i, d := range devices {
		if err := checkPath(d); err != nil {
			return "", fmt.Errorf("device %d: %w", i+1, err)
		}
		parts = append(parts, "device="+d)
	}
	if opts.DirectIO {
		parts = append(parts, "directio")
	}
	return strings.Join(parts, ","), nil
}

func checkPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("%w: empty path", ErrBadOption)
	case !filepath.IsAbs(p):
		return fmt.Errorf("%w: path %q is not absolute", ErrBadOption, p)
	case strings.ContainsAny(p, ",\x00\n"):
		// The kernel splits mount data at commas; there is no escaping.
		return fmt.Errorf("%w: path %q contains a comma, NUL or newline", ErrBadOption, p)
	}
	return nil
}

// MountFileBacked mounts the EROFS image whose bootstrap is the local file bootstrapPath at
// target, read-only, with devices (the blob files, in device order) as its extra devices. It calls
// mount(2) directly: util-linux mount would set up a loop device instead. Needs Linux 6.12+
// (CONFIG_EROFS_FS_BACKED_BY_FILE) and CAP_SYS_ADMIN.
//
// Each device is opened with O_PATH and handed to the kernel as /proc/self/fd/N, which EROFS
// reopens: paths may then hold commas (the store's volume directory "Ierofs,<domain>" does), which
// device= could not carry, and the file EROFS opens is exactly the one checked here.
//
// In fanotify mode the devices are the store's backing files, which must already be watched
// (the kernel decides at open time whether a file raises pre-content events); in FUSE mode they
// are the FUSE server's blob files.
func MountFileBacked(bootstrapPath string, devices []string, target string, opts FileBackedOptions) error {
	if err := checkPath(bootstrapPath); err != nil {
		return fmt.Errorf("mount %s: bootstrap: %w", target, err)
	}
	if len(devices) == 0 {
		_, err := FileBackedData(nil, opts)
		return fmt.Errorf("mount %s: %w", target, err)
	}
	fdPaths := make([]string, len(devices))
	for i, d := range devices {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("mount %s: device %d: %w: path %q is not absolute", target, i+1, ErrBadOption, d)
		}
		fd, err := unix.Open(d, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("mount %s: device %d: %w", target, i+1, &os.PathError{Op: "open", Path: d, Err: err})
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("mount %s: device %d: %w", target, i+1, &os.PathError{Op: "stat", Path: d, Err: err})
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return fmt.Errorf("mount %s: device %d: %s is not a regular file", target, i+1, d)
		}
		fdPaths[i] = "/proc/self/fd/" + strconv.Itoa(fd)
	}
	data, err := FileBackedData(fdPaths, opts)
	if err != nil {
		return fmt.Errorf("mount %s: %w", target, err)
	}
	if err := unix.Mount(bootstrapPath, target, FSType, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, data); err != nil {
		return fmt.Errorf("mount erofs %s on %s (devices %s, options %s): %w", bootstrapPath, target, strings.Join(devices, " "), data, err)
	}
	return nil
}

// MountFscache mounts an image in fscache (cachefiles on-demand) mode: the bootstrap and blobs
// are read through /dev/cachefiles, whose daemon must be bound already. bootstrapID is the
// bootstrap's cookie key (fsid=), domain the shared volume (domain_id=) and blobs the cookie keys
// of the extra devices in device order (FscacheOptions).
func MountFscache(bootstrapID, domain string, blobs []string, target string) error {
	data, err := FscacheOptions(bootstrapID, domain, blobs)
	if err != nil {
		return fmt.Errorf("mount %s: %w", target, err)
	}
	if err := unix.Mount("none", target, FSType, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, data); err != nil {
		return fmt.Errorf("mount erofs fsid=%s on %s (%s): %w", bootstrapID, target, data, err)
	}
	return nil
}

// Bind makes target show the mount at source, read-only. The fscache frontend uses it for a
// second mount of an image already mounted in fscache mode: the kernel refuses the same fsid
// twice in a domain (EEXIST), and a bind mount shares the first mount's cache anyway.
func Bind(source, target string) error {
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s on %s: %w", source, target, err)
	}
	if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		_ = unix.Unmount(target, unix.MNT_DETACH)
		return fmt.Errorf("bind mount %s on %s read-only: %w", source, target, err)
	}
	return nil
}

// Unmount unmounts target. If it is busy it is detached lazily (MNT_DETACH): it disappears from
// the namespace now and goes away when its last user does. A target that is not a mount point
// gives an error wrapping ErrNotMounted.
func Unmount(target string) error {
	err := unix.Unmount(target, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(target, unix.MNT_DETACH)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
		return fmt.Errorf("unmount %s: %w (%w)", target, ErrNotMounted, err)
	default:
		return fmt.Errorf("unmount %s: %w", target, err)
	}
}
