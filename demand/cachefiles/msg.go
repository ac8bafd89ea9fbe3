package cachefiles

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Wire constants of include/uapi/linux/cachefiles.h (Linux 5.19+).
const (
	// MsgMaxSize is the largest message the kernel sends (CACHEFILES_MSG_MAX_SIZE); a read buffer of
	// this size never gets EMSGSIZE.
	MsgMaxSize = 1024
	// IocReadComplete is CACHEFILES_IOC_READ_COMPLETE = _IOW(0x98, 1, int) on x86-64 and arm64. Its
	// argument is the READ's msg id, passed by value.
	IocReadComplete = 0x40049801
	// CommandMaxSize is the longest command the device accepts in one write (PAGE_SIZE-1 on 4 KiB
	// pages).
	CommandMaxSize = 4095

	headerSize     = 16 // struct cachefiles_msg
	openHeaderSize = 16 // struct cachefiles_open without data
	readBodySize   = 16 // struct cachefiles_read
)

// Opcode is a cachefiles_msg opcode.
type Opcode uint32

// Opcodes of enum cachefiles_opcode.
const (
	OpOpen  Opcode = 0
	OpClose Opcode = 1
	OpRead  Opcode = 2
)

func (o Opcode) String() string {
	switch o {
	case OpOpen:
		return "OPEN"
	case OpClose:
		return "CLOSE"
	case OpRead:
		return "READ"
	}
	return "opcode(" + strconv.FormatUint(uint64(o), 10) + ")"
}

// Msg is one decoded message from /dev/cachefiles. Which fields are set depends on Op.
type Msg struct {
	ID       uint32 // msg_id: the id to answer (copen) or complete (READ_COMPLETE)
	Op       Opcode
	ObjectID uint32 // one per anonymous fd instance

	// OPEN
	VolumeKey string // without its trailing NUL, e.g. "erofs,shoal"
	CookieKey string // e.g. "sha256:<hex>"
	Fd        int    // anonymous fd the kernel installed in the reader's fd table
	Flags     uint32

	// READ: the kernel wants [Off, Off+Len) of the object.
	Off uint64
	Len uint64
}

func (m *Msg) String() string {
	switch m.Op {
	case OpOpen:
		return fmt.Sprintf("OPEN msg %d object %d volume %q cookie %q fd %d", m.ID, m.ObjectID, m.VolumeKey, m.CookieKey, m.Fd)
	case OpRead:
		return fmt.Sprintf("READ msg %d object %d [%d,+%d)", m.ID, m.ObjectID, m.Off, m.Len)
	}
	return fmt.Sprintf("%s msg %d object %d", m.Op, m.ID, m.ObjectID)
}

// DecodeMsg decodes exactly one message, as returned by one read(2) of the device. It checks every
// length against b itself, never allocates more than len(b), and never panics: anything that does
// not add up is an error wrapping ErrMalformed (or ErrUnknownOpcode).
func DecodeMsg(b []byte) (Msg, error) {
	var m Msg
	if len(b) < headerSize {
		return m, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrMalformed, len(b), headerSize)
	}
	le := binary.NativeEndian
	m.ID = le.Uint32(b[0:])
	m.Op = Opcode(le.Uint32(b[4:]))
	n := le.Uint32(b[8:])
	m.ObjectID = le.Uint32(b[12:])
	if uint64(n) != uint64(len(b)) {
		return m, fmt.Errorf("%w: msg %d: len field %d, read %d bytes", ErrMalformed, m.ID, n, len(b))
	}
	if len(b) > MsgMaxSize {
		return m, fmt.Errorf("%w: msg %d: %d bytes, more than %d", ErrMalformed, m.ID, len(b), MsgMaxSize)
	}
	body := b[headerSize:]
	switch m.Op {
	case OpOpen:
		if len(body) < openHeaderSize {
			return m, fmt.Errorf("%w: OPEN msg %d: %d-byte body, shorter than %d", ErrMalformed, m.ID, len(body), openHeaderSize)
		}
		vks := uint64(le.Uint32(body[0:]))
		cks := uint64(le.Uint32(body[4:]))
		fd := le.Uint32(body[8:])
		m.Flags = le.Uint32(body[12:])
		keys := body[openHeaderSize:]
		if vks+cks != uint64(len(keys)) {
			return m, fmt.Errorf("%w: OPEN msg %d: key sizes %d+%d, %d bytes of keys", ErrMalformed, m.ID, vks, cks, len(keys))
		}
		if vks == 0 || keys[vks-1] != 0 {
			return m, fmt.Errorf("%w: OPEN msg %d: volume key not NUL-terminated", ErrMalformed, m.ID)
		}
		vk := keys[:vks-1]
		for _, c := range vk {
			if c == 0 {
				return m, fmt.Errorf("%w: OPEN msg %d: NUL inside the volume key", ErrMalformed, m.ID)
			}
		}
		if fd > math.MaxInt32 {
			return m, fmt.Errorf("%w: OPEN msg %d: fd %d out of range", ErrMalformed, m.ID, fd)
		}
		m.VolumeKey = string(vk)
		m.CookieKey = string(keys[vks:])
		m.Fd = int(fd)
	case OpClose:
		if len(body) != 0 {
			return m, fmt.Errorf("%w: CLOSE msg %d: %d-byte body, want 0", ErrMalformed, m.ID, len(body))
		}
	case OpRead:
		if len(body) != readBodySize {
			return m, fmt.Errorf("%w: READ msg %d: %d-byte body, want %d", ErrMalformed, m.ID, len(body), readBodySize)
		}
		m.Off = le.Uint64(body[0:])
		m.Len = le.Uint64(body[8:])
		if m.Off > math.MaxInt64 || m.Len > math.MaxInt64-m.Off {
			return m, fmt.Errorf("%w: READ msg %d: range [%d,+%d) overflows", ErrMalformed, m.ID, m.Off, m.Len)
		}
	default:
		return m, fmt.Errorf("%w: msg %d: opcode %d", ErrUnknownOpcode, m.ID, uint32(m.Op))
	}
	return m, nil
}

