package snapshotter

import (
	"context"

	"github.com/shoal-p2p/shoal/internal/daemon"
)

// daemonClient is Daemon over the daemon's control API (HTTP on its unix socket).
type daemonClient struct{ c *daemon.Client }

var _ Daemon = daemonClient{}

// DaemonClient returns the Daemon that talks to `shoal daemon` on its control socket.
func DaemonClient(socket string) Daemon { return daemonClient{daemon.NewClient(socket)} }

func (d daemonClient) Mount(ctx context.Context, ref, mountpoint, mode string) error {
	_, err := d.c.Mount(ctx, daemon.MountRequest{Ref: ref, Mountpoint: mountpoint, Mode: mode})
	return err
}

func (d daemonClient) Restored(ctx context.Context) (bool, error) {
	st, err := d.c.Status(ctx)
	return st.Restored, err
}

func (d daemonClient) Umount(ctx context.Context, mountpoint string) error {
	return d.c.Umount(ctx, mountpoint)
}
