#!/usr/bin/env bash
# build-kernel.sh: builds, once, a small Linux 6.12 kernel with cachefiles on-demand mode and EROFS
# (tinyconfig + config.fragment) from Debian's linux-source-6.12, and prints the path of its bzImage.
# SHOAL_KERNEL_VARIANT=fuse-only builds the variant without EROFS or cachefiles (lib.sh).
#
# The result is cached outside the repository in $SHOAL_CACHE_ROOT (default /var/cache/shoal) under
# kernel-6.12-<hash of config.fragment>/bzImage; a second run prints the cached path at once. The build
# log is kept beside it (build.log). Needs root for the Debian packages it installs when missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

out=$(kernel_dir)
# --path: print where the cached kernel is, or fail if it is not built; never build.
if [ "${1:-}" = "--path" ]; then
	[ -s "$out/bzImage" ] || { echo "kernel not built yet: $out/bzImage (run $0)" >&2; exit 1; }
	echo "$out/bzImage"
	exit 0
fi
if [ -s "$out/bzImage" ]; then
	echo "$out/bzImage"
	exit 0
fi
mkdir -p "$SHOAL_CACHE_ROOT"
# One build at a time: a second caller waits for the first.
exec 9>"$SHOAL_CACHE_ROOT/.kernel-build.lock"
flock 9
if [ -s "$out/bzImage" ]; then
	echo "$out/bzImage"
	exit 0
fi

apt_install bc flex bison libelf-dev libssl-dev cpio make gcc xz-utils
work="$SHOAL_CACHE_ROOT/build-$KERNEL_SERIES-$(config_hash)"
mkdir -p "$work" "$out"
start=$(date +%s)

src=$(ls -d "$work"/linux-source-"$KERNEL_SERIES" 2>/dev/null || true)
if [ -z "$src" ]; then
	# Another variant's build may have fetched the source already.
	tarball=$(ls "$SHOAL_CACHE_ROOT"/build-"$KERNEL_SERIES"-*/pkg/usr/src/linux-source-"$KERNEL_SERIES".tar.* 2>/dev/null | head -n1 || true)
	if [ -z "$tarball" ]; then
		log "fetching linux-source-$KERNEL_SERIES"
		tarball=$(fetch_linux_source "$work")
	fi
	log "unpacking $tarball"
	tar -C "$work" -xf "$tarball"
	src="$work/linux-source-$KERNEL_SERIES"
fi

log "configuring (tinyconfig + config.fragment)"
run_logged "$out/config-tiny.log" make -C "$src" tinyconfig
kernel_fragment >"$out/config.fragment"
run_logged "$out/config-merge.log" "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$out/config.fragment"
run_logged "$out/config-olddefconfig.log" make -C "$src" olddefconfig
# Every requested option must have survived dependency resolution, and every refused one stayed
# out.
missing=""
while IFS= read -r line; do
	case "$line" in
	CONFIG_*) grep -qx "$line" "$src/.config" || missing="$missing $line" ;;
	"# CONFIG_"*" is not set")
		opt=${line#\# }
		opt=${opt%% *}
		! grep -q "^$opt=" "$src/.config" || missing="$missing $opt(off)"
		;;
	esac
done <"$out/config.fragment"
[ -z "$missing" ] || die "options not as asked in the final .config:$missing"

log "building bzImage with $(nproc) jobs (log: $out/build.log)"
run_logged "$out/build.log" make -C "$src" -j"$(nproc)" bzImage
cp "$src/.config" "$out/config"
cp "$src/arch/x86/boot/bzImage" "$out/bzImage.tmp"
mv "$out/bzImage.tmp" "$out/bzImage"
echo "$(( $(date +%s) - start ))" >"$out/build-seconds"
log "kernel built in $(cat "$out/build-seconds")s: $out/bzImage"
echo "$out/bzImage"
