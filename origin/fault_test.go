package origin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// upstreamResp is a response from the registry behind the fault proxy, read whole.
type upstreamResp struct {
	status int
	header http.Header
	body   []byte
}

// faultProxy forwards to a registry and lets a fault take over matching requests. Faults see the
// 1-based count n of matching requests so far.
type faultProxy struct {
	upstream string
	match    func(r *http.Request) bool
	fault    func(n int, w http.ResponseWriter, r *http.Request, fetch func(*http.Request) upstreamResp) bool

	mu sync.Mutex
	n  int
}

const redirectPrefix = "/redirected"

func (p *faultProxy) fetch(r *http.Request) upstreamResp {
	path := strings.TrimPrefix(r.URL.Path, redirectPrefix)
	u := "http://" + p.upstream + path
	if r.URL.RawQuery != "" {
		u += "?" + r.URL.RawQuery
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, u, r.Body)
	if err != nil {
		return upstreamResp{status: 500}
	}
	out.Header = r.Header.Clone()
	out.ContentLength = r.ContentLength
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		return upstreamResp{status: 502, header: http.Header{}}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return upstreamResp{status: resp.StatusCode, header: resp.Header, body: b}
}

func writeUpstream(w http.ResponseWriter, up upstreamResp) {
	for k, v := range up.header {
		w.Header()[k] = v
	}
	w.WriteHeader(up.status)
	_, _ = w.Write(up.body)
}

func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p.match(r) && !strings.HasPrefix(r.URL.Path, redirectPrefix) {
		p.mu.Lock()
		p.n++
		n := p.n
		p.mu.Unlock()
		if p.fault(n, w, r, p.fetch) {
			return
		}
	}
	writeUpstream(w, p.fetch(r))
}

func isBlobGet(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:")
}

func isManifestGet(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/")
}

// Faults. Each returns true when it answered the request itself.
type fault = func(n int, w http.ResponseWriter, r *http.Request, fetch func(*http.Request) upstreamResp) bool

func firstN(k int, f fault) fault {
	return func(n int, w http.ResponseWriter, r *http.Request, fetch func(*http.Request) upstreamResp) bool {
		return n <= k && f(n, w, r, fetch)
	}
}

func statusFault(code int, header ...string) fault {
	return func(_ int, w http.ResponseWriter, _ *http.Request, _ func(*http.Request) upstreamResp) bool {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(code)
		return true
	}
}

// truncate sends the upstream headers (Content-Length included) and half the body, then drops
// the connection.
func truncateFault(_ int, w http.ResponseWriter, r *http.Request, fetch func(*http.Request) upstreamResp) bool {
	up := fetch(r)
	for k, v := range up.header {
		w.Header()[k] = v
	}
	w.WriteHeader(up.status)
	_, _ = w.Write(up.body[:len(up.body)/2])
	w.(http.Flusher).Flush()
	panic(http.ErrAbortHandler)
}

// stall sends headers and a little body, then nothing until the client gives up.
func stallFault(headers bool) fault {
	return func(_ int, w http.ResponseWriter, r *http.Request, fetch func(*http.Request) upstreamResp) bool {
		if headers {
			up := fetch(r)
			for k, v := range up.header {
				w.Header()[k] = v
			}
			w.WriteHeader(up.status)
			_, _ = w.Write(up.body[:min(len(up.body), 100)])
			w.(http.Flusher).Flush()
		}
		select {
		case <-r.Context().Done():
		case <-time.After(20 * time.Second):
		}
		panic(http.ErrAbortHandler)
	}
}

func contentLengthFault(delta int) fault {
	return func(_ int, w http.ResponseWriter, r *http.Request, fetch func(*http.Request) upstreamResp) bool {
		up := fetch(r)
		for k, v := range up.header {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(up.body)+delta))
		w.WriteHeader(up.status)
		_, _ = w.Write(up.body) // a short Content-Length cuts this; a long one leaves it short
		if delta > 0 {
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		return true
	}
}

// ignoreRange answers as a server without Range support: 200 and the whole blob.
func ignoreRange(_ int, w http.ResponseWriter, r *http.Request, fetch func(*http.Request) upstreamResp) bool {
	r2 := r.Clone(r.Context())
	r2.Header.Del("Range")
	writeUpstream(w, fetch(r2))
	return true
}

// shiftRange answers with the range one byte later than asked.
func shiftRange(_ int, w http.ResponseWriter, r *http.Request, fetch func(*http.Request) upstreamResp) bool {
	var a, b int64
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b); err != nil {
		return false
	}
	r2 := r.Clone(r.Context())
	r2.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", a+1, b+1))
	writeUpstream(w, fetch(r2))
	return true
}

