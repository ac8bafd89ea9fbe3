package chunkstore

// SetSyncData replaces fdatasync for a test and returns the function that restores it.
func SetSyncData(f func(fd int) error) (restore func()) {
	old := syncData
	syncData = f
	return func() { syncData = old }
}
