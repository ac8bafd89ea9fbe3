package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/shoal-p2p/shoal/snapshotter"
)

func init() {
	register(&command{name: "snapshotter", summary: "serve containerd's snapshots API (proxy plugin) over the daemon", run: runSnapshotter})
}

func runSnapshotter(ctx context.Context, args []string) error {
	fs := newFlags("snapshotter", "--address SOCKET [--api DAEMON_SOCKET] [--root DIR] [--mode MODE]",
		"Serves containerd's snapshots gRPC API on SOCKET, for a containerd configured with\n"+
			"  [proxy_plugins.shoal]\n    type = \"snapshot\"\n    address = \"SOCKET\"\n"+
			"Layers of Shoal images are mounted by the daemon (no download); other images get plain overlayfs.\n"+
			"See docs/snapshotter.md.")
	address := fs.String("address", "/run/shoal/snapshotter.sock", "the socket containerd dials")
	root := fs.String("root", "/var/lib/shoal/snapshotter", "where snapshots and image mount points live")
	api := apiFlag(fs)
	mode := fs.String("mode", "auto", "mount mode asked of the daemon for each image: auto, fscache, fanotify, fuse or fusetree")
	logFormat := fs.String("log-format", "text", "text or json")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if pos, err := parseInterspersed(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		fs.Usage()
		return errUsage
	}
	log := newLogger(*logFormat, *logLevel).With("subsystem", "snapshotter")
	sn, err := snapshotter.New(*root, snapshotter.DaemonClient(*api), snapshotter.Config{Mode: *mode, Logger: log})
	if err != nil {
		return err
	}
	l, err := snapshotter.Listen(*address)
	if err != nil {
		return errors.Join(err, sn.Close())
	}
	log.Info("serving containerd's snapshots API", "address", *address, "root", *root, "daemon", *api)
	sn.Recover(ctx)
	err = snapshotter.Serve(ctx, sn, l)
	if cerr := sn.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("closing the snapshot metadata: %w", cerr))
	}
	slog.Debug("snapshotter stopped")
	return err
}