// oversize appends bytes to the body and sends it chunked, with the Content-Range unchanged.
func oversize(_ int, w http.ResponseWriter, r *http.Request, fetch func(*http.Request) upstreamResp) bool {
	up := fetch(r)
	for k, v := range up.header {
		w.Header()[k] = v
	}
	w.Header().Del("Content-Length")
	w.WriteHeader(up.status)
	_, _ = w.Write(up.body)
	w.(http.Flusher).Flush()
	_, _ = w.Write(bytes.Repeat([]byte{'x'}, 100))
	return true
}

func corrupt(_ int, w http.ResponseWriter, r *http.Request, fetch func(*http.Request) upstreamResp) bool {
	up := fetch(r)
	if len(up.body) > 0 {
		up.body[len(up.body)/2] ^= 0x40
	}
	writeUpstream(w, up)
	return true
}

func redirect(_ int, w http.ResponseWriter, r *http.Request, _ func(*http.Request) upstreamResp) bool {
	http.Redirect(w, r, redirectPrefix+r.URL.Path, http.StatusTemporaryRedirect)
	return true
}

// TestFaults puts a fault-injecting proxy in front of the distribution registry. Every fault ends
// in the right bytes or in a clear error, within its time bound; wrong bytes never pass as success.
func TestFaults(t *testing.T) {
	im := makeLayout(t, t.TempDir(), 30, "")
	env := startDistribution(t, authNone)
	if _, err := Push(context.Background(), im.dir, env.host+"/img:latest", testConfig(env.host), PushOptions{}); err != nil {
		t.Fatal(err)
	}
	_, embedded := startServer(t, map[string]string{"img": im.dir}, DefaultServerConfig())
	for _, up := range []struct{ name, host string }{{"distribution", env.host}, {"embedded", embedded}} {
		t.Run(up.name, func(t *testing.T) { testFaults(t, up.host, im) })
	}
}

func testFaults(t *testing.T, upstream string, im *testImage) {
	big := im.biggest()
	data := im.blobs[big.Digest]
	const off, length = 3*4096 + 5, 200000

	type op int
	const (
		readRange op = iota
		openBlob
		resolve
	)
	for _, tc := range []struct {
		name    string
		op      op
		match   func(*http.Request) bool
		fault   fault
		timeout time.Duration // Config.Timeout; default 2 s
		retries int           // default 5
		want    error         // nil: the right bytes
		minTime time.Duration
		maxTime time.Duration
	}{
		{name: "503 burst", fault: firstN(3, statusFault(503))},
		{name: "503 burst on Open", op: openBlob, fault: firstN(3, statusFault(503))},
		{name: "503 burst on Resolve", op: resolve, match: isManifestGet, fault: firstN(3, statusFault(503))},
		{name: "429 with Retry-After", fault: firstN(1, statusFault(429, "Retry-After", "1")), minTime: 900 * time.Millisecond},
		{name: "connection dropped mid-body", fault: firstN(2, truncateFault)},
		{name: "Open resumes after a dropped connection", op: openBlob, fault: firstN(2, truncateFault)},
		{name: "Open resumes from a server that ignores Range", op: openBlob, fault: func(n int, w http.ResponseWriter, r *http.Request, f func(*http.Request) upstreamResp) bool {
			if n == 1 {
				return truncateFault(n, w, r, f)
			}
			return ignoreRange(n, w, r, f)
		}},
		{name: "stall after headers", fault: firstN(1, stallFault(true)), timeout: 300 * time.Millisecond, maxTime: 5 * time.Second},
		{name: "stall before headers", fault: firstN(1, stallFault(false)), timeout: 300 * time.Millisecond, maxTime: 5 * time.Second},
		{name: "Open resumes after a stall", op: openBlob, fault: firstN(1, stallFault(true)), timeout: 300 * time.Millisecond, maxTime: 5 * time.Second},
		{name: "Content-Length too long", fault: firstN(2, contentLengthFault(10))},
		{name: "Content-Length too short", fault: firstN(2, contentLengthFault(-1))},
		{name: "200 where 206 was asked", fault: ignoreRange},
		{name: "wrong range once", fault: firstN(1, shiftRange)},
		{name: "wrong range always", fault: shiftRange, want: ErrBadResponse},
		{name: "body longer than the range", fault: firstN(2, oversize)},
		{name: "body always longer than the range", fault: oversize, want: ErrUnavailable},
		{name: "redirect to blob storage", fault: redirect},
		{name: "redirect on Open", op: openBlob, fault: redirect},
		{name: "persistent 500", fault: statusFault(500), want: ErrUnavailable, maxTime: 5 * time.Second},
		{name: "persistent 500 no retries", fault: statusFault(500), retries: -1, want: ErrUnavailable},
		{name: "corrupt blob on Open", op: openBlob, fault: corrupt, want: ErrCorrupt},
		{name: "corrupt manifest", op: resolve, match: isManifestGet, fault: corrupt, want: ErrCorrupt},
		{name: "404", fault: statusFault(404), want: ErrNotFound},
		{name: "403", fault: statusFault(403), want: ErrUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			match := tc.match
			if match == nil {
				match = isBlobGet
			}
			host := serve(t, &faultProxy{upstream: upstream, match: match, fault: tc.fault})
			cfg := testConfig(host)
			cfg.RetryMax = 2 * time.Second
			if tc.timeout != 0 {
				cfg.Timeout = tc.timeout
			}
			if tc.retries != 0 {
				cfg.Retries = max(tc.retries, 0)
			}
			src, err := Open(host+"/img", cfg)
			if err != nil {
				t.Fatal(err)
			}
			maxTime := tc.maxTime
			if maxTime == 0 {
				maxTime = 10 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			var got, want []byte
			switch tc.op {
			case readRange:
				got, err = src.ReadRange(ctx, big.Digest, off, length)
				want = data[off : off+length]
			case openBlob:
				got, err = readAll(ctx, src, big.Digest)
				want = data
			case resolve:
				_, got, err = src.Resolve(ctx)
				want = im.manifest
			}
			took := time.Since(start)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("err %v", err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("success with %d wrong bytes", len(got))
				}
			} else if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			} else {
				t.Logf("error as expected: %v", err)
			}
			if took < tc.minTime || took > maxTime {
				t.Fatalf("took %v, want between %v and %v", took, tc.minTime, maxTime)
			}
		})
	}
}

