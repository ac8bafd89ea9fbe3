package p2p

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-p2p/shoal/chunk/zchunk"
)

// Config holds the optional settings of a Node. Start from DefaultConfig and check with Validate
// (New calls it).
type Config struct {
	// ListenAddrs are libp2p multiaddrs to listen on (TCP and QUIC by default).
	ListenAddrs []string
	// IdentityKeyPath is the file of the host's private key, created (mode 0600) on first start so
	// the peer ID survives restarts. Empty: a new key each start (tests).
	IdentityKeyPath string
	// PSK, if set, makes a private network: only hosts with the same 32-byte key can connect.
	// libp2p's QUIC cannot carry a PSK, so QUIC listen addresses are refused with one.
	PSK []byte
	// Allowlist, if not empty, is the only peers this host talks to: others cannot connect,
	// fetch or announce.
	Allowlist []peer.ID

	// BlobThrough: this host's registry mirror fetches blobs from upstreams for peers that ask
	// it as a blob's rendezvous owner (BlobThroughProtocol; the LocalChunks given to New must
	// implement LocalBlobs and BlobFetcher). Only such hosts are candidate owners.
	BlobThrough bool

	// StaticPeers are multiaddrs with /p2p/<id> (--peer), dialled at start and redialled while
	// disconnected.
	StaticPeers []string
	// DNSAddr is a name whose _dnsaddr TXT records list peer multiaddrs ("cluster.example.com" or
	// "/dnsaddr/cluster.example.com"), resolved every DNSInterval.
	DNSAddr     string
	DNSInterval time.Duration
	// DiscoverDNS is NAME:PORT: a DNS name with an A or AAAA record for every host (a
	// Kubernetes headless Service over the DaemonSet's pods) and the port of their identity
	// endpoint (IdentityListen), re-resolved every DNSInterval (identity.go). No record lists
	// peer IDs: each host is asked for its own.
	DiscoverDNS string
	// IdentityListen, if set (host:port), serves this host's peer ID and listen addresses over
	// HTTP at IdentityPath, for other hosts' DiscoverDNS.
	IdentityListen string
	// MDNS turns on multicast DNS discovery on the LAN.
	MDNS bool
	// DHT turns on the Kademlia DHT (LAN mode, protocol prefix /shoal): blob-level provider
	// records find hosts that hold or want a blob beyond the directly discovered ones.
	DHT bool
	// DHTFindInterval is how often providers of the registered blobs are looked up.
	DHTFindInterval time.Duration
	// RedialInterval is how often static and DNS peers are redialled while disconnected.
	RedialInterval time.Duration

	// ConnsLow and ConnsHigh are the connection manager's watermarks; peers that share a blob
	// with this host are protected from trimming.
	ConnsLow, ConnsHigh int
	// MaxMemory bounds the libp2p resource manager's memory (bytes); MaxFDs its file descriptors.
	MaxMemory int64
	MaxFDs    int

	// RequestTimeout bounds one chunk request to a peer that holds the chunk, dial included.
	RequestTimeout time.Duration
	// CoalesceTimeout bounds a fetch-through request: the chosen peer's origin fetch included.
	// After it the requester goes to the origin itself.
	CoalesceTimeout time.Duration
	// HedgeDelay is the hedge delay used until a peer has enough latency samples; after that a
	// request is hedged to the next holder once it runs past the peer's recent p90, but never
	// sooner than MinHedgeDelay.
	HedgeDelay    time.Duration
	MinHedgeDelay time.Duration
	// MaxAttempts bounds the peers asked for one chunk before coalescing or the origin.
	MaxAttempts int
	// HedgeFactor scales the cluster's normal latency (the lower median, over peers in good
	// standing, of each peer's recent p99) into the slow threshold: a request that runs past
	// HedgeFactor × that is slow. A request to the last (or only) holder is hedged to the
	// rendezvous owner or the origin at the slow threshold, and one to any holder is hedged to
	// the next at min(its p90, the slow threshold). Until enough samples exist the cluster's
	// normal latency is taken to be HedgeDelay.
	HedgeFactor float64
	// StandingWindow is how many recent requests to a peer its standing is judged over. A request
	// that timed out or that lost a race after running past the slow threshold is bad; one that
	// won but was slow is slow. A peer whose (bad + slow) share reaches DemoteRate is demoted
	// (asked only when no peer in good standing holds the chunk, and hedged at once); one whose
	// bad share reaches SlowBanRate, over at least half a window, is banned. 0: never.
	StandingWindow int
	DemoteRate     float64
	SlowBanRate    float64

	// SuperSeed makes this host serve each chunk of a blob about as often as its others before
	// repeating one, answering busy to requesters that have other holders to ask (see
	// FlagHaveOthers), so a seed's upload spreads over the swarm instead of forming a star.
	SuperSeed bool
	// UploadSlots bounds the held chunks this host uploads at once, to all peers together;
	// further requests queue (reported to requesters as load) until a slot frees, within their
	// deadline. Few uploads at a time each get a large share of the uplink and finish soon, so
	// their recipients can pass the chunks on (BitTorrent's upload slots): a seed sharing a slow
	// uplink among every reader's requests would finish none of them for seconds. 0: unlimited.
	UploadSlots int

	// WireCompression is the zstd level (zchunk.MinLevel to MaxLevel) at which this host
	// compresses a chunk it sends to a ChunkProtocolV3 peer, when the chunk's manifest stores
	// it compressed (a chunk the image build stored raw does not compress, and is sent raw);
	// 0 sends every chunk raw. A chunk that arrived compressed is sent on as the frame it came
	// in. The default, 1, is the fastest: it costs the sender about 8-10 times a sha256 of the
	// same bytes and brings source text to about a quarter (BENCHMARKS.md, "Compressed chunks"),
	// which pays on a link slower than the sender's compression (a gigabit LAN); on a faster
	// link or a sender short of CPU, 0.
	WireCompression int

	// PeerConcurrency bounds the requests served to one peer at once; PeerRequestRate and
	// PeerRequestBurst its requests per second. Over them a request is answered busy.
	PeerConcurrency  int
	PeerRequestRate  float64
	PeerRequestBurst int
	// PeerUploadRate bounds the bytes per second uploaded to one peer; 0 is unlimited.
	PeerUploadRate int64
	// BanAfter corrupt or truncated responses ban a peer for BanDuration. FloodBanAfter requests
	// refused for going over the rate ban it too.
	BanAfter      int
	FloodBanAfter int
	// StallBanAfter bad requests in a row (timed out, or lost to a hedge after running past the
	// slow threshold: see StandingWindow) ban a peer too; 0 never.
	StallBanAfter int
	BanDuration   time.Duration

	// Logger receives the subsystem's logs (nil: slog.Default()).
	Logger *slog.Logger
	// Rights, if set, checks and presents pull rights for private repositories (rights.go):
	// blobs and objects marked with SetPrivate are served only to peers that proved pull rights,
	// and chunks of no registered blob are not served. Nil: every chunk this host holds is served
	// to every peer allowed to connect, as before.
	Rights Rights
	// RightsTTL bounds how long a peer's proven pull rights are trusted without asking the
	// registry again (also bounded by the token's expiry): rights revoked at the registry stop
	// sharing within it.
	RightsTTL time.Duration

	// Membership, if set, makes every host know every other through gossip (members.go), so
	// that rendezvous owners are chosen among all members, not only connected peers, and hosts
	// with different connections still agree on them. Nil: owners among connected peers.
	Membership *MembershipConfig

	// Registerer receives the shoal_p2p_* metrics (nil: not registered).
	Registerer prometheus.Registerer

	// chunkVersion, if not 0, is the newest chunk protocol version this host serves and asks
	// for: tests run a real node of an earlier release's protocol (2 is ChunkProtocolV2).
	chunkVersion int
	// netResolver resolves DiscoverDNS (nil: the system's); the p2p tests point it at a DNS
	// server of their own.
	netResolver *net.Resolver
	// hostFunc, if set, makes the libp2p host instead of newHost: the cluster simulator
	// (clustersim_test.go) runs real nodes on hosts of go-libp2p's mock network. The host it
	// returns has no connection gater, so bans there close connections but do not refuse new ones.
	hostFunc func(key crypto.PrivKey) (host.Host, error)
}

