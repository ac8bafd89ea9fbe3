package scope

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

type key struct{}

func TestCloseCancelsAndWaits(t *testing.T) {
	s := New()
	var ended atomic.Int32
	for range 10 {
		if !s.Go(func(ctx context.Context) {
			<-ctx.Done()
			time.Sleep(5 * time.Millisecond) // Close must wait for this
			ended.Add(1)
		}) {
			t.Fatal("Go on an open scope returned false")
		}
	}
	done, ok := s.Track()
	if !ok {
		t.Fatal("Track on an open scope")
	}
	go func() {
		<-s.Context().Done()
		ended.Add(1)
		done()
	}()
	s.Close()
	if got := ended.Load(); got != 11 {
		t.Fatalf("Close returned with %d of 11 workers ended", got)
	}
	if s.Go(func(context.Context) { t.Error("ran after Close") }) {
		t.Fatal("Go after Close returned true")
	}
	if _, ok := s.Track(); ok {
		t.Fatal("Track after Close returned ok")
	}
	if !errors.Is(context.Cause(s.Context()), ErrClosed) {
		t.Fatalf("cause %v", context.Cause(s.Context()))
	}
	s.Close() // idempotent
}

func TestDetach(t *testing.T) {
	s := New()
	defer s.Close()
	parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	ctx, cancel := s.Detach(parent, 0)
	defer cancel()
	cancelParent()
	if ctx.Err() != nil {
		t.Fatal("a detached context ended with its parent")
	}
	if ctx.Value(key{}) != "v" {
		t.Fatal("a detached context lost its parent's values")
	}
	tctx, tcancel := s.Detach(parent, 10*time.Millisecond)
	defer tcancel()
	select {
	case <-tctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("timeout not applied")
	}
	s.Close()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a detached context")
	}
}
