package p2p

import (
	"sync"

	"github.com/ipfs/go-cid"
)

// recentMaxBytes bounds the recent-chunks buffer.
const recentMaxBytes = 64 << 20

// recentChunks keeps the last chunks this host fetched, first in first out, up to
// recentMaxBytes. Between Fetch returning and the caller storing and announcing a chunk, a peer
// sent here by the rendezvous hash would otherwise find nothing and go to the origin itself.
type recentChunks struct {
	mu    sync.Mutex
	data  map[cid.Cid][]byte
	order []cid.Cid
	bytes int
}

func (r *recentChunks) add(c cid.Cid, b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.data == nil {
		r.data = map[cid.Cid][]byte{}
	}
	if _, ok := r.data[c]; ok {
		return
	}
	r.data[c] = b
	r.order = append(r.order, c)
	r.bytes += len(b)
	for r.bytes > recentMaxBytes && len(r.order) > 0 {
		old := r.order[0]
		r.order = r.order[1:]
		r.bytes -= len(r.data[old])
		delete(r.data, old)
	}
}

func (r *recentChunks) get(c cid.Cid) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.data[c]
}
