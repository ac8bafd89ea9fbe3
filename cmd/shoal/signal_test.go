package main

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-p2p/shoal/internal/daemon"
)

// TestOnSignal: the signal ends the context with its cause; stop ends the watch (and waits for
// its goroutine) whether or not the signal came.
func TestOnSignal(t *testing.T) {
	ctx, stop := onSignal(context.Background(), syscall.SIGUSR1, daemon.ErrRestart)
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("SIGUSR1 did not end the context")
	}
	if !errors.Is(context.Cause(ctx), daemon.ErrRestart) {
		t.Errorf("cause %v, want ErrRestart", context.Cause(ctx))
	}
	stop()

	ctx, stop = onSignal(context.Background(), syscall.SIGUSR1, daemon.ErrRestart)
	done := make(chan struct{})
	go func() { stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("stop without a signal did not return")
	}
	if context.Cause(ctx) != context.Canceled {
		t.Errorf("cause after stop: %v", context.Cause(ctx))
	}
}
