package snapshotter

import (
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/shoal-p2p/shoal/bootstrap"
)

// FuzzParseLayer: any labels give a layer or an error, never a panic; a Shoal layer always has a
// known role and a valid bootstrap digest.
func FuzzParseLayer(f *testing.F) {
	f.Add("sha256:abc", bootstrap.RoleBootstrap, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "r")
	f.Add("", "", "", "")
	f.Add("x", "blob", "sha256:", "")
	f.Fuzz(func(t *testing.T, target, role, boot, ref string) {
		labels := map[string]string{snapshots.LabelSnapshotRef: target, LabelImageRef: ref}
		if role != "" {
			labels[bootstrap.AnnotationSnapshotRole] = role
		}
		if boot != "" {
			labels[bootstrap.AnnotationSnapshotBootstrap] = boot
		}
		l, err := parseLayer(labels)
		if err != nil {
			return
		}
		if l.shoal() {
			if err := l.bootstrap.Validate(); err != nil {
				t.Fatalf("Shoal layer with bootstrap %q: %v", l.bootstrap, err)
			}
			if l.role != bootstrap.RoleBootstrap && l.role != bootstrap.RoleBlob && l.role != bootstrap.RoleChunks {
				t.Fatalf("role %q accepted", l.role)
			}
		}
		if l.target != target {
			t.Fatalf("target %q, want %q", l.target, target)
		}
	})
}
