package p2p

import (
	"context"
	"sync"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/shoal-p2p/shoal/chunk"
)

const (
	// recentMaxBytes bounds the recent-chunks buffer (chunk bytes and wire frames together).
	recentMaxBytes = 64 << 20
	// recentMaxAge is how long an entry stays. Its first use is the milliseconds between Fetch
	// returning and the caller storing and announcing the chunk; its second is serving the
	// same chunk again to the peers of a swarm reading together, which ask within seconds.
	// Past it the buffer drains, so an idle host holds none of it.
	recentMaxAge = 10 * time.Second
)

// recentChunks keeps the chunks this host fetched until it stores them (Announce lets their
// bytes go), and the wire frames of chunks it fetched or served compressed, first in first out,
// up to recentMaxBytes and for recentMaxAge.
// Between Fetch returning and the caller storing and announcing a chunk, a peer sent here by the
// rendezvous hash would otherwise find nothing and go to the origin itself; and a chunk that
// arrived as a zstd frame (or was compressed here for one peer) is sent to the next peer as that
// frame, without compressing it again.
type recentChunks struct {
	mu    sync.Mutex
	data  map[cid.Cid]*recentChunk
	order []cid.Cid // by the time of the entry's first add
	bytes int
}

// recentChunk is what the buffer knows of one chunk: its bytes and where this host got them, or
// its wire form, or both.
type recentChunk struct {
	data chunk.Verified // zero: only the wire form is kept (a chunk served from the store)
	src  chunk.Source
	// frame is the chunk's zstd frame (as it arrived, or as this host compressed it); nil with
	// raw set: compressing it does not pay, send it raw; nil without raw: not known.
	frame []byte
	raw   bool
	at    time.Time
}

func (rc *recentChunk) size() int { return int(rc.data.Len()) + len(rc.frame) }

// add records a chunk's bytes and source, and its wire frame if it came as one (nil otherwise).
func (r *recentChunks) add(c cid.Cid, b chunk.Verified, frame []byte, src chunk.Source) {
	r.put(c, recentChunk{data: b, src: src, frame: frame}, time.Now())
}

// addFrame records the wire form of a chunk served from elsewhere (the store): its zstd frame,
// or raw when compressing it does not pay.
func (r *recentChunks) addFrame(c cid.Cid, frame []byte, raw bool) {
	r.put(c, recentChunk{frame: frame, raw: raw}, time.Now())
}

// put adds an entry or fills in what an existing one lacks, then trims the buffer to its cap.
func (r *recentChunks) put(c cid.Cid, e recentChunk, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.data == nil {
		r.data = map[cid.Cid]*recentChunk{}
	}
	if old, ok := r.data[c]; ok {
		before := old.size()
		if old.data.IsZero() && !e.data.IsZero() {
			old.data, old.src = e.data, e.src
		}
		if old.frame == nil && !old.raw {
			old.frame, old.raw = e.frame, e.raw
		}
		r.bytes += old.size() - before
	} else {
		e.at = now
		r.data[c] = &e
		r.order = append(r.order, c)
		r.bytes += e.size()
	}
	for r.bytes > recentMaxBytes && len(r.order) > 0 {
		r.popLocked()
	}
}

// popLocked drops the oldest entry; the backing array and the map are let go once the buffer is
// empty, so an idle buffer holds no memory at all.
func (r *recentChunks) popLocked() {
	old := r.order[0]
	r.order = r.order[1:]
	if e, ok := r.data[old]; ok {
		r.bytes -= e.size()
		delete(r.data, old)
	}
	if len(r.order) == 0 {
		r.order, r.data, r.bytes = nil, nil, 0
	}
}

// dropData lets go of a chunk's bytes once the local store holds it (Announce): from then on the
// store serves it, so the buffer keeps only its wire form. A receiver streaming an image then holds
// the chunks between fetch and store, not the last recentMaxBytes of them: its heap stays a few
// chunks deep instead of growing by 64 MiB and faulting in fresh pages for every chunk.
func (r *recentChunks) dropData(c cid.Cid) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.data[c]
	if e == nil || e.data.IsZero() {
		return
	}
	r.bytes -= int(e.data.Len())
	e.data, e.src = chunk.Verified{}, ""
	if e.frame == nil && !e.raw {
		delete(r.data, c) // its place in order is skipped when reached
	}
}

// get returns a recent chunk's bytes and source, or the zero Verified.
func (r *recentChunks) get(c cid.Cid) (chunk.Verified, chunk.Source) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.data[c]; e != nil {
		return e.data, e.src
	}
	return chunk.Verified{}, ""
}

// wire returns what is known of a chunk's wire form: its zstd frame, or raw (compressing it
// does not pay); known is false when neither is recorded.
func (r *recentChunks) wire(c cid.Cid) (frame []byte, raw, known bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.data[c]
	if e == nil || e.frame == nil && !e.raw {
		return nil, false, false
	}
	return e.frame, e.raw, true
}

// expire drops the entries added before now-maxAge and reports how many entries remain.
func (r *recentChunks) expire(now time.Time, maxAge time.Duration) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.order) > 0 {
		e := r.data[r.order[0]]
		if e != nil && now.Sub(e.at) < maxAge {
			break
		}
		r.popLocked()
	}
	// Compact the queue when most of its backing array is behind it.
	if cap(r.order) > 64 && cap(r.order) > 4*len(r.order) {
		r.order = append([]cid.Cid(nil), r.order...)
	}
	return len(r.order)
}

// size is the buffer's entries and bytes.
func (r *recentChunks) size() (entries, bytes int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.data), r.bytes
}

// drainRecent ages the recent buffer out until ctx ends (a goroutine of the node's scope).
func (n *Node) drainRecent(ctx context.Context) {
	t := time.NewTicker(recentMaxAge / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n.recent.expire(now, recentMaxAge)
		}
	}
}
