// Command tcpsha is the baseline of scripts/bench-peer-stream.sh: the least work a verified
// transfer of a file over the network does. A sender reads the file in CHUNK-sized pieces and
// writes them to a loopback TCP connection; the receiver reads each piece whole and sha256-hashes
// it, as a Shoal receiver verifies each chunk against its CID. Both ends run in this process, on
// the machine's cores, as two daemons on one machine would. It prints MiB/s of file data.
//
//	go run ./internal/tcpsha -file /path/to/blob -chunk 1048576
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	file := flag.String("file", "", "file to send")
	chunk := flag.Int("chunk", 1<<20, "bytes per piece hashed by the receiver")
	flag.Parse()
	if err := run(*file, *chunk); err != nil {
		fmt.Fprintln(os.Stderr, "tcpsha:", err)
		os.Exit(1)
	}
}

func run(file string, chunk int) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	sent := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sent <- err
			return
		}
		defer c.Close()
		buf := make([]byte, chunk)
		for off := int64(0); off < size; off += int64(chunk) {
			n, err := f.ReadAt(buf, off)
			if err != nil && err != io.EOF {
				sent <- err
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	start := time.Now()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, chunk)
	var sum [32]byte
	for off := int64(0); off < size; off += int64(chunk) {
		n := int(min(int64(chunk), size-off))
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			return fmt.Errorf("reading at %d: %w", off, err)
		}
		sum = sha256.Sum256(buf[:n])
	}
	el := time.Since(start)
	if err := <-sent; err != nil {
		return err
	}
	_ = sum
	fmt.Printf("%.1f\n", float64(size)/(1<<20)/el.Seconds())
	return nil
}
