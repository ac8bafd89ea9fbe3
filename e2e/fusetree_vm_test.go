package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestFusetreeNoEROFSKernelVM runs scripts/kernel/fusetree-test.sh: the real `shoal` binary in a
// VM whose kernel has FUSE but no EROFS, fscache or cachefiles (the fuse-only variant of the test
// kernel, like RHEL 9's or Ubuntu 22.04's kernels as far as Shoal is concerned). `shoal mount
// --mode auto` must fall back to fusetree and say why, and the image must read back
// byte-identical with its metadata. Building that kernel takes 6-17 minutes, so `make test` does
// not: the test skips, saying so, until `make kernel-test-fusetree` has built it once (cached).
func TestFusetreeNoEROFSKernelVM(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (mkfs.ext4 image, qemu)")
	}
	for _, tool := range []string{"qemu-system-x86_64", "busybox", "cpio", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make kernel-test-fusetree installs it)", tool)
		}
	}
	scripts, _ := filepath.Abs("../scripts/kernel")
	probe := exec.Command(filepath.Join(scripts, "build-kernel.sh"), "--path")
	probe.Env = append(os.Environ(), "SHOAL_KERNEL_VARIANT=fuse-only")
	if out, err := probe.CombinedOutput(); err != nil {
		t.Skipf("the kernel without EROFS is not built (make kernel-test-fusetree builds it once): %s", bytes.TrimSpace(out))
	}
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(scripts, "fusetree-test.sh"))
	cmd.Env = append(os.Environ(), "WORKDIR="+work, "SHOAL_KERNEL_NOBUILD=1", "VM_TIMEOUT=300")
	out, err := cmd.CombinedOutput()
	vmlog, _ := os.ReadFile(filepath.Join(work, "vm.log"))
	if err != nil {
		t.Fatalf("fusetree-test.sh: %v\n%s\n--- vm.log\n%s", err, out, vmlog)
	}
	passed := vmPasses(t, vmlog)
	for _, name := range []string{"no-erofs", "daemon", "auto-picks-fusetree", "mount-type", "bytes", "metadata", "exec", "images-shows-mode", "umount"} {
		if !passed[name] {
			t.Errorf("no PASS for %q", name)
		}
	}
	if t.Failed() {
		t.Logf("--- vm.log\n%s", vmlog)
	}
}
