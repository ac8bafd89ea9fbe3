package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"
)

// Client talks to a daemon's control API over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// ErrDaemonNotRunning is returned when nothing listens on the socket.
var ErrDaemonNotRunning = errors.New("the shoal daemon is not running")

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://shoal/"+apiVersion+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.explain(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the daemon's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("daemon answered %s", resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("daemon's answer: %w", err)
		}
	}
	return nil
}

// explain turns a failed connection into a message that says what to do.
func (c *Client) explain(err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%w: no socket at %s (start it with `shoal daemon --api %s`, or point --api/%s at its socket)", ErrDaemonNotRunning, c.socket, c.socket, EnvAPISocket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: %s exists but nothing answers (a daemon that died; start it again)", ErrDaemonNotRunning, c.socket)
	case errors.Is(err, syscall.EACCES), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("permission denied on %s: the control API is root-only (run with sudo)", c.socket)
	case errors.Is(err, syscall.ENOTSOCK), errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%s is not a socket: check --api/%s", c.socket, EnvAPISocket)
	}
	return fmt.Errorf("talking to the daemon at %s: %w", c.socket, err)
}

// Status returns the daemon's identity and addresses.
func (c *Client) Status(ctx context.Context) (StatusReport, error) {
	var s StatusReport
	return s, c.do(ctx, http.MethodGet, "/status", nil, &s)
}

// Stats returns the daemon's statistics.
func (c *Client) Stats(ctx context.Context) (StatsReport, error) {
	var s StatsReport
	return s, c.do(ctx, http.MethodGet, "/stats", nil, &s)
}

// Mount asks the daemon to add (and with a mountpoint, mount) an image.
func (c *Client) Mount(ctx context.Context, req MountRequest) (MountResponse, error) {
	var r MountResponse
	return r, c.do(ctx, http.MethodPost, "/images", req, &r)
}

// ClusterPrefetch asks the daemon to have hosts of the cluster (percent of them, 0: all) warm
// an image.
func (c *Client) ClusterPrefetch(ctx context.Context, ref string, percent int) (MountResponse, error) {
	var r MountResponse
	return r, c.do(ctx, http.MethodPost, "/prefetch", PrefetchRequest{Ref: ref, Cluster: true, Percent: percent}, &r)
}

// Prefetch asks the daemon to fetch a whole image.
func (c *Client) Prefetch(ctx context.Context, ref string) (MountResponse, error) {
	var r MountResponse
	return r, c.do(ctx, http.MethodPost, "/prefetch", PrefetchRequest{Ref: ref}, &r)
}

// RemoveImage asks the daemon to forget an unmounted image (ref or manifest digest).
func (c *Client) RemoveImage(ctx context.Context, image string) error {
	return c.do(ctx, http.MethodPost, "/images/remove", RemoveRequest{Image: image}, nil)
}

// Umount asks the daemon to unmount a mountpoint.
func (c *Client) Umount(ctx context.Context, mountpoint string) error {
	return c.do(ctx, http.MethodPost, "/umount", UmountRequest{Mountpoint: mountpoint}, nil)
}

// WaitReady waits until the daemon answers, for scripts that start one and use it at once.
func (c *Client) WaitReady(ctx context.Context) error {
	for {
		if _, err := c.Status(ctx); err == nil {
			return nil
		} else if ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
