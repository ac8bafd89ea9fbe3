// Package memtrim hands a daemon's free heap back to the operating system once the daemon goes
// quiet.
//
// Go returns freed heap pages to the kernel slowly (its background scavenger), and only down to
// the heap goal, which a burst of work (a 256 MiB image fetched in 1 MiB chunks) sets high. So a
// daemon that has finished a transfer keeps, as anonymous memory, the heap its peak needed. A
// Trimmer looks every Interval at how much the process allocated since the last look; when that is
// under QuietBytes (nothing is being fetched or served) and at least MinFree bytes could go back
// (free heap plus garbage since the last collection), it runs debug.FreeOSMemory: one collection
// and the release of every free page. A busy daemon is left alone: trimming then would only make
// the next allocations fault the pages back in.
//
//	t := memtrim.New(memtrim.Config{}, log)
//	g.Go(func() error { return t.Run(ctx) })
//
// It owns no other state and touches nothing but the Go runtime.
package memtrim
