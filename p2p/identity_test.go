package p2p

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/shoal-p2p/shoal/chunk"
)

// dnsServer is a real DNS server (miekg/dns over UDP on loopback) answering A queries for one
// name with a list of IPs that the test can change: it stands in for a cluster's DNS and a
// headless Service.
type dnsServer struct {
	addr string
	mu   sync.Mutex
	ips  []net.IP
}

func startDNS(t *testing.T, name string, ips ...net.IP) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &dnsServer{addr: pc.LocalAddr().String(), ips: ips}
	fqdn := dns.Fqdn(name)
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(r.Question) == 1 && strings.EqualFold(r.Question[0].Name, fqdn) {
			if r.Question[0].Qtype == dns.TypeA {
				d.mu.Lock()
				for _, ip := range d.ips {
					m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: fqdn, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: ip})
				}
				d.mu.Unlock()
			}
		} else {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return d
}

// resolver is a Go resolver that asks only this server.
func (d *dnsServer) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "udp", d.addr)
	}}
}

// freePortOn finds a TCP port free on every one of ips.
func freePortOn(t *testing.T, ips ...string) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		ok := true
		var ls []net.Listener
		for _, ip := range ips[1:] {
			l2, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, port))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l2)
		}
		for _, l2 := range ls {
			l2.Close()
		}
		l.Close()
		if ok {
			return port
		}
	}
	t.Fatal("no port free on every address")
	return 0
}

// TestDiscoverDNS: three hosts on their own loopback addresses, no static peers, one DNS name
// that resolves to their IPs (and to one where nothing listens); each asks the others for their
// identity, connects, and a chunk one holds is fetched from it by another. A host that starts
// later is found by those already running.
func TestDiscoverDNS(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}
	port := freePortOn(t, ips...)
	var records []net.IP
	for _, ip := range ips {
		records = append(records, net.ParseIP(ip))
	}
	srv := startDNS(t, "shoal-peers.test", records...)
	m, o := makeImage(t, 4, 4096, 11)
	var nodes []*testNode
	start := func(ip string) *testNode {
		cfg := testConfig()
		cfg.ListenAddrs = []string{"/ip4/" + ip + "/tcp/0"}
		cfg.IdentityListen = fmt.Sprintf("%s:%d", ip, port)
		cfg.DiscoverDNS = fmt.Sprintf("shoal-peers.test:%d", port)
		cfg.DNSInterval = time.Second
		cfg.netResolver = srv.resolver()
		n := startNode(t, cfg)
		if err := n.RegisterBlob(m, o.fetch); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, ip := range ips[:2] {
		nodes = append(nodes, start(ip))
	}
	// connected: n is connected to want peers; with byDNS, n found each through the name (a
	// host found first by the other's dial counts it as inbound).
	connected := func(n *testNode, want int, byDNS bool) bool {
		c := 0
		for _, st := range n.Peers() {
			if st.Connected && (!byDNS || slices.Contains(st.FoundBy, FoundDiscoverDNS)) {
				c++
			}
		}
		return c == want
	}
	waitFor(t, 20*time.Second, "the first two hosts find each other", func() bool { return connected(nodes[0], 1, false) && connected(nodes[1], 1, false) })
	// The third starts later; it finds the others at its start, and they see it as their peer.
	nodes = append(nodes, start(ips[2]))
	waitFor(t, 20*time.Second, "every host is connected to the other two", func() bool {
		return connected(nodes[0], 2, false) && connected(nodes[1], 2, false) && connected(nodes[2], 2, true)
	})

	c := m.Chunks[2]
	if err := nodes[0].store.PutChunk(t.Context(), m.Blob, c, mustVerify(t, c, o.chunks[c.CID])); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the third host learns the first holds the chunk", func() bool { return len(nodes[2].Lookup(c.CID)) == 1 })
	data, src, err := nodes[2].Fetch(t.Context(), m.Blob, c, func(ctx context.Context) ([]byte, error) {
		return nil, fmt.Errorf("the origin must not be asked for %s", c.CID)
	})
	if err != nil || src != chunk.SourcePeer || !slices.Equal(data.Bytes(), o.chunks[c.CID]) {
		t.Fatalf("fetch through a discovered peer: source %v, err %v", src, err)
	}
}

