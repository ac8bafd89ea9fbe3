package daemon

import (
	"fmt"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestPickHosts: a share of hosts is rounded up, never none, and the same reference picks the
// same hosts however they are listed.
func TestPickHosts(t *testing.T) {
	var hosts []peer.ID
	for i := range 10 {
		hosts = append(hosts, peer.ID(fmt.Sprintf("host-%d", i)))
	}
	for _, tc := range []struct{ percent, want int }{{0, 10}, {100, 10}, {50, 5}, {1, 1}, {11, 2}, {99, 10}} {
		got := pickHosts("reg/img:1", hosts, tc.percent)
		if len(got) != tc.want {
			t.Errorf("%d%% of 10 hosts: %d, want %d", tc.percent, len(got), tc.want)
		}
		rev := slices.Clone(hosts)
		slices.Reverse(rev)
		again := pickHosts("reg/img:1", rev, tc.percent)
		slices.Sort(got)
		slices.Sort(again)
		if tc.percent > 0 && tc.percent < 100 && !slices.Equal(got, again) {
			t.Errorf("%d%%: %v, then %v from the hosts in another order", tc.percent, got, again)
		}
	}
	if a, b := pickHosts("reg/a:1", hosts, 30), pickHosts("reg/b:1", hosts, 30); slices.Equal(a, b) {
		t.Logf("two references picked the same hosts %v (possible, unlikely)", a)
	}
}
