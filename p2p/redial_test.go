package p2p

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestRestartedPeerIsRedialledSoon: a static peer that restarts (a daemon upgrade: same identity,
// same port) is connected again and its presence known long before RedialInterval, so reads in
// between do not fall back to the origin.
func TestRestartedPeerIsRedialledSoon(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	key := filepath.Join(t.TempDir(), "identity.key")
	cfgA := testConfig()
	cfgA.ListenAddrs = []string{fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)}
	cfgA.IdentityKeyPath = key
	m, _ := makeImage(t, 4, 4096, 7)

	start := func() (*Node, context.CancelFunc) {
		n, err := New(cfgA, newMemStore())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		go n.Run(ctx)
		<-n.Ready()
		if err := n.RegisterBlob(m, nil); err != nil {
			t.Fatal(err)
		}
		if err := n.Announce(m.Blob, m.Chunks[0]); err != nil {
			t.Fatal(err)
		}
		return n, cancel
	}
	a, cancelA := start()
	cfgB := testConfig()
	cfgB.RedialInterval = time.Minute // only the disconnect-triggered retries can be fast enough
	cfgB.StaticPeers = []string{a.Addrs()[0].String()}
	b := startNode(t, cfgB)
	if err := b.RegisterBlob(m, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "b learns a's presence", func() bool { return len(b.Lookup(m.Chunks[0].CID)) == 1 })

	cancelA()
	a.Close()
	waitFor(t, 10*time.Second, "b notices a left", func() bool { return len(b.Lookup(m.Chunks[0].CID)) == 0 })
	a2, cancelA2 := start()
	defer func() { cancelA2(); a2.Close() }()
	began := time.Now()
	waitFor(t, 20*time.Second, "b redials the restarted a and learns its presence", func() bool { return len(b.Lookup(m.Chunks[0].CID)) == 1 })
	t.Logf("reconnected and presence known %v after the restart (RedialInterval %v)", time.Since(began).Round(time.Millisecond), cfgB.RedialInterval)
}
