package snapshotter

import (
	"fmt"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/bootstrap"
)

// Labels a snapshot's Prepare carries, and the ones this snapshotter keeps on what it commits.
const (
	// LabelImageRef is the image reference CRI (with disable_snapshot_annotations = false) and
	// containerd 2.x's transfer service (with enable_remote_snapshot_annotations) put on every
	// layer's Prepare. The daemon loads the image from it.
	LabelImageRef = "containerd.io/snapshot/cri.image-ref"
	// LabelShoalRef, when present, names the image for the daemon instead of LabelImageRef: a
	// client that knows the Shoal image's own reference (a registry tag or a layout directory)
	// sets it.
	LabelShoalRef = "containerd.io/snapshot/shoal.ref"

	// labelOwnPrefix marks the labels this snapshotter relies on; Update keeps them.
	labelOwnPrefix = "containerd.io/snapshot/shoal."
)

// layer is what the labels of a Prepare say about the layer being unpacked.
type layer struct {
	role      string        // bootstrap.RoleBootstrap, RoleBlob or RoleChunks; "" for a layer of another image
	bootstrap digest.Digest // the image's bootstrap
	target    string        // containerd.io/snapshot.ref: the name to commit under
	ref       string        // where the daemon loads the image from ("" if no label gave it)
}

// shoal reports whether the layer belongs to a Shoal image.
func (l layer) shoal() bool { return l.role != "" }

// parseLayer reads a Prepare's labels. Labels that are not Shoal's give a plain layer; Shoal
// labels that are malformed are an error that names them, so that a broken image never falls
// back to a download containerd cannot apply.
func parseLayer(labels map[string]string) (layer, error) {
	l := layer{target: labels[snapshots.LabelSnapshotRef]}
	role, ok := labels[bootstrap.AnnotationSnapshotRole]
	if !ok {
		return l, nil
	}
	switch role {
	case bootstrap.RoleBootstrap, bootstrap.RoleBlob, bootstrap.RoleChunks:
	default:
		return layer{}, fmt.Errorf("%w: label %s=%q is not a Shoal layer role", ErrBadLabels, bootstrap.AnnotationSnapshotRole, role)
	}
	b := labels[bootstrap.AnnotationSnapshotBootstrap]
	d, err := digest.Parse(b)
	if err != nil {
		return layer{}, fmt.Errorf("%w: label %s=%q: %v", ErrBadLabels, bootstrap.AnnotationSnapshotBootstrap, b, err)
	}
	l.role, l.bootstrap = role, d
	l.ref = labels[LabelShoalRef]
	if l.ref == "" {
		l.ref = labels[LabelImageRef]
	}
	return l, nil
}
