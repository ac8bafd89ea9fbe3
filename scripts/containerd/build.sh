#!/usr/bin/env bash
# Builds containerd 2.x (containerd, ctr, containerd-shim-runc-v2) from the Go module proxy into a
# cache directory, once, and prints the directory holding the binaries. Used by the snapshotter's
# e2e tests (which skip with this script's message when it fails) and by hand:
#
#   PATH=$(scripts/containerd/build.sh):$PATH containerd --config config.toml
#
# CONTAINERD_VERSION (default v2.4.2), SHOAL_CACHE (default /var/cache/shoal) and
# BUILD_TIMEOUT (seconds, default 900) can be set. Debian's runc is used at run time.
set -euo pipefail
version=${CONTAINERD_VERSION:-v2.4.2}
cache=${SHOAL_CACHE:-/var/cache/shoal}
out="$cache/containerd-$version/bin"
bins=(containerd ctr containerd-shim-runc-v2)
have() { for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done; }
if have; then echo "$out"; exit 0; fi
command -v go >/dev/null || { echo "go is not installed" >&2; exit 1; }
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/containerd-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for b in "${bins[@]}"; do
	# One `go install` per command: a module@version install takes no list across main packages.
	if ! GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-mod=mod timeout "${BUILD_TIMEOUT:-900}" \
		go install "github.com/containerd/containerd/v2/cmd/$b@$version" >"$tmp/$b.log" 2>&1; then
		echo "building containerd $version ($b) failed or timed out:" >&2
		tail -20 "$tmp/$b.log" >&2
		exit 1
	fi
done
mkdir -p "$(dirname "$out")"
rm -rf "$out"
mv "$tmp" "$out"
rm -f "$out"/*.log
trap - EXIT
echo "$out"
