package p2p

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// simGossipNet carries the cluster simulator's membership gossip in memory with the semantics
// of the network memberlist is built for: a datagram is queued at its destination or lost,
// never waited for, and a host that is gone loses what is sent to it. memberlist's own
// MockNetwork hands each datagram over an unbuffered channel, so a send waits until the
// receiver's packet loop takes it; two hosts whose packet loops answer each other's pings at
// the same moment then wait on each other forever, and every host that sends to either sticks
// too. At 300 hosts that froze the whole cluster's gossip within seconds (it was why
// membership "never converged" there). Streams (push-pull, joins) are in-memory pipes, as
// TCP connections on a LAN.
type simGossipNet struct {
	mu      sync.Mutex
	byAddr  map[string]*simGossip
	byName  map[string]*simGossip
	next    int
	dropped atomic.Int64 // datagrams lost to a full receive queue
}

// simGossipQueue is a host's receive queue in datagrams (a socket's receive buffer).
const simGossipQueue = 512

type simGossip struct {
	net     *simGossipNet
	addr    string
	packets chan *memberlist.Packet
	streams chan net.Conn
	closed  atomic.Bool
}

type simGossipAddr string

func (a simGossipAddr) Network() string { return "sim" }
func (a simGossipAddr) String() string  { return string(a) }

var _ memberlist.NodeAwareTransport = (*simGossip)(nil)

func (n *simGossipNet) newTransport(name string) *simGossip {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byAddr == nil {
		n.byAddr, n.byName = map[string]*simGossip{}, map[string]*simGossip{}
	}
	n.next++
	g := &simGossip{net: n, addr: fmt.Sprintf("10.255.%d.%d:7946", n.next>>8&0xff, n.next&0xff),
		packets: make(chan *memberlist.Packet, simGossipQueue), streams: make(chan net.Conn)}
	n.byAddr[g.addr], n.byName[name] = g, g
	return g
}

func (n *simGossipNet) peer(a memberlist.Address) *simGossip {
	n.mu.Lock()
	defer n.mu.Unlock()
	if g := n.byName[a.Name]; a.Name != "" && g != nil {
		return g
	}
	return n.byAddr[a.Addr]
}

func (g *simGossip) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	h, p, err := net.SplitHostPort(g.addr)
	if err != nil {
		return nil, 0, err
	}
	port, err := strconv.Atoi(p)
	return net.ParseIP(h), port, err
}

func (g *simGossip) WriteTo(b []byte, addr string) (time.Time, error) {
	return g.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (g *simGossip) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	d := g.net.peer(a)
	if d == nil || d.closed.Load() || g.closed.Load() {
		return now, nil // lost, as a datagram to a host that is gone
	}
	select {
	case d.packets <- &memberlist.Packet{Buf: append([]byte(nil), b...), From: simGossipAddr(g.addr), Timestamp: now}:
	default:
		g.net.dropped.Add(1)
	}
	return now, nil
}

func (g *simGossip) PacketCh() <-chan *memberlist.Packet { return g.packets }

func (g *simGossip) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return g.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (g *simGossip) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := g.net.peer(a)
	if d == nil || d.closed.Load() || g.closed.Load() {
		return nil, fmt.Errorf("sim gossip: no route to %s", a)
	}
	c1, c2 := net.Pipe()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case d.streams <- c1:
		return c2, nil
	case <-t.C:
		_, _ = c1.Close(), c2.Close()
		return nil, fmt.Errorf("sim gossip: dial %s: timed out", a)
	}
}

func (g *simGossip) StreamCh() <-chan net.Conn { return g.streams }

func (g *simGossip) Shutdown() error {
	g.closed.Store(true)
	return nil
}
