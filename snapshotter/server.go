package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"google.golang.org/grpc"
)

// Listen opens the unix socket containerd's proxy plugin dials ([proxy_plugins.shoal] address).
// A socket file nobody answers on (left by a snapshotter that died) is replaced; one that
// answers is an error.
func Listen(address string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter socket directory: %w", err)
	}
	if _, err := os.Stat(address); err == nil {
		if c, err := net.DialTimeout("unix", address, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("snapshotter socket %s: another process is serving it", address)
		}
		if err := os.Remove(address); err != nil {
			return nil, fmt.Errorf("snapshotter socket %s: removing the stale socket: %w", address, err)
		}
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return nil, fmt.Errorf("snapshotter socket: %w", err)
	}
	if err := os.Chmod(address, 0o600); err != nil {
		_ = l.Close()
		return nil, err
	}
	return l, nil
}

// Serve serves containerd's snapshots gRPC API for sn on l until ctx ends, then stops: calls in
// flight get a few seconds to finish. It closes l.
func Serve(ctx context.Context, sn *Snapshotter, l net.Listener) error {
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err := <-done:
		return fmt.Errorf("snapshotter gRPC server: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
		<-stopped
	}
	if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
