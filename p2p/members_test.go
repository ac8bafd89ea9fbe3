package p2p

import (
	"bytes"
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

func TestMemberMetaRoundTrip(t *testing.T) {
	addrs := []ma.Multiaddr{ma.StringCast("/ip4/10.0.0.7/tcp/4001"), ma.StringCast("/ip6/fd00::7/udp/4001/quic-v1")}
	b := encodeMemberMeta(true, addrs, 512)
	m, err := decodeMemberMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	if !m.canFetch || len(m.addrs) != 2 || !m.addrs[0].Equal(addrs[0]) || !m.addrs[1].Equal(addrs[1]) {
		t.Fatalf("decoded %+v", m)
	}
	// Over the limit: addresses are left out, never cut.
	short := encodeMemberMeta(false, addrs, 20)
	m, err = decodeMemberMeta(short)
	if err != nil || m.canFetch || len(m.addrs) > 1 || len(short) > 20 {
		t.Fatalf("limited encoding %x: %+v, %v", short, m, err)
	}
	for _, bad := range [][]byte{nil, {2, 0}, {1}, {1, 0, 9, 1}, {1, 0, 2, 0xff, 0xff}} {
		if _, err := decodeMemberMeta(bad); err == nil {
			t.Errorf("decoded %x without an error", bad)
		}
	}
}

// FuzzMemberMeta: metadata from another member is untrusted; decoding never panics, and what
// decodes encodes back to the same bytes.
func FuzzMemberMeta(f *testing.F) {
	f.Add(encodeMemberMeta(true, []ma.Multiaddr{ma.StringCast("/ip4/10.0.0.7/tcp/4001")}, 512))
	f.Add([]byte{1, 0})
	f.Add([]byte{1, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMemberMeta(b)
		if err != nil {
			return
		}
		if again := encodeMemberMeta(m.canFetch, m.addrs, len(b)+64); !bytes.Equal(again[2:], b[2:]) {
			t.Fatalf("%x decoded to %+v, encodes to %x", b, m, again)
		}
	})
}
