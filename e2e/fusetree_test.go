package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestFusetreeRestart: a daemon serving an image in fusetree mode is killed with SIGKILL, which
// leaves a FUSE mount whose server is gone (every access fails with ENOTCONN); the next start
// unmounts it, mounts the image again in fusetree mode, and reads work. `shoal images` shows the
// mode.
func TestFusetreeRestart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	c := newCluster(t, 1)
	d := c.daemons[0]
	mp := filepath.Join(c.dir, "mnt")
	c.mountOrSkip(d, "fusetree", mp)
	c.checkTree(mp)
	if out := run(t, "images", "--api", d.sock); !strings.Contains(out, "fusetree") {
		t.Fatalf("shoal images does not show the mode:\n%s", out)
	}
	d.cmd.Process.Kill()
	d.cmd.Wait()
	// Entries and attributes stay cached in the kernel; statfs always asks the server.
	var sf unix.Statfs_t
	if err := unix.Statfs(mp, &sf); !errors.Is(err, unix.ENOTCONN) {
		t.Fatalf("statfs with the server killed: %v, want ENOTCONN (the test checks nothing)", err)
	}

	d.cmd = exec.Command(shoalBin, d.cmd.Args[1:]...)
	d.log.Reset()
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := exec.Command(shoalBin, "images", "--json", "--api", d.sock).Output()
		if err == nil && strings.Contains(string(s), mp) && strings.Contains(string(s), "fusetree") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mount not restored after restart:\n%s", d.log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.checkTree(mp)
	run(t, "umount", mp, "--api", d.sock)
	d.cmd.Process.Signal(os.Interrupt)
	d.cmd.Wait()
	if left := shoalMounts(t, c.dir); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
