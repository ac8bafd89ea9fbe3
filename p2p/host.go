package p2p

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	tls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// loadIdentity reads the host key at path, creating it on first use. An empty path gives a new
// key that lives as long as the process.
func loadIdentity(path string) (crypto.PrivKey, error) {
	if path == "" {
		k, _, err := crypto.GenerateEd25519Key(rand.Reader)
		return k, err
	}
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("identity key %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, err
	}
	b, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	// Write then rename so a crash never leaves half a key that would change the peer ID.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	return k, nil
}

// gater refuses connections from peers outside the allowlist and from banned peers, before any
// stream can be opened.
type gater struct{ n *Node }

var _ interface {
	InterceptPeerDial(peer.ID) bool
	InterceptAddrDial(peer.ID, ma.Multiaddr) bool
	InterceptAccept(network.ConnMultiaddrs) bool
	InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool
	InterceptUpgraded(network.Conn) (bool, control.DisconnectReason)
} = gater{}

func (g gater) InterceptPeerDial(p peer.ID) bool                                { return g.n.allowed(p) }
func (g gater) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool                { return g.n.allowed(p) }
func (g gater) InterceptAccept(network.ConnMultiaddrs) bool                     { return true }
func (g gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }
func (g gater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return g.n.allowed(p)
}

// streamMuxer is yamux as libp2p configures it, with every stream's receive window opened to
// chunkStreamWindow at once. A chunk stream carries one response of up to a chunk; with yamux's
// initial 256 KiB window a 1 MiB chunk waits for three window updates (each a round trip through
// both hosts' schedulers: milliseconds on a loaded host, 12 ms a chunk through two daemons at a
// load of 13 on 2 cores), and a stream lives too short for yamux's auto-tuning to grow it. The
// window is credit, not memory: yamux allocates buffers only for what arrives, and the reader
// (ReadResponse*) drains it into the one buffer of the chunk's length as it comes.
func streamMuxer() *yamux.Transport {
	cfg := *yamux.DefaultTransport
	cfg.InitialStreamWindowSize = chunkStreamWindow
	cfg.MaxStreamWindowSize = max(cfg.MaxStreamWindowSize, chunkStreamWindow)
	return (*yamux.Transport)(&cfg)
}

// chunkStreamWindow is the receive window each stream starts with: a 1 MiB chunk and its framing
// (and a 4 MiB one) in one flight.
const chunkStreamWindow = 4 << 20

// newHost builds the libp2p host: TCP and QUIC, Noise and TLS, yamux, a resource manager sized
// for a daemon, a connection manager, the gater. No relay, NAT mapping or hole punching: Shoal
// runs on a LAN or a routed cluster network.
func (n *Node) newHost() (host.Host, error) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	// Chunk streams are short and many; presence streams are one per peer.
	for _, id := range chunkProtocols {
		limits.AddProtocolLimit(id,
			rcmgr.BaseLimit{Streams: 4096, StreamsInbound: 2048, StreamsOutbound: 2048, Memory: 256 << 20},
			rcmgr.BaseLimitIncrease{})
		limits.AddProtocolPeerLimit(id,
			rcmgr.BaseLimit{Streams: 512, StreamsInbound: 256, StreamsOutbound: 256, Memory: 64 << 20},
			rcmgr.BaseLimitIncrease{})
	}
	limits.AddProtocolPeerLimit(PresenceProtocol,
		rcmgr.BaseLimit{Streams: 8, StreamsInbound: 4, StreamsOutbound: 4, Memory: 4 << 20},
		rcmgr.BaseLimitIncrease{})
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.Scale(n.cfg.MaxMemory, n.cfg.MaxFDs)))
	if err != nil {
		return nil, fmt.Errorf("p2p resource manager: %w", err)
	}
	cm, err := connmgr.NewConnManager(n.cfg.ConnsLow, n.cfg.ConnsHigh)
	if err != nil {
		return nil, fmt.Errorf("p2p connection manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(n.key),
		libp2p.ListenAddrStrings(n.cfg.ListenAddrs...),
		// No SO_REUSEPORT: with it a second daemon binds a port this one holds and the kernel
		// splits the connections between them (checkListening makes that a start error).
		libp2p.Transport(tcp.NewTCPTransport, tcp.DisableReuseport()),
		// TLS first: AES-GCM with hardware support moves chunks faster than Noise's ChaCha20.
		libp2p.Security(tls.ID, tls.New),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, streamMuxer()),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.ConnectionGater(gater{n}),
		libp2p.DisableRelay(),
		libp2p.UserAgent("shoal"),
		libp2p.DisableMetrics(),
	}
	if len(n.cfg.PSK) != 0 {
		opts = append(opts, libp2p.PrivateNetwork(pnet.PSK(n.cfg.PSK)))
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("p2p host on %v: %w%s", n.cfg.ListenAddrs, err, inUseHint(err))
	}
	if err := n.checkListening(h); err != nil {
		_ = h.Close()
		return nil, err
	}
	return h, nil
}
