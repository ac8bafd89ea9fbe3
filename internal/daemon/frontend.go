package daemon

import (
	"context"
	"fmt"
	"log/slog"
)

// frontend is one kernel demand-read frontend: it mounts an image so that the kernel's reads of
// missing data reach the resolver.
type frontend interface {
	Mount(ctx context.Context, im *image, mountpoint string) error
	Unmount(mountpoint string) error
	Close() error
}

// frontendFactories builds a frontend for a mode; filled in by the files that wire each one.
var frontendFactories = map[string]func(d *Daemon) (frontend, error){}

// probeFuncs tell whether a mode can work on this host, and why not.
var probeFuncs = map[string]func(d *Daemon) error{}

// autoOrder is the order `auto` tries the modes in: the kernel's own cache first.
var autoOrder = []string{"fscache", "fanotify", "fuse"}

// pickMode resolves "auto" to the first available mode and says why.
func (d *Daemon) pickMode(mode string) (string, string, error) {
	if mode != "auto" {
		if probe := probeFuncs[mode]; probe != nil {
			if err := probe(d); err != nil {
				return "", "", fmt.Errorf("%w: %s mode is not available here: %v", errBadRequest, mode, err)
			}
		} else if frontendFactories[mode] == nil {
			return "", "", fmt.Errorf("%w: %s mode is not built into this daemon", errBadRequest, mode)
		}
		return mode, "requested", nil
	}
	var why string
	for _, m := range autoOrder {
		probe, ok := probeFuncs[m]
		if !ok || frontendFactories[m] == nil {
			why += fmt.Sprintf("%s: not built in; ", m)
			continue
		}
		if err := probe(d); err != nil {
			why += fmt.Sprintf("%s: %v; ", m, err)
			continue
		}
		return m, "auto: " + why + m + " available", nil
	}
	return "", "", fmt.Errorf("no mount mode works on this host: %s", why)
}

// frontend returns the running frontend for a mode, starting it on first use.
func (d *Daemon) frontend(mode string) (frontend, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if fe := d.frontends[mode]; fe != nil {
		return fe, nil
	}
	mk := frontendFactories[mode]
	if mk == nil {
		return nil, fmt.Errorf("%w: unknown mount mode %q", errBadRequest, mode)
	}
	fe, err := mk(d)
	if err != nil {
		return nil, fmt.Errorf("starting %s frontend: %w", mode, err)
	}
	d.frontends[mode] = fe
	return fe, nil
}

// cleanupStaleMount unmounts whatever a killed daemon left at a mountpoint it is about to reuse.
var cleanupStaleMount = func(log *slog.Logger, mountpoint string) {}
