package p2p

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestShutdownUnderLoadLeavesNoGoroutine closes every node of a cluster while fetches (from
// holders, through the rendezvous owner and from the origin) are in flight: Close must return only
// when nothing the nodes started is still running.
func TestShutdownUnderLoadLeavesNoGoroutine(t *testing.T) {
	before := goleak.IgnoreCurrent()
	func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		nodes := startCluster(t, 3, nil)
		m, o := makeImage(t, 64, 64<<10, 7)
		o.delay = 2 * time.Millisecond
		for _, n := range nodes {
			if err := n.RegisterBlob(m, o.fetch); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 10*time.Second, "swarm", func() bool { return nodes[0].SwarmSize(m.Blob) == 2 })
		var wg sync.WaitGroup
		for _, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = readImage(ctx, n, m, o, 8)
			}()
		}
		time.Sleep(30 * time.Millisecond) // fetches in flight
		for _, n := range nodes {
			if err := n.Close(); err != nil {
				t.Error(err)
			}
		}
		cancel()
		wg.Wait()
	}()
	// libp2p's own pools and timers wind down asynchronously after Host.Close; give them a
	// moment, then nothing may be left but what ran before the test.
	goleak.VerifyNone(t, before)
}
