// Package scope gives a long-lived component one owner for the work it starts outside any
// caller's lifetime: a shared fetch that outlives the caller who started it (others wait on it),
// a handler the network library calls without a context, a background loop. A Scope ends all of
// it at once and waits for it, so a component's Close returns only when nothing it started is
// still running.
//
//	s := scope.New()
//	s.Go(func(ctx context.Context) { loop(ctx) })          // ends when s closes
//	ctx, cancel := s.Detach(callerCtx, 30*time.Second)    // callerCtx's values, not its cancellation
//	defer cancel()
//	...
//	s.Close() // cancels every context above and waits for every goroutine started with Go
//
// The Scope's own context is the one context a component keeps: it is the component's lifetime,
// made and ended by the component itself, never a caller's.
package scope

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrClosed is the cause of every context of a closed Scope, and what Go reports by returning
// false.
var ErrClosed = errors.New("closed")

// Scope owns goroutines and detached contexts. The zero value is not usable: call New.
type Scope struct {
	root   context.Context
	cancel context.CancelCauseFunc

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// New returns an open Scope.
func New() *Scope {
	root, cancel := context.WithCancelCause(context.Background())
	return &Scope{root: root, cancel: cancel}
}

// Context ends when the Scope closes. For work with no caller (a handler the network library
// calls, a loop): anything with a caller should Detach from the caller's context instead.
func (s *Scope) Context() context.Context { return s.root }

// Go runs f in a goroutine that Close waits for, with a context that ends when the Scope closes.
// It returns false, and does not run f, once the Scope is closed.
func (s *Scope) Go(f func(ctx context.Context)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f(s.root)
	}()
	return true
}

// Track registers work that runs on a goroutine the caller did not start through Go (a
// singleflight call, a library's handler) so that Close waits for it: call done when it ends. It
// returns false, and nothing needs doing, once the Scope is closed.
func (s *Scope) Track() (done func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return func() {}, false
	}
	s.wg.Add(1)
	var once sync.Once
	return func() { once.Do(s.wg.Done) }, true
}

// Detach returns a context that carries parent's values but not its cancellation: it ends after
// timeout (0: no timeout), when cancel is called, or when the Scope closes. Work that others may
// be waiting on (a shared fetch) runs under it, so the first caller giving up does not fail it
// for everyone, while closing the owner still stops it.
func (s *Scope) Detach(parent context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	base := context.WithoutCancel(parent)
	var ctx context.Context
	var cancel context.CancelFunc
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(base, timeout)
	} else {
		ctx, cancel = context.WithCancel(base)
	}
	stop := context.AfterFunc(s.root, cancel)
	return ctx, func() { stop(); cancel() }
}

// Close cancels every context of the Scope and waits for every goroutine started with Go and
// every Track that has not called done. It is idempotent.
func (s *Scope) Close() {
	s.Cancel()
	s.Wait()
}

// Cancel is the first half of Close: it ends every context of the Scope and refuses new work,
// without waiting. A component that must release something its goroutines block on (a network
// host) between the two calls Cancel, releases it, then Waits.
func (s *Scope) Cancel() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel(ErrClosed)
}

// Wait waits for every goroutine started with Go and every Track that has not called done.
// Call it after Cancel (or it waits for the work to end on its own).
func (s *Scope) Wait() { s.wg.Wait() }

// Closed reports whether Close has been called.
func (s *Scope) Closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
