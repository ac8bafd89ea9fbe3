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
}

type openFile struct {
	path    string
	fd      int
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
	f := &openFile{path: path, fd: fd, refs: 1}
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
		unix.Close(f.fd)
		f.fd = -1
	}
}

func (c *fdCache) put(f *openFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f.refs--
	if f.refs == 0 && f.dropped && f.fd >= 0 {
		unix.Close(f.fd)
		f.fd = -1
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
