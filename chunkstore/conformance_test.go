package chunkstore_test

import (
	"testing"

	"github.com/shoal-p2p/shoal/chunkstore"
	"github.com/shoal-p2p/shoal/chunkstore/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		dir := t.TempDir()
		s, err := chunkstore.Open(dir, chunkstore.DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Error(err)
			}
		})
		return s
	})
}

var _ storetest.Store = (*chunkstore.Store)(nil)
