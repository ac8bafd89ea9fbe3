package p2p

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
)

// MembershipConfig turns on cluster membership (members.go): every host learns every other
// host through hashicorp/memberlist's gossip (SWIM), so that hosts agree on rendezvous owners
// without being connected to each other.
type MembershipConfig struct {
	// BindAddr and BindPort are where memberlist listens (UDP and TCP, the same port); the
	// address is also what it advertises, so give the host's cluster address, not 0.0.0.0,
	// unless AdvertiseAddr is set.
	BindAddr      string
	BindPort      int
	AdvertiseAddr string
	// Join are members' memberlist addresses (host:port) to join through at start, retried
	// while this host knows no other member and every RejoinInterval after that, so that two
	// halves of a healed partition find each other again.
	Join           []string
	RejoinInterval time.Duration
	// SecretKey (16, 24 or 32 bytes) encrypts and authenticates the gossip; Config.PSK is used
	// when this is empty and a PSK is set. Without either, anyone who reaches the port can
	// join and claim to be a member (see the package doc for what that costs).
	SecretKey []byte

	// NoOrigin says this host never fetches from an origin (registry): others then never pick
	// it as a rendezvous owner. The flag is fixed for the host's life, so members agree on the
	// candidates without waiting for metadata updates when an image is registered.
	NoOrigin bool

	// transport, if set, makes the transport that replaces memberlist's UDP/TCP one, for the
	// member name given (the cluster simulator's in-memory network); tune, if set, adjusts
	// memberlist's timing (the simulator runs every host on one machine's cores).
	transport func(name string) memberlist.Transport
	tune      func(*memberlist.Config)
}

// member is what this host knows of another host through membership.
type member struct {
	canFetch bool
	addrs    []ma.Multiaddr
}

// maxMetaAddrs bounds the listen addresses a member's metadata carries.
const maxMetaAddrs = 8

// Member metadata flags.
const metaCanFetch = 1 << 0

// encodeMemberMeta is a member's metadata: a version byte (1), flags, then up to maxMetaAddrs
// multiaddrs, each a uvarint length and its bytes, within limit bytes.
func encodeMemberMeta(canFetch bool, addrs []ma.Multiaddr, limit int) []byte {
	var flags byte
	if canFetch {
		flags |= metaCanFetch
	}
	b := []byte{1, flags}
	for i, a := range addrs {
		if i == maxMetaAddrs {
			break
		}
		ab := a.Bytes()
		if len(b)+binary.MaxVarintLen64+len(ab) > limit {
			break
		}
		b = binary.AppendUvarint(b, uint64(len(ab)))
		b = append(b, ab...)
	}
	return b
}

var errBadMeta = errors.New("p2p: bad member metadata")

// decodeMemberMeta reads encodeMemberMeta's bytes.
func decodeMemberMeta(b []byte) (member, error) {
	var m member
	if len(b) < 2 || b[0] != 1 {
		return m, errBadMeta
	}
	m.canFetch = b[1]&metaCanFetch != 0
	b = b[2:]
	for len(b) > 0 {
		if len(m.addrs) == maxMetaAddrs {
			return member{}, fmt.Errorf("%w: over %d addresses", errBadMeta, maxMetaAddrs)
		}
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return member{}, fmt.Errorf("%w: truncated address", errBadMeta)
		}
		a, err := ma.NewMultiaddrBytes(b[k : k+int(l)])
		if err != nil {
			return member{}, fmt.Errorf("%w: %v", errBadMeta, err)
		}
		m.addrs = append(m.addrs, a)
		b = b[k+int(l):]
	}
	return m, nil
}

// memberDelegate is memberlist's view of this node: its metadata, no messages of its own.
type memberDelegate struct{ n *Node }

