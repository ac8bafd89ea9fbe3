package daemon

import (
	"os"
	"strings"
	"testing"

	"github.com/shoal-p2p/shoal/demand/fanotify"
	"github.com/shoal-p2p/shoal/mount"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: probing opens /dev/cachefiles and /dev/fuse and places fanotify marks")
	}
}

func TestProbeThisMachine(t *testing.T) {
	requireRoot(t)
	p := ProbeModes(t.TempDir())
	t.Log(p)
	if len(p.Modes) != 4 || p.Modes[0].Mode != mount.Fscache || p.Modes[1].Mode != mount.Fanotify || p.Modes[2].Mode != mount.FUSE || p.Modes[3].Mode != mount.FUSETree {
		t.Fatalf("modes %+v, want fscache, fanotify, fuse, fusetree", p.Modes)
	}
	if _, err := os.Stat("/dev/fuse"); err == nil && !p.Modes[3].Available {
		t.Errorf("fusetree unavailable with /dev/fuse present, as root: %q", p.Modes[3].Reason)
	}
	best := mount.Mode("")
	for _, m := range p.Modes {
		if !m.Available && m.Reason == "" {
			t.Errorf("%s unavailable without a reason", m.Mode)
		}
		if m.Available && best == "" {
			best = m.Mode
		}
	}
	if p.Best != best {
		t.Errorf("Best = %q, want the first available mode %q", p.Best, best)
	}
	if _, err := os.Stat("/dev/cachefiles"); os.IsNotExist(err) {
		if p.Modes[0].Available || !strings.Contains(p.Modes[0].Reason, "/dev/cachefiles") {
			t.Errorf("fscache without /dev/cachefiles: %+v", p.Modes[0])
		}
	}
	if fanotify.Probe(t.TempDir()) == nil && !p.Modes[1].Available {
		t.Errorf("fanotify probes fine but Probe says %q", p.Modes[1].Reason)
	}
	// tmpfs takes no pre-content marks: fanotify mode is unavailable there, with that reason.
	if tmp := "/dev/shm"; isTmpfs(tmp) {
		q := ProbeModes(tmp)
		if q.Modes[1].Available || !strings.Contains(q.Modes[1].Reason, "fanotify_mark") {
			t.Errorf("fanotify on tmpfs: %+v", q.Modes[1])
		}
	}
}

func isTmpfs(dir string) bool {
	infos, err := mount.ParseMountinfoFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, in := range infos {
		if in.Mountpoint == dir {
			return in.FSType == "tmpfs"
		}
	}
	return false
}
