package cachefiles

import "errors"

// Sentinel errors. Every error this package returns about a message, command or object wraps one of
// these where one applies, with the msg id, object id or cookie key in its text.
var (
	// ErrMalformed: a message from the device could not be decoded (bad length, truncated key,
	// missing NUL, ...). The message is dropped: there is nothing to answer.
	ErrMalformed = errors.New("malformed cachefiles message")
	// ErrUnknownOpcode: a well-formed message with an opcode this package does not know.
	ErrUnknownOpcode = errors.New("unknown cachefiles opcode")
	// ErrBadCommand: a command argument the kernel would reject (newline, NUL, too long).
	ErrBadCommand = errors.New("invalid cachefiles command")
	// ErrUnknownObject: a READ or CLOSE for an object id with no open anonymous fd.
	ErrUnknownObject = errors.New("unknown cachefiles object")
	// ErrHandover: the failover hand-off of the device fd failed.
	ErrHandover = errors.New("cachefiles device handover failed")
	// ErrClosed: the Server or Supervisor was closed.
	ErrClosed = errors.New("cachefiles: closed")
)
