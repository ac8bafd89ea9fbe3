// Package layout names the files of a cachefiles cache directory exactly as the kernel's
// cachefiles backend does: the volume and cookie keys EROFS uses (VolumeKey, CookieKey), the
// kernel's fscache hash that picks a fan-out directory (FscacheHash, FanDir), the backing path of
// a blob or bootstrap (<dir>/cache/I<volume key>/@<hh>/D<cookie key>: BackingPath), and the
// user.CacheFiles.cache xattrs the kernel checks (DataXattr, VolumeXattr).
//
// It is a leaf shared by the chunk store (which creates these files), the fscache frontend
// (whose kernel opens them) and package mount (whose fsid=/device= options are cookie keys), so
// each of these facts is written down once. It does no I/O.
package layout
