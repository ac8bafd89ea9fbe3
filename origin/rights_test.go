package origin

import (
	"encoding/base64"
	"errors"
	"testing"
	"time"
)

// TestPullTokenChecks runs the distribution registry with token auth: this host's pull token
// passes CheckPullToken, a forged or malformed one is refused, and the repository (which needs
// credentials) is not anonymously pullable.
func TestPullTokenChecks(t *testing.T) {
	env := startDistribution(t, authToken)
	im := makeLayout(t, t.TempDir(), 11, "v1")
	cfg := testConfig(env.host)
	cfg.Username, cfg.Password = testUser, testPass
	ctx := t.Context()
	if _, err := Push(ctx, im.dir, env.host+"/team/app:v1", cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	pr, err := NewPullRights(cfg)
	if err != nil {
		t.Fatal(err)
	}
	repo := env.host + "/team/app"
	tok, exp, err := pr.PullToken(ctx, repo)
	if err != nil || tok == "" || time.Until(exp) <= 0 {
		t.Fatalf("pull token: %q, %v, %v", tok, exp, err)
	}
	got, err := pr.CheckPull(ctx, repo, tok)
	if err != nil {
		t.Fatalf("own token refused: %v", err)
	}
	if d := time.Until(got); d <= 0 || d > 6*time.Minute {
		t.Errorf("token expiry from its exp claim %v away, want within the 5 minute life", d)
	}
	for name, bad := range map[string]string{
		"forged":  "eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjE5MDAwMDAwMDB9.c2ln",
		"newline": tok + "\r\nX-Injected: 1",
		"empty":   "",
	} {
		if _, err := pr.CheckPull(ctx, repo, bad); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s token: %v, want unauthorized", name, err)
		}
	}
	// The test token server issues tokens only to testUser: anonymous pulls are refused.
	if pub, err := pr.Public(ctx, repo); err != nil || pub {
		t.Errorf("Public(%s) = %v, %v; want false", repo, pub, err)
	}
	if _, _, err := pr.PullToken(ctx, env.host+"/team/app:v1"); !errors.Is(err, ErrInvalidReference) {
		t.Errorf("a reference with a tag as repository: %v", err)
	}
}

// TestPullTokenNoBearer: a registry without token auth has no token to present.
func TestPullTokenNoBearer(t *testing.T) {
	env := startDistribution(t, authNone)
	im := makeLayout(t, t.TempDir(), 12, "v1")
	cfg := testConfig(env.host)
	if _, err := Push(t.Context(), im.dir, env.host+"/open/app:v1", cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	pr, err := NewPullRights(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := pr.PullToken(t.Context(), env.host+"/open/app"); !errors.Is(err, ErrNoToken) {
		t.Errorf("pull token from an open registry: %v, want ErrNoToken", err)
	}
	if pub, err := pr.Public(t.Context(), env.host+"/open/app"); err != nil || !pub {
		t.Errorf("open registry: Public = %v, %v", pub, err)
	}
}

func TestJWTExpiry(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for tok, want := range map[string]int64{
		"h." + enc(`{"exp":1900000000}`) + ".s": 1900000000,
		"h." + enc(`{"sub":"x"}`) + ".s":        0,
		"h." + enc(`{"exp":"soon"}`) + ".s":     0,
		"not-a-jwt":                             0,
		"h.!!!.s":                               0,
	} {
		got := jwtExpiry(tok)
		if (want == 0) != got.IsZero() || want != 0 && got.Unix() != want {
			t.Errorf("jwtExpiry(%q) = %v, want %d", tok, got, want)
		}
	}
}
