package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-p2p/shoal/internal/daemon"
	"github.com/shoal-p2p/shoal/internal/units"
)

func init() {
	register(&command{name: "daemon", summary: "run the Shoal daemon", run: runDaemon})
	register(&command{name: "mount", summary: "mount an image (REF|LAYOUT_DIR MOUNTPOINT)", run: runMount})
	register(&command{name: "umount", summary: "unmount an image", run: runUmount})
	register(&command{name: "images", summary: "list the daemon's images and mounts", run: runImages})
	register(&command{name: "images rm", summary: "forget an unmounted image (its data stays cached, evictable)", run: runImagesRm})
	register(&command{name: "stats", summary: "show where bytes come from, per image and per peer", run: runStats})
	register(&command{name: "peers", summary: "list peers (--self: this host's addresses)", run: runPeers})
	register(&command{name: "status", summary: "show the daemon's peer ID, pid, addresses and uptime", run: runStatus})
	register(&command{name: "prefetch", summary: "make a whole image local without mounting it", run: runPrefetch})
}

func runDaemon(ctx context.Context, args []string) error {
	fs := newFlags("daemon", "[flags]", "Runs the Shoal daemon: the chunk store, peers, kernel frontends and the control API.\n"+
		"Settings come from --config FILE (YAML, keys below), then SHOAL_* environment variables, then flags.")
	// Precedence: defaults < config file < SHOAL_* environment < flags. The file's path is needed
	// before the flags are parsed into the config, so it is looked up first.
	cfg := daemon.DefaultConfig()
	configPath := fs.String("config", os.Getenv("SHOAL_CONFIG"), "YAML config file with the keys below (env SHOAL_CONFIG)")
	if p := lookupFlag(args, "config"); p != "" {
		*configPath = p
	}
	if *configPath != "" {
		if err := cfg.LoadFile(*configPath); err != nil {
			return err
		}
	}
	if err := cfg.ApplyEnv(os.Getenv); err != nil {
		return err
	}
	cfg.RegisterFlags(fs)
	if pos, err := parseInterspersed(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		fs.Usage()
		return errUsage
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log := newLogger(cfg.LogFormat, cfg.LogLevel)
	slog.SetDefault(log)
	daemon.Version = version
	if cfg.Supervise && os.Getenv(daemon.EnvHandover) == "" {
		return superviseDaemon(ctx, cfg, args, log)
	}
	// SIGUSR1 (sent by the supervisor on SIGHUP) stops this worker for a restart: fscache mounts
	// stay, the next worker adopts them.
	ctx, stop := onSignal(ctx, syscall.SIGUSR1, daemon.ErrRestart)
	defer stop()
	d, err := daemon.New(cfg, log)
	if err != nil {
		return err
	}
	return d.Run(ctx)
}

// onSignal returns a context that ends, with cause, when sig arrives or ctx ends. stop ends the
// watch and waits for its goroutine.
func onSignal(ctx context.Context, sig os.Signal, cause error) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sig)
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-ch:
			cancel(cause)
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		cancel(nil)
		<-done
	}
}

// superviseDaemon runs `shoal daemon --supervise`: a small process that holds /dev/cachefiles
// and runs this same command, with the same arguments, as its worker.
func superviseDaemon(ctx context.Context, cfg daemon.Config, args []string, log *slog.Logger) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	worker := func(ctx context.Context, socket string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, exe, append([]string{"daemon"}, args...)...)
		cmd.Env = append(os.Environ(), daemon.EnvHandover+"="+socket)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		// Stopping the supervisor stops the worker gracefully: it unmounts its images.
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = time.Minute
		return cmd
	}
	return daemon.Supervise(ctx, cfg.DataDir, worker, hup, log)
}

func newLogger(format, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// apiFlag adds --api (default $SHOAL_API, then the daemon's default socket).
func apiFlag(fs *flag.FlagSet) *string {
	def := os.Getenv(daemon.EnvAPISocket)
	if def == "" {
		def = daemon.DefaultAPISocket
	}
	return fs.String("api", def, "the daemon's control socket (env "+daemon.EnvAPISocket+")")
}

func runMount(ctx context.Context, args []string) error {
	fs := newFlags("mount", "REF|LAYOUT_DIR MOUNTPOINT [--mode auto|fscache|fanotify|fuse|fusetree]",
		"Asks the daemon to mount an image. auto picks fscache when /dev/cachefiles on-demand works, else\nfanotify, else FUSE, else fusetree (any kernel with FUSE), and says which.")
	api := apiFlag(fs)
	mode := fs.String("mode", "auto", "auto, fscache, fanotify, fuse or fusetree")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		fs.Usage()
		return errUsage
	}
	ref := absIfLayout(pos[0])
	resp, err := daemon.NewClient(*api).Mount(ctx, daemon.MountRequest{Ref: ref, Mountpoint: pos[1], Mode: *mode})
	if err != nil {
		return err
	}
	fmt.Printf("mounted %s at %s (%s mode; %s)\n", pos[0], resp.Mountpoint, resp.Mode, resp.Reason)
	return nil
}

