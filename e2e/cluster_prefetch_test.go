package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

type clusterJob struct {
	ID           int    `json:"id"`
	State        string `json:"state"`
	Done         int    `json:"done"`
	Bytes        int64  `json:"bytes"`
	BytesPresent int64  `json:"bytesPresent"`
	Hosts        []struct {
		Peer  string `json:"peer"`
		State string `json:"state"`
	} `json:"hosts"`
}

// TestClusterPrefetch: `shoal prefetch --cluster REF --wait` on host A has hosts B and C warm
// the image too, each by its own prefetch over the p2p exchange: afterwards all three hold it,
// the origin served it about once, and A's `shoal stats --json` shows the job done on 3 hosts.
// With --percent 50, two hosts of three hold it and the third has never heard of it.
func TestClusterPrefetch(t *testing.T) {
	t.Run("all", func(t *testing.T) {
		c := newCluster(t, 3)
		out := run(t, "prefetch", "--cluster", c.ref, "--wait", "--api", c.daemons[0].sock)
		if !strings.Contains(out, "is local on 3 hosts") {
			t.Fatalf("prefetch --cluster said:\n%s", out)
		}
		for _, d := range c.daemons {
			s := c.stats(d)
			if len(s.Images) != 1 || s.Images[0].BytesPresent != c.image || s.VerifyFailures != 0 {
				t.Fatalf("host %d after the cluster prefetch: %+v", d.n, s)
			}
		}
		ob := c.originBytes()
		t.Logf("image %d bytes; origin served %d (%.2fx) for 3 hosts warmed at once", c.image, ob, float64(ob)/float64(c.image))
		if ob > c.image*13/10 {
			t.Errorf("origin served %d bytes for a %d-byte image warmed on 3 hosts: want about one image", ob, c.image)
		}
		jobs := clusterJobs(t, c, c.daemons[0])
		if len(jobs) != 1 || jobs[0].State != "done" || jobs[0].Done != 3 || len(jobs[0].Hosts) != 3 || jobs[0].BytesPresent != 3*c.image {
			t.Errorf("stats clusterPrefetch: %+v, want one job done on 3 hosts with 3 images present", jobs)
		}
		if txt := run(t, "stats", "--api", c.daemons[0].sock); !strings.Contains(txt, "CLUSTER PREFETCH") || !strings.Contains(txt, "3 hosts: 3 done") {
			t.Errorf("shoal stats does not show the cluster prefetch:\n%s", txt)
		}
	})
	t.Run("percent", func(t *testing.T) {
		c := newCluster(t, 3)
		run(t, "prefetch", "--cluster", c.ref, "--percent", "50", "--wait", "--api", c.daemons[0].sock)
		holding := 0
		for _, d := range c.daemons {
			s := c.stats(d)
			switch {
			case len(s.Images) == 1 && s.Images[0].BytesPresent == c.image:
				holding++
			case len(s.Images) != 0:
				t.Errorf("host %d holds part of the image: %+v", d.n, s.Images)
			}
		}
		if holding != 2 {
			t.Errorf("%d hosts hold the image after a 50%% cluster prefetch of 3, want 2", holding)
		}
		if jobs := clusterJobs(t, c, c.daemons[0]); len(jobs) != 1 || len(jobs[0].Hosts) != 2 || jobs[0].Done != 2 {
			t.Errorf("stats clusterPrefetch: %+v", jobs)
		}
	})
}

func clusterJobs(t *testing.T, c *cluster, d *daemonProc) []clusterJob {
	var s struct {
		ClusterPrefetch []clusterJob `json:"clusterPrefetch"`
	}
	if err := json.Unmarshal([]byte(run(t, "stats", "--json", "--api", d.sock)), &s); err != nil {
		t.Fatal(err)
	}
	return s.ClusterPrefetch
}
