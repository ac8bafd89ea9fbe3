package fanotify

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire constants of the fanotify event stream (include/uapi/linux/fanotify.h, Linux 6.14+).
const (
	// MetadataLen is the size of struct fanotify_event_metadata.
	MetadataLen = 24
	// MetadataVersion is FANOTIFY_METADATA_VERSION.
	MetadataVersion = 3
	// PreAccess is FAN_PRE_ACCESS: a read (or write) of a marked file is about to happen.
	PreAccess = 0x00100000
	// QueueOverflow is FAN_Q_OVERFLOW (never sent with FAN_UNLIMITED_QUEUE).
	QueueOverflow = 0x00004000
	// InfoTypeRange is FAN_EVENT_INFO_TYPE_RANGE, the record that gives a pre-content event's
	// byte range.
	InfoTypeRange = 6
	// rangeInfoLen is the size of struct fanotify_event_info_range.
	rangeInfoLen = 24
	// infoHeaderLen is the size of struct fanotify_event_info_header.
	infoHeaderLen = 4
	// ResponseLen is the size of struct fanotify_response.
	ResponseLen = 8

	// Allow is FAN_ALLOW.
	Allow uint32 = 0x01
	// deny is FAN_DENY; see DenyErrno.
	deny uint32 = 0x02
	// NoFD is FAN_NOFD: the event carries no file descriptor.
	NoFD = -1
)

// DenyErrno is FAN_DENY_ERRNO(errno) (Linux 6.14+): FAN_DENY with the errno in the top 8 bits
// (FAN_ERRNO_SHIFT 24, FAN_ERRNO_MASK 0xff). The reader's syscall fails with that errno. Only
// groups of class FAN_CLASS_PRE_CONTENT may send it, and only for EPERM, EIO, EBUSY, ETXTBSY,
// EAGAIN, ENOSPC and EDQUOT.
func DenyErrno(errno uint8) uint32 { return deny | uint32(errno)<<24 }

// Event is one decoded fanotify event.
type Event struct {
	Mask uint64
	// FD is a file descriptor for the accessed file (opened without events), or NoFD. The
	// receiver owns it: it must answer a permission event on it and then close it.
	FD  int32
	Pid int32 // the accessing process (thread group id)
	// HasRange says whether the event carried a range record; Offset and Count are its range.
	HasRange bool
	Offset   uint64
	Count    uint64
}

// ErrMalformed is wrapped by every error about a byte stream that is not a fanotify event stream.
var ErrMalformed = errors.New("malformed fanotify event")

// ParseEvents decodes the events in b, one read(2) of a fanotify group. It returns every event it
// could frame, in order, even when it also returns an error: their file descriptors are real and
// must be answered and closed. An info record it does not know is skipped; a malformed range
// record leaves the event without a range. It never panics, whatever b holds.
func ParseEvents(b []byte) ([]Event, error) {
	var evs []Event
	for off := 0; off < len(b); {
		rest := b[off:]
		if len(rest) < MetadataLen {
			return evs, fmt.Errorf("%w: %d trailing bytes at %d, less than the %d-byte header", ErrMalformed, len(rest), off, MetadataLen)
		}
		evLen := binary.NativeEndian.Uint32(rest[0:])
		vers := rest[4]
		metaLen := binary.NativeEndian.Uint16(rest[6:])
		ev := Event{
			Mask: binary.NativeEndian.Uint64(rest[8:]),
			FD:   int32(binary.NativeEndian.Uint32(rest[16:])),
			Pid:  int32(binary.NativeEndian.Uint32(rest[20:])),
		}
		bad := ""
		switch {
		case vers != MetadataVersion:
			bad = fmt.Sprintf("version %d, want %d", vers, MetadataVersion)
		case metaLen < MetadataLen:
			bad = fmt.Sprintf("metadata_len %d < %d", metaLen, MetadataLen)
		case evLen < uint32(metaLen):
			bad = fmt.Sprintf("event_len %d < metadata_len %d", evLen, metaLen)
		case uint64(evLen) > uint64(len(rest)):
			bad = fmt.Sprintf("event_len %d past the %d bytes left", evLen, len(rest))
		}
		if bad != "" {
			// The header is there, so its fd is as real as any: hand it back so it is answered
			// and closed, but nothing after it can be framed.
			evs = append(evs, ev)
			return evs, fmt.Errorf("%w at byte %d: %s", ErrMalformed, off, bad)
		}
		parseInfo(&ev, rest[metaLen:evLen])
		evs = append(evs, ev)
		off += int(evLen)
	}
	return evs, nil
}

// parseInfo reads the info records that follow an event's metadata.
func parseInfo(ev *Event, b []byte) {
	for len(b) >= infoHeaderLen {
		typ := b[0]
		n := int(binary.NativeEndian.Uint16(b[2:]))
		if n < infoHeaderLen || n > len(b) {
			return
		}
		if typ == InfoTypeRange && n >= rangeInfoLen {
			ev.HasRange = true
			ev.Offset = binary.NativeEndian.Uint64(b[8:])
			ev.Count = binary.NativeEndian.Uint64(b[16:])
		}
		b = b[n:]
	}
}

// AppendEvent encodes ev as the kernel does (with a range record if ev.HasRange). Tests and
// emulations use it.
func AppendEvent(b []byte, ev Event) []byte {
	n := MetadataLen
	if ev.HasRange {
		n += rangeInfoLen
	}
	b = binary.NativeEndian.AppendUint32(b, uint32(n))
	b = append(b, MetadataVersion, 0)
	b = binary.NativeEndian.AppendUint16(b, MetadataLen)
	b = binary.NativeEndian.AppendUint64(b, ev.Mask)
	b = binary.NativeEndian.AppendUint32(b, uint32(ev.FD))
	b = binary.NativeEndian.AppendUint32(b, uint32(ev.Pid))
	if ev.HasRange {
		b = append(b, InfoTypeRange, 0)
		b = binary.NativeEndian.AppendUint16(b, rangeInfoLen)
		b = binary.NativeEndian.AppendUint32(b, 0)
		b = binary.NativeEndian.AppendUint64(b, ev.Offset)
		b = binary.NativeEndian.AppendUint64(b, ev.Count)
	}
	return b
}

// EncodeResponse is struct fanotify_response {s32 fd; u32 response}.
func EncodeResponse(fd int32, response uint32) [ResponseLen]byte {
	var b [ResponseLen]byte
	binary.NativeEndian.PutUint32(b[0:], uint32(fd))
	binary.NativeEndian.PutUint32(b[4:], response)
	return b
}
