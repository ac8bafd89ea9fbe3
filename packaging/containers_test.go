package packaging

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestChartContainerScripts runs the shell of the chart's two containerd containers as rendered:
// configure-containerd edits the config and leaves the restart pending (it must not restart
// containerd before the snapshotter runs), restart-containerd waits for the snapshotter's
// socket, then runs the restart command in the host's namespaces (nsenter, here into this
// test's own) once. The pod's paths are moved under a temporary directory; the restart command
// is `touch FILE`.
func TestChartContainerScripts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("nsenter needs root")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("nsenter not installed (util-linux)")
	}
	dir := t.TempDir()
	restarted := filepath.Join(dir, "restarted")
	objs := parse(t, render(t, "--set", "containerd.restartCommand=touch "+restarted))
	p := pod(t, find(t, objs, "DaemonSet", "shoal"))
	scripts := map[string]string{}
	for _, c := range append(p.InitContainers, p.Containers...) {
		if len(c.Command) == 3 && c.Command[0] == "/bin/sh" {
			scripts[c.Name] = c.Command[2]
		}
	}
	script, _ := filepath.Abs(script)
	run := filepath.Join(dir, "run")
	config := filepath.Join(dir, "etc", "containerd", "config.toml")
	if err := os.MkdirAll(run, 0o755); err != nil {
		t.Fatal(err)
	}
	local := func(s string) string {
		// nsenter enters this test's own namespaces, not PID 1's: on the test machines PID 1
		// is a sandbox's process whose namespaces root may not open. The command is the same.
		return strings.NewReplacer("/etc/shoal/configure-containerd.sh", script,
			"/host/etc/containerd/config.toml", config, "/run/shoal", run,
			"nsenter -t 1 ", fmt.Sprintf("nsenter -t %d ", os.Getpid())).Replace(s)
	}
	pending := filepath.Join(run, "containerd-restart-pending")

	configure := func() string {
		t.Helper()
		out, err := exec.Command("/bin/sh", "-ec", local(scripts["configure-containerd"])).CombinedOutput()
		if err != nil {
			t.Fatalf("configure-containerd: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if out := configure(); out != "containerd config: changed" {
		t.Fatalf("first run printed %q", out)
	}
	if b, err := os.ReadFile(config); err != nil || !strings.Contains(string(b), `[proxy_plugins.shoal]`) {
		t.Fatalf("config after the init container: %v\n%s", err, b)
	}
	if _, err := os.Stat(pending); err != nil {
		t.Fatalf("no restart pending after a change: %v", err)
	}
	if _, err := os.Stat(restarted); err == nil {
		t.Fatal("the init container restarted containerd itself")
	}

	// restart-containerd: nothing while the snapshotter is not listening, then one restart.
	cmd := exec.Command("/bin/sh", "-c", local(scripts["restart-containerd"]))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its sleep goes with it
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
	time.Sleep(1500 * time.Millisecond)
	if _, err := os.Stat(restarted); err == nil {
		t.Fatal("containerd restarted before the snapshotter listened")
	}
	l, err := net.Listen("unix", filepath.Join(run, "snapshotter.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, errR := os.Stat(restarted)
		_, errP := os.Stat(pending)
		if errR == nil && os.IsNotExist(errP) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no restart within 20s of the snapshotter listening (restarted: %v, pending: %v)", errR, errP)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A second start of the pod changes nothing and restarts nothing.
	if out := configure(); out != "containerd config: unchanged" {
		t.Errorf("second run printed %q", out)
	}
	if _, err := os.Stat(pending); !os.IsNotExist(err) {
		t.Errorf("a restart is pending after an unchanged config: %v", err)
	}
}
