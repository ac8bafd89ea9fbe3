package mount

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

const sampleMountinfo = `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:34 / /var/lib/shoal/fuse rw,nosuid,nodev,relatime shared:17 - fuse.shoal shoal rw,user_id=0,group_id=0,allow_other
36 22 7:0 / /var/lib/shoal/mnt/with\040space ro,nosuid,nodev,relatime shared:18 - erofs /var/lib/shoal/boot/sha256:ab ro,user_xattr,acl,cache_strategy=readaround
37 22 0:40 / /run/containers/x ro,relatime - erofs none ro,user_xattr,acl,fsid=sha256:cd,domain_id=shoal
38 22 0:41 / /mnt/other ro,relatime - erofs /srv/other.img ro
39 22 0:42 / /var/lib/shoal/mnt/a/b ro,relatime - erofs /elsewhere/boot ro
40 22 0:43 / /mnt/fusex rw - fuse.other other rw
`

func TestParseMountinfo(t *testing.T) {
	got, err := ParseMountinfo(strings.NewReader(sampleMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 7 {
		t.Fatalf("%d mounts, want 7", len(got))
	}
	want := Info{ID: 36, Parent: 22, Mountpoint: "/var/lib/shoal/mnt/with space", FSType: "erofs",
		Source: "/var/lib/shoal/boot/sha256:ab", MountOptions: "ro,nosuid,nodev,relatime",
		SuperOptions: "ro,user_xattr,acl,cache_strategy=readaround"}
	if got[2] != want {
		t.Errorf("line 3 = %+v\nwant %+v", got[2], want)
	}
	if got[3].Source != "none" || got[3].SuperOptions != "ro,user_xattr,acl,fsid=sha256:cd,domain_id=shoal" || got[3].MountOptions != "ro,relatime" {
		t.Errorf("line 4 (no optional fields) = %+v", got[3])
	}
	if !got[1].IsShoalFUSE() || got[6].IsShoalFUSE() || !got[2].IsErofs() {
		t.Error("IsShoalFUSE/IsErofs wrong")
	}
	for _, bad := range []string{"1 2 3\n", "x 1 0:1 / /m rw - erofs none ro\n", "1 2 0:1 / /m rw shared:1 erofs none ro\n", "1 2 0:1 / /m rw -\n"} {
		if _, err := ParseMountinfo(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseMountinfo(%q) succeeded", bad)
		}
	}
}

func TestSelect(t *testing.T) {
	all, err := ParseMountinfo(strings.NewReader(sampleMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, in := range Select(all, "/var/lib/shoal/") {
		got = append(got, in.ID)
	}
	// EROFS first (deepest first), then the FUSE server; not other roots' mounts, not the
	// fscache mount outside root, not another FUSE filesystem.
	if want := []int{39, 36, 35}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Select = %v, want %v", got, want)
	}
	if s := Select(all, "/var/lib/shoa"); len(s) != 0 {
		t.Fatalf("a sibling prefix matched: %+v", s)
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`a\040b`: "a b", `\011\012\134`: "\t\n\\", `x\04`: `x\04`, `\999`: `\999`, `plain`: "plain"} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFileBackedData(t *testing.T) {
	got, err := FileBackedData([]string{"/a/b1", "/proc/self/fd/7"}, FileBackedOptions{DirectIO: true})
	if err != nil || got != "device=/a/b1,device=/proc/self/fd/7,directio" {
		t.Fatalf("FileBackedData = %q, %v", got, err)
	}
	for _, devs := range [][]string{nil, {""}, {"rel/path"}, {"/a,b"}, {"/a\x00"}} {
		if _, err := FileBackedData(devs, FileBackedOptions{}); !errors.Is(err, ErrBadOption) {
			t.Errorf("FileBackedData(%q) = %v, want ErrBadOption", devs, err)
		}
	}
	if err := MountFileBacked("/nonexistent/boot", nil, t.TempDir(), FileBackedOptions{}); !errors.Is(err, ErrBadOption) {
		t.Errorf("no devices: %v, want ErrBadOption (flatdev mounts read wrong data)", err)
	}
	if err := MountFileBacked("/nonexistent/boot", []string{"/nonexistent/blob"}, t.TempDir(), FileBackedOptions{}); err == nil || !strings.Contains(err.Error(), "/nonexistent/blob") {
		t.Errorf("missing device: %v, want an error naming it", err)
	}
	if err := MountFileBacked("boot", []string{"/x"}, t.TempDir(), FileBackedOptions{}); !errors.Is(err, ErrBadOption) {
		t.Errorf("relative bootstrap: %v", err)
	}
}

func TestUnmountNotMounted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (umount2 of a non-mount gives EPERM otherwise)")
	}
	if err := Unmount(t.TempDir()); !errors.Is(err, ErrNotMounted) {
		t.Fatalf("Unmount of a plain directory = %v, want ErrNotMounted", err)
	}
}

func TestHelpers(t *testing.T) {
	if !hasFilesystem([]byte("nodev\tproc\n\terofs\nnodev\tfuse\n"), "erofs") || hasFilesystem([]byte("nodev\terofsx\n"), "erofs") {
		t.Error("hasFilesystem")
	}
	if maj, min, ok := kernelVersion("6.18.44-fc-v769"); !ok || maj != 6 || min != 18 {
		t.Errorf("kernelVersion = %d.%d %v", maj, min, ok)
	}
	if _, _, ok := kernelVersion("weird"); ok {
		t.Error("kernelVersion accepted garbage")
	}
}

// FuzzParseMountinfo: the kernel's mountinfo is trusted, but paths in it are user-chosen
// (mountpoints with spaces, newlines, backslashes); no line may make the parser panic.
func FuzzParseMountinfo(f *testing.F) {
	f.Add([]byte(sampleMountinfo))
	f.Add([]byte("36 35 98:0 /mnt1 /mnt\\0402 rw - erofs none ro,fsid=x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		infos, err := ParseMountinfo(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, in := range infos {
			_ = Select([]Info{in}, "/")
		}
	})
}