// TestFaultExpiredTokenMidway: the registry rejects a token part-way through a series of reads,
// as when a token is revoked or a clock is off; the client fetches a new one and carries on.
func TestFaultExpiredTokenMidway(t *testing.T) {
	env := startDistribution(t, authToken)
	im := makeLayout(t, t.TempDir(), 31, "")
	cfg := testConfig(env.host)
	cfg.Username, cfg.Password = testUser, testPass
	if _, err := Push(context.Background(), im.dir, env.host+"/img:latest", cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	challenge := fmt.Sprintf(`Bearer realm="http://%s/token",service="shoal-registry",error="invalid_token"`, env.tokens.host)
	host := serve(t, &faultProxy{upstream: env.host, match: isBlobGet, fault: func(n int, w http.ResponseWriter, r *http.Request, f func(*http.Request) upstreamResp) bool {
		if n == 3 || n == 4 {
			return statusFault(401, "WWW-Authenticate", challenge)(n, w, r, f)
		}
		return false
	}})
	pcfg := testConfig(host)
	pcfg.Username, pcfg.Password = testUser, testPass
	pcfg.Retries = 0 // the token refresh must not need a retry
	src, err := Open(host+"/img", pcfg)
	if err != nil {
		t.Fatal(err)
	}
	big := im.biggest()
	before := env.tokens.issued.Load()
	for i := range 6 {
		got, err := src.ReadRange(context.Background(), big.Digest, int64(i)*4096, 4096)
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if !bytes.Equal(got, im.blobs[big.Digest][i*4096:(i+1)*4096]) {
			t.Fatalf("read %d: wrong bytes", i)
		}
	}
	if n := env.tokens.issued.Load() - before; n < 2 {
		t.Fatalf("%d tokens issued, want a refresh after the rejection", n)
	}
}

// TestCancelAndUnreachable: a cancelled context ends a stalled read at once; a registry that
// refuses connections is reported unavailable after the retries.
func TestCancelAndUnreachable(t *testing.T) {
	im := makeLayout(t, t.TempDir(), 32, "")
	_, upstream := startServer(t, map[string]string{"img": im.dir}, DefaultServerConfig())
	host := serve(t, &faultProxy{upstream: upstream, match: isBlobGet, fault: stallFault(true)})
	cfg := testConfig(host)
	cfg.Timeout = time.Minute
	src, _ := Open(host+"/img", cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := src.ReadRange(ctx, im.biggest().Digest, 0, 4096)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("after %v: %v, want a deadline error", time.Since(start), err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	src, _ = Open(dead+"/img", testConfig(dead))
	if _, _, err := src.Resolve(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("closed port: %v, want ErrUnavailable", err)
	}
	// HTTPS to a plain-HTTP registry is a clear error, not a retry loop.
	src, _ = Open(upstream+"/img", testConfig())
	if _, _, err := src.Resolve(context.Background()); err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("https to an http registry: %v", err)
	}
}
