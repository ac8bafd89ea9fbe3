package p2p

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	ma "github.com/multiformats/go-multiaddr"
	madns "github.com/multiformats/go-multiaddr-dns"
	"github.com/multiformats/go-multihash"
	"github.com/opencontainers/go-digest"
)

// DHTPrefix keeps Shoal's DHT apart from the public IPFS DHT: its protocols are /shoal/kad/1.0.0.
const DHTPrefix = "/shoal"

// MDNSService is the mDNS service name Shoal hosts advertise on the LAN.
const MDNSService = "_shoal-p2p._udp"

const dialTimeout = 5 * time.Second

// parsePeers turns --peer multiaddrs (each with /p2p/<id>) into address infos.
func parsePeers(addrs []string) ([]peer.AddrInfo, error) {
	var mas []ma.Multiaddr
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("peer address %q: %w", s, err)
		}
		if _, err := peer.AddrInfoFromP2pAddr(a); err != nil {
			return nil, fmt.Errorf("peer address %q: want a multiaddr ending in /p2p/<peer id>: %w", s, err)
		}
		mas = append(mas, a)
	}
	return peer.AddrInfosFromP2pAddrs(mas...)
}

// BlobCID is the key of a blob's provider records in the DHT: one record per blob and host,
// never one per chunk.
func BlobCID(blob digest.Digest) cid.Cid {
	mh, _ := multihash.Sum([]byte(blob), multihash.SHA2_256, -1) // cannot fail for sha2-256
	return cid.NewCidV1(cid.Raw, mh)
}

func (n *Node) startDiscovery(ctx context.Context, h host.Host) error {
	static, err := parsePeers(n.cfg.StaticPeers)
	if err != nil {
		return err
	}
	for _, ai := range static {
		n.noteFound(ai.ID, FoundStatic)
		h.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.PermanentAddrTTL)
	}
	if len(static) > 0 {
		n.goFn(func() { n.redial(ctx, h, FoundStatic, func(context.Context) []peer.AddrInfo { return static }) })
	}
	if n.cfg.DNSAddr != "" {
		name := n.cfg.DNSAddr
		if !strings.HasPrefix(name, "/") {
			name = "/dnsaddr/" + name
		}
		maddr, err := ma.NewMultiaddr(name)
		if err != nil {
			return fmt.Errorf("p2p DNS discovery name %q: %w", n.cfg.DNSAddr, err)
		}
		res := n.resolver
		if res == nil {
			res = madns.DefaultResolver
		}
		n.goFn(func() {
			n.redial(ctx, h, FoundDNS, func(ctx context.Context) []peer.AddrInfo {
				rctx, cancel := context.WithTimeout(ctx, dialTimeout)
				defer cancel()
				addrs, err := res.Resolve(rctx, maddr)
				if err != nil {
					n.log.Warn("resolving peers", "name", maddr, "err", err)
					return nil
				}
				var withID []ma.Multiaddr
				for _, a := range addrs {
					if _, err := peer.AddrInfoFromP2pAddr(a); err == nil {
						withID = append(withID, a)
					}
				}
				ais, _ := peer.AddrInfosFromP2pAddrs(withID...)
				return ais
			})
		})
	}
	if n.cfg.DiscoverDNS != "" {
		d, err := newDNSDiscovery(n, h)
		if err != nil {
			return err
		}
		n.goFn(func() { n.redial(ctx, h, FoundDiscoverDNS, d.peers) })
	}
	if n.cfg.MDNS {
		svc := mdns.NewMdnsService(h, MDNSService, mdnsNotifee{n, ctx, h})
		if err := svc.Start(); err != nil {
			return fmt.Errorf("p2p mDNS: %w", err)
		}
		n.goFn(func() {
			<-ctx.Done()
			_ = svc.Close()
		})
	}
	if n.cfg.DHT {
		d, err := dht.New(h,
			dht.Mode(dht.ModeServer),
			dht.ProtocolPrefix(DHTPrefix),
			dht.QueryFilter(dht.PrivateQueryFilter),
			dht.RoutingTableFilter(dht.PrivateRoutingTableFilter),
			dht.BootstrapPeers(static...),
		)
		if err != nil {
			return fmt.Errorf("p2p DHT: %w", err)
		}
		n.mu.Lock()
		n.dht = d
		n.mu.Unlock()
		n.goFn(func() { n.dhtLoop(ctx, h, d) })
	}
	return nil
}

