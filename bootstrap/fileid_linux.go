package bootstrap

import (
	"io/fs"
	"syscall"
)

// fileID identifies a file by device and inode, so hard links are counted once.
func fileID(info fs.FileInfo) ([2]uint64, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return [2]uint64{}, false
	}
	return [2]uint64{uint64(st.Dev), st.Ino}, true
}
