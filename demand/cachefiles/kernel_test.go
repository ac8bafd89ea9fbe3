package cachefiles

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vmChecks are the checks TestKernelInVM reports; each must PASS.
var vmChecks = []string{"bind", "mount", "read-all", "concurrent-reads", "backing-files", "reread-no-reads", "remount-cached", "unknown-bootstrap", "mount-b", "failover", "upgrade", "umount"}

// TestKernel boots a real Linux 6.12 (built by scripts/kernel/build-kernel.sh, cached outside the
// repository) under qemu and runs TestKernelInVM in it: bind ondemand, an fscache-mode EROFS
// mount served by this package, every file checked against its source, page-cache and
// backing-file hits without READs, an unknown bootstrap failing with -ENOENT, and a worker killed in
// the middle of a large read and replaced through the Supervisor. It skips, saying why, without
// root, qemu, busybox, mkfs tools or the built kernel; with SHOAL_KERNEL_TEST=required
// (`make kernel-test`) those are failures instead.
func TestKernel(t *testing.T) {
	if os.Getenv("SHOAL_IN_VM") == "1" {
		t.Skip("already inside the VM")
	}
	required := os.Getenv("SHOAL_KERNEL_TEST") == "required"
	skip := func(format string, args ...any) {
		t.Helper()
		if required {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	if testing.Short() && !required {
		t.Skip("boots a VM: skipped with -short")
	}
	if os.Geteuid() != 0 {
		skip("needs root (the VM test installs nothing but builds images with mkfs.erofs and mkfs.ext4 as root)")
	}
	for _, tool := range []string{"qemu-system-x86_64", "mkfs.erofs", "mkfs.ext4", "busybox", "cpio", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			skip("%s not installed (make kernel-test installs it)", tool)
		}
	}
	scripts, err := filepath.Abs("../../scripts/kernel")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(scripts, "build-kernel.sh"), "--path").CombinedOutput()
	if err != nil {
		skip("test kernel not built (run `make kernel-test`, ~5 minutes once): %s", bytes.TrimSpace(out))
	}

	work := t.TempDir()
	logPath := filepath.Join(work, "kernel-test.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(scripts, "kernel-test.sh"))
	cmd.Env = append(os.Environ(), "WORKDIR="+work, "SHOAL_KERNEL_NOBUILD=1", "VM_TIMEOUT=420")
	cmd.Stdout, cmd.Stderr = logf, logf
	runErr := cmd.Run()

	vmLog, _ := os.ReadFile(filepath.Join(work, "vm.log"))
	passed := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(vmLog))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "SHOAL-VM: PASS "); ok {
			name, _, _ := strings.Cut(rest, ":")
			passed[name] = true
			t.Log(line)
		} else if strings.HasPrefix(line, "SHOAL-VM: FAIL ") {
			t.Error(line)
		}
	}
	for _, c := range vmChecks {
		if !passed[c] {
			t.Errorf("VM check %q did not pass", c)
		}
	}
	if runErr != nil || t.Failed() {
		script, _ := os.ReadFile(logPath)
		t.Errorf("kernel-test.sh: %v\n--- script log tail:\n%s\n--- vm log tail:\n%s", runErr, tail(script, 40), tail(vmLog, 60))
	}
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
