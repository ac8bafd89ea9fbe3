package p2p

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"
)

// objThroughStore is an objStore whose host is loading an image: FetchObjectFor serves the objects
// it knows by "fetching" them (counted), once for all askers.
type objThroughStore struct {
	*objStore
	known   map[digest.Digest][]byte
	fetches atomic.Int64
	once    sync.Map // digest → *sync.Once
}

func (s *objThroughStore) FetchObjectFor(ctx context.Context, d digest.Digest, max int64) ([]byte, bool, error) {
	b, ok := s.known[d]
	if !ok {
		return nil, false, nil
	}
	o, _ := s.once.LoadOrStore(d, new(sync.Once))
	o.(*sync.Once).Do(func() { s.fetches.Add(1) })
	return b, true, nil
}

// startObjThroughNode runs a node that answers ObjectThrough from known, connected to peers.
func startObjThroughNode(t *testing.T, known map[digest.Digest][]byte, peers ...*Node) (*Node, *objThroughStore) {
	t.Helper()
	st := &objThroughStore{objStore: &objStore{memStore: newMemStore(), objs: map[digest.Digest][]byte{}, tags: map[string]digest.Digest{}}, known: known}
	cfg := testConfig()
	cfg.StaticPeers = append(cfg.StaticPeers, peerAddrs(peers)...)
	n := runNode(t, cfg, st, st.memStore)
	return n, st
}

// TestFetchObjectThrough: three hosts loading one image agree on each object's owner, and the
// two that do not own it take it from the owner, which fetches it once; an object the owner does
// not know is "not found" through it (the asker goes to its origin); a host that speaks only
// ObjectProtocol is never chosen as owner.
func TestFetchObjectThrough(t *testing.T) {
	obj := bytes.Repeat([]byte("chunk manifest "), 5000)
	d := digest.FromBytes(obj)
	known := map[digest.Digest][]byte{d: obj}
	a, as := startObjThroughNode(t, known)
	b, bs := startObjThroughNode(t, known, a)
	c, cs := startObjThroughNode(t, known, a, b)
	waitFor(t, 10*time.Second, "the mesh", func() bool {
		return connectedTo(a, b.ID(), c.ID())() && connectedTo(b, a.ID(), c.ID())() && connectedTo(c, a.ID(), b.ID())()
	})
	// They agree once each has identified the others' protocols.
	var owners map[peer.ID]bool
	waitFor(t, 10*time.Second, "agreement on the owner", func() bool {
		owners = map[peer.ID]bool{}
		for _, n := range []*Node{a, b, c} {
			o, self := n.ObjectOwner(d)
			owners[o] = true
			if self != (o == n.ID()) {
				t.Fatalf("ObjectOwner = %s, self %v on %s", o, self, n.ID())
			}
		}
		return len(owners) == 1
	})
	delegations := 0
	for _, n := range []*Node{a, b, c} {
		got, owner, delegated, err := n.FetchObjectThrough(t.Context(), d, 1<<20)
		if !delegated {
			if err != nil || got != nil {
				t.Fatalf("owner %s: %d bytes, %v", n.ID(), len(got), err)
			}
			continue
		}
		delegations++
		if err != nil || !bytes.Equal(got, obj) || !owners[owner] {
			t.Fatalf("%s through %s: %d bytes, %v", n.ID(), owner, len(got), err)
		}
	}
	if delegations != 2 {
		t.Fatalf("%d hosts asked the owner, want 2", delegations)
	}
	if f := as.fetches.Load() + bs.fetches.Load() + cs.fetches.Load(); f != 1 {
		t.Fatalf("the object was fetched %d times, want once, by its owner", f)
	}
	// Not known at the owner: not found, no strike.
	other := digest.FromString("not in the image")
	for _, n := range []*Node{a, b, c} {
		if _, _, delegated, err := n.FetchObjectThrough(t.Context(), other, 1<<20); delegated && !errors.Is(err, ErrObjectNotFound) {
			t.Fatalf("unknown object through its owner: %v, want ErrObjectNotFound", err)
		}
	}
	for _, n := range []*Node{a, b, c} {
		for _, st := range n.Peers() {
			if st.Banned || st.Corrupt > 0 {
				t.Fatalf("peer %s penalised by honest answers: %+v", st.ID, st)
			}
		}
	}
}

// TestObjectThroughLiar: an owner that answers ObjectThrough with other bytes has its answer
// refused and is struck; an old host (ObjectProtocol only) is never asked.
func TestObjectThroughLiar(t *testing.T) {
	obj := bytes.Repeat([]byte("bootstrap "), 5000)
	d := digest.FromBytes(obj)
	victim, _ := startObjNode(t, func(c *Config) { c.BanAfter = 1 })

	old, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = old.Close() })
	old.SetStreamHandler(ObjectProtocol, func(s network.Stream) { _ = s.Reset() })
	if err := old.Connect(t.Context(), peer.AddrInfo{ID: victim.ID(), Addrs: victim.Addrs()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the old peer identified", func() bool {
		ok, err := victim.host.Peerstore().SupportsProtocols(old.ID(), ObjectProtocol)
		return err == nil && len(ok) == 1
	})
	if o, self := victim.ObjectOwner(d); !self {
		t.Fatalf("an ObjectProtocol-only peer was chosen as owner: %s", o)
	}

	liar, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = liar.Close() })
	liar.SetStreamHandler(ObjectThroughProtocol, func(s network.Stream) {
		if _, err := ReadObjectRequest(bufio.NewReader(s)); err != nil {
			_ = s.Reset()
			return
		}
		bad := append([]byte(nil), obj...)
		bad[7] ^= 1
		_, _ = s.Write(AppendResponseHeader(nil, StatusOK, len(bad), ""))
		_, _ = s.Write(bad)
		_ = s.Close()
	})
	if err := liar.Connect(t.Context(), peer.AddrInfo{ID: victim.ID(), Addrs: victim.Addrs()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the liar", connectedTo(victim, liar.ID()))
	// The liar is the owner only for digests it wins: find one.
	var target digest.Digest
	var want []byte
	for i := 0; ; i++ {
		b := append(bytes.Clone(obj), byte(i), byte(i>>8))
		if o, _ := victim.ObjectOwner(digest.FromBytes(b)); o == liar.ID() {
			target, want = digest.FromBytes(b), b
			break
		}
	}
	obj = want // the liar flips a byte of the object asked for
	_, _, delegated, err := victim.FetchObjectThrough(t.Context(), target, 1<<20)
	if !delegated || err == nil {
		t.Fatalf("a lying owner's answer: delegated %v, err %v; want refused", delegated, err)
	}
	waitFor(t, 10*time.Second, "the liar banned", func() bool {
		for _, st := range victim.Peers() {
			if st.ID == liar.ID() {
				return st.Banned
			}
		}
		return false
	})
	if o, _ := victim.ObjectOwner(target); o == liar.ID() {
		t.Fatal("a banned liar is still the owner")
	}
}
