package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestGlobalFlags: --api works before the command as well as after it (the command's own wins);
// other flags before the command, or --api without a value, are refused with what to do.
func TestGlobalFlags(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	for _, tc := range []struct {
		args []string
		want string // in stderr; exit code non-zero in every case (no daemon here)
	}{
		{[]string{"--api", a, "stats"}, "no socket at " + a},
		{[]string{"--api=" + a, "images"}, "no socket at " + a},
		{[]string{"-api", a, "images", "rm", "x"}, "no socket at " + a},
		{[]string{"--api", a, "peers", "--self"}, "no socket at " + a},
		{[]string{"stats", "--api", a}, "no socket at " + a},
		{[]string{"--api", a, "stats", "--api", b}, "no socket at " + b},
		{[]string{"--api", a, "mount", "ref", dir, "--mode", "fuse"}, "no socket at " + a},
		{[]string{"--json", "stats"}, "flag --json before the command: only --api SOCKET"},
		{[]string{"--api"}, "--api needs a value"},
		{[]string{"--api", a}, "no command"},
		{[]string{"--api", a, "nosuch"}, `unknown command "nosuch"`},
	} {
		_, stderr, code := shoal(t, tc.args...)
		if code == 0 || !strings.Contains(stderr, tc.want) || strings.Contains(tc.want, "socket") && strings.Contains(stderr, "unknown command") {
			t.Errorf("shoal %s: exit %d, stderr %q; want %q", strings.Join(tc.args, " "), code, stderr, tc.want)
		}
	}
	if stdout, _, code := shoal(t, "help"); code != 0 || !strings.Contains(stdout, "Usage: shoal [--api SOCKET] COMMAND") {
		t.Errorf("help: %d %q", code, stdout)
	}
}
