package daemon

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-p2p/shoal/chunk"
)

// TestMetaFlightsCoalesce: every caller of a known object, this host's loads and peers alike,
// shares one origin fetch; a failed fetch is tried again by the next caller; an object's bytes
// go once the last load that named it ends.
func TestMetaFlightsCoalesce(t *testing.T) {
	m := newMetaFlights()
	obj := bytes.Repeat([]byte("bootstrap"), 1000)
	d := digest.FromBytes(obj)
	var fetches atomic.Int64
	fail := atomic.Bool{}
	fail.Store(true)
	gate := make(chan struct{})
	fetch := func(context.Context) ([]byte, error) {
		fetches.Add(1)
		<-gate
		if fail.Load() {
			return nil, errors.New("registry hiccup")
		}
		return obj, nil
	}
	release := m.expect(d, int64(len(obj)), fetch)
	release2 := m.expect(d, int64(len(obj)), fetch) // a second load naming it
	if !m.knows(d) {
		t.Fatal("expected object not known")
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, ok, err := m.get(t.Context(), d)
			if !ok {
				err = errors.New("not known")
			}
			errs <- err
		})
	}
	time.Sleep(50 * time.Millisecond)
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err == nil {
			t.Fatal("a caller got no error from the failed flight")
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches for 8 callers, want 1", n)
	}
	fail.Store(false)
	for range 3 {
		b, ok, err := m.get(t.Context(), d)
		if !ok || err != nil || !bytes.Equal(b, obj) {
			t.Fatalf("after the failure: %d bytes, ok %v, %v", len(b), ok, err)
		}
	}
	if n := fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2 (one failed, one kept)", n)
	}
	release()
	if !m.knows(d) {
		t.Fatal("forgotten while a second load still names it")
	}
	release2()
	if m.knows(d) {
		t.Fatal("still known after every load that named it ended")
	}
	if _, ok, _ := m.get(t.Context(), d); ok {
		t.Fatal("get of a forgotten object")
	}
}

// TestMetaFlightsRefuseWrongBytes: an origin answer that is not the object (or is larger than
// it may be) fails the flight; nobody gets those bytes.
func TestMetaFlightsRefuseWrongBytes(t *testing.T) {
	m := newMetaFlights()
	obj := []byte("chunk manifest")
	d := digest.FromBytes(obj)
	defer m.expect(d, int64(len(obj)), func(context.Context) ([]byte, error) { return []byte("something else"), nil })()
	if b, _, err := m.get(t.Context(), d); !errors.Is(err, chunk.ErrCorrupt) || b != nil {
		t.Fatalf("wrong bytes: %q, %v; want ErrCorrupt", b, err)
	}
	big := bytes.Repeat([]byte("x"), 100)
	bd := digest.FromBytes(big)
	defer m.expect(bd, 10, func(context.Context) ([]byte, error) { return big, nil })()
	if b, _, err := m.get(t.Context(), bd); err == nil || b != nil {
		t.Fatalf("oversized: %d bytes, %v", len(b), err)
	}
}

// TestMetaFlightsForPeer: a peer's request is "not found" at once on a host that loads nothing,
// waits for a running load to name the object, and gives up after objectThroughWait.
func TestMetaFlightsForPeer(t *testing.T) {
	m := newMetaFlights()
	obj := []byte("bootstrap bytes")
	d := digest.FromBytes(obj)
	start := time.Now()
	if _, ok, err := m.forPeer(t.Context(), d, 1<<20); ok || err != nil {
		t.Fatalf("idle host: ok %v, %v", ok, err)
	}
	if time.Since(start) > objectThroughWait/2 {
		t.Fatalf("an idle host made the asker wait %v", time.Since(start))
	}
	end := m.beginLoad()
	defer end()
	go func() {
		time.Sleep(100 * time.Millisecond) // the load reaches the manifest
		m.expect(d, int64(len(obj)), func(context.Context) ([]byte, error) { return obj, nil })
	}()
	b, ok, err := m.forPeer(t.Context(), d, 1<<20)
	if !ok || err != nil || !bytes.Equal(b, obj) {
		t.Fatalf("while loading: %q, ok %v, %v", b, ok, err)
	}
	start = time.Now()
	if _, ok, err := m.forPeer(t.Context(), digest.FromString("not in this image"), 1<<20); ok || err != nil {
		t.Fatalf("object no load names: ok %v, %v", ok, err)
	}
	if w := time.Since(start); w < objectThroughWait {
		t.Fatalf("gave up after %v, before objectThroughWait", w)
	}
}
