package cachefiles

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// le32 and le64 build expected wire bytes by hand, independently of AppendMsg. The tests assume a
// little-endian host (x86-64, arm64), as Shoal's kernel targets are.
func le32(v uint32) []byte       { return binary.LittleEndian.AppendUint32(nil, v) }
func le64(v uint64) []byte       { return binary.LittleEndian.AppendUint64(nil, v) }
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

var (
	// OPEN msg 7, object 3, volume "erofs,shoal\0" (12), cookie "sha256:ab" (9), fd 5, flags 0.
	openWire = cat(le32(7), le32(0), le32(16+16+12+9), le32(3),
		le32(12), le32(9), le32(5), le32(0), []byte("erofs,shoal\x00sha256:ab"))
	openMsg = Msg{ID: 7, Op: OpOpen, ObjectID: 3, VolumeKey: "erofs,shoal", CookieKey: "sha256:ab", Fd: 5}

	closeWire = cat(le32(9), le32(1), le32(16), le32(3))
	closeMsg  = Msg{ID: 9, Op: OpClose, ObjectID: 3}

	readWire = cat(le32(8), le32(2), le32(32), le32(3), le64(0x10000), le64(0x20000))
	readMsg  = Msg{ID: 8, Op: OpRead, ObjectID: 3, Off: 0x10000, Len: 0x20000}
)

func TestCodecByteExact(t *testing.T) {
	for _, tc := range []struct {
		name string
		wire []byte
		msg  Msg
	}{
		{"open", openWire, openMsg},
		{"close", closeWire, closeMsg},
		{"read", readWire, readMsg},
		{"open-empty-cookie", cat(le32(1), le32(0), le32(16+16+2), le32(1), le32(2), le32(0), le32(4), le32(0), []byte("x\x00")),
			Msg{ID: 1, Op: OpOpen, ObjectID: 1, VolumeKey: "x", Fd: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeMsg(tc.wire)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if got != tc.msg {
				t.Fatalf("decode:\n got %+v\nwant %+v", got, tc.msg)
			}
			enc, err := AppendMsg(nil, &tc.msg)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			if !bytes.Equal(enc, tc.wire) {
				t.Fatalf("encode:\n got % x\nwant % x", enc, tc.wire)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	setLen := func(b []byte) []byte {
		b = bytes.Clone(b)
		binary.LittleEndian.PutUint32(b[8:], uint32(len(b)))
		return b
	}
	open := func(vks, cks uint32, keys string) []byte {
		return setLen(cat(le32(1), le32(0), le32(0), le32(1), le32(vks), le32(cks), le32(3), le32(0), []byte(keys)))
	}
	for _, tc := range []struct {
		name string
		wire []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"short-header", openWire[:15], ErrMalformed},
		{"truncated-open", openWire[:len(openWire)-1], ErrMalformed},
		{"len-larger-than-read", cat(le32(1), le32(1), le32(17), le32(1)), ErrMalformed},
		{"len-smaller-than-read", cat(le32(1), le32(1), le32(16), le32(1), []byte{0}), ErrMalformed},
		{"len-huge", cat(le32(1), le32(1), le32(0xFFFFFFFF), le32(1)), ErrMalformed},
		{"too-big", setLen(cat(closeWire, make([]byte, MsgMaxSize))), ErrMalformed},
		{"open-no-body", setLen(cat(le32(1), le32(0), le32(0), le32(1))), ErrMalformed},
		{"open-keys-beyond-message", open(200, 9, "erofs,shoal\x00sha256:ab"), ErrMalformed},
		{"open-key-sizes-overflow", open(0xFFFFFFFF, 2, "ab"), ErrMalformed},
		{"open-key-sizes-short", open(5, 1, "erofs,shoal\x00sha256:ab"), ErrMalformed},
		{"open-volume-missing-nul", open(12, 9, "erofs,shoalXsha256:ab"), ErrMalformed},
		{"open-volume-empty", open(0, 3, "abc"), ErrMalformed},
		{"open-nul-inside-volume", open(4, 0, "a\x00b\x00"), ErrMalformed},
		{"open-fd-negative", setLen(cat(le32(1), le32(0), le32(0), le32(1), le32(2), le32(0), le32(0x80000000), le32(0), []byte("x\x00"))), ErrMalformed},
		{"close-with-body", setLen(cat(closeWire, []byte{1, 2, 3, 4})), ErrMalformed},
		{"read-short", setLen(readWire[:24]), ErrMalformed},
		{"read-long", setLen(cat(readWire, le32(0))), ErrMalformed},
		{"read-overflow", setLen(cat(readWire[:16], le64(1<<63-1), le64(2))), ErrMalformed},
		{"read-off-huge", setLen(cat(readWire[:16], le64(1<<63), le64(0))), ErrMalformed},
		{"unknown-opcode", cat(le32(1), le32(3), le32(16), le32(1)), ErrUnknownOpcode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeMsg(tc.wire)
			if !errors.Is(err, tc.want) {
				t.Fatalf("DecodeMsg = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestCommands(t *testing.T) {
	must := func(s string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, tc := range []struct{ got, want string }{
		{must(CmdDir("/var/cache/shoal")), "dir /var/cache/shoal"},
		{must(CmdTag("shoal")), "tag shoal"},
		{CmdBindOndemand, "bind ondemand"},
		{CmdRestore, "restore"},
		{CmdCopen(7, 12345), "copen 7,12345"},
		{CmdCopen(4294967295, 0), "copen 4294967295,0"},
		{CmdCopenError(7, 2), "copen 7,-2"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	for _, bad := range []func() (string, error){
		func() (string, error) { return CmdDir("") },
		func() (string, error) { return CmdDir("/a\nbind") },
		func() (string, error) { return CmdDir("/a\x00") },
		func() (string, error) { return CmdDir("/" + strings.Repeat("a", CommandMaxSize)) },
		func() (string, error) { return CmdTag("two words") },
	} {
		if s, err := bad(); !errors.Is(err, ErrBadCommand) {
			t.Errorf("got %q, %v; want ErrBadCommand", s, err)
		}
	}
}
