package daemon

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/p2p"
)

// metaFlights coalesces the origin fetches of image metadata (chunk manifests, bootstraps: every
// non-data layer of a Shoal image) between this host's loads and the peers that ask this host as
// an object's rendezvous owner (p2p.ObjectThroughProtocol). When a deployment starts on many
// hosts at once no peer has registered the image yet, so none can serve its metadata
// (metadataFromPeers); instead each object is fetched from the origin by its owner alone, and
// the others take it from the owner.
//
// An object is known while a load that names it runs (expect): the load's fetcher says how to
// fetch it from its origin. The first fetch of a known object, by the load itself or for a peer,
// is a flight the others wait on; its result stays until the last load that named it ends, so a
// load reaching an object after a peer's request fetched it finds it here. A peer's request for
// an object not known yet waits up to objectThroughWait while this host is loading something
// (hosts starting together reach the manifest within milliseconds of each other), and is "not
// found" at once when it is not: an idle owner costs the asker a round trip, not a wait.
type metaFlights struct {
	mu      sync.Mutex
	known   map[digest.Digest]*metaObject
	loads   int           // loads running
	changed chan struct{} // closed and replaced when known or loads change
}

// metaObject is one known object: how to fetch it, who named it, its flight once started.
type metaObject struct {
	fetch func(context.Context) ([]byte, error) // from the origin; checks nothing
	max   int64
	refs  int // loads that named it and have not ended

	started bool
	done    chan struct{} // closed when the flight ends
	data    []byte        // matches the digest; set before done closes
	err     error
}

// objectThroughWait bounds how long a peer's request waits for a running load to name an object.
const objectThroughWait = time.Second

// metaFlightTimeout bounds one origin fetch of a metadata object, whoever waits for it.
const metaFlightTimeout = 2 * time.Minute

func newMetaFlights() *metaFlights {
	return &metaFlights{known: map[digest.Digest]*metaObject{}, changed: make(chan struct{})}
}

func (m *metaFlights) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// beginLoad counts a load as running until end is called.
func (m *metaFlights) beginLoad() (end func()) {
	if m == nil {
		return func() {}
	}
	m.mu.Lock()
	m.loads++
	m.notifyLocked()
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		m.loads--
		m.notifyLocked()
		m.mu.Unlock()
	}
}

// expect makes object d (at most max bytes) known until release: fetched by fetch from the
// origin when this host or a peer first wants it.
func (m *metaFlights) expect(d digest.Digest, max int64, fetch func(context.Context) ([]byte, error)) (release func()) {
	if m == nil {
		return func() {}
	}
	m.mu.Lock()
	o := m.known[d]
	if o == nil {
		o = &metaObject{fetch: fetch, max: max, done: make(chan struct{})}
		m.known[d] = o
		m.notifyLocked()
	}
	o.refs++
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		// known[d] may be a later entry than o (a failed flight is replaced): it has o's refs.
		if cur := m.known[d]; cur != nil {
			if cur.refs--; cur.refs == 0 {
				delete(m.known, d) // a running flight still ends for whoever waits on it
			}
		}
	}
}

// knows reports whether object d is known: named by a running load.
func (m *metaFlights) knows(d digest.Digest) bool {
	if m == nil {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.known[d] != nil
}

// get returns known object d, fetching it from the origin once for every caller; ok is false if
// d is not known. ctx bounds the wait, not the flight.
func (m *metaFlights) get(ctx context.Context, d digest.Digest) (data []byte, ok bool, err error) {
	if m == nil {
		return nil, false, nil
	}
	m.mu.Lock()
	o := m.known[d]
	if o == nil {
		m.mu.Unlock()
		return nil, false, nil
	}
	if !o.started {
		o.started = true
		go m.fly(d, o)
	}
	m.mu.Unlock()
	select {
	case <-o.done:
		return o.data, true, o.err
	case <-ctx.Done():
		return nil, true, ctx.Err()
	}
}

// fly runs o's flight. A failed flight is forgotten, so the next caller tries again.
func (m *metaFlights) fly(d digest.Digest, o *metaObject) {
	ctx, cancel := context.WithTimeout(context.Background(), metaFlightTimeout)
	defer cancel()
	b, err := o.fetch(ctx)
	switch {
	case err != nil:
	case int64(len(b)) > o.max:
		err = fmt.Errorf("object %s: %d bytes, more than the %d it may be", d, len(b), o.max)
	case digest.SHA256.FromBytes(b) != d:
		err = fmt.Errorf("object %s from the origin: content does not match: %w", d, chunk.ErrCorrupt)
	}
	m.mu.Lock()
	if err != nil {
		if m.known[d] == o {
			// Let the next caller start a new flight, with the same fetch and references.
			m.known[d] = &metaObject{fetch: o.fetch, max: o.max, refs: o.refs, done: make(chan struct{})}
		}
	} else {
		o.data = b
	}
	o.err = err
	m.mu.Unlock()
	close(o.done)
}

// forPeer is p2p.ObjectFetcher's FetchObjectFor: known object d, or, while a load runs, d once a
// load names it within objectThroughWait.
func (m *metaFlights) forPeer(ctx context.Context, d digest.Digest, max int64) ([]byte, bool, error) {
	if m == nil {
		return nil, false, nil
	}
	wait := time.NewTimer(objectThroughWait)
	defer wait.Stop()
	for {
		m.mu.Lock()
		o, loads, changed := m.known[d], m.loads, m.changed
		m.mu.Unlock()
		if o != nil {
			return m.get(ctx, d) // the node refuses an answer over max
		}
		if loads == 0 {
			return nil, false, nil
		}
		select {
		case <-changed:
		case <-wait.C:
			return nil, false, nil
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

// FetchObjectFor serves peers that ask this host as an object's owner (p2p.ObjectFetcher).
func (n nodeLocal) FetchObjectFor(ctx context.Context, d digest.Digest, max int64) ([]byte, bool, error) {
	return n.flights.forPeer(ctx, d, max)
}

var _ p2p.ObjectFetcher = nodeLocal{}
