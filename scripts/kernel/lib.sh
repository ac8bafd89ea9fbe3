# Shared helpers for Shoal's kernel test scripts. Source it; it defines functions only.
#
# Nothing here names a package registry: apt sources are derived at run time from the machine's own
# Debian entry.

KERNEL_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHOAL_CACHE_ROOT=${SHOAL_CACHE_ROOT:-/var/cache/shoal}
KERNEL_SERIES=6.12

log() { printf '%s kernel: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# run_logged LOG CMD...: runs CMD with its output in LOG; on failure prints the log's tail and dies.
run_logged() {
	local logf=$1
	shift
	if ! "$@" >"$logf" 2>&1; then
		log "command failed: $* (log: $logf); last lines:"
		tail -n 40 "$logf" >&2
		exit 1
	fi
}

# SHOAL_KERNEL_VARIANT picks the test kernel: empty (the default: EROFS, cachefiles on-demand,
# FUSE) or "fuse-only" (the same without EROFS, fscache, cachefiles and netfs: FUSE is the only
# way to mount an image, as on RHEL 9's or Ubuntu 22.04's kernels; demand/fusetree's VM test).
KERNEL_VARIANT=${SHOAL_KERNEL_VARIANT:-}

# kernel_fragment prints the options added to tinyconfig for KERNEL_VARIANT.
kernel_fragment() {
	case "$KERNEL_VARIANT" in
	"") cat "$KERNEL_SCRIPTS_DIR/config.fragment" ;;
	fuse-only)
		grep -v -E '^CONFIG_(EROFS|CACHEFILES|FSCACHE|NETFS)' "$KERNEL_SCRIPTS_DIR/config.fragment"
		cat "$KERNEL_SCRIPTS_DIR/config.fuse-only.fragment"
		;;
	*) die "SHOAL_KERNEL_VARIANT=$KERNEL_VARIANT: unknown (empty or fuse-only)" ;;
	esac
}

# config_hash prints the key of the cached kernel: a hash of the config fragment and the series.
config_hash() {
	{ echo "$KERNEL_SERIES"; kernel_fragment; } | sha256sum | cut -c1-16
}

# kernel_dir prints the directory that holds (or will hold) the cached bzImage.
kernel_dir() { echo "$SHOAL_CACHE_ROOT/kernel-$KERNEL_SERIES${KERNEL_VARIANT:+-$KERNEL_VARIANT}-$(config_hash)"; }

# apt_install PKG...: installs the Debian packages that are missing, from the machine's own lists.
apt_install() {
	local missing=() p
	for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "not root: cannot install ${missing[*]}"
	log "installing ${missing[*]}"
	if [ ! -e "$SHOAL_CACHE_ROOT/.apt-updated" ]; then
		mkdir -p "$SHOAL_CACHE_ROOT"
		apt-get update -qq >/dev/null && touch "$SHOAL_CACHE_ROOT/.apt-updated"
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# debian_uri prints the first URIs: entry of the machine's Debian apt source (deb822 or one-line form).
debian_uri() {
	local f uri
	for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f")
		[ -n "$uri" ] && { echo "$uri"; return; }
	done
	awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' \
		/etc/apt/sources.list 2>/dev/null
}

# fetch_linux_source DIR: downloads linux-source-$KERNEL_SERIES into DIR (no system install), from a
# private apt list (the machine's own lists are untouched) built from the machine's Debian URI and
# the bookworm-backports and trixie suites. Prints the path of the source tarball.
fetch_linux_source() {
	local dir=$1 uri aptdir
	uri=$(debian_uri)
	[ -n "$uri" ] || die "no Debian apt source found on this machine"
	aptdir="$dir/apt"
	mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial"
	cat >"$aptdir/sources.list" <<EOS
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main
EOS
	local opts=(-o "Dir::Etc::SourceList=$aptdir/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
		-o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache::Archives=$aptdir/archives"
		-o "Debug::NoLocking=1")
	apt-get "${opts[@]}" update -qq >&2 || die "apt-get update (private lists) failed"
	(cd "$dir" && apt-get "${opts[@]}" download "linux-source-$KERNEL_SERIES" >&2) ||
		die "apt-get download linux-source-$KERNEL_SERIES failed"
	local deb
	deb=$(ls "$dir"/linux-source-"$KERNEL_SERIES"_*.deb | head -n1)
	dpkg-deb -x "$deb" "$dir/pkg" || die "dpkg-deb -x $deb failed"
	ls "$dir"/pkg/usr/src/linux-source-"$KERNEL_SERIES".tar.* | head -n1
}

# --- initramfs -------------------------------------------------------------------------------------
# An initramfs is built in a staging directory: initramfs_init DIR, then initramfs_add and
# initramfs_hook as often as needed, then initramfs_pack DIR OUT.gz. Its /init mounts proc, sysfs,
# devtmpfs and tmpfs, runs every hook in /etc/shoal/hooks (sorted by name) with
# `SHOAL-VM: BEGIN/END <hook> rc=N` lines around it, prints `SHOAL-VM: DONE rc=N` and powers off.

# initramfs_init DIR: a fresh staging dir with busybox-static and /init.
initramfs_init() {
	local root=$1
	rm -rf "$root"
	mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,mnt,etc/shoal/hooks}
	cp /bin/busybox "$root/bin/busybox"
	cp "$KERNEL_SCRIPTS_DIR/init.sh" "$root/init"
	chmod 0755 "$root/init"
}

