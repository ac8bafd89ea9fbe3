package p2p

import (
	"sync"

	"github.com/shoal-p2p/shoal/chunk"

	"github.com/ipfs/go-cid"
)

// recentMaxBytes bounds the recent-chunks buffer.
const recentMaxBytes = 64 << 20

// recentChunks keeps the last chunks this host fetched, first in first out, up to
// recentMaxBytes. Between Fetch returning and the caller storing and announcing a chunk, a peer
// sent here by the rendezvous hash would otherwise find nothing and go to the origin itself.
type recentChunks struct {
	mu    sync.Mutex
	data  map[cid.Cid]recentChunk
	order []cid.Cid
	bytes int
}

// recentChunk is a chunk's bytes and where this host got them.
type recentChunk struct {
	data chunk.Verified
	src  chunk.Source
}

func (r *recentChunks) add(c cid.Cid, b chunk.Verified, src chunk.Source) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.data == nil {
		r.data = map[cid.Cid]recentChunk{}
	}
	if _, ok := r.data[c]; ok {
		return
	}
	r.data[c] = recentChunk{b, src}
	r.order = append(r.order, c)
	r.bytes += int(b.Len())
	for r.bytes > recentMaxBytes && len(r.order) > 0 {
		old := r.order[0]
		r.order = r.order[1:]
		r.bytes -= int(r.data[old].data.Len())
		delete(r.data, old)
	}
}

// get returns a recent chunk's bytes and source, or the zero Verified.
func (r *recentChunks) get(c cid.Cid) (chunk.Verified, chunk.Source) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rc := r.data[c]
	return rc.data, rc.src
}
