#!/bin/sh
# configure-containerd.sh CONFIG VERSION SOCKET CRI ARCH [MIRROR]
#
# Adds Shoal's snapshotter to a containerd config.toml, as nydus-snapshotter's chart does:
# the proxy plugin [proxy_plugins.shoal] at SOCKET and, with CRI=true, `snapshotter = "shoal"`
# for CRI (kubelet's pulls). VERSION is 2 (containerd 1.6, 1.7), 3 (containerd 2.x; a file
# of version 4, as containerd 2.2+ writes, is edited the same way) or auto (the file's own
# `version`). ARCH is the platform's architecture (amd64, arm64) for 2.x's
# transfer-service unpack_config.
#
# MIRROR (host:port of the daemon's registry mirror, docs/mirror.md), if given: CRI's registry
# config_path is set to /etc/containerd/certs.d (or kept, if the file names another directory
# under /etc/containerd), and its _default/hosts.toml sends every registry's pulls to the mirror
# first, then to the registry itself. A hosts.toml there that Shoal did not write is left alone
# (with a note); a config with old-style `registry.mirrors."<host>"` entries, which containerd
# does not accept beside config_path, is refused (the empty table 1.6's default has is fine). containerd reads hosts.toml on each pull: only the
# config.toml change needs a restart, and only it counts as "changed".
#
# Idempotent: keys that already hold Shoal's values are left as they are, keys that hold other
# values are rewritten in place (so no table is defined twice), missing tables are appended.
# Running it again changes nothing. Prints "changed" or "unchanged"; exits non-zero, changing
# nothing, on a config it cannot edit safely.
set -eu

config=$1 version=$2 sock=$3 cri=$4 arch=${5:-amd64} mirror=${6:-}

if [ ! -s "$config" ]; then
	[ "$version" = auto ] && version=2 # containerd 2.x reads (and migrates) version 2 too
	mkdir -p "$(dirname "$config")"
	printf 'version = %s\n' "$version" >"$config"
fi

# The top-level version key, before the first table.
have=$(awk '/^[ \t]*\[/ { exit } /^[ \t]*version[ \t]*=/ { sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t#].*/, ""); print; exit }' "$config")
if [ -z "$have" ]; then
	echo "configure-containerd: $config has no top-level 'version': containerd reads it as version 1, which this script does not edit; add 'version = 2' (containerd 1.x) or 'version = 3' (2.x)" >&2
	exit 1
fi
if [ "$version" = auto ] || { [ "$version" = 3 ] && [ "$have" = 4 ]; }; then
	version=$have
elif [ "$version" != "$have" ]; then
	echo "configure-containerd: $config is version $have, but version $version was asked for (containerd.configVersion)" >&2
	exit 1
fi

# Settings: table TAB key TAB value, tables written with double quotes.
case $version in
2)
	settings="proxy_plugins.shoal	type	\"snapshot\"
proxy_plugins.shoal	address	\"$sock\""
	if [ "$cri" = true ]; then
		settings="$settings
plugins.\"io.containerd.grpc.v1.cri\".containerd	snapshotter	\"shoal\"
plugins.\"io.containerd.grpc.v1.cri\".containerd	disable_snapshot_annotations	false"
	fi
	;;
3 | 4) # containerd 2.0, 2.1 write version 3; 2.2 and later version 4, with the same plugin tables
	settings="proxy_plugins.shoal	type	\"snapshot\"
proxy_plugins.shoal	address	\"$sock\"
proxy_plugins.shoal.exports	enable_remote_snapshot_annotations	\"true\""
	if [ "$cri" = true ]; then
		settings="$settings
plugins.\"io.containerd.cri.v1.images\"	snapshotter	\"shoal\"
plugins.\"io.containerd.cri.v1.images\"	disable_snapshot_annotations	false"
	fi
	;;
*)
	echo "configure-containerd: config version $version is not 2 (containerd 1.x), 3 or 4 (2.x)" >&2
	exit 1
	;;
esac

