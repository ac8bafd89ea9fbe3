package p2p

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	manet "github.com/multiformats/go-multiaddr/net"
)

// TestSecondNodeOnTakenPortFails: a node asked to listen on a TCP port another node holds does
// not start (libp2p's TCP transport would otherwise bind it with SO_REUSEPORT and the kernel
// would split incoming connections between the two), even when its other listen address (QUIC
// on a free port) works.
func TestSecondNodeOnTakenPortFails(t *testing.T) {
	first := startNode(t, testConfig())
	var port string
	for _, a := range first.Addrs() {
		if _, addr, err := manet.DialArgs(a); err == nil {
			_, port, _ = net.SplitHostPort(addr)
			break
		}
	}
	if port == "" {
		t.Fatalf("no TCP port among %v", first.Addrs())
	}
	free, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpPort := free.LocalAddr().(*net.UDPAddr).Port
	free.Close()

	for _, listen := range [][]string{
		{"/ip4/127.0.0.1/tcp/" + port},
		{"/ip4/127.0.0.1/tcp/" + port, fmt.Sprintf("/ip4/127.0.0.1/udp/%d/quic-v1", udpPort)},
	} {
		cfg := testConfig()
		cfg.ListenAddrs = listen
		n, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- n.Run(t.Context()) }()
		select {
		case err := <-errc:
			if err == nil || !strings.Contains(err.Error(), "/tcp/"+port) || !strings.Contains(err.Error(), "in use") {
				t.Errorf("listen %v: Run = %v, want an error naming the port and saying it is in use", listen, err)
			}
		case <-n.Ready():
			t.Errorf("listen %v: the node started on a port another node holds: %v", listen, n.Addrs())
		case <-time.After(30 * time.Second):
			t.Fatalf("listen %v: Run neither failed nor started", listen)
		}
		_ = n.Close()
	}
	// The first node still serves: the failed start did not disturb its listener.
	if got := first.Addrs(); len(got) == 0 {
		t.Fatal("first node lost its addresses")
	}
}
