package layout

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestFanDirVectors(t *testing.T) {
	// Vectors from KERNEL.md §1, observed on a real kernel.
	tests := []struct{ volume, cookie, want string }{
		{"erofs,test.img", "test.img", "@f7"},
		{"erofs,test.img", "blob1.img", "@cb"},
		{"erofs,mydomain", "sha256:abc", "@c5"},
	}
	for _, tt := range tests {
		if got := FanDir(tt.volume, tt.cookie); got != tt.want {
			t.Errorf("FanDir(%q, %q) = %s, want %s", tt.volume, tt.cookie, got, tt.want)
		}
	}
}

func TestBackingPath(t *testing.T) {
	d := digest.FromString("hello")
	p, err := BackingPath("/var/cache/shoal", "shoal", d)
	if err != nil {
		t.Fatal(err)
	}
	want := "/var/cache/shoal/cache/Ierofs,shoal/" + FanDir("erofs,shoal", string(d)) + "/D" + string(d)
	if p != want {
		t.Fatalf("BackingPath = %s, want %s", p, want)
	}
	if len(d) != 71 {
		t.Fatalf("sha256 digest is %d bytes, want 71", len(d))
	}
	for _, bad := range []digest.Digest{"", "sha256:xyz", digest.Digest("sha256:" + strings.Repeat("a", 300))} {
		if _, err := BackingPath("/x", "shoal", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("BackingPath(%q) error = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestXattrBytes(t *testing.T) {
	got := DataXattr(0x0102030405)
	want := []byte{0, 0, 0, 0x01, 0x02, 0x03, 0x04, 0x05, 0, 0, 0, 0x01, 0x02, 0x03, 0x04, 0x05, 1, 0}
	if !bytes.Equal(got, want) {
		t.Fatalf("DataXattr = % x, want % x", got, want)
	}
	size, err := ParseDataXattr(got)
	if err != nil || size != 0x0102030405 {
		t.Fatalf("ParseDataXattr = %d, %v", size, err)
	}
	if !bytes.Equal(VolumeXattr(), []byte{0, 0, 0, 0}) {
		t.Fatalf("VolumeXattr = % x", VolumeXattr())
	}
	dirty := append([]byte(nil), got...)
	dirty[17] = 4
	for _, bad := range [][]byte{nil, got[:17], dirty} {
		if _, err := ParseDataXattr(bad); err == nil {
			t.Errorf("ParseDataXattr(% x) accepted", bad)
		}
	}
}
