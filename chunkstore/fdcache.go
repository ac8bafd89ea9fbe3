package chunkstore

import (
	"container/list"
	"sync"

	"golang.org/x/sys/unix"
)

// fdCache keeps up to max backing files open, least recently used closed first. A file in use
// (refs > 0) is never closed; it is closed on release once it has been dropped from the cache.
type fdCache struct {
	mu   sync.Mutex
	max  int
	m    map[string]*openFile
	lru  list.List // of *openFile, front = most recent
	open func(path string) (int, error)
	// openDirect opens a file for direct I/O (O_DIRECT) beside its ordinary descriptor; nil:
	// writes go through the page cache.
	openDirect func(path string) (int, error)
}

type openFile struct {
	path string
	fd   int
	// dfd is the file opened with O_DIRECT for chunk writes: dfdUnopened until first asked for,
	// dfdNone where the filesystem refuses direct I/O (tmpfs) or the store does not use it.
	dfd     int
	refs    int
	elem    *list.Element // nil once dropped from the cache
	dropped bool
}

func newFDCache(max int, open func(string) (int, error)) *fdCache {
	return &fdCache{max: max, m: make(map[string]*openFile), open: open}
}

// get returns the open file of path with a reference taken; release it with put.
func (c *fdCache) get(path string) (*openFile, error) {
	c.mu.Lock()
	if f, ok := c.m[path]; ok {
		f.refs++
		c.lru.MoveToFront(f.elem)
		c.mu.Unlock()
		return f, nil
	}
	c.mu.Unlock()
	// Open outside the lock; another goroutine may race us and win.
	fd, err := c.open(path)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.m[path]; ok {
		unix.Close(fd)
		f.refs++
		c.lru.MoveToFront(f.elem)
		return f, nil
	}
	f := &openFile{path: path, fd: fd, dfd: dfdUnopened, refs: 1}
	f.elem = c.lru.PushFront(f)
	c.m[path] = f
	c.shrinkLocked()
	return f, nil
}

func (c *fdCache) shrinkLocked() {
	for e := c.lru.Back(); e != nil && len(c.m) > c.max; {
		prev := e.Prev()
		f := e.Value.(*openFile)
		if f.refs == 0 {
			c.dropLocked(f)
		}
		e = prev
	}
}

func (c *fdCache) dropLocked(f *openFile) {
	c.lru.Remove(f.elem)
	f.elem = nil
	f.dropped = true
	delete(c.m, f.path)
	if f.refs == 0 {
		f.close()
	}
}

const (
	dfdUnopened = -1
	dfdNone     = -2
)

// close closes both descriptors of a file nobody uses any more.
func (f *openFile) close() {
	unix.Close(f.fd)
	f.fd = -1
	if f.dfd >= 0 {
		unix.Close(f.dfd)
	}
	f.dfd = dfdNone
}

// direct returns f's O_DIRECT descriptor, opening it on first use, or -1 where direct I/O is
// off or the filesystem refuses it (the caller then writes through f.fd). The caller holds a
// reference on f.
func (c *fdCache) direct(f *openFile) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.dfd == dfdUnopened {
		f.dfd = dfdNone
		if c.openDirect != nil && f.fd >= 0 {
			if fd, err := c.openDirect(f.path); err == nil {
				f.dfd = fd
			}
		}
	}
	if f.dfd < 0 {
		return -1
	}
	return f.dfd
}

func (c *fdCache) put(f *openFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f.refs--
	if f.refs == 0 && f.dropped && f.fd >= 0 {
		f.close()
	}
	c.shrinkLocked()
}

func (c *fdCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

func (c *fdCache) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.m {
		c.dropLocked(f)
	}
}
