package p2p

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPreheatWire(t *testing.T) {
	b, err := AppendPreheatRequest(nil, PreheatRequest{Op: PreheatStart, Ref: "r/i:1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{8, 1, 1, 5, 'r', '/', 'i', ':', '1'}; !bytes.Equal(b, want) {
		t.Fatalf("request % x, want % x", b, want)
	}
	req, err := ReadPreheatRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil || req != (PreheatRequest{Op: PreheatStart, Ref: "r/i:1"}) {
		t.Fatalf("request round trip: %+v %v", req, err)
	}
	if _, err := AppendPreheatRequest(nil, PreheatRequest{Op: 3, Ref: "x"}); err == nil {
		t.Error("op 3 encoded")
	}
	r := AppendPreheatResponse(nil, StatusOK, PreheatProgress{Image: "d", State: "done", Bytes: 300, Present: 200, Msg: "m"})
	if want := []byte{14, 0, 1, 'd', 4, 'd', 'o', 'n', 'e', 0xac, 0x02, 0xc8, 0x01, 1, 'm'}; !bytes.Equal(r, want) {
		t.Fatalf("response % x, want % x", r, want)
	}
	st, pr, err := ReadPreheatResponse(bufio.NewReader(bytes.NewReader(r)))
	if err != nil || st != StatusOK || pr != (PreheatProgress{Image: "d", State: "done", Bytes: 300, Present: 200, Msg: "m"}) {
		t.Fatalf("response round trip: %v %+v %v", st, pr, err)
	}
	for name, body := range map[string][]byte{
		"empty ref":      {3, 1, 1, 0},
		"bad version":    {4, 2, 1, 1, 'x'},
		"bad op":         {4, 1, 9, 1, 'x'},
		"trailing bytes": {5, 1, 1, 1, 'x', 0},
		"truncated":      {4, 1, 1, 5, 'x'},
	} {
		if _, err := ReadPreheatRequest(bufio.NewReader(bytes.NewReader(body))); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
	// More present than there is.
	bad := AppendPreheatResponse(nil, StatusOK, PreheatProgress{Bytes: 1, Present: 2})
	if _, _, err := ReadPreheatResponse(bufio.NewReader(bytes.NewReader(bad))); !errors.Is(err, ErrMalformed) {
		t.Errorf("present over bytes: err %v", err)
	}
}

func FuzzPreheatWire(f *testing.F) {
	b, _ := AppendPreheatRequest(nil, PreheatRequest{Op: PreheatStatus, Ref: "127.0.0.1:5000/img:latest"})
	f.Add(b)
	f.Add(AppendPreheatResponse(nil, StatusError, PreheatProgress{Image: "sha256:00", State: "failed", Bytes: 9, Present: 3, Msg: "no"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		if req, err := ReadPreheatRequest(bufio.NewReader(bytes.NewReader(data))); err == nil {
			again, err := AppendPreheatRequest(nil, req)
			if err != nil {
				t.Fatalf("decoded %+v does not encode: %v", req, err)
			}
			if back, err := ReadPreheatRequest(bufio.NewReader(bytes.NewReader(again))); err != nil || back != req {
				t.Fatalf("re-encoded %+v reads back as %+v, %v", req, back, err)
			}
		}
		if st, pr, err := ReadPreheatResponse(bufio.NewReader(bytes.NewReader(data))); err == nil {
			if pr.Present > pr.Bytes || pr.Present < 0 {
				t.Fatalf("accepted progress %+v", pr)
			}
			again := AppendPreheatResponse(nil, st, pr)
			if st2, pr2, err := ReadPreheatResponse(bufio.NewReader(bytes.NewReader(again))); err != nil || st2 != st || pr2 != pr {
				t.Fatalf("re-encoded %+v reads back as %+v, %v", pr, pr2, err)
			}
		}
	})
}

type fakePreheater struct {
	mu      sync.Mutex
	started []string
}

func (f *fakePreheater) Preheat(_ context.Context, ref string, start bool) (PreheatProgress, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if start {
		f.started = append(f.started, ref)
	}
	if ref == "bad" {
		return PreheatProgress{}, errors.New("no such image")
	}
	return PreheatProgress{Image: "sha256:aa", State: "running", Bytes: 10, Present: 4}, nil
}

// TestPreheatExchange: a host asks a peer to warm an image and then how far it got; a host
// without a Preheater and a failing one answer with errors that say so.
func TestPreheatExchange(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	fp := &fakePreheater{}
	nodes[1].SetPreheater(fp)
	waitFor(t, 10*time.Second, "connections", func() bool { return len(nodes[0].Peers()) == 2 })
	pr, err := nodes[0].Preheat(t.Context(), nodes[1].ID(), "reg/img:1", true)
	if err != nil || pr.Image != "sha256:aa" || pr.Present != 4 {
		t.Fatalf("start: %+v %v", pr, err)
	}
	if _, err := nodes[0].Preheat(t.Context(), nodes[1].ID(), "reg/img:1", false); err != nil {
		t.Fatal(err)
	}
	if fp.started[0] != "reg/img:1" || len(fp.started) != 1 {
		t.Fatalf("started %v, want the one start", fp.started)
	}
	if _, err := nodes[0].Preheat(t.Context(), nodes[1].ID(), "bad", true); err == nil || !strings.Contains(err.Error(), "no such image") {
		t.Fatalf("failing preheat: %v", err)
	}
	if _, err := nodes[0].Preheat(t.Context(), nodes[2].ID(), "reg/img:1", true); err == nil || !strings.Contains(err.Error(), "does not preheat") {
		t.Fatalf("host without a preheater: %v", err)
	}
}
