// Command shoal is the single binary of Shoal: the daemon and every tool an operator uses.
//
// It is deliberately thin. Each subcommand parses flags, builds the components it needs from the
// library packages (bootstrap, chunkstore, origin, p2p, demand, mount) in order and runs them under
// a signal-aware context. No chunk, network or kernel logic lives here.
package main
