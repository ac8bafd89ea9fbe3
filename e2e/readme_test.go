package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-p2p/shoal/convert/converttest"
)

// readmeBlock returns the fenced code block that follows the marker
// "<!-- readme-test: NAME -->" in the README.
func readmeBlock(t *testing.T, readme, name string) string {
	t.Helper()
	marker := "<!-- readme-test: " + name + " -->\n"
	i := strings.Index(readme, marker)
	if i < 0 {
		t.Fatalf("README.md has no %q marker", strings.TrimSpace(marker))
	}
	rest := readme[i+len(marker):]
	if !strings.HasPrefix(rest, "```") {
		t.Fatalf("README.md: the %s marker is not followed by a fenced block", name)
	}
	rest = rest[strings.IndexByte(rest, '\n')+1:]
	end := strings.Index(rest, "```")
	if end < 0 {
		t.Fatalf("README.md: the %s block is not closed", name)
	}
	return rest[:end]
}

// TestReadmeContainerd runs the README's "Use it with containerd" section against a private
// containerd 2.x: its config.toml stanza (with the test's own root, state and socket put in
// front), its commands that start the daemon and the snapshotter, and its commands that convert,
// pull and run an image. The only changes to the README's text are the rewrites below (its
// paths into the test's directory, its registry to the test's registry, the daemon's public
// listen address to a loopback one); each must match, so that a README edit that drops one
// fails here rather than going untested. The source image is the test's busybox image pushed
// where the README expects busybox.
func TestReadmeContainerd(t *testing.T) {
	binDir := containerd2Bin(t)
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	conf, start, use := readmeBlock(t, readme, "containerd-config"), readmeBlock(t, readme, "containerd-start"), readmeBlock(t, readme, "containerd-run")

	host := converttest.StartRegistry(t)
	pushBusybox(t, host+"/busybox:latest")
	dir := t.TempDir()
	rewrites := []struct{ from, to string }{
		{"/run/shoal/", filepath.Join(dir, "run") + "/"},
		{"/var/lib/shoal", filepath.Join(dir, "lib")},
		{"localhost:5000", host},
		{"/ip4/0.0.0.0/tcp/7480", fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", freePort(t))},
	}
	all := conf + start + use
	for _, r := range rewrites {
		if !strings.Contains(all, r.from) {
			t.Fatalf("README's containerd blocks no longer mention %q: update this test's rewrites", r.from)
		}
		conf = strings.ReplaceAll(conf, r.from, r.to)
		start = strings.ReplaceAll(start, r.from, r.to)
		use = strings.ReplaceAll(use, r.from, r.to)
	}

	// The daemon makes /run/shoal itself only for its default socket, which the README's is:
	// the rewritten one's directory is made here in its place.
	if err := os.MkdirAll(filepath.Join(dir, "run"), 0o755); err != nil {
		t.Fatal(err)
	}

	// containerd with the README's stanza, its own root, state and socket in front.
	first, body, _ := strings.Cut(strings.TrimLeft(conf, "\n"), "\n")
	if strings.TrimSpace(first) != "version = 3" {
		t.Fatalf("README's config block starts with %q, want version = 3", first)
	}
	sock := filepath.Join(dir, "containerd.sock")
	cfg := fmt.Sprintf("version = 3\nroot = %q\nstate = %q\n[grpc]\n  address = %q\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n%s",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, filepath.Join(dir, "opt"), body)
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// shoal and containerd 2.x's ctr and shim first on PATH; ctr finds containerd through
	// CONTAINERD_ADDRESS, the CLI the daemon through SHOAL_API (what `--api` defaults to).
	path := "PATH=" + filepath.Dir(shoalBin) + ":" + binDir + ":" + os.Getenv("PATH")
	env := append(os.Environ(), path, "CONTAINERD_ADDRESS="+sock, "SHOAL_API="+filepath.Join(dir, "run", "shoal.sock"))
	ctrd := startProc(t, "containerd", []string{path}, filepath.Join(binDir, "containerd"), "--config", cfgPath)
	waitSocket(t, ctrd, sock)

	// The start block backgrounds the daemon and the snapshotter: it runs in a process group
	// of its own, which the cleanup stops (SIGTERM, as an init system would).
	logPath := filepath.Join(dir, "start.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	sh := exec.Command("bash", "-c", "set -e\n"+start)
	sh.Env, sh.Stdout, sh.Stderr = env, logf, logf
	sh.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	startLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	if err := sh.Run(); err != nil {
		t.Fatalf("README's start block: %v\n%s", err, startLog())
	}
	pgid := sh.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		deadline := time.Now().Add(20 * time.Second)
		for syscall.Kill(-pgid, 0) == nil {
			if time.Now().After(deadline) {
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				t.Errorf("the daemon or the snapshotter did not stop on SIGTERM within 20s")
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if left := shoalMounts(t, dir); len(left) > 0 {
			t.Errorf("left behind: %v", left)
			for _, m := range left {
				_ = exec.Command("umount", "-l", strings.Fields(m)[0]).Run()
			}
		}
		if t.Failed() {
			t.Logf("daemon and snapshotter log:\n%s", startLog())
		}
	})
	for _, s := range []string{"shoal.sock", "snapshotter.sock"} {
		p := filepath.Join(dir, "run", s)
		for i := 0; ; i++ {
			if _, err := os.Stat(p); err == nil {
				break
			}
			if i == 300 || errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH) {
				t.Fatalf("README's start block never opened %s:\n%s", p, startLog())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -ex\n"+use)
	cmd.Env = env
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("README's convert, pull and run block: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "hello from Shoal\n") {
		t.Errorf("the README's container did not print its greeting; stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), host+"/busybox:shoal") {
		t.Errorf("the README's `shoal images` does not list the image; stdout:\n%s", stdout.String())
	}
	// The daemon mounted the image; containerd downloaded none of its layers.
	m := shoalManifest(t, host, "busybox", "shoal")
	content, err := exec.Command(filepath.Join(binDir, "ctr"), "-a", sock, "content", "ls", "-q").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range m.Layers {
		if strings.Contains(string(content), l.Digest.String()) {
			t.Errorf("containerd downloaded layer %s (%s) of the Shoal image", l.Digest, l.MediaType)
		}
	}
	if ms := shoalMounts(t, filepath.Join(dir, "lib")); len(ms) != 1 {
		t.Errorf("image mounts under the README's snapshotter root: %v, want one", ms)
	}
}
