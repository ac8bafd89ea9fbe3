package p2p

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Discovery through a DNS name that resolves to every host's IP (a Kubernetes headless Service)
// and a small identity endpoint on each host.
//
// A libp2p dial needs the remote's peer ID (the security handshake checks it), and a Service's
// DNS name gives only IPs. So every host serves, over plain HTTP on IdentityListen, GET
// IdentityPath: its peer ID and libp2p listen addresses (identityDoc). A host with DiscoverDNS
// resolves the name every DNSInterval, asks each IP it has not identified yet (or whose host is
// not connected) for its identity, and dials the addresses on that IP. The endpoint is not
// authenticated and need not be: a wrong answer can only make this host dial a peer ID at an
// address, and the handshake proves the ID (the allowlist and the private-network key apply as
// to any peer). Nothing but the name and the port is configured, so a DaemonSet's pods find each
// other with no hand-kept records.

// IdentityPath is the HTTP path of the identity endpoint.
const IdentityPath = "/shoal/identity/1"

// Limits on an identity answer: a host has a handful of listen addresses.
const (
	maxIdentityBytes = 16 << 10
	maxIdentityAddrs = 64
)

// identityDoc is the JSON body of an identity answer.
type identityDoc struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

// decodeIdentity reads an identity answer (at most maxIdentityBytes) into an AddrInfo. Addresses
// that do not parse, or that carry a /p2p/ part of another peer, are errors: the answer is wrong.
func decodeIdentity(r io.Reader) (peer.AddrInfo, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxIdentityBytes+1))
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("identity: reading: %w", err)
	}
	if len(b) > maxIdentityBytes {
		return peer.AddrInfo{}, fmt.Errorf("identity: answer over %d bytes", maxIdentityBytes)
	}
	var doc identityDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return peer.AddrInfo{}, fmt.Errorf("identity: %w", err)
	}
	id, err := peer.Decode(doc.ID)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("identity: peer ID %q: %w", doc.ID, err)
	}
	if len(doc.Addrs) == 0 || len(doc.Addrs) > maxIdentityAddrs {
		return peer.AddrInfo{}, fmt.Errorf("identity of %s: %d addresses, want 1 to %d", id, len(doc.Addrs), maxIdentityAddrs)
	}
	ai := peer.AddrInfo{ID: id}
	for _, s := range doc.Addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return peer.AddrInfo{}, fmt.Errorf("identity of %s: address %q: %w", id, s, err)
		}
		tr, pid := peer.SplitAddr(a)
		if tr == nil {
			return peer.AddrInfo{}, fmt.Errorf("identity of %s: address %q has no transport part", id, s)
		}
		if pid != "" && pid != id {
			return peer.AddrInfo{}, fmt.Errorf("identity of %s: address %q names peer %s", id, s, pid)
		}
		ai.Addrs = append(ai.Addrs, tr)
	}
	return ai, nil
}

// identityHandler answers GET IdentityPath with this host's peer ID and listen addresses.
func (n *Node) identityHandler(h host.Host) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+IdentityPath, func(w http.ResponseWriter, _ *http.Request) {
		doc := identityDoc{ID: n.id.String()}
		for _, a := range h.Addrs() {
			if len(doc.Addrs) < maxIdentityAddrs {
				doc.Addrs = append(doc.Addrs, a.String())
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(doc)
	})
	return mux
}

// serveIdentity listens on Config.IdentityListen and serves the identity endpoint until ctx
// ends. The listener is opened before it returns, so a port in use is Run's error.
func (n *Node) serveIdentity(ctx context.Context, h host.Host) error {
	ln, err := net.Listen("tcp", n.cfg.IdentityListen)
	if err != nil {
		return fmt.Errorf("p2p identity endpoint: %w", err)
	}
	srv := &http.Server{Handler: n.identityHandler(h), ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout: 5 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	n.log.Info("identity endpoint listening", "addr", ln.Addr().String())
	n.goFn(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && ctx.Err() == nil {
			n.log.Warn("identity endpoint", "err", err)
		}
	})
	n.goFn(func() {
		<-ctx.Done()
		_ = srv.Close()
	})
	return nil
}

// dnsDiscovery is the state of DiscoverDNS: the IPs the name resolved to last, and what each
// answered for its identity.
type dnsDiscovery struct {
	n        *Node
	h        host.Host
	name     string
	port     int
	resolver *net.Resolver
	client   *http.Client

	mu         sync.Mutex
	resolvedAt time.Time
	ips        []net.IP
	known      map[string]identityEntry // by IP
}

type identityEntry struct {
	ai peer.AddrInfo
	at time.Time
}

func newDNSDiscovery(n *Node, h host.Host) (*dnsDiscovery, error) {
	name, port, err := splitDiscoverDNS(n.cfg.DiscoverDNS)
	if err != nil {
		return nil, err
	}
	res := n.cfg.netResolver
	if res == nil {
		res = net.DefaultResolver
	}
	return &dnsDiscovery{n: n, h: h, name: name, port: port, resolver: res,
		client: &http.Client{Timeout: dialTimeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}},
		known:  map[string]identityEntry{}}, nil
}

