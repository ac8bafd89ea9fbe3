package mount

import (
	"reflect"
	"strings"
	"testing"
)

// TestSelectTreeMounts: a fusetree mount belongs to the daemon whose data holds its bootstrap
// (its source) wherever it is mounted, and is unmounted before the daemon's FUSE server.
func TestSelectTreeMounts(t *testing.T) {
	const mi = `35 22 0:34 / /var/lib/shoal/fuse rw,nosuid,nodev,relatime shared:17 - fuse.shoal shoal rw,user_id=0,group_id=0,allow_other
50 22 0:50 / /run/containers/rootfs ro,nosuid,nodev,relatime - fuse.shoaltree /var/lib/shoal/boot/sha256:ab ro,user_id=0,group_id=0,default_permissions,allow_other
51 22 0:51 / /mnt/elsewhere ro,nosuid,nodev - fuse.shoaltree /srv/other/boot ro,user_id=0,group_id=0
52 22 0:52 / /var/lib/shoal/mnt/x ro - fuse.shoaltree /srv/other/boot ro
`
	all, err := ParseMountinfo(strings.NewReader(mi))
	if err != nil {
		t.Fatal(err)
	}
	if !all[1].IsShoalTree() || all[0].IsShoalTree() || all[1].IsErofs() || all[1].IsShoalFUSE() {
		t.Fatal("IsShoalTree wrong")
	}
	var got []int
	for _, in := range Select(all, "/var/lib/shoal") {
		got = append(got, in.ID)
	}
	if want := []int{52, 50, 35}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Select = %v, want %v", got, want)
	}
}
