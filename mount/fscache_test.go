package mount

import (
	"errors"
	"strings"
	"testing"

	"github.com/shoal-p2p/shoal/chunkstore/layout"
)

func TestFscacheOptions(t *testing.T) {
	boot := "sha256:" + strings.Repeat("a", 64)
	b1 := "sha256:" + strings.Repeat("b", 64)
	b2 := "sha256:" + strings.Repeat("c", 64)
	got, err := FscacheOptions(boot, "shoal", []string{b1, b2})
	if err != nil {
		t.Fatal(err)
	}
	want := "fsid=" + boot + ",domain_id=shoal,device=" + b1 + ",device=" + b2
	if got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	for _, tc := range [][3]any{
		{"", "d", []string(nil)},
		{boot, "a,b", []string(nil)},
		{boot, "d", []string{"x=y"}},
		{boot, "d", []string{""}},
		{strings.Repeat("k", layout.MaxCookieKeyLen+1), "d", []string(nil)},
	} {
		if _, err := FscacheOptions(tc[0].(string), tc[1].(string), tc[2].([]string)); !errors.Is(err, ErrBadOption) {
			t.Errorf("MountOptions%v = %v, want ErrBadOption", tc, err)
		}
	}
}