func TestDecodeIdentity(t *testing.T) {
	id := "12D3KooWGzBpZXwvLfY2KyGKLTkfWDmYNTAyRuAyfr2Gq3Mq6FBd"
	other := "12D3KooWRz6hfEF3pmXq5dFu4v8DyjP1JGLfXrvAzw6KnLRq2wGm"
	for _, tc := range []struct {
		name, body string
		want       string // error substring; "" for valid
		addrs      int
	}{
		{"ok", `{"id":"` + id + `","addrs":["/ip4/10.0.0.1/tcp/7480","/ip4/10.0.0.1/udp/7480/quic-v1/p2p/` + id + `"]}`, "", 2},
		{"bad json", `{"id":`, "identity", 0},
		{"bad id", `{"id":"nope","addrs":["/ip4/10.0.0.1/tcp/1"]}`, "peer ID", 0},
		{"no addrs", `{"id":"` + id + `","addrs":[]}`, "addresses", 0},
		{"bad addr", `{"id":"` + id + `","addrs":["/ip4/999.0.0.1/tcp/1"]}`, "address", 0},
		{"other peer", `{"id":"` + id + `","addrs":["/ip4/10.0.0.1/tcp/1/p2p/` + other + `"]}`, "names peer", 0},
		{"too big", `{"id":"` + id + `","addrs":["` + strings.Repeat("x", maxIdentityBytes) + `"]}`, "over", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ai, err := decodeIdentity(strings.NewReader(tc.body))
			if tc.want == "" {
				if err != nil || ai.ID.String() != id || len(ai.Addrs) != tc.addrs {
					t.Fatalf("decodeIdentity = %v (%d addrs), %v", ai.ID, len(ai.Addrs), err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decodeIdentity err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func FuzzDecodeIdentity(f *testing.F) {
	f.Add([]byte(`{"id":"12D3KooWGzBpZXwvLfY2KyGKLTkfWDmYNTAyRuAyfr2Gq3Mq6FBd","addrs":["/ip4/10.0.0.1/tcp/7480"]}`))
	f.Add([]byte(`{"id":"","addrs":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ai, err := decodeIdentity(strings.NewReader(string(b)))
		if err == nil && (ai.ID == "" || len(ai.Addrs) == 0 || len(ai.Addrs) > maxIdentityAddrs) {
			t.Fatalf("accepted %q as %v", b, ai)
		}
	})
}

func TestAddrsOn(t *testing.T) {
	mk := func(ss ...string) []ma.Multiaddr {
		var out []ma.Multiaddr
		for _, s := range ss {
			out = append(out, ma.StringCast(s))
		}
		return out
	}
	all := mk("/ip4/127.0.0.1/tcp/7480", "/ip4/10.0.0.7/tcp/7480", "/ip4/10.0.0.7/udp/7480/quic-v1", "/ip6/::1/tcp/7480")
	for _, tc := range []struct {
		ip   string
		in   []ma.Multiaddr
		want []string
	}{
		{"10.0.0.7", all, []string{"/ip4/10.0.0.7/tcp/7480", "/ip4/10.0.0.7/udp/7480/quic-v1"}},
		// Behind a mapping: the host lists only addresses the asker does not dial.
		{"192.168.1.9", all, []string{"/ip4/192.168.1.9/tcp/7480", "/ip4/192.168.1.9/udp/7480/quic-v1"}},
		{"fd00::9", all, []string{"/ip6/fd00::9/tcp/7480"}},
		{"10.0.0.7", mk("/dns4/example.com/tcp/1"), nil},
	} {
		var got []string
		for _, a := range addrsOn(tc.in, net.ParseIP(tc.ip)) {
			got = append(got, a.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("addrsOn(%s) = %v, want %v", tc.ip, got, tc.want)
		}
	}
}
