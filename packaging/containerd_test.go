package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const script = chartDir + "/files/configure-containerd.sh"

// configure runs the chart's containerd script (as its init container does) on a config file.
func configure(t *testing.T, config, version string, cri bool) (string, error) {
	t.Helper()
	c := "false"
	if cri {
		c = "true"
	}
	var stderr bytes.Buffer
	cmd := exec.Command("sh", script, config, version, "/run/shoal/snapshotter.sock", c, "amd64")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return stderr.String(), err
	}
	return strings.TrimSpace(string(out)), nil
}

// dumpValue reads key in table from `containerd config dump`'s output: containerd's own parse
// of the file, with its defaults merged in. Tables are compared with quotes normalised.
func dumpValue(dump, table, key string) (string, bool) {
	norm := func(h string) string {
		h = strings.Trim(strings.TrimSpace(h), "[]")
		return strings.ReplaceAll(h, "'", `"`)
	}
	cur := ""
	for _, line := range strings.Split(dump, "\n") {
		l := strings.TrimSpace(line)
		if strings.HasPrefix(l, "[") {
			cur = norm(l)
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok && cur == table && strings.TrimSpace(k) == key {
			return strings.ReplaceAll(strings.TrimSpace(v), "'", `"`), true
		}
	}
	return "", false
}

// containerdDump has the real containerd at bin parse the config; "" if it cannot be run.
func containerdDump(t *testing.T, bin, config string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "--config", config, "config", "dump")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s rejects the configured file: %v\n%s\n%s", bin, err, stderr.String(), readFile(t, config))
	}
	return string(out)
}