// absIfLayout makes a local layout directory absolute: the daemon's working directory is not the
// user's.
func absIfLayout(ref string) string {
	if st, err := os.Stat(ref); err == nil && st.IsDir() {
		if abs, err := absPath(ref); err == nil {
			return abs
		}
	}
	return ref
}

func runUmount(ctx context.Context, args []string) error {
	fs := newFlags("umount", "MOUNTPOINT", "Asks the daemon to unmount an image.")
	api := apiFlag(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	mp, _ := absPath(pos[0])
	return daemon.NewClient(*api).Umount(ctx, mp)
}

func runImages(ctx context.Context, args []string) error {
	fs := newFlags("images", "[--json]", "Lists the daemon's images: mounts with their mode, how much is local, prefetch.")
	api := apiFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	return showFromStats(ctx, *api, *asJSON, func(st daemon.StatsReport) any { return st.Images },
		func(st daemon.StatsReport) { daemon.RenderImages(os.Stdout, st.Images) })
}

// showFromStats fetches the daemon's stats and prints a part of them as JSON or as a table.
func showFromStats(ctx context.Context, api string, asJSON bool, part func(daemon.StatsReport) any, render func(daemon.StatsReport)) error {
	st, err := daemon.NewClient(api).Stats(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(part(st))
	}
	render(st)
	return nil
}

func runImagesRm(ctx context.Context, args []string) error {
	fs := newFlags("images rm", "IMAGE...", "Forgets unmounted images (by ref, as `shoal images` shows it, or manifest digest):\nno more prefetch, no more peers asking this host for them; their data stays cached until evicted.")
	api := apiFlag(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return errUsage
	}
	c := daemon.NewClient(*api)
	for _, im := range pos {
		if err := c.RemoveImage(ctx, absIfLayout(im)); err != nil {
			return err
		}
		fmt.Printf("removed %s\n", im)
	}
	return nil
}

func runStats(ctx context.Context, args []string) error {
	fs := newFlags("stats", "[--json] [--watch]", "Shows bytes by source (local, peers, origin), per image and per peer.\n"+
		"--json prints the documented schema (docs/stats.md).")
	api := apiFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	watch := fs.Bool("watch", false, "refresh every --interval until interrupted")
	interval := fs.Duration("interval", 2*time.Second, "refresh interval of --watch")
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	c := daemon.NewClient(*api)
	for {
		st, err := c.Stats(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			if err := printJSON(st); err != nil {
				return err
			}
		} else {
			if *watch {
				fmt.Print("\033[H\033[2J") // home and clear: refresh in place
			}
			daemon.RenderStats(os.Stdout, st)
		}
		if !*watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*interval):
		}
	}
}

func runPeers(ctx context.Context, args []string) error {
	fs := newFlags("peers", "[--self] [--json]", "Lists peers and how they were found; --self prints this host's multiaddrs, one a line.")
	api := apiFlag(fs)
	self := fs.Bool("self", false, "print this host's own multiaddrs (with /p2p/<peer ID>)")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	if *self {
		st, err := daemon.NewClient(*api).Status(ctx)
		if err != nil {
			return err
		}
		if len(st.Addrs) == 0 {
			return errors.New("the daemon is starting: it has no listen addresses yet; try again in a moment")
		}
		fmt.Println(strings.Join(st.Addrs, "\n"))
		return nil
	}
	return showFromStats(ctx, *api, *asJSON, func(st daemon.StatsReport) any { return st.Peers },
		func(st daemon.StatsReport) { daemon.RenderPeers(os.Stdout, st.Peers) })
}

