package p2p

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-p2p/shoal/internal/scope"

	"github.com/hashicorp/memberlist"
	"github.com/ipfs/go-cid"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	madns "github.com/multiformats/go-multiaddr-dns"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/shoal-p2p/shoal/chunk"
	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

// LocalChunks is what this host serves to peers: the chunk store's read side.
type LocalChunks interface {
	// HasCID reports whether the chunk is held; an error means the store could not tell.
	HasCID(c cid.Cid) (bool, error)
	// ReadChunk returns the chunk's bytes, verified against c (disks rot; a peer that sent bad
	// bytes would be banned).
	ReadChunk(ctx context.Context, c cid.Cid) (chunk.Verified, error)
}

// ChunkWriter is an optional capability of LocalChunks, found by type assertion. With it, chunks
// this host fetches from its origin on behalf of peers (fetch-through) are stored, so the host
// keeps serving them; the store's ChunkAdded event then reaches Announce as for any chunk. It must
// accept the same chunk twice.
type ChunkWriter interface {
	PutChunk(ctx context.Context, blob digest.Digest, c chunk.Chunk, data chunk.Verified) error
}

// RawChunks is an optional capability of LocalChunks, found by type assertion: a held chunk's
// bytes without ReadChunk's verification. A ChunkProtocolV4 request that wants some sub-blocks
// first is answered from them, the chunk verified against its CID after those sub-blocks are out
// and before the rest is sent (a copy that fails is read again through ReadChunk, which drops
// it, and the answer ends with PartAbort), so the reader does not wait for the sender's hash of
// the whole chunk.
type RawChunks interface {
	ReadChunkUnverified(ctx context.Context, c cid.Cid) ([]byte, error)
}

// OriginFunc fetches one chunk of a registered blob from this host's origin (registry). Its bytes
// are not trusted: the node verifies them (once) before any use.
type OriginFunc func(ctx context.Context, c chunk.Chunk) ([]byte, error)

// Sentinel errors.
var (
	// ErrUnknownBlob: the blob was not registered with RegisterBlob.
	ErrUnknownBlob = errors.New("p2p: blob not registered")
	// ErrClosed: the node was closed.
	ErrClosed = errors.New("p2p: node closed")
)

// localBlob is a registered blob: its manifest, origin, and which chunks this host holds.
type localBlob struct {
	m      *chunk.Manifest
	origin OriginFunc
	have   []byte
	nhave  int // bits set in have
	// Super-seeding: uploads of each chunk index to requesters that had other holders (nil until
	// the first), and their sum.
	served      []uint32
	servedTotal uint64
	// lastTo is the host each chunk index was last uploaded to, and lastUntil (unix nanoseconds)
	// until when a request flagged FlagCanWait from another host is refused, because lastTo is
	// about to announce the chunk: the upload's end (RequestTimeout while it runs) plus
	// superSeedWait. Nil until the first upload.
	lastTo    []peer.ID
	lastUntil []int64
}

type chunkRef struct {
	blob digest.Digest
	idx  int
}

// Node is one Shoal host in the peer-to-peer cluster.
type Node struct {
	cfg   Config
	log   *slog.Logger
	local LocalChunks // may be nil: nothing to serve
	key   crypto.PrivKey
	id    peer.ID
	allow map[peer.ID]bool // nil: everyone
	met   *metrics
	objm  *objectMetrics // the object exchange's (object.go)
	rt    *rightsState   // pull rights of private repositories (rights.go)
	seq   atomic.Uint64
	// uploading counts chunk responses with data being written now, to every peer: the load a
	// V2 response reports.
	uploading atomic.Int64
	// slots holds one token per upload of a held chunk running (Config.UploadSlots; nil:
	// unlimited), and queued counts requests waiting for one: both are load.
	slots  chan struct{}
	queued atomic.Int64

	recent recentChunks // chunks fetched lately, served while the caller stores them
	// zenc compresses chunks for ChunkProtocolV3 peers (nil: WireCompression is 0).
	zenc *zchunk.Encoder

	sf    singleflight.Group // Fetch, per CID
	owned singleflight.Group // holders-or-origin, per CID; never asks another host to fetch through

	mu    sync.Mutex
	blobs map[digest.Digest]*localBlob
	cids  map[cid.Cid][]chunkRef
	peers map[peer.ID]*peerState
	// normal is the cluster's normal chunk latency, cached at normalAt (normalLatencyLocked).
	normal   time.Duration
	normalAt time.Time
	// presenceChanged is closed (and replaced) when a peer's presence map changes: readers
	// waiting for a chunk's next holder (awaitNewHolder) wake on it. Nil until someone waits.
	presenceChanged chan struct{}
	host            host.Host
	dht             *dht.IpfsDHT
	// ml is the membership gossip (nil: Config.Membership unset) and members the other hosts it
	// knows, by peer ID (nil without membership).
	ml      *memberlist.Memberlist
	members map[peer.ID]*member
	started bool
	kick    chan struct{} // wakes the DHT loop when a blob is registered
	// lost has one channel per redial loop, woken when a peer disconnects: a peer that restarts
	// (a daemon upgrade) is dialled again within a second or so, not after RedialInterval.
	lost []chan struct{}
	// preheater warms images for peers (PreheatProtocol); nil: refused.
	preheater Preheater
	// resolver resolves DNSAddr; nil: the system's (tests inject a mock).
	resolver *madns.Resolver
	ready    chan struct{}
	done     chan struct{}
	// scope owns every goroutine the node starts (discovery, presence writers, connects), the
	// stream handlers libp2p runs for it, and the contexts of shared fetches: Close ends and
	// waits for all of them.
	scope *scope.Scope
	// unregister removes the node's metrics from the Registerer (at Close).
	unregister func()
	unregOnce  sync.Once
}

