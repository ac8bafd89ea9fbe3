package bootstrap

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// File type bits of a Node's Mode (st_mode), as the kernel and tar use them.
const (
	ModeTypeMask = 0o170000
	ModeSocket   = 0o140000
	ModeSymlink  = 0o120000
	ModeRegular  = 0o100000
	ModeBlock    = 0o060000
	ModeDir      = 0o040000
	ModeChar     = 0o020000
	ModeFifo     = 0o010000
)

// Tree is a filesystem tree to be written as an EROFS bootstrap (WriteEROFS): the metadata of every
// entry and, for regular files, where each chunk of their data lives in the data blobs.
//
// A Node reachable under several names is one inode with that many links (a hard link group);
// directories may be reachable only once.
type Tree struct {
	Root *Node
}

// NewTree returns a tree with an empty root directory owned by root, mode 0755.
func NewTree() *Tree { return &Tree{Root: NewDir(0o755)} }

// NewDir returns an empty directory node with the given permission bits.
func NewDir(perm uint32) *Node {
	return &Node{Mode: ModeDir | perm&0o7777, Children: map[string]*Node{}}
}

// Node is one inode of a Tree.
type Node struct {
	Mode      uint32 // st_mode: file type (Mode*) and permission bits, setuid/setgid/sticky included
	UID, GID  uint32
	Mtime     int64  // seconds since the epoch
	MtimeNsec uint32 // nanoseconds
	// Rdev is a device node's number as (major, minor).
	RdevMajor, RdevMinor uint32
	// Xattrs are the extended attributes, full names ("user.x", "security.capability").
	Xattrs map[string][]byte
	// Target is a symlink's target, stored verbatim (never resolved).
	Target string
	// Size and Chunks describe a regular file's data: Chunks[i] holds bytes
	// [i*chunkSize, (i+1)*chunkSize) of the file.
	Size   int64
	Chunks []ChunkRef
	// Children are a directory's entries by name ("." and ".." are implied).
	Children map[string]*Node
}

// ChunkRef says where one chunk of a regular file lives: at byte Offset (block-aligned) of extra
// device Device (1 for the first data blob), or nowhere (Hole: the chunk reads as zeros).
type ChunkRef struct {
	Device int
	Offset int64
	Hole   bool
}

// IsDir reports whether n is a directory.
func (n *Node) IsDir() bool { return n.Mode&ModeTypeMask == ModeDir }

// IsRegular reports whether n is a regular file.
func (n *Node) IsRegular() bool { return n.Mode&ModeTypeMask == ModeRegular }

// ErrBadName is wrapped by errors about names EROFS cannot hold.
var ErrBadName = errors.New("bad file name")

// CheckName checks one path component: non-empty, at most 255 bytes, no '/' or NUL, not "." or "..".
func CheckName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("name %q: %w", name, ErrBadName)
	case len(name) > maxNameLen:
		return fmt.Errorf("name %.40q... is %d bytes, more than %d: %w", name, len(name), maxNameLen, ErrBadName)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("name %q contains '/' or NUL: %w", name, ErrBadName)
	}
	return nil
}

// Lookup returns the node at the slash-separated path p (relative to the root; "" is the root),
// or nil.
func (t *Tree) Lookup(p string) *Node {
	n := t.Root
	for _, c := range splitPath(p) {
		if n == nil || !n.IsDir() {
			return nil
		}
		n = n.Children[c]
	}
	return n
}

func splitPath(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// sortedNames returns a directory's entry names in the byte order EROFS requires.
func sortedNames(n *Node) []string {
	names := make([]string, 0, len(n.Children))
	for k := range n.Children {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}
