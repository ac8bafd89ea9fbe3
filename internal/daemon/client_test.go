package daemon

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClientErrors: what the CLI says when the daemon cannot be reached.
func TestClientErrors(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()

	_, err := NewClient(filepath.Join(dir, "nope.sock")).Stats(ctx)
	if !errors.Is(err, ErrDaemonNotRunning) || !strings.Contains(err.Error(), "shoal daemon --api") {
		t.Errorf("no socket: %v", err)
	}

	// A socket file whose daemon died: nothing accepts.
	dead := filepath.Join(dir, "dead.sock")
	l, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := NewClient(dead).Stats(ctx); !errors.Is(err, ErrDaemonNotRunning) || !strings.Contains(err.Error(), "nothing answers") {
		t.Errorf("dead socket: %v", err)
	}

	plain := filepath.Join(dir, "file")
	os.WriteFile(plain, nil, 0o644)
	if _, err := NewClient(plain).Stats(ctx); err == nil || !strings.Contains(err.Error(), "not running") && !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file as socket: %v", err)
	}

	if os.Geteuid() == 0 {
		t.Log("permission-denied case needs a non-root user; covered by the message mapping only")
	}
}