func (d memberDelegate) NodeMeta(limit int) []byte {
	d.n.mu.Lock()
	h := d.n.host
	d.n.mu.Unlock()
	canFetch := !d.n.cfg.Membership.NoOrigin
	var addrs []ma.Multiaddr
	if h != nil {
		addrs = h.Addrs()
	}
	return encodeMemberMeta(canFetch, addrs, limit)
}
func (memberDelegate) NotifyMsg([]byte)                           {}
func (memberDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (memberDelegate) LocalState(join bool) []byte                { return nil }
func (memberDelegate) MergeRemoteState(buf []byte, join bool)     {}

// memberEvents keeps Node.members in step with memberlist's view.
type memberEvents struct{ n *Node }

func (e memberEvents) NotifyJoin(mn *memberlist.Node)   { e.n.memberUp(mn) }
func (e memberEvents) NotifyUpdate(mn *memberlist.Node) { e.n.memberUp(mn) }
func (e memberEvents) NotifyLeave(mn *memberlist.Node) {
	p, err := peer.Decode(mn.Name)
	if err != nil {
		return
	}
	e.n.mu.Lock()
	delete(e.n.members, p)
	e.n.mu.Unlock()
}

func (n *Node) memberUp(mn *memberlist.Node) {
	p, err := peer.Decode(mn.Name)
	if err != nil || p == n.id {
		if err != nil {
			n.log.Debug("member with a name that is not a peer ID", "name", mn.Name)
		}
		return
	}
	m, err := decodeMemberMeta(mn.Meta)
	if err != nil {
		n.log.Debug("member metadata", "peer", p, "err", err)
		return
	}
	if n.allow != nil && !n.allow[p] {
		return
	}
	n.mu.Lock()
	n.members[p] = &m
	h := n.host
	n.mu.Unlock()
	if h != nil && len(m.addrs) > 0 {
		h.Peerstore().AddAddrs(p, m.addrs, peerstore.RecentlyConnectedAddrTTL)
	}
}

// startMembership creates the memberlist and joins; it leaves and shuts down when ctx ends.
func (n *Node) startMembership(ctx context.Context) error {
	mc := n.cfg.Membership
	c := memberlist.DefaultLANConfig()
	c.Name = n.id.String()
	if mc.BindAddr != "" {
		c.BindAddr = mc.BindAddr
	}
	c.BindPort = mc.BindPort
	c.AdvertisePort = mc.BindPort
	c.AdvertiseAddr = mc.AdvertiseAddr
	c.Delegate = memberDelegate{n}
	c.Events = memberEvents{n}
	c.Logger = log.New(slogWriter{n.log}, "", 0)
	if mc.transport != nil {
		c.Transport = mc.transport(c.Name)
	}
	if mc.tune != nil {
		mc.tune(c)
	}
	switch {
	case len(mc.SecretKey) > 0:
		c.SecretKey = mc.SecretKey
	case len(n.cfg.PSK) > 0:
		c.SecretKey = n.cfg.PSK
	}
	ml, err := memberlist.Create(c)
	if err != nil {
		return fmt.Errorf("p2p membership: %w", err)
	}
	n.mu.Lock()
	n.ml = ml
	n.mu.Unlock()
	n.goFn(func() {
		defer func() {
			_ = ml.Leave(time.Second)
			_ = ml.Shutdown()
		}()
		rejoin := mc.RejoinInterval
		if rejoin <= 0 {
			rejoin = time.Minute
		}
		var last time.Time
		for {
			if len(mc.Join) > 0 && (ml.NumMembers() <= 1 || time.Since(last) >= rejoin) {
				if _, err := ml.Join(mc.Join); err != nil {
					n.log.Debug("joining the cluster's members", "err", err)
				}
				last = time.Now()
			}
			// Jittered: hosts that start together and were refused together (memberlist
			// serves at most 128 push-pulls at once, and a seed that every host of a large
			// cluster joins through refuses the rest) do not all retry in the same instant.
			t := time.NewTimer(time.Duration(float64(n.cfg.RedialInterval) * (0.5 + rand.Float64())))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	})
	return nil
}

// Members is how many other hosts membership knows (0 without membership).
func (n *Node) Members() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.members)
}

// slogWriter passes memberlist's log lines to slog at debug level.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(b []byte) (int, error) {
	w.l.Debug("memberlist", "line", string(b))
	return len(b), nil
}

var _ io.Writer = slogWriter{}
