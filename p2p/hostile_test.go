package p2p

import (
	"bufio"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shoal-p2p/shoal/chunk"
)

// hostile is a raw libp2p host that claims to hold every chunk of a blob and misbehaves when
// asked for one.
type hostile struct {
	host.Host
	kind string
}

func startHostile(t *testing.T, kind string, m *chunk.Manifest, o *countingOrigin, victim *testNode) *hostile {
	t.Helper()
	return startHostileLate(t, kind, 0, m, o, victim)
}

// startHostileLate is startHostile with the delay of kind "late" (answers correctly, late).
// Kind "alternate" stalls every other request and answers the others at once.
func startHostileLate(t *testing.T, kind string, late time.Duration, m *chunk.Manifest, o *countingOrigin, victim *testNode) *hostile {
	t.Helper()
	var served atomic.Int64
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	hp := &hostile{h, kind}
	h.SetStreamHandler(ChunkProtocol, func(s network.Stream) {
		req, err := ReadRequest(bufio.NewReader(s))
		if err != nil {
			_ = s.Reset()
			return
		}
		data := o.chunks[req.CID]
		switch kind {
		case "corrupt":
			bad := append([]byte(nil), data...)
			bad[len(bad)/2] ^= 0xff
			_, _ = s.Write(AppendResponseHeader(nil, StatusOK, len(bad), ""))
			_, _ = s.Write(bad)
			_ = s.Close()
		case "truncated":
			_, _ = s.Write(AppendResponseHeader(nil, StatusOK, len(data), ""))
			_, _ = s.Write(data[:len(data)/2])
			_ = s.Close()
		case "stall":
			_, _ = io.Copy(io.Discard, s) // until the requester gives up and resets
			<-t.Context().Done()
		case "alternate":
			if served.Add(1)%2 == 1 {
				_, _ = io.Copy(io.Discard, s)
				<-t.Context().Done()
				return
			}
			_, _ = s.Write(AppendResponseHeader(nil, StatusOK, len(data), ""))
			_, _ = s.Write(data)
			_ = s.Close()
		case "late":
			select {
			case <-time.After(late):
			case <-t.Context().Done():
			}
			_, _ = s.Write(AppendResponseHeader(nil, StatusOK, len(data), ""))
			_, _ = s.Write(data)
			_ = s.Close()
		case "leave":
			_, _ = s.Write(AppendResponseHeader(nil, StatusOK, len(data), ""))
			_, _ = s.Write(data[:len(data)/3])
			go func() { _ = h.Close() }()
		}
	})
	claimAll(t, h, m, victim)
	return hp
}

// flood sends chunk requests for made-up CIDs from 16 streams at once until the victim cuts it
// off or d passes.
func flood(ctx context.Context, h host.Host, victim peer.ID, d time.Duration) (sent int) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				s, err := h.NewStream(ctx, victim, ChunkProtocol)
				if err != nil {
					if h.Network().Connectedness(victim) != network.Connected {
						return
					}
					continue
				}
				req := Request{CID: chunk.CID([]byte{byte(i), byte(i >> 8)}), Length: 4096}
				b, _ := AppendRequest(nil, req)
				_, _ = s.Write(b)
				_ = s.CloseWrite()
				_, _, _, _ = ReadResponse(bufio.NewReader(s), 4096)
				_ = s.Reset()
				mu.Lock()
				sent++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return sent
}

