package convert

import (
	"fmt"
	"path"
	"strings"

	"github.com/shoal-p2p/shoal/bootstrap"
)

// apply applies one layer's changes to the merged tree as a runtime applies a layer
// (image-spec layer.md): first the whiteouts and opaque directories, which remove entries of the
// lower layers only, then the entries in tar order. An entry replaces what is at its path unless
// both are directories, in which case the directory keeps its entries and takes the new
// metadata. A hard link names the node its target is at that point (in this layer or below);
// a missing target is an error.
func apply(t *bootstrap.Tree, d *layerDiff) error {
	for _, p := range d.whiteouts {
		dir, base := path.Split(p)
		if parent := t.Lookup(dir); parent != nil && parent.IsDir() {
			delete(parent.Children, base)
		}
	}
	for _, p := range d.opaques {
		if n := t.Lookup(p); n != nil && n.IsDir() {
			n.Children = map[string]*bootstrap.Node{}
		}
	}
	for _, e := range d.entries {
		if e.path == "" {
			mergeDir(t.Root, e.node)
			continue
		}
		dir, base := path.Split(e.path)
		parent, err := ensureDir(t, strings.TrimSuffix(dir, "/"))
		if err != nil {
			return fmt.Errorf("entry %q: %w", e.path, err)
		}
		if e.node == nil {
			target := t.Lookup(e.linkPath)
			if target == nil {
				return fmt.Errorf("hard link %q: target %q does not exist: %w", e.path, e.linkPath, ErrBadLayer)
			}
			if target.IsDir() {
				return fmt.Errorf("hard link %q: target %q is a directory: %w", e.path, e.linkPath, ErrBadLayer)
			}
			parent.Children[base] = target
			continue
		}
		if old := parent.Children[base]; old != nil && old.IsDir() && e.node.IsDir() {
			mergeDir(old, e.node)
			continue
		}
		parent.Children[base] = e.node
	}
	return nil
}

// mergeDir gives an existing directory the metadata of a new entry for it; xattrs add to the
// ones it has (extracting a directory over one sets attributes, it does not clear them).
func mergeDir(old, n *bootstrap.Node) {
	old.Mode, old.UID, old.GID, old.Mtime, old.MtimeNsec = n.Mode, n.UID, n.GID, n.Mtime, n.MtimeNsec
	for k, v := range n.Xattrs {
		if old.Xattrs == nil {
			old.Xattrs = map[string][]byte{}
		}
		old.Xattrs[k] = v
	}
}

// ensureDir returns the directory at p, creating missing ones (0755, root-owned, as runtimes do
// for a tar that does not list a parent). A non-directory on the way is an error.
func ensureDir(t *bootstrap.Tree, p string) (*bootstrap.Node, error) {
	n := t.Root
	if p == "" {
		return n, nil
	}
	walked := ""
	for _, c := range strings.Split(p, "/") {
		walked = path.Join(walked, c)
		next := n.Children[c]
		if next == nil {
			next = bootstrap.NewDir(0o755)
			n.Children[c] = next
		} else if !next.IsDir() {
			return nil, fmt.Errorf("parent %q is not a directory: %w", walked, ErrBadLayer)
		}
		n = next
	}
	return n, nil
}
