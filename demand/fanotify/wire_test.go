package fanotify

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// le builds little-endian bytes; the tests that use it skip on big-endian hosts (the stream is in
// host byte order).
func le(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch v := p.(type) {
		case uint8:
			b = append(b, v)
		case uint16:
			b = binary.LittleEndian.AppendUint16(b, v)
		case uint32:
			b = binary.LittleEndian.AppendUint32(b, v)
		case int32:
			b = binary.LittleEndian.AppendUint32(b, uint32(v))
		case uint64:
			b = binary.LittleEndian.AppendUint64(b, v)
		}
	}
	return b
}

func littleEndian(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("byte-exact vectors are little-endian; this host is big-endian")
	}
}

// A FAN_PRE_ACCESS event as Linux 6.14+ writes it: 24-byte metadata, then the 24-byte range
// record {type 6, pad, len 24, pad32, offset, count}.
var preAccess = le(
	uint32(48), uint8(3), uint8(0), uint16(24), uint64(0x00100000), int32(7), int32(4242),
	uint8(6), uint8(0), uint16(24), uint32(0), uint64(65536), uint64(131072),
)

func TestParseEventsByteExact(t *testing.T) {
	littleEndian(t)
	overflow := le(uint32(24), uint8(3), uint8(0), uint16(24), uint64(0x4000), int32(-1), int32(0))
	// An event with an unknown info record (type 1, 12 bytes) before the range record.
	withUnknown := le(
		uint32(60), uint8(3), uint8(0), uint16(24), uint64(0x00100000), int32(9), int32(1),
		uint8(1), uint8(0), uint16(12), uint64(0xdeadbeef),
		uint8(6), uint8(0), uint16(24), uint32(0), uint64(4096), uint64(1),
	)
	// metadata_len 32: the kernel may grow the header; info records start after it.
	longMeta := le(
		uint32(56), uint8(3), uint8(0), uint16(32), uint64(0x00100000), int32(5), int32(2), uint64(0),
		uint8(6), uint8(0), uint16(24), uint32(0), uint64(8192), uint64(3),
	)
	tests := []struct {
		name    string
		in      []byte
		want    []Event
		wantErr bool
	}{
		{"empty", nil, nil, false},
		{"pre-access with range", preAccess, []Event{{Mask: PreAccess, FD: 7, Pid: 4242, HasRange: true, Offset: 65536, Count: 131072}}, false},
		{"two events", append(append([]byte{}, preAccess...), overflow...), []Event{
			{Mask: PreAccess, FD: 7, Pid: 4242, HasRange: true, Offset: 65536, Count: 131072},
			{Mask: QueueOverflow, FD: NoFD},
		}, false},
		{"unknown info record skipped", withUnknown, []Event{{Mask: PreAccess, FD: 9, Pid: 1, HasRange: true, Offset: 4096, Count: 1}}, false},
		{"longer metadata", longMeta, []Event{{Mask: PreAccess, FD: 5, Pid: 2, HasRange: true, Offset: 8192, Count: 3}}, false},
		{"no range record", le(uint32(24), uint8(3), uint8(0), uint16(24), uint64(PreAccess), int32(3), int32(8)),
			[]Event{{Mask: PreAccess, FD: 3, Pid: 8}}, false},
		{"short range record ignored", le(uint32(32), uint8(3), uint8(0), uint16(24), uint64(PreAccess), int32(3), int32(8),
			uint8(6), uint8(0), uint16(8), uint32(0)), []Event{{Mask: PreAccess, FD: 3, Pid: 8}}, false},
		{"info len 0 stops info parsing", le(uint32(28), uint8(3), uint8(0), uint16(24), uint64(PreAccess), int32(3), int32(8),
			uint8(6), uint8(0), uint16(0)), []Event{{Mask: PreAccess, FD: 3, Pid: 8}}, false},
		{"truncated header", preAccess[:20], nil, true},
		{"event_len past the buffer", preAccess[:40], []Event{{Mask: PreAccess, FD: 7, Pid: 4242}}, true},
		{"wrong version", le(uint32(24), uint8(2), uint8(0), uint16(24), uint64(PreAccess), int32(3), int32(8)),
			[]Event{{Mask: PreAccess, FD: 3, Pid: 8}}, true},
		{"event_len below metadata_len", le(uint32(16), uint8(3), uint8(0), uint16(24), uint64(PreAccess), int32(3), int32(8)),
			[]Event{{Mask: PreAccess, FD: 3, Pid: 8}}, true},
		{"good then garbage", append(append([]byte{}, preAccess...), 1, 2, 3),
			[]Event{{Mask: PreAccess, FD: 7, Pid: 4242, HasRange: true, Offset: 65536, Count: 131072}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEvents(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, does not wrap ErrMalformed", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d events %+v, want %+v", len(got), got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("event %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestAppendEventByteExact(t *testing.T) {
	littleEndian(t)
	got := AppendEvent(nil, Event{Mask: PreAccess, FD: 7, Pid: 4242, HasRange: true, Offset: 65536, Count: 131072})
	if !bytes.Equal(got, preAccess) {
		t.Fatalf("AppendEvent = %x\nwant          %x", got, preAccess)
	}
}

func TestResponses(t *testing.T) {
	littleEndian(t)
	// FAN_DENY_ERRNO(EIO) = FAN_DENY | (5 << FAN_ERRNO_SHIFT=24) (uapi fanotify.h, 6.14+).
	if got := DenyErrno(5); got != 0x05000002 {
		t.Fatalf("DenyErrno(EIO) = %#x, want 0x05000002", got)
	}
	for _, tt := range []struct {
		fd   int32
		resp uint32
		want []byte
	}{
		{7, Allow, []byte{7, 0, 0, 0, 1, 0, 0, 0}},
		{300, DenyErrno(5), []byte{0x2c, 1, 0, 0, 2, 0, 0, 5}},
		{-1, Allow, []byte{0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0}},
	} {
		if got := EncodeResponse(tt.fd, tt.resp); !bytes.Equal(got[:], tt.want) {
			t.Errorf("EncodeResponse(%d, %#x) = %x, want %x", tt.fd, tt.resp, got, tt.want)
		}
	}
}

func TestKernelVersion(t *testing.T) {
	for _, tt := range []struct {
		in       string
		maj, min int
		ok       bool
	}{
		{"6.18.44-fc-v769", 6, 18, true},
		{"6.14.0", 6, 14, true},
		{"5.15", 5, 15, true},
		{"6.14-rc3", 6, 14, true},
		{"garbage", 0, 0, false},
		{"6", 0, 0, false},
	} {
		maj, min, ok := kernelVersion(tt.in)
		if maj != tt.maj || min != tt.min || ok != tt.ok {
			t.Errorf("kernelVersion(%q) = %d, %d, %v", tt.in, maj, min, ok)
		}
	}
}

func FuzzParseEvents(f *testing.F) {
	f.Add(preAccess)
	f.Add(AppendEvent(AppendEvent(nil, Event{Mask: QueueOverflow, FD: NoFD}), Event{Mask: PreAccess, FD: 3, HasRange: true, Count: 1}))
	f.Add([]byte{})
	f.Add(preAccess[:30])
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, err := ParseEvents(b)
		if len(evs) > len(b)/MetadataLen {
			t.Fatalf("%d events from %d bytes", len(evs), len(b))
		}
		if err == nil {
			// A stream that parses cleanly re-encodes to something that parses the same.
			var again []byte
			for _, ev := range evs {
				again = AppendEvent(again, ev)
			}
			evs2, err := ParseEvents(again)
			if err != nil || len(evs2) != len(evs) {
				t.Fatalf("re-encoded stream: %v, %d events, want %d", err, len(evs2), len(evs))
			}
			for i := range evs {
				if evs[i] != evs2[i] {
					t.Fatalf("event %d: %+v re-parsed as %+v", i, evs[i], evs2[i])
				}
			}
		}
	})
}
