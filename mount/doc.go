// Package mount mounts and unmounts Shoal images in each frontend mode (fscache, fanotify, FUSE).
package mount