// New makes a node. It loads (or creates) the identity key and starts nothing: call Run. local
// may be nil for a host that only fetches.
func New(cfg Config, local LocalChunks) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	key, err := loadIdentity(cfg.IdentityKeyPath)
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("p2p identity: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	n := &Node{
		cfg: cfg, log: log.With("subsystem", "p2p"), local: local, key: key, id: id,
		blobs: map[digest.Digest]*localBlob{},
		cids:  map[cid.Cid][]chunkRef{},
		peers: map[peer.ID]*peerState{},
		kick:  make(chan struct{}, 1),
		ready: make(chan struct{}),
		done:  make(chan struct{}),
		scope: scope.New(),
	}
	if cfg.Membership != nil {
		n.members = map[peer.ID]*member{}
	}
	if cfg.UploadSlots > 0 {
		n.slots = make(chan struct{}, cfg.UploadSlots)
	}
	if len(cfg.Allowlist) > 0 {
		n.allow = map[peer.ID]bool{}
		for _, p := range cfg.Allowlist {
			n.allow[p] = true
		}
	}
	n.seq.Store(uint64(time.Now().UnixNano())) // a restarted host's frames must supersede its old ones
	n.met, n.unregister, err = newMetrics(cfg.Registerer, nodeGauges{
		connected: func() float64 {
			n.mu.Lock()
			defer n.mu.Unlock()
			c := 0
			for _, ps := range n.peers {
				if ps.connected {
					c++
				}
			}
			return float64(c)
		},
		slots:       func() float64 { return float64(cap(n.slots)) },
		slotsBusy:   func() float64 { return float64(len(n.slots)) },
		slotsQueued: func() float64 { return float64(n.queued.Load()) },
	})
	if err != nil {
		return nil, err
	}
	if cfg.WireCompression != 0 {
		if n.zenc, err = zchunk.NewEncoder(cfg.WireCompression); err != nil {
			n.unregister()
			return nil, fmt.Errorf("p2p: %w", err)
		}
	}
	if err := n.initObjects(cfg.Registerer); err != nil {
		n.unregister()
		return nil, err
	}
	if err := n.initRights(cfg.Registerer); err != nil {
		n.unregister()
		return nil, err
	}
	return n, nil
}

// ID is this host's peer ID.
func (n *Node) ID() peer.ID { return n.id }

// Ready is closed once Run has the host listening.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Addrs are this host's listen multiaddrs ending in /p2p/<id>, as given to other hosts' --peer.
// Empty before Ready.
func (n *Node) Addrs() []ma.Multiaddr {
	n.mu.Lock()
	h := n.host
	n.mu.Unlock()
	if h == nil {
		return nil
	}
	out, _ := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: n.id, Addrs: h.Addrs()})
	return out
}