// redial connects to the peers list returns now and every RedialInterval, skipping connected
// ones. When a peer disconnects it retries sooner, backing off from half a second to
// RedialInterval, so a peer that restarts (an upgrade, a crash) is back within about a second and
// the reads in between do not go to the origin for chunks it holds.
func (n *Node) redial(ctx context.Context, h host.Host, how string, list func(context.Context) []peer.AddrInfo) {
	const firstRetry = 500 * time.Millisecond
	retry := time.Duration(0) // 0: no disconnection to recover from
	lost := make(chan struct{}, 1)
	n.mu.Lock()
	n.lost = append(n.lost, lost)
	n.mu.Unlock()
	for {
		missing := 0
		var wg sync.WaitGroup
		for _, ai := range list(ctx) {
			if ai.ID == n.id || h.Network().Connectedness(ai.ID) == network.Connected {
				continue
			}
			missing++
			n.noteFound(ai.ID, how)
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.connect(ctx, h, ai)
			}()
		}
		wg.Wait()
		wait := n.cfg.RedialInterval
		if retry > 0 && missing > 0 {
			wait = min(retry, wait)
			retry *= 2
		} else {
			retry = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-lost:
			t.Stop()
			if retry == 0 {
				retry = firstRetry
			}
			select { // let the peer finish leaving (or restarting) before the first retry
			case <-ctx.Done():
				return
			case <-time.After(firstRetry):
			}
		case <-t.C:
		}
	}
}

func (n *Node) connect(ctx context.Context, h host.Host, ai peer.AddrInfo) {
	if !n.allowed(ai.ID) {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if err := h.Connect(cctx, ai); err != nil && ctx.Err() == nil {
		n.log.Debug("dialling peer", "peer", ai.ID, "err", err)
	}
}

type mdnsNotifee struct {
	n   *Node
	ctx context.Context
	h   host.Host
}

func (m mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) {
	if ai.ID == m.n.id {
		return
	}
	m.n.noteFound(ai.ID, FoundMDNS)
	m.n.goFn(func() { m.n.connect(m.ctx, m.h, ai) })
}

// dhtLoop advertises every registered blob (one provider record per blob) and connects to the
// other providers, so that hosts sharing a blob exchange presence maps even when no other
// mechanism introduced them.
func (n *Node) dhtLoop(ctx context.Context, h host.Host, d *dht.IpfsDHT) {
	const reprovide = 12 * time.Hour
	provided := map[digest.Digest]time.Time{}
	t := time.NewTicker(n.cfg.DHTFindInterval)
	defer t.Stop()
	for {
		n.mu.Lock()
		blobs := make([]digest.Digest, 0, len(n.blobs))
		for b := range n.blobs {
			blobs = append(blobs, b)
		}
		n.mu.Unlock()
		for _, b := range blobs {
			key := BlobCID(b)
			if time.Since(provided[b]) > reprovide {
				pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				if err := d.Provide(pctx, key, true); err == nil {
					provided[b] = time.Now()
				} else if ctx.Err() == nil {
					n.log.Debug("DHT provide", "blob", b, "err", err)
				}
				cancel()
			}
			fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			for ai := range d.FindProvidersAsync(fctx, key, 0) {
				if ai.ID == n.id || len(ai.Addrs) == 0 && h.Network().Connectedness(ai.ID) != network.Connected {
					continue
				}
				n.noteFound(ai.ID, FoundDHT)
				if h.Network().Connectedness(ai.ID) != network.Connected {
					n.connect(ctx, h, ai)
				}
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.kick:
		}
	}
}