// containerd2 is containerd 2.x: SHOAL_CONTAINERD2, or what scripts/containerd/build.sh built
// (not built here: `make test` builds it once for the e2e tests).
func containerd2() string {
	if b := os.Getenv("SHOAL_CONTAINERD2"); b != "" {
		return b
	}
	m, _ := filepath.Glob(filepath.Join(envOr("SHOAL_CACHE", "/var/cache/shoal"), "containerd-v2.*", "bin", "containerd"))
	if len(m) == 0 {
		return ""
	}
	return m[len(m)-1]
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

// TestConfigureContainerd runs the chart's script on containerd 1.6's and 2.x's default configs
// (from the real binaries) and on hand-written ones; the result must be accepted by containerd
// itself with the proxy plugin and CRI's snapshotter set, and a second run must change nothing.
func TestConfigureContainerd(t *testing.T) {
	type tcase struct {
		name, version string
		initial       func(t *testing.T) (string, bool) // config text; false: skip
		bin           func() string                     // containerd to check with ("": none here)
	}
	fixed := func(s string) func(*testing.T) (string, bool) {
		return func(*testing.T) (string, bool) { return s, true }
	}
	def := func(bin func() string) func(*testing.T) (string, bool) {
		return func(t *testing.T) (string, bool) {
			b := bin()
			if b == "" {
				return "", false
			}
			out, err := exec.Command(b, "config", "default").Output()
			if err != nil {
				t.Fatalf("%s config default: %v", b, err)
			}
			return string(out), true
		}
	}
	containerd1 := func() string {
		b, err := exec.LookPath("containerd")
		if err != nil {
			return ""
		}
		if out, _ := exec.Command(b, "--version").Output(); !strings.Contains(string(out), " v1.") && !strings.Contains(string(out), " 1.") {
			return ""
		}
		return b
	}
	cases := []tcase{
		{"containerd 1.x default", "auto", def(containerd1), containerd1},
		{"containerd 2.x default", "auto", def(containerd2), containerd2},
		{"no file", "auto", nil, containerd1},
		{"empty, version 3", "3", fixed(""), containerd2},
		{"v2 with a stale shoal plugin", "2", fixed(`version = 2
[proxy_plugins]
  [proxy_plugins.shoal]
    type = "snapshot"
    address = "/old/place.sock" # moved
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = 'overlayfs'
  default_runtime_name = "runc"
`), containerd1},
		{"v3 with array unpack_config", "auto", fixed(`version = 3
[plugins.'io.containerd.transfer.v1.local']
  max_concurrent_downloads = 3
  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = 'linux/amd64'
    snapshotter = 'overlayfs'
`), containerd2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			config := filepath.Join(t.TempDir(), "etc", "containerd", "config.toml")
			if tc.initial != nil {
				text, ok := tc.initial(t)
				if !ok {
					t.Skip("that containerd is not installed here (Debian's is 1.6; 2.x: scripts/containerd/build.sh)")
				}
				if err := os.MkdirAll(filepath.Dir(config), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			out, err := configure(t, config, tc.version, true)
			if err != nil || out != "changed" {
				t.Fatalf("first run: %q, %v", out, err)
			}
			first := readFile(t, config)
			if out, err := configure(t, config, tc.version, true); err != nil || out != "unchanged" {
				t.Errorf("second run: %q, %v", out, err)
			}
			if again := readFile(t, config); again != first {
				t.Errorf("second run changed the file:\n--- first\n%s\n--- second\n%s", first, again)
			}
			if n := strings.Count(first, "[proxy_plugins.shoal]"); n != 1 {
				t.Errorf("[proxy_plugins.shoal] appears %d times:\n%s", n, first)
			}
			if fi, err := os.Stat(config); err == nil && tc.initial != nil && fi.Mode().Perm() != 0o600 {
				t.Errorf("mode changed to %v", fi.Mode())
			}
			if strings.Contains(first, "/old/place.sock") {
				t.Errorf("the stale address stayed:\n%s", first)
			}
			bin := tc.bin()
			if bin == "" {
				t.Logf("no containerd here to parse the result; checked the text only")
				return
			}
			dump := containerdDump(t, bin, config)
			want := map[[2]string]string{
				{"proxy_plugins.shoal", "type"}:    `"snapshot"`,
				{"proxy_plugins.shoal", "address"}: `"/run/shoal/snapshotter.sock"`,
			}
			if strings.Contains(first, "version = 3") || strings.Contains(first, "version = 4") {
				want[[2]string{`plugins."io.containerd.cri.v1.images"`, "snapshotter"}] = `"shoal"`
				want[[2]string{`plugins."io.containerd.cri.v1.images"`, "disable_snapshot_annotations"}] = "false"
				if !strings.Contains(dump, "enable_remote_snapshot_annotations") {
					t.Errorf("containerd 2.x's dump has no enable_remote_snapshot_annotations:\n%s", dump)
				}
				if !strings.Contains(strings.ReplaceAll(dump, "'", `"`), `snapshotter = "shoal"`) {
					t.Errorf("no unpack_config for shoal in the dump")
				}
			} else {
				want[[2]string{`plugins."io.containerd.grpc.v1.cri".containerd`, "snapshotter"}] = `"shoal"`
				want[[2]string{`plugins."io.containerd.grpc.v1.cri".containerd`, "disable_snapshot_annotations"}] = "false"
			}
			for tk, v := range want {
				if got, ok := dumpValue(dump, tk[0], tk[1]); got != v {
					t.Errorf("containerd reads [%s] %s = %q (present %v), want %s", tk[0], tk[1], got, ok, v)
				}
			}
		})
	}

	// Configs the script must refuse, leaving them as they were.
	for name, tc := range map[string]struct{ text, version string }{
		"no version (containerd reads v1)": {"[plugins.cri]\n  x = 1\n", "auto"},
		"version mismatch":                 {"version = 2\n", "3"},
		"inline unpack_config":             {"version = 3\n[plugins.'io.containerd.transfer.v1.local']\n  unpack_config = [{platform = 'linux/amd64', snapshotter = 'overlayfs'}]\n", "auto"},
	} {
		t.Run(name, func(t *testing.T) {
			config := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(config, []byte(tc.text), 0o644); err != nil {
				t.Fatal(err)
			}
			msg, err := configure(t, config, tc.version, true)
			if err == nil {
				t.Fatalf("accepted; wrote:\n%s", readFile(t, config))
			}
			if !strings.Contains(msg, "configure-containerd:") {
				t.Errorf("error without a message naming the script: %q", msg)
			}
			if got := readFile(t, config); got != tc.text {
				t.Errorf("a refused config was changed:\n%s", got)
			}
		})
	}
}

// configureMirror runs the chart's containerd script with the registry mirror at mirror.
func configureMirror(t *testing.T, config, version, mirror string) (string, error) {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command("sh", script, config, version, "/run/shoal/snapshotter.sock", "true", "amd64", mirror)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return stderr.String(), err
	}
	return strings.TrimSpace(string(out)), nil
}

// TestConfigureContainerdMirror: with the mirror on, the script sets CRI's registry
// config_path (read back by the real containerd 1.6 and 2.x) and writes its
// _default/hosts.toml pointing at the mirror, idempotently; it keeps a config_path the file
// already names, leaves a hosts.toml that is not its own alone, and refuses old-style
// registry.mirrors entries (containerd does not take them beside config_path) without changing
// the file.
func TestConfigureContainerdMirror(t *testing.T) {
	const mirror = "127.0.0.1:5005"
	wantHosts := "[host.\"http://" + mirror + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	for _, tc := range []struct {
		name, table string
		bin         func() string
		initial     []string // `config default` args, or nil for a fixed text
		text        string
		certs       string // the config_path expected
	}{
		{name: "containerd 1.x default", table: `plugins."io.containerd.grpc.v1.cri".registry`, bin: func() string { p, _ := exec.LookPath("containerd"); return p },
			initial: []string{"config", "default"}, certs: "/etc/containerd/certs.d"},
		{name: "containerd 2.x default", table: `plugins."io.containerd.cri.v1.images".registry`, bin: containerd2,
			initial: []string{"config", "default"}, certs: "/etc/containerd/certs.d"},
		{name: "v2 with its own config_path", table: `plugins."io.containerd.grpc.v1.cri".registry`, bin: func() string { p, _ := exec.LookPath("containerd"); return p },
			text: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = '/etc/containerd/registries'\n", certs: "/etc/containerd/registries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := tc.bin()
			text := tc.text
			if tc.initial != nil {
				if bin == "" {
					t.Skip("that containerd is not installed here (Debian's is 1.6; 2.x: scripts/containerd/build.sh)")
				}
				out, err := exec.Command(bin, tc.initial...).Output()
				if err != nil {
					t.Fatalf("%s config default: %v", bin, err)
				}
				text = string(out)
			}
			etc := filepath.Join(t.TempDir(), "etc", "containerd")
			config := filepath.Join(etc, "config.toml")
			if err := os.MkdirAll(etc, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := configureMirror(t, config, "auto", mirror); err != nil || out != "changed" {
				t.Fatalf("first run: %q, %v", out, err)
			}
			hosts := filepath.Join(etc, strings.TrimPrefix(tc.certs, "/etc/containerd/"), "_default", "hosts.toml")
			if got := readFile(t, hosts); !strings.HasPrefix(got, "# Written by Shoal") || !strings.HasSuffix(got, wantHosts) {
				t.Errorf("%s:\n%s", hosts, got)
			}
			first := readFile(t, config)
			if out, err := configureMirror(t, config, "auto", mirror); err != nil || out != "unchanged" {
				t.Errorf("second run: %q, %v", out, err)
			}
			if again := readFile(t, config); again != first {
				t.Errorf("second run changed the file:\n%s", again)
			}
			if bin == "" {
				t.Logf("no containerd here to parse the result; checked the text only")
				return
			}
			dump := containerdDump(t, bin, config)
			if got, _ := dumpValue(dump, tc.table, "config_path"); got != `"`+tc.certs+`"` {
				t.Errorf("containerd reads [%s] config_path = %s, want %q", tc.table, got, tc.certs)
			}
		})
	}

	t.Run("hosts.toml not Shoal's", func(t *testing.T) {
		etc := filepath.Join(t.TempDir(), "etc", "containerd")
		config := filepath.Join(etc, "config.toml")
		hosts := filepath.Join(etc, "certs.d", "_default", "hosts.toml")
		if err := os.MkdirAll(filepath.Dir(hosts), 0o755); err != nil {
			t.Fatal(err)
		}
		mine := "server = \"https://registry.example\"\n"
		if err := os.WriteFile(hosts, []byte(mine), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(config, []byte("version = 2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := configureMirror(t, config, "auto", mirror); err != nil || out != "changed" {
			t.Fatalf("run: %q, %v", out, err)
		}
		if got := readFile(t, hosts); got != mine {
			t.Errorf("an operator's hosts.toml was rewritten:\n%s", got)
		}
	})

	for name, text := range map[string]string{
		"registry.mirrors entries": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.example\"]\n",
		"config_path elsewhere":    "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/srv/registries\"\n",
		"bad mirror address":       "version = 2\n",
	} {
		t.Run(name, func(t *testing.T) {
			config := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(config, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			m := mirror
			if name == "bad mirror address" {
				m = "127.0.0.1:5005;rm -rf /"
			}
			msg, err := configureMirror(t, config, "auto", m)
			if err == nil {
				t.Fatalf("accepted; wrote:\n%s", readFile(t, config))
			}
			if !strings.Contains(msg, "configure-containerd:") {
				t.Errorf("error without a message naming the script: %q", msg)
			}
			if got := readFile(t, config); got != text {
				t.Errorf("a refused config was changed:\n%s", got)
			}
		})
	}
}
