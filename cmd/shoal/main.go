package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one `shoal` subcommand. Each lives in its own file (cmd_*.go) and registers itself in
// init, so that the packages' owners can add commands without touching each other's files.
type command struct {
	name    string // "image build", "daemon", ...
	summary string // one line for `shoal help`
	run     func(ctx context.Context, args []string) error
}

var commands = map[string]*command{}

func register(c *command) {
	if _, dup := commands[c.name]; dup {
		panic("shoal: command registered twice: " + c.name)
	}
	commands[c.name] = c
}

// errUsage is returned after a command has printed its own usage; main exits 2 without more text.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "shoal:", err)
		os.Exit(1)
	}
}

// run finds the longest registered command name that prefixes args ("image build" before "image"),
// after the global flags.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		return nil
	}
	global, args, err := splitGlobalFlags(args)
	if err != nil {
		usage(os.Stderr)
		return err
	}
	if len(args) == 0 {
		usage(os.Stderr)
		return errors.New("no command after the global flags")
	}
	for n := min(len(args), 3); n >= 1; n-- {
		if c, ok := commands[strings.Join(args[:n], " ")]; ok {
			// Ahead of the command's own arguments: a flag given in both places takes the
			// command's value, the later one.
			return c.run(ctx, append(global, args[n:]...))
		}
	}
	usage(os.Stderr)
	return fmt.Errorf("unknown command %q", strings.Join(args, " "))
}

// globalFlags are the flags common to the client commands, which may also come before the
// command (`shoal --api SOCKET stats`, as kubectl and docker take theirs). Each takes a value.
var globalFlags = map[string]string{"api": "SOCKET"}

// splitGlobalFlags takes the global flags off the front of args ("--api S", "--api=S", one dash
// or two) and returns them in "--name=value" form, with the rest.
func splitGlobalFlags(args []string) (global, rest []string, err error) {
	for len(args) > 0 && strings.HasPrefix(args[0], "-") && args[0] != "-" {
		if args[0] == "--" {
			return global, args[1:], nil
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
		if _, ok := globalFlags[name]; !ok {
			return nil, nil, fmt.Errorf("flag %s before the command: only %s may come there; a command's own flags go after it (shoal COMMAND --help)", args[0], globalFlagList())
		}
		args = args[1:]
		if !hasValue {
			if len(args) == 0 {
				return nil, nil, fmt.Errorf("flag --%s needs a value: --%s %s", name, name, globalFlags[name])
			}
			value, args = args[0], args[1:]
		}
		global = append(global, "--"+name+"="+value)
	}
	return global, args, nil
}

func globalFlagList() string {
	var out []string
	for n, v := range globalFlags {
		out = append(out, "--"+n+" "+v)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Shoal: peer-to-peer chunk distribution for EROFS container images.")
	fmt.Fprintf(w, "\nUsage: shoal [%s] COMMAND [flags] [args]\n\nCommands:\n", globalFlagList())
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-16s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'shoal COMMAND --help' for a command's flags.")
}

// newFlags returns a flag set for a command whose usage line is `shoal NAME ARGS`.
func newFlags(name, args, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: shoal %s %s\n\n%s\n", name, args, summary)
		if hasFlags(fs) {
			fmt.Fprintln(fs.Output(), "\nFlags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// parseInterspersed parses flags that may come before, between or after positional arguments, as
// users type them (`shoal image build SRC OUT --chunk-size 1M`).
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
