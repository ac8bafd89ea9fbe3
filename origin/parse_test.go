package origin

import (
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"
)

func TestParseReference(t *testing.T) {
	d := "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		in   string
		want Reference
	}{
		{"127.0.0.1:5000/img", Reference{Registry: "127.0.0.1:5000", Repository: "img", Tag: "latest"}},
		{"127.0.0.1:5000/img:v1", Reference{Registry: "127.0.0.1:5000", Repository: "img", Tag: "v1"}},
		{"localhost/a/b-c/d_e:1.0", Reference{Registry: "localhost", Repository: "a/b-c/d_e", Tag: "1.0"}},
		{"ghcr.io/org/img@" + d, Reference{Registry: "ghcr.io", Repository: "org/img", Digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}},
		{"ghcr.io/org/img:v2@" + d, Reference{Registry: "ghcr.io", Repository: "org/img", Tag: "v2", Digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}},
		{"[::1]:5000/img", Reference{Registry: "[::1]:5000", Repository: "img", Tag: "latest"}},
	} {
		got, err := ParseReference(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseReference(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if again, err := ParseReference(got.String()); err != nil || again != got {
			t.Errorf("round trip of %q: %+v, %v", got.String(), again, err)
		}
	}
	for _, bad := range []string{"", "img", "img:latest", "library/img", "host.io/", "host.io/Img", "host.io/img:", "host.io/img@sha256:abc",
		"host.io/img@md5:0123456789abcdef0123456789abcdef", "host.io//img", "host.io/img:t@g", "host.io/a/../b", "-host.io/img"} {
		if r, err := ParseReference(bad); !errors.Is(err, ErrInvalidReference) {
			t.Errorf("ParseReference(%q) = %+v, %v; want ErrInvalidReference", bad, r, err)
		}
	}
}

func TestParseChallenges(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []challenge
	}{
		{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`,
			[]challenge{{"bearer", map[string]string{"realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:library/alpine:pull"}}}},
		{`Basic realm="Registry Realm"`, []challenge{{"basic", map[string]string{"realm": "Registry Realm"}}}},
		{`Basic realm="a", Bearer realm="b\"q",  service=svc`,
			[]challenge{{"basic", map[string]string{"realm": "a"}}, {"bearer", map[string]string{"realm": `b"q`, "service": "svc"}}}},
		{`Negotiate abc==, Basic realm=x`, []challenge{{"negotiate", map[string]string{}}, {"basic", map[string]string{"realm": "x"}}}},
		{`Bearer realm="unterminated`, []challenge{{"bearer", map[string]string{"realm": "unterminated"}}}},
		{``, nil},
	} {
		got := parseChallenges([]string{tc.in})
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseChallenges(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseRanges(t *testing.T) {
	for _, tc := range []struct {
		in   string
		size int64
		want byteRange
		err  error
	}{
		{"bytes=0-99", 1000, byteRange{0, 100}, nil},
		{"bytes=990-2000", 1000, byteRange{990, 1000}, nil},
		{"bytes=10-", 1000, byteRange{10, 1000}, nil},
		{"bytes=-10", 1000, byteRange{990, 1000}, nil},
		{"bytes=-5000", 1000, byteRange{0, 1000}, nil},
		{"bytes=1000-", 1000, byteRange{}, ErrRange},
		{"bytes=-0", 1000, byteRange{}, ErrRange},
		{"bytes=5-1", 1000, byteRange{}, errNoRange},
		{"bytes=0-1,3-4", 1000, byteRange{}, errNoRange},
		{"items=0-1", 1000, byteRange{}, errNoRange},
		{"bytes=+1-2", 1000, byteRange{}, errNoRange},
	} {
		got, err := parseRange(tc.in, tc.size)
		if got != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("parseRange(%q, %d) = %v, %v; want %v, %v", tc.in, tc.size, got, err, tc.want, tc.err)
		}
	}
	for _, tc := range []struct {
		in   string
		want byteRange
		size int64
		ok   bool
	}{
		{"bytes 0-99/1000", byteRange{0, 100}, 1000, true},
		{"bytes 5-5/*", byteRange{5, 6}, -1, true},
		{"bytes 0-1000/1000", byteRange{}, 0, false},
		{"bytes 9-3/10", byteRange{}, 0, false},
		{"bytes */1000", byteRange{}, 0, false},
		{"bytes 0--1/5", byteRange{}, 0, false},
		{"0-99/1000", byteRange{}, 0, false},
	} {
		got, size, err := parseContentRange(tc.in)
		if (err == nil) != tc.ok || got != tc.want || (tc.ok && size != tc.size) {
			t.Errorf("parseContentRange(%q) = %v, %d, %v", tc.in, got, size, err)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"3", 3 * time.Second},
		{"", 0},
		{"-1", 0},
		{now.Add(5 * time.Second).Format(http.TimeFormat), 5 * time.Second},
		{"soon", 0},
		{"99999999", time.Hour},
	} {
		if got := retryAfter(http.Header{"Retry-After": {tc.in}}, now); got != tc.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mutate := range []func(*Config){
		func(c *Config) { c.Timeout = 0 },
		func(c *Config) { c.MaxConcurrent = 0 },
		func(c *Config) { c.Retries = -1 },
		func(c *Config) { c.RetryMax = c.RetryBase / 2 },
		func(c *Config) { c.Username = "u" },
		func(c *Config) { c.CAFile = "/no/such/ca.pem" },
		func(c *Config) { c.Insecure = []string{"http://x"} },
		func(c *Config) { c.MaxManifestSize = 1 },
	} {
		c := DefaultConfig()
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("Validate accepted %+v", c)
		}
	}
}

func FuzzParseReference(f *testing.F) {
	for _, s := range []string{"127.0.0.1:5000/img:latest", "ghcr.io/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "localhost/x", "[::1]:1/a:b", "a/b/c:d@e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReference(s)
		if err != nil {
			return
		}
		// What parses prints back to something that parses to the same.
		again, err := ParseReference(r.String())
		if err != nil || again != r {
			t.Fatalf("%q parsed to %+v, whose String %q parses to %+v, %v", s, r, r.String(), again, err)
		}
	})
}

func FuzzParseChallenges(f *testing.F) {
	for _, s := range []string{`Bearer realm="https://a/token",service="s",scope="repository:x:pull"`, `Basic realm="x", Bearer realm=y`, `Negotiate a==`, `"`, `,,=,`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, c := range parseChallenges([]string{s}) {
			if c.Scheme == "" || c.Params == nil {
				t.Fatalf("%q: empty challenge %+v", s, c)
			}
		}
	})
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-99", "bytes=-5", "bytes=7-", "bytes=1-2,3-4", "bytes=99999999999999999999-"} {
		f.Add(s, int64(1000))
	}
	f.Fuzz(func(t *testing.T, s string, size int64) {
		if size < 0 {
			return
		}
		r, err := parseRange(s, size)
		if err != nil {
			return
		}
		if r.Start < 0 || r.End > size || r.Start >= r.End {
			t.Fatalf("parseRange(%q, %d) = %v", s, size, r)
		}
	})
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-99/1000", "bytes 1-1/*", "bytes */5", "bytes 9223372036854775806-9223372036854775807/*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, size, err := parseContentRange(s)
		if err != nil {
			return
		}
		if r.Start < 0 || r.End <= r.Start || (size >= 0 && r.End > size) {
			t.Fatalf("parseContentRange(%q) = %v, %d", s, r, size)
		}
	})
}