// splitDiscoverDNS parses Config.DiscoverDNS, NAME:PORT.
func splitDiscoverDNS(s string) (string, int, error) {
	name, ps, err := net.SplitHostPort(s)
	if err != nil || name == "" {
		return "", 0, fmt.Errorf("p2p DiscoverDNS %q: want NAME:PORT (a DNS name with an A/AAAA record per host, and their identity port)", s)
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("p2p DiscoverDNS %q: port %q is not 1..65535", s, ps)
	}
	return name, port, nil
}

// peers is the redial loop's list: the name is resolved again once DNSInterval has passed, and
// an IP is asked for its identity when not known yet, or when its host is not connected and its
// answer is older than DNSInterval (the host may have restarted with another key).
func (d *dnsDiscovery) peers(ctx context.Context) []peer.AddrInfo {
	d.mu.Lock()
	resolve := d.resolvedAt.IsZero() || time.Since(d.resolvedAt) >= d.n.cfg.DNSInterval
	d.mu.Unlock()
	if resolve {
		rctx, cancel := context.WithTimeout(ctx, dialTimeout)
		addrs, err := d.resolver.LookupIPAddr(rctx, d.name)
		cancel()
		d.mu.Lock()
		d.resolvedAt = time.Now()
		if err != nil {
			d.n.log.Warn("resolving peers", "name", d.name, "err", err)
		} else {
			d.ips = d.ips[:0]
			seen := map[string]bool{}
			for _, a := range addrs {
				d.ips = append(d.ips, a.IP)
				seen[a.IP.String()] = true
			}
			for ip := range d.known {
				if !seen[ip] {
					delete(d.known, ip)
				}
			}
		}
		d.mu.Unlock()
	}
	d.mu.Lock()
	var ask []net.IP
	for _, ip := range d.ips {
		e, ok := d.known[ip.String()]
		if !ok || (e.ai.ID != d.n.id && d.h.Network().Connectedness(e.ai.ID) != network.Connected && time.Since(e.at) >= d.n.cfg.DNSInterval) {
			ask = append(ask, ip)
		}
	}
	d.mu.Unlock()
	// Many hosts start at once in a new cluster: ask in a random order so that they do not
	// all ask the same host first.
	rand.Shuffle(len(ask), func(i, j int) { ask[i], ask[j] = ask[j], ask[i] })
	var wg sync.WaitGroup
	for _, ip := range ask {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ai, err := d.identify(ctx, ip)
			if err != nil {
				if ctx.Err() == nil {
					d.n.log.Debug("asking a host for its identity", "ip", ip, "err", err)
				}
				return
			}
			d.mu.Lock()
			d.known[ip.String()] = identityEntry{ai: ai, at: time.Now()}
			d.mu.Unlock()
		}()
	}
	wg.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]peer.AddrInfo, 0, len(d.known))
	for _, e := range d.known {
		if e.ai.ID != d.n.id {
			out = append(out, e.ai)
		}
	}
	return out
}

// identify asks the host at ip for its identity and keeps the addresses on ip: a host listening
// on every interface lists loopback and other networks' addresses too, which are not where this
// host reaches it. If none is on ip (it listens on one address and NAT or a Service maps it),
// its addresses are rewritten to ip, port and transport kept.
func (d *dnsDiscovery) identify(ctx context.Context, ip net.IP) (peer.AddrInfo, error) {
	url := "http://" + net.JoinHostPort(ip.String(), strconv.Itoa(d.port)) + IdentityPath
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return peer.AddrInfo{}, err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return peer.AddrInfo{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return peer.AddrInfo{}, fmt.Errorf("identity of %s: HTTP %s", url, resp.Status)
	}
	ai, err := decodeIdentity(resp.Body)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("%s: %w", url, err)
	}
	ai.Addrs = addrsOn(ai.Addrs, ip)
	if len(ai.Addrs) == 0 {
		return peer.AddrInfo{}, fmt.Errorf("identity of %s at %s: no IP address to dial", ai.ID, url)
	}
	return ai, nil
}

// addrsOn keeps the addresses on ip, else rewrites those of ip's family to ip.
func addrsOn(addrs []ma.Multiaddr, ip net.IP) []ma.Multiaddr {
	var on, rewritten []ma.Multiaddr
	v4 := ip.To4() != nil
	for _, a := range addrs {
		first, rest := ma.SplitFirst(a)
		if first == nil || len(rest) == 0 {
			continue
		}
		aip, err := manet.ToIP(ma.Multiaddr{*first})
		if err != nil {
			continue
		}
		if aip.Equal(ip) {
			on = append(on, a)
			continue
		}
		if (aip.To4() != nil) != v4 {
			continue
		}
		nip, err := manet.FromIP(ip)
		if err != nil {
			continue
		}
		if r := nip.Encapsulate(rest); !slices.ContainsFunc(rewritten, r.Equal) {
			rewritten = append(rewritten, r)
		}
	}
	if len(on) > 0 {
		return on
	}
	return rewritten
}
