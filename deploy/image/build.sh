#!/bin/sh
# Builds the overlay-ebpf container image from local files only (no registry, no base image):
# overlayd, overlayctl and overlay-cni from BIN_DIR, the shared libraries they load (as ldd
# resolves them on this machine), and busybox-static for the DaemonSet's install command
# (sh, cp). Writes a docker-archive tarball tagged TAG, which `docker load`, `podman load`
# and `ctr images import` take.
#
#   deploy/image/build.sh BIN_DIR OUT.tar [TAG]     (cargo xtask image runs it)
set -eu
bin_dir=$1
out=$2
tag=${3:-overlay-ebpf:latest}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/tmp" "$root/host"
chmod 1777 "$root/tmp"

for b in overlayd overlayctl overlay-cni; do
    [ -x "$bin_dir/$b" ] || { echo "build.sh: $bin_dir/$b is missing: build it first (cargo xtask build --release)" >&2; exit 1; }
    cp "$bin_dir/$b" "$root/usr/local/bin/$b"
    # Every library the dynamic loader resolves, and the loader itself, at the same path.
    for lib in $(ldd "$bin_dir/$b" | awk '/=> \// { print $3 } /^[ \t]*\/.*ld-linux/ { print $1 }'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
busybox=$(command -v busybox || true)
[ -n "$busybox" ] && ldd "$busybox" 2>&1 | grep -q "not a dynamic" || {
    echo "build.sh: needs busybox-static (cargo xtask setup installs it)" >&2; exit 1; }
cp "$busybox" "$root/bin/busybox"
for applet in sh cp mkdir ls cat sleep; do ln -s busybox "$root/bin/$applet"; done

mkdir -p "$work/archive"
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/archive/layer.tar" .
diff_id=$(sha256sum "$work/archive/layer.tar" | cut -d' ' -f1)
case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
cat > "$work/archive/config.json" <<JSON
{"architecture":"$arch","os":"linux","config":{"Env":["PATH=/usr/local/bin:/bin"],"Entrypoint":["/usr/local/bin/overlayd"]},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
JSON
cat > "$work/archive/manifest.json" <<JSON
[{"Config":"config.json","RepoTags":["$tag"],"Layers":["layer.tar"]}]
JSON
mkdir -p "$(dirname "$out")"
tar -C "$work/archive" -cf "$out" manifest.json config.json layer.tar
echo "$out: $tag"