# The registry mirror: CRI's config_path, and later its _default/hosts.toml.
certs=/etc/containerd/certs.d
if [ -n "$mirror" ]; then
	case $mirror in
	*[!A-Za-z0-9.:\[\]-]* | "" | :* | *:)
		echo "configure-containerd: mirror address $mirror is not host:port" >&2
		exit 1
		;;
	esac
	if [ "$version" = 2 ]; then regtab='plugins."io.containerd.grpc.v1.cri".registry'; else regtab='plugins."io.containerd.cri.v1.images".registry'; fi
	if grep -Eq "^[[:space:]]*\[+[[:space:]]*plugins\.[\"']io\.containerd\.(grpc\.v1\.cri|cri\.v1\.images)[\"']\.registry\.mirrors\." "$config"; then
		echo "configure-containerd: $config has registry.mirrors tables, which containerd does not accept beside config_path: move them to hosts.toml files (https://github.com/containerd/containerd/blob/main/docs/hosts.md), or turn mirror.enabled off" >&2
		exit 1
	fi
	# A config_path the file already sets is kept.
	have_certs=$(awk -v want="$regtab" '
		/^[ \t]*\[/ { h = $0; gsub(/^[ \t]*\[+[ \t]*/, "", h); sub(/[ \t]*\]+.*$/, "", h); gsub(/\047/, "\"", h); gsub(/[ \t]*\.[ \t]*/, ".", h); cur = h; next }
		cur == want && /^[ \t]*config_path[ \t]*=/ { v = $0; sub(/^[^=]*=[ \t]*/, "", v); sub(/[ \t]+#.*$/, "", v); gsub(/["\047]/, "", v); print v; exit }
	' "$config")
	[ -n "$have_certs" ] && certs=$have_certs
	case $certs in
	/etc/containerd/*) ;;
	*)
		echo "configure-containerd: $config sets CRI's registry config_path to $certs, outside /etc/containerd, where this script cannot write the mirror's hosts.toml" >&2
		exit 1
		;;
	esac
	settings="$settings
$regtab	config_path	\"$certs\""
fi

tmp="$config.shoal-tmp"
trap 'rm -f "$tmp"' EXIT

# One awk program, reading the file twice: the first pass finds 2.x's transfer unpack_config
# entries, the second rewrites.
awk -v settings="$settings" -v version="$version" -v arch="$arch" '
function norm(h) {
	gsub(/^[ \t]*\[+[ \t]*/, "", h); sub(/[ \t]*\]+.*$/, "", h)
	gsub(/\047/, "\"", h); gsub(/[ \t]*\.[ \t]*/, ".", h)
	return h
}
function keyof(line,    k) {
	k = line; sub(/^[ \t]*/, "", k); sub(/[ \t]*=.*$/, "", k); gsub(/["\047]/, "", k)
	return k
}
# Writes the settings of table t that no line of it held.
function flush(t,    i) {
	for (i = 1; i <= n; i++) if (tab[i] == t && !done[i]) { print key[i] " = " val[i]; done[i] = 1 }
}
BEGIN {
	n = split(settings, lines, "\n")
	for (i = 1; i <= n; i++) { split(lines[i], f, "\t"); tab[i] = f[1]; key[i] = f[2]; val[i] = f[3] }
	transfer = "plugins.\"io.containerd.transfer.v1.local\""
	unpack = transfer ".unpack_config"
}
FNR == NR {
	if ($0 ~ /^[ \t]*\[/) { cur = norm($0); arr = ($0 ~ /^[ \t]*\[\[/) }
	if (arr && cur == unpack) { entries = 1; if ($0 ~ /^[ \t]*snapshotter[ \t]*=[ \t]*["\047]shoal["\047]/) shoalEntry = 1 }
	if (!arr && cur == transfer && $0 ~ /^[ \t]*unpack_config[ \t]*=/) inline = 1
	next
}
/^[ \t]*\[/ {
	if (started) flush(cur)
	started = 1; cur = norm($0); seen[cur] = 1
	print; next
}
/^[ \t]*[A-Za-z0-9_"\047.-]+[ \t]*=/ && started {
	k = keyof($0)
	for (i = 1; i <= n; i++) if (tab[i] == cur && key[i] == k) {
		done[i] = 1
		v = $0; sub(/^[^=]*=[ \t]*/, "", v); sub(/[ \t]+#.*$/, "", v); gsub(/\047/, "\"", v)
		if (v != val[i]) { ind = $0; sub(/[^ \t].*$/, "", ind); $0 = ind k " = " val[i] }
	}
}
{ print }
END {
	if (started) flush(cur)
	added = 0
	for (i = 1; i <= n; i++) if (!done[i]) {
		if (!(tab[i] in opened)) { printf "%s[%s]\n", (added ? "" : "\n# Added by Shoal (packaging/helm/shoal).\n"), tab[i]; opened[tab[i]] = 1; added = 1 }
		print key[i] " = " val[i]
		for (j = i + 1; j <= n; j++) if (tab[j] == tab[i] && !done[j]) { print key[j] " = " val[j]; done[j] = 1 }
		done[i] = 1
	}
	if (version >= 3 && !shoalEntry) {
		if (inline) {
			print "configure-containerd: " unpack " is an inline array: add {platform = \"linux/" arch "\", snapshotter = \"shoal\"} to it yourself" > "/dev/stderr"
			exit 3
		}
		# The transfer service unpacks with the first entry matching the platform and the
		# snapshotter asked for; an unpack_config replaces containerd'"'"'s default (overlayfs), so
		# a config without one gets overlayfs back beside shoal.
		if (!added) print "\n# Added by Shoal (packaging/helm/shoal)."
		printf "[[%s]]\n  platform = \"linux/%s\"\n  snapshotter = \"shoal\"\n", unpack, arch
		if (!entries) printf "[[%s]]\n  platform = \"linux/%s\"\n  snapshotter = \"overlayfs\"\n", unpack, arch
	}
}
' "$config" "$config" >"$tmp"

if [ -n "$mirror" ]; then
	hosts=$(dirname "$config")/${certs#/etc/containerd/}/_default/hosts.toml
	want="# Written by Shoal (packaging/helm/shoal): every registry's pulls go to the node's registry
# mirror first (docs/mirror.md), then to the registry itself.
[host.\"http://$mirror\"]
  capabilities = [\"pull\", \"resolve\"]"
	if [ -e "$hosts" ] && ! head -n 1 "$hosts" | grep -q '^# Written by Shoal'; then
		echo "configure-containerd: $hosts is not Shoal's: left as it is (add [host.\"http://$mirror\"] to it for the mirror)" >&2
	elif [ "$(cat "$hosts" 2>/dev/null)" != "$want" ]; then
		mkdir -p "$(dirname "$hosts")"
		printf '%s\n' "$want" >"$hosts"
	fi
fi

if cmp -s "$config" "$tmp"; then
	echo unchanged
else
	cat "$tmp" >"$config" # in place: keeps the file's owner, mode and inode
	echo changed
fi
