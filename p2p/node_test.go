package p2p

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	madns "github.com/multiformats/go-multiaddr-dns"

	"github.com/shoal-p2p/shoal/chunk"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string // substring of the error; "" for valid
	}{
		{"default", func(*Config) {}, ""},
		{"no listen", func(c *Config) { c.ListenAddrs = nil }, "ListenAddrs"},
		{"short psk", func(c *Config) { c.PSK = []byte("x") }, "PSK"},
		{"psk with quic", func(c *Config) { c.PSK = make([]byte, 32) }, "QUIC"},
		{"hedge below min", func(c *Config) { c.MinHedgeDelay = time.Hour }, "MinHedgeDelay"},
		{"request over coalesce", func(c *Config) { c.RequestTimeout = 2 * c.CoalesceTimeout }, "CoalesceTimeout"},
		{"watermarks", func(c *Config) { c.ConnsHigh = 1 }, "watermarks"},
		{"attempts", func(c *Config) { c.MaxAttempts = 0 }, "MaxAttempts"},
		{"memory", func(c *Config) { c.MaxMemory = 1 }, "MaxMemory"},
		{"bad peer", func(c *Config) { c.StaticPeers = []string{"/ip4/1.2.3.4/tcp/1"} }, "/p2p/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mutate(&c)
			err := c.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestIdentityPersists(t *testing.T) {
	cfg := testConfig()
	cfg.IdentityKeyPath = filepath.Join(t.TempDir(), "p2p", "identity.key")
	a, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.ID() != b.ID() {
		t.Fatalf("peer ID changed across restarts: %s then %s", a.ID(), b.ID())
	}
	if a.Addrs() != nil {
		t.Error("addresses before Run")
	}
}

// TestAnnounceWithdraw: peers learn of a stored chunk, and of its eviction, within 100 ms on
// loopback (a second under the race detector on a loaded machine).
func TestAnnounceWithdraw(t *testing.T) {
	m, o := makeImage(t, 8, 4096, 9)
	nodes := startCluster(t, 2, nil)
	a, b := nodes[0], nodes[1]
	for _, n := range nodes {
		if err := n.RegisterBlob(m, o.fetch); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the swarm", func() bool { return a.SwarmSize(m.Blob) == 1 && b.SwarmSize(m.Blob) == 1 })
	limit := 100 * time.Millisecond
	if raceEnabled {
		limit = time.Second
	}
	c := m.Chunks[3]
	start := time.Now()
	if err := a.store.PutChunk(t.Context(), m.Blob, c, mustVerify(t, c, o.chunks[c.CID])); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the announce", func() bool { return len(b.Lookup(c.CID)) == 1 })
	t.Logf("announce seen after %v", time.Since(start))
	if d := time.Since(start); d > limit {
		t.Errorf("announce took %v, want < %v", d, limit)
	}
	if got := b.Lookup(c.CID); got[0] != a.ID() || len(b.Lookup(m.Chunks[2].CID)) != 0 {
		t.Fatalf("lookup: %v", got)
	}
	start = time.Now()
	if err := a.store.evict(m.Blob, c); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the withdrawal", func() bool { return len(b.Lookup(c.CID)) == 0 })
	if d := time.Since(start); d > limit {
		t.Errorf("withdraw took %v, want < %v", d, limit)
	}
	// Forgetting the blob takes the host out of the rendezvous.
	a.Forget(m.Blob)
	waitFor(t, 10*time.Second, "the forget", func() bool { return b.SwarmSize(m.Blob) == 0 })

	// Stats for the operator.
	var found bool
	for _, st := range b.Peers() {
		if st.ID == a.ID() {
			found = true
			if !st.Connected || len(st.Addrs) == 0 || len(st.FoundBy) == 0 {
				t.Errorf("stats of a: %+v", st)
			}
		}
	}
	if !found {
		t.Error("b's peer list lacks a")
	}
	if ai, err := peer.AddrInfoFromP2pAddr(a.Addrs()[0]); err != nil || ai.ID != a.ID() {
		t.Errorf("own address %s: %v", a.Addrs()[0], err)
	}
}

func TestDNSDiscovery(t *testing.T) {
	a := startNode(t, testConfig())
	res, err := madns.NewResolver(madns.WithDefaultResolver(&madns.MockResolver{
		TXT: map[string][]string{"_dnsaddr.cluster.test": {"dnsaddr=" + a.Addrs()[0].String()}},
		IP:  map[string][]net.IPAddr{},
	}))
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.DNSAddr = "cluster.test"
	n, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	n.resolver = res
	go func() { _ = n.Run(t.Context()) }()
	t.Cleanup(func() { _ = n.Close() })
	<-n.Ready()
	waitFor(t, 10*time.Second, "a connection to the DNS-listed peer", func() bool {
		for _, st := range n.Peers() {
			if st.ID == a.ID() && st.Connected && strings.Contains(strings.Join(st.FoundBy, ","), FoundDNS) {
				return true
			}
		}
		return false
	})
}

// TestDHTDiscovery: hosts that only know one bootstrap host find the others that share a blob
// through blob provider records in Shoal's own DHT.
func TestDHTDiscovery(t *testing.T) {
	const size = 5
	m, o := makeImage(t, 4, 4096, 11)
	var first string
	var nodes []*testNode
	for i := range size {
		cfg := testConfig()
		cfg.DHT = true
		cfg.DHTFindInterval = 300 * time.Millisecond
		if i > 0 {
			cfg.StaticPeers = []string{first}
		}
		n := startNode(t, cfg)
		if i == 0 {
			first = n.Addrs()[0].String()
		}
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		if err := n.RegisterBlob(m, o.fetch); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		waitFor(t, 60*time.Second, "the swarm via the DHT", func() bool { return n.SwarmSize(m.Blob) == size-1 })
	}
	// Hosts 1..4 were told only of host 0: every connection among them was dialled by one side
	// after a DHT lookup (the other side records it as inbound), so some host must say "dht".
	viaDHT := 0
	for _, n := range nodes[1:] {
		for _, st := range n.Peers() {
			if st.ID != nodes[0].ID() && strings.Contains(strings.Join(st.FoundBy, ","), FoundDHT) {
				viaDHT++
			}
		}
	}
	if viaDHT == 0 {
		t.Error("no peer recorded as found through the DHT")
	}
}

func TestMDNS(t *testing.T) {
	cfg := testConfig()
	cfg.MDNS = true
	a := startNode(t, cfg)
	b := startNode(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		for _, st := range b.Peers() {
			if st.ID == a.ID() && st.Connected {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Skip("mDNS found no peer in 5s: multicast does not reach 127.0.0.1 on this machine")
}

// TestQUIC: two hosts that listen only on QUIC exchange a chunk.
func TestQUIC(t *testing.T) {
	m, o := makeImage(t, 2, 8<<10, 13)
	cfg := testConfig()
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/udp/0/quic-v1"}
	a := startNode(t, cfg)
	cfg.StaticPeers = []string{a.Addrs()[0].String()}
	b := startNode(t, cfg)
	for _, n := range []*testNode{a, b} {
		if err := n.RegisterBlob(m, o.fetch); err != nil {
			t.Fatal(err)
		}
	}
	c := m.Chunks[1]
	if err := a.store.PutChunk(t.Context(), m.Blob, c, mustVerify(t, c, o.chunks[c.CID])); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the announce over QUIC", func() bool { return len(b.Lookup(c.CID)) == 1 })
	if _, src, err := b.Fetch(t.Context(), m.Blob, c, nil); err != nil || src != chunk.SourcePeer {
		t.Fatalf("fetch over QUIC: source %v, err %v", src, err)
	}
	if !strings.Contains(a.Addrs()[0].String(), "/quic-v1/p2p/") {
		t.Errorf("address %s", a.Addrs()[0])
	}
}
