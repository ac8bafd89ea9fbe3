package cachefiles

import (
	"errors"
	"testing"
)

// The vectors are from /work/shared/KERNEL.md (observed on a real kernel); vm_test.go checks the
// path of a real backing file as well.
func TestBackingPath(t *testing.T) {
	for _, tc := range []struct{ vol, cookie, want string }{
		{"erofs,test.img", "test.img", "/c/cache/Ierofs,test.img/@f7/Dtest.img"},
		{"erofs,test.img", "blob1.img", "/c/cache/Ierofs,test.img/@cb/Dblob1.img"},
		{"erofs,mydomain", "sha256:abc", "/c/cache/Ierofs,mydomain/@c5/Dsha256:abc"},
	} {
		got, err := BackingPath("/c", tc.vol, tc.cookie)
		if err != nil || got != tc.want {
			t.Errorf("BackingPath(%q, %q) = %q, %v; want %q", tc.vol, tc.cookie, got, err, tc.want)
		}
	}
	for _, cookie := range []string{"", "a/b", "a b", "caf\xc3\xa9"} {
		if _, err := BackingPath("/c", "erofs,shoal", cookie); !errors.Is(err, ErrBadKey) {
			t.Errorf("cookie %q: %v", cookie, err)
		}
	}
}
