package chunkstore

import "github.com/shoal-p2p/shoal/chunk"

// SetSyncData replaces fdatasync for a test and returns the function that restores it.
func SetSyncData(f func(fd int) error) (restore func()) {
	old := syncData
	syncData = f
	return func() { syncData = old }
}

// BulkMarkPresent records every chunk of a registered blob as present without writing data: it
// builds large indexes for the scale measurement quickly.
func BulkMarkPresent(s *Store, m *chunk.Manifest) error {
	b, err := s.blob(m.Blob)
	if err != nil {
		return err
	}
	s.idxMu.Lock()
	defer s.idxMu.Unlock()
	wb := s.db.NewWriteBatch()
	var sum int64
	for _, c := range m.Chunks {
		_ = wb.Set(presentKey(b.digest, c.Offset), encodePresent(c.Length, c.CID))
		_ = wb.Set(cidKey(c.CID, b.digest, c.Offset), be64(c.Length))
		sum += c.Length
	}
	b.presentBytes.Add(sum)
	b.presentChunks.Add(int64(len(m.Chunks)))
	s.used.Add(sum)
	_ = wb.Set(blobKey(b.digest), encodeBlobRecord(b.record()))
	return wb.Flush()
}
