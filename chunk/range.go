package chunk

// Range is a byte range of a blob. The JSON form ({"off","len"}) is what the daemon keeps on
// disk for read orders.
type Range struct {
	Offset int64 `json:"off"`
	Length int64 `json:"len"`
}

// End is the offset one past the range's last byte.
func (r Range) End() int64 { return r.Offset + r.Length }

// Source names where a chunk's bytes came from, as stats and metrics show it.
type Source string

// Sources of chunk bytes.
const (
	SourceLocal     Source = "local"     // already present in this blob: a cache hit
	SourceDedup     Source = "dedup"     // present locally in another blob (same CID)
	SourcePeer      Source = "peer"      // from a peer that held it
	SourceCoalesced Source = "coalesced" // from the peer chosen to fetch it from the origin for the cluster
	SourceOrigin    Source = "origin"    // from this host's own origin
)