func TestHostilePeers(t *testing.T) {
	m, o := makeImage(t, 32, 32<<10, 7)
	honest := startNode(t, testConfig())
	if err := honest.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	for _, c := range m.Chunks {
		if err := honest.store.PutChunk(t.Context(), m.Blob, c, mustVerify(t, c, o.chunks[c.CID])); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testConfig()
	cfg.StaticPeers = []string{honest.Addrs()[0].String()}
	cfg.BanAfter = 2
	cfg.MaxAttempts = 6
	cfg.HedgeDelay = 100 * time.Millisecond
	cfg.RequestTimeout = 3 * time.Second
	cfg.PeerRequestRate = 50
	cfg.PeerRequestBurst = 50
	cfg.FloodBanAfter = 100
	reader := startNode(t, cfg)
	if err := reader.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	hostiles := map[string]*hostile{}
	for _, kind := range []string{"corrupt", "truncated", "stall", "leave"} {
		hostiles[kind] = startHostile(t, kind, m, o, reader)
	}
	waitFor(t, 30*time.Second, "the reader to see every claimed holder", func() bool {
		return len(reader.Lookup(m.Chunks[0].CID)) == 5
	})
	flooder, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = flooder.Close() })
	if err := flooder.Connect(t.Context(), peer.AddrInfo{ID: reader.ID(), Addrs: reader.Addrs()}); err != nil {
		t.Fatal(err)
	}
	floodDone := make(chan int, 1)
	go func() { floodDone <- flood(t.Context(), flooder, reader.ID(), 20*time.Second) }()

	srcs, err := readImage(t.Context(), reader, m, o, 2)
	if err != nil {
		t.Fatalf("read with hostile peers: %v", err) // readImage verifies every chunk
	}
	sent := <-floodDone
	t.Logf("sources %v; origin requests %d; flooder sent %d requests", srcs, o.requests.Load(), sent)

	stats := map[peer.ID]PeerStats{}
	for _, st := range reader.Peers() {
		stats[st.ID] = st
	}
	for _, kind := range []string{"corrupt", "truncated"} {
		st := stats[hostiles[kind].ID()]
		if !st.Banned || st.Corrupt < 2 {
			t.Errorf("%s peer: banned %v after %d bad responses, want banned after 2", kind, st.Banned, st.Corrupt)
		}
	}
	if st := stats[flooder.ID()]; !st.Banned {
		t.Errorf("flooding peer not banned after %d requests", st.RequestsIn)
	}
	if st := stats[honest.ID()]; st.Banned || st.BytesDown == 0 {
		t.Errorf("honest peer: banned %v, %d bytes down", st.Banned, st.BytesDown)
	}
	// A banned peer cannot come back.
	h := hostiles["corrupt"]
	if err := h.Connect(t.Context(), peer.AddrInfo{ID: reader.ID(), Addrs: reader.Addrs()}); err == nil {
		// The dial may succeed at the transport before the gater's verdict reaches it; a stream
		// must not.
		if s, err := h.NewStream(t.Context(), reader.ID(), ChunkProtocol); err == nil {
			_, _ = s.Write([]byte{0})
			if _, err := s.Read(make([]byte, 1)); err == nil {
				t.Error("banned peer got an answer")
			}
		}
	}
}

