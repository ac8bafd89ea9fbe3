package mount

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// FUSEName is the name Shoal's FUSE server mounts with: its mounts have filesystem type
// "fuse.shoal" and source "shoal".
const FUSEName = "shoal"

// Info describes one mount, as /proc/self/mountinfo shows it.
type Info struct {
	ID           int
	Parent       int
	Mountpoint   string
	FSType       string // "erofs", "fuse.shoal", ...
	Source       string // the bootstrap path of file-backed EROFS, "none" for fscache
	MountOptions string // per-mount options (ro, nosuid, ...)
	SuperOptions string // per-superblock options (fsid=, domain_id=, ...)
}

// IsErofs reports whether the mount is an EROFS image.
func (i Info) IsErofs() bool { return i.FSType == FSType }

// IsShoalFUSE reports whether the mount is a Shoal FUSE server.
func (i Info) IsShoalFUSE() bool { return i.FSType == "fuse."+FUSEName }

// TreeName is the name Shoal's tree server (fusetree mode) mounts with: its mounts have type
// "fuse.shoaltree" and the image's bootstrap file as their source.
const TreeName = "shoaltree"

// IsShoalTree reports whether the mount is an image served in fusetree mode.
func (i Info) IsShoalTree() bool { return i.FSType == "fuse."+TreeName }

// isImage: an image mount (EROFS or fusetree), which nothing of Shoal's sits on.
func (i Info) isImage() bool { return i.IsErofs() || i.IsShoalTree() }

// ParseMountinfo decodes the mountinfo format (proc(5)). Malformed lines are errors naming the
// line.
func ParseMountinfo(r io.Reader) ([]Info, error) {
	var out []Info
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || len(f) < sep+3 {
			return nil, fmt.Errorf("mountinfo line %d: %d fields, no separator: %q", n, len(f), line)
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
		in := Info{
			ID:           id,
			Parent:       parent,
			Mountpoint:   unescape(f[4]),
			MountOptions: f[5],
			FSType:       unescape(f[sep+1]),
			Source:       unescape(f[sep+2]),
		}
		if len(f) > sep+3 {
			in.SuperOptions = f[sep+3]
		}
		out = append(out, in)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	return out, nil
}

// unescape undoes the octal escapes (\040 for space, \011, \012, \134) of mountinfo fields.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b bytes.Buffer
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ParseMountinfoFile reads a mountinfo file (usually /proc/self/mountinfo).
func ParseMountinfoFile(path string) ([]Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseMountinfo(f)
}

// List returns the Shoal mounts of this mount namespace that belong to the daemon whose data
// lives under root: EROFS and fusetree mounts whose mountpoint or source (the bootstrap file) is
// under root, and Shoal FUSE servers mounted under root. Deepest mountpoints come first, images
// before FUSE servers, which is the order to unmount them in (EROFS images sit on FUSE files in
// FUSE mode).
func List(root string) ([]Info, error) {
	all, err := ParseMountinfoFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	return Select(all, root), nil
}

// Select picks the Shoal mounts under root out of all, in unmount order (see List).
func Select(all []Info, root string) []Info {
	root = filepath.Clean(root)
	var out []Info
	for _, in := range all {
		switch {
		case in.isImage() && (under(in.Mountpoint, root) || under(in.Source, root)):
		case in.IsShoalFUSE() && under(in.Mountpoint, root):
		default:
			continue
		}
		out = append(out, in)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if a, b := out[i].isImage(), out[j].isImage(); a != b {
			return a
		}
		return strings.Count(out[i].Mountpoint, "/") > strings.Count(out[j].Mountpoint, "/")
	})
	return out
}

func under(p, root string) bool {
	if !filepath.IsAbs(p) {
		return false
	}
	rel, err := filepath.Rel(root, filepath.Clean(p))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// Cleanup unmounts every Shoal mount List(root) finds (lazily where busy), so a daemon killed
// with SIGKILL leaves nothing that blocks the next start. It returns what it unmounted and the
// errors of those it could not.
func Cleanup(root string) ([]Info, error) {
	mounts, err := List(root)
	if err != nil {
		return nil, err
	}
	var done []Info
	var errs []error
	for _, m := range mounts {
		if err := Unmount(m.Mountpoint); err != nil && !errors.Is(err, ErrNotMounted) {
			errs = append(errs, err)
			continue
		}
		done = append(done, m)
	}
	return done, errors.Join(errs...)
}
