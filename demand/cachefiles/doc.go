// Package cachefiles is Shoal's frontend for the kernel's cachefiles on-demand mode: EROFS images
// mounted with fsid= (fscache mode) read their bootstrap and blobs through /dev/cachefiles, and this
// package answers the kernel's OPEN, READ and CLOSE requests from a Resolver.
//
// A READ is answered once the Resolver has filled the range in the backing file. The cache is
// bound to the chunk store's own directory, so the kernel's backing files are the store's: for a
// blob the Resolver only makes the chunks present (the store writes them, once) and the Server
// completes the READ without copying anything; only bytes the Resolver hands over (a bootstrap
// kept as a plain file, zeros between chunks) are pwritten through the kernel's anonymous fd.
//
// It owns: the wire codec of /dev/cachefiles messages and commands (msg.go), the device (dir, tag,
// bind ondemand, restore), the epoll-driven request loop with a bounded pool of READ workers
// (Server), the failover hand-off of the device fd from a long-lived supervisor to each new worker
// process over a unix socket with SCM_RIGHTS (Supervisor, Handover), and the probe of whether
// on-demand mode works here (Probe). The names of volumes, cookies and backing files are package
// chunkstore/layout's; the fsid= mount options are package mount's. It never opens the chunk
// store's files itself: it writes only through the kernel's anonymous fds, and mounts nothing
// (package mount does).
//
// Keys: the volume key is "erofs,<domain>" (layout.VolumeKey); the cookie key of the bootstrap is
// the fsid and that of each blob is its device= string. Shoal uses the digest string "sha256:<hex>"
// for both.
//
// Usage, in a daemon that survives its own restarts:
//
//	// supervisor process (long-lived; holds /dev/cachefiles)
//	dev, _ := cachefiles.OpenDevice(cachefiles.DefaultDevicePath)
//	_ = dev.Bind("/var/lib/shoal/fscache", "shoal")
//	sup, _ := cachefiles.NewSupervisor(dev, cachefiles.SupervisorConfig{Socket: sock, Worker: newWorkerCmd})
//	_ = sup.Run(ctx)
//
//	// worker process (restartable, upgradable)
//	dev, _ := cachefiles.Handover(ctx, sock) // receives the fd and writes "restore"
//	srv, _ := cachefiles.NewServer(dev, resolver, cachefiles.Config{})
//	_ = srv.Run(ctx)
//
// Failover: the kernel keeps every request until it is answered. When a worker dies, its anonymous
// fds close, so the kernel marks those objects closed; after the next worker writes "restore", the
// kernel resends the unanswered requests, reopening each closed object with a new OPEN (new object
// id and fd) before its READs. A worker that stops on purpose (Run's ctx ends) therefore leaves
// in-flight READs unanswered rather than failing them, and Close closes its fds.
//
// Tests: msg_test.go and fuzz_test.go check the codec byte for byte; emulation_test.go runs the
// Server against an EMULATION of the kernel side (a socketpair as the device, temp files as the
// anonymous fds, a hook in place of the READ_COMPLETE ioctl) for fast tests; kernel_test.go boots a
// real Linux 6.12 under qemu (scripts/kernel, `make kernel-test`) and runs vm_test.go inside it.
package cachefiles
