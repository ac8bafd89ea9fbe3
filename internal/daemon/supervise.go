package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/shoal-p2p/shoal/demand/cachefiles"
)

// Supervise runs the cachefiles supervisor of `shoal daemon --supervise`: it opens and binds
// /dev/cachefiles on dataDir, keeps it open for as long as it lives, and keeps a worker (the
// daemon itself, started by worker) running, handing it the device over a unix socket. SIGHUP
// (hup) asks the worker to restart, e.g. after an upgrade of the binary; fscache mounts stay
// mounted throughout. It returns when ctx ends, after the worker and its own goroutines have
// stopped.
func Supervise(ctx context.Context, dataDir string, worker func(ctx context.Context, socket string) *exec.Cmd, hup <-chan os.Signal, log *slog.Logger) error {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	dev, err := openBoundDevice(dataDir)
	if err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	defer dev.Close()
	sock := filepath.Join(dataDir, "cachefiles.sock")
	sup, err := cachefiles.NewSupervisor(dev, cachefiles.SupervisorConfig{
		Socket: sock,
		Worker: func(ctx context.Context) *exec.Cmd { return worker(ctx, sock) },
		Logger: log,
	})
	if err != nil {
		return err
	}
	// The SIGHUP loop lives as long as the supervisor runs: Run's return ends it.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case _, ok := <-hup:
				if !ok {
					return
				}
				if pid := sup.WorkerPID(); pid > 0 {
					log.Info("restarting the worker", "pid", pid)
					_ = syscall.Kill(pid, syscall.SIGUSR1)
				}
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()
	log.Info("cachefiles supervisor holding /dev/cachefiles", "dir", dataDir, "socket", sock)
	return sup.Run(ctx)
}
