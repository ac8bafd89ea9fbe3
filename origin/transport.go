package origin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// retryableError marks a failure worth another attempt; after is the server's Retry-After.
type retryableError struct {
	err   error
	after time.Duration
}

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

func retryable(err error, after time.Duration) error { return &retryableError{err: err, after: after} }

// retryAfter reads a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if n, err := parseNonNegative(v); err == nil {
		return time.Duration(min(n, 3600)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), time.Hour)
	}
	return 0
}

// newHTTPClient builds the client for registries: TLS with the extra CAs, proxies from the
// environment, and a header timeout (stalled bodies are handled by the watchdog).
func newHTTPClient(cfg *Config) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = cfg.Timeout
	tr.MaxIdleConnsPerHost = cfg.MaxConcurrent
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("origin: CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("origin: CA file %s holds no PEM certificate", cfg.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			return nil
		},
	}, nil
}

// backoff returns the wait before retry number attempt (0-based): full jitter over an
// exponentially growing window, at least what the server asked for, at most max.
func backoff(attempt int, base, maxWait, serverAfter time.Duration) time.Duration {
	window := base << min(attempt, 20)
	if window > maxWait || window <= 0 {
		window = maxWait
	}
	d := time.Duration(rand.Int64N(int64(window) + 1))
	if serverAfter > d {
		d = serverAfter
	}
	return min(d, maxWait)
}

// watchdog cancels an attempt that makes no progress for d: no response headers, or no bytes
// of body, for that long. Every Read that returns data pushes the deadline back.
type watchdog struct {
	d       time.Duration
	timer   *time.Timer
	stalled atomic.Bool
}

func newWatchdog(d time.Duration, cancel context.CancelFunc) *watchdog {
	w := &watchdog{d: d}
	w.timer = time.AfterFunc(d, func() {
		w.stalled.Store(true)
		cancel()
	})
	return w
}

func (w *watchdog) kick() { w.timer.Reset(w.d) }
func (w *watchdog) stop() { w.timer.Stop() }

// watchedBody is a response body under a watchdog; Close releases the attempt's resources.
type watchedBody struct {
	rc      io.ReadCloser
	w       *watchdog
	what    string
	once    sync.Once
	release func()
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.w.kick()
	}
	if err != nil && err != io.EOF {
		if b.w.stalled.Load() {
			err = fmt.Errorf("%s: stalled, no data for %v", b.what, b.w.d)
		}
		err = retryable(fmt.Errorf("%s: reading body: %w", b.what, err), 0)
	}
	return n, err
}

func (b *watchedBody) Close() error {
	err := b.rc.Close()
	b.once.Do(func() {
		b.w.stop()
		b.release()
	})
	return err
}

// retrier runs an operation with the configured retries.
type retrier struct {
	retries       int
	base, maxWait time.Duration
	log           *slog.Logger
	onRetry       func()
}

// run calls attempt until it succeeds, fails with an error not worth retrying, or the retries
// are spent. The error of the last attempt is returned, wrapped with ErrUnavailable if the
// registry kept failing.
func (r *retrier) run(ctx context.Context, what string, attempt func(ctx context.Context) error) error {
	for i := 0; ; i++ {
		err := attempt(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		}
		var re *retryableError
		if !errors.As(err, &re) {
			return err
		}
		if i >= r.retries {
			return fmt.Errorf("%w (gave up after %d attempt(s)): %w", err, i+1, ErrUnavailable)
		}
		wait := backoff(i, r.base, r.maxWait, re.after)
		r.log.Debug("retrying", "what", what, "attempt", i+1, "wait", wait, "err", err)
		if r.onRetry != nil {
			r.onRetry()
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (last error: %v)", what, context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

// statusError turns a non-success status into an error naming what was asked.
func statusError(what string, resp *http.Response, body []byte, now time.Time) error {
	msg := fmt.Sprintf("%s: %s", what, resp.Status)
	if len(body) > 0 {
		msg += ": " + truncate(string(body), 200)
	}
	switch code := resp.StatusCode; {
	case code == http.StatusNotFound:
		return fmt.Errorf("%s: %w", msg, ErrNotFound)
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return fmt.Errorf("%s: %w", msg, ErrUnauthorized)
	case code == http.StatusRequestedRangeNotSatisfiable:
		return fmt.Errorf("%s: %w", msg, ErrRange)
	case code == http.StatusTooManyRequests || code == http.StatusRequestTimeout:
		return retryable(errors.New(msg), retryAfter(resp.Header, now))
	case code >= 500 && code != http.StatusNotImplemented && code != http.StatusHTTPVersionNotSupported:
		return retryable(errors.New(msg), retryAfter(resp.Header, now))
	default:
		return fmt.Errorf("%s (status %s): %w", msg, strconv.Itoa(code), ErrBadResponse)
	}
}
