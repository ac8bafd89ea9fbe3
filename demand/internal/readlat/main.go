// Command readlat times cold random reads through a mounted image, for scripts/bench-first-byte.sh:
// for n distinct chunks of a file, in random order, one pread of -size bytes at a random
// block-aligned offset within the chunk, each checked against the same bytes of a reference copy
// (the source tree). The file is opened with POSIX_FADV_RANDOM so the kernel reads only what is
// asked (no readahead into the next chunk). It prints one line: count, p50, p90, p99, max, mean in
// milliseconds.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	file := flag.String("file", "", "file in the mounted image")
	ref := flag.String("ref", "", "the same file outside the mount, to check the bytes")
	chunk := flag.Int64("chunk", 1<<20, "chunk size of the image")
	size := flag.Int("size", 4096, "bytes per read")
	n := flag.Int("n", 64, "reads (each in another chunk)")
	seed := flag.Uint64("seed", 1, "random seed")
	out := flag.String("out", "", "append each read's latency (ms) to this file, one a line")
	gap := flag.Duration("gap", 0, "pause between reads (the daemon finishes the previous chunk: its rest, hash and store write)")
	flag.Parse()
	if err := run(*file, *ref, *chunk, *size, *n, *seed, *out, *gap); err != nil {
		fmt.Fprintln(os.Stderr, "readlat:", err)
		os.Exit(1)
	}
}

func run(file, ref string, chunkSize int64, size, n int, seed uint64, out string, gap time.Duration) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	rf, err := os.Open(ref)
	if err != nil {
		return err
	}
	defer rf.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		return fmt.Errorf("fadvise: %w", err)
	}
	chunks := int(st.Size() / chunkSize)
	if chunks < n {
		return fmt.Errorf("%s has %d whole chunks, %d reads asked", file, chunks, n)
	}
	r := rand.New(rand.NewPCG(seed, 17))
	order := r.Perm(chunks)[:n]
	buf, want := make([]byte, size), make([]byte, size)
	lat := make([]time.Duration, 0, n)
	for _, c := range order {
		time.Sleep(gap)
		off := int64(c)*chunkSize + r.Int64N(chunkSize/4096-int64(size+4095)/4096+1)*4096
		start := time.Now()
		k, err := f.ReadAt(buf, off)
		d := time.Since(start)
		if err != nil || k != size {
			return fmt.Errorf("read %d at %d: %d bytes, %v", size, off, k, err)
		}
		if _, err := rf.ReadAt(want, off); err != nil {
			return err
		}
		if !bytes.Equal(buf, want) {
			return fmt.Errorf("bytes at %d differ from the reference", off)
		}
		lat = append(lat, d)
	}
	if out != "" {
		o, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		for _, d := range lat {
			fmt.Fprintf(o, "%.3f\n", ms(d))
		}
		if err := o.Close(); err != nil {
			return err
		}
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	q := func(p float64) float64 { return ms(lat[min(len(lat)-1, int(p*float64(len(lat))))]) }
	fmt.Printf("reads %d  p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms  mean %.2f ms\n",
		len(lat), q(0.5), q(0.9), q(0.99), ms(lat[len(lat)-1]), ms(sum/time.Duration(len(lat))))
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