func TestAllowlist(t *testing.T) {
	m, o := makeImage(t, 4, 8<<10, 3)
	friend := startNode(t, testConfig())
	cfg := testConfig()
	cfg.Allowlist = []peer.ID{friend.ID()}
	holder := startNode(t, cfg)
	stranger := startNode(t, testConfig())
	for _, n := range []*testNode{friend, holder, stranger} {
		if err := n.RegisterBlob(m, o.fetch); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range m.Chunks {
		if err := holder.store.PutChunk(t.Context(), m.Blob, c, mustVerify(t, c, o.chunks[c.CID])); err != nil {
			t.Fatal(err)
		}
	}
	ai := peer.AddrInfo{ID: holder.ID(), Addrs: holder.Addrs()}
	if err := friend.host.Connect(t.Context(), ai); err != nil {
		t.Fatal(err)
	}
	_ = stranger.host.Connect(t.Context(), ai) // refused by the gater
	c := m.Chunks[0]
	waitFor(t, 10*time.Second, "the friend to see the holder's chunks", func() bool { return len(friend.Lookup(c.CID)) == 1 })
	_, src, err := friend.Fetch(t.Context(), m.Blob, c, nil)
	if err != nil || src != chunk.SourcePeer {
		t.Fatalf("allowed peer: source %v, err %v; want from the peer", src, err)
	}
	before := o.requests.Load()
	_, src, err = stranger.Fetch(t.Context(), m.Blob, c, nil)
	if err != nil || src != chunk.SourceOrigin || o.requests.Load() != before+1 {
		t.Fatalf("peer outside the allowlist: source %v, err %v; want only the origin", src, err)
	}
	if len(stranger.Lookup(c.CID)) != 0 {
		t.Error("peer outside the allowlist learned who holds the chunk")
	}
}

func TestPrivateNetwork(t *testing.T) {
	key := func(b byte) []byte {
		k := make([]byte, 32)
		for i := range k {
			k[i] = b
		}
		return k
	}
	cfg := testConfig()
	cfg.PSK = key(1)
	a := startNode(t, cfg)
	b := startNode(t, cfg)
	cfg.PSK = key(2)
	c := startNode(t, cfg)
	ai := peer.AddrInfo{ID: a.ID(), Addrs: a.Addrs()}
	if err := b.host.Connect(t.Context(), ai); err != nil {
		t.Fatalf("same key: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if err := c.host.Connect(ctx, ai); err == nil {
		t.Fatal("a host with another network key connected")
	}
}

// TestOwnerFails: the host the rendezvous picks cannot reach its origin; the others fall back to
// their own and every read completes.
func TestOwnerFails(t *testing.T) {
	m, o := makeImage(t, 16, 8<<10, 5)
	nodes := startCluster(t, 3, nil)
	broken := func(context.Context, chunk.Chunk) ([]byte, error) { return nil, errors.New("registry unreachable") }
	for i, n := range nodes {
		fn := o.fetch
		if i == 2 {
			fn = broken
		}
		if err := n.RegisterBlob(m, fn); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		waitFor(t, 30*time.Second, "the swarm", func() bool { return n.SwarmSize(m.Blob) == 2 })
	}
	for _, n := range nodes[:2] {
		if _, err := readImage(t.Context(), n, m, o, 2); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStallingPeerBanned: a peer that claims every chunk and never answers costs each read a
// timeout until StallBanAfter of them in a row ban it; every read still completes (from the
// origin) with verified data.
func TestStallingPeerBanned(t *testing.T) {
	m, o := makeImage(t, 6, 16<<10, 11)
	cfg := testConfig()
	cfg.RequestTimeout = 300 * time.Millisecond
	cfg.StallBanAfter = 3
	reader := startNode(t, cfg)
	if err := reader.RegisterBlob(m, o.fetch); err != nil {
		t.Fatal(err)
	}
	staller := startHostile(t, "stall", m, o, reader)
	waitFor(t, 30*time.Second, "the reader to see the staller's claim", func() bool {
		return len(reader.Lookup(m.Chunks[0].CID)) == 1
	})
	if _, err := readImage(t.Context(), reader, m, o, 1); err != nil {
		t.Fatalf("read with a stalling peer: %v", err)
	}
	for _, st := range reader.Peers() {
		if st.ID == staller.ID() && !st.Banned {
			t.Fatalf("stalling peer not banned: %+v", st)
		}
	}
	if n := len(reader.Lookup(m.Chunks[0].CID)); n != 0 {
		t.Fatalf("banned staller still listed as a holder (%d)", n)
	}
}

// TestSlowPeers (issue 12, item 1): a peer that stalls every other request, and one that answers
// correctly but at 90% of the request timeout (the 9 s of 10 s, scaled down), are
// demoted and then banned by their recent record, though neither ever runs up a streak of
// timeouts (the old rule, StallBanAfter, is off here to prove the new one). Reads of chunks only
// the bad peer holds are hedged to the rendezvous owner or the origin once they run past
// HedgeFactor × the cluster's p99 instead of waiting for the request timeout.
func TestSlowPeers(t *testing.T) {
	for _, kind := range []string{"alternate", "late"} {
		t.Run(kind, func(t *testing.T) {
			const n = 48
			m, o := makeImage(t, n, 16<<10, 13)
			honest := startNode(t, testConfig())
			if err := honest.RegisterBlob(m, o.fetch); err != nil {
				t.Fatal(err)
			}
			for _, c := range m.Chunks[:n/2] { // the first half: the honest peer holds it too
				if err := honest.store.PutChunk(t.Context(), m.Blob, c, mustVerify(t, c, o.chunks[c.CID])); err != nil {
					t.Fatal(err)
				}
			}
			cfg := testConfig()
			cfg.StaticPeers = []string{honest.Addrs()[0].String()}
			cfg.RequestTimeout = 2 * time.Second
			cfg.CoalesceTimeout = 10 * time.Second
			cfg.HedgeDelay = 100 * time.Millisecond
			cfg.StallBanAfter = 0
			reader := startNode(t, cfg)
			if err := reader.RegisterBlob(m, o.fetch); err != nil {
				t.Fatal(err)
			}
			bad := startHostileLate(t, kind, cfg.RequestTimeout*9/10, m, o, reader)
			waitFor(t, 30*time.Second, "the reader to see both holders", func() bool {
				return len(reader.Lookup(m.Chunks[0].CID)) == 2 && reader.SwarmSize(m.Blob) == 1
			})
			srcs, err := readImage(t.Context(), reader, m, o, 2)
			if err != nil {
				t.Fatalf("read with a %s peer: %v", kind, err) // readImage verifies every chunk
			}
			var st PeerStats
			for _, s := range reader.Peers() {
				if s.ID == bad.ID() {
					st = s
				}
			}
			fallbacks := testutil.ToFloat64(reader.met.hedgeFallback)
			t.Logf("sources %v; %s peer: standing %s, slow %.2f bad %.2f, %d bytes down; hedges to owner/origin %v",
				srcs, kind, st.Standing, st.SlowShare, st.BadShare, st.BytesDown, fallbacks)
			if st.Standing != StandingBanned {
				t.Errorf("%s peer ends in standing %q, want banned", kind, st.Standing)
			}
			if fallbacks == 0 {
				t.Error("no request to the bad peer was hedged to the owner or the origin: reads waited for its timeout")
			}
			if srcs[chunk.SourceCoalesced]+srcs[chunk.SourceOrigin] == 0 {
				t.Error("no chunk came from the rendezvous owner or the origin")
			}
			if kind == "late" && st.BytesDown >= int64(n/4)*m.ChunkSize {
				t.Errorf("late peer served %d bytes: reads waited for it rather than hedging", st.BytesDown)
			}
		})
	}
}

// TestSlowSeedLastResort: the only holder of an image answers correctly but later than the
// request timeout (an honest seed whose uplink every reader shares), and the origin is down.
// Every request to it times out, so the reader bans it for slowness, as TestSlowPeers does; but
// once every other source has failed a holder is asked as a last resort with a longer timeout,
// and a ban for slowness alone keeps the seed connected with its presence maps for that: the
// read completes. (Before, every such chunk failed with the origin down; the swarm benchmark's
// seeded start stranded 3 of 7 hosts so, their readers having banned the seed.)
func TestSlowSeedLastResort(t *testing.T) {
	const n = 12
	m, o := makeImage(t, n, 16<<10, 17)
	down := &countingOrigin{chunks: map[cid.Cid][]byte{}} // has nothing: the registry is down
	cfg := testConfig()
	cfg.RequestTimeout = 300 * time.Millisecond
	cfg.CoalesceTimeout = time.Second
	cfg.HedgeDelay = 50 * time.Millisecond
	reader := startNode(t, cfg)
	if err := reader.RegisterBlob(m, down.fetch); err != nil {
		t.Fatal(err)
	}
	seed := startHostileLate(t, "late", cfg.RequestTimeout*3/2, m, o, reader)
	waitFor(t, 30*time.Second, "the reader to see the seed's claim", func() bool {
		return len(reader.Lookup(m.Chunks[0].CID)) == 1
	})
	srcs, err := readImage(t.Context(), reader, m, down, 2)
	if err != nil {
		t.Fatalf("read from a late seed with the origin down: %v", err)
	}
	var st PeerStats
	for _, s := range reader.Peers() {
		if s.ID == seed.ID() {
			st = s
		}
	}
	last := testutil.ToFloat64(reader.met.lastResort)
	t.Logf("sources %v; seed: standing %s, connected %v; last-resort chunks %v", srcs, st.Standing, st.Connected, last)
	if st.Standing != StandingBanned || !st.Connected {
		t.Errorf("seed ends %q, connected %v: want banned for slowness and still connected", st.Standing, st.Connected)
	}
	if last != n || srcs[chunk.SourcePeer] != n {
		t.Errorf("%v chunks through the last resort, sources %v: want all %d from the seed", last, srcs, n)
	}
}