// DefaultConfig returns settings for a daemon on a LAN.
func DefaultConfig() Config {
	return Config{
		ListenAddrs:      []string{"/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1", "/ip6/::/tcp/4001", "/ip6/::/udp/4001/quic-v1"},
		DNSInterval:      time.Minute,
		MDNS:             true,
		DHT:              true,
		DHTFindInterval:  30 * time.Second,
		RedialInterval:   10 * time.Second,
		ConnsLow:         200,
		ConnsHigh:        400,
		MaxMemory:        1 << 30,
		MaxFDs:           4096,
		RequestTimeout:   10 * time.Second,
		CoalesceTimeout:  60 * time.Second,
		HedgeDelay:       200 * time.Millisecond,
		MinHedgeDelay:    5 * time.Millisecond,
		MaxAttempts:      4,
		HedgeFactor:      4,
		StandingWindow:   16,
		DemoteRate:       0.25,
		SlowBanRate:      0.5,
		SuperSeed:        true,
		WireCompression:  1,
		RightsTTL:        5 * time.Minute,
		UploadSlots:      8,
		PeerConcurrency:  32,
		PeerRequestRate:  2000,
		PeerRequestBurst: 4000,
		BanAfter:         3,
		StallBanAfter:    5,
		FloodBanAfter:    1000,
		BanDuration:      10 * time.Minute,
	}
}