func runPrefetch(ctx context.Context, args []string) error {
	fs := newFlags("prefetch", "REF|LAYOUT_DIR [--wait] | --cluster REF [--percent P] [--wait]", "Warms this host's cache with a whole image without mounting it (preheat).\n"+
		"--cluster asks this host and its connected peers (--percent: that share of them) to warm it,\n"+
		"each by its own fetch path (peers first: the origin serves the image about once); progress in `shoal stats`.")
	api := apiFlag(fs)
	wait := fs.Bool("wait", false, "wait until the image is local (with --cluster: on every host asked), showing progress")
	cluster := fs.Bool("cluster", false, "warm the image on hosts of the cluster")
	percent := fs.Int("percent", 0, "with --cluster: the share of hosts, 1..100 (default: all)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || (*percent != 0 && !*cluster) {
		fs.Usage()
		return errUsage
	}
	c := daemon.NewClient(*api)
	if *cluster {
		return clusterPrefetch(ctx, c, pos[0], *percent, *wait)
	}
	resp, err := c.Prefetch(ctx, absIfLayout(pos[0]))
	if err != nil {
		return err
	}
	if !*wait {
		fmt.Printf("prefetching %s (%s)\n", pos[0], resp.Image)
		return nil
	}
	tty := isTerminal(os.Stderr)
	last := ""
	for {
		st, err := c.Stats(ctx)
		if err != nil {
			return err
		}
		var im *daemon.ImageReport
		for i := range st.Images {
			if st.Images[i].Digest == resp.Image {
				im = &st.Images[i]
			}
		}
		if im == nil {
			return fmt.Errorf("image %s disappeared from the daemon", resp.Image)
		}
		line := fmt.Sprintf("%s %s %s of %s", daemon.Bar(im.BytesPresent, im.Bytes, 30), fmt.Sprintf("%3d%%", pct(im.BytesPresent, im.Bytes)),
			units.Bytes(im.BytesPresent), units.Bytes(im.Bytes))
		if tty {
			fmt.Fprintf(os.Stderr, "\r%s", line)
		} else if line != last {
			fmt.Fprintln(os.Stderr, line)
		}
		last = line
		switch im.Prefetch {
		case "done":
			if tty {
				fmt.Fprintln(os.Stderr)
			}
			fmt.Printf("%s is local: %s from peers, %s from origin so far on this host\n", pos[0], units.Bytes(st.Bytes.Peers), units.Bytes(st.Bytes.Origin))
			return nil
		case "failed":
			if tty {
				fmt.Fprintln(os.Stderr)
			}
			return errors.New("prefetch failed: " + im.PrefetchError)
		case "incomplete":
			if tty {
				fmt.Fprintln(os.Stderr)
			}
			return fmt.Errorf("%s is not all local: %s", pos[0], im.PrefetchError)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func pct(a, b int64) int64 {
	if b == 0 {
		return 100
	}
	return 100 * a / b
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runStatus(ctx context.Context, args []string) error {
	fs := newFlags("status", "[--json]", "Shows the daemon's peer ID, process, addresses, data directory, version and uptime.")
	api := apiFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	st, err := daemon.NewClient(*api).Status(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(st)
	}
	fmt.Printf("peer ID  %s\npid      %d\ndata     %s\nversion  %s\nuptime   %s\n", st.PeerID, st.PID, st.DataDir, st.Version, st.Uptime)
	for _, a := range st.Addrs {
		fmt.Printf("addr     %s\n", a)
	}
	return nil
}

// clusterPrefetch runs `shoal prefetch --cluster`.
func clusterPrefetch(ctx context.Context, c *daemon.Client, ref string, percent int, wait bool) error {
	resp, err := c.ClusterPrefetch(ctx, ref, percent)
	if err != nil {
		return err
	}
	fmt.Printf("cluster prefetch %d of %s: asking %d hosts\n", resp.Cluster, ref, len(resp.Hosts))
	if !wait {
		return nil
	}
	last := ""
	for {
		st, err := c.Stats(ctx)
		if err != nil {
			return err
		}
		var job *daemon.ClusterPrefetchReport
		for i := range st.ClusterPrefetch {
			if st.ClusterPrefetch[i].ID == resp.Cluster {
				job = &st.ClusterPrefetch[i]
			}
		}
		if job == nil {
			return fmt.Errorf("cluster prefetch %d disappeared from the daemon", resp.Cluster)
		}
		line := fmt.Sprintf("%s %3d%% %s of %s on %d hosts, %d done, %d failed", daemon.Bar(job.BytesPresent, job.Bytes, 30),
			pct(job.BytesPresent, job.Bytes), units.Bytes(job.BytesPresent), units.Bytes(job.Bytes), len(job.Hosts), job.Done, job.Failed)
		if line != last {
			fmt.Fprintln(os.Stderr, line)
			last = line
		}
		switch job.State {
		case "done":
			fmt.Printf("%s is local on %d hosts\n", ref, job.Done)
			return nil
		case "failed", "stopped":
			var why []string
			for _, h := range job.Hosts {
				if h.State != "done" {
					why = append(why, fmt.Sprintf("%s: %s %s", h.Peer, h.State, h.Error))
				}
			}
			return fmt.Errorf("cluster prefetch %s: %d of %d hosts did not complete:\n  %s", job.State, len(why), len(job.Hosts), strings.Join(why, "\n  "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
