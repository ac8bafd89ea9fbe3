// Package p2p connects Shoal daemons: the libp2p host, peer discovery, content routing (who holds
// which chunk) and the chunk exchange protocol, including cluster-wide origin coalescing.
package p2p