// Run starts the host, discovery and protocol handlers and serves until ctx ends or Close.
func (n *Node) Run(ctx context.Context) error {
	n.mu.Lock()
	if n.started || n.scope.Closed() {
		n.mu.Unlock()
		return errors.New("p2p: Run called twice or after Close")
	}
	n.started = true
	n.mu.Unlock()
	defer close(n.done)
	stop := context.AfterFunc(ctx, n.scope.Cancel)
	defer stop()
	life := n.scope.Context()

	var h host.Host
	var err error
	if n.cfg.hostFunc != nil {
		h, err = n.cfg.hostFunc(n.key)
	} else {
		h, err = n.newHost()
	}
	if err != nil {
		n.scope.Close()
		return err
	}
	h.Network().Notify(&network.NotifyBundle{ConnectedF: n.onConnected, DisconnectedF: n.onDisconnected})
	for v, id := range chunkProtocols {
		if v < n.chunkVersion() {
			h.SetStreamHandler(id, n.chunkHandler(v+1))
		}
	}
	h.SetStreamHandler(PresenceProtocol, n.handlePresence)
	h.SetStreamHandler(ObjectProtocol, n.handleObject)
	h.SetStreamHandler(ObjectThroughProtocol, n.handleObject)
	h.SetStreamHandler(RightsProtocol, n.handleRights)
	h.SetStreamHandler(BlobProtocol, n.handleBlob)
	h.SetStreamHandler(PreheatProtocol, n.handlePreheat)
	if n.cfg.BlobThrough {
		h.SetStreamHandler(BlobThroughProtocol, n.handleBlobThrough)
	}
	n.mu.Lock()
	n.host = h
	n.mu.Unlock()
	n.scope.Go(n.drainRecent)
	if n.cfg.IdentityListen != "" {
		if err := n.serveIdentity(life, h); err != nil {
			n.shutdown(h)
			return err
		}
	}
	if err := n.startDiscovery(life, h); err != nil {
		n.shutdown(h)
		return err
	}
	if n.cfg.Membership != nil {
		if err := n.startMembership(life); err != nil {
			n.shutdown(h)
			return err
		}
	}
	if n.cfg.Rights != nil {
		n.scope.Go(n.rightsLoop)
	}
	n.log.Info("p2p host listening", "id", n.id, "addrs", n.Addrs())
	close(n.ready)
	<-life.Done()
	n.shutdown(h)
	return nil
}

// shutdown ends the node's scope, closes the DHT and the host (which ends the streams its
// handlers and presence writers block on), then waits for every goroutine of the scope.
func (n *Node) shutdown(h host.Host) {
	n.scope.Cancel()
	n.mu.Lock()
	d := n.dht
	n.mu.Unlock()
	if d != nil {
		_ = d.Close()
	}
	_ = h.Close()
	n.scope.Wait()
}

// Close stops Run and waits for it and for everything the node started. A node is not reusable.
func (n *Node) Close() error {
	n.mu.Lock()
	started := n.started
	n.mu.Unlock()
	n.scope.Cancel()
	if started {
		<-n.done
	}
	n.scope.Wait()
	n.unregOnce.Do(n.unregister)
	return nil
}

// goFn runs f in a goroutine of the node's scope, unless the node is shutting down.
func (n *Node) goFn(f func()) bool {
	return n.scope.Go(func(context.Context) { f() })
}

// RegisterBlob makes this host a member of blob's swarm: it learns the manifest (to map chunks to
// presence bits), tells connected peers, advertises the blob in the DHT, and, if origin is not
// nil, becomes a candidate to fetch the blob's chunks from the origin for the cluster. Calling it
// again replaces the origin and keeps what the host holds.
func (n *Node) RegisterBlob(m *chunk.Manifest, origin OriginFunc) error {
	if m == nil || len(m.Chunks) > MaxBlobChunks {
		return fmt.Errorf("p2p: register blob: nil manifest or over %d chunks", MaxBlobChunks)
	}
	n.mu.Lock()
	lb := n.blobs[m.Blob]
	if lb == nil {
		lb = &localBlob{m: m, have: make([]byte, (len(m.Chunks)+7)/8)}
		n.blobs[m.Blob] = lb
		for i, c := range m.Chunks {
			n.cids[c.CID] = append(n.cids[c.CID], chunkRef{m.Blob, i})
		}
	}
	lb.origin = origin
	n.markDirtyLocked(m.Blob)
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
	return nil
}

// Forget drops a blob (its image was removed): peers forget this host for it.
func (n *Node) Forget(blob digest.Digest) {
	n.mu.Lock()
	defer n.mu.Unlock()
	lb := n.blobs[blob]
	if lb == nil {
		return
	}
	delete(n.blobs, blob)
	for _, c := range lb.m.Chunks {
		refs := slices.DeleteFunc(n.cids[c.CID], func(r chunkRef) bool { return r.blob == blob })
		if len(refs) == 0 {
			delete(n.cids, c.CID)
		} else {
			n.cids[c.CID] = refs
		}
	}
	n.markDirtyLocked(blob)
}

