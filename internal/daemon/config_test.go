package daemon

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The packaged example config must load and validate: it is what operators copy.
func TestExampleConfigValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.LoadFile("../../packaging/shoal.yaml"); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.CacheMaxBytes() != 50<<30 || c.PrefetchRate() != 200<<20 || c.LogFormat != "json" {
		t.Fatalf("example config read as %+v", c)
	}
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "shoal.yaml")
	os.WriteFile(file, []byte("workers: 4\ndomain: fromfile\ncache_max: 1G\npeers: [/ip4/1.2.3.4/tcp/1/p2p/x]\n"), 0o644)
	c := DefaultConfig()
	if err := c.LoadFile(file); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SHOAL_DOMAIN": "fromenv", "SHOAL_CACHE_MAX": "2G", "SHOAL_API": "/tmp/env.sock"}
	if err := c.ApplyEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"--cache-max", "3G", "--peer", "/ip4/5.6.7.8/tcp/2/p2p/y", "--peer", "/ip4/5.6.7.8/tcp/3/p2p/z"}); err != nil {
		t.Fatal(err)
	}
	if c.Workers != 4 || c.Domain != "fromenv" || c.CacheMaxBytes() != 3<<30 || c.APISocket != "/tmp/env.sock" {
		t.Fatalf("precedence wrong: %+v", c)
	}
	if strings.Join(c.Peers, " ") != "/ip4/5.6.7.8/tcp/2/p2p/y /ip4/5.6.7.8/tcp/3/p2p/z" {
		t.Fatalf("repeated --peer should replace the file's list: %v", c.Peers)
	}
}

func TestConfigErrorsAreActionable(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("wrokers: 4\n"), 0o644)
	c := DefaultConfig()
	if err := c.LoadFile(bad); err == nil || !strings.Contains(err.Error(), "wrokers") {
		t.Fatalf("unknown key: %v", err)
	}
	c = DefaultConfig()
	c.Workers = 0
	c.Mode = "magic"
	c.CacheMax = "lots"
	c.Peers = []string{"/ip4/127.0.0.1/tcp/7480"}
	c.LogFormat = "xml"
	err := c.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"workers (--workers)", "mode (--mode): \"magic\": use auto", "cache_max (--cache-max)", "no /p2p/<peer ID>", "shoal peers --self", "log_format"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("validation error lacks %q:\n%v", want, err)
		}
	}
	env := map[string]string{"SHOAL_WORKERS": "many"}
	c = DefaultConfig()
	if err := c.ApplyEnv(func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "SHOAL_WORKERS") {
		t.Errorf("bad env value: %v", err)
	}
}

func TestRegistryCredentialsTogether(t *testing.T) {
	c := DefaultConfig()
	c.RegistryUser = "puller"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "go together") {
		t.Fatalf("user without password file: %v", err)
	}
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	c.RegistryPass = pw
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// The registry mirror is off by default; its settings are checked with messages that name the
// setting.
func TestMirrorConfig(t *testing.T) {
	c := DefaultConfig()
	if c.MirrorListen != "" || c.MirrorMaxBytes() != 10<<30 {
		t.Fatalf("mirror defaults: listen %q, max %d", c.MirrorListen, c.MirrorMaxBytes())
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"--mirror-listen", "127.0.0.1:5005", "--mirror-max", "2G", "--mirror-upstream", "ghcr.io"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil || c.MirrorListen != "127.0.0.1:5005" || c.MirrorMaxBytes() != 2<<30 || c.MirrorUpstream != "ghcr.io" {
		t.Fatalf("parsed %+v, %v", c, err)
	}
	c.MirrorListen, c.MirrorMax = "5005", "lots"
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "mirror_listen (--mirror-listen)") || !strings.Contains(err.Error(), "mirror_max (--mirror-max)") {
		t.Fatalf("bad mirror settings: %v", err)
	}
}