// AppendMsg appends the wire form of m to b, as the kernel would write it. The Server never encodes
// messages; the kernel emulation in the tests and tools do.
func AppendMsg(b []byte, m *Msg) ([]byte, error) {
	le := binary.NativeEndian
	var body []byte
	switch m.Op {
	case OpOpen:
		if m.Fd < 0 || m.Fd > math.MaxInt32 || strings.IndexByte(m.VolumeKey, 0) >= 0 {
			return b, fmt.Errorf("%w: OPEN msg %d: bad fd or volume key", ErrMalformed, m.ID)
		}
		body = le.AppendUint32(body, uint32(len(m.VolumeKey)+1))
		body = le.AppendUint32(body, uint32(len(m.CookieKey)))
		body = le.AppendUint32(body, uint32(m.Fd))
		body = le.AppendUint32(body, m.Flags)
		body = append(body, m.VolumeKey...)
		body = append(body, 0)
		body = append(body, m.CookieKey...)
	case OpClose:
	case OpRead:
		body = le.AppendUint64(body, m.Off)
		body = le.AppendUint64(body, m.Len)
	default:
		return b, fmt.Errorf("%w: msg %d: opcode %d", ErrUnknownOpcode, m.ID, uint32(m.Op))
	}
	n := headerSize + len(body)
	if n > MsgMaxSize {
		return b, fmt.Errorf("%w: msg %d: %d bytes, more than %d", ErrMalformed, m.ID, n, MsgMaxSize)
	}
	b = le.AppendUint32(b, m.ID)
	b = le.AppendUint32(b, uint32(m.Op))
	b = le.AppendUint32(b, uint32(n))
	b = le.AppendUint32(b, m.ObjectID)
	return append(b, body...), nil
}

// checkArg rejects what the device would reject or misparse in a command argument.
func checkArg(verb, arg string) error {
	if arg == "" {
		return fmt.Errorf("%w: %s: empty argument", ErrBadCommand, verb)
	}
	if strings.ContainsAny(arg, "\n\x00") {
		return fmt.Errorf("%w: %s %q: newline or NUL", ErrBadCommand, verb, arg)
	}
	if len(verb)+1+len(arg) > CommandMaxSize {
		return fmt.Errorf("%w: %s: %d-byte argument is too long", ErrBadCommand, verb, len(arg))
	}
	return nil
}

// CmdDir is the command that sets the cache directory. Its filesystem must support tmpfile, xattrs
// and sync_fs (ext4 does, tmpfs does not).
func CmdDir(path string) (string, error) {
	if err := checkArg("dir", path); err != nil {
		return "", err
	}
	return "dir " + path, nil
}

// CmdTag is the command that names the cache (optional).
func CmdTag(tag string) (string, error) {
	if err := checkArg("tag", tag); err != nil {
		return "", err
	}
	if strings.ContainsAny(tag, " \t") {
		return "", fmt.Errorf("%w: tag %q: whitespace", ErrBadCommand, tag)
	}
	return "tag " + tag, nil
}

// CmdBindOndemand binds the cache in on-demand mode (after dir).
const CmdBindOndemand = "bind ondemand"

// CmdRestore makes the kernel resend every request not yet answered: a new worker writes it after
// taking over the device fd.
const CmdRestore = "restore"

// CmdCopen answers OPEN msg id with the object's size in bytes.
func CmdCopen(id uint32, size int64) string {
	return "copen " + strconv.FormatUint(uint64(id), 10) + "," + strconv.FormatInt(size, 10)
}

// CmdCopenError fails OPEN msg id with errno (a positive errno, e.g. unix.ENOENT gives "copen id,-2").
func CmdCopenError(id uint32, errno uintptr) string {
	return "copen " + strconv.FormatUint(uint64(id), 10) + ",-" + strconv.FormatUint(uint64(errno), 10)
}
