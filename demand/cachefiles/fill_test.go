package cachefiles

import "context"

// readRange is how the test resolvers produce bytes: like a bootstrap kept as a plain file.
type readRange func(ctx context.Context, cookieKey string, p []byte, off int64) error

// fillInSteps implements Resolver.Fill for a test resolver that has the bytes (rather than a
// chunk store writing them in place): step bytes at a time through read, then write. Bytes past
// size are left to write's zero padding.
func fillInSteps(ctx context.Context, cookieKey string, off, length, size, step int64, read readRange, write func([]byte, int64) error) error {
	buf := make([]byte, step)
	for pos := off; pos < off+length && pos < size; pos += step {
		n := min(step, off+length-pos, size-pos)
		if err := read(ctx, cookieKey, buf[:n], pos); err != nil {
			return err
		}
		if err := write(buf[:n], pos); err != nil {
			return err
		}
	}
	return nil
}