// Announce tells peers this host now holds chunks of blob (written to the store and verified).
// Peers learn of it within milliseconds on a LAN.
func (n *Node) Announce(blob digest.Digest, chunks ...chunk.Chunk) error {
	for _, c := range chunks {
		n.recent.dropData(c.CID) // the store serves it now
	}
	return n.setHave(blob, true, chunks)
}

// Withdraw tells peers this host no longer holds chunks of blob (evicted).
func (n *Node) Withdraw(blob digest.Digest, chunks ...chunk.Chunk) error {
	return n.setHave(blob, false, chunks)
}

func (n *Node) setHave(blob digest.Digest, have bool, chunks []chunk.Chunk) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	lb := n.blobs[blob]
	if lb == nil {
		return fmt.Errorf("announce chunks of %s: %w", blob, ErrUnknownBlob)
	}
	changed := false
	for _, c := range chunks {
		i := chunkIndex(lb.m, c)
		if i < 0 {
			return fmt.Errorf("announce chunk %s at %d: not in the manifest of %s", c.CID, c.Offset, blob)
		}
		old := lb.have[i/8]
		if have {
			lb.have[i/8] |= 1 << (i % 8)
		} else {
			lb.have[i/8] &^= 1 << (i % 8)
		}
		if old != lb.have[i/8] {
			changed = true
			if have {
				lb.nhave++
			} else {
				lb.nhave--
			}
		}
	}
	if changed {
		n.markDirtyLocked(blob)
	}
	return nil
}

// chunkIndex finds c in m by offset and checks its CID; -1 if absent.
func chunkIndex(m *chunk.Manifest, c chunk.Chunk) int {
	i := sort.Search(len(m.Chunks), func(i int) bool { return m.Chunks[i].Offset >= c.Offset })
	if i < len(m.Chunks) && m.Chunks[i].Offset == c.Offset && m.Chunks[i].CID.Equals(c.CID) {
		return i
	}
	return -1
}

// Lookup returns the connected, unbanned peers whose presence maps say they hold the chunk, in
// any registered blob that contains it.
func (n *Node) Lookup(c cid.Cid) []peer.ID {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.holdersLocked(c, time.Now())
}

func (n *Node) holdersLocked(c cid.Cid, now time.Time) []peer.ID {
	return n.holdersWhereLocked(c, func(ps *peerState) bool { return !ps.banned(now) })
}

// holdersWhereLocked is the connected peers for which ok holds whose presence maps say they
// hold c; n.mu must be held.
func (n *Node) holdersWhereLocked(c cid.Cid, ok func(*peerState) bool) []peer.ID {
	refs := n.cids[c]
	if len(refs) == 0 {
		return nil
	}
	var out []peer.ID
	for _, ps := range n.peers {
		if !ps.connected || !ok(ps) {
			continue
		}
		for _, r := range refs {
			if ps.blobs[r.blob].has(r.idx) {
				out = append(out, ps.id)
				break
			}
		}
	}
	return out
}

// Holders returns, for each of chunks (of blob), how many connected, unbanned peers hold it: the
// availability a prefetch orders by, rarest first (demand's Availability).
func (n *Node) Holders(blob digest.Digest, chunks []chunk.Chunk) []int {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]int, len(chunks))
	lb := n.blobs[blob]
	if lb == nil {
		return out
	}
	now := time.Now()
	idx := make([]int, len(chunks))
	for k, c := range chunks {
		idx[k] = chunkIndex(lb.m, c)
	}
	for _, ps := range n.peers {
		rb := ps.blobs[blob]
		if !ps.connected || rb == nil || ps.banned(now) {
			continue
		}
		for k, i := range idx {
			if rb.has(i) {
				out[k]++
			}
		}
	}
	return out
}

// Holding reports how many chunks of blob this host has announced.
func (n *Node) Holding(blob digest.Digest) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	lb := n.blobs[blob]
	if lb == nil {
		return 0
	}
	c := 0
	for _, b := range lb.have {
		for ; b != 0; b &= b - 1 {
			c++
		}
	}
	return c
}

// SwarmSize is how many connected peers have told this host they can fetch blob from an origin:
// the candidates, with this host, of the coalescing rendezvous.
func (n *Node) SwarmSize(blob digest.Digest) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.fetchersLocked(blob, time.Now()))
}

func (n *Node) fetchersLocked(blob digest.Digest, now time.Time) []peer.ID {
	var out []peer.ID
	for _, ps := range n.peers {
		if ps.connected && !ps.banned(now) && ps.blobs[blob] != nil && ps.blobs[blob].canFetch {
			out = append(out, ps.id)
		}
	}
	return out
}
