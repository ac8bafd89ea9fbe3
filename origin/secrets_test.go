package origin

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPullSecrets runs the distribution registry with token auth and a client with no
// credentials of its own: a pull secret kept for the repository makes it pull, in each of the
// forms a CRI pull carries it (user and password, auth, registry token); a secret for another
// repository does not; one that expired or was undone is gone; and a pull secret is used before
// the host's own credentials (which here are wrong).
func TestPullSecrets(t *testing.T) {
	env := startDistribution(t, authToken)
	im := makeLayout(t, t.TempDir(), 13, "v1")
	admin := testConfig(env.host)
	admin.Username, admin.Password = testUser, testPass
	ctx := t.Context()
	ref := env.host + "/team/app:v1"
	if _, err := Push(ctx, im.dir, ref, admin, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	repo := env.host + "/team/app"
	// A token to hand over as a registry token, from the admin's own pulls.
	pr, err := NewPullRights(admin)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := pr.PullToken(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}

	// resolve opens ref with the secrets and a Docker config whose credentials are wrong.
	wrong := filepath.Join(t.TempDir(), "config.json")
	bad := base64.StdEncoding.EncodeToString([]byte(testUser + ":wrong"))
	if err := os.WriteFile(wrong, []byte(`{"auths":{"`+env.host+`":{"auth":"`+bad+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	resolve := func(ps *PullSecrets, ref string) error {
		cfg := testConfig(env.host)
		cfg.DockerConfig, cfg.PullSecrets = wrong, ps
		src, err := Open(ref, cfg)
		if err != nil {
			return err
		}
		_, _, err = src.Resolve(ctx)
		return err
	}
	for name, a := range map[string]Auth{
		"user":           {Username: testUser, Password: testPass},
		"auth":           {Auth: base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPass))},
		"registry token": {RegistryToken: tok},
	} {
		ps, _ := NewPullSecrets(time.Hour)
		if err := resolve(ps, ref); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("%s: before the secret: %v, want unauthorized (the host's own credentials are wrong)", name, err)
		}
		if _, err := ps.Set(repo, a); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := resolve(ps, ref); err != nil {
			t.Errorf("%s: with the pull secret: %v", name, err)
		}
		if err := resolve(ps, env.host+"/team/other:v1"); !errors.Is(err, ErrUnauthorized) && !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: another repository: %v, want the secret not used there", name, err)
		}
	}

	// The host's pull token for peers comes from the pull secret too.
	ps, _ := NewPullSecrets(time.Hour)
	now := time.Now()
	ps.now = func() time.Time { return now }
	undo, err := ps.Set(repo, Auth{Username: testUser, Password: testPass})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(env.host)
	cfg.PullSecrets = ps
	pr2, err := NewPullRights(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tok, _, err := pr2.PullToken(ctx, repo); err != nil || tok == "" {
		t.Errorf("pull token from the pull secret: %q, %v", tok, err)
	}
	if ps.Len() != 1 {
		t.Errorf("Len %d, want 1", ps.Len())
	}
	undo()
	if ps.Len() != 0 {
		t.Errorf("undo of the only secret left %d", ps.Len())
	}
	// Undo puts back the secret it replaced; expiry drops it.
	if _, err := ps.Set(repo, Auth{Username: testUser, Password: testPass}); err != nil {
		t.Fatal(err)
	}
	undo2, _ := ps.Set(repo, Auth{Username: testUser, Password: "wrong"})
	undo2()
	if c, _, ok := ps.get(repo); !ok || c.Password != testPass {
		t.Errorf("after undo: %v, want the secret it replaced", ok)
	}
	now = now.Add(time.Hour)
	if _, _, ok := ps.get(repo); ok {
		t.Error("a secret past its lifetime is still kept")
	}

	for name, a := range map[string]Auth{
		"empty":      {},
		"not base64": {Auth: "%%%"},
		"no colon":   {Auth: base64.StdEncoding.EncodeToString([]byte("user"))},
	} {
		if _, err := ps.Set(repo, a); err == nil {
			t.Errorf("%s: kept", name)
		}
	}
}

// TestPullSecretsBasic: a registry with Basic authentication takes a pull secret's user and
// password too (the distribution registry with htpasswd).
func TestPullSecretsBasic(t *testing.T) {
	env := startDistribution(t, authBasic)
	im := makeLayout(t, t.TempDir(), 14, "v1")
	admin := testConfig(env.host)
	admin.Username, admin.Password = testUser, testPass
	ctx := t.Context()
	ref := env.host + "/team/app:v1"
	if _, err := Push(ctx, im.dir, ref, admin, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	ps, _ := NewPullSecrets(time.Hour)
	cfg := testConfig(env.host)
	cfg.PullSecrets = ps
	resolve := func() error {
		src, err := Open(ref, cfg)
		if err != nil {
			return err
		}
		_, _, err = src.Resolve(ctx)
		return err
	}
	if err := resolve(); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("without the secret: %v, want unauthorized", err)
	}
	if _, err := ps.Set(env.host+"/team/app", Auth{Username: testUser, Password: testPass}); err != nil {
		t.Fatal(err)
	}
	if err := resolve(); err != nil {
		t.Errorf("with the pull secret: %v", err)
	}
}
