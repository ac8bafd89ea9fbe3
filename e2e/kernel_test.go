package e2e

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

// TestDaemonFscacheVM runs scripts/kernel/daemon-test.sh: the real `shoal` binary inside a VM
// with a Linux 6.12 that has cachefiles on-demand mode (this machine's kernel has not): origin
// serve, a supervised daemon mounting in fscache mode, its worker killed with SIGKILL in the
// middle of a read, re-reads that never reach the daemon, a second daemon that takes every chunk
// from the first. It skips, saying why, where the VM cannot run; `make test` builds the kernel
// (once, cached) when it can.
func TestDaemonFscacheVM(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (mkfs.ext4 images, qemu)")
	}
	for _, tool := range []string{"qemu-system-x86_64", "busybox", "cpio", "mkfs.ext4", "mkfs.erofs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make test installs it)", tool)
		}
	}
	scripts, _ := filepath.Abs("../scripts/kernel")
	if out, err := exec.Command(filepath.Join(scripts, "build-kernel.sh"), "--path").CombinedOutput(); err != nil {
		t.Skipf("test kernel not built (make test or make kernel-test builds it once): %s", bytes.TrimSpace(out))
	}
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(scripts, "daemon-test.sh"))
	cmd.Env = append(os.Environ(), "WORKDIR="+work, "SHOAL_KERNEL_NOBUILD=1", "VM_TIMEOUT=480")
	out, err := cmd.CombinedOutput()
	vmlog, _ := os.ReadFile(filepath.Join(work, "vm.log"))
	if err != nil {
		t.Fatalf("daemon-test.sh: %v\n%s\n--- vm.log\n%s", err, out, vmlog)
	}
	passed := vmPasses(t, vmlog)
	for _, name := range []string{"daemon-1", "mount-fscache", "failover", "read-all", "hits-in-kernel", "same-image-twice", "prefetch-with-fscache", "second-image", "upgrade", "second-host", "umount", "stop"} {
		if !passed[name] {
			t.Errorf("no PASS for %q", name)
		}
	}
	if t.Failed() {
		t.Logf("--- vm.log\n%s", vmlog)
	}
}

// vmPasses reads the "SHOAL-VM: PASS name:" and "SHOAL-VM: FAIL ..." lines a VM test script's guest
// writes to its log: each FAIL fails t, and the names that passed are returned.
func vmPasses(t *testing.T, vmlog []byte) map[string]bool {
	t.Helper()
	passed := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(vmlog))
	for sc.Scan() {
		line := sc.Text()
		i := strings.Index(line, "SHOAL-VM: ")
		if i < 0 {
			continue
		}
		f := strings.Fields(line[i+len("SHOAL-VM: "):])
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "PASS":
			passed[strings.TrimSuffix(f[1], ":")] = true
			t.Log(line[i:])
		case "FAIL":
			t.Error(line[i:])
		}
	}
	return passed
}
