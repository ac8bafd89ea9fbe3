package p2p

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/libp2p/go-libp2p/core/host"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// checkListening makes sure the host listens on every configured address whose port is not
// already taken. libp2p starts a host when at least one of its listen addresses works, so a
// daemon started on a TCP port another daemon holds would otherwise come up on QUIC alone (or,
// with SO_REUSEPORT, share the port and take half of the other's connections). The TCP
// transport runs without SO_REUSEPORT (newHost), so a port in use fails to bind; this turns that
// into an error that stops the start. An address that cannot be used for another reason (no
// IPv6 on this machine) is only logged, as libp2p does.
func (n *Node) checkListening(h host.Host) error {
	have := h.Network().ListenAddresses()
	var errs []error
	for _, s := range n.cfg.ListenAddrs {
		want, err := ma.NewMultiaddr(s)
		if err != nil {
			return fmt.Errorf("p2p listen address %q: %w", s, err)
		}
		if listeningOn(have, want) {
			continue
		}
		perr := probeListen(want)
		if errors.Is(perr, syscall.EADDRINUSE) {
			errs = append(errs, fmt.Errorf("p2p: cannot listen on %s: the port is in use (another shoal daemon?): %w", want, perr))
			continue
		}
		n.log.Warn("not listening on a configured address", "addr", want, "err", perr)
	}
	return errors.Join(errs...)
}

// listeningOn reports whether one of the host's listeners is want: the same address, or, when
// want's port is 0, the same address with the port the kernel chose.
func listeningOn(have []ma.Multiaddr, want ma.Multiaddr) bool {
	for _, l := range have {
		if sameListen(l, want) {
			return true
		}
	}
	return false
}

func sameListen(l, want ma.Multiaddr) bool {
	lc, wc := []ma.Component(l), []ma.Component(want)
	if len(lc) != len(wc) {
		return false
	}
	for i := range wc {
		if lc[i].Code() != wc[i].Code() {
			return false
		}
		if lc[i].Value() == wc[i].Value() {
			continue
		}
		code := wc[i].Code()
		if (code == ma.P_TCP || code == ma.P_UDP) && wc[i].Value() == "0" {
			continue
		}
		return false
	}
	return true
}

// probeListen binds want's address (without SO_REUSEPORT) and releases it at once, to learn why
// the host could not listen there.
func probeListen(want ma.Multiaddr) error {
	network, addr, err := manet.DialArgs(want)
	if err != nil {
		return err
	}
	if strings.HasPrefix(network, "udp") {
		c, err := net.ListenPacket(network, addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	return l.Close()
}

// inUseHint explains libp2p's error when no listen address could be bound because the ports
// are taken (libp2p formats the bind errors as text, so they cannot be tested with errors.Is).
func inUseHint(err error) string {
	if strings.Contains(err.Error(), "address already in use") {
		return " (the port is in use: is another shoal daemon running with this --listen?)"
	}
	return ""
}