// Validate checks ranges and combinations and says which setting to change.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("p2p config: "+format, a...)) }
	if len(c.ListenAddrs) == 0 {
		bad("ListenAddrs is empty: give at least one, e.g. /ip4/0.0.0.0/tcp/4001")
	}
	if c.RightsTTL <= 0 || c.RightsTTL > maxGrantTTL {
		bad("RightsTTL %v must be in (0, %v]: how long a peer's proven pull rights are trusted", c.RightsTTL, maxGrantTTL)
	}
	if len(c.PSK) != 0 {
		if len(c.PSK) != 32 {
			bad("PSK is %d bytes, want 32", len(c.PSK))
		}
		for _, a := range c.ListenAddrs {
			if strings.Contains(a, "/quic") {
				bad("listen address %s: QUIC cannot carry a private network key; use TCP addresses with PSK", a)
			}
		}
	}
	if _, err := parsePeers(c.StaticPeers); err != nil {
		bad("StaticPeers: %v", err)
	}
	pos := func(name string, d time.Duration) {
		if d <= 0 {
			bad("%s is %v, want > 0", name, d)
		}
	}
	pos("RequestTimeout", c.RequestTimeout)
	pos("CoalesceTimeout", c.CoalesceTimeout)
	pos("HedgeDelay", c.HedgeDelay)
	pos("BanDuration", c.BanDuration)
	pos("RedialInterval", c.RedialInterval)
	if c.DNSAddr != "" || c.DiscoverDNS != "" {
		pos("DNSInterval", c.DNSInterval)
	}
	if c.DiscoverDNS != "" {
		if _, _, err := splitDiscoverDNS(c.DiscoverDNS); err != nil {
			bad("%v", err)
		}
	}
	if c.IdentityListen != "" {
		if _, _, err := net.SplitHostPort(c.IdentityListen); err != nil {
			bad("IdentityListen %q is not host:port, e.g. 0.0.0.0:7481", c.IdentityListen)
		}
	}
	if c.DHT {
		pos("DHTFindInterval", c.DHTFindInterval)
	}
	if c.MinHedgeDelay < 0 || c.MinHedgeDelay > c.HedgeDelay {
		bad("MinHedgeDelay %v must be in [0, HedgeDelay %v]", c.MinHedgeDelay, c.HedgeDelay)
	}
	if c.RequestTimeout > c.CoalesceTimeout {
		bad("RequestTimeout %v is longer than CoalesceTimeout %v: a fetch-through includes a request", c.RequestTimeout, c.CoalesceTimeout)
	}
	if c.HedgeFactor < 1 {
		bad("HedgeFactor %v, want >= 1 (a multiple of the cluster's p99)", c.HedgeFactor)
	}
	if c.StandingWindow < 2 || c.StandingWindow > 256 {
		bad("StandingWindow %d, want 2..256 requests", c.StandingWindow)
	}
	if c.DemoteRate <= 0 || c.DemoteRate > 1 || c.SlowBanRate < 0 || c.SlowBanRate > 1 {
		bad("DemoteRate %v must be in (0, 1] and SlowBanRate %v in [0, 1] (0: never ban for slowness)", c.DemoteRate, c.SlowBanRate)
	}
	if c.MaxAttempts < 1 {
		bad("MaxAttempts is %d, want >= 1", c.MaxAttempts)
	}
	if c.ConnsLow < 1 || c.ConnsHigh < c.ConnsLow {
		bad("connection watermarks low %d high %d: want 1 <= low <= high", c.ConnsLow, c.ConnsHigh)
	}
	if c.MaxMemory < 64<<20 {
		bad("MaxMemory %d is under 64 MiB: one chunk transfer can need 16 MiB", c.MaxMemory)
	}
	if c.MaxFDs < 64 {
		bad("MaxFDs %d, want >= 64", c.MaxFDs)
	}
	if c.PeerConcurrency < 1 || c.PeerRequestRate <= 0 || c.PeerRequestBurst < 1 {
		bad("per-peer limits concurrency %d rate %v burst %d: want all > 0", c.PeerConcurrency, c.PeerRequestRate, c.PeerRequestBurst)
	}
	if c.WireCompression != 0 && (c.WireCompression < zchunk.MinLevel || c.WireCompression > zchunk.MaxLevel) {
		bad("WireCompression %d, want 0 (send raw) or a zstd level %d to %d", c.WireCompression, zchunk.MinLevel, zchunk.MaxLevel)
	}
	if c.chunkVersion < 0 || c.chunkVersion > len(chunkProtocols) {
		bad("chunk protocol version %d, want 1 to %d", c.chunkVersion, len(chunkProtocols))
	}
	if c.UploadSlots < 0 {
		bad("UploadSlots %d, want >= 0 (0 = unlimited)", c.UploadSlots)
	}
	if c.PeerUploadRate < 0 {
		bad("PeerUploadRate %d, want >= 0 (0 = unlimited)", c.PeerUploadRate)
	}
	if c.StallBanAfter < 0 {
		bad("StallBanAfter %d, want >= 0 (0: never)", c.StallBanAfter)
	}
	if c.BanAfter < 1 || c.FloodBanAfter < 1 {
		bad("BanAfter %d and FloodBanAfter %d, want >= 1", c.BanAfter, c.FloodBanAfter)
	}
	return errors.Join(errs...)
}