# initramfs_add DIR SRC DEST: copies file or directory SRC to DEST (absolute path inside the VM).
initramfs_add() {
	local root=$1 src=$2 dest=$3
	mkdir -p "$root$(dirname "$dest")"
	cp -a "$src" "$root$dest"
}

# initramfs_hook DIR SCRIPT [NAME]: adds a shell script run by /init (sourced by busybox sh, in
# name order). Hooks see SHOAL_VM_* variables exported by earlier hooks.
initramfs_hook() {
	local root=$1 script=$2 name=${3:-$(basename "$2")}
	cp "$script" "$root/etc/shoal/hooks/$name"
}

# initramfs_pack DIR OUT: writes the gzip'd newc cpio.
initramfs_pack() {
	local root=$1 out=$2
	(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out"
}

# vm_run KERNEL INITRD LOG [TIMEOUT_SECONDS]: boots the VM (software emulation, no KVM needed) with
# the serial console in LOG; VM_MEM (MiB, default 512) and VM_CPUS (default 2) size it. Returns 0 if the VM printed `SHOAL-VM: DONE rc=0` and no FAIL line.
vm_run() {
	local kernel=$1 initrd=$2 logf=$3 limit=${4:-600}
	local accel=()
	# Software emulation by default: /dev/kvm may exist and still fail (nested virtualisation).
	[ "${SHOAL_VM_KVM:-}" = 1 ] && accel=(-enable-kvm -cpu host)
	log "booting VM (log: $logf, limit ${limit}s)"
	timeout --kill-after=10 "$limit" qemu-system-x86_64 "${accel[@]}" -m "${VM_MEM:-512}" -smp "${VM_CPUS:-2}" -nographic -no-reboot -net none \
		-kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 quiet panic=-1" </dev/null >"$logf" 2>&1 || true
	if grep -q '^SHOAL-VM: DONE rc=0' "$logf" && ! grep -q '^SHOAL-VM: FAIL' "$logf"; then
		return 0
	fi
	log "VM run failed; last lines of $logf:"
	tail -n 60 "$logf" >&2
	return 1
}

# vm_test_setup NAME: the common start of a VM test script. Sets repo (the checkout), work
# ($WORKDIR or a new /tmp/shoal-NAME.XXXXXX) and kernel (the cached bzImage; built unless
# SHOAL_KERNEL_NOBUILD=1), and installs what the VM needs.
vm_test_setup() {
	repo=$(cd "$KERNEL_SCRIPTS_DIR/../.." && pwd)
	work=${WORKDIR:-$(mktemp -d "/tmp/shoal-$1.XXXXXX")}
	mkdir -p "$work"
	log "work dir $work"
	if [ "${SHOAL_KERNEL_NOBUILD:-}" = 1 ]; then
		kernel=$("$KERNEL_SCRIPTS_DIR/build-kernel.sh" --path)
	else
		kernel=$("$KERNEL_SCRIPTS_DIR/build-kernel.sh")
	fi
	apt_install busybox-static qemu-system-x86 erofs-utils e2fsprogs cpio
}
