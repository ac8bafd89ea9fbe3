package origin

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestDistribution pushes an image to the CNCF distribution registry with each kind of auth, then
// reads it back through the registry client.
func TestDistribution(t *testing.T) {
	for _, auth := range []string{authNone, authBasic, authToken} {
		t.Run(auth, func(t *testing.T) {
			env := startDistribution(t, auth)
			im := makeLayout(t, t.TempDir(), 10, "v1")
			cfg := testConfig(env.host)
			if auth != authNone {
				cfg.Username, cfg.Password = testUser, testPass
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			ref := env.host + "/shoal/img:v1"
			var mu sync.Mutex
			var states []PushState
			desc, err := Push(ctx, im.dir, ref, cfg, PushOptions{Progress: func(p PushProgress) {
				mu.Lock()
				states = append(states, p.State)
				mu.Unlock()
			}})
			if err != nil {
				t.Fatal(err)
			}
			if desc.Digest != im.desc.Digest {
				t.Fatalf("pushed %s, want %s", desc.Digest, im.desc.Digest)
			}
			if !slices.Contains(states, PushUploaded) || !slices.Contains(states, PushManifest) {
				t.Fatalf("progress states %v", states)
			}
			for _, r := range []string{ref, env.host + "/shoal/img@" + im.desc.Digest.String()} {
				src, err := Open(r, cfg)
				if err != nil {
					t.Fatal(err)
				}
				t.Run(r[len(env.host):], func(t *testing.T) { testSource(t, src, im) })
			}

			// A second push finds every blob there.
			states = nil
			if _, err := Push(ctx, im.dir, ref, cfg, PushOptions{Progress: func(p PushProgress) { states = append(states, p.State) }}); err != nil {
				t.Fatal(err)
			}
			if slices.Contains(states, PushUploaded) {
				t.Fatalf("second push uploaded again: %v", states)
			}

			if auth == authNone {
				return
			}
			// Without credentials, or with wrong ones, the registry refuses.
			for _, c := range []struct{ user, pass string }{{"", ""}, {testUser, "wrong"}} {
				bad := testConfig(env.host)
				bad.Username, bad.Password = c.user, c.pass
				src, err := Open(ref, bad)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := src.Resolve(ctx); !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("user %q: %v, want ErrUnauthorized", c.user, err)
				}
			}
		})
	}
}

// TestCrossRepositoryMount pushes the same image to a second repository, mounting its blobs.
func TestCrossRepositoryMount(t *testing.T) {
	env := startDistribution(t, authToken)
	im := makeLayout(t, t.TempDir(), 11, "")
	cfg := testConfig(env.host)
	cfg.Username, cfg.Password = testUser, testPass
	ctx := context.Background()
	if _, err := Push(ctx, im.dir, env.host+"/team/a:1", cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	var mounted int
	if _, err := Push(ctx, im.dir, env.host+"/team/b:1", cfg, PushOptions{MountFrom: []string{"team/a"}, Progress: func(p PushProgress) {
		if p.State == PushMounted {
			mounted++
		}
		if p.State == PushUploaded {
			t.Errorf("blob %s uploaded, want mounted", p.Digest)
		}
	}}); err != nil {
		t.Fatal(err)
	}
	if mounted != len(im.blobs)-1 { // every blob but the manifest
		t.Fatalf("mounted %d blobs, want %d", mounted, len(im.blobs)-1)
	}
	src, _ := Open(env.host+"/team/b:1", cfg)
	testSource(t, src, im)
}

// TestTokenRefresh reads through a long-lived Source while its tokens expire: once when the
// token server says how long they live (the client's clock is moved on, not waited for), once
// when the registry rejects a token the client believes valid (it was issued already expired).
func TestTokenRefresh(t *testing.T) {
	for _, tc := range []struct {
		name       string
		claimed    int64 // expires_in the client is told
		dead       int64 // tokens issued already expired
		advance    time.Duration
		wantTokens int64
	}{
		{"expires_in honoured", 2, 0, 3 * time.Second, 3},
		{"rejected before expires_in", 3600, 1, 0, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := startDistribution(t, authToken)
			im := makeLayout(t, t.TempDir(), 12, "")
			cfg := testConfig(env.host)
			cfg.Username, cfg.Password = testUser, testPass
			ctx := context.Background()
			if _, err := Push(ctx, im.dir, env.host+"/img:latest", cfg, PushOptions{}); err != nil {
				t.Fatal(err)
			}
			env.tokens.claimed.Store(tc.claimed)
			env.tokens.dead.Store(tc.dead)
			src, err := Open(env.host+"/img", cfg)
			if err != nil {
				t.Fatal(err)
			}
			var skew atomic.Int64 // the client's clock runs ahead of the wall by this much
			src.(*Registry).auth.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
			big := im.biggest()
			before := env.tokens.issued.Load()
			for i := range 3 {
				if i > 0 {
					skew.Add(int64(tc.advance))
				}
				got, err := src.ReadRange(ctx, big.Digest, 4096, 4096)
				if err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
				if string(got) != string(im.blobs[big.Digest][4096:8192]) {
					t.Fatalf("read %d: wrong bytes", i)
				}
			}
			if n := env.tokens.issued.Load() - before; n != tc.wantTokens {
				t.Fatalf("%d tokens issued for three reads, want %d", n, tc.wantTokens)
			}
		})
	}
}
